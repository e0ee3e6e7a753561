/*
 * lockmgr: the lease state machine. Resources, FIFO queues, modes, fencing
 * tokens, timeouts, TTLs and lock-delay, with time passed in by the caller.
 *
 * It does no I/O and knows nothing of libevent or sockets: the caller feeds it
 * requests and clock readings, then drains the events it produced (grants,
 * queue positions, failures, lease ends) and carries them out. Every function
 * is deterministic given its inputs, which is what lets the unit tests and the
 * model test drive it through every edge case.
 *
 * Conversion (lockmgr_convert) changes a held lease's mode in place, the
 * lease never let go. A downgrade to shared never waits. An upgrade to
 * exclusive waits only for the other shared holders to leave, in the
 * resource's conversion slot, which goes ahead of every queued request; a
 * second holder asking to upgrade while one waits would wait for it for ever
 * (each holds what the other waits for), so it is refused at once with
 * LM_CONV_ERR_DEADLOCK. One slot per resource is the whole conversion queue:
 * downgrades never wait, and any two waiting upgrades of one resource are
 * such a deadlock.
 *
 * Ownership: struct lm_owner is allocated by the caller (one per connection)
 * and must stay valid until lockmgr_drop_owner() has been called for it and
 * the events of that call have been drained. Everything else is owned here.
 * Pointers inside events stay valid until lockmgr_events_done().
 */
#ifndef ARBITER_LOCKMGR_H
#define ARBITER_LOCKMGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <uthash.h>

#define LM_NAME_MAX	   255
#define LM_CLIENT_NAME_MAX 64
#define LM_FOREVER	   UINT64_MAX

enum lm_mode { LM_EXCLUSIVE = 0, LM_SHARED = 1 };

/* Why a lease or a pending request ended. */
enum lm_end {
	LM_END_RELEASE,	     /* the holder released it */
	LM_END_DISCONNECT,   /* its connection closed */
	LM_END_EXPIRED,	     /* ttl ran out */
	LM_END_ADMIN,	     /* an administrator revoked it */
	LM_END_SHUTDOWN,     /* the daemon is stopping */
	LM_END_CANCEL,	     /* a pending request withdrawn by its client */
	LM_END_TIMEOUT,	     /* a pending request's timeout ran out */
	LM_END_STORAGE_LOST, /* the daemon lost the storage lock */
	LM_END_CLUSTER_LOST, /* cluster lease: the host's session ran out */
	LM_END_BUSY,	     /* cluster try-once: another host holds it */
	LM_END_UNAVAILABLE,  /* cluster request: the cluster is unreachable */
};

/* The outcome of lockmgr_acquire(). */
enum lm_result {
	LM_OK_GRANTED,	      /* granted now; an LM_EV_GRANTED was queued */
	LM_OK_QUEUED,	      /* waiting; an LM_EV_QUEUED was queued */
	LM_ERR_WOULD_BLOCK,   /* try-lock on a busy resource */
	LM_ERR_ALREADY_HELD,  /* owner holds or waits for this resource */
	LM_ERR_MAX_RESOURCES, /* limits.max_resources reached */
	LM_ERR_MAX_LEASES,    /* limits.max_leases_per_owner reached */
	LM_ERR_MAX_WAITERS,   /* limits.max_waiters_per_resource reached */
};

/* The outcome of lockmgr_convert(). */
enum lm_conv_result {
	LM_CONV_DONE,		 /* done; a GRANTED with .convert queued */
	LM_CONV_WAITING,	 /* the upgrade waits for the other holders */
	LM_CONV_ERR_UNKNOWN,	 /* the owner has no such lease or request */
	LM_CONV_ERR_NOT_HELD,	 /* the request is not granted yet */
	LM_CONV_ERR_PENDING,	 /* an upgrade of this lease already waits */
	LM_CONV_ERR_WOULD_BLOCK, /* try-once upgrade, and it would wait */
	LM_CONV_ERR_DEADLOCK,	 /* another holder's upgrade waits: each
				    would wait for the other for ever */
	LM_CONV_ERR_CLUSTER,	 /* an upgrade under a shared cluster key,
				    which only other hosts could end */
};

enum lm_req_state { LM_WAITING, LM_HELD };

enum lm_timer_kind { LM_T_REQ, LM_T_RES, LM_T_CONV };

struct lm_timer {
	uint64_t when; /* monotonic ns */
	int idx;       /* position in the heap, -1 when not armed */
	enum lm_timer_kind kind;
};

