/*
 * server: the one struct that holds the daemon's state, and the connection
 * type. server.c owns the event base, the listener, signals, the lockmgr
 * timer and shutdown; conn.c owns one connection's I/O; dispatch.c turns
 * requests into lockmgr calls and lockmgr events into frames; admin.c speaks
 * the text protocol.
 */
#ifndef ARBITER_SERVER_H
#define ARBITER_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "codec.h"

/* The most one read(2) from a client takes. */
#define CONN_READ_CHUNK 65536
#include "config.h"
#include "lockmgr.h"
#include "state.h"
#include "stats.h"
#include "storage.h"

enum conn_state {
	CONN_NEW,     /* nothing read yet */
	CONN_BINARY,  /* framed protobuf */
	CONN_TEXT,    /* line-based admin protocol */
	CONN_DEAD,    /* closed; freed on a later loop turn */
};

struct server;

struct conn {
	struct server *srv;
	int fd;
	uint64_t id;
	enum conn_state state;
	bool welcomed;
	bool in_flushq;
	bool want_write;      /* ev_write is armed */
	const char *kill;     /* close after this turn, with this reason */
	bool refused;	      /* over max_connections: answer, then close */
	struct event ev_read;
	struct event ev_write;
	struct event ev_deadline; /* handshake deadline, until Welcome */
	struct evbuffer *in;
	struct evbuffer *out;
	size_t out_counted;   /* its share of server.out_total */
	bool linger;	      /* kill only once the output is written */
	bool eof;	      /* text: the peer shut down its side */
	uint8_t stream;	      /* text: a status/stats reply being produced */
	uint64_t stream_cursor;
	struct lm_owner owner; /* pid, uid, gid and name live here */
	uint64_t t_connected;  /* monotonic ns */
	TAILQ_ENTRY(conn) entry;
	TAILQ_ENTRY(conn) flush_entry;
};

TAILQ_HEAD(conn_list, conn);

enum server_role { ROLE_ACTIVE, ROLE_STANDBY, ROLE_IDLE };

/*
 * One listening socket and its accept loop. Every listener (the Unix socket,
 * the metrics port) backs off the same way when the process is out of
 * descriptors: it stops polling until a client descriptor is closed or a
 * second passes, and says so once per pause (server.c).
 */
struct listener {
	struct server *srv;
	const char *name;      /* for logs: "socket" or "metrics" */
	int fd;		       /* the listening socket; not owned */
	struct event *ev_accept;
	struct event *ev_resume; /* the one-second back-off */
	bool paused;
	unsigned pauses;     /* back-offs since the last accept that worked */
	uint64_t t_paused;   /* monotonic ns, first of those */
	/* Owns fd from then on: serve it or close it. */
	void (*accepted)(struct listener *l, int fd);
	void *arg;
};

struct metrics;

struct server {
	struct event_base *base;
	struct config cfg;
	const char *conf_path;
	char *const *overrides;
	size_t noverrides;

	struct lockmgr lm;
	struct stats stats;
	struct storage storage;
	enum server_role role;
	char storage_holder[512]; /* who holds it while we are standby */

	int listen_fd;
	bool socket_created; /* remove the socket file at exit */
	struct listener accept; /* on listen_fd */
	struct event *ev_timer;
	uint64_t timer_when;
	struct event *ev_sigterm, *ev_sigint, *ev_sighup;
	struct event *ev_storage; /* standby: the wait thread's eventfd */
	struct event *ev_reserve; /* retry a failed token reservation */
	struct event *ev_written; /* the state writer's thread is done */
	struct state_writer writer; /* reserves the next token block */
	struct event *ev_linger;  /* on-demand: release when idle */
	struct event *ev_watch;	  /* inotify on the lock file, while active */
	struct event *ev_retry;	  /* retry taking an unusable lock file */
	struct event *ev_dirwatch; /* inotify on its folder, while retrying */
	unsigned retry_ms;	  /* the back-off: 100 ms doubling to 5 s */
	char retry_err[300];	  /* the failure last logged */
	bool leases_held;	  /* while running: any lease outstanding */
	bool reset_state;	  /* --reset-state */
	bool state_loaded;
	unsigned state_fsyncs;
	unsigned state_writes;
	struct event *ev_stop; /* shutdown deadline */
	struct metrics *metrics; /* metrics listener, NULL when off */
	/* Descriptors: the soft RLIMIT_NOFILE, those open once started, and
	 * whether the "no descriptor left for a client" warning is out. */
	uint64_t fd_limit;
	unsigned fd_base;
	bool fd_full_logged;

	struct codec_arena arena; /* decodes one request at a time */
	uint8_t *rbuf;		  /* every read lands here first (CONN_READ_CHUNK) */

	struct conn_list conns;
	struct conn_list flushq;    /* have output or a kill pending */
	struct conn_list graveyard; /* closed, freed by the pump */
	unsigned nconns;   /* served connections */
	unsigned nrefused; /* refused ones waiting to be told why */
	uint64_t next_conn_id;
	size_t out_total; /* output buffered across connections */

	bool stopping;
	bool done; /* stopping, and every reply is written */
	int exit_code;
	uint64_t t_start; /* monotonic ns */
	time_t wall_start;
};

