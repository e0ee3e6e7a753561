/*
 * etcd.h — an asynchronous etcd v3 client over its JSON gateway.
 *
 * Requests are POST /v3/... over HTTP/1.1 with libevent's own HTTP client,
 * bodies are JSON (jansson), keys and values travel base64-encoded as the
 * gateway wants. Nothing blocks and nothing sleeps: every call queues a
 * request and returns; the answer comes in a callback on the event base.
 *
 * Settings, documented so the text can become arbiter.conf's [cluster]
 * section:
 *
 *   # endpoints: the etcd members, comma-separated http://host:port or
 *   #   https://host:port. Requests go to one member at a time; a member
 *   #   that does not answer within request_timeout_ms (hung, SIGSTOPped,
 *   #   partitioned) or refuses the connection is left for the next one.
 *   #   A member that failed is retried after a back-off of 100 ms that
 *   #   doubles up to 5 s. List every member of the cluster.
 *   endpoints = http://127.0.0.1:2379
 *
 *   # prefix: every key arbiter writes starts with this; keep it unique
 *   #   per arbiter deployment sharing one etcd.
 *   prefix = arbiter/
 *
 *   # request_timeout_ms: how long one request may take on one member
 *   #   before that member is left. Above etcd's worst commit latency on a
 *   #   healthy cluster (a few ms on a LAN, 10-50 ms across zones); well
 *   #   below session_ttl_ms / 3.
 *   request_timeout_ms = 1000
 *
 *   # tls_ca, tls_cert, tls_key: for https endpoints: the CA file that
 *   #   signed the members' certificates (empty: the system's CAs), and the
 *   #   client certificate and key when etcd runs with --client-cert-auth.
 *   tls_ca =
 *   tls_cert =
 *   tls_key =
 *
 *   # max_response_bytes: the largest reply (or watch message) accepted;
 *   #   a larger one fails that request, so a huge range cannot exhaust
 *   #   memory. Default 4 MiB.
 *   max_response_bytes = 4194304
 *
 * What this module owns: connections to the members, fail-over between
 * them, request timeouts, back-off, JSON and base64, response size caps.
 * What it leaves to its caller: what the keys mean, sessions, keepalive
 * timing and deadlines, and re-ranging and re-watching after a fail-over
 * (it reports each one through on_failover and ends every watch).
 * It never logs and never exits: errors are values with a message that
 * names the endpoint at fault. Like the rest of the daemon it needs
 * SIGPIPE ignored (a member that dies mid-request must not kill us).
 */
#ifndef ARBITER_ETCD_H
#define ARBITER_ETCD_H

#include <stddef.h>
#include <stdint.h>

struct event_base;

#define ETCD_MAX_ENDPOINTS     16
#define ETCD_DEFAULT_TIMEOUT   1000
#define ETCD_DEFAULT_MAX_REPLY (4u << 20)
#define ETCD_BACKOFF_MIN_MS    100
#define ETCD_BACKOFF_MAX_MS    5000

/*
 * Plain settings; the strings are copied by etcd_new. Zero values mean the
 * defaults above. on_failover, when set, is called each time the member in
 * use changes: from and to are endpoint URLs (to is NULL when no member is
 * usable), why says what happened to from. The caller re-ranges and
 * re-watches then.
 */
struct etcd_settings {
	const char *endpoints;
	const char *prefix;
	int request_timeout_ms;
	const char *tls_ca;
	const char *tls_cert;
	const char *tls_key;
	size_t max_response_bytes;
	void (*on_failover)(const char *from, const char *to, const char *why,
			    void *arg);
	void *arg;
};

struct etcd_kv {
	const char *key; /* decoded, NUL-terminated; key_len excludes it */
	size_t key_len;
	const char *value; /* decoded, NUL-terminated */
	size_t value_len;
	int64_t create_revision;
	int64_t mod_revision;
	int64_t version;
	int64_t lease;
};

/*
 * The outcome of one request. Everything it points to lives until the
 * callback returns: copy what you keep.
 *
 * err is 0 or a negative errno: -ETIMEDOUT (every member tried timed out),
 * -ECONNREFUSED / -EHOSTUNREACH (no member reachable), -EAGAIN (all
 * members are in back-off), -EMSGSIZE (the reply exceeds
 * max_response_bytes), -ENOENT (lease not found or expired), -EPROTO (a
 * reply that is not what etcd sends), -EIO (etcd answered with an error),
 * -ECANCELED (etcd_free ran). message says what happened and names the
 * endpoint(s); it is "" on success.
 */
struct etcd_result {
	int err;
	const char *message;
	const char *endpoint; /* the member that answered, or the last tried */
	int failed_over;      /* the member in use changed during the request */
	int64_t revision;     /* header revision */
	uint64_t sent_ns; /* CLOCK_BOOTTIME when the answered try was sent */
	uint64_t rtt_ns;  /* from sent_ns to the answer */
	int64_t lease_id; /* grant, keepalive, revoke */
	int64_t ttl;	  /* grant, keepalive: seconds granted */
	int succeeded;	  /* txn: the compare held (the key was absent) */
	int64_t deleted;  /* delete: keys removed */
	const struct etcd_kv *kvs; /* range, txn: sorted by create_revision */
	size_t n_kvs;
	int64_t count; /* range: keys matching (kvs may be limited) */
};

typedef void (*etcd_cb)(const struct etcd_result *r, void *arg);

struct etcd_client;

/* A client on base, or NULL with a message in err (bad endpoint, TLS file
 * that cannot be read). Connects lazily, on the first request. */
struct etcd_client *etcd_new(struct event_base *base,
			     const struct etcd_settings *s, char *err,
			     size_t errlen);
