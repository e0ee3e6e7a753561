/*
 * cluster: cluster mode on etcd (see cluster.h for the model).
 *
 * Keys: <prefix>r/<hex(resource)>/<session lease, 16 hex digits>, attached
 * to the session lease, valued {"host":..,"pid":..,"mode":..}. The mirror
 * is every key under <prefix>r/, from one range and then one prefix watch
 * started at the range's revision + 1 (at or below it, etcd would catch up
 * on a 100 ms loop). Ownership is read from the mirror; a key's own put
 * answers with the resource's keys at its revision, so the first decision
 * needs no watch event.
 *
 * Every asynchronous answer is checked against the session generation it
 * was asked in: an answer from before a lost session changes nothing.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "cluster.h"
#include "conn.h"
#include "dispatch.h"
#include "report.h"
#include "reserve.h"
#include "etcd.h"
#include "log.h"
#include "server.h"
#include "stats.h"
#include "xalloc.h"

enum sess_state {
	S_CONNECTING, /* granting the session lease, first range */
	S_ACTIVE,     /* kept alive; grants allowed before the deadline */
	S_JEOPARDY,   /* a keepalive failed; still before the deadline */
	S_EXPIRED,    /* the deadline passed or the lease is gone */
	S_STOPPED,    /* shutting down */
};

static const char *const sess_names[] = {
    [S_CONNECTING] = "connecting", [S_ACTIVE] = "active",
    [S_JEOPARDY] = "jeopardy",	   [S_EXPIRED] = "expired",
    [S_STOPPED] = "stopped",
};

enum rec_state {
	R_IDLE,	     /* no key */
	R_PUTTING,   /* the key's txn is out */
	R_QUEUED,    /* the key waits behind other hosts' keys */
	R_OWNED,     /* the key owns: local grants go on */
	R_YIELDING,  /* no new grants; the key goes once holders leave */
	R_RELEASING, /* the key's delete is out */
};

static const char *const rec_names[] = {
    [R_IDLE] = "idle",	 [R_PUTTING] = "queued",    [R_QUEUED] = "queued",
    [R_OWNED] = "owned", [R_YIELDING] = "yielding", [R_RELEASING] = "releasing",
};

/* One key of the mirror. */
struct mkey {
	char *key;
	struct mres *mr;
	int64_t create_rev;
	int64_t lease;
	enum lm_mode mode;
	char host[208];
	uint32_t pid;
	uint64_t seen; /* monotonic ns, when this host learned of it */
	TAILQ_ENTRY(mkey) entry; /* mr->keys, by create_rev */
	UT_hash_handle hh;	 /* cluster->keys */
};

/* The keys of one resource, by create_revision. */
struct mres {
	char *hex; /* <prefix>r/<hex>/ */
	TAILQ_HEAD(mkeys_head, mkey) keys;
	unsigned n;
	UT_hash_handle hh; /* cluster->mres */
};

/* This host's part of one cluster resource; lives in lm_res->ext. */
struct crec {
	struct cluster *cl;
	struct lm_res *res;
	char *rprefix; /* <prefix>r/<hex>/ */
	size_t rprefix_len;
	enum rec_state st;
	enum lm_mode mode;  /* the key's */
	int64_t create_rev; /* the key's, 0 when none */
	uint64_t gen;	    /* session generation of the key */
	uint64_t t_put, t_owned;
	uint32_t told_ahead;  /* hosts ahead, as last told to waiters */
	bool in_flight;	      /* a request about it is out */
	bool checking;	      /* asking whether a predecessor expired */
	uint64_t delay_until; /* lock-delay: no owning before (monotonic) */
	bool retry;	      /* it failed: ask again on the retry timer */
	TAILQ_ENTRY(crec) entry;
};

struct cluster {
	struct server *srv;
	struct etcd_client *etcd;
	enum sess_state state;
	uint64_t gen; /* +1 at every new session */
	int64_t lease;
	int64_t ka_lease;  /* the lease of the keepalive out */
	int64_t rev_floor; /* the state file's mark: etcd must be past it */
	bool refused_logged;
	uint64_t valid_until; /* CLOCK_BOOTTIME ns; 0: none */
	bool ka_inflight, grant_inflight, range_inflight;
	uint64_t range_gen; /* the generation the range out was asked in */
	bool stop_inflight, stop_done;
	unsigned backoff_ms;
	struct event *ev_deadline, *ev_ka, *ev_retry, *ev_recs;
	struct etcd_watch *watch;
	bool mirror_ready;
	int64_t mirror_rev; /* revision the mirror is complete at */
	struct mkey *keys;  /* by key */
	struct mres *mres;  /* by resource prefix */
	TAILQ_HEAD(, crec) recs;
	char *rprefix; /* <prefix>r/ */
	/* figures */
	uint64_t sessions, losses, errors, failovers;
	struct hist ka_rtt;
	char msg[400];
};

#define MS(x) ((uint64_t)(x)*1000000u)

static uint64_t
boot_ns(void)
{
	return etcd_now_ns();
}

static void rec_eval(struct cluster *cl, struct lm_res *res);
static void session_begin(struct cluster *cl);
static void start_range(struct cluster *cl);

/* ------------------------------------------------------------ helpers */

static void
note_error(struct cluster *cl, const char *what, const struct etcd_result *r)
{
	cl->errors++;
	snprintf(cl->msg, sizeof cl->msg, "%s: %s", what, r->message);
}

static void
arm_ms(struct event *ev, uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000),
			     (suseconds_t)(ms % 1000 * 1000)};

	evtimer_add(ev, &tv);
}

static void
arm_ns(struct event *ev, uint64_t ns)
{
	struct timeval tv = {(time_t)(ns / 1000000000u),
			     (suseconds_t)((ns % 1000000000u + 999) / 1000)};

	evtimer_add(ev, &tv);
}

static bool
session_usable(const struct cluster *cl)
{
	return (cl->state == S_ACTIVE || cl->state == S_JEOPARDY) &&
	       cl->mirror_ready && boot_ns() < cl->valid_until;
}

static char *
hex_of(const char *s, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	char *out = xcalloc(1, 2 * len + 1);

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[(unsigned char)s[i] >> 4];
		out[2 * i + 1] = digits[(unsigned char)s[i] & 15];
	}
	out[2 * len] = '\0';
	return out;
}

/* The resource prefix of a key: everything up to its last '/'. */
static size_t
key_prefix_len(const char *key, size_t len)
{
	while (len > 0 && key[len - 1] != '/')
		len--;
	return len;
}

/* ------------------------------------------------------------ mirror */

static struct mres *
mres_get(struct cluster *cl, const char *prefix, size_t len, bool create)
{
	struct mres *mr = NULL;

	HASH_FIND(hh, cl->mres, prefix, len, mr);
	if (mr == NULL && create) {
		mr = xcalloc(1, sizeof *mr);
		mr->hex = xstrndup(prefix, len);
		TAILQ_INIT(&mr->keys);
		HASH_ADD_KEYPTR(hh, cl->mres, mr->hex, len, mr);
	}
	return mr;
}

