/*
 * libarbiter: connection, handshake, frame I/O and the request calls (see
 * arbiter.h). One receive buffer serves both the blocking calls and the
 * non-blocking event API, so a frame that arrives during a blocking call is
 * never lost: events not meant for the caller are queued for
 * arb_next_event().
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"
#include "codec.h"
#include "defaults.h"
#include "frame.h"

#define RECV_MAX    FRAME_HARD_MAX
#define ARENA_START (64u << 10)
#define ARENA_CAP   (64u << 20)
#define EVQ_MAX	    1024
/* Requests the client gave up on whose answers may still come. */
#define IGNORE_MAX 64
/* How long a withdrawal may take to send before the connection is cut. */
#define WITHDRAW_SEND_MS 50

struct arb_client {
	int fd;
	uint64_t next_id;
	char path[108];
	char err[512];
	uint8_t *rbuf;
	size_t rlen, rcap;
	struct codec_arena arena;
	struct arb_event *evq; /* ring of pending events */
	uint32_t *evq_hosts;   /* ... and each Queued's hosts_ahead */
	size_t evq_head, evq_len;
	uint32_t hosts_ahead; /* of the Queued being reported */
	struct held {
		uint64_t id, request_id;
		uint64_t valid_until_ns; /* CLOCK_BOOTTIME; 0: local */
	} * held; /* every lease granted and not yet ended */
	size_t nheld, held_cap;
	uint64_t cancelled[IGNORE_MAX]; /* ring of arb_cancel()ed requests */
	size_t ncancelled;
	struct ttl_lease {
		uint64_t id, ttl_ms, due_ms;
	} * ttl; /* leases with a ttl, for arb_keepalive */
	size_t nttl, ttl_cap;
	uint32_t max_frame;
	int timeout_ms;	      /* I/O bound of each request; 0: none */
	int64_t bound_ms;     /* the bound of the current wait, for messages */
	uint64_t deadline_ms; /* end of the current wait (mono_ms); 0: none */
	uint64_t ignore[IGNORE_MAX]; /* ring of withdrawn request ids */
	size_t nignore;
	bool broken;   /* a frame was cut short: nothing more may be sent */
	bool handover; /* the daemon's Welcome says it knows Handover */
	bool cluster;  /* ... that it runs in cluster mode */
	bool lost;     /* the connection is gone: no lease is valid */
};

static __thread char connect_err[1024];

static void seterr(arb_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

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
	    [ARB_EDEADLOCK - 1000] =
		"upgrade refused: it would deadlock with another's upgrade",
	};
	int e = err < 0 ? -err : err;

	if (e == ARB_EPROTO)
		return "the daemon sent something unreadable";
	if (e == ARB_ECONNLOST)
		return "connection to the daemon lost";
	if (e == ARB_EREVOKED)
		return "lease revoked";
	if (e == ARB_EUNTRUSTED)
		return "the socket or the server behind it is not trusted";
	if (e == ARB_EUNAVAILABLE)
		return "cluster resource unavailable: arbiterd cannot reach "
		       "etcd "
		       "now; retry later (arbiterctl stats shows the cluster's "
		       "state and last error)";
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

/* ------------------------------------------------------------ leases */

uint64_t
arb_boottime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct held *
held_find(const arb_client *c, uint64_t id)
{
	for (size_t i = 0; i < c->nheld; i++) {
		if (c->held[i].id == id)
			return &c->held[i];
	}
	return NULL;
}

static void
held_track(arb_client *c, uint64_t request_id, uint64_t id,
	   uint64_t valid_until_ns)
{
	struct held *h = held_find(c, id);

	if (h == NULL && c->nheld == c->held_cap) {
		size_t cap = c->held_cap ? c->held_cap * 2 : 8;
		struct held *n = realloc(c->held, cap * sizeof *n);

		if (n == NULL)
			return; /* arb_lease_valid then says false: safe */
		c->held = n;
		c->held_cap = cap;
	}
	if (h == NULL)
		h = &c->held[c->nheld++];
	h->id = id;
	h->request_id = request_id;
	h->valid_until_ns = valid_until_ns;
}

static void
held_forget(arb_client *c, uint64_t id, uint64_t request_id)
{
	for (size_t i = 0; i < c->nheld; i++) {
		if ((id != 0 && c->held[i].id == id) ||
		    (request_id != 0 && c->held[i].request_id == request_id)) {
			c->held[i] = c->held[--c->nheld];
			return;
		}
	}
}

/* Was request_id withdrawn by arb_cancel()? Its grant is then no lease. */
static bool
cancelled_take(arb_client *c, uint64_t request_id)
{
	size_t n = c->ncancelled < IGNORE_MAX ? c->ncancelled : IGNORE_MAX;

	for (size_t i = 0; i < n; i++) {
		if (request_id != 0 && c->cancelled[i] == request_id) {
			c->cancelled[i] = 0;
			return true;
		}
	}
	return false;
}

