/*
 * libarbiter: the C client of arbiterd.
 *
 * A client is one connection to the daemon. Leases live as long as that
 * connection (unless given a ttl): when the process dies, the kernel closes
 * the socket and the daemon hands the resource to the next waiter at once.
 *
 * Errors: every function returning int gives 0 (or a positive count) on
 * success and a negative value on failure: -errno for system errors
 * (-ENOENT: no socket at that path, -ECONNREFUSED: nothing listening,
 * -EACCES: no permission), or -ARB_E* for errors the daemon reported.
 * arb_strerror() names the error; arb_last_error() has the full sentence
 * from the daemon or from the library, naming the path, resource or holder.
 *
 * Threads: an arb_client is not thread-safe. Use one per thread, or guard
 * each one with a mutex. Separate clients are independent. The library
 * never logs, never exits and installs no signal handlers.
 *
 * Ownership: arb_connect() allocates the client; arb_close() frees it and
 * closes the connection, which ends every lease it holds.
 *
 * Who answers: a client talks only to a server it trusts, and fails closed
 * with -ARB_EUNTRUSTED (arb_connect_error() says why and what to do).
 * When the default socket is used, its folder (/tmp/arbiter-UID, or
 * /run/arbiter for root) must be a real folder owned by the caller and not
 * writable by group or others. For every socket, the uid of the process
 * serving it (SO_PEERCRED) must be the caller's effective uid, root, a uid
 * in $ARBITER_TRUST_UID (comma-separated uids or user names; `*` turns the
 * check off) or given to arb_trust_uid(), or the owner of the socket's
 * folder when that folder is closed to group and others and sits in a
 * folder of root's closed the same way (only root can have handed it over,
 * as systemd's RuntimeDirectory= does).
 *
 * Waits are bounded by the client itself, whatever the daemon does: each
 * request's answer (connect and handshake included) within the I/O timeout
 * (ARB_DEFAULT_IO_TIMEOUT_MS unless arb_connect_timeout() says otherwise),
 * else -ETIMEDOUT; an acquire with a timeout within that timeout plus
 * ARB_ACQUIRE_MARGIN_MS, else -ARB_ETIMEOUT with the request withdrawn.
 */
#ifndef ARBITER_CLIENT_H
#define ARBITER_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Errors the daemon reports (returned negated). Values match the protocol's
 * ErrorCode + 1000 so they never collide with errno values. */
enum arb_error {
	ARB_EBADFRAME = 1001,	  /* the daemon could not decode our frame */
	ARB_EBADREQUEST = 1002,	  /* a field was missing or invalid */
	ARB_ENOTWELCOME = 1003,	  /* request before Hello */
	ARB_EVERSION = 1004,	  /* protocol version not supported */
	ARB_EINVALIDNAME = 1005,  /* resource name not 1..255 bytes UTF-8 */
	ARB_EALREADYHELD = 1006,  /* this connection holds or waits for it */
	ARB_EWOULDBLOCK = 1007,	  /* try-lock and it is held */
	ARB_ETIMEOUT = 1008,	  /* waited timeout_ms without a grant */
	ARB_EUNKNOWNLEASE = 1009, /* no such lease on this connection */
	ARB_EFORBIDDEN = 1010,	  /* not allowed (uid/gid, admin) */
	ARB_ELIMIT = 1011,	  /* a daemon limit was hit */
	ARB_ESHUTTINGDOWN = 1012, /* the daemon is stopping */
	ARB_ESTORAGE = 1013,	  /* the storage lock could not be taken */
	ARB_EINTERNAL = 1014,	  /* a bug in arbiter */
	ARB_ECANCELLED = 1015,	  /* the pending acquire was withdrawn */
	ARB_EDEADLOCK = 1016,	  /* upgrade refused: another holder of the
				     resource already waits to upgrade */
	ARB_EUNAVAILABLE = 1017,  /* a cluster resource while the daemon
				     cannot reach etcd (or the cluster
				     refuses grants) */
	ARB_EPROTO = 1100,	  /* the daemon sent something we cannot read */
	ARB_ECONNLOST = 1101,	  /* the connection closed under us */
	ARB_EREVOKED = 1102,	  /* the lease was revoked (see arb_event) */
	ARB_EUNTRUSTED = 1103,	  /* the socket or its server is not trusted */
};

/* The bound of every wait for an answer, unless arb_connect_timeout() sets
 * another: a hung daemon fails a call with -ETIMEDOUT after 10 s. */
