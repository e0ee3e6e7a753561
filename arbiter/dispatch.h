/*
 * dispatch: a decoded request becomes a lockmgr call and a reply; a lockmgr
 * event becomes a frame (see dispatch.c).
 */
#ifndef ARBITER_DISPATCH_H
#define ARBITER_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uthash.h>

#include "codec.h"
#include "lockmgr.h"

struct conn;
struct server;

/*
 * A handler's answer, sent by dispatch_request after the lockmgr's events:
 * a message of kind (its body in u, pointing into this struct or into
 * buffers given to dispatch_keep, freed once sent), an Error (error), or
 * an Error after which the connection closes (fail). kind 0 and no error:
 * no reply (a quiet Release, an Acquire answered by its event).
 */
struct dispatch_reply {
	Arbiter__ServerMessage__KindCase kind;
	union {
		Arbiter__Welcome welcome;
		Arbiter__Released released;
		Arbiter__Pong pong;
		Arbiter__Renewed renewed;
		Arbiter__RevokeDone revoke_done;
		Arbiter__StatsResetDone stats_reset_done;
		Arbiter__Stats stats;
		Arbiter__Status status;
	} u;
	Arbiter__Limits limits;
	char role[16];
	char version[sizeof ARBITER_VERSION];
	uint8_t cursor[8];
	bool error, fail;
	Arbiter__ErrorCode code;
	char text[600];
	void **owned; /* freed once sent */
	size_t nowned, owned_cap;
};

/* Run one decoded request (see dispatch.c for the order of its frames). */
void dispatch_request(struct conn *c, const Arbiter__Request *req);
/* Carry out the lockmgr's queued events: frames, stats, token reservations
 * and the on-demand linger. */
void dispatch_drain(struct server *srv);
void dispatch_error(struct dispatch_reply *rp, Arbiter__ErrorCode code,
		    const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void dispatch_fail(struct dispatch_reply *rp, Arbiter__ErrorCode code,
		   const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Free p once the reply is sent; returns p. */
void *dispatch_keep(struct dispatch_reply *rp, void *p);
/* Free what dispatch_keep kept (done by the send for a request's reply). */
void dispatch_reply_free(struct dispatch_reply *rp);
enum dispatch_access { ACCESS_CLIENT, ACCESS_ADMIN };
/* May this peer use the daemon (ACCESS_CLIENT), or its admin requests? */
bool dispatch_access(const struct server *srv, const struct lm_owner *o,
		     enum dispatch_access level);
/*
 * One step of a walk over a uthash table that survives the table's growth
 * (Redis's SCAN cursor): visit whole buckets from *cursor, calling fn on
 * each element, until fn's weights add up to at least budget or the walk is
 * done. *cursor becomes 0 when it is. hh: any element's handle, or NULL for
 * an empty table.
 */
void dispatch_scan(const UT_hash_handle *hh, uint64_t *cursor, size_t budget,
		   size_t (*fn)(void *elem, void *arg), void *arg);
/* Pages: the most resources one Status/Stats page (or text chunk) holds, and
 * the most holders or waiters listed per resource. */
#define DISPATCH_PAGE_MAX 1000
#define DISPATCH_LIST_MAX 1000
Arbiter__Mode dispatch_mode(enum lm_mode m);
/* Tell a cluster lease's holder its new deadline (CLOCK_BOOTTIME ns). */
void dispatch_extended(struct server *srv, const struct lm_req *r,
		       uint64_t valid_until_ns);

#endif
