/*
 * proc: the processes a benchmark needs and what /proc says about them.
 *
 * Every process started here gets PR_SET_PDEATHSIG, so a bench killed
 * half-way leaves no daemon behind. Readiness is checked by connecting to
 * the socket, never guessed with a fixed sleep (the daemon runs at
 * log.level=warn, so its "arbiter ready" line is not printed). The servers
 * started here (daemon, Redis, echo server) are pinned to b->cpu_server
 * before they run anything; the cases pin their clients (see enum place).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define READY_TIMEOUT_NS (20ull * 1000000000ull)

uint64_t
proc_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void
proc_sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

int
proc_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0) {
		ssize_t w = write(fd, c, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

int
proc_read_all(int fd, void *p, size_t n)
{
	char *c = p;

	while (n > 0) {
		ssize_t r = read(fd, c, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

pid_t
proc_fork(void)
{
	pid_t parent = getpid(), pid;

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
	}
	return pid;
}

int
proc_make_tmp(struct bench *b)
{
	const char *base = getenv("TMPDIR");
	int n;

	/* Socket paths under it must stay within sun_path's 108 bytes. */
	if (base == NULL || *base == '\0' || strlen(base) > 40)
		base = "/tmp";
	/* mkdtemp's template: six 'X' at the end become a unique name. */
	n = snprintf(b->tmp, sizeof b->tmp, "%s/arbiter-bench-", base);
	memset(b->tmp + n, 'X', 6);
	b->tmp[n + 6] = '\0';
	if (mkdtemp(b->tmp) == NULL) {
		bench_fail("cannot create a temporary folder %s: %s", b->tmp,
			   strerror(errno));
		return -1;
	}
	return 0;
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	remove(path);
	return 0;
}

void
proc_remove_tmp(struct bench *b)
{
	if (b->tmp[0] != '\0')
		nftw(b->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	b->tmp[0] = '\0';
}

long
proc_raise_nofile(long want)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if ((long)rl.rlim_cur >= want)
		return (long)rl.rlim_cur;
	rl.rlim_cur = (rlim_t)want;
	if ((long)rl.rlim_max < want)
		rl.rlim_max = (rlim_t)want; /* allowed with CAP_SYS_RESOURCE */
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	return (long)rl.rlim_cur;
}

int
proc_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	return fd;
}

/* Connect until something answers on path, while pid lives. */
static int
wait_ready(pid_t pid, const char *path, const char *what, const char *log)
{
	uint64_t deadline = proc_now_ns() + READY_TIMEOUT_NS;
	int status;

	for (;;) {
		int fd = proc_connect(path);

		if (fd >= 0) {
			close(fd);
			return 0;
		}
		if (waitpid(pid, &status, WNOHANG) == pid) {
			bench_fail("%s exited before it was ready (status %d); "
				   "see %s",
				   what, status, log);
			return -1;
		}
		if (proc_now_ns() > deadline) {
			bench_fail(
			    "%s did not accept on %s within 20 s; see %s", what,
			    path, log);
			return -1;
		}
		/* Between connection attempts, not instead of them. */
		proc_sleep_us(1000);
	}
}

static void
redirect_output(const char *log)
{
	int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

	if (fd >= 0) {
		dup2(fd, 1);
		dup2(fd, 2);
		close(fd);
	}
}

