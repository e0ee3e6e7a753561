/*
 * Unit tests for the etcd client (arbiter/etcd.c) against fake members.
 *
 * A fake member is an evhttp server on the test's own event base that
 * answers canned gateway replies; a hung member is a listening socket
 * nobody accepts from (connect succeeds, no answer ever comes: a SIGSTOPped
 * etcd). The real etcd is exercised by tests/cluster; here every reply,
 * split and failure is chosen exactly.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "etcd.h"

TestSuite(etcd, .timeout = 20);

/* ------------------------------------------------------------ fakes */

enum mode { M_OK, M_BIG, M_BADJSON, M_UNAVAILABLE, M_NOTFOUND };

struct fake {
	struct evhttp *http;
	int port;
	enum mode mode;
	int hits;
	char url[64];
	struct evhttp_request *watch;
};

static struct event_base *base;
static struct etcd_client *cli;

static void
reply(struct evhttp_request *req, int code, const char *body)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add(b, body, strlen(body));
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
	evbuffer_free(b);
}

/* Sends the rest of a watch stream on later loop turns, so the client sees
 * a message split across reads. */
static const char *const watch_parts[] = {
    "{\"result\":{\"header\":{\"revision\":\"8\"},\"crea",
    "ted\":true}}\n{\"result\":{\"header\":{\"revision\":\"9\"},"
    "\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":\"YS9r\","
    "\"mod_revision\":\"9\"},\"prev_kv\":{\"key\":\"YS9r\","
    "\"value\":\"aG9zdA==\",\"create_revision\":\"4\","
    "\"mod_revision\":\"4\",\"lease\":\"66\"}},",
    "{\"kv\":{\"key\":\"YS9x\",\"value\":\"\",\"create_revision\":\"9\","
    "\"mod_revision\":\"9\",\"version\":\"1\"}}]}}\n",
    NULL,
};
static int watch_next;

static void
watch_more(evutil_socket_t fd, short what, void *arg)
{
	struct fake *f = arg;
	struct evbuffer *b;
	struct timeval tv = {0, 5000};

	(void)fd;
	(void)what;
	if (watch_parts[watch_next] == NULL) {
		evhttp_send_reply_end(f->watch);
		f->watch = NULL;
		return;
	}
	b = evbuffer_new();
	evbuffer_add(b, watch_parts[watch_next],
		     strlen(watch_parts[watch_next]));
	watch_next++;
	evhttp_send_reply_chunk(f->watch, b);
	evbuffer_free(b);
	event_base_once(base, -1, EV_TIMEOUT, watch_more, f, &tv);
}

static void
fake_cb(struct evhttp_request *req, void *arg)
{
	struct fake *f = arg;
	const char *uri = evhttp_request_get_uri(req);

	f->hits++;
	if (strcmp(uri, "/v3/watch") == 0) {
		f->watch = req;
		watch_next = 0;
		evhttp_send_reply_start(req, 200, "OK");
		watch_more(-1, 0, f);
		return;
	}
	switch (f->mode) {
	case M_BADJSON:
		reply(req, 200, "this is not json");
		return;
	case M_UNAVAILABLE:
		reply(req, 503,
		      "{\"error\":\"etcdserver: no leader\",\"message\":"
		      "\"etcdserver: no leader\",\"code\":14}");
		return;
	case M_NOTFOUND:
		reply(req, 404,
		      "{\"error\":\"etcdserver: requested lease not found\","
		      "\"message\":\"etcdserver: requested lease not found\","
		      "\"code\":5}");
		return;
	case M_BIG: {
		size_t n = 200 * 1024;
		char *big = malloc(n + 64);

		cr_assert_not_null(big);
		size_t head;

		strcpy(big, "{\"header\":{\"revision\":\"3\"},\"pad\":\"");
		head = strlen(big);
		memset(big + head, 'x', n);
		strcpy(big + head + n, "\"}");
		reply(req, 200, big);
		free(big);
		return;
	}
	case M_OK:
		break;
	}
	if (strcmp(uri, "/v3/lease/grant") == 0)
		reply(req, 200,
		      "{\"header\":{\"revision\":\"7\"},\"ID\":\"42\","
		      "\"TTL\":\"5\"}");
	else if (strcmp(uri, "/v3/lease/keepalive") == 0)
		reply(req, 200,
		      "{\"result\":{\"header\":{\"revision\":\"7\"},"
		      "\"ID\":\"42\",\"TTL\":\"5\"}}\n");
	else if (strcmp(uri, "/v3/kv/range") == 0)
		reply(req, 200,
		      "{\"header\":{\"revision\":\"12\"},\"kvs\":["
		      "{\"key\":\"YS8x\",\"value\":\"dg==\","
		      "\"create_revision\":\"3\",\"lease\":\"42\"},"
		      "{\"key\":\"YS8y\",\"create_revision\":\"5\"}],"
		      "\"count\":\"2\"}");
	else
		reply(req, 404, "{\"message\":\"unknown\",\"code\":12}");
}

