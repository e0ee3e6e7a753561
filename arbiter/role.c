/*
 * role: what the daemon is with respect to the storage lock, and what it
 * may grant because of it.
 *
 *   active   holds the storage lock; grants leases; reads the state file
 *            at activation and writes it at release (the fencing tokens'
 *            reservations in between are reserve.c's, and every change of
 *            role waits for a write in progress).
 *   standby  hold = always, another arbiter holds the storage: serves its
 *            socket and queues requests; a helper thread blocked in
 *            F_OFD_SETLKW wakes the loop through an eventfd the moment the
 *            lock is ours, and the queues are granted in order.
 *   idle     hold = on-demand with no lease outstanding: the storage lock
 *            is released (linger_ms after the last lease), so arbiters on
 *            other hosts sharing the volume can take their turn.
 *
 * The lockmgr's gate is open exactly while the role is active and tokens
 * are reserved, so nothing is ever granted without the storage lock.
 *
 * A failure to take the lock is never final once the daemon runs: another
 * holder is waited for by the wait thread (the kernel wakes it); a lock
 * file that cannot be used (a link or a folder at its path, no permission)
 * is logged and tried again when its name changes in the folder (inotify)
 * or after a back-off of 100 ms doubling to 5 s, whichever comes first.
 *
 * After an unclean end of the storage's last holder (killed, crashed, lost
 * the lock, or stopped with leases held, whose holders may still be
 * finishing), every resource waits leases.lock_delay_ms before its first
 * grant. "Clean" is a mark in the state file, written only by a graceful
 * release with no lease outstanding and cleared at activation, and the
 * holder record in the lock file, which a clean release truncates.
 */
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "notify.h"
#include "reserve.h"
#include "cluster.h"
#include "role.h"
#include "server.h"
#include "state.h"

const char *
role_name(const struct server *srv)
{
	switch (srv->role) {
	case ROLE_ACTIVE:
		return "active";
	case ROLE_STANDBY:
		return "standby";
	case ROLE_IDLE:
		return "idle";
	}
	return "?";
}

static uint64_t
realtime_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000;
}

static void become_standby(struct server *srv);
static void take_storage(struct server *srv);

/* Log what the last open of the lock file changed or could not fix. */
static void
log_note(struct server *srv)
{
	if (srv->storage.note[0] != '\0') {
		log_warn("storage lock file permissions", "detail=\"%s\"",
			 srv->storage.note);
		srv->storage.note[0] = '\0';
	}
}

static void
retry_stop(struct server *srv)
{
	if (srv->ev_retry != NULL)
		evtimer_del(srv->ev_retry);
	if (srv->ev_dirwatch != NULL) {
		event_free(srv->ev_dirwatch);
		srv->ev_dirwatch = NULL;
	}
	storage_unwatch_dir(&srv->storage);
	srv->retry_ms = 0;
	srv->retry_err[0] = '\0';
}

static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	if ((what & EV_READ) && !storage_dir_changed(&srv->storage))
		return; /* another name in the folder changed */
	take_storage(srv);
}

/*
 * The lock file cannot be used now: say so (once per distinct cause), and
 * try again when its name changes in the folder, or after the back-off.
 */
static void
retry_arm(struct server *srv, const char *err)
{
	struct timeval tv;
	int fd;

	srv->retry_ms = srv->retry_ms == 0	? 100
			: srv->retry_ms >= 2500 ? 5000
						: srv->retry_ms * 2;
	/* (retry_err may hold a cut copy of a long message) */
	if (strncmp(err, srv->retry_err, sizeof srv->retry_err - 1) != 0) {
		log_error("cannot take the storage lock; retrying until it can "
			  "be taken",
			  "error=\"%s\" retry_ms=%u", err, srv->retry_ms);
		snprintf(srv->retry_err, sizeof srv->retry_err, "%s", err);
	} else
		log_debug("storage lock retry failed",
			  "error=\"%s\" retry_ms=%u", err, srv->retry_ms);
	snprintf(srv->storage_holder, sizeof srv->storage_holder,
		 "no one: the lock file cannot be used (%.400s)", err);
	tv.tv_sec = (time_t)(srv->retry_ms / 1000);
	tv.tv_usec = (suseconds_t)(srv->retry_ms % 1000) * 1000;
	evtimer_add(srv->ev_retry, &tv);
	/* Watch the folder anew each time: it may itself have been replaced
	 * (or be missing, and then only the back-off wakes us). */
	if (srv->ev_dirwatch != NULL) {
		event_free(srv->ev_dirwatch);
		srv->ev_dirwatch = NULL;
	}
	storage_unwatch_dir(&srv->storage);
	fd = storage_watch_dir(&srv->storage);
	if (fd >= 0) {
		srv->ev_dirwatch = event_new(
		    srv->base, fd, EV_READ | EV_PERSIST, retry_cb, srv);
		if (srv->ev_dirwatch != NULL)
			event_add(srv->ev_dirwatch, NULL);
	}
}

