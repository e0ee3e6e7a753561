/*
 * Unit tests for the lease state machine (arbiter/lockmgr.c).
 *
 * Each test drives one lockmgr with caller-owned owners and explicit clock
 * readings (plain nanosecond numbers, never the real clock), then reads the
 * event list it produced. The tests are named as behaviours. The last test is
 * a randomized model test: a seeded generator drives random operations and a
 * small reference model, written from the contract in lockmgr.h and
 * DESIGN.md section 3 rather than from the code, checks every event and the
 * whole state after every step.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lockmgr.h"

#define NOWNERS 6

static struct lockmgr lm;
static struct lm_owner ow[NOWNERS];

static void
setup(void)
{
	lockmgr_init(&lm);
	for (int i = 0; i < NOWNERS; i++) {
		lockmgr_owner_init(&ow[i], (uint64_t)i + 1);
		ow[i].pid = 100 + (uint32_t)i;
	}
}

static void
teardown(void)
{
	lockmgr_free(&lm);
}

TestSuite(lockmgr, .init = setup, .fini = teardown);

/* ------------------------------------------------------------ helpers */

static struct lm_acquire
req(const char *name, enum lm_mode mode)
{
	struct lm_acquire a;

	memset(&a, 0, sizeof a);
	a.resource = name;
	a.len = strlen(name);
	a.mode = mode;
	a.timeout_ns = LM_FOREVER;
	return a;
}

static enum lm_result
acq(struct lm_owner *o, const char *name, enum lm_mode mode,
    uint64_t timeout_ns, uint64_t now, uint64_t *id)
{
	struct lm_acquire a = req(name, mode);

	a.timeout_ns = timeout_ns;
	return lockmgr_acquire(&lm, o, &a, now, id);
}

static uint64_t
must_grant(struct lm_owner *o, const char *name, enum lm_mode mode,
	   uint64_t now)
{
	uint64_t id = 0;
	enum lm_result r = acq(o, name, mode, LM_FOREVER, now, &id);

	cr_assert_eq(r, LM_OK_GRANTED, "%s on %s: result %d, want GRANTED",
		     lockmgr_mode_name(mode), name, r);
	return id;
}

static uint64_t
must_queue(struct lm_owner *o, const char *name, enum lm_mode mode,
	   uint64_t timeout_ns, uint64_t now)
{
	uint64_t id = 0;
	enum lm_result r = acq(o, name, mode, timeout_ns, now, &id);

	cr_assert_eq(r, LM_OK_QUEUED, "%s on %s: result %d, want QUEUED",
		     lockmgr_mode_name(mode), name, r);
	return id;
}

static size_t
nev(void)
{
	size_t n;

	lockmgr_events(&lm, &n);
	return n;
}

static size_t
count_kind(enum lm_ev_kind kind)
{
	size_t n, c = 0;
	const struct lm_event *ev = lockmgr_events(&lm, &n);

	for (size_t i = 0; i < n; i++)
		c += ev[i].kind == kind;
	return c;
}

/* The first event of this kind about this lease, or NULL. */
static const struct lm_event *
find_ev(enum lm_ev_kind kind, uint64_t lease_id)
{
	size_t n;
	const struct lm_event *ev = lockmgr_events(&lm, &n);

	for (size_t i = 0; i < n; i++) {
		if (ev[i].kind == kind && ev[i].lease_id == lease_id)
			return &ev[i];
	}
	return NULL;
}

static const struct lm_event *
must_find(enum lm_ev_kind kind, uint64_t lease_id)
{
	const struct lm_event *e = find_ev(kind, lease_id);

	cr_assert_not_null(e, "no event of kind %d for lease %" PRIu64, kind,
			   lease_id);
	return e;
}

/* Index of the event, to compare orders. */
static size_t
ev_index(const struct lm_event *e)
{
	size_t n;
	const struct lm_event *ev = lockmgr_events(&lm, &n);

	return (size_t)(e - ev);
}

static void
done(void)
{
	lockmgr_events_done(&lm);
}

static bool
is_held(uint64_t id)
{
	const struct lm_req *r = lockmgr_lease(&lm, id);

	return r != NULL && r->state == LM_HELD;
}

static bool
is_waiting(uint64_t id)
{
	const struct lm_req *r = lockmgr_lease(&lm, id);

	return r != NULL && r->state == LM_WAITING;
}

static struct lm_res *
find_res(const char *name)
{
	return lockmgr_find(&lm, name, strlen(name));
}

/* ------------------------------------------------------------ granting */

Test(lockmgr, exclusive_granted_at_once_on_free_resource)
{
	uint64_t id = 0;
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	const struct lm_event *e;

	a.tag = 77;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 1000, &id),
		     LM_OK_GRANTED);
	cr_assert_neq(id, 0);
	e = must_find(LM_EV_GRANTED, id);
	cr_assert_eq(e->owner, &ow[0]);
	cr_assert_eq(e->tag, 77);
	cr_assert_eq(e->mode, LM_EXCLUSIVE);
	cr_assert(e->immediate);
	cr_assert_eq(e->waited_ns, 0);
	cr_assert_gt(e->token, 0);
	cr_assert_eq(e->res->len, 2);
	cr_assert_eq(memcmp(e->res->name, "db", 2), 0);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 0);
	cr_assert(is_held(id));
	cr_assert_eq(lm.nheld, 1);
	cr_assert_eq(lm.nwaiting, 0);
	cr_assert_eq(find_res("db")->nholders, 1);
	cr_assert_eq(lockmgr_lease(&lm, id)->owner, &ow[0]);
}

Test(lockmgr, second_exclusive_queues_at_position_one_naming_the_holder)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t w;
	const struct lm_event *e;

	(void)h;
	done();
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 10);
	cr_assert_eq(nev(), 1);
	e = must_find(LM_EV_QUEUED, w);
	cr_assert_eq(e->position, 1);
	cr_assert_eq(e->holder, &ow[0]);
	cr_assert_eq(e->nholders, 1);
	cr_assert_eq(e->owner, &ow[1]);
	cr_assert_eq(e->mode, LM_EXCLUSIVE);
	cr_assert(is_waiting(w));
	cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, w)), 1);
	cr_assert_eq(lm.nwaiting, 1);
	cr_assert_eq(lm.nheld, 1);
}

/* A quiet waiter is told nothing until its answer (the client asked for
 * the answer only); position_updates overrides quiet. */
Test(lockmgr, quiet_waiter_gets_no_queued_event_only_its_grant)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t w = 0, v = 0;

	done();
	a.quiet = true;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 10, &w), LM_OK_QUEUED);
	cr_assert_eq(nev(), 0);
	cr_assert(is_waiting(w));
	a.position_updates = true;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &a, 10, &v), LM_OK_QUEUED);
	cr_assert_eq(must_find(LM_EV_QUEUED, v)->position, 2);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 20), 0);
	must_find(LM_EV_GRANTED, w);
	cr_assert_eq(must_find(LM_EV_QUEUED, v)->position, 1);
}

Test(lockmgr, queued_event_names_the_first_holder_and_counts_holders)
{
	uint64_t x;

	must_grant(&ow[0], "db", LM_SHARED, 0);
	must_grant(&ow[1], "db", LM_SHARED, 0);
	must_grant(&ow[2], "db", LM_SHARED, 0);
	x = must_queue(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(must_find(LM_EV_QUEUED, x)->holder, &ow[0]);
	cr_assert_eq(must_find(LM_EV_QUEUED, x)->nholders, 3);
}

Test(lockmgr, queued_positions_count_up_behind_the_holder)
{
	uint64_t w[4];

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	done();
	for (int i = 0; i < 4; i++) {
		w[i] = must_queue(&ow[i + 1], "db", LM_SHARED, LM_FOREVER, 1);
		cr_assert_eq(must_find(LM_EV_QUEUED, w[i])->position,
			     (uint32_t)i + 1);
		done();
	}
	for (int i = 0; i < 4; i++)
		cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, w[i])),
			     (uint32_t)i + 1);
	cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, 1)), 0,
		     "a held lease has no queue position");
}

Test(lockmgr, waiters_are_granted_in_fifo_order)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t w[4];

	for (int i = 0; i < 4; i++)
		w[i] = must_queue(&ow[i + 1], "db", LM_EXCLUSIVE, LM_FOREVER,
				  (uint64_t)i + 1);
	done();

	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 100), 0);
	for (int i = 0; i < 4; i++) {
		const struct lm_event *g = must_find(LM_EV_GRANTED, w[i]);

		cr_assert_eq(count_kind(LM_EV_GRANTED), 1,
			     "exactly one exclusive grant per release");
		cr_assert_not(g->immediate);
		cr_assert_eq(g->owner, &ow[i + 1]);
		cr_assert_eq(g->waited_ns,
			     100 + 100 * (uint64_t)i - ((uint64_t)i + 1));
		for (int j = i + 1; j < 4; j++)
			cr_assert(is_waiting(w[j]));
		done();
		cr_assert_eq(lockmgr_release(&lm, &ow[i + 1], w[i], false,
					     200 + 100 * (uint64_t)i),
			     0);
	}
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert_eq(count_kind(LM_EV_IDLE), 1);
}

Test(lockmgr, shared_requests_share_a_free_resource)
{
	uint64_t a = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t b = must_grant(&ow[1], "db", LM_SHARED, 0);
	uint64_t c = must_grant(&ow[2], "db", LM_SHARED, 0);

	cr_assert(is_held(a) && is_held(b) && is_held(c));
	cr_assert_eq(find_res("db")->nholders, 3);
	cr_assert_eq(lm.nheld, 3);
}

Test(lockmgr, exclusive_waits_for_every_shared_holder)
{
	uint64_t s1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t s2 = must_grant(&ow[1], "db", LM_SHARED, 0);
	uint64_t x = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 0);

	cr_assert_eq(must_find(LM_EV_QUEUED, x)->nholders, 2);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], s1, false, 5), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(is_waiting(x));
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], s2, false, 6), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, x));
	cr_assert(is_held(x));
}

Test(lockmgr,
     shared_head_granted_with_shared_run_behind_it_up_to_first_exclusive)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t s1 = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 1);
	uint64_t s2 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 2);
	uint64_t s3 = must_queue(&ow[3], "db", LM_SHARED, LM_FOREVER, 3);
	uint64_t x = must_queue(&ow[4], "db", LM_EXCLUSIVE, LM_FOREVER, 4);
	uint64_t s5 = must_queue(&ow[5], "db", LM_SHARED, LM_FOREVER, 5);
	const struct lm_event *g1, *g2, *g3;

	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 10), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 3);
	g1 = must_find(LM_EV_GRANTED, s1);
	g2 = must_find(LM_EV_GRANTED, s2);
	g3 = must_find(LM_EV_GRANTED, s3);
	cr_assert(ev_index(g1) < ev_index(g2) && ev_index(g2) < ev_index(g3),
		  "grants in queue order");
	cr_assert(g1->token < g2->token && g2->token < g3->token);
	cr_assert(is_waiting(x));
	cr_assert(is_waiting(s5), "the shared request behind the exclusive "
				  "one must not jump it");
	cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, x)), 1);
	cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, s5)), 2);
	cr_assert_eq(find_res("db")->nholders, 3);
	cr_assert_eq(find_res("db")->nwaiters, 2);
}

Test(lockmgr, shared_waits_behind_queued_exclusive)
{
	uint64_t s1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t x = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 1);
	uint64_t s2;

	done();
	/* Compatible with the holders, but a writer is queued: no jumping. */
	s2 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 2);
	cr_assert_eq(must_find(LM_EV_QUEUED, s2)->position, 2);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	done();

	cr_assert_eq(lockmgr_release(&lm, &ow[0], s1, false, 3), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, x));
	cr_assert_null(find_ev(LM_EV_GRANTED, s2));
	cr_assert(is_waiting(s2));
	done();

	cr_assert_eq(lockmgr_release(&lm, &ow[1], x, false, 4), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, s2));
}

Test(lockmgr, shared_trylock_behind_queued_exclusive_would_block)
{
	uint64_t id = 0;

	must_grant(&ow[0], "db", LM_SHARED, 0);
	must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(acq(&ow[2], "db", LM_SHARED, 0, 1, &id),
		     LM_ERR_WOULD_BLOCK);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(find_res("db")->nholders, 1);
	cr_assert_eq(find_res("db")->nwaiters, 1);
}

Test(lockmgr, trylock_on_busy_resource_would_block_and_changes_nothing)
{
	uint64_t id = 12345;
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);

	done();
	cr_assert_eq(acq(&ow[1], "db", LM_EXCLUSIVE, 0, 1, &id),
		     LM_ERR_WOULD_BLOCK);
	cr_assert_eq(acq(&ow[1], "db", LM_SHARED, 0, 1, &id),
		     LM_ERR_WOULD_BLOCK);
	cr_assert_eq(nev(), 0, "a refused try-lock queues no event");
	cr_assert_eq(lm.nwaiting, 0);
	cr_assert_eq(lm.nheld, 1);
	cr_assert_eq(ow[1].nreqs, 0);
	cr_assert(TAILQ_EMPTY(&ow[1].reqs));
	cr_assert_eq(find_res("db")->nwaiters, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);

	/* Nothing was left behind: the holder's release frees everything. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 2), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	done();
	cr_assert_null(find_res("db"));
	cr_assert_eq(lm.nres, 0);
}

Test(lockmgr, trylock_on_free_resource_is_granted)
{
	uint64_t id = 0;

	cr_assert_eq(acq(&ow[0], "db", LM_EXCLUSIVE, 0, 0, &id), LM_OK_GRANTED);
	cr_assert(must_find(LM_EV_GRANTED, id)->immediate);
	cr_assert_eq(acq(&ow[1], "other", LM_SHARED, 0, 0, &id), LM_OK_GRANTED);
	cr_assert_eq(acq(&ow[2], "other", LM_SHARED, 0, 0, &id), LM_OK_GRANTED,
		     "shared try-lock on a shared resource");
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, resources_are_told_apart_by_their_full_name)
{
	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	must_grant(&ow[1], "ab", LM_EXCLUSIVE, 0);
	must_grant(&ow[2], "b", LM_EXCLUSIVE, 0);
	cr_assert_eq(lm.nres, 3);
	cr_assert_eq(lm.nheld, 3);
}

/* ------------------------------------------------------------ deadlines */

Test(lockmgr, waiter_times_out_at_its_deadline)
{
	uint64_t w;
	const struct lm_event *e;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, 100, 50);
	done();
	cr_assert_eq(lockmgr_next_deadline(&lm), 150);

	lockmgr_tick(&lm, 149);
	cr_assert_eq(nev(), 0);
	cr_assert(is_waiting(w));

	lockmgr_tick(&lm, 150);
	e = must_find(LM_EV_ENDED, w);
	cr_assert_eq(e->end, LM_END_TIMEOUT);
	cr_assert_not(e->held);
	cr_assert_eq(e->owner, &ow[1]);
	cr_assert_eq(e->waited_ns, 100);
	cr_assert_null(lockmgr_lease(&lm, w));
	cr_assert_eq(lm.nwaiting, 0);
	cr_assert_eq(ow[1].nreqs, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, late_tick_still_times_out_a_waiter)
{
	uint64_t w;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, 100, 0);
	done();
	lockmgr_tick(&lm, 10000);
	cr_assert_eq(must_find(LM_EV_ENDED, w)->end, LM_END_TIMEOUT);
	cr_assert_eq(must_find(LM_EV_ENDED, w)->waited_ns, 10000);
}

Test(lockmgr, timed_out_exclusive_head_lets_shared_behind_it_through)
{
	uint64_t s0 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t x = must_queue(&ow[1], "db", LM_EXCLUSIVE, 50, 0);
	uint64_t s2 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 1);
	uint64_t s3 = must_queue(&ow[3], "db", LM_SHARED, LM_FOREVER, 2);
	uint64_t x4 = must_queue(&ow[4], "db", LM_EXCLUSIVE, LM_FOREVER, 3);

	done();
	lockmgr_tick(&lm, 50);
	cr_assert_eq(must_find(LM_EV_ENDED, x)->end, LM_END_TIMEOUT);
	cr_assert_lt(ev_index(must_find(LM_EV_ENDED, x)),
		     ev_index(must_find(LM_EV_GRANTED, s2)));
	cr_assert_not_null(find_ev(LM_EV_GRANTED, s3));
	cr_assert_null(find_ev(LM_EV_GRANTED, x4));
	cr_assert(is_held(s0) && is_held(s2) && is_held(s3));
	cr_assert(is_waiting(x4));
	cr_assert_eq(find_res("db")->nholders, 3);
}

Test(lockmgr, timed_out_middle_waiter_leaves_the_others_in_order)
{
	uint64_t w1, w2, w3;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w1 = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	w2 = must_queue(&ow[2], "db", LM_EXCLUSIVE, 10, 0);
	w3 = must_queue(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	lockmgr_tick(&lm, 10);
	cr_assert_eq(must_find(LM_EV_ENDED, w2)->end, LM_END_TIMEOUT);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, w1)), 1);
	cr_assert_eq(lockmgr_position(lockmgr_lease(&lm, w3)), 2);
}

Test(lockmgr, granted_waiter_does_not_time_out_later)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t w = must_queue(&ow[1], "db", LM_EXCLUSIVE, 100, 0);

	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 40), 0);
	cr_assert(is_held(w));
	done();
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER,
		     "the wait timeout is disarmed at the grant");
	lockmgr_tick(&lm, 1000);
	cr_assert_eq(nev(), 0);
	cr_assert(is_held(w));
}

Test(lockmgr, next_deadline_is_the_earliest_timer)
{
	struct lm_acquire a;
	uint64_t l1, l2, w;

	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	a = req("a", LM_EXCLUSIVE);
	a.ttl_ns = 300;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &l1), LM_OK_GRANTED);
	cr_assert_eq(lockmgr_next_deadline(&lm), 300);
	w = must_queue(&ow[1], "a", LM_EXCLUSIVE, 200, 50);
	cr_assert_eq(lockmgr_next_deadline(&lm), 250);
	a = req("b", LM_SHARED);
	a.ttl_ns = 1000;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &a, 0, &l2), LM_OK_GRANTED);
	cr_assert_eq(lockmgr_next_deadline(&lm), 250);

	/* Withdrawing the waiter disarms its timer. */
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w, false, 60), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 300);
	lockmgr_tick(&lm, 300);
	cr_assert_eq(must_find(LM_EV_ENDED, l1)->end, LM_END_EXPIRED);
	cr_assert_eq(lockmgr_next_deadline(&lm), 1000);
	cr_assert_eq(lockmgr_release(&lm, &ow[2], l2, false, 400), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, waiting_forever_arms_no_deadline)
{
	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	lockmgr_tick(&lm, UINT64_MAX - 1);
	cr_assert_eq(count_kind(LM_EV_ENDED), 0);
}

