/*
 * metrics: the optional HTTP listener ([metrics] listen) serving Prometheus
 * text exposition on /metrics and readiness on /healthz, with libevent's
 * evhttp on the daemon's own loop.
 *
 * Resource names are chosen by clients, so as labels they are capped: the
 * first metrics.max_resource_labels resources (in the order first seen) get
 * their own label value, the rest are folded into resource="_other".
 * Counters come from the stats' running totals, which never go backwards
 * while the daemon runs (a stats reset moves only the Stats reply's baseline).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "log.h"
#include "metrics.h"
#include "role.h"
#include "server.h"

/* Histogram bucket bounds exposed: every second power of two of the stats'
 * 1.024 us unit, which are exact bucket edges of the log-linear histogram. */
#define EXPO_STEP 2

static void
label(struct evbuffer *b, const char *name)
{
	for (const char *p = name; *p; p++) {
		if (*p == '\\' || *p == '"')
			evbuffer_add_printf(b, "\\%c", *p);
		else if (*p == '\n')
			evbuffer_add(b, "\\n", 2);
		else
			evbuffer_add(b, p, 1);
	}
}

static void
figures_add(struct stats_figures *to, const struct stats_figures *from)
{
	for (unsigned k = 0; k < STATS_NCOUNTERS; k++)
		to->c[k] += from->c[k];
	for (int h = 0; h < 2; h++) {
		struct hist *t = h ? &to->hold : &to->wait;
		const struct hist *f = h ? &from->hold : &from->wait;

		t->count += f->count;
		t->sum_ns += f->sum_ns;
		if (f->max_ns > t->max_ns)
			t->max_ns = f->max_ns;
		for (unsigned i = 0; i < HIST_BUCKETS; i++)
			t->b[i] += f->b[i];
	}
}

struct series {
	const char *name; /* label value */
	const struct stats_figures *f;
	unsigned holders, waiters;
};

static void
emit_hist(struct evbuffer *b, const struct stats_field *fd,
	  const struct series *s, size_t n)
{
	const char *metric = fd->name;

	evbuffer_add_printf(b, "# HELP arbiter_%s_seconds %s.\n# TYPE "
			       "arbiter_%s_seconds histogram\n",
			    metric, fd->help, metric);
	for (size_t i = 0; i < n; i++) {
		struct stats_value v;
		const struct hist *h;
		uint64_t cum = 0;
		unsigned next = 0;

		stats_value(s[i].f, (unsigned)(fd - stats_fields), &v);
		h = v.h;
		for (unsigned k = 0; k <= HIST_OCTAVES; k += EXPO_STEP) {
			unsigned edge = 1 + k * HIST_SUB; /* first bucket >= 2^k */
			double le = (double)(1u << 10) * (double)(1ull << k) / 1e9;

			while (next < edge && next < HIST_BUCKETS)
				cum += h->b[next++];
			evbuffer_add_printf(b, "arbiter_%s_seconds_bucket{resource=\"",
					    metric);
			label(b, s[i].name);
			evbuffer_add_printf(b, "\",le=\"%.9g\"} %" PRIu64 "\n", le,
					    cum);
		}
		evbuffer_add_printf(b, "arbiter_%s_seconds_bucket{resource=\"",
				    metric);
		label(b, s[i].name);
		evbuffer_add_printf(b, "\",le=\"+Inf\"} %" PRIu64 "\n", h->count);
		evbuffer_add_printf(b, "arbiter_%s_seconds_sum{resource=\"", metric);
		label(b, s[i].name);
		evbuffer_add_printf(b, "\"} %.9f\n", (double)h->sum_ns / 1e9);
		evbuffer_add_printf(b, "arbiter_%s_seconds_count{resource=\"",
				    metric);
		label(b, s[i].name);
		evbuffer_add_printf(b, "\"} %" PRIu64 "\n", h->count);
	}
}

