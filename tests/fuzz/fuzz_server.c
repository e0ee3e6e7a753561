/*
 * fuzz_server: the daemon core over socketpairs, for the wire and admin
 * harnesses (see fuzz_server.h).
 *
 * Why socketpairs rather than filling c->in directly: the bytes then take
 * the daemon's own read callback (input_read_cb: the first-byte choice of
 * protocol, 64 KiB reads, the refused and kill paths), so no testing hook
 * is needed in conn.c and nothing here can drift from what the daemon does.
 *
 * The loop is driven with EVLOOP_NONBLOCK passes until nothing moves: no
 * byte left to write, none left unread on either side, no event pending
 * that is due. A connection that never settles aborts (a hang is a bug).
 */
#include <ctype.h>
#include <errno.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "conn.h"
#include "frame.h"
#include "fuzz_server.h"
#include "log.h"

/* Settling a connection takes a few passes; this many means a hang. */
#define PUMP_MAX 200000
/* What is kept of the daemon's replies to check them; the rest is read
 * and dropped (the daemon's own output cap is 4 MiB by default). */
#define KEEP_MAX (8u << 20)

struct peer {
	int fd; /* our end; -1 when closed */
	uint64_t conn_id;
	bool wclosed; /* the daemon closed: writing fails */
	bool eof;     /* the daemon closed: reading ends */
	bool keep;    /* keep what the daemon sends */
	bool hold;    /* read nothing for now (a slow reader) */
	uint8_t *out;
	size_t nout, cap;
};

enum { HELPER_1, HELPER_2, CLIENT, NPEERS };

struct fuzz_server {
	struct server srv;
	struct peer peer[NPEERS];
};

void
fuzz_init(void)
{
	const char *lv = getenv("ARBITER_FUZZ_LOG");
	enum log_level level = LOG_ERROR;

	/* The default config must not depend on the caller's environment. */
	for (char **e = environ; *e != NULL;) {
		if (strncmp(*e, "ARBITER_", 8) == 0 &&
		    strncmp(*e, "ARBITER_FUZZ_", 13) != 0) {
			char name[256];
			size_t n = strcspn(*e, "=");

			snprintf(name, sizeof name, "%.*s", (int)n, *e);
			unsetenv(name);
			continue; /* environ shifted down */
		}
		e++;
	}
	if (lv != NULL && log_parse_level(lv, &level) < 0)
		level = LOG_DEBUG;
	log_setup(level, false);
}

/* ------------------------------------------------------------ the loop */

/* Free what the last pump left (peers closed since). */
static void
reap(struct server *srv)
{
	struct conn *c;

	while ((c = TAILQ_FIRST(&srv->graveyard)) != NULL) {
		TAILQ_REMOVE(&srv->graveyard, c, entry);
		conn_free(c);
	}
}

static bool
drain(struct peer *p)
{
	uint8_t buf[65536];
	bool moved = false;

	while (p->fd >= 0 && !p->eof && !p->hold) {
		ssize_t n = recv(p->fd, buf, sizeof buf, MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n <= 0) {
			p->eof = true; /* 0, or ECONNRESET from the daemon */
			moved = true;
			break;
		}
		moved = true;
		if (p->keep && p->nout + (size_t)n > KEEP_MAX)
			p->keep = false; /* keep a prefix, never a gap */
		if (p->keep) {
			if (p->nout + (size_t)n > p->cap) {
				size_t cap = p->cap ? p->cap : 65536;

				while (cap < p->nout + (size_t)n)
					cap *= 2;
				p->out = realloc(p->out, cap);
				if (p->out == NULL)
					abort();
				p->cap = cap;
			}
			memcpy(p->out + p->nout, buf, (size_t)n);
			p->nout += (size_t)n;
		}
	}
	return moved;
}

/* Bytes we wrote that the daemon has not read yet. */
static int
unread_by_daemon(const struct peer *p)
{
	int n = 0;

	if (p->fd < 0 || p->wclosed || ioctl(p->fd, SIOCOUTQ, &n) < 0)
		return 0;
	return n;
}

/* Write data to p (may be NULL) and run the loop until all is settled. */
static void
pump(struct fuzz_server *fs, struct peer *p, const uint8_t *data, size_t len)
{
	size_t off = 0;
	int idle = 0;

	for (long pass = 0; idle < 2; pass++) {
		bool moved = false;

		if (pass > PUMP_MAX) {
			fprintf(stderr,
				"fuzz: the daemon did not settle after "
				"%d loop passes\n",
				PUMP_MAX);
			abort();
		}
		if (p != NULL && off < len && !p->wclosed) {
			/* A slow reader also writes in small pieces, so the
			 * daemon answers in many small batches. */
			size_t chunk =
			    p->hold && len - off > 256 ? 256 : len - off;
			ssize_t n = send(p->fd, data + off, chunk,
					 MSG_NOSIGNAL | MSG_DONTWAIT);

			if (n > 0) {
				off += (size_t)n;
				moved = true;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				p->wclosed = true; /* EPIPE, ECONNRESET */
				moved = true;
			}
		}
		server_turn(&fs->srv, EVLOOP_NONBLOCK);
		for (int i = 0; i < NPEERS; i++) {
			moved |= drain(&fs->peer[i]);
			moved |= unread_by_daemon(&fs->peer[i]) > 0;
		}
		if (p != NULL && off < len && !p->wclosed)
			moved = true;
		idle = moved ? 0 : idle + 1;
	}
}

