/*
 * Unit tests for the metrics port's request head parser (arbiter/http.c).
 *
 * Everything here is bytes in, a verdict out: no sockets and no clock.
 * Every request is parsed whole and also fed one byte at a time, as a peer
 * trickling it would send it, and both must give the same verdict; every
 * status the parser can answer has its cases.
 */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define MAX_HEAD 8192
#define MAX_BODY 4096

TestSuite(http);

/* ------------------------------------------------------------ helpers */

static enum http_result
parse_whole(const char *buf, size_t len, uint64_t max_head, uint64_t max_body,
	    struct http_request *r)
{
	http_request_init(r);
	return http_parse(r, buf, len, max_head, max_body);
}

/* Feed buf one byte more at a time, each prefix in an exact-size copy (a
 * read past its end is a read past what has arrived). The verdict comes at
 * the first prefix that is not HTTP_MORE and must match parsing it whole. */
static enum http_result
parse_bytewise(const char *buf, size_t len, uint64_t max_head,
	       uint64_t max_body, struct http_request *r)
{
	struct http_request whole;
	enum http_result want =
	    parse_whole(buf, len, max_head, max_body, &whole);
	enum http_result got = HTTP_MORE;

	http_request_init(r);
	for (size_t n = 1; n <= len && got == HTTP_MORE; n++) {
		char *prefix = malloc(n);

		cr_assert_not_null(prefix);
		memcpy(prefix, buf, n);
		got = http_parse(r, prefix, n, max_head, max_body);
		free(prefix);
		if (got == HTTP_MORE)
			cr_assert_eq(r->scanned, n,
				     "after HTTP_MORE all %zu bytes are "
				     "looked at, not %zu",
				     n, r->scanned);
	}
	cr_assert_eq(got, want, "byte at a time: %d, whole: %d", got, want);
	cr_assert_eq(r->status, whole.status);
	cr_assert_eq(r->head_len, whole.head_len);
	cr_assert_eq(r->body_len, whole.body_len);
	cr_assert_eq(r->head_only, whole.head_only);
	cr_assert_eq(r->route, whole.route);
	cr_assert_eq(r->text, whole.text);
	cr_assert_eq(r->extra, whole.extra);
	return got;
}

/* s is a good request for route; its head is head_len bytes. */
static void
assert_request(const char *s, size_t len, enum http_route route, bool head_only,
	       size_t head_len, uint64_t body_len)
{
	struct http_request r;

	cr_assert_eq(parse_bytewise(s, len, MAX_HEAD, MAX_BODY, &r),
		     HTTP_REQUEST, "refused with %d: %s", r.status,
		     r.text ? r.text : "");
	cr_assert_eq(r.status, 0);
	cr_assert_eq(r.route, route, "route %d, want %d", r.route, route);
	cr_assert_eq(r.head_only, head_only);
	cr_assert_eq(r.head_len, head_len, "head of %zu bytes, want %zu",
		     r.head_len, head_len);
	cr_assert_eq(r.body_len, body_len);
}

#define REQUEST(s, route, head_only)                                           \
	assert_request(s, sizeof(s) - 1, route, head_only, sizeof(s) - 1, 0)

/* s (len bytes) is refused with status; its text names the reason. */
static struct http_request
assert_refused_n(const char *s, size_t len, int status, const char *why)
{
	struct http_request r;

	cr_assert_eq(parse_bytewise(s, len, MAX_HEAD, MAX_BODY, &r), HTTP_ERROR,
		     "'%.*s' was not refused", (int)len, s);
	cr_assert_eq(r.status, status, "'%.*s': %d, want %d", (int)len, s,
		     r.status, status);
	cr_assert_str_eq(r.reason, http_reason(status));
	cr_assert_not_null(r.text);
	cr_assert(strstr(r.text, why) != NULL, "'%s' does not say '%s'", r.text,
		  why);
	cr_assert_eq(strchr(r.text, '\n'), r.text + strlen(r.text) - 1,
		     "the reply text is one line");
	return r;
}

#define REFUSED(s, status, why) assert_refused_n(s, sizeof(s) - 1, status, why)

/* ------------------------------------------------------------ good requests */

Test(http, get_metrics_and_healthz)
{
	REQUEST("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", HTTP_ROUTE_METRICS,
		false);
	REQUEST("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", HTTP_ROUTE_HEALTHZ,
		false);
	REQUEST("GET /metrics HTTP/1.0\r\n\r\n", HTTP_ROUTE_METRICS, false);
}

