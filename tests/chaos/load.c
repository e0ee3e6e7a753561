/*
 * chaos_load: many concurrent connections, each acquiring and releasing.
 *
 *   chaos_load -S SOCKET [-c CONNS] [-r RESOURCES] [-d SECONDS] [-t THREADS]
 *
 * Opens CONNS connections (default 10000) from THREADS threads (default 4),
 * each thread owning its share and an epoll set. When every connection is
 * up it prints "connected N" and waits for a line on stdin (the driver
 * looks at the daemon meanwhile; EOF also continues). Then every connection
 * loops for SECONDS: arb_acquire_async an exclusive lease on load-(i %
 * RESOURCES), wait for the Granted event, arb_release it. At the end each
 * connection finishes its outstanding acquire, and the totals are printed as
 * "key value" lines:
 *
 *   conns, ops, errors, ops_per_sec, min_ops_per_conn, max_ops_per_conn,
 *   grant_p50_us, grant_p99_us, grant_max_us  (acquire sent -> granted)
 *
 * Errors (any failed acquire or release, a lost connection, an unexpected
 * event) are counted and the first few are printed to stderr. Exit status:
 * 0 when errors is 0, 1 otherwise, 2 on bad usage or setup failure.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"

#define HIST_BUCKETS 64 /* log2 buckets of microseconds */

struct conn {
	arb_client *c;
	unsigned idx;
	uint64_t ops;
	uint64_t sent_ns;
	bool pending, done;
};

struct worker {
	pthread_t th;
	unsigned first, n;
	struct conn *conns;
	int ep;
	uint64_t ops, errors;
	uint64_t hist[HIST_BUCKETS];
	uint64_t max_us;
	int setup_rc;
};

static const char *sock;
static unsigned nconns = 10000, nres = 100, nthreads = 4;
static double seconds = 60;
static atomic_int stop_flag;
static atomic_uint connected;
static atomic_uint errors_printed;
static pthread_barrier_t barrier_up, barrier_go;

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void
error(struct worker *w, struct conn *k, const char *what, int rc)
{
	w->errors++;
	if (atomic_fetch_add(&errors_printed, 1) < 20)
		fprintf(stderr, "chaos_load: conn %u: %s: %s (%s)\n", k->idx,
			what, arb_strerror(rc),
			k->c ? arb_last_error(k->c) : "");
}

static int
send_acquire(struct worker *w, struct conn *k)
{
	char res[32];
	uint64_t id;
	int rc;

	snprintf(res, sizeof res, "load-%u", k->idx % nres);
	k->sent_ns = now_ns();
	rc = arb_acquire_async(k->c, res, ARB_EXCLUSIVE, ARB_WAIT_FOREVER, NULL,
			       &id);
	if (rc < 0) {
		error(w, k, "acquire", rc);
		return rc;
	}
	k->pending = true;
	return 0;
}

static void
record_latency(struct worker *w, uint64_t ns)
{
	uint64_t us = ns / 1000;
	unsigned b = 0;

	while (b + 1 < HIST_BUCKETS && (1ull << (b + 1)) <= us + 1)
		b++;
	w->hist[b]++;
	if (us > w->max_us)
		w->max_us = us;
}

/* Drop a connection that failed: it makes no more requests. */
static void
retire(struct worker *w, struct conn *k)
{
	epoll_ctl(w->ep, EPOLL_CTL_DEL, arb_fd(k->c), NULL);
	k->pending = false;
	k->done = true;
}

/* Handle everything that is ready on one connection: after a grant,
 * release and (unless stopping) acquire again. */
