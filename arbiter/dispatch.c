/*
 * dispatch: a decoded request becomes a lockmgr call and a reply; a lockmgr
 * event becomes a frame to the connection it concerns and a stats record.
 *
 * Every Acquire gets exactly one final answer with its request id: Granted,
 * or an Error (WOULD_BLOCK, TIMEOUT, CANCELLED, SHUTTING_DOWN, ...). A Queued
 * event may come before it. Revoked events carry id 0 and name the lease.
 *
 * Handlers never close a connection themselves: they queue an Error and mark
 * it (conn_fail); the loop closes it after flushing, outside any callback
 * that could still touch it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
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
	snprintf(buf, len, "held %s by pid %u (%s)%s",
		 lockmgr_mode_name(h->mode), h->owner->pid,
		 h->owner->name[0] ? h->owner->name : "unnamed",
		 res->nholders > 1 ? " and others" : "");
}

static bool
uid_allowed(const struct server *srv, const struct conn *c)
{
	const struct config *cfg = &srv->cfg;

	if (cfg->allow_uids.n == 0 && cfg->allow_gids.n == 0)
		return true;
	return config_id_allowed(&cfg->allow_uids, c->owner.uid) ||
	       config_id_allowed(&cfg->allow_gids, c->owner.gid) ||
	       c->owner.uid == (uint32_t)getuid();
}

static bool
is_admin(const struct server *srv, const struct conn *c)
{
	return c->owner.uid == (uint32_t)getuid() ||
	       config_id_allowed(&srv->cfg.admin_uids, c->owner.uid);
}

/* ------------------------------------------------------------ handlers */

static void
do_hello(struct conn *c, const Arbiter__Request *req)
{
	struct server *srv = c->srv;
	const Arbiter__Hello *h = req->hello;
	Arbiter__Welcome w = ARBITER__WELCOME__INIT;
	Arbiter__Limits lim = ARBITER__LIMITS__INIT;
	char version[] = ARBITER_VERSION, role[16];

	if (c->welcomed) {
		conn_fail(c, req->id, ARBITER__ERROR_CODE__NOT_WELCOME,
			  "a second Hello on one connection");
		return;
	}
	if (h->protocol_version != ARB_PROTOCOL_VERSION) {
		conn_fail(c, req->id, ARBITER__ERROR_CODE__VERSION,
			  "protocol version %u is not supported; this arbiter "
			  "%s speaks version %d",
			  h->protocol_version, ARBITER_VERSION,
			  ARB_PROTOCOL_VERSION);
		return;
	}
	if (!uid_allowed(srv, c)) {
		stats_count(&srv->stats, NULL, STAT_failed_forbidden);
		conn_fail(c, req->id, ARBITER__ERROR_CODE__FORBIDDEN,
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
			conn_fail(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
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
	w.protocol_version = ARB_PROTOCOL_VERSION;
	w.server_version = version;
	w.has_connection_id = true;
	w.connection_id = c->id;
	lim.has_max_frame_bytes = true;
	lim.max_frame_bytes = (uint32_t)srv->cfg.max_frame_bytes;
	lim.has_max_leases_per_connection = true;
	lim.max_leases_per_connection =
	    (uint32_t)srv->cfg.max_leases_per_connection;
	lim.has_max_name_bytes = true;
	lim.max_name_bytes = ARB_NAME_MAX;
	w.limits = &lim;
	snprintf(role, sizeof role, "%s", role_name(srv));
	w.role = role;
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_WELCOME, &w);
}

static void
do_acquire(struct conn *c, const Arbiter__Request *req)
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
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__INVALID_NAME,
				"%s", bad);
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
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
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

	role_before_acquire(srv);
	now = now_ns();
	rc = lockmgr_acquire(&srv->lm, &c->owner, &la, now, &lease_id);
	if (rc == LM_OK_GRANTED || rc == LM_OK_QUEUED) {
		server_after_lockmgr(srv);
		return;
	}
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
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__WOULD_BLOCK,
				"'%.*s' is busy: %.700s", (int)la.len,
				la.resource, held);
		return;
	case LM_ERR_ALREADY_HELD:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__ALREADY_HELD,
				"this connection already holds or waits for "
				"'%.*s'; release it first (a lease is not "
				"re-entrant across requests)",
				(int)la.len, la.resource);
		return;
	case LM_ERR_MAX_RESOURCES:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__LIMIT,
				"limits.max_resources (%" PRIu64 ") reached",
				cfg->max_resources);
		return;
	case LM_ERR_MAX_LEASES:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__LIMIT,
				"limits.max_leases_per_connection (%" PRIu64
				") reached on this connection",
				cfg->max_leases_per_connection);
		return;
	case LM_ERR_MAX_WAITERS:
		stats_count(&srv->stats, sr, STAT_failed_invalid);
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__LIMIT,
				"limits.max_waiters_per_resource (%" PRIu64
				") reached on '%.*s'",
				cfg->max_waiters_per_resource, (int)la.len,
				la.resource);
		return;
	default:
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__INTERNAL,
				"unexpected lockmgr result %d", (int)rc);
	}
}