Test(http, head_is_served_without_a_body)
{
	REQUEST("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", HTTP_ROUTE_METRICS,
		true);
	REQUEST("HEAD /nowhere HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, true);
}

Test(http, what_prometheus_and_kubelet_send)
{
	REQUEST("GET /metrics HTTP/1.1\r\nHost: 10.0.0.7:9477\r\n"
		"User-Agent: Prometheus/2.45.0\r\nAccept: application/"
		"openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
		",*/*;q=0.1\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-"
		"Timeout-Seconds: 10\r\n\r\n",
		HTTP_ROUTE_METRICS, false);
	REQUEST("GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:9477\r\n"
		"User-Agent: kube-probe/1.29\r\nAccept: */*\r\n"
		"Connection: close\r\n\r\n",
		HTTP_ROUTE_HEALTHZ, false);
}

Test(http, bare_lf_line_ends_and_mixed_ends)
{
	REQUEST("GET /metrics HTTP/1.1\nHost: x\n\n", HTTP_ROUTE_METRICS,
		false);
	/* LF-ended lines, then a CRLF empty line: a whole head. */
	REQUEST("GET /healthz HTTP/1.1\nHost: x\n\r\n", HTTP_ROUTE_HEALTHZ,
		false);
	REQUEST("GET /healthz HTTP/1.1\r\nHost: x\n\r\n", HTTP_ROUTE_HEALTHZ,
		false);
	REQUEST("GET /healthz HTTP/1.1\r\n\n", HTTP_ROUTE_HEALTHZ, false);
}

Test(http, empty_lines_before_the_request_line_are_skipped)
{
	REQUEST("\r\nGET /metrics HTTP/1.1\r\n\r\n", HTTP_ROUTE_METRICS, false);
	REQUEST("\n\r\n\nGET /healthz HTTP/1.1\n\n", HTTP_ROUTE_HEALTHZ, false);
}

Test(http, query_strings_and_fragments_are_not_part_of_the_path)
{
	REQUEST("GET /metrics?name[]=x&y HTTP/1.1\r\n\r\n", HTTP_ROUTE_METRICS,
		false);
	REQUEST("GET /healthz? HTTP/1.1\r\n\r\n", HTTP_ROUTE_HEALTHZ, false);
	REQUEST("GET /metrics#top HTTP/1.1\r\n\r\n", HTTP_ROUTE_METRICS, false);
	REQUEST("GET /x?/metrics HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
}

Test(http, absolute_form_targets_use_their_path)
{
	REQUEST("GET http://10.0.0.7:9477/metrics HTTP/1.1\r\n\r\n",
		HTTP_ROUTE_METRICS, false);
	REQUEST("GET HTTPS://host/healthz?x HTTP/1.1\r\n\r\n",
		HTTP_ROUTE_HEALTHZ, false);
	REQUEST("GET http://host HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET http:// HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
}

Test(http, other_paths_route_nowhere)
{
	REQUEST("GET / HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET /metrics/ HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET /metricsx HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET /METRICS HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET //metrics HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET /%6detrics HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
	REQUEST("GET /metr\xc3\xa9s HTTP/1.1\r\n\r\n", HTTP_ROUTE_NONE, false);
}

Test(http, header_whitespace_and_values)
{
	REQUEST("GET /metrics HTTP/1.1\r\nHost:x\r\nX-A: \t a b \t\r\n"
		"X-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
		HTTP_ROUTE_METRICS, false);
}

Test(http, a_declared_body_is_reported)
{
	static const char s[] = "GET /metrics HTTP/1.1\r\ncontent-LENGTH: "
				"  12 \r\n\r\nhello world!";

	assert_request(s, sizeof s - 1, HTTP_ROUTE_METRICS, false,
		       sizeof s - 1 - 12, 12);
}

Test(http, a_repeated_equal_content_length_is_accepted)
{
	static const char s[] = "GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n"
				"Content-Length: 003\r\n\r\n";

	assert_request(s, sizeof s - 1, HTTP_ROUTE_METRICS, false, sizeof s - 1,
		       3);
}

Test(http, leading_zeros_and_zero_length)
{
	REQUEST("GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
		HTTP_ROUTE_METRICS, false);
	REQUEST("GET /metrics HTTP/1.1\r\nContent-Length: "
		"000000000000000000000000000000\r\n\r\n",
		HTTP_ROUTE_METRICS, false);
}

Test(http, bytes_after_the_head_do_not_change_it)
{
	/* A pipelined second request, or garbage: not part of this one. */
	static const char one[] = "GET /metrics HTTP/1.1\r\n\r\n";
	char buf[256];
	struct http_request r;

	snprintf(buf, sizeof buf, "%sGET /healthz HTTP/1.1\r\n\r\n", one);
	assert_request(buf, strlen(buf), HTTP_ROUTE_METRICS, false,
		       sizeof one - 1, 0);
	memcpy(buf, one, sizeof one - 1);
	memcpy(buf + sizeof one - 1, "\x00\xff\r\n\r\nPOST", 9);
	assert_request(buf, sizeof one - 1 + 9, HTTP_ROUTE_METRICS, false,
		       sizeof one - 1, 0);
	/* Parsing again after the verdict gives the same verdict. */
	cr_assert_eq(
	    parse_whole(buf, sizeof one - 1 + 9, MAX_HEAD, MAX_BODY, &r),
	    HTTP_REQUEST);
	cr_assert_eq(
	    http_parse(&r, buf, sizeof one - 1 + 9, MAX_HEAD, MAX_BODY),
	    HTTP_REQUEST);
	cr_assert_eq(r.head_len, sizeof one - 1);
}

/* ------------------------------------------------------------ need more */

Test(http, a_head_without_its_empty_line_needs_more)
{
	static const char *const partial[] = {
	    "",
	    "G",
	    "GET /metrics HTTP/1.1",
	    "GET /metrics HTTP/1.1\r",
	    "GET /metrics HTTP/1.1\r\n",
	    "GET /metrics HTTP/1.1\r\nHost: x\r\n",
	    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r",
	    "\r\n\r\n\n\n", /* empty lines only: no request line yet */
	    "\r",
	};

	for (size_t i = 0; i < sizeof partial / sizeof partial[0]; i++) {
		struct http_request r;

		cr_assert_eq(parse_whole(partial[i], strlen(partial[i]),
					 MAX_HEAD, MAX_BODY, &r),
			     HTTP_MORE, "'%s'", partial[i]);
		cr_assert_eq(r.scanned, strlen(partial[i]));
		cr_assert_eq(r.status, 0);
	}
}

/* ------------------------------------------------------------ 400 */

Test(http, malformed_request_lines_are_400)
{
	REFUSED("GET /metrics\r\n\r\n", 400, "request line");
	REFUSED("GET\r\n\r\n", 400, "request line");
	REFUSED("/metrics HTTP/1.1\r\n\r\n", 400, "request line");
	REFUSED("GET  /metrics HTTP/1.1\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics  HTTP/1.1\r\n\r\n", 400, "request line");
	REFUSED(" GET /metrics HTTP/1.1\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics HTTP/1.1 \r\n\r\n", 400, "request line");
	REFUSED("GET /metrics HTTP/1.1 x\r\n\r\n", 400, "request line");
	REFUSED("GET /a b HTTP/1.1\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics http/1.1\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics HTTP/1.1junk\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics HTTP/1.\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics HTTP/1\r\n\r\n", 400, "request line");
	REFUSED("GET /metrics HTTP/11.1\r\n\r\n", 400, "request line");
	REFUSED("G(T /metrics HTTP/1.1\r\n\r\n", 400, "request line");
	REFUSED("GET metrics HTTP/1.1\r\n\r\n", 400, "must be a path");
	REFUSED("GET * HTTP/1.1\r\n\r\n", 400, "must be a path");
	REFUSED("GET ftp://x/metrics HTTP/1.1\r\n\r\n", 400, "must be a path");
}

Test(http, control_bytes_and_bare_cr_in_the_request_line_are_400)
{
	REFUSED("GET /metrics\x00 HTTP/1.1\r\n\r\n", 400, "control character");
	REFUSED("GET /met\x00rics HTTP/1.1\r\n\r\n", 400, "control character");
	REFUSED("GET /metrics HTTP/1.1\rX: y\r\n\r\n", 400, "bare CR");
	REFUSED("GET\t/metrics HTTP/1.1\r\n\r\n", 400, "control character");
	REFUSED("GET /metrics\x7f HTTP/1.1\r\n\r\n", 400, "control character");
	REFUSED("GET /metrics HTTP/1.1\r\r\n\r\n", 400, "bare CR");
}

Test(http, malformed_header_lines_are_400)
{
	/* Folding: a reader that unfolds and one that does not disagree. */
	REFUSED("GET /metrics HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, "folded");
	REFUSED("GET /metrics HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", 400, "folded");
	REFUSED("GET /metrics HTTP/1.1\r\n Host: x\r\n\r\n", 400, "folded");
	/* Whitespace between the name and the colon (RFC 9112 5.1). */
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length : 5\r\n\r\n", 400,
		"header lines");
	REFUSED("GET /metrics HTTP/1.1\r\nGarbage\r\n\r\n", 400,
		"header lines");
	REFUSED("GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n", 400,
		"header lines");
	REFUSED("GET /metrics HTTP/1.1\r\nX Y: z\r\n\r\n", 400, "header lines");
	REFUSED("GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400,
		"control character");
	REFUSED("GET /metrics HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "bare CR");
	REFUSED("GET /metrics HTTP/1.1\r\nX: a\x1b[0m\r\n\r\n", 400,
		"control character");
}

Test(http, bad_content_lengths_are_400)
{
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length:\r\n\r\n", 400,
		"Content-Length");
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400,
		"Content-Length");
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400,
		"Content-Length");
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", 400,
		"Content-Length");
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400,
		"Content-Length");
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400,
		"Content-Length");
	/* Two lengths: two readers could each pick another. */
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: 0\r\n"
		"Content-Length: 5\r\n\r\nabcde",
		400, "conflicting Content-Length");
}

