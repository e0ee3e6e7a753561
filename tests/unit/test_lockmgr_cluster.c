/*
 * Unit tests for the cluster part of the lease state machine
 * (arbiter/lockmgr.c): resources whose grants follow the host's cluster key.
 *
 * The caller (the daemon's cluster module) tells the manager what the key
 * allows (lockmgr_cluster_own / _shut / _revoke), until when the session
 * lets it grant (lockmgr_cluster_until), and reads which resources' demand
 * moved (lockmgr_cluster_next_dirty). These tests play that caller with
 * plain clock numbers and read the events, as tests/unit/test_lockmgr.c
 * does for local resources; its randomized model test covers the cluster
 * calls mixed with everything else.
 */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "lockmgr.h"

#define NOWNERS 6

/* Key token bases as the daemon makes them: above every local token. */
#define BASE1 ((UINT64_C(1) << 62) + (UINT64_C(7) << 20))
#define BASE2 ((UINT64_C(1) << 62) + (UINT64_C(9) << 20))

/* Session deadline far in the future, for tests not about it. */
#define LATER UINT64_C(1000000000)

static struct lockmgr lm;
static struct lm_owner ow[NOWNERS];

static void
setup(void)
{
	lockmgr_init(&lm);
	lockmgr_cluster_until(&lm, LATER);
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

TestSuite(lockmgr_cluster, .init = setup, .fini = teardown);

/* ------------------------------------------------------------ helpers */

static struct lm_acquire
creq(const char *name, enum lm_mode mode, uint64_t timeout_ns, bool cluster)
{
	struct lm_acquire a;

	memset(&a, 0, sizeof a);
	a.resource = name;
	a.len = strlen(name);
	a.mode = mode;
	a.timeout_ns = timeout_ns;
	a.cluster = cluster;
	return a;
}

static enum lm_result
cacq(struct lm_owner *o, const char *name, enum lm_mode mode,
     uint64_t timeout_ns, uint64_t now, uint64_t *id)
{
	struct lm_acquire a = creq(name, mode, timeout_ns, true);

	return lockmgr_acquire(&lm, o, &a, now, id);
}

static uint64_t
must_cgrant(struct lm_owner *o, const char *name, enum lm_mode mode,
	    uint64_t now)
{
	uint64_t id = 0;
	enum lm_result r = cacq(o, name, mode, LM_FOREVER, now, &id);

	cr_assert_eq(r, LM_OK_GRANTED, "%s on %s: result %d, want GRANTED",
		     lockmgr_mode_name(mode), name, r);
	return id;
}

static uint64_t
must_cqueue(struct lm_owner *o, const char *name, enum lm_mode mode,
	    uint64_t timeout_ns, uint64_t now)
{
	uint64_t id = 0;
	enum lm_result r = cacq(o, name, mode, timeout_ns, now, &id);

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

static const struct lm_event *
find_ev(enum lm_ev_kind kind, uint64_t lease_id, bool convert)
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
must_find(enum lm_ev_kind kind, uint64_t lease_id)
{
	const struct lm_event *e = find_ev(kind, lease_id, false);

	cr_assert_not_null(e, "no event of kind %d for lease %" PRIu64, kind,
			   lease_id);
	return e;
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

static struct lm_res *
must_res(const char *name)
{
	struct lm_res *res = find_res(name);

	cr_assert_not_null(res, "resource %s is gone", name);
	return res;
}

static uint64_t
token_of(uint64_t id)
{
	const struct lm_req *r = lockmgr_lease(&lm, id);

	cr_assert_not_null(r, "lease %" PRIu64 " is gone", id);
	cr_assert_eq(r->state, LM_HELD, "lease %" PRIu64 " not held", id);
	return r->token;
}

/* Pop every dirty resource; how many times res came out. */
static int
pop_dirty(const struct lm_res *res)
{
	struct lm_res *d;
	int n = 0;

	while ((d = lockmgr_cluster_next_dirty(&lm)) != NULL)
		n += d == res;
	return n;
}

static enum lm_conv_result
conv(struct lm_owner *o, uint64_t id, enum lm_mode mode, uint64_t timeout_ns,
     uint64_t now)
{
	struct lm_convert c = {
	    .lease_id = id, .mode = mode, .timeout_ns = timeout_ns, .tag = 9};

	return lockmgr_convert(&lm, o, &c, now);
}

/* ------------------------------------------------------------ the gate */

Test(lockmgr_cluster, closed_gate_queues_and_grants_nothing)
{
	uint64_t w = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");
	const struct lm_event *e = must_find(LM_EV_QUEUED, w);

	cr_assert(res->cluster);
	cr_assert_eq(res->cgate, LM_GATE_CLOSED, "a new key gate is shut");
	cr_assert_eq(e->position, 1);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(!lockmgr_lease(&lm, w)->try_once);
	done();

	/* Behind a waiter a try-once is refused as for a local resource. */
	{
		uint64_t id = 0;

		cr_assert_eq(cacq(&ow[1], "c", LM_SHARED, 0, 2, &id),
			     LM_ERR_WOULD_BLOCK);
		cr_assert_eq(nev(), 0);
	}
	/* Nothing that moves the queue grants while the gate is shut. */
	must_cqueue(&ow[2], "c", LM_EXCLUSIVE, LM_FOREVER, 3);
	lockmgr_tick(&lm, 100);
	lockmgr_set_open(&lm, false, 101);
	lockmgr_set_open(&lm, true, 102);
	lockmgr_cluster_shut(&lm, res);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(is_waiting(w));
	cr_assert_eq(lm.nheld, 0);
}

Test(lockmgr_cluster, try_once_on_a_free_resource_waits_quietly_for_the_key)
{
	struct lm_acquire a = creq("t", LM_EXCLUSIVE, 0, true);
	uint64_t t = 0, n;
	const struct lm_req *r;

	/* Asked for position updates too: still no QUEUED, the cluster's
	 * answer (granted or busy) is its only one. */
	a.position_updates = true;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 5, &t), LM_OK_QUEUED);
	r = lockmgr_lease(&lm, t);
	cr_assert_not_null(r);
	cr_assert(r->try_once);
	cr_assert_eq(r->state, LM_WAITING);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 0, "a try-once is not told");
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER,
		     "a try-once has no timeout of its own");
	done();

	/* A non-try request with a timeout on another free resource waits
	 * with a QUEUED event and its timer. */
	n = must_cqueue(&ow[1], "u", LM_SHARED, 50, 10);
	cr_assert(!lockmgr_lease(&lm, n)->try_once);
	cr_assert_eq(must_find(LM_EV_QUEUED, n)->position, 1);
	cr_assert_eq(lockmgr_next_deadline(&lm), 60);

	/* The key owns: the try-once is granted after all. */
	done();
	lockmgr_cluster_own(&lm, must_res("t"), LM_GATE_ALL, BASE1, 20);
	cr_assert(is_held(t));
	cr_assert_eq(must_find(LM_EV_GRANTED, t)->token, BASE1 + 1);
	cr_assert(!must_find(LM_EV_GRANTED, t)->immediate);
}

