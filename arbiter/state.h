/*
 * state: the durable state file, in msgpack. It keeps what must survive a
 * restart or a crash of the daemon: the fencing-token high-water mark (no
 * token at or below it may be handed out again), the last token of each
 * resource (for humans and audits), and cumulative counters.
 *
 * Tokens are reserved in blocks: before handing out tokens up to N the
 * daemon writes "high-water = N" (temp file, fsync, rename, fsync of the
 * folder). The next block is written by a helper thread while the current
 * one is still half full, so grants do not wait on the disk at all.
 *
 * The file is only read or written while the storage lock is held.
 */
#ifndef ARBITER_STATE_H
#define ARBITER_STATE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "stats.h"

#define STATE_FORMAT	  1
#define STATE_TOKEN_BLOCK 10000

struct state_data {
	uint32_t format;
	uint64_t token_hw;
	bool clean;	 /* "clean": written at a graceful end with no lease
			  * outstanding; false while a daemon runs */
	bool have_clean; /* the record has the field (older ones do not) */
	uint64_t counters[STATS_NCOUNTERS];
	bool have_counters;
};

/*
 * Decode a state file's bytes. 0 on success; -EINVAL (corrupt or
 * truncated, or headers that promise more elements than the bytes hold),
 * -ENOMEM, or -EPROTONOSUPPORT (a newer format), with a sentence in err.
 * On -EPROTONOSUPPORT, out->token_hw holds the mark when it could be read
 * (else 0), so a reset never lowers a token it can read.
 */
int state_decode(const uint8_t *buf, size_t len, struct state_data *out,
		 char *err, size_t errlen);

/*
 * Read the file. -ENOENT when it does not exist (a new storage); other
 * errors as state_decode, or -errno for I/O. Anything but a regular file
 * (a symlink, a FIFO, a folder) is refused with a message naming it; the
 * open never blocks.
 */
int state_read(const char *path, struct state_data *out, char *err,
	       size_t errlen);

/*
 * Write hw, the clean mark and the counters (and each tracked resource's
 * last token) to the file, durably: a temp file beside it ("<path>.tmp",
 * created exclusively after removing whatever a crash or anyone else left
 * there; never through a link, never blocking), fsync, rename, folder fsync.
 * The file gets mode 0600, or 0640 and group gid when gid >= 0. 0, or
 * -errno with err set. *fsyncs counts the fsync calls.
 */
int state_write(const char *path, uint64_t token_hw, bool clean, int gid,
		const struct stats *st, unsigned *fsyncs, char *err,
		size_t errlen);

/*
 * One durable write in a helper thread. The record is encoded by the
 * caller's thread at start (it reads the stats); the thread only does the
 * file work and then makes wake_fd readable. The caller's event loop then
 * calls state_writer_finish(), which joins the thread and returns the
 * write's result (0 or -errno, with err set).
 */
struct state_writer {
	int wake_fd; /* eventfd, created at the first start; -1 before */
	bool busy;   /* a thread is writing */
	pthread_t tid;
	char *path;
	int gid;	    /* as state_write */
	msgpack_sbuffer sb; /* the encoded record */
	uint64_t token_hw;  /* the mark being written */
	unsigned fsyncs;    /* fsync calls made by the write */
	int rc;
	char err[600];
};

void state_writer_init(struct state_writer *w);
/* 0 when the thread runs; -EBUSY when one already does; -errno, err set.
 * Its record is marked not clean: the daemon is running. */
int state_writer_start(struct state_writer *w, const char *path,
		       uint64_t token_hw, int gid, const struct stats *st);
/* Wait for the thread (at once, when wake_fd is readable); its result. */
int state_writer_finish(struct state_writer *w);
/* Finish a write still running, close the eventfd. */
void state_writer_free(struct state_writer *w);

#endif
