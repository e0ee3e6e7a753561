/*
 * A deliberately broken criterion test: an out-of-bounds read and a leak.
 * Never part of the normal build or of check-unit. `make selftest-valgrind`
 * and `make selftest-asan` build it and must FAIL on it, which proves that
 * the valgrind and ASan passes over the unit tests turn a memory error or a
 * leak inside a criterion worker into a failing exit status.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

static volatile int sink;

Test(selftest, reads_past_the_end_of_a_heap_block)
{
	char *p = malloc(8);

	cr_assert_not_null(p);
	memset(p, 1, 8);
	sink = p[8 + sink];
	free(p);
}

Test(selftest, leaks_a_heap_block)
{
	char *p = malloc(64);

	cr_assert_not_null(p);
	memset(p, 2, 64);
	sink = p[3];
	p = NULL;
}
