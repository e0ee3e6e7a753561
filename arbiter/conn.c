/*
 * conn: one client connection's life and output: accepts its credentials,
 * queues replies, writes them when the loop's pump flushes, closes. Its
 * read callback, which cuts frames and lines, is in input.c.
 *
 * Why raw events and evbuffers rather than bufferevents: every complete frame
 * is drained in the read callback (a dead client can never hide behind
 * undrained input), replies are written at the end of the loop turn with one
 * write(2), and EV_WRITE is armed only when the socket is full. A bufferevent
 * would add two epoll_ctl calls to every round trip.
 *
 * Memory per connection is bounded: input by max_frame_bytes (or
 * max_text_line) plus one read, output by output_buffer_bytes, after which
 * the client is dropped as one that does not read its replies. The output of
 * all connections together is bounded by output_total_bytes: past it the
 * connections with the most unread output are dropped first, so a few slow
 * readers cannot add up to more memory than the daemon was given while the
 * clients that keep up are served. Big replies never sit whole in a buffer:
 * binary Status and Stats come in pages, and a text reply is produced a part
 * at a time as the client reads it (admin_stream).
 *
 * A text session that ends (quit, or the peer shutting down its side) still
 * gets its whole reply: the socket closes once the output is written, unless
 * the peer reads nothing for limits.close_flush_ms.
 *
 * A closed connection is unlinked from everything and its leases revoked at
 * once; the struct itself is freed on a later loop turn, so no callback on
 * the stack ever touches freed memory.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conn.h"
#include "input.h"
#include "log.h"
#include "server.h"
#include "xalloc.h"

static void conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg);

const char *
conn_label(const struct conn *c, char *buf, size_t len)
{
	snprintf(buf, len, "conn=%llu pid=%u uid=%u", (unsigned long long)c->id,
		 c->owner.pid, c->owner.uid);
	return buf;
}

struct conn *
conn_new(struct server *srv, int fd, bool refused)
{
	struct conn *c = xcalloc(1, sizeof *c);
	struct ucred cred;
	socklen_t clen = sizeof cred;
	struct timeval tv;

	c->srv = srv;
	c->fd = fd;
	c->id = ++srv->next_conn_id;
	c->state = CONN_NEW;
	c->t_connected = now_ns();
	lockmgr_owner_init(&c->owner, c->id);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
		c->owner.pid = (uint32_t)cred.pid;
		c->owner.uid = cred.uid;
		c->owner.gid = cred.gid;
	}
	c->in = evbuffer_new();
	c->out = evbuffer_new();
	if (c->in == NULL || c->out == NULL) {
		fprintf(stderr, "arbiter: out of memory\n");
		abort();
	}
	event_assign(&c->ev_read, srv->base, fd, EV_READ | EV_PERSIST,
		     input_read_cb, c);
	event_assign(&c->ev_write, srv->base, fd, EV_WRITE, conn_write_cb, c);
	evtimer_assign(&c->ev_deadline, srv->base, conn_deadline_cb, c);
	event_add(&c->ev_read, NULL);
	tv.tv_sec = (time_t)(srv->cfg.handshake_timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)(srv->cfg.handshake_timeout_ms % 1000) * 1000;
	evtimer_add(&c->ev_deadline, &tv);
	TAILQ_INSERT_TAIL(&srv->conns, c, entry);
	c->refused = refused;
	if (refused)
		srv->nrefused++;
	else
		srv->nconns++;
	return c;
}

/* Keep server.out_total in step with this connection's output. */
static void
out_account(struct conn *c)
{
	size_t n = evbuffer_get_length(c->out);

	c->srv->out_total += n - c->out_counted;
	c->out_counted = n;
}

void
conn_flushq_add(struct conn *c)
{
	if (!c->in_flushq && c->state != CONN_DEAD) {
		c->in_flushq = true;
		TAILQ_INSERT_TAIL(&c->srv->flushq, c, flush_entry);
	}
}

