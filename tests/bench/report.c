/*
 * report: samples become rows (median and 99th percentile), rows become one
 * table or one JSON document. Rows are kept in the order they were made.
 *
 * For latencies the p99 column is the slow tail (99th percentile). For
 * rates it is the slow tail too, which for a rate is the 1st percentile of
 * the per-interval rates: "99 % of intervals ran at least this fast".
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

#define MAX_ROWS  160
#define MAX_GOALS 24

static struct row rows[MAX_ROWS];
static int nrows;

static struct goal {
	char goal[160];
	char figure[160];
	int met; /* 1 met, 0 missed, -1 not measured */
} goals[MAX_GOALS];
static int ngoals;

static const char *const section_title[] = {
    "",
    "(1) uncontended round trip",
    "(2) handoff latency under contention (release -> next waiter's grant)",
    "(3) throughput",
    "(4) death to handoff (SIGKILL of the holder -> next grant)",
    "(5) scale (daemon RSS)",
    "(6) idle cost",
    "(7) cluster mode: 3 arbiterds (hosts) on a 3-member etcd, against "
    "etcd's lock recipe",
    "(8) intercept: one lock call under the LD_PRELOAD shim against none",
};

void
samples_push(struct samples *s, double v)
{
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 1024;
		double *nv = realloc(s->v, ncap * sizeof *nv);

		if (nv == NULL)
			return;
		s->v = nv;
		s->cap = ncap;
	}
	s->v[s->n++] = v;
}