uint64_t
arb_lease_valid_until(const arb_client *c, uint64_t lease_id)
{
	const struct held *h = held_find(c, lease_id);

	return h != NULL ? h->valid_until_ns : 0;
}

bool
arb_lease_valid(const arb_client *c, uint64_t lease_id)
{
	const struct held *h = held_find(c, lease_id);

	if (h == NULL || c->lost || c->broken)
		return false;
	return h->valid_until_ns == 0 || arb_boottime_ns() < h->valid_until_ns;
}

bool
arb_cluster_mode(const arb_client *c)
{
	return c->cluster;
}

uint32_t
arb_hosts_ahead(const arb_client *c)
{
	return c->hosts_ahead;
}

const char *
arb_reason_name(int reason)
{
	static const char *const names[] = {
	    [ARB_REASON_UNSPECIFIED] = "unspecified",
	    [ARB_REASON_DISCONNECT] = "disconnect",
	    [ARB_REASON_EXPIRED] = "expired",
	    [ARB_REASON_ADMIN] = "admin",
	    [ARB_REASON_SHUTDOWN] = "shutdown",
	    [ARB_REASON_STORAGE_LOST] = "storage_lost",
	    [ARB_REASON_CLUSTER_LOST] = "cluster_lost",
	};

	if (reason < 0 || reason >= (int)(sizeof names / sizeof names[0]))
		return "unknown";
	return names[reason];
}

/*
 * What a frame from the daemon changes in the client's tables, whoever
 * reads it (a blocking call's wait, arb_next_event): every lease granted
 * with its deadline, each Extended, Converted or Revoked. Called once per
 * frame, for frames not absorbed (withdrawn requests).
 */
static void
note(arb_client *c, const Arbiter__ServerMessage *m)
{
	switch (m->kind_case) {
	case ARBITER__SERVER_MESSAGE__KIND_GRANTED:
		if (cancelled_take(c, m->id))
			break; /* arb_cancel()'s release ends it */
		held_track(c, m->id, m->granted->lease_id,
			   m->granted->has_valid_until_ns
			       ? m->granted->valid_until_ns
			       : 0);
		ttl_track(c, m->granted->lease_id, m->granted->ttl_ms);
		break;
	case ARBITER__SERVER_MESSAGE__KIND_CONVERTED: {
		struct held *h = held_find(c, m->converted->lease_id);

		if (h != NULL && m->converted->has_valid_until_ns)
			h->valid_until_ns = m->converted->valid_until_ns;
		break;
	}
	case ARBITER__SERVER_MESSAGE__KIND_EXTENDED: {
		struct held *h = held_find(c, m->extended->lease_id);

		if (h != NULL && m->extended->has_valid_until_ns)
			h->valid_until_ns = m->extended->valid_until_ns;
		break;
	}
	case ARBITER__SERVER_MESSAGE__KIND_REVOKED:
		held_forget(c, m->revoked->lease_id, 0);
		ttl_forget(c, m->revoked->lease_id);
		break;
	default:
		break;
	}
}

/* ------------------------------------------------------------ frames */

static int fill(arb_client *c, bool block);
static int take_frame(arb_client *c, Arbiter__ServerMessage **m);
static int error_of(arb_client *c, const Arbiter__Error *e);

/* Milliseconds left before the current wait's deadline; -1: no deadline. */
static int
time_left(const arb_client *c)
{
	uint64_t now;

	if (c->deadline_ms == 0)
		return -1;
	now = mono_ms();
	if (c->deadline_ms <= now)
		return 0;
	return c->deadline_ms - now > INT32_MAX ? INT32_MAX
						: (int)(c->deadline_ms - now);
}

/* Bound the next wait by ms (0: no bound), for the messages too. */
static void
set_deadline(arb_client *c, int64_t ms)
{
	c->bound_ms = ms;
	c->deadline_ms = ms > 0 ? mono_ms() + (uint64_t)ms : 0;
}

static void
set_timeout_error(arb_client *c)
{
	seterr(c,
	       "no answer from the arbiter at %s within %lld ms: is it "
	       "stopped, hung or overloaded? (check with: arbiterctl -S %s "
	       "ping)",
	       c->path, (long long)c->bound_ms, c->path);
}

/* The peer is gone: say so, and that the daemon may have died. */
static void
set_lost_error(arb_client *c, const char *when, int err)
{
	seterr(c,
	       "the connection to arbiterd on %s was lost%s%s%s%s: the daemon "
	       "may have died or been restarted (check with: arbiterctl -S "
	       "%s ping, and the daemon's log)",
	       c->path, when, err ? " (" : "", err ? strerror(err) : "",
	       err ? ")" : "", c->path);
}

