/*
 * server: the event base and its loop with the pump that runs once per
 * turn, the Unix socket (accepted through listener.c), descriptors,
 * signals, the one timer that tracks the lockmgr's earliest deadline,
 * reload and shutdown.
 *
 * Nothing here polls. Connections wake us by becoming readable, the lockmgr's
 * deadlines by one evtimer kept at the earliest of them, a standby by the
 * storage wait thread's eventfd, and signals through libevent's signal events.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "admin.h"
#include "cluster.h"
#include "conn.h"
#include "dispatch.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "role.h"
#include "server.h"
#include "xalloc.h"

/* Refused connections kept open until told why (see unix_accepted). */
#define REFUSED_MAX 64
/*
 * Descriptors never given to clients, for what the daemon opens after start:
 * the state file, its temp file and the folder fsync (the writer thread), the
 * lock file reopened, its holder record read and the standby thread's own
 * open, the inotify watch, two eventfds, the metrics socket on a reload, the
 * config file and the passwd/group files it may read, the notify socket.
 * About 16 at worst; the rest is margin.
 */
#define FD_RESERVE 24

static void
lockmgr_limits_from(struct server *srv)
{
	struct lm_limits l = {
	    .max_resources = (unsigned)srv->cfg.max_resources,
	    .max_leases_per_owner =
		(unsigned)srv->cfg.max_leases_per_connection,
	    .max_waiters_per_resource =
		(unsigned)srv->cfg.max_waiters_per_resource,
	    .position_interval_ns = LM_POSITION_INTERVAL_NS,
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
	lockmgr_tick(&srv->lm, now_ns()); /* its events are the pump's */
}

/* ------------------------------------------------------------ the pump */

/* Write out what the connections queued; close those marked kill. */
static void
flush_all(struct server *srv)
{
	struct conn *c;

	while ((c = TAILQ_FIRST(&srv->flushq)) != NULL) {
		TAILQ_REMOVE(&srv->flushq, c, flush_entry);
		c->in_flushq = false;
		if (!conn_flush(c) || c->stream == 0 || c->kill != NULL ||
		    evbuffer_get_length(c->out) > 0)
			continue;
		/* A streamed text reply drained: produce its next part, to be
		 * written on a later turn so that one big reply never holds
		 * up the others. */
		admin_stream(c);
		conn_stream_produced(c);
	}
}

/* Free the connections closed this turn: no callback is on the stack. */
static void
reap(struct server *srv)
{
	struct conn *c;
	bool freed = false;

	while ((c = TAILQ_FIRST(&srv->graveyard)) != NULL) {
		TAILQ_REMOVE(&srv->graveyard, c, entry);
		conn_free(c);
		freed = true;
	}
	/* A closed connection freed a descriptor: accept again if paused. */
	if (freed)
		server_fd_freed(srv);
}

/*
 * The pump, once per loop turn, in this order: the lockmgr events still
 * queued (requests drained their own; a close, the timer and a change of
 * role leave theirs here), then every connection's output. Writing can find
 * a connection dead, whose close queues events again (the next waiter's
 * grant): go round until none is left. Then free the closed connections
 * (after the events that point at them), and re-arm the lockmgr timer.
 */
static void
server_pump(struct server *srv)
{
	size_t n;

	do {
		dispatch_drain(srv);
		flush_all(srv);
		(void)lockmgr_events(&srv->lm, &n);
	} while (n > 0 || !TAILQ_EMPTY(&srv->flushq));
	reap(srv);
	arm_timer(srv);
	if (srv->stopping) {
		struct conn *c;

		/* The session's revoke frees this host's keys at once. */
		if (!cluster_stopped(srv))
			return;
		TAILQ_FOREACH(c, &srv->conns, entry) {
			if (evbuffer_get_length(c->out) > 0)
				return;
		}
		srv->done = true;
	}
}

/*
 * Why the pump runs from this loop (tmux's proc_loop with its loop
 * callback, Redis's beforeSleep) and not from a lowest-priority event made
 * active whenever there is something to flush: libevent 2.1 runs only the
 * highest-priority non-empty active queue per pass and polls again between
 * passes, so under a steady stream of input a low-priority flush can wait
 * indefinitely, and priorities would slow every other event; the
 * prepare/check watchers (evwatch) that would fit exactly arrive only in
 * libevent 2.2. EVLOOP_ONCE returns once the callbacks of one wait, and
 * those they made active, have run, so the pump runs exactly once before
 * the loop sleeps again.
 */
int
server_turn(struct server *srv, int flags)
{
	int rc = event_base_loop(srv->base, flags | EVLOOP_ONCE);

	if (rc == 0 && !event_base_got_break(srv->base))
		server_pump(srv);
	return rc;
}

/* ------------------------------------------------------------ refusals */

void
server_close_answered(int fd)
{
	char buf[4096];

	/* What the peer sent before we got to it (a Hello, a request head):
	 * closing with it unread would reset the connection, and the peer
	 * could lose the answer. A few reads at most; it may go on sending. */
	for (int i = 0; i < 4; i++) {
		if (recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0)
			break;
	}
	shutdown(fd, SHUT_WR);
	close(fd);
}

/* Refuse a connection over a limit with a LIMIT error, unread. */
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
	server_close_answered(fd);
}