static void
watch_stop(struct server *srv)
{
	if (srv->ev_watch != NULL) {
		event_free(srv->ev_watch);
		srv->ev_watch = NULL;
	}
	if (srv->storage.watch_fd >= 0) {
		close(srv->storage.watch_fd);
		srv->storage.watch_fd = -1;
	}
}

static void watch_cb(evutil_socket_t fd, short what, void *arg);

static void
watch_start(struct server *srv)
{
	int fd;

	watch_stop(srv);
	fd = storage_watch(&srv->storage);
	if (fd < 0) {
		log_warn("cannot watch the lock file; its removal would go "
			 "unnoticed",
			 "lock_file=%s error=%s", srv->cfg.lock_file,
			 strerror(-fd));
		return;
	}
	srv->ev_watch =
	    event_new(srv->base, fd, EV_READ | EV_PERSIST, watch_cb, srv);
	if (srv->ev_watch != NULL)
		event_add(srv->ev_watch, NULL);
}

/*
 * The lock file changed: if it was removed or replaced, another arbiter
 * may have locked a new file at the path. Re-take the lock on that file,
 * or, if someone else holds it, step down: end every lease (they are no
 * longer protected), keep the queues, and wait as a standby.
 */
static void
watch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	char err[800];
	int rc, n;

	(void)fd;
	(void)what;
	rc = storage_check(&srv->storage, err, sizeof err);
	if (rc == 0 && srv->role != ROLE_ACTIVE &&
	    storage_stuck_behind_reader(&srv->storage)) {
		/* A standby blocked behind a process that is not an arbiter
		 * (a read lock, taken while the file was still open to all)
		 * would wait for it forever: once the file is replaced or
		 * removed, take the one at the path instead. */
		log_warn("the lock file was replaced while a process that is "
			 "not an arbiter read-locked the old one; taking the "
			 "new one",
			 "lock_file=%s", srv->cfg.lock_file);
		event_del(srv->ev_storage);
		storage_wait_cancel(&srv->storage);
		take_storage(srv);
		return;
	}
	if (rc == 0)
		return;
	if (rc == 1) {
		log_warn("storage lock file replaced; still holding the lock",
			 "detail=\"%s\"", err);
		log_note(srv);
		watch_start(srv);
		return;
	}
	log_error("storage lock lost; stepping down to standby",
		  "detail=\"%s\"", err);
	log_note(srv);
	reserve_drain(srv);
	watch_stop(srv);
	lockmgr_set_open(&srv->lm, false, now_ns());
	n = lockmgr_revoke_all(&srv->lm, LM_END_STORAGE_LOST, now_ns());
	log_error("leases revoked", "reason=storage_lost count=%d", n);
	srv->role = ROLE_STANDBY;
	notify_send("STATUS=standby: the storage lock was lost");
	if (rc == -EAGAIN)
		become_standby(srv);
	else
		retry_arm(srv, err);
}

/*
 * We hold the storage lock now: read the state file, reserve tokens above
 * everything ever handed out, open the gate. On a state file that cannot be
 * trusted, refuse (the caller stops the daemon).
 */
