/*
 * fuzz_server: a real daemon core for the fuzz harnesses, without a listener,
 * storage lock or state file. It holds an event base, the default config,
 * a lock manager, stats and the decode arena, exactly as server_init() sets
 * them up, and speaks to its connections over socketpairs, so every byte a
 * harness sends goes through conn_read_cb(), framing, dispatch and the
 * flush path the daemon runs in production.
 *
 * Two well-behaved helper connections hold and wait for resources ("db"
 * exclusive, "idx" shared), so the fuzzed connection's requests meet queues,
 * grants after waiting, cancels and revocations, and the text protocol's
 * status lists holders and waiters.
 */
#ifndef ARBITER_FUZZ_SERVER_H
#define ARBITER_FUZZ_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"

struct fuzz_server;

/* Once per process: quiet logs unless ARBITER_FUZZ_LOG is set. */
void fuzz_init(void);

/* How the fuzzed client behaves besides sending its bytes. */
enum {
	FUZZ_CHECK_FRAMES = 1, /* its replies must be well-formed frames */
	/* It reads nothing until its input is sent, over a small socket
	 * buffer, and the daemon's output cap is the smallest allowed (4 KiB):
	 * the daemon's write-blocked and drop-the-slow-reader paths. */
	FUZZ_SLOW_READER = 2,
};

/* A fresh server with two helpers connected, welcomed and holding leases.
 * flags as for fuzz_server_client (FUZZ_SLOW_READER changes the config). */
struct fuzz_server *fuzz_server_new(int flags);

/*
 * Open a client connection, send it data as its input stream, let the
 * helpers release (so its queued requests are granted), then close it.
 * With FUZZ_CHECK_FRAMES, everything the daemon sent back must be
 * well-formed frames holding ServerMessages; a violation aborts.
 */
void fuzz_server_client(struct fuzz_server *fs, const uint8_t *data, size_t len,
			int flags);

/* The flags a harness derives from its input: the top bit of the last
 * byte asks for a slow reader, so the corpus carries the choice. */
int fuzz_flags_from(const uint8_t *data, size_t len);

/* Close everything, check the lock manager is empty, free it all. */
void fuzz_server_free(struct fuzz_server *fs);

#endif
