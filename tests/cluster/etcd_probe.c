/*
 * etcd_probe — drives arbiter/etcd.c against a real etcd, for the tests.
 *
 *   etcd_probe -e ENDPOINTS [-t request_timeout_ms] [-m max_response_bytes]
 *              [-C tls_ca] [-c tls_cert] [-k tls_key]
 *
 * Reads one command per line on stdin and answers each with one line on
 * stdout, "ok OP key=value ..." or "err OP errno=N ep=URL msg=...", so a
 * test can run any sequence while it kills, stops or resumes members:
 *
 *   grant TTL_S | keepalive ID | revoke ID | ttl ID     (ID in hex)
 *   txn KEY VALUE LEASE PREFIX   put-if-absent, then the owners under PREFIX
 *   put KEY SIZE | range PREFIX | delete KEY | endpoint
 *   watch PREFIX REV | unwatch   one watch; its lines start with "watch"
 *   bench ROUNDS PREFIX          grant, keepalive, txn, delete->event, revoke
 *   quit
 *
 * Fail-overs print "failover from=... to=... why=...". Every answer carries
 * ms=, the time from reading the command to the answer.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "etcd.h"

static struct event_base *base;
static struct etcd_client *cli;
static struct etcd_watch *watch;

struct pending {
	char op[16];
	uint64_t t0;
};

static double
ms_since(uint64_t t0)
{
	return (double)(etcd_now_ns() - t0) / 1e6;
}

static struct pending *
pending_new(const char *op)
{
	struct pending *p = calloc(1, sizeof(*p));

	if (p == NULL)
		abort();
	snprintf(p->op, sizeof(p->op), "%s", op);
	p->t0 = etcd_now_ns();
	return p;
}

static void
print_err(const char *op, const struct etcd_result *r, double ms)
{
	printf("err %s errno=%d ms=%.3f ep=%s failed_over=%d msg=%s\n", op,
	       -r->err, ms, r->endpoint ? r->endpoint : "", r->failed_over,
	       r->message);
}

static void
answer(const struct etcd_result *r, void *arg)
{
	struct pending *p = arg;
	double ms = ms_since(p->t0);

	if (r->err) {
		print_err(p->op, r, ms);
	} else {
		printf("ok %s ms=%.3f rtt_ms=%.3f ep=%s failed_over=%d "
		       "rev=%" PRId64 " id=%" PRIx64 " ttl=%" PRId64
		       " succeeded=%d deleted=%" PRId64 " count=%" PRId64
		       " sent_ns=%" PRIu64,
		       p->op, ms, (double)r->rtt_ns / 1e6, r->endpoint,
		       r->failed_over, r->revision, (uint64_t)r->lease_id,
		       r->ttl, r->succeeded, r->deleted, r->count, r->sent_ns);
		printf(" kvs=");
		for (size_t i = 0; i < r->n_kvs; i++)
			printf("%s%s@%" PRId64 ":%zu", i ? "," : "",
			       r->kvs[i].key, r->kvs[i].create_revision,
			       r->kvs[i].value_len);
		printf("\n");
	}
	fflush(stdout);
	free(p);
}

static void
on_failover(const char *from, const char *to, const char *why, void *arg)
{
	(void)arg;
	printf("failover from=%s to=%s why=%s\n", from, to ? to : "-", why);
	fflush(stdout);
}

static void
on_watch(enum etcd_watch_kind kind, const struct etcd_event *ev,
	 const struct etcd_result *r, void *arg)
{
	(void)arg;
	if (kind == ETCD_WATCH_CREATED) {
		printf("watch created rev=%" PRId64 " ep=%s\n", r->revision,
		       r->endpoint);
	} else if (kind == ETCD_WATCH_EVENT) {
		printf("watch event %s key=%s rev=%" PRId64 " mod=%" PRId64
		       " prev=%d prev_create=%" PRId64 " t_ns=%" PRIu64 "\n",
		       ev->type == ETCD_DELETE ? "DELETE" : "PUT", ev->kv.key,
		       ev->revision, ev->kv.mod_revision, ev->has_prev,
		       ev->prev_kv.create_revision, etcd_now_ns());
	} else {
		printf("watch ended errno=%d ep=%s msg=%s\n", -r->err,
		       r->endpoint, r->message);
		watch = NULL;
	}
	fflush(stdout);
}

/* ---- bench: a chain of callbacks, one round after another ---- */