static int
activate(struct server *srv, char *err, size_t errlen)
{
	struct state_data sd;
	char why[400];
	uint64_t hw = 0;
	const char *unclean = NULL;
	int rc;

	reserve_drain(srv); /* (none should be left; never read under one) */
	rc = state_read(srv->cfg.state_file, &sd, why, sizeof why);
	if (rc == 0) {
		hw = sd.token_hw;
		if (!srv->state_loaded && sd.have_counters) {
			for (unsigned c = 0; c < STATS_NCOUNTERS; c++) {
				srv->stats.total.cur.c[c] += sd.counters[c];
				srv->stats.total.base.c[c] += sd.counters[c];
			}
		}
		if (sd.have_clean && !sd.clean)
			unclean = "the state file is not marked clean (its "
				  "last holder was killed, crashed, lost the "
				  "lock, or stopped with leases held)";
	} else if (rc == -ENOENT) {
		/*
		 * No state file: a new storage, or one whose file was
		 * deleted. Tokens must never go backwards, and a deleted
		 * file's mark is unknown: start above the clock in
		 * microseconds, which no earlier grant can have reached
		 * (a grant takes far more than a microsecond).
		 */
		hw = realtime_us();
		if (!srv->storage.created || srv->storage.prev_record)
			log_warn("state file missing on a storage used before; "
				 "fencing tokens restart above the clock, so "
				 "they never go backwards",
				 "state_file=%s token_hw=%" PRIu64,
				 srv->cfg.state_file, hw);
		else
			log_info("new storage: fencing tokens start at the "
				 "clock in microseconds",
				 "state_file=%s token_hw=%" PRIu64,
				 srv->cfg.state_file, hw);
	} else {
		if (!srv->reset_state) {
			snprintf(
			    err, errlen,
			    "state file %s is unusable: %s. It holds the "
			    "fencing-token high-water mark, so arbiter will "
			    "not guess. Restore it, or start once with "
			    "--reset-state (tokens then restart above both "
			    "any mark still readable and the current time "
			    "in microseconds)",
			    srv->cfg.state_file, why);
			return -1;
		}
		hw = sd.token_hw > realtime_us() ? sd.token_hw : realtime_us();
		log_warn("state file reset",
			 "state_file=%s reason=\"%s\" "
			 "token_hw=%" PRIu64,
			 srv->cfg.state_file, why, hw);
	}
	if (srv->storage.prev_record)
		unclean = "the lock file still held its last holder's record "
			  "(it was killed or crashed)";
	if (hw < srv->lm.last_token)
		hw = srv->lm.last_token;
	srv->state_loaded = true;
	lockmgr_set_tokens(&srv->lm, hw, hw);
	srv->role = ROLE_ACTIVE;
	srv->storage_holder[0] = '\0';
	cluster_start(srv);
	retry_stop(srv);
	log_note(srv);
	/* This write also clears the clean mark: from now on an end without
	 * role_release() is unclean. */
	if (reserve_now(srv) < 0)
		log_warn("starting with grants held until the state file can "
			 "be written",
			 "state_file=%s", srv->cfg.state_file);
	if (unclean != NULL && srv->cfg.lock_delay_ms > 0) {
		uint64_t now = now_ns();

		/* Before the gate opens, so not even a queued request slips
		 * through. */
		lockmgr_hold_all(&srv->lm,
				 now + srv->cfg.lock_delay_ms * 1000000u, now);
		log_warn("the storage's last holder did not end cleanly; every "
			 "resource waits leases.lock_delay_ms before its first "
			 "grant",
			 "lock_delay_ms=%" PRIu64 " reason=\"%s\"",
			 srv->cfg.lock_delay_ms, unclean);
	}
	lockmgr_set_open(&srv->lm, true, now_ns());
	watch_start(srv);
	log_info("storage locked, active", "lock_file=%s token_hw=%" PRIu64,
		 srv->cfg.lock_file, hw);
	notify_send("STATUS=active: holding the storage lock");
	return 0;
}

static void storage_cb(evutil_socket_t fd, short what, void *arg);

/* (declared above) */
static void
become_standby(struct server *srv)
{
	int rc;

	if (storage_read_holder(srv->cfg.lock_file, srv->storage_holder,
				sizeof srv->storage_holder) < 0)
		snprintf(srv->storage_holder, sizeof srv->storage_holder,
			 "a process that left no record");
	if (srv->storage.waiting)
		return;
	rc = storage_wait_start(&srv->storage);
	if (rc < 0) {
		char err[300];

		snprintf(err, sizeof err,
			 "cannot wait for the storage lock: %s", strerror(-rc));
		retry_arm(srv, err);
		return;
	}
	/* The eventfd exists only now: point the event at it. */
	event_assign(srv->ev_storage, srv->base, srv->storage.wake_fd, EV_READ,
		     storage_cb, srv);
	event_add(srv->ev_storage, NULL);
	/* And notice the file waited on being replaced (watch_cb). */
	watch_start(srv);
}

