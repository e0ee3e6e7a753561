/*
 * gw: blocking requests to etcd's v3 JSON gateway (see gw.h).
 *
 * HTTP/1.1 over one TCP connection with TCP_NODELAY; a reply has a
 * Content-Length or is chunked; a watch is one chunked stream of JSON
 * messages, one per line. Every wait is bounded by poll(2) with the
 * connection's timeout, so a hung member fails a request instead of
 * hanging the bench.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gw.h"

#define GW_TIMEOUT_MS 30000

static void
gw_seterr(struct gw *g, const char *what, const char *detail)
{
	snprintf(g->err, sizeof g->err, "etcd %.63s:%d: %.80s%s%.120s", g->host,
		 g->port, what, detail ? ": " : "", detail ? detail : "");
}

int
gw_open(struct gw *g, const char *url)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	const char *p = strstr(url, "://");
	int one = 1;

	memset(g, 0, sizeof *g);
	g->fd = -1;
	g->timeout_ms = GW_TIMEOUT_MS;
	p = p ? p + 3 : url;
	if (sscanf(p, "%63[^:]:%d", g->host, &g->port) != 2) {
		snprintf(g->err, sizeof g->err, "bad etcd endpoint %s", url);
		return -1;
	}
	sa.sin_port = htons((uint16_t)g->port);
	if (inet_pton(AF_INET, g->host, &sa.sin_addr) != 1) {
		gw_seterr(g, "not an IPv4 address", NULL);
		return -1;
	}
	g->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (g->fd < 0 ||
	    connect(g->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		gw_seterr(g, "connect", strerror(errno));
		return -1;
	}
	setsockopt(g->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	g->cap = 65536;
	g->buf = malloc(g->cap);
	if (g->buf == NULL) {
		gw_seterr(g, "out of memory", NULL);
		return -1;
	}
	return 0;
}

void
gw_close(struct gw *g)
{
	if (g->fd >= 0)
		close(g->fd);
	g->fd = -1;
	free(g->buf);
	free(g->msg);
	g->buf = g->msg = NULL;
}

/* ------------------------------------------------------------ reading */

int
gw_readable(struct gw *g, int timeout_ms)
{
	struct pollfd p = {.fd = g->fd, .events = POLLIN};
	int rc;

	if (g->off < g->len)
		return 1;
	while ((rc = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
		;
	return rc > 0;
}

/* Read more bytes into buf; -1 on timeout, error or EOF. */
static int
fill(struct gw *g, int timeout_ms)
{
	ssize_t n;

	if (g->off > 0) {
		memmove(g->buf, g->buf + g->off, g->len - g->off);
		g->len -= g->off;
		g->off = 0;
	}
	if (g->len == g->cap) {
		char *nb = realloc(g->buf, g->cap * 2);

		if (nb == NULL) {
			gw_seterr(g, "out of memory", NULL);
			return -1;
		}
		g->buf = nb;
		g->cap *= 2;
	}
	if (!gw_readable(g, timeout_ms)) {
		gw_seterr(g, "no answer", "timed out");
		return -1;
	}
	do
		n = read(g->fd, g->buf + g->len, g->cap - g->len);
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		gw_seterr(g, "connection", n == 0 ? "closed" : strerror(errno));
		return -1;
	}
	g->len += (size_t)n;
	return 0;
}

/* One CRLF-terminated line (without it) into out. */
static int
read_line(struct gw *g, char *out, size_t cap, int timeout_ms)
{
	for (;;) {
		char *nl = memchr(g->buf + g->off, '\n', g->len - g->off);

		if (nl != NULL) {
			size_t n = (size_t)(nl - (g->buf + g->off));

			if (n > 0 && nl[-1] == '\r')
				n--;
			if (n >= cap)
				n = cap - 1;
			memcpy(out, g->buf + g->off, n);
			out[n] = '\0';
			g->off = (size_t)(nl - g->buf) + 1;
			return 0;
		}
		if (fill(g, timeout_ms) < 0)
			return -1;
	}
}

/* Append exactly n bytes to the message buffer. */
static int
read_into_msg(struct gw *g, size_t n, int timeout_ms)
{
	if (g->msg_len + n + 1 > g->msg_cap) {
		size_t ncap = g->msg_cap ? g->msg_cap : 4096;
		char *nm;

		while (ncap < g->msg_len + n + 1)
			ncap *= 2;
		nm = realloc(g->msg, ncap);
		if (nm == NULL) {
			gw_seterr(g, "out of memory", NULL);
			return -1;
		}
		g->msg = nm;
		g->msg_cap = ncap;
	}
	while (n > 0) {
		size_t have = g->len - g->off, k = have < n ? have : n;

		if (k == 0) {
			if (fill(g, timeout_ms) < 0)
				return -1;
			continue;
		}
		memcpy(g->msg + g->msg_len, g->buf + g->off, k);
		g->msg_len += k;
		g->off += k;
		n -= k;
	}
	g->msg[g->msg_len] = '\0';
	return 0;
}

/* Status line and headers. */
static int
read_head(struct gw *g, int *status, long *clen, bool *chunked)
{
	char line[1024];

	*clen = -1;
	*chunked = false;
	if (read_line(g, line, sizeof line, g->timeout_ms) < 0)
		return -1;
	if (sscanf(line, "HTTP/1.%*d %d", status) != 1) {
		gw_seterr(g, "not an HTTP answer", line);
		return -1;
	}
	for (;;) {
		if (read_line(g, line, sizeof line, g->timeout_ms) < 0)
			return -1;
		if (line[0] == '\0')
			return 0;
		if (strncasecmp(line, "Content-Length:", 15) == 0)
			*clen = strtol(line + 15, NULL, 10);
		else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0 &&
			 strstr(line + 18, "chunked") != NULL)
			*chunked = true;
	}
}