Test(lockmgr, huge_timeout_saturates_instead_of_wrapping)
{
	uint64_t w;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, UINT64_MAX - 5, 1000);
	done();
	lockmgr_tick(&lm, 2000);
	cr_assert_eq(nev(), 0, "a deadline past 2^64 must not wrap to now");
	cr_assert(is_waiting(w));
	cr_assert_geq(lockmgr_next_deadline(&lm), UINT64_MAX - 5);
}

Test(lockmgr, tick_fires_every_due_timer_in_one_call)
{
	uint64_t w[3];

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	for (int i = 0; i < 3; i++)
		w[i] = must_queue(&ow[i + 1], "db", LM_EXCLUSIVE,
				  30 - 10 * (uint64_t)i, 0);
	done();
	lockmgr_tick(&lm, 30);
	cr_assert_eq(count_kind(LM_EV_ENDED), 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(must_find(LM_EV_ENDED, w[i])->end, LM_END_TIMEOUT);
	/* In deadline order. */
	cr_assert_lt(ev_index(must_find(LM_EV_ENDED, w[2])),
		     ev_index(must_find(LM_EV_ENDED, w[1])));
	cr_assert_lt(ev_index(must_find(LM_EV_ENDED, w[1])),
		     ev_index(must_find(LM_EV_ENDED, w[0])));
}

/* ------------------------------------------------------------ ALREADY_HELD */

Test(lockmgr, second_request_for_held_resource_is_already_held)
{
	uint64_t id = 999;

	must_grant(&ow[0], "db", LM_SHARED, 0);
	done();
	cr_assert_eq(acq(&ow[0], "db", LM_SHARED, LM_FOREVER, 1, &id),
		     LM_ERR_ALREADY_HELD);
	cr_assert_eq(acq(&ow[0], "db", LM_EXCLUSIVE, 0, 1, &id),
		     LM_ERR_ALREADY_HELD, "no upgrade by asking again");
	cr_assert_eq(nev(), 0);
	cr_assert_eq(ow[0].nreqs, 1);
	cr_assert_eq(lm.nheld, 1);
}

Test(lockmgr, second_request_for_awaited_resource_is_already_held)
{
	uint64_t id;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(acq(&ow[1], "db", LM_SHARED, LM_FOREVER, 1, &id),
		     LM_ERR_ALREADY_HELD);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lm.nwaiting, 1);
	cr_assert_eq(find_res("db")->nwaiters, 1);
}

Test(lockmgr, one_owner_may_hold_several_resources)
{
	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	must_grant(&ow[0], "b", LM_SHARED, 0);
	must_grant(&ow[1], "b", LM_SHARED, 0);
	must_grant(&ow[2], "c", LM_EXCLUSIVE, 0);
	must_queue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(ow[0].nreqs, 3);
	cr_assert_eq(lm.nres, 3);
}

Test(lockmgr, request_again_after_release_is_allowed)
{
	uint64_t id = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);

	cr_assert_eq(lockmgr_release(&lm, &ow[0], id, false, 1), 0);
	must_grant(&ow[0], "db", LM_EXCLUSIVE, 2);
}

/* ------------------------------------------------------------ release */

Test(lockmgr, release_by_lease_id_ends_the_lease)
{
	uint64_t id;
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	const struct lm_event *e;
	uint64_t token;

	a.tag = 5;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 100, &id), LM_OK_GRANTED);
	token = must_find(LM_EV_GRANTED, id)->token;
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], id, false, 350), 0);
	e = must_find(LM_EV_ENDED, id);
	cr_assert_eq(e->end, LM_END_RELEASE);
	cr_assert(e->held);
	cr_assert_eq(e->held_ns, 250);
	cr_assert_eq(e->token, token);
	cr_assert_eq(e->tag, 5);
	cr_assert_eq(e->owner, &ow[0]);
	cr_assert_null(lockmgr_lease(&lm, id));
	cr_assert_eq(lm.nheld, 0);
	cr_assert_eq(ow[0].nreqs, 0);
}

Test(lockmgr, cancel_by_tag_withdraws_pending_request)
{
	uint64_t w, other;
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	const struct lm_event *e;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	a.tag = 42;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 10, &w), LM_OK_QUEUED);
	a = req("other", LM_EXCLUSIVE);
	a.tag = 43;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 10, &other),
		     LM_OK_GRANTED);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], 42, true, 30), 0);
	cr_assert_eq(nev(), 1);
	e = must_find(LM_EV_ENDED, w);
	cr_assert_eq(e->end, LM_END_CANCEL);
	cr_assert_not(e->held);
	cr_assert_eq(e->tag, 42);
	cr_assert_eq(e->waited_ns, 20);
	cr_assert_null(lockmgr_lease(&lm, w));
	cr_assert(is_held(other));
	cr_assert_eq(lm.nwaiting, 0);
	cr_assert_eq(find_res("db")->nwaiters, 0);
}

Test(lockmgr, release_by_tag_of_held_lease_is_a_release)
{
	uint64_t id;
	struct lm_acquire a = req("db", LM_SHARED);

	a.tag = 9;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &id), LM_OK_GRANTED);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], 9, true, 1), 0);
	cr_assert_eq(must_find(LM_EV_ENDED, id)->end, LM_END_RELEASE);
	cr_assert(must_find(LM_EV_ENDED, id)->held);
}

Test(lockmgr, cancel_by_lease_id_of_pending_request_is_a_cancel)
{
	uint64_t w;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w, false, 1), 0);
	cr_assert_eq(must_find(LM_EV_ENDED, w)->end, LM_END_CANCEL);
	cr_assert_not(must_find(LM_EV_ENDED, w)->held);
}

Test(lockmgr, release_of_unknown_id_is_enoent)
{
	uint64_t id = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);

	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], id + 1000, false, 1),
		     -ENOENT);
	cr_assert_eq(lockmgr_release(&lm, &ow[0], 31337, true, 1), -ENOENT);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], 1, false, 1), -ENOENT);
	cr_assert_eq(nev(), 0);
	cr_assert(is_held(id));
}

Test(lockmgr, release_of_another_owners_lease_is_enoent)
{
	uint64_t id;
	struct lm_acquire a = req("db", LM_EXCLUSIVE);

	a.tag = 3;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &id), LM_OK_GRANTED);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], id, false, 1), -ENOENT);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], 3, true, 1), -ENOENT);
	cr_assert_eq(nev(), 0);
	cr_assert(is_held(id));
	cr_assert_eq(lockmgr_lease(&lm, id)->owner, &ow[0]);
}

Test(lockmgr, double_release_is_enoent)
{
	uint64_t id = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);

	cr_assert_eq(lockmgr_release(&lm, &ow[0], id, false, 1), 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], id, false, 2), -ENOENT);
	cr_assert_eq(nev(), 0);
}

Test(lockmgr, durations_are_reported_in_events)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 1000);
	uint64_t w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 1200);

	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 1700), 0);
	cr_assert_eq(must_find(LM_EV_ENDED, h)->held_ns, 700);
	cr_assert_eq(must_find(LM_EV_GRANTED, w)->waited_ns, 500);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w, false, 1750), 0);
	cr_assert_eq(must_find(LM_EV_ENDED, w)->held_ns, 50);
}

/* ------------------------------------------------------------ drop_owner */

Test(lockmgr, drop_owner_ends_everything_and_grants_next_waiter_in_same_call)
{
	uint64_t ha = must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	uint64_t hb = must_grant(&ow[0], "b", LM_SHARED, 0);
	uint64_t wc;
	uint64_t w1 = must_queue(&ow[1], "a", LM_EXCLUSIVE, LM_FOREVER, 1);
	uint64_t w2 = must_queue(&ow[2], "b", LM_EXCLUSIVE, LM_FOREVER, 1);
	const struct lm_event *e;

	must_grant(&ow[3], "c", LM_EXCLUSIVE, 0);
	wc = must_queue(&ow[0], "c", LM_EXCLUSIVE, 100, 1);
	done();

	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 10);
	cr_assert_eq(count_kind(LM_EV_ENDED), 3);
	e = must_find(LM_EV_ENDED, ha);
	cr_assert(e->held);
	cr_assert_eq(e->end, LM_END_DISCONNECT);
	e = must_find(LM_EV_ENDED, hb);
	cr_assert(e->held);
	cr_assert_eq(e->end, LM_END_DISCONNECT);
	e = must_find(LM_EV_ENDED, wc);
	cr_assert_not(e->held);
	cr_assert_eq(e->end, LM_END_DISCONNECT);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w1));
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w2));
	cr_assert_lt(ev_index(must_find(LM_EV_ENDED, ha)),
		     ev_index(must_find(LM_EV_GRANTED, w1)));
	cr_assert_eq(count_kind(LM_EV_IDLE), 0);
	cr_assert_eq(ow[0].nreqs, 0);
	cr_assert(TAILQ_EMPTY(&ow[0].reqs));
	cr_assert_eq(lm.nheld, 3);
	cr_assert_eq(lm.nwaiting, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, drop_owner_with_nothing_is_quiet)
{
	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	done();
	lockmgr_drop_owner(&lm, &ow[1], LM_END_DISCONNECT, 5);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lm.nheld, 1);
}

Test(lockmgr, drop_owner_at_shutdown_names_shutdown)
{
	uint64_t h = must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);

	done();
	lockmgr_drop_owner(&lm, &ow[0], LM_END_SHUTDOWN, 5);
	cr_assert_eq(must_find(LM_EV_ENDED, h)->end, LM_END_SHUTDOWN);
	cr_assert_eq(count_kind(LM_EV_IDLE), 1);
}

/* ------------------------------------------------------------ tokens */

Test(lockmgr, fencing_tokens_strictly_increase_across_grants_and_resources)
{
	const char *names[] = {"a", "b", "c"};
	uint64_t last = 0;

	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < 3; i++) {
			uint64_t id =
			    must_grant(&ow[i], names[i],
				       round % 2 ? LM_SHARED : LM_EXCLUSIVE,
				       (uint64_t)round);
			uint64_t t = must_find(LM_EV_GRANTED, id)->token;

			cr_assert_gt(t, last,
				     "token %" PRIu64 " after %" PRIu64, t,
				     last);
			last = t;
			cr_assert_eq(lockmgr_lease(&lm, id)->token, t);
			cr_assert_eq(lockmgr_release(&lm, &ow[i], id, false,
						     (uint64_t)round),
				     0);
			cr_assert_eq(must_find(LM_EV_ENDED, id)->token, t);
			done();
		}
	}
}

Test(lockmgr, tokens_of_queued_grants_keep_increasing)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t t0 = must_find(LM_EV_GRANTED, h)->token;
	uint64_t w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	uint64_t o = must_grant(&ow[2], "other", LM_EXCLUSIVE, 0);
	uint64_t t1 = must_find(LM_EV_GRANTED, o)->token;

	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 1), 0);
	cr_assert_gt(must_find(LM_EV_GRANTED, w)->token, t1);
	cr_assert_gt(t1, t0);
}

Test(lockmgr, tokens_continue_after_the_restored_high_water_mark)
{
	uint64_t id;

	lockmgr_set_tokens(&lm, 5000, UINT64_MAX);
	id = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	cr_assert_eq(must_find(LM_EV_GRANTED, id)->token, 5001);
}

Test(lockmgr, token_limit_reached_stalls_grants_with_need_tokens)
{
	uint64_t a, b, c;

	lockmgr_set_tokens(&lm, 10, 11);
	a = must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	cr_assert_eq(must_find(LM_EV_GRANTED, a)->token, 11);
	done();

	b = must_queue(&ow[1], "b", LM_EXCLUSIVE, LM_FOREVER, 1);
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 1);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert_eq(must_find(LM_EV_QUEUED, b)->position, 1);
	cr_assert_null(must_find(LM_EV_QUEUED, b)->holder);
	done();
	c = must_queue(&ow[2], "b", LM_EXCLUSIVE, LM_FOREVER, 2);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert_eq(must_find(LM_EV_QUEUED, c)->position, 2);
	done();

	/* Releasing frees the resource but there is still no token. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], a, false, 3), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(is_waiting(b) && is_waiting(c));
	done();

	lockmgr_add_tokens(&lm, 20, 4);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 1);
	cr_assert_eq(must_find(LM_EV_GRANTED, b)->token, 12);
	cr_assert(is_waiting(c));
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], b, false, 5), 0);
	cr_assert_eq(must_find(LM_EV_GRANTED, c)->token, 13);
}

Test(lockmgr, add_tokens_resumes_stalled_resources_in_order)
{
	uint64_t s[3], x;
	uint64_t y;

	lockmgr_set_tokens(&lm, 0, 0);
	for (int i = 0; i < 3; i++)
		s[i] = must_queue(&ow[i], "a", LM_SHARED, LM_FOREVER, 0);
	x = must_queue(&ow[3], "a", LM_EXCLUSIVE, LM_FOREVER, 0);
	y = must_queue(&ow[4], "b", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 2,
		     "one NEED_TOKENS per stalled resource");
	done();

	lockmgr_add_tokens(&lm, 100, 10);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 4);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(must_find(LM_EV_GRANTED, s[i])->token,
			     (uint64_t)i + 1);
	cr_assert_eq(must_find(LM_EV_GRANTED, y)->token, 4);
	cr_assert(is_waiting(x));
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 0);
}

Test(lockmgr, need_tokens_sent_once_per_stall)
{
	uint64_t w2;

	lockmgr_set_tokens(&lm, 0, 0);
	must_queue(&ow[0], "a", LM_SHARED, LM_FOREVER, 0);
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 1);
	done();
	w2 = must_queue(&ow[1], "a", LM_SHARED, LM_FOREVER, 0);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w2, false, 1), 0);
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 0,
		     "the caller was told already");
}

Test(lockmgr, add_tokens_grants_only_what_the_limit_allows)
{
	uint64_t s[3];

	lockmgr_set_tokens(&lm, 0, 0);
	for (int i = 0; i < 3; i++)
		s[i] = must_queue(&ow[i], "a", LM_SHARED, LM_FOREVER, 0);
	done();
	lockmgr_add_tokens(&lm, 2, 1);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 2);
	cr_assert(is_held(s[0]) && is_held(s[1]));
	cr_assert(is_waiting(s[2]));
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 1,
		     "still short of a token: say so again");
	done();
	lockmgr_add_tokens(&lm, 3, 2);
	cr_assert_eq(must_find(LM_EV_GRANTED, s[2])->token, 3);
}

Test(lockmgr, add_tokens_never_lowers_the_limit)
{
	uint64_t id;

	lockmgr_set_tokens(&lm, 0, 10);
	lockmgr_add_tokens(&lm, 5, 0);
	for (int i = 0; i < 6; i++) {
		char name[16];

		snprintf(name, sizeof name, "r%d", i);
		id = must_grant(&ow[i], name, LM_EXCLUSIVE, 0);
		cr_assert_eq(must_find(LM_EV_GRANTED, id)->token,
			     (uint64_t)i + 1);
		done();
	}
}

/* ------------------------------------------------------------ ttl, renew */

Test(lockmgr, ttl_expiry_ends_lease_as_expired_and_grants_next)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h, w;
	const struct lm_event *e;

	a.ttl_ns = 1000;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 100, &h), LM_OK_GRANTED);
	cr_assert_eq(must_find(LM_EV_GRANTED, h)->ttl_ns, 1000);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 200);
	done();
	cr_assert_eq(lockmgr_next_deadline(&lm), 1100);
	lockmgr_tick(&lm, 1099);
	cr_assert_eq(nev(), 0);
	lockmgr_tick(&lm, 1100);
	e = must_find(LM_EV_ENDED, h);
	cr_assert_eq(e->end, LM_END_EXPIRED);
	cr_assert(e->held);
	cr_assert_eq(e->held_ns, 1000);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
	cr_assert_null(lockmgr_lease(&lm, h));
}

Test(lockmgr, renew_pushes_expiry_back)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h;

	a.ttl_ns = 1000;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &h), LM_OK_GRANTED);
	done();
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], h, 0, 500), 0);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 1500);
	lockmgr_tick(&lm, 1000);
	cr_assert_eq(nev(), 0);
	cr_assert(is_held(h));
	lockmgr_tick(&lm, 1500);
	cr_assert_eq(must_find(LM_EV_ENDED, h)->end, LM_END_EXPIRED);
}

Test(lockmgr, renew_with_new_ttl_replaces_it)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h;

	a.ttl_ns = 1000;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &h), LM_OK_GRANTED);
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], h, 50, 100), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 150);
	/* The new ttl sticks for later renewals without one. */
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], h, 0, 140), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 190);
}

Test(lockmgr, renew_without_ttl_is_einval)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);

	done();
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], h, 0, 10), -EINVAL);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, renew_of_pending_request_is_einval)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t w;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	a.ttl_ns = 100;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 0, &w), LM_OK_QUEUED);
	cr_assert_eq(lockmgr_renew(&lm, &ow[1], w, 0, 10), -EINVAL);
	cr_assert_eq(lockmgr_renew(&lm, &ow[1], w, 100, 10), -EINVAL);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, renew_of_another_owners_or_unknown_lease_is_enoent)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h;

	a.ttl_ns = 1000;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &h), LM_OK_GRANTED);
	cr_assert_eq(lockmgr_renew(&lm, &ow[1], h, 0, 500), -ENOENT);
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], h + 77, 0, 500), -ENOENT);
	cr_assert_eq(lockmgr_next_deadline(&lm), 1000,
		     "a refused renew moves nothing");
}

Test(lockmgr, renew_after_expiry_is_enoent)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h;

	a.ttl_ns = 10;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &h), LM_OK_GRANTED);
	lockmgr_tick(&lm, 10);
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], h, 0, 11), -ENOENT);
}

Test(lockmgr, ttl_starts_at_the_grant_not_at_the_request)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h, w;

	h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	a.ttl_ns = 100;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 0, &w), LM_OK_QUEUED);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 500), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 600);
}

