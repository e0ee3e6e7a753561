/*
 * conn: one client connection's life and output (see conn.c); its types
 * are in conn-t.h.
 */
#ifndef ARBITER_CONN_H
#define ARBITER_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "conn-t.h"

struct server;

/* refused: over max_connections; it is answered with LIMIT and closed. */
struct conn *conn_new(struct server *srv, int fd, bool refused);
/* Unlink it, end its leases in the lockmgr (their events are the pump's to
 * carry out) and put it on the graveyard, freed at the end of the turn. */
void conn_close(struct conn *c, const char *reason);
void conn_free(struct conn *c);
/* Queue a framed message; marks the connection for flushing. */
void conn_send(struct conn *c, const Arbiter__ServerMessage *m);
/* Queue raw bytes (text protocol). */
void conn_send_text(struct conn *c, const char *s, size_t len);
/* Answer with an Error frame, then close once it is written. */
void conn_fail(struct conn *c, uint64_t id, Arbiter__ErrorCode code,
	       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void conn_send_error(struct conn *c, uint64_t id, Arbiter__ErrorCode code,
		     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Write queued output now; returns false if the connection died. With a
 * streamed text reply and its output drained, the caller produces the next
 * part (admin_stream), then calls conn_stream_produced. */
bool conn_flush(struct conn *c);
void conn_stream_produced(struct conn *c);
/* Write it out at the end of this loop turn. */
void conn_flushq_add(struct conn *c);
/* A closing text session: give the peer limits.close_flush_ms to read. */
void conn_linger_timer(struct conn *c);
/* "conn=ID pid=PID uid=UID" in buf, for log lines; returns buf. */
const char *conn_label(const struct conn *c, char *buf, size_t len);

#endif
