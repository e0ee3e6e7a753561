/*
 * libarbiter-intercept.so: an LD_PRELOAD shim that turns an unmodified
 * program's own locks on its lock files into arbiter leases, so that a
 * second instance waits its turn instead of failing with "already
 * accessed", and gets the lock the moment the first one unlocks or dies.
 *
 * What it owns: the wrappers of flock, fcntl/fcntl64 (F_SETLK, F_SETLKW,
 * F_OFD_SETLK, F_OFD_SETLKW), lockf/lockf64, close, fclose, dup/dup2/dup3,
 * ioctl (FIOCLEX, FIONCLEX: how Python sets FD_CLOEXEC), and the table of this
 * process's intercepted locks and their leases.
 *
 * A lock on a configured file (intercept.h: ARBITER_INTERCEPT_FILES)
 * first waits for the lease on its resource, then takes the real lock
 * too, so a process not under the shim still sees the file locked.
 * A non-blocking lock waits up to ARBITER_INTERCEPT_WAIT (default:
 * forever) instead of failing; a blocking one waits as long as it would
 * have. Unlocking, closing the last descriptor of the lock, or dying
 * ends the lease. A lock call on another file costs one load of a bit:
 * the shim notes, as files are opened, the descriptors whose name no
 * target has (see "other files" below); a descriptor it did not see
 * opened is looked at (one fstat) on each lock call.
 *
 * Lock objects follow the kernel's rules:
 *  - flock and OFD locks belong to an open file description: one lease
 *    per description, kept by each descriptor that refers to it (dup,
 *    fork). Its connection is inherited by fork like the description, and
 *    across exec when one of its descriptors survives exec (no
 *    FD_CLOEXEC; followed through F_SETFD, FIOCLEX/FIONCLEX and dups).
 *  - fcntl record locks (F_SETLK, lockf) belong to the process and the
 *    file: one lease per file, ended by the first close of any descriptor
 *    of that file; a forked child gets neither the lock nor the lease
 *    (its copy of the connection is closed at fork).
 *  - Byte ranges are tracked: the lease is exclusive while any range is
 *    write-locked, shared while only read locks remain, ended with the
 *    last range.
 * A second lock on the same file from the same process, while a lease is
 * held or awaited there, never waits for the lease: the kernel answers it,
 * as without the shim. So does a lock whose lease is held by this process
 * (a connection kept across exec) or by its parent (arbiterctl run, a
 * forked holder): the arbiter is asked who holds it before waiting.
 *
 * The shim's own calls (libarbiter closing its socket, setting flags) pass
 * straight through: a thread-local flag marks them. One mutex guards the
 * table; no wait for a lease or for a blocking lock holds it.
 */
/* The shim defines open() and friends itself: no inline fortified forms. */
#undef _FORTIFY_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/kcmp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "arbiter.h"
#include "arbiter.pb-c.h"
#include "intercept.h"

#define MAX_TARGETS 32
#define MAX_ENTRIES 64
#define MAX_FDS	    8 /* descriptors of one description we follow */
#define MAX_IDLE    2 /* connections kept for the next lock */
#define RES_MAX	    256

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------ the real calls
 */

static struct {
	int (*flock)(int, int);
	int (*fcntl)(int, int, ...);
	int (*fcntl64)(int, int, ...);
	int (*lockf)(int, int, off_t);
	int (*lockf64)(int, int, off64_t);
	int (*close)(int);
	int (*dup)(int);
	int (*dup2)(int, int);
	int (*dup3)(int, int, int);
	int (*ioctl)(int, unsigned long, ...);
	int (*fclose)(FILE *);
	int (*open)(const char *, int, ...);
	int (*open64)(const char *, int, ...);
	int (*openat)(int, const char *, int, ...);
	int (*openat64)(int, const char *, int, ...);
	int (*open_2)(const char *, int);
	int (*open64_2)(const char *, int);
	int (*openat_2)(int, const char *, int);
	int (*openat64_2)(int, const char *, int);
	int (*creat)(const char *, mode_t);
	int (*creat64)(const char *, mode_t);
	FILE *(*fopen)(const char *, const char *);
	FILE *(*fopen64)(const char *, const char *);
	FILE *(*freopen)(const char *, const char *, FILE *);
	FILE *(*freopen64)(const char *, const char *, FILE *);
	int (*close_range)(unsigned, unsigned, int);
	void (*closefrom)(int);
} real;

/* This process, as of init or its last fork(). */
static pid_t mypid;

/* Set while the shim itself runs: its own calls go straight through. */
static __thread int inside __attribute__((tls_model("initial-exec")));

static void *
next_fn(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static void
load_real(void)
{
	*(void **)&real.flock = next_fn("flock");
	*(void **)&real.fcntl = next_fn("fcntl");
	*(void **)&real.fcntl64 = next_fn("fcntl64");
	*(void **)&real.lockf = next_fn("lockf");
	*(void **)&real.lockf64 = next_fn("lockf64");
	*(void **)&real.close = next_fn("close");
	*(void **)&real.dup = next_fn("dup");
	*(void **)&real.dup2 = next_fn("dup2");
	*(void **)&real.dup3 = next_fn("dup3");
	*(void **)&real.ioctl = next_fn("ioctl");
	*(void **)&real.fclose = next_fn("fclose");
	*(void **)&real.open = next_fn("open");
	*(void **)&real.open64 = next_fn("open64");
	*(void **)&real.openat = next_fn("openat");
	*(void **)&real.openat64 = next_fn("openat64");
	*(void **)&real.open_2 = next_fn("__open_2");
	*(void **)&real.open64_2 = next_fn("__open64_2");
	*(void **)&real.openat_2 = next_fn("__openat_2");
	*(void **)&real.openat64_2 = next_fn("__openat64_2");
	*(void **)&real.creat = next_fn("creat");
	*(void **)&real.creat64 = next_fn("creat64");
	*(void **)&real.fopen = next_fn("fopen");
	*(void **)&real.fopen64 = next_fn("fopen64");
	*(void **)&real.freopen = next_fn("freopen");
	*(void **)&real.freopen64 = next_fn("freopen64");
	*(void **)&real.close_range = next_fn("close_range");
	*(void **)&real.closefrom = next_fn("closefrom");
	if (real.fcntl64 == NULL) /* a glibc before 2.28 */
		real.fcntl64 = real.fcntl;
	if (real.lockf64 == NULL)
		*(void **)&real.lockf64 = *(void **)&real.lockf;
}

/* ------------------------------------------------------------ config */

struct target {
	char *path;	/* absolute, as configured */
	char *name;	/* the resource: realpath of its folder + its name */
	size_t pathlen; /* folders: the length of path */
	bool dir;	/* a folder: every file under it */
	atomic_bool resolved; /* dev and ino are known */
	dev_t dev;
	ino_t ino;
	/* Files: the names an open of it has (configured, and real when
	 * that differs); "" for none. */
	char base[2][NAME_MAX + 1];
};

static struct {
	bool on;
	struct target t[MAX_TARGETS];
	size_t n;
	bool dirs;		/* a folder is among the targets */
	char resource[RES_MAX]; /* "": per file */
	int mode;		/* -1: as the lock says; else enum arb_mode */
	int64_t wait_ms;	/* for a non-blocking lock; -1: forever */
	bool fail;		/* ON_UNAVAILABLE=fail */
	bool verbose;
	char name[64]; /* the client name status shows */
} cfg = {.mode = -1, .wait_ms = -1};

static atomic_bool inited;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static atomic_bool warned;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line on stderr, written at once (no stdio buffer to fork along). */
static void
say(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n = snprintf(line, sizeof line,
			 "arbiter-intercept[%d]: ", (int)getpid());

	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, (size_t)n);
}