static struct conn *
find_conn(struct server *srv, uint64_t id)
{
	struct conn *c;

	TAILQ_FOREACH(c, &srv->conns, entry) {
		if (c->id == id)
			return c;
	}
	return NULL;
}

static void
peer_open(struct fuzz_server *fs, struct peer *p, bool keep, bool slow)
{
	int sv[2], small = 4096;
	struct conn *c;

	memset(p, 0, sizeof *p);
	p->fd = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
		       sv) < 0) {
		perror("fuzz: socketpair");
		abort();
	}
	/* A small send buffer on the daemon's side fills after a few
	 * replies, so its writes meet EAGAIN. */
	if (slow)
		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
	/* What accept_cb does with a new descriptor. */
	c = conn_new(&fs->srv, sv[0], false);
	p->fd = sv[1];
	p->conn_id = c->id;
	p->keep = keep;
	p->hold = slow;
}

/* Half-close our side (EOF for the daemon), let it finish, then close. */
static void
peer_close(struct fuzz_server *fs, struct peer *p)
{
	if (p->fd < 0)
		return;
	shutdown(p->fd, SHUT_WR);
	p->wclosed = true;
	pump(fs, NULL, NULL, 0);
	if (find_conn(&fs->srv, p->conn_id) != NULL) {
		fprintf(stderr, "fuzz: connection %llu still open after EOF\n",
			(unsigned long long)p->conn_id);
		abort();
	}
	close(p->fd);
	p->fd = -1;
}

static void
peer_free(struct peer *p)
{
	if (p->fd >= 0)
		close(p->fd);
	free(p->out);
	memset(p, 0, sizeof *p);
	p->fd = -1;
}

/* ------------------------------------------------------------ helpers */

/* A helper's requests, framed into one buffer and sent with one write. */
struct batch {
	uint8_t buf[2048];
	size_t len;
};

static void
add_request(struct batch *b, Arbiter__Request *r)
{
	if (codec_frame_size(&r->base) > sizeof b->buf - b->len)
		abort();
	b->len += codec_pack_frame(&r->base, b->buf + b->len);
}

static void
add_hello(struct batch *b, const char *name)
{
	Arbiter__Request r = ARBITER__REQUEST__INIT;
	Arbiter__Hello h = ARBITER__HELLO__INIT;

	h.protocol_version = ARB_PROTOCOL_VERSION;
	h.has_client_name = true;
	h.client_name.data = (uint8_t *)name;
	h.client_name.len = strlen(name);
	r.id = 1;
	r.kind_case = ARBITER__REQUEST__KIND_HELLO;
	r.hello = &h;
	add_request(b, &r);
}

static void
add_acquire(struct batch *b, uint64_t id, const char *res, bool shared)
{
	Arbiter__Request r = ARBITER__REQUEST__INIT;
	Arbiter__Acquire a = ARBITER__ACQUIRE__INIT;

	a.resource.data = (uint8_t *)res;
	a.resource.len = strlen(res);
	a.has_mode = true;
	a.mode = shared ? ARBITER__MODE__SHARED : ARBITER__MODE__EXCLUSIVE;
	r.id = id;
	r.kind_case = ARBITER__REQUEST__KIND_ACQUIRE;
	r.acquire = &a;
	add_request(b, &r);
}

static void
add_release(struct batch *b, uint64_t id, uint64_t request_id)
{
	Arbiter__Request r = ARBITER__REQUEST__INIT;
	Arbiter__Release rel = ARBITER__RELEASE__INIT;

	rel.has_request_id = true;
	rel.request_id = request_id;
	r.id = id;
	r.kind_case = ARBITER__REQUEST__KIND_RELEASE;
	r.release = &rel;
	add_request(b, &r);
}

static void
send_batch(struct fuzz_server *fs, struct peer *p, const struct batch *b)
{
	pump(fs, p, b->buf, b->len);
}

/* ------------------------------------------------------------ life */

int
fuzz_flags_from(const uint8_t *data, size_t len)
{
	return len > 0 && (data[len - 1] & 0x80) ? FUZZ_SLOW_READER : 0;
}

