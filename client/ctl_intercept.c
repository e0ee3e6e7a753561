/*
 * arbiterctl intercept: run an unmodified program with
 * libarbiter-intercept.so preloaded, so that its own locks on the named
 * lock files become arbiter leases (intercept.c has the semantics). This
 * file only turns the command line into the shim's environment
 * (intercept.h), finds the shim, refuses a program that cannot load it,
 * and execs the program.
 *
 * A program without an ELF interpreter (PT_INTERP) is linked statically:
 * no dynamic loader runs in it, so nothing can be preloaded and its locks
 * would silently stay plain ones. Such a program is refused with the way
 * out (arbiterctl run around it). A script is judged by its #!
 * interpreter, through env(1) to the program env runs. A program that is
 * set-uid or set-gid to someone else is refused alike: the loader ignores
 * LD_PRELOAD there.
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl_intercept.h"
#include "ctl_run.h"
#include "intercept.h"

/* The help text keeps its own layout. */
/* clang-format off */
void
ctl_intercept_usage(FILE *out)
{
	fputs("        Run CMD, unchanged, with libarbiter-intercept.so preloaded: its\n"
	      "        own locks on PATH (flock, fcntl F_SETLK/F_SETLKW/F_OFD_SETLK*,\n"
	      "        lockf) become leases on NAME (default: PATH made absolute, the\n"
	      "        name arbiter_client.FileLock uses). A lock that would fail\n"
	      "        because another process holds it (LOCK_NB, F_SETLK) waits for\n"
	      "        the lease instead, at most -w SECS (default: for ever), then\n"
	      "        fails as it would have; the real lock is taken too. Unlocking,\n"
	      "        closing the last descriptor of the lock, or dying ends the\n"
	      "        lease. Shared locks take shared leases unless -x (every lease\n"
	      "        exclusive) or -s (every lease shared). --file may be repeated;\n"
	      "        a folder means every file locked under it, each its own\n"
	      "        resource. A file is known by the name CMD opens it under (a\n"
	      "        hard link or a symlink of another name is another file).\n"
	      "        Other files are untouched: their lock calls go straight to\n"
	      "        the kernel.\n"
	      "        When the arbiter cannot be reached the program says so once on\n"
	      "        stderr and takes the plain lock; --on-unavailable fail makes\n"
	      "        the lock fail (ENOLCK) instead. -v: a line per lease taken,\n"
	      "        awaited and ended.\n"
	      "        The same works without arbiterctl (a Dockerfile ENV, a\n"
	      "        Kubernetes env block): LD_PRELOAD=/path/libarbiter-intercept.so\n"
	      "        and ARBITER_INTERCEPT_FILES=PATH[:PATH...], with\n"
	      "        ARBITER_INTERCEPT_RESOURCE, ARBITER_INTERCEPT_MODE\n"
	      "        (exclusive|shared), ARBITER_INTERCEPT_WAIT (seconds),\n"
	      "        ARBITER_INTERCEPT_ON_UNAVAILABLE (lock|fail),\n"
	      "        ARBITER_INTERCEPT_VERBOSE=1, and ARBITER_SOCKET and\n"
	      "        ARBITER_TRUST_UID as for every client.\n"
	      "        A statically linked CMD (a Go binary, say) cannot load the\n"
	      "        library, nor can a CMD set-uid or set-gid to someone else: it\n"
	      "        is refused (exit 64); run it under 'arbiterctl run' instead.\n"
	      "        The library is looked for in $ARBITER_INTERCEPT_LIB, beside\n"
	      "        arbiterctl, then in ../lib from arbiterctl's folder.\n"
	      "        Exits with CMD's status (it replaces arbiterctl); 126/127 when\n"
	      "        CMD cannot be run.\n",
	      out);
}
/* clang-format on */

struct icpt_opts {
	char files[8192]; /* ':'-separated, absolute */
	const char *resource;
	const char *mode;
	const char *wait;
	const char *on_unavailable;
	bool verbose;
	char **cmd;
};