static int
send_request(arb_client *c, Arbiter__Request *req)
{
	uint8_t stack[1024], *buf = stack;
	size_t n = codec_frame_size(&req->base), off = 0;
	bool own_deadline = false;
	int rc = 0;

	if (c->broken) {
		seterr(c,
		       "the connection to arbiterd on %s was cut after an "
		       "earlier send timed out; connect again",
		       c->path);
		return -ARB_ECONNLOST;
	}
	if (n - FRAME_HEADER > c->max_frame) {
		seterr(c,
		       "request of %zu bytes is over the daemon's "
		       "max_frame_bytes (%u)",
		       n - FRAME_HEADER, c->max_frame);
		return -ARB_ELIMIT;
	}
	if (n > sizeof stack && (buf = malloc(n)) == NULL)
		return -ENOMEM;
	codec_pack_frame(&req->base, buf);
	/* A send outside a bounded wait (async calls, an acquire without a
	 * timeout) is bounded by the I/O timeout all the same. */
	if (c->deadline_ms == 0 && c->timeout_ms > 0) {
		set_deadline(c, c->timeout_ms);
		own_deadline = true;
	}
	while (off < n) {
		ssize_t w = send(c->fd, buf + off, n - off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd p = {.fd = c->fd, .events = POLLOUT};

			if (poll(&p, 1, time_left(c)) == 0) {
				set_timeout_error(c);
				if (off > 0) {
					/* Half a frame is on the wire: the
					 * stream cannot be resumed. */
					shutdown(c->fd, SHUT_RDWR);
					c->broken = true;
				}
				rc = -ETIMEDOUT;
				break;
			}
			continue;
		}
		if (w <= 0) {
			int e = errno;
			Arbiter__ServerMessage *m = NULL;

			/* The daemon may have said why before closing (a
			 * limit, a refusal): report its words, not EPIPE. */
			while (fill(c, false) > 0)
				;
			if (take_frame(c, &m) > 0 && m != NULL &&
			    m->kind_case ==
				ARBITER__SERVER_MESSAGE__KIND_ERROR) {
				rc = error_of(c, m->error);
			} else {
				set_lost_error(c, " while sending", e);
				c->lost = true;
				rc = -ARB_ECONNLOST;
			}
			break;
		}
		off += (size_t)w;
	}
	if (buf != stack)
		free(buf);
	if (own_deadline)
		c->deadline_ms = 0;
	return rc;
}

/*
 * Read more bytes. block: wait for them, until the current deadline.
 * Returns 1 when bytes came, 0 when none are ready (non-blocking), < 0 on
 * EOF, error or deadline (-ETIMEDOUT).
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
		if (block && c->deadline_ms != 0 && time_left(c) == 0) {
			/* Checked before reading too: bytes that keep coming
			 * (a flood of Queued, a frame trickled byte by byte)
			 * must not stretch the wait. */
			set_timeout_error(c);
			return -ETIMEDOUT;
		}
		/* Always non-blocking: waiting is poll's job (with the
		 * deadline, if any). */
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

			if (!block)
				return 0;
			if (poll(&p, 1, time_left(c)) == 0) {
				set_timeout_error(c);
				return -ETIMEDOUT;
			}
			continue;
		}
		set_lost_error(c, "", n < 0 ? errno : 0);
		c->lost = true;
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
		codec_arena_init(&c->arena,
				 cap * 4 < ARENA_CAP ? cap * 4 : ARENA_CAP);
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
evq_push(arb_client *c, const struct arb_event *ev, uint32_t hosts_ahead)
{
	if (c->evq == NULL) {
		c->evq = calloc(EVQ_MAX, sizeof *c->evq);
		c->evq_hosts = calloc(EVQ_MAX, sizeof *c->evq_hosts);
		if (c->evq == NULL || c->evq_hosts == NULL) {
			free(c->evq);
			free(c->evq_hosts);
			c->evq = NULL;
			c->evq_hosts = NULL;
			return;
		}
	}
	if (ev->kind == ARB_EV_EXTENDED) {
		/* One per lease: the deadline is in the lease table, so a
		 * client that reads no events (it only blocks) does not
		 * lose older events to a stream of renewals. */
		for (size_t i = 0; i < c->evq_len; i++) {
			struct arb_event *q =
			    &c->evq[(c->evq_head + i) % EVQ_MAX];

			if (q->kind == ARB_EV_EXTENDED &&
			    q->lease.id == ev->lease.id)
				return;
		}
	}
	if (c->evq_len == EVQ_MAX) {
		/* Drop the oldest: a client that never reads its events must
		 * not grow without bound. */
		c->evq_head = (c->evq_head + 1) % EVQ_MAX;
		c->evq_len--;
	}
	c->evq[(c->evq_head + c->evq_len) % EVQ_MAX] = *ev;
	c->evq_hosts[(c->evq_head + c->evq_len) % EVQ_MAX] = hosts_ahead;
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
	case ARBITER__SERVER_MESSAGE__KIND_EXTENDED:
		ev->kind = ARB_EV_EXTENDED;
		ev->lease.id = m->extended->lease_id;
		snprintf(ev->resource, sizeof ev->resource, "%s",
			 m->extended->resource ? m->extended->resource : "");
		break;
	case ARBITER__SERVER_MESSAGE__KIND_CONVERTED:
		ev->kind = ARB_EV_CONVERTED;
		ev->lease.id = m->converted->lease_id;
		ev->lease.token = m->converted->token;
		ev->lease.waited_us = m->converted->waited_us;
		ev->lease.mode = m->converted->mode == ARBITER__MODE__SHARED
				     ? ARB_SHARED
				     : ARB_EXCLUSIVE;
		snprintf(ev->resource, sizeof ev->resource, "%s",
			 m->converted->resource ? m->converted->resource : "");
		break;
	default:
		ev->kind = ARB_EV_REPLY;
		break;
	}
}

