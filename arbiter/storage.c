/*
 * storage: OFD lock on the storage lock file (see storage.h).
 *
 * Why OFD locks and not flock(2) or classic POSIX locks: an OFD lock belongs
 * to the open file description, so a second open() in this process (reading
 * the holder record) cannot drop it as classic fcntl locks would, and unlike
 * flock(2) it works over NFSv4 (EFS), where arbiters on several hosts share
 * one volume.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage.h"
#include "thread.h"

/*
 * valgrind (3.19) does not know that F_OFD_SETLKW may block: a thread
 * blocked in it stalls the whole process under valgrind. When running under
 * valgrind only, the wait thread blocks in a classic F_SETLKW instead —
 * classic and OFD locks conflict, so it wakes at the same moment — and then
 * takes the OFD lock without blocking. Outside valgrind this costs nothing.
 */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() RUNNING_ON_VALGRIND
#endif
#endif
#ifndef UNDER_VALGRIND
#define UNDER_VALGRIND() 0
#endif

void
storage_init(struct storage *s)
{
	memset(s, 0, sizeof *s);
	s->fd = -1;
	s->gid = -1;
	s->wake_fd = -1;
	s->watch_fd = -1;
	s->dir_watch_fd = -1;
}

/* What a path holds, for messages: "a symbolic link", "a FIFO", ... */
static const char *
file_kind(mode_t m)
{
	if (S_ISLNK(m))
		return "a symbolic link";
	if (S_ISDIR(m))
		return "a folder";
	if (S_ISFIFO(m))
		return "a FIFO";
	if (S_ISSOCK(m))
		return "a socket";
	if (S_ISCHR(m) || S_ISBLK(m))
		return "a device";
	if (S_ISREG(m))
		return "a regular file";
	return "not a regular file";
}

/*
 * Why the lock file could not be opened, with what to do. Looks at the
 * path once more (lstat never follows a link) to name what is there.
 */
static void
describe_open_error(const char *path, int e, char *err, size_t errlen)
{
	struct stat st;

	if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		snprintf(err, errlen,
			 "storage lock file %s is %s, not a regular file; "
			 "remove it (arbiter creates the file itself)",
			 path, file_kind(st.st_mode));
		return;
	}
	if (e == EACCES || e == EPERM) {
		if (lstat(path, &st) == 0)
			snprintf(
			    err, errlen,
			    "cannot open storage lock file %s: %s (it "
			    "belongs to uid %u gid %u, mode %04o; this "
			    "daemon runs as uid %u). Run the daemon as its "
			    "owner, or, for arbiters under several users, "
			    "set storage.group to a group they share and "
			    "give the file that group with mode 0660",
			    path, strerror(e), (unsigned)st.st_uid,
			    (unsigned)st.st_gid, (unsigned)(st.st_mode & 07777),
			    (unsigned)geteuid());
		else
			snprintf(err, errlen,
				 "cannot create storage lock file %s: %s; give "
				 "uid %u write access to its folder",
				 path, strerror(e), (unsigned)geteuid());
		return;
	}
	snprintf(err, errlen, "cannot open storage lock file %s: %s", path,
		 strerror(e));
}

/*
 * Make an existing lock file no more open than it must be. Anyone who can
 * open it can take a read lock and keep every arbiter a standby, so only the
 * daemon's user (and storage.group) may. Sets s->note when it changed
 * something or could not.
 */
