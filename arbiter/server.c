/*
 * server: the event base, the Unix listener, signals, the one timer that
 * tracks the lockmgr's earliest deadline, reload and shutdown.
 *
 * Nothing here polls. Connections wake us by becoming readable, the lockmgr's
 * deadlines by one evtimer kept at the earliest of them, a standby by the
 * storage wait thread's eventfd, and signals through libevent's signal events.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "role.h"
#include "server.h"
#include "xalloc.h"

#define ACCEPT_BATCH 64
/* Refused connections kept open until told why (see accept_cb). */
#define REFUSED_MAX 64

uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
lockmgr_limits_from(struct server *srv)
{
	struct lm_limits l = {
		.max_resources = (unsigned)srv->cfg.max_resources,
		.max_leases_per_owner =
			(unsigned)srv->cfg.max_leases_per_connection,
		.max_waiters_per_resource =
			(unsigned)srv->cfg.max_waiters_per_resource,
	};

	lockmgr_set_limits(&srv->lm, &l);
}

/* ------------------------------------------------------------ timer */

static void
arm_timer(struct server *srv)
{
	uint64_t when = lockmgr_next_deadline(&srv->lm), now, d;
	struct timeval tv;

	if (when == srv->timer_when)
		return;
	srv->timer_when = when;
	if (when == LM_FOREVER) {
		evtimer_del(srv->ev_timer);
		return;
	}
	now = now_ns();
	d = when > now ? when - now : 0;
	tv.tv_sec = (time_t)(d / 1000000000u);
	tv.tv_usec = (suseconds_t)((d % 1000000000u + 999) / 1000);
	evtimer_add(srv->ev_timer, &tv);
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	srv->timer_when = LM_FOREVER;
	lockmgr_tick(&srv->lm, now_ns());
	server_after_lockmgr(srv);
	server_flush(srv);
}

void
server_after_lockmgr(struct server *srv)
{
	bool need_tokens = false, busy = false, idle = false;

	/* Reserving tokens can grant, which queues more events: loop. */
	for (int round = 0; round < 4; round++) {
		const struct lm_event *ev;
		size_t n;

		ev = lockmgr_events(&srv->lm, &n);
		if (n == 0)
			break;
		for (size_t i = 0; i < n; i++) {
			need_tokens |= ev[i].kind == LM_EV_NEED_TOKENS;
			busy |= ev[i].kind == LM_EV_BUSY;
			idle |= ev[i].kind == LM_EV_IDLE;
		}
		dispatch_apply_events(srv);
		lockmgr_events_done(&srv->lm);
		role_after_events(srv, need_tokens, busy, idle);
		need_tokens = busy = idle = false;
	}
	arm_timer(srv);
}

void
server_flush(struct server *srv)
{
	struct conn *c;

	while ((c = TAILQ_FIRST(&srv->flushq)) != NULL) {
		TAILQ_REMOVE(&srv->flushq, c, flush_entry);
		c->in_flushq = false;
		conn_flush(c);
	}
	if (srv->stopping) {
		TAILQ_FOREACH(c, &srv->conns, entry) {
			if (evbuffer_get_length(c->out) > 0)
				return;
		}
		event_base_loopbreak(srv->base);
	}
}

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	struct conn *c;

	(void)fd;
	(void)what;
	while ((c = TAILQ_FIRST(&srv->graveyard)) != NULL) {
		TAILQ_REMOVE(&srv->graveyard, c, entry);
		conn_free(c);
	}
	/* A closed connection freed a descriptor: accept again if paused. */
	if (srv->ev_accept != NULL && !srv->stopping &&
	    !event_pending(srv->ev_accept, EV_READ, NULL)) {
		event_del(srv->ev_accept_resume);
		event_add(srv->ev_accept, NULL);
	}
}

/* ------------------------------------------------------------ listener */

