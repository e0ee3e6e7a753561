/*
 * etcd.c — asynchronous etcd v3 client over the JSON gateway.
 *
 * Owns: one connection per channel (unary requests, keepalives) and one per
 * watch, all to the member in use; a queue per channel with at most one
 * request in flight, so a timeout can always be pinned on one request and
 * one member; the fail-over rule; per-member back-off; JSON and base64.
 *
 * Why the shape: evhttp runs requests on a connection one after another and
 * offers no safe way to drop one from inside its own callbacks. So nothing
 * here frees a connection from an evhttp callback: a failed or timed-out
 * connection is only marked dead and detached (its late callbacks find no
 * request and do nothing), and the pump — an event of our own, run by the
 * loop — frees dead connections and sends what is queued. Every request
 * thus also answers later than the call that queued it.
 *
 * Memory is bounded: a reply above max_response_bytes fails (evhttp stops
 * reading a larger body), a watch message likewise, and every queue holds
 * only what the caller asked for.
 */
#include "etcd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

enum chan_kind { CH_UNARY, CH_KEEPALIVE, CH_N };

enum op {
	OP_GRANT,
	OP_KEEPALIVE,
	OP_REVOKE,
	OP_TTL,
	OP_TXN,
	OP_PUT,
	OP_RANGE,
	OP_DELETE,
};

/* clang-format off */
static const char *const op_path[] = {
	[OP_GRANT] = "/v3/lease/grant",
	[OP_KEEPALIVE] = "/v3/lease/keepalive",
	[OP_REVOKE] = "/v3/lease/revoke",
	[OP_TTL] = "/v3/lease/timetolive",
	[OP_TXN] = "/v3/kv/txn",
	[OP_PUT] = "/v3/kv/put",
	[OP_RANGE] = "/v3/kv/range",
	[OP_DELETE] = "/v3/kv/deleterange",
};
/* clang-format on */

struct endpoint {
	char *url;
	char *host;
	int port;
	int tls;
	int backoff_ms;
	uint64_t retry_at_ns;
	char last_err[200];
};

struct req {
	struct req *next;
	struct etcd_client *c;
	enum op op;
	int chan;
	char *body;
	etcd_cb cb;
	void *arg;
	uint32_t tried;
	int failed_over;
	int last_errno;
	int ep;
	uint64_t sent_ns;
	struct event *timer;
	enum evhttp_request_error herr;
	int have_herr;
	int fresh_retry; /* sent again on a new connection to the same member */
	char why[512];
};

struct chan {
	struct etcd_client *c;
	struct evhttp_connection *conn;
	int ep;
	int dead;
	int answered; /* replies received on this connection */
	struct req *inflight;
	struct req *head, *tail;
};

struct etcd_watch {
	struct etcd_watch *next;
	struct etcd_client *c;
	struct evhttp_connection *conn;
	int ep;
	char *body;
	etcd_watch_cb cb;
	void *arg;
	struct event *timer;
	struct evbuffer *buf;
	int started, created, ended, dead;
	int pending_err;
	uint64_t sent_ns;
	enum evhttp_request_error herr;
	int have_herr;
	char why[512];
};

struct etcd_client {
	struct event_base *base;
	struct endpoint ep[ETCD_MAX_ENDPOINTS];
	int n_ep;
	int cur;
	char *prefix;
	int timeout_ms;
	size_t max_reply;
	SSL_CTX *ssl;
	struct evdns_base *dns; /* only when an endpoint is a host name */
	struct chan chan[CH_N];
	struct etcd_watch *watches;
	struct event *pump;
	void (*on_failover)(const char *, const char *, const char *, void *);
	void *arg;
};

static void pump_cb(evutil_socket_t, short, void *);
static void start_watch(struct etcd_watch *w);

uint64_t
etcd_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t
etcd_valid_until(uint64_t sent_ns, int64_t ttl_s, uint32_t drift_ppm,
		 uint32_t margin_ms)
{
	uint64_t ttl_ns, keep, margin_ns = (uint64_t)margin_ms * 1000000u;

	/* A TTL beyond ~290 years is no TTL etcd grants; refuse it rather
	 * than overflow. */
	if (ttl_s <= 0 || ttl_s > INT64_C(9000000000) || drift_ppm >= 1000000u)
		return 0;
	ttl_ns = (uint64_t)ttl_s * 1000000000u;
	/* ttl * (1 - drift), rounded down, without overflow. */
	keep = ttl_ns - (ttl_ns / 1000000u) * drift_ppm -
	       ((ttl_ns % 1000000u) * drift_ppm + 999999u) / 1000000u;
	if (keep <= margin_ns)
		return 0;
	return sent_ns + (keep - margin_ns);
}

static void
appendf(char *buf, size_t len, const char *fmt, ...)
{
	size_t used = strlen(buf);
	va_list ap;

	if (used + 1 >= len)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + used, len - used, fmt, ap);
	va_end(ap);
}

