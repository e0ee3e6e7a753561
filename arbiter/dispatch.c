/*
 * dispatch: a decoded request becomes a lockmgr call and a reply; a lockmgr
 * event becomes a frame to the connection it concerns and a stats record.
 *
 * Every Acquire gets exactly one final answer with its request id: Granted,
 * or an Error (WOULD_BLOCK, TIMEOUT, CANCELLED, SHUTTING_DOWN, ...). A Queued
 * event may come before it. Revoked events carry id 0 and name the lease.
 * Every Convert, likewise: Converted, or an Error (DEADLOCK, TIMEOUT, ...).
 * A conversion's events carry .convert and are never a Granted of a new
 * lease nor counted as an acquisition.
 *
 * Handlers do not send: they fill a dispatch_reply (a message, an Error, or
 * an Error that closes the connection), and dispatch_request sends it after
 * the lockmgr events their call caused (see there). Nothing here writes to a
 * socket or closes one: frames only queue, and the loop's pump (server.c)
 * writes them and closes failed connections at the end of the turn.
 *
 * The request table holds each kind's policy (allowed before Hello, admin
 * only), checked once before the handler runs; dispatch_access is the one
 * access check, shared with the text protocol.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "cluster.h"
#include "conn.h"
#include "dispatch.h"
#include "log.h"
#include "report.h"
#include "role.h"
#include "server.h"
#include "xalloc.h"

#define container_of(ptr, type, member)                                        \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define MS_TO_NS(ms) ((ms) > UINT64_MAX / 1000000 ? LM_FOREVER : (ms)*1000000)

static struct conn *
owner_conn(const struct lm_owner *o)
{
	return container_of(o, struct conn, owner);
}

Arbiter__Mode
dispatch_mode(enum lm_mode m)
{
	return m == LM_SHARED ? ARBITER__MODE__SHARED
			      : ARBITER__MODE__EXCLUSIVE;
}

static void
reply(struct conn *c, uint64_t id, Arbiter__ServerMessage__KindCase kind,
      void *body)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;

	m.has_id = true;
	m.id = id;
	m.kind_case = kind;
	/* Every oneof member is a pointer in the same union slot. */
	m.welcome = body;
	conn_send(c, &m);
}

/* "held by pid 12 (indexer), exclusive" for messages about a busy resource. */
static void
describe_holders(const struct lm_res *res, char *buf, size_t len)
{
	const struct lm_req *h;

	if (res == NULL || res->nholders == 0) {
		snprintf(buf, len, "%s",
			 res && res->nwaiters ? "queued behind others"
					      : "not held");
		return;
	}
	h = TAILQ_FIRST(&res->holders);
	if (h->owner->handed_to_pid != 0)
		/* The process that holds it, and the one that connected. */
		snprintf(buf, len, "held %s by pid %u (%s via %u)%s",
			 lockmgr_mode_name(h->mode), h->owner->handed_to_pid,
			 h->owner->name[0] ? h->owner->name : "unnamed",
			 h->owner->pid, res->nholders > 1 ? " and others" : "");
	else
		snprintf(buf, len, "held %s by pid %u (%s)%s",
			 lockmgr_mode_name(h->mode), h->owner->pid,
			 h->owner->name[0] ? h->owner->name : "unnamed",
			 res->nholders > 1 ? " and others" : "");
}

/*
 * Who may do what, for both protocols: a client must be in
 * access.allow_uids or access.allow_gids when either is set; an admin in
 * access.admin_uids. The daemon's own uid is both.
 */
bool
dispatch_access(const struct server *srv, const struct lm_owner *o,
		enum dispatch_access level)
{
	const struct config *cfg = &srv->cfg;

	if (o->uid == (uint32_t)getuid())
		return true;
	if (level == ACCESS_ADMIN)
		return config_id_allowed(&cfg->admin_uids, o->uid);
	if (cfg->allow_uids.n == 0 && cfg->allow_gids.n == 0)
		return true;
	return config_id_allowed(&cfg->allow_uids, o->uid) ||
	       config_id_allowed(&cfg->allow_gids, o->gid);
}

/* ------------------------------------------------------------ replies */

void *
dispatch_keep(struct dispatch_reply *rp, void *p)
{
	if (rp->nowned == rp->owned_cap) {
		rp->owned_cap = rp->owned_cap ? 2 * rp->owned_cap : 8;
		rp->owned =
		    xreallocarray(rp->owned, rp->owned_cap, sizeof *rp->owned);
	}
	rp->owned[rp->nowned++] = p;
	return p;
}

static void
reply_error_v(struct dispatch_reply *rp, bool fail, Arbiter__ErrorCode code,
	      const char *fmt, va_list ap)
{
	rp->error = true;
	rp->fail = fail;
	rp->code = code;
	vsnprintf(rp->text, sizeof rp->text, fmt, ap);
}

void
dispatch_error(struct dispatch_reply *rp, Arbiter__ErrorCode code,
	       const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	reply_error_v(rp, false, code, fmt, ap);
	va_end(ap);
}

void
dispatch_fail(struct dispatch_reply *rp, Arbiter__ErrorCode code,
	      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	reply_error_v(rp, true, code, fmt, ap);
	va_end(ap);
}

/* Send the handler's answer and free what it kept. */
static void
reply_send(struct conn *c, uint64_t id, struct dispatch_reply *rp)
{
	if (rp->fail)
		conn_fail(c, id, rp->code, "%s", rp->text);
	else if (rp->error)
		conn_send_error(c, id, rp->code, "%s", rp->text);
	else if (rp->kind != ARBITER__SERVER_MESSAGE__KIND__NOT_SET)
		reply(c, id, rp->kind, &rp->u);
	dispatch_reply_free(rp);
}

