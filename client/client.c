/*
 * libarbiter: connection, handshake, frame I/O and the request calls (see
 * arbiter.h). One receive buffer serves both the blocking calls and the
 * non-blocking event API, so a frame that arrives during a blocking call is
 * never lost: events not meant for the caller are queued for
 * arb_next_event().
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"
#include "codec.h"
#include "defaults.h"
#include "frame.h"

#define RECV_MAX FRAME_HARD_MAX
#define ARENA_START (64u << 10)
#define ARENA_CAP (64u << 20)
#define EVQ_MAX 1024

struct arb_client {
	int fd;
	uint64_t next_id;
	char path[108];
	char err[512];
	uint8_t *rbuf;
	size_t rlen, rcap;
	struct codec_arena arena;
	struct arb_event *evq; /* ring of pending events */
	size_t evq_head, evq_len;
	struct ttl_lease {
		uint64_t id, ttl_ms, due_ms;
	} *ttl; /* leases with a ttl, for arb_keepalive */
	size_t nttl, ttl_cap;
	const struct arb_acquire_opts *opts; /* during a blocking acquire */
	const char *resource;
	uint32_t max_frame;
	int timeout_ms; /* 0: wait as long as it takes */
	bool in_acquire;
};

static __thread char connect_err[1024];

static void
seterr(arb_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
seterr(arb_client *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->err, sizeof c->err, fmt, ap);
	va_end(ap);
}

void
arb_socket_path(char *buf, size_t len)
{
	const char *env = getenv("ARBITER_SOCKET");

	if (env != NULL && *env != '\0')
		snprintf(buf, len, "%s", env);
	else
		arb_default_socket_path(buf, len);
}

const char *
arb_strerror(int err)
{
	static const char *const names[] = {
		[ARB_EBADFRAME - 1000] = "malformed frame",
		[ARB_EBADREQUEST - 1000] = "bad request",
		[ARB_ENOTWELCOME - 1000] = "request before handshake",
		[ARB_EVERSION - 1000] = "protocol version not supported",
		[ARB_EINVALIDNAME - 1000] = "invalid resource name",
		[ARB_EALREADYHELD - 1000] = "already held or awaited here",
		[ARB_EWOULDBLOCK - 1000] = "resource is busy",
		[ARB_ETIMEOUT - 1000] = "timed out waiting for the resource",
		[ARB_EUNKNOWNLEASE - 1000] = "no such lease",
		[ARB_EFORBIDDEN - 1000] = "forbidden",
		[ARB_ELIMIT - 1000] = "a limit of the daemon was hit",
		[ARB_ESHUTTINGDOWN - 1000] = "the daemon is shutting down",
		[ARB_ESTORAGE - 1000] = "storage lock unavailable",
		[ARB_EINTERNAL - 1000] = "internal error in the daemon",
		[ARB_ECANCELLED - 1000] = "the pending acquire was withdrawn",
	};
	int e = err < 0 ? -err : err;

	if (e == ARB_EPROTO)
		return "the daemon sent something unreadable";
	if (e == ARB_ECONNLOST)
		return "connection to the daemon lost";
	if (e == ARB_EREVOKED)
		return "lease revoked";
	if (e > 1000 && e - 1000 < (int)(sizeof names / sizeof names[0]) &&
	    names[e - 1000] != NULL)
		return names[e - 1000];
	return strerror(e);
}

const char *
arb_last_error(const arb_client *c)
{
	return c->err;
}

const char *
arb_connect_error(void)
{
	return connect_err;
}

int
arb_fd(const arb_client *c)
{
	return c->fd;
}