/*
 * Take the storage lock now, or arrange to be woken when it may be free:
 * by the wait thread when another process holds it, by the folder watch
 * or the back-off when the lock file cannot be used.
 */
static void
take_storage(struct server *srv)
{
	char err[1200];
	int rc;

	if (srv->role == ROLE_ACTIVE || srv->stopping || srv->storage.waiting)
		return;
	if (srv->cfg.hold == HOLD_ON_DEMAND &&
	    srv->lm.nheld + srv->lm.nwaiting == 0) {
		retry_stop(srv); /* nobody wants it any more */
		srv->role = ROLE_IDLE;
		return;
	}
	watch_stop(srv); /* what it watched is no longer waited on */
	rc = storage_try_lock(&srv->storage, srv->cfg.storage_path,
			      srv->cfg.lock_file, srv->cfg.socket_path, err,
			      sizeof err);
	if (rc == 0) {
		if (activate(srv, err, sizeof err) < 0) {
			log_error("cannot take over", "error=\"%s\"", err);
			srv->exit_code = 1;
			server_begin_shutdown(srv, "unusable state file");
			return;
		}
		log_info("took over the storage", "waiters=%u",
			 srv->lm.nwaiting);
		return;
	}
	log_note(srv);
	srv->role = ROLE_STANDBY;
	if (rc == -EAGAIN) {
		if (srv->retry_ms != 0)
			log_info("the storage lock file is usable again; "
				 "another process holds it, waiting",
				 "detail=\"%s\"", err);
		retry_stop(srv);
		become_standby(srv);
		return;
	}
	retry_arm(srv, err);
}

/* The wait thread got the lock (or failed). */
static void
storage_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	char err[1200];
	int rc;

	(void)fd;
	(void)what;
	rc = storage_wait_done(&srv->storage);
	if (rc == -ESTALE) {
		log_warn("the lock file was replaced while waiting; waiting on "
			 "the new one",
			 "lock_file=%s", srv->cfg.lock_file);
		take_storage(srv);
		return;
	}
	if (rc < 0) {
		if (srv->stopping)
			return;
		log_error("waiting for the storage lock failed; trying again",
			  "lock_file=%s error=%s", srv->cfg.lock_file,
			  strerror(-rc));
		take_storage(srv);
		return;
	}
	if (activate(srv, err, sizeof err) < 0) {
		log_error("cannot take over", "error=\"%s\"", err);
		srv->exit_code = 1;
		server_begin_shutdown(srv, "unusable state file");
		return;
	}
	log_info("took over the storage", "waiters=%u", srv->lm.nwaiting);
}

/* on-demand: give the storage back once nothing is outstanding. */
static void
linger_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	if (srv->role != ROLE_ACTIVE || srv->lm.nheld + srv->lm.nwaiting > 0)
		return;
	role_release(srv);
	log_info("storage released (on-demand, idle)", "lock_file=%s",
		 srv->cfg.lock_file);
}

/* storage.group as a gid, or -1 when unset. */
static int
storage_gid(const struct server *srv, char *err, size_t errlen)
{
	const char *name = srv->cfg.storage_group;
	struct group *g;
	char *end;
	long gid;

	if (name == NULL || name[0] == '\0')
		return -1;
	g = getgrnam(name);
	if (g != NULL)
		return (int)g->gr_gid;
	gid = strtol(name, &end, 10);
	if (*end != '\0' || gid < 0 || gid > INT32_MAX) {
		snprintf(err, errlen,
			 "storage.group: no group named '%s'; create it or "
			 "leave storage.group empty",
			 name);
		return -2;
	}
	return (int)gid;
}