/* Resolve a target's identity, now that it may exist. */
static void
resolve(struct target *t)
{
	struct stat st;

	if (stat(t->path, &st) < 0)
		return;
	t->dir = S_ISDIR(st.st_mode);
	t->dev = st.st_dev;
	t->ino = st.st_ino;
	atomic_store_explicit(&t->resolved, true, memory_order_release);
}

/* Resolves targets that did not exist yet (a lock file made later). */
static pthread_mutex_t resolve_mu = PTHREAD_MUTEX_INITIALIZER;

/* The resource of a lock file: its folder's real path and its name. */
static char *
resource_of(const char *path)
{
	char *slash = strrchr(path, '/'), *dir, *out;
	size_t need;

	if (slash == NULL || slash == path)
		return strdup(path);
	dir = strndup(path, (size_t)(slash - path));
	if (dir == NULL)
		return NULL;
	char *real_dir = realpath(dir, NULL);

	need = strlen(real_dir ? real_dir : dir) + strlen(slash) + 1;
	out = malloc(need);
	if (out != NULL)
		snprintf(out, need, "%s%s", real_dir ? real_dir : dir, slash);
	free(real_dir);
	free(dir);
	return out;
}

/* A file name's last part, when it fits. */
static void
set_base(char out[NAME_MAX + 1], const char *path)
{
	const char *b = strrchr(path, '/');

	b = b ? b + 1 : path;
	if (strlen(b) <= NAME_MAX)
		memcpy(out, b, strlen(b) + 1);
}

static bool
add_target(const char *p, size_t len)
{
	struct target *t;
	char cwd[PATH_MAX], *path;

	if (len == 0)
		return true;
	if (cfg.n == MAX_TARGETS) {
		say("%s lists more than %d paths; the rest are not "
		    "intercepted",
		    INTERCEPT_ENV_FILES, MAX_TARGETS);
		return false;
	}
	if (p[0] == '/') {
		path = strndup(p, len);
	} else if (getcwd(cwd, sizeof cwd) != NULL) {
		size_t need = strlen(cwd) + len + 2;

		path = malloc(need);
		if (path != NULL)
			snprintf(path, need, "%s/%.*s", cwd, (int)len, p);
	} else {
		path = NULL;
	}
	if (path == NULL)
		return false;
	while (strlen(path) > 1 && path[strlen(path) - 1] == '/')
		path[strlen(path) - 1] = '\0';
	t = &cfg.t[cfg.n++];
	t->path = path;
	t->name = resource_of(path);
	resolve(t);
	if (t->dir) {
		/* A folder matches by the real path of what is locked. */
		char *rp = realpath(path, NULL);

		if (rp != NULL) {
			free(t->path);
			t->path = rp;
		}
	}
	t->pathlen = strlen(t->path);
	if (t->dir) {
		cfg.dirs = true;
	} else {
		char *rp = realpath(path, NULL);

		set_base(t->base[0], t->path);
		if (rp != NULL)
			set_base(t->base[1], rp);
		free(rp);
	}
	return t->name != NULL;
}

static void
init(void)
{
	const char *files = getenv(INTERCEPT_ENV_FILES);
	const char *v;
	extern char *program_invocation_short_name;

	inside++;
	load_real();
	mypid = getpid();
	if (files == NULL || *files == '\0')
		goto done;
	for (const char *p = files; *p;) {
		size_t n = strcspn(p, ":");

		if (!add_target(p, n))
			break;
		p += n;
		if (*p == ':')
			p++;
	}
	v = getenv(INTERCEPT_ENV_RESOURCE);
	if (v != NULL && *v != '\0')
		snprintf(cfg.resource, sizeof cfg.resource, "%s", v);
	v = getenv(INTERCEPT_ENV_MODE);
	if (v != NULL && (strcmp(v, "exclusive") == 0 || strcmp(v, "x") == 0))
		cfg.mode = ARB_EXCLUSIVE;
	else if (v != NULL && (strcmp(v, "shared") == 0 || strcmp(v, "s") == 0))
		cfg.mode = ARB_SHARED;
	else if (v != NULL && *v != '\0' && strcmp(v, "auto") != 0)
		say("%s=%s is neither exclusive, shared nor auto; leases "
		    "follow each lock's own kind",
		    INTERCEPT_ENV_MODE, v);
	v = getenv(INTERCEPT_ENV_WAIT);
	if (v != NULL && *v != '\0' && strcmp(v, "forever") != 0) {
		char *end;
		double s = strtod(v, &end);

		if (*end == '\0' && s >= 0 && s < 1e9)
			cfg.wait_ms = (int64_t)(s * 1000 + 0.5);
		else
			say("%s=%s is not a number of seconds; waiting for "
			    "ever",
			    INTERCEPT_ENV_WAIT, v);
	}
	v = getenv(INTERCEPT_ENV_ON_UNAVAILABLE);
	cfg.fail = v != NULL && strcmp(v, "fail") == 0;
	if (v != NULL && *v != '\0' && !cfg.fail && strcmp(v, "lock") != 0)
		say("%s=%s is neither lock nor fail; falling back to the "
		    "plain lock",
		    INTERCEPT_ENV_ON_UNAVAILABLE, v);
	v = getenv(INTERCEPT_ENV_VERBOSE);
	cfg.verbose = v != NULL && *v != '\0' && strcmp(v, "0") != 0;
	snprintf(cfg.name, sizeof cfg.name, "intercept:%s",
		 program_invocation_short_name);
	cfg.on = cfg.n > 0;
done:
	atomic_store_explicit(&inited, true, memory_order_release);
	inside--;
}

static void at_prepare(void);
static void at_parent(void);
static void at_child(void);

static void
init_all(void)
{
	init();
	if (cfg.on)
		pthread_atfork(at_prepare, at_parent, at_child);
}

static inline bool
active(void)
{
	if (!atomic_load_explicit(&inited, memory_order_acquire))
		pthread_once(&init_once, init_all);
	return cfg.on && inside == 0;
}

__attribute__((constructor)) static void
intercept_start(void)
{
	(void)active();
}

/* ------------------------------------------------------------ other files */

/*
 * Descriptors known not to be lock files, whose lock calls go straight to
 * the kernel, unlooked at. A descriptor is known so when the shim saw it
 * opened (open, openat, creat, fopen, freopen: each form) by a name that
 * no target file has and, with a folder among the targets, on another
 * file system than every target folder. Any other descriptor stays
 * unknown and is looked at (one fstat) on each lock call: one inherited
 * across exec, made by dup or received on a socket, or opened by a
 * target's name. A close, a dup onto it, close_range and closefrom forget
 * what was known of a number, so a later file under it starts unknown.
 *
 * What that does not see: a lock file opened under another name (a hard
 * link, a symlink named otherwise, a file renamed to the lock file's name
 * after it was opened; a name under /proc or /dev/fd is looked at) keeps
 * plain locks, and so would a lock file opened
 * under a number whose last file was both closed and reopened by raw
 * system calls, which no wrapper sees.
 */
#define NOTED_FDS 65536
static _Atomic uint64_t other_fds[NOTED_FDS / 64];

static inline bool
fd_other(int fd)
{
	return fd >= 0 && fd < NOTED_FDS &&
	       (atomic_load_explicit(&other_fds[fd / 64],
				     memory_order_relaxed) >>
		(fd % 64)) &
		   1;
}

static inline void
fd_forget(int fd)
{
	if (fd_other(fd))
		atomic_fetch_and_explicit(&other_fds[fd / 64],
					  ~(UINT64_C(1) << (fd % 64)),
					  memory_order_relaxed);
}