/* Refuse a connection over max_connections with a LIMIT error, unread. */
static void
refuse(int fd, const char *msg)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Error e = ARBITER__ERROR__INIT;
	uint8_t buf[512];
	char text[300];
	size_t n;

	snprintf(text, sizeof text, "%s", msg);
	e.code = ARBITER__ERROR_CODE__LIMIT;
	e.message = text;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_ERROR;
	m.error = &e;
	if (codec_frame_size(&m.base) <= sizeof buf) {
		n = codec_pack_frame(&m.base, buf);
		(void)!send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	close(fd);
}

static void
accept_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct server *srv = arg;

	(void)what;
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				struct timeval tv = {1, 0};

				/* Out of descriptors: stop accepting until a
				 * connection closes (reap_cb), or a second
				 * passes, whichever comes first. */
				log_warn("accept paused", "error=%s conns=%u",
					 strerror(errno), srv->nconns);
				event_del(srv->ev_accept);
				event_add(srv->ev_accept_resume, &tv);
			}
			return;
		}
		if (srv->nconns >= srv->cfg.max_connections) {
			log_warn("connection refused",
				 "reason=max_connections limit=%" PRIu64,
				 srv->cfg.max_connections);
			/* Keep a few to tell them why once they speak (or at
			 * the handshake deadline); past that, close at once. */
			if (srv->nrefused < REFUSED_MAX)
				conn_new(srv, fd, true);
			else
				refuse(fd, "limits.max_connections reached; "
					   "try again later or raise the limit");
			continue;
		}
		conn_new(srv, fd, false);
	}
}

static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	if (!srv->stopping)
		event_add(srv->ev_accept, NULL);
}

/* What the liveness probe of an existing socket file found. */
enum probe { PROBE_DEAD, PROBE_ALIVE, PROBE_STALLED, PROBE_UNKNOWN };

/*
 * Is an arbiter answering on this socket path? A non-blocking connect, so a
 * stopped or wedged daemon cannot hang us: it accepts at once when a
 * listener is there (the kernel completes it), is refused when none is, and
 * fails with EAGAIN when a listener is there but its queue is full (stopped
 * with SIGSTOP, or stuck). Anything slower is given a bounded wait.
 */
static enum probe
socket_probe(const char *path, int *why)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	enum probe r = PROBE_UNKNOWN;

	*why = 0;
	if (fd < 0) {
		*why = errno;
		return PROBE_UNKNOWN;
	}
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
		r = PROBE_ALIVE;
	else if (errno == ECONNREFUSED || errno == ENOENT)
		r = PROBE_DEAD; /* no listener: a crashed daemon's file */
	else if (errno == EAGAIN)
		r = PROBE_STALLED;
	else if (errno == EINPROGRESS) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int e = 0;
		socklen_t len = sizeof e;

		if (poll(&p, 1, 1000) <= 0)
			r = PROBE_STALLED;
		else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 &&
			 e == 0)
			r = PROBE_ALIVE;
		else if (e == ECONNREFUSED)
			r = PROBE_DEAD;
		else
			*why = e;
	} else
		*why = errno;
	close(fd);
	return r;
}

static int
make_socket_dir(const char *path, char *err, size_t errlen)
{
	char dir[4096];
	char *slash;
	struct stat st;
	bool private_tmp;

	snprintf(dir, sizeof dir, "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL || slash == dir)
		return 0;
	*slash = '\0';
	{
		char mine[64];

		/* Only the per-user default folder is private. */
		snprintf(mine, sizeof mine, "/tmp/arbiter-%u", (unsigned)getuid());
		private_tmp = strcmp(dir, mine) == 0;
	}
	if (mkdir(dir, private_tmp ? 0700 : 0755) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create socket folder %s: %s", dir,
			 strerror(errno));
		return -1;
	}
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "socket folder %s is not a folder", dir);
		return -1;
	}
	if (private_tmp && st.st_uid != getuid()) {
		snprintf(err, errlen,
			 "socket folder %s belongs to uid %u, not to us (uid "
			 "%u); remove it or set socket.path",
			 dir, (unsigned)st.st_uid, (unsigned)getuid());
		return -1;
	}
	return 0;
}