static void
mkey_del(struct cluster *cl, struct mkey *k)
{
	struct mres *mr = k->mr;

	TAILQ_REMOVE(&mr->keys, k, entry);
	mr->n--;
	// NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
	HASH_DEL(cl->keys, k);
	free(k->key);
	free(k);
	if (mr->n == 0) {
		// NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
		HASH_DEL(cl->mres, mr);
		free(mr->hex);
		free(mr);
	}
}

static void
mirror_clear(struct cluster *cl)
{
	struct mkey *k, *tmp;

	HASH_ITER(hh, cl->keys, k, tmp) {
		mkey_del(cl, k);
	}
	cl->mirror_ready = false;
	cl->mirror_rev = 0;
}

/* Add or refresh a key from etcd's kv. */
static void
mirror_put(struct cluster *cl, const struct etcd_kv *kv)
{
	size_t plen = key_prefix_len(kv->key, kv->key_len);
	struct mkey *k = NULL, *at;
	struct mres *mr;
	json_t *v;

	if (plen == 0 || plen <= strlen(cl->rprefix))
		return;
	HASH_FIND(hh, cl->keys, kv->key, kv->key_len, k);
	/* A key name comes back after a delete (a host's next key for the
	 * same resource in the same session): the watch may still bring the
	 * old one's events after a put's answer told of the new one. Never
	 * let an older incarnation replace a newer one. */
	if (k != NULL && kv->create_revision < k->create_rev)
		return;
	if (k != NULL && kv->create_revision > k->create_rev) {
		mkey_del(cl, k); /* its delete was missed: start again */
		k = NULL;
	}
	if (k == NULL) {
		mr = mres_get(cl, kv->key, plen, true);
		k = xcalloc(1, sizeof *k);
		k->key = xstrndup(kv->key, kv->key_len);
		k->mr = mr;
		k->create_rev = kv->create_revision;
		k->seen = now_ns();
		/* Keys come mostly in create order: search from the end. */
		TAILQ_FOREACH_REVERSE(at, &mr->keys, mkeys_head, entry) {
			if (at->create_rev < k->create_rev)
				break;
		}
		if (at == NULL)
			TAILQ_INSERT_HEAD(&mr->keys, k, entry);
		else
			TAILQ_INSERT_AFTER(&mr->keys, at, k, entry);
		mr->n++;
		HASH_ADD_KEYPTR(hh, cl->keys, k->key, kv->key_len, k);
	}
	k->lease = kv->lease;
	k->mode = LM_EXCLUSIVE;
	v = json_loadb(kv->value, kv->value_len, 0, NULL);
	if (v != NULL) {
		const char *host =
		    json_string_value(json_object_get(v, "host"));
		const char *mode =
		    json_string_value(json_object_get(v, "mode"));
		json_int_t pid = json_integer_value(json_object_get(v, "pid"));

		snprintf(k->host, sizeof k->host, "%s", host ? host : "?");
		k->pid = pid > 0 && pid < UINT32_MAX ? (uint32_t)pid : 0;
		if (mode != NULL && strcmp(mode, "shared") == 0)
			k->mode = LM_SHARED;
		json_decref(v);
	} else
		snprintf(k->host, sizeof k->host, "?");
}

/* A delete at revision rev: it removes only an incarnation created at or
 * before it, never a newer key of the same name (see mirror_put). Returns
 * the session lease of the key removed, 0 when none was. */
static int64_t
mirror_delete(struct cluster *cl, const char *key, size_t len, int64_t rev)
{
	struct mkey *k = NULL;
	int64_t lease;

	HASH_FIND(hh, cl->keys, key, len, k);
	if (k == NULL || k->create_rev > rev)
		return 0;
	lease = k->lease;
	mkey_del(cl, k);
	return lease;
}

/* ------------------------------------------------------------ records */

static struct crec *
rec_of(const struct lm_res *res)
{
	return res->ext;
}

static struct crec *
rec_new(struct cluster *cl, struct lm_res *res)
{
	struct crec *rec = xcalloc(1, sizeof *rec);
	char *hex = hex_of(res->name, res->len);
	size_t n = strlen(cl->rprefix) + strlen(hex) + 2;

	rec->cl = cl;
	rec->res = res;
	rec->rprefix = xcalloc(1, n);
	snprintf(rec->rprefix, n, "%s%s/", cl->rprefix, hex);
	rec->rprefix_len = strlen(rec->rprefix);
	free(hex);
	rec->st = R_IDLE;
	TAILQ_INSERT_TAIL(&cl->recs, rec, entry);
	lockmgr_cluster_pin(&cl->srv->lm, res, rec);
	return rec;
}

static void
rec_free(struct cluster *cl, struct crec *rec)
{
	TAILQ_REMOVE(&cl->recs, rec, entry);
	lockmgr_cluster_pin(&cl->srv->lm, rec->res, NULL);
	free(rec->rprefix);
	free(rec);
}

static void
rec_key(const struct crec *rec, char *buf, size_t len)
{
	snprintf(buf, len, "%s%016" PRIx64, rec->rprefix,
		 (uint64_t)rec->cl->lease);
}

static struct mres *
rec_mres(const struct crec *rec)
{
	return mres_get(rec->cl, rec->rprefix, rec->rprefix_len, false);
}

static struct mkey *
rec_mkey(const struct crec *rec)
{
	char key[1200];
	struct mkey *k = NULL;

	rec_key(rec, key, sizeof key);
	HASH_FIND(hh, rec->cl->keys, key, strlen(key), k);
	return k;
}

/* Whether this host's key owns now, by the mirror. */
static bool
rec_owns(const struct crec *rec)
{
	struct mres *mr = rec_mres(rec);
	struct mkey *k;

	if (rec->create_rev == 0 || mr == NULL || rec_mkey(rec) == NULL)
		return false;
	TAILQ_FOREACH(k, &mr->keys, entry) {
		if (k->create_rev >= rec->create_rev)
			break;
		if (rec->mode == LM_EXCLUSIVE || k->mode == LM_EXCLUSIVE)
			return false;
	}
	return true;
}

/* The earliest time another host's conflicting key, queued behind ours,
 * was seen; 0 when none waits. */
static uint64_t
rec_contended_since(const struct crec *rec)
{
	struct mres *mr = rec_mres(rec);
	struct mkey *k;
	uint64_t since = 0;

	if (mr == NULL)
		return 0;
	TAILQ_FOREACH(k, &mr->keys, entry) {
		if (k->create_rev <= rec->create_rev)
			continue;
		if (rec->mode == LM_SHARED && k->mode == LM_SHARED)
			continue;
		if (since == 0 || k->seen < since)
			since = k->seen;
	}
	return since;
}

/* ------------------------------------------------------------ session */