void
metrics_render(struct server *srv, struct evbuffer *b)
{
	struct stats *st = &srv->stats;
	struct stats_res *r, *tmp;
	struct stats_figures other;
	struct series *s;
	size_t n = 0, cap = srv->cfg.max_resource_labels + 1;
	unsigned other_h = 0, other_w = 0;
	bool have_other = false;

	memset(&other, 0, sizeof other);
	s = calloc(cap, sizeof *s);
	if (s == NULL)
		return;
	HASH_ITER(hh, st->by_name, r, tmp) {
		struct lm_res *res = lockmgr_find(&srv->lm, r->name, r->len);

		if (n + 1 < cap) {
			s[n].name = r->name;
			s[n].f = &r->cur;
			s[n].holders = res ? res->nholders : 0;
			s[n].waiters = res ? res->nwaiters : 0;
			n++;
		} else {
			figures_add(&other, &r->cur);
			other_h += res ? res->nholders : 0;
			other_w += res ? res->nwaiters : 0;
			have_other = true;
		}
	}
	if (st->omitted > 0 || have_other) {
		figures_add(&other, &st->other.cur);
		s[n].name = "_other";
		s[n].f = &other;
		s[n].holders = other_h;
		s[n].waiters = other_w;
		n++;
	}

	evbuffer_add_printf(b,
			    "# HELP arbiter_build_info Version of the running "
			    "arbiterd.\n# TYPE arbiter_build_info gauge\n"
			    "arbiter_build_info{version=\"%s\",protocol=\"%d\"} 1\n",
			    ARBITER_VERSION, ARB_PROTOCOL_VERSION);
	evbuffer_add_printf(b,
			    "# HELP arbiter_up 1 while the daemon serves.\n"
			    "# TYPE arbiter_up gauge\narbiter_up 1\n");
	evbuffer_add_printf(b,
			    "# HELP arbiter_storage_lock_held 1 while this "
			    "arbiter holds the storage lock.\n# TYPE "
			    "arbiter_storage_lock_held gauge\n"
			    "arbiter_storage_lock_held %d\n",
			    srv->storage.held ? 1 : 0);
	evbuffer_add_printf(b,
			    "# HELP arbiter_role 1 for the current role.\n"
			    "# TYPE arbiter_role gauge\n"
			    "arbiter_role{role=\"active\"} %d\n"
			    "arbiter_role{role=\"standby\"} %d\n"
			    "arbiter_role{role=\"idle\"} %d\n",
			    srv->role == ROLE_ACTIVE, srv->role == ROLE_STANDBY,
			    srv->role == ROLE_IDLE);
	evbuffer_add_printf(b,
			    "# HELP arbiter_connections Client connections "
			    "open now.\n# TYPE arbiter_connections gauge\n"
			    "arbiter_connections %u\n",
			    srv->nconns);
	evbuffer_add_printf(b,
			    "# HELP arbiter_uptime_seconds Seconds since the "
			    "daemon started.\n# TYPE arbiter_uptime_seconds "
			    "gauge\narbiter_uptime_seconds %.3f\n",
			    (double)(now_ns() - srv->t_start) / 1e9);
	evbuffer_add_printf(b,
			    "# HELP arbiter_fencing_token_last The last fencing "
			    "token handed out.\n# TYPE arbiter_fencing_token_last "
			    "gauge\narbiter_fencing_token_last %" PRIu64 "\n",
			    srv->lm.last_token);
	evbuffer_add_printf(b,
			    "# HELP arbiter_state_writes_total Durable writes of "
			    "the state file.\n# TYPE arbiter_state_writes_total "
			    "counter\narbiter_state_writes_total %u\n",
			    srv->state_writes);
	evbuffer_add_printf(b,
			    "# HELP arbiter_resources_unlabeled_total Distinct "
			    "resources past stats.max_resources.\n# TYPE "
			    "arbiter_resources_unlabeled_total counter\n"
			    "arbiter_resources_unlabeled_total %" PRIu64 "\n",
			    st->omitted);

	for (int g = 0; g < 2; g++) {
		const char *m = g ? "waiters" : "holders";

		evbuffer_add_printf(b,
				    "# HELP arbiter_%s Leases %s now, per "
				    "resource.\n# TYPE arbiter_%s gauge\n",
				    m, g ? "waited for" : "held", m);
		for (size_t i = 0; i < n; i++) {
			evbuffer_add_printf(b, "arbiter_%s{resource=\"", m);
			label(b, s[i].name);
			evbuffer_add_printf(b, "\"} %u\n",
					    g ? s[i].waiters : s[i].holders);
		}
	}
	/* Every figure Prometheus renders, from the stats' one list: counters
	 * as arbiter_<name>_total, histograms as arbiter_<name>_seconds. */
	for (unsigned k = 0; k < STATS_NFIELDS; k++) {
		const struct stats_field *fd = &stats_fields[k];
		struct stats_value v;

		if (!fd->prom)
			continue;
		if (fd->kind == STATS_HIST) {
			emit_hist(b, fd, s, n);
			continue;
		}
		evbuffer_add_printf(b, "# HELP arbiter_%s_total %s.\n# TYPE "
				       "arbiter_%s_total counter\n",
				    fd->name, fd->help, fd->name);
		if (k == STATS_F_failed_forbidden) {
			/* Refused before any resource is named. */
			stats_value(&st->total.cur, k, &v);
			evbuffer_add_printf(b, "arbiter_%s_total %" PRIu64 "\n",
					    fd->name, v.u);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			stats_value(s[i].f, k, &v);
			evbuffer_add_printf(b, "arbiter_%s_total{resource=\"",
					    fd->name);
			label(b, s[i].name);
			evbuffer_add_printf(b, "\"} %" PRIu64 "\n", v.u);
		}
	}
	free(s);
}