/* Base64 (RFC 4648, with padding), as protobuf's JSON mapping wants. */
static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *
b64_encode(const char *in, size_t len)
{
	const unsigned char *p = (const unsigned char *)in;
	char *out = malloc(4 * ((len + 2) / 3) + 1), *o = out;
	size_t i;

	if (out == NULL)
		return NULL;
	for (i = 0; i + 2 < len; i += 3) {
		*o++ = b64chars[p[i] >> 2];
		*o++ = b64chars[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		*o++ = b64chars[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
		*o++ = b64chars[p[i + 2] & 63];
	}
	if (i < len) {
		*o++ = b64chars[p[i] >> 2];
		if (i + 1 < len) {
			*o++ = b64chars[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
			*o++ = b64chars[(p[i + 1] & 15) << 2];
		} else {
			*o++ = b64chars[(p[i] & 3) << 4];
			*o++ = '=';
		}
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

static int
b64_value(int ch)
{
	const char *p;

	if (ch == '-')
		return 62;
	if (ch == '_')
		return 63;
	p = ch ? strchr(b64chars, ch) : NULL;
	return p ? (int)(p - b64chars) : -1;
}

/* Decodes into a new NUL-terminated buffer; NULL on bad input. */
static char *
b64_decode(const char *in, size_t *outlen)
{
	size_t len = strlen(in), n = 0;
	char *out = malloc(len / 4 * 3 + 4);
	uint32_t acc = 0;
	int bits = 0;

	*outlen = 0;
	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len && in[i] != '='; i++) {
		int v = b64_value((unsigned char)in[i]);

		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	out[n] = '\0';
	*outlen = n;
	return out;
}

/* int64 fields come as JSON strings ("123"); accept numbers too. */
static int64_t
jint(const json_t *o, const char *name)
{
	const json_t *v = json_object_get(o, name);

	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	return 0;
}

/* The key just past every key starting with prefix (etcd's range_end). */
static char *
prefix_end(const char *prefix, size_t len, size_t *outlen)
{
	char *end = malloc(len + 1);

	if (end == NULL)
		return NULL;
	memcpy(end, prefix, len);
	while (len > 0) {
		if ((unsigned char)end[len - 1] < 0xff) {
			end[len - 1]++;
			*outlen = len;
			return end;
		}
		len--;
	}
	/* All 0xff or empty: "\0" means "to the end of the key space". */
	end[0] = '\0';
	*outlen = 1;
	return end;
}

static json_t *
jb64(const char *s, size_t len)
{
	char *e = b64_encode(s, len);
	json_t *j;

	if (e == NULL)
		return NULL;
	j = json_string(e);
	free(e);
	return j;
}

static json_t *
jid(int64_t id)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%lld", (long long)id);
	return json_string(buf);
}

/* Endpoints: "http://host:port" or "https://host:port", comma-separated. */
static int
parse_endpoints(struct etcd_client *c, const char *list, char *err,
		size_t errlen)
{
	const char *p = list;

	while (p != NULL && *p != '\0') {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		char one[256], *h, *colon;
		struct endpoint *e;
		long port;

		while (len > 0 && (*p == ' ' || *p == '\t'))
			p++, len--;
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '/'))
			len--;
		if (len == 0 || len >= sizeof(one)) {
			snprintf(err, errlen,
				 "etcd endpoints: empty or overlong entry in "
				 "\"%s\": list http://host:port URLs separated "
				 "by commas",
				 list);
			return -EINVAL;
		}
		if (c->n_ep == ETCD_MAX_ENDPOINTS) {
			snprintf(err, errlen,
				 "etcd endpoints: more than %d in \"%s\"",
				 ETCD_MAX_ENDPOINTS, list);
			return -EINVAL;
		}
		memcpy(one, p, len);
		one[len] = '\0';
		e = &c->ep[c->n_ep];
		if (strncmp(one, "http://", 7) == 0) {
			h = one + 7;
		} else if (strncmp(one, "https://", 8) == 0) {
			h = one + 8;
			e->tls = 1;
		} else {
			snprintf(err, errlen,
				 "etcd endpoint \"%s\": must start with "
				 "http:// or https://",
				 one);
			return -EINVAL;
		}
		if (strchr(h, '/') != NULL) {
			snprintf(err, errlen,
				 "etcd endpoint \"%s\": want scheme://host:"
				 "port with no path",
				 one);
			return -EINVAL;
		}
		port = 2379;
		if (*h == '[') {
			char *rb = strchr(h, ']');

			if (rb == NULL) {
				snprintf(err, errlen,
					 "etcd endpoint \"%s\": unclosed [",
					 one);
				return -EINVAL;
			}
			*rb = '\0';
			colon = rb[1] == ':' ? rb + 1 : NULL;
			h++;
		} else {
			colon = strrchr(h, ':');
			if (colon != NULL)
				*colon = '\0';
		}
		if (colon != NULL) {
			char *q;

			port = strtol(colon + 1, &q, 10);
			if (*q != '\0' || port < 1 || port > 65535) {
				snprintf(err, errlen,
					 "etcd endpoint \"%s\": bad port", one);
				return -EINVAL;
			}
		}
		if (*h == '\0' || strchr(h, '/') != NULL) {
			snprintf(err, errlen,
				 "etcd endpoint \"%.*s\": want scheme://host:"
				 "port with no path",
				 (int)len, p);
			return -EINVAL;
		}
		e->url = strndup(p, len);
		e->host = strdup(h);
		e->port = (int)port;
		if (e->url == NULL || e->host == NULL)
			return -ENOMEM;
		c->n_ep++;
		p = end ? end + 1 : NULL;
	}
	if (c->n_ep == 0) {
		snprintf(err, errlen,
			 "etcd endpoints: none given: set endpoints to the "
			 "members' http://host:port URLs");
		return -EINVAL;
	}
	return 0;
}

static int
tls_setup(struct etcd_client *c, const struct etcd_settings *s, char *err,
	  size_t errlen)
{
	char ebuf[200];

	c->ssl = SSL_CTX_new(TLS_client_method());
	if (c->ssl == NULL) {
		snprintf(err, errlen, "etcd TLS: cannot create a context");
		return -ENOMEM;
	}
	SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION);
	SSL_CTX_set_verify(c->ssl, SSL_VERIFY_PEER, NULL);
	if (s->tls_ca != NULL && *s->tls_ca != '\0') {
		if (SSL_CTX_load_verify_locations(c->ssl, s->tls_ca, NULL) != 1)
			goto fail_ca;
	} else if (SSL_CTX_set_default_verify_paths(c->ssl) != 1) {
		goto fail_ca;
	}
	if ((s->tls_cert && *s->tls_cert) != (s->tls_key && *s->tls_key)) {
		snprintf(err, errlen,
			 "etcd TLS: tls_cert and tls_key go together: set both "
			 "or neither");
		return -EINVAL;
	}
	if (s->tls_cert && *s->tls_cert) {
		if (SSL_CTX_use_certificate_chain_file(c->ssl, s->tls_cert) !=
		    1) {
			ERR_error_string_n(ERR_get_error(), ebuf, sizeof(ebuf));
			snprintf(err, errlen,
				 "etcd TLS: cannot use tls_cert %s: %s",
				 s->tls_cert, ebuf);
			return -EINVAL;
		}
		if (SSL_CTX_use_PrivateKey_file(c->ssl, s->tls_key,
						SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(c->ssl) != 1) {
			ERR_error_string_n(ERR_get_error(), ebuf, sizeof(ebuf));
			snprintf(err, errlen,
				 "etcd TLS: cannot use tls_key %s with %s: %s",
				 s->tls_key, s->tls_cert, ebuf);
			return -EINVAL;
		}
	}
	return 0;
fail_ca:
	ERR_error_string_n(ERR_get_error(), ebuf, sizeof(ebuf));
	snprintf(err, errlen, "etcd TLS: cannot load the CA %s: %s",
		 s->tls_ca && *s->tls_ca ? s->tls_ca : "(system default)",
		 ebuf);
	return -EINVAL;
}

struct etcd_client *
etcd_new(struct event_base *base, const struct etcd_settings *s, char *err,
	 size_t errlen)
{
	struct etcd_client *c = calloc(1, sizeof(*c));
	int need_tls = 0, need_dns = 0;

	if (c == NULL) {
		snprintf(err, errlen, "etcd: out of memory");
		return NULL;
	}
	c->base = base;
	c->timeout_ms = s->request_timeout_ms > 0 ? s->request_timeout_ms
						  : ETCD_DEFAULT_TIMEOUT;
	c->max_reply = s->max_response_bytes ? s->max_response_bytes
					     : ETCD_DEFAULT_MAX_REPLY;
	c->on_failover = s->on_failover;
	c->arg = s->arg;
	c->prefix = strdup(s->prefix ? s->prefix : "arbiter/");
	if (c->prefix == NULL)
		goto nomem;
	if (parse_endpoints(c, s->endpoints, err, errlen) < 0)
		goto fail;
	for (int i = 0; i < c->n_ep; i++) {
		unsigned char addr[16];

		need_tls |= c->ep[i].tls;
		if (inet_pton(AF_INET, c->ep[i].host, addr) != 1 &&
		    inet_pton(AF_INET6, c->ep[i].host, addr) != 1)
			need_dns = 1;
	}
	/* A host name is resolved by libevent's own resolver (resolv.conf
	 * and the hosts file, read once here), never by a blocking
	 * getaddrinfo on the loop. */
	if (need_dns) {
		c->dns =
		    evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
		if (c->dns == NULL) {
			snprintf(err, errlen,
				 "etcd endpoints: cannot set up name "
				 "resolution (/etc/resolv.conf): use IP "
				 "addresses in endpoints");
			goto fail;
		}
	}
	if (need_tls && tls_setup(c, s, err, errlen) < 0)
		goto fail;
	for (int i = 0; i < CH_N; i++) {
		c->chan[i].c = c;
		c->chan[i].ep = -1;
	}
	c->pump = event_new(base, -1, 0, pump_cb, c);
	if (c->pump == NULL)
		goto nomem;
	return c;
nomem:
	snprintf(err, errlen, "etcd: out of memory");
fail:
	etcd_free(c);
	return NULL;
}

static void
req_free(struct req *r)
{
	if (r == NULL)
		return;
	if (r->timer)
		event_free(r->timer);
	free(r->body);
	free(r);
}

static void
watch_free(struct etcd_watch *w)
{
	if (w->conn)
		evhttp_connection_free(w->conn);
	if (w->timer)
		event_free(w->timer);
	if (w->buf)
		evbuffer_free(w->buf);
	free(w->body);
	free(w);
}

void
etcd_free(struct etcd_client *c)
{
	if (c == NULL)
		return;
	for (int i = 0; i < CH_N; i++) {
		struct chan *ch = &c->chan[i];
		struct req *r, *next;

		if (ch->conn)
			evhttp_connection_free(ch->conn);
		req_free(ch->inflight);
		for (r = ch->head; r; r = next) {
			next = r->next;
			req_free(r);
		}
	}
	while (c->watches) {
		struct etcd_watch *w = c->watches;

		c->watches = w->next;
		watch_free(w);
	}
	if (c->pump)
		event_free(c->pump);
	if (c->ssl)
		SSL_CTX_free(c->ssl);
	if (c->dns)
		evdns_base_free(c->dns, 0);
	for (int i = 0; i < c->n_ep; i++) {
		free(c->ep[i].url);
		free(c->ep[i].host);
	}
	free(c->prefix);
	free(c);
}

const char *
etcd_endpoint(const struct etcd_client *c)
{
	return c->ep[c->cur].url;
}

const char *
etcd_prefix(const struct etcd_client *c)
{
	return c->prefix;
}

static void
kick(struct etcd_client *c)
{
	event_active(c->pump, 0, 0);
}

/* Put a request back at the head of its channel's queue. */
static void
requeue(struct chan *ch, struct req *r)
{
	if (r->timer)
		evtimer_del(r->timer);
	r->next = ch->head;
	ch->head = r;
	if (ch->tail == NULL)
		ch->tail = r;
}

static void
watch_end(struct etcd_watch *w, int err, const char *msg)
{
	struct etcd_result r = {0};

	if (w->ended)
		return;
	w->ended = 1;
	w->dead = 1;
	if (w->timer)
		evtimer_del(w->timer);
	kick(w->c);
	if (w->cb == NULL)
		return;
	r.err = err;
	r.message = msg;
	r.endpoint = w->ep >= 0 ? w->c->ep[w->ep].url : "";
	w->cb(ETCD_WATCH_ENDED, NULL, &r, w->arg);
}

/*
 * Member i failed (why names it). It goes into back-off. If it was the
 * member in use, everything on it is detached: in-flight requests go back
 * to their queues for the next member, watches end (the caller re-ranges
 * and re-watches), and the caller hears of the fail-over.
 */
static void
endpoint_failed(struct etcd_client *c, int i, const char *why)
{
	struct endpoint *e = &c->ep[i];
	uint64_t now = etcd_now_ns();
	int next = -1;
	char msg[600];

	e->backoff_ms = e->backoff_ms ? e->backoff_ms * 2 : ETCD_BACKOFF_MIN_MS;
	if (e->backoff_ms > ETCD_BACKOFF_MAX_MS)
		e->backoff_ms = ETCD_BACKOFF_MAX_MS;
	e->retry_at_ns = now + (uint64_t)e->backoff_ms * 1000000u;
	snprintf(e->last_err, sizeof(e->last_err), "%s", why);
	if (i != c->cur)
		return;
	for (int k = 1; k < c->n_ep; k++) {
		int j = (i + k) % c->n_ep;

		if (c->ep[j].retry_at_ns <= now) {
			next = j;
			break;
		}
	}
	for (int k = 0; k < CH_N; k++) {
		struct chan *ch = &c->chan[k];

		if (ch->conn == NULL || ch->ep != i)
			continue;
		ch->dead = 1;
		if (ch->inflight) {
			ch->inflight->failed_over = 1;
			requeue(ch, ch->inflight);
			ch->inflight = NULL;
		}
	}
	if (next >= 0)
		c->cur = next;
	snprintf(msg, sizeof(msg),
		 "etcd member %s left: %s; watches end, re-range and watch "
		 "again on %s",
		 e->url, why,
		 next >= 0 ? c->ep[next].url : "(none usable yet)");
	for (struct etcd_watch *w = c->watches; w; w = w->next)
		if (!w->ended && w->started && w->ep == i)
			watch_end(w, -ECONNRESET, msg);
	if (c->on_failover)
		c->on_failover(e->url, next >= 0 ? c->ep[next].url : NULL, why,
			       c->arg);
	kick(c);
}

static void
endpoint_ok(struct etcd_client *c, int i)
{
	c->ep[i].backoff_ms = 0;
	c->ep[i].retry_at_ns = 0;
}

/*
 * The member for a request that has tried the members in `tried`: the one
 * in use if it may be tried, else the next that is not in back-off (which
 * becomes the one in use). -1 when none.
 */
static int
pick_endpoint(struct etcd_client *c, uint32_t tried)
{
	uint64_t now = etcd_now_ns();

	for (int k = 0; k < c->n_ep; k++) {
		int j = (c->cur + k) % c->n_ep;

		if ((tried & (1u << j)) || c->ep[j].retry_at_ns > now)
			continue;
		if (j != c->cur) {
			int old = c->cur;

			c->cur = j;
			if (c->on_failover)
				c->on_failover(c->ep[old].url, c->ep[j].url,
					       c->ep[old].last_err[0]
						   ? c->ep[old].last_err
						   : "member skipped",
					       c->arg);
		}
		return j;
	}
	return -1;
}

static struct evhttp_connection *
connect_to(struct etcd_client *c, int i)
{
	struct endpoint *e = &c->ep[i];
	struct evhttp_connection *conn;

	if (e->tls) {
		SSL *ssl = SSL_new(c->ssl);
		struct bufferevent *bev;
		unsigned char addr[16];
		int is_ip = inet_pton(AF_INET, e->host, addr) == 1 ||
			    inet_pton(AF_INET6, e->host, addr) == 1;

		if (ssl == NULL)
			return NULL;
		if (is_ip) {
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl),
						      e->host);
		} else {
			SSL_set_tlsext_host_name(ssl, e->host);
			SSL_set1_host(ssl, e->host);
		}
		bev = bufferevent_openssl_socket_new(
		    c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
		    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (bev == NULL) {
			SSL_free(ssl);
			return NULL;
		}
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
		conn = evhttp_connection_base_bufferevent_new(
		    c->base, c->dns, bev, e->host, (unsigned short)e->port);
		if (conn == NULL)
			bufferevent_free(bev);
	} else {
		conn = evhttp_connection_base_new(c->base, c->dns, e->host,
						  (unsigned short)e->port);
	}
	if (conn == NULL)
		return NULL;
	evhttp_connection_set_retries(conn, 0);
	evhttp_connection_set_max_headers_size(conn, (ev_ssize_t)64 * 1024);
	return conn;
}

static const char *
herr_text(enum evhttp_request_error e)
{
	switch (e) {
	case EVREQ_HTTP_TIMEOUT:
		return "timed out";
	case EVREQ_HTTP_EOF:
		return "connection closed or refused";
	case EVREQ_HTTP_INVALID_HEADER:
		return "invalid HTTP header";
	case EVREQ_HTTP_BUFFER_ERROR:
		return "connection failed";
	case EVREQ_HTTP_REQUEST_CANCEL:
		return "request cancelled";
	case EVREQ_HTTP_DATA_TOO_LONG:
		return "reply too large";
	}
	return "failed";
}

/* Why a connection failed, with the TLS library's reason when there is one. */
static void
conn_error_text(struct evhttp_connection *conn, int tls,
		enum evhttp_request_error herr, int have_herr, char *buf,
		size_t len)
{
	unsigned long e = 0;

	if (tls && conn != NULL) {
		struct bufferevent *bev =
		    evhttp_connection_get_bufferevent(conn);

		if (bev)
			e = bufferevent_get_openssl_error(bev);
	}
	if (e != 0) {
		char ebuf[200];

		ERR_error_string_n(e, ebuf, sizeof(ebuf));
		snprintf(buf, len, "TLS failed: %s", ebuf);
	} else {
		snprintf(buf, len, "%s",
			 have_herr ? herr_text(herr)
				   : "connection closed or refused");
	}
}

static void finish(struct req *r, int err, json_t *body);

static void
req_fail_attempt(struct req *r, const char *what, int err)
{
	appendf(r->why, sizeof(r->why), "%s%s: %s", r->why[0] ? "; " : "",
		r->c->ep[r->ep].url, what);
	r->last_errno = err;
}

static void
http_error_cb(enum evhttp_request_error e, void *arg)
{
	struct chan *ch = arg;

	if (ch->inflight) {
		ch->inflight->herr = e;
		ch->inflight->have_herr = 1;
	}
}

static int
grpc_to_errno(int64_t code)
{
	switch (code) {
	case 5: /* NotFound */
		return -ENOENT;
	case 4: /* DeadlineExceeded */
		return -ETIMEDOUT;
	case 14: /* Unavailable */
		return -EAGAIN;
	case 3:	 /* InvalidArgument */
	case 11: /* OutOfRange */
		return -EINVAL;
	case 8: /* ResourceExhausted */
		return -ENOSPC;
	case 7:	 /* PermissionDenied */
	case 16: /* Unauthenticated */
		return -EACCES;
	}
	return -EIO;
}

static void
http_done(struct evhttp_request *hreq, void *arg)
{
	struct chan *ch = arg;
	struct etcd_client *c = ch->c;
	struct req *r = ch->inflight;
	struct evbuffer *in;
	json_t *j;
	json_error_t jerr;
	int code;
	char what[300];

	if (r == NULL)
		return; /* detached: a late answer from a dead connection */
	evtimer_del(r->timer);
	ch->inflight = NULL;
	if (hreq == NULL || evhttp_request_get_response_code(hreq) == 0) {
		ch->dead = 1;
		if (r->have_herr && r->herr == EVREQ_HTTP_DATA_TOO_LONG) {
			snprintf(what, sizeof(what),
				 "reply larger than max_response_bytes (%zu "
				 "bytes): refused",
				 c->max_reply);
			req_fail_attempt(r, what, -EMSGSIZE);
			finish(r, -EMSGSIZE, NULL);
			kick(c);
			return;
		}
		conn_error_text(ch->conn, c->ep[r->ep].tls, r->herr,
				r->have_herr, what, sizeof(what));
		if (ch->answered > 0 && !r->fresh_retry) {
			/* A kept-alive connection may have been closed by the
			 * member (or a proxy) while idle, just as this request
			 * went out: try once more on a new connection before
			 * blaming the member. A dead member refuses that. */
			r->fresh_retry = 1;
			r->tried &= ~(1u << r->ep);
			requeue(ch, r);
			kick(c);
			return;
		}
		req_fail_attempt(r, what, -ECONNREFUSED);
		requeue(ch, r);
		endpoint_failed(c, r->ep, what);
		kick(c);
		return;
	}
	ch->answered++;
	code = evhttp_request_get_response_code(hreq);
	in = evhttp_request_get_input_buffer(hreq);
	j = json_loadb((const char *)evbuffer_pullup(in, -1),
		       evbuffer_get_length(in), 0, &jerr);
	if (code != 200) {
		json_t *msg = j ? json_object_get(j, "message") : NULL;
		int64_t gcode = j ? jint(j, "code") : 0;
		int e = j ? grpc_to_errno(gcode) : -EIO;

		snprintf(what, sizeof(what), "HTTP %d: %s", code,
			 json_is_string(msg) ? json_string_value(msg)
					     : "(no etcd message)");
		req_fail_attempt(r, what, e);
		json_decref(j);
		if (gcode == 14 || code == 503) {
			/* Unavailable (no leader, member not ready): the next
			 * member may do better. */
			requeue(ch, r);
			endpoint_failed(c, r->ep, what);
		} else {
			endpoint_ok(c, r->ep);
			finish(r, e, NULL);
		}
		kick(c);
		return;
	}
	endpoint_ok(c, r->ep);
	if (j == NULL || !json_is_object(j)) {
		snprintf(what, sizeof(what), "reply is not JSON: %s",
			 jerr.text);
		req_fail_attempt(r, what, -EPROTO);
		json_decref(j);
		finish(r, -EPROTO, NULL);
	} else {
		finish(r, 0, j);
		json_decref(j);
	}
	kick(c);
}

static void
req_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct req *r = arg;
	struct etcd_client *c = r->c;
	struct chan *ch = &c->chan[r->chan];
	char msg[120];

	(void)fd;
	(void)what;
	if (ch->inflight != r)
		return;
	ch->inflight = NULL;
	ch->dead = 1;
	snprintf(msg, sizeof(msg), "no answer within request_timeout_ms (%d)",
		 c->timeout_ms);
	req_fail_attempt(r, msg, -ETIMEDOUT);
	requeue(ch, r);
	endpoint_failed(c, r->ep, msg);
	kick(c);
}