void
dispatch_reply_free(struct dispatch_reply *rp)
{
	for (size_t i = 0; i < rp->nowned; i++)
		free(rp->owned[i]);
	free(rp->owned);
	rp->owned = NULL;
	rp->nowned = rp->owned_cap = 0;
}

/* ------------------------------------------------------------ handlers */

static void
do_hello(struct conn *c, const Arbiter__Request *req, struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__Hello *h = req->hello;
	Arbiter__Welcome *w = &rp->u.welcome;
	Arbiter__Limits *lim = &rp->limits;

	if (c->welcomed) {
		dispatch_fail(rp, ARBITER__ERROR_CODE__NOT_WELCOME,
			      "a second Hello on one connection");
		return;
	}
	if (h->protocol_version != ARB_PROTOCOL_VERSION) {
		dispatch_fail(
		    rp, ARBITER__ERROR_CODE__VERSION,
		    "protocol version %u is not supported; this arbiter "
		    "%s speaks version %d",
		    h->protocol_version, ARBITER_VERSION, ARB_PROTOCOL_VERSION);
		return;
	}
	if (!dispatch_access(srv, &c->owner, ACCESS_CLIENT)) {
		stats_count(&srv->stats, NULL, STAT_failed_forbidden);
		dispatch_fail(rp, ARBITER__ERROR_CODE__FORBIDDEN,
			      "uid %u gid %u is not in access.allow_uids or "
			      "access.allow_gids",
			      c->owner.uid, c->owner.gid);
		return;
	}
	/* An empty name is no name: protobuf-c gives it a NULL pointer, which
	 * memchr() and memcpy() must not see. */
	if (h->has_client_name && h->client_name.len > 0) {
		if (h->client_name.len > ARB_CLIENT_NAME_MAX ||
		    !codec_printable_utf8((const char *)h->client_name.data,
					  h->client_name.len) ||
		    memchr(h->client_name.data, '\0', h->client_name.len)) {
			dispatch_fail(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
				      "client name must be at most %d bytes of "
				      "printable UTF-8",
				      ARB_CLIENT_NAME_MAX);
			return;
		}
		memcpy(c->owner.name, h->client_name.data, h->client_name.len);
		c->owner.name[h->client_name.len] = '\0';
	}
	c->welcomed = true;
	event_del(&c->ev_deadline);
	arbiter__welcome__init(w);
	arbiter__limits__init(lim);
	w->protocol_version = ARB_PROTOCOL_VERSION;
	w->server_version = rp->version;
	w->has_connection_id = true;
	w->connection_id = c->id;
	w->has_handover = w->handover = true;
	if (c->srv->cluster != NULL)
		w->has_cluster = w->cluster = true;
	lim->has_max_frame_bytes = true;
	lim->max_frame_bytes = (uint32_t)srv->cfg.max_frame_bytes;
	lim->has_max_leases_per_connection = true;
	lim->max_leases_per_connection =
	    (uint32_t)srv->cfg.max_leases_per_connection;
	lim->has_max_name_bytes = true;
	lim->max_name_bytes = ARB_NAME_MAX;
	w->limits = lim;
	snprintf(rp->role, sizeof rp->role, "%s", role_name(srv));
	w->role = rp->role;
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_WELCOME;
}

