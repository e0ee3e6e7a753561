/*
 * lockmgr: the lease state machine (see lockmgr.h for the contract).
 *
 * Grant rule, in one place (grant_pass): a resource's queue is strict FIFO.
 * The head is granted when the gate is open, no lock-delay runs, a fencing
 * token is available, and it is compatible with the current holders (none, or
 * all shared and the head shared). A granted shared head lets the shared
 * requests right behind it through in the same pass; the first exclusive
 * request stops the pass, so nothing ever jumps a queued exclusive request.
 * Ahead of the queue sits the conversion slot (conv_pass): a holder's
 * waiting upgrade is granted first, once the other holders have left, and
 * while it waits nothing behind it is granted, so neither a queued writer nor
 * a stream of new readers can starve it.
 *
 * Deadlines (waiting timeouts, lease expiry, upgrade timeouts, lock-delay
 * ends) live in one
 * binary min-heap of struct lm_timer; lockmgr_tick() fires what is due.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "lockmgr.h"
#include "xalloc.h"

#define container_of(ptr, type, member)                                        \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ------------------------------------------------------------ the heap */

static void
heap_swap(struct lockmgr *lm, size_t a, size_t b)
{
	struct lm_timer *t = lm->heap[a];

	lm->heap[a] = lm->heap[b];
	lm->heap[b] = t;
	lm->heap[a]->idx = (int)a;
	lm->heap[b]->idx = (int)b;
}

static void
heap_up(struct lockmgr *lm, size_t i)
{
	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (lm->heap[parent]->when <= lm->heap[i]->when)
			break;
		heap_swap(lm, i, parent);
		i = parent;
	}
}

static void
heap_down(struct lockmgr *lm, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < lm->nheap && lm->heap[l]->when < lm->heap[m]->when)
			m = l;
		if (r < lm->nheap && lm->heap[r]->when < lm->heap[m]->when)
			m = r;
		if (m == i)
			break;
		heap_swap(lm, i, m);
		i = m;
	}
}

static void
timer_disarm(struct lockmgr *lm, struct lm_timer *t)
{
	size_t i, last;

	if (t->idx < 0)
		return;
	i = (size_t)t->idx;
	last = lm->nheap - 1;
	if (i != last) {
		heap_swap(lm, i, last);
		lm->nheap--;
		heap_down(lm, i);
		heap_up(lm, i);
	} else
		lm->nheap--;
	t->idx = -1;
}

static void
timer_arm(struct lockmgr *lm, struct lm_timer *t, uint64_t when)
{
	timer_disarm(lm, t);
	if (lm->nheap == lm->heap_cap) {
		lm->heap_cap = lm->heap_cap ? lm->heap_cap * 2 : 64;
		lm->heap =
		    xreallocarray(lm->heap, lm->heap_cap, sizeof *lm->heap);
	}
	t->when = when;
	t->idx = (int)lm->nheap;
	lm->heap[lm->nheap++] = t;
	heap_up(lm, (size_t)t->idx);
}

/* Saturating addition for deadlines: now + LM_FOREVER stays forever. */
static uint64_t
deadline_after(uint64_t now, uint64_t ns)
{
	return ns > LM_FOREVER - now ? LM_FOREVER : now + ns;
}

/* ------------------------------------------------------------ events */

static struct lm_event *
ev_push(struct lockmgr *lm, enum lm_ev_kind kind)
{
	struct lm_event *ev;

	if (lm->nev == lm->ev_cap) {
		lm->ev_cap = lm->ev_cap ? lm->ev_cap * 2 : 32;
		lm->ev = xreallocarray(lm->ev, lm->ev_cap, sizeof *lm->ev);
	}
	ev = &lm->ev[lm->nev++];
	memset(ev, 0, sizeof *ev);
	ev->kind = kind;
	return ev;
}

static void
ev_from_req(struct lm_event *ev, const struct lm_req *r)
{
	ev->owner = r->owner;
	ev->res = r->res;
	ev->lease_id = r->id;
	ev->tag = r->tag;
	ev->mode = r->mode;
}

/* Emit BUSY/IDLE on the edges of "anything outstanding". */
static void
check_idle(struct lockmgr *lm)
{
	bool busy = lm->nheld + lm->nwaiting > 0;

	if (busy != lm->busy) {
		lm->busy = busy;
		ev_push(lm, busy ? LM_EV_BUSY : LM_EV_IDLE);
	}
}

/* ------------------------------------------------------------ resources */

static struct lm_res *
res_new(struct lockmgr *lm, const char *name, size_t len)
{
	struct lm_res *res = xcalloc(1, sizeof *res);

	res->name = xstrndup(name, len);
	res->len = len;
	TAILQ_INIT(&res->holders);
	TAILQ_INIT(&res->waiters);
	res->delay.idx = -1;
	res->delay.kind = LM_T_RES;
	HASH_ADD_KEYPTR(hh, lm->res, res->name, res->len, res);
	lm->nres++;
	return res;
}