static void
do_release(struct conn *c, const Arbiter__Request *req)
{
	struct server *srv = c->srv;
	const Arbiter__Release *r = req->release;
	Arbiter__Released out = ARBITER__RELEASED__INIT;
	const struct lm_event *ev;
	size_t nev;
	bool by_tag;
	uint64_t key;

	if (r->has_lease_id == r->has_request_id) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
				"Release needs exactly one of lease_id or "
				"request_id");
		return;
	}
	by_tag = r->has_request_id;
	key = by_tag ? r->request_id : r->lease_id;
	if (lockmgr_release(&srv->lm, &c->owner, key, by_tag, now_ns()) < 0) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__UNKNOWN_LEASE,
				"no %s %" PRIu64
				" on this connection (already released, "
				"expired, revoked, or another connection's)",
				by_tag ? "pending request" : "lease", key);
		return;
	}
	ev = lockmgr_events(&srv->lm, &nev);
	for (size_t i = 0; i < nev; i++) {
		if (ev[i].kind == LM_EV_ENDED && ev[i].owner == &c->owner) {
			out.has_lease_id = true;
			out.lease_id = ev[i].lease_id;
			out.has_held_us = true;
			out.held_us = ev[i].held_ns / 1000;
			break;
		}
	}
	/* The Released reply goes after the CANCELLED error of a withdrawn
	 * request, so the Acquire's own answer always comes first. */
	server_after_lockmgr(srv);
	if (!(r->has_quiet && r->quiet))
		reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_RELEASED, &out);
}

static void
do_ping(struct conn *c, const Arbiter__Request *req)
{
	Arbiter__Pong p = ARBITER__PONG__INIT;
	char role[16];

	if (req->ping->has_payload) {
		p.has_payload = true;
		p.payload = req->ping->payload;
	}
	snprintf(role, sizeof role, "%s", role_name(c->srv));
	p.role = role;
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_PONG, &p);
}

