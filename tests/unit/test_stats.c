/*
 * Unit tests for the stats (arbiter/stats.c) and for the rule that every
 * figure in its lists reaches every rendering: the protobuf Stats reply
 * (placed by field name from the message descriptor), the text protocol
 * and Prometheus. A figure added to STATS_COUNTERS, STATS_DERIVED or
 * STATS_HISTS without a place in one of them fails here.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "report.h"
#include "server.h"
#include "stats.h"

#define MS 1000000ull

static struct stats st;

static void
setup(void)
{
	stats_init(&st, 4);
}

static void
teardown(void)
{
	stats_free(&st);
}

TestSuite(stats, .init = setup, .fini = teardown);

/* Figures where every counter has a value of its own (k + 1) and both
 * histograms hold something. */
static void
distinct_figures(struct stats_res *r)
{
	for (unsigned k = 0; k < STATS_NCOUNTERS; k++)
		for (unsigned i = 0; i <= k; i++)
			stats_count(&st, r, (enum stats_counter)k);
	stats_wait(&st, r, 3 * MS);
	stats_wait(&st, r, 5 * MS);
	stats_hold(&st, r, 7 * MS);
}

/* ------------------------------------------------------------ recording */

Test(stats, a_count_lands_on_the_resource_and_the_total)
{
	struct stats_res *r = stats_res(&st, "db", 2);

	stats_count(&st, r, STAT_releases);
	stats_count(&st, NULL, STAT_failed_forbidden);
	cr_assert_eq(r->cur.c[STAT_releases], 1);
	cr_assert_eq(r->cur.c[STAT_failed_forbidden], 0);
	cr_assert_eq(st.total.cur.c[STAT_releases], 1);
	cr_assert_eq(st.total.cur.c[STAT_failed_forbidden], 1);
	cr_assert_eq(stats_find(&st, "db", 2), r);
	cr_assert_null(stats_find(&st, "dc", 2));
}

Test(stats, resources_past_the_limit_fold_into_other)
{
	char name[16];

	for (int i = 0; i < 6; i++) {
		snprintf(name, sizeof name, "r%d", i);
		stats_count(&st, stats_res(&st, name, strlen(name)),
			    STAT_releases);
	}
	cr_assert_eq(st.nres, 4);
	cr_assert_eq(st.omitted, 2);
	cr_assert_eq(st.other.cur.c[STAT_releases], 2);
	cr_assert_eq(st.total.cur.c[STAT_releases], 6);
	/* A tracked name stays tracked. */
	cr_assert_neq(stats_res(&st, "r0", 2), &st.other);
	stats_set_max(&st, 5);
	cr_assert_neq(stats_res(&st, "r9", 2), &st.other);
}

Test(stats, a_reset_moves_the_baseline_not_the_running_totals)
{
	struct stats_res *r = stats_res(&st, "db", 2);
	struct stats_figures f;

	stats_count(&st, r, STAT_releases);
	stats_wait(&st, r, 9 * MS);
	stats_reset(&st);
	stats_count(&st, r, STAT_releases);
	stats_wait(&st, r, 2 * MS);
	stats_since_reset(r, &f);
	cr_assert_eq(f.c[STAT_releases], 1);
	cr_assert_eq(r->cur.c[STAT_releases], 2, "Prometheus stays monotonic");
	cr_assert_eq(f.wait.count, 1);
	/* The 9 ms maximum is from before the reset: it cannot stay. */
	cr_assert_lt(f.wait.max_ns, 3 * MS);
	cr_assert_geq(f.wait.max_ns, 2 * MS);
	stats_since_reset(&st.total, &f);
	cr_assert_eq(f.c[STAT_releases], 1);
}

Test(stats, buckets_grow_with_the_duration_and_cap_at_the_last)
{
	unsigned prev = 0;

	cr_assert_eq(hist_bucket(0), 0);
	cr_assert_eq(hist_bucket(1023), 0);
	cr_assert_eq(hist_bucket(1024), 1);
	for (uint64_t ns = 1; ns < (1ull << 50); ns = ns * 3 / 2 + 1) {
		unsigned b = hist_bucket(ns);

		cr_assert_geq(b, prev, "bucket of %llu ns went down",
			      (unsigned long long)ns);
		cr_assert_lt(b, HIST_BUCKETS);
		/* Below 4 units the quarter buckets are finer than the unit
		 * a duration is truncated to: only the order holds there. */
		if (ns >= 4096 && b + 1 < HIST_BUCKETS)
			cr_assert_lt((double)ns / 1e9, hist_bucket_upper(b));
		prev = b;
	}
	cr_assert_eq(hist_bucket(UINT64_MAX), HIST_BUCKETS - 1);
	cr_assert(isinf(hist_bucket_upper(HIST_BUCKETS - 1)));
}