#define ARB_DEFAULT_IO_TIMEOUT_MS 10000
/* An acquire with a timeout returns at most this long after it, even when
 * the daemon never answers (its own answer normally comes well before). */
#define ARB_ACQUIRE_MARGIN_MS 150
/* arb_trust_uid(ARB_TRUST_ANY_UID) trusts every server: the check is off. */
#define ARB_TRUST_ANY_UID ((uid_t)-1)

enum arb_mode { ARB_EXCLUSIVE = 0, ARB_SHARED = 1 };

#define ARB_WAIT_FOREVER (-1)

typedef struct arb_client arb_client;

struct arb_lease {
	uint64_t id;	    /* lease id, for release and renew */
	uint64_t token;	    /* fencing token: grows with every grant */
	uint64_t waited_us; /* time spent queued */
	uint64_t ttl_ms;    /* 0: lives with the connection */
	enum arb_mode mode;
};

/* Called while an acquire waits: queue position (1 = next) and the holder. */
typedef void arb_queued_fn(void *ctx, const char *resource, uint32_t position,
			   uint32_t holder_pid, const char *holder_name);

struct arb_acquire_opts {
	uint64_t ttl_ms;	  /* 0: no ttl; else Renew before it ends */
	int64_t lock_delay_ms;	  /* -1: the daemon's default */
	arb_queued_fn *on_queued; /* NULL: no queue reports (arb_acquire then
				     asks the daemon for none: one frame and
				     one wake-up less per wait) */
	void *ctx;
	bool position_updates; /* report every change, not just the first */
};

/*
 * Connect and say Hello. socket_path NULL means $ARBITER_SOCKET, else the
 * default (/run/arbiter/arbiter.sock for root, /tmp/arbiter-UID/arbiter.sock
 * otherwise). name is shown in status (NULL: none). On failure *out is NULL
 * and the error's text is in arb_connect_error() (thread-local).
 */
int arb_connect(arb_client **out, const char *socket_path, const char *name);
/*
 * The same with another I/O bound: connecting, the handshake and every
 * later call that waits for an answer (not a grant: an acquire waits as its
 * own timeout says) fail with -ETIMEDOUT when the answer has not come
 * within timeout_ms. timeout_ms < 0: ARB_DEFAULT_IO_TIMEOUT_MS (what
 * arb_connect uses); 0: no bound at all.
 */
int arb_connect_timeout(arb_client **out, const char *socket_path,
			const char *name, int timeout_ms);
const char *arb_connect_error(void);
/*
 * Trust servers run by uid too, for every later connect in this process,
 * like a uid in $ARBITER_TRUST_UID (ARB_TRUST_ANY_UID: any uid). Thread-safe.
 * Returns 0, or -ENOSPC past 64 uids.
 */
int arb_trust_uid(uid_t uid);
void arb_close(arb_client *c);

/* The socket's file descriptor, for poll(2) with the non-blocking API, or to
 * pass to a child process that must keep the leases alive (see arbiterctl run).
 */
int arb_fd(const arb_client *c);
/* Keep (true) or drop (false) the connection across exec(). Default: drop. */
int arb_set_inherit(arb_client *c, bool inherit);

/*
 * Acquire a lease, blocking until granted, refused or timed out.
 * timeout_ms: ARB_WAIT_FOREVER, 0 to try once (-ARB_EWOULDBLOCK if held), or
 * a bound (-ARB_ETIMEOUT when it runs out). opts may be NULL. With a
 * timeout it returns within timeout_ms + ARB_ACQUIRE_MARGIN_MS whatever the
 * daemon does: if the daemon has not answered by then, the request is
 * withdrawn and a grant that still arrives is released unseen.
 */
int arb_acquire(arb_client *c, const char *resource, enum arb_mode mode,
		int64_t timeout_ms, const struct arb_acquire_opts *opts,
		struct arb_lease *out);
int arb_release(arb_client *c, uint64_t lease_id);
/*
 * Release without waiting for the answer: the daemon applies it before
 * anything sent later on this connection (an acquire right after it queues
 * behind those already waiting), and sends no reply when it works. If the
 * lease had already ended, an ARB_EV_FAILED event carries the error. Saves
 * a round trip and two wake-ups per release.
 */
int arb_release_nowait(arb_client *c, uint64_t lease_id);
/* Extend a ttl lease; ttl_ms 0 keeps its own. */
int arb_renew(arb_client *c, uint64_t lease_id, uint64_t ttl_ms);
/*
 * Name the process this connection (and its leases) now belongs to: a
 * child that inherited it (arb_set_inherit). Status shows pid beside the
 * connecting process's; 0 withdraws it. With a daemon that predates
 * Handover nothing is sent and it returns -EOPNOTSUPP: status then shows
 * the connecting process only, which is no reason to fail.
 */