int
role_start(struct server *srv, char *err, size_t errlen)
{
	int rc;

	srv->ev_storage = event_new(srv->base, -1, 0, storage_cb, srv);
	if (srv->ev_storage == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	reserve_init(srv);
	srv->ev_linger = evtimer_new(srv->base, linger_cb, srv);
	srv->ev_retry = evtimer_new(srv->base, retry_cb, srv);
	lockmgr_set_open(&srv->lm, false, now_ns());
	srv->storage.gid = storage_gid(srv, err, errlen);
	if (srv->storage.gid < -1)
		return -1;
	if (srv->cfg.hold == HOLD_ON_DEMAND) {
		srv->role = ROLE_IDLE;
		return 0;
	}
	/* At start, a lock file that cannot be used stops the daemon with
	 * the reason: the operator is there to read it. */
	rc = storage_try_lock(&srv->storage, srv->cfg.storage_path,
			      srv->cfg.lock_file, srv->cfg.socket_path, err,
			      errlen);
	log_note(srv);
	if (rc == 0)
		return activate(srv, err, errlen);
	if (rc != -EAGAIN)
		return -1;
	srv->role = ROLE_STANDBY;
	log_info("standby: another arbiter holds the storage", "detail=\"%s\"",
		 err);
	err[0] = '\0';
	return 0;
}

/* Called once the listener is up: wait for the lock as a standby. */
void
role_listening(struct server *srv)
{
	if (srv->role == ROLE_STANDBY) {
		become_standby(srv);
		notify_send("READY=1\nSTATUS=standby: another arbiter holds "
			    "the storage");
	} else {
		notify_send(srv->role == ROLE_ACTIVE
				? "READY=1\nSTATUS=active: holding the "
				  "storage lock"
				: "READY=1\nSTATUS=idle: on-demand, the "
				  "storage lock is taken with the first "
				  "lease");
	}
}

void
role_before_acquire(struct server *srv)
{
	char err[1200];
	int rc;

	if (srv->cfg.hold != HOLD_ON_DEMAND || srv->role == ROLE_ACTIVE ||
	    srv->stopping)
		return;
	evtimer_del(srv->ev_linger);
	if (srv->storage.waiting || srv->retry_ms != 0)
		return; /* the wait thread or the retry is on it */
	rc = storage_try_lock(&srv->storage, srv->cfg.storage_path,
			      srv->cfg.lock_file, srv->cfg.socket_path, err,
			      sizeof err);
	log_note(srv);
	if (rc == 0) {
		if (activate(srv, err, sizeof err) < 0) {
			log_error("cannot use the storage", "error=\"%s\"",
				  err);
			storage_unlock(&srv->storage);
			srv->role = ROLE_IDLE;
		}
		return;
	}
	srv->role = ROLE_STANDBY;
	if (rc != -EAGAIN) {
		retry_arm(srv, err);
		return;
	}
	become_standby(srv);
}

void
role_after_events(struct server *srv, bool need_tokens, bool busy, bool idle)
{
	/* Every change of the lease count comes with events, so this is
	 * current when a shutdown begins (and ends them all). */
	if (!srv->stopping)
		srv->leases_held = srv->lm.nheld > 0;
	if (srv->role != ROLE_ACTIVE)
		return;
	reserve_refill(srv, need_tokens);
	if (srv->cfg.hold != HOLD_ON_DEMAND)
		return;
	if (busy)
		evtimer_del(srv->ev_linger);
	if (idle && srv->lm.nheld + srv->lm.nwaiting == 0 && !srv->stopping) {
		struct timeval tv = {
		    .tv_sec = (time_t)(srv->cfg.linger_ms / 1000),
		    .tv_usec = (suseconds_t)(srv->cfg.linger_ms % 1000) * 1000,
		};

		evtimer_add(srv->ev_linger, &tv);
	}
}

void
role_release(struct server *srv)
{
	char err[600];

	if (srv->role == ROLE_ACTIVE) {
		/* Everything handed out is at or below last_token, and every
		 * cluster token below reserve_want. */
		/* Clean only if the shutdown ended no lease: their holders
		 * may still be finishing (arbiterctl run's grace). */
		bool clean = !(srv->stopping && srv->leases_held);
		uint64_t hw = srv->lm.last_token > srv->reserve_want
				  ? srv->lm.last_token
				  : srv->reserve_want;

		lockmgr_set_open(&srv->lm, false, now_ns());
		reserve_drain(srv);
		if (state_write(srv->cfg.state_file, hw, clean,
				srv->storage.gid, &srv->stats,
				&srv->state_fsyncs, err, sizeof err) < 0)
			log_error("cannot write the state file at release",
				  "error=\"%s\"", err);
		else
			srv->state_writes++;
		lockmgr_set_tokens(&srv->lm, srv->lm.last_token,
				   srv->lm.last_token);
		watch_stop(srv);
		storage_unlock(&srv->storage);
		srv->role = ROLE_IDLE;
	}
	retry_stop(srv);
}