Test(lockmgr_cluster, shared_gate_grants_shared_heads_and_stops_at_exclusive)
{
	uint64_t s1 = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	uint64_t s2 = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 2);
	uint64_t x3 = must_cqueue(&ow[2], "c", LM_EXCLUSIVE, LM_FOREVER, 3);
	uint64_t s4 = must_cqueue(&ow[3], "c", LM_SHARED, LM_FOREVER, 4);
	uint64_t s5, x;
	struct lm_res *res = must_res("c");

	done();
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 10);
	cr_assert(is_held(s1) && is_held(s2));
	cr_assert_eq(token_of(s1), BASE1 + 1);
	cr_assert_eq(token_of(s2), BASE1 + 2);
	cr_assert(is_waiting(x3), "a shared key grants no exclusive lease");
	cr_assert(is_waiting(s4), "nothing jumps the exclusive head");
	cr_assert_eq(count_kind(LM_EV_GRANTED), 2);
	done();

	/* A new shared request waits behind the queue (FIFO); an exclusive
	 * one on the resource waits too, the key being shared. */
	s5 = must_cqueue(&ow[4], "c", LM_SHARED, LM_FOREVER, 11);
	cr_assert_eq(must_find(LM_EV_QUEUED, s5)->position, 3);
	done();

	/* The holders leave: still a shared key, still nothing granted. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], s1, false, 12), 0);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], s2, false, 13), 0);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	cr_assert(is_waiting(x3));
	done();

	/* An exclusive key: x3 alone, then s4 and s5 together. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 14);
	cr_assert(is_held(x3) && is_waiting(s4) && is_waiting(s5));
	cr_assert_eq(token_of(x3), BASE1 + 3, "same key: tokens go on");
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[2], x3, false, 15), 0);
	cr_assert(is_held(s4) && is_held(s5));
	cr_assert_eq(token_of(s4), BASE1 + 4);
	cr_assert_eq(token_of(s5), BASE1 + 5);
	done();

	/* Back to a shared key with shared holders: a new shared request
	 * joins them at once, an exclusive one waits. */
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 16);
	cr_assert_eq(token_of(must_cgrant(&ow[0], "c", LM_SHARED, 17)),
		     BASE1 + 6);
	x = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 18);
	cr_assert(is_waiting(x));
}

