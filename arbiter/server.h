/*
 * server: the one struct that holds the daemon's state, and its loop.
 * server.c owns the event base, the pump, the Unix socket, descriptors,
 * signals, the lockmgr timer and shutdown. Each other module declares its
 * own functions in its own header (conn.h, dispatch.h, admin.h, ...).
 */
#ifndef ARBITER_SERVER_H
#define ARBITER_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "codec.h"
#include "config.h"
#include "conn-t.h"
#include "listener.h"
#include "lockmgr.h"
#include "state.h"
#include "stats.h"
#include "storage.h"

enum server_role { ROLE_ACTIVE, ROLE_STANDBY, ROLE_IDLE };

struct event;
struct event_base;
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
	bool socket_created;	/* remove the socket file at exit */
	struct listener accept; /* on listen_fd */
	struct event *ev_timer;
	uint64_t timer_when;
	struct event *ev_sigterm, *ev_sigint, *ev_sighup;
	struct event *ev_storage;   /* standby: the wait thread's eventfd */
	struct event *ev_reserve;   /* retry a failed token reservation */
	struct event *ev_written;   /* the state writer's thread is done */
	struct state_writer writer; /* reserves the next token block */
	struct event *ev_linger;    /* on-demand: release when idle */
	struct event *ev_watch;	    /* inotify on the lock file, while active */
	struct event *ev_retry;	    /* retry taking an unusable lock file */
	struct event *ev_dirwatch;  /* inotify on its folder, while retrying */
	unsigned retry_ms;	    /* the back-off: 100 ms doubling to 5 s */
	char retry_err[300];	    /* the failure last logged */
	bool leases_held;	    /* while running: any lease outstanding */
	uint64_t reserve_want;	    /* the state file's mark must reach this */
	bool reset_state;	    /* --reset-state */
	bool state_loaded;
	unsigned state_fsyncs;
	unsigned state_writes;
	struct event *ev_stop;	 /* shutdown deadline */
	struct metrics *metrics; /* metrics listener, NULL when off */
	struct cluster *cluster; /* cluster mode, NULL when off */
	/* Descriptors: the soft RLIMIT_NOFILE, those open once started, and
	 * whether the "no descriptor left for a client" warning is out. */
	uint64_t fd_limit;
	unsigned fd_base;
	bool fd_full_logged;

	struct codec_arena arena; /* decodes one request at a time */
	uint8_t *rbuf; /* every read lands here first (CONN_READ_CHUNK) */

	struct conn_list conns;
	struct conn_list flushq;    /* have output or a kill pending */
	struct conn_list graveyard; /* closed, freed by the pump */
	unsigned nconns;	    /* served connections */
	unsigned nrefused;	    /* refused ones waiting to be told why */
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

#endif
