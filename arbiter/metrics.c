/*
 * metrics: the optional HTTP listener ([metrics] listen) serving Prometheus
 * text exposition on /metrics and readiness on /healthz, on the daemon's own
 * loop.
 *
 * The port may face a whole pod network, so everything a peer can make us
 * hold is bounded: at most metrics.max_connections connections (past that,
 * or when the descriptors kept for the daemon's own files would be touched,
 * a 503 and close), a request head of metrics.max_header_bytes, a body of
 * metrics.max_body_bytes (read and dropped), and metrics.timeout_ms to send
 * the request and as long again to read the reply. One request per
 * connection: every reply says "Connection: close". This is a small HTTP/1.x
 * responder rather than evhttp because libevent 2.1's evhttp can neither cap
 * its connections nor take one accepted elsewhere, and reads a request head
 * with no deadline of its own. The request head is parsed by http.c, a pure
 * function over the bytes read so far, unit-tested and fuzzed on its own.
 *
 * Resource names are chosen by clients, so as labels they are capped: the
 * first metrics.max_resource_labels resources (in the order first seen) get
 * their own label value, the rest are folded into resource="_other".
 * Counters come from the stats' running totals, which never go backwards
 * while the daemon runs (a stats reset moves only the Stats reply's baseline).
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "http.h"
#include "listener.h"
#include "log.h"
#include "cluster.h"
#include "metrics.h"
#include "role.h"
#include "server.h"
#include "xalloc.h"

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

	evbuffer_add_printf(b,
			    "# HELP arbiter_%s_seconds %s.\n# TYPE "
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
			unsigned edge =
			    1 + k * HIST_SUB; /* first bucket >= 2^k */
			double le =
			    (double)(1u << 10) * (double)(1ull << k) / 1e9;

			while (next < edge && next < HIST_BUCKETS)
				cum += h->b[next++];
			evbuffer_add_printf(
			    b, "arbiter_%s_seconds_bucket{resource=\"", metric);
			label(b, s[i].name);
			evbuffer_add_printf(b, "\",le=\"%.9g\"} %" PRIu64 "\n",
					    le, cum);
		}
		evbuffer_add_printf(b, "arbiter_%s_seconds_bucket{resource=\"",
				    metric);
		label(b, s[i].name);
		evbuffer_add_printf(b, "\",le=\"+Inf\"} %" PRIu64 "\n",
				    h->count);
		evbuffer_add_printf(b, "arbiter_%s_seconds_sum{resource=\"",
				    metric);
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

	evbuffer_add_printf(
	    b,
	    "# HELP arbiter_build_info Version of the running "
	    "arbiterd.\n# TYPE arbiter_build_info gauge\n"
	    "arbiter_build_info{version=\"%s\",protocol=\"%d\"} 1\n",
	    ARBITER_VERSION, ARB_PROTOCOL_VERSION);
	evbuffer_add_printf(b, "# HELP arbiter_up 1 while the daemon serves.\n"
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
	evbuffer_add_printf(
	    b,
	    "# HELP arbiter_fencing_token_last The last fencing "
	    "token handed out.\n# TYPE arbiter_fencing_token_last "
	    "gauge\narbiter_fencing_token_last %" PRIu64 "\n",
	    srv->lm.last_token);
	evbuffer_add_printf(
	    b,
	    "# HELP arbiter_state_writes_total Durable writes of "
	    "the state file.\n# TYPE arbiter_state_writes_total "
	    "counter\narbiter_state_writes_total %u\n",
	    srv->state_writes);
	cluster_metrics(srv, b);
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
		evbuffer_add_printf(b,
				    "# HELP arbiter_%s_total %s.\n# TYPE "
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

/* ------------------------------------------------------------ HTTP */

/* After the reply, input is read and dropped for this long and this much at
 * most, so that closing with unread bytes does not reset the reply away; a
 * peer that goes on sending past that is cut off. */
#define LINGER_MS    1000
#define LINGER_BYTES 65536

enum mc_state {
	MC_HEAD,   /* reading the request line and headers */
	MC_BODY,   /* dropping a declared body */
	MC_REPLY,  /* writing the reply */
	MC_LINGER, /* reply sent, write side shut; waiting for the peer's EOF */
	MC_DEAD,   /* closed; freed by ev_reap */
};

struct mconn {
	struct metrics *m;
	int fd;
	enum mc_state state;
	struct http_request req; /* the request head, as parsed so far */
	uint64_t body_left;	 /* MC_BODY: bytes still to drop */
	size_t lingered;	 /* MC_LINGER: bytes dropped */
	struct event ev_read;
	struct event ev_write;
	struct event ev_deadline;
	struct evbuffer *in;
	struct evbuffer *out;
	TAILQ_ENTRY(mconn) entry;
};

TAILQ_HEAD(mconn_list, mconn);

struct metrics {
	struct server *srv;
	int fd; /* the listening socket */
	struct listener l;
	struct mconn_list conns;
	struct mconn_list graveyard;
	struct event *ev_reap;
	unsigned n;
	bool full_logged; /* "refused" said, until one is served again */
};

static void
mc_close(struct mconn *c, const char *why)
{
	struct metrics *m = c->m;

	if (c->state == MC_DEAD)
		return;
	log_debug("metrics connection closed", "reason=\"%s\"", why);
	c->state = MC_DEAD;
	event_del(&c->ev_read);
	event_del(&c->ev_write);
	event_del(&c->ev_deadline);
	close(c->fd);
	c->fd = -1;
	TAILQ_REMOVE(&m->conns, c, entry);
	m->n--;
	/* Freed on a later loop turn: we may be in one of its callbacks. */
	TAILQ_INSERT_TAIL(&m->graveyard, c, entry);
	event_active(m->ev_reap, EV_TIMEOUT, 0);
}

static void
mc_free(struct mconn *c)
{
	evbuffer_free(c->in);
	evbuffer_free(c->out);
	free(c);
}

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct metrics *m = arg;
	struct mconn *c;

	(void)fd;
	(void)what;
	while ((c = TAILQ_FIRST(&m->graveyard)) != NULL) {
		TAILQ_REMOVE(&m->graveyard, c, entry);
		mc_free(c);
	}
	server_fd_freed(m->srv);
}

static void
mc_deadline(struct mconn *c, uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000),
			     (suseconds_t)(ms % 1000) * 1000};

	evtimer_add(&c->ev_deadline, &tv);
}