static void
metrics_cb(struct evhttp_request *req, void *arg)
{
	struct server *srv = arg;
	struct evbuffer *b = evbuffer_new();

	if (b == NULL) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	metrics_render(srv, b);
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "Content-Type", "text/plain; version=0.0.4");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void
healthz_cb(struct evhttp_request *req, void *arg)
{
	struct server *srv = arg;
	struct evbuffer *b = evbuffer_new();
	bool ok = srv->role == ROLE_ACTIVE && srv->storage.held &&
		  !srv->stopping;

	if (b == NULL) {
		evhttp_send_error(req, 500, "out of memory");
		return;
	}
	if (ok)
		evbuffer_add_printf(b, "ok: active, holding the storage lock\n");
	else if (srv->stopping)
		evbuffer_add_printf(b, "not ready: shutting down\n");
	else if (srv->role == ROLE_STANDBY)
		evbuffer_add_printf(b, "not ready: standby; the storage is "
				       "held by %s\n",
				    srv->storage_holder);
	else
		evbuffer_add_printf(b, "not ready: %s, the storage lock is not "
				       "held\n",
				    role_name(srv));
	evhttp_add_header(evhttp_request_get_output_headers(req),
			  "Content-Type", "text/plain");
	evhttp_send_reply(req, ok ? 200 : 503, ok ? "OK" : "Not Ready", b);
	evbuffer_free(b);
}

static void
other_cb(struct evhttp_request *req, void *arg)
{
	(void)arg;
	evhttp_send_error(req, 404, "try /metrics or /healthz");
}

int
metrics_start(struct server *srv, char *err, size_t errlen)
{
	char host[256];
	const char *spec = srv->cfg.metrics_listen, *colon;
	char *end;
	long port;

	if (spec == NULL || *spec == '\0')
		return 0;
	colon = strrchr(spec, ':');
	if (colon == NULL || colon == spec ||
	    (size_t)(colon - spec) >= sizeof host) {
		snprintf(err, errlen,
			 "metrics.listen: '%s' is not HOST:PORT, e.g. "
			 "127.0.0.1:9477",
			 spec);
		return -1;
	}
	port = strtol(colon + 1, &end, 10);
	if (*end != '\0' || port <= 0 || port > 65535) {
		snprintf(err, errlen, "metrics.listen: bad port in '%s'", spec);
		return -1;
	}
	snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	srv->http = evhttp_new(srv->base);
	if (srv->http == NULL) {
		snprintf(err, errlen, "metrics: cannot create the HTTP server");
		return -1;
	}
	if (evhttp_bind_socket(srv->http, host, (ev_uint16_t)port) < 0) {
		snprintf(err, errlen,
			 "metrics.listen: cannot listen on %s (in use, or not "
			 "an address of this host)",
			 spec);
		evhttp_free(srv->http);
		srv->http = NULL;
		return -1;
	}
	evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_timeout(srv->http, 10);
	evhttp_set_cb(srv->http, "/metrics", metrics_cb, srv);
	evhttp_set_cb(srv->http, "/healthz", healthz_cb, srv);
	evhttp_set_gencb(srv->http, other_cb, srv);
	log_info("metrics listening", "listen=%s", spec);
	return 0;
}

void
metrics_stop(struct server *srv)
{
	if (srv->http != NULL) {
		evhttp_free(srv->http);
		srv->http = NULL;
	}
}