static void
do_acquire(struct conn *c, const Arbiter__Request *req,
	   struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__Acquire *a = req->acquire;
	const struct config *cfg = &srv->cfg;
	struct lm_acquire la = {0};
	const char *bad;
	char held[700];
	uint64_t lease_id, now;
	enum lm_result rc;
	struct stats_res *sr;
	struct lm_res *res;

	bad = codec_check_name((const char *)a->resource.data, a->resource.len);
	if (bad != NULL) {
		stats_count(&srv->stats, NULL, STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__INVALID_NAME, "%s",
			       bad);
		return;
	}
	if (a->has_mode && a->mode != ARBITER__MODE__EXCLUSIVE &&
	    a->mode != ARBITER__MODE__SHARED) {
		stats_count(&srv->stats, NULL, STAT_failed_invalid);
		conn_send_error(
		    c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
		    "unknown mode %d; use EXCLUSIVE (0) or SHARED (1)",
		    (int)a->mode);
		return;
	}
	if (a->has_ttl_ms && a->ttl_ms > cfg->max_ttl_ms) {
		stats_count(&srv->stats, NULL, STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "ttl_ms %" PRIu64
			       " is over leases.max_ttl_ms (%" PRIu64 ")",
			       a->ttl_ms, cfg->max_ttl_ms);
		return;
	}
	la.resource = (const char *)a->resource.data;
	la.len = a->resource.len;
	la.mode = a->has_mode && a->mode == ARBITER__MODE__SHARED
		      ? LM_SHARED
		      : LM_EXCLUSIVE;
	la.timeout_ns =
	    a->has_timeout_ms ? MS_TO_NS(a->timeout_ms) : LM_FOREVER;
	la.ttl_ns = a->has_ttl_ms ? MS_TO_NS(a->ttl_ms) : 0;
	la.delay_ns = MS_TO_NS(a->has_lock_delay_ms
				   ? (a->lock_delay_ms < cfg->max_lock_delay_ms
					  ? a->lock_delay_ms
					  : cfg->max_lock_delay_ms)
				   : cfg->lock_delay_ms);
	la.tag = req->id;
	la.position_updates = a->has_position_updates && a->position_updates;
	la.quiet = a->has_quiet && a->quiet;
	la.cluster = cluster_covers(srv, la.resource, la.len);
	if (la.cluster && (bad = cluster_refuses(srv)) != NULL) {
		stats_count(&srv->stats,
			    stats_res(&srv->stats, la.resource, la.len),
			    STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__UNAVAILABLE,
			       "'%.*s' is a cluster resource and %s",
			       (int)la.len, la.resource, bad);
		return;
	}

	role_before_acquire(srv);
	now = now_ns();
	rc = lockmgr_acquire(&srv->lm, &c->owner, &la, now, &lease_id);
	if (rc == LM_OK_GRANTED || rc == LM_OK_QUEUED)
		return; /* the answer is the Granted or Queued event */
	sr = stats_res(&srv->stats, la.resource, la.len);
	res = lockmgr_find(&srv->lm, la.resource, la.len);
	switch (rc) {
	case LM_ERR_WOULD_BLOCK:
		stats_count(&srv->stats, sr, STAT_failed_would_block);
		if (srv->role == ROLE_STANDBY)
			snprintf(held, sizeof held,
				 "this arbiter is a standby; the storage is "
				 "held by %s",
				 srv->storage_holder);
		else if (!srv->lm.open)
			snprintf(held, sizeof held,
				 "the storage lock is not held (%s)",
				 role_name(srv));
		else if (res != NULL && res->delay.idx >= 0)
			snprintf(held, sizeof held,
				 "lock-delay after an unclean release is "
				 "still running");
		else
			describe_holders(res, held, sizeof held);
		dispatch_error(rp, ARBITER__ERROR_CODE__WOULD_BLOCK,
			       "'%.*s' is busy: %.700s", (int)la.len,
			       la.resource, held);
		return;
	case LM_ERR_ALREADY_HELD:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__ALREADY_HELD,
			       "this connection already holds or waits for "
			       "'%.*s'; release it first (a lease is not "
			       "re-entrant across requests)",
			       (int)la.len, la.resource);
		return;
	case LM_ERR_MAX_RESOURCES:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__LIMIT,
			       "limits.max_resources (%" PRIu64 ") reached",
			       cfg->max_resources);
		return;
	case LM_ERR_MAX_LEASES:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__LIMIT,
			       "limits.max_leases_per_connection (%" PRIu64
			       ") reached on this connection",
			       cfg->max_leases_per_connection);
		return;
	case LM_ERR_MAX_WAITERS:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		dispatch_error(rp, ARBITER__ERROR_CODE__LIMIT,
			       "limits.max_waiters_per_resource (%" PRIu64
			       ") reached on '%.*s'",
			       cfg->max_waiters_per_resource, (int)la.len,
			       la.resource);
		return;
	default:
		dispatch_error(rp, ARBITER__ERROR_CODE__INTERNAL,
			       "unexpected lockmgr result %d", (int)rc);
	}
}

static void
do_release(struct conn *c, const Arbiter__Request *req,
	   struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__Release *r = req->release;
	Arbiter__Released *out = &rp->u.released;
	const struct lm_event *ev;
	size_t before, nev;
	bool by_tag;
	uint64_t key;

	if (r->has_lease_id == r->has_request_id) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "Release needs exactly one of lease_id or "
			       "request_id");
		return;
	}
	by_tag = r->has_request_id;
	key = by_tag ? r->request_id : r->lease_id;
	/* Events queued before this call (a close earlier in this turn) are
	 * not this release's. */
	(void)lockmgr_events(&srv->lm, &before);
	if (lockmgr_release(&srv->lm, &c->owner, key, by_tag, now_ns()) < 0) {
		dispatch_error(rp, ARBITER__ERROR_CODE__UNKNOWN_LEASE,
			       "no %s %" PRIu64
			       " on this connection (already released, "
			       "expired, revoked, or another connection's)",
			       by_tag ? "pending request" : "lease", key);
		return;
	}
	arbiter__released__init(out);
	ev = lockmgr_events(&srv->lm, &nev);
	for (size_t i = before; i < nev; i++) {
		/* A waiting upgrade's end comes first: not the lease's. */
		if (ev[i].kind == LM_EV_ENDED && !ev[i].convert &&
		    ev[i].owner == &c->owner) {
			out->has_lease_id = true;
			out->lease_id = ev[i].lease_id;
			out->has_held_us = true;
			out->held_us = ev[i].held_ns / 1000;
			break;
		}
	}
	/* Sent after the events, so the CANCELLED error of a withdrawn
	 * request (the Acquire's own answer) comes first. */
	if (!(r->has_quiet && r->quiet))
		rp->kind = ARBITER__SERVER_MESSAGE__KIND_RELEASED;
}

/*
 * Convert: change a held lease's mode in place. Like Acquire, a conversion
 * that happens or waits is answered by its event (Converted, or the Error
 * of a waiting upgrade that ended); only a refusal is answered here.
 */