struct lm_res;

/*
 * Cluster resources (cluster mode) grant only what the host's cluster key
 * allows, set by the caller from what etcd says: nothing, shared leases
 * only, or anything. Their tokens come from the key (lockmgr_cluster_own)
 * instead of the daemon's counter.
 */
enum lm_gate { LM_GATE_CLOSED = 0, LM_GATE_SHARED, LM_GATE_ALL };

/* Grants under one cluster key: its tokens are base + 1 .. base + this. */
#define LM_CLUSTER_GRANTS ((UINT64_C(1) << 20) - 1)

/* One per connection, embedded in the caller's connection. */
struct lm_owner {
	uint64_t id; /* connection id, shown in status */
	uint32_t pid, uid, gid;
	uint32_t handed_to_pid; /* the client's word (Handover); 0: none */
	char name[LM_CLIENT_NAME_MAX + 1];

	/* Private to lockmgr. */
	TAILQ_HEAD(, lm_req) reqs;
	unsigned nreqs;
};

/* A pending request, which becomes a lease when granted (same id). */
struct lm_req {
	uint64_t id;  /* lease id, unique for the daemon's life */
	uint64_t tag; /* caller's value, echoed in events (request id) */
	struct lm_owner *owner;
	struct lm_res *res;
	enum lm_mode mode;
	enum lm_req_state state;
	uint64_t t_queued;  /* ns */
	uint64_t t_granted; /* ns, when held */
	uint64_t token;	    /* fencing token, when held */
	uint64_t ttl_ns;    /* 0: no expiry */
	uint64_t delay_ns;  /* lock-delay after an unclean end */
	uint32_t last_pos;  /* last position reported */
	bool position_updates;
	bool moved;	   /* on lockmgr->moved: its position update waits */
	bool converting;   /* held shared, its upgrade waits (res->converting);
			      shown by status */
	bool try_once;	   /* timeout 0 on a cluster resource: waits for the
			      cluster's answer only */
	uint64_t conv_tag; /* the waiting upgrade's caller value */
	uint64_t t_conv;   /* ns, when the waiting upgrade was asked */
	struct lm_timer timer; /* timeout while waiting, expiry while held */
	struct lm_timer conv_timer; /* the waiting upgrade's timeout */

	TAILQ_ENTRY(lm_req) q_entry; /* res->holders or res->waiters */
	TAILQ_ENTRY(lm_req) o_entry; /* owner->reqs */
	TAILQ_ENTRY(lm_req) m_entry; /* lockmgr->moved */
	UT_hash_handle hh;	     /* lockmgr->reqs by id */
};

TAILQ_HEAD(lm_req_list, lm_req);

struct lm_res {
	char *name;
	size_t len;
	struct lm_req_list holders; /* in grant order */
	struct lm_req_list waiters; /* FIFO */
	unsigned nholders, nwaiters, nwatchers;
	enum lm_mode held_mode;
	struct lm_req *converting; /* the holder whose upgrade waits, or NULL */
	struct lm_timer delay;	   /* lock-delay end */
	bool stalled;		   /* on lockmgr->stalled, waiting for tokens */
	bool dead;		   /* on lockmgr->dead, freed at events_done */
	/* Cluster resources only. */
	bool cluster;	      /* grants follow the host's cluster key */
	bool cdirty;	      /* on lockmgr->cdirty */
	enum lm_gate cgate;   /* what the key allows now */
	uint64_t ctoken_base; /* tokens: ctoken_base + ctoken_n */
	uint64_t ctoken_n;    /* grants under the key so far */
	void *ext;	      /* the caller's; non-NULL keeps it alive */
	TAILQ_ENTRY(lm_res) st_entry; /* lockmgr->stalled */
	TAILQ_ENTRY(lm_res) d_entry;  /* lockmgr->dead */
	TAILQ_ENTRY(lm_res) c_entry;  /* lockmgr->cdirty */
	UT_hash_handle hh;	      /* lockmgr->res by name */
};

enum lm_ev_kind {
	LM_EV_GRANTED,	   /* req became a lease */
	LM_EV_QUEUED,	   /* req waits; position and holder given */
	LM_EV_ENDED,	   /* a lease or pending request ended; see .end */
	LM_EV_NEED_TOKENS, /* grants stall until lockmgr_add_tokens() */
	LM_EV_BUSY,	   /* first lease outstanding (gate users: on-demand) */
	LM_EV_IDLE,	   /* no lease or request left */
};