static void
log_state(struct cluster *cl, enum sess_state to, const char *why)
{
	char q[500];

	if (cl->state == to)
		return;
	cl->state = to;
	if (to == S_ACTIVE)
		log_info("cluster session active",
			 "lease=%016" PRIx64 " endpoint=%s host_id=%s",
			 (uint64_t)cl->lease, etcd_endpoint(cl->etcd),
			 log_quote(cl->srv->cfg.cluster_host_id, q, sizeof q));
	else if (to == S_JEOPARDY || to == S_EXPIRED)
		log_warn(to == S_JEOPARDY ? "cluster session jeopardy"
					  : "cluster session expired",
			 "lease=%016" PRIx64 " reason=%s", (uint64_t)cl->lease,
			 log_quote(why, q, sizeof q));
}

/* Tell every holder of a cluster lease its new deadline. */
static void
send_extended(struct cluster *cl)
{
	struct crec *rec;

	TAILQ_FOREACH(rec, &cl->recs, entry) {
		struct lm_req *r;

		TAILQ_FOREACH(r, &rec->res->holders, q_entry) {
			dispatch_extended(cl->srv, r, cl->valid_until);
		}
	}
}

static void
set_valid(struct cluster *cl, uint64_t sent_ns, int64_t ttl_s)
{
	const struct config *cfg = &cl->srv->cfg;
	uint64_t vu = etcd_valid_until(
	    sent_ns, ttl_s, (uint32_t)cfg->cluster_max_clock_drift_ppm,
	    (uint32_t)cfg->cluster_safety_margin_ms);
	uint64_t boot = boot_ns(), mono = now_ns();

	if (vu <= cl->valid_until || vu <= boot)
		return;
	cl->valid_until = vu;
	/* The lock manager runs on CLOCK_MONOTONIC, which stops while the
	 * machine sleeps: the same instant, converted now, errs early. */
	lockmgr_cluster_until(&cl->srv->lm, mono + (vu - boot));
	arm_ns(cl->ev_deadline, vu - boot);
}

/* The deadline passed (or the lease is gone): end every cluster lease. */
static void
expire(struct cluster *cl, const char *why)
{
	struct server *srv = cl->srv;
	struct crec *rec, *tmp;
	uint64_t now = now_ns();
	int n = 0;

	if (cl->state == S_EXPIRED || cl->state == S_STOPPED)
		return;
	lockmgr_cluster_until(&srv->lm, 0);
	cl->losses++;
	cl->gen++;
	for (rec = TAILQ_FIRST(&cl->recs); rec != NULL; rec = tmp) {
		tmp = TAILQ_NEXT(rec, entry);
		{
#ifndef ARBITER_SELFTEST_NOREVOKE
			n += lockmgr_cluster_revoke(&srv->lm, rec->res,
						    LM_END_CLUSTER_LOST, now);
#else
			lockmgr_cluster_shut(&srv->lm, rec->res);
#endif
			if (srv->cfg.cluster_when_unavailable ==
			    UNAVAILABLE_FAIL)
				lockmgr_cluster_end_waiters(&srv->lm, rec->res,
							    LM_END_UNAVAILABLE,
							    false, now);
		}
		rec->st = R_IDLE;
		rec->create_rev = 0;
		rec->retry = false;
	}
	log_state(cl, S_EXPIRED, why);
	log_warn("cluster leases revoked", "leases=%d reason=%s", n,
		 "session_lost");
	if (cl->watch != NULL) {
		etcd_watch_cancel(cl->watch);
		cl->watch = NULL;
	}
	mirror_clear(cl);
	evtimer_del(cl->ev_deadline);
	evtimer_del(cl->ev_ka);
	cl->valid_until = 0;
	/* The old lease goes when etcd can be reached: its keys with it. The
	 * next session's first range revokes it too, should this fail. */
	if (cl->lease != 0)
		(void)etcd_lease_revoke(cl->etcd, cl->lease, NULL, NULL);
	cl->lease = 0;
	cl->ka_inflight = false;
	cl->backoff_ms = 100;
	arm_ms(cl->ev_retry, cl->backoff_ms);
}

void
cluster_check(struct server *srv)
{
	struct cluster *cl = srv->cluster;

	if (cl != NULL && cl->valid_until != 0 &&
	    (cl->state == S_ACTIVE || cl->state == S_JEOPARDY ||
	     cl->state == S_CONNECTING) &&
	    boot_ns() >= cl->valid_until)
		expire(cl, "the deadline passed before a keepalive was "
			   "answered");
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct cluster *cl = arg;

	(void)fd;
	(void)what;
	if (cl->valid_until != 0 && boot_ns() < cl->valid_until) {
		/* Early (the monotonic clock lagged): wait the rest. */
		arm_ns(cl->ev_deadline, cl->valid_until - boot_ns());
		return;
	}
	cluster_check(cl->srv);
}

static void
retry_later(struct cluster *cl)
{
	/* At most a second: one small request a second while etcd is out of
	 * reach costs nothing, and a healed host comes back soon (the etcd
	 * client's own per-member back-off still spaces its tries). */
	cl->backoff_ms = cl->backoff_ms ? cl->backoff_ms * 2 : 100;
	if (cl->backoff_ms > 1000)
		cl->backoff_ms = 1000;
	arm_ms(cl->ev_retry, cl->backoff_ms);
}

static void
on_keepalive(const struct etcd_result *r, void *arg)
{
	struct cluster *cl = arg;
	uint64_t ka_ms = cl->srv->cfg.cluster_session_ttl_ms / 3;

	cl->ka_inflight = false;
	cluster_check(cl->srv);
	if ((cl->state != S_ACTIVE && cl->state != S_JEOPARDY &&
	     cl->state != S_CONNECTING) ||
	    cl->lease == 0 || cl->lease != cl->ka_lease)
		return; /* about a session that is gone */
	if (r->failed_over)
		cl->failovers++;
	if (r->err == -ENOENT) {
		note_error(cl, "keepalive", r);
		expire(cl, "etcd says the session lease is gone");
		return;
	}
	if (r->err != 0 || r->ttl <= 0) {
		note_error(cl, "keepalive", r);
		log_state(cl, S_JEOPARDY, r->message);
		/* Try again soon, on the next member: the deadline runs. */
		arm_ms(cl->ev_ka, 100);
		return;
	}
	hist_add(&cl->ka_rtt, r->rtt_ns);
	set_valid(cl, r->sent_ns, r->ttl);
	if (cl->mirror_ready)
		log_state(cl, S_ACTIVE, "");
	send_extended(cl);
	arm_ms(cl->ev_ka, ka_ms);
}

static void
keepalive_cb(evutil_socket_t fd, short what, void *arg)
{
	struct cluster *cl = arg;

	(void)fd;
	(void)what;
	if (cl->ka_inflight || cl->lease == 0)
		return;
	if (etcd_lease_keepalive(cl->etcd, cl->lease, on_keepalive, cl) == 0) {
		cl->ka_inflight = true;
		cl->ka_lease = cl->lease;
	} else
		arm_ms(cl->ev_ka, 100);
}