int
arb_set_inherit(arb_client *c, bool inherit)
{
	int fl = fcntl(c->fd, F_GETFD);

	if (fl < 0)
		return -errno;
	fl = inherit ? fl & ~FD_CLOEXEC : fl | FD_CLOEXEC;
	return fcntl(c->fd, F_SETFD, fl) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------ ttl leases */

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
ttl_track(arb_client *c, uint64_t id, uint64_t ttl_ms)
{
	if (ttl_ms == 0)
		return;
	if (c->nttl == c->ttl_cap) {
		size_t cap = c->ttl_cap ? c->ttl_cap * 2 : 8;
		struct ttl_lease *n = realloc(c->ttl, cap * sizeof *n);

		if (n == NULL)
			return; /* the caller can still renew by hand */
		c->ttl = n;
		c->ttl_cap = cap;
	}
	c->ttl[c->nttl].id = id;
	c->ttl[c->nttl].ttl_ms = ttl_ms;
	c->ttl[c->nttl].due_ms = mono_ms() + ttl_ms / 3;
	c->nttl++;
}

static void
ttl_forget(arb_client *c, uint64_t id)
{
	for (size_t i = 0; i < c->nttl; i++) {
		if (c->ttl[i].id == id) {
			c->ttl[i] = c->ttl[--c->nttl];
			return;
		}
	}
}

/* ------------------------------------------------------------ frames */

static int fill(arb_client *c, bool block);
static int take_frame(arb_client *c, Arbiter__ServerMessage **m);
static int error_of(arb_client *c, const Arbiter__Error *e);

static int
send_request(arb_client *c, Arbiter__Request *req)
{
	uint8_t stack[1024], *buf = stack;
	size_t n = codec_frame_size(&req->base), off = 0;

	if (n - FRAME_HEADER > c->max_frame) {
		seterr(c, "request of %zu bytes is over the daemon's "
			  "max_frame_bytes (%u)",
		       n - FRAME_HEADER, c->max_frame);
		return -ARB_ELIMIT;
	}
	if (n > sizeof stack && (buf = malloc(n)) == NULL)
		return -ENOMEM;
	codec_pack_frame(&req->base, buf);
	while (off < n) {
		ssize_t w = send(c->fd, buf + off, n - off, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = c->fd, .events = POLLOUT};

			poll(&p, 1, -1);
			continue;
		}
		if (w <= 0) {
			int e = errno;
			Arbiter__ServerMessage *m = NULL;

			if (buf != stack)
				free(buf);
			/* The daemon may have said why before closing (a
			 * limit, a refusal): report its words, not EPIPE. */
			while (fill(c, false) > 0)
				;
			if (take_frame(c, &m) > 0 && m != NULL &&
			    m->kind_case == ARBITER__SERVER_MESSAGE__KIND_ERROR)
				return error_of(c, m->error);
			seterr(c, "connection to %s lost while sending: %s",
			       c->path, strerror(e));
			return -ARB_ECONNLOST;
		}
		off += (size_t)w;
	}
	if (buf != stack)
		free(buf);
	return 0;
}

/*
 * Read more bytes. block: wait for them. Returns 1 when bytes came, 0 when
 * none are ready (non-blocking), < 0 on EOF or error.
 */
static int
fill(arb_client *c, bool block)
{
	ssize_t n;

	if (c->rcap - c->rlen < 4096) {
		size_t ncap = c->rcap ? c->rcap * 2 : 8192;
		uint8_t *nb;

		if (ncap > RECV_MAX + FRAME_HEADER + 8192)
			ncap = RECV_MAX + FRAME_HEADER + 8192;
		if (ncap <= c->rlen) {
			seterr(c, "frame from the daemon is too large");
			return -ARB_EPROTO;
		}
		nb = realloc(c->rbuf, ncap);
		if (nb == NULL)
			return -ENOMEM;
		c->rbuf = nb;
		c->rcap = ncap;
	}
	for (;;) {
		/* Always non-blocking: waiting is poll's job (with the
		 * timeout, if any). */
		n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen,
			 MSG_DONTWAIT);
		if (n > 0) {
			c->rlen += (size_t)n;
			return 1;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd p = {.fd = c->fd, .events = POLLIN};
			int t = c->timeout_ms > 0 && !c->in_acquire
					? c->timeout_ms
					: -1;

			if (!block)
				return 0;
			if (poll(&p, 1, t) == 0) {
				seterr(c, "no answer from the arbiter at %s "
					  "within %d ms: is it hung or "
					  "overloaded?",
				       c->path, t);
				return -ETIMEDOUT;
			}
			continue;
		}
		seterr(c, "connection to the arbiter at %s lost%s%s", c->path,
		       n < 0 ? ": " : " (the daemon closed it)",
		       n < 0 ? strerror(errno) : "");
		return -ARB_ECONNLOST;
	}
}