/* Forgets every number from lo to hi, both included. */
static void
fd_forget_range(unsigned lo, unsigned hi)
{
	if (hi >= NOTED_FDS)
		hi = NOTED_FDS - 1;
	for (unsigned fd = lo; fd <= hi && lo < NOTED_FDS;) {
		unsigned w = fd / 64, from = fd % 64;
		unsigned to = w == hi / 64 ? hi % 64 : 63;
		uint64_t bits = (to - from == 63)
				    ? ~UINT64_C(0)
				    : ((UINT64_C(1) << (to - from + 1)) - 1)
					  << from;

		if (atomic_load_explicit(&other_fds[w], memory_order_relaxed) &
		    bits)
			atomic_fetch_and_explicit(&other_fds[w], ~bits,
						  memory_order_relaxed);
		fd = (w + 1) * 64;
	}
}

/* Could a file opened by this name be a target? */
static bool
named_like_target(const char *path)
{
	const char *b = path ? strrchr(path, '/') : NULL;

	/* A name under /proc or /dev/fd reopens whatever its link says. */
	if (path == NULL || strncmp(path, "/proc/", 6) == 0 ||
	    strncmp(path, "/dev/fd/", 8) == 0)
		return true;
	b = b ? b + 1 : path;
	for (size_t i = 0; i < cfg.n; i++) {
		const struct target *t = &cfg.t[i];

		if (!t->dir &&
		    (strcmp(b, t->base[0]) == 0 || strcmp(b, t->base[1]) == 0))
			return true;
	}
	return false;
}

/* Could fd, open on no target's name, be in a target folder? */
static bool
in_target_fs(int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return true;
	if (!S_ISREG(st.st_mode))
		return false;
	for (size_t i = 0; i < cfg.n; i++) {
		const struct target *t = &cfg.t[i];

		if (t->dir && (!atomic_load_explicit(&t->resolved,
						     memory_order_acquire) ||
			       t->dev == st.st_dev))
			return true;
	}
	return false;
}

/* fd was just opened by path: note it when it cannot be a lock file. */
static void
opened(int fd, const char *path)
{
	if (fd < 0 || fd >= NOTED_FDS)
		return;
	if (!active() || named_like_target(path) ||
	    (cfg.dirs && in_target_fs(fd))) {
		fd_forget(fd);
		return;
	}
	atomic_fetch_or_explicit(&other_fds[fd / 64], UINT64_C(1) << (fd % 64),
				 memory_order_relaxed);
}

/* Is fd's file one of ours? Fills st, and res with its resource. */
static bool
match(int fd, struct stat *st, char *res, size_t len)
{
	if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode))
		return false;
	for (size_t i = 0; i < cfg.n; i++) {
		struct target *t = &cfg.t[i];
		const char *name = t->name;
		char link[64], path[PATH_MAX];
		ssize_t n;

		if (!atomic_load_explicit(&t->resolved, memory_order_acquire)) {
			pthread_mutex_lock(&resolve_mu);
			if (!t->resolved)
				resolve(t);
			pthread_mutex_unlock(&resolve_mu);
		}
		if (!atomic_load_explicit(&t->resolved, memory_order_acquire) ||
		    t->dev != st->st_dev)
			continue;
		if (t->dir) {
			snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
			n = readlink(link, path, sizeof path - 1);
			if (n <= (ssize_t)t->pathlen)
				continue;
			path[n] = '\0';
			if (strncmp(path, t->path, t->pathlen) != 0 ||
			    (path[t->pathlen] != '/' && t->pathlen > 1))
				continue;
			name = path;
		} else if (t->ino != st->st_ino) {
			continue;
		}
		if (cfg.resource[0])
			name = cfg.resource;
		if (strlen(name) >= len) {
			static atomic_bool told;

			if (!atomic_exchange(&told, true))
				say("%s is longer than a resource name may be "
				    "(255 bytes), so its locks stay plain; "
				    "name "
				    "one with %s",
				    name, INTERCEPT_ENV_RESOURCE);
			return false;
		}
		memcpy(res, name, strlen(name) + 1);
		return true;
	}
	return false;
}

/* ------------------------------------------------------------ the table */

enum kind { K_FLOCK, K_OFD, K_POSIX };

/* What a lock object needs: nothing, a shared or an exclusive lease. */
enum need { N_NONE = -1, N_SH = ARB_SHARED, N_EX = ARB_EXCLUSIVE };

struct range {
	off_t start, end; /* end exclusive; OFF_MAX: to the end of time */
	short type;	  /* F_RDLCK or F_WRLCK */
};

struct entry {
	bool used;
	bool busy; /* a thread is changing its lease, without the mutex */
	enum kind kind;
	dev_t dev;
	ino_t ino;
	int fds[MAX_FDS]; /* flock/OFD: ours of the description */
	int nfds;
	arb_client *c;	/* the lease's own connection */
	int pending_fd; /* the connection a busy entry waits on, or -1 */
	uint64_t lease;
	enum need held; /* the lease's mode, N_NONE while there is none */
	struct range *r;
	size_t nr;
	pid_t pid;	/* who took the lease */
	unsigned forks; /* fork generation when it was taken */
	char res[RES_MAX];
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct entry ents[MAX_ENTRIES];
/* Entries in use and idle connections: close() and dup() look only then. */
static atomic_int nwatched;
static atomic_int nentries; /* entries alone: an unlock looks only then */
static int nposix;	    /* record-lock entries, for close() */
static unsigned forks;	    /* fork generation */
static arb_client *idle[MAX_IDLE];
static int nidle;

#define OFF_MAX_ ((off_t)(~(uint64_t)0 >> 1))

static off_t
add_off(off_t a, off_t b)
{
	if (b > 0 && a > OFF_MAX_ - b)
		return OFF_MAX_;
	return a + b;
}

static bool
has_fd(const struct entry *e, int fd)
{
	for (int i = 0; i < e->nfds; i++)
		if (e->fds[i] == fd)
			return true;
	return false;
}

static void
add_fd(struct entry *e, int fd)
{
	if (!has_fd(e, fd) && e->nfds < MAX_FDS)
		e->fds[e->nfds++] = fd;
}

static bool
same_description(int a, int b)
{
	pid_t me = getpid();

	return syscall(SYS_kcmp, me, me, KCMP_FILE, a, b) == 0;
}

/* The entry of the lock object fd's request concerns, or NULL. */
static struct entry *
find(enum kind kind, int fd, const struct stat *st)
{
	for (int i = 0; i < MAX_ENTRIES; i++) {
		struct entry *e = &ents[i];

		if (!e->used || e->kind != kind || e->dev != st->st_dev ||
		    e->ino != st->st_ino)
			continue;
		if (kind == K_POSIX || has_fd(e, fd))
			return e;
		/* A descriptor we did not see made (inherited, passed,
		 * duplicated by fcntl in a library we do not wrap). */
		if (e->nfds > 0 && same_description(e->fds[0], fd)) {
			add_fd(e, fd);
			return e;
		}
	}
	return NULL;
}

/* Whether another lock object of this process leases res (or waits). */
static bool
res_taken(const struct entry *self, const char *res)
{
	for (int i = 0; i < MAX_ENTRIES; i++) {
		const struct entry *e = &ents[i];

		if (e != self && e->used && (e->held != N_NONE || e->busy) &&
		    strcmp(e->res, res) == 0)
			return true;
	}
	return false;
}

static struct entry *
new_entry(enum kind kind, int fd, const struct stat *st, const char *res)
{
	for (int i = 0; i < MAX_ENTRIES; i++) {
		struct entry *e = &ents[i];

		if (e->used)
			continue;
		memset(e, 0, sizeof *e);
		e->used = true;
		e->kind = kind;
		e->dev = st->st_dev;
		e->ino = st->st_ino;
		e->held = N_NONE;
		e->pending_fd = -1;
		/* Record locks: the locking descriptor, for FD_CLOEXEC only. */
		add_fd(e, fd);
		snprintf(e->res, sizeof e->res, "%s", res);
		atomic_fetch_add(&nwatched, 1);
		atomic_fetch_add(&nentries, 1);
		if (kind == K_POSIX)
			nposix++;
		return e;
	}
	return NULL;
}

static void
free_entry(struct entry *e)
{
	free(e->r);
	if (e->kind == K_POSIX)
		nposix--;
	memset(e, 0, sizeof *e);
	atomic_fetch_sub(&nwatched, 1);
	atomic_fetch_sub(&nentries, 1);
}

/* ------------------------------------------------------------ ranges */

/* Set [start, end) to type (F_UNLCK removes it) in a copy of e's ranges. */
static struct range *
ranges_set(const struct entry *e, off_t start, off_t end, short type, size_t *n)
{
	struct range *out = malloc((e->nr * 2 + 1) * sizeof *out);
	size_t k = 0;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < e->nr; i++) {
		const struct range *r = &e->r[i];

		if (r->end <= start || r->start >= end) {
			out[k++] = *r;
			continue;
		}
		if (r->start < start)
			out[k++] = (struct range){r->start, start, r->type};
		if (r->end > end)
			out[k++] = (struct range){end, r->end, r->type};
	}
	if (type != F_UNLCK)
		out[k++] = (struct range){start, end, type};
	*n = k;
	return out;
}