static void
do_renew(struct conn *c, const Arbiter__Request *req)
{
	struct server *srv = c->srv;
	const Arbiter__Renew *r = req->renew;
	Arbiter__Renewed out = ARBITER__RENEWED__INIT;
	uint64_t ttl = r->has_ttl_ms ? r->ttl_ms : 0;
	struct lm_req *l;
	int rc;

	if (ttl > srv->cfg.max_ttl_ms) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
				"ttl_ms %" PRIu64
				" is over leases.max_ttl_ms (%" PRIu64 ")",
				ttl, srv->cfg.max_ttl_ms);
		return;
	}
	rc = lockmgr_renew(&srv->lm, &c->owner, r->lease_id, MS_TO_NS(ttl),
			   now_ns());
	if (rc == -ENOENT) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__UNKNOWN_LEASE,
				"no lease %" PRIu64
				" on this connection (expired, released or "
				"revoked?)",
				r->lease_id);
		return;
	}
	if (rc < 0) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
				"lease %" PRIu64
				" cannot be renewed: it is not held yet, or "
				"has no ttl_ms (give one to set it)",
				r->lease_id);
		return;
	}
	l = lockmgr_lease(&srv->lm, r->lease_id);
	out.has_lease_id = true;
	out.lease_id = r->lease_id;
	out.has_ttl_ms = true;
	out.ttl_ms = l ? l->ttl_ns / 1000000 : ttl;
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_RENEWED, &out);
	server_after_lockmgr(srv);
}

static void
do_revoke(struct conn *c, const Arbiter__Request *req)
{
	struct server *srv = c->srv;
	const Arbiter__Revoke *r = req->revoke;
	Arbiter__RevokeDone out = ARBITER__REVOKE_DONE__INIT;
	char label[96];
	int n;

	if (!is_admin(srv, c)) {
		stats_count(&srv->stats, NULL, STAT_failed_forbidden);
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__FORBIDDEN,
				"revoke is for admins: uid %u is not in "
				"access.admin_uids",
				c->owner.uid);
		return;
	}
	if (r->has_lease_id == r->has_pid) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
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
	server_after_lockmgr(srv);
	out.has_revoked = true;
	out.revoked = (uint32_t)n;
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_REVOKE_DONE, &out);
}

/* ------------------------------------------------------------ stats, status */

static void
fill_hist(Arbiter__Histogram *h, const struct hist *src)
{
	struct hist_summary s;

	hist_summarize(src, &s);
	h->has_count = h->has_sum_seconds = h->has_mean_seconds = true;
	h->has_max_seconds = h->has_p50_seconds = h->has_p90_seconds = true;
	h->has_p99_seconds = true;
	h->count = s.count;
	h->sum_seconds = s.sum;
	h->mean_seconds = s.mean;
	h->max_seconds = s.max;
	h->p50_seconds = s.p50;
	h->p90_seconds = s.p90;
	h->p99_seconds = s.p99;
}

struct rs_buf {
	Arbiter__ResourceStats rs;
	Arbiter__Histogram wait, hold;
	struct stats_figures f;
};

static void
fill_resource_stats(struct server *srv, const struct stats_res *r,
		    struct rs_buf *b)
{
	const uint64_t *c;
	struct lm_res *res =
	    r->len ? lockmgr_find(&srv->lm, r->name, r->len) : NULL;

	arbiter__resource_stats__init(&b->rs);
	arbiter__histogram__init(&b->wait);
	arbiter__histogram__init(&b->hold);
	stats_since_reset(r, &b->f);
	c = b->f.c;
	b->rs.resource = r->name;
#define SET(field, v)                                                          \
	do {                                                                   \
		b->rs.has_##field = true;                                      \
		b->rs.field = (v);                                             \
	} while (0)
	SET(acquired_immediate, c[STAT_acquired_immediate]);
	SET(acquired_after_wait, c[STAT_acquired_after_wait]);
	SET(failed_timeout, c[STAT_failed_timeout]);
	SET(failed_would_block, c[STAT_failed_would_block]);
	SET(failed_forbidden, c[STAT_failed_forbidden]);
	SET(failed_invalid, c[STAT_failed_invalid]);
	SET(releases, c[STAT_releases]);
	SET(cancelled, c[STAT_cancelled]);
	SET(revoked_disconnect, c[STAT_revoked_disconnect]);
	SET(revoked_expired, c[STAT_revoked_expired]);
	SET(revoked_admin, c[STAT_revoked_admin]);
	SET(revoked_shutdown, c[STAT_revoked_shutdown]);
	SET(revoked_storage_lost, c[STAT_revoked_storage_lost]);
	SET(total_acquisitions,
	    c[STAT_acquired_immediate] + c[STAT_acquired_after_wait]);
	SET(failed_acquisitions,
	    c[STAT_failed_timeout] + c[STAT_failed_would_block] +
		c[STAT_failed_forbidden] + c[STAT_failed_invalid]);
	SET(average_wait_time,
	    b->f.wait.count
		? (double)b->f.wait.sum_ns / 1e9 / (double)b->f.wait.count
		: 0.0);
	SET(max_wait_time, (double)b->f.wait.max_ns / 1e9);
	if (r == &srv->stats.total) {
		SET(holders, srv->lm.nheld);
		SET(waiters, srv->lm.nwaiting);
	} else if (res != NULL) {
		SET(holders, res->nholders);
		SET(waiters, res->nwaiters);
	} else {
		SET(holders, 0);
		SET(waiters, 0);
	}
#undef SET
	fill_hist(&b->wait, &b->f.wait);
	fill_hist(&b->hold, &b->f.hold);
	b->rs.wait = &b->wait;
	b->rs.hold = &b->hold;
}