/* Every cluster resource with demand gets another look. */
static void
eval_all(struct cluster *cl)
{
	struct lm_res *res, *tmp;

	HASH_ITER(hh, cl->srv->lm.res, res, tmp) {
		if (res->cluster)
			rec_eval(cl, res);
	}
}

/* Revoke the leases of this host's earlier sessions (a restarted
 * arbiterd): their keys go at once instead of after their TTL. */
static void
revoke_stale(struct cluster *cl)
{
	struct mkey *k, *tmp;
	int64_t done[16];
	size_t nd = 0;

	HASH_ITER(hh, cl->keys, k, tmp) {
		bool seen = false;

		if (k->lease == cl->lease || k->lease == 0 ||
		    strcmp(k->host, cl->srv->cfg.cluster_host_id) != 0)
			continue;
		for (size_t i = 0; i < nd; i++)
			seen |= done[i] == k->lease;
		if (seen || nd == sizeof done / sizeof done[0])
			continue;
		done[nd++] = k->lease;
		log_info("cluster: revoking this host's earlier session",
			 "lease=%016" PRIx64 " key_pid=%u", (uint64_t)k->lease,
			 k->pid);
		(void)etcd_lease_revoke(cl->etcd, k->lease, NULL, NULL);
	}
}

static void watch_cb(enum etcd_watch_kind kind, const struct etcd_event *ev,
		     const struct etcd_result *r, void *arg);

static void
on_range(const struct etcd_result *r, void *arg)
{
	struct cluster *cl = arg;
	int err = 0;

	cl->range_inflight = false;
	cluster_check(cl->srv);
	if (cl->state != S_ACTIVE && cl->state != S_JEOPARDY &&
	    cl->state != S_CONNECTING)
		return;
	if (cl->range_gen != cl->gen || cl->lease == 0) {
		/* Asked in a session that expired since: the new one (if its
		 * lease is granted) needs its own range. */
		if (cl->lease != 0 && !cl->mirror_ready && cl->watch == NULL)
			start_range(cl);
		return;
	}
	if (r->err != 0) {
		note_error(cl, "range", r);
		retry_later(cl);
		return;
	}
	if (r->revision < cl->rev_floor) {
		/* etcd went back in time (restored from a backup without
		 * bumping its revision): new keys could get create_revisions
		 * below ones this host granted under, so tokens would go
		 * backwards. */
		snprintf(cl->msg, sizeof cl->msg,
			 "etcd's revision %" PRId64 " is below %" PRId64
			 ", the highest this host granted under: etcd was "
			 "restored from an older backup. Restore with "
			 "'etcdutl snapshot restore --bump-revision 1000000000 "
			 "--mark-compacted', or start this arbiterd once "
			 "with --reset-state after checking the storage",
			 r->revision, cl->rev_floor);
		if (!cl->refused_logged)
			log_error("cluster grants refused", "reason=\"%s\"",
				  cl->msg);
		cl->refused_logged = true;
		arm_ms(cl->ev_retry, 5000); /* an operator has to act */
		return;
	}
	mirror_clear(cl);
	for (size_t i = 0; i < r->n_kvs; i++)
		mirror_put(cl, &r->kvs[i]);
	cl->mirror_rev = r->revision;
	cl->watch =
	    etcd_watch_prefix(cl->etcd, cl->rprefix, strlen(cl->rprefix),
			      r->revision + 1, watch_cb, cl, &err);
	if (cl->watch == NULL) {
		snprintf(cl->msg, sizeof cl->msg, "watch: %s", strerror(-err));
		cl->errors++;
		retry_later(cl);
		return;
	}
	cl->mirror_ready = true;
	cl->backoff_ms = 0;
	revoke_stale(cl);
	log_state(cl, S_ACTIVE, "");
	eval_all(cl);
}

static void
start_range(struct cluster *cl)
{
	if (cl->range_inflight)
		return;
	cl->range_gen = cl->gen;
	if (etcd_range_prefix(cl->etcd, cl->rprefix, strlen(cl->rprefix), 0,
			      on_range, cl) == 0)
		cl->range_inflight = true;
	else
		retry_later(cl);
}

/* This host's record of the resource a key is about, or NULL. */
static struct crec *
rec_of_key(struct cluster *cl, const char *key, size_t len)
{
	struct crec *rec;
	size_t plen = key_prefix_len(key, len);

	TAILQ_FOREACH(rec, &cl->recs, entry) {
		if (rec->rprefix_len == plen &&
		    memcmp(rec->rprefix, key, plen) == 0)
			return rec;
	}
	return NULL;
}

/* A key of the mirror changed: look again at the resource it is about. */
static void
mres_changed(struct cluster *cl, const char *key, size_t len)
{
	struct crec *rec = rec_of_key(cl, key, len);

	if (rec != NULL)
		rec_eval(cl, rec->res);
}

/*
 * leases.lock_delay_ms across hosts: a key that went because its host's
 * session lease is gone (expired: the host died or was cut off, and its
 * holders may still be finishing) holds the resource back that long, as
 * a lease ending uncleanly does on one host. A key its host deleted
 * (released) does not. The answer is awaited before this host owns.
 */
static void
on_pred_ttl(const struct etcd_result *r, void *arg)
{
	struct crec *rec = arg;
	struct cluster *cl = rec->cl;

	rec->checking = false;
	if (rec->gen == cl->gen && (r->err != 0 || r->ttl < 0)) {
		char q[600];
		uint64_t until = now_ns() + MS(cl->srv->cfg.lock_delay_ms);

		if (until > rec->delay_until)
			rec->delay_until = until;
		log_info("cluster lock-delay: the previous holder's host "
			 "session is gone",
			 "resource=%s delay_ms=%" PRIu64,
			 log_quote(rec->res->name, q, sizeof q),
			 cl->srv->cfg.lock_delay_ms);
	}
	rec_eval(cl, rec->res);
}

static void
check_predecessor(struct cluster *cl, const char *key, size_t len,
		  int64_t lease)
{
	struct crec *rec = rec_of_key(cl, key, len);

	if (rec == NULL || rec->st != R_QUEUED || rec->checking ||
	    lease == cl->lease)
		return;
	if (etcd_lease_ttl(cl->etcd, lease, on_pred_ttl, rec) == 0)
		rec->checking = true;
}

static void
watch_cb(enum etcd_watch_kind kind, const struct etcd_event *ev,
	 const struct etcd_result *r, void *arg)
{
	struct cluster *cl = arg;

	cluster_check(cl->srv);
	switch (kind) {
	case ETCD_WATCH_CREATED:
		return;
	case ETCD_WATCH_ENDED:
		cl->watch = NULL;
		if (r != NULL && r->err != 0)
			note_error(cl, "watch", r);
		cl->mirror_ready = false;
		if (cl->state == S_ACTIVE || cl->state == S_JEOPARDY)
			start_range(cl);
		return;
	case ETCD_WATCH_EVENT:
		break;
	}
	/* Events come in revision order: the mirror holds everything up to
	 * this one's. */
	if (ev->kv.mod_revision > cl->mirror_rev)
		cl->mirror_rev = ev->kv.mod_revision;
	if (ev->type == ETCD_PUT)
		mirror_put(cl, &ev->kv);
	else {
		int64_t lease = mirror_delete(cl, ev->kv.key, ev->kv.key_len,
					      ev->kv.mod_revision);

		if (lease != 0 && cl->srv->cfg.lock_delay_ms > 0)
			check_predecessor(cl, ev->kv.key, ev->kv.key_len,
					  lease);
	}
	mres_changed(cl, ev->kv.key, ev->kv.key_len);
}