static void
serve(struct worker *w, struct conn *k)
{
	struct arb_event ev;
	int rc;

	while (!k->done && (rc = arb_next_event(k->c, &ev)) != 0) {
		if (rc < 0) {
			error(w, k, "connection", rc);
			retire(w, k);
			return;
		}
		switch (ev.kind) {
		case ARB_EV_GRANTED:
			record_latency(w, now_ns() - k->sent_ns);
			k->pending = false;
			rc = arb_release(k->c, ev.lease.id);
			if (rc < 0) {
				error(w, k, "release", rc);
				if (rc == -ARB_ECONNLOST) {
					retire(w, k);
					return;
				}
			} else {
				k->ops++;
				w->ops++;
			}
			if (atomic_load(&stop_flag)) {
				k->done = true;
			} else if (send_acquire(w, k) < 0) {
				retire(w, k);
				return;
			}
			break;
		case ARB_EV_QUEUED:
		case ARB_EV_EXTENDED: /* the load's daemon is single-host */
			break;
		case ARB_EV_FAILED:
			error(w, k, "acquire failed", ev.error);
			k->pending = false;
			if (atomic_load(&stop_flag))
				k->done = true;
			else if (send_acquire(w, k) < 0)
				retire(w, k);
			break;
		case ARB_EV_REVOKED:
			error(w, k, "lease revoked", -ARB_EREVOKED);
			break;
		case ARB_EV_REPLY:
		case ARB_EV_CONVERTED: /* the load never converts */
			error(w, k, "unexpected reply", -ARB_EPROTO);
			break;
		}
	}
}

static void *
run(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[256];
	unsigned left;

	w->ep = epoll_create1(EPOLL_CLOEXEC);
	for (unsigned i = 0; i < w->n; i++) {
		struct conn *k = &w->conns[i];
		int rc;

		k->idx = w->first + i;
		rc = arb_connect(&k->c, sock, "chaos-load");
		if (rc < 0) {
			fprintf(stderr, "chaos_load: connection %u: %s\n",
				k->idx, arb_connect_error());
			w->setup_rc = rc;
			break;
		}
		atomic_fetch_add(&connected, 1);
	}
	pthread_barrier_wait(&barrier_up);
	pthread_barrier_wait(&barrier_go);
	if (w->setup_rc < 0)
		return NULL;
	for (unsigned i = 0; i < w->n; i++) {
		struct conn *k = &w->conns[i];
		struct epoll_event e = {.events = EPOLLIN, .data.ptr = k};

		if (epoll_ctl(w->ep, EPOLL_CTL_ADD, arb_fd(k->c), &e) < 0 ||
		    send_acquire(w, k) < 0)
			retire(w, k);
	}
	for (;;) {
		int n = epoll_wait(w->ep, evs, 256, 200);

		for (int i = 0; i < n; i++)
			serve(w, evs[i].data.ptr);
		if (!atomic_load(&stop_flag))
			continue;
		left = 0;
		for (unsigned i = 0; i < w->n; i++) {
			struct conn *k = &w->conns[i];

			if (!k->done && !k->pending)
				k->done = true;
			left += !k->done;
		}
		if (left == 0)
			break;
	}
	return NULL;
}