Test(lockmgr_cluster, all_gate_grants_as_a_local_resource)
{
	uint64_t w = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");
	uint64_t x2, s3;
	const struct lm_event *e;

	lockmgr_cluster_pin(&lm, res, &lm); /* kept between leases */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	cr_assert(is_held(w));
	done();

	/* Conflicting requests queue behind the holder with QUEUED, are
	 * granted in order as it leaves. */
	x2 = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 3);
	s3 = must_cqueue(&ow[2], "c", LM_SHARED, LM_FOREVER, 4);
	e = must_find(LM_EV_QUEUED, s3);
	cr_assert_eq(e->position, 2);
	cr_assert_eq(e->holder, &ow[0]);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], w, false, 5), 0);
	cr_assert(is_held(x2) && is_waiting(s3));
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], x2, false, 6), 0);
	cr_assert(is_held(s3));
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[2], s3, false, 7), 0);
	done();

	/* Free and owned: granted at once, immediate, with the key's
	 * token; a try-once as well. */
	{
		uint64_t id = 0;

		cr_assert_eq(cacq(&ow[3], "c", LM_EXCLUSIVE, 0, 8, &id),
			     LM_OK_GRANTED);
		e = must_find(LM_EV_GRANTED, id);
		cr_assert(e->immediate);
		cr_assert_eq(e->token, BASE1 + 4);
		cr_assert_eq(count_kind(LM_EV_QUEUED), 0);
	}
}

/* ------------------------------------------------------------ deadline */

Test(lockmgr_cluster, nothing_granted_at_or_after_the_session_deadline)
{
	uint64_t h, w, t = 0, late;
	struct lm_res *res;

	lockmgr_cluster_until(&lm, 100);
	h = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 1);
	res = must_res("c");
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 99);
	cr_assert(is_held(h), "granted one ns before the deadline");
	w = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 99);
	done();

	/* At the deadline the queue does not move, the gate open. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 100), 0);
	cr_assert(is_waiting(w));
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	done();
	/* Nor after it, whatever the key says. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 150);
	cr_assert(is_waiting(w));
	cr_assert_eq(nev(), 0);

	/* A request on a free owned resource past the deadline waits for
	 * the cluster: a try-once quietly. */
	cr_assert_eq(cacq(&ow[2], "d", LM_SHARED, 0, 151, &t), LM_OK_QUEUED);
	cr_assert(lockmgr_lease(&lm, t)->try_once);
	lockmgr_cluster_own(&lm, must_res("d"), LM_GATE_ALL, BASE2, 152);
	cr_assert(is_waiting(t));
	done();

	/* The deadline moves later: the next grant pass grants. */
	lockmgr_cluster_until(&lm, 1000);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 200);
	cr_assert(is_held(w));
	cr_assert_eq(token_of(w), BASE1 + 2);
	lockmgr_cluster_own(&lm, must_res("d"), LM_GATE_ALL, BASE2, 200);
	cr_assert(is_held(t));
	done();

	/* Until 0: no session, no grant at any time. */
	lockmgr_cluster_until(&lm, 0);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w, false, 300), 0);
	late = must_cqueue(&ow[3], "c", LM_SHARED, LM_FOREVER, 301);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 302);
	cr_assert(is_waiting(late));
}

Test(lockmgr_cluster, a_waiting_upgrade_is_not_granted_past_the_deadline)
{
	uint64_t a = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	uint64_t b = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");

	lockmgr_cluster_until(&lm, 100);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	cr_assert(is_held(a) && is_held(b));
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, LM_FOREVER, 3),
		     LM_CONV_WAITING);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], b, false, 100), 0);
	cr_assert_null(find_ev(LM_EV_GRANTED, a, true));
	cr_assert(lockmgr_lease(&lm, a)->converting);
	cr_assert_eq(lockmgr_lease(&lm, a)->mode, LM_SHARED);
	done();
	/* Nor when the key is granted again past it. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 101);
	cr_assert_eq(nev(), 0);
	/* The deadline moves on: the next grant pass upgrades it. */
	lockmgr_cluster_until(&lm, 1000);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 102);
	cr_assert_not_null(find_ev(LM_EV_GRANTED, a, true));
	cr_assert_eq(token_of(a), BASE1 + 3);
}

/* ------------------------------------------------------------ tokens */

Test(lockmgr_cluster, tokens_count_from_the_key_base_and_restart_with_a_new_key)
{
	struct lm_res *res;
	uint64_t a, b, c, l1, l2;

	lockmgr_set_tokens(&lm, 1000, UINT64_MAX);
	a = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	res = must_res("c");
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 2);
	b = must_cgrant(&ow[1], "c", LM_SHARED, 3);
	cr_assert_eq(token_of(a), BASE1 + 1);
	cr_assert_eq(token_of(b), BASE1 + 2);
	cr_assert_eq(lm.last_token, 1000, "key tokens leave the counter be");
	cr_assert_eq(res->ctoken_n, 2);

	/* Local grants take the daemon's counter, below every key token. */
	l1 = must_cgrant(&ow[2], "c", LM_SHARED, 4);
	{
		struct lm_acquire la = creq("local", LM_EXCLUSIVE, 0, false);

		cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &la, 4, &l2),
			     LM_OK_GRANTED);
	}
	cr_assert_eq(token_of(l1), BASE1 + 3);
	cr_assert_eq(token_of(l2), 1001);
	cr_assert_lt(token_of(l2), BASE1);
	cr_assert_eq(res->ctoken_n, 3, "a local grant uses no key token");

	/* Re-owning under the same key goes on counting. */
	lockmgr_cluster_shut(&lm, res);
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 5);
	c = must_cgrant(&ow[3], "c", LM_SHARED, 6);
	cr_assert_eq(token_of(c), BASE1 + 4);

	/* A new key restarts at its base. */
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE2, 7);
	cr_assert_eq(res->ctoken_n, 0);
	c = must_cgrant(&ow[4], "c", LM_SHARED, 8);
	cr_assert_eq(token_of(c), BASE2 + 1);
	cr_assert_eq(lm.last_token, 1001);
}