void
samples_free(struct samples *s)
{
	free(s->v);
	s->v = NULL;
	s->n = s->cap = 0;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v. */
static double
pct(const double *v, size_t n, double q)
{
	size_t i = (size_t)ceil(q * (double)n);

	if (i > 0)
		i--;
	if (i >= n)
		i = n - 1;
	return v[i];
}

static struct row *
new_row(int section, const char *key, const char *name, enum unit u)
{
	struct row *r;

	if (nrows == MAX_ROWS)
		return NULL;
	r = &rows[nrows++];
	memset(r, 0, sizeof *r);
	r->section = section;
	snprintf(r->key, sizeof r->key, "%s", key);
	snprintf(r->name, sizeof r->name, "%s", name);
	r->unit = u;
	r->rate = u == U_RATE;
	return r;
}

struct row *
report_add(int section, const char *key, const char *name, enum unit u,
	   struct samples *s)
{
	struct row *r;

	if (s->n == 0)
		return NULL;
	r = new_row(section, key, name, u);
	if (r == NULL)
		return NULL;
	qsort(s->v, s->n, sizeof *s->v, cmp_double);
	r->n = s->n;
	if (s->n % 2)
		r->median = s->v[s->n / 2];
	else
		r->median = (s->v[s->n / 2 - 1] + s->v[s->n / 2]) / 2;
	r->p99 = pct(s->v, s->n, r->rate ? 0.01 : 0.99);
	return r;
}

struct row *
report_value(int section, const char *key, const char *name, enum unit u,
	     double v)
{
	struct samples s = {0};
	struct row *r;

	samples_push(&s, v);
	r = report_add(section, key, name, u, &s);
	samples_free(&s);
	return r;
}

struct row *
report_find(const char *key)
{
	for (int i = 0; i < nrows; i++)
		if (strcmp(rows[i].key, key) == 0)
			return &rows[i];
	return NULL;
}

void
report_ratio(struct row *r, const char *vs_key, const char *label)
{
	struct row *base = report_find(vs_key);
	size_t len;

	if (r == NULL || base == NULL || base->median == 0)
		return;
	if (r->vs[0] == '\0') {
		snprintf(r->vs, sizeof r->vs, "%s", vs_key);
		r->ratio_val = r->median / base->median;
	}
	len = strlen(r->ratio);
	snprintf(r->ratio + len, sizeof r->ratio - len, "%s%.2fx %s",
		 len ? ", " : "", r->median / base->median, label);
}

void
report_place(struct row *r, enum place p)
{
	if (r != NULL)
		r->place = p;
}

/* Short name of where a row's processes ran, for JSON. */
static const char *
place_name(const struct bench *b, const struct row *r)
{
	switch (r->place) {
	case PLACE_SAME:
		/* (7): etcd's members are never pinned */
		return r->section == 7 ? "servers-cpu" : "one-cpu";
	case PLACE_SPLIT:
		return "two-cpus";
	default:
		return b->cpu_server >= 0 ? "servers-pinned" : "unpinned";
	}
}

/* The sentence under a section title that says where its processes ran. */
static void
place_text(const struct bench *b, int section, enum place p, char *buf,
	   size_t len)
{
	if (section == 7) {
		if (b->cpu_server < 0)
			snprintf(buf, len, "nothing pinned");
		else if (p == PLACE_SAME)
			snprintf(buf, len,
				 "etcd clients (put, watch) on CPU %d with the "
				 "arbiterds, etcd members unpinned (nice 5)",
				 b->cpu_server);
		else if (p == PLACE_SPLIT && b->cpu_client >= 0)
			snprintf(buf, len,
				 "arbiterds on CPU %d, clients on CPU %d, etcd "
				 "members unpinned (nice 5)",
				 b->cpu_server, b->cpu_client);
		else
			snprintf(buf, len,
				 "arbiterds on CPU %d; clients and etcd "
				 "members unpinned",
				 b->cpu_server);
		return;
	}
	if (section == 8) {
		if (b->cpu_server < 0)
			snprintf(buf, len, "nothing pinned");
		else if (b->cpu_client < 0)
			snprintf(buf, len,
				 "the program and the daemon on CPU %d",
				 b->cpu_server);
		else
			snprintf(buf, len,
				 "the program on CPU %d, the daemon on CPU %d",
				 b->cpu_client, b->cpu_server);
		return;
	}
	switch (p) {
	case PLACE_SAME:
		snprintf(buf, len, "one CPU: every process on CPU %d",
			 b->cpu_server);
		break;
	case PLACE_SPLIT:
		snprintf(buf, len,
			 "two CPUs: daemon, Redis, echo server and socketpair "
			 "peer on CPU %d, clients on CPU %d%s",
			 b->cpu_server, b->cpu_client,
			 section == 2 ? " (flock, mutex: one process on each)"
				      : "");
		break;
	default:
		if (b->cpu_server >= 0)
			snprintf(buf, len,
				 "daemon, Redis and echo server on CPU %d, "
				 "clients unpinned",
				 b->cpu_server);
		else
			snprintf(buf, len, "nothing pinned");
	}
}

void
report_note(struct row *r, const char *fmt, ...)
{
	va_list ap;
	size_t len;

	if (r == NULL)
		return;
	len = strlen(r->ratio);
	if (len && len + 2 < sizeof r->ratio) {
		memcpy(r->ratio + len, ", ", 3);
		len += 2;
	}
	va_start(ap, fmt);
	vsnprintf(r->ratio + len, sizeof r->ratio - len, fmt, ap);
	va_end(ap);
}

void
report_goal(const char *goal, const char *figure, int met)
{
	if (ngoals == MAX_GOALS)
		return;
	snprintf(goals[ngoals].goal, sizeof goals[ngoals].goal, "%s", goal);
	snprintf(goals[ngoals].figure, sizeof goals[ngoals].figure, "%s",
		 figure);
	goals[ngoals].met = met;
	ngoals++;
}

/* A value with its unit, sized for a 10-column field. */
static void
fmt_value(char *buf, size_t len, enum unit u, double v)
{
	switch (u) {
	case U_NS:
		if (v >= 1e6)
			snprintf(buf, len, "%.2f ms", v / 1e6);
		else if (v < 1e3) /* a system call, not a round trip */
			snprintf(buf, len, "%.0f ns", v);
		else
			snprintf(buf, len, "%.1f us", v / 1e3);
		break;
	case U_RATE:
		if (v >= 1e6)
			snprintf(buf, len, "%.2f M/s", v / 1e6);
		else if (v >= 1e3)
			snprintf(buf, len, "%.1f k/s", v / 1e3);
		else
			snprintf(buf, len, "%.0f /s", v);
		break;
	case U_BYTES:
		if (v >= 1048576.0)
			snprintf(buf, len, "%.2f MiB", v / 1048576.0);
		else if (v >= 10 * 1024.0)
			snprintf(buf, len, "%.1f KiB", v / 1024.0);
		else
			snprintf(buf, len, "%.0f B", v);
		break;
	case U_COUNT:
		snprintf(buf, len, "%.0f", v);
		break;
	}
}

void
report_table(const struct bench *b, double seconds)
{
	char machine[256], med[32], p99[32], where[160];
	int last = -1;
	enum place last_place = PLACE_NONE;

	proc_machine(machine, sizeof machine);
	printf("arbiter bench%s: %s\n",
	       b->quick ? " (--quick: tiny counts, "
			  "figures are not meaningful)"
			: "",
	       machine);
	printf("load average (1/5/15 min) at start %s, at end %s: anything "
	       "else running skews the figures\n",
	       b->load_start, b->load_end);
	printf("median and p99 over every sample of every run (rates: p99 = "
	       "the slow tail, 1st percentile\nof per-interval rates); ratios "
	       "compare medians measured in this same run and,\nfor "
	       "latencies, in the same placement of processes on CPUs.\n");
	printf("%-52s %10s %10s %7s  %s\n", "", "median", "p99", "n", "ratio");
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];

		if (r->section != last || r->place != last_place) {
			place_text(b, r->section, r->place, where,
				   sizeof where);
			printf("%s -- %s\n", section_title[r->section], where);
			last = r->section;
			last_place = r->place;
		}
		fmt_value(med, sizeof med, r->unit, r->median);
		fmt_value(p99, sizeof p99, r->unit, r->p99);
		printf("  %-50s %10s %10s %7zu  %s\n", r->name, med,
		       r->n > 1 ? p99 : "-", r->n, r->ratio);
	}
	if (ngoals > 0) {
		printf("goals of issues 9 and 16, and of the intercept shim "
		       "(informational; the\nbench never fails on speed)\n");
		for (int i = 0; i < ngoals; i++)
			printf("  [%s] %s: %s\n",
			       goals[i].met > 0	   ? "met   "
			       : goals[i].met == 0 ? "missed"
						   : "n/a   ",
			       goals[i].goal, goals[i].figure);
	}
	printf("total %.0f s\n", seconds);
}