static void
do_convert(struct conn *c, const Arbiter__Request *req,
	   struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__Convert *cv = req->convert;
	struct lm_convert lc = {0};
	struct lm_req *l, *other;
	struct stats_res *sr = NULL;
	enum lm_conv_result rc;
	char held[700];

	if (cv->mode != ARBITER__MODE__EXCLUSIVE &&
	    cv->mode != ARBITER__MODE__SHARED) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "unknown mode %d; use EXCLUSIVE (0) or "
			       "SHARED (1)",
			       (int)cv->mode);
		return;
	}
	lc.lease_id = cv->lease_id;
	lc.mode = cv->mode == ARBITER__MODE__SHARED ? LM_SHARED : LM_EXCLUSIVE;
	lc.timeout_ns =
	    cv->has_timeout_ms ? MS_TO_NS(cv->timeout_ms) : LM_FOREVER;
	lc.tag = req->id;
	rc = lockmgr_convert(&srv->lm, &c->owner, &lc, now_ns());
	if (rc == LM_CONV_DONE || rc == LM_CONV_WAITING)
		return; /* the answer is the event */
	l = lockmgr_lease(&srv->lm, cv->lease_id);
	/* Every refusal but UNKNOWN names a lease of this connection. */
	if (rc == LM_CONV_ERR_UNKNOWN || l == NULL) {
		dispatch_error(rp, ARBITER__ERROR_CODE__UNKNOWN_LEASE,
			       "no lease %" PRIu64
			       " on this connection (already released, "
			       "expired, revoked, or another connection's)",
			       cv->lease_id);
		return;
	}
	if (srv->cfg.stats_enabled)
		sr = stats_res(&srv->stats, l->res->name, l->res->len);
	switch (rc) {
	case LM_CONV_ERR_NOT_HELD:
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "lease %" PRIu64 " on '%s' is not granted yet: "
			       "only a held lease converts; wait for its "
			       "Granted",
			       cv->lease_id, l->res->name);
		return;
	case LM_CONV_ERR_PENDING:
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "an upgrade of lease %" PRIu64
			       " on '%s' already waits; wait for its answer, "
			       "or convert to SHARED to withdraw it",
			       cv->lease_id, l->res->name);
		return;
	case LM_CONV_ERR_WOULD_BLOCK:
		if (l->res->nholders > 1)
			snprintf(held, sizeof held,
				 "%u other holder(s) share it",
				 l->res->nholders - 1);
		else
			snprintf(held, sizeof held,
				 "the arbiter grants nothing now (%s)",
				 role_name(srv));
		dispatch_error(rp, ARBITER__ERROR_CODE__WOULD_BLOCK,
			       "lease %" PRIu64 " on '%s' cannot be upgraded "
			       "at once: %s; it is still held shared",
			       cv->lease_id, l->res->name, held);
		return;
	case LM_CONV_ERR_DEADLOCK:
		other = l->res->converting;
		if (sr != NULL)
			stats_count(&srv->stats, sr, STAT_upgrade_deadlock);
		dispatch_error(
		    rp, ARBITER__ERROR_CODE__DEADLOCK,
		    "upgrading lease %" PRIu64 " on '%s' would deadlock: "
		    "lease %" PRIu64 " of pid %u (%s) already waits to "
		    "upgrade, and each would wait for the other to leave; "
		    "release lease %" PRIu64 " (the other upgrade then "
		    "proceeds) and acquire EXCLUSIVE anew",
		    cv->lease_id, l->res->name, other ? other->id : 0,
		    other ? other->owner->pid : 0,
		    other && other->owner->name[0] ? other->owner->name
						   : "unnamed",
		    cv->lease_id);
		return;
	case LM_CONV_ERR_CLUSTER:
		dispatch_error(
		    rp, ARBITER__ERROR_CODE__DEADLOCK,
		    "lease %" PRIu64 " on '%s' is held under a shared cluster "
		    "key, which readers on other hosts share: an upgrade "
		    "cannot wait in place there; release it and acquire "
		    "EXCLUSIVE anew",
		    cv->lease_id, l->res->name);
		return;
	default:
		dispatch_error(rp, ARBITER__ERROR_CODE__INTERNAL,
			       "unexpected lockmgr conversion result %d",
			       (int)rc);
	}
}

static void
do_ping(struct conn *c, const Arbiter__Request *req, struct dispatch_reply *rp)
{
	Arbiter__Pong *p = &rp->u.pong;

	arbiter__pong__init(p);
	if (req->ping->has_payload) {
		p->has_payload = true;
		p->payload = req->ping->payload;
	}
	snprintf(rp->role, sizeof rp->role, "%s", role_name(c->srv));
	p->role = rp->role;
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_PONG;
}

static void
do_renew(struct conn *c, const Arbiter__Request *req, struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__Renew *r = req->renew;
	Arbiter__Renewed *out = &rp->u.renewed;
	uint64_t ttl = r->has_ttl_ms ? r->ttl_ms : 0;
	struct lm_req *l;
	int rc;

	if (ttl > srv->cfg.max_ttl_ms) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "ttl_ms %" PRIu64
			       " is over leases.max_ttl_ms (%" PRIu64 ")",
			       ttl, srv->cfg.max_ttl_ms);
		return;
	}
	rc = lockmgr_renew(&srv->lm, &c->owner, r->lease_id, MS_TO_NS(ttl),
			   now_ns());
	if (rc == -ENOENT) {
		dispatch_error(rp, ARBITER__ERROR_CODE__UNKNOWN_LEASE,
			       "no lease %" PRIu64
			       " on this connection (expired, released or "
			       "revoked?)",
			       r->lease_id);
		return;
	}
	if (rc < 0) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "lease %" PRIu64
			       " cannot be renewed: it is not held yet, or "
			       "has no ttl_ms (give one to set it)",
			       r->lease_id);
		return;
	}
	l = lockmgr_lease(&srv->lm, r->lease_id);
	arbiter__renewed__init(out);
	out->has_lease_id = true;
	out->lease_id = r->lease_id;
	out->has_ttl_ms = true;
	out->ttl_ms = l ? l->ttl_ns / 1000000 : ttl;
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_RENEWED;
}

/*
 * The connection's new owner process, in the client's own word (see
 * Handover in arbiter.proto). HandedOver is not in dispatch_reply's union:
 * every reply there is a message struct in the same slot, and this small
 * one fits the slot of the larger ones.
 */
static void
do_handover(struct conn *c, const Arbiter__Request *req,
	    struct dispatch_reply *rp)
{
	Arbiter__HandedOver *out = (Arbiter__HandedOver *)(void *)&rp->u;
	char label[96];