Test(lockmgr_cluster, a_key_used_up_stops_granting_and_marks_the_resource)
{
	uint64_t id = 0, last, w;
	struct lm_res *res;
	const struct lm_event *e;

	w = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 0);
	res = must_res("c");
	lockmgr_cluster_pin(&lm, res, &lm);
	cr_assert_eq(lockmgr_release(&lm, &ow[0], w, false, 0), 0);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 0);
	done();
	/* Grants base + 1 .. base + LM_CLUSTER_GRANTS - 1, each at once. */
	for (uint64_t i = 1; i < LM_CLUSTER_GRANTS; i++) {
		cr_assert_eq(cacq(&ow[0], "c", LM_EXCLUSIVE, 0, i, &id),
			     LM_OK_GRANTED, "grant %" PRIu64, i);
		cr_assert_eq(lm.ev[0].token, BASE1 + i);
		lockmgr_release(&lm, &ow[0], id, false, i);
		done();
	}
	pop_dirty(res);

	/* The last token of the key marks it for the caller to re-key. */
	last = must_cgrant(&ow[0], "c", LM_EXCLUSIVE, LM_CLUSTER_GRANTS);
	cr_assert_eq(token_of(last), BASE1 + LM_CLUSTER_GRANTS);
	cr_assert_lt(token_of(last), BASE1 + (UINT64_C(1) << 20),
		     "a key's tokens stay below the next key's base");
	cr_assert_eq(pop_dirty(res), 1, "used up, and not told");
	cr_assert_eq(lockmgr_release(&lm, &ow[0], last, false, 0), 0);
	done();

	/* Used up: nothing more is granted under it, the gate open. */
	cr_assert_eq(cacq(&ow[1], "c", LM_EXCLUSIVE, 0, 1, &id), LM_OK_QUEUED);
	cr_assert(lockmgr_lease(&lm, id)->try_once);
	w = must_cqueue(&ow[2], "c", LM_SHARED, LM_FOREVER, 2);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 3);
	cr_assert(is_waiting(id) && is_waiting(w));
	done();

	/* A new key grants again from its base. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE2, 4);
	e = must_find(LM_EV_GRANTED, id);
	cr_assert_eq(e->token, BASE2 + 1);
	cr_assert(is_waiting(w));
}

/* ------------------------------------------------------------ revoke */

Test(lockmgr_cluster, revoke_ends_every_holder_and_keeps_the_waiters)
{
	struct lm_acquire wa = creq("c", LM_EXCLUSIVE, LM_FOREVER, true);
	uint64_t s1 = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	uint64_t s2 = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 2);
	uint64_t x3, s4;
	struct lm_res *res = must_res("c");
	const struct lm_event *e;

	wa.position_updates = true;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &wa, 3, &x3), LM_OK_QUEUED);
	s4 = must_cqueue(&ow[3], "c", LM_SHARED, LM_FOREVER, 4);
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 5);
	cr_assert(is_held(s1) && is_held(s2) && is_waiting(x3));
	done();
	pop_dirty(res);

	cr_assert_eq(lockmgr_cluster_revoke(&lm, res, LM_END_CLUSTER_LOST, 10),
		     2);
	cr_assert_eq(count_kind(LM_EV_ENDED), 2);
	e = must_find(LM_EV_ENDED, s1);
	cr_assert(e->held);
	cr_assert_eq(e->end, LM_END_CLUSTER_LOST);
	cr_assert_eq(e->token, BASE1 + 1);
	cr_assert_eq(e->held_ns, 5);
	e = must_find(LM_EV_ENDED, s2);
	cr_assert(e->held);
	cr_assert_eq(e->end, LM_END_CLUSTER_LOST);
	cr_assert_eq(lm.nheld, 0);
	cr_assert_eq(res->nholders, 0);
	cr_assert_eq(res->cgate, LM_GATE_CLOSED, "revoke shuts the gate");
	cr_assert(is_waiting(x3) && is_waiting(s4), "waiters stay queued");
	cr_assert_eq(lm.nwaiting, 2);
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0,
		     "nothing granted in the holders' place");
	/* The watcher at the head hears that the holders are gone. */
	e = must_find(LM_EV_QUEUED, x3);
	cr_assert_eq(e->nholders, 0);
	cr_assert_null(e->holder);
	cr_assert_eq(pop_dirty(res), 1);
	done();
	cr_assert_not_null(find_res("c"));

	/* Revoking again ends nothing; a new key grants the waiters. */
	cr_assert_eq(lockmgr_cluster_revoke(&lm, res, LM_END_CLUSTER_LOST, 11),
		     0);
	cr_assert_eq(nev(), 0);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE2, 12);
	cr_assert(is_held(x3));
	cr_assert_eq(token_of(x3), BASE2 + 1);
}

