/*
 * stats: counters and log-linear histograms (see stats.h). Recording is a
 * few additions and one bit scan; nothing here allocates on the hot path
 * except the first time a resource name is seen.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"
#include "xalloc.h"

const char *const stats_counter_names[STATS_NCOUNTERS] = {
#define STATS_NAME(name, help) #name,
    STATS_COUNTERS(STATS_NAME)
#undef STATS_NAME
};

const char *const stats_counter_help[STATS_NCOUNTERS] = {
#define STATS_HELP(name, help) help,
    STATS_COUNTERS(STATS_HELP)
#undef STATS_HELP
};

const struct stats_field stats_fields[STATS_NFIELDS] = {
#define STATS_FIELD_C(n, h)	  [STATS_F_##n] = {#n, h, STATS_COUNTER, true},
#define STATS_FIELD_D(n, k, p, h) [STATS_F_##n] = {#n, h, k, p},
#define STATS_FIELD_H(n, h)	  [STATS_F_##n] = {#n, h, STATS_HIST, true},
    STATS_COUNTERS(STATS_FIELD_C) STATS_DERIVED(STATS_FIELD_D)
	STATS_HISTS(STATS_FIELD_H)
#undef STATS_FIELD_C
#undef STATS_FIELD_D
#undef STATS_FIELD_H
};

/* stats_value reads a counter's field at the counter's own index. */
#define STATS_SAME_INDEX(n, h)                                                 \
	_Static_assert((int)STATS_F_##n == (int)STAT_##n,                      \
		       "counters come first in stats_fields");
STATS_COUNTERS(STATS_SAME_INDEX)
#undef STATS_SAME_INDEX

/* Durations are bucketed in units of 1024 ns (about a microsecond). */
#define UNIT_SHIFT 10

unsigned
hist_bucket(uint64_t ns)
{
	uint64_t v = ns >> UNIT_SHIFT;
	unsigned msb, sub, i;

	if (v == 0)
		return 0;
	msb = 63u - (unsigned)__builtin_clzll(v);
	if (msb >= 2)
		sub = (unsigned)(v >> (msb - 2)) & 3u;
	else
		sub = (unsigned)(v << (2 - msb)) & 3u;
	i = 1 + msb * HIST_SUB + sub;
	return i < HIST_BUCKETS ? i : HIST_BUCKETS - 1;
}

/* Bucket i (>= 1) covers [lower, upper) in units; 0 covers [0, 1). */
static double
bucket_lower_units(unsigned i)
{
	unsigned msb = (i - 1) / HIST_SUB, sub = (i - 1) % HIST_SUB;

	return ldexp(1.0 + sub / (double)HIST_SUB, (int)msb);
}

double
hist_bucket_upper(unsigned i)
{
	double units;

	if (i + 1 >= HIST_BUCKETS)
		return INFINITY;
	units = bucket_lower_units(i + 1);
	return units * (1 << UNIT_SHIFT) / 1e9;
}

void
hist_add(struct hist *h, uint64_t ns)
{
	h->count++;
	h->sum_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
	h->b[hist_bucket(ns)]++;
}

static double
quantile(const struct hist *h, double q)
{
	uint64_t rank, seen = 0;

	if (h->count == 0)
		return 0;
	rank = (uint64_t)ceil(q * (double)h->count);
	if (rank == 0)
		rank = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= rank) {
			double lo, hi, mid;

			if (i == 0) {
				double mid0 = 0.5 * (1 << UNIT_SHIFT) / 1e9;

				return mid0 < (double)h->max_ns / 1e9
					   ? mid0
					   : (double)h->max_ns / 1e9;
			}
			lo = bucket_lower_units(i) * (1 << UNIT_SHIFT) / 1e9;
			hi = hist_bucket_upper(i);
			if (isinf(hi))
				return (double)h->max_ns / 1e9;
			mid = (lo + hi) / 2;
			/* Never report more than was seen. */
			return mid < (double)h->max_ns / 1e9
				   ? mid
				   : (double)h->max_ns / 1e9;
		}
	}
	return (double)h->max_ns / 1e9;
}

void
hist_summarize(const struct hist *h, struct hist_summary *out)
{
	out->count = h->count;
	out->sum = (double)h->sum_ns / 1e9;
	out->mean = h->count ? out->sum / (double)h->count : 0;
	out->max = (double)h->max_ns / 1e9;
	out->p50 = quantile(h, 0.50);
	out->p90 = quantile(h, 0.90);
	out->p99 = quantile(h, 0.99);
}

void
stats_init(struct stats *st, unsigned max_res)
{
	memset(st, 0, sizeof *st);
	st->total.name = "";
	st->other.name = "";
	st->max_res = max_res;
}

void
stats_free(struct stats *st)
{
	struct stats_res *r, *tmp;

	/* uthash's documented delete-while-iterating idiom. */
	HASH_ITER(hh, st->by_name, r, tmp) {
		// NOLINTNEXTLINE(clang-analyzer-unix.Malloc)
		HASH_DELETE(hh, st->by_name, r);
		free(r->name);
		free(r);
	}
	memset(st, 0, sizeof *st);
}

void
stats_set_max(struct stats *st, unsigned max_res)
{
	st->max_res = max_res;
}