static void
json_str(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(out, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(out, "\\u%04x", *s);
		else
			fputc(*s, out);
	}
	fputc('"', out);
}

void
report_json(FILE *out, const struct bench *b, double seconds)
{
	static const char *const units[] = {[U_NS] = "ns",
					    [U_RATE] = "per_s",
					    [U_BYTES] = "bytes",
					    [U_COUNT] = "count"};
	char machine[256], when[64];
	time_t t = time(NULL);

	proc_machine(machine, sizeof machine);
	strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
	fprintf(out, "{\n  \"bench\": \"arbiter\",\n  \"format\": 1,\n");
	fprintf(out, "  \"time\": \"%s\",\n  \"machine\": ", when);
	json_str(out, machine);
	fprintf(out,
		",\n  \"loadavg_start\": \"%s\",\n  \"loadavg_end\": \"%s\"",
		b->load_start, b->load_end);
	fprintf(out, ",\n  \"quick\": %s,\n  \"seconds\": %.1f,\n",
		b->quick ? "true" : "false", seconds);
	fprintf(out, "  \"placements\": {");
	for (int p = 0; p < PLACE_COUNT; p++) {
		static const struct row probe[PLACE_COUNT] = {
		    {.section = 3, .place = PLACE_NONE},
		    {.section = 1, .place = PLACE_SAME},
		    {.section = 2, .place = PLACE_SPLIT}};
		char where[160];

		place_text(b, probe[p].section, probe[p].place, where,
			   sizeof where);
		fprintf(out, "%s\"%s\": ", p ? ", " : "",
			place_name(b, &probe[p]));
		json_str(out, where);
	}
	fprintf(out, "},\n");
	fprintf(
	    out,
	    "  \"counts\": {\"runs\": %d, \"rtt_ops\": %d, "
	    "\"handoff_rounds\": %d, \"handoff_hold_us\": %d, "
	    "\"tput_seconds\": %.2f, \"tput_runs\": %d, "
	    "\"tput_interval_ms\": %d, \"death_small_rounds\": %d, "
	    "\"death_big_rounds\": %d, \"death_big_mib\": %d, "
	    "\"scale_conns\": %d, \"scale_lease_conns\": %d, "
	    "\"scale_leases_per_conn\": %d, \"scale_runs\": %d, "
	    "\"idle_seconds\": %.1f, \"redis_sleep_us\": %d, "
	    "\"cl_watch_rounds\": %d, \"cl_handoff_rounds\": %d, "
	    "\"cl_synced_rounds\": %d, \"cl_local_rounds\": %d, "
	    "\"cl_tput_seconds\": %.2f, \"cl_tput_runs\": %d, "
	    "\"cl_clients_per_host\": %d, \"icpt_pairs\": %d, "
	    "\"icpt_rounds\": %d, \"icpt_leased_rounds\": %d},\n",
	    b->n.runs, b->n.rtt_ops, b->n.handoff_rounds, b->n.handoff_hold_us,
	    b->n.tput_seconds, b->n.tput_runs, b->n.tput_interval_ms,
	    b->n.death_small_rounds, b->n.death_big_rounds, b->n.death_big_mib,
	    b->n.scale_conns, b->n.scale_lease_conns,
	    b->n.scale_leases_per_conn, b->n.scale_runs, b->n.idle_seconds,
	    b->n.redis_sleep_us, b->n.cl_watch_rounds, b->n.cl_handoff_rounds,
	    b->n.cl_synced_rounds, b->n.cl_local_rounds, b->n.cl_tput_seconds,
	    b->n.cl_tput_runs, b->n.cl_clients_per_host, b->n.icpt_pairs,
	    b->n.icpt_rounds, b->n.icpt_leased_rounds);
	fprintf(out, "  \"rows\": [\n");
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];

		fprintf(out, "    {\"section\": %d, \"key\": ", r->section);
		json_str(out, r->key);
		fprintf(out, ", \"name\": ");
		json_str(out, r->name);
		fprintf(out, ", \"placement\": \"%s\"", place_name(b, r));
		fprintf(out,
			", \"unit\": \"%s\", \"median\": %.6g, \"p99\": %.6g, "
			"\"p99_is_low_tail\": %s, \"n\": %zu",
			units[r->unit], r->median, r->p99,
			r->rate ? "true" : "false", r->n);
		if (r->vs[0] != '\0') {
			fprintf(out, ", \"vs\": ");
			json_str(out, r->vs);
			fprintf(out, ", \"ratio\": %.4g", r->ratio_val);
		}
		if (r->ratio[0] != '\0') {
			fprintf(out, ", \"note\": ");
			json_str(out, r->ratio);
		}
		fprintf(out, "}%s\n", i + 1 < nrows ? "," : "");
	}
	fprintf(out, "  ],\n  \"goals\": [\n");
	for (int i = 0; i < ngoals; i++) {
		fprintf(out, "    {\"goal\": ");
		json_str(out, goals[i].goal);
		fprintf(out, ", \"figure\": ");
		json_str(out, goals[i].figure);
		fprintf(out, ", \"met\": %s}%s\n",
			goals[i].met > 0    ? "true"
			: goals[i].met == 0 ? "false"
					    : "null",
			i + 1 < ngoals ? "," : "");
	}
	fprintf(out, "  ]\n}\n");
}