Test(lockmgr_cluster, revoke_ends_a_waiting_upgrade_before_its_lease)
{
	uint64_t a = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	uint64_t b = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");
	const struct lm_event *ce, *le;
	size_t n;

	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, 500, 3), LM_CONV_WAITING);
	done();
	cr_assert_eq(lockmgr_cluster_revoke(&lm, res, LM_END_CLUSTER_LOST, 4),
		     2);
	ce = find_ev(LM_EV_ENDED, a, true);
	le = find_ev(LM_EV_ENDED, a, false);
	cr_assert_not_null(ce);
	cr_assert_not_null(le);
	cr_assert_eq(ce->end, LM_END_CLUSTER_LOST);
	cr_assert_lt(ce, le, "the upgrade ends first");
	cr_assert_eq(le->end, LM_END_CLUSTER_LOST);
	cr_assert_not_null(find_ev(LM_EV_ENDED, b, false));
	cr_assert_eq(lm.nconverting, 0);
	cr_assert_null(res->converting);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER,
		     "the upgrade's timer went with it");
	/* Nothing left and not pinned: the resource goes. */
	lockmgr_events(&lm, &n);
	cr_assert_eq(lm.ev[n - 1].kind, LM_EV_IDLE);
	done();
	cr_assert_null(find_res("c"));
}

Test(lockmgr_cluster, revoke_of_a_lease_with_lock_delay_does_not_delay)
{
	struct lm_acquire a = creq("c", LM_EXCLUSIVE, LM_FOREVER, true);
	uint64_t h, w;
	struct lm_res *res;

	a.delay_ns = 1000;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 1, &h), LM_OK_QUEUED);
	res = must_res("c");
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	w = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 3);
	cr_assert_eq(lockmgr_cluster_revoke(&lm, res, LM_END_CLUSTER_LOST, 4),
		     1);
	cr_assert_eq(lockmgr_next_deadline(&lm), LM_FOREVER);
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE2, 5);
	cr_assert(is_held(w), "a cluster loss is no unclean end here");
}

/* ------------------------------------------------------------ waiters */

Test(lockmgr_cluster, end_waiters_ends_only_try_once_requests_when_asked)
{
	uint64_t t = 0, n, h;
	struct lm_res *res;
	const struct lm_event *e;

	cr_assert_eq(cacq(&ow[0], "c", LM_EXCLUSIVE, 0, 1, &t), LM_OK_QUEUED);
	n = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 2);
	res = must_res("c");
	done();

	cr_assert_eq(
	    lockmgr_cluster_end_waiters(&lm, res, LM_END_BUSY, true, 5), 1);
	e = must_find(LM_EV_ENDED, t);
	cr_assert(!e->held);
	cr_assert_eq(e->end, LM_END_BUSY);
	cr_assert_eq(e->waited_ns, 4);
	cr_assert(is_waiting(n), "a waiter that may wait stays");
	cr_assert_eq(lm.nwaiting, 1);
	cr_assert_eq(count_kind(LM_EV_ENDED), 1);
	done();

	/* Nothing to end: no event. */
	cr_assert_eq(
	    lockmgr_cluster_end_waiters(&lm, res, LM_END_BUSY, true, 6), 0);
	cr_assert_eq(nev(), 0);

	/* All of them, holders untouched. */
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 7);
	cr_assert(is_held(n));
	h = must_cqueue(&ow[2], "c", LM_EXCLUSIVE, LM_FOREVER, 8);
	done();
	cr_assert_eq(
	    lockmgr_cluster_end_waiters(&lm, res, LM_END_UNAVAILABLE, false, 9),
	    1);
	cr_assert_eq(must_find(LM_EV_ENDED, h)->end, LM_END_UNAVAILABLE);
	cr_assert(is_held(n));
	cr_assert_eq(lm.nwaiting, 0);
}

Test(lockmgr_cluster, ending_a_try_once_head_lets_the_queue_behind_through)
{
	uint64_t x = 0, s1, s2;
	struct lm_res *res;

	/* A shared key, nobody holding: an exclusive try-once waits at the
	 * head for the cluster's answer, shared requests behind it. */
	s1 = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	res = must_res("c");
	lockmgr_cluster_pin(&lm, res, &lm);
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 2);
	cr_assert_eq(lockmgr_release(&lm, &ow[0], s1, false, 3), 0);
	done();
	cr_assert_eq(cacq(&ow[1], "c", LM_EXCLUSIVE, 0, 4, &x), LM_OK_QUEUED);
	cr_assert(lockmgr_lease(&lm, x)->try_once);
	s2 = must_cqueue(&ow[2], "c", LM_SHARED, LM_FOREVER, 5);
	done();

	/* The key will not do: the try-once is busy, and the shared request
	 * behind it is granted in the same call. */
	cr_assert_eq(
	    lockmgr_cluster_end_waiters(&lm, res, LM_END_BUSY, true, 6), 1);
	cr_assert_eq(must_find(LM_EV_ENDED, x)->end, LM_END_BUSY);
	cr_assert(is_held(s2));
	cr_assert_eq(token_of(s2), BASE1 + 2);
}