Test(stats, quantiles_are_within_an_eighth_and_never_over_the_max)
{
	struct hist h = {0};
	struct hist_summary s;

	for (uint64_t i = 1; i <= 1000; i++)
		hist_add(&h, i * 10000); /* 10 us .. 10 ms */
	hist_summarize(&h, &s);
	cr_assert_eq(s.count, 1000);
	cr_assert_float_eq(s.max, 0.01, 1e-12);
	cr_assert_float_eq(s.mean, 0.005005, 1e-9);
	cr_assert_leq(fabs(s.p50 - 0.005) / 0.005, 0.125);
	cr_assert_leq(fabs(s.p90 - 0.009) / 0.009, 0.125);
	cr_assert_leq(fabs(s.p99 - 0.0099) / 0.0099, 0.125);
	cr_assert_leq(s.p99, s.max);
	memset(&h, 0, sizeof h);
	hist_summarize(&h, &s);
	cr_assert_eq(s.count, 0);
	cr_assert_eq(s.p50, 0);
	cr_assert_eq(s.mean, 0);
}

Test(stats, derived_figures_come_from_the_counters_and_the_wait_histogram)
{
	struct stats_res *r = stats_res(&st, "db", 2);
	struct stats_value v;

	distinct_figures(r);
	stats_value(&r->cur, STATS_F_total_acquisitions, &v);
	cr_assert_eq(v.u, (STAT_acquired_immediate + 1) +
			      (STAT_acquired_after_wait + 1));
	stats_value(&r->cur, STATS_F_failed_acquisitions, &v);
	cr_assert_eq(
	    v.u, (STAT_failed_timeout + 1) + (STAT_failed_would_block + 1) +
		     (STAT_failed_forbidden + 1) + (STAT_failed_invalid + 1));
	stats_value(&r->cur, STATS_F_average_wait_time, &v);
	cr_assert_float_eq(v.d, 0.004, 1e-12);
	stats_value(&r->cur, STATS_F_max_wait_time, &v);
	cr_assert_float_eq(v.d, 0.005, 1e-12);
	stats_value(&r->cur, STATS_F_hold, &v);
	cr_assert_eq(v.h, &r->cur.hold);
	cr_assert_eq(v.s.count, 1);
}

static void
count_emitted(const struct stats_field *fd, const struct stats_value *v,
	      void *arg)
{
	unsigned *n = arg;

	(void)v;
	cr_assert_eq(fd, &stats_fields[*n], "fields out of order");
	(*n)++;
}

Test(stats, emit_yields_every_field_once_in_list_order)
{
	unsigned n = 0;

	stats_emit(&st.total.cur, count_emitted, &n);
	cr_assert_eq(n, STATS_NFIELDS);
	for (unsigned k = 0; k < STATS_NCOUNTERS; k++)
		cr_assert_str_eq(stats_fields[k].name, stats_counter_names[k]);
}

/* ------------------------------------------------------------ renderings */

Test(stats, every_field_is_a_stats_reply_field_of_its_type)
{
	const ProtobufCMessageDescriptor *md =
	    &arbiter__resource_stats__descriptor;

	for (unsigned i = 0; i < STATS_NFIELDS; i++) {
		const struct stats_field *fd = &stats_fields[i];
		const ProtobufCFieldDescriptor *d =
		    protobuf_c_message_descriptor_get_field_by_name(md,
								    fd->name);

		cr_assert_not_null(d, "ResourceStats has no field '%s'",
				   fd->name);
		cr_assert_eq(d->label, PROTOBUF_C_LABEL_OPTIONAL, "%s",
			     fd->name);
		switch (fd->kind) {
		case STATS_COUNTER:
		case STATS_SUM:
			cr_assert_eq(d->type, PROTOBUF_C_TYPE_UINT64, "%s",
				     fd->name);
			break;
		case STATS_SECONDS:
			cr_assert_eq(d->type, PROTOBUF_C_TYPE_DOUBLE, "%s",
				     fd->name);
			break;
		case STATS_HIST:
			cr_assert_eq(d->descriptor,
				     &arbiter__histogram__descriptor, "%s",
				     fd->name);
			break;
		}
	}
}

Test(stats, every_field_reaches_the_protobuf_reply)
{
	struct stats_res *r = stats_res(&st, "db", 2);
	Arbiter__ResourceStats rs = ARBITER__RESOURCE_STATS__INIT;
	Arbiter__Histogram hists[STATS_NHISTS];
	const char *base = (const char *)&rs;

	distinct_figures(r);
	report_pb_figures(&rs, hists, &r->cur);
	for (unsigned i = 0; i < STATS_NFIELDS; i++) {
		const struct stats_field *fd = &stats_fields[i];
		const ProtobufCFieldDescriptor *d =
		    protobuf_c_message_descriptor_get_field_by_name(
			rs.base.descriptor, fd->name);
		struct stats_value v;

		cr_assert_not_null(d, "ResourceStats has no field '%s'",
				   fd->name);
		stats_value(&r->cur, i, &v);
		if (fd->kind == STATS_HIST) {
			const Arbiter__Histogram *h =
			    *(Arbiter__Histogram *const
				  *)(const void *)(base + d->offset);

			cr_assert_not_null(h, "%s not set", fd->name);
			cr_assert_eq(h->count, v.s.count, "%s", fd->name);
			continue;
		}
		cr_assert(*(const protobuf_c_boolean
				*)(const void *)(base + d->quantifier_offset),
			  "has_%s not set", fd->name);
		if (fd->kind == STATS_SECONDS)
			cr_assert_float_eq(
			    *(const double *)(const void *)(base + d->offset),
			    v.d, 1e-12, "%s", fd->name);
		else
			cr_assert_eq(
			    *(const uint64_t *)(const void *)(base + d->offset),
			    v.u, "%s", fd->name);
	}
	cr_assert_eq(rs.revoked_storage_lost, STAT_revoked_storage_lost + 1);
}