static struct fake *
fake_new(enum mode mode)
{
	struct fake *f = calloc(1, sizeof(*f));
	struct evhttp_bound_socket *s;
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	cr_assert_not_null(f);
	f->mode = mode;
	f->http = evhttp_new(base);
	s = evhttp_bind_socket_with_handle(f->http, "127.0.0.1", 0);
	cr_assert_not_null(s);
	getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&sin,
		    &len);
	f->port = ntohs(sin.sin_port);
	snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", f->port);
	evhttp_set_gencb(f->http, fake_cb, f);
	return f;
}

static void
fake_free(struct fake *f)
{
	evhttp_free(f->http);
	free(f);
}

/* A member that accepts connections (the kernel's backlog) and never
 * answers, like an etcd stopped with SIGSTOP. */
static int
hung_member(char *url, size_t len)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	cr_assert(listen(fd, 16) == 0);
	getsockname(fd, (struct sockaddr *)&sin, &sl);
	snprintf(url, len, "http://127.0.0.1:%d", ntohs(sin.sin_port));
	return fd;
}

/* A port nothing listens on. */
static void
closed_member(char *url, size_t len)
{
	char tmp[64];
	int fd = hung_member(tmp, sizeof(tmp));

	close(fd);
	snprintf(url, len, "%s", tmp);
}

/* A member that answers the first request on each connection, keeps the
 * connection open, and closes it when a second request arrives: the race
 * of an idle connection closed by the member (or a proxy) just as the
 * client reuses it. */
static int raw_accepted;
static struct bufferevent *raw_open[8]; /* freed by the test at its end */

static void
raw_read(struct bufferevent *bev, void *arg)
{
	static const char body[] =
	    "{\"header\":{\"revision\":\"7\"},\"ID\":\"42\",\"TTL\":\"5\"}";
	struct evbuffer *in = bufferevent_get_input(bev);
	struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	int *served = arg;
	const char *head, *cl;
	size_t need;

	if (end.pos < 0)
		return;
	head = (const char *)evbuffer_pullup(in, end.pos + 4);
	cl = strcasestr(head, "Content-Length:");
	need = (size_t)end.pos + 4 + (cl ? strtoul(cl + 15, NULL, 10) : 0);
	if (evbuffer_get_length(in) < need)
		return;
	if (*served == 1) {
		for (int i = 0; i < 8; i++)
			if (raw_open[i] == bev)
				raw_open[i] = NULL;
		bufferevent_free(bev);
		free(served);
		return;
	}
	evbuffer_drain(in, need);
	(*served)++;
	evbuffer_add_printf(bufferevent_get_output(bev),
			    "HTTP/1.1 200 OK\r\nContent-Type: application/json"
			    "\r\nContent-Length: %zu\r\n\r\n%s",
			    strlen(body), body);
}

static void
raw_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	for (int i = 0; i < 8; i++)
		if (raw_open[i] == bev)
			raw_open[i] = NULL;
	bufferevent_free(bev);
	free(arg);
}