/* ------------------------------------------------------------ paging */

static uint64_t
rev64(uint64_t v)
{
	v = ((v >> 1) & 0x5555555555555555ULL) | ((v & 0x5555555555555555ULL) << 1);
	v = ((v >> 2) & 0x3333333333333333ULL) | ((v & 0x3333333333333333ULL) << 2);
	v = ((v >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((v & 0x0F0F0F0F0F0F0F0FULL) << 4);
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

/* The cursor on the wire: 8 bytes, big-endian; absent or empty: the start. */
static bool
cursor_in(const ProtobufCBinaryData *b, protobuf_c_boolean has,
	  uint64_t *cursor)
{
	*cursor = 0;
	if (!has || b->len == 0)
		return true;
	if (b->len != 8)
		return false;
	for (size_t i = 0; i < 8; i++)
		*cursor = *cursor << 8 | b->data[i];
	return true;
}

static void
cursor_out(uint64_t cursor, uint8_t buf[8], ProtobufCBinaryData *b)
{
	for (int i = 7; i >= 0; i--, cursor >>= 8)
		buf[i] = (uint8_t)cursor;
	b->data = buf;
	b->len = 0;
	if (buf[0] | buf[1] | buf[2] | buf[3] | buf[4] | buf[5] | buf[6] |
	    buf[7])
		b->len = 8;
}

static size_t
page_size(protobuf_c_boolean has, uint32_t want)
{
	return !has || want == 0 || want > DISPATCH_PAGE_MAX ? DISPATCH_PAGE_MAX
							     : want;
}

/* Elements picked for one page. */
struct pick {
	void **v;
	size_t n, cap;
};

static void
pick_add(struct pick *p, void *e)
{
	if (p->n == p->cap) {
		p->cap = p->cap ? 2 * p->cap : 64;
		p->v = xreallocarray(p->v, p->cap, sizeof *p->v);
	}
	p->v[p->n++] = e;
}

static size_t
pick_one(void *e, void *arg)
{
	pick_add(arg, e);
	return 1;
}

/* ------------------------------------------------------------ stats */

static void
do_stats(struct conn *c, const Arbiter__Request *req)
{
	struct server *srv = c->srv;
	const Arbiter__StatsRequest *q = req->stats;
	Arbiter__Stats out = ARBITER__STATS__INIT;
	struct rs_buf total, *bufs = NULL;
	Arbiter__ResourceStats **list = NULL;
	struct pick pk = {0};
	uint64_t cursor = 0;
	uint8_t cbuf[8];
	char role[16];

	if (!cursor_in(&q->cursor, q->has_cursor, &cursor)) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
				"stats cursor of %zu bytes is not one this "
				"daemon gave; start again without a cursor",
				q->cursor.len);
		return;
	}
	fill_resource_stats(srv, &srv->stats.total, &total);
	out.total = &total.rs;
	if (q->has_resource) {
		struct stats_res *r = stats_find(
		    &srv->stats, (const char *)q->resource.data, q->resource.len);

		if (r != NULL)
			pick_add(&pk, r);
		cursor = 0;
	} else
		dispatch_scan(srv->stats.by_name ? &srv->stats.by_name->hh
						 : NULL,
			      &cursor, page_size(q->has_page_size, q->page_size),
			      pick_one, &pk);
	if (pk.n > 0) {
		bufs = xcalloc(pk.n, sizeof *bufs);
		list = xcalloc(pk.n, sizeof *list);
		for (size_t i = 0; i < pk.n; i++) {
			fill_resource_stats(srv, pk.v[i], &bufs[i]);
			list[i] = &bufs[i].rs;
		}
	}
	out.n_resources = pk.n;
	out.resources = list;
	out.has_connections = true;
	out.connections = srv->nconns;
	out.has_storage_locked = true;
	out.storage_locked = srv->storage.held;
	snprintf(role, sizeof role, "%s", role_name(srv));
	out.role = role;
	out.has_uptime_seconds = true;
	out.uptime_seconds = (double)(now_ns() - srv->t_start) / 1e9;
	out.has_resources_omitted = true;
	out.resources_omitted = srv->stats.omitted;
	out.has_next_cursor = true;
	cursor_out(cursor, cbuf, &out.next_cursor);
	out.has_resources_tracked = true;
	out.resources_tracked = srv->stats.nres;
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_STATS, &out);
	free(bufs);
	free(list);
	free(pk.v);
}