/* Monotonic clock in ns: the lockmgr's and the stats' time base. */
static inline uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Everything but the listener, the storage lock, signals and metrics: the
 * lists, lock manager, stats, buffers, the event loop with its timer and
 * reaper. server_init() starts with it; the fuzz harnesses run on it. */
int server_core_init(struct server *srv, char *err, size_t errlen);
int server_init(struct server *srv, char *err, size_t errlen);
int server_run(struct server *srv);
void server_free(struct server *srv);

/* Start polling l->fd; accepted() gets each new connection. */
int listener_start(struct listener *l, struct server *srv, int fd,
		   const char *name,
		   void (*accepted)(struct listener *l, int fd), void *arg);
/* Stop polling and free the events (the socket stays open); idempotent. */
void listener_stop(struct listener *l);
/* A client descriptor was closed: paused listeners try again now. */
void server_fd_freed(struct server *srv);
/*
 * Whether a new client connection that got descriptor fd may stay open
 * without eating into the descriptors kept for the daemon's own files (state
 * file and its temp, lock file, folder fsync, config reload, the helper
 * threads' wake-ups). metrics: for the metrics listener, which has its own
 * share; Unix clients get the rest.
 */
bool server_fd_room(struct server *srv, int fd, bool metrics);
/* Close a connection refused with an answer already sent, so that the peer
 * reads the answer rather than a reset. */
void server_close_answered(int fd);

/*
 * One loop turn: wait for events (not with EVLOOP_NONBLOCK in flags), run
 * every ready callback, then the pump: carry out the lockmgr events that
 * callbacks left (a closed connection's, the timer's, a change of role's),
 * write every connection's queued output, free closed connections, re-arm
 * the lockmgr timer. Callbacks never flush or re-arm themselves. Returns
 * event_base_loop's result.
 */
int server_turn(struct server *srv, int flags);
void server_begin_shutdown(struct server *srv, const char *why);

/* conn.c */
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
		     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Write queued output now; returns false if the connection died. With a
 * streamed text reply and its output drained, the caller produces the next
 * part (admin_stream), then calls conn_stream_produced. */
bool conn_flush(struct conn *c);
void conn_stream_produced(struct conn *c);
/* Write it out at the end of this loop turn. */
void conn_flushq_add(struct conn *c);
/* A closing text session: give the peer limits.close_flush_ms to read. */
void conn_linger_timer(struct conn *c);

/* input.c: the read callback of every connection. */
void input_read_cb(evutil_socket_t fd, short what, void *arg);
const char *conn_label(const struct conn *c, char *buf, size_t len);

/* dispatch.c */

/*
 * A handler's answer, sent by dispatch_request after the lockmgr's events:
 * a message of kind (its body in u, pointing into this struct or into
 * buffers given to dispatch_keep, freed once sent), an Error (error), or
 * an Error after which the connection closes (fail). kind 0 and no error:
 * no reply (a quiet Release, an Acquire answered by its event).
 */
struct dispatch_reply {
	Arbiter__ServerMessage__KindCase kind;
	union {
		Arbiter__Welcome welcome;
		Arbiter__Released released;
		Arbiter__Pong pong;
		Arbiter__Renewed renewed;
		Arbiter__RevokeDone revoke_done;
		Arbiter__StatsResetDone stats_reset_done;
		Arbiter__Stats stats;
		Arbiter__Status status;
	} u;
	Arbiter__Limits limits;
	char role[16];
	char version[sizeof ARBITER_VERSION];
	uint8_t cursor[8];
	bool error, fail;
	Arbiter__ErrorCode code;
	char text[600];
	void *owned[8];
	size_t nowned;
};

/* Run one decoded request (see dispatch.c for the order of its frames). */
void dispatch_request(struct conn *c, const Arbiter__Request *req);
/* Carry out the lockmgr's queued events: frames, stats, token reservations
 * and the on-demand linger. */
void dispatch_drain(struct server *srv);
void dispatch_error(struct dispatch_reply *rp, Arbiter__ErrorCode code,
		    const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void dispatch_fail(struct dispatch_reply *rp, Arbiter__ErrorCode code,
		   const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Free p once the reply is sent; returns p. */
void *dispatch_keep(struct dispatch_reply *rp, void *p);
enum dispatch_access { ACCESS_CLIENT, ACCESS_ADMIN };
/* May this peer use the daemon (ACCESS_CLIENT), or its admin requests? */
bool dispatch_access(const struct server *srv, const struct lm_owner *o,
		     enum dispatch_access level);
/*
 * One step of a walk over a uthash table that survives the table's growth
 * (Redis's SCAN cursor): visit whole buckets from *cursor, calling fn on
 * each element, until fn's weights add up to at least budget or the walk is
 * done. *cursor becomes 0 when it is. hh: any element's handle, or NULL for
 * an empty table.
 */
void dispatch_scan(const UT_hash_handle *hh, uint64_t *cursor, size_t budget,
		   size_t (*fn)(void *elem, void *arg), void *arg);
/* Pages: the most resources one Status/Stats page (or text chunk) holds, and
 * the most holders or waiters listed per resource. */
#define DISPATCH_PAGE_MAX 1000
#define DISPATCH_LIST_MAX 1000
Arbiter__Mode dispatch_mode(enum lm_mode m);

/* admin.c */
void admin_input(struct conn *c);
/* Produce the next part of a streamed reply (c->stream set). */
void admin_stream(struct conn *c);

#endif