static void
ignore_add(arb_client *c, uint64_t id)
{
	/* A ring: an id whose answer never comes (a quiet release that
	 * worked) is overwritten in time; ids are never reused. */
	c->ignore[c->nignore++ % IGNORE_MAX] = id;
}

static bool
ignore_has(const arb_client *c, uint64_t id, size_t *slot)
{
	size_t n = c->nignore < IGNORE_MAX ? c->nignore : IGNORE_MAX;

	for (size_t i = 0; i < n; i++) {
		if (id != 0 && c->ignore[i] == id) {
			*slot = i;
			return true;
		}
	}
	return false;
}

static int send_release(arb_client *c, bool by_request, uint64_t key,
			bool quiet, uint64_t *sent_id);

/*
 * A frame answering a request the client gave up on (see withdraw) is
 * swallowed here: the caller was already told it failed. A Granted that
 * arrives anyway is released at once, so no lease is held that nobody
 * knows of. Returns true when m was such a frame.
 */
static bool
absorb(arb_client *c, const Arbiter__ServerMessage *m)
{
	size_t slot;
	uint64_t rid;

	if (!ignore_has(c, m->id, &slot))
		return false;
	if (m->kind_case == ARBITER__SERVER_MESSAGE__KIND_QUEUED)
		return true; /* more may follow */
	c->ignore[slot] = 0;
	if (m->kind_case == ARBITER__SERVER_MESSAGE__KIND_GRANTED &&
	    send_release(c, false, m->granted->lease_id, true, &rid) == 0)
		ignore_add(c, rid);
	return true;
}

/*
 * Read until the reply to request id arrives; other frames become events.
 * Queued frames for id call the acquire's on_queued. On success *out is the
 * reply, valid until the next read. Waits until the deadline set before.
 */
static int
await_reply(arb_client *c, uint64_t id, Arbiter__ServerMessage **out,
	    const struct arb_acquire_opts *o, const char *resource)
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
		if (absorb(c, m))
			continue;
		note(c, m);
		if (m->id == id &&
		    m->kind_case == ARBITER__SERVER_MESSAGE__KIND_QUEUED) {
			c->hosts_ahead = m->queued->hosts_ahead;
			if (o != NULL && o->on_queued != NULL)
				o->on_queued(o->ctx, resource,
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
		evq_push(c, &ev,
			 m->kind_case == ARBITER__SERVER_MESSAGE__KIND_QUEUED
			     ? m->queued->hosts_ahead
			     : 0);
	}
}

static int
check_kind(arb_client *c, const Arbiter__ServerMessage *reply, uint64_t id,
	   Arbiter__ServerMessage__KindCase want)
{
	if (reply == NULL || reply->kind_case != want) {
		seterr(c, "unexpected reply kind %d to request %llu",
		       reply ? (int)reply->kind_case : -1,
		       (unsigned long long)id);
		return -ARB_EPROTO;
	}
	return 0;
}

/* One request and its reply, within the client's I/O bound. */
static int
call(arb_client *c, Arbiter__Request *req, Arbiter__ServerMessage **reply,
     Arbiter__ServerMessage__KindCase want)
{
	int rc;

	*reply = NULL;
	req->id = ++c->next_id;
	set_deadline(c, c->timeout_ms);
	rc = send_request(c, req);
	if (rc == 0)
		rc = await_reply(c, req->id, reply, NULL, NULL);
	c->deadline_ms = 0;
	if (rc < 0)
		return rc;
	return check_kind(c, *reply, req->id, want);
}

/* ------------------------------------------------------------ trust */

/*
 * Who may serve the socket: the rule every client applies (the Python
 * client too). The default per-user folder must be the caller's own and
 * closed to others; after connect, the server's uid (SO_PEERCRED) must be
 * the caller's, root's, one the caller trusts (ARBITER_TRUST_UID,
 * arb_trust_uid), or the owner of a folder only root can have handed it.
 * Anything else could be another local user answering as arbiterd and
 * granting every lease, so the client refuses before saying Hello.
 */
#define TRUST_MAX 64

static pthread_mutex_t trust_lock = PTHREAD_MUTEX_INITIALIZER;
static uid_t trust_uids[TRUST_MAX];
static size_t ntrust;
static bool trust_any;

int
arb_trust_uid(uid_t uid)
{
	int rc = 0;

	pthread_mutex_lock(&trust_lock);
	if (uid == ARB_TRUST_ANY_UID)
		trust_any = true;
	else if (ntrust < TRUST_MAX)
		trust_uids[ntrust++] = uid;
	else
		rc = -ENOSPC;
	pthread_mutex_unlock(&trust_lock);
	return rc;
}