static void
conn_closed(struct evhttp_connection *conn, void *arg)
{
	struct chan *ch = arg;

	(void)conn;
	ch->dead = 1;
}

/* Send r on ch to a member, or answer it with the reason none is left. */
static void
start_req(struct chan *ch, struct req *r)
{
	struct etcd_client *c = ch->c;
	struct evhttp_request *hreq;
	struct evkeyvalq *h;
	struct timeval tv;
	char len[24];
	int i = pick_endpoint(c, r->tried);

	if (i < 0) {
		uint64_t now = etcd_now_ns(), soonest = UINT64_MAX;

		for (int k = 0; k < c->n_ep; k++)
			if (!(r->tried & (1u << k)) &&
			    c->ep[k].retry_at_ns < soonest)
				soonest = c->ep[k].retry_at_ns;
		if (soonest != UINT64_MAX) {
			char msg[160];

			snprintf(
			    msg, sizeof(msg),
			    "every other member is in back-off after "
			    "failing; next retry in %llu ms",
			    (unsigned long long)((soonest - now) / 1000000u));
			r->ep = c->cur;
			appendf(r->why, sizeof(r->why), "%s%s",
				r->why[0] ? "; " : "", msg);
			if (r->last_errno == 0) {
				for (int k = 0; k < c->n_ep; k++)
					if (c->ep[k].last_err[0])
						appendf(r->why, sizeof(r->why),
							"; %s: %s",
							c->ep[k].url,
							c->ep[k].last_err);
			}
			r->last_errno = -EAGAIN;
		}
		finish(r, r->last_errno ? r->last_errno : -EAGAIN, NULL);
		return;
	}
	if (ch->conn && (ch->dead || ch->ep != i)) {
		evhttp_connection_free(ch->conn);
		ch->conn = NULL;
	}
	ch->dead = 0;
	if (ch->conn == NULL) {
		ch->conn = connect_to(c, i);
		if (ch->conn == NULL) {
			req_fail_attempt(r, "cannot create a connection",
					 -ENOMEM);
			finish(r, -ENOMEM, NULL);
			return;
		}
		ch->ep = i;
		ch->answered = 0;
		evhttp_connection_set_max_body_size(ch->conn,
						    (ev_ssize_t)c->max_reply);
		evhttp_connection_set_closecb(ch->conn, conn_closed, ch);
	}
	if (r->tried != 0 && !(r->tried & (1u << i)))
		r->failed_over = 1;
	r->ep = i;
	r->tried |= 1u << i;
	r->have_herr = 0;
	hreq = evhttp_request_new(http_done, ch);
	if (hreq == NULL) {
		finish(r, -ENOMEM, NULL);
		return;
	}
	evhttp_request_set_error_cb(hreq, http_error_cb);
	h = evhttp_request_get_output_headers(hreq);
	snprintf(len, sizeof(len), "%zu", strlen(r->body));
	evhttp_add_header(h, "Host", c->ep[i].host);
	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Content-Length", len);
	evbuffer_add(evhttp_request_get_output_buffer(hreq), r->body,
		     strlen(r->body));
	ch->inflight = r;
	r->sent_ns = etcd_now_ns();
	if (evhttp_make_request(ch->conn, hreq, EVHTTP_REQ_POST,
				op_path[r->op]) < 0) {
		/* evhttp freed hreq. */
		ch->inflight = NULL;
		ch->dead = 1;
		req_fail_attempt(r, "cannot send the request", -EIO);
		requeue(ch, r);
		endpoint_failed(c, i, "cannot send a request");
		kick(c);
		return;
	}
	tv.tv_sec = c->timeout_ms / 1000;
	tv.tv_usec = (suseconds_t)(c->timeout_ms % 1000) * 1000;
	evtimer_add(r->timer, &tv);
}

