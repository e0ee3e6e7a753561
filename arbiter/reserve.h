/*
 * reserve: the fencing tokens' reservations in the state file, in blocks of
 * STATE_TOKEN_BLOCK, while the daemon is active (see reserve.c).
 */
#ifndef ARBITER_RESERVE_H
#define ARBITER_RESERVE_H

#include <stdbool.h>
#include <stdint.h>

struct server;

/* Make the retry timer; at start, before the first reservation. */
void reserve_init(struct server *srv);
/*
 * Write the next block's mark in the loop and hand it to the lockmgr (at
 * activation). 0, or -errno after logging the failure and arming the retry:
 * grants beyond the current block wait meanwhile.
 */
int reserve_now(struct server *srv);
/*
 * After lockmgr events, while active: when the lockmgr needs tokens
 * (need_tokens) or half of the block is used, start writing the next block
 * in a helper thread; the loop hands its mark over when it is done.
 */
void reserve_refill(struct server *srv, bool need_tokens);
/*
 * Wait for a background write before the storage lock changes hands. Its
 * mark is not handed to the lockmgr: the caller resets the tokens anyway.
 */
void reserve_drain(struct server *srv);
/*
 * Make the state file's mark at least hw, in the background: cluster mode
 * raises it past every cluster token this host hands out, so that a daemon
 * started later without cluster mode (or with etcd restored from an older
 * backup, which cluster.c then refuses) starts its tokens above them. The
 * grants do not wait for it.
 */
void reserve_at_least(struct server *srv, uint64_t hw);

#endif
