/*
 * fuzz_http: the metrics port's request head parser (http.c) on any bytes.
 *
 * Each input is parsed under two sets of limits (the defaults, and small
 * ones so that 431 and 413 are reached within libFuzzer's input sizes):
 *   - whole, and again one byte more at a time as a trickling peer sends
 *     it, and from an exact-size copy of a prefix then the rest: every way
 *     must give the same verdict;
 *   - the verdict must hold together: a good request's head ends with an
 *     empty line within the limit, where a plain reference scan finds it,
 *     and parsing the head alone gives the same; a refusal has a status the
 *     port may answer, its reason and a one-line text.
 * A violation aborts.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fail(const char *what, size_t size)
{
	fprintf(stderr, "fuzz_http: %s (input of %zu bytes)\n", what, size);
	abort();
}

static bool
same(const struct http_request *a, const struct http_request *b)
{
	return a->status == b->status && a->head_len == b->head_len &&
	       a->body_len == b->body_len && a->head_only == b->head_only &&
	       a->route == b->route && a->text == b->text &&
	       a->extra == b->extra;
}

/* The head's end as the RFC puts it, the slow way: the first empty line
 * (LF or CRLF) after a non-empty one; 0 when there is none. */
static size_t
reference_head_len(const char *p, size_t n)
{
	bool seen = false;
	size_t line = 0;

	for (size_t i = 0; i < n; i++) {
		if (p[i] != '\n')
			continue;
		if (i == line || (i == line + 1 && p[line] == '\r')) {
			if (seen)
				return i + 1;
		} else {
			seen = true;
		}
		line = i + 1;
	}
	return 0;
}

static enum http_result
parse(struct http_request *r, const char *p, size_t n, uint64_t mh, uint64_t mb)
{
	http_request_init(r);
	return http_parse(r, p, n, mh, mb);
}

static void
check(const char *p, size_t n, uint64_t mh, uint64_t mb)
{
	struct http_request whole, step, split;
	enum http_result want = parse(&whole, p, n, mh, mb), got = HTTP_MORE;
	size_t ref = reference_head_len(p, n), k;
	char *copy;

	/* One byte more at a time. */
	http_request_init(&step);
	for (size_t i = 1; i <= n && got == HTTP_MORE; i++) {
		got = http_parse(&step, p, i, mh, mb);
		if (got == HTTP_MORE && step.scanned != i)
			fail("HTTP_MORE without looking at every byte", n);
	}
	if (n == 0)
		got = http_parse(&step, p, 0, mh, mb);
	if (got != want || !same(&step, &whole))
		fail("byte at a time differs from whole", n);

	/* A prefix from an exact-size copy (a read past what has arrived
	 * is caught), then everything. */
	k = n > 0 ? (unsigned char)p[n - 1] % (n + 1) : 0;
	copy = malloc(k ? k : 1);
	if (copy == NULL)
		abort();
	memcpy(copy, p, k);
	http_request_init(&split);
	got = http_parse(&split, copy, k, mh, mb);
	free(copy);
	if (got == HTTP_MORE)
		got = http_parse(&split, p, n, mh, mb);
	if (got != want || !same(&split, &whole))
		fail("split in two differs from whole", n);

	switch (want) {
	case HTTP_MORE:
		if (n > mh)
			fail("more than max_head bytes and still HTTP_MORE", n);
		if (ref != 0)
			fail("HTTP_MORE with a whole head in", n);
		break;
	case HTTP_REQUEST:
		if (whole.status != 0 || whole.text != NULL)
			fail("a request with a status", n);
		if (whole.head_len != ref || whole.head_len > mh)
			fail("the head does not end where it should", n);
		if (whole.body_len > mb)
			fail("a body over max_body accepted", n);
		if (whole.route != HTTP_ROUTE_NONE &&
		    whole.route != HTTP_ROUTE_METRICS &&
		    whole.route != HTTP_ROUTE_HEALTHZ)
			fail("no such route", n);
		if (memchr(p, '\0', whole.head_len) != NULL)
			fail("a NUL byte in a served head", n);
		/* Trailing bytes do not matter. */
		if (parse(&split, p, whole.head_len, mh, mb) != HTTP_REQUEST ||
		    !same(&split, &whole))
			fail("the head alone parses otherwise", n);
		break;
	case HTTP_ERROR:
		switch (whole.status) {
		case 400:
		case 405:
		case 411:
		case 413:
		case 431:
		case 505:
			break;
		default:
			fail("a status the port does not answer", n);
		}
		if (whole.reason == NULL ||
		    strcmp(whole.reason, http_reason(whole.status)) != 0)
			fail("a status without its reason", n);
		if (whole.text == NULL || strlen(whole.text) == 0 ||
		    strchr(whole.text, '\n') !=
			whole.text + strlen(whole.text) - 1)
			fail("a reply text that is not one line", n);
		if ((whole.extra != NULL) != (whole.status == 405))
			fail("an Allow header on another status", n);
		if (whole.status != 431 && (ref == 0 || ref > mh))
			fail("refused before a whole head is in", n);
		if (whole.status == 431 && ref != 0 && ref <= mh)
			fail("431 for a head within the limit", n);
		break;
	default:
		fail("no such result", n);
	}
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;

	check(p, size, 8192, 4096); /* the defaults */
	check(p, size, 128, 16);
	return 0;
}