/* ------------------------------------------------------------ lock-delay */

/* Grant a lease with a lock-delay to owner o at time now. */
static uint64_t
grant_delayed(struct lm_owner *o, const char *name, enum lm_mode mode,
	      uint64_t ttl, uint64_t delay, uint64_t now)
{
	struct lm_acquire a = req(name, mode);
	uint64_t id;

	a.ttl_ns = ttl;
	a.delay_ns = delay;
	cr_assert_eq(lockmgr_acquire(&lm, o, &a, now, &id), LM_OK_GRANTED);
	return id;
}

Test(lockmgr, lock_delay_after_disconnect_holds_next_grant_until_delay_end)
{
	uint64_t w;

	grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 0, 500, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 10);
	done();
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 100);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(is_waiting(w));
	cr_assert_eq(lockmgr_next_deadline(&lm), 600);
	done();
	lockmgr_tick(&lm, 599);
	cr_assert_eq(nev(), 0);
	lockmgr_tick(&lm, 600);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
	cr_assert_eq(must_find(LM_EV_GRANTED, w)->waited_ns, 590);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, lock_delay_after_expiry_holds_next_grant)
{
	uint64_t w;

	grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 100, 50, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	lockmgr_tick(&lm, 100);
	cr_assert_eq(count_kind(LM_EV_ENDED), 1);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 150);
	done();
	lockmgr_tick(&lm, 150);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, lock_delay_after_admin_revoke_holds_next_grant)
{
	uint64_t h, w;

	h = grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 0, 70, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(lockmgr_revoke_lease(&lm, h, 30), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	done();
	lockmgr_tick(&lm, 99);
	cr_assert_eq(nev(), 0);
	lockmgr_tick(&lm, 100);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, clean_release_is_never_delayed)
{
	uint64_t h, w;

	h = grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 1000, 500, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 10), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	done();
	/* Nor is an ended pending request with a delay. */
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w, false, 20), 0);
	done();
	cr_assert_null(find_res("db"));
}

Test(lockmgr, disconnect_of_a_waiter_sets_no_delay)
{
	struct lm_acquire a = req("db", LM_EXCLUSIVE);
	uint64_t h, w, w2;

	h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	a.delay_ns = 500;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 0, &w), LM_OK_QUEUED);
	w2 = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	lockmgr_drop_owner(&lm, &ow[1], LM_END_DISCONNECT, 5);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 6), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w2));
}

Test(lockmgr, lock_delay_makes_trylock_would_block_and_new_requests_queue)
{
	uint64_t id, w;

	grant_delayed(&ow[0], "db", LM_SHARED, 0, 100, 0);
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 0);
	done();
	cr_assert_eq(acq(&ow[1], "db", LM_SHARED, 0, 10, &id),
		     LM_ERR_WOULD_BLOCK);
	cr_assert_eq(nev(), 0);
	w = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 20);
	cr_assert_null(must_find(LM_EV_QUEUED, w)->holder);
	cr_assert_eq(must_find(LM_EV_QUEUED, w)->position, 1);
	done();
	lockmgr_tick(&lm, 100);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, lock_delay_holds_shared_requests_while_other_shared_holders_stay)
{
	uint64_t w;

	grant_delayed(&ow[0], "db", LM_SHARED, 0, 100, 0);
	must_grant(&ow[1], "db", LM_SHARED, 0);
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 10);
	w = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 20);
	done();
	lockmgr_tick(&lm, 110);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, overlapping_lock_delays_end_at_the_later_one)
{
	uint64_t w;

	grant_delayed(&ow[0], "db", LM_SHARED, 0, 300, 0);
	grant_delayed(&ow[1], "db", LM_SHARED, 0, 100, 0);
	w = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 10); /* 310 */
	lockmgr_drop_owner(&lm, &ow[1], LM_END_DISCONNECT, 20); /* 120 */
	done();
	cr_assert_eq(lockmgr_next_deadline(&lm), 310);
	lockmgr_tick(&lm, 200);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	lockmgr_tick(&lm, 310);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, resource_kept_while_lock_delay_runs_then_freed)
{
	grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 0, 100, 0);
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 0);
	done();
	cr_assert_not_null(find_res("db"),
			   "an empty resource in lock-delay is kept");
	cr_assert_eq(lm.nres, 1);
	lockmgr_tick(&lm, 100);
	cr_assert_not_null(find_res("db"), "freed only at events_done");
	done();
	cr_assert_null(find_res("db"));
	cr_assert_eq(lm.nres, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

/* ------------------------------------------------------------ hold all */

Test(lockmgr, hold_all_delays_the_first_grant_of_a_new_resource)
{
	uint64_t id, w;

	lockmgr_hold_all(&lm, 1000, 0);
	cr_assert_eq(acq(&ow[0], "db", LM_EXCLUSIVE, 0, 10, &id),
		     LM_ERR_WOULD_BLOCK);
	cr_assert_not_null(find_res("db"), "kept, delayed, to say why");
	cr_assert(find_res("db")->delay.idx >= 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 20);
	done();
	cr_assert_eq(lockmgr_next_deadline(&lm), 1000);
	lockmgr_tick(&lm, 999);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	lockmgr_tick(&lm, 1000);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
	cr_assert_eq(must_find(LM_EV_GRANTED, w)->waited_ns, 980);
}

Test(lockmgr, hold_all_delays_resources_already_queued)
{
	uint64_t w;

	lockmgr_set_open(&lm, false, 0); /* a standby: requests queue */
	w = must_queue(&ow[0], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	lockmgr_hold_all(&lm, 500, 100);
	lockmgr_set_open(&lm, true, 100);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	done();
	lockmgr_tick(&lm, 500);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, hold_all_ends_for_resources_asked_for_after_it)
{
	lockmgr_hold_all(&lm, 500, 0);
	must_grant(&ow[0], "db", LM_EXCLUSIVE, 500);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, hold_all_keeps_a_later_lock_delay)
{
	uint64_t w;

	grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 0, 900, 0);
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	lockmgr_hold_all(&lm, 300, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 900);
	lockmgr_tick(&lm, 300);
	cr_assert(is_waiting(w));
	lockmgr_tick(&lm, 900);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

/* ------------------------------------------------------------ revoke */

Test(lockmgr, revoke_lease_ends_it_as_admin_and_grants_next)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	const struct lm_event *e;

	done();
	cr_assert_eq(lockmgr_revoke_lease(&lm, h, 40), 0);
	e = must_find(LM_EV_ENDED, h);
	cr_assert_eq(e->end, LM_END_ADMIN);
	cr_assert(e->held);
	cr_assert_eq(e->owner, &ow[0]);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
	cr_assert_eq(ow[0].nreqs, 0);
}

Test(lockmgr, revoke_of_pending_request_or_unknown_id_is_enoent)
{
	uint64_t w;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(lockmgr_revoke_lease(&lm, w, 1), -ENOENT);
	cr_assert_eq(lockmgr_revoke_lease(&lm, 4242, 1), -ENOENT);
	cr_assert_eq(nev(), 0);
	cr_assert(is_waiting(w));
}

Test(lockmgr, revoke_pid_ends_leases_and_withdraws_pending_requests)
{
	uint64_t a, b, wc, other, w_other;
	const struct lm_event *e;

	ow[1].pid = ow[0].pid; /* two connections of one process */
	a = must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	b = must_grant(&ow[1], "b", LM_SHARED, 0);
	other = must_grant(&ow[2], "c", LM_EXCLUSIVE, 0);
	wc = must_queue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 0);
	w_other = must_queue(&ow[3], "a", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();

	cr_assert_eq(lockmgr_revoke_pid(&lm, ow[0].pid, 10), 2);
	cr_assert_eq(count_kind(LM_EV_ENDED), 3);
	cr_assert_eq(must_find(LM_EV_ENDED, a)->end, LM_END_ADMIN);
	cr_assert(must_find(LM_EV_ENDED, a)->held);
	cr_assert_eq(must_find(LM_EV_ENDED, b)->end, LM_END_ADMIN);
	e = must_find(LM_EV_ENDED, wc);
	cr_assert_eq(e->end, LM_END_ADMIN);
	cr_assert_not(e->held, "a pending request is withdrawn, not granted");
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w_other));
	cr_assert(is_held(other));
	cr_assert_eq(ow[0].nreqs + ow[1].nreqs, 0);
}

Test(lockmgr, revoke_pid_never_grants_to_the_revoked_process)
{
	uint64_t h, w_same, w_next, r;
	const struct lm_event *e;

	/* The process holds "db" on one connection and waits for it on
	 * another; a different process waits behind. */
	ow[1].pid = ow[0].pid;
	h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w_same = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 1);
	w_next = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 2);
	done();

	cr_assert_eq(lockmgr_revoke_pid(&lm, ow[0].pid, 10), 1,
		     "one lease was held by the process");
	cr_assert_eq(must_find(LM_EV_ENDED, h)->end, LM_END_ADMIN);
	cr_assert_null(find_ev(LM_EV_GRANTED, w_same),
		       "no grant to a process being revoked");
	e = must_find(LM_EV_ENDED, w_same);
	cr_assert_not(e->held);
	cr_assert_eq(e->end, LM_END_ADMIN);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w_next));
	cr_assert_eq(count_kind(LM_EV_GRANTED), 1);
	r = must_find(LM_EV_GRANTED, w_next)->token;
	cr_assert_eq(r, 2, "the withdrawn request used no token");
}

Test(lockmgr, revoke_pid_of_unknown_pid_revokes_nothing)
{
	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	done();
	cr_assert_eq(lockmgr_revoke_pid(&lm, 4242, 1), 0);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lm.nheld, 1);
}

Test(lockmgr, revoke_pid_matches_the_pid_a_connection_was_handed_to)
{
	uint64_t h, other;

	ow[0].handed_to_pid = 4243; /* ow[0] passed its connection on */
	h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	other = must_grant(&ow[1], "other", LM_EXCLUSIVE, 0);
	done();
	cr_assert_eq(lockmgr_revoke_pid(&lm, 0, 1), 0,
		     "pid 0 matches no connection that handed nothing over");
	cr_assert_eq(lockmgr_revoke_pid(&lm, 4243, 1), 1);
	cr_assert_eq(must_find(LM_EV_ENDED, h)->end, LM_END_ADMIN);
	cr_assert(is_held(other));
}

/* ------------------------------------------------------------ the gate */

Test(lockmgr, closed_gate_makes_trylock_would_block_and_queues_others)
{
	uint64_t id, w;

	lockmgr_set_open(&lm, false, 0);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(acq(&ow[0], "db", LM_EXCLUSIVE, 0, 1, &id),
		     LM_ERR_WOULD_BLOCK);
	cr_assert_eq(nev(), 0);
	cr_assert_null(find_res("db"), "a refused try-lock creates nothing");
	w = must_queue(&ow[0], "db", LM_EXCLUSIVE, LM_FOREVER, 2);
	cr_assert_eq(must_find(LM_EV_QUEUED, w)->position, 1);
	cr_assert_null(must_find(LM_EV_QUEUED, w)->holder);
	cr_assert_eq(count_kind(LM_EV_BUSY), 1);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
}

Test(lockmgr, opening_gate_grants_every_queue_head)
{
	uint64_t a1, a2, b1, b2, c1;

	lockmgr_set_open(&lm, false, 0);
	a1 = must_queue(&ow[0], "a", LM_EXCLUSIVE, LM_FOREVER, 0);
	a2 = must_queue(&ow[1], "a", LM_EXCLUSIVE, LM_FOREVER, 0);
	b1 = must_queue(&ow[2], "b", LM_SHARED, LM_FOREVER, 0);
	b2 = must_queue(&ow[3], "b", LM_SHARED, LM_FOREVER, 0);
	c1 = must_queue(&ow[4], "c", LM_EXCLUSIVE, 10, 0);
	cr_assert_eq(lockmgr_release(&lm, &ow[4], c1, false, 1), 0);
	done();
	lockmgr_set_open(&lm, true, 5);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 3);
	cr_assert(is_held(a1) && is_waiting(a2));
	cr_assert(is_held(b1) && is_held(b2));
	cr_assert_eq(must_find(LM_EV_GRANTED, a1)->waited_ns, 5);
	done();
	lockmgr_set_open(&lm, true, 6);
	cr_assert_eq(nev(), 0, "opening an open gate does nothing");
}

Test(lockmgr, closing_gate_keeps_current_leases_but_holds_the_queue)
{
	uint64_t h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);

	done();
	lockmgr_set_open(&lm, false, 1);
	cr_assert(is_held(h));
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 2), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(is_waiting(w));
	done();
	lockmgr_set_open(&lm, true, 3);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w));
}

Test(lockmgr, gate_opening_with_lock_delay_running_waits_for_the_delay)
{
	uint64_t w;

	grant_delayed(&ow[0], "db", LM_EXCLUSIVE, 0, 100, 0);
	w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	lockmgr_set_open(&lm, false, 1);
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 2);
	lockmgr_set_open(&lm, true, 3);
	cr_assert(is_waiting(w));
	lockmgr_tick(&lm, 102);
	cr_assert(is_held(w));
}

/* ------------------------------------------------------------ limits */

Test(lockmgr, max_resources_refuses_a_new_resource_and_changes_nothing)
{
	struct lm_limits lim = {.max_resources = 2};
	uint64_t id = 0;

	lockmgr_set_limits(&lm, &lim);
	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	must_grant(&ow[0], "b", LM_EXCLUSIVE, 0);
	done();
	cr_assert_eq(acq(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 1, &id),
		     LM_ERR_MAX_RESOURCES);
	cr_assert_eq(nev(), 0);
	cr_assert_null(find_res("c"));
	cr_assert_eq(lm.nres, 2);
	cr_assert_eq(ow[1].nreqs, 0);
	/* An existing resource is still fine. */
	must_queue(&ow[1], "a", LM_EXCLUSIVE, LM_FOREVER, 2);
}

Test(lockmgr, max_leases_per_owner_counts_held_and_pending)
{
	struct lm_limits lim = {.max_leases_per_owner = 2};
	uint64_t id = 0;

	lockmgr_set_limits(&lm, &lim);
	must_grant(&ow[1], "b", LM_EXCLUSIVE, 0);
	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	must_queue(&ow[0], "b", LM_EXCLUSIVE, LM_FOREVER, 0);
	done();
	cr_assert_eq(acq(&ow[0], "c", LM_SHARED, LM_FOREVER, 1, &id),
		     LM_ERR_MAX_LEASES);
	cr_assert_eq(nev(), 0);
	cr_assert_null(find_res("c"));
	cr_assert_eq(ow[0].nreqs, 2);
	/* Another owner is unaffected. */
	must_grant(&ow[1], "c", LM_SHARED, 2);
}

Test(lockmgr, max_waiters_per_resource_refuses_an_extra_waiter)
{
	struct lm_limits lim = {.max_waiters_per_resource = 2};
	uint64_t id = 0;

	lockmgr_set_limits(&lm, &lim);
	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 0);
	done();
	cr_assert_eq(acq(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 1, &id),
		     LM_ERR_MAX_WAITERS);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(find_res("db")->nwaiters, 2);
	cr_assert_eq(lm.nwaiting, 2);
	cr_assert_eq(ow[3].nreqs, 0);
	cr_assert_eq(acq(&ow[3], "db", LM_EXCLUSIVE, 0, 1, &id),
		     LM_ERR_WOULD_BLOCK, "a try-lock still says would-block");
	/* Holders are not waiters: a free resource still grants. */
	must_grant(&ow[3], "other", LM_SHARED, 1);
}

Test(lockmgr, limit_refusals_leave_no_events_or_timers)
{
	struct lm_limits lim = {1, 1, 1};
	uint64_t id;

	lockmgr_set_limits(&lm, &lim);
	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	must_queue(&ow[1], "a", LM_EXCLUSIVE, 100, 0);
	done();
	cr_assert_eq(acq(&ow[2], "a", LM_EXCLUSIVE, 100, 1, &id),
		     LM_ERR_MAX_WAITERS);
	cr_assert_eq(acq(&ow[2], "b", LM_EXCLUSIVE, 100, 1, &id),
		     LM_ERR_MAX_RESOURCES);
	cr_assert_eq(acq(&ow[0], "b", LM_EXCLUSIVE, 100, 1, &id),
		     LM_ERR_MAX_LEASES);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 100);
	cr_assert_eq(lm.nres, 1);
}

/* ------------------------------------------------------------ busy/idle */

Test(lockmgr, busy_and_idle_sent_on_edges_only)
{
	uint64_t a, b;

	a = must_grant(&ow[0], "a", LM_SHARED, 0);
	cr_assert_eq(count_kind(LM_EV_BUSY), 1);
	done();
	b = must_grant(&ow[1], "a", LM_SHARED, 0);
	cr_assert_eq(count_kind(LM_EV_BUSY), 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], a, false, 1), 0);
	cr_assert_eq(count_kind(LM_EV_IDLE), 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], b, false, 2), 0);
	cr_assert_eq(count_kind(LM_EV_IDLE), 1);
	done();
	must_grant(&ow[0], "a", LM_SHARED, 3);
	cr_assert_eq(count_kind(LM_EV_BUSY), 1, "busy again after idle");
}

Test(lockmgr, pending_request_alone_makes_the_manager_busy)
{
	uint64_t w;

	lockmgr_set_open(&lm, false, 0);
	w = must_queue(&ow[0], "a", LM_EXCLUSIVE, 10, 0);
	cr_assert_eq(count_kind(LM_EV_BUSY), 1);
	done();
	lockmgr_tick(&lm, 10);
	cr_assert_eq(must_find(LM_EV_ENDED, w)->end, LM_END_TIMEOUT);
	cr_assert_eq(count_kind(LM_EV_IDLE), 1);
}

Test(lockmgr, idle_sent_when_last_lease_ends_even_during_lock_delay)
{
	grant_delayed(&ow[0], "a", LM_EXCLUSIVE, 0, 100, 0);
	done();
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 1);
	cr_assert_eq(count_kind(LM_EV_IDLE), 1,
		     "no lease or request is left, even if a delay runs");
}

/* ------------------------------------------------------------ lifetime */

Test(lockmgr, empty_resource_freed_after_events_done)
{
	uint64_t id = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	const struct lm_event *e;

	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], id, false, 1), 0);
	e = must_find(LM_EV_ENDED, id);
	cr_assert_not_null(find_res("db"), "events still name it");
	cr_assert_eq(e->res, find_res("db"));
	cr_assert_eq(memcmp(e->res->name, "db", 2), 0);
	done();
	cr_assert_null(find_res("db"));
	cr_assert_eq(lm.nres, 0);
}