/* ------------------------------------------------------------ 405, 505 */

Test(http, other_methods_are_405_with_allow)
{
	static const char *const methods[] = {
	    "POST",  "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT",
	    "PATCH", "get", "head",   "GETS",	 "BREW",
	};

	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
		char buf[128];
		struct http_request r;

		snprintf(buf, sizeof buf, "%s /metrics HTTP/1.1\r\n\r\n",
			 methods[i]);
		r = assert_refused_n(buf, strlen(buf), 405, "GET and HEAD");
		cr_assert_str_eq(r.extra, "Allow: GET, HEAD\r\n");
		cr_assert_not(r.head_only);
	}
}

Test(http, other_http_versions_are_505)
{
	REFUSED("GET /metrics HTTP/2.0\r\n\r\n", 505, "HTTP/1.1");
	REFUSED("GET /metrics HTTP/0.9\r\n\r\n", 505, "HTTP/1.1");
	REFUSED("GET /metrics HTTP/3.0\r\n\r\n", 505, "HTTP/1.1");
}

/* ------------------------------------------------------------ 411, 413 */

Test(http, transfer_encoding_is_411)
{
	REFUSED("GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
		"0\r\n\r\n",
		411, "Content-Length");
	REFUSED("GET /metrics HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
		411, "Content-Length");
	/* With a Content-Length too (the smuggling pair). */
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n"
		"Transfer-Encoding: chunked\r\n\r\n",
		411, "Transfer-Encoding");
	REFUSED("GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
		"Content-Length: 5\r\n\r\n",
		411, "Transfer-Encoding");
}

