/*
 * fuzz_admin: the line-based text protocol on a real connection (admin.c):
 * line cutting, max_text_line, the command table, and stats/status over a
 * lockmgr where two helper connections hold and wait for resources.
 * Inputs that do not start with a letter are binary streams (fuzz_wire) and
 * are rejected, so the corpus stays on this protocol. A last byte with its
 * top bit set makes the client a slow reader (FUZZ_SLOW_READER).
 */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>

#include "fuzz_server.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_init();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_server *fs;
	int flags;

	if (size == 0 || !isalpha(data[0]))
		return -1;
	flags = fuzz_flags_from(data, size);
	fs = fuzz_server_new(flags);
	fuzz_server_client(fs, data, size, flags);
	fuzz_server_free(fs);
	return 0;
}
