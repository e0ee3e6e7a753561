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
	bool reset_state;	  /* --reset-state */
	bool state_loaded;
	unsigned state_fsyncs;
	unsigned state_writes;
	struct event *ev_reap;
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
	struct conn_list graveyard; /* closed, freed by ev_reap */
	unsigned nconns;   /* served connections */
	unsigned nrefused; /* refused ones waiting to be told why */
	uint64_t next_conn_id;
	size_t out_total; /* output buffered across connections */

	bool stopping;
	int exit_code;
	uint64_t t_start; /* monotonic ns */
	time_t wall_start;
};

/* Monotonic clock in ns: the lockmgr's and the stats' time base. */
uint64_t now_ns(void);

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

/* Carry out the lockmgr's queued events, then flush output. Call after
 * every batch of lockmgr calls. */
void server_after_lockmgr(struct server *srv);
/* Write out everything queued on connections; close those marked kill. */
void server_flush(struct server *srv);
void server_begin_shutdown(struct server *srv, const char *why);

/* conn.c */
/* refused: over max_connections; it is answered with LIMIT and closed. */
struct conn *conn_new(struct server *srv, int fd, bool refused);
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
/* Try to write queued output now; returns false if the connection died. */
bool conn_flush(struct conn *c);
const char *conn_label(const struct conn *c, char *buf, size_t len);

/* dispatch.c */
void dispatch_request(struct conn *c, const Arbiter__Request *req);
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
void dispatch_apply_events(struct server *srv);
Arbiter__Mode dispatch_mode(enum lm_mode m);

/* admin.c */
void admin_input(struct conn *c);
/* Produce the next part of a streamed reply (c->stream set). */
void admin_stream(struct conn *c);

#endif