static bool
res_empty(const struct lm_res *res)
{
	return res->nholders == 0 && res->nwaiters == 0 && res->delay.idx < 0 &&
	       res->ext == NULL;
}

/* A cluster resource's demand moved: the caller looks at it. */
static void
cdirty(struct lockmgr *lm, struct lm_res *res)
{
	if (res->cluster && !res->cdirty) {
		res->cdirty = true;
		TAILQ_INSERT_TAIL(&lm->cdirty, res, c_entry);
	}
}

/* An empty resource is freed at events_done, since events may name it. */
static void
res_maybe_dead(struct lockmgr *lm, struct lm_res *res)
{
	if (!res->dead && res_empty(res)) {
		res->dead = true;
		TAILQ_INSERT_TAIL(&lm->dead, res, d_entry);
	}
}

static void
res_free(struct lockmgr *lm, struct lm_res *res)
{
	if (res->cdirty)
		TAILQ_REMOVE(&lm->cdirty, res, c_entry);
	HASH_DELETE(hh, lm->res, res);
	lm->nres--;
	timer_disarm(lm, &res->delay);
	free(res->name);
	free(res);
}

struct lm_res *
lockmgr_find(const struct lockmgr *lm, const char *name, size_t len)
{
	struct lm_res *res = NULL;

	HASH_FIND(hh, lm->res, name, len, res);
	return res;
}

struct lm_req *
lockmgr_lease(const struct lockmgr *lm, uint64_t lease_id)
{
	struct lm_req *r = NULL;

	HASH_FIND(hh, lm->reqs, &lease_id, sizeof lease_id, r);
	return r;
}

uint32_t
lockmgr_position(const struct lm_req *r)
{
	const struct lm_req *w;
	uint32_t pos = 0;

	if (r->state != LM_WAITING)
		return 0;
	TAILQ_FOREACH(w, &r->res->waiters, q_entry) {
		pos++;
		if (w == r)
			return pos;
	}
	return 0;
}

/* ------------------------------------------------------------ granting */

static bool
compatible(const struct lm_res *res, enum lm_mode mode)
{
	return res->nholders == 0 ||
	       (mode == LM_SHARED && res->held_mode == LM_SHARED);
}

/* Something other than tokens keeps this resource from granting now. */
static bool
gate_shut(const struct lockmgr *lm, const struct lm_res *res)
{
	return !lm->open || res->delay.idx >= 0;
}

/* A cluster resource grants mode only as its key allows, before the
 * session's deadline, and while the key has grants left. */
static bool
cluster_shut(const struct lockmgr *lm, const struct lm_res *res,
	     enum lm_mode mode, uint64_t now)
{
	if (!res->cluster)
		return false;
	if (now >= lm->cluster_until || res->ctoken_n >= LM_CLUSTER_GRANTS)
		return true;
	return res->cgate == LM_GATE_CLOSED ||
	       (res->cgate == LM_GATE_SHARED && mode != LM_SHARED);
}

/* The next token: the daemon's counter, or the cluster key's. */
static uint64_t
next_token(struct lockmgr *lm, struct lm_res *res)
{
	if (res->cluster) {
		res->ctoken_n++;
		if (res->ctoken_n >= LM_CLUSTER_GRANTS)
			cdirty(lm, res); /* used up: the key must go */
		return res->ctoken_base + res->ctoken_n;
	}
	return ++lm->last_token;
}

static void
queue_event(struct lockmgr *lm, struct lm_req *r, uint32_t pos)
{
	struct lm_event *ev = ev_push(lm, LM_EV_QUEUED);
	struct lm_req *h = TAILQ_FIRST(&r->res->holders);

	ev_from_req(ev, r);
	ev->position = pos;
	ev->holder = h ? h->owner : NULL;
	ev->nholders = r->res->nholders;
	r->last_pos = pos;
}

static void
unmove(struct lockmgr *lm, struct lm_req *r)
{
	if (r->moved) {
		TAILQ_REMOVE(&lm->moved, r, m_entry);
		r->moved = false;
	}
}

/*
 * Tell waiters who asked for it where they stand now. With a position
 * interval, a move is only marked here (a cheap walk) and told by
 * send_moved() once the interval is over: draining n watchers then costs
 * O(n) events instead of n^2/2. Reaching the head is told at once.
 */
