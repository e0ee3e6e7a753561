/*
 * intercept: section (8), what one lock call costs under the LD_PRELOAD
 * shim libarbiter-intercept.so (client/intercept.c) against the same call
 * without it, measured in the same run.
 *
 * The measured program is this binary, run again in a hidden mode:
 *
 *     arbiter-bench --lockcost FILE ROUNDS
 *
 * opens FILE with open(2), so the shim sees it opened, and prints the
 * nanoseconds of one flock(LOCK_EX) + flock(LOCK_UN) pair, of one
 * fcntl(F_SETLK) write lock + unlock pair and of one fcntl(F_GETFL): the
 * best of five timed loops of ROUNDS calls each.
 *
 * The section runs it three ways, one after the other, then again, so
 * slow drift of the machine spreads over all three:
 *   - plain: no LD_PRELOAD;
 *   - shim, other file: the shim preloaded with <tmp>/lock as its lock
 *     file, the program locking <tmp>/other: what every lock call of a
 *     program under the shim costs on a file that is not its lock file;
 *   - shim, intercepted file: the program locking <tmp>/lock itself, so
 *     each lock takes a lease from the bench's daemon (fewer rounds).
 * The shim is the one beside the daemon under test (<BUILD>). The
 * program runs on the clients' CPU, the daemon on the servers'.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

#define LOCKCOST_RUNS 5

enum { K_FLOCK, K_FCNTL, K_GETFL, K_KINDS };
enum { W_PLAIN, W_OTHER, W_LEASED, W_WAYS };

static const char *const kind_key[K_KINDS] = {"flock", "fcntl", "getfl"};
static const char *const kind_name[K_KINDS] = {
    "flock LOCK_EX + LOCK_UN",
    "F_SETLK F_WRLCK + F_UNLCK",
    "fcntl F_GETFL",
};
static const char *const way_key[W_WAYS] = {"plain", "other", "leased"};
static const char *const way_name[W_WAYS] = {
    "plain",
    "shim, other file",
    "shim, intercepted file",
};

/* ------------------------------------------------------------ the program */

static int
lock_call(int fd, int kind)
{
	struct flock fl = {.l_whence = SEEK_SET};

	switch (kind) {
	case K_FLOCK:
		if (flock(fd, LOCK_EX) < 0)
			return -1;
		return flock(fd, LOCK_UN);
	case K_FCNTL:
		fl.l_type = F_WRLCK;
		if (fcntl(fd, F_SETLK, &fl) < 0)
			return -1;
		fl.l_type = F_UNLCK;
		return fcntl(fd, F_SETLK, &fl);
	default:
		return fcntl(fd, F_GETFL) < 0 ? -1 : 0;
	}
}