static void
tighten(struct storage *s, int fd, const struct stat *st, const char *path)
{
	mode_t allowed =
	    s->gid >= 0 ? STORAGE_LOCK_MODE_GROUP : STORAGE_LOCK_MODE;
	mode_t mode = st->st_mode & 07777;
	bool bad_mode = (mode & ~allowed) != 0;
	bool bad_group = s->gid >= 0 && st->st_gid != (gid_t)s->gid;
	char what[200] = "";

	if (!bad_mode && !bad_group)
		return;
	if (st->st_uid == geteuid() || geteuid() == 0) {
		if (bad_group && fchown(fd, (uid_t)-1, (gid_t)s->gid) < 0) {
			snprintf(s->note, sizeof s->note,
				 "cannot give storage lock file %s to group %d "
				 "(storage.group): %s; the daemon's user must "
				 "be a member of that group",
				 path, s->gid, strerror(errno));
			return;
		}
		if (bad_mode && fchmod(fd, mode & allowed) < 0) {
			snprintf(s->note, sizeof s->note,
				 "cannot tighten storage lock file %s (mode "
				 "%04o): %s; run chmod %o %s",
				 path, (unsigned)mode, strerror(errno),
				 (unsigned)allowed, path);
			return;
		}
		if (bad_mode)
			snprintf(what, sizeof what, "mode %04o -> %04o",
				 (unsigned)mode, (unsigned)(mode & allowed));
		if (bad_group)
			snprintf(what + strlen(what),
				 sizeof what - strlen(what), "%sgroup %u -> %d",
				 bad_mode ? ", " : "", (unsigned)st->st_gid,
				 s->gid);
		snprintf(s->note, sizeof s->note,
			 "tightened storage lock file %s (%s): only the "
			 "daemon's user%s may open it, since anyone who can "
			 "may hold a lock on it",
			 path, what, s->gid >= 0 ? " and storage.group" : "");
		return;
	}
	snprintf(s->note, sizeof s->note,
		 "storage lock file %s has mode %04o%s and belongs to uid %u, "
		 "so this daemon (uid %u) cannot fix it: any user who can open "
		 "it can hold a read lock on it and keep every arbiter on this "
		 "storage a standby. As uid %u or root, run: chmod %o %s%s",
		 path, (unsigned)mode, bad_group ? " and the wrong group" : "",
		 (unsigned)st->st_uid, (unsigned)geteuid(),
		 (unsigned)st->st_uid, (unsigned)allowed, path,
		 bad_group ? " (and chgrp it to storage.group)" : "");
}

/* Warn (in s->note) when every user may write the lock file's folder:
 * then anyone can replace the lock or state file, whatever their modes. */
static void
folder_check(struct storage *s, const char *path)
{
	char dir[4096], *slash;
	struct stat st;
	size_t n = strlen(s->note);

	snprintf(dir, sizeof dir, "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof dir, ".");
	else
		*(slash == dir ? slash + 1 : slash) = '\0';
	if (stat(dir, &st) < 0 || !(st.st_mode & S_IWOTH))
		return;
	snprintf(s->note + n, sizeof s->note - n,
		 "%sstorage folder %s is writable by every user (mode %04o): "
		 "anyone can replace the lock and state files there; run "
		 "chmod o-w %s",
		 n > 0 ? "; " : "", dir, (unsigned)(st.st_mode & 07777), dir);
}

/*
 * Open (creating when missing) the lock file: never through a link, never
 * blocking (a FIFO there must not hang the daemon), only a regular file.
 * Returns the fd, or -errno with err set.
 */
static int
lock_open(struct storage *s, const char *path, char *err, size_t errlen)
{
	const int flags =
	    O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY;
	mode_t want = s->gid >= 0 ? STORAGE_LOCK_MODE_GROUP : STORAGE_LOCK_MODE;
	struct stat st;
	int fd = -1, e = 0;

	s->note[0] = '\0';
	s->created = false;
	/* Create exclusively, so we know the file is new and has our mode;
	 * else open what is there. Another arbiter may create or remove it
	 * between the two: try again a few times. */
	for (int i = 0; i < 5 && fd < 0; i++) {
		fd = open(path, flags | O_CREAT | O_EXCL, want);
		if (fd >= 0) {
			s->created = true;
			break;
		}
		e = errno;
		if (e != EEXIST)
			break;
		fd = open(path, flags);
		e = errno;
		if (fd < 0 && e != ENOENT)
			break;
	}
	if (fd < 0) {
		describe_open_error(path, e, err, errlen);
		return -e;
	}
	if (fstat(fd, &st) < 0) {
		e = errno;
		snprintf(err, errlen, "cannot examine storage lock file %s: %s",
			 path, strerror(e));
		close(fd);
		return -e;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen,
			 "storage lock file %s is %s, not a regular file; "
			 "remove it (arbiter creates the file itself)",
			 path, file_kind(st.st_mode));
		close(fd);
		return -EINVAL;
	}
	/* Regular files never block; clear it anyway so nothing surprises. */
	(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	if (s->created) {
		/* The umask may have taken bits we want (group write). */
		if (s->gid >= 0 && fchown(fd, (uid_t)-1, (gid_t)s->gid) < 0)
			snprintf(s->note, sizeof s->note,
				 "cannot give storage lock file %s to group %d "
				 "(storage.group): %s; the daemon's user must "
				 "be a member of that group",
				 path, s->gid, strerror(errno));
		(void)fchmod(fd, want);
	} else
		tighten(s, fd, &st, path);
	folder_check(s, path);
	return fd;
}

/* mkdir -p for the storage folder. */
static int
make_dirs(const char *dir, char *err, size_t errlen)
{
	char buf[4096];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof buf)
		return 0;
	memcpy(buf, dir, len + 1);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;

			*p = '\0';
			if (mkdir(buf, 0750) < 0 && errno != EEXIST) {
				int e = errno;

				snprintf(err, errlen,
					 "cannot create storage folder %s: %s",
					 buf, strerror(e));
				return -e;
			}
			*p = c;
			if (c == '\0')
				break;
		}
	}
	return 0;
}