static uint64_t
percentile(const uint64_t *hist, uint64_t total, double p)
{
	uint64_t want = (uint64_t)(p * (double)total), seen = 0;

	for (unsigned b = 0; b < HIST_BUCKETS; b++) {
		seen += hist[b];
		if (seen > want)
			return 1ull << (b + 1); /* bucket's upper bound */
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct worker *ws;
	struct conn *conns;
	struct rlimit rl;
	uint64_t ops = 0, errors = 0, minops = UINT64_MAX, maxops = 0,
		 maxus = 0;
	uint64_t hist[HIST_BUCKETS] = {0};
	uint64_t t0, t1;
	int opt;
	char line[64];

	while ((opt = getopt(argc, argv, "S:c:r:d:t:")) != -1) {
		switch (opt) {
		case 'S':
			sock = optarg;
			break;
		case 'c':
			nconns = (unsigned)atoi(optarg);
			break;
		case 'r':
			nres = (unsigned)atoi(optarg);
			break;
		case 'd':
			seconds = atof(optarg);
			break;
		case 't':
			nthreads = (unsigned)atoi(optarg);
			break;
		default:
			goto usage;
		}
	}
	if (sock == NULL || nconns == 0 || nres == 0 || nthreads == 0 ||
	    nthreads > nconns || seconds <= 0)
		goto usage;
	signal(SIGPIPE, SIG_IGN);

	/* One fd per connection, one epoll per thread, and some slack. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < nconns + 64) {
		rl.rlim_cur = rl.rlim_max;
		if (rl.rlim_cur < nconns + 64 ||
		    setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			fprintf(stderr,
				"chaos_load: need %u open files, the hard "
				"limit is %llu (raise it: ulimit -Hn / "
				"prlimit)\n",
				nconns + 64, (unsigned long long)rl.rlim_max);
			return 2;
		}
	}

	conns = calloc(nconns, sizeof *conns);
	ws = calloc(nthreads, sizeof *ws);
	if (conns == NULL || ws == NULL)
		return 2;
	pthread_barrier_init(&barrier_up, NULL, nthreads + 1);
	pthread_barrier_init(&barrier_go, NULL, nthreads + 1);
	for (unsigned i = 0, first = 0; i < nthreads; i++) {
		unsigned n = nconns / nthreads + (i < nconns % nthreads);

		ws[i].first = first;
		ws[i].n = n;
		ws[i].conns = conns + first;
		first += n;
		pthread_create(&ws[i].th, NULL, run, &ws[i]);
	}
	pthread_barrier_wait(&barrier_up);
	printf("connected %u\n", atomic_load(&connected));
	fflush(stdout);
	if (atomic_load(&connected) != nconns) {
		atomic_store(&stop_flag, 1);
		pthread_barrier_wait(&barrier_go);
		for (unsigned i = 0; i < nthreads; i++)
			pthread_join(ws[i].th, NULL);
		return 2;
	}
	/* The driver counts the daemon's fds now; a line (or EOF) goes on. */
	if (fgets(line, sizeof line, stdin) == NULL)
		clearerr(stdin);
	t0 = now_ns();
	pthread_barrier_wait(&barrier_go);
	{
		struct timespec ts = {
		    (time_t)seconds,
		    (long)((seconds - (double)(time_t)seconds) * 1e9)};

		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	atomic_store(&stop_flag, 1);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(ws[i].th, NULL);
	t1 = now_ns();
	for (unsigned i = 0; i < nthreads; i++) {
		ops += ws[i].ops;
		errors += ws[i].errors;
		for (unsigned b = 0; b < HIST_BUCKETS; b++)
			hist[b] += ws[i].hist[b];
		if (ws[i].max_us > maxus)
			maxus = ws[i].max_us;
	}
	for (unsigned i = 0; i < nconns; i++) {
		if (conns[i].ops < minops)
			minops = conns[i].ops;
		if (conns[i].ops > maxops)
			maxops = conns[i].ops;
		arb_close(conns[i].c);
	}
	printf("conns %u\nops %" PRIu64 "\nerrors %" PRIu64
	       "\nops_per_sec %.0f\nmin_ops_per_conn %" PRIu64
	       "\nmax_ops_per_conn %" PRIu64 "\ngrant_p50_us %" PRIu64
	       "\ngrant_p99_us %" PRIu64 "\ngrant_max_us %" PRIu64 "\n",
	       nconns, ops, errors, (double)ops / ((double)(t1 - t0) / 1e9),
	       minops, maxops, percentile(hist, ops, 0.50),
	       percentile(hist, ops, 0.99), maxus);
	free(conns);
	free(ws);
	return errors == 0 ? 0 : 1;

usage:
	fprintf(stderr, "usage: chaos_load -S SOCKET [-c CONNS] [-r RESOURCES] "
			"[-d SECONDS] [-t THREADS]\n");
	return 2;
}