Test(lockmgr, resource_emptied_and_reused_before_events_done_survives)
{
	uint64_t id = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t id2;

	cr_assert_eq(lockmgr_release(&lm, &ow[0], id, false, 1), 0);
	id2 = must_grant(&ow[1], "db", LM_EXCLUSIVE, 2);
	done();
	cr_assert_not_null(find_res("db"));
	cr_assert(is_held(id2));
	cr_assert_eq(lockmgr_release(&lm, &ow[1], id2, false, 3), 0);
	done();
	cr_assert_null(find_res("db"));
}

Test(lockmgr, timed_out_only_waiter_frees_the_resource)
{
	uint64_t w;

	lockmgr_set_open(&lm, false, 0);
	w = must_queue(&ow[0], "db", LM_EXCLUSIVE, 5, 0);
	lockmgr_tick(&lm, 5);
	cr_assert_not_null(find_ev(LM_EV_ENDED, w));
	done();
	cr_assert_null(find_res("db"));
}

Test(lockmgr, free_releases_everything_still_held)
{
	/* Leaves leases, waiters, timers, delays and events behind; the
	 * fixture's lockmgr_free must release them all (valgrind checks). */
	struct lm_acquire a = req("x", LM_EXCLUSIVE);
	uint64_t id;

	a.ttl_ns = 100;
	a.delay_ns = 100;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &id), LM_OK_GRANTED);
	must_queue(&ow[1], "x", LM_SHARED, 50, 0);
	grant_delayed(&ow[2], "y", LM_EXCLUSIVE, 0, 100, 0);
	lockmgr_drop_owner(&lm, &ow[2], LM_END_DISCONNECT, 1);
	must_grant(&ow[3], "z", LM_EXCLUSIVE, 0);
}

/* ------------------------------------------------------------ positions */

static struct lm_acquire
watcher(const char *name, enum lm_mode mode)
{
	struct lm_acquire a = req(name, mode);

	a.position_updates = true;
	return a;
}

Test(lockmgr, position_updates_resend_queued_when_queue_moves)
{
	struct lm_acquire a = watcher("db", LM_EXCLUSIVE);
	uint64_t h, w1, w2, w3, w4;

	h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w1 = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &a, 0, &w2), LM_OK_QUEUED);
	w3 = must_queue(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[4], &a, 0, &w4), LM_OK_QUEUED);
	cr_assert_eq(must_find(LM_EV_QUEUED, w4)->position, 4);
	done();

	/* The head is withdrawn: every watcher moves up one. */
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w1, false, 1), 0);
	cr_assert_eq(must_find(LM_EV_QUEUED, w2)->position, 1);
	cr_assert_eq(must_find(LM_EV_QUEUED, w4)->position, 3);
	cr_assert_null(find_ev(LM_EV_QUEUED, w3),
		       "a waiter that did not ask gets no update");
	cr_assert_eq(count_kind(LM_EV_QUEUED), 2);
	done();

	/* A waiter behind w2 leaves: only w4 moves. */
	cr_assert_eq(lockmgr_release(&lm, &ow[3], w3, false, 2), 0);
	cr_assert_null(find_ev(LM_EV_QUEUED, w2));
	cr_assert_eq(must_find(LM_EV_QUEUED, w4)->position, 2);
	done();

	/* The holder leaves: w2 is granted, w4 is at the head and told who
	 * holds now. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 3), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w2));
	cr_assert_eq(must_find(LM_EV_QUEUED, w4)->position, 1);
	cr_assert_eq(must_find(LM_EV_QUEUED, w4)->holder, &ow[2]);
	cr_assert_lt(ev_index(must_find(LM_EV_GRANTED, w2)),
		     ev_index(must_find(LM_EV_QUEUED, w4)));
}

Test(lockmgr, position_updates_follow_timeouts)
{
	struct lm_acquire a = watcher("db", LM_EXCLUSIVE);
	uint64_t w1, w2;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	w1 = must_queue(&ow[1], "db", LM_EXCLUSIVE, 10, 0);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &a, 0, &w2), LM_OK_QUEUED);
	done();
	lockmgr_tick(&lm, 10);
	cr_assert_not_null(find_ev(LM_EV_ENDED, w1));
	cr_assert_eq(must_find(LM_EV_QUEUED, w2)->position, 1);
}

Test(lockmgr, new_waiter_behind_a_watcher_sends_no_update)
{
	struct lm_acquire a = watcher("db", LM_EXCLUSIVE);
	uint64_t w1, w2;

	must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 0, &w1), LM_OK_QUEUED);
	done();
	w2 = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 0);
	cr_assert_eq(nev(), 1);
	cr_assert_not_null(find_ev(LM_EV_QUEUED, w2));
	cr_assert_null(find_ev(LM_EV_QUEUED, w1));
}

/* The already-held check walks the shorter list: the owner's requests or
 * the resource's queues. Both ways find held and waiting requests. */
Test(lockmgr, already_held_found_from_either_side)
{
	struct lm_acquire a = req("a", LM_EXCLUSIVE);
	uint64_t id;

	must_grant(&ow[0], "a", LM_EXCLUSIVE, 0);
	must_grant(&ow[0], "b", LM_EXCLUSIVE, 0);
	must_grant(&ow[0], "c", LM_EXCLUSIVE, 0);
	must_grant(&ow[1], "w", LM_EXCLUSIVE, 0);
	must_queue(&ow[0], "w", LM_EXCLUSIVE, LM_FOREVER, 0);
	/* ow[0] has 4 requests, "a" one holder: the resource side. */
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &id),
		     LM_ERR_ALREADY_HELD);
	a = req("w", LM_EXCLUSIVE);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 0, &id),
		     LM_ERR_ALREADY_HELD);
	/* ow[1] has 1 request, "w" two entries: the owner side. */
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 0, &id),
		     LM_ERR_ALREADY_HELD);
}

/* With an interval, moves behind the head are told once per interval with
 * the latest position; the head is told at once. */
Test(lockmgr, position_updates_are_coalesced_over_the_interval)
{
	struct lm_limits lim = {.position_interval_ns = 100};
	struct lm_acquire a = watcher("db", LM_EXCLUSIVE);
	uint64_t h, w[5];

	lockmgr_set_limits(&lm, &lim);
	h = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(lockmgr_acquire(&lm, &ow[1 + i], &a, 0, &w[i]),
			     LM_OK_QUEUED);
	done();

	/* Two grants in a row: only the new head hears at once. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 1), 0);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, w[0]));
	cr_assert_eq(must_find(LM_EV_QUEUED, w[1])->position, 1);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 1);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w[0], false, 2), 0);
	cr_assert_eq(must_find(LM_EV_QUEUED, w[2])->position, 1);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 1);
	cr_assert_eq(lockmgr_next_deadline(&lm), 101);
	done();

	/* The interval ends: one update each, with the latest position. */
	lockmgr_tick(&lm, 101);
	cr_assert_eq(must_find(LM_EV_QUEUED, w[3])->position, 2);
	cr_assert_eq(must_find(LM_EV_QUEUED, w[4])->position, 3);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 2);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	done();

	/* A held-back update is dropped when its request ends. */
	cr_assert_eq(lockmgr_release(&lm, &ow[3], w[2], false, 102), 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[5], w[4], false, 103), 0);
	done();
	lockmgr_tick(&lm, 300);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 0);
}

/* ------------------------------------------------------------ names */

Test(lockmgr, end_and_mode_names)
{
	cr_assert_str_eq(lockmgr_end_name(LM_END_RELEASE), "release");
	cr_assert_str_eq(lockmgr_end_name(LM_END_DISCONNECT), "disconnect");
	cr_assert_str_eq(lockmgr_end_name(LM_END_EXPIRED), "expired");
	cr_assert_str_eq(lockmgr_end_name(LM_END_ADMIN), "admin");
	cr_assert_str_eq(lockmgr_end_name(LM_END_SHUTDOWN), "shutdown");
	cr_assert_str_eq(lockmgr_end_name(LM_END_CANCEL), "cancel");
	cr_assert_str_eq(lockmgr_end_name(LM_END_TIMEOUT), "timeout");
	cr_assert_str_eq(lockmgr_end_name((enum lm_end)99), "?");
	cr_assert_str_eq(lockmgr_mode_name(LM_EXCLUSIVE), "exclusive");
	cr_assert_str_eq(lockmgr_mode_name(LM_SHARED), "shared");
}

/* ------------------------------------------------------------ conversion */

static enum lm_conv_result
conv(struct lm_owner *o, uint64_t id, enum lm_mode mode, uint64_t timeout_ns,
     uint64_t tag, uint64_t now)
{
	struct lm_convert c = {
	    .lease_id = id, .mode = mode, .timeout_ns = timeout_ns, .tag = tag};

	return lockmgr_convert(&lm, o, &c, now);
}

/* The first event of this kind about this lease, from a conversion
 * (convert true) or not, or NULL. */
static const struct lm_event *
find_conv(enum lm_ev_kind kind, uint64_t lease_id, bool convert)
{
	size_t n;
	const struct lm_event *ev = lockmgr_events(&lm, &n);

	for (size_t i = 0; i < n; i++) {
		if (ev[i].kind == kind && ev[i].lease_id == lease_id &&
		    ev[i].convert == convert)
			return &ev[i];
	}
	return NULL;
}

static const struct lm_event *
must_conv(enum lm_ev_kind kind, uint64_t lease_id)
{
	const struct lm_event *e = find_conv(kind, lease_id, true);

	cr_assert_not_null(e,
			   "no conversion event of kind %d for lease %" PRIu64,
			   kind, lease_id);
	return e;
}

static const struct lm_req *
lease(uint64_t id)
{
	const struct lm_req *r = lockmgr_lease(&lm, id);

	cr_assert_not_null(r, "lease %" PRIu64 " is gone", id);
	return r;
}

Test(lockmgr, downgrade_is_done_at_once_keeping_lease_and_token)
{
	uint64_t x = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t tok = lease(x)->token;
	const struct lm_event *e;

	done();
	cr_assert_eq(conv(&ow[0], x, LM_SHARED, LM_FOREVER, 77, 10),
		     LM_CONV_DONE);
	e = must_conv(LM_EV_GRANTED, x);
	cr_assert_eq(e->mode, LM_SHARED);
	cr_assert_eq(e->was, LM_EXCLUSIVE);
	cr_assert_eq(e->token, tok, "a downgrade keeps the lease's token");
	cr_assert_eq(e->tag, 77, "the convert's tag, not the acquire's");
	cr_assert(e->immediate);
	cr_assert_eq(e->waited_ns, 0);
	cr_assert_eq(nev(), 1);
	cr_assert(is_held(x));
	cr_assert_eq(lease(x)->mode, LM_SHARED);
	cr_assert_eq(lease(x)->token, tok);
	cr_assert_eq(lease(x)->t_granted, 0, "held since its grant");
	cr_assert_eq(find_res("db")->held_mode, LM_SHARED);
	done();
	/* Now a reader among readers. */
	must_grant(&ow[1], "db", LM_SHARED, 11);
}

Test(lockmgr, downgrade_grants_the_waiting_readers_in_the_same_call)
{
	uint64_t x = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t r1 = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 1);
	uint64_t r2 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 2);
	uint64_t w = must_queue(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 3);
	uint64_t r3 = must_queue(&ow[4], "db", LM_SHARED, LM_FOREVER, 4);
	const struct lm_event *c, *g1, *g2;

	done();
	cr_assert_eq(conv(&ow[0], x, LM_SHARED, LM_FOREVER, 9, 20),
		     LM_CONV_DONE);
	c = must_conv(LM_EV_GRANTED, x);
	g1 = find_conv(LM_EV_GRANTED, r1, false);
	g2 = find_conv(LM_EV_GRANTED, r2, false);
	cr_assert_not_null(g1);
	cr_assert_not_null(g2);
	cr_assert(ev_index(c) < ev_index(g1) && ev_index(g1) < ev_index(g2),
		  "the downgrade is told first, then the grants in order");
	cr_assert_gt(g1->token, c->token);
	cr_assert_gt(g2->token, g1->token);
	cr_assert(is_waiting(w), "the writer still waits for the readers");
	cr_assert(is_waiting(r3), "nothing jumps the queued writer");
	cr_assert_eq(find_res("db")->nholders, 3);
	cr_assert_eq(lockmgr_position(lease(w)), 1);
}

Test(lockmgr, downgrade_never_waits_even_with_the_gate_shut_or_no_tokens)
{
	uint64_t x = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t r1 = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 1);

	lockmgr_set_tokens(&lm, lm.last_token, lm.last_token);
	lockmgr_set_open(&lm, false, 2);
	done();
	cr_assert_eq(conv(&ow[0], x, LM_SHARED, 0, 9, 3), LM_CONV_DONE);
	cr_assert_eq(lease(x)->mode, LM_SHARED);
	cr_assert(is_waiting(r1), "the gate still holds new grants back");
	done();
	lockmgr_set_open(&lm, true, 4);
	lockmgr_add_tokens(&lm, UINT64_MAX, 4);
	cr_assert(is_held(r1));
}

Test(lockmgr, upgrade_of_a_lone_reader_is_at_once_with_a_new_token)
{
	uint64_t other = must_grant(&ow[2], "other", LM_EXCLUSIVE, 0);
	uint64_t r = must_grant(&ow[0], "db", LM_SHARED, 1);
	uint64_t w = must_queue(&ow[1], "db", LM_EXCLUSIVE, LM_FOREVER, 2);
	uint64_t old = lease(r)->token;
	const struct lm_event *e;

	cr_assert_gt(old, lease(other)->token);
	done();
	cr_assert_eq(conv(&ow[0], r, LM_EXCLUSIVE, LM_FOREVER, 5, 3),
		     LM_CONV_DONE);
	e = must_conv(LM_EV_GRANTED, r);
	cr_assert_eq(e->mode, LM_EXCLUSIVE);
	cr_assert_eq(e->was, LM_SHARED);
	cr_assert_eq(e->token, old + 1, "higher than every earlier token");
	cr_assert_eq(e->lease_id, r, "the same lease");
	cr_assert(e->immediate);
	cr_assert_eq(lease(r)->token, old + 1);
	cr_assert_eq(lease(r)->mode, LM_EXCLUSIVE);
	cr_assert(is_waiting(w), "the upgrade goes ahead of the queue");
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], r, false, 4), 0);
	cr_assert_gt(must_find(LM_EV_GRANTED, w)->token, old + 1);
}

Test(lockmgr, upgrade_waits_only_for_the_other_readers_to_leave)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t r3 = must_grant(&ow[2], "db", LM_SHARED, 2);
	const struct lm_event *e;

	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 10),
		     LM_CONV_WAITING);
	cr_assert_eq(nev(), 0);
	cr_assert(is_held(r1), "the shared lease is kept while it waits");
	cr_assert_eq(lease(r1)->mode, LM_SHARED);
	cr_assert(lease(r1)->converting, "status sees it converting");
	cr_assert_eq(find_res("db")->converting, lease(r1));
	cr_assert_eq(lm.nconverting, 1);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 20), 0);
	cr_assert_null(find_conv(LM_EV_GRANTED, r1, true));
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[2], r3, false, 30), 0);
	e = must_conv(LM_EV_GRANTED, r1);
	cr_assert_eq(e->tag, 5);
	cr_assert_not(e->immediate);
	cr_assert_eq(e->waited_ns, 20);
	cr_assert_eq(lease(r1)->mode, LM_EXCLUSIVE);
	cr_assert_not(lease(r1)->converting);
	cr_assert_null(find_res("db")->converting);
	cr_assert_eq(lm.nconverting, 0);
}

Test(lockmgr, queued_writer_cannot_starve_an_upgrade)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t w = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 2);
	uint64_t up;

	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 3),
		     LM_CONV_WAITING);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 4), 0);
	cr_assert_not_null(must_conv(LM_EV_GRANTED, r1));
	cr_assert_null(find_ev(LM_EV_GRANTED, w));
	cr_assert(is_waiting(w), "R1 is granted exclusive before W");
	up = lease(r1)->token;
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], r1, false, 5), 0);
	cr_assert_gt(must_find(LM_EV_GRANTED, w)->token, up);
}

Test(lockmgr, readers_arriving_during_an_upgrade_queue_behind_it_in_fifo)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t r3, w, r4, id;

	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 2),
		     LM_CONV_WAITING);
	/* Compatible with today's readers, but an upgrade waits first. */
	cr_assert_eq(acq(&ow[5], "db", LM_SHARED, 0, 3, &id),
		     LM_ERR_WOULD_BLOCK);
	r3 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 3);
	w = must_queue(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 4);
	r4 = must_queue(&ow[4], "db", LM_SHARED, LM_FOREVER, 5);
	cr_assert_eq(must_find(LM_EV_QUEUED, r3)->position, 1);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 6), 0);
	cr_assert_not_null(must_conv(LM_EV_GRANTED, r1));
	cr_assert(is_waiting(r3) && is_waiting(w) && is_waiting(r4));
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], r1, false, 7), 0);
	cr_assert(is_held(r3));
	cr_assert(is_waiting(w) && is_waiting(r4), "FIFO for everyone else");
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[2], r3, false, 8), 0);
	cr_assert(is_held(w) && is_waiting(r4));
}

Test(lockmgr, second_upgrade_is_refused_as_deadlock_and_the_first_proceeds)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t t2 = lease(r2)->token;

	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 2),
		     LM_CONV_WAITING);
	cr_assert_eq(conv(&ow[1], r2, LM_EXCLUSIVE, LM_FOREVER, 6, 3),
		     LM_CONV_ERR_DEADLOCK);
	cr_assert_eq(conv(&ow[1], r2, LM_EXCLUSIVE, 1000, 7, 3),
		     LM_CONV_ERR_DEADLOCK);
	cr_assert_eq(conv(&ow[1], r2, LM_EXCLUSIVE, 0, 8, 3),
		     LM_CONV_ERR_DEADLOCK,
		     "a try-once is told to let go, not to retry");
	cr_assert_eq(nev(), 0, "a refusal changes nothing");
	cr_assert(is_held(r2));
	cr_assert_eq(lease(r2)->mode, LM_SHARED);
	cr_assert_eq(lease(r2)->token, t2);
	cr_assert_not(lease(r2)->converting);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 4), 0);
	cr_assert_not_null(must_conv(LM_EV_GRANTED, r1));
	cr_assert_eq(lease(r1)->mode, LM_EXCLUSIVE);
}