void
server_fd_freed(struct server *srv)
{
	struct listener *ls[] = {&srv->accept, metrics_listener(srv)};

	if (srv->stopping)
		return;
	for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++) {
		if (ls[i] != NULL && ls[i]->paused)
			listener_resume(ls[i]);
	}
}

/* ------------------------------------------------------------ descriptors */

/* Descriptors open now, counted in /proc/self/fd (the highest one plus one
 * where that is not mounted). */
static unsigned
fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	unsigned n = 0;

	if (d == NULL) {
		int top = 0;

		for (int fd = 0; fd < 65536; fd++) {
			if (fcntl(fd, F_GETFD) >= 0)
				top = fd + 1;
		}
		return (unsigned)top;
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] != '.')
			n++;
	}
	closedir(d);
	return n > 0 ? n - 1 : 0; /* not the one opendir used */
}

/* Client descriptors the limit leaves, in all and for Unix clients. */
static uint64_t
fd_clients_max(const struct server *srv)
{
	uint64_t keep = (uint64_t)srv->fd_base + FD_RESERVE;

	return srv->fd_limit > keep ? srv->fd_limit - keep : 0;
}

static uint64_t
fd_unix_max(const struct server *srv)
{
	uint64_t all = fd_clients_max(srv);
	uint64_t m =
	    srv->metrics != NULL ? srv->cfg.metrics_max_connections : 0;

	return all > m ? all - m : 0;
}

bool
server_fd_room(struct server *srv, int fd, bool metrics)
{
	uint64_t unix_fds = (uint64_t)srv->nconns + srv->nrefused;

	if (srv->fd_limit == 0)
		return true; /* not measured: the fuzz harness */
	/* Descriptors are handed out lowest first: everything below fd is
	 * taken, whatever our counts say. */
	if ((uint64_t)fd + FD_RESERVE >= srv->fd_limit)
		return false;
	if (metrics)
		return unix_fds + metrics_nconns(srv) < fd_clients_max(srv);
	return unix_fds < fd_unix_max(srv);
}

/* Raise the soft open-file limit to the hard one: the soft default (1024)
 * is there for select(2), which libevent does not use here. */
static void
fd_limit_raise(struct server *srv)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		log_warn("cannot read the open-file limit", "error=\"%s\"",
			 strerror(errno));
		return;
	}
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t was = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_warn("cannot raise the open-file limit",
				 "soft=%llu hard=%llu error=\"%s\"",
				 (unsigned long long)was,
				 (unsigned long long)rl.rlim_max,
				 strerror(errno));
			rl.rlim_cur = was;
		} else {
			log_debug("open-file limit raised", "from=%llu to=%llu",
				  (unsigned long long)was,
				  (unsigned long long)rl.rlim_cur);
		}
	}
	srv->fd_limit =
	    rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
}

/* Warn when limits.max_connections promises more than the descriptors can
 * give: past what the limit allows, clients are refused anyway. */
static void
fd_limit_check(struct server *srv)
{
	uint64_t allowed = fd_unix_max(srv), m;

	if (srv->fd_limit == 0 || srv->cfg.max_connections <= allowed)
		return;
	m = srv->metrics != NULL ? srv->cfg.metrics_max_connections : 0;
	log_warn("limits.max_connections is above what the open-file limit "
		 "allows",
		 "max_connections=%" PRIu64 " allowed=%" PRIu64
		 " nofile=%" PRIu64 " open_at_start=%u reserved=%d "
		 "metrics_connections=%" PRIu64
		 " hint=\"raise the open-file limit to at least %" PRIu64
		 " (LimitNOFILE= in the systemd unit, ulimit -n, the "
		 "container's nofile ulimit) or lower limits.max_connections "
		 "to %" PRIu64 "\"",
		 srv->cfg.max_connections, allowed, srv->fd_limit, srv->fd_base,
		 FD_RESERVE, m,
		 srv->cfg.max_connections + srv->fd_base + FD_RESERVE + m,
		 allowed);
}

/* ------------------------------------------------------------ the socket */