static void
raw_close_all(void)
{
	for (int i = 0; i < 8; i++) {
		void *served = NULL;

		if (raw_open[i] == NULL)
			continue;
		bufferevent_getcb(raw_open[i], NULL, NULL, NULL, &served);
		bufferevent_free(raw_open[i]);
		free(served);
		raw_open[i] = NULL;
	}
}

static void
raw_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
	   int len, void *arg)
{
	struct bufferevent *bev =
	    bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	int *served = calloc(1, sizeof(*served));

	(void)l;
	(void)sa;
	(void)len;
	(void)arg;
	if (raw_accepted < 8)
		raw_open[raw_accepted] = bev;
	raw_accepted++;
	bufferevent_setcb(bev, raw_read, NULL, raw_event, served);
	bufferevent_enable(bev, EV_READ);
}

static struct evconnlistener *
raw_member(char *url, size_t len)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);
	struct evconnlistener *l;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = evconnlistener_new_bind(base, raw_accept, NULL,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
				    16, (struct sockaddr *)&sin, sizeof(sin));
	cr_assert_not_null(l);
	getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &sl);
	snprintf(url, len, "http://127.0.0.1:%d", ntohs(sin.sin_port));
	return l;
}

/* ------------------------------------------------------------ results */

struct got {
	int n;
	int err;
	char msg[700];
	char ep[64];
	int failed_over;
	int64_t lease, ttl, revision, count;
	uint64_t sent_ns, done_ns;
	size_t n_kvs;
	char keys[128];
};

static void
got_cb(const struct etcd_result *r, void *arg)
{
	struct got *g = arg;

	g->n++;
	g->err = r->err;
	snprintf(g->msg, sizeof(g->msg), "%s", r->message);
	snprintf(g->ep, sizeof(g->ep), "%s", r->endpoint);
	g->failed_over = r->failed_over;
	g->lease = r->lease_id;
	g->ttl = r->ttl;
	g->revision = r->revision;
	g->count = r->count;
	g->sent_ns = r->sent_ns;
	g->done_ns = etcd_now_ns();
	g->n_kvs = r->n_kvs;
	g->keys[0] = '\0';
	for (size_t i = 0; i < r->n_kvs; i++) {
		size_t used = strlen(g->keys);

		snprintf(g->keys + used, sizeof(g->keys) - used, "%s%s@%lld",
			 i ? "," : "", r->kvs[i].key,
			 (long long)r->kvs[i].create_revision);
	}
	event_base_loopbreak(base);
}

static char failover_log[512];

static void
on_failover(const char *from, const char *to, const char *why, void *arg)
{
	size_t used = strlen(failover_log);

	(void)arg;
	snprintf(failover_log + used, sizeof(failover_log) - used,
		 "%s->%s (%s);", from, to ? to : "-", why);
}

static void
setup(void)
{
	/* As arbiterd does: a peer gone mid-write is an error, not a kill. */
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	failover_log[0] = '\0';
}

static void
teardown(void)
{
	etcd_free(cli);
	cli = NULL;
	event_base_free(base);
}

static struct etcd_client *
client(const char *endpoints, int timeout_ms, size_t max)
{
	struct etcd_settings s = {.endpoints = endpoints,
				  .request_timeout_ms = timeout_ms,
				  .max_response_bytes = max,
				  .on_failover = on_failover};
	char err[300];

	cli = etcd_new(base, &s, err, sizeof(err));
	cr_assert_not_null(cli, "etcd_new: %s", err);
	return cli;
}

/* Runs the loop until a callback breaks it. */
static void
run(void)
{
	event_base_dispatch(base);
}

/* ------------------------------------------------------------ tests */