Test(http, a_body_over_the_limit_is_413)
{
	char buf[128];
	struct http_request r;

	snprintf(buf, sizeof buf,
		 "GET /metrics HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
		 MAX_BODY + 1);
	assert_refused_n(buf, strlen(buf), 413, "max_body_bytes");
	snprintf(buf, sizeof buf,
		 "GET /metrics HTTP/1.1\r\nContent-Length: %d\r\n\r\n",
		 MAX_BODY);
	cr_assert_eq(parse_whole(buf, strlen(buf), MAX_HEAD, MAX_BODY, &r),
		     HTTP_REQUEST);
	cr_assert_eq(r.body_len, MAX_BODY);
	/* Numbers past 64 bits saturate, never wrap to a small length. */
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: "
		"18446744073709551617\r\n\r\n",
		413, "max_body_bytes");
	REFUSED("GET /metrics HTTP/1.1\r\nContent-Length: "
		"99999999999999999999999999999999999999\r\n\r\n",
		413, "max_body_bytes");
	/* No body allowed at all. */
	snprintf(buf, sizeof buf,
		 "GET /metrics HTTP/1.1\r\nContent-Length: 1\r\n\r\n");
	cr_assert_eq(parse_whole(buf, strlen(buf), MAX_HEAD, 0, &r),
		     HTTP_ERROR);
	cr_assert_eq(r.status, 413);
}