static bool same_file(int fd, const char *path);

static int
set_lock(int fd, int cmd)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};

	return fcntl(fd, cmd, &fl);
}

static void
write_holder(struct storage *s)
{
	char host[256] = "?", since[40], rec[1024];
	time_t now = time(NULL);
	struct tm tm;
	int n;

	gethostname(host, sizeof host - 1);
	gmtime_r(&now, &tm);
	strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
	n = snprintf(rec, sizeof rec, "pid=%ld host=%s socket=%s since=%s\n",
		     (long)getpid(), host,
		     s->socket_path ? s->socket_path : "-", since);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof rec)
		n = (int)sizeof rec - 1;
	/* Best effort: the record is for humans; the lock is what counts. */
	if (ftruncate(s->fd, 0) == 0)
		(void)!pwrite(s->fd, rec, (size_t)n, 0);
}

int
storage_read_holder(const char *lock_path, char *buf, size_t len)
{
	int fd = open(lock_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW |
				     O_NONBLOCK | O_NOCTTY);
	struct stat st;
	ssize_t n;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -EINVAL;
	}
	n = pread(fd, buf, len - 1, 0);
	close(fd);
	if (n < 0)
		return -errno;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\0'))
		n--;
	buf[n] = '\0';
	for (ssize_t i = 0; i < n; i++) {
		if (buf[i] == '\n' || (unsigned char)buf[i] < ' ')
			buf[i] = ' ';
	}
	return n > 0 ? 0 : -ENODATA;
}

/* Does the open lock file still hold a holder record? Read before we write
 * ours: one left behind means its last holder did not unlock cleanly. */
static bool
record_left(int fd)
{
	char c;

	return pread(fd, &c, 1, 0) == 1;
}

/* Who holds the lock, for a standby's message. A read lock is never an
 * arbiter's: say so, since that is the case an operator must act on. */
static void
describe_holder(int fd, const char *lock_path, char *err, size_t errlen)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
	char holder[512];

	if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_RDLCK) {
		snprintf(err, errlen,
			 "storage %s is read-locked by a process that is not "
			 "an arbiter (arbiters take write locks); find it with "
			 "lslocks or fuser %s and stop it, or remove the file "
			 "(arbiter then locks a new one). The file's mode "
			 "keeps other users from opening it from now on",
			 lock_path, lock_path);
		return;
	}
	if (storage_read_holder(lock_path, holder, sizeof holder) < 0)
		snprintf(holder, sizeof holder,
			 "a process that left no record; lslocks shows it");
	snprintf(err, errlen,
		 "storage %s is locked by another arbiter (%s); stop that "
		 "one, point this one at another storage, or run it as a "
		 "standby",
		 lock_path, holder);
}

int
storage_try_lock(struct storage *s, const char *storage_dir,
		 const char *lock_path, const char *socket_path, char *err,
		 size_t errlen)
{
	int rc;

	if (s->lock_path == NULL) {
		s->lock_path = strdup(lock_path);
		s->socket_path = strdup(socket_path);
	}
	s->note[0] = '\0';
	/* Replaced while we waited or retried: the file open is not the
	 * one others will lock. */
	for (int tries = 0;; tries++) {
		if (s->fd >= 0 && !s->held && !same_file(s->fd, lock_path)) {
			close(s->fd);
			s->fd = -1;
		}
		if (s->fd < 0) {
			rc = make_dirs(storage_dir, err, errlen);
			if (rc < 0)
				return rc;
			rc = lock_open(s, lock_path, err, errlen);
			if (rc < 0)
				return rc;
			s->fd = rc;
		}
		if (set_lock(s->fd, F_OFD_SETLK) < 0) {
			rc = -errno;
			if (rc == -EAGAIN || rc == -EACCES) {
				describe_holder(s->fd, lock_path, err, errlen);
				return -EAGAIN;
			}
			snprintf(err, errlen, "cannot lock %s: %s", lock_path,
				 strerror(-rc));
			return rc;
		}
		if (same_file(s->fd, lock_path))
			break;
		/* Replaced between our open and our lock: start over on
		 * the file that is there now. */
		close(s->fd);
		s->fd = -1;
		if (tries >= 10) {
			snprintf(err, errlen,
				 "storage lock file %s keeps being replaced; "
				 "stop whatever removes or renames it",
				 lock_path);
			return -ESTALE;
		}
	}
	s->held = true;
	s->prev_record = record_left(s->fd);
	write_holder(s);
	return 0;
}