/* Take the next whole frame, decoded; NULL in *m when none is buffered. */
static int
take_frame(arb_client *c, Arbiter__ServerMessage **m)
{
	uint32_t n;
	enum frame_status st;

	*m = NULL;
	st = frame_parse(c->rbuf, c->rlen, RECV_MAX, &n);
	if (st == FRAME_NEED_MORE)
		return 0;
	if (st != FRAME_OK) {
		seterr(c, "the daemon sent a frame with a bad length (%u)", n);
		return -ARB_EPROTO;
	}
	/* Most replies are tiny; grow the arena only for a big status. */
	for (;;) {
		size_t cap = c->arena.cap;

		codec_arena_reset(&c->arena);
		*m = codec_unpack_server(&c->arena, c->rbuf + FRAME_HEADER, n);
		if (*m != NULL || cap >= ARENA_CAP || cap == 0)
			break;
		codec_arena_free(&c->arena);
		codec_arena_init(&c->arena, cap * 4 < ARENA_CAP ? cap * 4
								: ARENA_CAP);
	}
	memmove(c->rbuf, c->rbuf + FRAME_HEADER + n,
		c->rlen - FRAME_HEADER - n);
	c->rlen -= FRAME_HEADER + n;
	if (*m == NULL) {
		seterr(c, "the daemon sent a message this client cannot "
			  "decode (version mismatch?)");
		return -ARB_EPROTO;
	}
	return 1;
}

static int
error_of(arb_client *c, const Arbiter__Error *e)
{
	seterr(c, "%s", e->message ? e->message : "");
	return -(1000 + (int)e->code);
}

static void
evq_push(arb_client *c, const struct arb_event *ev)
{
	if (c->evq == NULL) {
		c->evq = calloc(EVQ_MAX, sizeof *c->evq);
		if (c->evq == NULL)
			return;
	}
	if (c->evq_len == EVQ_MAX) {
		/* Drop the oldest: a client that never reads its events must
		 * not grow without bound. */
		c->evq_head = (c->evq_head + 1) % EVQ_MAX;
		c->evq_len--;
	}
	c->evq[(c->evq_head + c->evq_len) % EVQ_MAX] = *ev;
	c->evq_len++;
}

static void
fill_lease(struct arb_lease *l, const Arbiter__Granted *g)
{
	l->id = g->lease_id;
	l->token = g->token;
	l->waited_us = g->waited_us;
	l->ttl_ms = g->ttl_ms;
	l->mode = g->mode == ARBITER__MODE__SHARED ? ARB_SHARED : ARB_EXCLUSIVE;
}

/* Turn a message into an event for the queue. */
static void
to_event(arb_client *c, const Arbiter__ServerMessage *m, struct arb_event *ev)
{
	memset(ev, 0, sizeof *ev);
	ev->request_id = m->id;
	switch (m->kind_case) {
	case ARBITER__SERVER_MESSAGE__KIND_GRANTED:
		ev->kind = ARB_EV_GRANTED;
		fill_lease(&ev->lease, m->granted);
		snprintf(ev->resource, sizeof ev->resource, "%s",
			 m->granted->resource ? m->granted->resource : "");
		break;
	case ARBITER__SERVER_MESSAGE__KIND_QUEUED:
		ev->kind = ARB_EV_QUEUED;
		ev->lease.id = m->queued->lease_id;
		ev->position = m->queued->position;
		ev->holder_pid = m->queued->holder_pid;
		snprintf(ev->resource, sizeof ev->resource, "%s",
			 m->queued->resource ? m->queued->resource : "");
		snprintf(ev->message, sizeof ev->message, "%s",
			 m->queued->holder_name ? m->queued->holder_name : "");
		break;
	case ARBITER__SERVER_MESSAGE__KIND_ERROR:
		ev->kind = ARB_EV_FAILED;
		ev->error = error_of(c, m->error);
		snprintf(ev->message, sizeof ev->message, "%s", c->err);
		break;
	case ARBITER__SERVER_MESSAGE__KIND_REVOKED:
		ev->kind = ARB_EV_REVOKED;
		ev->lease.id = m->revoked->lease_id;
		ev->reason = m->revoked->reason;
		snprintf(ev->resource, sizeof ev->resource, "%s",
			 m->revoked->resource ? m->revoked->resource : "");
		snprintf(ev->message, sizeof ev->message, "%s",
			 m->revoked->message ? m->revoked->message : "");
		break;
	default:
		ev->kind = ARB_EV_REPLY;
		break;
	}
}