static void
notify_positions(struct lockmgr *lm, struct lm_res *res, bool holders_changed,
		 uint64_t now)
{
	struct lm_req *w;
	uint32_t pos = 0;

	if (res->nwatchers == 0)
		return;
	TAILQ_FOREACH(w, &res->waiters, q_entry) {
		pos++;
		if (!w->position_updates ||
		    (w->last_pos == pos && !holders_changed))
			continue;
		if (lm->limits.position_interval_ns == 0 || pos == 1) {
			unmove(lm, w);
			queue_event(lm, w, pos);
		} else if (!w->moved) {
			w->moved = true;
			TAILQ_INSERT_TAIL(&lm->moved, w, m_entry);
			if (lm->moved_due == 0)
				lm->moved_due = deadline_after(
				    now, lm->limits.position_interval_ns);
		}
	}
}

/* The held-back position updates: one walk per resource concerned. */
static void
send_moved(struct lockmgr *lm)
{
	struct lm_req *first;

	while ((first = TAILQ_FIRST(&lm->moved)) != NULL) {
		struct lm_req *w;
		uint32_t pos = 0;

		TAILQ_FOREACH(w, &first->res->waiters, q_entry) {
			pos++;
			if (w->moved) {
				unmove(lm, w);
				queue_event(lm, w, pos);
			}
		}
		unmove(lm, first); /* not waiting: cannot happen, but bound */
	}
	lm->moved_due = 0;
}

static void
grant(struct lockmgr *lm, struct lm_res *res, struct lm_req *r, uint64_t now,
      bool immediate)
{
	struct lm_event *ev;

	/* An immediate grant was never queued: it is on no waiters list. */
	if (!immediate) {
		TAILQ_REMOVE(&res->waiters, r, q_entry);
		res->nwaiters--;
		lm->nwaiting--;
		if (r->position_updates)
			res->nwatchers--;
		unmove(lm, r);
	}
	timer_disarm(lm, &r->timer);
	r->state = LM_HELD;
	r->t_granted = now;
	r->token = next_token(lm, res);
	TAILQ_INSERT_TAIL(&res->holders, r, q_entry);
	res->nholders++;
	res->held_mode = r->mode;
	lm->nheld++;
	if (r->ttl_ns > 0)
		timer_arm(lm, &r->timer, deadline_after(now, r->ttl_ns));

	ev = ev_push(lm, LM_EV_GRANTED);
	ev_from_req(ev, r);
	ev->token = r->token;
	ev->ttl_ns = r->ttl_ns;
	ev->waited_ns = now - r->t_queued;
	ev->immediate = immediate;
}

/* A token can be handed out now: the cluster key's never run short here
 * (lockmgr_cluster_own), the daemon's counter stops at its limit. */
static bool
has_token(const struct lockmgr *lm, const struct lm_res *res)
{
	return res->cluster || lm->last_token < lm->token_limit;
}

/* No token left: record the stall (told once) and say so. */
static bool
out_of_tokens(struct lockmgr *lm, struct lm_res *res)
{
	if (has_token(lm, res))
		return false;
	if (!res->stalled) {
		res->stalled = true;
		TAILQ_INSERT_TAIL(&lm->stalled, res, st_entry);
		ev_push(lm, LM_EV_NEED_TOKENS);
	}
	return true;
}

/* ------------------------------------------------------------ conversion */

/* The outcome of a conversion that happened: r's lease is in its new mode. */
static void
conv_event(struct lockmgr *lm, const struct lm_req *r, enum lm_mode was,
	   uint64_t tag, uint64_t waited_ns, bool immediate)
{
	struct lm_event *ev = ev_push(lm, LM_EV_GRANTED);

	ev_from_req(ev, r);
	ev->tag = tag;
	ev->convert = true;
	ev->was = was;
	ev->token = r->token;
	ev->ttl_ns = r->ttl_ns;
	ev->waited_ns = waited_ns;
	ev->immediate = immediate;
}

/* Take a waiting upgrade out of its resource's conversion slot. */
static void
conv_unlink(struct lockmgr *lm, struct lm_req *r)
{
	timer_disarm(lm, &r->conv_timer);
	r->res->converting = NULL;
	r->converting = false;
	lm->nconverting--;
}

/* A waiting upgrade ends without happening; the lease stays shared. */
static void
conv_end(struct lockmgr *lm, struct lm_req *r, enum lm_end why, uint64_t now)
{
	struct lm_event *ev = ev_push(lm, LM_EV_ENDED);

	ev_from_req(ev, r);
	ev->tag = r->conv_tag;
	ev->mode = LM_EXCLUSIVE;
	ev->convert = true;
	ev->end = why;
	ev->waited_ns = now - r->t_conv;
	conv_unlink(lm, r);
}

/* Shared to exclusive in place, with a fresh token: a new grant of the
 * right to write, which storage must tell apart from every earlier one. */
static void
upgrade(struct lockmgr *lm, struct lm_req *r, uint64_t tag, uint64_t asked,
	uint64_t now, bool immediate)
{
	r->mode = LM_EXCLUSIVE;
	r->res->held_mode = LM_EXCLUSIVE;
	r->token = next_token(lm, r->res);
	conv_event(lm, r, LM_SHARED, tag, now - asked, immediate);
}