struct text {
	char buf[8192];
	size_t len;
};

static void
text_field(const struct stats_field *fd, const struct stats_value *v, void *arg)
{
	struct text *t = arg;
	int n =
	    report_text_field(fd, v, t->buf + t->len, sizeof t->buf - t->len);

	cr_assert_gt(n, 0);
	t->len += (size_t)n;
}

Test(stats, every_field_reaches_the_text_protocol)
{
	struct stats_res *r = stats_res(&st, "db", 2);
	struct text t = {.len = 0};
	char want[128];

	distinct_figures(r);
	stats_emit(&r->cur, text_field, &t);
	for (unsigned i = 0; i < STATS_NFIELDS; i++) {
		const struct stats_field *fd = &stats_fields[i];
		struct stats_value v;

		stats_value(&r->cur, i, &v);
		if (fd->kind == STATS_HIST)
			snprintf(want, sizeof want, "\n%s_seconds:count=%llu ",
				 fd->name, (unsigned long long)v.s.count);
		else if (fd->kind == STATS_SECONDS)
			snprintf(want, sizeof want, "\n%s:%.6f\n", fd->name,
				 v.d);
		else
			snprintf(want, sizeof want, "\n%s:%llu\n", fd->name,
				 (unsigned long long)v.u);
		/* The first line has no newline before it. */
		cr_assert(strstr(t.buf, want) != NULL ||
			      strncmp(t.buf, want + 1, strlen(want) - 1) == 0,
			  "text lacks '%s'", want + 1);
	}
	cr_assert(strstr(t.buf, "revoked_storage_lost:") != NULL);
}

Test(stats, every_counter_and_histogram_reaches_prometheus)
{
	struct server *srv = calloc(1, sizeof *srv);
	struct evbuffer *b = evbuffer_new();
	struct stats_res *r;
	char want[160], *text;
	size_t len;

	cr_assert_not_null(srv);
	srv->cfg.max_resource_labels = 10;
	lockmgr_init(&srv->lm);
	stats_init(&srv->stats, 10);
	srv->t_start = now_ns();
	r = stats_res(&srv->stats, "db", 2);
	for (unsigned k = 0; k < STATS_NCOUNTERS; k++)
		for (unsigned i = 0; i <= k; i++)
			stats_count(&srv->stats, r, (enum stats_counter)k);
	stats_wait(&srv->stats, r, 3 * MS);
	stats_hold(&srv->stats, r, 7 * MS);
	stats_cluster_wait(&srv->stats, r, 5 * MS);
	stats_cluster_hold(&srv->stats, r, 9 * MS);
	stats_observe(&srv->stats, r, STATS_H_upgrade_wait, 4 * MS);
	metrics_render(srv, b);
	len = evbuffer_get_length(b);
	text = calloc(1, len + 1);
	evbuffer_copyout(b, text, len);
	for (unsigned i = 0; i < STATS_NFIELDS; i++) {
		const struct stats_field *fd = &stats_fields[i];

		if (!fd->prom) {
			/* Only figures Prometheus derives itself may stay
			 * out: sums of counters, or _sum / _count. */
			cr_assert(fd->kind == STATS_SUM ||
				      fd->kind == STATS_SECONDS,
				  "%s left out of /metrics", fd->name);
			continue;
		}
		if (fd->kind == STATS_HIST)
			snprintf(
			    want, sizeof want,
			    "\narbiter_%s_seconds_count{resource=\"db\"} 1\n",
			    fd->name);
		else if (i == STATS_F_failed_forbidden)
			snprintf(want, sizeof want, "\narbiter_%s_total %u\n",
				 fd->name, i + 1);
		else
			snprintf(want, sizeof want,
				 "\narbiter_%s_total{resource=\"db\"} %u\n",
				 fd->name, i + 1);
		cr_assert(strstr(text, want) != NULL, "/metrics lacks '%s'",
			  want + 1);
	}
	cr_assert(strstr(text, "arbiter_revoked_storage_lost_total{") != NULL);
	free(text);
	evbuffer_free(b);
	stats_free(&srv->stats);
	lockmgr_free(&srv->lm);
	free(srv);
}