/* The next chunk's size; 0 ends the body. */
static long
chunk_size(struct gw *g, int timeout_ms)
{
	char line[64];

	if (read_line(g, line, sizeof line, timeout_ms) < 0)
		return -1;
	return strtol(line, NULL, 16);
}

static int
send_request(struct gw *g, const char *path, json_t *body)
{
	char *text = json_dumps(body, JSON_COMPACT);
	char head[256];
	size_t len;
	int n, rc = 0;

	json_decref(body);
	if (text == NULL) {
		gw_seterr(g, "cannot encode the request", path);
		return -1;
	}
	len = strlen(text);
	n = snprintf(head, sizeof head,
		     "POST %s HTTP/1.1\r\nHost: %s:%d\r\n"
		     "Content-Type: application/json\r\n"
		     "Content-Length: %zu\r\n\r\n",
		     path, g->host, g->port, len);
	if (write(g->fd, head, (size_t)n) != n ||
	    write(g->fd, text, len) != (ssize_t)len) {
		gw_seterr(g, "send", strerror(errno));
		rc = -1;
	}
	free(text);
	return rc;
}

json_t *
gw_post(struct gw *g, const char *path, json_t *body)
{
	json_error_t je;
	bool chunked;
	json_t *reply;
	int status;
	long clen;

	g->msg_len = 0;
	if (send_request(g, path, body) < 0 ||
	    read_head(g, &status, &clen, &chunked) < 0)
		return NULL;
	if (chunked) {
		long n;

		while ((n = chunk_size(g, g->timeout_ms)) > 0) {
			char crlf[4];

			if (read_into_msg(g, (size_t)n, g->timeout_ms) < 0 ||
			    read_line(g, crlf, sizeof crlf, g->timeout_ms) < 0)
				return NULL;
		}
		if (n < 0) {
			gw_seterr(g, "bad chunk", path);
			return NULL;
		}
		{
			char crlf[4];

			if (read_line(g, crlf, sizeof crlf, g->timeout_ms) < 0)
				return NULL;
		}
	} else if (clen < 0) {
		gw_seterr(g, "answer without a length", path);
		return NULL;
	} else if (read_into_msg(g, (size_t)clen, g->timeout_ms) < 0)
		return NULL;
	if (g->msg == NULL || g->msg_len == 0) {
		gw_seterr(g, "empty answer", path);
		return NULL;
	}
	if (status != 200) {
		char what[64];

		snprintf(what, sizeof what, "%s answered %d", path, status);
		gw_seterr(g, what, g->msg);
		return NULL;
	}
	reply = json_loadb(g->msg, g->msg_len, 0, &je);
	if (reply == NULL)
		gw_seterr(g, "answer is not JSON", je.text);
	return reply;
}