/*
 * Read until the reply to request id arrives; other frames become events.
 * Queued frames for id call the acquire's on_queued. On success *out is the
 * reply, valid until the next read.
 */
static int
await_reply(arb_client *c, uint64_t id, Arbiter__ServerMessage **out)
{
	for (;;) {
		Arbiter__ServerMessage *m;
		struct arb_event ev;
		int rc = take_frame(c, &m);

		if (rc < 0)
			return rc;
		if (m == NULL) {
			rc = fill(c, true);
			if (rc < 0)
				return rc;
			continue;
		}
		if (m->id == id && m->kind_case ==
					   ARBITER__SERVER_MESSAGE__KIND_QUEUED) {
			const struct arb_acquire_opts *o = c->opts;

			if (o != NULL && o->on_queued != NULL)
				o->on_queued(o->ctx, c->resource,
					     m->queued->position,
					     m->queued->holder_pid,
					     m->queued->holder_name
						     ? m->queued->holder_name
						     : "");
			continue;
		}
		/* An Error with id 0 is about the connection itself (a bad
		 * frame, a limit); the daemon closes after it. */
		if (m->id == id ||
		    (m->id == 0 &&
		     m->kind_case == ARBITER__SERVER_MESSAGE__KIND_ERROR)) {
			*out = m;
			if (m->kind_case == ARBITER__SERVER_MESSAGE__KIND_ERROR)
				return error_of(c, m->error);
			return 0;
		}
		to_event(c, m, &ev);
		if (ev.kind == ARB_EV_REVOKED)
			ttl_forget(c, ev.lease.id);
		evq_push(c, &ev);
	}
}

static int
call(arb_client *c, Arbiter__Request *req, Arbiter__ServerMessage **reply,
     Arbiter__ServerMessage__KindCase want)
{
	int rc;

	req->id = ++c->next_id;
	rc = send_request(c, req);
	if (rc < 0)
		return rc;
	rc = await_reply(c, req->id, reply);
	if (rc < 0)
		return rc;
	if ((*reply)->kind_case != want) {
		seterr(c, "unexpected reply kind %d to request %llu",
		       (int)(*reply)->kind_case, (unsigned long long)req->id);
		return -ARB_EPROTO;
	}
	return 0;
}

/* ------------------------------------------------------------ connect */

int
arb_connect(arb_client **out, const char *socket_path, const char *name)
{
	return arb_connect_timeout(out, socket_path, name, 0);
}

