/*
 * fuzz_wire: the bytes are one client's input stream on a real connection:
 * framing (input_frames), bounded decoding (codec), the request table and
 * every handler (dispatch), the lockmgr behind them, and the flush and kill
 * paths. Two helper connections hold and wait for "db" and "idx", so the
 * client meets queues. Everything the daemon answers must be well-formed
 * frames; the connection is then closed and every lease must be gone.
 *
 * A stream that starts with a letter is the text protocol: see fuzz_admin.
 * If the last byte has its top bit set, the client is a slow reader (see
 * FUZZ_SLOW_READER in fuzz_server.h).
 */
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
	int flags = fuzz_flags_from(data, size);
	struct fuzz_server *fs = fuzz_server_new(flags);

	fuzz_server_client(fs, data, size, FUZZ_CHECK_FRAMES | flags);
	fuzz_server_free(fs);
	return 0;
}