int arb_handover(arb_client *c, uint32_t pid);

/*
 * Convert a lease this client holds to target, in place: the lease is never
 * let go, so nobody can slip in between.
 *
 * Downgrade (ARB_EXCLUSIVE to ARB_SHARED) never waits and keeps the token;
 * the shared requests queued first are granted at once. Upgrade (ARB_SHARED
 * to ARB_EXCLUSIVE) waits for the other shared holders to leave, ahead of
 * every queued request, and brings a new fencing token, higher than every
 * earlier one: use it for the writes. timeout_ms as for arb_acquire:
 * ARB_WAIT_FOREVER, 0 to try once (-ARB_EWOULDBLOCK), or a bound
 * (-ARB_ETIMEOUT). Converting to the mode held changes nothing.
 *
 * On success the lease's token is stored in *new_token (may be NULL). On
 * every failure the lease is still held in the mode it had:
 * -ARB_EDEADLOCK when another holder already waits to upgrade the same
 * resource (both would wait for each other for ever: release this lease,
 * then the other proceeds, and acquire exclusive anew); -ARB_ETIMEOUT,
 * -ARB_EWOULDBLOCK; -ARB_EUNKNOWNLEASE when the lease is not this
 * client's (or ended); -ARB_EBADREQUEST when it is not granted yet or an
 * upgrade of it already waits; -ARB_ECANCELLED when the lease ended while
 * the upgrade waited (an ARB_EV_REVOKED event tells why, where the daemon
 * sent one); -EOPNOTSUPP when the daemon predates conversion (it then
 * closes the connection). With a timeout it returns within timeout_ms +
 * ARB_ACQUIRE_MARGIN_MS whatever the daemon does: a late upgrade is
 * withdrawn by converting back to shared, so the lease stays shared.
 * A downgrade the daemon does not answer within the I/O bound fails with
 * -ETIMEDOUT, and the lease may be shared already: treat it as shared.
 */
int arb_convert(arb_client *c, uint64_t lease_id, enum arb_mode target,
		int timeout_ms, uint64_t *new_token);

/*
 * Keep ttl leases alive from your own loop: renews every lease of this
 * client that has a ttl and is a third of it past its last renewal, and
 * returns the milliseconds until the next one is due (use it as a poll
 * timeout), or -1 when no lease has a ttl. On failure returns the negative
 * error of the first lease that could not be renewed (expired or revoked
 * meanwhile); that lease is forgotten and arb_last_error() names it.
 */
int64_t arb_keepalive(arb_client *c);
int arb_ping(arb_client *c, char *role, size_t rolelen);
/* Admin: revoke one lease, or every lease of a pid; returns how many. */
int arb_revoke(arb_client *c, uint64_t lease_id, uint32_t pid);

/*
 * Stats and status as the daemon's protobuf messages, for tools. The returned
 * pointer (an Arbiter__Stats / Arbiter__Status from arbiter.pb-c.h) stays
 * valid until the next call on this client. The daemon answers in pages of
 * at most 1000 resources; these fetch every page and return them as one
 * message (a resource created or ended meanwhile may be missing).
 */
int arb_stats(arb_client *c, const char *resource, const void **stats);
int arb_status(arb_client *c, const char *resource, const void **status);
int arb_stats_reset(arb_client *c);

/* ---------------------------------------------------- events and async */

enum arb_event_kind {
	ARB_EV_GRANTED,	  /* an async acquire was granted (lease set) */
	ARB_EV_QUEUED,	  /* an async acquire waits (position set) */
	ARB_EV_FAILED,	  /* an async acquire failed (error set) */
	ARB_EV_REVOKED,	  /* a lease ended without us asking (reason set) */
	ARB_EV_REPLY,	  /* any other reply to an async request */
	ARB_EV_CONVERTED, /* an async convert happened (lease: id, token,
			     mode, waited_us) */
	ARB_EV_EXTENDED,  /* a cluster lease's deadline moved later (lease.id,
			     resource; the deadline: arb_lease_valid_until);
			     one per lease is kept queued, the latest */
};

struct arb_event {
	enum arb_event_kind kind;
	uint64_t request_id; /* the request it answers; 0 for REVOKED */
	struct arb_lease lease;
	uint32_t position;
	uint32_t holder_pid;
	int error;  /* negative, for FAILED */
	int reason; /* RevokeReason, for REVOKED */
	char resource[256];
	char message[512];
};