int
arb_connect_timeout(arb_client **out, const char *socket_path,
		    const char *name, int timeout_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Hello hello = ARBITER__HELLO__INIT;
	Arbiter__ServerMessage *m;
	arb_client *c;
	int rc;

	*out = NULL;
	connect_err[0] = '\0';
	c = calloc(1, sizeof *c);
	if (c == NULL)
		return -ENOMEM;
	c->fd = -1;
	c->max_frame = 65536;
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
	if (socket_path != NULL && *socket_path != '\0')
		snprintf(c->path, sizeof c->path, "%s", socket_path);
	else
		arb_socket_path(c->path, sizeof c->path);
	if (strlen(c->path) >= sizeof sa.sun_path) {
		snprintf(connect_err, sizeof connect_err,
			 "socket path %s is longer than 107 bytes", c->path);
		free(c);
		return -ENAMETOOLONG;
	}
	codec_arena_init(&c->arena, ARENA_START);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		rc = -errno;
		goto fail_errno;
	}
	memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
	if (c->timeout_ms > 0) {
		/* connect(2) on a Unix socket whose backlog is full blocks;
		 * SO_SNDTIMEO bounds it. */
		struct timeval tv = {.tv_sec = c->timeout_ms / 1000,
				     .tv_usec = (suseconds_t)(c->timeout_ms % 1000) *
						1000};

		setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	}
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		rc = -errno;
		goto fail_errno;
	}

	hello.protocol_version = ARB_PROTOCOL_VERSION;
	if (name != NULL) {
		size_t n = strlen(name);

		hello.has_client_name = true;
		hello.client_name.data = (uint8_t *)(uintptr_t)name;
		hello.client_name.len = n > ARB_CLIENT_NAME_MAX
						? ARB_CLIENT_NAME_MAX
						: n;
	}
	req.kind_case = ARBITER__REQUEST__KIND_HELLO;
	req.hello = &hello;
	rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_WELCOME);
	if (rc < 0) {
		snprintf(connect_err, sizeof connect_err,
			 "handshake with the arbiter at %s failed: %s", c->path,
			 c->err);
		arb_close(c);
		return rc;
	}
	if (m->welcome->limits && m->welcome->limits->has_max_frame_bytes)
		c->max_frame = m->welcome->limits->max_frame_bytes;
	*out = c;
	return 0;

fail_errno:
	switch (-rc) {
	case ENOENT:
		snprintf(connect_err, sizeof connect_err,
			 "no arbiter socket at %s: is arbiterd running? (set "
			 "ARBITER_SOCKET or -S to the socket.path of its "
			 "config)",
			 c->path);
		break;
	case ECONNREFUSED:
		snprintf(connect_err, sizeof connect_err,
			 "nothing listens on %s (a socket file left by a "
			 "stopped arbiterd?): start arbiterd",
			 c->path);
		break;
	case EACCES:
	case EPERM:
		snprintf(connect_err, sizeof connect_err,
			 "permission denied on %s for uid %u: the socket's "
			 "mode/group (socket.mode, socket.group) must let you "
			 "in",
			 c->path, (unsigned)getuid());
		break;
	default:
		snprintf(connect_err, sizeof connect_err,
			 "cannot connect to %s: %s", c->path, strerror(-rc));
	}
	arb_close(c);
	return rc;
}

void
arb_close(arb_client *c)
{
	if (c == NULL)
		return;
	if (c->fd >= 0)
		close(c->fd);
	codec_arena_free(&c->arena);
	free(c->rbuf);
	free(c->evq);
	free(c->ttl);
	free(c);
}

/* ------------------------------------------------------------ requests */

static int
build_acquire(arb_client *c, Arbiter__Acquire *a, const char *resource,
	      enum arb_mode mode, int64_t timeout_ms,
	      const struct arb_acquire_opts *opts)
{
	const char *bad = resource == NULL
				  ? "resource name is missing"
				  : codec_check_name(resource, strlen(resource));

	if (bad != NULL || resource == NULL) {
		seterr(c, "%s", bad);
		return -ARB_EINVALIDNAME;
	}
	a->resource.data = (uint8_t *)(uintptr_t)resource;
	a->resource.len = strlen(resource);
	a->has_mode = true;
	a->mode = mode == ARB_SHARED ? ARBITER__MODE__SHARED
				     : ARBITER__MODE__EXCLUSIVE;
	if (timeout_ms >= 0) {
		a->has_timeout_ms = true;
		a->timeout_ms = (uint64_t)timeout_ms;
	}
	if (opts != NULL) {
		if (opts->ttl_ms > 0) {
			a->has_ttl_ms = true;
			a->ttl_ms = opts->ttl_ms;
		}
		if (opts->lock_delay_ms >= 0) {
			a->has_lock_delay_ms = true;
			a->lock_delay_ms = (uint64_t)opts->lock_delay_ms;
		}
		if (opts->position_updates) {
			a->has_position_updates = true;
			a->position_updates = true;
		}
	}
	return 0;
}