/*
 * The conversion slot goes ahead of the queue: grant the waiting upgrade
 * once its holder is the only one left. True while it still waits, which
 * holds back everything queued behind it.
 */
static bool
conv_pass(struct lockmgr *lm, struct lm_res *res, uint64_t now)
{
	struct lm_req *r = res->converting;
	uint64_t tag, asked;

	if (r == NULL)
		return false;
	if (gate_shut(lm, res) || res->nholders > 1 ||
	    cluster_shut(lm, res, LM_EXCLUSIVE, now) || out_of_tokens(lm, res))
		return true;
	tag = r->conv_tag;
	asked = r->t_conv;
	conv_unlink(lm, r);
	upgrade(lm, r, tag, asked, now, false);
	return false;
}

/* Grant the waiting upgrade, then the queue head, and the shared requests
 * right behind a shared head. */
static void
grant_pass(struct lockmgr *lm, struct lm_res *res, uint64_t now)
{
	struct lm_req *head;
	bool granted = false;

	if (!conv_pass(lm, res, now)) {
		while ((head = TAILQ_FIRST(&res->waiters)) != NULL) {
			if (gate_shut(lm, res) ||
			    !compatible(res, head->mode) ||
			    cluster_shut(lm, res, head->mode, now))
				break;
			if (out_of_tokens(lm, res))
				break;
			grant(lm, res, head, now, false);
			granted = true;
		}
	}
	notify_positions(lm, res, granted, now);
}

/* Unlink a request from everything, queue its ENDED event and free it. A
 * waiting upgrade ends first, for the same reason, so no event names it
 * after its lease is gone. */
static void
end_req(struct lockmgr *lm, struct lm_req *r, enum lm_end why, uint64_t now)
{
	struct lm_res *res = r->res;
	struct lm_event *ev;

	cdirty(lm, res);
	if (r->converting)
		conv_end(lm, r, why, now);
	ev = ev_push(lm, LM_EV_ENDED);
	ev_from_req(ev, r);
	ev->end = why;
	ev->held = r->state == LM_HELD;
	timer_disarm(lm, &r->timer);
	if (r->state == LM_HELD) {
		ev->token = r->token;
		ev->held_ns = now - r->t_granted;
		TAILQ_REMOVE(&res->holders, r, q_entry);
		res->nholders--;
		lm->nheld--;
		if (r->delay_ns > 0 &&
		    (why == LM_END_DISCONNECT || why == LM_END_EXPIRED ||
		     why == LM_END_ADMIN)) {
			uint64_t until = deadline_after(now, r->delay_ns);

			if (res->delay.idx < 0 || until > res->delay.when)
				timer_arm(lm, &res->delay, until);
		}
	} else {
		ev->waited_ns = now - r->t_queued;
		TAILQ_REMOVE(&res->waiters, r, q_entry);
		res->nwaiters--;
		lm->nwaiting--;
		if (r->position_updates)
			res->nwatchers--;
		unmove(lm, r);
	}
	TAILQ_REMOVE(&r->owner->reqs, r, o_entry);
	r->owner->nreqs--;
	HASH_DELETE(hh, lm->reqs, r);
	free(r);
}

/* End a request and let the queue behind it move. */
static void
finish(struct lockmgr *lm, struct lm_req *r, enum lm_end why, uint64_t now)
{
	struct lm_res *res = r->res;

	end_req(lm, r, why, now);
	grant_pass(lm, res, now);
	res_maybe_dead(lm, res);
}

/* ------------------------------------------------------------ public API */

void
lockmgr_init(struct lockmgr *lm)
{
	memset(lm, 0, sizeof *lm);
	lm->next_id = 1;
	lm->token_limit = UINT64_MAX;
	lm->open = true;
	TAILQ_INIT(&lm->cdirty);
	TAILQ_INIT(&lm->stalled);
	TAILQ_INIT(&lm->dead);
	TAILQ_INIT(&lm->moved);
}

void
lockmgr_free(struct lockmgr *lm)
{
	struct lm_req *r, *rtmp;
	struct lm_res *res, *stmp;

	/* uthash's documented delete-while-iterating idiom; the analyzer
	 * does not follow it. */
	HASH_ITER(hh, lm->reqs, r, rtmp) {
		// NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
		HASH_DELETE(hh, lm->reqs, r);
		free(r);
	}
	HASH_ITER(hh, lm->res, res, stmp) {
		// NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
		HASH_DELETE(hh, lm->res, res);
		free(res->name);
		free(res);
	}
	free(lm->heap);
	free(lm->ev);
	memset(lm, 0, sizeof *lm);
}

void
lockmgr_set_limits(struct lockmgr *lm, const struct lm_limits *limits)
{
	lm->limits = *limits;
}