void
conn_close(struct conn *c, const char *reason)
{
	struct server *srv = c->srv;
	char label[96], q[300];

	if (c->state == CONN_DEAD)
		return;
	log_debug("connection closed", "%s reason=%s",
		  conn_label(c, label, sizeof label),
		  log_quote(reason, q, sizeof q));
	c->state = CONN_DEAD;
	event_del(&c->ev_read);
	event_del(&c->ev_write);
	event_del(&c->ev_deadline);
	c->stream = 0;
	evbuffer_drain(c->out, evbuffer_get_length(c->out));
	out_account(c);
	close(c->fd);
	c->fd = -1;
	TAILQ_REMOVE(&srv->conns, c, entry);
	if (c->refused)
		srv->nrefused--;
	else
		srv->nconns--;
	if (c->in_flushq) {
		TAILQ_REMOVE(&srv->flushq, c, flush_entry);
		c->in_flushq = false;
	}
	/* Leases die with the socket, now: the next waiter is granted in
	 * this same loop turn. */
	lockmgr_drop_owner(&srv->lm, &c->owner, LM_END_DISCONNECT, now_ns());
	/* Its events (the next waiter's grant) and the free are the pump's:
	 * they happen at the end of this loop turn, after every callback. */
	TAILQ_INSERT_TAIL(&srv->graveyard, c, entry);
}

void
conn_free(struct conn *c)
{
	evbuffer_free(c->in);
	evbuffer_free(c->out);
	free(c);
}

/* Drop a connection whose replies are not read, freeing them now. */
static void
shed(struct conn *c, const char *kill, const char *what, uint64_t limit)
{
	char label[96];
	size_t n = evbuffer_get_length(c->out);

	c->kill = kill;
	c->linger = false;
	c->stream = 0;
	evbuffer_drain(c->out, n);
	out_account(c);
	log_warn(what, "%s pending=%zu limit=%llu",
		 conn_label(c, label, sizeof label), n,
		 (unsigned long long)limit);
	conn_flushq_add(c);
}

static void
check_output_cap(struct conn *c)
{
	struct server *srv = c->srv;

	out_account(c);
	if (evbuffer_get_length(c->out) > srv->cfg.output_buffer_bytes &&
	    c->kill == NULL)
		shed(c,
		     "output buffer over limits.output_buffer_bytes "
		     "(the client does not read its replies)",
		     "client dropped: output buffer over "
		     "limits.output_buffer_bytes",
		     srv->cfg.output_buffer_bytes);
	/* Over the global bound: drop the slowest readers (the most unread
	 * output) until under it. */
	while (srv->out_total > srv->cfg.output_total_bytes) {
		struct conn *w, *worst = NULL;

		TAILQ_FOREACH(w, &srv->conns, entry) {
			if (worst == NULL ||
			    w->out_counted > worst->out_counted)
				worst = w;
		}
		if (worst == NULL || worst->out_counted == 0)
			break;
		shed(worst,
		     "output of all clients over limits.output_total_bytes "
		     "(this client had the most unread replies)",
		     "client dropped: output of all clients over "
		     "limits.output_total_bytes; this one read slowest",
		     srv->cfg.output_total_bytes);
	}
}

void
conn_send(struct conn *c, const Arbiter__ServerMessage *m)
{
	struct evbuffer_iovec v;
	size_t n;

	if (c->state == CONN_DEAD || c->kill != NULL)
		return;
	n = codec_frame_size(&m->base);
	if (evbuffer_reserve_space(c->out, (ev_ssize_t)n, &v, 1) < 1) {
		c->kill = "out of memory for output";
		conn_flushq_add(c);
		return;
	}
	v.iov_len = codec_pack_frame(&m->base, v.iov_base);
	evbuffer_commit_space(c->out, &v, 1);
	conn_flushq_add(c);
	check_output_cap(c);
}

void
conn_send_text(struct conn *c, const char *s, size_t len)
{
	if (c->state == CONN_DEAD || c->kill != NULL)
		return;
	evbuffer_add(c->out, s, len);
	conn_flushq_add(c);
	check_output_cap(c);
}