/* Frees everything. Pending requests and watches end without callbacks.
 * Not from inside one of this client's callbacks. Accepts NULL. */
void etcd_free(struct etcd_client *c);

/* The endpoint in use now (for status and logs). */
const char *etcd_endpoint(const struct etcd_client *c);
/* The prefix from the settings. */
const char *etcd_prefix(const struct etcd_client *c);

/*
 * Requests. Unary requests run one after another on one connection,
 * keepalives on a second one, each watch on its own, all to the member in
 * use. A request that fails on a member (timeout, refused, "no leader") is
 * sent again to the next member not yet tried, so it may have been applied
 * by the first: a grant may leave an unused lease that expires after its
 * TTL, and a put-if-absent whose first try landed answers succeeded = 0
 * with the caller's own key (its lease) among the kvs.
 *
 * Each returns 0 once queued (the callback always comes later,
 * never from inside the call), or a negative errno when it could not be
 * queued (-EINVAL, -ENOMEM, -EBUSY). Keys are byte strings with a length.
 */
int etcd_lease_grant(struct etcd_client *c, int64_t ttl_s, etcd_cb cb,
		     void *arg);
/* One keepalive at a time: -EBUSY while one is in flight. On success
 * r->ttl > 0 and r->sent_ns is when the answered request was sent, so
 * valid_until = sent_ns + ttl * (1 - drift) - margin is safe. A lease that
 * is gone answers err = -ENOENT. */
int etcd_lease_keepalive(struct etcd_client *c, int64_t lease_id, etcd_cb cb,
			 void *arg);
int etcd_lease_revoke(struct etcd_client *c, int64_t lease_id, etcd_cb cb,
		      void *arg);
/* TimeToLive: r->ttl is the seconds left, -1 when the lease is gone. */
int etcd_lease_ttl(struct etcd_client *c, int64_t lease_id, etcd_cb cb,
		   void *arg);

/*
 * Put key = value attached to lease (0: none) if and only if key does not
 * exist (compare create_revision == 0). In the same transaction, whether
 * or not the put happened, range over range_prefix (NULL: no range),
 * sorted by create_revision ascending, so the caller learns at once which
 * key owns (the lowest create_revision). r->succeeded says whether the put
 * was done; the put key's create_revision is then r->revision.
 */
int etcd_txn_put_if_absent(struct etcd_client *c, const char *key,
			   size_t key_len, const char *value, size_t value_len,
			   int64_t lease, const char *range_prefix,
			   size_t prefix_len, etcd_cb cb, void *arg);
/* Plain put (tests and tools). */
int etcd_put(struct etcd_client *c, const char *key, size_t key_len,
	     const char *value, size_t value_len, int64_t lease, etcd_cb cb,
	     void *arg);
/* All keys starting with prefix, ascending by create_revision; limit 0 is
 * all (bounded by max_response_bytes). */
int etcd_range_prefix(struct etcd_client *c, const char *prefix,
		      size_t prefix_len, int64_t limit, etcd_cb cb, void *arg);
int etcd_delete(struct etcd_client *c, const char *key, size_t key_len,
		etcd_cb cb, void *arg);

/*
 * Watch. Events of a prefix watch come one at a time, in revision order,
 * with the previous key-value for DELETE and overwrites.
 */
enum etcd_watch_kind {
	ETCD_WATCH_CREATED, /* the member accepted the watch: r->revision */
	ETCD_WATCH_EVENT,   /* one event in ev */
	ETCD_WATCH_ENDED,   /* r->err says why; the watch is freed after this */
};

enum etcd_event_type { ETCD_PUT = 0, ETCD_DELETE = 1 };

struct etcd_event {
	enum etcd_event_type type;
	struct etcd_kv kv;	/* for DELETE: key and mod_revision only */
	struct etcd_kv prev_kv; /* valid when has_prev */
	int has_prev;
	int64_t revision; /* the header revision of the message */
};

struct etcd_watch;
typedef void (*etcd_watch_cb)(enum etcd_watch_kind kind,
			      const struct etcd_event *ev,
			      const struct etcd_result *r, void *arg);

/*
 * Watch every key starting with prefix, from start_revision on. To miss
 * nothing after a range at header revision R, start at R + 1: etcd then
 * streams new events at once (at R or below it catches up on a 100 ms
 * loop). The watch stays on the member in use; when that member is left
 * (a timeout elsewhere, a lost connection) the watch ENDS with an error:
 * re-range and watch again. Returns NULL with -errno in *errp when it
 * cannot start.
 */
struct etcd_watch *etcd_watch_prefix(struct etcd_client *c, const char *prefix,
				     size_t prefix_len, int64_t start_revision,
				     etcd_watch_cb cb, void *arg, int *errp);
/* Stops a watch; no callback after this. Safe from inside its callback. */
void etcd_watch_cancel(struct etcd_watch *w);

/* CLOCK_BOOTTIME in ns, the clock of sent_ns. */
uint64_t etcd_now_ns(void);

/*
 * The timing rule for a keepalive (or grant) sent at sent_ns and answered
 * with ttl_s > 0: etcd cannot expire the lease before sent_ns + TTL, so the
 * host may act on it until
 *
 *     sent_ns + ttl_s * (1 - drift_ppm / 10^6) - margin_ms
 *
 * Returns that instant on CLOCK_BOOTTIME, or 0 when there is none (ttl_s
 * <= 0, or drift and margin eat the whole TTL).
 */
uint64_t etcd_valid_until(uint64_t sent_ns, int64_t ttl_s, uint32_t drift_ppm,
			  uint32_t margin_ms);

#endif