/*
 * The valgrind-only wait (see the top of the file): block in a classic lock
 * on a second descriptor, drop it, then take the OFD lock at once. Another
 * arbiter may slip in between; then the caller simply waits again.
 */
static int
wait_classic(struct storage *s)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
	struct flock un = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
	int wfd = open(s->lock_path,
		       O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	struct stat st;
	int rc, e;

	if (wfd < 0)
		return -1;
	if (fstat(wfd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(wfd);
		errno = EINVAL;
		return -1;
	}
	rc = fcntl(wfd, F_SETLKW, &fl);
	e = errno;
	if (rc == 0) {
		fcntl(wfd, F_SETLK, &un);
		rc = set_lock(s->fd, F_OFD_SETLK);
		e = errno;
	}
	close(wfd);
	errno = e;
	return rc;
}

/* SIGUSR1 only interrupts the wait thread's fcntl (no SA_RESTART). */
static void
wake_handler(int sig)
{
	(void)sig;
}

static void *
wait_thread(void *arg)
{
	struct storage *s = arg;
	uint64_t one = 1;
	sigset_t usr1;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
	while (!s->stop) {
		if (UNDER_VALGRIND()) {
			if (wait_classic(s) == 0)
				break;
		} else if (set_lock(s->fd, F_OFD_SETLKW) == 0)
			break;
		if (errno != EINTR && errno != EAGAIN) {
			s->wait_err = errno;
			break;
		}
	}
	if (s->stop && s->wait_err == 0)
		s->wait_err = ECANCELED;
	(void)!write(s->wake_fd, &one, sizeof one);
	return NULL;
}

int
storage_wait_start(struct storage *s)
{
	int rc;

	if (s->waiting)
		return 0;
	if (s->fd < 0)
		return -EBADF;
	if (s->wake_fd < 0) {
		s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (s->wake_fd < 0)
			return -errno;
	}
	s->wait_err = 0;
	s->stop = 0;
	{
		struct sigaction sa = {.sa_handler = wake_handler};

		sigemptyset(&sa.sa_mask);
		sigaction(SIGUSR1, &sa, NULL);
	}
	rc = thread_start(&s->tid, wait_thread, s);
	if (rc != 0)
		return -rc;
	s->waiting = true;
	return 0;
}

int
storage_wait_done(struct storage *s)
{
	uint64_t v;

	if (!s->waiting)
		return s->held ? 0 : -EINVAL;
	(void)!read(s->wake_fd, &v, sizeof v);
	pthread_join(s->tid, NULL);
	s->waiting = false;
	if (s->wait_err != 0)
		return -s->wait_err;
	if (!same_file(s->fd, s->lock_path)) {
		/* We waited on a file that was removed or replaced since: its
		 * lock protects nothing. The caller locks the one at the path
		 * now (storage_try_lock opens it). */
		close(s->fd);
		s->fd = -1;
		return -ESTALE;
	}
	s->held = true;
	s->prev_record = record_left(s->fd);
	write_holder(s);
	return 0;
}

/* Interrupt the wait thread and join it (see storage_free). */
static void
wait_stop(struct storage *s)
{
	/* Closing the fd does not wake F_OFD_SETLKW; a signal does. Repeat
	 * it in case it landed just before the thread blocked. */
	s->stop = 1;
	for (;;) {
		struct timespec ts;

		pthread_kill(s->tid, SIGUSR1);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (pthread_timedjoin_np(s->tid, NULL, &ts) == 0)
			break;
	}
	s->waiting = false;
}

void
storage_wait_cancel(struct storage *s)
{
	uint64_t v;

	if (!s->waiting)
		return;
	wait_stop(s);
	(void)!read(s->wake_fd, &v, sizeof v);
	/* Whatever it may have got at the last moment is a stale file's
	 * lock: closing drops it. */
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	s->held = false;
}

bool
storage_stuck_behind_reader(struct storage *s)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};

	if (!s->waiting || s->fd < 0 || same_file(s->fd, s->lock_path))
		return false;
	return fcntl(s->fd, F_OFD_GETLK, &fl) == 0 && fl.l_type == F_RDLCK;
}

int
storage_watch(struct storage *s)
{
	if (s->watch_fd < 0) {
		s->watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (s->watch_fd < 0)
			return -errno;
	}
	/* An unlink or a rename onto the path changes our inode's link
	 * count (IN_ATTRIB); a rename of it is IN_MOVE_SELF. */
	if (inotify_add_watch(s->watch_fd, s->lock_path,
			      IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF |
				  IN_DONT_FOLLOW) < 0)
		return -errno;
	return s->watch_fd;
}

