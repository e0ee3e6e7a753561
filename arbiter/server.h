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
	struct lm_owner owner; /* pid, uid, gid and name live here */
	uint64_t t_connected;  /* monotonic ns */
	TAILQ_ENTRY(conn) entry;
	TAILQ_ENTRY(conn) flush_entry;
};

TAILQ_HEAD(conn_list, conn);

enum server_role { ROLE_ACTIVE, ROLE_STANDBY, ROLE_IDLE };

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
	struct event *ev_accept;
	struct event *ev_accept_resume; /* after EMFILE back-off */
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
	struct event *ev_reap;
	struct event *ev_stop; /* shutdown deadline */
	struct evhttp *http;   /* metrics listener, NULL when off */

	struct codec_arena arena; /* decodes one request at a time */
	uint8_t *rbuf;		  /* every read lands here first (CONN_READ_CHUNK) */

	struct conn_list conns;
	struct conn_list flushq;    /* have output or a kill pending */
	struct conn_list graveyard; /* closed, freed by ev_reap */
	unsigned nconns;   /* served connections */
	unsigned nrefused; /* refused ones waiting to be told why */
	uint64_t next_conn_id;

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
void dispatch_apply_events(struct server *srv);
Arbiter__Mode dispatch_mode(enum lm_mode m);

/* admin.c */
void admin_input(struct conn *c);

#endif
