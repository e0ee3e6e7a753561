/*
 * report: the Stats and Status replies. Both come in pages walked with
 * dispatch_scan's cursor, so a reply stays bounded in size and in time
 * whatever the daemon tracks. A resource's figures come from stats_emit
 * (stats.c), the one producer; they are placed in the protobuf reply by
 * field name from the message descriptor, and report_text_field renders
 * them for the text protocol, so neither keeps a list of its own.
 *
 * Nothing here changes state: the handlers only read the lockmgr and the
 * stats and fill the reply that dispatch_request sends.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dispatch.h"
#include "cluster.h"
#include "report.h"
#include "role.h"
#include "server.h"
#include "xalloc.h"

/* ------------------------------------------------------------ stats, status */

void
report_fill_hist(Arbiter__Histogram *h, const struct hist_summary *s)
{
	h->has_count = h->has_sum_seconds = h->has_mean_seconds = true;
	h->has_max_seconds = h->has_p50_seconds = h->has_p90_seconds = true;
	h->has_p99_seconds = true;
	h->count = s->count;
	h->sum_seconds = s->sum;
	h->mean_seconds = s->mean;
	h->max_seconds = s->max;
	h->p50_seconds = s->p50;
	h->p90_seconds = s->p90;
	h->p99_seconds = s->p99;
}

struct pb_fill {
	Arbiter__ResourceStats *rs;
	Arbiter__Histogram *hists;
};

static void
pb_field(const struct stats_field *fd, const struct stats_value *v, void *arg)
{
	struct pb_fill *pf = arg;
	char *base = (char *)pf->rs;
	const ProtobufCFieldDescriptor *d =
	    protobuf_c_message_descriptor_get_field_by_name(
		pf->rs->base.descriptor, fd->name);

	if (d == NULL || d->label != PROTOBUF_C_LABEL_OPTIONAL)
		return;
	switch (fd->kind) {
	case STATS_COUNTER:
	case STATS_SUM:
		if (d->type != PROTOBUF_C_TYPE_UINT64)
			return;
		*(uint64_t *)(void *)(base + d->offset) = v->u;
		break;
	case STATS_SECONDS:
		if (d->type != PROTOBUF_C_TYPE_DOUBLE)
			return;
		*(double *)(void *)(base + d->offset) = v->d;
		break;
	case STATS_HIST: {
		Arbiter__Histogram *h =
		    &pf->hists[(fd - stats_fields) - STATS_F_wait];

		if (d->type != PROTOBUF_C_TYPE_MESSAGE ||
		    d->descriptor != &arbiter__histogram__descriptor)
			return;
		arbiter__histogram__init(h);
		report_fill_hist(h, &v->s);
		*(Arbiter__Histogram **)(void *)(base + d->offset) = h;
		return; /* a message has no has_ flag */
	}
	}
	*(protobuf_c_boolean *)(void *)(base + d->quantifier_offset) = true;
}

void
report_pb_figures(Arbiter__ResourceStats *rs,
		  Arbiter__Histogram hists[STATS_NHISTS],
		  const struct stats_figures *f)
{
	struct pb_fill pf = {rs, hists};

	stats_emit(f, pb_field, &pf);
}

int
report_text_field(const struct stats_field *fd, const struct stats_value *v,
		  char *buf, size_t len)
{
	switch (fd->kind) {
	case STATS_COUNTER:
	case STATS_SUM:
		return snprintf(buf, len, "%s:%" PRIu64 "\n", fd->name, v->u);
	case STATS_SECONDS:
		return snprintf(buf, len, "%s:%.6f\n", fd->name, v->d);
	case STATS_HIST:
		return snprintf(buf, len,
				"%s_seconds:count=%" PRIu64 " mean=%.6f "
				"p50=%.6f p90=%.6f p99=%.6f max=%.6f\n",
				fd->name, v->s.count, v->s.mean, v->s.p50,
				v->s.p90, v->s.p99, v->s.max);
	}
	return 0;
}

struct rs_buf {
	Arbiter__ResourceStats rs;
	Arbiter__Histogram hist[STATS_NHISTS];
	struct stats_figures f;
};

static void
fill_resource_stats(struct server *srv, const struct stats_res *r,
		    struct rs_buf *b)
{
	struct lm_res *res =
	    r->len ? lockmgr_find(&srv->lm, r->name, r->len) : NULL;

	arbiter__resource_stats__init(&b->rs);
	stats_since_reset(r, &b->f);
	b->rs.resource = r->name;
	report_pb_figures(&b->rs, b->hist, &b->f);
#define SET(field, v)                                                          \
	do {                                                                   \
		b->rs.has_##field = true;                                      \
		b->rs.field = (v);                                             \
	} while (0)
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
}

/* ------------------------------------------------------------ paging */

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