void
lockmgr_owner_init(struct lm_owner *o, uint64_t id)
{
	memset(o, 0, sizeof *o);
	o->id = id;
	TAILQ_INIT(&o->reqs);
}

enum lm_result
lockmgr_acquire(struct lockmgr *lm, struct lm_owner *o,
		const struct lm_acquire *a, uint64_t now, uint64_t *lease_id)
{
	struct lm_res *res;
	struct lm_req *r;
	bool blocked, cluster_try;

	/* Already held or awaited by this owner? Walk the shorter list: the
	 * owner's requests, or the resource's holders and waiters (an owner
	 * may hold many thousands of leases, a resource queue as many). */
	res = lockmgr_find(lm, a->resource, a->len);
	if (res != NULL && o->nreqs <= res->nholders + res->nwaiters) {
		TAILQ_FOREACH(r, &o->reqs, o_entry) {
			if (r->res == res)
				return LM_ERR_ALREADY_HELD;
		}
	} else if (res != NULL) {
		TAILQ_FOREACH(r, &res->holders, q_entry) {
			if (r->owner == o)
				return LM_ERR_ALREADY_HELD;
		}
		TAILQ_FOREACH(r, &res->waiters, q_entry) {
			if (r->owner == o)
				return LM_ERR_ALREADY_HELD;
		}
	}
	if (lm->limits.max_leases_per_owner &&
	    o->nreqs >= lm->limits.max_leases_per_owner)
		return LM_ERR_MAX_LEASES;

	if (res == NULL && lm->open && now < lm->hold_until) {
		/* Held back (lockmgr_hold_all): the resource starts with
		 * the hold as its lock-delay. */
		if (lm->limits.max_resources &&
		    lm->nres >= lm->limits.max_resources)
			return LM_ERR_MAX_RESOURCES;
		res = res_new(lm, a->resource, a->len);
		res->cluster = a->cluster;
		timer_arm(lm, &res->delay, lm->hold_until);
	}
	blocked = res != NULL &&
		  (gate_shut(lm, res) || res->nwaiters > 0 ||
		   res->converting != NULL || !compatible(res, a->mode));
	if (res == NULL && !lm->open)
		blocked = true;
	/* A cluster resource free here may still be held by another host:
	 * a try-once waits for the cluster's answer (LM_END_BUSY if not). */
	cluster_try = !blocked && a->cluster &&
		      (res == NULL || cluster_shut(lm, res, a->mode, now));
	if (blocked && a->timeout_ns == 0)
		return LM_ERR_WOULD_BLOCK;
	blocked |= cluster_try;
	if (blocked && res != NULL && lm->limits.max_waiters_per_resource &&
	    res->nwaiters >= lm->limits.max_waiters_per_resource)
		return LM_ERR_MAX_WAITERS;
	if (res == NULL) {
		if (lm->limits.max_resources &&
		    lm->nres >= lm->limits.max_resources)
			return LM_ERR_MAX_RESOURCES;
		res = res_new(lm, a->resource, a->len);
		res->cluster = a->cluster;
	}
	if (res->dead) {
		res->dead = false;
		TAILQ_REMOVE(&lm->dead, res, d_entry);
	}

	r = xcalloc(1, sizeof *r);
	r->id = lm->next_id++;
	r->tag = a->tag;
	r->owner = o;
	r->res = res;
	r->mode = a->mode;
	r->state = LM_WAITING;
	r->t_queued = now;
	r->ttl_ns = a->ttl_ns;
	r->delay_ns = a->delay_ns;
	r->position_updates = a->position_updates;
	r->timer.idx = -1;
	r->timer.kind = LM_T_REQ;
	r->conv_timer.idx = -1;
	r->conv_timer.kind = LM_T_CONV;
	HASH_ADD(hh, lm->reqs, id, sizeof r->id, r);
	TAILQ_INSERT_TAIL(&o->reqs, r, o_entry);
	o->nreqs++;
	*lease_id = r->id;

	if (!blocked && has_token(lm, res)) {
		grant(lm, res, r, now, true);
		check_idle(lm);
		return LM_OK_GRANTED;
	}

	/* Wait: behind others, or (not blocked) for tokens to be reserved. */
	TAILQ_INSERT_TAIL(&res->waiters, r, q_entry);
	res->nwaiters++;
	lm->nwaiting++;
	if (r->position_updates)
		res->nwatchers++;
	r->try_once = cluster_try && a->timeout_ns == 0;
	if (a->timeout_ns != LM_FOREVER && !r->try_once)
		timer_arm(lm, &r->timer, deadline_after(now, a->timeout_ns));
	cdirty(lm, res);
	if ((!a->quiet || r->position_updates) && !r->try_once)
		queue_event(lm, r, res->nwaiters);
	if (!blocked)
		grant_pass(lm, res, now); /* records the stall */
	check_idle(lm);
	return LM_OK_QUEUED;
}

