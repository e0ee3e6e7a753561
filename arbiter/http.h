/*
 * http: the request head parser of the metrics port, a pure function over a
 * byte buffer (no I/O, no allocation, no clock), so that it can be tested
 * and fuzzed on its own. See http.c for what it accepts and refuses.
 */
#ifndef ARBITER_HTTP_H
#define ARBITER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum http_result {
	HTTP_MORE,    /* no whole head yet: read more and call again */
	HTTP_REQUEST, /* a request to serve once its body is dropped */
	HTTP_ERROR,   /* answer status with text, then close */
};

enum http_route {
	HTTP_ROUTE_NONE, /* 404 */
	HTTP_ROUTE_METRICS,
	HTTP_ROUTE_HEALTHZ,
};

struct http_request {
	/* Where the scan resumes; set by http_request_init only. */
	size_t scanned; /* bytes looked at */
	size_t line;	/* where the line being read starts */
	size_t start;	/* where the request line starts */
	bool seen_line; /* a non-empty line has been read */
	/* The result, for HTTP_REQUEST and HTTP_ERROR. */
	size_t head_len;   /* bytes of the head, through its empty line */
	uint64_t body_len; /* Content-Length, 0 when none */
	bool head_only;	   /* HEAD: the reply carries no body */
	enum http_route route;
	int status;	    /* HTTP_ERROR: the status to answer, else 0 */
	const char *reason; /* its reason phrase */
	const char *text;   /* the reply's body text, one line */
	const char *extra; /* header lines to add ("Allow: ...\r\n"), or NULL */
};

void http_request_init(struct http_request *r);

/*
 * Look for a whole request head in buf[0, len) and parse it. Call again
 * with the same bytes and more appended after HTTP_MORE: only the new bytes
 * are searched, so a peer sending one byte at a time costs linear time.
 * max_head bounds the head (HTTP_ERROR 431 past it, even before its end
 * has arrived), max_body the declared body (413).
 */
enum http_result http_parse(struct http_request *r, const char *buf, size_t len,
			    uint64_t max_head, uint64_t max_body);

/* The reason phrase of a status this module or the metrics port answers. */
const char *http_reason(int status);

#endif