static int
listen_socket(struct server *srv, char *err, size_t errlen)
{
	const char *path = srv->cfg.socket_path;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	mode_t old;
	int fd, why;

	if (make_socket_dir(path, err, errlen) < 0)
		return -1;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen,
				 "%s exists and is not a socket%s; remove it or "
				 "set socket.path",
				 path, S_ISLNK(st.st_mode) ? " (a symbolic link)"
							   : "");
			return -1;
		}
		switch (socket_probe(path, &why)) {
		case PROBE_ALIVE:
			snprintf(err, errlen,
				 "an arbiter is already answering on %s; stop "
				 "it first or choose another socket.path",
				 path);
			return -1;
		case PROBE_STALLED:
			snprintf(err, errlen,
				 "a process listens on %s but accepts no "
				 "connection (its queue is full: stopped, e.g. "
				 "by SIGSTOP, or stuck); it is not replaced. "
				 "Resume or stop it (ss -xlp shows it), or "
				 "choose another socket.path",
				 path);
			return -1;
		case PROBE_UNKNOWN:
			snprintf(err, errlen,
				 "cannot tell whether a process listens on %s "
				 "(connect: %s); it is not replaced. Remove it "
				 "if no arbiter runs there, or choose another "
				 "socket.path",
				 path, strerror(why));
			return -1;
		case PROBE_DEAD:
			break;
		}
		/* A dead socket file from a crashed daemon: replace it. */
		if (unlink(path) < 0) {
			snprintf(err, errlen, "cannot remove stale socket %s: %s",
				 path, strerror(errno));
			return -1;
		}
		log_info("removed stale socket", "path=%s", path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	/* Create the socket file with its final mode: no window where it is
	 * more open than configured. */
	old = umask((mode_t)(~srv->cfg.socket_mode & 0777));
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;

		umask(old);
		close(fd);
		snprintf(err, errlen, "cannot bind %s: %s", path, strerror(e));
		return -1;
	}
	umask(old);
	srv->socket_created = true;
	/* The umask gave it its mode; a default ACL on the folder may not
	 * have. Only then chmod, and only the socket we made (not a link
	 * put in its place in a shared folder). */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
	    (st.st_mode & 07777) != (mode_t)srv->cfg.socket_mode &&
	    chmod(path, (mode_t)srv->cfg.socket_mode) < 0)
		log_warn("chmod socket failed", "path=%s error=%s", path,
			 strerror(errno));
	if (srv->cfg.socket_group[0] != '\0') {
		struct group *g = getgrnam(srv->cfg.socket_group);
		char *end;
		long gid = strtol(srv->cfg.socket_group, &end, 10);

		if (g != NULL)
			gid = (long)g->gr_gid;
		else if (*end != '\0') {
			close(fd);
			snprintf(err, errlen,
				 "socket.group: no group named '%s'",
				 srv->cfg.socket_group);
			return -1;
		}
		if (lchown(path, (uid_t)-1, (gid_t)gid) < 0) {
			int e = errno;

			close(fd);
			snprintf(err, errlen, "cannot give %s to group %s: %s",
				 path, srv->cfg.socket_group, strerror(e));
			return -1;
		}
	}
	if (listen(fd, 1024) < 0) {
		int e = errno;

		close(fd);
		snprintf(err, errlen, "listen on %s: %s", path, strerror(e));
		return -1;
	}
	srv->listen_fd = fd;
	return 0;
}

/* ------------------------------------------------------------ signals */