int
lockmgr_release(struct lockmgr *lm, struct lm_owner *o, uint64_t key,
		bool by_tag, uint64_t now)
{
	struct lm_req *r;

	TAILQ_FOREACH(r, &o->reqs, o_entry) {
		if ((by_tag ? r->tag : r->id) == key)
			break;
	}
	if (r == NULL)
		return -ENOENT;
	finish(lm, r, r->state == LM_HELD ? LM_END_RELEASE : LM_END_CANCEL,
	       now);
	check_idle(lm);
	return 0;
}

enum lm_conv_result
lockmgr_convert(struct lockmgr *lm, struct lm_owner *o,
		const struct lm_convert *c, uint64_t now)
{
	struct lm_req *r = lockmgr_lease(lm, c->lease_id);
	struct lm_res *res;
	bool blocked;

	if (r == NULL || r->owner != o)
		return LM_CONV_ERR_UNKNOWN;
	if (r->state != LM_HELD)
		return LM_CONV_ERR_NOT_HELD;
	res = r->res;
	if (c->mode == r->mode) {
		/* Nothing to change, but a waiting upgrade is given up. */
		if (r->converting)
			conv_end(lm, r, LM_END_CANCEL, now);
		conv_event(lm, r, r->mode, c->tag, 0, true);
		grant_pass(lm, res, now);
		return LM_CONV_DONE;
	}
	if (r->converting)
		return LM_CONV_ERR_PENDING;
	if (c->mode == LM_SHARED) {
		/* Exclusive, so the only holder: nothing to wait for. The
		 * shared requests at the head follow in the same call. */
		r->mode = LM_SHARED;
		res->held_mode = LM_SHARED;
		conv_event(lm, r, LM_EXCLUSIVE, c->tag, 0, true);
		grant_pass(lm, res, now);
		return LM_CONV_DONE;
	}

	/* Two waiting upgrades would each wait for the other to leave. */
	if (res->converting != NULL)
		return LM_CONV_ERR_DEADLOCK;
	/* Under a shared cluster key only other hosts' readers leaving
	 * could let it through, and they may wait behind this one. */
	if (res->cluster && res->cgate != LM_GATE_ALL)
		return LM_CONV_ERR_CLUSTER;
	blocked = gate_shut(lm, res) || res->nholders > 1 ||
		  cluster_shut(lm, res, LM_EXCLUSIVE, now);
	if (blocked && c->timeout_ns == 0)
		return LM_CONV_ERR_WOULD_BLOCK;
	if (!blocked && has_token(lm, res)) {
		upgrade(lm, r, c->tag, now, now, true);
		return LM_CONV_DONE;
	}

	/* Wait, still holding it shared: for the others, or for tokens. */
	r->converting = true;
	r->conv_tag = c->tag;
	r->t_conv = now;
	res->converting = r;
	lm->nconverting++;
	if (c->timeout_ns != LM_FOREVER)
		timer_arm(lm, &r->conv_timer,
			  deadline_after(now, c->timeout_ns));
	cdirty(lm, res);
	if (!blocked)
		grant_pass(lm, res, now); /* records the stall */
	return LM_CONV_WAITING;
}

int
lockmgr_renew(struct lockmgr *lm, struct lm_owner *o, uint64_t lease_id,
	      uint64_t ttl_ns, uint64_t now)
{
	struct lm_req *r = lockmgr_lease(lm, lease_id);

	if (r == NULL || r->owner != o)
		return -ENOENT;
	if (r->state != LM_HELD || (r->ttl_ns == 0 && ttl_ns == 0))
		return -EINVAL;
	if (ttl_ns > 0)
		r->ttl_ns = ttl_ns;
	timer_arm(lm, &r->timer, deadline_after(now, r->ttl_ns));
	return 0;
}

void
lockmgr_drop_owner(struct lockmgr *lm, struct lm_owner *o, enum lm_end why,
		   uint64_t now)
{
	struct lm_req *r;

	while ((r = TAILQ_FIRST(&o->reqs)) != NULL)
		finish(lm, r, why, now);
	check_idle(lm);
}

int
lockmgr_revoke_lease(struct lockmgr *lm, uint64_t lease_id, uint64_t now)
{
	struct lm_req *r = lockmgr_lease(lm, lease_id);

	if (r == NULL || r->state != LM_HELD)
		return -ENOENT;
	finish(lm, r, LM_END_ADMIN, now);
	check_idle(lm);
	return 0;
}