static enum need
need_of(const struct range *r, size_t n)
{
	enum need need = N_NONE;

	for (size_t i = 0; i < n; i++) {
		if (r[i].type == F_WRLCK)
			return N_EX;
		need = N_SH;
	}
	return need;
}

/* ------------------------------------------------------------ leases */

static void
warn_unavailable(const char *why, const char *res)
{
	if (atomic_exchange(&warned, true))
		return;
	if (cfg.fail)
		say("cannot lease '%s' from the arbiter: %s; the lock fails "
		    "(ENOLCK) because %s=fail. Start arbiterd, or set "
		    "ARBITER_SOCKET to its socket.",
		    res, why, INTERCEPT_ENV_ON_UNAVAILABLE);
	else
		say("cannot lease '%s' from the arbiter: %s; taking the plain "
		    "lock instead, without a lease, for this and every later "
		    "lock that fails so. Start arbiterd, or set ARBITER_SOCKET "
		    "to its socket (%s=fail makes such locks fail instead).",
		    res, why, INTERCEPT_ENV_ON_UNAVAILABLE);
}

static arb_client *
take_idle(void)
{
	if (nidle == 0)
		return NULL;
	atomic_fetch_sub(&nwatched, 1);
	return idle[--nidle];
}

/* A connection whose lease ended: kept for the next lock, or closed. */
static void
give_idle(arb_client *c)
{
	if (c == NULL)
		return;
	if (nidle < MAX_IDLE && arb_set_inherit(c, false) == 0) {
		idle[nidle++] = c;
		atomic_fetch_add(&nwatched, 1);
		return;
	}
	arb_close(c);
}

/*
 * Whether this runs in the child of a vfork (posix_spawn, Python's
 * subprocess): it shares the parent's memory, so the table is the
 * parent's and must not change; the child closes what it closes and
 * execs. Asked only when a close concerns the table.
 */
static bool
vforked(void)
{
	return getpid() != mypid;
}

/* Does this process, or its parent, hold res (the kernel then decides)? */
static bool
held_nearby(arb_client *c, const char *res)
{
	const void *p;
	const Arbiter__Status *s;
	uint32_t me = (uint32_t)getpid(), parent = (uint32_t)getppid();

	if (arb_status(c, res, &p) < 0)
		return false;
	s = p;
	for (size_t i = 0; i < s->n_resources; i++) {
		const Arbiter__ResourceStatus *r = s->resources[i];

		if (r->resource == NULL || strcmp(r->resource, res) != 0)
			continue;
		for (size_t j = 0; j < r->n_holders; j++) {
			const Arbiter__Holder *h = r->holders[j];

			if (h->pid == me || h->pid == parent ||
			    h->handed_to_pid == me)
				return true;
		}
	}
	return false;
}

enum got { GOT, GOT_NEARBY, GOT_BUSY, GOT_UNAVAILABLE };

/*
 * Lease res in mode on a connection of its own (*cp), without the mutex:
 * at once when free; else, unless this process or its parent holds it,
 * queued for timeout_ms (-1: for ever).
 */
static enum got
get_lease(struct entry *e, arb_client *c, enum arb_mode mode,
	  int64_t timeout_ms, arb_client **cp, struct arb_lease *l)
{
	const char *res = e->res;
	int rc = -ARB_ECONNLOST;

	if (c != NULL) {
		rc = arb_acquire(c, res, mode, 0, NULL, l);
		if (rc < 0 && rc != -ARB_EWOULDBLOCK) {
			/* A kept connection whose daemon went away. */
			arb_close(c);
			c = NULL;
		}
	}
	if (c == NULL) {
		rc = arb_connect(&c, NULL, cfg.name);
		if (rc < 0) {
			warn_unavailable(arb_connect_error(), res);
			*cp = NULL;
			return GOT_UNAVAILABLE;
		}
		rc = arb_acquire(c, res, mode, 0, NULL, l);
	}
	*cp = c;
	/* A fork from another thread while this one waits closes the
	 * child's copy of this connection (at_child). */
	pthread_mutex_lock(&mu);
	e->pending_fd = arb_fd(c);
	pthread_mutex_unlock(&mu);
	if (rc == -ARB_EWOULDBLOCK) {
		if (held_nearby(c, res))
			return GOT_NEARBY;
		if (timeout_ms == 0)
			return GOT_BUSY;
		if (cfg.verbose)
			say("waiting for '%s' (%s)", res,
			    mode == ARB_SHARED ? "shared" : "exclusive");
		rc = arb_acquire(c, res, mode, timeout_ms, NULL, l);
		if (rc == -ARB_ETIMEOUT || rc == -ARB_EWOULDBLOCK)
			return GOT_BUSY;
	}
	if (rc == 0) {
		if (cfg.verbose)
			say("leased '%s' (%s, token %" PRIu64
			    ", waited %.3f ms)",
			    res, mode == ARB_SHARED ? "shared" : "exclusive",
			    l->token, l->waited_us / 1e3);
		return GOT;
	}
	warn_unavailable(arb_last_error(c), res);
	arb_close(c);
	*cp = NULL;
	return GOT_UNAVAILABLE;
}

/*
 * The lease of e ends. sole: nobody else can share its connection (no
 * fork since it was taken), so it is released and the connection kept;
 * else only this process's copy of the connection is closed, and the
 * lease ends with the last copy, as the lock ends with the last
 * descriptor of its description.
 */
static void
end_lease(struct entry *e, bool force_release)
{
	bool sole = e->pid == getpid() && e->forks == forks;

	if (e->c == NULL)
		return;
	if (sole || force_release) {
		if (arb_release_nowait(e->c, e->lease) == 0 && sole)
			give_idle(e->c);
		else
			arb_close(e->c);
	} else {
		arb_close(e->c);
	}
	if (cfg.verbose)
		say("%s '%s'", sole || force_release ? "released" : "let go of",
		    e->res);
	e->c = NULL;
	e->held = N_NONE;
}

/*
 * The connection follows the lock across exec (see the top): it survives
 * exec when one of the lock's descriptors does.
 */
static void
follow_cloexec(struct entry *e)
{
	bool keep = false;

	for (int i = 0; i < e->nfds && !keep; i++) {
		int fl = real.fcntl(e->fds[i], F_GETFD);

		keep = fl >= 0 && (fl & FD_CLOEXEC) == 0;
	}
	if (e->c != NULL)
		(void)arb_set_inherit(e->c, keep);
}