Test(http, a_head_request_refused_has_no_body_either)
{
	struct http_request r;

	r = REFUSED(
	    "HEAD /metrics HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413,
	    "max_body_bytes");
	cr_assert(r.head_only);
	r = REFUSED("HEAD /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
		    "\r\n",
		    411, "Content-Length");
	cr_assert(r.head_only);
	r = REFUSED("HEAD /metrics HTTP/1.1\r\nX\r\n\r\n", 400, "header");
	cr_assert(r.head_only);
}

/* ------------------------------------------------------------ 431 */

static char *
head_of(size_t len, const char *start)
{
	char *s = malloc(len);
	size_t n = strlen(start);

	cr_assert_not_null(s);
	memcpy(s, start, n);
	memset(s + n, 'a', len - n - 4);
	memcpy(s + len - 4, "\r\n\r\n", 4);
	return s;
}

Test(http, a_head_at_the_limit_is_served_one_byte_more_is_431)
{
	char *s = head_of(MAX_HEAD, "GET /metrics HTTP/1.1\r\nX-Pad: ");
	char *t = head_of(MAX_HEAD + 1, "HEAD /metrics HTTP/1.1\r\nX-Pad: ");
	struct http_request r;

	assert_request(s, MAX_HEAD, HTTP_ROUTE_METRICS, false, MAX_HEAD, 0);
	r = assert_refused_n(t, MAX_HEAD + 1, 431, "max_header_bytes");
	cr_assert(r.head_only);
	/* Refused as soon as one byte past the limit is in, before the end
	 * of the head arrives, and reading only max + 1 bytes of it. */
	cr_assert_eq(parse_whole(s, MAX_HEAD, MAX_HEAD - 1, MAX_BODY, &r),
		     HTTP_ERROR);
	cr_assert_eq(r.status, 431);
	cr_assert_eq(parse_whole(s, MAX_HEAD - 4, MAX_HEAD - 5, MAX_BODY, &r),
		     HTTP_ERROR);
	cr_assert_eq(r.status, 431);
	cr_assert_leq(r.scanned, MAX_HEAD - 4);
	free(s);
	free(t);
}

Test(http, a_line_without_end_is_431_at_the_limit)
{
	char *s = malloc(MAX_HEAD + 1);
	struct http_request r;

	cr_assert_not_null(s);
	memset(s, 'G', MAX_HEAD + 1);
	cr_assert_eq(parse_whole(s, MAX_HEAD, MAX_HEAD, MAX_BODY, &r),
		     HTTP_MORE);
	r = assert_refused_n(s, MAX_HEAD + 1, 431, "max_header_bytes");
	cr_assert_not(r.head_only);
	free(s);
}

Test(http, endless_empty_lines_are_431)
{
	char *s = malloc(MAX_HEAD + 2);

	cr_assert_not_null(s);
	for (size_t i = 0; i < MAX_HEAD + 2; i += 2)
		memcpy(s + i, "\r\n", 2);
	assert_refused_n(s, MAX_HEAD + 2, 431, "max_header_bytes");
	free(s);
}

Test(http, a_limit_of_all_ones_does_not_wrap)
{
	static const char s[] = "GET /metrics HTTP/1.1\r\n\r\n";
	struct http_request r;

	cr_assert_eq(parse_whole(s, sizeof s - 1, UINT64_MAX, UINT64_MAX, &r),
		     HTTP_REQUEST);
	cr_assert_eq(r.route, HTTP_ROUTE_METRICS);
}

/* ------------------------------------------------------------ reasons */

Test(http, every_status_the_port_answers_has_its_reason)
{
	static const struct {
		int status;
		const char *reason;
	} want[] = {
	    {200, "OK"},
	    {400, "Bad Request"},
	    {404, "Not Found"},
	    {405, "Method Not Allowed"},
	    {408, "Request Timeout"},
	    {411, "Length Required"},
	    {413, "Content Too Large"},
	    {431, "Request Header Fields Too Large"},
	    {500, "Internal Server Error"},
	    {503, "Service Unavailable"},
	    {505, "HTTP Version Not Supported"},
	};

	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		cr_assert_str_eq(http_reason(want[i].status), want[i].reason);
}