int
lockmgr_revoke_pid(struct lockmgr *lm, uint32_t pid, uint64_t now)
{
	struct lm_req *r, *tmp;
	struct lm_res **res = NULL;
	size_t n = 0, i;
	int revoked = 0;

	/*
	 * End every request of the pid before any queue moves: moving a queue
	 * first could grant a pending request of the same pid, handing the
	 * process a lease (and a token) it is about to lose. Its pending
	 * requests are withdrawn, never granted; then the queues move.
	 */
	HASH_ITER(hh, lm->reqs, r, tmp) {
		if (r->owner->pid == pid ||
		    (pid != 0 && r->owner->handed_to_pid == pid)) {
			res = xreallocarray(res, n + 1, sizeof *res);
			res[n++] = r->res;
			if (r->state == LM_HELD)
				revoked++;
			end_req(lm, r, LM_END_ADMIN, now);
		}
	}
	for (i = 0; i < n; i++) {
		grant_pass(lm, res[i], now);
		res_maybe_dead(lm, res[i]);
	}
	free(res);
	check_idle(lm);
	return revoked;
}

int
lockmgr_revoke_all(struct lockmgr *lm, enum lm_end why, uint64_t now)
{
	struct lm_req *r, *tmp;
	uint64_t *ids = NULL;
	size_t n = 0;

	HASH_ITER(hh, lm->reqs, r, tmp) {
		if (r->state == LM_HELD) {
			ids = xreallocarray(ids, n + 1, sizeof *ids);
			ids[n++] = r->id;
		}
	}
	for (size_t i = 0; i < n; i++) {
		r = lockmgr_lease(lm, ids[i]);
		if (r != NULL)
			finish(lm, r, why, now);
	}
	free(ids);
	check_idle(lm);
	return (int)n;
}

void
lockmgr_tick(struct lockmgr *lm, uint64_t now)
{
	while (lm->nheap > 0 && lm->heap[0]->when <= now) {
		struct lm_timer *t = lm->heap[0];

		timer_disarm(lm, t);
		if (t->kind == LM_T_CONV) {
			struct lm_req *r =
			    container_of(t, struct lm_req, conv_timer);
			struct lm_res *res = r->res;

			/* The shared lease stays; the queue it held back may
			 * move. */
			conv_end(lm, r, LM_END_TIMEOUT, now);
			grant_pass(lm, res, now);
		} else if (t->kind == LM_T_REQ) {
			struct lm_req *r =
			    container_of(t, struct lm_req, timer);

			finish(lm, r,
			       r->state == LM_HELD ? LM_END_EXPIRED
						   : LM_END_TIMEOUT,
			       now);
		} else {
			struct lm_res *res =
			    container_of(t, struct lm_res, delay);

			grant_pass(lm, res, now);
			res_maybe_dead(lm, res);
		}
	}
	if (lm->moved_due != 0 && lm->moved_due <= now)
		send_moved(lm);
	check_idle(lm);
}

uint64_t
lockmgr_next_deadline(const struct lockmgr *lm)
{
	uint64_t t = lm->nheap > 0 ? lm->heap[0]->when : LM_FOREVER;

	return lm->moved_due != 0 && lm->moved_due < t ? lm->moved_due : t;
}

void
lockmgr_set_open(struct lockmgr *lm, bool open, uint64_t now)
{
	struct lm_res *res, *tmp;

	if (lm->open == open)
		return;
	lm->open = open;
	if (!open)
		return;
	HASH_ITER(hh, lm->res, res, tmp) {
		if (res->nwaiters > 0 || res->converting != NULL)
			grant_pass(lm, res, now);
	}
	check_idle(lm);
}

void
lockmgr_hold_all(struct lockmgr *lm, uint64_t until, uint64_t now)
{
	struct lm_res *res, *tmp;

	lm->hold_until = until;
	if (until <= now)
		return;
	HASH_ITER(hh, lm->res, res, tmp) {
		if (res->delay.idx < 0 || res->delay.when < until)
			timer_arm(lm, &res->delay, until);
	}
}

void
lockmgr_set_tokens(struct lockmgr *lm, uint64_t last, uint64_t limit)
{
	lm->last_token = last;
	lm->token_limit = limit;
}

void
lockmgr_add_tokens(struct lockmgr *lm, uint64_t limit, uint64_t now)
{
	struct lm_res *res;

	if (limit > lm->token_limit)
		lm->token_limit = limit;
	while ((res = TAILQ_FIRST(&lm->stalled)) != NULL &&
	       lm->last_token < lm->token_limit) {
		TAILQ_REMOVE(&lm->stalled, res, st_entry);
		res->stalled = false;
		grant_pass(lm, res, now);
	}
	check_idle(lm);
}

/* ------------------------------------------------------------ cluster */

void
lockmgr_cluster_until(struct lockmgr *lm, uint64_t until)
{
	lm->cluster_until = until;
}

struct lm_res *
lockmgr_cluster_next_dirty(struct lockmgr *lm)
{
	struct lm_res *res = TAILQ_FIRST(&lm->cdirty);

	if (res != NULL) {
		TAILQ_REMOVE(&lm->cdirty, res, c_entry);
		res->cdirty = false;
	}
	return res;
}