/* fd's FD_CLOEXEC changed (fcntl F_SETFD, ioctl FIOCLEX/FIONCLEX). */
static void
cloexec_changed(int fd)
{
	for (int i = 0; i < MAX_ENTRIES; i++)
		if (ents[i].used && !ents[i].busy && has_fd(&ents[i], fd) &&
		    !vforked())
			follow_cloexec(&ents[i]);
}

/* ------------------------------------------------------------ one lock call */

/* A lock request, as the wrappers see it. */
struct req {
	int fd;
	enum kind kind;
	bool nb;	  /* fails rather than waits */
	int busy_errno;	  /* what the kernel says when it is taken */
	enum need want;	  /* flock: what is asked; else from the ranges */
	short type;	  /* ranges: F_RDLCK, F_WRLCK or F_UNLCK */
	off_t start, end; /* ranges, absolute */
	int (*call)(const struct req *q); /* the real call */
	int cmd;			  /* for call */
	void *arg;			  /* for call */
	off64_t len;			  /* for call (lockf) */
};

/* The blocking form of a non-blocking request (op: room for flock's). */
static struct req
blocking(const struct req *q, int *op)
{
	struct req b = *q;

	b.nb = false;
	if (q->kind == K_FLOCK) {
		*op = *(const int *)q->arg & ~LOCK_NB;
		b.arg = op;
	} else if (q->cmd == F_SETLK) {
		b.cmd = F_SETLKW;
	} else if (q->cmd == F_OFD_SETLK) {
		b.cmd = F_OFD_SETLKW;
	} else if (q->cmd == F_TLOCK) {
		b.cmd = F_LOCK;
	}
	return b;
}

/*
 * Whether this process holds a flock or record lock on the file
 * (/proc/locks): a lock it cannot get while holding the lease is then its
 * own, and waiting for it would never end.
 */
static bool
locked_by_me(dev_t dev, ino_t ino)
{
	FILE *f = fopen("/proc/locks", "re");
	char line[256];
	bool mine = false;

	if (f == NULL)
		return true; /* unknown: the kernel's answer, no wait */
	while (!mine && fgets(line, sizeof line, f) != NULL) {
		unsigned maj, min;
		unsigned long long node;
		int pid;

		if (strstr(line, "->") != NULL)
			continue; /* a waiter, not a holder */
		if (sscanf(line, "%*d: %*s %*s %*s %d %x:%x:%llu", &pid, &maj,
			   &min, &node) == 4 &&
		    pid == (int)getpid() && maj == major(dev) &&
		    min == minor(dev) && node == (unsigned long long)ino)
			mine = true;
	}
	fclose(f);
	return mine;
}

/* The real call, with the mutex dropped when it may block. */
static int
real_call(const struct req *q)
{
	int rc;

	if (!q->nb)
		pthread_mutex_unlock(&mu);
	rc = q->call(q);
	if (!q->nb) {
		int err = errno;

		pthread_mutex_lock(&mu);
		errno = err;
	}
	return rc;
}

static enum need
forced(enum need n)
{
	return n == N_NONE || cfg.mode < 0 ? n : (enum need)cfg.mode;
}

/* Install new ranges (or none) in e once the kernel said yes. */
static void
commit_ranges(struct entry *e, struct range *r, size_t n)
{
	free(e->r);
	e->r = r;
	e->nr = n;
}

/*
 * Take (or upgrade to) the lease e needs, then the real lock. Called with
 * the mutex held and e busy; returns as the real call does.
 */
static int
acquire_then_lock(const struct req *q, struct entry *e, enum need need,
		  struct range *r, size_t nr)
{
	int64_t timeout = q->nb ? cfg.wait_ms : ARB_WAIT_FOREVER;
	struct arb_lease l;
	arb_client *c;
	enum got got;
	int rc, err;

	if (e->held == N_NONE) {
		c = take_idle();
		pthread_mutex_unlock(&mu);
		got = get_lease(e, c, (enum arb_mode)need, timeout, &c, &l);
		pthread_mutex_lock(&mu);
		e->pending_fd = -1;
		if (got == GOT) {
			e->c = c;
			e->lease = l.id;
			e->held = need;
			e->pid = getpid();
			e->forks = forks;
		} else {
			give_idle(c);
		}
	} else {
		/* Record locks convert in place: the lease too. */
		uint64_t token;

		pthread_mutex_unlock(&mu);
		rc = arb_convert(
		    e->c, e->lease, (enum arb_mode)need,
		    (int)(timeout > INT32_MAX ? INT32_MAX : timeout), &token);
		pthread_mutex_lock(&mu);
		if (rc == 0) {
			e->held = need;
			got = GOT;
		} else if (rc == -ARB_ETIMEOUT || rc == -ARB_EWOULDBLOCK) {
			got = GOT_BUSY;
		} else if (rc == -ARB_EDEADLOCK) {
			free(r);
			errno = q->nb ? q->busy_errno : EDEADLK;
			return -1;
		} else {
			warn_unavailable(arb_last_error(e->c), e->res);
			got = GOT_UNAVAILABLE;
		}
	}
	switch (got) {
	case GOT:
		break;
	case GOT_BUSY:
		free(r);
		errno = q->busy_errno;
		return -1;
	case GOT_UNAVAILABLE:
		if (cfg.fail) {
			free(r);
			errno = ENOLCK;
			return -1;
		}
		/* The plain lock. */
		__attribute__((fallthrough));
	case GOT_NEARBY:
		rc = real_call(q);
		if (rc == 0 && e->held != N_NONE)
			commit_ranges(e, r, nr);
		else
			free(r);
		return rc;
	}
	rc = real_call(q);
	err = errno;
	if (rc < 0 && q->nb && (err == EAGAIN || err == EACCES) &&
	    !locked_by_me(e->dev, e->ino)) {
		/*
		 * Leased, and still locked: by a holder that is dying (its
		 * connection closed before its lock file) or by one outside
		 * the arbiter (not intercepted). Its lock ends when it does:
		 * wait for it, as a turn.
		 */
		int op;
		struct req b = blocking(q, &op);

		if (cfg.verbose)
			say("'%s' is leased, but the file is still locked by "
			    "a process outside the arbiter; waiting for it",
			    e->res);
		rc = real_call(&b);
		err = errno;
	}
	if (rc == 0) {
		commit_ranges(e, r, nr);
		add_fd(e, q->fd);
		follow_cloexec(e);
		return 0;
	}
	/* The kernel said no after all (a holder outside the arbiter, a
	 * signal): give the lease back as it was. */
	free(r);
	if (e->kind != K_FLOCK && e->nr > 0) {
		enum need back = forced(need_of(e->r, e->nr));

		if (back != e->held &&
		    arb_convert(e->c, e->lease, (enum arb_mode)back, 0, NULL) ==
			0)
			e->held = back;
	} else {
		end_lease(e, false);
	}
	errno = err;
	return -1;
}