/* Write what the socket takes; once all is out, shut the write side and
 * linger. Returns false when the connection is closed. */
static bool
mc_write(struct mconn *c)
{
	while (evbuffer_get_length(c->out) > 0) {
		int n = evbuffer_write(c->out, c->fd);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			event_add(&c->ev_write, NULL);
			return true;
		}
		if (n <= 0) {
			mc_close(c, "write failed");
			return false;
		}
	}
	shutdown(c->fd, SHUT_WR);
	c->state = MC_LINGER;
	event_add(&c->ev_read, NULL);
	mc_deadline(c, c->m->srv->cfg.metrics_timeout_ms < LINGER_MS
			   ? c->m->srv->cfg.metrics_timeout_ms
			   : LINGER_MS);
	return true;
}

/* Queue the reply (body NULL: none; head_only: headers alone) and start
 * writing it; the request side is not read any more. */
static void
mc_reply(struct mconn *c, int status, const char *reason, const char *ctype,
	 struct evbuffer *body, bool head_only, const char *extra)
{
	size_t len = body != NULL ? evbuffer_get_length(body) : 0;

	c->state = MC_REPLY;
	event_del(&c->ev_read);
	evbuffer_add_printf(
	    c->out,
	    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\n%sConnection: close\r\n\r\n",
	    status, reason, ctype, len, extra ? extra : "");
	if (body != NULL && !head_only)
		evbuffer_add_buffer(c->out, body);
	mc_deadline(c, c->m->srv->cfg.metrics_timeout_ms);
	mc_write(c);
}

static void
mc_reply_text(struct mconn *c, int status, const char *reason, const char *text,
	      bool head_only, const char *extra)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL) {
		mc_close(c, "out of memory");
		return;
	}
	evbuffer_add(b, text, strlen(text));
	mc_reply(c, status, reason, "text/plain", b, head_only, extra);
	evbuffer_free(b);
}

static void
serve_metrics(struct mconn *c, bool head_only)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL) {
		mc_reply_text(c, 500, "Internal Server Error",
			      "out of memory\n", head_only, NULL);
		return;
	}
	metrics_render(c->m->srv, b);
	mc_reply(c, 200, "OK", "text/plain; version=0.0.4", b, head_only, NULL);
	evbuffer_free(b);
}