	_Static_assert(sizeof *out <= sizeof rp->u,
		       "HandedOver fits dispatch_reply's union");
	c->owner.handed_to_pid = req->handover->pid;
	log_debug("connection handed over", "%s handed_to_pid=%u",
		  conn_label(c, label, sizeof label), req->handover->pid);
	arbiter__handed_over__init(out);
	out->has_pid = true;
	out->pid = req->handover->pid;
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_HANDED_OVER;
}

static void
do_revoke(struct conn *c, const Arbiter__Request *req,
	  struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__Revoke *r = req->revoke;
	Arbiter__RevokeDone *out = &rp->u.revoke_done;
	char label[96];
	int n;

	if (r->has_lease_id == r->has_pid) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "Revoke needs exactly one of lease_id or pid");
		return;
	}
	if (r->has_lease_id) {
		if (lockmgr_revoke_lease(&srv->lm, r->lease_id, now_ns()) < 0) {
			conn_send_error(c, req->id,
					ARBITER__ERROR_CODE__UNKNOWN_LEASE,
					"no held lease %" PRIu64, r->lease_id);
			return;
		}
		n = 1;
	} else
		n = lockmgr_revoke_pid(&srv->lm, r->pid, now_ns());
	log_info("admin revoke", "%s lease=%" PRIu64 " pid=%u revoked=%d",
		 conn_label(c, label, sizeof label),
		 r->has_lease_id ? r->lease_id : 0, r->has_pid ? r->pid : 0, n);
	arbiter__revoke_done__init(out);
	out->has_revoked = true;
	out->revoked = (uint32_t)n;
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_REVOKE_DONE;
}

/* ------------------------------------------------------------ admin */

static void
do_stats_reset(struct conn *c, const Arbiter__Request *req,
	       struct dispatch_reply *rp)
{
	char label[96];

	(void)req;
	stats_reset(&c->srv->stats);
	log_info("stats reset", "%s", conn_label(c, label, sizeof label));
	arbiter__stats_reset_done__init(&rp->u.stats_reset_done);
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_STATS_RESET_DONE;
}

/* ------------------------------------------------------------ paging */

static uint64_t
rev64(uint64_t v)
{
	v = ((v >> 1) & 0x5555555555555555ULL) |
	    ((v & 0x5555555555555555ULL) << 1);
	v = ((v >> 2) & 0x3333333333333333ULL) |
	    ((v & 0x3333333333333333ULL) << 2);
	v = ((v >> 4) & 0x0F0F0F0F0F0F0F0FULL) |
	    ((v & 0x0F0F0F0F0F0F0F0FULL) << 4);
	return __builtin_bswap64(v);
}

/*
 * The cursor counts buckets with its bits reversed (Redis's dictScan): when
 * the table doubles, bucket b splits into b and b + old size, which the
 * reversed count reaches only after b, so nothing seen is seen again and
 * nothing present is missed. uthash never shrinks its table.
 */
void
dispatch_scan(const UT_hash_handle *hh, uint64_t *cursor, size_t budget,
	      size_t (*fn)(void *elem, void *arg), void *arg)
{
	const UT_hash_table *tbl;
	uint64_t v = *cursor, mask;
	size_t spent = 0;

	if (hh == NULL) {
		*cursor = 0;
		return;
	}
	tbl = hh->tbl;
	mask = (uint64_t)tbl->num_buckets - 1;
	do {
		const UT_hash_handle *e = tbl->buckets[v & mask].hh_head;

		while (e != NULL) {
			const UT_hash_handle *next = e->hh_next;

			spent += fn((char *)(uintptr_t)e - tbl->hho, arg);
			e = next;
		}
		v |= ~mask;
		v = rev64(rev64(v) + 1);
	} while (v != 0 && spent < budget);
	*cursor = v;
}

/* ------------------------------------------------------------ the table */

enum {
	REQ_BEFORE_HELLO = 1 << 0, /* allowed as the first request */
	REQ_ADMIN = 1 << 1,	   /* for access.admin_uids only */
};

static const struct request_kind {
	Arbiter__Request__KindCase kind;
	const char *name;
	unsigned flags;
	const char *admin_what; /* REQ_ADMIN: how the refusal names it */
	void (*fn)(struct conn *, const Arbiter__Request *,
		   struct dispatch_reply *);
} kinds[] = {
    {ARBITER__REQUEST__KIND_HELLO, "Hello", REQ_BEFORE_HELLO, NULL, do_hello},
    {ARBITER__REQUEST__KIND_ACQUIRE, "Acquire", 0, NULL, do_acquire},
    {ARBITER__REQUEST__KIND_RELEASE, "Release", 0, NULL, do_release},
    {ARBITER__REQUEST__KIND_PING, "Ping", 0, NULL, do_ping},
    {ARBITER__REQUEST__KIND_RENEW, "Renew", 0, NULL, do_renew},
    {ARBITER__REQUEST__KIND_CONVERT, "Convert", 0, NULL, do_convert},
    {ARBITER__REQUEST__KIND_STATS, "Stats", 0, NULL, report_stats},
    {ARBITER__REQUEST__KIND_STATUS, "Status", 0, NULL, report_status},
    {ARBITER__REQUEST__KIND_REVOKE, "Revoke", REQ_ADMIN, "revoke", do_revoke},
    {ARBITER__REQUEST__KIND_STATS_RESET, "StatsReset", REQ_ADMIN, "stats reset",
     do_stats_reset},
    {ARBITER__REQUEST__KIND_HANDOVER, "Handover", 0, NULL, do_handover},
};