static bool
trusted_by_option(uid_t uid)
{
	bool yes;

	pthread_mutex_lock(&trust_lock);
	yes = trust_any;
	for (size_t i = 0; !yes && i < ntrust; i++)
		yes = trust_uids[i] == uid;
	pthread_mutex_unlock(&trust_lock);
	return yes;
}

/* " (name)" for a uid that has a user name, else "". */
static void
user_suffix(char *buf, size_t len, uid_t uid)
{
	struct passwd pw, *res = NULL;
	char tmp[2048];

	buf[0] = '\0';
	if (getpwuid_r(uid, &pw, tmp, sizeof tmp, &res) == 0 && res != NULL)
		snprintf(buf, len, " (%s)", pw.pw_name);
}

/*
 * Does $ARBITER_TRUST_UID name uid? Entries are uids or user names,
 * separated by commas, spaces allowed; `*` trusts any uid. An entry that is
 * neither a number nor a known user goes into bad (for the refusal's text).
 */
static bool
trusted_by_env(uid_t uid, char *bad, size_t badlen)
{
	const char *env = getenv("ARBITER_TRUST_UID");
	const char *p = env;

	bad[0] = '\0';
	while (p != NULL && *p != '\0') {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		char word[256];
		char *end;
		unsigned long v;

		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n > 0 && n < sizeof word) {
			memcpy(word, p, n);
			word[n] = '\0';
			errno = 0;
			v = strtoul(word, &end, 10);
			if (strcmp(word, "*") == 0)
				return true;
			if (word[0] >= '0' && word[0] <= '9' && *end == '\0' &&
			    errno == 0 && v < (unsigned long)(uid_t)-1) {
				if ((uid_t)v == uid)
					return true;
			} else {
				struct passwd pw, *res = NULL;
				char tmp[2048];

				if (getpwnam_r(word, &pw, tmp, sizeof tmp,
					       &res) == 0 &&
				    res != NULL) {
					if (pw.pw_uid == uid)
						return true;
				} else if (bad[0] == '\0') {
					snprintf(bad, badlen, "%.40s", word);
				}
			}
		} else if (n > 0 && bad[0] == '\0') {
			snprintf(bad, badlen, "%.40s...", p);
		}
		p = e ? e + 1 : NULL;
	}
	return false;
}

/* The folder part of a socket path ("." when it has none). */
static void
folder_of(const char *path, char *buf, size_t len)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		snprintf(buf, len, ".");
	else if (slash == path)
		snprintf(buf, len, "/");
	else
		snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

/*
 * Rule (d): uid owns the socket's folder, a real folder closed to group and
 * others, inside a folder of root's closed to others too. Only root can
 * have handed that folder to uid (systemd's RuntimeDirectory= does).
 */
static bool
delegated_by_root(const char *path, uid_t uid)
{
	char dir[sizeof((struct sockaddr_un *)0)->sun_path + 4];
	struct stat st;

	folder_of(path, dir, sizeof dir - 3);
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != uid ||
	    (st.st_mode & 022) != 0)
		return false;
	/* The folder is no link, so its ".." is its real parent. */
	snprintf(dir + strlen(dir), 4, "/..");
	return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 &&
	       (st.st_mode & 022) == 0;
}

/*
 * Rule 2: the default per-user folder must be a real folder of the
 * caller's (or one root handed to a service, rule d), not writable by
 * group or others. 0 when fine or absent (the
 * connect then says there is no socket), else -ARB_EUNTRUSTED with err set.
 */
static int
check_default_folder(const char *path, char *err, size_t errlen)
{
	char dir[sizeof((struct sockaddr_un *)0)->sun_path], who[300];
	struct stat st;
	uid_t me = getuid();

	folder_of(path, dir, sizeof dir);
	if (lstat(dir, &st) < 0)
		return 0;
	if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen,
			 "refusing %s: its folder %s is %s, not a folder of "
			 "yours, so another user could be answering as "
			 "arbiterd. Remove it (rm %s) and restart arbiterd, or "
			 "name a socket you trust with ARBITER_SOCKET.",
			 path, dir,
			 S_ISLNK(st.st_mode) ? "a symbolic link" : "a file",
			 dir);
		return -ARB_EUNTRUSTED;
	}
	/* A folder root handed to a service (systemd's /run/arbiter for a
	 * daemon of its own user) is as safe as root's own. */
	if (st.st_uid != me && !delegated_by_root(path, st.st_uid)) {
		user_suffix(who, sizeof who, st.st_uid);
		snprintf(err, errlen,
			 "refusing %s: its folder %s belongs to uid %u%s, not "
			 "to you (uid %u), so another user could be answering "
			 "as arbiterd. Remove it (rm -r %s) and restart "
			 "arbiterd, or name a socket you trust with "
			 "ARBITER_SOCKET.",
			 path, dir, (unsigned)st.st_uid, who, (unsigned)me,
			 dir);
		return -ARB_EUNTRUSTED;
	}
	if ((st.st_mode & 022) != 0) {
		snprintf(err, errlen,
			 "refusing %s: its folder %s is writable by %s (mode "
			 "%04o), so another user could be answering as "
			 "arbiterd. Close it (chmod go-w %s) or remove it (rm "
			 "-r %s) and restart arbiterd, or name a socket you "
			 "trust with ARBITER_SOCKET.",
			 path, dir,
			 (st.st_mode & 020) && (st.st_mode & 002)
			     ? "group and others"
			 : (st.st_mode & 020) ? "its group"
					      : "others",
			 (unsigned)(st.st_mode & 07777), dir, dir);
		return -ARB_EUNTRUSTED;
	}
	return 0;
}

