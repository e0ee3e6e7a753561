/*
 * http: the metrics port's request head parser (RFC 9112), strict where
 * leniency could make two readers disagree about a request, lenient where
 * clients in the field differ:
 *
 *   - A line ends at LF; one CR right before it is dropped. A CR anywhere
 *     else, or any other control byte (NUL included, TAB outside header
 *     values), is a 400.
 *   - Empty lines before the request line are skipped (RFC 9112 2.2).
 *   - The request line is METHOD SP TARGET SP HTTP/1.x with single spaces.
 *     Another major version is a 505; a method other than GET and HEAD a
 *     405. The target is a path ("/metrics?x=1") or an absolute URI
 *     ("http://host/metrics"), whose path is used.
 *   - Header lines must be NAME ":" value, NAME a token with nothing between
 *     it and the colon. Folded lines (starting with SP or HTAB) are a 400.
 *   - Content-Length is digits only; repeated, it must repeat the same
 *     value. Over max_body it is a 413. Transfer-Encoding (chunked or any
 *     other) is refused with a 411: the body must have a Content-Length.
 *   - Host is not required, so that probes written by hand still work.
 */
#include <string.h>

#include "http.h"

void
http_request_init(struct http_request *r)
{
	memset(r, 0, sizeof *r);
}

const char *
http_reason(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 411:
		return "Length Required";
	case 413:
		return "Content Too Large";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 503:
		return "Service Unavailable";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Error";
	}
}

static enum http_result
fail(struct http_request *r, int status, const char *text)
{
	r->status = status;
	r->reason = http_reason(status);
	r->text = text;
	r->extra = NULL;
	return HTTP_ERROR;
}

/* RFC 9110 tchar: the bytes of a method or a header name. */
static bool
is_tchar(unsigned char ch)
{
	if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	    (ch >= '0' && ch <= '9'))
		return true;
	return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool
is_token(const char *p, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!is_tchar((unsigned char)p[i]))
			return false;
	}
	return true;
}

static bool
names_equal(const char *p, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n && name[i] != '\0'; i++) {
		char a = p[i], b = name[i];

		if (a >= 'A' && a <= 'Z')
			a = (char)(a - 'A' + 'a');
		if (b >= 'A' && b <= 'Z')
			b = (char)(b - 'A' + 'a');
		if (a != b)
			return false;
	}
	return i == n && name[i] == '\0';
}

/* The line [p, end) without its LF: drop one CR before it, refuse any
 * other control byte but HTAB (allowed only where tab_ok). */
static bool
line_clean(const char *p, const char **end, bool tab_ok)
{
	if (*end > p && (*end)[-1] == '\r')
		(*end)--;
	for (const char *q = p; q < *end; q++) {
		unsigned char ch = (unsigned char)*q;

		if ((ch < 0x20 && !(tab_ok && ch == '\t')) || ch == 0x7f)
			return false;
	}
	return true;
}

static enum http_result
request_line(struct http_request *r, const char *p, const char *end)
{
	const char *sp1, *sp2, *v, *path, *q;
	size_t mlen, plen;

	if (!line_clean(p, &end, false))
		return fail(r, 400,
			    "control character or bare CR in the "
			    "request line\n");
	sp1 = memchr(p, ' ', (size_t)(end - p));
	sp2 =
	    sp1 != NULL ? memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1)) : NULL;
	if (sp1 == NULL || sp2 == NULL || sp2 == sp1 + 1 ||
	    !is_token(p, (size_t)(sp1 - p)) ||
	    memchr(sp2 + 1, ' ', (size_t)(end - sp2 - 1)) != NULL)
		return fail(r, 400,
			    "expected a request line such as 'GET "
			    "/metrics HTTP/1.1'\n");
	v = sp2 + 1;
	if (end - v != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' ||
	    v[5] > '9' || v[6] != '.' || v[7] < '0' || v[7] > '9')
		return fail(r, 400,
			    "expected a request line such as 'GET "
			    "/metrics HTTP/1.1'\n");
	if (v[5] != '1')
		return fail(r, 505,
			    "only HTTP/1.0 and HTTP/1.1 are served "
			    "here\n");
	mlen = (size_t)(sp1 - p);
	r->head_only = mlen == 4 && memcmp(p, "HEAD", 4) == 0;
	if (!r->head_only && !(mlen == 3 && memcmp(p, "GET", 3) == 0)) {
		fail(r, 405, "only GET and HEAD are served here\n");
		r->extra = "Allow: GET, HEAD\r\n";
		return HTTP_ERROR;
	}

	/* The path: of an absolute URI, what follows its authority. */
	path = sp1 + 1;
	plen = (size_t)(sp2 - path);
	if (plen >= 7 && (names_equal(path, 7, "http://") ||
			  (plen >= 8 && names_equal(path, 8, "https://")))) {
		const char *auth = path + (path[4] == ':' ? 7 : 8);
		const char *slash = memchr(auth, '/', (size_t)(sp2 - auth));

		if (slash == NULL)
			slash = sp2; /* "http://host": the root */
		plen = (size_t)(sp2 - slash);
		path = slash;
	} else if (path[0] != '/') {
		return fail(r, 400,
			    "the request target must be a path such as "
			    "/metrics\n");
	}
	q = memchr(path, '?', plen);
	if (q != NULL)
		plen = (size_t)(q - path);
	q = memchr(path, '#', plen);
	if (q != NULL)
		plen = (size_t)(q - path);
	r->route = HTTP_ROUTE_NONE;
	if (plen == 8 && memcmp(path, "/metrics", 8) == 0)
		r->route = HTTP_ROUTE_METRICS;
	else if (plen == 8 && memcmp(path, "/healthz", 8) == 0)
		r->route = HTTP_ROUTE_HEALTHZ;
	return HTTP_REQUEST;
}