struct stats_res *
stats_find(const struct stats *st, const char *name, size_t len)
{
	struct stats_res *r = NULL;

	HASH_FIND(hh, st->by_name, name, len, r);
	return r;
}

struct stats_res *
stats_res(struct stats *st, const char *name, size_t len)
{
	struct stats_res *r = stats_find(st, name, len);

	if (r != NULL)
		return r;
	if (st->nres >= st->max_res) {
		st->omitted++;
		return &st->other;
	}
	r = xcalloc(1, sizeof *r);
	r->name = xstrndup(name, len);
	r->len = len;
	HASH_ADD_KEYPTR(hh, st->by_name, r->name, r->len, r);
	st->nres++;
	return r;
}

void
stats_count(struct stats *st, struct stats_res *r, enum stats_counter k)
{
	st->total.cur.c[k]++;
	if (r != NULL)
		r->cur.c[k]++;
}

static struct hist *
hist_of(struct stats_figures *f, enum stats_hist_id h)
{
	switch (h) {
#define STATS_HIST_OF(name, help)                                              \
	case STATS_H_##name:                                                   \
		return &f->name;
		STATS_HISTS(STATS_HIST_OF)
#undef STATS_HIST_OF
	default:
		return NULL;
	}
}

void
stats_observe(struct stats *st, struct stats_res *r, enum stats_hist_id h,
	      uint64_t ns)
{
	struct hist *t = hist_of(&st->total.cur, h);

	if (t == NULL)
		return;
	hist_add(t, ns);
	if (r != NULL)
		hist_add(hist_of(&r->cur, h), ns);
}

void
stats_wait(struct stats *st, struct stats_res *r, uint64_t ns)
{
	stats_observe(st, r, STATS_H_wait, ns);
}

void
stats_hold(struct stats *st, struct stats_res *r, uint64_t ns)
{
	stats_observe(st, r, STATS_H_hold, ns);
}

void
stats_cluster_wait(struct stats *st, struct stats_res *r, uint64_t ns)
{
	stats_observe(st, r, STATS_H_cluster_wait, ns);
}

void
stats_cluster_hold(struct stats *st, struct stats_res *r, uint64_t ns)
{
	stats_observe(st, r, STATS_H_cluster_hold, ns);
}

void
stats_reset(struct stats *st)
{
	struct stats_res *r, *tmp;

	st->total.base = st->total.cur;
	st->other.base = st->other.cur;
	HASH_ITER(hh, st->by_name, r, tmp) {
		r->base = r->cur;
	}
}

static void
hist_sub(struct hist *out, const struct hist *a, const struct hist *b)
{
	out->count = a->count - b->count;
	out->sum_ns = a->sum_ns - b->sum_ns;
	/* The maximum cannot be un-merged; after a reset it is re-derived
	 * from the highest bucket that gained entries, unless unchanged. */
	out->max_ns = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		out->b[i] = a->b[i] - b->b[i];
		if (out->b[i] != 0) {
			double hi = hist_bucket_upper(i);
			uint64_t cap =
			    isinf(hi) ? a->max_ns : (uint64_t)(hi * 1e9);

			out->max_ns = cap < a->max_ns ? cap : a->max_ns;
		}
	}
	if (b->count == 0)
		out->max_ns = a->max_ns;
}

void
stats_since_reset(const struct stats_res *r, struct stats_figures *out)
{
	for (unsigned k = 0; k < STATS_NCOUNTERS; k++)
		out->c[k] = r->cur.c[k] - r->base.c[k];
#define STATS_SUB_HIST(name, help)                                             \
	hist_sub(&out->name, &r->cur.name, &r->base.name);
	STATS_HISTS(STATS_SUB_HIST)
#undef STATS_SUB_HIST
}

void
stats_value(const struct stats_figures *f, unsigned i, struct stats_value *out)
{
	const uint64_t *c = f->c;

	memset(out, 0, sizeof *out);
	if (i < STATS_NCOUNTERS) {
		out->u = c[i];
		return;
	}
	switch ((enum stats_field_id)i) {
	case STATS_F_total_acquisitions:
		out->u =
		    c[STAT_acquired_immediate] + c[STAT_acquired_after_wait];
		break;
	case STATS_F_failed_acquisitions:
		out->u = c[STAT_failed_timeout] + c[STAT_failed_would_block] +
			 c[STAT_failed_forbidden] + c[STAT_failed_invalid];
		break;
	case STATS_F_average_wait_time:
		out->d = f->wait.count ? (double)f->wait.sum_ns / 1e9 /
					     (double)f->wait.count
				       : 0.0;
		break;
	case STATS_F_max_wait_time:
		out->d = (double)f->wait.max_ns / 1e9;
		break;
#define STATS_HIST_CASE(name, help)                                            \
	case STATS_F_##name:                                                   \
		out->h = &f->name;                                             \
		hist_summarize(out->h, &out->s);                               \
		break;
		STATS_HISTS(STATS_HIST_CASE)
#undef STATS_HIST_CASE
	default:
		break;
	}
}

void
stats_emit(const struct stats_figures *f, stats_emit_fn *fn, void *arg)
{
	struct stats_value v;

	for (unsigned i = 0; i < STATS_NFIELDS; i++) {
		stats_value(f, i, &v);
		fn(&stats_fields[i], &v, arg);
	}
}