Test(etcd, valid_until_follows_the_timing_rule)
{
	const uint64_t s = 5000000000u; /* sent at 5 s */

	/* TTL 10 s, 1000 ppm drift, 1 s margin: 5 + 10 - 0.01 - 1 s. */
	cr_expect_eq(etcd_valid_until(s, 10, 1000, 1000),
		     s + 10000000000u - 10000000u - 1000000000u);
	cr_expect_eq(etcd_valid_until(s, 3, 0, 500), s + 2500000000u);
	/* Nothing left, or nothing granted: no validity at all. */
	cr_expect_eq(etcd_valid_until(s, 1, 0, 1000), 0);
	cr_expect_eq(etcd_valid_until(s, 2, 500000, 1000), 0);
	cr_expect_eq(etcd_valid_until(s, 0, 0, 0), 0);
	cr_expect_eq(etcd_valid_until(s, -1, 0, 0), 0);
	cr_expect_eq(etcd_valid_until(s, 10, 1000000, 0), 0);
	/* Never later than the exact rule, even by rounding. */
	cr_expect_leq(etcd_valid_until(0, 7, 333, 0),
		      (uint64_t)(7e9 * (1 - 333e-6)));
}

Test(etcd, settings_errors_name_the_entry_at_fault, .init = setup,
     .fini = teardown)
{
	static const struct {
		const char *eps, *want;
	} cases[] = {
	    {"ftp://h:1", "must start with http:// or https://"},
	    {"http://h:0", "bad port"},
	    {"http://h:70000", "bad port"},
	    {"http://h:1/v3", "no path"},
	    {"", "none given"},
	    {"http://a:1,,http://b:2", "empty or overlong entry"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct etcd_settings s = {.endpoints = cases[i].eps};
		char err[300] = "";

		cr_expect_null(etcd_new(base, &s, err, sizeof(err)), "%s",
			       cases[i].eps);
		cr_expect(strstr(err, cases[i].want) != NULL, "%s: %s",
			  cases[i].eps, err);
	}
}

Test(etcd, grant_reports_id_ttl_and_the_send_time, .init = setup,
     .fini = teardown)
{
	struct fake *f = fake_new(M_OK);
	struct got g = {0};
	uint64_t before = etcd_now_ns();

	client(f->url, 500, 0);
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	cr_assert_eq(g.n, 0, "answered from inside the call");
	run();
	cr_assert_eq(g.err, 0, "%s", g.msg);
	cr_expect_eq(g.lease, 42);
	cr_expect_eq(g.ttl, 5);
	cr_expect_eq(g.revision, 7);
	cr_expect(g.sent_ns >= before && g.sent_ns <= g.done_ns);
	cr_expect_str_eq(g.ep, f->url);
	cr_expect_str_eq(g.msg, "");

	memset(&g, 0, sizeof(g));
	cr_assert_eq(etcd_lease_keepalive(cli, 42, got_cb, &g), 0);
	cr_expect_eq(etcd_lease_keepalive(cli, 42, got_cb, &g), -EBUSY,
		     "a second keepalive while one is in flight");
	run();
	cr_assert_eq(g.err, 0, "%s", g.msg);
	cr_expect_eq(g.ttl, 5);
	fake_free(f);
}

Test(etcd, host_names_resolve_without_blocking, .init = setup, .fini = teardown)
{
	struct fake *f = fake_new(M_OK);
	char url[64];
	struct got g = {0};

	/* localhost may be ::1 first in the hosts file: listen there too. */
	evhttp_bind_socket(f->http, "::1", (ev_uint16_t)f->port);
	snprintf(url, sizeof(url), "http://localhost:%d", f->port);
	client(url, 1000, 0);
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, 0, "%s", g.msg);
	cr_expect_eq(g.lease, 42);
	fake_free(f);
}

