/*
 * fuzz_state: the bytes are a state file for state_decode() (msgpack-c's
 * unpacker, then state.c's walk over the map). It must refuse anything it
 * cannot trust with a reason, and never report success without a format and
 * a token high-water mark it understands.
 *
 * msgpack-c allocates a whole container when it reads its header, before
 * the elements arrive: a 5-byte file declaring a map of 2^32 entries asked
 * malloc for 256 GiB (found by this harness). state_decode now walks the
 * headers first and refuses a record that promises more elements than it
 * has bytes, so what reaches msgpack-c allocates a few words per input
 * byte. The harness holds it to that: any allocation above 64 MiB (the
 * largest state file state_read accepts, and far above what a fuzzed input
 * of a few KiB may need) aborts, and is reported as a crash.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__asan_default_options(void);

const char *
__asan_default_options(void)
{
	return "allocator_may_return_null=0:max_allocation_size_mb=64";
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct state_data sd;
	char err[400];
	int rc;

	err[0] = '\0';
	rc = state_decode(data, size, &sd, err, sizeof err);
	if (rc == 0 && (sd.format == 0 || sd.format > STATE_FORMAT))
		abort();
	if (rc != 0 &&
	    (err[0] == '\0' ||
	     (rc != -EINVAL && rc != -EPROTONOSUPPORT && rc != -ENOMEM)))
		abort();
	return 0;
}