int
gw_watch(struct gw *g, const char *prefix, int64_t start_revision)
{
	char end[256], rev[32];
	bool chunked;
	json_t *req, *m;
	int status;
	long clen;

	gw_prefix_end(prefix, end, sizeof end);
	snprintf(rev, sizeof rev, "%lld", (long long)start_revision);
	req = json_pack("{s:{s:o,s:o,s:s,s:b}}", "create_request", "key",
			gw_b64(prefix, strlen(prefix)), "range_end",
			gw_b64(end, strlen(end)), "start_revision", rev,
			"prev_kv", 1);
	if (send_request(g, "/v3/watch", req) < 0 ||
	    read_head(g, &status, &clen, &chunked) < 0)
		return -1;
	if (status != 200 || !chunked) {
		gw_seterr(g, "watch refused", NULL);
		return -1;
	}
	g->stream = true;
	g->msg_len = 0;
	m = gw_next(g, g->timeout_ms);
	if (m == NULL)
		return -1;
	if (!json_is_true(json_object_get(m, "created"))) {
		gw_seterr(g, "watch not created", NULL);
		json_decref(m);
		return -1;
	}
	json_decref(m);
	return 0;
}

json_t *
gw_next(struct gw *g, int timeout_ms)
{
	for (;;) {
		char *nl = g->msg ? memchr(g->msg, '\n', g->msg_len) : NULL;

		if (nl != NULL) {
			size_t n = (size_t)(nl - g->msg);
			json_error_t je;
			json_t *m = json_loadb(g->msg, n, 0, &je), *res;

			memmove(g->msg, nl + 1, g->msg_len - n - 1);
			g->msg_len -= n + 1;
			if (m == NULL) {
				gw_seterr(g, "watch message is not JSON",
					  je.text);
				return NULL;
			}
			res = json_incref(json_object_get(m, "result"));
			json_decref(m);
			if (res == NULL) {
				gw_seterr(g, "watch error", NULL);
				return NULL;
			}
			if (json_is_true(json_object_get(res, "canceled"))) {
				gw_seterr(g, "watch canceled", NULL);
				json_decref(res);
				return NULL;
			}
			return res;
		}
		{
			char crlf[4];
			/* A whole chunk at a time: size line, data, CRLF. */
			long n = chunk_size(g, timeout_ms);

			if (n <= 0) {
				if (n == 0)
					gw_seterr(g, "watch stream ended",
						  NULL);
				return NULL;
			}
			if (read_into_msg(g, (size_t)n, timeout_ms) < 0 ||
			    read_line(g, crlf, sizeof crlf, timeout_ms) < 0)
				return NULL;
		}
	}
}

/* ------------------------------------------------------------ helpers */

int64_t
gw_int(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	return 0;
}

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

json_t *
gw_b64(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
	json_t *j;
	size_t i;

	if (out == NULL)
		return NULL;
	for (i = 0; i + 2 < n; i += 3) {
		*o++ = b64[p[i] >> 2];
		*o++ = b64[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		*o++ = b64[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
		*o++ = b64[p[i + 2] & 63];
	}
	if (i < n) {
		*o++ = b64[p[i] >> 2];
		if (i + 1 < n) {
			*o++ = b64[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
			*o++ = b64[(p[i + 1] & 15) << 2];
		} else {
			*o++ = b64[(p[i] & 3) << 4];
			*o++ = '=';
		}
		*o++ = '=';
	}
	*o = '\0';
	j = json_string(out);
	free(out);
	return j;
}

int
gw_unb64(const char *in, char *out, size_t cap)
{
	unsigned acc = 0;
	int bits = 0;
	size_t n = 0;

	for (; *in && *in != '='; in++) {
		const char *c = strchr(b64, *in);

		if (c == NULL)
			continue;
		acc = (acc << 6) | (unsigned)(c - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n + 1 >= cap)
				return -1;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	out[n] = '\0';
	return (int)n;
}

void
gw_prefix_end(const char *prefix, char *out, size_t cap)
{
	size_t n = strlen(prefix);

	snprintf(out, cap, "%s", prefix);
	if (n > 0 && n < cap)
		out[n - 1] = (char)(out[n - 1] + 1);
}