void
report_stats(struct conn *c, const Arbiter__Request *req,
	     struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__StatsRequest *q = req->stats;
	Arbiter__Stats *out = &rp->u.stats;
	struct rs_buf *total, *bufs;
	Arbiter__ResourceStats **list = NULL;
	struct pick pk = {0};
	uint64_t cursor = 0;

	if (!cursor_in(&q->cursor, q->has_cursor, &cursor)) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "stats cursor of %zu bytes is not one this "
			       "daemon gave; start again without a cursor",
			       q->cursor.len);
		return;
	}
	arbiter__stats__init(out);
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_STATS;
	if (q->has_resource) {
		struct stats_res *r =
		    stats_find(&srv->stats, (const char *)q->resource.data,
			       q->resource.len);

		if (r != NULL)
			pick_add(&pk, r);
		cursor = 0;
	} else
		dispatch_scan(
		    srv->stats.by_name ? &srv->stats.by_name->hh : NULL,
		    &cursor, page_size(q->has_page_size, q->page_size),
		    pick_one, &pk);
	/* The total first, then the page's resources. */
	bufs = dispatch_keep(rp, xcalloc(pk.n + 1, sizeof *bufs));
	total = &bufs[pk.n];
	fill_resource_stats(srv, &srv->stats.total, total);
	out->total = &total->rs;
	if (pk.n > 0) {
		list = dispatch_keep(rp, xcalloc(pk.n, sizeof *list));
		for (size_t i = 0; i < pk.n; i++) {
			fill_resource_stats(srv, pk.v[i], &bufs[i]);
			list[i] = &bufs[i].rs;
		}
	}
	out->n_resources = pk.n;
	out->resources = list;
	out->has_connections = true;
	out->connections = srv->nconns;
	out->has_storage_locked = true;
	out->storage_locked = srv->storage.held;
	snprintf(rp->role, sizeof rp->role, "%s", role_name(srv));
	out->role = rp->role;
	out->has_uptime_seconds = true;
	out->uptime_seconds = (double)(now_ns() - srv->t_start) / 1e9;
	out->has_resources_omitted = true;
	out->resources_omitted = srv->stats.omitted;
	out->has_next_cursor = true;
	cursor_out(cursor, rp->cursor, &out->next_cursor);
	out->has_resources_tracked = true;
	out->resources_tracked = srv->stats.nres;
	out->cluster = cluster_report(srv, rp);
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

void
report_status(struct conn *c, const Arbiter__Request *req,
	      struct dispatch_reply *rp)
{
	struct server *srv = c->srv;
	const Arbiter__StatusRequest *q = req->status;
	Arbiter__Status *out = &rp->u.status;
	Arbiter__ResourceStatus *rs = NULL, **rlist = NULL;
	Arbiter__Holder *hs = NULL, **hlist = NULL;
	Arbiter__Waiter *ws = NULL, **wlist = NULL;
	struct pick pk = {0};
	size_t nh = 0, nw = 0, hi = 0, wi = 0;
	uint64_t now = now_ns(), cursor = 0;

	if (!cursor_in(&q->cursor, q->has_cursor, &cursor)) {
		dispatch_error(rp, ARBITER__ERROR_CODE__BAD_REQUEST,
			       "status cursor of %zu bytes is not one this "
			       "daemon gave; start again without a cursor",
			       q->cursor.len);
		return;
	}
	arbiter__status__init(out);
	rp->kind = ARBITER__SERVER_MESSAGE__KIND_STATUS;
	if (q->has_resource) {
		struct lm_res *res = lockmgr_find(
		    &srv->lm, (const char *)q->resource.data, q->resource.len);

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
	rs = dispatch_keep(rp, xcalloc(pk.n + 1, sizeof *rs));
	rlist = dispatch_keep(rp, xcalloc(pk.n + 1, sizeof *rlist));
	hs = dispatch_keep(rp, xcalloc(nh + 1, sizeof *hs));
	hlist = dispatch_keep(rp, xcalloc(nh + 1, sizeof *hlist));
	ws = dispatch_keep(rp, xcalloc(nw + 1, sizeof *ws));
	wlist = dispatch_keep(rp, xcalloc(nw + 1, sizeof *wlist));
	for (size_t i = 0; i < pk.n; i++) {
		const struct lm_res *res = pk.v[i];
		Arbiter__ResourceStatus *s = &rs[i];
		struct lm_req *r;

		arbiter__resource_status__init(s);
		rlist[i] = s;
		s->resource = res->name;
		s->holders = &hlist[hi];
		s->waiters = &wlist[wi];
		TAILQ_FOREACH(r, &res->holders, q_entry) {
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
			h->has_handed_to_pid = r->owner->handed_to_pid != 0;
			h->handed_to_pid = r->owner->handed_to_pid;
			if (r->converting) {
				h->has_converting = h->has_converting_us = true;
				h->converting = true;
				h->converting_us = (now - r->t_conv) / 1000;
			}
			hlist[hi++] = h;
			s->n_holders++;
		}
		TAILQ_FOREACH(r, &res->waiters, q_entry) {
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
			w->has_handed_to_pid = r->owner->handed_to_pid != 0;
			w->handed_to_pid = r->owner->handed_to_pid;
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
		cluster_status_resource(srv, res, s, rp);
	}
	out->n_resources = pk.n;
	out->resources = rlist;
	snprintf(rp->role, sizeof rp->role, "%s", role_name(srv));
	out->role = rp->role;
	out->storage_path = srv->cfg.storage_path;
	out->storage_holder =
	    srv->role == ROLE_STANDBY ? srv->storage_holder : (char *)"";
	out->has_connections = true;
	out->connections = srv->nconns;
	out->has_pid = true;
	out->pid = (uint32_t)getpid();
	out->server_version = rp->version;
	out->has_next_cursor = true;
	cursor_out(cursor, rp->cursor, &out->next_cursor);
	out->has_resources_total = out->has_holders_total = true;
	out->has_waiters_total = true;
	out->resources_total = srv->lm.nres;
	out->holders_total = srv->lm.nheld;
	out->waiters_total = srv->lm.nwaiting;
	out->cluster = cluster_report(srv, rp);
	free(pk.v);
}
