/*
 * input: bytes from a client become requests. The read callback reads once,
 * cuts complete frames (or, for the text protocol, lines) and hands each to
 * dispatch_request or admin_input. It never writes and never flushes:
 * replies only queue on the connection, and the loop's pump (server.c)
 * writes them once per loop turn.
 *
 * Every complete frame is drained here, in the read callback: a client
 * that pipelines past the input bound and then dies must still be seen to
 * close (its leases end at once).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "admin.h"
#include "conn.h"
#include "dispatch.h"
#include "frame.h"
#include "input.h"
#include "server.h"

/*
 * Check the frame header at hdr with avail bytes there. Returns 1 with *n
 * (the body's length) when the whole frame is there, 0 when more is needed,
 * -1 when the header is bad (the connection is then failed).
 */
static int
frame_ready(struct conn *c, const uint8_t *hdr, size_t avail, uint32_t *n)
{
	uint32_t max = (uint32_t)c->srv->cfg.max_frame_bytes;
	enum frame_status st;

	if (avail < FRAME_HEADER)
		return 0;
	st = frame_parse(hdr, FRAME_HEADER, max, n);
	if (st == FRAME_EMPTY) {
		conn_fail(c, 0, ARBITER__ERROR_CODE__BAD_FRAME,
			  "frame length 0; every frame carries one "
			  "message of 1 to %u bytes",
			  max);
		return -1;
	}
	if (st == FRAME_TOO_BIG) {
		conn_fail(c, 0, ARBITER__ERROR_CODE__LIMIT,
			  "frame of %u bytes is over "
			  "limits.max_frame_bytes (%u)",
			  *n, max);
		return -1;
	}
	return avail - FRAME_HEADER >= *n;
}

/* Decode one frame's body and dispatch it. */
static void
frame_dispatch(struct conn *c, const uint8_t *body, uint32_t n)
{
	struct server *srv = c->srv;
	Arbiter__Request *req;

	codec_arena_reset(&srv->arena);
	req = codec_unpack_request(&srv->arena, body, n);
	if (req == NULL) {
		conn_fail(c, 0, ARBITER__ERROR_CODE__BAD_FRAME,
			  "frame of %u bytes is not a valid Request "
			  "message (protocol version %d)",
			  n, ARB_PROTOCOL_VERSION);
		return;
	}
	dispatch_request(c, req);
}

/* Cut complete frames out of the buffered input and dispatch each. */
static void
input_frames(struct conn *c)
{
	while (c->state == CONN_BINARY && c->kill == NULL) {
		size_t avail = evbuffer_get_length(c->in);
		uint8_t hdr[FRAME_HEADER];
		const uint8_t *p;
		uint32_t n;

		if (avail >= FRAME_HEADER)
			evbuffer_copyout(c->in, hdr, FRAME_HEADER);
		if (frame_ready(c, hdr, avail, &n) <= 0)
			return;
		p = evbuffer_pullup(c->in, (ev_ssize_t)(FRAME_HEADER + n));
		frame_dispatch(c, p + FRAME_HEADER, n);
		evbuffer_drain(c->in, FRAME_HEADER + n);
	}
}

/*
 * The common case: nothing buffered, and the read holds whole frames.
 * Dispatch them straight from the read buffer; only a partial frame at the
 * end is copied into the connection's input.
 */
static void
input_frames_direct(struct conn *c, const uint8_t *p, size_t len)
{
	size_t used = 0;
	uint32_t n;

	while (c->state == CONN_BINARY && c->kill == NULL &&
	       frame_ready(c, p + used, len - used, &n) > 0) {
		frame_dispatch(c, p + used + FRAME_HEADER, n);
		used += FRAME_HEADER + n;
	}
	if (c->kill == NULL && used < len &&
	    evbuffer_add(c->in, p + used, len - used) < 0)
		conn_close(c, "out of memory for input");
}

void
input_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct server *srv = c->srv;
	ssize_t n;

	(void)what;
	/* read(2), not evbuffer_read: that asks FIONREAD first, one more
	 * system call on every request. */
	n = read(fd, srv->rbuf, CONN_READ_CHUNK);
	if (n == 0 && c->state == CONN_TEXT && !c->refused &&
	    (c->kill == NULL || c->linger)) {
		/* The peer shut down its side (or closed after `quit`): it
		 * may still read. Answer what it sent, then close. */
		event_del(&c->ev_read);
		c->eof = true;
		conn_linger_timer(c);
		if (c->kill == NULL)
			admin_input(c);
		conn_flushq_add(
		    c); /* closes it once nothing is left to write */
		return;
	}
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		conn_close(c, n == 0 ? "eof" : strerror(errno));
		return;
	}
	if (c->kill != NULL) {
		/* Closing: ignore what it still sends. */
		evbuffer_drain(c->in, evbuffer_get_length(c->in));
		return;
	}
	if (c->state == CONN_BINARY && !c->refused &&
	    evbuffer_get_length(c->in) == 0) {
		input_frames_direct(c, srv->rbuf, (size_t)n);
		return;
	}
	if (evbuffer_add(c->in, srv->rbuf, (size_t)n) < 0) {
		conn_close(c, "out of memory for input");
		return;
	}
	if (c->state == CONN_NEW) {
		unsigned char first;

		evbuffer_copyout(c->in, &first, 1);
		c->state = isalpha(first) ? CONN_TEXT : CONN_BINARY;
		if (c->state == CONN_TEXT)
			event_del(&c->ev_deadline);
	}
	if (c->refused) {
		/* Read what it sent, so the close is clean, then say why. */
		evbuffer_drain(c->in, evbuffer_get_length(c->in));
		if (c->state == CONN_TEXT) {
			static const char msg[] =
			    "error: limits.max_connections reached; try "
			    "again later or raise the limit\n";

			conn_send_text(c, msg, sizeof msg - 1);
			c->kill = "max_connections";
		} else
			conn_fail(c, 0, ARBITER__ERROR_CODE__LIMIT,
				  "limits.max_connections (%llu) reached; try "
				  "again later or raise the limit",
				  (unsigned long long)srv->cfg.max_connections);
		return;
	}
	if (c->state == CONN_BINARY)
		input_frames(c);
	else if (c->state == CONN_TEXT)
		admin_input(c);
}