Test(etcd, idle_connection_closed_under_a_request_is_not_a_fail_over,
     .init = setup, .fini = teardown)
{
	char url[64], other[64], eps[140];
	struct evconnlistener *l = raw_member(url, sizeof(url));
	int fd = hung_member(other, sizeof(other));
	struct got g = {0};

	snprintf(eps, sizeof(eps), "%s,%s", url, other);
	client(eps, 1000, 0);
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_assert_eq(g.err, 0, "%s", g.msg);
	memset(&g, 0, sizeof(g));
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, 0, "%s", g.msg);
	cr_expect_str_eq(g.ep, url);
	cr_expect(!g.failed_over);
	cr_expect_eq(failover_log[0], '\0', "%s", failover_log);
	cr_expect_eq(raw_accepted, 2, "a new connection, same member");
	raw_close_all();
	evconnlistener_free(l);
	close(fd);
}

Test(etcd, range_decodes_keys_in_create_revision_order, .init = setup,
     .fini = teardown)
{
	struct fake *f = fake_new(M_OK);
	struct got g = {0};

	client(f->url, 500, 0);
	cr_assert_eq(etcd_range_prefix(cli, "a/", 2, 0, got_cb, &g), 0);
	run();
	cr_assert_eq(g.err, 0, "%s", g.msg);
	cr_expect_eq(g.count, 2);
	cr_expect_str_eq(g.keys, "a/1@3,a/2@5");
	fake_free(f);
}

Test(etcd, a_hung_member_is_left_after_request_timeout, .init = setup,
     .fini = teardown)
{
	struct fake *f = fake_new(M_OK);
	char hung[64], eps[160];
	int fd = hung_member(hung, sizeof(hung));
	struct got g = {0};
	uint64_t t0;
	double ms;

	snprintf(eps, sizeof(eps), "%s,%s", hung, f->url);
	/* Generous enough for the fake's answer under valgrind. */
	client(eps, 400, 0);
	t0 = etcd_now_ns();
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	ms = (double)(g.done_ns - t0) / 1e6;
	cr_assert_eq(g.err, 0, "%s", g.msg);
	cr_expect_str_eq(g.ep, f->url);
	cr_expect(g.failed_over);
	/* libevent arms timers from the time cached at the top of its loop
	 * pass, which may be a few ms before t0: allow that much early. */
	cr_expect(ms >= 390 && ms < 400 + 600, "answered after %.1f ms", ms);
	cr_expect(strstr(failover_log, hung) == failover_log &&
		      strstr(failover_log, "request_timeout_ms") != NULL,
		  "%s", failover_log);
	cr_expect_str_eq(etcd_endpoint(cli), f->url);
	/* The next request goes straight to the member that answers. */
	memset(&g, 0, sizeof(g));
	t0 = etcd_now_ns();
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, 0);
	cr_expect(!g.failed_over);
	cr_expect((g.done_ns - t0) / 1000000 < 400);
	close(fd);
	fake_free(f);
}

Test(etcd, unavailable_member_fails_over_not_found_does_not, .init = setup,
     .fini = teardown)
{
	struct fake *down = fake_new(M_UNAVAILABLE), *up = fake_new(M_OK);
	struct fake *nf = fake_new(M_NOTFOUND);
	char eps[200];
	struct got g = {0};

	snprintf(eps, sizeof(eps), "%s,%s", down->url, up->url);
	client(eps, 500, 0);
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, 0, "%s", g.msg);
	cr_expect_str_eq(g.ep, up->url);
	cr_expect(strstr(failover_log, "no leader") != NULL, "%s",
		  failover_log);
	etcd_free(cli);

	snprintf(eps, sizeof(eps), "%s,%s", nf->url, up->url);
	client(eps, 500, 0);
	memset(&g, 0, sizeof(g));
	cr_assert_eq(etcd_lease_revoke(cli, 9, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, -ENOENT);
	cr_expect(strstr(g.msg, nf->url) && strstr(g.msg, "lease not found"),
		  "%s", g.msg);
	cr_expect_eq(up->hits, 1, "an answer from etcd is not a fail-over");
	fake_free(down);
	fake_free(up);
	fake_free(nf);
}