static void
unix_accepted(struct listener *l, int fd)
{
	struct server *srv = l->srv;
	bool room = server_fd_room(srv, fd, false);

	if (srv->nconns >= srv->cfg.max_connections) {
		log_warn("connection refused",
			 "reason=max_connections limit=%" PRIu64,
			 srv->cfg.max_connections);
		/* Keep a few to tell them why once they speak (or at the
		 * handshake deadline); past that, close at once. */
		if (srv->nrefused < REFUSED_MAX && room)
			conn_new(srv, fd, true);
		else
			refuse(fd, "limits.max_connections reached; try "
				   "again later or raise the limit");
		return;
	}
	if (!room) {
		/* Logged once until a client is served again: a flood of
		 * them must not become a flood of lines. */
		if (!srv->fd_full_logged)
			log_warn(
			    "connection refused",
			    "reason=open_file_limit conns=%u nofile=%" PRIu64
			    " hint=\"raise the open-file limit; the "
			    "daemon keeps %d descriptors for its own "
			    "files\"",
			    srv->nconns, srv->fd_limit, FD_RESERVE);
		srv->fd_full_logged = true;
		refuse(fd, "arbiterd is at its open-file limit; try again "
			   "later, or ask its operator to raise the limit");
		return;
	}
	srv->fd_full_logged = false;
	conn_new(srv, fd, false);
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
		snprintf(mine, sizeof mine, "/tmp/arbiter-%u",
			 (unsigned)getuid());
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
			snprintf(
			    err, errlen,
			    "%s exists and is not a socket%s; remove it or "
			    "set socket.path",
			    path,
			    S_ISLNK(st.st_mode) ? " (a symbolic link)" : "");
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
			snprintf(err, errlen,
				 "cannot remove stale socket %s: %s", path,
				 strerror(errno));
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
	/* A reload can promise more connections than the descriptors allow. */
	fd_limit_check(srv);
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
	listener_stop(&srv->accept);
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
	cluster_stop(srv);
	TAILQ_FOREACH(c, &srv->conns, entry)
		lockmgr_drop_owner(&srv->lm, &c->owner, LM_END_SHUTDOWN, now);
	/* Queue the Revoked and SHUTTING_DOWN frames now: a connection
	 * marked kill takes no more output. The pump writes them. */
	dispatch_drain(srv);
	TAILQ_FOREACH(c, &srv->conns, entry) {
		/* A healthy client gets its last words as fast as it reads
		 * them, up to shutdown.timeout_ms (ev_stop), like a closing
		 * text session; one already condemned is not waited for. */
		if (c->kill == NULL) {
			c->kill = "shutdown";
			c->linger = true;
		}
		conn_flushq_add(c);
	}
	tv.tv_sec = (time_t)(srv->cfg.shutdown_timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)(srv->cfg.shutdown_timeout_ms % 1000) * 1000;
	evtimer_add(srv->ev_stop, &tv);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;

	(void)what;
	if (sig == SIGHUP)
		reload(srv);
	else
		server_begin_shutdown(srv,
				      sig == SIGTERM ? "SIGTERM" : "SIGINT");
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
	return 0;
}

int
server_init(struct server *srv, char *err, size_t errlen)
{
	if (server_core_init(srv, err, errlen) < 0)
		return -1;
	fd_limit_raise(srv);
	if (cluster_init(srv, err, errlen) < 0)
		return -1;
	if (role_start(srv, err, errlen) < 0)
		return -1;

	if (listen_socket(srv, err, errlen) < 0)
		return -1;

	if (listener_start(&srv->accept, srv, srv->listen_fd, "socket",
			   unix_accepted, srv) < 0) {
		snprintf(err, errlen, "cannot watch the socket %s",
			 srv->cfg.socket_path);
		return -1;
	}
	srv->ev_stop = evtimer_new(srv->base, stop_cb, srv);
	srv->ev_sigterm = evsignal_new(srv->base, SIGTERM, signal_cb, srv);
	srv->ev_sigint = evsignal_new(srv->base, SIGINT, signal_cb, srv);
	srv->ev_sighup = evsignal_new(srv->base, SIGHUP, signal_cb, srv);
	event_add(srv->ev_sigterm, NULL);
	event_add(srv->ev_sigint, NULL);
	event_add(srv->ev_sighup, NULL);
	if (metrics_start(srv, err, errlen) < 0)
		return -1;
	srv->fd_base = fd_count();
	fd_limit_check(srv);
	role_listening(srv);
	return 0;
}

int
server_run(struct server *srv)
{
	log_info("arbiter ready",
		 "version=%s pid=%ld socket=%s storage=%s "
		 "role=%s",
		 ARBITER_VERSION, (long)getpid(), srv->cfg.socket_path,
		 srv->cfg.storage_path, role_name(srv));
	while (!srv->done && server_turn(srv, 0) == 0 &&
	       !event_base_got_break(srv->base))
		;
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

	cluster_free(srv);
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
	listener_stop(&srv->accept);
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
		    &srv->ev_timer,   &srv->ev_stop,   &srv->ev_sigterm,
		    &srv->ev_sigint,  &srv->ev_sighup, &srv->ev_storage,
		    &srv->ev_reserve, &srv->ev_linger, &srv->ev_watch,
		    &srv->ev_written, &srv->ev_retry,  &srv->ev_dirwatch,
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