/*
 * One thing the caller must carry out. For LM_EV_ENDED, .held tells whether
 * it was a lease (true) or a pending request (false); .end says why.
 *
 * .convert marks the outcome of a lockmgr_convert() call rather than of an
 * acquire; .tag is then the convert's tag and .mode the mode it asked for:
 *  - LM_EV_GRANTED: the lease now has .mode (it had .was) and .token; an
 *    upgrade brings a new token, a downgrade (or a convert to the mode held)
 *    keeps the lease's token. .immediate is false after waiting, .waited_ns
 *    how long.
 *  - LM_EV_ENDED (.held false): the waiting upgrade ended without happening.
 *    LM_END_TIMEOUT or LM_END_CANCEL leave the lease shared and held. Any
 *    other reason is the lease's own end: its LM_EV_ENDED follows at once.
 */
struct lm_event {
	enum lm_ev_kind kind;
	struct lm_owner *owner;
	const struct lm_res *res;
	uint64_t lease_id;
	uint64_t tag;
	enum lm_mode mode;
	uint64_t token;	    /* GRANTED */
	uint64_t ttl_ns;    /* GRANTED */
	uint64_t waited_ns; /* GRANTED; ENDED of a pending request */
	uint64_t held_ns;   /* ENDED of a lease */
	enum lm_end end;    /* ENDED */
	bool held;	    /* ENDED */
	bool immediate;	    /* GRANTED without waiting */
	bool convert;	    /* about a conversion; see above */
	enum lm_mode was;   /* GRANTED with .convert: the mode before */
	uint32_t position;  /* QUEUED, 1-based */
	const struct lm_owner *holder; /* QUEUED: first holder, may be NULL */
	unsigned nholders;	       /* QUEUED */
};

struct lm_limits {
	unsigned max_resources;		   /* 0: unlimited */
	unsigned max_leases_per_owner;	   /* held + pending; 0: unlimited */
	unsigned max_waiters_per_resource; /* 0: unlimited */
	/* Position updates: at most one per request per this interval (the
	 * latest position, sent by lockmgr_tick), except that reaching the
	 * head of the queue is told at once. 0: every move at once. */
	uint64_t position_interval_ns;
};

/* What the daemon uses: a waiter needs a few updates a second at most. */
#define LM_POSITION_INTERVAL_NS (250 * 1000000ULL)

struct lm_acquire {
	const char *resource; /* validated by the caller */
	size_t len;
	enum lm_mode mode;
	uint64_t timeout_ns; /* LM_FOREVER: wait forever; 0: try once */
	uint64_t ttl_ns;     /* 0: lives with the owner */
	uint64_t delay_ns;   /* lock-delay after an unclean end */
	uint64_t tag;
	bool position_updates;
	bool
	    quiet; /* no LM_EV_QUEUED when it waits (unless position_updates) */
	bool cluster; /* the resource is cluster-wide (its gate starts shut) */
};

struct lockmgr {
	struct lm_res *res;  /* by name */
	struct lm_req *reqs; /* by id */
	unsigned nres;
	unsigned nheld;	      /* leases */
	unsigned nwaiting;    /* pending requests */
	unsigned nconverting; /* held leases whose upgrade waits */
	uint64_t next_id;
	uint64_t last_token;  /* highest token handed out */
	uint64_t token_limit; /* may not hand out beyond this */
	bool open;	      /* gate: grants allowed */
	uint64_t hold_until;  /* lockmgr_hold_all(): no first grant before */
	bool busy;	      /* BUSY sent and no IDLE since */
	struct lm_limits limits;

	struct lm_timer **heap;
	size_t nheap, heap_cap;

	TAILQ_HEAD(, lm_res) stalled; /* want a token beyond token_limit */
	TAILQ_HEAD(, lm_res) dead;    /* empty, freed at events_done */
	TAILQ_HEAD(, lm_res) cdirty;  /* cluster resources whose demand moved */
	uint64_t cluster_until;	      /* no cluster grant at or after this */
	TAILQ_HEAD(, lm_req) moved;   /* position updates held back */
	uint64_t moved_due;	      /* when they go out; 0: none */

	struct lm_event *ev;
	size_t nev, ev_cap;
};

/* Set up an empty manager: gate open, no token limit, no limits. */
void lockmgr_init(struct lockmgr *lm);
/* Free everything. Owners must not be used with it afterwards. */
void lockmgr_free(struct lockmgr *lm);
void lockmgr_set_limits(struct lockmgr *lm, const struct lm_limits *limits);