struct fuzz_server *
fuzz_server_new(int flags)
{
	static char small_cap[] = "limits.output_buffer_bytes=4096";
	char *const overrides[] = {small_cap};
	struct fuzz_server *fs = calloc(1, sizeof *fs);
	struct server *srv;
	struct batch b;
	char err[1024];

	if (fs == NULL)
		abort();
	srv = &fs->srv;
	for (int i = 0; i < NPEERS; i++)
		fs->peer[i].fd = -1;
	if (config_load(&srv->cfg, NULL, overrides,
			(flags & FUZZ_SLOW_READER) ? 1 : 0, err,
			sizeof err) < 0) {
		fprintf(stderr, "fuzz: default config: %s\n", err);
		abort();
	}
	/* Idle role with hold = always: role.c never touches the disk, and
	 * the lockmgr's gate is open with no token limit. */
	if (server_core_init(srv, err, sizeof err) < 0) {
		fprintf(stderr, "fuzz: %s\n", err);
		abort();
	}

	/* helper-1 holds db (exclusive) and idx (shared); helper-2 shares
	 * idx and waits for db. */
	peer_open(fs, &fs->peer[HELPER_1], false, false);
	peer_open(fs, &fs->peer[HELPER_2], false, false);
	b.len = 0;
	add_hello(&b, "helper-1");
	add_acquire(&b, 2, "db", false);
	add_acquire(&b, 3, "idx", true);
	send_batch(fs, &fs->peer[HELPER_1], &b);
	b.len = 0;
	add_hello(&b, "helper-2 \xc3\xbc");
	add_acquire(&b, 2, "db", false);
	add_acquire(&b, 3, "idx", true);
	send_batch(fs, &fs->peer[HELPER_2], &b);
	if (srv->lm.nheld != 3 || srv->lm.nwaiting != 1) {
		fprintf(stderr, "fuzz: helpers hold %u and wait %u\n",
			srv->lm.nheld, srv->lm.nwaiting);
		abort();
	}
	return fs;
}

/* Every complete frame the daemon sent must decode as a ServerMessage. */
static void
check_frames(const uint8_t *p, size_t n)
{
	size_t off = 0;

	while (n - off >= FRAME_HEADER) {
		uint32_t len;
		Arbiter__ServerMessage *m;

		len = (uint32_t)p[off] << 24 | (uint32_t)p[off + 1] << 16 |
		      (uint32_t)p[off + 2] << 8 | p[off + 3];
		if (len == 0 || len > FRAME_HARD_MAX) {
			fprintf(stderr,
				"fuzz: daemon sent a frame of length "
				"%u at offset %zu\n",
				len, off);
			abort();
		}
		if (n - off - FRAME_HEADER < len)
			return; /* cut short by a drop: allowed */
		m = arbiter__server_message__unpack(NULL, len,
						    p + off + FRAME_HEADER);
		if (m == NULL ||
		    m->kind_case == ARBITER__SERVER_MESSAGE__KIND__NOT_SET) {
			fprintf(stderr,
				"fuzz: daemon sent an undecodable "
				"frame at offset %zu\n",
				off);
			abort();
		}
		arbiter__server_message__free_unpacked(m, NULL);
		off += FRAME_HEADER + len;
	}
}

void
fuzz_server_client(struct fuzz_server *fs, const uint8_t *data, size_t len,
		   int flags)
{
	struct peer *p = &fs->peer[CLIENT];
	bool check = (flags & FUZZ_CHECK_FRAMES) != 0;
	struct batch b;

	peer_open(fs, p, check, (flags & FUZZ_SLOW_READER) != 0);
	pump(fs, p, data, len);
	/* Hand db on: helper-2 gets it, then whoever queued behind. */
	b.len = 0;
	add_release(&b, 4, 2);
	send_batch(fs, &fs->peer[HELPER_1], &b);
	send_batch(fs, &fs->peer[HELPER_2], &b);
	/* A slow reader starts reading now: the daemon's blocked writes
	 * resume (unless it was dropped at the output cap). */
	p->hold = false;
	pump(fs, NULL, NULL, 0);
	peer_close(fs, p);
	if (check && len > 0 && !isalpha(data[0]))
		check_frames(p->out, p->nout);
	peer_free(p);
}

void
fuzz_server_free(struct fuzz_server *fs)
{
	struct server *srv = &fs->srv;

	for (int i = 0; i < NPEERS; i++)
		peer_close(fs, &fs->peer[i]);
	reap(srv);
	if (!TAILQ_EMPTY(&srv->conns) || srv->nconns != 0 ||
	    srv->nrefused != 0) {
		fprintf(stderr, "fuzz: connections left: %u\n", srv->nconns);
		abort();
	}
	/* Every lease and request died with its connection. */
	if (srv->lm.nheld != 0 || srv->lm.nwaiting != 0) {
		fprintf(stderr, "fuzz: lockmgr still has %u held, %u waiting\n",
			srv->lm.nheld, srv->lm.nwaiting);
		abort();
	}
	for (int i = 0; i < NPEERS; i++)
		peer_free(&fs->peer[i]);
	event_free(srv->ev_timer);
	event_base_free(srv->base);
	storage_free(&srv->storage);
	lockmgr_free(&srv->lm);
	stats_free(&srv->stats);
	codec_arena_free(&srv->arena);
	free(srv->rbuf);
	config_free(&srv->cfg);
	free(fs);
}