static void
pump_cb(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_client *c = arg;
	struct etcd_watch **wp;

	(void)fd;
	(void)what;
	for (int k = 0; k < CH_N; k++) {
		struct chan *ch = &c->chan[k];

		if (ch->conn && ch->dead && ch->inflight == NULL) {
			evhttp_connection_free(ch->conn);
			ch->conn = NULL;
			ch->dead = 0;
		}
		while (ch->inflight == NULL && ch->head != NULL) {
			struct req *r = ch->head;

			ch->head = r->next;
			if (ch->head == NULL)
				ch->tail = NULL;
			r->next = NULL;
			start_req(ch, r);
		}
	}
	for (wp = &c->watches; *wp;) {
		struct etcd_watch *w = *wp;

		if (w->dead) {
			*wp = w->next;
			watch_free(w);
			continue;
		}
		if (!w->started)
			start_watch(w);
		wp = &w->next;
	}
}

/* Decoded copies of one JSON kv, into kv; strings freed with kv_clear. */
static int
kv_parse(const json_t *o, struct etcd_kv *kv)
{
	const json_t *k = json_object_get(o, "key");
	const json_t *v = json_object_get(o, "value");
	size_t n;

	memset(kv, 0, sizeof(*kv));
	kv->key = b64_decode(json_is_string(k) ? json_string_value(k) : "",
			     &kv->key_len);
	kv->value =
	    b64_decode(json_is_string(v) ? json_string_value(v) : "", &n);
	kv->value_len = n;
	kv->create_revision = jint(o, "create_revision");
	kv->mod_revision = jint(o, "mod_revision");
	kv->version = jint(o, "version");
	kv->lease = jint(o, "lease");
	return kv->key && kv->value ? 0 : -EPROTO;
}