/* The table's policy, checked once for every request. */
static void
check_policy(struct conn *c, const struct request_kind *k,
	     const Arbiter__Request *req, struct dispatch_reply *rp)
{
	struct server *srv = c->srv;

	if (k == NULL) {
		dispatch_fail(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			      "request %" PRIu64
			      " has no known kind (field %d); this arbiter "
			      "speaks protocol version %d",
			      req->id, (int)req->kind_case,
			      ARB_PROTOCOL_VERSION);
	} else if (!c->welcomed && !(k->flags & REQ_BEFORE_HELLO)) {
		dispatch_fail(rp, ARBITER__ERROR_CODE__NOT_WELCOME,
			      "%s before Hello; the first request must be "
			      "Hello",
			      k->name);
	} else if ((k->flags & REQ_ADMIN) &&
		   !dispatch_access(srv, &c->owner, ACCESS_ADMIN)) {
		stats_count(&srv->stats, NULL, STAT_failed_forbidden);
		dispatch_error(rp, ARBITER__ERROR_CODE__FORBIDDEN,
			       "%s is for admins: uid %u is not in "
			       "access.admin_uids",
			       k->admin_what, c->owner.uid);
	}
}

/*
 * Every request, in one order: the table's policy, the handler (which may
 * call the lockmgr and fills rp), the lockmgr's events (grants, queue
 * positions, revocations, the CANCELLED answer of a withdrawn acquire),
 * then the handler's reply. So a Release's Released, a Revoke's
 * RevokeDone, comes after the frames its call caused. All of it is only
 * queued: the loop's pump writes it at the end of the turn.
 */
void
dispatch_request(struct conn *c, const Arbiter__Request *req)
{
	const struct request_kind *k = NULL;
	struct dispatch_reply rp;

	/* A daemon that was paused past its cluster deadline revokes before
	 * it answers anything. */
	cluster_check(c->srv);
	memset(&rp, 0, sizeof rp);
	memcpy(rp.version, ARBITER_VERSION, sizeof rp.version);
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		if (kinds[i].kind == req->kind_case) {
			k = &kinds[i];
			break;
		}
	}
	check_policy(c, k, req, &rp);
	if (!rp.error)
		k->fn(c, req, &rp);
	dispatch_drain(c->srv);
	reply_send(c, req->id, &rp);
}

/* ------------------------------------------------------------ events */

void
dispatch_extended(struct server *srv, const struct lm_req *r,
		  uint64_t valid_until_ns)
{
	Arbiter__Extended e = ARBITER__EXTENDED__INIT;

	(void)srv;
	e.lease_id = r->id;
	e.has_valid_until_ns = true;
	e.valid_until_ns = valid_until_ns;
	e.resource = r->res->name;
	reply(owner_conn(r->owner), 0, ARBITER__SERVER_MESSAGE__KIND_EXTENDED,
	      &e);
}

static void
send_granted(struct server *srv, const struct lm_event *ev)
{
	struct conn *c = owner_conn(ev->owner);
	Arbiter__Granted g = ARBITER__GRANTED__INIT;

	g.lease_id = ev->lease_id;
	g.token = ev->token;
	g.resource = ev->res->name;
	g.has_mode = true;
	g.mode = dispatch_mode(ev->mode);
	g.has_waited_us = true;
	g.waited_us = ev->waited_ns / 1000;
	g.has_ttl_ms = true;
	g.ttl_ms = ev->ttl_ns / 1000000;
	if (ev->res->cluster) {
		g.has_valid_until_ns = true;
		g.valid_until_ns = cluster_valid_until(srv);
	}
	reply(c, ev->tag, ARBITER__SERVER_MESSAGE__KIND_GRANTED, &g);
	if (!ev->immediate && srv->cfg.slow_grant_ms > 0 &&
	    ev->waited_ns >= srv->cfg.slow_grant_ms * 1000000) {
		char q[600];

		log_info("slow grant",
			 "resource=%s waited_ms=%" PRIu64
			 " pid=%u lease=%" PRIu64,
			 log_quote(ev->res->name, q, sizeof q),
			 ev->waited_ns / 1000000, ev->owner->pid, ev->lease_id);
	}
}

/*
 * The outcome of a Convert: the lease now has ev->mode. Never a Granted, and
 * never counted as an acquisition: the lease was held all along.
 */
static void
apply_converted(struct server *srv, const struct lm_event *ev,
		struct stats_res *sr, bool count)
{
	struct conn *c = owner_conn(ev->owner);
	Arbiter__Converted m = ARBITER__CONVERTED__INIT;

	if (count && ev->was == LM_SHARED && ev->mode == LM_EXCLUSIVE) {
		stats_count(&srv->stats, sr,
			    ev->immediate ? STAT_upgraded_immediate
					  : STAT_upgraded_after_wait);
		stats_observe(&srv->stats, sr, STATS_H_upgrade_wait,
			      ev->immediate ? 0 : ev->waited_ns);
		if (sr != NULL)
			sr->last_token = ev->token;
	} else if (count && ev->was == LM_EXCLUSIVE && ev->mode == LM_SHARED)
		stats_count(&srv->stats, sr, STAT_downgraded);
	m.lease_id = ev->lease_id;
	m.token = ev->token;
	m.has_mode = true;
	m.mode = dispatch_mode(ev->mode);
	m.has_waited_us = true;
	m.waited_us = ev->waited_ns / 1000;
	m.resource = ev->res->name;
	if (ev->res->cluster) {
		m.has_valid_until_ns = true;
		m.valid_until_ns = cluster_valid_until(srv);
	}
	reply(c, ev->tag, ARBITER__SERVER_MESSAGE__KIND_CONVERTED, &m);
}