/* Rule 3: who serves the socket we are connected to? */
static int
check_peer(int fd, const char *path, char *err, size_t errlen)
{
	struct ucred cr;
	socklen_t len = sizeof cr;
	uid_t me = geteuid();
	char bad[64], who[300];

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
		snprintf(err, errlen,
			 "refusing the server on %s: cannot learn its uid "
			 "(SO_PEERCRED: %s)",
			 path, strerror(errno));
		return -ARB_EUNTRUSTED;
	}
	if (cr.uid == me || cr.uid == 0 || trusted_by_option(cr.uid) ||
	    trusted_by_env(cr.uid, bad, sizeof bad) ||
	    delegated_by_root(path, cr.uid))
		return 0;
	user_suffix(who, sizeof who, cr.uid);
	snprintf(
	    err, errlen,
	    "refusing the server on %s: it runs as uid %u%s, not as you "
	    "(uid %u) or root. If uid %u runs your arbiterd, trust it with "
	    "ARBITER_TRUST_UID=%u (arbiterctl --trust-uid %u; C: "
	    "arb_trust_uid(%u))%s%s%s",
	    path, (unsigned)cr.uid, who, (unsigned)me, (unsigned)cr.uid,
	    (unsigned)cr.uid, (unsigned)cr.uid, (unsigned)cr.uid,
	    bad[0] ? "; note: ARBITER_TRUST_UID has '" : ".", bad,
	    bad[0] ? "', which is neither a uid nor a user name." : "");
	return -ARB_EUNTRUSTED;
}

/* ------------------------------------------------------------ connect */

int
arb_connect(arb_client **out, const char *socket_path, const char *name)
{
	return arb_connect_timeout(out, socket_path, name, -1);
}