/* PATH made absolute (not resolved: the file need not exist yet). */
static void
add_file(struct icpt_opts *o, const char *path)
{
	char cwd[PATH_MAX];
	size_t len = strlen(o->files);
	int n;

	if (path[0] == '\0')
		die(EXIT_USAGE, "intercept: --file: an empty path");
	if (strchr(path, ':') != NULL)
		die(EXIT_USAGE,
		    "intercept: --file %s: a path with ':' cannot be passed "
		    "on (%s is ':'-separated); use a link to it",
		    path, INTERCEPT_ENV_FILES);
	if (path[0] != '/' && getcwd(cwd, sizeof cwd) == NULL)
		die(EXIT_SOFTWARE, "intercept: getcwd: %s", strerror(errno));
	n = snprintf(o->files + len, sizeof o->files - len, "%s%s%s%s",
		     len ? ":" : "", path[0] == '/' ? "" : cwd,
		     path[0] == '/' ? "" : "/", path);
	if (n < 0 || (size_t)n >= sizeof o->files - len)
		die(EXIT_USAGE,
		    "intercept: --file: too many or too long paths");
}

static void
parse_args(struct icpt_opts *o, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"file", required_argument, NULL, 'f'},
	    {"resource", required_argument, NULL, 'r'},
	    {"exclusive", no_argument, NULL, 'x'},
	    {"shared", no_argument, NULL, 's'},
	    {"wait", required_argument, NULL, 'w'},
	    {"on-unavailable", required_argument, NULL, 'U'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static const char use[] = "usage: arbiterctl intercept --file PATH "
				  "[--resource NAME] [-x|-s] [-w SECS] -- CMD "
				  "[ARG...]";
	int ch;

	optind = 0;
	argv[0] = "arbiterctl intercept";
	while ((ch = getopt_long(argc, argv, "+f:r:xsw:vh", opts, NULL)) !=
	       -1) {
		switch (ch) {
		case 'f':
			add_file(o, optarg);
			break;
		case 'r':
			o->resource = optarg;
			break;
		case 'x':
			o->mode = "exclusive";
			break;
		case 's':
			o->mode = "shared";
			break;
		case 'w':
			(void)parse_secs(optarg, "-w");
			o->wait = optarg;
			break;
		case 'U':
			if (strcmp(optarg, "lock") != 0 &&
			    strcmp(optarg, "fail") != 0)
				die(EXIT_USAGE,
				    "intercept: --on-unavailable: '%s' is "
				    "neither lock nor fail",
				    optarg);
			o->on_unavailable = optarg;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			(void)command_help(stdout, "intercept");
			exit(0);
		default:
			fprintf(stderr, "%s\n", use);
			exit(EXIT_USAGE);
		}
	}
	if (o->files[0] == '\0')
		die(EXIT_USAGE, "intercept: --file PATH is missing; %s", use);
	if (optind < argc && strcmp(argv[optind], "--") == 0)
		optind++;
	if (optind >= argc)
		die(EXIT_USAGE, "intercept: missing the command to run; %s",
		    use);
	o->cmd = &argv[optind];
}

/* ------------------------------------------------------------ the shim */

static bool
readable(const char *path)
{
	return access(path, R_OK) == 0;
}

/* The shim's absolute path into buf, or false with where it looked. */
static bool
find_shim(char *buf, size_t len, char *looked, size_t looklen)
{
	const char *env = getenv(INTERCEPT_ENV_LIB);
	char exe[PATH_MAX - 64], *slash;
	ssize_t n;

	looked[0] = '\0';
	if (env != NULL && *env != '\0') {
		snprintf(buf, len, "%s", env);
		if (buf[0] == '/' && readable(buf))
			return true;
		snprintf(looked, looklen, "%s=%s (%s), ", INTERCEPT_ENV_LIB,
			 env, buf[0] == '/' ? "not readable" : "not absolute");
	}
	n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n <= 0)
		return false;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (slash == NULL)
		return false;
	*slash = '\0';
	snprintf(buf, len, "%s/%s", exe, INTERCEPT_LIB_NAME);
	if (readable(buf))
		return true;
	size_t k = strlen(looked);

	snprintf(looked + k, looklen - k, "%s, ", buf);
	snprintf(buf, len, "%s/../lib/%s", exe, INTERCEPT_LIB_NAME);
	if (readable(buf)) {
		char *rp = realpath(buf, NULL);

		if (rp != NULL) {
			snprintf(buf, len, "%s", rp);
			free(rp);
		}
		return true;
	}
	k = strlen(looked);
	snprintf(looked + k, looklen - k, "%s", buf);
	return false;
}