/* ------------------------------------------------------------ shut */

Test(lockmgr_cluster, shut_stops_new_grants_and_keeps_the_holders)
{
	uint64_t h, w, s;
	struct lm_res *res;

	h = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	res = must_res("c");
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	cr_assert(is_held(h));
	w = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 3);
	done();

	/* Yielding: the holder stays, nothing new is granted. */
	lockmgr_cluster_shut(&lm, res);
	cr_assert_eq(res->cgate, LM_GATE_CLOSED);
	cr_assert_eq(nev(), 0);
	cr_assert(is_held(h));
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 4), 0);
	cr_assert(is_waiting(w), "granted after the key was shut");
	cr_assert_eq(count_kind(LM_EV_GRANTED), 0);
	done();
	{
		uint64_t t = 0;

		/* Behind a waiter a try-once is refused; a new request waits.
		 */
		cr_assert_eq(cacq(&ow[2], "c", LM_SHARED, 0, 5, &t),
			     LM_ERR_WOULD_BLOCK);
	}
	s = must_cqueue(&ow[2], "c", LM_SHARED, LM_FOREVER, 5);
	cr_assert(is_waiting(s));

	/* The key owns again (a new one): the queue moves. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE2, 6);
	cr_assert(is_held(w) && is_waiting(s));
	cr_assert_eq(token_of(w), BASE2 + 1);
}

/* ------------------------------------------------------------ pin */

Test(lockmgr_cluster, pin_keeps_an_empty_resource_and_unpin_frees_it)
{
	static int ext;
	uint64_t w = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");

	lockmgr_cluster_pin(&lm, res, &ext);
	cr_assert_eq(lockmgr_release(&lm, &ow[0], w, false, 2), 0);
	done();
	cr_assert_eq(find_res("c"), res, "pinned: kept while empty");
	cr_assert_eq(res->ext, &ext);
	cr_assert_eq(lm.nres, 1);
	done();
	cr_assert_eq(find_res("c"), res);

	/* A request on it finds the same resource, key state and all. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 3);
	w = must_cgrant(&ow[1], "c", LM_EXCLUSIVE, 4);
	cr_assert_eq(token_of(w), BASE1 + 1);
	cr_assert_eq(lockmgr_release(&lm, &ow[1], w, false, 5), 0);
	done();

	/* Unpinned while empty: freed at the next events_done. */
	lockmgr_cluster_pin(&lm, res, NULL);
	cr_assert_not_null(find_res("c"), "freed only at events_done");
	done();
	cr_assert_null(find_res("c"));
	cr_assert_eq(lm.nres, 0);
}

Test(lockmgr_cluster, unpin_of_a_resource_in_use_keeps_it_until_empty)
{
	static int ext;
	uint64_t w = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");

	lockmgr_cluster_pin(&lm, res, &ext);
	lockmgr_cluster_pin(&lm, res, NULL);
	done();
	cr_assert_eq(find_res("c"), res, "a waiter keeps it");
	cr_assert_eq(lockmgr_release(&lm, &ow[0], w, false, 2), 0);
	done();
	cr_assert_null(find_res("c"));
}

/* ------------------------------------------------------------ demand */