Test(lockmgr, second_upgrade_of_the_same_lease_is_refused_as_pending)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);

	must_grant(&ow[1], "db", LM_SHARED, 1);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 100, 5, 2),
		     LM_CONV_WAITING);
	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 6, 3),
		     LM_CONV_ERR_PENDING);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), 102, "first timeout kept");
}

Test(lockmgr, upgrade_timeout_leaves_the_shared_lease_as_it_was)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t t1 = lease(r1)->token;
	const struct lm_event *e;

	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 100, 5, 10),
		     LM_CONV_WAITING);
	cr_assert_eq(lockmgr_next_deadline(&lm), 110);
	lockmgr_tick(&lm, 109);
	cr_assert_eq(nev(), 0);
	lockmgr_tick(&lm, 110);
	cr_assert_eq(nev(), 1);
	e = must_conv(LM_EV_ENDED, r1);
	cr_assert_eq(e->end, LM_END_TIMEOUT);
	cr_assert_not(e->held, "the conversion ended, not the lease");
	cr_assert_eq(e->tag, 5);
	cr_assert_eq(e->mode, LM_EXCLUSIVE, "the mode it asked for");
	cr_assert_eq(e->waited_ns, 100);
	cr_assert(is_held(r1) && is_held(r2));
	cr_assert_eq(lease(r1)->mode, LM_SHARED);
	cr_assert_eq(lease(r1)->token, t1);
	cr_assert_not(lease(r1)->converting);
	cr_assert_null(find_res("db")->converting);
	cr_assert_eq(lm.nconverting, 0);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	done();
	/* Readers are welcome again, and the holder may ask again. */
	must_grant(&ow[2], "db", LM_SHARED, 111);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 10, 6, 112),
		     LM_CONV_WAITING);
}

Test(lockmgr, upgrade_timeout_lets_the_readers_it_held_back_through)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r3, w;

	must_grant(&ow[1], "db", LM_SHARED, 1);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 50, 5, 2), LM_CONV_WAITING);
	r3 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 3);
	w = must_queue(&ow[3], "db", LM_EXCLUSIVE, LM_FOREVER, 4);
	done();
	lockmgr_tick(&lm, 52);
	cr_assert_eq(must_conv(LM_EV_ENDED, r1)->end, LM_END_TIMEOUT);
	cr_assert_not_null(find_conv(LM_EV_GRANTED, r3, false));
	cr_assert(ev_index(must_conv(LM_EV_ENDED, r1)) <
		  ev_index(find_conv(LM_EV_GRANTED, r3, false)));
	cr_assert(is_waiting(w));
}

Test(lockmgr, try_once_upgrade_would_block_while_others_read)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t t1 = lease(r1)->token;

	must_grant(&ow[1], "db", LM_SHARED, 1);
	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 0, 5, 2),
		     LM_CONV_ERR_WOULD_BLOCK);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lease(r1)->mode, LM_SHARED);
	cr_assert_eq(lease(r1)->token, t1);
	cr_assert_not(lease(r1)->converting);
	cr_assert_null(find_res("db")->converting);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, try_once_upgrade_of_a_lone_reader_is_done)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);

	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 0, 5, 2), LM_CONV_DONE);
	cr_assert_eq(lease(r1)->mode, LM_EXCLUSIVE);
}

Test(lockmgr, death_while_converting_ends_the_upgrade_then_the_lease)
{
	uint64_t r1 = grant_delayed(&ow[0], "db", LM_SHARED, 0, 300, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t w = must_queue(&ow[2], "db", LM_EXCLUSIVE, LM_FOREVER, 2);
	const struct lm_event *c, *l;

	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 500, 5, 3),
		     LM_CONV_WAITING);
	done();
	lockmgr_drop_owner(&lm, &ow[0], LM_END_DISCONNECT, 10);
	c = must_conv(LM_EV_ENDED, r1);
	l = find_conv(LM_EV_ENDED, r1, false);
	cr_assert_not_null(l);
	cr_assert(ev_index(c) < ev_index(l), "the upgrade ends first");
	cr_assert_eq(c->end, LM_END_DISCONNECT);
	cr_assert_eq(c->tag, 5);
	cr_assert_not(c->held);
	cr_assert_eq(l->end, LM_END_DISCONNECT);
	cr_assert(l->held);
	cr_assert_eq(l->tag, 0, "the lease's event has the acquire's tag");
	cr_assert_null(lockmgr_lease(&lm, r1));
	cr_assert_null(find_res("db")->converting);
	cr_assert_eq(lm.nconverting, 0);
	cr_assert(is_held(r2) && is_waiting(w));
	/* Lock-delay as for any unclean end; the upgrade's timeout is gone. */
	cr_assert_eq(lockmgr_next_deadline(&lm), 310);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 20), 0);
	cr_assert(is_waiting(w));
	done();
	lockmgr_tick(&lm, 310);
	cr_assert(is_held(w));
}

Test(lockmgr, expiry_while_converting_ends_the_upgrade_as_expired)
{
	uint64_t r1 = grant_delayed(&ow[0], "db", LM_SHARED, 100, 0, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);

	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 3),
		     LM_CONV_WAITING);
	done();
	lockmgr_tick(&lm, 100);
	cr_assert_eq(nev(), 2);
	cr_assert_eq(must_conv(LM_EV_ENDED, r1)->end, LM_END_EXPIRED);
	cr_assert_eq(find_conv(LM_EV_ENDED, r1, false)->end, LM_END_EXPIRED);
	cr_assert_null(lockmgr_lease(&lm, r1));
	cr_assert(is_held(r2));
	cr_assert_null(find_res("db")->converting);
}

Test(lockmgr, renew_keeps_a_converting_lease_alive)
{
	uint64_t r1 = grant_delayed(&ow[0], "db", LM_SHARED, 100, 0, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);

	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 3),
		     LM_CONV_WAITING);
	cr_assert_eq(lockmgr_renew(&lm, &ow[0], r1, 0, 90), 0);
	done();
	lockmgr_tick(&lm, 150);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 160), 0);
	cr_assert_eq(must_conv(LM_EV_GRANTED, r1)->ttl_ns, 100);
	cr_assert_eq(lockmgr_next_deadline(&lm), 190, "expiry unchanged");
}

Test(lockmgr, revoke_and_release_while_converting_end_the_upgrade_too)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);
	uint64_t r3 = must_grant(&ow[2], "db", LM_SHARED, 2);

	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 3),
		     LM_CONV_WAITING);
	done();
	cr_assert_eq(lockmgr_revoke_lease(&lm, r1, 4), 0);
	cr_assert_eq(must_conv(LM_EV_ENDED, r1)->end, LM_END_ADMIN);
	cr_assert_eq(find_conv(LM_EV_ENDED, r1, false)->end, LM_END_ADMIN);
	done();

	cr_assert_eq(conv(&ow[1], r2, LM_EXCLUSIVE, LM_FOREVER, 6, 5),
		     LM_CONV_WAITING);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 6), 0);
	cr_assert_eq(must_conv(LM_EV_ENDED, r2)->end, LM_END_RELEASE);
	cr_assert_eq(find_conv(LM_EV_ENDED, r2, false)->end, LM_END_RELEASE);
	done();

	cr_assert_eq(conv(&ow[2], r3, LM_EXCLUSIVE, LM_FOREVER, 7, 7),
		     LM_CONV_DONE, "alone now");
	done();
	cr_assert_eq(lockmgr_revoke_pid(&lm, ow[2].pid, 8), 1);
	cr_assert_null(find_conv(LM_EV_ENDED, r3, true), "nothing waited");
}

Test(lockmgr, revoke_pid_and_storage_loss_end_a_waiting_upgrade_first)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = must_grant(&ow[1], "db", LM_SHARED, 1);

	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 3),
		     LM_CONV_WAITING);
	done();
	cr_assert_eq(lockmgr_revoke_pid(&lm, ow[1].pid, 4), 1);
	/* The other reader is gone: the upgrade goes through at once. */
	cr_assert_eq(must_conv(LM_EV_GRANTED, r1)->mode, LM_EXCLUSIVE);
	done();
	r2 = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 5);
	cr_assert_eq(conv(&ow[0], r1, LM_SHARED, LM_FOREVER, 6, 6),
		     LM_CONV_DONE);
	cr_assert(is_held(r2));
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 7, 7),
		     LM_CONV_WAITING);
	done();
	lockmgr_set_open(&lm, false, 8);
	cr_assert_eq(lockmgr_revoke_all(&lm, LM_END_STORAGE_LOST, 8), 2);
	cr_assert_eq(must_conv(LM_EV_ENDED, r1)->end, LM_END_STORAGE_LOST);
	cr_assert(ev_index(must_conv(LM_EV_ENDED, r1)) <
		  ev_index(find_conv(LM_EV_ENDED, r1, false)));
	cr_assert_eq(lm.nconverting, 0);
}

Test(lockmgr, other_readers_death_grants_the_upgrade_after_its_lock_delay)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	const struct lm_event *e;

	grant_delayed(&ow[1], "db", LM_SHARED, 0, 200, 1);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 2),
		     LM_CONV_WAITING);
	done();
	lockmgr_drop_owner(&lm, &ow[1], LM_END_DISCONNECT, 10);
	cr_assert_null(find_conv(LM_EV_GRANTED, r1, true),
		       "the dead reader's I/O settles first");
	cr_assert_eq(lockmgr_next_deadline(&lm), 210);
	done();
	lockmgr_tick(&lm, 210);
	e = must_conv(LM_EV_GRANTED, r1);
	cr_assert_eq(e->waited_ns, 208);
	cr_assert_not(e->immediate);
}

Test(lockmgr, clean_release_of_the_other_reader_grants_the_upgrade_at_once)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t r2 = grant_delayed(&ow[1], "db", LM_SHARED, 0, 200, 1);

	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 2),
		     LM_CONV_WAITING);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], r2, false, 10), 0);
	cr_assert_not_null(must_conv(LM_EV_GRANTED, r1));
}

Test(lockmgr, upgrade_waits_while_the_gate_is_shut)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);

	lockmgr_set_open(&lm, false, 1);
	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 0, 5, 2),
		     LM_CONV_ERR_WOULD_BLOCK);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 6, 3),
		     LM_CONV_WAITING);
	cr_assert_eq(nev(), 0);
	lockmgr_set_open(&lm, true, 4);
	cr_assert_eq(must_conv(LM_EV_GRANTED, r1)->tag, 6);
}

Test(lockmgr, upgrade_without_a_token_left_stalls_until_tokens_come)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t t1 = lease(r1)->token;

	lockmgr_set_tokens(&lm, t1, t1);
	done();
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, LM_FOREVER, 5, 2),
		     LM_CONV_WAITING);
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 1);
	cr_assert_eq(lease(r1)->mode, LM_SHARED);
	done();
	lockmgr_add_tokens(&lm, t1 + 10, 3);
	cr_assert_eq(must_conv(LM_EV_GRANTED, r1)->token, t1 + 1);
	cr_assert_eq(lease(r1)->mode, LM_EXCLUSIVE);
}

Test(lockmgr, tokens_grow_across_upgrades_and_stay_on_downgrades)
{
	uint64_t r1, r2, a, t[6];

	lockmgr_set_tokens(&lm, 5000, UINT64_MAX);
	r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	t[0] = lease(r1)->token;
	a = must_grant(&ow[1], "other", LM_EXCLUSIVE, 1);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 0, 5, 2), LM_CONV_DONE);
	t[1] = lease(r1)->token;
	cr_assert_eq(conv(&ow[0], r1, LM_SHARED, 0, 6, 3), LM_CONV_DONE);
	t[2] = lease(r1)->token;
	r2 = must_grant(&ow[2], "db", LM_SHARED, 4);
	t[3] = lease(r2)->token;
	cr_assert_eq(lockmgr_release(&lm, &ow[2], r2, false, 5), 0);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 0, 7, 6), LM_CONV_DONE);
	t[4] = lease(r1)->token;
	t[5] = lease(a)->token;
	cr_assert_eq(t[0], 5001);
	cr_assert_eq(t[5], 5002);
	cr_assert_eq(t[1], 5003, "upgrade: above every earlier token");
	cr_assert_eq(t[2], t[1], "downgrade: the same token");
	cr_assert_eq(t[3], 5004);
	cr_assert_eq(t[4], 5005);
	cr_assert_eq(lm.last_token, 5005);
}

Test(lockmgr, convert_to_the_mode_held_withdraws_a_waiting_upgrade)
{
	uint64_t r1 = must_grant(&ow[0], "db", LM_SHARED, 0);
	uint64_t t1 = lease(r1)->token;
	uint64_t r3;
	const struct lm_event *end, *c, *g;

	must_grant(&ow[1], "db", LM_SHARED, 1);
	cr_assert_eq(conv(&ow[0], r1, LM_EXCLUSIVE, 1000, 5, 2),
		     LM_CONV_WAITING);
	r3 = must_queue(&ow[2], "db", LM_SHARED, LM_FOREVER, 3);
	done();
	cr_assert_eq(conv(&ow[0], r1, LM_SHARED, LM_FOREVER, 6, 10),
		     LM_CONV_DONE);
	end = must_conv(LM_EV_ENDED, r1);
	c = must_conv(LM_EV_GRANTED, r1);
	g = find_conv(LM_EV_GRANTED, r3, false);
	cr_assert_eq(end->end, LM_END_CANCEL);
	cr_assert_eq(end->tag, 5);
	cr_assert_eq(end->waited_ns, 8);
	cr_assert_eq(c->tag, 6);
	cr_assert_eq(c->mode, LM_SHARED);
	cr_assert_eq(c->was, LM_SHARED);
	cr_assert_eq(c->token, t1);
	cr_assert_not_null(g, "the reader held back by the upgrade goes");
	cr_assert(ev_index(end) < ev_index(c) && ev_index(c) < ev_index(g));
	cr_assert_not(lease(r1)->converting);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
}

Test(lockmgr, convert_to_the_mode_held_is_done_and_changes_nothing)
{
	uint64_t x = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t t = lease(x)->token;
	uint64_t w = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 1);

	done();
	cr_assert_eq(conv(&ow[0], x, LM_EXCLUSIVE, 0, 5, 2), LM_CONV_DONE);
	cr_assert_eq(nev(), 1);
	cr_assert_eq(must_conv(LM_EV_GRANTED, x)->token, t);
	cr_assert_eq(lease(x)->mode, LM_EXCLUSIVE);
	cr_assert(is_waiting(w));
}

Test(lockmgr, convert_of_a_pending_unknown_or_foreign_lease_is_refused)
{
	uint64_t x = must_grant(&ow[0], "db", LM_EXCLUSIVE, 0);
	uint64_t w = must_queue(&ow[1], "db", LM_SHARED, LM_FOREVER, 1);

	done();
	cr_assert_eq(conv(&ow[1], w, LM_EXCLUSIVE, LM_FOREVER, 5, 2),
		     LM_CONV_ERR_NOT_HELD);
	cr_assert_eq(conv(&ow[1], x, LM_SHARED, LM_FOREVER, 5, 2),
		     LM_CONV_ERR_UNKNOWN);
	cr_assert_eq(conv(&ow[0], 424242, LM_SHARED, LM_FOREVER, 5, 2),
		     LM_CONV_ERR_UNKNOWN);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lease(x)->mode, LM_EXCLUSIVE);
	cr_assert_eq(lease(w)->mode, LM_SHARED);
}

Test(lockmgr, waiting_upgrades_on_two_resources_do_not_interfere)
{
	uint64_t a1 = must_grant(&ow[0], "a", LM_SHARED, 0);
	uint64_t b1 = must_grant(&ow[1], "b", LM_SHARED, 0);
	uint64_t a2 = must_grant(&ow[2], "a", LM_SHARED, 0);

	must_grant(&ow[3], "b", LM_SHARED, 0);
	cr_assert_eq(conv(&ow[0], a1, LM_EXCLUSIVE, LM_FOREVER, 5, 1),
		     LM_CONV_WAITING);
	cr_assert_eq(conv(&ow[1], b1, LM_EXCLUSIVE, LM_FOREVER, 6, 1),
		     LM_CONV_WAITING, "no deadlock across resources");
	cr_assert_eq(lm.nconverting, 2);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[2], a2, false, 2), 0);
	cr_assert_not_null(must_conv(LM_EV_GRANTED, a1));
	cr_assert_null(find_conv(LM_EV_GRANTED, b1, true));
	cr_assert_eq(lm.nconverting, 1);
}

/* ================================================= randomized model test */

/*
 * The reference model. It knows only the contract: strict FIFO per
 * resource, shared runs granted together, the gate, lock-delay after an
 * unclean end, the token limit, the limits and their refusals, and
 * conversion: downgrades at once, one waiting upgrade per resource ahead of
 * the queue, deadlock refusals, and a waiting upgrade ending just before its
 * lease; and cluster resources (most seeds make one or two of the three
 * cluster-wide): grants only as the key's gate admits and before the
 * session's deadline, tokens counted from the key's base, revokes that end
 * every holder and keep the waiters, try-once requests that wait quietly,
 * pinning, and the dirty list. The cluster calls are made the way the
 * daemon makes them: a deadline moved on after it passed follows a revoke
 * of every cluster resource, as a new session does. It tracks
 * every live request, replays each event against its own state and checks
 * it is allowed at that moment, then compares the whole state with the
 * lock manager's after every step.
 */

#define M_OWNERS 4
#define M_RES	 3
#define M_LIVE	 (M_OWNERS * M_RES)
#define M_SEEDS	 200
#define M_STEPS	 2000

static const char *const m_names[M_RES] = {"alpha", "beta", "gamma"};
static const uint32_t m_pids[M_OWNERS] = {100, 100, 200, 300};

struct mreq {
	uint64_t id, tag, seq;
	int owner, res;
	enum lm_mode mode;
	bool held, watch;
	uint64_t t_queued, t_granted, grant_seq;
	uint64_t deadline; /* waiting: timeout; held: expiry; or FOREVER */
	uint64_t ttl, delay, token;
	uint32_t last_pos;
	bool converting; /* its upgrade waits */
	uint64_t conv_tag, t_conv, conv_deadline;
	bool try_once; /* cluster try-once: waits for the key's answer */
};

