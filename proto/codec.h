/*
 * codec: protobuf-c packing and unpacking with limits, shared by the daemon
 * and the client library. No I/O.
 *
 * protobuf-c has no size limit of its own, so messages are unpacked into a
 * bounded arena: a payload that would need more memory than the arena holds
 * fails to decode instead of allocating without bound (repeated fields
 * included). The caller checks the frame length before it gets here.
 */
#ifndef ARBITER_CODEC_H
#define ARBITER_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "arbiter.pb-c.h"

#define ARB_PROTOCOL_VERSION 1
#define ARB_NAME_MAX	     255
#define ARB_CLIENT_NAME_MAX  64

struct codec_arena {
	uint8_t *buf;
	size_t cap;
	size_t used;
	ProtobufCAllocator alloc;
};

/* An arena of cap bytes; everything unpacked into it lives until reset. */
void codec_arena_init(struct codec_arena *a, size_t cap);
void codec_arena_reset(struct codec_arena *a);
void codec_arena_free(struct codec_arena *a);

/* Decode one payload; NULL when it does not decode within the arena. */
Arbiter__Request *codec_unpack_request(struct codec_arena *a, const uint8_t *p,
				       size_t n);
Arbiter__ServerMessage *codec_unpack_server(struct codec_arena *a,
					    const uint8_t *p, size_t n);

/* Bytes a framed message takes (header included), and packing into out. */
size_t codec_frame_size(const ProtobufCMessage *m);
size_t codec_pack_frame(const ProtobufCMessage *m, uint8_t *out);

/*
 * Check a resource name: 1..255 bytes of valid UTF-8 with no control
 * characters. NULL when fine, else a sentence saying what is wrong.
 */
const char *codec_check_name(const char *s, size_t len);

/* Valid UTF-8 without control characters (used for client names too). */
int codec_printable_utf8(const char *s, size_t len);

/* "TIMEOUT", "WOULD_BLOCK", ... for an error code. */
const char *codec_error_name(int code);

#endif