/* ------------------------------------------------------------ status */

static size_t
min_list(unsigned n)
{
	return n < DISPATCH_LIST_MAX ? n : DISPATCH_LIST_MAX;
}

/* Weigh a resource by the lines it adds, so a page stays bounded in time
 * and size whatever its queues hold. */
static size_t
pick_res(void *e, void *arg)
{
	struct lm_res *res = e;

	pick_add(arg, e);
	return 1 + (min_list(res->nholders) + min_list(res->nwaiters)) / 4;
}

static void
do_status(struct conn *c, const Arbiter__Request *req)
{
	struct server *srv = c->srv;
	const Arbiter__StatusRequest *q = req->status;
	Arbiter__Status out = ARBITER__STATUS__INIT;
	Arbiter__ResourceStatus *rs = NULL, **rlist = NULL;
	Arbiter__Holder *hs = NULL, **hlist = NULL;
	Arbiter__Waiter *ws = NULL, **wlist = NULL;
	struct pick pk = {0};
	size_t nh = 0, nw = 0, hi = 0, wi = 0;
	uint64_t now = now_ns(), cursor = 0;
	uint8_t cbuf[8];
	char role[16], version[] = ARBITER_VERSION;

	if (!cursor_in(&q->cursor, q->has_cursor, &cursor)) {
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
				"status cursor of %zu bytes is not one this "
				"daemon gave; start again without a cursor",
				q->cursor.len);
		return;
	}
	if (q->has_resource) {
		struct lm_res *res =
		    lockmgr_find(&srv->lm, (const char *)q->resource.data,
				 q->resource.len);

		if (res != NULL)
			pick_add(&pk, res);
		cursor = 0;
	} else
		dispatch_scan(srv->lm.res ? &srv->lm.res->hh : NULL, &cursor,
			      page_size(q->has_page_size, q->page_size),
			      pick_res, &pk);
	for (size_t i = 0; i < pk.n; i++) {
		const struct lm_res *res = pk.v[i];

		nh += min_list(res->nholders);
		nw += min_list(res->nwaiters);
	}
	rs = xcalloc(pk.n + 1, sizeof *rs);
	rlist = xcalloc(pk.n + 1, sizeof *rlist);
	hs = xcalloc(nh + 1, sizeof *hs);
	hlist = xcalloc(nh + 1, sizeof *hlist);
	ws = xcalloc(nw + 1, sizeof *ws);
	wlist = xcalloc(nw + 1, sizeof *wlist);
	for (size_t i = 0; i < pk.n; i++) {
		const struct lm_res *res = pk.v[i];
		Arbiter__ResourceStatus *s = &rs[i];
		struct lm_req *r;

		arbiter__resource_status__init(s);
		rlist[i] = s;
		s->resource = res->name;
		s->holders = &hlist[hi];
		s->waiters = &wlist[wi];
		TAILQ_FOREACH(r, &res->holders, q_entry)
		{
			Arbiter__Holder *h = &hs[hi];

			if (s->n_holders == DISPATCH_LIST_MAX)
				break;
			arbiter__holder__init(h);
			h->has_lease_id = h->has_mode = h->has_pid = true;
			h->has_uid = h->has_held_us = h->has_token = true;
			h->has_ttl_ms = h->has_connection_id = true;
			h->lease_id = r->id;
			h->mode = dispatch_mode(r->mode);
			h->pid = r->owner->pid;
			h->uid = r->owner->uid;
			h->client_name = r->owner->name;
			h->held_us = (now - r->t_granted) / 1000;
			h->token = r->token;
			h->ttl_ms = r->ttl_ns / 1000000;
			h->connection_id = r->owner->id;
			hlist[hi++] = h;
			s->n_holders++;
		}
		TAILQ_FOREACH(r, &res->waiters, q_entry)
		{
			Arbiter__Waiter *w = &ws[wi];

			if (s->n_waiters == DISPATCH_LIST_MAX)
				break;
			arbiter__waiter__init(w);
			w->has_lease_id = w->has_mode = w->has_pid = true;
			w->has_uid = w->has_waiting_us = true;
			w->has_connection_id = true;
			w->lease_id = r->id;
			w->mode = dispatch_mode(r->mode);
			w->pid = r->owner->pid;
			w->uid = r->owner->uid;
			w->client_name = r->owner->name;
			w->waiting_us = (now - r->t_queued) / 1000;
			w->connection_id = r->owner->id;
			wlist[wi++] = w;
			s->n_waiters++;
		}
		s->has_holders_omitted = s->has_waiters_omitted = true;
		s->holders_omitted = res->nholders - (unsigned)s->n_holders;
		s->waiters_omitted = res->nwaiters - (unsigned)s->n_waiters;
		s->has_delayed_us = true;
		s->delayed_us = res->delay.idx >= 0 && res->delay.when > now
				    ? (res->delay.when - now) / 1000
				    : 0;
	}
	out.n_resources = pk.n;
	out.resources = rlist;
	snprintf(role, sizeof role, "%s", role_name(srv));
	out.role = role;
	out.storage_path = srv->cfg.storage_path;
	out.storage_holder =
	    srv->role == ROLE_STANDBY ? srv->storage_holder : (char *)"";
	out.has_connections = true;
	out.connections = srv->nconns;
	out.has_pid = true;
	out.pid = (uint32_t)getpid();
	out.server_version = version;
	out.has_next_cursor = true;
	cursor_out(cursor, cbuf, &out.next_cursor);
	out.has_resources_total = out.has_holders_total = true;
	out.has_waiters_total = true;
	out.resources_total = srv->lm.nres;
	out.holders_total = srv->lm.nheld;
	out.waiters_total = srv->lm.nwaiting;
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_STATUS, &out);
	free(rs);
	free(rlist);
	free(hs);
	free(hlist);
	free(ws);
	free(wlist);
	free(pk.v);
}