static void
kv_clear(struct etcd_kv *kv)
{
	free((char *)kv->key);
	free((char *)kv->value);
}

static int
parse_kvs(const json_t *arr, struct etcd_kv **out, size_t *n)
{
	size_t i, len = json_array_size(arr);

	*out = NULL;
	*n = 0;
	if (len == 0)
		return 0;
	*out = calloc(len, sizeof(**out));
	if (*out == NULL)
		return -ENOMEM;
	for (i = 0; i < len; i++) {
		*n = i + 1;
		if (kv_parse(json_array_get(arr, i), &(*out)[i]) < 0)
			return -EPROTO;
	}
	return 0;
}

/* Answer r (err, or the reply in body) and free it. */
static void
finish(struct req *r, int err, json_t *body)
{
	struct etcd_client *c = r->c;
	struct etcd_result res = {0};
	struct etcd_kv *kvs = NULL;
	size_t n_kvs = 0;
	const json_t *o = body;
	char msg[600];

	if (err == 0 && r->op == OP_KEEPALIVE) {
		o = json_object_get(body, "result");
		if (!json_is_object(o))
			o = body;
	}
	res.endpoint = c->ep[r->ep].url;
	res.failed_over = r->failed_over;
	res.sent_ns = r->sent_ns;
	res.rtt_ns = etcd_now_ns() - r->sent_ns;
	if (err == 0) {
		const json_t *rr;
		size_t i;

		res.revision = jint(json_object_get(o, "header"), "revision");
		res.lease_id = jint(o, "ID");
		res.ttl = jint(o, "TTL");
		res.deleted = jint(o, "deleted");
		res.count = jint(o, "count");
		res.succeeded = json_is_true(json_object_get(o, "succeeded"));
		switch (r->op) {
		case OP_RANGE:
			err =
			    parse_kvs(json_object_get(o, "kvs"), &kvs, &n_kvs);
			break;
		case OP_TXN:
			json_array_foreach(json_object_get(o, "responses"), i,
					   rr)
			{
				const json_t *rg =
				    json_object_get(rr, "response_range");

				if (rg == NULL)
					continue;
				res.count = jint(rg, "count");
				err = parse_kvs(json_object_get(rg, "kvs"),
						&kvs, &n_kvs);
			}
			break;
		case OP_KEEPALIVE:
			if (res.ttl <= 0) {
				err = -ENOENT;
				snprintf(r->why, sizeof(r->why),
					 "%s: lease %llx expired or not found "
					 "(keepalive answered TTL 0)",
					 res.endpoint,
					 (unsigned long long)res.lease_id);
			}
			break;
		case OP_GRANT:
			if (res.lease_id == 0 || res.ttl <= 0) {
				err = -EPROTO;
				snprintf(r->why, sizeof(r->why),
					 "%s: lease grant answered no ID/TTL",
					 res.endpoint);
			}
			break;
		default:
			break;
		}
		if (err == -EPROTO && r->why[0] == '\0')
			snprintf(r->why, sizeof(r->why),
				 "%s: malformed key or value in the reply",
				 res.endpoint);
		if (err == -ENOMEM && r->why[0] == '\0')
			snprintf(r->why, sizeof(r->why), "out of memory");
	}
	res.err = err;
	if (err != 0) {
		snprintf(msg, sizeof(msg), "etcd %s failed: %s",
			 op_path[r->op] + 4, r->why[0] ? r->why : "unknown");
		res.message = msg;
	} else {
		res.message = "";
		res.kvs = kvs;
		res.n_kvs = n_kvs;
	}
	if (r->cb)
		r->cb(&res, r->arg);
	for (size_t i = 0; i < n_kvs; i++)
		kv_clear(&kvs[i]);
	free(kvs);
	req_free(r);
}