/* Content-Length's value: digits only, saturating far above any limit. */
static bool
parse_length(const char *v, size_t n, uint64_t *out)
{
	uint64_t d = 0;

	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return false;
		if (d < UINT64_MAX / 100)
			d = d * 10 + (uint64_t)(v[i] - '0');
		else
			d = UINT64_MAX / 100;
	}
	*out = d;
	return true;
}

/* The head is [p, p + n), request line first, ending with its empty line. */
static enum http_result
parse_head(struct http_request *r, const char *p, size_t n, uint64_t max_body)
{
	const char *end = p + n, *eol = memchr(p, '\n', n);
	bool have_len = false, chunked = false;
	uint64_t clen = 0;

	if (request_line(r, p, eol) != HTTP_REQUEST)
		return HTTP_ERROR;
	for (p = eol + 1; p < end;) {
		const char *le = memchr(p, '\n', (size_t)(end - p));
		const char *next = le + 1, *colon, *v, *ve;
		uint64_t d;

		if (!line_clean(p, &le, true))
			return fail(r, 400,
				    "control character or bare CR in "
				    "a header line\n");
		if (le == p)
			break; /* the empty line */
		if (*p == ' ' || *p == '\t')
			return fail(r, 400,
				    "folded header lines are not "
				    "accepted; send each header on "
				    "one line\n");
		colon = memchr(p, ':', (size_t)(le - p));
		if (colon == NULL || !is_token(p, (size_t)(colon - p)))
			return fail(r, 400,
				    "expected header lines such as "
				    "'Host: example'\n");
		v = colon + 1;
		ve = le;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		if (names_equal(p, (size_t)(colon - p), "Content-Length")) {
			if (!parse_length(v, (size_t)(ve - v), &d))
				return fail(r, 400,
					    "bad Content-Length: "
					    "expected digits\n");
			if (have_len && d != clen)
				return fail(r, 400,
					    "conflicting "
					    "Content-Length headers\n");
			have_len = true;
			clen = d;
		} else if (names_equal(p, (size_t)(colon - p),
				       "Transfer-Encoding")) {
			chunked = true;
		}
		p = next;
	}
	if (chunked)
		return fail(r, 411,
			    "Transfer-Encoding is not accepted; send "
			    "a request body with a Content-Length\n");
	if (clen > max_body)
		return fail(r, 413,
			    "request body over "
			    "metrics.max_body_bytes\n");
	r->body_len = clen;
	r->status = 0;
	r->reason = http_reason(200);
	r->text = NULL;
	r->extra = NULL;
	return HTTP_REQUEST;
}

enum http_result
http_parse(struct http_request *r, const char *buf, size_t len,
	   uint64_t max_head, uint64_t max_body)
{
	size_t i = r->scanned;

	/* Find the head's end: the first empty line after a non-empty one.
	 * Never past max_head + 1 bytes: that much is already too long. */
	if (len > 0 && len - 1 > max_head)
		len = (size_t)max_head + 1;
	while (r->head_len == 0 && i < len) {
		const char *lf = memchr(buf + i, '\n', len - i);
		size_t at, n;

		if (lf == NULL) {
			i = len;
			break;
		}
		at = (size_t)(lf - buf);
		n = at - r->line;
		if (n == 0 || (n == 1 && buf[r->line] == '\r')) {
			if (r->seen_line)
				r->head_len = at + 1;
			else
				r->start = at + 1; /* empty, before the head */
		} else {
			r->seen_line = true;
		}
		r->line = at + 1;
		i = at + 1;
	}
	r->scanned = i;
	if (r->head_len == 0 ? len > max_head : r->head_len > max_head) {
		r->head_only = len - r->start >= 5 &&
			       memcmp(buf + r->start, "HEAD ", 5) == 0;
		return fail(r, 431,
			    "request head over "
			    "metrics.max_header_bytes\n");
	}
	if (r->head_len == 0)
		return HTTP_MORE;
	return parse_head(r, buf + r->start, r->head_len - r->start, max_body);
}