int
intercept_lockcost(const char *file, const char *rounds_arg)
{
	int rounds = atoi(rounds_arg);
	int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

	if (fd < 0 || rounds <= 0) {
		fprintf(stderr, "arbiter-bench --lockcost %s %s: %s\n", file,
			rounds_arg,
			fd < 0 ? strerror(errno) : "ROUNDS must be > 0");
		return 1;
	}
	for (int kind = 0; kind < K_KINDS; kind++) {
		double best = 0;

		for (int run = 0; run < LOCKCOST_RUNS; run++) {
			uint64_t t0 = proc_now_ns();
			double t;

			for (int i = 0; i < rounds; i++)
				if (lock_call(fd, kind) < 0) {
					fprintf(stderr,
						"arbiter-bench --lockcost: "
						"%s: %s\n",
						kind_key[kind],
						strerror(errno));
					return 1;
				}
			t = (double)(proc_now_ns() - t0) / rounds;
			if (run == 0 || t < best)
				best = t;
		}
		printf("%s %.1f\n", kind_key[kind], best);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------ section (8) */

/*
 * The ASan runtime this process runs with, if it is a shared library: a
 * sanitizer build of the bench must preload it before the shim, or ASan
 * refuses to start because it does not come first.
 */
static int
find_asan(struct dl_phdr_info *info, size_t size, void *data)
{
	char *out = data;

	(void)size;
	if (info->dlpi_name != NULL && strstr(info->dlpi_name, "/libasan.so")) {
		snprintf(out, PATH_MAX, "%s", info->dlpi_name);
		return 1;
	}
	return 0;
}

struct icpt_env {
	char **plain, **shim;
	char preload[2 * PATH_MAX + 16];
	char files[PATH_MAX + 32];
	char sock[160];
};

static bool
dropped(const char *var)
{
	return strncmp(var, "LD_PRELOAD=", 11) == 0 ||
	       strncmp(var, "ARBITER_INTERCEPT_", 18) == 0 ||
	       strncmp(var, "ARBITER_SOCKET=", 15) == 0;
}

/* Our environment without LD_PRELOAD, ARBITER_INTERCEPT_* and
 * ARBITER_SOCKET; plus the shim's settings for e->shim. */
static int
icpt_env_make(struct icpt_env *e, const struct bench *b, const char *shim,
	      const char *lockfile)
{
	extern char **environ;
	static char unavailable[] = "ARBITER_INTERCEPT_ON_UNAVAILABLE=fail";
	char asan[PATH_MAX] = "";
	size_t n = 0, p = 0, s = 0;

	while (environ[n] != NULL)
		n++;
	e->plain = calloc(n + 1, sizeof *e->plain);
	e->shim = calloc(n + 5, sizeof *e->shim);
	if (e->plain == NULL || e->shim == NULL)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (!dropped(environ[i]))
			e->plain[p++] = e->shim[s++] = environ[i];
	dl_iterate_phdr(find_asan, asan);
	snprintf(e->preload, sizeof e->preload, "LD_PRELOAD=%s%s%s", asan,
		 asan[0] ? ":" : "", shim);
	snprintf(e->files, sizeof e->files, "ARBITER_INTERCEPT_FILES=%s",
		 lockfile);
	snprintf(e->sock, sizeof e->sock, "ARBITER_SOCKET=%s", b->sock);
	e->shim[s++] = e->preload;
	e->shim[s++] = e->files;
	e->shim[s++] = e->sock;
	/* A lock on the intercepted file fails rather than quietly timing a
	 * plain lock when the daemon cannot be reached. */
	e->shim[s++] = unavailable;
	return 0;
}

/* Run the program once on cpu (< 0: unpinned); fills ns[K_KINDS]. */
static int
lockcost_run(char **env, int cpu, const char *file, int rounds,
	     const char *what, double *ns)
{
	char rounds_s[16], out[512];
	char *argv[] = {"arbiter-bench", "--lockcost", (char *)file, rounds_s,
			NULL};
	size_t len = 0;
	int p[2], status, got = 0;
	pid_t pid;
	ssize_t r;

	snprintf(rounds_s, sizeof rounds_s, "%d", rounds);
	if (pipe2(p, O_CLOEXEC) < 0) {
		bench_fail("(8) pipe: %s", strerror(errno));
		return -1;
	}
	pid = proc_fork();
	if (pid < 0) {
		bench_fail("(8) fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return -1;
	}
	if (pid == 0) {
		dup2(p[1], 1);
		proc_pin(cpu);
		execve("/proc/self/exe", argv, env);
		fprintf(stderr, "bench: error: exec /proc/self/exe: %s\n",
			strerror(errno));
		_exit(127);
	}
	close(p[1]);
	while (len < sizeof out - 1 &&
	       ((r = read(p[0], out + len, sizeof out - 1 - len)) > 0 ||
		(r < 0 && errno == EINTR)))
		if (r > 0)
			len += (size_t)r;
	out[len] = '\0';
	close(p[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR) {
			bench_fail("(8) waitpid: %s", strerror(errno));
			return -1;
		}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		bench_fail("(8) the lock-cost program (%s, %s) ended with "
			   "status %d",
			   what, file, status);
		return -1;
	}
	for (char *line = strtok(out, "\n"); line != NULL;
	     line = strtok(NULL, "\n")) {
		char name[16];
		double v;

		if (sscanf(line, "%15s %lf", name, &v) != 2)
			continue;
		for (int k = 0; k < K_KINDS; k++)
			if (strcmp(name, kind_key[k]) == 0) {
				ns[k] = v;
				got |= 1 << k;
			}
	}
	if (got != (1 << K_KINDS) - 1) {
		bench_fail("(8) the lock-cost program (%s) did not print a "
			   "figure for each call: \"%s\"",
			   what, out);
		return -1;
	}
	return 0;
}

void
case_intercept(struct bench *b)
{
	static struct samples s[W_WAYS][K_KINDS];
	char dir[PATH_MAX], shim[PATH_MAX + 32], real[PATH_MAX];
	char lockfile[PATH_MAX], other[PATH_MAX], key[48], name[96], plain[48];
	struct icpt_env env = {0};
	/* The program on the clients' CPU, the daemon on the servers': a
	 * lease's round trip always crosses, as between an app and its
	 * daemon. One CPU: the program shares it. */
	enum place where = b->cpu_server < 0   ? PLACE_NONE
			   : b->cpu_client < 0 ? PLACE_SAME
					       : PLACE_SPLIT;
	int fd, cpu = place_client_cpu(b, where);

	bench_progress("(8) intercept: %d runs of each, %d rounds (%d on the "
		       "intercepted file)",
		       b->n.icpt_pairs, b->n.icpt_rounds,
		       b->n.icpt_leased_rounds);
	/* The shim is built with the daemon: <BUILD>/arbiterd. */
	snprintf(dir, sizeof dir, "%s", b->arbiterd);
	snprintf(shim, sizeof shim, "%s/libarbiter-intercept.so", dirname(dir));
	if (realpath(shim, real) == NULL || access(real, R_OK) != 0) {
		bench_fail("(8) no shim at %s (%s): build it with `make`", shim,
			   strerror(errno));
		return;
	}
	snprintf(lockfile, sizeof lockfile, "%s/lock", b->tmp);
	snprintf(other, sizeof other, "%s/other", b->tmp);
	/* A lock file that exists is resolved once, at the first lock. */
	fd = open(lockfile, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		bench_fail("(8) %s: %s", lockfile, strerror(errno));
		return;
	}
	close(fd);
	if (icpt_env_make(&env, b, real, lockfile) < 0) {
		bench_fail("(8) out of memory");
		goto out;
	}
	proc_unpin(b);
	for (int run = 0; run < b->n.icpt_pairs; run++) {
		double ns[W_WAYS][K_KINDS];

		if (lockcost_run(env.plain, cpu, other, b->n.icpt_rounds,
				 "plain", ns[W_PLAIN]) < 0 ||
		    lockcost_run(env.shim, cpu, other, b->n.icpt_rounds,
				 "shim, other file", ns[W_OTHER]) < 0 ||
		    lockcost_run(env.shim, cpu, lockfile,
				 b->n.icpt_leased_rounds,
				 "shim, intercepted file", ns[W_LEASED]) < 0)
			break;
		for (int w = 0; w < W_WAYS; w++)
			for (int k = 0; k < K_KINDS; k++)
				samples_push(&s[w][k], ns[w][k]);
	}
	for (int k = 0; k < K_KINDS; k++) {
		snprintf(plain, sizeof plain, "icpt.%s.plain", kind_key[k]);
		for (int w = 0; w < W_WAYS; w++) {
			struct row *r;

			/* F_GETFL takes no lease: nothing to show there. */
			if (!(k == K_GETFL && w == W_LEASED)) {
				snprintf(key, sizeof key, "icpt.%s.%s",
					 kind_key[k], way_key[w]);
				snprintf(name, sizeof name, "%s, %s",
					 kind_name[k], way_name[w]);
				r = report_add(8, key, name, U_NS, &s[w][k]);
				report_place(r, where);
				if (w == W_PLAIN)
					report_note(r, "no LD_PRELOAD");
				else
					report_ratio(r, plain, "plain");
				if (w == W_LEASED)
					report_note(r,
						    "each lock takes a lease");
			}
			samples_free(&s[w][k]);
		}
	}
out:
	free(env.plain);
	free(env.shim);
}