int
arb_connect_timeout(arb_client **out, const char *socket_path, const char *name,
		    int timeout_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Hello hello = ARBITER__HELLO__INIT;
	Arbiter__ServerMessage *m;
	arb_client *c;
	bool default_path = false;
	char whole[PATH_MAX];
	int rc;

	*out = NULL;
	connect_err[0] = '\0';
	c = calloc(1, sizeof *c);
	if (c == NULL)
		return -ENOMEM;
	c->fd = -1;
	c->max_frame = 65536;
	c->timeout_ms = timeout_ms < 0	 ? ARB_DEFAULT_IO_TIMEOUT_MS
			: timeout_ms > 0 ? timeout_ms
					 : 0;
	if (socket_path != NULL && *socket_path != '\0') {
		snprintf(whole, sizeof whole, "%s", socket_path);
	} else {
		const char *env = getenv("ARBITER_SOCKET");

		default_path = env == NULL || *env == '\0';
		arb_socket_path(whole, sizeof whole);
	}
	/* Checked before the copy, so a long path is named, never cut to
	 * another path and connected to. */
	if (strlen(whole) >= sizeof sa.sun_path) {
		snprintf(connect_err, sizeof connect_err,
			 "socket path %.900s is longer than 107 bytes", whole);
		free(c);
		return -ENAMETOOLONG;
	}
	memcpy(c->path, whole, strlen(whole) + 1);
	if (default_path) {
		rc = check_default_folder(c->path, connect_err,
					  sizeof connect_err);
		if (rc < 0) {
			free(c);
			return rc;
		}
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
		struct timeval tv = {
		    .tv_sec = c->timeout_ms / 1000,
		    .tv_usec = (suseconds_t)(c->timeout_ms % 1000) * 1000};

		setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	}
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		rc = -errno;
		goto fail_errno;
	}
	rc = check_peer(c->fd, c->path, connect_err, sizeof connect_err);
	if (rc < 0) {
		arb_close(c);
		return rc;
	}

	hello.protocol_version = ARB_PROTOCOL_VERSION;
	if (name != NULL) {
		size_t n = strlen(name);

		hello.has_client_name = true;
		hello.client_name.data = (uint8_t *)(uintptr_t)name;
		hello.client_name.len =
		    n > ARB_CLIENT_NAME_MAX ? ARB_CLIENT_NAME_MAX : n;
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
	c->handover = m->welcome->has_handover && m->welcome->handover;
	c->cluster = m->welcome->has_cluster && m->welcome->cluster;
	*out = c;
	return 0;

fail_errno:
	switch (-rc) {
	case EAGAIN:
	case EINPROGRESS:
		/* SO_SNDTIMEO ran out: the listen queue stayed full. */
		rc = -ETIMEDOUT;
		snprintf(connect_err, sizeof connect_err,
			 "arbiterd on %s did not accept the connection within "
			 "%d ms: is it stopped, hung or overloaded?",
			 c->path, c->timeout_ms);
		break;
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
	free(c->evq_hosts);
	free(c->ttl);
	free(c->held);
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

/*
 * Give up on a request the daemon has not answered in time: withdraw it
 * (a Release by request id also ends the lease if the daemon granted it
 * meanwhile) and swallow whatever answer still comes. If even the
 * withdrawal cannot be sent at once, cut the connection: the daemon then
 * ends whatever it might have granted.
 */
static void
withdraw(arb_client *c, uint64_t request_id)
{
	uint64_t rid;

	ignore_add(c, request_id);
	set_deadline(c, WITHDRAW_SEND_MS);
	if (send_release(c, true, request_id, true, &rid) == 0) {
		ignore_add(c, rid);
	} else if (!c->broken) {
		shutdown(c->fd, SHUT_RDWR);
		c->broken = true;
	}
	c->deadline_ms = 0;
}

int
arb_acquire(arb_client *c, const char *resource, enum arb_mode mode,
	    int64_t timeout_ms, const struct arb_acquire_opts *opts,
	    struct arb_lease *out)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;
	Arbiter__ServerMessage *m = NULL;
	int rc;

	rc = build_acquire(c, &a, resource, mode, timeout_ms, opts);
	if (rc < 0)
		return rc;
	quiet_unless_watched(&a, opts);
	req.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	req.acquire = &a;
	req.id = ++c->next_id;
	/* The daemon's timer decides, but the client does not depend on it:
	 * a daemon that is stopped or stalled costs at most the margin. */
	set_deadline(c, timeout_ms < 0 ? 0
			: timeout_ms > INT64_MAX / 2
			    ? INT64_MAX / 2
			    : timeout_ms + ARB_ACQUIRE_MARGIN_MS);
	rc = send_request(c, &req);
	if (rc == 0)
		rc = await_reply(c, req.id, &m, opts, resource);
	c->deadline_ms = 0;
	if (rc == -ETIMEDOUT && timeout_ms >= 0) {
		withdraw(c, req.id);
		seterr(c,
		       "timed out waiting %lld ms for '%s': arbiterd on %s did "
		       "not answer in time (stopped or overloaded?), so the "
		       "request was withdrawn",
		       (long long)timeout_ms, resource, c->path);
		return -ARB_ETIMEOUT;
	}
	if (rc < 0)
		return rc;
	rc = check_kind(c, m, req.id, ARBITER__SERVER_MESSAGE__KIND_GRANTED);
	if (rc < 0)
		return rc;
	fill_lease(out, m->granted);
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

/* ------------------------------------------------------------ convert */

static int
send_convert(arb_client *c, uint64_t lease_id, enum arb_mode target,
	     int timeout_ms, uint64_t *request_id)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Convert cv = ARBITER__CONVERT__INIT;

	if (target != ARB_EXCLUSIVE && target != ARB_SHARED) {
		seterr(c,
		       "unknown mode %d for lease %llu; use ARB_EXCLUSIVE "
		       "or ARB_SHARED",
		       (int)target, (unsigned long long)lease_id);
		return -EINVAL;
	}
	cv.lease_id = lease_id;
	cv.mode = target == ARB_SHARED ? ARBITER__MODE__SHARED
				       : ARBITER__MODE__EXCLUSIVE;
	if (timeout_ms >= 0) {
		cv.has_timeout_ms = true;
		cv.timeout_ms = (uint64_t)timeout_ms;
	}
	req.kind_case = ARBITER__REQUEST__KIND_CONVERT;
	req.convert = &cv;
	req.id = ++c->next_id;
	*request_id = req.id;
	return send_request(c, &req);
}

/*
 * Give up on a convert the daemon has not answered in time: convert the
 * lease back to shared, which withdraws a waiting upgrade, or downgrades
 * one that happened meanwhile, and swallow both answers. If even that
 * cannot be sent, cut the connection, which ends the lease: never leave
 * the caller holding more than it was told.
 */
static void
withdraw_convert(arb_client *c, uint64_t request_id, uint64_t lease_id)
{
	uint64_t rid;

	ignore_add(c, request_id);
	set_deadline(c, WITHDRAW_SEND_MS);
	if (send_convert(c, lease_id, ARB_SHARED, 0, &rid) == 0) {
		ignore_add(c, rid);
	} else if (!c->broken) {
		shutdown(c->fd, SHUT_RDWR);
		c->broken = true;
	}
	c->deadline_ms = 0;
}

int
arb_convert(arb_client *c, uint64_t lease_id, enum arb_mode target,
	    int timeout_ms, uint64_t *new_token)
{
	Arbiter__ServerMessage *m = NULL;
	uint64_t id = 0;
	int rc;

	/* A downgrade or a try-once never waits on others: the I/O bound. */
	set_deadline(c, timeout_ms < 0
			    ? 0
			    : (int64_t)timeout_ms + ARB_ACQUIRE_MARGIN_MS);
	if (target == ARB_SHARED || timeout_ms == 0)
		set_deadline(c, c->timeout_ms);
	rc = send_convert(c, lease_id, target, timeout_ms, &id);
	if (rc == 0)
		rc = await_reply(c, id, &m, NULL, NULL);
	c->deadline_ms = 0;
	if (rc == -ETIMEDOUT && target == ARB_SHARED) {
		/* A downgrade only gives rights up: whether or not it
		 * happened, the caller must act as if it had. */
		ignore_add(c, id);
		seterr(c,
		       "no answer from arbiterd on %s within %lld ms to the "
		       "downgrade of lease %llu: it may be shared already, so "
		       "treat it as shared (check with: arbiterctl -S %s ping)",
		       c->path, (long long)c->bound_ms,
		       (unsigned long long)lease_id, c->path);
		return -ETIMEDOUT;
	}
	if (rc == -ETIMEDOUT && timeout_ms >= 0) {
		withdraw_convert(c, id, lease_id);
		seterr(c,
		       "timed out upgrading lease %llu: arbiterd on %s did "
		       "not answer within %lld ms (stopped or overloaded?), "
		       "so the upgrade was withdrawn and the lease is held "
		       "shared",
		       (unsigned long long)lease_id, c->path,
		       (long long)c->bound_ms);
		return -ARB_ETIMEOUT;
	}
	if (rc == -ARB_EBADREQUEST && strstr(c->err, "no known kind")) {
		seterr(c,
		       "arbiterd on %s does not support lock conversion (it "
		       "predates it and closes the connection): upgrade the "
		       "daemon, or release and acquire anew",
		       c->path);
		return -EOPNOTSUPP;
	}
	if (rc < 0)
		return rc;
	rc = check_kind(c, m, id, ARBITER__SERVER_MESSAGE__KIND_CONVERTED);
	if (rc < 0)
		return rc;
	if (new_token != NULL)
		*new_token = m->converted->token;
	return 0;
}

int
arb_convert_async(arb_client *c, uint64_t lease_id, enum arb_mode target,
		  int timeout_ms, uint64_t *request_id)
{
	return send_convert(c, lease_id, target, timeout_ms, request_id);
}

/* A Release sent without waiting: its answer, if any, becomes an event. */
static int
send_release(arb_client *c, bool by_request, uint64_t key, bool quiet,
	     uint64_t *sent_id)
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
	if (sent_id != NULL)
		*sent_id = req.id;
	return send_request(c, &req);
}