/* Prepare a caller-owned owner for use; no allocation. */
void lockmgr_owner_init(struct lm_owner *o, uint64_t id);

/*
 * Ask for a resource. On LM_OK_* the new request's id goes to *lease_id and
 * an event says what happened; on LM_ERR_* nothing changed and no event was
 * queued. Fails with ENOMEM only by aborting (allocations are small).
 */
enum lm_result lockmgr_acquire(struct lockmgr *lm, struct lm_owner *o,
			       const struct lm_acquire *a, uint64_t now,
			       uint64_t *lease_id);

/*
 * End a lease or withdraw a pending request by lease id (tag_match false) or
 * by the caller's tag (tag_match true). Returns 0, or -ENOENT when the owner
 * has no such lease or request. Queues LM_EV_ENDED (RELEASE or CANCEL).
 */
int lockmgr_release(struct lockmgr *lm, struct lm_owner *o, uint64_t key,
		    bool by_tag, uint64_t now);

struct lm_convert {
	uint64_t lease_id;
	enum lm_mode mode;   /* the mode wanted */
	uint64_t timeout_ns; /* upgrade: LM_FOREVER, or 0 to try once */
	uint64_t tag;	     /* caller's value, echoed in its events */
};

/*
 * Change the mode of a lease the owner holds, without letting it go.
 *
 * Downgrade (exclusive to shared): done at once, keeping the lease's token;
 * the shared requests at the head of the queue are granted in the same call.
 * The token stays because a downgrade gives a right up and grants none:
 * nothing the holder does afterwards needs telling apart from what it did
 * before, and a downgrade that needed a new token could have to wait for the
 * caller to reserve tokens, which a downgrade never does.
 *
 * Upgrade (shared to exclusive): done at once when the holder is alone (the
 * gate open, no lock-delay, a token left), with a new fencing token higher
 * than every earlier one. Otherwise, unless timeout_ns is 0
 * (LM_CONV_ERR_WOULD_BLOCK), it waits in the resource's conversion slot,
 * still holding its shared lease: new and queued requests wait behind it,
 * and the other holders' leaving grants it. Its timeout (LM_END_TIMEOUT) or
 * withdrawal leaves the shared lease as it was; the lease's own end (release,
 * disconnect, expiry, revoke) ends it first, with the same reason.
 * LM_CONV_ERR_DEADLOCK when another holder's upgrade already waits, even
 * for a try-once: retrying could never succeed while it holds on, so the
 * answer says to let go.
 *
 * Converting to the mode held is done at once and changes nothing, except
 * that it withdraws this lease's waiting upgrade (LM_END_CANCEL): that is how
 * a client gives up waiting and keeps its shared lease.
 *
 * On LM_CONV_ERR_* nothing changed and no event was queued.
 */
enum lm_conv_result lockmgr_convert(struct lockmgr *lm, struct lm_owner *o,
				    const struct lm_convert *c, uint64_t now);

/* Extend a lease's ttl (ttl_ns 0 keeps its own). -ENOENT, or -EINVAL when
 * the lease has no ttl or is not held yet. */
int lockmgr_renew(struct lockmgr *lm, struct lm_owner *o, uint64_t lease_id,
		  uint64_t ttl_ns, uint64_t now);

/* End everything the owner holds or waits for, with the given reason. */
void lockmgr_drop_owner(struct lockmgr *lm, struct lm_owner *o, enum lm_end why,
			uint64_t now);

/* Admin revoke: one lease by id (-ENOENT if not held), or every lease held by
 * owners with this pid, as connecting peer or as handed_to_pid (returns how
 * many). Reason LM_END_ADMIN. */
int lockmgr_revoke_lease(struct lockmgr *lm, uint64_t lease_id, uint64_t now);
int lockmgr_revoke_pid(struct lockmgr *lm, uint32_t pid, uint64_t now);

/* End every lease (not the pending requests) with the given reason; used
 * when the storage lock is lost. Close the gate first so nothing is granted
 * in their place. Returns how many leases ended. */
int lockmgr_revoke_all(struct lockmgr *lm, enum lm_end why, uint64_t now);

/* Fire every deadline at or before now: timeouts, expiries, lock-delays. */
void lockmgr_tick(struct lockmgr *lm, uint64_t now);
/* The earliest pending deadline, or LM_FOREVER when there is none. */
uint64_t lockmgr_next_deadline(const struct lockmgr *lm);