static int
intercept(const struct req *q)
{
	struct stat st;
	char res[RES_MAX];
	struct entry *e;
	struct range *r = NULL;
	size_t nr = 0;
	enum need need, have;
	int rc;

	/* An unlock while no lease is held is no business of ours. */
	if ((q->kind == K_FLOCK ? q->want == N_NONE : q->type == F_UNLCK) &&
	    atomic_load_explicit(&nentries, memory_order_relaxed) == 0)
		return q->call(q);
	if (!match(q->fd, &st, res, sizeof res))
		return q->call(q);
	inside++;
	pthread_mutex_lock(&mu);
	e = find(q->kind, q->fd, &st);
	if (e != NULL && e->busy) {
		/* Another thread changes this very lock: the kernel decides
		 * this one. */
		pthread_mutex_unlock(&mu);
		rc = q->call(q);
		goto out;
	}
	if (q->kind == K_FLOCK) {
		need = q->want;
	} else {
		struct entry none = {.nr = 0};

		r = ranges_set(e ? e : &none, q->start, q->end, q->type, &nr);
		if (r == NULL) {
			pthread_mutex_unlock(&mu);
			rc = q->call(q);
			goto out;
		}
		need = need_of(r, nr);
	}
	need = forced(need);
	have = e ? e->held : N_NONE;

	if (need == have) {
		rc = real_call(q);
		if (rc == 0 && e != NULL)
			commit_ranges(e, r, nr);
		else
			free(r);
	} else if (need == N_NONE || (have == N_EX && need == N_SH)) {
		/* Unlock or downgrade: the kernel first, then the lease. */
		rc = real_call(q);
		if (rc != 0 || e == NULL) {
			free(r);
		} else if (need == N_NONE) {
			free(r);
			end_lease(e, true);
			free_entry(e);
		} else {
			commit_ranges(e, r, nr);
			if (e->c != NULL &&
			    arb_convert(e->c, e->lease, ARB_SHARED, 0, NULL) ==
				0)
				e->held = N_SH;
		}
	} else if (have == N_NONE && res_taken(e, res)) {
		/* A second lock of this process on a file whose lease it
		 * holds or awaits: exactly what the kernel says. */
		free(r);
		pthread_mutex_unlock(&mu);
		rc = q->call(q);
		goto out;
	} else {
		bool fresh = e == NULL;

		if (e == NULL)
			e = new_entry(q->kind, q->fd, &st, res);
		if (e == NULL) {
			free(r);
			pthread_mutex_unlock(&mu);
			say("more than %d intercepted locks at once; this one "
			    "gets no lease",
			    MAX_ENTRIES);
			rc = q->call(q);
			goto out;
		}
		if (q->kind == K_FLOCK && have != N_NONE) {
			/* flock converts by unlocking first (flock(2)):
			 * so does its lease. */
			int op = LOCK_UN;
			struct req un = *q;

			un.arg = &op;
			un.nb = true;
			(void)q->call(&un);
			end_lease(e, true);
		}
		e->busy = true;
		rc = acquire_then_lock(q, e, need, r, nr);
		e->busy = false;
		if (e->held == N_NONE &&
		    (fresh || q->kind == K_FLOCK || e->nr == 0))
			free_entry(e);
	}
	pthread_mutex_unlock(&mu);
out:
	inside--;
	return rc;
}

/* ------------------------------------------------------------ closing */

/*
 * fd is closed (or replaced by dup2): the lock objects it held end as the
 * kernel ends them. st: fd's file before, when record locks exist.
 */
static void
closed(int fd, const struct stat *st)
{
	bool checked = false;

	for (int i = 0; i < MAX_ENTRIES; i++) {
		struct entry *e = &ents[i];

		if (!e->used || e->busy)
			continue;
		if (e->kind == K_POSIX) {
			/* Any close of the file drops the process's record
			 * locks on it (fcntl(2)). */
			if (st != NULL && st->st_dev == e->dev &&
			    st->st_ino == e->ino) {
				if (!checked && vforked())
					return;
				checked = true;
				end_lease(e, true);
				free_entry(e);
			}
			continue;
		}
		for (int j = 0; j < e->nfds; j++) {
			if (e->fds[j] != fd)
				continue;
			if (!checked && vforked())
				return;
			checked = true;
			e->fds[j] = e->fds[--e->nfds];
			if (e->nfds == 0) {
				end_lease(e, false);
				free_entry(e);
			}
			break;
		}
	}
}

/*
 * The program closes fd, and fd is one of our connections (a program that
 * closes every descriptor as it starts, dup2 onto it): close it our way,
 * ending its lease if it holds one. Returns whether it was ours.
 */
static bool
drop_conn(int fd)
{
	for (int i = 0; i < nidle; i++) {
		if (arb_fd(idle[i]) != fd)
			continue;
		if (vforked())
			return false; /* the child's own copy: just close it */
		arb_close(idle[i]);
		idle[i] = idle[--nidle];
		atomic_fetch_sub(&nwatched, 1);
		return true;
	}
	for (int i = 0; i < MAX_ENTRIES; i++) {
		struct entry *e = &ents[i];

		if (!e->used || e->busy || e->c == NULL || arb_fd(e->c) != fd)
			continue;
		if (vforked())
			return false;
		arb_close(e->c);
		e->c = NULL;
		e->held = N_NONE;
		free_entry(e);
		return true;
	}
	return false;
}

EXPORT int
close(int fd)
{
	struct stat st;
	bool have_st;
	int rc;

	fd_forget(fd);
	if (!active() ||
	    atomic_load_explicit(&nwatched, memory_order_relaxed) == 0)
		return real.close(fd);
	inside++;
	pthread_mutex_lock(&mu);
	if (drop_conn(fd)) {
		pthread_mutex_unlock(&mu);
		inside--;
		return 0;
	}
	have_st = nposix > 0 && fstat(fd, &st) == 0;
	rc = real.close(fd);
	if (rc == 0 || errno != EBADF)
		closed(fd, have_st ? &st : NULL);
	pthread_mutex_unlock(&mu);
	inside--;
	return rc;
}

/* A stdio stream's close is a close of its descriptor too. */
EXPORT int
fclose(FILE *f)
{
	struct stat st;
	bool have_st;
	int fd, rc;

	if (f != NULL)
		fd_forget(fileno(f));
	if (!active() || f == NULL ||
	    atomic_load_explicit(&nentries, memory_order_relaxed) == 0)
		return real.fclose(f);
	fd = fileno(f);
	inside++;
	pthread_mutex_lock(&mu);
	have_st = fd >= 0 && nposix > 0 && fstat(fd, &st) == 0;
	rc = real.fclose(f);
	if (fd >= 0)
		closed(fd, have_st ? &st : NULL);
	pthread_mutex_unlock(&mu);
	inside--;
	return rc;
}

/* newfd now refers to oldfd's description too. */
static void
duplicated(int oldfd, int newfd)
{
	for (int i = 0; i < MAX_ENTRIES; i++) {
		struct entry *e = &ents[i];

		if (!e->used || e->kind == K_POSIX || !has_fd(e, oldfd))
			continue;
		if (vforked())
			return;
		add_fd(e, newfd);
		if (!e->busy)
			follow_cloexec(e);
	}
}

static int
dup_into(int oldfd, int newfd, int flags, bool three)
{
	struct stat st;
	bool have_st;
	int rc;

	if (oldfd != newfd)
		fd_forget(newfd);
	if (!active() ||
	    atomic_load_explicit(&nwatched, memory_order_relaxed) == 0)
		return three ? real.dup3(oldfd, newfd, flags)
			     : real.dup2(oldfd, newfd);
	inside++;
	pthread_mutex_lock(&mu);
	have_st = nposix > 0 && oldfd != newfd && fstat(newfd, &st) == 0;
	if (oldfd != newfd && real.fcntl(oldfd, F_GETFD) >= 0)
		(void)drop_conn(newfd);
	rc = three ? real.dup3(oldfd, newfd, flags) : real.dup2(oldfd, newfd);
	if (rc >= 0 && oldfd != newfd) {
		closed(newfd, have_st ? &st : NULL);
		duplicated(oldfd, newfd);
	}
	pthread_mutex_unlock(&mu);
	inside--;
	return rc;
}

EXPORT int
dup(int oldfd)
{
	int rc;

	if (!active() ||
	    atomic_load_explicit(&nwatched, memory_order_relaxed) == 0) {
		rc = real.dup(oldfd);
		fd_forget(rc);
		return rc;
	}
	inside++;
	pthread_mutex_lock(&mu);
	rc = real.dup(oldfd);
	fd_forget(rc);
	if (rc >= 0)
		duplicated(oldfd, rc);
	pthread_mutex_unlock(&mu);
	inside--;
	return rc;
}

EXPORT int
dup2(int oldfd, int newfd)
{
	return dup_into(oldfd, newfd, 0, false);
}