static void
reload(struct server *srv)
{
	struct config nc;
	char err[1024];
	const char *why;

	if (config_load(&nc, srv->conf_path, srv->overrides, srv->noverrides,
			err, sizeof err) < 0) {
		log_error("reload refused, keeping the running config",
			  "error=\"%s\"", err);
		return;
	}
	why = config_restart_needed(&srv->cfg, &nc);
	if (why != NULL) {
		log_error("reload refused, keeping the running config",
			  "key=%s reason=\"changing it needs a restart\"", why);
		config_free(&nc);
		return;
	}
	if (nc.max_frame_bytes != srv->cfg.max_frame_bytes) {
		codec_arena_free(&srv->arena);
		codec_arena_init(&srv->arena, 2 * nc.max_frame_bytes + 65536);
	}
	if (strcmp(nc.metrics_listen, srv->cfg.metrics_listen) != 0) {
		struct config keep = srv->cfg;
		char merr[300];

		metrics_stop(srv);
		srv->cfg = nc;
		if (metrics_start(srv, merr, sizeof merr) < 0)
			log_error("metrics listener not restarted",
				  "error=\"%s\"", merr);
		srv->cfg = keep;
	}
	config_free(&srv->cfg);
	srv->cfg = nc;
	log_setup((enum log_level)srv->cfg.log_level,
		  srv->cfg.log_format == LOGJSON);
	lockmgr_limits_from(srv);
	stats_set_max(&srv->stats, (unsigned)srv->cfg.stats_max_resources);
	log_info("config reloaded", "file=%s",
		 srv->cfg.path ? srv->cfg.path : "-");
}

static void
stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	log_warn("shutdown bound reached; closing with output unsent",
		 "timeout_ms=%" PRIu64, srv->cfg.shutdown_timeout_ms);
	event_base_loopbreak(srv->base);
}