/* arb_acquire: nobody to tell about the queue, so ask for no Queued. */
static void
quiet_unless_watched(Arbiter__Acquire *a, const struct arb_acquire_opts *opts)
{
	if (opts == NULL ||
	    (opts->on_queued == NULL && !opts->position_updates)) {
		a->has_quiet = true;
		a->quiet = true;
	}
}

int
arb_acquire(arb_client *c, const char *resource, enum arb_mode mode,
	    int64_t timeout_ms, const struct arb_acquire_opts *opts,
	    struct arb_lease *out)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;
	Arbiter__ServerMessage *m;
	int rc;

	rc = build_acquire(c, &a, resource, mode, timeout_ms, opts);
	if (rc < 0)
		return rc;
	quiet_unless_watched(&a, opts);
	req.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	req.acquire = &a;
	c->opts = opts;
	c->resource = resource;
	c->in_acquire = true;
	rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_GRANTED);
	c->in_acquire = false;
	c->opts = NULL;
	c->resource = NULL;
	if (rc < 0)
		return rc;
	fill_lease(out, m->granted);
	ttl_track(c, out->id, out->ttl_ms);
	return 0;
}

int
arb_acquire_async(arb_client *c, const char *resource, enum arb_mode mode,
		  int64_t timeout_ms, const struct arb_acquire_opts *opts,
		  uint64_t *request_id)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;
	int rc;

	rc = build_acquire(c, &a, resource, mode, timeout_ms, opts);
	if (rc < 0)
		return rc;
	req.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	req.acquire = &a;
	req.id = ++c->next_id;
	*request_id = req.id;
	return send_request(c, &req);
}

/* A Release sent without waiting: its answer, if any, becomes an event. */
static int
send_release(arb_client *c, bool by_request, uint64_t key, bool quiet)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Release r = ARBITER__RELEASE__INIT;

	if (by_request) {
		r.has_request_id = true;
		r.request_id = key;
	} else {
		r.has_lease_id = true;
		r.lease_id = key;
	}
	r.has_quiet = quiet;
	r.quiet = quiet;
	req.kind_case = ARBITER__REQUEST__KIND_RELEASE;
	req.release = &r;
	req.id = ++c->next_id;
	return send_request(c, &req);
}

int
arb_cancel(arb_client *c, uint64_t request_id)
{
	/* The Released reply (or UNKNOWN_LEASE if it was granted or failed
	 * meanwhile) arrives as an ARB_EV_REPLY / ARB_EV_FAILED event. */
	return send_release(c, true, request_id, false);
}

int
arb_next_event(arb_client *c, struct arb_event *ev)
{
	Arbiter__ServerMessage *m;
	int rc;

	if (c->evq_len > 0) {
		*ev = c->evq[c->evq_head];
		c->evq_head = (c->evq_head + 1) % EVQ_MAX;
		c->evq_len--;
		return 1;
	}
	for (;;) {
		rc = take_frame(c, &m);
		if (rc < 0)
			return rc;
		if (m != NULL) {
			to_event(c, m, ev);
			if (ev->kind == ARB_EV_GRANTED)
				ttl_track(c, ev->lease.id, ev->lease.ttl_ms);
			else if (ev->kind == ARB_EV_REVOKED)
				ttl_forget(c, ev->lease.id);
			return 1;
		}
		rc = fill(c, false);
		if (rc <= 0)
			return rc;
	}
}

int
arb_release(arb_client *c, uint64_t lease_id)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Release r = ARBITER__RELEASE__INIT;
	Arbiter__ServerMessage *m;

	r.has_lease_id = true;
	r.lease_id = lease_id;
	req.kind_case = ARBITER__REQUEST__KIND_RELEASE;
	req.release = &r;
	ttl_forget(c, lease_id);
	return call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_RELEASED);
}