static int
submit(struct etcd_client *c, enum op op, int chan, json_t *body, etcd_cb cb,
       void *arg)
{
	struct req *r;
	struct chan *ch = &c->chan[chan];

	if (body == NULL)
		return -ENOMEM;
	r = calloc(1, sizeof(*r));
	if (r == NULL) {
		json_decref(body);
		return -ENOMEM;
	}
	r->body = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	r->timer = evtimer_new(c->base, req_timeout, r);
	if (r->body == NULL || r->timer == NULL) {
		req_free(r);
		return -ENOMEM;
	}
	r->c = c;
	r->op = op;
	r->chan = chan;
	r->cb = cb;
	r->arg = arg;
	r->ep = c->cur;
	if (ch->tail)
		ch->tail->next = r;
	else
		ch->head = r;
	ch->tail = r;
	kick(c);
	return 0;
}

int
etcd_lease_grant(struct etcd_client *c, int64_t ttl_s, etcd_cb cb, void *arg)
{
	if (ttl_s <= 0)
		return -EINVAL;
	return submit(c, OP_GRANT, CH_UNARY,
		      json_pack("{s:I}", "TTL", (json_int_t)ttl_s), cb, arg);
}

int
etcd_lease_keepalive(struct etcd_client *c, int64_t lease_id, etcd_cb cb,
		     void *arg)
{
	struct chan *ch = &c->chan[CH_KEEPALIVE];

	if (ch->inflight || ch->head)
		return -EBUSY;
	return submit(c, OP_KEEPALIVE, CH_KEEPALIVE,
		      json_pack("{s:o}", "ID", jid(lease_id)), cb, arg);
}

int
etcd_lease_revoke(struct etcd_client *c, int64_t lease_id, etcd_cb cb,
		  void *arg)
{
	return submit(c, OP_REVOKE, CH_UNARY,
		      json_pack("{s:o}", "ID", jid(lease_id)), cb, arg);
}