pid_t
proc_start_daemon(struct bench *b, const char *sock, const char *data,
		  const char *const *opts, int nopts)
{
	char log[PATH_MAX + 16];
	const char *argv[64];
	int argc = 0;
	pid_t pid;

	snprintf(log, sizeof log, "%s/arbiterd-%d.log", b->tmp, b->daemons++);
	if (b->wrapper != NULL && *b->wrapper != '\0') {
		/* The wrapper is a command line: let the shell split it. */
		argv[argc++] = "/bin/sh";
		argv[argc++] = "-c";
		argv[argc++] = "exec $ARBITERD_WRAPPER \"$@\"";
		argv[argc++] = "sh";
	}
	argv[argc++] = b->arbiterd;
	argv[argc++] = "-S";
	argv[argc++] = sock;
	argv[argc++] = "-s";
	argv[argc++] = data;
	argv[argc++] = "-o";
	argv[argc++] = "log.level=warn";
	argv[argc++] = "-o";
	argv[argc++] = "limits.max_connections=20000";
	for (int i = 0; i < nopts && argc < 60; i++) {
		argv[argc++] = "-o";
		argv[argc++] = opts[i];
	}
	argv[argc] = NULL;

	pid = proc_fork();
	if (pid < 0) {
		bench_fail("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		struct rlimit rl = {65536, 65536};
		int rc;

		/* 10,000 connections need more than the usual 1024 fds. */
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			getrlimit(RLIMIT_NOFILE, &rl);
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		/* Its own process group, so proc_stop reaches a wrapper's
		 * children too (strace forks the daemon it traces). */
		setpgid(0, 0);
		redirect_output(log);
		/* Pinned before exec, so a wrapper's children inherit it. */
		rc = proc_pin(b->cpu_server);
		if (rc < 0)
			fprintf(stderr, "cannot pin arbiterd to CPU %d: %s\n",
				b->cpu_server, strerror(-rc));
		execv(argv[0], (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	if (wait_ready(pid, sock, "arbiterd", log) < 0)
		return -1;
	return pid;
}

pid_t
proc_start_redis(struct bench *b)
{
	char log[PATH_MAX + 16], dir[PATH_MAX];
	pid_t pid;

	if (access("/usr/bin/redis-server", X_OK) != 0)
		return 0;
	snprintf(b->redis_sock, sizeof b->redis_sock, "%.63s/redis.sock",
		 b->tmp);
	snprintf(log, sizeof log, "%s/redis.log", b->tmp);
	snprintf(dir, sizeof dir, "%s", b->tmp);
	pid = proc_fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		redirect_output(log);
		proc_pin(b->cpu_server);
		execl("/usr/bin/redis-server", "redis-server", "--port", "0",
		      "--unixsocket", b->redis_sock, "--unixsocketperm", "700",
		      "--save", "", "--appendonly", "no", "--dir", dir,
		      "--daemonize", "no", "--maxclients", "1000",
		      (char *)NULL);
		_exit(127);
	}
	if (wait_ready(pid, b->redis_sock, "redis-server", log) < 0) {
		b->redis_sock[0] = '\0';
		return -1;
	}
	return pid;
}

/*
 * The plain Unix-socket server: one epoll loop that echoes what it reads
 * and stamps the moment it sees EOF. It is what arbiterd would be with no
 * protocol and no lock manager, so it is both the round-trip floor of an
 * event-loop server and the reference for how fast a death is noticed.
 */
static void
echo_main(int lfd, struct bench_shm *shm, int notify)
{
	struct epoll_event ev = {.events = EPOLLIN}, evs[64];
	char buf[4096];
	int ep = epoll_create1(EPOLL_CLOEXEC);

	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 64, -1);

		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			ssize_t r;

			if (fd == lfd) {
				int c;

				while ((c = accept4(lfd, NULL, NULL,
						    SOCK_NONBLOCK |
							SOCK_CLOEXEC)) >= 0) {
					ev.events = EPOLLIN;
					ev.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
				continue;
			}
			r = read(fd, buf, sizeof buf);
			if (r > 0) {
				(void)!write(fd, buf, (size_t)r);
				continue;
			}
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			atomic_store(&shm->eof_ns, proc_now_ns());
			atomic_fetch_add(&shm->eof_count, 1);
			close(fd);
			(void)!write(notify, "e", 1);
		}
	}
}

pid_t
proc_start_echo(struct bench *b)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int lfd, p[2];
	pid_t pid;

	snprintf(b->echo_sock, sizeof b->echo_sock, "%.63s/echo.sock", b->tmp);
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", b->echo_sock);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    listen(lfd, 1024) < 0 || pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
		bench_fail("echo server on %s: %s", b->echo_sock,
			   strerror(errno));
		return -1;
	}
	pid = proc_fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		close(p[0]);
		proc_pin(b->cpu_server);
		echo_main(lfd, b->shm, p[1]);
		_exit(0);
	}
	close(lfd);
	close(p[1]);
	b->echo_notify = p[0];
	return pid;
}

void
proc_stop(pid_t pid)
{
	uint64_t deadline;
	int status;

	if (pid <= 0)
		return;
	/* The daemon leads its own group (see proc_start_daemon). */
	if (kill(-pid, SIGTERM) < 0)
		kill(pid, SIGTERM);
	deadline = proc_now_ns() + 10000000000ull;
	while (waitpid(pid, &status, WNOHANG) == 0) {
		if (proc_now_ns() > deadline) {
			if (kill(-pid, SIGKILL) < 0)
				kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return;
		}
		proc_sleep_us(2000);
	}
}