int
arb_release_nowait(arb_client *c, uint64_t lease_id)
{
	ttl_forget(c, lease_id);
	return send_release(c, false, lease_id, true);
}

int
arb_renew(arb_client *c, uint64_t lease_id, uint64_t ttl_ms)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Renew r = ARBITER__RENEW__INIT;
	Arbiter__ServerMessage *m;
	int rc;

	r.lease_id = lease_id;
	if (ttl_ms > 0) {
		r.has_ttl_ms = true;
		r.ttl_ms = ttl_ms;
	}
	req.kind_case = ARBITER__REQUEST__KIND_RENEW;
	req.renew = &r;
	rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_RENEWED);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < c->nttl; i++) {
		if (c->ttl[i].id == lease_id) {
			c->ttl[i].ttl_ms = m->renewed->ttl_ms;
			c->ttl[i].due_ms = mono_ms() + m->renewed->ttl_ms / 3;
		}
	}
	return 0;
}

int64_t
arb_keepalive(arb_client *c)
{
	uint64_t now = mono_ms(), next = UINT64_MAX;

	for (size_t i = 0; i < c->nttl; i++) {
		if (c->ttl[i].due_ms <= now) {
			uint64_t id = c->ttl[i].id;
			int rc = arb_renew(c, id, 0);

			if (rc < 0) {
				char why[sizeof c->err];

				snprintf(why, sizeof why, "%s", c->err);
				ttl_forget(c, id);
				seterr(c, "renewing lease %llu failed: %s",
				       (unsigned long long)id, why);
				return rc;
			}
			now = mono_ms();
		}
	}
	for (size_t i = 0; i < c->nttl; i++) {
		if (c->ttl[i].due_ms < next)
			next = c->ttl[i].due_ms;
	}
	if (next == UINT64_MAX)
		return -1;
	return next > now ? (int64_t)(next - now) : 0;
}

int
arb_ping(arb_client *c, char *role, size_t rolelen)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Ping p = ARBITER__PING__INIT;
	Arbiter__ServerMessage *m;
	int rc;

	req.kind_case = ARBITER__REQUEST__KIND_PING;
	req.ping = &p;
	rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_PONG);
	if (rc == 0 && role != NULL && rolelen > 0)
		snprintf(role, rolelen, "%s",
			 m->pong->role ? m->pong->role : "");
	return rc;
}

int
arb_revoke(arb_client *c, uint64_t lease_id, uint32_t pid)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Revoke r = ARBITER__REVOKE__INIT;
	Arbiter__ServerMessage *m;
	int rc;

	if (lease_id != 0) {
		r.has_lease_id = true;
		r.lease_id = lease_id;
	} else {
		r.has_pid = true;
		r.pid = pid;
	}
	req.kind_case = ARBITER__REQUEST__KIND_REVOKE;
	req.revoke = &r;
	rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_REVOKE_DONE);
	return rc < 0 ? rc : (int)m->revoke_done->revoked;
}

/* An optional resource filter: false (field absent) when name is NULL. */
static protobuf_c_boolean
set_name(ProtobufCBinaryData *field, const char *name)
{
	if (name == NULL)
		return false;
	field->data = (uint8_t *)(uintptr_t)name;
	field->len = strlen(name);
	return true;
}

/*
 * Stats and Status come in pages (see arbiter.proto). The pages are packed
 * one after another, which protobuf defines as merging them: the repeated
 * resources add up and the last page's other fields win. The whole is then
 * unpacked into the client's arena, where it lives until the next call.
 */
struct pages {
	uint8_t *buf;
	size_t len, cap;
	uint8_t cursor[8];
	size_t cursor_len;
};