static void
on_grant(const struct etcd_result *r, void *arg)
{
	struct cluster *cl = arg;

	cl->grant_inflight = false;
	if (cl->state != S_CONNECTING) {
		/* Not wanted any more: give an unused lease back, and start
		 * the session a retry found this grant still out for. */
		if (r->err == 0 && r->lease_id != 0)
			(void)etcd_lease_revoke(cl->etcd, r->lease_id, NULL,
						NULL);
		if (cl->state == S_EXPIRED)
			retry_later(cl);
		return;
	}
	if (r->err != 0 || r->ttl <= 0) {
		note_error(cl, "session lease grant", r);
		if (cl->sessions == 0 || cl->errors % 10 == 1)
			log_warn("cluster: cannot reach etcd",
				 "endpoints=%s error=\"%s\" retry_ms=%u",
				 cl->srv->cfg.cluster_endpoints, r->message,
				 cl->backoff_ms ? cl->backoff_ms * 2 : 100);
		retry_later(cl);
		return;
	}
	cl->lease = r->lease_id;
	cl->sessions++;
	cl->msg[0] = '\0';
	set_valid(cl, r->sent_ns, r->ttl);
	arm_ms(cl->ev_ka, cl->srv->cfg.cluster_session_ttl_ms / 3);
	start_range(cl);
}

static void
session_begin(struct cluster *cl)
{
	if (cl->state == S_STOPPED || cl->grant_inflight)
		return;
	cl->state = S_CONNECTING;
	if (etcd_lease_grant(
		cl->etcd, (int64_t)(cl->srv->cfg.cluster_session_ttl_ms / 1000),
		on_grant, cl) == 0)
		cl->grant_inflight = true;
	else
		retry_later(cl);
}

static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct cluster *cl = arg;

	(void)fd;
	(void)what;
	switch (cl->state) {
	case S_CONNECTING:
		if (cl->lease == 0)
			session_begin(cl);
		else
			start_range(cl);
		break;
	case S_EXPIRED:
		session_begin(cl);
		break;
	case S_ACTIVE:
	case S_JEOPARDY:
		if (!cl->mirror_ready && cl->watch == NULL)
			start_range(cl);
		break;
	case S_STOPPED:
		break;
	}
}

static void
on_failover(const char *from, const char *to, const char *why, void *arg)
{
	struct cluster *cl = arg;

	cl->failovers++;
	log_warn("cluster: etcd member left", "from=%s to=%s reason=\"%s\"",
		 from ? from : "", to ? to : "none", why ? why : "");
}

/* ------------------------------------------------------------ keys */

static void rec_put(struct cluster *cl, struct crec *rec);
static void rec_delete(struct cluster *cl, struct crec *rec);

static void
rec_own(struct cluster *cl, struct crec *rec)
{
	uint64_t now = now_ns();

	/* A later start without cluster mode, and this check after an etcd
	 * restore, need the mark above every token of this key. */
	reserve_at_least(cl->srv, CLUSTER_TOKEN_BASE(rec->create_rev) +
				      LM_CLUSTER_GRANTS);
	rec->st = R_OWNED;
	rec->t_owned = now;
	if (cl->srv->cfg.stats_enabled)
		stats_cluster_wait(
		    &cl->srv->stats,
		    stats_res(&cl->srv->stats, rec->res->name, rec->res->len),
		    now - rec->t_put);
	lockmgr_cluster_own(&cl->srv->lm, rec->res,
			    rec->mode == LM_EXCLUSIVE ? LM_GATE_ALL
						      : LM_GATE_SHARED,
			    CLUSTER_TOKEN_BASE(rec->create_rev), now);
}

static void
on_put(const struct etcd_result *r, void *arg)
{
	struct crec *rec = arg;
	struct cluster *cl = rec->cl;
	char key[1200];

	rec->in_flight = false;
	cluster_check(cl->srv);
	if (rec->gen != cl->gen || rec->st != R_PUTTING) {
		rec_eval(cl, rec->res); /* asked in a session now gone */
		return;
	}
	if (r->err != 0) {
		/* It may have landed: the next try finds it (succeeded = 0,
		 * our own key among the kvs). */
		note_error(cl, "put", r);
		rec->retry = true;
		arm_ms(cl->ev_recs, 200);
		return;
	}
	rec_key(rec, key, sizeof key);
	rec->create_rev = 0;
	if (r->succeeded)
		rec->create_rev = r->revision;
	/* The resource's keys at that revision; the watch may already be
	 * further (then it told us all of this). */
	for (size_t i = 0; i < r->n_kvs; i++) {
		if (r->kvs[i].key_len == strlen(key) &&
		    memcmp(r->kvs[i].key, key, r->kvs[i].key_len) == 0)
			rec->create_rev = r->kvs[i].create_revision;
		if (r->revision > cl->mirror_rev)
			mirror_put(cl, &r->kvs[i]);
	}
	if (rec->create_rev == 0) {
		snprintf(cl->msg, sizeof cl->msg,
			 "put of %.300s answered without the key", key);
		cl->errors++;
		rec->retry = true;
		arm_ms(cl->ev_recs, 200);
		return;
	}
	rec->st = R_QUEUED;
	/* A try-once not owning at once is answered busy. */
	if (!rec_owns(rec))
		lockmgr_cluster_end_waiters(&cl->srv->lm, rec->res, LM_END_BUSY,
					    true, now_ns());
	rec_eval(cl, rec->res); /* may free rec */
}

static void
rec_put(struct cluster *cl, struct crec *rec)
{
	char key[1200], val[600], q[420];
	const char *host = cl->srv->cfg.cluster_host_id;

	rec->mode = lockmgr_cluster_wants_exclusive(rec->res) ? LM_EXCLUSIVE
							      : LM_SHARED;
	rec_key(rec, key, sizeof key);
	snprintf(q, sizeof q, "%s", host);
	snprintf(val, sizeof val,
		 "{\"host\":\"%s\",\"pid\":%ld,\"mode\":\"%s\"}", q,
		 (long)getpid(), lockmgr_mode_name(rec->mode));
	rec->st = R_PUTTING;
	rec->gen = cl->gen;
	rec->retry = false;
	if (rec->t_put == 0 || rec->create_rev == 0)
		rec->t_put = now_ns();
	if (etcd_txn_put_if_absent(cl->etcd, key, strlen(key), val, strlen(val),
				   cl->lease, rec->rprefix, rec->rprefix_len,
				   on_put, rec) == 0)
		rec->in_flight = true;
	else {
		rec->retry = true;
		arm_ms(cl->ev_recs, 200);
	}
}