enum { B_GRANT, B_KEEPALIVE, B_TXN, B_HANDOFF, B_REVOKE, B_N };
static const char *const bench_names[B_N] = {"grant", "keepalive", "txn",
					     "handoff", "revoke"};

static struct {
	int rounds, i, step;
	int del_done, ev_done; /* handoff: both the answer and the event */
	char prefix[128], key[160];
	int64_t lease;
	uint64_t t0;
	double *ms[B_N];
	struct etcd_watch *w;
} bench;

static void bench_next(void);

static void
bench_fail(const char *what, const struct etcd_result *r)
{
	printf("err bench errno=%d step=%s round=%d msg=%s\n", -r->err, what,
	       bench.i, r->message);
	fflush(stdout);
	if (bench.w)
		etcd_watch_cancel(bench.w);
	bench.w = NULL;
	bench.rounds = 0;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void
bench_report(void)
{
	printf("ok bench rounds=%d", bench.rounds);
	for (int k = 0; k < B_N; k++) {
		double *v = bench.ms[k];
		int n = bench.rounds;

		qsort(v, (size_t)n, sizeof(*v), cmp_double);
		printf(" %s_p50=%.3f %s_p99=%.3f", bench_names[k], v[n / 2],
		       bench_names[k], v[(n * 99) / 100 - (n >= 100)]);
	}
	printf("\n");
	fflush(stdout);
	etcd_watch_cancel(bench.w);
	bench.w = NULL;
	for (int k = 0; k < B_N; k++) {
		free(bench.ms[k]);
		bench.ms[k] = NULL;
	}
}

static void
bench_cb(const struct etcd_result *r, void *arg)
{
	double ms = ms_since(bench.t0);
	int step = (int)(intptr_t)arg;

	if (bench.rounds == 0)
		return;
	if (r->err) {
		bench_fail(bench_names[step], r);
		return;
	}
	if (step != B_HANDOFF)
		bench.ms[step][bench.i] = ms;
	switch (step) {
	case B_GRANT:
		bench.lease = r->lease_id;
		bench.step = B_KEEPALIVE;
		break;
	case B_KEEPALIVE:
		bench.step = B_TXN;
		break;
	case B_TXN:
		if (!r->succeeded) {
			printf("err bench step=txn msg=key existed\n");
			bench.rounds = 0;
			return;
		}
		bench.step = B_HANDOFF;
		break;
	case B_HANDOFF:
		/* The delete's answer may come before or after the event. */
		bench.del_done = 1;
		if (!bench.ev_done)
			return;
		bench.step = B_REVOKE;
		break;
	case B_REVOKE:
		bench.i++;
		bench.step = B_GRANT;
		if (bench.i == bench.rounds) {
			bench_report();
			return;
		}
		break;
	}
	bench_next();
}

static void
bench_watch(enum etcd_watch_kind kind, const struct etcd_event *ev,
	    const struct etcd_result *r, void *arg)
{
	(void)arg;
	if (kind == ETCD_WATCH_CREATED) {
		bench_next();
	} else if (kind == ETCD_WATCH_EVENT) {
		if (bench.step == B_HANDOFF && ev->type == ETCD_DELETE &&
		    strcmp(ev->kv.key, bench.key) == 0) {
			bench.ms[B_HANDOFF][bench.i] = ms_since(bench.t0);
			bench.ev_done = 1;
			if (bench.del_done) {
				bench.step = B_REVOKE;
				bench_next();
			}
		}
	} else {
		bench.w = NULL;
		if (bench.rounds)
			bench_fail("watch", r);
	}
}

static void
bench_next(void)
{
	int rc = 0;

	void *tag = (void *)(intptr_t)bench.step;

	bench.t0 = etcd_now_ns();
	switch (bench.step) {
	case B_GRANT:
		snprintf(bench.key, sizeof(bench.key), "%sk%d", bench.prefix,
			 bench.i);
		rc = etcd_lease_grant(cli, 10, bench_cb, tag);
		break;
	case B_KEEPALIVE:
		rc = etcd_lease_keepalive(cli, bench.lease, bench_cb, tag);
		break;
	case B_TXN:
		rc = etcd_txn_put_if_absent(
		    cli, bench.key, strlen(bench.key), "v", 1, bench.lease,
		    bench.prefix, strlen(bench.prefix), bench_cb, tag);
		break;
	case B_HANDOFF:
		bench.del_done = bench.ev_done = 0;
		rc = etcd_delete(cli, bench.key, strlen(bench.key), bench_cb,
				 tag);
		break;
	case B_REVOKE:
		rc = etcd_lease_revoke(cli, bench.lease, bench_cb, tag);
		break;
	}
	if (rc < 0) {
		printf("err bench errno=%d msg=cannot queue\n", -rc);
		bench.rounds = 0;
	}
}

static void
bench_start_cb(const struct etcd_result *r, void *arg)
{
	int err = 0;

	(void)arg;
	if (r->err) {
		bench_fail("range", r);
		return;
	}
	/* header revision + 1: new events stream at once. */
	bench.w = etcd_watch_prefix(cli, bench.prefix, strlen(bench.prefix),
				    r->revision + 1, bench_watch, NULL, &err);
}

/* ---- commands ---- */

static void
command(char *line)
{
	char *argv[8] = {0};
	struct pending *pend = NULL;
	int argc = 0, rc = 0;
	char *save = NULL;

	for (char *t = strtok_r(line, " ", &save); t && argc < 8;
	     t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	if (argc == 0)
		return;
#define ARG(i) (argc > (i) ? argv[i] : "")
	if (strcmp(argv[0], "quit") == 0) {
		event_base_loopbreak(base);
		return;
	} else if (strcmp(argv[0], "endpoint") == 0) {
		printf("ok endpoint ep=%s\n", etcd_endpoint(cli));
	} else if (strcmp(argv[0], "grant") == 0) {
		rc = etcd_lease_grant(cli, atoll(ARG(1)), answer,
				      (pend = pending_new("grant")));
	} else if (strcmp(argv[0], "keepalive") == 0) {
		rc = etcd_lease_keepalive(
		    cli, (int64_t)strtoull(ARG(1), NULL, 16), answer,
		    (pend = pending_new("keepalive")));
	} else if (strcmp(argv[0], "revoke") == 0) {
		rc = etcd_lease_revoke(cli, (int64_t)strtoull(ARG(1), NULL, 16),
				       answer, (pend = pending_new("revoke")));
	} else if (strcmp(argv[0], "ttl") == 0) {
		rc = etcd_lease_ttl(cli, (int64_t)strtoull(ARG(1), NULL, 16),
				    answer, (pend = pending_new("ttl")));
	} else if (strcmp(argv[0], "txn") == 0) {
		rc = etcd_txn_put_if_absent(
		    cli, ARG(1), strlen(ARG(1)), ARG(2), strlen(ARG(2)),
		    (int64_t)strtoull(ARG(3), NULL, 16), ARG(4), strlen(ARG(4)),
		    answer, (pend = pending_new("txn")));
	} else if (strcmp(argv[0], "put") == 0) {
		size_t n = (size_t)atoll(ARG(2));
		char *v = malloc(n + 1);

		if (v == NULL)
			abort();
		memset(v, 'x', n);
		rc = etcd_put(cli, ARG(1), strlen(ARG(1)), v, n, 0, answer,
			      (pend = pending_new("put")));
		free(v);
	} else if (strcmp(argv[0], "range") == 0) {
		rc = etcd_range_prefix(cli, ARG(1), strlen(ARG(1)), 0, answer,
				       (pend = pending_new("range")));
	} else if (strcmp(argv[0], "delete") == 0) {
		rc = etcd_delete(cli, ARG(1), strlen(ARG(1)), answer,
				 (pend = pending_new("delete")));
	} else if (strcmp(argv[0], "watch") == 0) {
		if (watch)
			etcd_watch_cancel(watch);
		watch = etcd_watch_prefix(cli, ARG(1), strlen(ARG(1)),
					  atoll(ARG(2)), on_watch, NULL, &rc);
	} else if (strcmp(argv[0], "unwatch") == 0) {
		etcd_watch_cancel(watch);
		watch = NULL;
		printf("ok unwatch\n");
	} else if (strcmp(argv[0], "bench") == 0) {
		bench.rounds = atoi(ARG(1));
		bench.i = 0;
		bench.step = B_GRANT;
		snprintf(bench.prefix, sizeof(bench.prefix), "%s", ARG(2));
		for (int k = 0; k < B_N; k++)
			bench.ms[k] =
			    calloc((size_t)bench.rounds + 1, sizeof(double));
		rc = etcd_range_prefix(cli, bench.prefix, strlen(bench.prefix),
				       1, bench_start_cb, NULL);
	} else {
		printf("err %s errno=%d msg=unknown command\n", argv[0],
		       EINVAL);
	}
	if (rc < 0) {
		/* Not queued: no callback will free it. */
		free(pend);
		printf("err %s errno=%d msg=cannot queue the request\n",
		       argv[0], -rc);
	}
	fflush(stdout);
#undef ARG
}

static void
on_stdin(evutil_socket_t fd, short what, void *arg)
{
	struct evbuffer *in = arg;
	char *line;
	int n;

	(void)what;
	n = evbuffer_read(in, fd, 4096);
	while ((line = evbuffer_readln(in, NULL, EVBUFFER_EOL_LF)) != NULL) {
		command(line);
		free(line);
	}
	if (n <= 0)
		event_base_loopbreak(base);
}

int
main(int argc, char **argv)
{
	struct etcd_settings s = {0};
	struct evbuffer *in;
	struct event *ev;
	char err[512];
	int opt;

	while ((opt = getopt(argc, argv, "e:t:m:C:c:k:")) != -1) {
		switch (opt) {
		case 'e':
			s.endpoints = optarg;
			break;
		case 't':
			s.request_timeout_ms = atoi(optarg);
			break;
		case 'm':
			s.max_response_bytes = (size_t)atoll(optarg);
			break;
		case 'C':
			s.tls_ca = optarg;
			break;
		case 'c':
			s.tls_cert = optarg;
			break;
		case 'k':
			s.tls_key = optarg;
			break;
		default:
			fprintf(stderr,
				"usage: etcd_probe -e ENDPOINTS [-t ms] "
				"[-m bytes] [-C ca] [-c cert] [-k key]\n");
			return 2;
		}
	}
	s.on_failover = on_failover;
	/* As arbiterd does: a member gone mid-write must not kill us. */
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	cli = etcd_new(base, &s, err, sizeof(err));
	if (cli == NULL) {
		printf("err new msg=%s\n", err);
		return 1;
	}
	in = evbuffer_new();
	ev = event_new(base, 0, EV_READ | EV_PERSIST, on_stdin, in);
	event_add(ev, NULL);
	printf("ready\n");
	fflush(stdout);
	event_base_dispatch(base);
	event_free(ev);
	evbuffer_free(in);
	etcd_free(cli);
	for (int k = 0; k < B_N; k++)
		free(bench.ms[k]);
	event_base_free(base);
	return 0;
}