static void
send_error_v(struct conn *c, uint64_t id, Arbiter__ErrorCode code,
	     const char *fmt, va_list ap)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Error e = ARBITER__ERROR__INIT;
	char msg[600];

	vsnprintf(msg, sizeof msg, fmt, ap);
	e.code = code;
	e.message = msg;
	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_ERROR;
	m.error = &e;
	conn_send(c, &m);
}

void
conn_send_error(struct conn *c, uint64_t id, Arbiter__ErrorCode code,
		const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	send_error_v(c, id, code, fmt, ap);
	va_end(ap);
}

void
conn_fail(struct conn *c, uint64_t id, Arbiter__ErrorCode code, const char *fmt,
	  ...)
{
	char label[96];
	va_list ap;

	va_start(ap, fmt);
	send_error_v(c, id, code, fmt, ap);
	va_end(ap);
	if (c->kill == NULL)
		c->kill = codec_error_name(code);
	log_info("connection refused or dropped", "%s code=%s",
		 conn_label(c, label, sizeof label), codec_error_name(code));
	conn_flushq_add(c);
}

static void
want_write(struct conn *c)
{
	if (!c->want_write) {
		c->want_write = true;
		event_add(&c->ev_write, NULL);
	}
}

/* A closing text session: give the peer close_flush_ms to read on. */
void
conn_linger_timer(struct conn *c)
{
	uint64_t ms = c->srv->cfg.close_flush_ms;
	struct timeval tv = {(time_t)(ms / 1000),
			     (suseconds_t)(ms % 1000) * 1000};

	evtimer_add(&c->ev_deadline, &tv);
}

bool
conn_flush(struct conn *c)
{
	bool wrote = false;

	if (c->state == CONN_DEAD)
		return false;
	while (evbuffer_get_length(c->out) > 0) {
		int n = evbuffer_write(c->out, c->fd);

		if (n > 0) {
			wrote = true;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (errno == EINTR)
				continue;
			if (c->kill != NULL && !c->linger)
				break; /* give up on the last words */
			out_account(c);
			if ((c->linger || c->eof) && (wrote || !c->want_write))
				conn_linger_timer(c);
			want_write(c);
			return true;
		}
		conn_close(c, n == 0 ? "peer closed" : strerror(errno));
		return false;
	}
	out_account(c);
	if (c->stream != 0 && c->kill == NULL)
		return true; /* the pump produces the next part */
	if (c->kill != NULL) {
		char sink[4096];

		/* Let the peer read our Error before the socket goes, and
		 * leave nothing unread (that would reset the peer). */
		shutdown(c->fd, SHUT_WR);
		for (int i = 0; i < 16 && read(c->fd, sink, sizeof sink) > 0;
		     i++)
			;
		conn_close(c, c->kill);
		return false;
	}
	return true;
}

void
conn_stream_produced(struct conn *c)
{
	if (c->in_flushq) {
		/* Not again in this turn's flush: EV_WRITE brings it back
		 * once the other clients had theirs. */
		TAILQ_REMOVE(&c->srv->flushq, c, flush_entry);
		c->in_flushq = false;
	}
	if (c->state == CONN_DEAD)
		return;
	if (c->linger || c->eof)
		conn_linger_timer(c);
	if (evbuffer_get_length(c->out) > 0 || c->stream != 0)
		want_write(c);
}

static void
conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	c->want_write = false;
	conn_flushq_add(c);
}

static void
conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	if (c->state == CONN_TEXT) {
		/* Text sessions have no handshake; this is the bound on a
		 * closing one that stopped reading its last reply. */
		if (c->linger || c->eof)
			conn_close(c,
				   "closing, and the last reply was not read "
				   "within limits.close_flush_ms");
		return;
	}
	if (!c->welcomed)
		conn_fail(c, 0, ARBITER__ERROR_CODE__LIMIT,
			  "no Hello within limits.handshake_timeout_ms "
			  "(%llu ms); closing",
			  (unsigned long long)c->srv->cfg.handshake_timeout_ms);
}