enum m_op {
	OP_ACQUIRE,
	OP_RELEASE,
	OP_CANCEL,
	OP_DROP,
	OP_TICK,
	OP_RENEW,
	OP_REVOKE,
	OP_REVOKE_PID,
	OP_GATE,
	OP_TOKENS,
	OP_CONVERT,
	OP_C_OWN,
	OP_C_SHUT,
	OP_C_REVOKE, /* one resource, or (op_res -1) every cluster one */
	OP_C_END_WAITERS,
	OP_C_UNTIL,
	OP_C_PIN,
	OP_C_DIRTY,
	OP_C_MOVED,
};

/*
 * What the random walks reached, summed over every seed, so the test can
 * insist that each conversion path was taken at least once.
 */
enum m_cov {
	COV_DONE_UP,
	COV_DONE_DOWN,
	COV_DONE_SAME,
	COV_WAITING,
	COV_ERR_UNKNOWN,
	COV_ERR_NOT_HELD,
	COV_ERR_PENDING,
	COV_ERR_WOULD_BLOCK,
	COV_ERR_DEADLOCK,
	COV_ERR_CLUSTER, /* follows COV_ERR_DEADLOCK as in enum lm_conv_result
			  */
	COV_UP_AFTER_WAIT,
	COV_CONV_TIMEOUT,
	COV_CONV_CANCEL,
	COV_CONV_WITH_LEASE,
	COV_DOWN_GRANTS,
	COV_C_GRANT_SHARED_KEY, /* a cluster grant under a shared key */
	COV_C_GRANT_ALL_KEY,	/* a cluster grant under an exclusive key */
	COV_C_UPGRADE,		/* a cluster lease upgraded, key token */
	COV_C_TRY_ONCE,		/* a try-once waiting for the key */
	COV_C_PAST_DEADLINE, /* a head the key admits, held by the deadline */
	COV_C_NEW_KEY,	     /* own() with a new token base */
	COV_C_REVOKED,	     /* holders ended by a cluster revoke */
	COV_C_END_TRIES,     /* try-once requests ended alone */
	COV_C_PINNED_EMPTY,  /* a pinned resource kept while empty */
	COV_N
};
static uint64_t m_cov[COV_N];

struct model {
	uint64_t seed;
	int step;
	uint64_t rng;
	uint64_t now;
	struct mreq live[M_LIVE];
	int nlive;
	bool open, busy;
	uint64_t last_token, limit;
	bool delayed[M_RES];
	uint64_t delay_until[M_RES];
	uint64_t seq, grant_seq, tagseq;
	struct lm_limits lim;
	uint64_t issued, ended;
	uint64_t *ids; /* open-addressing set of every id handed out */
	size_t ids_cap;

	/* What the current step is allowed to end, and how. */
	enum m_op op;
	int op_owner;
	uint64_t op_id;
	uint32_t op_pid;
	enum lm_end op_why;
	uint64_t new_id; /* the request this step's acquire made, or 0 */
	uint64_t op_tag; /* this step's convert: its tag and mode */
	enum lm_mode op_mode;
	uint64_t expect_end; /* a lease whose ENDED must come next, or 0 */
	enum lm_end expect_why;

	/* Cluster: which resources are cluster-wide, and their key state. */
	bool cl[M_RES];
	enum lm_gate cgate[M_RES];
	uint64_t cbase[M_RES], cn[M_RES];
	uint64_t clast[M_RES]; /* highest key token ever granted on it */
	uint64_t next_base;    /* the next new key's token base */
	bool pinned[M_RES], dirty[M_RES];
	uint64_t until;	    /* lockmgr_cluster_until */
	int op_res;	    /* this step's cluster resource, -1: all */
	bool op_tries_only; /* this step's end_waiters */
};

#define MCHECK(m, cond, ...)                                                   \
	do {                                                                   \
		if (!(cond))                                                   \
			cr_assert_fail("seed %" PRIu64 " step %d op %d: %s: "  \
				       "%s",                                   \
				       (m)->seed, (m)->step, (int)(m)->op,     \
				       #cond, m_fmt(__VA_ARGS__));             \
	} while (0)

static char m_msg[256];

static const char *
m_fmt(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m_msg, sizeof m_msg, fmt, ap);
	va_end(ap);
	return m_msg;
}

