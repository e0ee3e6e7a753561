/*
 * stats: counters and histograms, globally and per resource. No I/O and no
 * knowledge of output formats: dispatch.c feeds it lockmgr outcomes, and the
 * renderers (protobuf replies, the text protocol, Prometheus) read it.
 *
 * Counters are listed once (STATS_COUNTERS) and never go backwards while the
 * daemon runs; an admin "stats reset" moves a baseline that the Stats reply
 * subtracts, so Prometheus counters stay monotonic.
 *
 * Histograms are log-linear: 4 linear buckets per power of two of the
 * duration in units of 1.024 us, from 1 us to about 9.8 hours. A quantile is
 * reported as the midpoint of its bucket, so it is within 12.5 % of the true
 * value (and exact for the maximum, which is tracked apart).
 */
#ifndef ARBITER_STATS_H
#define ARBITER_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uthash.h>

#define STATS_COUNTERS(X)                                                      \
	X(acquired_immediate, "leases granted without waiting")                \
	X(acquired_after_wait, "leases granted after waiting in the queue")    \
	X(failed_timeout, "acquires that ran out of time")                     \
	X(failed_would_block, "try-locks refused because it was held")         \
	X(failed_forbidden, "requests refused by access control")              \
	X(failed_invalid, "acquires refused as invalid or over a limit")       \
	X(releases, "leases released by their holder")                         \
	X(cancelled, "pending acquires withdrawn by their client")             \
	X(revoked_disconnect, "leases ended because the holder disconnected")  \
	X(revoked_expired, "leases ended because their ttl ran out")           \
	X(revoked_admin, "leases revoked by an administrator")                 \
	X(revoked_shutdown, "leases ended by daemon shutdown")                 \
	X(revoked_storage_lost,                                                \
	  "leases ended because the storage lock was lost")                    \
	X(upgraded_immediate, "shared leases upgraded to exclusive at once")   \
	X(upgraded_after_wait,                                                 \
	  "shared leases upgraded to exclusive after the other holders left")  \
	X(downgraded, "exclusive leases downgraded to shared")                 \
	X(upgrade_timeout, "upgrades that ran out of time, lease kept shared") \
	X(upgrade_deadlock,                                                    \
	  "upgrades refused because another holder's upgrade already waited")  \
	X(revoked_cluster_lost,                                                \
	  "cluster leases ended because the etcd session ran out")             \
	X(cluster_yields, "cluster keys given up for another host's turn")

/*
 * Figures derived from the counters and the wait histogram, kept for the
 * names apps already use. prom: 0 where Prometheus derives it itself from
 * the counters (sum() or _sum/_count), so /metrics does not repeat it.
 */
#define STATS_DERIVED(X)                                                       \
	X(total_acquisitions, STATS_SUM, 0,                                    \
	  "leases granted, immediately or after waiting")                      \
	X(failed_acquisitions, STATS_SUM, 0,                                   \
	  "acquires refused: timeout, would-block, forbidden or invalid")      \
	X(average_wait_time, STATS_SECONDS, 0,                                 \
	  "mean wait before a grant, in seconds")                              \
	X(max_wait_time, STATS_SECONDS, 0,                                     \
	  "longest wait before a grant, in seconds")

/* The histograms, in seconds. */
#define STATS_HISTS(X)                                                         \
	X(wait, "How long acquisitions waited before the grant (0 when "       \
		"immediate)")                                                  \
	X(hold, "How long leases were held")                                   \
	X(cluster_wait, "How long this host's cluster key waited for the "     \
			"hosts ahead of it")                                   \
	X(cluster_hold, "How long this host's cluster key owned the resource") \
	X(upgrade_wait, "How long upgrades to exclusive waited for the other " \
			"holders to leave (0 when at once)")

enum stats_counter {
#define STATS_ENUM(name, help) STAT_##name,
	STATS_COUNTERS(STATS_ENUM)
#undef STATS_ENUM
	    STATS_NCOUNTERS
};

enum stats_hist_id {
#define STATS_HENUM(name, help) STATS_H_##name,
	STATS_HISTS(STATS_HENUM)
#undef STATS_HENUM
	    STATS_NHISTS
};

#define HIST_SUB     4
#define HIST_OCTAVES 36
#define HIST_BUCKETS (1 + HIST_SUB * HIST_OCTAVES + 1)

struct hist {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t max_ns;
	uint64_t b[HIST_BUCKETS];
};