int
etcd_lease_ttl(struct etcd_client *c, int64_t lease_id, etcd_cb cb, void *arg)
{
	return submit(c, OP_TTL, CH_UNARY,
		      json_pack("{s:o}", "ID", jid(lease_id)), cb, arg);
}

static json_t *
range_req(const char *prefix, size_t len, int64_t limit)
{
	size_t elen;
	char *end = prefix_end(prefix, len, &elen);
	json_t *j;

	if (end == NULL)
		return NULL;
	j = json_pack("{s:o, s:o, s:s, s:s, s:I}", "key", jb64(prefix, len),
		      "range_end", jb64(end, elen), "sort_order", "ASCEND",
		      "sort_target", "CREATE", "limit", (json_int_t)limit);
	free(end);
	return j;
}

int
etcd_txn_put_if_absent(struct etcd_client *c, const char *key, size_t key_len,
		       const char *value, size_t value_len, int64_t lease,
		       const char *range_prefix, size_t prefix_len, etcd_cb cb,
		       void *arg)
{
	json_t *put, *success, *failure, *j;

	put = json_pack("{s:{s:o, s:o, s:o}}", "request_put", "key",
			jb64(key, key_len), "value", jb64(value, value_len),
			"lease", jid(lease));
	success = json_pack("[o]", put);
	failure = json_array();
	if (success && failure && range_prefix != NULL) {
		json_array_append_new(
		    success, json_pack("{s:o}", "request_range",
				       range_req(range_prefix, prefix_len, 0)));
		json_array_append_new(
		    failure, json_pack("{s:o}", "request_range",
				       range_req(range_prefix, prefix_len, 0)));
	}
	j = json_pack("{s:[{s:o, s:s, s:s, s:s}], s:o, s:o}", "compare", "key",
		      jb64(key, key_len), "target", "CREATE", "result", "EQUAL",
		      "create_revision", "0", "success", success, "failure",
		      failure);
	return submit(c, OP_TXN, CH_UNARY, j, cb, arg);
}

int
etcd_put(struct etcd_client *c, const char *key, size_t key_len,
	 const char *value, size_t value_len, int64_t lease, etcd_cb cb,
	 void *arg)
{
	return submit(c, OP_PUT, CH_UNARY,
		      json_pack("{s:o, s:o, s:o}", "key", jb64(key, key_len),
				"value", jb64(value, value_len), "lease",
				jid(lease)),
		      cb, arg);
}

int
etcd_range_prefix(struct etcd_client *c, const char *prefix, size_t prefix_len,
		  int64_t limit, etcd_cb cb, void *arg)
{
	return submit(c, OP_RANGE, CH_UNARY,
		      range_req(prefix, prefix_len, limit), cb, arg);
}

int
etcd_delete(struct etcd_client *c, const char *key, size_t key_len, etcd_cb cb,
	    void *arg)
{
	return submit(c, OP_DELETE, CH_UNARY,
		      json_pack("{s:o}", "key", jb64(key, key_len)), cb, arg);
}

/* ---- watch ---- */

static void
watch_error_cb(enum evhttp_request_error e, void *arg)
{
	struct etcd_watch *w = arg;

	w->herr = e;
	w->have_herr = 1;
}

/* One message of the stream; returns -1 once the watch ended. */
static int
watch_message(struct etcd_watch *w, const char *line, size_t len)
{
	struct etcd_client *c = w->c;
	json_error_t jerr;
	json_t *j = json_loadb(line, len, 0, &jerr), *res, *evs, *e;
	struct etcd_result r = {0};
	char msg[600];
	size_t i;

	r.endpoint = c->ep[w->ep].url;
	r.message = "";
	if (j == NULL) {
		snprintf(msg, sizeof(msg),
			 "etcd watch on %s: message is not JSON: %s",
			 r.endpoint, jerr.text);
		watch_end(w, -EPROTO, msg);
		return -1;
	}
	res = json_object_get(j, "result");
	if (res == NULL) {
		const json_t *er = json_object_get(j, "error");
		const json_t *m = json_object_get(er, "message");

		snprintf(msg, sizeof(msg), "etcd watch on %s failed: %s",
			 r.endpoint,
			 json_is_string(m) ? json_string_value(m)
					   : "error without a message");
		json_decref(j);
		watch_end(w, -EIO, msg);
		return -1;
	}
	r.revision = jint(json_object_get(res, "header"), "revision");
	if (json_is_true(json_object_get(res, "canceled"))) {
		int64_t compact = jint(res, "compact_revision");
		const json_t *reason = json_object_get(res, "cancel_reason");

		snprintf(msg, sizeof(msg),
			 "etcd watch on %s cancelled by etcd: %s%s%lld: "
			 "re-range and watch again",
			 r.endpoint,
			 json_is_string(reason) ? json_string_value(reason)
						: "",
			 compact ? " (history compacted up to revision " : "",
			 (long long)compact);
		json_decref(j);
		watch_end(w, compact ? -ERANGE : -EIO, msg);
		return -1;
	}
	if (json_is_true(json_object_get(res, "created"))) {
		w->created = 1;
		evtimer_del(w->timer);
		endpoint_ok(c, w->ep);
		r.sent_ns = w->sent_ns;
		r.rtt_ns = etcd_now_ns() - w->sent_ns;
		if (w->cb)
			w->cb(ETCD_WATCH_CREATED, NULL, &r, w->arg);
	}
	evs = json_object_get(res, "events");
	json_array_foreach(evs, i, e)
	{
		struct etcd_event ev = {0};
		const json_t *t = json_object_get(e, "type");
		const json_t *pkv = json_object_get(e, "prev_kv");
		int bad;

		if (w->dead)
			break;
		/* Protobuf's JSON leaves out the default: PUT. */
		ev.type = json_is_string(t) &&
				  strcmp(json_string_value(t), "DELETE") == 0
			      ? ETCD_DELETE
			      : ETCD_PUT;
		ev.revision = r.revision;
		bad = kv_parse(json_object_get(e, "kv"), &ev.kv) < 0;
		if (json_is_object(pkv)) {
			ev.has_prev = 1;
			bad |= kv_parse(pkv, &ev.prev_kv) < 0;
		}
		if (!bad && w->cb)
			w->cb(ETCD_WATCH_EVENT, &ev, &r, w->arg);
		kv_clear(&ev.kv);
		kv_clear(&ev.prev_kv);
		if (bad) {
			snprintf(msg, sizeof(msg),
				 "etcd watch on %s: malformed event",
				 r.endpoint);
			json_decref(j);
			watch_end(w, -EPROTO, msg);
			return -1;
		}
	}
	json_decref(j);
	return w->dead ? -1 : 0;
}