/* splitmix64: small, fast, and the same sequence everywhere. */
static uint64_t
m_rand(struct model *m)
{
	uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t
m_below(struct model *m, uint64_t n)
{
	return m_rand(m) % n;
}

static void
m_ids_add(struct model *m, uint64_t id)
{
	size_t i = (size_t)(id * 0x9e3779b97f4a7c15ull) & (m->ids_cap - 1);

	MCHECK(m, id != 0, "lease id 0");
	while (m->ids[i] != 0) {
		MCHECK(m, m->ids[i] != id, "lease id %" PRIu64 " reused", id);
		i = (i + 1) & (m->ids_cap - 1);
	}
	m->ids[i] = id;
}

static struct mreq *
m_find(struct model *m, uint64_t id)
{
	for (int i = 0; i < m->nlive; i++) {
		if (m->live[i].id == id)
			return &m->live[i];
	}
	return NULL;
}

static struct mreq *
m_find_owner_res(struct model *m, int owner, int res)
{
	for (int i = 0; i < m->nlive; i++) {
		if (m->live[i].owner == owner && m->live[i].res == res)
			return &m->live[i];
	}
	return NULL;
}

static int
m_res_of(const struct lm_res *res)
{
	for (int i = 0; i < M_RES; i++) {
		if (res->len == strlen(m_names[i]) &&
		    memcmp(res->name, m_names[i], res->len) == 0)
			return i;
	}
	return -1;
}

static int
m_count(struct model *m, int res, bool held)
{
	int n = 0;

	for (int i = 0; i < m->nlive; i++)
		n += m->live[i].res == res && m->live[i].held == held;
	return n;
}

static int
m_owner_count(struct model *m, int owner)
{
	int n = 0;

	for (int i = 0; i < m->nlive; i++)
		n += m->live[i].owner == owner;
	return n;
}

static bool
m_present(struct model *m, int res)
{
	return m->delayed[res] || m->pinned[res] || m_count(m, res, true) > 0 ||
	       m_count(m, res, false) > 0;
}

/* A cluster resource may not grant mode now (lockmgr.h's cluster mode):
 * its key does not admit the mode, the session's deadline is reached, or
 * the key's tokens are used up. Never for a local resource. */
static bool
m_cshut(const struct model *m, int res, enum lm_mode mode)
{
	if (!m->cl[res])
		return false;
	return m->now >= m->until || m->cn[res] >= LM_CLUSTER_GRANTS ||
	       m->cgate[res] == LM_GATE_CLOSED ||
	       (m->cgate[res] == LM_GATE_SHARED && mode != LM_SHARED);
}

/* A grant on res takes a token now: a cluster key's never runs short. */
static bool
m_has_token(const struct model *m, int res)
{
	return m->cl[res] || m->last_token < m->limit;
}

/* A grant or upgrade on res takes this token; checks it and counts it. */
static void
m_take_token(struct model *m, int res, uint64_t token)
{
	if (m->cl[res]) {
		MCHECK(m, token == m->cbase[res] + m->cn[res] + 1,
		       "key token %" PRIu64 ", model %" PRIu64, token,
		       m->cbase[res] + m->cn[res] + 1);
		MCHECK(m, token > m->clast[res],
		       "key token %" PRIu64 " not above %" PRIu64, token,
		       m->clast[res]);
		MCHECK(m, token > (UINT64_C(1) << 62),
		       "key token %" PRIu64 " among local ones", token);
		m->cn[res]++;
		m->clast[res] = token;
		return;
	}
	MCHECK(m, token > m->last_token, "token %" PRIu64 " not above %" PRIu64,
	       token, m->last_token);
	MCHECK(m, token <= m->limit, "token beyond the limit");
	MCHECK(m, token < (UINT64_C(1) << 62),
	       "local token %" PRIu64 " among key ones", token);
	m->last_token = token;
}

/* Compatible with the current holders: none, or all shared and mode shared. */
static bool
m_compatible(struct model *m, int res, enum lm_mode mode)
{
	for (int i = 0; i < m->nlive; i++) {
		const struct mreq *r = &m->live[i];

		if (r->res == res && r->held &&
		    (mode == LM_EXCLUSIVE || r->mode == LM_EXCLUSIVE))
			return false;
	}
	return true;
}

/* The first waiter in FIFO order, or NULL. */
static struct mreq *
m_head(struct model *m, int res)
{
	struct mreq *h = NULL;

	for (int i = 0; i < m->nlive; i++) {
		struct mreq *r = &m->live[i];

		if (r->res == res && !r->held && (h == NULL || r->seq < h->seq))
			h = r;
	}
	return h;
}

static uint32_t
m_position(struct model *m, const struct mreq *w)
{
	uint32_t pos = 0;

	for (int i = 0; i < m->nlive; i++) {
		const struct mreq *r = &m->live[i];

		pos += r->res == w->res && !r->held && r->seq <= w->seq;
	}
	return pos;
}

/* The holder granted first, whose owner QUEUED names. */
static const struct mreq *
m_first_holder(struct model *m, int res)
{
	const struct mreq *h = NULL;

	for (int i = 0; i < m->nlive; i++) {
		const struct mreq *r = &m->live[i];

		if (r->res == res && r->held &&
		    (h == NULL || r->grant_seq < h->grant_seq))
			h = r;
	}
	return h;
}

static void
m_remove(struct model *m, struct mreq *r)
{
	*r = m->live[--m->nlive];
}

/* The holder of res whose upgrade waits, or NULL. */
static struct mreq *
m_converter(struct model *m, int res)
{
	for (int i = 0; i < m->nlive; i++) {
		if (m->live[i].res == res && m->live[i].converting)
			return &m->live[i];
	}
	return NULL;
}

static bool
m_blocked(struct model *m, int res, enum lm_mode mode)
{
	return !m->open || m->delayed[res] || m_count(m, res, false) > 0 ||
	       m_converter(m, res) != NULL || !m_compatible(m, res, mode);
}

static uint64_t
m_after(uint64_t now, uint64_t ns)
{
	return ns == LM_FOREVER ? LM_FOREVER : now + ns;
}

/* Replay one event against the model, checking it is allowed now. */
static void
m_event(struct model *m, const struct lm_event *e, struct lm_owner *owners)
{
	struct mreq *r = NULL;
	int res = -1;

	if (e->kind == LM_EV_GRANTED || e->kind == LM_EV_QUEUED ||
	    e->kind == LM_EV_ENDED) {
		r = m_find(m, e->lease_id);
		MCHECK(m, r != NULL,
		       "event %d for lease %" PRIu64 " that is not live",
		       e->kind, e->lease_id);
		res = m_res_of(e->res);
		MCHECK(m, res == r->res, "event names the wrong resource");
		MCHECK(m, e->owner == &owners[r->owner], "wrong owner");
		if (!e->convert) {
			MCHECK(m, e->tag == r->tag, "wrong tag");
			MCHECK(m, e->mode == r->mode, "wrong mode");
		}
	}
	/* A waiting upgrade that ended with its lease: the lease is next. */
	if (m->expect_end != 0) {
		MCHECK(m,
		       e->kind == LM_EV_ENDED && !e->convert &&
			   e->lease_id == m->expect_end &&
			   e->end == m->expect_why,
		       "lease %" PRIu64 " did not end right after its upgrade",
		       m->expect_end);
		m->expect_end = 0;
	}
	if (e->convert) {
		MCHECK(m, e->kind == LM_EV_GRANTED || e->kind == LM_EV_ENDED,
		       "convert flag on event %d", e->kind);
		MCHECK(m, r->held, "conversion event for a pending request");
		MCHECK(m, e->ttl_ns == r->ttl || e->kind == LM_EV_ENDED,
		       "ttl in a conversion");
	}

	switch (e->kind) {
	case LM_EV_GRANTED: {
		struct mreq *h = m_head(m, res);

		if (e->convert) {
			if (r->converting) {
				MCHECK(m, !e->immediate,
				       "waited, yet immediate");
				MCHECK(m, e->tag == r->conv_tag, "upgrade tag");
				MCHECK(m, e->waited_ns == m->now - r->t_conv,
				       "upgrade waited_ns");
				MCHECK(m,
				       e->mode == LM_EXCLUSIVE &&
					   e->was == LM_SHARED &&
					   r->mode == LM_SHARED,
				       "only upgrades wait");
				m_cov[COV_UP_AFTER_WAIT]++;
			} else {
				MCHECK(m,
				       m->op == OP_CONVERT && r->id == m->op_id,
				       "conversion nobody asked for");
				MCHECK(m, e->immediate, "not immediate");
				MCHECK(m, e->tag == m->op_tag, "convert tag");
				MCHECK(m, e->waited_ns == 0, "waited_ns");
				MCHECK(m,
				       e->was == r->mode &&
					   e->mode == m->op_mode,
				       "modes of the conversion");
			}
			if (e->was == LM_SHARED && e->mode == LM_EXCLUSIVE) {
				MCHECK(m, m->open,
				       "upgrade with the gate shut");
				MCHECK(m, !m->delayed[res],
				       "upgrade during lock-delay");
				MCHECK(m, m_count(m, res, true) == 1,
				       "upgrade beside other holders");
				MCHECK(
				    m, !m_cshut(m, res, LM_EXCLUSIVE),
				    "upgrade the cluster key does not admit");
				m_take_token(m, res, e->token);
				if (m->cl[res])
					m_cov[COV_C_UPGRADE]++;
				r->token = e->token;
			} else {
				MCHECK(
				    m, e->token == r->token,
				    "a downgrade or no-op changed the token");
			}
			r->mode = e->mode;
			r->converting = false;
			break;
		}
		MCHECK(m, m_converter(m, res) == NULL,
		       "lease %" PRIu64 " granted while an upgrade waits",
		       r->id);

		MCHECK(m, !r->held, "lease %" PRIu64 " granted twice", r->id);
		MCHECK(m, m->open, "granted while the gate is shut");
		MCHECK(m, !m->delayed[res], "granted during lock-delay");
		MCHECK(m, m_compatible(m, res, r->mode),
		       "grant of %s breaks mutual exclusion",
		       lockmgr_mode_name(r->mode));
		/* No overtaking: an earlier waiter would be the head. */
		MCHECK(m, h == r, "lease %" PRIu64 " overtook %" PRIu64, r->id,
		       h ? h->id : 0);
		/* A cluster grant: the key admits the mode, before the
		 * session's deadline. */
		MCHECK(m, !m_cshut(m, res, r->mode),
		       "%s grant on %s: gate %d, now %" PRIu64
		       ", until %" PRIu64,
		       lockmgr_mode_name(r->mode), m_names[res], m->cgate[res],
		       m->now, m->until);
		m_take_token(m, res, e->token);
		if (m->cl[res])
			m_cov[m->cgate[res] == LM_GATE_SHARED
				  ? COV_C_GRANT_SHARED_KEY
				  : COV_C_GRANT_ALL_KEY]++;
		MCHECK(m, e->immediate == (r->id == m->new_id),
		       "immediate flag wrong");
		MCHECK(m, e->waited_ns == m->now - r->t_queued,
		       "waited_ns wrong");
		MCHECK(m, e->ttl_ns == r->ttl, "ttl wrong");
		if (m->op == OP_REVOKE_PID)
			MCHECK(m, m_pids[r->owner] != m->op_pid,
			       "granted to the pid being revoked");
		r->held = true;
		r->token = e->token;
		r->t_granted = m->now;
		r->grant_seq = ++m->grant_seq;
		r->deadline = r->ttl ? m->now + r->ttl : LM_FOREVER;
		break;
	}
	case LM_EV_QUEUED: {
		const struct mreq *fh = m_first_holder(m, res);

		MCHECK(m, !r->held, "QUEUED for a held lease");
		MCHECK(m, r->id == m->new_id || r->watch,
		       "update to a waiter that did not ask for one");
		MCHECK(m, e->position == m_position(m, r),
		       "position %u, model says %u", e->position,
		       m_position(m, r));
		MCHECK(m, e->nholders == (unsigned)m_count(m, res, true),
		       "nholders");
		MCHECK(m, e->holder == (fh ? &owners[fh->owner] : NULL),
		       "QUEUED names the wrong holder");
		r->last_pos = e->position;
		break;
	}
	case LM_EV_ENDED: {
		enum lm_end want;

		if (e->convert) {
			bool with_lease = true;

			MCHECK(m, r->converting, "no upgrade waited");
			MCHECK(m, !e->held, "held flag of an upgrade");
			MCHECK(m, e->tag == r->conv_tag, "upgrade tag");
			MCHECK(m, e->mode == LM_EXCLUSIVE, "upgrade mode");
			MCHECK(m, e->waited_ns == m->now - r->t_conv,
			       "upgrade waited_ns");
			switch (m->op) {
			case OP_CONVERT:
				MCHECK(m, r->id == m->op_id,
				       "withdrew another's upgrade");
				want = LM_END_CANCEL;
				with_lease = false;
				break;
			case OP_RELEASE:
			case OP_CANCEL:
				MCHECK(m, r->id == m->op_id,
				       "release ended another's upgrade");
				want = LM_END_RELEASE;
				break;
			case OP_DROP:
				MCHECK(m, r->owner == m->op_owner,
				       "drop ended another owner's upgrade");
				want = m->op_why;
				break;
			case OP_REVOKE:
				MCHECK(m, r->id == m->op_id,
				       "revoke ended the wrong upgrade");
				want = LM_END_ADMIN;
				break;
			case OP_REVOKE_PID:
				MCHECK(
				    m, m_pids[r->owner] == m->op_pid,
				    "revoke_pid ended another pid's upgrade");
				want = LM_END_ADMIN;
				break;
			case OP_C_REVOKE:
				MCHECK(m,
				       m->cl[res] && (m->op_res == -1 ||
						      m->op_res == res),
				       "cluster revoke ended another "
				       "resource's upgrade");
				want = m->op_why;
				break;
			case OP_TICK:
				/* Whichever of its timeout and its lease's
				 * expiry came first (either, when equal). */
				if (e->end == LM_END_TIMEOUT) {
					MCHECK(m,
					       r->conv_deadline <= m->now &&
						   r->conv_deadline <=
						       r->deadline,
					       "upgrade timed out early");
					want = LM_END_TIMEOUT;
					with_lease = false;
				} else {
					MCHECK(m,
					       r->deadline <= m->now &&
						   r->deadline <=
						       r->conv_deadline,
					       "upgrade ended by an expiry "
					       "not due");
					want = LM_END_EXPIRED;
				}
				break;
			default:
				MCHECK(m, false,
				       "no upgrade may end in this operation");
				want = LM_END_RELEASE;
			}
			MCHECK(m, e->end == want, "upgrade end %s, want %s",
			       lockmgr_end_name(e->end),
			       lockmgr_end_name(want));
			r->converting = false;
			if (with_lease) {
				m->expect_end = r->id;
				m->expect_why = want;
				m_cov[COV_CONV_WITH_LEASE]++;
			} else {
				m_cov[want == LM_END_CANCEL
					  ? COV_CONV_CANCEL
					  : COV_CONV_TIMEOUT]++;
			}
			break;
		}
		MCHECK(m, !r->converting,
		       "lease %" PRIu64 " ended before its waiting upgrade",
		       r->id);
		MCHECK(m, e->held == r->held, "held flag wrong");
		switch (m->op) {
		case OP_RELEASE:
		case OP_CANCEL:
			MCHECK(m, r->id == m->op_id, "release ended another");
			want = r->held ? LM_END_RELEASE : LM_END_CANCEL;
			break;
		case OP_DROP:
			MCHECK(m, r->owner == m->op_owner,
			       "drop ended another owner's request");
			want = m->op_why;
			break;
		case OP_REVOKE:
			MCHECK(m, r->id == m->op_id && r->held,
			       "revoke ended the wrong thing");
			want = LM_END_ADMIN;
			break;
		case OP_REVOKE_PID:
			MCHECK(m, m_pids[r->owner] == m->op_pid,
			       "revoke_pid ended another pid's request");
			want = LM_END_ADMIN;
			break;
		case OP_C_REVOKE:
			MCHECK(m,
			       r->held && m->cl[res] &&
				   (m->op_res == -1 || m->op_res == res),
			       "cluster revoke ended a %s request on %s",
			       r->held ? "held" : "pending", m_names[res]);
			want = m->op_why;
			m_cov[COV_C_REVOKED]++;
			break;
		case OP_C_END_WAITERS:
			MCHECK(m,
			       !r->held && res == m->op_res &&
				   (!m->op_tries_only || r->try_once),
			       "end_waiters ended a %s%s request on %s",
			       r->held ? "held" : "pending",
			       r->try_once ? " try-once" : "", m_names[res]);
			want = m->op_why;
			if (m->op_tries_only)
				m_cov[COV_C_END_TRIES]++;
			break;
		case OP_TICK:
			MCHECK(m, r->deadline <= m->now,
			       "ended before its deadline");
			want = r->held ? LM_END_EXPIRED : LM_END_TIMEOUT;
			break;
		default:
			MCHECK(m, false, "nothing may end in this operation");
			want = LM_END_RELEASE;
		}
		MCHECK(m, e->end == want, "end %s, want %s",
		       lockmgr_end_name(e->end), lockmgr_end_name(want));
		if (r->held) {
			MCHECK(m, e->token == r->token, "token in ENDED");
			MCHECK(m, e->held_ns == m->now - r->t_granted,
			       "held_ns");
			if (r->delay > 0 &&
			    (want == LM_END_DISCONNECT ||
			     want == LM_END_EXPIRED || want == LM_END_ADMIN)) {
				uint64_t until = m->now + r->delay;

				if (!m->delayed[res] ||
				    until > m->delay_until[res])
					m->delay_until[res] = until;
				m->delayed[res] = true;
			}
		} else {
			MCHECK(m, e->waited_ns == m->now - r->t_queued,
			       "waited_ns of a pending request");
		}
		if (m->cl[res])
			m->dirty[res] = true; /* demand moved */
		m->ended++;
		m_remove(m, r);
		break;
	}
	case LM_EV_NEED_TOKENS:
		MCHECK(m, m->last_token >= m->limit,
		       "NEED_TOKENS with tokens left");
		break;
	case LM_EV_BUSY:
		MCHECK(m, !m->busy && m->nlive > 0, "BUSY edge");
		m->busy = true;
		break;
	case LM_EV_IDLE:
		MCHECK(m, m->busy && m->nlive == 0, "IDLE edge");
		m->busy = false;
		break;
	}
}

static void
m_events(struct model *m, struct lm_owner *owners)
{
	size_t n;
	const struct lm_event *ev = lockmgr_events(&lm, &n);

	for (size_t i = 0; i < n; i++)
		m_event(m, &ev[i], owners);
	MCHECK(m, m->expect_end == 0,
	       "lease %" PRIu64 " outlived its ended upgrade", m->expect_end);
}

/* The whole state, after the step's events were replayed. */
static void
m_check_state(struct model *m, struct lm_owner *owners)
{
	uint64_t next = LM_FOREVER;
	int held = 0, waiting = 0;

	/* A resource gone (freed at events_done) takes its key state. */
	for (int res = 0; res < M_RES; res++) {
		if (!m_present(m, res)) {
			m->cgate[res] = LM_GATE_CLOSED;
			m->cbase[res] = m->cn[res] = 0;
			m->dirty[res] = false;
		}
	}
	for (int i = 0; i < m->nlive; i++) {
		const struct mreq *r = &m->live[i];
		const struct lm_req *q = lockmgr_lease(&lm, r->id);

		MCHECK(m, q != NULL, "live lease %" PRIu64 " unknown", r->id);
		MCHECK(m, q->owner == &owners[r->owner], "owner");
		MCHECK(m, (q->state == LM_HELD) == r->held, "state of %" PRIu64,
		       r->id);
		MCHECK(m, q->mode == r->mode, "mode of %" PRIu64, r->id);
		MCHECK(m, q->converting == r->converting,
		       "converting flag of %" PRIu64, r->id);
		MCHECK(m, q->try_once == r->try_once,
		       "try_once flag of %" PRIu64, r->id);
		if (r->converting && r->conv_deadline < next)
			next = r->conv_deadline;
		if (r->held) {
			held++;
			MCHECK(m, q->token == r->token, "token");
		} else {
			uint32_t pos = m_position(m, r);

			waiting++;
			MCHECK(m, lockmgr_position(q) == pos,
			       "position %u, model %u", lockmgr_position(q),
			       pos);
			/* A try-once is not told it waits; a move of
			 * its queue tells it later, like any watcher. */
			if (r->watch && !(r->try_once && r->last_pos == 0))
				MCHECK(m, r->last_pos == pos,
				       "watcher %" PRIu64 " last told %u, "
				       "now at %u",
				       r->id, r->last_pos, pos);
		}
		if (r->deadline < next)
			next = r->deadline;
	}
	MCHECK(m, lm.nheld == (unsigned)held, "nheld %u, model %d", lm.nheld,
	       held);
	MCHECK(m, lm.nwaiting == (unsigned)waiting, "nwaiting %u, model %d",
	       lm.nwaiting, waiting);
	{
		unsigned nconv = 0;

		for (int res = 0; res < M_RES; res++)
			nconv += m_converter(m, res) != NULL;
		MCHECK(m, lm.nconverting == nconv, "nconverting %u, model %u",
		       lm.nconverting, nconv);
	}
	for (int o = 0; o < M_OWNERS; o++)
		MCHECK(m, owners[o].nreqs == (unsigned)m_owner_count(m, o),
		       "owner %d nreqs", o);
	MCHECK(m, m->busy == (m->nlive > 0), "busy state");

	for (int res = 0; res < M_RES; res++) {
		const struct lm_res *lr =
		    lockmgr_find(&lm, m_names[res], strlen(m_names[res]));
		int nh = m_count(m, res, true), nw = m_count(m, res, false);
		const struct mreq *h = m_head(m, res);
		const struct mreq *cv = m_converter(m, res);
		uint64_t max_held_seq = 0;
		bool excl = false;

		if (m->delayed[res] && m->delay_until[res] < next)
			next = m->delay_until[res];
		MCHECK(m, (lr != NULL) == m_present(m, res),
		       "resource %s present %d, model %d", m_names[res],
		       lr != NULL, m_present(m, res));
		if (lr != NULL) {
			MCHECK(m, lr->nholders == (unsigned)nh, "nholders");
			MCHECK(m, lr->nwaiters == (unsigned)nw, "nwaiters");
			MCHECK(m,
			       lr->converting ==
				   (cv ? lockmgr_lease(&lm, cv->id) : NULL),
			       "conversion slot of %s", m_names[res]);
			MCHECK(m, lr->cluster == m->cl[res], "cluster flag");
			MCHECK(m, lr->cgate == m->cgate[res],
			       "gate of %s: %d, model %d", m_names[res],
			       lr->cgate, m->cgate[res]);
			MCHECK(m,
			       lr->ctoken_base == m->cbase[res] &&
				   lr->ctoken_n == m->cn[res],
			       "key tokens of %s", m_names[res]);
			MCHECK(m, lr->cdirty == m->dirty[res],
			       "dirty flag of %s: %d, model %d", m_names[res],
			       lr->cdirty, m->dirty[res]);
			MCHECK(m,
			       lr->ext ==
				   (m->pinned[res] ? &m->pinned[res] : NULL),
			       "pin of %s", m_names[res]);
			if (m->pinned[res] && nh + nw == 0)
				m_cov[COV_C_PINNED_EMPTY]++;
		}
		for (int i = 0; i < m->nlive; i++) {
			const struct mreq *r = &m->live[i];

			if (r->res != res || !r->held)
				continue;
			excl |= r->mode == LM_EXCLUSIVE;
			if (r->seq > max_held_seq)
				max_held_seq = r->seq;
		}
		/* Mutual exclusion. */
		MCHECK(m, !excl || nh == 1, "exclusive holder with others");
		/* FIFO: nobody holds who asked after a waiter. */
		MCHECK(m, h == NULL || max_held_seq < h->seq,
		       "a later request holds while an earlier one waits");
		/* No lost wake-up, for the upgrade or the queue behind it. */
		MCHECK(m,
		       cv == NULL || !m->open || m->delayed[res] ||
			   !m_has_token(m, res) || nh > 1 ||
			   m_cshut(m, res, LM_EXCLUSIVE),
		       "upgrade of %" PRIu64 " on %s could be done but waits",
		       cv ? cv->id : 0, m_names[res]);
		MCHECK(m,
		       h == NULL || !m->open || m->delayed[res] ||
			   !m_has_token(m, res) || cv != NULL ||
			   !m_compatible(m, res, h->mode) ||
			   m_cshut(m, res, h->mode),
		       "lease %" PRIu64 " on %s could be granted but waits",
		       h ? h->id : 0, m_names[res]);
		if (h != NULL && m->cl[res] && m->now >= m->until &&
		    m->cgate[res] != LM_GATE_CLOSED &&
		    (m->cgate[res] == LM_GATE_ALL || h->mode == LM_SHARED))
			m_cov[COV_C_PAST_DEADLINE]++;
	}
	MCHECK(m, lockmgr_next_deadline(&lm) == next,
	       "next deadline %" PRIu64 ", model %" PRIu64,
	       lockmgr_next_deadline(&lm), next);
	if (m->op == OP_TICK)
		MCHECK(m, next > m->now, "a due timer did not fire");
}

/* Pick a lease id for owner o to act on: its own, another's, or unknown. */
static uint64_t
m_pick_id(struct model *m, int o, bool *own)
{
	uint64_t roll = m_below(m, 10);
	struct mreq *mine[M_LIVE];
	int n = 0;

	for (int i = 0; i < m->nlive; i++) {
		if (m->live[i].owner == o)
			mine[n++] = &m->live[i];
	}
	*own = false;
	if (roll < 7 && n > 0) {
		*own = true;
		return mine[m_below(m, (uint64_t)n)]->id;
	}
	if (roll < 9 && m->nlive > 0) {
		struct mreq *r = &m->live[m_below(m, (uint64_t)m->nlive)];

		*own = r->owner == o;
		return r->id;
	}
	return (1ull << 40) + m_below(m, 1000);
}

/* Owner o converts one of its leases (or someone else's, or none). */
static void
m_convert_step(struct model *m, struct lm_owner *owners, int o)
{
	bool own, blocked;
	uint64_t id = m_pick_id(m, o, &own), t = m_below(m, 10);
	struct mreq *r = m_find(m, id);
	struct lm_convert c;
	enum lm_conv_result want, got;
	size_t before = 0, n;

	m->op = OP_CONVERT;
	m->op_id = id;
	memset(&c, 0, sizeof c);
	c.lease_id = id;
	/* Mostly a real change of mode; sometimes the mode held. */
	if (r != NULL && m_below(m, 4) != 0)
		c.mode = r->mode == LM_SHARED ? LM_EXCLUSIVE : LM_SHARED;
	else
		c.mode = m_below(m, 2) ? LM_SHARED : LM_EXCLUSIVE;
	c.timeout_ns = t < 3 ? 0 : t < 6 ? LM_FOREVER : 1 + m_below(m, 200);
	c.tag = m->op_tag = ++m->tagseq;
	m->op_mode = c.mode;

	if (!own)
		want = LM_CONV_ERR_UNKNOWN;
	else if (!r->held)
		want = LM_CONV_ERR_NOT_HELD;
	else if (c.mode == r->mode || c.mode == LM_SHARED)
		want = LM_CONV_DONE; /* a waiting upgrade is shared */
	else if (r->converting)
		want = LM_CONV_ERR_PENDING;
	else if (m_converter(m, r->res) != NULL)
		want = LM_CONV_ERR_DEADLOCK;
	else if (m->cl[r->res] && m->cgate[r->res] != LM_GATE_ALL)
		want = LM_CONV_ERR_CLUSTER;
	else {
		blocked = !m->open || m->delayed[r->res] ||
			  m_count(m, r->res, true) > 1 ||
			  m_cshut(m, r->res, LM_EXCLUSIVE);
		if (blocked && c.timeout_ns == 0)
			want = LM_CONV_ERR_WOULD_BLOCK;
		else if (!blocked && m_has_token(m, r->res))
			want = LM_CONV_DONE;
		else
			want = LM_CONV_WAITING;
	}

	if (want == LM_CONV_DONE)
		before = (size_t)m_count(m, r->res, true);
	got = lockmgr_convert(&lm, &owners[o], &c, m->now);
	MCHECK(m, got == want, "convert gave %d, model %d", got, want);
	switch (got) {
	case LM_CONV_DONE:
		m_cov[c.mode == r->mode	       ? COV_DONE_SAME
		      : c.mode == LM_EXCLUSIVE ? COV_DONE_UP
					       : COV_DONE_DOWN]++;
		m_events(m, owners);
		MCHECK(m, r->mode == c.mode && !r->converting,
		       "convert done, yet lease %" PRIu64 " is %s", r->id,
		       lockmgr_mode_name(r->mode));
		if ((size_t)m_count(m, r->res, true) > before)
			m_cov[COV_DOWN_GRANTS]++;
		break;
	case LM_CONV_WAITING:
		m_cov[COV_WAITING]++;
		r->converting = true;
		r->conv_tag = c.tag;
		r->t_conv = m->now;
		r->conv_deadline = m_after(m->now, c.timeout_ns);
		if (m->cl[r->res])
			m->dirty[r->res] = true; /* an upgrade asked for */
		m_events(m, owners);
		MCHECK(m, r->converting, "a waiting upgrade was done");
		break;
	default:
		m_cov[got - LM_CONV_ERR_UNKNOWN + COV_ERR_UNKNOWN]++;
		lockmgr_events(&lm, &n);
		MCHECK(m, n == 0, "refused convert queued events");
	}
}

static struct lm_res *
m_lres(int res)
{
	return lockmgr_find(&lm, m_names[res], strlen(m_names[res]));
}

/* Revoke one cluster resource's leases (res >= 0) or every one's (-1),
 * checking that every holder ends and every waiter stays. */
static void
m_cluster_revoke(struct model *m, struct lm_owner *owners, int which,
		 enum lm_end why)
{
	m->op = OP_C_REVOKE;
	m->op_res = which;
	m->op_why = why;
	for (int res = 0; res < M_RES; res++) {
		struct lm_res *lr = m_lres(res);
		int want = m_count(m, res, true),
		    waiting = m_count(m, res, false);
		int rc;

		if (lr == NULL || !m->cl[res] || (which >= 0 && res != which))
			continue;
		rc = lockmgr_cluster_revoke(&lm, lr, why, m->now);
		MCHECK(m, rc == want, "cluster revoke gave %d, model %d", rc,
		       want);
		m->cgate[res] = LM_GATE_CLOSED;
		m_events(m, owners);
		lockmgr_events_done(&lm);
		MCHECK(m, m_count(m, res, true) == 0,
		       "a holder of %s survived its revoke", m_names[res]);
		MCHECK(m, m_count(m, res, false) == waiting,
		       "the revoke of %s lost a waiter", m_names[res]);
	}
}

/* One of the calls the daemon's cluster module makes (k < 28). */
static void
m_cluster_step(struct model *m, struct lm_owner *owners, uint64_t k)
{
	int cres[M_RES], nc = 0, res;
	struct lm_res *lr, *d;
	size_t n;

	for (int i = 0; i < M_RES; i++) {
		if (m->cl[i])
			cres[nc++] = i;
	}
	res = nc > 0 ? cres[m_below(m, (uint64_t)nc)] : 0;
	lr = nc > 0 ? m_lres(res) : NULL;
	m->op_res = res;

	if (k >= 23 && k < 26) {
		/* The caller looks at every resource whose demand moved. */
		m->op = OP_C_DIRTY;
		while ((d = lockmgr_cluster_next_dirty(&lm)) != NULL) {
			int i = m_res_of(d);

			MCHECK(m, i >= 0 && m->dirty[i],
			       "%s handed out as dirty, model not", d->name);
			m->dirty[i] = false;
		}
		for (int i = 0; i < M_RES; i++)
			MCHECK(m, !m->dirty[i], "%s not handed out as dirty",
			       m_names[i]);
		return;
	}
	if (k >= 17 && k < 20) {
		/* The session's deadline: lost (0), or moved, which after it
		 * passed follows a revoke of everything, as the daemon's
		 * expiry does before a new session grants. */
		m->op = OP_C_UNTIL;
		if (m_below(m, 5) == 0) {
			m->until = 0;
		} else {
			if (m->now >= m->until)
				m_cluster_revoke(m, owners, -1,
						 LM_END_CLUSTER_LOST);
			m->op = OP_C_UNTIL;
			m->until = m->now + 1 + m_below(m, 2000);
		}
		lockmgr_cluster_until(&lm, m->until);
		lockmgr_events(&lm, &n);
		MCHECK(m, n == 0, "until queued events");
		return;
	}
	if (lr == NULL) {
		/* No cluster resource, or it does not exist now. */
		m->op = OP_C_OWN;
		return;
	}
	if (k < 8) {
		enum lm_gate gate =
		    m_below(m, 2) ? LM_GATE_ALL : LM_GATE_SHARED;
		uint64_t base = m->cbase[res];

		if (base == 0 || m_below(m, 2) == 0) {
			base = m->next_base += UINT64_C(1) << 20;
			m_cov[COV_C_NEW_KEY]++;
		}
		m->op = OP_C_OWN;
		m->cgate[res] = gate;
		if (base != m->cbase[res]) {
			m->cbase[res] = base;
			m->cn[res] = 0;
		}
		lockmgr_cluster_own(&lm, lr, gate, base, m->now);
		m_events(m, owners);
	} else if (k < 11) {
		m->op = OP_C_SHUT;
		m->cgate[res] = LM_GATE_CLOSED;
		lockmgr_cluster_shut(&lm, lr);
		lockmgr_events(&lm, &n);
		MCHECK(m, n == 0, "shut queued events");
	} else if (k < 14) {
		m_cluster_revoke(m, owners, res,
				 m_below(m, 3) ? LM_END_CLUSTER_LOST
					       : LM_END_SHUTDOWN);
	} else if (k < 17) {
		int want = 0, rc;

		m->op = OP_C_END_WAITERS;
		m->op_tries_only = m_below(m, 2);
		m->op_why = m_below(m, 2) ? LM_END_BUSY : LM_END_UNAVAILABLE;
		for (int i = 0; i < m->nlive; i++) {
			const struct mreq *r = &m->live[i];

			want += r->res == res && !r->held &&
				(!m->op_tries_only || r->try_once);
		}
		rc = lockmgr_cluster_end_waiters(&lm, lr, m->op_why,
						 m->op_tries_only, m->now);
		MCHECK(m, rc == want, "end_waiters gave %d, model %d", rc,
		       want);
		m_events(m, owners);
		for (int i = 0; i < m->nlive; i++) {
			const struct mreq *r = &m->live[i];

			MCHECK(m,
			       r->res != res || r->held ||
				   (m->op_tries_only && !r->try_once),
			       "end_waiters left %" PRIu64, r->id);
		}
	} else if (k < 23) {
		m->op = OP_C_PIN;
		m->pinned[res] = !m->pinned[res];
		lockmgr_cluster_pin(&lm, lr,
				    m->pinned[res] ? &m->pinned[res] : NULL);
		lockmgr_events(&lm, &n);
		MCHECK(m, n == 0, "pin queued events");
	} else {
		m->op = OP_C_MOVED;
		lockmgr_cluster_moved(&lm, lr, m->now);
		m_events(m, owners);
	}
}

static void
m_step(struct model *m, struct lm_owner *owners)
{
	uint64_t roll = m_below(m, 140);
	int o = (int)m_below(m, M_OWNERS);

	m->new_id = 0;
	m->now += m_below(m, 20);

	if (roll < 40) {
		struct lm_acquire a;
		int res = (int)m_below(m, M_RES);
		uint64_t t = m_below(m, 10), id = 0;
		enum lm_result want, got;
		bool blocked, ctry;

		m->op = OP_ACQUIRE;
		memset(&a, 0, sizeof a);
		a.resource = m_names[res];
		a.len = strlen(m_names[res]);
		a.mode = m_below(m, 2) ? LM_SHARED : LM_EXCLUSIVE;
		a.timeout_ns = t < 3   ? 0
			       : t < 6 ? LM_FOREVER
				       : 1 + m_below(m, 200);
		a.ttl_ns = m_below(m, 3) == 0 ? 50 + m_below(m, 250) : 0;
		a.delay_ns = m_below(m, 4) == 0 ? 1 + m_below(m, 100) : 0;
		a.position_updates = m_below(m, 2);
		a.tag = ++m->tagseq;
		a.cluster = m->cl[res];

		blocked = m_blocked(m, res, a.mode);
		/* Free here, but the key does not admit it: it waits for the
		 * cluster, a try-once too. */
		ctry = !blocked && m_cshut(m, res, a.mode);
		if (m_find_owner_res(m, o, res))
			want = LM_ERR_ALREADY_HELD;
		else if (m->lim.max_leases_per_owner &&
			 m_owner_count(m, o) >=
			     (int)m->lim.max_leases_per_owner)
			want = LM_ERR_MAX_LEASES;
		else if (blocked && a.timeout_ns == 0)
			want = LM_ERR_WOULD_BLOCK;
		else if ((blocked || ctry) && m->lim.max_waiters_per_resource &&
			 m_count(m, res, false) >=
			     (int)m->lim.max_waiters_per_resource)
			want = LM_ERR_MAX_WAITERS;
		else if (!m_present(m, res) && m->lim.max_resources &&
			 (m_present(m, 0) + m_present(m, 1) +
			  m_present(m, 2)) >= (int)m->lim.max_resources)
			want = LM_ERR_MAX_RESOURCES;
		else if (!blocked && !ctry && m_has_token(m, res))
			want = LM_OK_GRANTED;
		else
			want = LM_OK_QUEUED;

		got = lockmgr_acquire(&lm, &owners[o], &a, m->now, &id);
		MCHECK(m, got == want, "acquire gave %d, model %d", got, want);
		if (got == LM_OK_GRANTED || got == LM_OK_QUEUED) {
			struct mreq *r = &m->live[m->nlive++];

			m_ids_add(m, id);
			m->issued++;
			m->new_id = id;
			memset(r, 0, sizeof *r);
			r->id = id;
			r->tag = a.tag;
			r->seq = ++m->seq;
			r->owner = o;
			r->res = res;
			r->mode = a.mode;
			r->watch = a.position_updates;
			r->t_queued = m->now;
			r->try_once = ctry && a.timeout_ns == 0;
			/* A try-once has no timer: the key's answer ends it. */
			r->deadline = r->try_once
					  ? LM_FOREVER
					  : m_after(m->now, a.timeout_ns);
			r->ttl = a.ttl_ns;
			r->delay = a.delay_ns;
			if (got == LM_OK_QUEUED && m->cl[res])
				m->dirty[res] = true; /* a request queued */
			m_events(m, owners);
			MCHECK(m,
			       r == m_find(m, id) &&
				   r->held == (got == LM_OK_GRANTED),
			       "acquire's own event missing");
			if (got == LM_OK_QUEUED && r->try_once) {
				MCHECK(m, r->last_pos == 0,
				       "a try-once was told it waits");
				m_cov[COV_C_TRY_ONCE]++;
			} else if (got == LM_OK_QUEUED)
				MCHECK(m, r->last_pos != 0, "no QUEUED");
		} else {
			size_t n;

			lockmgr_events(&lm, &n);
			MCHECK(m, n == 0, "refused acquire queued events");
		}
	} else if (roll < 55) {
		bool own;
		uint64_t id = m_pick_id(m, o, &own);
		int rc;

		m->op = OP_RELEASE;
		m->op_id = id;
		rc = lockmgr_release(&lm, &owners[o], id, false, m->now);
		MCHECK(m, rc == (own ? 0 : -ENOENT), "release rc %d", rc);
		m_events(m, owners);
		MCHECK(m, m_find(m, id) == NULL || !own, "release left it");
	} else if (roll < 63) {
		bool own;
		uint64_t id = m_pick_id(m, o, &own);
		struct mreq *r = m_find(m, id);
		uint64_t tag = r ? r->tag : (1ull << 50) + id;
		int rc;

		m->op = OP_CANCEL;
		m->op_id = id;
		rc = lockmgr_release(&lm, &owners[o], tag, true, m->now);
		MCHECK(m, rc == (own ? 0 : -ENOENT), "cancel rc %d", rc);
		m_events(m, owners);
	} else if (roll < 68) {
		uint64_t w = m_below(m, 10);

		m->op = OP_DROP;
		m->op_owner = o;
		m->op_why = w < 7   ? LM_END_DISCONNECT
			    : w < 9 ? LM_END_SHUTDOWN
				    : LM_END_ADMIN;
		lockmgr_drop_owner(&lm, &owners[o], m->op_why, m->now);
		m_events(m, owners);
		MCHECK(m, m_owner_count(m, o) == 0, "drop left requests");
	} else if (roll < 83) {
		m->op = OP_TICK;
		m->now += m_below(m, 150);
		for (int res = 0; res < M_RES; res++) {
			if (m->delayed[res] && m->delay_until[res] <= m->now)
				m->delayed[res] = false;
		}
		lockmgr_tick(&lm, m->now);
		m_events(m, owners);
	} else if (roll < 88) {
		bool own;
		uint64_t id = m_pick_id(m, o, &own);
		struct mreq *r = m_find(m, id);
		uint64_t ttl = m_below(m, 2) ? 0 : 30 + m_below(m, 200);
		int want, rc;
		size_t n;

		m->op = OP_RENEW;
		if (!own)
			want = -ENOENT;
		else if (!r->held || (r->ttl == 0 && ttl == 0))
			want = -EINVAL;
		else
			want = 0;
		rc = lockmgr_renew(&lm, &owners[o], id, ttl, m->now);
		MCHECK(m, rc == want, "renew rc %d, model %d", rc, want);
		if (want == 0) {
			if (ttl)
				r->ttl = ttl;
			r->deadline = m->now + r->ttl;
		}
		lockmgr_events(&lm, &n);
		MCHECK(m, n == 0, "renew queued events");
	} else if (roll < 91) {
		bool own;
		uint64_t id = m_pick_id(m, o, &own);
		struct mreq *r = m_find(m, id);
		int rc;

		m->op = OP_REVOKE;
		m->op_id = id;
		rc = lockmgr_revoke_lease(&lm, id, m->now);
		MCHECK(m, rc == (r && r->held ? 0 : -ENOENT), "revoke rc %d",
		       rc);
		m_events(m, owners);
	} else if (roll < 93) {
		static const uint32_t pids[] = {100, 200, 300, 999};
		int want = 0, rc;

		m->op = OP_REVOKE_PID;
		m->op_pid = pids[m_below(m, 4)];
		for (int i = 0; i < m->nlive; i++)
			want += m_pids[m->live[i].owner] == m->op_pid &&
				m->live[i].held;
		rc = lockmgr_revoke_pid(&lm, m->op_pid, m->now);
		MCHECK(m, rc == want, "revoke_pid gave %d, model %d", rc, want);
		m_events(m, owners);
		for (int i = 0; i < m->nlive; i++)
			MCHECK(m, m_pids[m->live[i].owner] != m->op_pid,
			       "revoke_pid left a request of the pid");
	} else if (roll < 97) {
		bool open = m_below(m, 3) != 0; /* open two times in three */

		m->op = OP_GATE;
		m->open = open;
		lockmgr_set_open(&lm, open, m->now);
		m_events(m, owners);
	} else if (roll < 100) {
		m->op = OP_TOKENS;
		if (m->limit != UINT64_MAX) {
			m->limit += m_below(m, 4);
			lockmgr_add_tokens(&lm, m->limit, m->now);
		} else {
			lockmgr_add_tokens(&lm, UINT64_MAX, m->now);
		}
		m_events(m, owners);
	} else if (roll < 112) {
		m_convert_step(m, owners, o);
	} else {
		m_cluster_step(m, owners, roll - 112);
	}

	lockmgr_events_done(&lm);
	m_check_state(m, owners);

	/* A dropped owner comes back as a new connection of the same pid. */
	if (m->op == OP_DROP) {
		lockmgr_owner_init(&owners[o], (uint64_t)o + 1);
		owners[o].pid = m_pids[o];
	}
}

static void
m_run(uint64_t seed, int steps)
{
	struct model *m = calloc(1, sizeof *m);
	struct lm_owner owners[M_OWNERS];

	cr_assert_not_null(m);
	m->seed = seed;
	m->rng = seed * 7919 + 1;
	m->open = true;
	m->limit = UINT64_MAX;
	m->ids_cap = 8192;
	m->ids = calloc(m->ids_cap, sizeof *m->ids);
	cr_assert_not_null(m->ids);
	cr_assert_lt(steps, (int)m->ids_cap / 2);

	lockmgr_init(&lm);
	for (int o = 0; o < M_OWNERS; o++) {
		lockmgr_owner_init(&owners[o], (uint64_t)o + 1);
		owners[o].pid = m_pids[o];
	}
	if (seed % 4 == 1) {
		m->lim = (struct lm_limits){.max_resources = 2,
					    .max_leases_per_owner = 2,
					    .max_waiters_per_resource = 2};
		lockmgr_set_limits(&lm, &m->lim);
	}
	if (seed % 3 == 2) {
		m->last_token = 1000;
		m->limit = 1002;
		lockmgr_set_tokens(&lm, m->last_token, m->limit);
	}
	/* Cluster resources: gamma in four seeds of five, beta in half of
	 * those; alpha always local. */
	m->cl[2] = seed % 5 != 0;
	m->cl[1] = seed % 5 != 0 && seed % 2 == 0;
	m->next_base = UINT64_C(1) << 62;
	m->until = 300;
	lockmgr_cluster_until(&lm, m->until);

	for (m->step = 0; m->step < steps; m->step++)
		m_step(m, owners);

	/* Wind down: unpin, open up, give tokens, drop everyone, let delays
	 * end. */
	m->step = steps;
	m->op = OP_C_PIN;
	for (int res = 0; res < M_RES; res++) {
		if (m->pinned[res]) {
			m->pinned[res] = false;
			lockmgr_cluster_pin(&lm, m_lres(res), NULL);
		}
	}
	lockmgr_events_done(&lm);
	m_check_state(m, owners);
	m->op = OP_GATE;
	m->new_id = 0;
	m->open = true;
	lockmgr_set_open(&lm, true, m->now);
	m_events(m, owners);
	lockmgr_events_done(&lm);
	m_check_state(m, owners);
	m->op = OP_TOKENS;
	m->limit = UINT64_MAX;
	lockmgr_add_tokens(&lm, UINT64_MAX, m->now);
	m_events(m, owners);
	lockmgr_events_done(&lm);
	m_check_state(m, owners);
	for (int o = 0; o < M_OWNERS; o++) {
		m->op = OP_DROP;
		m->op_owner = o;
		m->op_why = LM_END_DISCONNECT;
		lockmgr_drop_owner(&lm, &owners[o], LM_END_DISCONNECT, m->now);
		m_events(m, owners);
		lockmgr_events_done(&lm);
		m_check_state(m, owners);
	}
	m->op = OP_TICK;
	m->now += 1000;
	for (int res = 0; res < M_RES; res++)
		m->delayed[res] = false;
	lockmgr_tick(&lm, m->now);
	m_events(m, owners);
	lockmgr_events_done(&lm);
	m_check_state(m, owners);

	MCHECK(m, m->nlive == 0, "requests left");
	MCHECK(m, m->issued == m->ended,
	       "%" PRIu64 " issued, %" PRIu64 " ended", m->issued, m->ended);
	MCHECK(m,
	       lm.nres == 0 && lm.nheld == 0 && lm.nwaiting == 0 &&
		   lm.nconverting == 0,
	       "manager not empty");
	MCHECK(m, lockmgr_next_deadline(&lm) == LM_FOREVER, "timers left");
	MCHECK(m, !m->busy, "still busy");

	lockmgr_free(&lm);
	free(m->ids);
	free(m);
}

/* The model test owns its manager, so it skips the fixture. */
/* LOCKMGR_MODEL_SEEDS runs more seeds than the default, for a long soak. */
Test(lockmgr_model, random_operations_keep_every_invariant, .timeout = 600)
{
	static const char *const cov_names[COV_N] = {
	    [COV_DONE_UP] = "done_up",
	    [COV_DONE_DOWN] = "done_down",
	    [COV_DONE_SAME] = "done_same",
	    [COV_WAITING] = "waiting",
	    [COV_ERR_UNKNOWN] = "err_unknown",
	    [COV_ERR_NOT_HELD] = "err_not_held",
	    [COV_ERR_PENDING] = "err_pending",
	    [COV_ERR_WOULD_BLOCK] = "err_would_block",
	    [COV_ERR_DEADLOCK] = "err_deadlock",
	    [COV_ERR_CLUSTER] = "err_cluster",
	    [COV_UP_AFTER_WAIT] = "up_after_wait",
	    [COV_CONV_TIMEOUT] = "conv_timeout",
	    [COV_CONV_CANCEL] = "conv_cancel",
	    [COV_CONV_WITH_LEASE] = "conv_with_lease",
	    [COV_DOWN_GRANTS] = "down_grants",
	    [COV_C_GRANT_SHARED_KEY] = "c_grant_shared_key",
	    [COV_C_GRANT_ALL_KEY] = "c_grant_all_key",
	    [COV_C_UPGRADE] = "c_upgrade",
	    [COV_C_TRY_ONCE] = "c_try_once",
	    [COV_C_PAST_DEADLINE] = "c_past_deadline",
	    [COV_C_NEW_KEY] = "c_new_key",
	    [COV_C_REVOKED] = "c_revoked",
	    [COV_C_END_TRIES] = "c_end_tries",
	    [COV_C_PINNED_EMPTY] = "c_pinned_empty",
	};

	const char *env = getenv("LOCKMGR_MODEL_SEEDS");
	uint64_t seeds = env ? strtoull(env, NULL, 10) : M_SEEDS;

	if (seeds == 0)
		seeds = M_SEEDS;
	memset(m_cov, 0, sizeof m_cov);
	for (uint64_t seed = 1; seed <= seeds; seed++)
		m_run(seed, M_STEPS);
	cr_log_info("model: %" PRIu64 " seeds of %d steps", seeds, M_STEPS);
	for (int k = 0; k < COV_N; k++) {
		cr_log_info("model: %s %" PRIu64, cov_names[k], m_cov[k]);
		cr_expect_gt(m_cov[k], 0, "the walk never reached %s",
			     cov_names[k]);
	}
}