static void
on_delete(const struct etcd_result *r, void *arg)
{
	struct crec *rec = arg;
	struct cluster *cl = rec->cl;
	char key[1200];

	rec->in_flight = false;
	cluster_check(cl->srv);
	if (rec->gen != cl->gen || rec->st != R_RELEASING) {
		rec_eval(cl, rec->res); /* asked in a session now gone */
		return;
	}
	if (r->err != 0) {
		note_error(cl, "delete", r);
		rec->retry = true;
		arm_ms(cl->ev_recs, 200);
		return;
	}
	rec_key(rec, key, sizeof key);
	(void)mirror_delete(cl, key, strlen(key), r->revision);
	rec->st = R_IDLE;
	rec->create_rev = 0;
	rec->t_put = 0;
	rec_eval(cl, rec->res);
}

static void
rec_delete(struct cluster *cl, struct crec *rec)
{
	char key[1200];

	if (rec->st == R_OWNED || rec->st == R_YIELDING) {
		if (cl->srv->cfg.stats_enabled)
			stats_cluster_hold(&cl->srv->stats,
					   stats_res(&cl->srv->stats,
						     rec->res->name,
						     rec->res->len),
					   now_ns() - rec->t_owned);
	}
	lockmgr_cluster_shut(&cl->srv->lm, rec->res);
	rec->st = R_RELEASING;
	rec->retry = false;
	rec_key(rec, key, sizeof key);
	if (etcd_delete(cl->etcd, key, strlen(key), on_delete, rec) == 0)
		rec->in_flight = true;
	else {
		rec->retry = true;
		arm_ms(cl->ev_recs, 200);
	}
}

static void
recs_cb(evutil_socket_t fd, short what, void *arg)
{
	struct cluster *cl = arg;
	struct crec *rec, *tmp;

	(void)fd;
	(void)what;
	cluster_check(cl->srv);
	for (rec = TAILQ_FIRST(&cl->recs); rec != NULL; rec = tmp) {
		tmp = TAILQ_NEXT(rec, entry);
		rec_eval(cl, rec->res); /* may free rec, not the next */
	}
}

/* ------------------------------------------------------------ decisions */

static bool
has_demand(const struct lm_res *res)
{
	return res->nwaiters > 0 || res->converting != NULL;
}

/* Why an owned key should go now: another host waited long enough, the
 * local queue's head needs a mode the key does not give, or the key's
 * grants are used up. Arms the yield timer when another host waits but
 * not yet for long. */
static bool
should_yield(struct cluster *cl, struct crec *rec)
{
	const struct lm_res *res = rec->res;
	const struct lm_req *head = TAILQ_FIRST(&res->waiters);
	uint64_t since, after = MS(cl->srv->cfg.cluster_yield_after_ms), now;

	if (res->converting != NULL)
		return false; /* it waits only for local holders */
	if (res->ctoken_n + 1 >= LM_CLUSTER_GRANTS)
		return true;
	if (rec->mode == LM_SHARED && head != NULL &&
	    head->mode == LM_EXCLUSIVE)
		return true;
	since = rec_contended_since(rec);
	if (since == 0)
		return false;
	now = now_ns();
	if (now - since >= after)
		return true;
	arm_ns(cl->ev_recs, since + after - now);
	return false;
}

static void
rec_eval(struct cluster *cl, struct lm_res *res)
{
	struct server *srv = cl->srv;
	struct crec *rec = rec_of(res);
	bool demand = has_demand(res);
	uint64_t now = now_ns();

	if (rec == NULL) {
		if (!demand)
			return;
		rec = rec_new(cl, res);
	}
	if (rec->in_flight || rec->checking)
		return;
	if (rec->retry) {
		/* A put needs the mirror to judge its answer; a delete only a
		 * live session (a lost one took the key with it). */
		bool can = rec->st == R_PUTTING ? session_usable(cl)
						: cl->state == S_ACTIVE ||
						      cl->state == S_JEOPARDY;

		if (!can) {
			arm_ms(cl->ev_recs, 200);
			return;
		}
		if (rec->st == R_PUTTING)
			rec_put(cl, rec);
		else if (rec->st == R_RELEASING)
			rec_delete(cl, rec);
		else
			rec->retry = false;
		return;
	}
	if (!session_usable(cl) && (rec->st == R_IDLE)) {
		/* A try-once cannot wait for the cluster to come back. */
		lockmgr_cluster_end_waiters(
		    &srv->lm, res, LM_END_UNAVAILABLE,
		    srv->cfg.cluster_when_unavailable != UNAVAILABLE_FAIL, now);
		if (!has_demand(res))
			rec_free(cl, rec);
		return;
	}
	switch (rec->st) {
	case R_IDLE:
		if (demand)
			rec_put(cl, rec);
		else
			rec_free(cl, rec);
		return;
	case R_PUTTING:
	case R_RELEASING:
		return;
	case R_QUEUED:
		if (rec_mkey(rec) == NULL) {
			/* Our key went (deleted by hand, or etcd let it go). */
			rec->st = R_IDLE;
			rec->create_rev = 0;
			rec_eval(cl, res);
			return;
		}
		if (!demand) {
			rec_delete(cl, rec);
			return;
		}
		if (rec_owns(rec) && now < rec->delay_until) {
			arm_ns(cl->ev_recs, rec->delay_until - now);
			return;
		}
		if (rec_owns(rec))
			rec_own(cl, rec);
		if (rec->st != R_OWNED) {
			uint32_t ahead = cluster_hosts_ahead(srv, res);

			if (ahead != rec->told_ahead) {
				rec->told_ahead = ahead;
				lockmgr_cluster_moved(&srv->lm, res, now);
			}
			return;
		}
		/* FALLTHROUGH */
	case R_OWNED:
	case R_YIELDING:
		if (rec_mkey(rec) == NULL) {
			/* The key is gone while it owned: another host may
			 * be granted any moment. */
			char q[600];

			log_warn("cluster key lost while owned", "resource=%s",
				 log_quote(res->name, q, sizeof q));
			lockmgr_cluster_revoke(&srv->lm, res,
					       LM_END_CLUSTER_LOST, now);
			rec->st = R_IDLE;
			rec->create_rev = 0;
			rec_eval(cl, res);
			return;
		}
		if (rec->st == R_OWNED && res->nholders == 0 && !demand) {
			rec_delete(cl, rec);
			return;
		}
		if (rec->st == R_OWNED && should_yield(cl, rec)) {
			lockmgr_cluster_shut(&srv->lm, res);
			rec->st = R_YIELDING;
			if (srv->cfg.stats_enabled)
				stats_count(
				    &srv->stats,
				    stats_res(&srv->stats, res->name, res->len),
				    STAT_cluster_yields);
		}
		if (rec->st == R_YIELDING && res->nholders == 0)
			rec_delete(cl, rec);
		return;
	}
}

