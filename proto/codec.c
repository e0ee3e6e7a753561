/*
 * codec: bounded protobuf-c unpacking, framed packing, name checks.
 *
 * The arena is a bump allocator: protobuf-c calls alloc() for every string,
 * sub-message and repeated array while unpacking; free() is a no-op and the
 * whole message goes away with codec_arena_reset(). That gives both a hard
 * memory bound per decode and no malloc on the request path.
 */
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "frame.h"

static void *
arena_alloc(void *data, size_t size)
{
	struct codec_arena *a = data;
	size_t start = (a->used + 15) & ~(size_t)15;

	if (start > a->cap || size > a->cap - start)
		return NULL;
	a->used = start + size;
	return a->buf + start;
}

static void
arena_free(void *data, void *ptr)
{
	(void)data;
	(void)ptr;
}

void
codec_arena_init(struct codec_arena *a, size_t cap)
{
	a->buf = malloc(cap);
	a->cap = a->buf ? cap : 0;
	a->used = 0;
	a->alloc.alloc = arena_alloc;
	a->alloc.free = arena_free;
	a->alloc.allocator_data = a;
}

void
codec_arena_reset(struct codec_arena *a)
{
	a->used = 0;
}

void
codec_arena_free(struct codec_arena *a)
{
	free(a->buf);
	a->buf = NULL;
	a->cap = a->used = 0;
}

Arbiter__Request *
codec_unpack_request(struct codec_arena *a, const uint8_t *p, size_t n)
{
	return arbiter__request__unpack(&a->alloc, n, p);
}

Arbiter__ServerMessage *
codec_unpack_server(struct codec_arena *a, const uint8_t *p, size_t n)
{
	return arbiter__server_message__unpack(&a->alloc, n, p);
}

size_t
codec_frame_size(const ProtobufCMessage *m)
{
	return FRAME_HEADER + protobuf_c_message_get_packed_size(m);
}

size_t
codec_pack_frame(const ProtobufCMessage *m, uint8_t *out)
{
	size_t n = protobuf_c_message_pack(m, out + FRAME_HEADER);

	frame_put_header(out, (uint32_t)n);
	return FRAME_HEADER + n;
}

/*
 * Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF)
 * with no C0 or C1 control characters and no DEL. Returns 1 when fine.
 */
int
codec_printable_utf8(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < len) {
		unsigned c = s[i];
		unsigned cp, need, min;

		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return 0;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1, cp = c & 0x1f, min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2, cp = c & 0x0f, min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3, cp = c & 0x07, min = 0x10000;
		} else
			return 0;
		if (len - i <= need)
			return 0;
		for (unsigned k = 1; k <= need; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		if (cp >= 0x80 && cp <= 0x9f)
			return 0;
		i += need + 1;
	}
	return 1;
}

const char *
codec_check_name(const char *s, size_t len)
{
	if (s == NULL || len == 0)
		return "resource name is empty; give 1 to 255 bytes";
	if (len > ARB_NAME_MAX)
		return "resource name is longer than 255 bytes";
	if (memchr(s, '\0', len) != NULL || !codec_printable_utf8(s, len))
		return "resource name must be printable UTF-8 (no control "
		       "characters or invalid bytes)";
	return NULL;
}

const char *
codec_error_name(int code)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
	    &arbiter__error_code__descriptor, code);

	return v ? v->name : "UNKNOWN";
}