/* ------------------------------------------------------------ static? */

/* CMD as execvp would find it, into buf; false when it finds nothing. */
static bool
which(const char *cmd, char *buf, size_t len)
{
	const char *path = getenv("PATH");

	if (strchr(cmd, '/') != NULL) {
		snprintf(buf, len, "%s", cmd);
		return access(buf, X_OK) == 0;
	}
	if (path == NULL)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (const char *p = path;; p++) {
		size_t n = strcspn(p, ":");

		snprintf(buf, len, "%.*s%s%s", (int)n, n ? p : "", n ? "/" : "",
			 cmd);
		if (access(buf, X_OK) == 0) {
			struct stat st;

			if (stat(buf, &st) == 0 && S_ISREG(st.st_mode))
				return true;
		}
		p += n;
		if (*p == '\0')
			return false;
	}
}

enum linkage { L_DYNAMIC, L_STATIC, L_UNKNOWN };

/* Whether an ELF file has a program interpreter (PT_INTERP). */
static enum linkage
elf_linkage(int fd, const unsigned char *id, size_t got)
{
	bool is64 = id[EI_CLASS] == ELFCLASS64;
	uint64_t phoff;
	unsigned phnum, phentsize;

	if (got < (is64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr)))
		return L_UNKNOWN;
	if (is64) {
		const Elf64_Ehdr *h = (const void *)id;

		phoff = h->e_phoff;
		phnum = h->e_phnum;
		phentsize = h->e_phentsize;
	} else {
		const Elf32_Ehdr *h = (const void *)id;

		phoff = h->e_phoff;
		phnum = h->e_phnum;
		phentsize = h->e_phentsize;
	}
	if (phentsize < (is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr)) ||
	    phnum > 4096)
		return L_UNKNOWN;
	for (unsigned i = 0; i < phnum; i++) {
		union {
			Elf64_Phdr p64;
			Elf32_Phdr p32;
		} ph;
		size_t want = is64 ? sizeof ph.p64 : sizeof ph.p32;

		if (pread(fd, &ph, want,
			  (off_t)(phoff + (uint64_t)i * phentsize)) !=
		    (ssize_t)want)
			return L_UNKNOWN;
		if ((is64 ? ph.p64.p_type : ph.p32.p_type) == PT_INTERP)
			return L_DYNAMIC;
	}
	return L_STATIC;
}

/*
 * Whether the program at path can load a preloaded library; for a script,
 * its interpreter's answer (through env to the program it runs). The
 * program that decides goes into what.
 */
static enum linkage
linkage(const char *path, int depth, char *what, size_t whatlen)
{
	unsigned char head[512];
	ssize_t got;
	int fd;

	snprintf(what, whatlen, "%s", path);
	if (depth > 4)
		return L_UNKNOWN;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return L_UNKNOWN;
	got = read(fd, head, sizeof head - 1);
	if (got >= 4 && memcmp(head, ELFMAG, SELFMAG) == 0) {
		enum linkage l = elf_linkage(fd, head, (size_t)got);

		close(fd);
		return l;
	}
	close(fd);
	if (got >= 2 && head[0] == '#' && head[1] == '!') {
		char *s = (char *)head + 2, *interp, *arg, *save;
		char found[PATH_MAX];

		head[got] = '\0';
		s[strcspn(s, "\n")] = '\0';
		interp = strtok_r(s, " \t", &save);
		if (interp == NULL)
			return L_UNKNOWN;
		arg = strtok_r(NULL, " \t", &save);
		/* #!/usr/bin/env [-S] prog: env is dynamic; prog decides. */
		if (arg != NULL && strcmp(arg, "-S") == 0)
			arg = strtok_r(NULL, " \t", &save);
		if (arg != NULL && strlen(interp) >= 4 &&
		    strcmp(interp + strlen(interp) - 4, "/env") == 0 &&
		    arg[0] != '-' && which(arg, found, sizeof found))
			return linkage(found, depth + 1, what, whatlen);
		return linkage(interp, depth + 1, what, whatlen);
	}
	return L_UNKNOWN; /* not ours to judge: execvp will say */
}