void
lockmgr_cluster_own(struct lockmgr *lm, struct lm_res *res, enum lm_gate gate,
		    uint64_t token_base, uint64_t now)
{
	if (!res->cluster)
		return;
	res->cgate = gate;
	if (token_base != res->ctoken_base) {
		res->ctoken_base = token_base;
		res->ctoken_n = 0;
	}
	grant_pass(lm, res, now);
	check_idle(lm);
}

void
lockmgr_cluster_shut(struct lockmgr *lm, struct lm_res *res)
{
	(void)lm;
	res->cgate = LM_GATE_CLOSED;
}

/* The ids of res's holders or (tries_only: try-once) waiters: ending them
 * one by one by id, as lockmgr_revoke_all does, never walks a list an
 * ending changes. */
static uint64_t *
cluster_ids(const struct lm_res *res, bool holders, bool tries_only, size_t *n)
{
	const struct lm_req *r;
	uint64_t *ids = NULL;

	*n = 0;
	TAILQ_FOREACH(r, holders ? &res->holders : &res->waiters, q_entry) {
		if (tries_only && !r->try_once)
			continue;
		ids = xreallocarray(ids, *n + 1, sizeof *ids);
		ids[(*n)++] = r->id;
	}
	return ids;
}

int
lockmgr_cluster_revoke(struct lockmgr *lm, struct lm_res *res, enum lm_end why,
		       uint64_t now)
{
	size_t n;
	uint64_t *ids = cluster_ids(res, true, false, &n);

	res->cgate = LM_GATE_CLOSED;
	for (size_t i = 0; i < n; i++) {
		struct lm_req *r = lockmgr_lease(lm, ids[i]);

		if (r != NULL)
			end_req(lm, r, why, now);
	}
	free(ids);
	notify_positions(lm, res, n > 0, now);
	res_maybe_dead(lm, res);
	check_idle(lm);
	return (int)n;
}

int
lockmgr_cluster_end_waiters(struct lockmgr *lm, struct lm_res *res,
			    enum lm_end why, bool tries_only, uint64_t now)
{
	size_t n;
	uint64_t *ids = cluster_ids(res, false, tries_only, &n);

	for (size_t i = 0; i < n; i++) {
		struct lm_req *r = lockmgr_lease(lm, ids[i]);

		if (r != NULL)
			end_req(lm, r, why, now);
	}
	free(ids);
	if (n > 0) {
		grant_pass(lm, res, now);
		res_maybe_dead(lm, res);
		check_idle(lm);
	}
	return (int)n;
}

void
lockmgr_cluster_pin(struct lockmgr *lm, struct lm_res *res, void *ext)
{
	res->ext = ext;
	if (ext == NULL)
		res_maybe_dead(lm, res);
}

void
lockmgr_cluster_moved(struct lockmgr *lm, struct lm_res *res, uint64_t now)
{
	notify_positions(lm, res, true, now);
}

bool
lockmgr_cluster_wants_exclusive(const struct lm_res *res)
{
	const struct lm_req *r;

	if (res->converting != NULL)
		return true;
	TAILQ_FOREACH(r, &res->waiters, q_entry) {
		if (r->mode == LM_EXCLUSIVE)
			return true;
	}
	return false;
}

void
lockmgr_events_done(struct lockmgr *lm)
{
	struct lm_res *res;

	lm->nev = 0;
	while ((res = TAILQ_FIRST(&lm->dead)) != NULL) {
		TAILQ_REMOVE(&lm->dead, res, d_entry);
		res->dead = false;
		if (!res_empty(res))
			continue;
		if (res->stalled) {
			TAILQ_REMOVE(&lm->stalled, res, st_entry);
			res->stalled = false;
		}
		res_free(lm, res);
	}
}

const char *
lockmgr_end_name(enum lm_end why)
{
	static const char *const names[] = {
	    [LM_END_RELEASE] = "release",
	    [LM_END_DISCONNECT] = "disconnect",
	    [LM_END_EXPIRED] = "expired",
	    [LM_END_ADMIN] = "admin",
	    [LM_END_SHUTDOWN] = "shutdown",
	    [LM_END_CANCEL] = "cancel",
	    [LM_END_TIMEOUT] = "timeout",
	    [LM_END_STORAGE_LOST] = "storage_lost",
	    [LM_END_CLUSTER_LOST] = "cluster_lost",
	    [LM_END_BUSY] = "busy",
	    [LM_END_UNAVAILABLE] = "unavailable",
	};

	return (size_t)why < sizeof names / sizeof names[0] ? names[why] : "?";
}

const char *
lockmgr_mode_name(enum lm_mode mode)
{
	return mode == LM_SHARED ? "shared" : "exclusive";
}
