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

/* The lock file's mode: only the daemon's user, or also storage.group. */
#define STORAGE_LOCK_MODE	0600
#define STORAGE_LOCK_MODE_GROUP 0660

struct storage {
	int fd; /* open on the lock file, -1 when closed */
	bool held;
	int gid;	  /* storage.group, or -1: the lock file's group */
	bool created;	  /* the last open created the lock file */
	bool prev_record; /* when we took the lock, the file still held a
			   * holder record: its last holder did not end
			   * cleanly (a clean end truncates it) */
	char note[800];	  /* a warning from the last open (mode tightened,
			   * or too open and not ours to fix); "" if none */
	int dir_watch_fd; /* inotify on the lock file's folder, -1 if none */
	char *lock_path;
	char *socket_path;
	int wake_fd;	   /* eventfd the wait thread signals, -1 when none */
	bool waiting;	   /* the wait thread runs */
	int wait_err;	   /* errno from the wait thread, 0 on success */
	pthread_t tid;	   /* the wait thread, while waiting */
	volatile int stop; /* ask the wait thread to give up */
	int watch_fd; /* inotify on the lock file while held, -1 when none */
};

void storage_init(struct storage *s);

/*
 * Try to take the lock without waiting: 0 when held now, -EAGAIN when another
 * process holds it (err names it), another -errno on failure (err says what
 * and what to do). Creates the storage folder and the lock file when
 * missing. The file is opened without following a link and without
 * blocking, must be a regular file, and is created (or tightened, when we
 * own it) with mode 0600, or 0660 and group s->gid: whoever can open it can
 * hold a lock on it and keep every arbiter a standby. s->note tells what was
 * changed or could not be. When the path names another file than the one
 * open (it was replaced), the open one is dropped and the path opened anew.
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
 * waited on is no longer the one at the path (it is closed: call
 * storage_try_lock() again), else -errno. */
int storage_wait_done(struct storage *s);

/*
 * Stop waiting (the wait thread is joined, its wake-up drained) and close
 * the file waited on. For a standby stuck behind a process that is not an
 * arbiter, once the lock file was replaced: see storage_stuck_behind_reader.
 */
void storage_wait_cancel(struct storage *s);
/* While waiting: true when the path no longer names the file waited on and
 * that file is held by a read lock, which no arbiter takes (so no arbiter
 * will ever let it go for us). */
bool storage_stuck_behind_reader(struct storage *s);

/*
 * Guard against the lock file being deleted or replaced under us (an old
 * "delete stale lock files" job): another arbiter would then create a new
 * file and lock it. storage_watch() gives an inotify fd to watch; when it
 * is readable call storage_check(): 0 while the path still names the file
 * we hold; otherwise it re-takes the lock on the file now at the path and
 * returns 1 (still ours, watch it again), or returns -EAGAIN when another
 * process holds that one (we hold nothing then, and may wait for it as a
 * standby), or another -errno when the path cannot be locked at all (a link,
 * a folder: we hold nothing, and retry). err says which.
 */
int storage_watch(struct storage *s);
int storage_check(struct storage *s, char *err, size_t errlen);

/*
 * While the lock file cannot be used (a link, a folder, no permission), be
 * woken when something at its name in the folder changes: an inotify fd
 * (-errno when the folder cannot be watched, e.g. it is gone), and a check
 * that drains it and says whether an event named the lock file.
 */
int storage_watch_dir(struct storage *s);
bool storage_dir_changed(struct storage *s);
void storage_unwatch_dir(struct storage *s);

/* Release the lock and close the file (the file stays; it means nothing). */
void storage_unlock(struct storage *s);
void storage_free(struct storage *s);

/* Read the holder record of a lock file into buf as one line ("pid=..
 * host=.. socket=.. since=.."); 0, or -errno (-EINVAL: not a regular
 * file; it is never opened in a way that could block). */
int storage_read_holder(const char *lock_path, char *buf, size_t len);

#endif