Test(etcd, reply_over_the_cap_is_refused, .init = setup, .fini = teardown)
{
	struct fake *f = fake_new(M_BIG);
	struct got g = {0};

	client(f->url, 500, 64 * 1024);
	cr_assert_eq(etcd_range_prefix(cli, "a/", 2, 0, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, -EMSGSIZE);
	cr_expect(strstr(g.msg, "max_response_bytes") && strstr(g.msg, f->url),
		  "%s", g.msg);
	cr_expect_eq(failover_log[0], '\0', "a big reply is not a fail-over");
	/* The client still works. */
	f->mode = M_OK;
	memset(&g, 0, sizeof(g));
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, 0, "%s", g.msg);
	fake_free(f);
}

Test(etcd, malformed_reply_is_a_protocol_error, .init = setup, .fini = teardown)
{
	struct fake *f = fake_new(M_BADJSON);
	struct got g = {0};

	client(f->url, 500, 0);
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, -EPROTO);
	cr_expect(strstr(g.msg, "not JSON") && strstr(g.msg, f->url), "%s",
		  g.msg);
	fake_free(f);
}

Test(etcd, no_member_reachable_then_back_off, .init = setup, .fini = teardown)
{
	char a[64], b[64], eps[140];
	struct got g = {0};

	closed_member(a, sizeof(a));
	closed_member(b, sizeof(b));
	snprintf(eps, sizeof(eps), "%s,%s", a, b);
	client(eps, 500, 0);
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, -ECONNREFUSED, "%d %s", g.err, g.msg);
	cr_expect(strstr(g.msg, a) && strstr(g.msg, b), "%s", g.msg);
	memset(&g, 0, sizeof(g));
	cr_assert_eq(etcd_lease_grant(cli, 5, got_cb, &g), 0);
	run();
	cr_expect_eq(g.err, -EAGAIN, "%d %s", g.err, g.msg);
	cr_expect(strstr(g.msg, "next retry in") != NULL, "%s", g.msg);
}

struct wlog {
	int created, events, ended, err;
	char text[700];
};

static void
wcb(enum etcd_watch_kind kind, const struct etcd_event *ev,
    const struct etcd_result *r, void *arg)
{
	struct wlog *w = arg;
	size_t used = strlen(w->text);
	char *p = w->text + used;
	size_t left = sizeof(w->text) - used;

	if (kind == ETCD_WATCH_CREATED) {
		w->created++;
		snprintf(p, left, "created@%lld;", (long long)r->revision);
	} else if (kind == ETCD_WATCH_EVENT) {
		w->events++;
		snprintf(p, left, "%s %s mod=%lld prev=%d:%s@%lld lease=%lld;",
			 ev->type == ETCD_DELETE ? "DELETE" : "PUT", ev->kv.key,
			 (long long)ev->kv.mod_revision, ev->has_prev,
			 ev->has_prev ? ev->prev_kv.value : "",
			 (long long)ev->prev_kv.create_revision,
			 (long long)ev->prev_kv.lease);
	} else {
		w->ended++;
		w->err = r->err;
		snprintf(p, left, "ended: %s", r->message);
		event_base_loopbreak(base);
	}
}

Test(etcd, watch_delivers_events_one_at_a_time_across_reads, .init = setup,
     .fini = teardown)
{
	struct fake *f = fake_new(M_OK);
	struct wlog w = {0};
	int err = 0;

	client(f->url, 500, 0);
	cr_assert_not_null(etcd_watch_prefix(cli, "a/", 2, 9, wcb, &w, &err));
	run();
	cr_expect_eq(w.created, 1, "%s", w.text);
	cr_expect_eq(w.events, 2, "%s", w.text);
	cr_expect(strstr(w.text, "created@8;DELETE a/k mod=9 "
				 "prev=1:host@4 lease=66;PUT a/q mod=9 "
				 "prev=0:@0 lease=0;ended: ") == w.text,
		  "%s", w.text);
	/* The member ended the stream: the caller is told to re-watch. */
	cr_expect_eq(w.err, -ECONNRESET);
	cr_expect(strstr(w.text, "re-range and watch again"), "%s", w.text);
	fake_free(f);
}
