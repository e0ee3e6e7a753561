/*
 * storage: the storage folder's lock. An exclusive open-file-description lock
 * (F_OFD_SETLK) on the lock file: the kernel drops it when its holder dies,
 * so the file's mere existence never blocks anyone. The holder writes who it
 * is into the file (pid, host, socket, start time) for humans and for error
 * messages. Blocking waits for the lock (standby) run in a helper thread; see
 * storage_wait_start().
 */
#ifndef ARBITER_STORAGE_H
#define ARBITER_STORAGE_H

#include <stdbool.h>
#include <pthread.h>
#include <stddef.h>

struct storage {
	int fd;		/* open on the lock file, -1 when closed */
	bool held;
	char *lock_path;
	char *socket_path;
	int wake_fd;	/* eventfd the wait thread signals, -1 when none */
	bool waiting;	/* the wait thread runs */
	int wait_err;	/* errno from the wait thread, 0 on success */
	pthread_t tid;	/* the wait thread, while waiting */
	volatile int stop; /* ask the wait thread to give up */
	int watch_fd;	/* inotify on the lock file while held, -1 when none */
};

void storage_init(struct storage *s);

/*
 * Try to take the lock without waiting: 0 when held now, -EAGAIN when another
 * process holds it (err names it), another -errno on failure (err says what).
 * Creates the storage folder and the lock file when missing.
 */
int storage_try_lock(struct storage *s, const char *storage_dir,
		     const char *lock_path, const char *socket_path, char *err,
		     size_t errlen);

/*
 * Start a thread that blocks in F_OFD_SETLKW and writes to s->wake_fd once
 * it holds the lock (or failed, with s->wait_err). The caller watches
 * wake_fd in its loop and calls storage_wait_done() when it fires.
 */
int storage_wait_start(struct storage *s);
/* Join the wait thread; 0 when the lock is now held, -ESTALE when the file
 * waited on is no longer the one at the path (wait again), else -errno. */
int storage_wait_done(struct storage *s);

/*
 * Guard against the lock file being deleted or replaced under us (an old
 * "delete stale lock files" job): another arbiter would then create a new
 * file and lock it. storage_watch() gives an inotify fd to watch; when it
 * is readable call storage_check(): 0 while the path still names the file
 * we hold; otherwise it re-takes the lock on the file now at the path and
 * returns 1 (still ours), or returns -EAGAIN when another process holds
 * that one (we hold nothing then, and may wait for it as a standby).
 */
int storage_watch(struct storage *s);
int storage_check(struct storage *s, char *err, size_t errlen);

/* Release the lock and close the file (the file stays; it means nothing). */
void storage_unlock(struct storage *s);
void storage_free(struct storage *s);

/* Read the holder record of a lock file into buf as one line ("pid=..
 * host=.. socket=.. since=.."); 0, or -errno. */
int storage_read_holder(const char *lock_path, char *buf, size_t len);

#endif
