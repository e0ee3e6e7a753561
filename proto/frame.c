/*
 * frame: length framing (see frame.h). The header is read even when the
 * payload has not arrived yet, so an oversized length is refused at once
 * instead of after the sender has pushed megabytes at us.
 */
#include "frame.h"

enum frame_status
frame_parse(const uint8_t *buf, size_t len, uint32_t max, uint32_t *payload_len)
{
	uint32_t n;

	if (len < FRAME_HEADER)
		return FRAME_NEED_MORE;
	n = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
	    (uint32_t)buf[2] << 8 | (uint32_t)buf[3];
	*payload_len = n;
	if (n == 0)
		return FRAME_EMPTY;
	if (n > max || n > FRAME_HARD_MAX)
		return FRAME_TOO_BIG;
	if (len - FRAME_HEADER < n)
		return FRAME_NEED_MORE;
	return FRAME_OK;
}

void
frame_put_header(uint8_t *hdr, uint32_t len)
{
	hdr[0] = (uint8_t)(len >> 24);
	hdr[1] = (uint8_t)(len >> 16);
	hdr[2] = (uint8_t)(len >> 8);
	hdr[3] = (uint8_t)len;
}