/*
 * Whether exec would switch to another uid or gid (set-uid, set-gid): the
 * loader then runs in secure mode and ignores LD_PRELOAD.
 */
static bool
runs_as_another(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return false;
	return ((st.st_mode & S_ISUID) && st.st_uid != geteuid()) ||
	       ((st.st_mode & S_ISGID) && st.st_gid != getegid());
}

/* ------------------------------------------------------------ intercept */

static void
set(const char *name, const char *value)
{
	if (value != NULL && setenv(name, value, 1) < 0)
		die(EXIT_SOFTWARE, "intercept: setenv %s: %s", name,
		    strerror(errno));
}

int
ctl_intercept(int argc, char **argv)
{
	struct icpt_opts o = {.files = ""};
	char shim[PATH_MAX], looked[3 * PATH_MAX], prog[PATH_MAX] = "";
	char what[PATH_MAX], preload[2 * PATH_MAX + 2];
	const char *old;

	parse_args(&o, argc, argv);
	if (!find_shim(shim, sizeof shim, looked, sizeof looked))
		die(EXIT_SOFTWARE,
		    "intercept: cannot find %s (looked at %s): build it with "
		    "'make' (it lands beside arbiterctl), install it with "
		    "'make install', or name it with %s",
		    INTERCEPT_LIB_NAME, looked, INTERCEPT_ENV_LIB);
	if (which(o.cmd[0], prog, sizeof prog) &&
	    linkage(prog, 0, what, sizeof what) == L_STATIC)
		die(EXIT_USAGE,
		    "intercept: %s is statically linked (%s has no ELF "
		    "interpreter), so no library can be preloaded into it "
		    "and its locks cannot be intercepted. Run it whole under "
		    "a lease instead: arbiterctl run -x RESOURCE -- %s ...",
		    o.cmd[0], what, o.cmd[0]);
	if (prog[0] != '\0' && runs_as_another(prog))
		die(EXIT_USAGE,
		    "intercept: %s is set-uid or set-gid to another user or "
		    "group, so the dynamic loader ignores LD_PRELOAD in it "
		    "and its locks cannot be intercepted. Run it whole under "
		    "a lease instead: arbiterctl run -x RESOURCE -- %s ...",
		    prog, o.cmd[0]);

	set(INTERCEPT_ENV_FILES, o.files);
	set(INTERCEPT_ENV_RESOURCE, o.resource);
	set(INTERCEPT_ENV_MODE, o.mode);
	set(INTERCEPT_ENV_WAIT, o.wait);
	set(INTERCEPT_ENV_ON_UNAVAILABLE, o.on_unavailable);
	if (o.verbose)
		set(INTERCEPT_ENV_VERBOSE, "1");
	/* -S and -c name the socket for the program too. */
	set("ARBITER_SOCKET", socket_path);
	if (trust_env[0] != '\0') {
		const char *t = getenv("ARBITER_TRUST_UID");
		char all[sizeof trust_env + 1024];

		snprintf(all, sizeof all, "%s%s%s", t ? t : "",
			 t && *t ? "," : "", trust_env);
		set("ARBITER_TRUST_UID", all);
	}
	/* After what is preloaded already: a sanitizer runtime must stay
	 * first. */
	old = getenv("LD_PRELOAD");
	if (old != NULL && strstr(old, shim) != NULL)
		snprintf(preload, sizeof preload, "%s", old);
	else
		snprintf(preload, sizeof preload, "%s%s%s", old ? old : "",
			 old && *old ? ":" : "", shim);
	set("LD_PRELOAD", preload);
	fflush(NULL);
	execvp(o.cmd[0], o.cmd);
	fprintf(stderr, "arbiterctl: intercept: cannot run %s: %s\n", o.cmd[0],
		strerror(errno));
	return errno == ENOENT ? EXIT_NOTFOUND : EXIT_NOEXEC;
}