void
cluster_pump(struct server *srv)
{
	struct cluster *cl = srv->cluster;
	struct lm_res *res;

	if (cl == NULL) {
		while (lockmgr_cluster_next_dirty(&srv->lm) != NULL)
			;
		return;
	}
	cluster_check(srv);
	while ((res = lockmgr_cluster_next_dirty(&srv->lm)) != NULL)
		rec_eval(cl, res);
}

/* ------------------------------------------------------------ life */

int
cluster_init(struct server *srv, char *err, size_t errlen)
{
	const struct config *cfg = &srv->cfg;
	struct etcd_settings s = {0};
	struct cluster *cl;
	size_t n;

	srv->cluster = NULL;
	if (cfg->cluster_backend == CLUSTER_NONE)
		return 0;
	cl = xcalloc(1, sizeof *cl);
	cl->srv = srv;
	s.endpoints = cfg->cluster_endpoints;
	s.prefix = cfg->cluster_prefix;
	s.request_timeout_ms = (int)cfg->cluster_request_timeout_ms;
	s.tls_ca = cfg->cluster_tls_ca[0] ? cfg->cluster_tls_ca : NULL;
	s.tls_cert = cfg->cluster_tls_cert[0] ? cfg->cluster_tls_cert : NULL;
	s.tls_key = cfg->cluster_tls_key[0] ? cfg->cluster_tls_key : NULL;
	s.on_failover = on_failover;
	s.arg = cl;
	cl->etcd = etcd_new(srv->base, &s, err, errlen);
	if (cl->etcd == NULL) {
		free(cl);
		return -1;
	}
	n = strlen(cfg->cluster_prefix) + 3;
	cl->rprefix = xcalloc(1, n);
	snprintf(cl->rprefix, n, "%sr/", cfg->cluster_prefix);
	TAILQ_INIT(&cl->recs);
	cl->ev_deadline = evtimer_new(srv->base, deadline_cb, cl);
	cl->ev_ka = evtimer_new(srv->base, keepalive_cb, cl);
	cl->ev_retry = evtimer_new(srv->base, retry_cb, cl);
	cl->ev_recs = evtimer_new(srv->base, recs_cb, cl);
	if (!cl->ev_deadline || !cl->ev_ka || !cl->ev_retry || !cl->ev_recs) {
		snprintf(err, errlen, "cluster: out of memory");
		srv->cluster = cl;
		cluster_free(srv);
		return -1;
	}
	cl->state = S_EXPIRED; /* no session until the daemon is active */
	srv->cluster = cl;
	return 0;
}

void
cluster_free(struct server *srv)
{
	struct cluster *cl = srv->cluster;
	struct crec *rec;

	if (cl == NULL)
		return;
	if (cl->watch != NULL)
		etcd_watch_cancel(cl->watch);
	etcd_free(cl->etcd);
	while ((rec = TAILQ_FIRST(&cl->recs)) != NULL) {
		TAILQ_REMOVE(&cl->recs, rec, entry);
		rec->res->ext = NULL;
		free(rec->rprefix);
		free(rec);
	}
	mirror_clear(cl);
	if (cl->ev_deadline)
		event_free(cl->ev_deadline);
	if (cl->ev_ka)
		event_free(cl->ev_ka);
	if (cl->ev_retry)
		event_free(cl->ev_retry);
	if (cl->ev_recs)
		event_free(cl->ev_recs);
	free(cl->rprefix);
	free(cl);
	srv->cluster = NULL;
}

void
cluster_start(struct server *srv)
{
	struct cluster *cl = srv->cluster;

	if (cl == NULL || cl->state == S_STOPPED || (cl->state != S_EXPIRED) ||
	    cl->grant_inflight)
		return;
	cl->backoff_ms = 0;
	/* The mark covers every key this host owned (reserve_at_least). */
	if (srv->lm.last_token >= CLUSTER_TOKEN_BASE(0))
		cl->rev_floor =
		    (int64_t)((srv->lm.last_token - CLUSTER_TOKEN_BASE(0)) >>
			      20);
	session_begin(cl);
}

static void
on_stop_revoke(const struct etcd_result *r, void *arg)
{
	struct cluster *cl = arg;

	cl->stop_inflight = false;
	cl->stop_done = true;
	if (r->err != 0)
		log_warn("cluster: could not revoke the session on the way "
			 "out; other hosts wait for its TTL",
			 "error=\"%s\"", r->message);
}

void
cluster_stop(struct server *srv)
{
	struct cluster *cl = srv->cluster;
	struct crec *rec;
	int64_t lease;

	if (cl == NULL || cl->state == S_STOPPED)
		return;
	lease = cl->lease;
	cl->state = S_STOPPED;
	cl->gen++;
	lockmgr_cluster_until(&srv->lm, 0);
	TAILQ_FOREACH(rec, &cl->recs, entry) {
		lockmgr_cluster_shut(&srv->lm, rec->res);
	}
	evtimer_del(cl->ev_ka);
	evtimer_del(cl->ev_retry);
	evtimer_del(cl->ev_recs);
	evtimer_del(cl->ev_deadline);
	if (cl->watch != NULL) {
		etcd_watch_cancel(cl->watch);
		cl->watch = NULL;
	}
	cl->stop_done = true;
	if (lease != 0 &&
	    etcd_lease_revoke(cl->etcd, lease, on_stop_revoke, cl) == 0) {
		cl->stop_inflight = true;
		cl->stop_done = false;
	}
}

bool
cluster_stopped(const struct server *srv)
{
	return srv->cluster == NULL || srv->cluster->stop_done;
}

/* ------------------------------------------------------------ queries */

bool
cluster_covers(const struct server *srv, const char *name, size_t len)
{
	return srv->cluster != NULL &&
	       config_cluster_resource(&srv->cfg, name, len);
}

const char *
cluster_unavailable_reason(struct server *srv)
{
	static char buf[700];
	struct cluster *cl = srv->cluster;

	snprintf(buf, sizeof buf,
		 "the cluster cannot be reached (session %s; etcd endpoints "
		 "%s%s%s); check that etcd runs and that this host reaches "
		 "it, or set cluster.when_unavailable = queue to wait",
		 cl ? sess_names[cl->state] : "off", srv->cfg.cluster_endpoints,
		 cl && cl->msg[0] ? "; last error: " : "", cl ? cl->msg : "");
	return buf;
}

const char *
cluster_refuses(struct server *srv)
{
	struct cluster *cl = srv->cluster;

	cluster_check(srv);
	if (cl == NULL || session_usable(cl) ||
	    srv->cfg.cluster_when_unavailable != UNAVAILABLE_FAIL ||
	    cl->state == S_STOPPED)
		return NULL;
	return cluster_unavailable_reason(srv);
}