EXPORT int
dup3(int oldfd, int newfd, int flags)
{
	return dup_into(oldfd, newfd, flags, true);
}

/* ------------------------------------------------------------ fork */

static void
at_prepare(void)
{
	pthread_mutex_lock(&resolve_mu);
	pthread_mutex_lock(&mu);
}

static void
at_parent(void)
{
	forks++;
	pthread_mutex_unlock(&mu);
	pthread_mutex_unlock(&resolve_mu);
}

/*
 * The child has the parent's descriptors, connections included. Record
 * locks are not inherited, nor are waits of other threads: the child
 * closes its copies of their connections (the parent's stay). flock and
 * OFD leases stay, shared, as their descriptions are.
 */
static void
at_child(void)
{
	inside++;
	forks++;
	mypid = getpid();
	for (int i = 0; i < nidle; i++)
		arb_close(idle[i]);
	atomic_fetch_sub(&nwatched, nidle);
	nidle = 0;
	for (int i = 0; i < MAX_ENTRIES; i++) {
		struct entry *e = &ents[i];

		if (!e->used || (e->kind != K_POSIX && !e->busy))
			continue;
		if (e->busy && e->pending_fd >= 0)
			(void)real.close(e->pending_fd);
		else if (e->c != NULL && !e->busy)
			arb_close(e->c);
		e->c = NULL;
		free_entry(e);
	}
	pthread_mutex_unlock(&mu);
	pthread_mutex_unlock(&resolve_mu);
	inside--;
}

/* ------------------------------------------------------------ the wrappers */

static int
call_flock(const struct req *q)
{
	return real.flock(q->fd, *(const int *)q->arg);
}

EXPORT int
flock(int fd, int op)
{
	struct req q = {.fd = fd,
			.kind = K_FLOCK,
			.nb = (op & LOCK_NB) != 0,
			.busy_errno = EWOULDBLOCK,
			.call = call_flock,
			.arg = &op};

	if (fd_other(fd) || !active())
		return real.flock(fd, op);
	switch (op & ~LOCK_NB) {
	case LOCK_SH:
		q.want = N_SH;
		break;
	case LOCK_EX:
		q.want = N_EX;
		break;
	case LOCK_UN:
		q.want = N_NONE;
		q.nb = true;
		break;
	default:
		return real.flock(fd, op);
	}
	return intercept(&q);
}

static int
call_fcntl(const struct req *q)
{
	return real.fcntl(q->fd, q->cmd, q->arg);
}

static int
call_fcntl64(const struct req *q)
{
	return real.fcntl64(q->fd, q->cmd, q->arg);
}

/* Where a request's range lies, in absolute offsets. */
static bool
absolute(int fd, short whence, off_t start, off_t len, off_t *s, off_t *e)
{
	off_t base = 0;

	if (whence == SEEK_CUR) {
		base = lseek(fd, 0, SEEK_CUR);
	} else if (whence == SEEK_END) {
		struct stat st;

		base = fstat(fd, &st) == 0 ? st.st_size : -1;
	} else if (whence != SEEK_SET) {
		return false;
	}
	if (base < 0)
		return false;
	start = add_off(base, start);
	if (len > 0) {
		*s = start;
		*e = add_off(start, len);
	} else if (len == 0) {
		*s = start;
		*e = OFF_MAX_;
	} else {
		*s = start + len;
		*e = start;
	}
	return *s >= 0;
}

static int
lock_fcntl(int fd, int cmd, void *arg, bool is64)
{
	struct req q = {.fd = fd,
			.cmd = cmd,
			.arg = arg,
			.busy_errno = EAGAIN,
			.call = is64 ? call_fcntl64 : call_fcntl};
	const struct flock *fl = arg;

	switch (cmd) {
	case F_SETLK:
	case F_SETLKW:
		q.kind = K_POSIX;
		break;
	case F_OFD_SETLK:
	case F_OFD_SETLKW:
		q.kind = K_OFD;
		break;
	default:
		return q.call(&q);
	}
	q.nb = cmd == F_SETLK || cmd == F_OFD_SETLK;
	if (fl == NULL || (fl->l_type != F_RDLCK && fl->l_type != F_WRLCK &&
			   fl->l_type != F_UNLCK))
		return q.call(&q);
	q.type = fl->l_type;
	if (q.type == F_UNLCK)
		q.nb = true;
	if (!absolute(fd, fl->l_whence, fl->l_start, fl->l_len, &q.start,
		      &q.end))
		return q.call(&q);
	return intercept(&q);
}

/* fcntl's housekeeping that the table follows: duplicates, FD_CLOEXEC. */
static int
other_fcntl(int fd, int cmd, void *arg, bool is64)
{
	int rc = is64 ? real.fcntl64(fd, cmd, arg) : real.fcntl(fd, cmd, arg);

	if (rc >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		fd_forget(rc);
	if (rc < 0 ||
	    atomic_load_explicit(&nwatched, memory_order_relaxed) == 0)
		return rc;
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC || cmd == F_SETFD) {
		inside++;
		pthread_mutex_lock(&mu);
		if (cmd == F_SETFD) {
			cloexec_changed(fd);
		} else {
			duplicated(fd, rc);
		}
		pthread_mutex_unlock(&mu);
		inside--;
	}
	return rc;
}

static int
any_fcntl(int fd, int cmd, void *arg, bool is64)
{
	if (!active())
		return is64 ? real.fcntl64(fd, cmd, arg)
			    : real.fcntl(fd, cmd, arg);
	switch (cmd) {
	case F_SETLK:
	case F_SETLKW:
	case F_OFD_SETLK:
	case F_OFD_SETLKW:
		if (fd_other(fd))
			return is64 ? real.fcntl64(fd, cmd, arg)
				    : real.fcntl(fd, cmd, arg);
		return lock_fcntl(fd, cmd, arg, is64);
	default:
		return other_fcntl(fd, cmd, arg, is64);
	}
}

EXPORT int
fcntl(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	return any_fcntl(fd, cmd, arg, false);
}

EXPORT int
fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	return any_fcntl(fd, cmd, arg, true);
}

/* Python's os.set_inheritable() flips FD_CLOEXEC with these. */
EXPORT int
ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;
	int rc;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!active())
		return real.ioctl(fd, request, arg);
	rc = real.ioctl(fd, request, arg);
	if (rc < 0 || (request != FIOCLEX && request != FIONCLEX) ||
	    atomic_load_explicit(&nentries, memory_order_relaxed) == 0)
		return rc;
	inside++;
	pthread_mutex_lock(&mu);
	cloexec_changed(fd);
	pthread_mutex_unlock(&mu);
	inside--;
	return rc;
}

static int
call_lockf(const struct req *q)
{
	return real.lockf64(q->fd, q->cmd, q->len);
}

static int
any_lockf(int fd, int cmd, off64_t len)
{
	struct req q = {.fd = fd,
			.kind = K_POSIX,
			.cmd = cmd,
			.len = len,
			.busy_errno = EAGAIN,
			.call = call_lockf};

	if (fd_other(fd) || !active())
		return real.lockf64(fd, cmd, len);
	switch (cmd) {
	case F_LOCK:
		q.type = F_WRLCK;
		break;
	case F_TLOCK:
		q.type = F_WRLCK;
		q.nb = true;
		break;
	case F_ULOCK:
		q.type = F_UNLCK;
		q.nb = true;
		break;
	default:
		return real.lockf64(fd, cmd, len);
	}
	if (!absolute(fd, SEEK_CUR, 0, (off_t)len, &q.start, &q.end))
		return real.lockf64(fd, cmd, len);
	return intercept(&q);
}

EXPORT int
lockf(int fd, int cmd, off_t len)
{
	return any_lockf(fd, cmd, len);
}

