/*
 * gw: a small blocking client of etcd's v3 JSON gateway, for the bench's
 * cluster section. One struct gw is one HTTP/1.1 keep-alive connection to
 * one member: either unary requests one after another (gw_post), or one
 * watch stream (gw_watch, then gw_next per message).
 *
 * The daemon has its own asynchronous client (arbiter/etcd.c); the bench
 * needs blocking calls from many small processes, and etcd's lock service
 * (/v3/lock/lock, /v3/lock/unlock), which the daemon never uses.
 */
#ifndef ARBITER_BENCH_GW_H
#define ARBITER_BENCH_GW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct gw {
	int fd;
	char host[64];
	int port;
	int timeout_ms; /* one request, or one stream message (default 30 s) */
	char err[256];	/* what went wrong, naming the member */
	char *buf;	/* bytes read and not used yet: buf[off..len) */
	size_t off, len, cap;
	/* A watch stream: chunked; messages end with '\n'. */
	bool stream;
	char *msg;
	size_t msg_len, msg_cap;
};

/* Connect to url ("http://127.0.0.1:2379"); -1 with g->err set. */
int gw_open(struct gw *g, const char *url);
void gw_close(struct gw *g);
/* POST body (a JSON object, stolen) to path; the reply, or NULL with
 * g->err set (an HTTP status other than 200 is an error). */
json_t *gw_post(struct gw *g, const char *path, json_t *body);
/* Start a watch of every key under prefix from start_revision, with
 * prev_kv; returns once etcd says the watch is created. The connection
 * serves only this stream from then on. */
int gw_watch(struct gw *g, const char *prefix, int64_t start_revision);
/* The next message of the stream (its "result" object), or NULL with
 * g->err set (timeout, end of stream, a canceled watch). */
json_t *gw_next(struct gw *g, int timeout_ms);
/* Wait at most timeout_ms for stream bytes; 1 when some are there. */
int gw_readable(struct gw *g, int timeout_ms);

/* An int64 the gateway sends as a string (or a number); 0 when absent. */
int64_t gw_int(json_t *obj, const char *key);
/* Base64 of n bytes, as a new JSON string. */
json_t *gw_b64(const char *s, size_t n);
/* Decode base64 into out (NUL-terminated); the length, -1 when too long. */
int gw_unb64(const char *in, char *out, size_t cap);
/* The range end that selects every key under prefix. */
void gw_prefix_end(const char *prefix, char *out, size_t cap);

#endif
