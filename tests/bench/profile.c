/*
 * profile: fixed amounts of one kind of work against a daemon, for running
 * under a profiler (callgrind, strace -c, perf) on either side:
 *
 *   arbiter-bench --socket S --profile uncontended --count N
 *       one connection, N acquire+release pairs on one resource
 *   arbiter-bench --socket S --profile contended --count N --clients C
 *       C processes, each N acquire+release pairs on one shared resource:
 *       every grant but the first few is a handoff
 *
 * Without --socket the bench starts its own daemon (ARBITERD_WRAPPER
 * applies), so `ARBITERD_WRAPPER="valgrind --tool=callgrind" arbiter-bench
 * --profile contended` profiles the daemon's handoff path.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

static long slow; /* pairs over 5 ms */

static int
pairs(struct bench *b, long count, uint64_t *ns, uint64_t *max)
{
	struct lock l;
	uint64_t t0, t;
	int rc = 0;

	*max = 0;
	if (lock_open(&l, LOCK_ARBITER, b, "profile") < 0)
		return -1;
	t0 = t = proc_now_ns();
	for (long i = 0; i < count && rc == 0; i++) {
		uint64_t now;

		rc = lock_acquire(&l);
		if (rc == 0)
			rc = lock_release(&l);
		now = proc_now_ns();
		if (now - t > *max)
			*max = now - t;
		if (now - t > 5000000)
			slow++;
		t = now;
	}
	*ns = proc_now_ns() - t0;
	lock_close(&l);
	return rc;
}

/* Voluntary switches are the wake-ups: each one is a sleep in the kernel. */
static long
switches(int who)
{
	struct rusage ru;

	getrusage(who, &ru);
	return ru.ru_nvcsw;
}

/* Context switches of our own daemon per unit of work, when we know it. */
static void
daemon_switches(const struct bench *b, long long d0, double units,
		const char *unit)
{
	long long d1;

	if (b->daemon_pid <= 0 || d0 < 0)
		return;
	d1 = proc_ctxt_switches(b->daemon_pid);
	printf("daemon: %.2f context switches per %s\n",
	       (double)(d1 - d0) / units, unit);
}

int
profile_run(struct bench *b, const char *mode, long count, int clients)
{
	pid_t pids[BENCH_MAX_CLIENTS];
	long long d0 =
	    b->daemon_pid > 0 ? proc_ctxt_switches(b->daemon_pid) : -1;
	uint64_t ns = 0, max = 0;
	long c0;
	int failed = 0;

	if (strcmp(mode, "uncontended") == 0) {
		c0 = switches(RUSAGE_SELF);
		if (pairs(b, count, &ns, &max) < 0) {
			bench_fail("profile: acquire/release failed");
			return -1;
		}
		printf("%ld acquire+release pairs in %.3f s: %.2f us a pair, "
		       "slowest %.2f ms, %ld over 5 ms\n",
		       count, (double)ns / 1e9,
		       (double)ns / 1e3 / (double)count, (double)max / 1e6,
		       slow);
		printf("client: %.2f voluntary context switches per pair\n",
		       (double)(switches(RUSAGE_SELF) - c0) / (double)count);
		daemon_switches(b, d0, (double)count, "pair");
		return 0;
	}
	if (strcmp(mode, "contended") != 0) {
		bench_fail(
		    "profile: unknown mode '%s' (uncontended, contended)",
		    mode);
		return -1;
	}
	if (clients < 2 || clients > BENCH_MAX_CLIENTS)
		clients = 2;
	for (int i = 0; i < clients; i++) {
		pids[i] = proc_fork();
		if (pids[i] == 0)
			_exit(pairs(b, count, &ns, &max) == 0 ? 0 : 1);
	}
	ns = proc_now_ns();
	for (int i = 0; i < clients; i++) {
		int status;

		if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) ||
		    WEXITSTATUS(status) != 0)
			failed++;
	}
	ns = proc_now_ns() - ns;
	if (failed) {
		bench_fail("profile: %d clients failed", failed);
		return -1;
	}
	printf("%d clients x %ld pairs on one resource in %.3f s: %.0f grants "
	       "a second\n",
	       clients, count, (double)ns / 1e9,
	       (double)clients * (double)count / ((double)ns / 1e9));
	printf("clients: %.2f voluntary context switches per grant\n",
	       (double)switches(RUSAGE_CHILDREN) /
		   ((double)clients * (double)count));
	daemon_switches(b, d0, (double)clients * (double)count, "grant");
	return 0;
}