EXPORT int
lockf64(int fd, int cmd, off64_t len)
{
	return any_lockf(fd, cmd, len);
}

/* ------------------------------------------------------------ opening */

/* The fortified forms a program built with _FORTIFY_SOURCE calls. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

/* open()'s mode argument, there only when the call may create. */
#define MODE_ARG(flags, last, mode)                                            \
	do {                                                                   \
		if (__OPEN_NEEDS_MODE(flags)) {                                \
			va_list ap_;                                           \
			va_start(ap_, last);                                   \
			(mode) = va_arg(ap_, int);                             \
			va_end(ap_);                                           \
		}                                                              \
	} while (0)

EXPORT int
open(const char *path, int flags, ...)
{
	int mode = 0, fd;

	MODE_ARG(flags, flags, mode);
	(void)active();
	fd = real.open(path, flags, mode);
	opened(fd, path);
	return fd;
}

EXPORT int
open64(const char *path, int flags, ...)
{
	int mode = 0, fd;

	MODE_ARG(flags, flags, mode);
	(void)active();
	fd = real.open64(path, flags, mode);
	opened(fd, path);
	return fd;
}

EXPORT int
openat(int dirfd, const char *path, int flags, ...)
{
	int mode = 0, fd;

	MODE_ARG(flags, flags, mode);
	(void)active();
	fd = real.openat(dirfd, path, flags, mode);
	opened(fd, path);
	return fd;
}

EXPORT int
openat64(int dirfd, const char *path, int flags, ...)
{
	int mode = 0, fd;

	MODE_ARG(flags, flags, mode);
	(void)active();
	fd = real.openat64(dirfd, path, flags, mode);
	opened(fd, path);
	return fd;
}

EXPORT int
__open_2(const char *path, int flags)
{
	int fd;

	(void)active();
	fd = real.open_2(path, flags);
	opened(fd, path);
	return fd;
}

EXPORT int
__open64_2(const char *path, int flags)
{
	int fd;

	(void)active();
	fd = real.open64_2(path, flags);
	opened(fd, path);
	return fd;
}

EXPORT int
__openat_2(int dirfd, const char *path, int flags)
{
	int fd;

	(void)active();
	fd = real.openat_2(dirfd, path, flags);
	opened(fd, path);
	return fd;
}

EXPORT int
__openat64_2(int dirfd, const char *path, int flags)
{
	int fd;

	(void)active();
	fd = real.openat64_2(dirfd, path, flags);
	opened(fd, path);
	return fd;
}

EXPORT int
creat(const char *path, mode_t mode)
{
	int fd;

	(void)active();
	fd = real.creat(path, mode);
	opened(fd, path);
	return fd;
}

EXPORT int
creat64(const char *path, mode_t mode)
{
	int fd;

	(void)active();
	fd = real.creat64(path, mode);
	opened(fd, path);
	return fd;
}

EXPORT FILE *
fopen(const char *path, const char *mode)
{
	FILE *f;

	(void)active();
	f = real.fopen(path, mode);
	if (f != NULL)
		opened(fileno(f), path);
	return f;
}

EXPORT FILE *
fopen64(const char *path, const char *mode)
{
	FILE *f;

	(void)active();
	f = real.fopen64(path, mode);
	if (f != NULL)
		opened(fileno(f), path);
	return f;
}

/* freopen closes the stream's descriptor, then opens path (NULL: the same
 * file again, in a new mode), most often under the same number. */
EXPORT FILE *
freopen(const char *path, const char *mode, FILE *stream)
{
	FILE *f;

	if (stream != NULL)
		fd_forget(fileno(stream));
	(void)active();
	f = real.freopen(path, mode, stream);
	if (f != NULL)
		opened(fileno(f), path);
	return f;
}

EXPORT FILE *
freopen64(const char *path, const char *mode, FILE *stream)
{
	FILE *f;

	if (stream != NULL)
		fd_forget(fileno(stream));
	(void)active();
	f = real.freopen64(path, mode, stream);
	if (f != NULL)
		opened(fileno(f), path);
	return f;
}

/* ------------------------------------------------------------ closing many */

/* Marks the record-lock entries with a descriptor in [lo, hi]: any close
 * of a file ends the process's record locks on it (fcntl(2)). */
static void
posix_in_range(unsigned lo, unsigned hi, bool gone[MAX_ENTRIES])
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	struct stat st;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		char *end;
		long fd = strtol(de->d_name, &end, 10);

		if (*end != '\0' || end == de->d_name || fd < (long)lo ||
		    fd > (long)hi || fd == dirfd(d) || fstat((int)fd, &st) < 0)
			continue;
		for (int i = 0; i < MAX_ENTRIES; i++) {
			const struct entry *e = &ents[i];

			if (e->used && !e->busy && e->kind == K_POSIX &&
			    e->dev == st.st_dev && e->ino == st.st_ino)
				gone[i] = true;
		}
	}
	closedir(d);
}

static bool
in(int fd, unsigned lo, unsigned hi)
{
	return fd >= 0 && (unsigned)fd >= lo && (unsigned)fd <= hi;
}

/*
 * close_range and closefrom close [lo, hi] at once (a program that closes
 * all but its standard descriptors): the table follows as it follows
 * close() of each of ours in there. close_them makes the real call.
 */
static int
close_many(unsigned lo, unsigned hi, int (*close_them)(const void *),
	   const void *arg)
{
	bool posix_gone[MAX_ENTRIES] = {false};
	int rc;

	fd_forget_range(lo, hi);
	if (!active() ||
	    atomic_load_explicit(&nwatched, memory_order_relaxed) == 0 ||
	    vforked())
		return close_them(arg);
	inside++;
	pthread_mutex_lock(&mu);
	/* Our connections in there are closed our way, ending their leases. */
	for (int i = nidle - 1; i >= 0; i--)
		if (in(arb_fd(idle[i]), lo, hi))
			(void)drop_conn(arb_fd(idle[i]));
	for (int i = 0; i < MAX_ENTRIES; i++) {
		const struct entry *e = &ents[i];

		if (e->used && e->c != NULL && in(arb_fd(e->c), lo, hi))
			(void)drop_conn(arb_fd(e->c));
	}
	if (nposix > 0)
		posix_in_range(lo, hi, posix_gone);
	rc = close_them(arg);
	for (int i = 0; i < MAX_ENTRIES && rc == 0; i++) {
		struct entry *e = &ents[i];

		if (!e->used || e->busy)
			continue;
		if (e->kind == K_POSIX) {
			if (posix_gone[i]) {
				end_lease(e, true);
				free_entry(e);
			}
			continue;
		}
		/* closed() may move the last descriptor into j, or free e. */
		for (int j = e->nfds - 1; j >= 0 && e->used; j--)
			if (j < e->nfds && in(e->fds[j], lo, hi))
				closed(e->fds[j], NULL);
	}
	pthread_mutex_unlock(&mu);
	inside--;
	return rc;
}

struct range_args {
	unsigned first, last;
	int flags;
};

static int
call_close_range(const void *arg)
{
	const struct range_args *a = arg;

	if (real.close_range == NULL) {
		errno = ENOSYS;
		return -1;
	}
	return real.close_range(a->first, a->last, a->flags);
}

EXPORT int
close_range(unsigned first, unsigned last, int flags)
{
	struct range_args a = {first, last, flags};

	if ((flags & CLOSE_RANGE_CLOEXEC) || first > last) {
		(void)active();
		return call_close_range(&a);
	}
	return close_many(first, last, call_close_range, &a);
}

static int
call_closefrom(const void *arg)
{
	real.closefrom(*(const int *)arg);
	return 0;
}

EXPORT void
closefrom(int lowfd)
{
	if (lowfd < 0)
		lowfd = 0;
	(void)close_many((unsigned)lowfd, UINT_MAX, call_closefrom, &lowfd);
}