void
server_begin_shutdown(struct server *srv, const char *why)
{
	struct conn *c;
	struct timeval tv;
	uint64_t now = now_ns();

	if (srv->stopping)
		return;
	srv->stopping = true;
	notify_send("STOPPING=1");
	log_info("shutting down", "reason=%s holders=%u waiters=%u conns=%u",
		 why, srv->lm.nheld, srv->lm.nwaiting, srv->nconns);
	if (srv->ev_accept != NULL)
		event_del(srv->ev_accept);
	event_del(srv->ev_accept_resume);
	if (srv->listen_fd >= 0) {
		close(srv->listen_fd);
		srv->listen_fd = -1;
	}
	if (srv->socket_created) {
		unlink(srv->cfg.socket_path);
		srv->socket_created = false;
	}
	/* Close the gate first, so revoking one holder grants nobody else. */
	lockmgr_set_open(&srv->lm, false, now);
	TAILQ_FOREACH(c, &srv->conns, entry) {
		/* Nothing below closes a connection: sends only queue. */
		lockmgr_drop_owner(&srv->lm, &c->owner, LM_END_SHUTDOWN, now);
		server_after_lockmgr(srv);
		if (c->kill == NULL)
			c->kill = "shutdown";
		if (!c->in_flushq) {
			c->in_flushq = true;
			TAILQ_INSERT_TAIL(&srv->flushq, c, flush_entry);
		}
	}
	tv.tv_sec = (time_t)(srv->cfg.shutdown_timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)(srv->cfg.shutdown_timeout_ms % 1000) * 1000;
	evtimer_add(srv->ev_stop, &tv);
	server_flush(srv);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;

	(void)what;
	if (sig == SIGHUP)
		reload(srv);
	else
		server_begin_shutdown(srv, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ------------------------------------------------------------ life */

int
server_core_init(struct server *srv, char *err, size_t errlen)
{
	struct event_config *ecfg;

	TAILQ_INIT(&srv->conns);
	TAILQ_INIT(&srv->flushq);
	TAILQ_INIT(&srv->graveyard);
	srv->listen_fd = -1;
	srv->timer_when = LM_FOREVER;
	srv->t_start = now_ns();
	srv->wall_start = time(NULL);
	lockmgr_init(&srv->lm);
	lockmgr_limits_from(srv);
	srv->role = ROLE_IDLE;
	stats_init(&srv->stats, (unsigned)srv->cfg.stats_max_resources);
	storage_init(&srv->storage);
	state_writer_init(&srv->writer);
	codec_arena_init(&srv->arena, 2 * srv->cfg.max_frame_bytes + 65536);
	srv->rbuf = xcalloc(1, CONN_READ_CHUNK);
	signal(SIGPIPE, SIG_IGN);

	ecfg = event_config_new();
	/* One thread, no locks: the helper threads only write eventfds. */
	event_config_set_flag(ecfg, EVENT_BASE_FLAG_NOLOCK);
	srv->base = event_base_new_with_config(ecfg);
	event_config_free(ecfg);
	if (srv->base == NULL) {
		snprintf(err, errlen, "cannot create the event loop");
		return -1;
	}
	srv->ev_timer = evtimer_new(srv->base, timer_cb, srv);
	srv->ev_reap = event_new(srv->base, -1, 0, reap_cb, srv);
	return 0;
}

int
server_init(struct server *srv, char *err, size_t errlen)
{
	if (server_core_init(srv, err, errlen) < 0)
		return -1;
	if (role_start(srv, err, errlen) < 0)
		return -1;

	if (listen_socket(srv, err, errlen) < 0)
		return -1;

	srv->ev_accept = event_new(srv->base, srv->listen_fd,
				   EV_READ | EV_PERSIST, accept_cb, srv);
	srv->ev_accept_resume = evtimer_new(srv->base, accept_resume_cb, srv);
	srv->ev_stop = evtimer_new(srv->base, stop_cb, srv);
	srv->ev_sigterm = evsignal_new(srv->base, SIGTERM, signal_cb, srv);
	srv->ev_sigint = evsignal_new(srv->base, SIGINT, signal_cb, srv);
	srv->ev_sighup = evsignal_new(srv->base, SIGHUP, signal_cb, srv);
	event_add(srv->ev_accept, NULL);
	event_add(srv->ev_sigterm, NULL);
	event_add(srv->ev_sigint, NULL);
	event_add(srv->ev_sighup, NULL);
	if (metrics_start(srv, err, errlen) < 0)
		return -1;
	role_listening(srv);
	return 0;
}

int
server_run(struct server *srv)
{
	log_info("arbiter ready", "version=%s pid=%ld socket=%s storage=%s "
				  "role=%s",
		 ARBITER_VERSION, (long)getpid(), srv->cfg.socket_path,
		 srv->cfg.storage_path, role_name(srv));
	event_base_dispatch(srv->base);
	return srv->exit_code;
}

void
server_free(struct server *srv)
{
	struct conn *c;
	sigset_t stop;

	/* Freeing the signal events below restores the default actions: a
	 * second SIGTERM during teardown would then kill us with a signal
	 * status instead of letting the clean exit finish. Blocked, it just
	 * stays pending until we are gone. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	sigprocmask(SIG_BLOCK, &stop, NULL);

	while ((c = TAILQ_FIRST(&srv->conns)) != NULL) {
		/* Shutdown already revoked everything; close quietly. */
		conn_close(c, "exit");
	}
	while ((c = TAILQ_FIRST(&srv->graveyard)) != NULL) {
		TAILQ_REMOVE(&srv->graveyard, c, entry);
		conn_free(c);
	}
	if (srv->socket_created)
		unlink(srv->cfg.socket_path);
	if (srv->listen_fd >= 0)
		close(srv->listen_fd);
	metrics_stop(srv);
	if (srv->base != NULL)
		role_release(srv);
	state_writer_free(&srv->writer);
	storage_free(&srv->storage);
	lockmgr_free(&srv->lm);
	stats_free(&srv->stats);
	codec_arena_free(&srv->arena);
	free(srv->rbuf);
	srv->rbuf = NULL;
	if (srv->base != NULL) {
		struct event **evs[] = {
			&srv->ev_accept, &srv->ev_accept_resume, &srv->ev_timer,
			&srv->ev_reap,	 &srv->ev_stop,		 &srv->ev_sigterm,
			&srv->ev_sigint, &srv->ev_sighup,	 &srv->ev_storage,
			&srv->ev_reserve, &srv->ev_linger, &srv->ev_watch,
			&srv->ev_written, &srv->ev_retry, &srv->ev_dirwatch,
		};

		for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++) {
			if (*evs[i] != NULL)
				event_free(*evs[i]);
			*evs[i] = NULL;
		}
		event_base_free(srv->base);
		srv->base = NULL;
	}
	config_free(&srv->cfg);
}
