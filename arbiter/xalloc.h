/*
 * Allocation that cannot fail quietly. Small allocations that fail mean the
 * process is out of memory; continuing with half-made state would be worse
 * than stopping, so these abort with a message. Large or client-driven sizes
 * are checked against limits before they get here.
 */
#ifndef ARBITER_XALLOC_H
#define ARBITER_XALLOC_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL) {
		fprintf(stderr, "arbiter: out of memory (%zu x %zu bytes)\n", n,
			size);
		abort();
	}
	return p;
}

static inline void *
xreallocarray(void *old, size_t n, size_t size)
{
	void *p;

	if (size != 0 && n > SIZE_MAX / size) {
		fprintf(stderr, "arbiter: allocation overflow\n");
		abort();
	}
	p = realloc(old, n * size != 0 ? n * size : 1);
	if (p == NULL) {
		fprintf(stderr, "arbiter: out of memory (%zu x %zu bytes)\n", n,
			size);
		abort();
	}
	return p;
}

static inline char *
xstrndup(const char *s, size_t len)
{
	char *p = xcalloc(1, len + 1);

	memcpy(p, s, len);
	return p;
}

#endif
