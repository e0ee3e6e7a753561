/*
 * frame: 4-byte big-endian length framing over plain byte buffers.
 *
 * Owns nothing and does no I/O: it only says whether a buffer starts with a
 * complete, acceptable frame. Lengths are checked here, at the border, before
 * anyone allocates for a payload.
 */
#ifndef ARBITER_FRAME_H
#define ARBITER_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_HEADER 4
/* No frame may reach 2^24 bytes, so a binary stream always starts with 0x00. */
#define FRAME_HARD_MAX ((1u << 24) - 1)

enum frame_status {
	FRAME_NEED_MORE = 0, /* not a whole frame yet */
	FRAME_OK = 1,	     /* *payload_len bytes follow the header */
	FRAME_EMPTY = -1,    /* length 0 */
	FRAME_TOO_BIG = -2,  /* length over max */
};

/* Look at the first len bytes of buf, with max the largest allowed payload. */
enum frame_status frame_parse(const uint8_t *buf, size_t len, uint32_t max,
			      uint32_t *payload_len);

/* Write the header for a payload of len bytes (len <= FRAME_HARD_MAX). */
void frame_put_header(uint8_t *hdr, uint32_t len);

#endif