Test(lockmgr_cluster, every_change_of_demand_marks_the_resource_once)
{
	struct lm_acquire a;
	uint64_t w1, w2, h, s, id;
	struct lm_res *res;

	cr_assert_null(lockmgr_cluster_next_dirty(&lm));

	/* Queued. */
	w1 = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 1);
	res = must_res("c");
	lockmgr_cluster_pin(&lm, res, &lm);
	cr_assert_eq(lockmgr_cluster_next_dirty(&lm), res);
	cr_assert_null(lockmgr_cluster_next_dirty(&lm), "popped once");

	/* Two changes before the caller looks: told once. */
	w2 = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, 100, 2);
	s = must_cqueue(&ow[2], "c", LM_SHARED, LM_FOREVER, 3);
	cr_assert_eq(pop_dirty(res), 1);

	/* Cancelled. */
	cr_assert_eq(lockmgr_release(&lm, &ow[0], w1, false, 4), 0);
	cr_assert_eq(pop_dirty(res), 1, "cancel");
	/* Timed out. */
	lockmgr_tick(&lm, 102);
	cr_assert_null(lockmgr_lease(&lm, w2));
	cr_assert_eq(pop_dirty(res), 1, "timeout");
	done();

	/* A grant under the key is no change of demand; a release is. */
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 110);
	cr_assert(is_held(s));
	cr_assert_eq(pop_dirty(res), 0, "a grant moves no demand");
	h = must_cgrant(&ow[3], "c", LM_SHARED, 111);
	cr_assert_eq(pop_dirty(res), 0, "an immediate grant neither");
	cr_assert_eq(lockmgr_release(&lm, &ow[3], h, false, 112), 0);
	cr_assert_eq(pop_dirty(res), 1, "release");

	/* Disconnect. */
	h = must_cgrant(&ow[4], "c", LM_SHARED, 113);
	pop_dirty(res);
	lockmgr_drop_owner(&lm, &ow[4], LM_END_DISCONNECT, 114);
	cr_assert_eq(pop_dirty(res), 1, "disconnect");
	cr_assert_null(lockmgr_lease(&lm, h));

	/* An upgrade asked for, waiting for another local holder. */
	h = must_cgrant(&ow[4], "c", LM_SHARED, 115);
	pop_dirty(res);
	cr_assert_eq(conv(&ow[2], s, LM_EXCLUSIVE, LM_FOREVER, 116),
		     LM_CONV_WAITING);
	cr_assert_eq(pop_dirty(res), 1, "upgrade asked");
	cr_assert_eq(lockmgr_release(&lm, &ow[4], h, false, 117), 0);
	cr_assert(lockmgr_lease(&lm, s)->mode == LM_EXCLUSIVE);
	cr_assert_eq(pop_dirty(res), 1, "release under the upgrade");

	/* Local resources are never marked. */
	a = creq("local", LM_EXCLUSIVE, LM_FOREVER, false);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 118, &id), LM_OK_GRANTED);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 118, &id), LM_OK_QUEUED);
	lockmgr_release(&lm, &ow[1], id, false, 119);
	cr_assert_null(lockmgr_cluster_next_dirty(&lm));
}

Test(lockmgr_cluster, a_dirty_resource_freed_leaves_the_dirty_list)
{
	uint64_t w = must_cqueue(&ow[0], "c", LM_EXCLUSIVE, LM_FOREVER, 1);

	cr_assert_eq(lockmgr_release(&lm, &ow[0], w, false, 2), 0);
	done();
	cr_assert_null(find_res("c"));
	cr_assert_null(lockmgr_cluster_next_dirty(&lm),
		       "no freed resource handed out");
}

/* ------------------------------------------------------------ upgrades */

Test(lockmgr_cluster, upgrade_under_a_shared_key_is_refused)
{
	uint64_t a = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");

	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 2);
	cr_assert(is_held(a));
	done();
	pop_dirty(res);
	/* Alone here, yet other hosts may hold it shared. */
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, LM_FOREVER, 3),
		     LM_CONV_ERR_CLUSTER);
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, 0, 3), LM_CONV_ERR_CLUSTER);
	cr_assert_eq(nev(), 0);
	cr_assert_eq(lockmgr_lease(&lm, a)->mode, LM_SHARED);
	cr_assert(!lockmgr_lease(&lm, a)->converting);
	cr_assert_null(lockmgr_cluster_next_dirty(&lm), "nothing changed");
	/* The same under a shut gate (the key yielding). */
	lockmgr_cluster_shut(&lm, res);
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, LM_FOREVER, 4),
		     LM_CONV_ERR_CLUSTER);
}

Test(lockmgr_cluster, upgrade_under_an_exclusive_key_takes_a_key_token)
{
	uint64_t a = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	uint64_t b = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 1);
	struct lm_res *res = must_res("c");
	const struct lm_event *e;

	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	cr_assert_eq(token_of(b), BASE1 + 2);
	done();
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, 0, 3),
		     LM_CONV_ERR_WOULD_BLOCK);
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, LM_FOREVER, 3),
		     LM_CONV_WAITING);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], b, false, 4), 0);
	e = find_ev(LM_EV_GRANTED, a, true);
	cr_assert_not_null(e);
	cr_assert_eq(e->token, BASE1 + 3);
	cr_assert(!e->immediate);
	done();

	/* Down and up again alone: at once, a new key token. */
	cr_assert_eq(conv(&ow[0], a, LM_SHARED, 0, 5), LM_CONV_DONE);
	cr_assert_eq(token_of(a), BASE1 + 3, "a downgrade keeps the token");
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, 0, 6), LM_CONV_DONE);
	cr_assert_eq(token_of(a), BASE1 + 4);
	cr_assert_eq(lm.last_token, 0, "the daemon's counter is untouched");
}

/* ------------------------------------------------------------ local tokens */

/* The daemon's token counter stalls while it reserves more; key tokens need
 * no reservation, so a cluster resource grants on regardless. */