/*
 * Start an acquire without waiting; *request_id identifies its events.
 * Answers arrive through arb_next_event(). Cancel a pending one with
 * arb_cancel(). Here the caller's loop owns the clock: if the daemon's
 * answer is late, arb_cancel() it (that also ends the lease when a grant
 * crossed the cancel, so an ARB_EV_GRANTED after it is no longer held).
 */
int arb_acquire_async(arb_client *c, const char *resource, enum arb_mode mode,
		      int64_t timeout_ms, const struct arb_acquire_opts *opts,
		      uint64_t *request_id);
int arb_cancel(arb_client *c, uint64_t request_id);
/*
 * Start a convert without waiting (see arb_convert); *request_id
 * identifies its answer, an ARB_EV_CONVERTED or ARB_EV_FAILED event. To
 * give up a waiting upgrade and keep the lease shared, convert it to
 * ARB_SHARED: the upgrade then fails with -ARB_ECANCELLED (or, had it just
 * happened, the lease is downgraded again).
 */
int arb_convert_async(arb_client *c, uint64_t lease_id, enum arb_mode target,
		      int timeout_ms, uint64_t *request_id);
/*
 * Take the next event: 1 with *ev filled, 0 when none is ready now
 * (non-blocking; poll arb_fd() for POLLIN and call again), < 0 on error.
 * Revoked events seen during blocking calls are kept here too.
 */
int arb_next_event(arb_client *c, struct arb_event *ev);

/* ---------------------------------------------------- cluster leases */

/*
 * In cluster mode (the daemon's [cluster] section) a lease on a cluster-wide
 * resource has a deadline: the instant, on this host's CLOCK_BOOTTIME, after
 * which the daemon no longer vouches for it, because the host's etcd
 * session could not be renewed in time. The daemon moves it later after
 * every renewal (ARB_EV_EXTENDED), and revokes the lease (reason
 * ARB_REASON_CLUSTER_LOST) when it passes, but a frozen daemon says
 * nothing: treat the lease as lost at its deadline whatever the daemon
 * says, as arbiterctl run does. A local lease has no deadline.
 *
 * The library keeps the deadline of every lease this client was granted,
 * updated by each Extended it reads (in arb_next_event and while a blocking
 * call waits for its answer), until the lease is released or revoked.
 */

/* CLOCK_BOOTTIME now, in ns: the clock of every deadline. */
uint64_t arb_boottime_ns(void);
/* The deadline of a lease this client holds (CLOCK_BOOTTIME ns); 0 for a
 * local lease, or one this client does not hold (any more). */
uint64_t arb_lease_valid_until(const arb_client *c, uint64_t lease_id);
/*
 * Whether the lease may still be relied on, by what this client has read
 * so far and the clock (it reads nothing from the socket): false once its
 * deadline has passed, even if the daemon said nothing; false for a lease
 * released, revoked or not granted to this client, and after the
 * connection was lost. A local lease stays valid until its Revoked is read.
 */
bool arb_lease_valid(const arb_client *c, uint64_t lease_id);
/* True when the daemon's Welcome said it runs in cluster mode. */
bool arb_cluster_mode(const arb_client *c);
/*
 * Hosts whose etcd keys are ahead of this host's in a cluster resource's
 * queue, as the Queued being reported says: the one an on_queued callback
 * is called for (the callback's ctx can carry the client), else the
 * ARB_EV_QUEUED that arb_next_event() returned last. The position is then
 * among this host's waiters. 0 for a local resource.
 */
uint32_t arb_hosts_ahead(const arb_client *c);

/* RevokeReason values in arb_event.reason. */
enum arb_reason {
	ARB_REASON_UNSPECIFIED = 0,
	ARB_REASON_DISCONNECT = 1,
	ARB_REASON_EXPIRED = 2,	     /* its ttl ran out unrenewed */
	ARB_REASON_ADMIN = 3,	     /* arbiterctl revoke */
	ARB_REASON_SHUTDOWN = 4,     /* the daemon stopped */
	ARB_REASON_STORAGE_LOST = 5, /* the daemon lost its storage lock */
	ARB_REASON_CLUSTER_LOST = 6, /* a cluster lease past its deadline: the
					host's etcd session was not renewed */
};
/* A reason's name ("cluster_lost"), or "unknown". */
const char *arb_reason_name(int reason);

/* Error names and the last detailed message on this client. */
const char *arb_strerror(int err);
const char *arb_last_error(const arb_client *c);

/* The socket path the client would use for socket_path NULL. */
void arb_socket_path(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