static void
do_stats_reset(struct conn *c, const Arbiter__Request *req)
{
	Arbiter__StatsResetDone out = ARBITER__STATS_RESET_DONE__INIT;
	char label[96];

	if (!is_admin(c->srv, c)) {
		stats_count(&c->srv->stats, NULL, STAT_failed_forbidden);
		conn_send_error(c, req->id, ARBITER__ERROR_CODE__FORBIDDEN,
				"stats reset is for admins: uid %u is not in "
				"access.admin_uids",
				c->owner.uid);
		return;
	}
	stats_reset(&c->srv->stats);
	log_info("stats reset", "%s", conn_label(c, label, sizeof label));
	reply(c, req->id, ARBITER__SERVER_MESSAGE__KIND_STATS_RESET_DONE, &out);
}

/* ------------------------------------------------------------ the table */

struct request_kind {
	Arbiter__Request__KindCase kind;
	const char *name;
	void (*fn)(struct conn *, const Arbiter__Request *);
};

static const struct request_kind kinds[] = {
    {ARBITER__REQUEST__KIND_HELLO, "Hello", do_hello},
    {ARBITER__REQUEST__KIND_ACQUIRE, "Acquire", do_acquire},
    {ARBITER__REQUEST__KIND_RELEASE, "Release", do_release},
    {ARBITER__REQUEST__KIND_PING, "Ping", do_ping},
    {ARBITER__REQUEST__KIND_RENEW, "Renew", do_renew},
    {ARBITER__REQUEST__KIND_STATS, "Stats", do_stats},
    {ARBITER__REQUEST__KIND_STATUS, "Status", do_status},
    {ARBITER__REQUEST__KIND_REVOKE, "Revoke", do_revoke},
    {ARBITER__REQUEST__KIND_STATS_RESET, "StatsReset", do_stats_reset},
};