static int
pages_add(arb_client *c, struct pages *pg, const ProtobufCMessage *m,
	  protobuf_c_boolean has_next, const ProtobufCBinaryData *next)
{
	size_t n = protobuf_c_message_get_packed_size(m);

	if (pg->cap - pg->len < n) {
		size_t ncap = pg->cap ? pg->cap : 65536;
		uint8_t *nb;

		while (ncap - pg->len < n)
			ncap *= 2;
		nb = realloc(pg->buf, ncap);
		if (nb == NULL) {
			seterr(c, "out of memory for a reply of %zu bytes",
			       pg->len + n);
			return -ENOMEM;
		}
		pg->buf = nb;
		pg->cap = ncap;
	}
	pg->len += protobuf_c_message_pack(m, pg->buf + pg->len);
	pg->cursor_len = 0;
	if (has_next && next->len > 0) {
		if (next->len > sizeof pg->cursor) {
			seterr(c, "the daemon sent a page cursor of %zu bytes "
				  "(version mismatch?)",
			       next->len);
			return -ARB_EPROTO;
		}
		memcpy(pg->cursor, next->data, next->len);
		pg->cursor_len = next->len;
	}
	return 0;
}

static int
pages_unpack(arb_client *c, struct pages *pg,
	     const ProtobufCMessageDescriptor *d, const void **out)
{
	/* Decoded, a message takes 1.5 to 3 times its packed size. */
	size_t cap = 2 * pg->len + 65536;

	for (;;) {
		ProtobufCMessage *m;

		codec_arena_free(&c->arena);
		codec_arena_init(&c->arena, cap);
		if (c->arena.cap == 0) {
			seterr(c, "out of memory for a reply of %zu bytes",
			       pg->len);
			return -ENOMEM;
		}
		m = protobuf_c_message_unpack(d, &c->arena.alloc, pg->len,
					      pg->buf);
		if (m != NULL) {
			*out = m;
			return 0;
		}
		if (cap > 64 * pg->len + 65536) {
			seterr(c, "the daemon's reply does not decode "
				  "(version mismatch?)");
			return -ARB_EPROTO;
		}
		cap *= 2;
	}
}

int
arb_stats(arb_client *c, const char *resource, const void **stats)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__StatsRequest s = ARBITER__STATS_REQUEST__INIT;
	Arbiter__ServerMessage *m;
	struct pages pg = {0};
	int rc;

	s.has_resource = set_name(&s.resource, resource);
	req.kind_case = ARBITER__REQUEST__KIND_STATS;
	req.stats = &s;
	do {
		rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_STATS);
		if (rc == 0)
			rc = pages_add(c, &pg, &m->stats->base,
				       m->stats->has_next_cursor,
				       &m->stats->next_cursor);
		s.has_cursor = pg.cursor_len > 0;
		s.cursor.data = pg.cursor;
		s.cursor.len = pg.cursor_len;
	} while (rc == 0 && s.has_cursor);
	if (rc == 0)
		rc = pages_unpack(c, &pg, &arbiter__stats__descriptor, stats);
	free(pg.buf);
	return rc;
}

int
arb_status(arb_client *c, const char *resource, const void **status)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__StatusRequest s = ARBITER__STATUS_REQUEST__INIT;
	Arbiter__ServerMessage *m;
	struct pages pg = {0};
	int rc;

	s.has_resource = set_name(&s.resource, resource);
	req.kind_case = ARBITER__REQUEST__KIND_STATUS;
	req.status = &s;
	do {
		rc = call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_STATUS);
		if (rc == 0)
			rc = pages_add(c, &pg, &m->status->base,
				       m->status->has_next_cursor,
				       &m->status->next_cursor);
		s.has_cursor = pg.cursor_len > 0;
		s.cursor.data = pg.cursor;
		s.cursor.len = pg.cursor_len;
	} while (rc == 0 && s.has_cursor);
	if (rc == 0)
		rc = pages_unpack(c, &pg, &arbiter__status__descriptor, status);
	free(pg.buf);
	return rc;
}

int
arb_stats_reset(arb_client *c)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__StatsReset s = ARBITER__STATS_RESET__INIT;
	Arbiter__ServerMessage *m;

	req.kind_case = ARBITER__REQUEST__KIND_STATS_RESET;
	req.stats_reset = &s;
	return call(c, &req, &m,
		    ARBITER__SERVER_MESSAGE__KIND_STATS_RESET_DONE);
}