static void
watch_too_big(struct etcd_watch *w)
{
	char msg[300];

	snprintf(msg, sizeof(msg),
		 "etcd watch on %s: message larger than max_response_bytes "
		 "(%zu bytes): refused",
		 w->c->ep[w->ep].url, w->c->max_reply);
	watch_end(w, -EMSGSIZE, msg);
}

/* Stream data: whole lines are messages, handled one by one; a partial
 * line waits for more, up to max_response_bytes. */
static void
watch_chunk(struct evhttp_request *hreq, void *arg)
{
	struct etcd_watch *w = arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(hreq);

	if (w->dead) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	evbuffer_add_buffer(w->buf, in);
	while (!w->dead) {
		struct evbuffer_ptr eol =
		    evbuffer_search(w->buf, "\n", 1, NULL);
		size_t len;

		if (eol.pos < 0) {
			if (evbuffer_get_length(w->buf) > w->c->max_reply)
				watch_too_big(w);
			return;
		}
		len = (size_t)eol.pos;
		if (len > w->c->max_reply) {
			watch_too_big(w);
			return;
		}
		if (len > 0)
			watch_message(w,
				      (const char *)evbuffer_pullup(
					  w->buf, (ev_ssize_t)len + 1),
				      len);
		evbuffer_drain(w->buf, len + 1);
	}
}

static void
watch_done(struct evhttp_request *hreq, void *arg)
{
	struct etcd_watch *w = arg;
	char what[300], msg[600];
	int failed =
	    hreq == NULL || evhttp_request_get_response_code(hreq) == 0;

	if (w->dead)
		return;
	if (failed) {
		conn_error_text(w->conn, w->c->ep[w->ep].tls, w->herr,
				w->have_herr, what, sizeof(what));
	} else if (evhttp_request_get_response_code(hreq) != 200) {
		snprintf(what, sizeof(what), "HTTP %d",
			 evhttp_request_get_response_code(hreq));
	} else {
		snprintf(what, sizeof(what), "the member ended the stream");
	}
	snprintf(msg, sizeof(msg),
		 "etcd watch on %s ended: %s: re-range and watch again",
		 w->c->ep[w->ep].url, what);
	watch_end(w, -ECONNRESET, msg);
	if (failed)
		endpoint_failed(w->c, w->ep, what);
}

static void
watch_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_watch *w = arg;
	char msg[300];
	int ep = w->ep;

	(void)fd;
	(void)what;
	if (w->dead || w->created)
		return;
	snprintf(msg, sizeof(msg),
		 "etcd watch on %s: not created within request_timeout_ms "
		 "(%d): re-range and watch again",
		 w->c->ep[ep].url, w->c->timeout_ms);
	watch_end(w, -ETIMEDOUT, msg);
	endpoint_failed(w->c, ep, "watch not created in time");
}

static void
start_watch(struct etcd_watch *w)
{
	struct etcd_client *c = w->c;
	struct evhttp_request *hreq;
	struct evkeyvalq *h;
	struct timeval tv;
	char len[24], msg[600];
	int i = pick_endpoint(c, 0);

	w->started = 1;
	if (i < 0) {
		w->ep = c->cur;
		snprintf(msg, sizeof(msg),
			 "etcd watch: every member is in back-off (last: %s: "
			 "%s): watch again later",
			 c->ep[c->cur].url, c->ep[c->cur].last_err);
		watch_end(w, -EAGAIN, msg);
		return;
	}
	w->ep = i;
	w->conn = connect_to(c, i);
	hreq = w->conn ? evhttp_request_new(watch_done, w) : NULL;
	if (hreq == NULL) {
		watch_end(w, -ENOMEM, "etcd watch: out of memory");
		return;
	}
	/* The stream is idle while nothing changes: only evhttp's own
	 * timeout applies after creation, set long. */
	evhttp_connection_set_timeout(w->conn, 24 * 3600);
	evhttp_connection_set_max_body_size(w->conn, -1);
	evhttp_request_set_chunked_cb(hreq, watch_chunk);
	evhttp_request_set_error_cb(hreq, watch_error_cb);
	h = evhttp_request_get_output_headers(hreq);
	snprintf(len, sizeof(len), "%zu", strlen(w->body));
	evhttp_add_header(h, "Host", c->ep[i].host);
	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Content-Length", len);
	evbuffer_add(evhttp_request_get_output_buffer(hreq), w->body,
		     strlen(w->body));
	w->sent_ns = etcd_now_ns();
	if (evhttp_make_request(w->conn, hreq, EVHTTP_REQ_POST, "/v3/watch") <
	    0) {
		snprintf(msg, sizeof(msg), "etcd watch on %s: cannot send",
			 c->ep[i].url);
		watch_end(w, -EIO, msg);
		return;
	}
	tv.tv_sec = c->timeout_ms / 1000;
	tv.tv_usec = (suseconds_t)(c->timeout_ms % 1000) * 1000;
	evtimer_add(w->timer, &tv);
}

struct etcd_watch *
etcd_watch_prefix(struct etcd_client *c, const char *prefix, size_t prefix_len,
		  int64_t start_revision, etcd_watch_cb cb, void *arg,
		  int *errp)
{
	struct etcd_watch *w = calloc(1, sizeof(*w));
	size_t elen;
	char *end = prefix_end(prefix, prefix_len, &elen);
	json_t *j = NULL;

	if (w == NULL || end == NULL)
		goto nomem;
	j = json_pack("{s:{s:o, s:o, s:I, s:b}}", "create_request", "key",
		      jb64(prefix, prefix_len), "range_end", jb64(end, elen),
		      "start_revision", (json_int_t)start_revision, "prev_kv",
		      1);
	free(end);
	end = NULL;
	if (j == NULL)
		goto nomem;
	w->body = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	w->timer = evtimer_new(c->base, watch_timeout, w);
	w->buf = evbuffer_new();
	if (w->body == NULL || w->timer == NULL || w->buf == NULL)
		goto nomem;
	w->c = c;
	w->cb = cb;
	w->arg = arg;
	w->ep = -1;
	w->next = c->watches;
	c->watches = w;
	kick(c);
	return w;
nomem:
	free(end);
	if (w)
		watch_free(w);
	*errp = -ENOMEM;
	return NULL;
}

void
etcd_watch_cancel(struct etcd_watch *w)
{
	if (w == NULL)
		return;
	w->cb = NULL;
	w->ended = 1;
	w->dead = 1;
	kick(w->c);
}