static long long
status_field(const char *path, const char *field)
{
	char line[256];
	size_t len = strlen(field);
	long long v = -1;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, field, len) == 0 && line[len] == ':') {
			v = strtoll(line + len + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

long
proc_rss_kib(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	return (long)status_field(path, "VmRSS");
}

long long
proc_ctxt_switches(pid_t pid)
{
	char path[300];
	struct dirent *d;
	long long sum = 0;
	DIR *dir;

	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	dir = opendir(path);
	if (dir == NULL)
		return -1;
	while ((d = readdir(dir)) != NULL) {
		long long v, nv;

		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/proc/%d/task/%s/status", (int)pid,
			 d->d_name);
		v = status_field(path, "voluntary_ctxt_switches");
		nv = status_field(path, "nonvoluntary_ctxt_switches");
		if (v >= 0)
			sum += v;
		if (nv >= 0)
			sum += nv;
	}
	closedir(dir);
	return sum;
}

void
proc_machine(char *buf, size_t len)
{
	char model[128] = "unknown CPU", line[256], cs[64] = "?";
	struct utsname u;
	FILE *f = fopen("/proc/cpuinfo", "r");

	if (f != NULL) {
		while (fgets(line, sizeof line, f) != NULL) {
			char *colon = strchr(line, ':');

			if (strncmp(line, "model name", 10) == 0 && colon) {
				snprintf(model, sizeof model, "%s", colon + 2);
				model[strcspn(model, "\n")] = '\0';
				break;
			}
		}
		fclose(f);
	}
	f = fopen("/sys/devices/system/clocksource/clocksource0/"
		  "current_clocksource",
		  "r");
	if (f != NULL) {
		if (fgets(cs, sizeof cs, f) != NULL)
			cs[strcspn(cs, "\n")] = '\0';
		fclose(f);
	}
	uname(&u);
	snprintf(buf, len, "%ld CPUs (%s), Linux %s, clocksource %s",
		 sysconf(_SC_NPROCESSORS_ONLN), model, u.release, cs);
}

void
proc_loadavg(char *buf, size_t len)
{
	double a = -1, b5 = -1, c = -1;
	FILE *f = fopen("/proc/loadavg", "r");

	if (f != NULL) {
		if (fscanf(f, "%lf %lf %lf", &a, &b5, &c) != 3)
			a = b5 = c = -1;
		fclose(f);
	}
	snprintf(buf, len, "%.2f %.2f %.2f", a, b5, c);
}

int
proc_pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return 0;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

void
proc_unpin(const struct bench *b)
{
	if (b->cpu_server >= 0)
		sched_setaffinity(0, sizeof b->cpus_all, &b->cpus_all);
}

void
proc_cpus_init(struct bench *b)
{
	int first = -1, second = -1, rc;

	b->cpu_server = b->cpu_client = -1;
	b->places[0] = PLACE_NONE;
	b->nplaces = 1;
	if (sched_getaffinity(0, sizeof b->cpus_all, &b->cpus_all) < 0) {
		bench_progress("sched_getaffinity: %s: nothing is pinned, "
			       "latency figures mix placements",
			       strerror(errno));
		return;
	}
	for (int c = 0; c < CPU_SETSIZE && second < 0; c++)
		if (CPU_ISSET(c, &b->cpus_all)) {
			if (first < 0)
				first = c;
			else
				second = c;
		}
	/* Try it once here, so a refusal (a cpuset that forbids it) is said
	 * once instead of failing in every child. */
	rc = proc_pin(first);
	if (first < 0 || rc < 0) {
		bench_progress("cannot pin to CPU %d (%s): nothing is pinned, "
			       "latency figures mix placements",
			       first, rc < 0 ? strerror(-rc) : "no CPU");
		return;
	}
	sched_setaffinity(0, sizeof b->cpus_all, &b->cpus_all);
	b->cpu_server = first;
	b->cpu_client = second;
	b->places[0] = PLACE_SAME;
	if (second >= 0) {
		b->places[1] = PLACE_SPLIT;
		b->nplaces = 2;
	} else
		bench_progress("only CPU %d is allowed: no two-CPU placement",
			       first);
}

int
place_client_cpu(const struct bench *b, enum place p)
{
	switch (p) {
	case PLACE_SAME:
		return b->cpu_server;
	case PLACE_SPLIT:
		return b->cpu_client;
	default:
		return -1;
	}
}

const char *
place_suffix(enum place p)
{
	static const char *const sfx[PLACE_COUNT] = {[PLACE_NONE] = "",
						     [PLACE_SAME] = ".same",
						     [PLACE_SPLIT] = ".split"};

	return sfx[p];
}