struct hist_summary {
	uint64_t count;
	double sum, mean, max, p50, p90, p99; /* seconds */
};

struct stats_figures {
	uint64_t c[STATS_NCOUNTERS];
#define STATS_HIST_MEMBER(name, help) struct hist name;
	STATS_HISTS(STATS_HIST_MEMBER)
#undef STATS_HIST_MEMBER
};

struct stats_res {
	char *name; /* "" for the total and the overflow entry */
	size_t len;
	struct stats_figures cur;  /* since start */
	struct stats_figures base; /* at the last reset */
	uint64_t last_token;	   /* last fencing token granted */
	UT_hash_handle hh;
};

struct stats {
	struct stats_res total;
	struct stats_res other; /* resources past the tracking limit */
	struct stats_res *by_name;
	unsigned nres;
	unsigned max_res;
	uint64_t omitted; /* distinct resources folded into other */
};

/*
 * Every figure of one resource (or the total), each defined once: the
 * counters, then the derived figures, then the histograms. stats_emit()
 * is the one producer; the Stats reply, the text protocol and Prometheus
 * render what it yields, so a figure added to a list above reaches all of
 * them (tests/unit/test_stats.c checks that it does).
 */
enum stats_field_kind {
	STATS_COUNTER, /* u: a counter of STATS_COUNTERS */
	STATS_SUM,     /* u: a sum of counters */
	STATS_SECONDS, /* d: seconds */
	STATS_HIST,    /* h: a histogram, s: its summary */
};

struct stats_field {
	const char *name;
	const char *help;
	enum stats_field_kind kind;
	bool prom; /* rendered by Prometheus */
};

enum stats_field_id {
#define STATS_FID_C(name, help)		    STATS_F_##name,
#define STATS_FID_D(name, kind, prom, help) STATS_F_##name,
#define STATS_FID_H(name, help)		    STATS_F_##name,
	STATS_COUNTERS(STATS_FID_C) STATS_DERIVED(STATS_FID_D)
	    STATS_HISTS(STATS_FID_H)
#undef STATS_FID_C
#undef STATS_FID_D
#undef STATS_FID_H
		STATS_NFIELDS
};

struct stats_value {
	uint64_t u;
	double d;
	const struct hist *h;
	struct hist_summary s;
};

extern const struct stats_field stats_fields[STATS_NFIELDS];

/* The value of field i (an enum stats_field_id) of f. */
void stats_value(const struct stats_figures *f, unsigned i,
		 struct stats_value *out);
/* Call fn on every field of f, in stats_fields order. */
typedef void stats_emit_fn(const struct stats_field *fd,
			   const struct stats_value *v, void *arg);
void stats_emit(const struct stats_figures *f, stats_emit_fn *fn, void *arg);

extern const char *const stats_counter_names[STATS_NCOUNTERS];
extern const char *const stats_counter_help[STATS_NCOUNTERS];

void stats_init(struct stats *st, unsigned max_res);
void stats_free(struct stats *st);
void stats_set_max(struct stats *st, unsigned max_res);

/* The entry for a resource, created on first use (or the overflow entry). */
struct stats_res *stats_res(struct stats *st, const char *name, size_t len);
struct stats_res *stats_find(const struct stats *st, const char *name,
			     size_t len);

/* Count on the resource (may be NULL) and on the total. */
void stats_count(struct stats *st, struct stats_res *r, enum stats_counter k);
/* Add a duration to histogram h of the resource (may be NULL) and the
 * total. */
void stats_observe(struct stats *st, struct stats_res *r, enum stats_hist_id h,
		   uint64_t ns);
void stats_wait(struct stats *st, struct stats_res *r, uint64_t ns);
void stats_hold(struct stats *st, struct stats_res *r, uint64_t ns);
void stats_cluster_wait(struct stats *st, struct stats_res *r, uint64_t ns);
void stats_cluster_hold(struct stats *st, struct stats_res *r, uint64_t ns);

/* Move every baseline to now. */
void stats_reset(struct stats *st);

void hist_add(struct hist *h, uint64_t ns);
/* The figures since the last reset (cur - base). */
void stats_since_reset(const struct stats_res *r, struct stats_figures *out);
void hist_summarize(const struct hist *h, struct hist_summary *out);
/* Upper bound in seconds of bucket i (for cumulative exposition). */
double hist_bucket_upper(unsigned i);
unsigned hist_bucket(uint64_t ns);

#endif
