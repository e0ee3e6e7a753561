/*
 * role: active, standby or idle with respect to the storage lock, and the
 * changes between them (see role.c).
 */
#ifndef ARBITER_ROLE_H
#define ARBITER_ROLE_H

#include <stdbool.h>
#include <stddef.h>

struct server;

/* At start, before listening: take the storage lock or become a standby
 * (hold = always), or stay idle (hold = on-demand). -1 with err on a fatal
 * problem (a storage that cannot be opened, an unusable state file). */
int role_start(struct server *srv, char *err, size_t errlen);
/* After the listener is up: start waiting as a standby; tell systemd. */
void role_listening(struct server *srv);
/* on-demand: try to take the storage lock before an acquire. */
void role_before_acquire(struct server *srv);
/* After lockmgr events: reserve tokens, run the on-demand linger. */
void role_after_events(struct server *srv, bool need_tokens, bool busy,
		       bool idle);
/* Write the final state and give the storage lock back. */
void role_release(struct server *srv);
const char *role_name(const struct server *srv);

#endif