Test(lockmgr_cluster, key_grants_do_not_wait_for_local_tokens)
{
	uint64_t h, x, s;
	struct lm_res *res;
	const struct lm_event *e;

	lockmgr_set_tokens(&lm, 10, 10);
	h = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	res = must_res("c");
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 2);
	cr_assert(is_held(h));
	done();

	/* Granted at once, not queued first. */
	s = must_cgrant(&ow[1], "c", LM_SHARED, 3);
	e = must_find(LM_EV_GRANTED, s);
	cr_assert(e->immediate);
	cr_assert_eq(e->token, BASE1 + 2);
	cr_assert_eq(count_kind(LM_EV_QUEUED), 0);
	cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[1], s, false, 4), 0);
	done();

	/* An upgrade alone is done at once too. */
	cr_assert_eq(conv(&ow[0], h, LM_EXCLUSIVE, 0, 5), LM_CONV_DONE);
	e = find_ev(LM_EV_GRANTED, h, true);
	cr_assert_not_null(e);
	cr_assert(e->immediate);
	cr_assert_eq(e->token, BASE1 + 3);
	cr_assert(!lockmgr_lease(&lm, h)->converting);
	done();

	/* A local resource still waits for tokens. */
	{
		struct lm_acquire la = creq("local", LM_EXCLUSIVE, 10, false);

		cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &la, 6, &x),
			     LM_OK_QUEUED);
		cr_assert_eq(count_kind(LM_EV_NEED_TOKENS), 1);
	}
}

/* ------------------------------------------------------------ local */

Test(lockmgr_cluster, local_resources_ignore_every_cluster_setting)
{
	struct lm_acquire a = creq("local", LM_EXCLUSIVE, LM_FOREVER, false);
	uint64_t h, w, t;
	struct lm_res *res;

	/* No session: cluster resources grant nothing, local ones do. */
	lockmgr_cluster_until(&lm, 0);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 5, &h), LM_OK_GRANTED);
	cr_assert_lt(token_of(h), BASE1);
	res = must_res("local");
	cr_assert(!res->cluster);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[1], &a, 6, &w), LM_OK_QUEUED);
	/* The cluster calls leave a local resource alone. */
	lockmgr_cluster_own(&lm, res, LM_GATE_SHARED, BASE1, 7);
	cr_assert_eq(res->cgate, LM_GATE_CLOSED);
	cr_assert_eq(res->ctoken_base, 0);
	done();
	cr_assert_eq(lockmgr_release(&lm, &ow[0], h, false, 8), 0);
	cr_assert(is_held(w));
	cr_assert_lt(token_of(w), BASE1);
	/* A try-once on a free local resource is granted at once. */
	a = creq("other", LM_SHARED, 0, false);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &a, 9, &t), LM_OK_GRANTED);
	cr_assert(!lockmgr_lease(&lm, t)->try_once);
	cr_assert_null(lockmgr_cluster_next_dirty(&lm));
}

/* ------------------------------------------------------------ queries */

Test(lockmgr_cluster, wants_exclusive_looks_at_waiters_and_upgrades)
{
	uint64_t a, b, x;
	struct lm_res *res;

	a = must_cqueue(&ow[0], "c", LM_SHARED, LM_FOREVER, 1);
	res = must_res("c");
	cr_assert(!lockmgr_cluster_wants_exclusive(res));
	b = must_cqueue(&ow[1], "c", LM_SHARED, LM_FOREVER, 2);
	x = must_cqueue(&ow[2], "c", LM_EXCLUSIVE, LM_FOREVER, 3);
	cr_assert(lockmgr_cluster_wants_exclusive(res),
		  "an exclusive waiter behind shared ones");
	cr_assert_eq(lockmgr_release(&lm, &ow[2], x, false, 4), 0);
	cr_assert(!lockmgr_cluster_wants_exclusive(res));
	lockmgr_cluster_own(&lm, res, LM_GATE_ALL, BASE1, 5);
	cr_assert(!lockmgr_cluster_wants_exclusive(res), "no waiter left");
	cr_assert(is_held(a) && is_held(b));
	cr_assert_eq(conv(&ow[0], a, LM_EXCLUSIVE, LM_FOREVER, 6),
		     LM_CONV_WAITING);
	cr_assert(lockmgr_cluster_wants_exclusive(res), "a waiting upgrade");
}

Test(lockmgr_cluster, moved_tells_watchers_again)
{
	struct lm_acquire a = creq("c", LM_EXCLUSIVE, LM_FOREVER, true);
	uint64_t w1, w2, plain;
	struct lm_res *res;

	a.position_updates = true;
	cr_assert_eq(lockmgr_acquire(&lm, &ow[0], &a, 1, &w1), LM_OK_QUEUED);
	plain = must_cqueue(&ow[1], "c", LM_EXCLUSIVE, LM_FOREVER, 2);
	cr_assert_eq(lockmgr_acquire(&lm, &ow[2], &a, 3, &w2), LM_OK_QUEUED);
	res = must_res("c");
	done();
	lockmgr_cluster_moved(&lm, res, 4);
	cr_assert_eq(must_find(LM_EV_QUEUED, w1)->position, 1);
	cr_assert_eq(must_find(LM_EV_QUEUED, w2)->position, 3);
	cr_assert_null(find_ev(LM_EV_QUEUED, plain, false));
	cr_assert_eq(count_kind(LM_EV_QUEUED), 2);
}