/*
 * A waiting upgrade ended without happening: its Convert's answer. After a
 * timeout or a withdrawal the lease is still held shared; any other reason
 * is the lease's own end, whose event follows.
 */
static void
apply_conv_ended(struct server *srv, const struct lm_event *ev,
		 struct stats_res *sr, bool count)
{
	struct conn *c = owner_conn(ev->owner);
	char held[200];

	switch (ev->end) {
	case LM_END_TIMEOUT:
		if (count)
			stats_count(&srv->stats, sr, STAT_upgrade_timeout);
		describe_holders(ev->res, held, sizeof held);
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__TIMEOUT,
				"upgrade of lease %" PRIu64 " on '%s' timed "
				"out after %" PRIu64 " ms waiting for the "
				"other shared holders (%s); the lease is "
				"still held shared",
				ev->lease_id, ev->res->name,
				ev->waited_ns / 1000000, held);
		return;
	case LM_END_CANCEL:
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__CANCELLED,
				"the waiting upgrade of lease %" PRIu64
				" on '%s' was withdrawn; the lease is still "
				"held shared",
				ev->lease_id, ev->res->name);
		return;
	case LM_END_DISCONNECT:
		return; /* nobody left to tell */
	default:
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__CANCELLED,
				"the waiting upgrade of lease %" PRIu64
				" on '%s' ended with the lease (%s)",
				ev->lease_id, ev->res->name,
				lockmgr_end_name(ev->end));
		return;
	}
}

static void
send_queued(const struct server *srv, const struct lm_event *ev)
{
	struct conn *c = owner_conn(ev->owner);
	Arbiter__Queued q = ARBITER__QUEUED__INIT;
	char name[LM_CLIENT_NAME_MAX + 1] = "";

	q.lease_id = ev->lease_id;
	q.has_position = true;
	q.position = ev->position;
	q.has_holders = true;
	q.holders = ev->nholders;
	if (ev->holder != NULL) {
		q.has_holder_pid = true;
		q.holder_pid = ev->holder->pid;
		memcpy(name, ev->holder->name, sizeof name);
	}
	q.holder_name = name;
	q.resource = ev->res->name;
	if (ev->res->cluster) {
		q.has_hosts_ahead = true;
		q.hosts_ahead = cluster_hosts_ahead(srv, ev->res);
	}
	reply(c, ev->tag, ARBITER__SERVER_MESSAGE__KIND_QUEUED, &q);
}

static void
send_revoked(const struct lm_event *ev, Arbiter__RevokeReason reason,
	     const char *msg)
{
	struct conn *c = owner_conn(ev->owner);
	Arbiter__Revoked r = ARBITER__REVOKED__INIT;
	char text[200];

	snprintf(text, sizeof text, "%s", msg);
	r.lease_id = ev->lease_id;
	r.has_reason = true;
	r.reason = reason;
	r.message = text;
	r.resource = ev->res->name;
	reply(c, 0, ARBITER__SERVER_MESSAGE__KIND_REVOKED, &r);
}

/* count: record stats (false when stats.enabled = no). */
static void
apply_ended(struct server *srv, const struct lm_event *ev, struct stats_res *sr,
	    bool count)
{
	struct conn *c = owner_conn(ev->owner);
	char q[600];
	static const struct {
		enum stats_counter counter;
		Arbiter__RevokeReason reason;
		const char *msg;
	} revoke[] = {
	    [LM_END_DISCONNECT] = {STAT_revoked_disconnect,
				   ARBITER__REVOKE_REASON__DISCONNECT,
				   "the connection closed"},
	    [LM_END_EXPIRED] = {STAT_revoked_expired,
				ARBITER__REVOKE_REASON__EXPIRED,
				"ttl_ms ran out without a Renew"},
	    [LM_END_ADMIN] = {STAT_revoked_admin, ARBITER__REVOKE_REASON__ADMIN,
			      "revoked by an administrator"},
	    [LM_END_SHUTDOWN] = {STAT_revoked_shutdown,
				 ARBITER__REVOKE_REASON__SHUTDOWN,
				 "the arbiter is shutting down"},
	    [LM_END_STORAGE_LOST] = {STAT_revoked_storage_lost,
				     ARBITER__REVOKE_REASON__STORAGE_LOST,
				     "the arbiter lost the storage lock (its "
				     "lock file was removed or replaced)"},
	    [LM_END_CLUSTER_LOST] = {STAT_revoked_cluster_lost,
				     ARBITER__REVOKE_REASON__CLUSTER_LOST,
				     "the arbiter could not renew its etcd "
				     "session before the lease's deadline "
				     "(etcd unreachable, or the daemon was "
				     "paused); another host may hold the "
				     "resource now"},
	};

	if (ev->held && count)
		stats_hold(&srv->stats, sr, ev->held_ns);
	switch (ev->end) {
	case LM_END_RELEASE:
		if (count)
			stats_count(&srv->stats, sr, STAT_releases);
		return;
	case LM_END_CANCEL:
		if (count)
			stats_count(&srv->stats, sr, STAT_cancelled);
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__CANCELLED,
				"the pending acquire of '%s' was withdrawn",
				ev->res->name);
		return;
	case LM_END_TIMEOUT: {
		char held[200];

		if (count)
			stats_count(&srv->stats, sr, STAT_failed_timeout);
		describe_holders(ev->res, held, sizeof held);
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__TIMEOUT,
				"timed out after %" PRIu64
				" ms waiting for '%s' (%s)",
				ev->waited_ns / 1000000, ev->res->name, held);
		if (log_enabled(LOG_INFO))
			log_info("acquire timed out",
				 "resource=%s pid=%u waited_ms=%" PRIu64,
				 log_quote(ev->res->name, q, sizeof q),
				 ev->owner->pid, ev->waited_ns / 1000000);
		return;
	}
	case LM_END_BUSY:
		if (count)
			stats_count(&srv->stats, sr, STAT_failed_would_block);
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__WOULD_BLOCK,
				"'%s' is busy: %s", ev->res->name,
				cluster_busy_reason(srv, ev->res));
		return;
	case LM_END_UNAVAILABLE:
		if (count)
			stats_count(&srv->stats, sr, STAT_failed_invalid);
		conn_send_error(c, ev->tag, ARBITER__ERROR_CODE__UNAVAILABLE,
				"'%s' is a cluster resource and %s",
				ev->res->name, cluster_unavailable_reason(srv));
		return;
	case LM_END_DISCONNECT:
	case LM_END_EXPIRED:
	case LM_END_ADMIN:
	case LM_END_SHUTDOWN:
	case LM_END_STORAGE_LOST:
	case LM_END_CLUSTER_LOST:
		if (!ev->held) {
			if (ev->end == LM_END_DISCONNECT) {
				if (count)
					stats_count(&srv->stats, sr,
						    STAT_cancelled);
			} else if (ev->end == LM_END_SHUTDOWN)
				conn_send_error(
				    c, ev->tag,
				    ARBITER__ERROR_CODE__SHUTTING_DOWN,
				    "the arbiter is shutting down");
			else
				conn_send_error(
				    c, ev->tag, ARBITER__ERROR_CODE__CANCELLED,
				    "the pending acquire of '%s' was "
				    "withdrawn by an administrator",
				    ev->res->name);
			return;
		}
		if (count)
			stats_count(&srv->stats, sr, revoke[ev->end].counter);
		if (ev->end != LM_END_DISCONNECT)
			send_revoked(ev, revoke[ev->end].reason,
				     revoke[ev->end].msg);
		if (ev->end != LM_END_SHUTDOWN)
			log_info("lease revoked",
				 "resource=%s reason=%s pid=%u lease=%" PRIu64
				 " held_ms=%" PRIu64,
				 log_quote(ev->res->name, q, sizeof q),
				 lockmgr_end_name(ev->end), ev->owner->pid,
				 ev->lease_id, ev->held_ns / 1000000);
		return;
	}
}

