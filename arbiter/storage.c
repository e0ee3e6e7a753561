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
	s->wake_fd = -1;
	s->watch_fd = -1;
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
	for (char *p = buf + 1; ; p++) {
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
	n = snprintf(rec, sizeof rec,
		     "pid=%ld host=%s socket=%s since=%s\n", (long)getpid(), host,
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
	int fd = open(lock_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t n;

	if (fd < 0)
		return -errno;
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
	if (s->fd < 0) {
		rc = make_dirs(storage_dir, err, errlen);
		if (rc < 0)
			return rc;
		s->fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
			     0644);
		if (s->fd < 0) {
			rc = -errno;
			snprintf(err, errlen,
				 "cannot open storage lock file %s: %s%s",
				 lock_path, strerror(-rc),
				 rc == -ELOOP ? " (it is a symbolic link; "
						"remove it)"
					      : "");
			return rc;
		}
	}
	if (set_lock(s->fd, F_OFD_SETLK) < 0) {
		char holder[512];

		rc = -errno;
		if (rc == -EAGAIN || rc == -EACCES) {
			if (storage_read_holder(lock_path, holder,
						sizeof holder) < 0)
				snprintf(holder, sizeof holder,
					 "a process that left no record");
			snprintf(err, errlen,
				 "storage %s is locked by another arbiter "
				 "(%s); stop that one, point this one at "
				 "another storage, or run it as a standby",
				 lock_path, holder);
			return -EAGAIN;
		}
		snprintf(err, errlen, "cannot lock %s: %s", lock_path,
			 strerror(-rc));
		return rc;
	}
	if (!same_file(s->fd, lock_path)) {
		/* Replaced between our open and our lock: start over on the
		 * file that is there now. */
		struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};

		fcntl(s->fd, F_OFD_SETLK, &fl);
		close(s->fd);
		s->fd = -1;
		return storage_try_lock(s, storage_dir, lock_path, socket_path,
					err, errlen);
	}
	s->held = true;
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
	int wfd = open(s->lock_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	int rc, e;

	if (wfd < 0)
		return -1;
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
		 * lock protects nothing. Wait on the one at the path now. */
		int nfd = open(s->lock_path,
			       O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);

		if (nfd < 0)
			return -errno;
		close(s->fd);
		s->fd = nfd;
		return -ESTALE;
	}
	s->held = true;
	write_holder(s);
	return 0;
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
			      IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF) < 0)
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
	if (stat(path, &b) < 0)
		return false;
	return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

int
storage_check(struct storage *s, char *err, size_t errlen)
{
	char buf[4096];
	int nfd;

	while (s->watch_fd >= 0 && read(s->watch_fd, buf, sizeof buf) > 0)
		;
	if (s->fd < 0 || !s->held || same_file(s->fd, s->lock_path))
		return 0;
	/* Our file is gone from the path. Lock whatever is there now. */
	nfd = open(s->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
		   0644);
	if (nfd < 0) {
		int e = errno;

		snprintf(err, errlen, "lock file %s was removed and cannot be "
				      "recreated: %s",
			 s->lock_path, strerror(e));
		return -e;
	}
	if (set_lock(nfd, F_OFD_SETLK) < 0) {
		char holder[512];

		if (storage_read_holder(s->lock_path, holder, sizeof holder) < 0)
			snprintf(holder, sizeof holder, "unknown");
		snprintf(err, errlen,
			 "lock file %s was removed or replaced and another "
			 "process locked the new one (%s)",
			 s->lock_path, holder);
		/* Hold nothing: wait on the new file like a standby. */
		close(s->fd);
		s->fd = nfd;
		s->held = false;
		return -EAGAIN;
	}
	close(s->fd); /* the old, unlinked inode: its lock goes with it */
	s->fd = nfd;
	write_holder(s);
	if (s->watch_fd >= 0) {
		close(s->watch_fd);
		s->watch_fd = -1;
	}
	storage_watch(s);
	snprintf(err, errlen, "lock file %s was removed or replaced; locked "
			      "the new one",
		 s->lock_path);
	return 1;
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
		/* Closing the fd does not wake F_OFD_SETLKW; a signal does.
		 * Repeat it in case it landed just before the thread blocked. */
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
		if (s->wait_err == 0) /* it got the lock as we stopped */
			storage_unlock(s);
	}
	if (s->fd >= 0)
		close(s->fd);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	if (s->watch_fd >= 0)
		close(s->watch_fd);
	free(s->lock_path);
	free(s->socket_path);
	storage_init(s);
}