static void
serve_healthz(struct mconn *c, bool head_only)
{
	struct server *srv = c->m->srv;
	struct evbuffer *b = evbuffer_new();
	bool ok =
	    srv->role == ROLE_ACTIVE && srv->storage.held && !srv->stopping;

	if (b == NULL) {
		mc_reply_text(c, 500, "Internal Server Error",
			      "out of memory\n", head_only, NULL);
		return;
	}
	if (ok)
		evbuffer_add_printf(b,
				    "ok: active, holding the storage lock\n");
	else if (srv->stopping)
		evbuffer_add_printf(b, "not ready: shutting down\n");
	else if (srv->role == ROLE_STANDBY)
		evbuffer_add_printf(b,
				    "not ready: standby; the storage is "
				    "held by %s\n",
				    srv->storage_holder);
	else
		evbuffer_add_printf(b,
				    "not ready: %s, the storage lock is not "
				    "held\n",
				    role_name(srv));
	mc_reply(c, ok ? 200 : 503, ok ? "OK" : "Service Unavailable",
		 "text/plain", b, head_only, NULL);
	evbuffer_free(b);
}

/* The whole request is in (its body dropped): answer it. */
static void
mc_route(struct mconn *c)
{
	bool head_only = c->req.head_only;

	if (c->req.route == HTTP_ROUTE_METRICS)
		serve_metrics(c, head_only);
	else if (c->req.route == HTTP_ROUTE_HEALTHZ)
		serve_healthz(c, head_only);
	else
		mc_reply_text(c, 404, "Not Found", "try /metrics or /healthz\n",
			      head_only, NULL);
}

/* Parse what has arrived: answer a refused request, or drop the body of a
 * good one (what is left of it) and answer it. */
static void
mc_input(struct mconn *c)
{
	struct server *srv = c->m->srv;
	size_t len = evbuffer_get_length(c->in);
	const char *p;

	if (len == 0)
		return;
	p = (const char *)evbuffer_pullup(c->in, -1);
	if (p == NULL) {
		mc_close(c, "out of memory");
		return;
	}
	switch (http_parse(&c->req, p, len, srv->cfg.metrics_max_header_bytes,
			   srv->cfg.metrics_max_body_bytes)) {
	case HTTP_MORE:
		return;
	case HTTP_ERROR:
		log_debug("metrics request refused",
			  "status=%d reason=\"%.*s\"", c->req.status,
			  (int)strcspn(c->req.text, "\n"), c->req.text);
		mc_reply_text(c, c->req.status, c->req.reason, c->req.text,
			      c->req.head_only, c->req.extra);
		return;
	case HTTP_REQUEST:
		break;
	}
	len -= c->req.head_len;
	evbuffer_drain(c->in, evbuffer_get_length(c->in));
	if (c->req.body_len > len) {
		c->body_left = c->req.body_len - len;
		c->state = MC_BODY;
		return;
	}
	/* Bytes past the body: one request per connection, so dropped. */
	mc_route(c);
}

static void
mc_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mconn *c = arg;
	uint8_t *rbuf = c->m->srv->rbuf;

	(void)what;
	if (c->state == MC_BODY || c->state == MC_LINGER) {
		/* Read and drop, one chunk a wake-up. */
		ssize_t n = read(fd, rbuf, CONN_READ_CHUNK);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			mc_close(c, c->state == MC_LINGER ? "done"
							  : "closed mid-body");
			return;
		}
		if (c->state == MC_LINGER) {
			c->lingered += (size_t)n;
			if (c->lingered > LINGER_BYTES)
				mc_close(c, "went on sending after the reply");
			return;
		}
		if ((uint64_t)n < c->body_left) {
			c->body_left -= (uint64_t)n;
			return;
		}
		mc_route(c);
		return;
	}
	{
		uint64_t max = c->m->srv->cfg.metrics_max_header_bytes;
		size_t have = evbuffer_get_length(c->in);
		size_t want = have <= max ? (size_t)(max + 1 - have) : 1;
		int n;

		if (want > 16384)
			want = 16384;
		n = evbuffer_read(c->in, fd, (int)want);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			mc_close(c, "closed before a whole request");
			return;
		}
	}
	mc_input(c);
}

static void
mc_write_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	mc_write(arg);
}

static void
mc_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mconn *c = arg;

	(void)fd;
	(void)what;
	if (c->state == MC_HEAD || c->state == MC_BODY) {
		static const char late[] =
		    "HTTP/1.1 408 Request Timeout\r\nContent-Type: "
		    "text/plain\r\nContent-Length: 0\r\nConnection: "
		    "close\r\n\r\n";

		(void)!send(c->fd, late, sizeof late - 1,
			    MSG_NOSIGNAL | MSG_DONTWAIT);
		mc_close(c, "no whole request within metrics.timeout_ms");
	} else if (c->state == MC_REPLY) {
		mc_close(c, "reply not read within metrics.timeout_ms");
	} else {
		mc_close(c, "done");
	}
}