void
dispatch_request(struct conn *c, const Arbiter__Request *req)
{
	const struct request_kind *k = NULL;

	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		if (kinds[i].kind == req->kind_case) {
			k = &kinds[i];
			break;
		}
	}
	if (k == NULL) {
		conn_fail(c, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
			  "request %" PRIu64
			  " has no known kind (field %d); this arbiter speaks "
			  "protocol version %d",
			  req->id, (int)req->kind_case, ARB_PROTOCOL_VERSION);
		return;
	}
	if (!c->welcomed && k->kind != ARBITER__REQUEST__KIND_HELLO) {
		conn_fail(c, req->id, ARBITER__ERROR_CODE__NOT_WELCOME,
			  "%s before Hello; the first request must be Hello",
			  k->name);
		return;
	}
	k->fn(c, req);
}

/* ------------------------------------------------------------ events */

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

static void
send_queued(const struct lm_event *ev)
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
	case LM_END_DISCONNECT:
	case LM_END_EXPIRED:
	case LM_END_ADMIN:
	case LM_END_SHUTDOWN:
	case LM_END_STORAGE_LOST:
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
		if (ev[i].kind == LM_EV_GRANTED)
			send_granted(srv, &ev[i]);
		else if (ev[i].kind == LM_EV_QUEUED)
			send_queued(&ev[i]);
		else if (ev[i].kind == LM_EV_ENDED)
			apply_ended(srv, &ev[i], NULL, false);
	}
}

void
dispatch_apply_events(struct server *srv)
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
			stats_count(&srv->stats, sr,
				    ev[i].immediate ? STAT_acquired_immediate
						    : STAT_acquired_after_wait);
			stats_wait(&srv->stats, sr, ev[i].waited_ns);
			if (sr != NULL)
				sr->last_token = ev[i].token;
			send_granted(srv, &ev[i]);
			break;
		case LM_EV_QUEUED:
			send_queued(&ev[i]);
			break;
		case LM_EV_ENDED:
			apply_ended(srv, &ev[i], sr, true);
			break;
		case LM_EV_NEED_TOKENS:
		case LM_EV_BUSY:
		case LM_EV_IDLE:
			break; /* handled by server_after_lockmgr */
		}
	}
}
