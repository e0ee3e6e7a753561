/*
 * cluster: cluster mode. Resources named by cluster.resources are one lock
 * across every arbiterd on the same etcd and prefix. Each host holds one
 * etcd key per such resource for its whole local queue ("lock
 * delegation"): local handoffs stay local, and the lock moves between
 * hosts through the keys, in the order of their create_revision.
 *
 * The host's etcd session is one lease, kept alive every TTL/3. Its
 * deadline (the timing rule of the design notes) is
 *
 *     valid_until = keepalive sent + TTL x (1 - drift) - safety_margin
 *
 * etcd cannot let the host's keys go before keepalive sent + TTL, so every
 * local cluster lease ends strictly before another host can be granted:
 * no cluster grant at or after the deadline (the lock manager checks it
 * on every grant), every cluster lease revoked at the deadline (a timer,
 * and a check first thing on every request, so a daemon resumed after a
 * pause revokes before it answers anything).
 *
 * Per resource: IDLE -> PUTTING -> QUEUED -> OWNED -> YIELDING ->
 * RELEASING -> IDLE (or PUTTING again under a new key when local waiters
 * remain). An exclusive key owns when no key with a lower create_revision
 * remains; a shared key when no lower exclusive key remains, so readers on
 * several hosts hold at once. Tokens of cluster leases are
 * 2^62 + create_revision x 2^20 + n: conflicting grants get growing tokens
 * across hosts.
 *
 * Everything here runs on the daemon's event loop and only queues etcd
 * requests; answers come back as callbacks, after which the loop's pump
 * carries out what the lock manager did.
 */
#ifndef ARBITER_CLUSTER_H
#define ARBITER_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arbiter.pb-c.h"

struct server;
struct lm_res;
struct dispatch_reply;

/* The token of grant n under a key created at create_revision. */
#define CLUSTER_TOKEN_BASE(rev) ((UINT64_C(1) << 62) + ((uint64_t)(rev) << 20))

/* Set up srv->cluster from the config (NULL when cluster.backend = none);
 * -1 with a message when etcd's settings are unusable. */
int cluster_init(struct server *srv, char *err, size_t errlen);
void cluster_free(struct server *srv);

/* The daemon became active: start the session. */
void cluster_start(struct server *srv);
/* The daemon is stopping: revoke the session's etcd lease, so the other
 * hosts get this host's keys at once. cluster_stopped() says when the
 * answer came (or there was nothing to do). */
void cluster_stop(struct server *srv);
bool cluster_stopped(const struct server *srv);

/* Whether a resource name is cluster-wide here. */
bool cluster_covers(const struct server *srv, const char *name, size_t len);
/* NULL when a cluster acquire may go ahead, else why it fails now
 * (cluster.when_unavailable = fail while etcd cannot be reached). */
const char *cluster_refuses(struct server *srv);
/* Texts for the errors of a try-once another host holds, and of an
 * unreachable cluster. */
const char *cluster_busy_reason(struct server *srv, const struct lm_res *res);
const char *cluster_unavailable_reason(struct server *srv);

/* Revoke every cluster lease if the session's deadline has passed. */
void cluster_check(struct server *srv);
/* After the lock manager's events: decide about the resources whose
 * demand moved. */
void cluster_pump(struct server *srv);

/* The session's deadline on CLOCK_BOOTTIME (ns), 0 when none. */
uint64_t cluster_valid_until(const struct server *srv);
/* Hosts whose keys are ahead of this host's for res. */
uint32_t cluster_hosts_ahead(const struct server *srv,
			     const struct lm_res *res);

/* Status and Stats parts; allocations are kept by rp. */
void cluster_status_resource(struct server *srv, const struct lm_res *res,
			     Arbiter__ResourceStatus *s,
			     struct dispatch_reply *rp);
Arbiter__Cluster *cluster_report(struct server *srv, struct dispatch_reply *rp);
/* For /metrics: one line per figure, Prometheus text. */
struct evbuffer;
void cluster_metrics(struct server *srv, struct evbuffer *out);

#endif
