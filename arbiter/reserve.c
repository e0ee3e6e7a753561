/*
 * reserve: the fencing tokens' reservations. While active, the lockmgr
 * grants tokens up to a limit that the state file already holds, so no
 * token is ever handed out twice, even after a crash. The limit is raised
 * one block (STATE_TOKEN_BLOCK) at a time: at activation in the loop
 * (reserve_now), then ahead of need by a helper thread while half of the
 * current block is left (reserve_refill), so grants go on during the disk
 * work. A failed write is logged and tried again a second later; grants
 * beyond the current block wait meanwhile. Every change of role waits for
 * a write in progress (reserve_drain).
 *
 * This file does not decide the role (role.c) nor encode the file
 * (state.c).
 */
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

#include "log.h"
#include "reserve.h"
#include "server.h"
#include "state.h"

/*
 * A reservation's outcome: let the lockmgr use the new mark, or log and try
 * again in a second (a full disk or a read-only remount is not fixed by
 * spinning); grants beyond the old mark wait meanwhile.
 */
static int
reserved(struct server *srv, int rc, uint64_t limit, const char *err)
{
	struct timeval tv = {1, 0};

	if (rc < 0) {
		log_error("cannot reserve fencing tokens; grants beyond the "
			  "current block are held",
			  "state_file=%s error=\"%s\"", srv->cfg.state_file,
			  err);
		evtimer_add(srv->ev_reserve, &tv);
		return rc;
	}
	srv->state_writes++;
	lockmgr_add_tokens(&srv->lm, limit, now_ns());
	return 0;
}

/* Write a new token high-water mark in the loop (activation, fallback). */
int
reserve_now(struct server *srv)
{
	uint64_t limit = srv->lm.last_token + STATE_TOKEN_BLOCK;
	char err[600];

	if (srv->reserve_want > limit)
		limit = srv->reserve_want;
	int rc;

	rc = state_write(srv->cfg.state_file, limit, false, srv->storage.gid,
			 &srv->stats, &srv->state_fsyncs, err, sizeof err);
	return reserved(srv, rc, limit, err);
}

/* Join the background write; its result, with its fsyncs counted. */
static int
writer_collect(struct server *srv)
{
	int rc = state_writer_finish(&srv->writer);

	srv->state_fsyncs += srv->writer.fsyncs;
	return rc;
}

static void written_cb(evutil_socket_t fd, short what, void *arg);

/*
 * Reserve the next block while the current one still has tokens to give:
 * a helper thread does the disk work, grants go on meanwhile. The mark is
 * raised one whole block above the current limit, so the file is written
 * once per block however early this starts.
 */
static void
reserve_ahead(struct server *srv)
{
	uint64_t from = srv->lm.token_limit > srv->lm.last_token
			    ? srv->lm.token_limit
			    : srv->lm.last_token;
	uint64_t mark = from + STATE_TOKEN_BLOCK;
	int rc;

	if (srv->writer.busy || evtimer_pending(srv->ev_reserve, NULL))
		return;
	if (srv->reserve_want > mark)
		mark = srv->reserve_want;
	rc = state_writer_start(&srv->writer, srv->cfg.state_file, mark,
				srv->storage.gid, &srv->stats);
	if (rc < 0) {
		log_warn("cannot write the state file in the background; "
			 "writing it in the loop",
			 "error=\"%s\"", srv->writer.err);
		reserve_now(srv);
		return;
	}
	if (srv->ev_written == NULL) {
		srv->ev_written =
		    event_new(srv->base, srv->writer.wake_fd,
			      EV_READ | EV_PERSIST, written_cb, srv);
		if (srv->ev_written == NULL) {
			fprintf(stderr, "arbiter: out of memory\n");
			abort();
		}
		event_add(srv->ev_written, NULL);
	}
}

void
reserve_refill(struct server *srv, bool need_tokens)
{
	if (need_tokens ||
	    srv->lm.token_limit - srv->lm.last_token < STATE_TOKEN_BLOCK / 2)
		reserve_ahead(srv);
}

void
reserve_drain(struct server *srv)
{
	if (srv->writer.busy && writer_collect(srv) == 0)
		srv->state_writes++;
}

static void
written_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	int rc;

	(void)fd;
	(void)what;
	if (!srv->writer.busy)
		return; /* drained by a change of role */
	rc = writer_collect(srv);
	/* The grants it allows are carried out by the loop's pump. */
	if (reserved(srv, rc, srv->writer.token_hw, srv->writer.err) == 0 &&
	    srv->reserve_want > srv->lm.token_limit)
		reserve_ahead(srv); /* raised while it was written */
}

void
reserve_at_least(struct server *srv, uint64_t hw)
{
	if (hw <= srv->lm.token_limit || hw <= srv->reserve_want)
		return;
	srv->reserve_want = hw;
	if (srv->role == ROLE_ACTIVE)
		reserve_ahead(srv);
}

/* Retry after a failed write. */
static void
reserve_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;

	(void)fd;
	(void)what;
	if (srv->role == ROLE_ACTIVE)
		reserve_ahead(srv);
}

void
reserve_init(struct server *srv)
{
	srv->ev_reserve = evtimer_new(srv->base, reserve_cb, srv);
}