const char *
cluster_busy_reason(struct server *srv, const struct lm_res *res)
{
	static char buf[600];
	const struct crec *rec = rec_of(res);
	const struct mres *mr = rec ? rec_mres(rec) : NULL;
	const struct mkey *k = mr ? TAILQ_FIRST(&mr->keys) : NULL;

	(void)srv;
	if (k != NULL && rec != NULL && k->create_rev != rec->create_rev)
		snprintf(buf, sizeof buf,
			 "held in the cluster by host %s (arbiterd pid %u, "
			 "%s)",
			 k->host, k->pid, lockmgr_mode_name(k->mode));
	else
		snprintf(buf, sizeof buf, "held by another host");
	return buf;
}

uint64_t
cluster_valid_until(const struct server *srv)
{
	return srv->cluster ? srv->cluster->valid_until : 0;
}

uint32_t
cluster_hosts_ahead(const struct server *srv, const struct lm_res *res)
{
	const struct crec *rec = rec_of(res);
	const struct mres *mr;
	const struct mkey *k;
	uint32_t n = 0;

	(void)srv;
	if (rec == NULL || (mr = rec_mres(rec)) == NULL)
		return 0;
	if (rec->st == R_OWNED || rec->st == R_YIELDING)
		return 0;
	TAILQ_FOREACH(k, &mr->keys, entry) {
		if (rec->create_rev != 0 && k->create_rev >= rec->create_rev)
			break;
		n++;
	}
	return n;
}

void
cluster_status_resource(struct server *srv, const struct lm_res *res,
			Arbiter__ResourceStatus *s, struct dispatch_reply *rp)
{
	const struct crec *rec = rec_of(res);
	const struct mres *mr = rec ? rec_mres(rec) : NULL;
	const struct mkey *k;
	Arbiter__ClusterHost *hs, **hl;
	size_t n = 0;

	(void)srv;
	if (!res->cluster)
		return;
	s->cluster_state = (char *)rec_names[rec ? rec->st : R_IDLE];
	if (mr == NULL)
		return;
	hs = dispatch_keep(rp, xcalloc(mr->n + 1, sizeof *hs));
	hl = dispatch_keep(rp, xcalloc(mr->n + 1, sizeof *hl));
	/* Holding hosts first, then the queue, each in create order. */
	for (int pass = 0; pass < 2; pass++) {
		bool blocked_excl = false, blocked_any = false;

		TAILQ_FOREACH(k, &mr->keys, entry) {
			bool holding = k->mode == LM_EXCLUSIVE ? !blocked_any
							       : !blocked_excl;
			Arbiter__ClusterHost *h;

			blocked_any = true;
			if (k->mode == LM_EXCLUSIVE)
				blocked_excl = true;
			if (holding != (pass == 0))
				continue;
			h = &hs[n];
			arbiter__cluster_host__init(h);
			h->host_id = (char *)k->host;
			h->has_pid = h->has_mode = h->has_holding = true;
			h->has_create_revision = true;
			h->pid = k->pid;
			h->mode = dispatch_mode(k->mode);
			h->holding = holding;
			h->create_revision = k->create_rev;
			if (rec != NULL && k->create_rev == rec->create_rev) {
				h->has_holders = h->has_waiters = true;
				h->holders = res->nholders;
				h->waiters = res->nwaiters;
			}
			hl[n++] = h;
		}
	}
	s->n_hosts = n;
	s->hosts = hl;
}

Arbiter__Cluster *
cluster_report(struct server *srv, struct dispatch_reply *rp)
{
	struct cluster *cl = srv->cluster;
	Arbiter__Cluster *m;
	Arbiter__Histogram *h;
	struct hist_summary sum;
	uint64_t boot = boot_ns();

	if (cl == NULL)
		return NULL;
	m = dispatch_keep(rp, xcalloc(1, sizeof *m));
	h = dispatch_keep(rp, xcalloc(1, sizeof *h));
	arbiter__cluster__init(m);
	arbiter__histogram__init(h);
	m->state = (char *)sess_names[cl->state];
	m->host_id = srv->cfg.cluster_host_id;
	m->endpoint = (char *)etcd_endpoint(cl->etcd);
	m->has_lease_id = m->has_valid_for_ms = m->has_sessions = true;
	m->has_session_losses = m->has_etcd_errors = m->has_failovers = true;
	m->lease_id = cl->lease;
	m->valid_for_ms =
	    cl->valid_until > boot ? (cl->valid_until - boot) / 1000000 : 0;
	m->sessions = cl->sessions;
	m->session_losses = cl->losses;
	m->etcd_errors = cl->errors;
	m->failovers = cl->failovers;
	hist_summarize(&cl->ka_rtt, &sum);
	report_fill_hist(h, &sum);
	m->keepalive_rtt = h;
	m->message = cl->msg;
	return m;
}

void
cluster_metrics(struct server *srv, struct evbuffer *out)
{
	struct cluster *cl = srv->cluster;
	uint64_t boot = boot_ns();

	if (cl == NULL)
		return;
	evbuffer_add_printf(
	    out,
	    "# HELP arbiter_cluster_session_active 1 while this host's etcd "
	    "session lets it grant cluster leases\n"
	    "# TYPE arbiter_cluster_session_active gauge\n"
	    "arbiter_cluster_session_active %d\n"
	    "# HELP arbiter_cluster_session_valid_seconds Time left before "
	    "the session's deadline\n"
	    "# TYPE arbiter_cluster_session_valid_seconds gauge\n"
	    "arbiter_cluster_session_valid_seconds %.3f\n"
	    "# HELP arbiter_cluster_sessions_total etcd session leases "
	    "granted\n"
	    "# TYPE arbiter_cluster_sessions_total counter\n"
	    "arbiter_cluster_sessions_total %" PRIu64 "\n"
	    "# HELP arbiter_cluster_session_losses_total Deadlines that "
	    "passed unrenewed (every cluster lease revoked)\n"
	    "# TYPE arbiter_cluster_session_losses_total counter\n"
	    "arbiter_cluster_session_losses_total %" PRIu64 "\n"
	    "# HELP arbiter_cluster_etcd_errors_total etcd requests that "
	    "failed\n"
	    "# TYPE arbiter_cluster_etcd_errors_total counter\n"
	    "arbiter_cluster_etcd_errors_total %" PRIu64 "\n"
	    "# HELP arbiter_cluster_failovers_total Changes of etcd member\n"
	    "# TYPE arbiter_cluster_failovers_total counter\n"
	    "arbiter_cluster_failovers_total %" PRIu64 "\n"
	    "# HELP arbiter_cluster_keepalive_rtt_seconds Round trip of the "
	    "session keepalives\n"
	    "# TYPE arbiter_cluster_keepalive_rtt_seconds summary\n"
	    "arbiter_cluster_keepalive_rtt_seconds_sum %.6f\n"
	    "arbiter_cluster_keepalive_rtt_seconds_count %" PRIu64 "\n",
	    session_usable(cl) ? 1 : 0,
	    cl->valid_until > boot ? (double)(cl->valid_until - boot) / 1e9
				   : 0.0,
	    cl->sessions, cl->losses, cl->errors, cl->failovers,
	    (double)cl->ka_rtt.sum_ns / 1e9, cl->ka_rtt.count);
}