int
arb_cancel(arb_client *c, uint64_t request_id)
{
	/* The Released reply (or UNKNOWN_LEASE if it was granted or failed
	 * meanwhile) arrives as an ARB_EV_REPLY / ARB_EV_FAILED event. A
	 * grant read already, or still on its way, is no lease any more. */
	held_forget(c, 0, request_id);
	c->cancelled[c->ncancelled++ % IGNORE_MAX] = request_id;
	return send_release(c, true, request_id, false, NULL);
}

int
arb_next_event(arb_client *c, struct arb_event *ev)
{
	Arbiter__ServerMessage *m;
	int rc;

	if (c->evq_len > 0) {
		*ev = c->evq[c->evq_head];
		c->hosts_ahead = c->evq_hosts[c->evq_head];
		c->evq_head = (c->evq_head + 1) % EVQ_MAX;
		c->evq_len--;
		return 1;
	}
	for (;;) {
		rc = take_frame(c, &m);
		if (rc < 0)
			return rc;
		if (m != NULL && absorb(c, m))
			continue;
		if (m != NULL) {
			note(c, m);
			to_event(c, m, ev);
			if (ev->kind == ARB_EV_QUEUED)
				c->hosts_ahead = m->queued->hosts_ahead;
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
	held_forget(c, lease_id, 0);
	return call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_RELEASED);
}

int
arb_release_nowait(arb_client *c, uint64_t lease_id)
{
	ttl_forget(c, lease_id);
	held_forget(c, lease_id, 0);
	return send_release(c, false, lease_id, true, NULL);
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

int
arb_handover(arb_client *c, uint32_t pid)
{
	Arbiter__Request req = ARBITER__REQUEST__INIT;
	Arbiter__Handover h = ARBITER__HANDOVER__INIT;
	Arbiter__ServerMessage *m;

	/* An older daemon would close the connection on an unknown kind. */
	if (!c->handover) {
		seterr(c, "arbiterd on %s predates Handover", c->path);
		return -EOPNOTSUPP;
	}
	h.pid = pid;
	req.kind_case = ARBITER__REQUEST__KIND_HANDOVER;
	req.handover = &h;
	return call(c, &req, &m, ARBITER__SERVER_MESSAGE__KIND_HANDED_OVER);
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
			seterr(c,
			       "the daemon sent a page cursor of %zu bytes "
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