/* The same, without recording stats (stats.enabled = no). */
static void
apply_events_bare(struct server *srv, const struct lm_event *ev, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (ev[i].res == NULL)
			continue;
		if (ev[i].kind == LM_EV_GRANTED && ev[i].convert)
			apply_converted(srv, &ev[i], NULL, false);
		else if (ev[i].kind == LM_EV_GRANTED)
			send_granted(srv, &ev[i]);
		else if (ev[i].kind == LM_EV_QUEUED)
			send_queued(srv, &ev[i]);
		else if (ev[i].kind == LM_EV_ENDED && ev[i].convert)
			apply_conv_ended(srv, &ev[i], NULL, false);
		else if (ev[i].kind == LM_EV_ENDED)
			apply_ended(srv, &ev[i], NULL, false);
	}
}

static void
apply_events(struct server *srv)
{
	const struct lm_event *ev;
	size_t n;

	ev = lockmgr_events(&srv->lm, &n);
	if (!srv->cfg.stats_enabled) {
		apply_events_bare(srv, ev, n);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		struct stats_res *sr = NULL;

		/* Every grant, queue and end names its resource. */
		if (ev[i].res == NULL &&
		    (ev[i].kind == LM_EV_GRANTED ||
		     ev[i].kind == LM_EV_QUEUED || ev[i].kind == LM_EV_ENDED))
			continue;
		if (ev[i].res != NULL)
			sr = stats_res(&srv->stats, ev[i].res->name,
				       ev[i].res->len);
		switch (ev[i].kind) {
		case LM_EV_GRANTED:
			if (ev[i].convert) {
				apply_converted(srv, &ev[i], sr, true);
				break;
			}
			stats_count(&srv->stats, sr,
				    ev[i].immediate ? STAT_acquired_immediate
						    : STAT_acquired_after_wait);
			stats_wait(&srv->stats, sr, ev[i].waited_ns);
			if (sr != NULL)
				sr->last_token = ev[i].token;
			send_granted(srv, &ev[i]);
			break;
		case LM_EV_QUEUED:
			send_queued(srv, &ev[i]);
			break;
		case LM_EV_ENDED:
			if (ev[i].convert)
				apply_conv_ended(srv, &ev[i], sr, true);
			else
				apply_ended(srv, &ev[i], sr, true);
			break;
		case LM_EV_NEED_TOKENS:
		case LM_EV_BUSY:
		case LM_EV_IDLE:
			break; /* handled by dispatch_drain */
		}
	}
}

void
dispatch_drain(struct server *srv)
{
	bool need_tokens = false, busy = false, idle = false;

	/* Reserving tokens can grant, which queues more events: loop. */
	for (int round = 0; round < 4; round++) {
		const struct lm_event *ev;
		size_t n;

		ev = lockmgr_events(&srv->lm, &n);
		if (n == 0)
			break;
		for (size_t i = 0; i < n; i++) {
			need_tokens |= ev[i].kind == LM_EV_NEED_TOKENS;
			busy |= ev[i].kind == LM_EV_BUSY;
			idle |= ev[i].kind == LM_EV_IDLE;
		}
		apply_events(srv);
		lockmgr_events_done(&srv->lm);
		role_after_events(srv, need_tokens, busy, idle);
		need_tokens = busy = idle = false;
		cluster_pump(srv);
	}
}