/* Does the path still name the open file? */
static bool
same_file(int fd, const char *path)
{
	struct stat a, b;

	if (fstat(fd, &a) < 0 || a.st_nlink == 0)
		return false;
	if (lstat(path, &b) < 0)
		return false;
	return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

int
storage_check(struct storage *s, char *err, size_t errlen)
{
	char buf[4096];
	char *dir, *slash;
	int rc, old;

	while (s->watch_fd >= 0 && read(s->watch_fd, buf, sizeof buf) > 0)
		;
	if (s->fd < 0 || !s->held || same_file(s->fd, s->lock_path))
		return 0;
	dir = strdup(s->lock_path);
	if (dir == NULL) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*(slash == dir ? slash + 1 : slash) = '\0';
	/* Our file is gone from the path: its lock protects nothing now.
	 * Lock whatever is there, as at start, and only then let the old
	 * one go: a standby blocked on the old file must not wake and race
	 * us for the new one. */
	old = s->fd;
	s->fd = -1;
	s->held = false;
	rc = storage_try_lock(s, slash != NULL ? dir : ".", s->lock_path,
			      s->socket_path, err, errlen);
	close(old);
	free(dir);
	if (rc < 0) {
		char why[sizeof buf];

		snprintf(why, sizeof why, "%s", err);
		snprintf(err, errlen,
			 "lock file %s was removed or replaced, and the new "
			 "one cannot be locked: %s",
			 s->lock_path, why);
		return rc;
	}
	snprintf(err, errlen,
		 "lock file %s was removed or replaced; locked "
		 "the new one",
		 s->lock_path);
	return 1;
}

int
storage_watch_dir(struct storage *s)
{
	char *dir, *slash;
	int rc = 0;

	if (s->lock_path == NULL)
		return -EINVAL;
	if (s->dir_watch_fd < 0) {
		s->dir_watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
		if (s->dir_watch_fd < 0)
			return -errno;
	}
	dir = strdup(s->lock_path);
	if (dir == NULL)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*(slash == dir ? slash + 1 : slash) = '\0';
	if (inotify_add_watch(s->dir_watch_fd, slash != NULL ? dir : ".",
			      IN_CREATE | IN_DELETE | IN_MOVED_FROM |
				  IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF |
				  IN_MOVE_SELF | IN_ONLYDIR) < 0) {
		rc = -errno;
		storage_unwatch_dir(s);
	}
	free(dir);
	return rc < 0 ? rc : s->dir_watch_fd;
}

bool
storage_dir_changed(struct storage *s)
{
	char buf[4096]
	    __attribute__((aligned(__alignof__(struct inotify_event))));
	const char *base;
	bool hit = false;
	ssize_t n;

	if (s->dir_watch_fd < 0 || s->lock_path == NULL)
		return false;
	base = strrchr(s->lock_path, '/');
	base = base != NULL ? base + 1 : s->lock_path;
	while ((n = read(s->dir_watch_fd, buf, sizeof buf)) > 0) {
		for (ssize_t off = 0; off < n;) {
			const struct inotify_event *ev =
			    (const struct inotify_event *)(buf + off);

			/* The folder itself moved or went, or events were
			 * lost: worth a try too. */
			if (ev->len == 0 || strcmp(ev->name, base) == 0)
				hit = true;
			off += (ssize_t)(sizeof *ev + ev->len);
		}
	}
	return hit;
}

void
storage_unwatch_dir(struct storage *s)
{
	if (s->dir_watch_fd >= 0)
		close(s->dir_watch_fd);
	s->dir_watch_fd = -1;
}

void
storage_unlock(struct storage *s)
{
	if (s->fd >= 0 && s->held) {
		struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};

		/* Leave no stale record behind for humans to puzzle over. */
		if (ftruncate(s->fd, 0) < 0) {
			/* nothing to do: the record only informs */
		}
		fcntl(s->fd, F_OFD_SETLK, &fl);
	}
	s->held = false;
}

void
storage_free(struct storage *s)
{
	storage_unlock(s);
	if (s->waiting) {
		wait_stop(s);
		if (s->wait_err == 0) /* it got the lock as we stopped */
			storage_unlock(s);
	}
	if (s->fd >= 0)
		close(s->fd);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	if (s->watch_fd >= 0)
		close(s->watch_fd);
	storage_unwatch_dir(s);
	free(s->lock_path);
	free(s->socket_path);
	storage_init(s);
}