/*
 * The gate: while closed nothing is granted (standby, on-demand storage not
 * yet held, shutdown); try-locks fail with WOULD_BLOCK and others queue.
 * Opening it grants every resource's queue head.
 */
void lockmgr_set_open(struct lockmgr *lm, bool open, uint64_t now);

/*
 * Hold every resource back until `until` (monotonic ns), as a lock-delay
 * would: the ones that exist now and every one first asked for before then.
 * Used after an unclean end of the storage's previous holder, whose lease
 * holders may still be finishing. A try-lock during the hold fails with
 * WOULD_BLOCK and leaves its resource behind, delayed, until the hold ends
 * (so the caller can tell why). until <= now ends nothing early: it only
 * stops holding resources that do not exist yet.
 */
void lockmgr_hold_all(struct lockmgr *lm, uint64_t until, uint64_t now);

/* Fencing tokens: start after `last` and never hand out beyond `limit`. */
void lockmgr_set_tokens(struct lockmgr *lm, uint64_t last, uint64_t limit);
/* Raise the limit (after the caller made it durable) and resume grants. */
void lockmgr_add_tokens(struct lockmgr *lm, uint64_t limit, uint64_t now);

/*
 * Cluster mode. The caller runs one etcd key per cluster resource for the
 * host's whole local queue and tells the manager what the key allows.
 *
 * lockmgr_cluster_until: no cluster resource grants at or after `until`
 * (monotonic ns; 0 for none): the session's deadline, checked on every
 * grant, so nothing is granted late even before the caller's timer fires.
 *
 * lockmgr_cluster_next_dirty: the next cluster resource whose demand
 * changed (a request queued or ended, a lease ended, an upgrade asked for,
 * its grants under the key used up), or NULL. The caller looks at its
 * holders and waiters and decides about the key.
 *
 * lockmgr_cluster_own: the key owns with gate (SHARED or ALL); tokens are
 * token_base + 1, + 2, ...; the queue head is granted at once.
 * lockmgr_cluster_shut: stop granting (yielding; the key is going).
 * lockmgr_cluster_revoke: the key is gone or the session ran out: shut,
 * and end every lease held with why (the pending requests stay queued).
 * lockmgr_cluster_end_waiters: end the pending requests with why, all of
 * them or only the try-once ones (LM_END_BUSY, LM_END_UNAVAILABLE).
 * lockmgr_cluster_pin: keep the resource while the caller has state for
 * it (ext non-NULL), even when no request is left; NULL lets it go.
 */
void lockmgr_cluster_until(struct lockmgr *lm, uint64_t until);
struct lm_res *lockmgr_cluster_next_dirty(struct lockmgr *lm);
void lockmgr_cluster_own(struct lockmgr *lm, struct lm_res *res,
			 enum lm_gate gate, uint64_t token_base, uint64_t now);
void lockmgr_cluster_shut(struct lockmgr *lm, struct lm_res *res);
int lockmgr_cluster_revoke(struct lockmgr *lm, struct lm_res *res,
			   enum lm_end why, uint64_t now);
int lockmgr_cluster_end_waiters(struct lockmgr *lm, struct lm_res *res,
				enum lm_end why, bool tries_only, uint64_t now);
void lockmgr_cluster_pin(struct lockmgr *lm, struct lm_res *res, void *ext);
/* The cluster queue moved (hosts ahead changed): waiters that asked for
 * position updates are told again. */
void lockmgr_cluster_moved(struct lockmgr *lm, struct lm_res *res,
			   uint64_t now);
/* Whether the head of res's queue (or its waiting upgrade) wants an
 * exclusive lease, and whether any waiter does. */
bool lockmgr_cluster_wants_exclusive(const struct lm_res *res);

/* Look-ups for status and error messages; NULL when absent. */
struct lm_res *lockmgr_find(const struct lockmgr *lm, const char *name,
			    size_t len);
struct lm_req *lockmgr_lease(const struct lockmgr *lm, uint64_t lease_id);
/* 1-based position of a waiting request, 0 if it is not waiting. */
uint32_t lockmgr_position(const struct lm_req *r);

/* The events queued since the last lockmgr_events_done(). */
static inline const struct lm_event *
lockmgr_events(const struct lockmgr *lm, size_t *n)
{
	*n = lm->nev;
	return lm->ev;
}
/* Forget the events and free resources that became empty. */
void lockmgr_events_done(struct lockmgr *lm);

const char *lockmgr_end_name(enum lm_end why);
const char *lockmgr_mode_name(enum lm_mode mode);

#endif