static void
metrics_accepted(struct listener *l, int fd)
{
	struct metrics *m = l->arg;
	struct server *srv = m->srv;
	struct mconn *c;

	if (m->n >= srv->cfg.metrics_max_connections ||
	    !server_fd_room(srv, fd, true)) {
		static const char busy[] =
		    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
		    "text/plain\r\nContent-Length: 45\r\nRetry-After: 1\r\n"
		    "Connection: close\r\n\r\n"
		    "metrics listener busy; try again in a second\n";

		if (!m->full_logged)
			log_warn("metrics connection refused",
				 "conns=%u limit=%" PRIu64 " hint=\"%s\"", m->n,
				 srv->cfg.metrics_max_connections,
				 m->n >= srv->cfg.metrics_max_connections
				     ? "too many scrapers, or idle "
				       "connections; raise "
				       "metrics.max_connections if they "
				       "are legitimate"
				     : "out of file descriptors; raise "
				       "the open-file limit");
		m->full_logged = true;
		(void)!send(fd, busy, sizeof busy - 1,
			    MSG_NOSIGNAL | MSG_DONTWAIT);
		server_close_answered(fd);
		return;
	}
	m->full_logged = false;
	c = xcalloc(1, sizeof *c);
	c->m = m;
	c->fd = fd;
	c->state = MC_HEAD;
	http_request_init(&c->req);
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	if (c->in == NULL || c->out == NULL) {
		fprintf(stderr, "arbiter: out of memory\n");
		abort();
	}
	event_assign(&c->ev_read, srv->base, fd, EV_READ | EV_PERSIST,
		     mc_read_cb, c);
	event_assign(&c->ev_write, srv->base, fd, EV_WRITE, mc_write_cb, c);
	evtimer_assign(&c->ev_deadline, srv->base, mc_deadline_cb, c);
	TAILQ_INSERT_TAIL(&m->conns, c, entry);
	m->n++;
	event_add(&c->ev_read, NULL);
	mc_deadline(c, srv->cfg.metrics_timeout_ms);
}

/* ------------------------------------------------------------ listener */

static int
metrics_bind(const char *host, const char *port, const char *spec, char *err,
	     size_t errlen)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_PASSIVE};
	struct addrinfo *res, *ai;
	int rc, fd = -1, e = 0;

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		snprintf(err, errlen, "metrics.listen: cannot resolve '%s': %s",
			 spec, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		int one = 1;

		fd = socket(ai->ai_family,
			    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			e = errno;
			continue;
		}
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				 sizeof one);
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 128) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		snprintf(err, errlen,
			 "metrics.listen: cannot listen on %s: %s (in use, or "
			 "not an address of this host)",
			 spec, strerror(e));
	return fd;
}

int
metrics_start(struct server *srv, char *err, size_t errlen)
{
	char host[256];
	const char *spec = srv->cfg.metrics_listen, *colon;
	char *end;
	long port;
	struct metrics *m;
	int fd;

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
	fd = metrics_bind(host, colon + 1, spec, err, errlen);
	if (fd < 0)
		return -1;
	m = xcalloc(1, sizeof *m);
	m->srv = srv;
	m->fd = fd;
	TAILQ_INIT(&m->conns);
	TAILQ_INIT(&m->graveyard);
	m->ev_reap = event_new(srv->base, -1, 0, reap_cb, m);
	if (m->ev_reap == NULL || listener_start(&m->l, srv, fd, "metrics",
						 metrics_accepted, m) < 0) {
		snprintf(err, errlen, "metrics: cannot watch %s", spec);
		if (m->ev_reap != NULL)
			event_free(m->ev_reap);
		close(fd);
		free(m);
		return -1;
	}
	srv->metrics = m;
	log_info("metrics listening", "listen=%s max_connections=%" PRIu64,
		 spec, srv->cfg.metrics_max_connections);
	return 0;
}

void
metrics_stop(struct server *srv)
{
	struct metrics *m = srv->metrics;
	struct mconn *c;

	if (m == NULL)
		return;
	while ((c = TAILQ_FIRST(&m->conns)) != NULL)
		mc_close(c, "metrics listener stopped");
	while ((c = TAILQ_FIRST(&m->graveyard)) != NULL) {
		TAILQ_REMOVE(&m->graveyard, c, entry);
		mc_free(c);
	}
	listener_stop(&m->l);
	event_free(m->ev_reap);
	close(m->fd);
	free(m);
	srv->metrics = NULL;
}

unsigned
metrics_nconns(const struct server *srv)
{
	return srv->metrics != NULL ? srv->metrics->n : 0;
}

struct listener *
metrics_listener(struct server *srv)
{
	return srv->metrics != NULL ? &srv->metrics->l : NULL;
}
