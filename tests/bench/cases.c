/*
 * cases: the six measurements of issue 9. Each takes its samples, then
 * turns them into rows with ratios against baselines taken in this run.
 *
 * Runs of different contenders are interleaved (run 1 of each, then run 2
 * of each, ...) so slow drift of a virtual machine spreads over all of them
 * instead of favouring whichever ran first.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arbiter.h"
#include "bench.h"

#define PING_BYTES 32
#define WARMUP	   200

static bool
have_redis(const struct bench *b)
{
	return b->redis_sock[0] != '\0';
}

/* Wait for a child; complain unless it exited 0. */
static int
reap(pid_t pid, const char *what)
{
	int status;

	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		bench_fail("%s (pid %d) ended with status %d", what, (int)pid,
			   status);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ (1) */

/* The blocking peer of the socketpair ping-pong: the physical floor. */
static void
pong_main(int fd)
{
	char buf[PING_BYTES];

	while (proc_read_all(fd, buf, sizeof buf) == 0)
		if (proc_write_all(fd, buf, sizeof buf) < 0)
			break;
	_exit(0);
}

static int
ping(int fd)
{
	char buf[PING_BYTES] = "ping";

	if (proc_write_all(fd, buf, sizeof buf) < 0 ||
	    proc_read_all(fd, buf, sizeof buf) < 0)
		return -1;
	return 0;
}

enum { U_RAW, U_EP, U_ACQ, U_REL, U_PAIR, U_FL, U_RED, U_KINDS };

/* One run of every contender of (1), from wherever we are pinned now. */
static int
uncontended_run(int ops, int peer, int efd, struct lock *la, struct lock *lf,
		struct lock *lr, struct samples *s)
{
	for (int i = 0; i < ops; i++) {
		uint64_t t = proc_now_ns();

		if (ping(peer) < 0)
			return -1;
		samples_push(&s[U_RAW], (double)(proc_now_ns() - t));
	}
	for (int i = 0; i < ops; i++) {
		uint64_t t = proc_now_ns();

		if (ping(efd) < 0)
			return -1;
		samples_push(&s[U_EP], (double)(proc_now_ns() - t));
	}
	for (int i = 0; i < ops; i++) {
		uint64_t t0 = proc_now_ns(), t1, t2;

		if (lock_acquire(la) < 0)
			return -1;
		t1 = proc_now_ns();
		if (lock_release(la) < 0)
			return -1;
		t2 = proc_now_ns();
		samples_push(&s[U_ACQ], (double)(t1 - t0));
		samples_push(&s[U_REL], (double)(t2 - t1));
		samples_push(&s[U_PAIR], (double)(t2 - t0));
	}
	for (int i = 0; i < ops; i++) {
		uint64_t t = proc_now_ns();

		lock_acquire(lf);
		lock_release(lf);
		samples_push(&s[U_FL], (double)(proc_now_ns() - t));
	}
	for (int i = 0; lr != NULL && i < ops; i++) {
		uint64_t t = proc_now_ns();

		if (lock_acquire(lr) != 0 || lock_release(lr) < 0)
			return -1;
		samples_push(&s[U_RED], (double)(proc_now_ns() - t));
	}
	return 0;
}

static void
uncontended_rows(enum place p, struct samples *s)
{
	const char *sfx = place_suffix(p);
	char key[48], raw[48];
	struct row *r;

#define KEY(base) (snprintf(key, sizeof key, "%s%s", base, sfx), key)
	snprintf(raw, sizeof raw, "rtt.raw%s", sfx);
	r = report_add(1, KEY("rtt.raw"),
		       "raw socket RTT, blocking peer (socketpair)", U_NS,
		       &s[U_RAW]);
	report_place(r, p);
	report_note(r, "the floor");
	r = report_add(1, KEY("rtt.epoll"), "raw socket RTT, epoll echo server",
		       U_NS, &s[U_EP]);
	report_place(r, p);
	report_ratio(r, raw, "raw RTT");
	r = report_add(1, KEY("arb.acquire"), "arbiter acquire (1 RTT)", U_NS,
		       &s[U_ACQ]);
	report_place(r, p);
	report_ratio(r, raw, "raw RTT");
	report_ratio(r, KEY("rtt.epoll"), "epoll RTT");
	r = report_add(1, KEY("arb.release"), "arbiter release (1 RTT)", U_NS,
		       &s[U_REL]);
	report_place(r, p);
	report_ratio(r, raw, "raw RTT");
	r = report_add(1, KEY("flock.pair"), "flock(2) LOCK_EX + LOCK_UN", U_NS,
		       &s[U_FL]);
	report_place(r, p);
	r = report_add(1, KEY("redis.pair"),
		       "Redis SET NX PX + EVALSHA del (2 RTT)", U_NS,
		       &s[U_RED]);
	report_place(r, p);
	report_ratio(r, raw, "raw RTT");
	r = report_add(1, KEY("arb.pair"), "arbiter acquire + release (2 RTT)",
		       U_NS, &s[U_PAIR]);
	report_place(r, p);
	report_ratio(r, raw, "raw RTT");
	report_ratio(r, KEY("flock.pair"), "flock");
	report_ratio(r, KEY("redis.pair"), "Redis");
#undef KEY
	for (int i = 0; i < U_KINDS; i++)
		samples_free(&s[i]);
}

/*
 * The client is this process: it moves between the placements, run by run,
 * while the socketpair peer, the echo server, Redis and the daemon stay on
 * cpu_server.
 */
void
case_uncontended(struct bench *b)
{
	static struct samples s[PLACE_COUNT][U_KINDS];
	struct lock la, lf, lr;
	bool redis = false;
	int sp[2], efd;
	pid_t pong;

	bench_progress("(1) uncontended round trip");
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		bench_fail("socketpair: %s", strerror(errno));
		return;
	}
	pong = proc_fork();
	if (pong == 0) {
		close(sp[0]);
		proc_pin(b->cpu_server);
		pong_main(sp[1]);
	}
	close(sp[1]);
	efd = proc_connect(b->echo_sock);
	if (efd < 0 || lock_open(&la, LOCK_ARBITER, b, "uncontended") < 0 ||
	    lock_open(&lf, LOCK_FLOCK, b, "uncontended") < 0) {
		bench_fail(
		    "(1): cannot connect to the echo server or arbiterd");
		close(sp[0]);
		return;
	}
	if (have_redis(b))
		redis = lock_open(&lr, LOCK_REDIS, b, "uncontended") == 0;
	for (int run = 0; run < b->n.runs; run++) {
		for (int i = 0; i < b->nplaces; i++) {
			enum place p = b->places[i];
			struct samples warm[U_KINDS] = {{0}};
			int rc;

			/* Warm caches on the new CPU, then measure. */
			proc_pin(place_client_cpu(b, p));
			rc = uncontended_run(run == 0 ? WARMUP : WARMUP / 4,
					     sp[0], efd, &la, &lf,
					     redis ? &lr : NULL, warm);
			for (int k = 0; k < U_KINDS; k++)
				samples_free(&warm[k]);
			if (rc < 0 ||
			    uncontended_run(b->n.rtt_ops, sp[0], efd, &la, &lf,
					    redis ? &lr : NULL, s[p]) < 0) {
				bench_fail("(1): a round trip failed: %s",
					   arb_last_error(la.arb));
				goto out;
			}
		}
	}
out:
	proc_unpin(b);
	close(sp[0]);
	close(efd);
	lock_close(&la);
	lock_close(&lf);
	if (redis)
		lock_close(&lr);
	reap(pong, "socketpair peer");
	for (int i = 0; i < b->nplaces; i++)
		uncontended_rows(b->places[i], s[b->places[i]]);
}

/* ------------------------------------------------------------ (2) */

/*
 * Two processes pass one lock back and forth. In every round the waiter
 * says (over a pipe) that it is about to block, then blocks in acquire; the
 * holder waits handoff_hold_us more, so the waiter is surely parked in the
 * kernel (arbiter: queued in the daemon, which we check), stamps t0 and
 * releases. The waiter stamps t1 when its acquire returns, and says so
 * before the old holder may ask again (flock and mutexes are not fair: a
 * releaser that asks again at once usually wins).
 *
 * Placement: one CPU puts both processes with the daemon (or Redis). Two
 * CPUs put both on cpu_client, so a handoff through a server crosses CPUs
 * twice (holder -> server -> waiter) like the raw round trip; flock and the
 * mutex have no server, so there the two processes take one CPU each and
 * every handoff crosses once.
 */
static int
handoff_cpu(const struct bench *b, enum lock_kind k, enum place p, int id)
{
	if (p == PLACE_SPLIT && id == 1 && (k == LOCK_FLOCK || k == LOCK_MUTEX))
		return b->cpu_server;
	return place_client_cpu(b, p);
}

static void
handoff_main(struct bench *b, enum lock_kind k, enum place p, int id, int in,
	     int out)
{
	struct bench_shm *shm = b->shm;
	bool holder = id == 0;
	int cpu = handoff_cpu(b, k, p, id), rc = proc_pin(cpu);
	struct lock l;
	char c = 'x';

	if (rc < 0) {
		fprintf(stderr,
			"bench: error: (2) cannot pin a %s handoff process to "
			"CPU %d: %s\n",
			lock_name(k), cpu, strerror(-rc));
		_exit(6);
	}
	if (lock_open(&l, k, b, "handoff") < 0)
		_exit(2);
	l.want_queued = true; /* a round counts only if the waiter queued */
	if (holder) {
		if (lock_acquire(&l) != 0)
			_exit(3);
		proc_write_all(out, &c, 1);
	} else if (proc_read_all(in, &c, 1) < 0)
		_exit(4);
	for (int i = 0; i < b->n.handoff_rounds; i++) {
		if (holder) {
			if (proc_read_all(in, &c, 1) < 0)
				_exit(4);
			proc_sleep_us(b->n.handoff_hold_us);
			atomic_store(&shm->t0, proc_now_ns());
			if (lock_release(&l) < 0)
				_exit(5);
			/* flock and mutexes are not fair: asking again at once
			 * would often win. Wait until the other has it. */
			if (proc_read_all(in, &c, 1) < 0)
				_exit(4);
			holder = false;
		} else {
			uint64_t t1;

			proc_write_all(out, &c, 1);
			if (lock_acquire(&l) != 0)
				_exit(3);
			t1 = proc_now_ns();
			if (k == LOCK_ARBITER && !l.queued)
				atomic_fetch_add(&shm->not_queued, 1);
			else if (shm->nsamples < BENCH_MAX_SAMPLES)
				shm->samples[shm->nsamples++] =
				    (double)(t1 - atomic_load(&shm->t0));
			proc_write_all(out, &c, 1);
			holder = true;
		}
	}
	if (holder)
		lock_release(&l);
	lock_close(&l);
	_exit(0);
}

/* Returns how many rounds were dropped because the waiter was not queued. */
static uint64_t
handoff_run(struct bench *b, enum lock_kind k, enum place p, struct samples *s)
{
	uint64_t dropped = atomic_load(&b->shm->not_queued);
	int ab[2], ba[2];
	pid_t a, c;

	b->shm->nsamples = 0;
	atomic_store(&b->shm->stop, 0);
	if (pipe2(ab, O_CLOEXEC) < 0 || pipe2(ba, O_CLOEXEC) < 0) {
		bench_fail("pipe: %s", strerror(errno));
		return 0;
	}
	a = proc_fork();
	if (a == 0) {
		close(ab[0]);
		close(ba[1]);
		handoff_main(b, k, p, 0, ba[0], ab[1]);
	}
	c = proc_fork();
	if (c == 0) {
		close(ab[1]);
		close(ba[0]);
		handoff_main(b, k, p, 1, ab[0], ba[1]);
	}
	close(ab[0]);
	close(ab[1]);
	close(ba[0]);
	close(ba[1]);
	reap(a, "handoff process");
	reap(c, "handoff process");
	for (uint32_t i = 0; i < b->shm->nsamples; i++)
		samples_push(s, b->shm->samples[i]);
	return atomic_load(&b->shm->not_queued) - dropped;
}

void
case_handoff(struct bench *b)
{
	static const enum lock_kind kinds[] = {LOCK_ARBITER, LOCK_FLOCK,
					       LOCK_MUTEX, LOCK_REDIS};
	static const char *const names[] = {
	    "arbiter release -> waiter's Granted",
	    "flock(2) between two processes",
	    "process-shared pthread mutex",
	    "Redis lock (waiter retries every 1 ms)",
	};
	static struct samples s[PLACE_COUNT][4];
	uint64_t dropped[PLACE_COUNT] = {0};
	char key[48], raw[48];
	struct row *r;

	bench_progress("(2) handoff latency");
	for (int run = 0; run < b->n.runs; run++)
		for (int j = 0; j < b->nplaces; j++) {
			enum place p = b->places[j];

			for (int i = 0; i < 4; i++)
				if (kinds[i] != LOCK_REDIS || have_redis(b))
					dropped[p] += handoff_run(b, kinds[i],
								  p, &s[p][i]);
		}
	for (int j = 0; j < b->nplaces; j++) {
		enum place p = b->places[j];
		const char *sfx = place_suffix(p);

		snprintf(raw, sizeof raw, "rtt.raw%s", sfx);
		for (int i = 0; i < 4; i++) {
			snprintf(key, sizeof key, "handoff.%s%s",
				 lock_name(kinds[i]), sfx);
			r = report_add(2, key, names[i], U_NS, &s[p][i]);
			report_place(r, p);
			report_ratio(r, raw, "raw RTT");
			if (kinds[i] == LOCK_ARBITER && dropped[p] > 0)
				report_note(
				    r, "%llu rounds dropped: waiter not queued",
				    (unsigned long long)dropped[p]);
			samples_free(&s[p][i]);
		}
		snprintf(key, sizeof key, "handoff.arbiter%s", sfx);
		r = report_find(key);
		snprintf(key, sizeof key, "handoff.flock%s", sfx);
		report_ratio(r, key, "flock");
		snprintf(key, sizeof key, "handoff.mutex%s", sfx);
		report_ratio(r, key, "mutex");
	}
}

/* ------------------------------------------------------------ (3) */

struct tput_cfg {
	int clients, resources;
	const char *label;
};

static const struct tput_cfg tput_cfgs[] = {
    {1, 1, "1 client, 1 resource"},
    {8, 1, "8 clients, 1 resource"},
    {64, 1, "64 clients, 1 resource"},
    {64, 64, "64 clients, 64 resources"},
};
#define NTPUT (sizeof tput_cfgs / sizeof tput_cfgs[0])

/* Printed last to first: the baselines, then arbiter's rows. */
static const enum lock_kind tput_kinds[] = {LOCK_ARBITER_NOWAIT, LOCK_ARBITER,
					    LOCK_REDIS, LOCK_FLOCK};
#define NKINDS (sizeof tput_kinds / sizeof tput_kinds[0])

static void
tput_client(struct bench *b, enum lock_kind k, int idx, int nres, int ready,
	    int go)
{
	struct bench_shm *shm = b->shm;
	struct bench_res_slot *rs = &shm->res[idx % nres];
	struct bench_client_slot *cs = &shm->client[idx];
	uint64_t pairs = 0, changes = 0;
	int me = idx + 1, rc;
	char res[32], c;
	struct lock l;

	snprintf(res, sizeof res, "tput-%d", idx % nres);
	if (lock_open(&l, k, b, res) < 0)
		_exit(2);
	proc_write_all(ready, "r", 1);
	(void)!read(go, &c, 1); /* returns 0 when the parent closes it */
	while (!atomic_load_explicit(&shm->stop, memory_order_relaxed)) {
		rc = lock_acquire(&l);
		if (rc == 1)
			break;
		if (rc < 0)
			_exit(3);
		/* The critical section: check exclusion, count handoffs. */
		if (atomic_fetch_add(&rs->in_cs, 1) != 0)
			atomic_fetch_add(&rs->violations, 1);
		if (atomic_load_explicit(&rs->last_owner,
					 memory_order_relaxed) != me) {
			changes++;
			atomic_store_explicit(&rs->last_owner, me,
					      memory_order_relaxed);
		}
		atomic_fetch_sub(&rs->in_cs, 1);
		if (lock_release(&l) < 0)
			_exit(5);
		pairs++;
		atomic_store_explicit(&cs->pairs, pairs, memory_order_relaxed);
		atomic_store_explicit(&cs->changes, changes,
				      memory_order_relaxed);
		atomic_store_explicit(&cs->retries, (uint64_t)l.retries,
				      memory_order_relaxed);
	}
	lock_close(&l);
	_exit(0);
}

static void
tput_totals(const struct bench_shm *shm, int n, uint64_t *pairs,
	    uint64_t *changes)
{
	*pairs = *changes = 0;
	for (int i = 0; i < n; i++) {
		*pairs += atomic_load(&shm->client[i].pairs);
		*changes += atomic_load(&shm->client[i].changes);
	}
}

struct tput_acc {
	struct samples pairs, changes;
	uint64_t total_pairs, total_retries;
};

static void
tput_run(struct bench *b, enum lock_kind k, const struct tput_cfg *cfg,
	 struct tput_acc *acc)
{
	struct bench_shm *shm = b->shm;
	pid_t pids[BENCH_MAX_CLIENTS];
	int ready[2], go[2], n = cfg->clients, started = 0, intervals;
	uint64_t p0, c0, p1, c1, t0, t1;

	memset(shm->client, 0, sizeof shm->client);
	memset(shm->res, 0, sizeof shm->res);
	atomic_store(&shm->stop, 0);
	if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(go, O_CLOEXEC) < 0) {
		bench_fail("pipe: %s", strerror(errno));
		return;
	}
	for (int i = 0; i < n; i++) {
		pids[i] = proc_fork();
		if (pids[i] == 0) {
			close(ready[0]);
			close(go[1]);
			tput_client(b, k, i, cfg->resources, ready[1], go[0]);
		}
	}
	close(ready[1]);
	close(go[0]);
	for (char c; started < n && proc_read_all(ready[0], &c, 1) == 0;)
		started++;
	close(ready[0]);
	if (started < n) {
		bench_fail("(3) %s, %s: only %d of %d clients connected",
			   lock_name(k), cfg->label, started, n);
		atomic_store(&shm->stop, 1);
	}
	close(go[1]); /* go */
	intervals = (int)(b->n.tput_seconds * 1000 / b->n.tput_interval_ms);
	tput_totals(shm, n, &p0, &c0);
	t0 = proc_now_ns();
	for (int i = 0; i < intervals && started == n; i++) {
		double dt;

		proc_sleep_us(b->n.tput_interval_ms * 1000L);
		tput_totals(shm, n, &p1, &c1);
		t1 = proc_now_ns();
		dt = (double)(t1 - t0) / 1e9;
		/* The first interval is warm-up: connections, caches. */
		if (i > 0) {
			samples_push(&acc->pairs, (double)(p1 - p0) / dt);
			samples_push(&acc->changes, (double)(c1 - c0) / dt);
		}
		p0 = p1;
		c0 = c1;
		t0 = t1;
	}
	atomic_store(&shm->stop, 1);
	for (int i = 0; i < n; i++) {
		reap(pids[i], "throughput client");
		acc->total_pairs += atomic_load(&shm->client[i].pairs);
		acc->total_retries += atomic_load(&shm->client[i].retries);
	}
	for (int i = 0; i < cfg->resources; i++) {
		uint64_t v = atomic_load(&shm->res[i].violations);

		if (v > 0)
			bench_fail("(3) %s, %s: MUTUAL EXCLUSION VIOLATED %llu "
				   "times on resource %d",
				   lock_name(k), cfg->label,
				   (unsigned long long)v, i);
	}
}

void
case_throughput(struct bench *b)
{
	static struct tput_acc acc[NTPUT][NKINDS];
	char key[64], name[96], vs[64];
	struct row *r;

	bench_progress("(3) throughput: %zu configurations x %zu locks x %d "
		       "runs of %.1f s",
		       NTPUT, NKINDS, b->n.tput_runs, b->n.tput_seconds);
	for (int run = 0; run < b->n.tput_runs; run++)
		for (size_t c = 0; c < NTPUT; c++)
			for (size_t k = 0; k < NKINDS; k++)
				if (tput_kinds[k] != LOCK_REDIS ||
				    have_redis(b))
					tput_run(b, tput_kinds[k],
						 &tput_cfgs[c], &acc[c][k]);
	for (size_t c = 0; c < NTPUT; c++) {
		const struct tput_cfg *cfg = &tput_cfgs[c];
		bool one_res = cfg->resources == 1 && cfg->clients > 1;

		/* Baselines first, so arbiter's rows can point at them. */
		for (size_t k = NKINDS; k-- > 0;) {
			const char *ln = lock_name(tput_kinds[k]);

			snprintf(key, sizeof key, "tput.%s.%dx%d.pairs", ln,
				 cfg->clients, cfg->resources);
			snprintf(name, sizeof name, "%s pairs/s, %s", ln,
				 cfg->label);
			r = report_add(3, key, name, U_RATE, &acc[c][k].pairs);
			if (tput_kinds[k] == LOCK_REDIS && r != NULL &&
			    acc[c][k].total_pairs > 0)
				report_note(r, "%.1f failed SETs per lock",
					    (double)acc[c][k].total_retries /
						(double)acc[c][k].total_pairs);
			if (tput_kinds[k] == LOCK_ARBITER ||
			    tput_kinds[k] == LOCK_ARBITER_NOWAIT) {
				snprintf(vs, sizeof vs,
					 "tput.redis.%dx%d.pairs", cfg->clients,
					 cfg->resources);
				report_ratio(r, vs, "Redis pairs");
				snprintf(vs, sizeof vs,
					 "tput.flock.%dx%d.pairs", cfg->clients,
					 cfg->resources);
				report_ratio(r, vs, "flock pairs");
			}
			if (one_res) {
				snprintf(key, sizeof key,
					 "tput.%s.%dx%d.changes", ln,
					 cfg->clients, cfg->resources);
				snprintf(name, sizeof name,
					 "%s owner changes/s, %s", ln,
					 cfg->label);
				r = report_add(3, key, name, U_RATE,
					       &acc[c][k].changes);
				if (tput_kinds[k] == LOCK_ARBITER ||
				    tput_kinds[k] == LOCK_ARBITER_NOWAIT) {
					snprintf(vs, sizeof vs,
						 "tput.redis.%dx%d.pairs",
						 cfg->clients, cfg->resources);
					report_ratio(r, vs, "Redis pairs");
					snprintf(vs, sizeof vs,
						 "tput.flock.%dx%d.changes",
						 cfg->clients, cfg->resources);
					report_ratio(r, vs, "flock changes");
				}
			}
			samples_free(&acc[c][k].pairs);
			samples_free(&acc[c][k].changes);
		}
	}
}

/* ------------------------------------------------------------ (4) */

static void
touch_mib(int mib)
{
	size_t len = (size_t)mib << 20;
	char *p;

	if (mib <= 0)
		return;
	/* MAP_POPULATE faults every page in at once: the same 100 MiB of
	 * private 4 KiB pages as touching each, but 20 ms instead of the
	 * 0.6-1 s that one fault per page costs on this kind of VM. */
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED)
		_exit(6);
	p[0] = 1;
}

/* kind < 0: a plain client of the echo server instead of a lock holder. */
static void
death_holder(struct bench *b, int kind, int mib, int ready)
{
	struct lock l;

	if (kind < 0) {
		int fd = proc_connect(b->echo_sock);

		/* One echo proves the server has accepted us. */
		if (fd < 0 || ping(fd) < 0)
			_exit(2);
	} else if (lock_open(&l, (enum lock_kind)kind, b, "death") < 0 ||
		   lock_acquire(&l) != 0)
		_exit(2);
	touch_mib(mib);
	proc_write_all(ready, "h", 1);
	for (;;)
		pause();
}

static void
death_waiter(struct bench *b, enum lock_kind k, int ready)
{
	struct lock l;

	if (lock_open(&l, k, b, "death") < 0)
		_exit(2);
	l.queued_fd = ready;
	l.want_queued = true;
	proc_write_all(ready, "w", 1);
	if (lock_acquire(&l) != 0)
		_exit(3);
	atomic_store(&b->shm->t1, proc_now_ns());
	_exit(0);
}

/* Wait for the echo server to report an EOF after count c0. */
static int
await_eof(struct bench *b, uint64_t c0)
{
	struct pollfd p = {.fd = b->echo_notify, .events = POLLIN};
	char buf[64];

	while (atomic_load(&b->shm->eof_count) <= c0) {
		if (poll(&p, 1, 10000) <= 0)
			return -1;
		while (read(b->echo_notify, buf, sizeof buf) > 0)
			;
	}
	return 0;
}

static int
death_round(struct bench *b, int kind, int mib, struct samples *s)
{
	int rp[2];
	pid_t h, w = -1;
	uint64_t t0, c0 = 0;
	char c;
	int rc = -1;

	if (pipe2(rp, O_CLOEXEC) < 0)
		return -1;
	h = proc_fork();
	if (h == 0) {
		close(rp[0]);
		death_holder(b, kind, mib, rp[1]);
	}
	if (proc_read_all(rp[0], &c, 1) < 0)
		goto out;
	if (kind >= 0) {
		w = proc_fork();
		if (w == 0) {
			close(rp[0]);
			death_waiter(b, (enum lock_kind)kind, rp[1]);
		}
		if (proc_read_all(rp[0], &c, 1) < 0)
			goto out;
		/* arbiter: the waiter reports its queue position. */
		if (kind == LOCK_ARBITER && proc_read_all(rp[0], &c, 1) < 0)
			goto out;
		/* Let it reach the kernel and sleep there. */
		proc_sleep_us(1000);
	} else {
		char buf[64];

		while (read(b->echo_notify, buf, sizeof buf) > 0)
			;
		c0 = atomic_load(&b->shm->eof_count);
	}
	t0 = proc_now_ns();
	kill(h, SIGKILL);
	if (kind >= 0) {
		if (reap(w, "death waiter") == 0) {
			samples_push(s,
				     (double)(atomic_load(&b->shm->t1) - t0));
			rc = 0;
		}
		w = -1;
	} else if (await_eof(b, c0) == 0) {
		samples_push(s, (double)(atomic_load(&b->shm->eof_ns) - t0));
		rc = 0;
	}
out:
	close(rp[1]);
	close(rp[0]);
	kill(h, SIGKILL);
	waitpid(h, NULL, 0);
	if (w > 0) {
		kill(w, SIGKILL);
		waitpid(w, NULL, 0);
	}
	return rc;
}

static void
death_rows(const char *size, const char *sizename, struct samples *s)
{
	static const char *const what[3] = {"plain socket server sees EOF",
					    "arbiter waiter granted",
					    "flock(2) waiter granted"};
	static const char *const kname[3] = {"socket", "arbiter", "flock"};
	struct row *r, *base;
	char key[48], name[96];

	for (int i = 0; i < 3; i++) {
		snprintf(key, sizeof key, "death.%s.%s", kname[i], size);
		snprintf(name, sizeof name, "%s, %s holder", what[i], sizename);
		r = report_add(4, key, name, U_NS, &s[i]);
		snprintf(key, sizeof key, "death.socket.%s", size);
		base = report_find(key);
		if (i > 0 && r != NULL && base != NULL)
			report_note(r,
				    "%+.3f ms p50, %+.3f ms p99 vs socket EOF",
				    (r->median - base->median) / 1e6,
				    (r->p99 - base->p99) / 1e6);
		samples_free(&s[i]);
	}
}

void
case_death(struct bench *b)
{
	/* Index: 0 socket EOF, 1 arbiter, 2 flock. */
	static const int kinds[3] = {-1, LOCK_ARBITER, LOCK_FLOCK};
	struct samples small[3] = {{0}}, big[3] = {{0}};
	char label[32];

	bench_progress("(4) death to handoff: %d small rounds, %d rounds of "
		       "%d MiB",
		       b->n.death_small_rounds, b->n.death_big_rounds,
		       b->n.death_big_mib);
	for (int i = 0; i < b->n.death_small_rounds; i++)
		for (int k = 0; k < 3; k++)
			if (death_round(b, kinds[k], 0, &small[k]) < 0)
				bench_fail("(4) a small-holder round of %s "
					   "failed",
					   k ? lock_name(kinds[k]) : "socket");
	for (int i = 0; i < b->n.death_big_rounds; i++)
		for (int k = 0; k < 3; k++)
			if (death_round(b, kinds[k], b->n.death_big_mib,
					&big[k]) < 0)
				bench_fail(
				    "(4) a big-holder round of %s failed",
				    k ? lock_name(kinds[k]) : "socket");
	death_rows("small", "small", small);
	snprintf(label, sizeof label, "%d MiB", b->n.death_big_mib);
	death_rows("big", label, big);
}

/* ------------------------------------------------------------ (5) */

static pid_t
private_daemon(struct bench *b, char *sock, size_t len, const char *const *opts,
	       int nopts)
{
	char data[PATH_MAX + 32];
	int i = b->daemons;

	snprintf(sock, len, "%.63s/d%d.sock", b->tmp, i);
	snprintf(data, sizeof data, "%s/d%d-data", b->tmp, i);
	mkdir(data, 0700);
	return proc_start_daemon(b, sock, data, opts, nopts);
}

/* One acquire and release, so the daemon has allocated its buffers. */
static void
warm(const char *sock)
{
	struct arb_lease l;
	arb_client *c;

	if (arb_connect(&c, sock, "warm") < 0)
		return;
	if (arb_acquire(c, "warm", ARB_EXCLUSIVE, 0, NULL, &l) == 0)
		arb_release(c, l.id);
	arb_close(c);
}

static int
connect_many(const char *sock, arb_client **cl, int n, const char *name)
{
	for (int i = 0; i < n; i++) {
		if (arb_connect(&cl[i], sock, name) < 0) {
			bench_fail("(5) connection %d of %d: %s", i + 1, n,
				   arb_connect_error());
			return i;
		}
	}
	return n;
}

/* Pipeline per leases acquires on one connection, then take the grants. */
static int
hold_many(arb_client *c, int conn, int leases)
{
	char name[64];
	uint64_t rid;
	int got = 0;

	for (int j = 0; j < leases; j++) {
		snprintf(name, sizeof name, "scale-%d-%d", conn, j);
		if (arb_acquire_async(c, name, ARB_EXCLUSIVE, ARB_WAIT_FOREVER,
				      NULL, &rid) < 0)
			return -1;
	}
	while (got < leases) {
		struct arb_event ev;
		int rc = arb_next_event(c, &ev);

		if (rc < 0)
			return rc;
		if (rc == 0) {
			struct pollfd p = {.fd = arb_fd(c), .events = POLLIN};

			poll(&p, 1, 5000);
			continue;
		}
		if (ev.kind == ARB_EV_GRANTED)
			got++;
		else if (ev.kind == ARB_EV_FAILED) {
			bench_fail("(5) acquire failed: %s", ev.message);
			return -1;
		}
	}
	return 0;
}

void
case_scale(struct bench *b)
{
	struct samples rss0 = {0}, rssc = {0}, perc = {0}, rssl = {0},
		       perl = {0};
	int nc = b->n.scale_conns, lc = b->n.scale_lease_conns,
	    lpc = b->n.scale_leases_per_conn;
	arb_client **cl = calloc((size_t)(nc > lc ? nc : lc), sizeof *cl);
	char sock[PATH_MAX], key[64], name[96];
	struct row *r;

	bench_progress("(5) scale: %d idle connections; %d x %d leases; %d "
		       "runs",
		       nc, lc, lpc, b->n.scale_runs);
	if (cl == NULL)
		return;
	for (int run = 0; run < b->n.scale_runs; run++) {
		long before, after;
		pid_t pid;
		int n;

		/* Idle connections, on a fresh daemon. */
		pid = private_daemon(b, sock, sizeof sock, NULL, 0);
		if (pid < 0)
			break;
		warm(sock);
		before = proc_rss_kib(pid);
		n = connect_many(sock, cl, nc, "idle");
		after = proc_rss_kib(pid);
		if (n == nc) {
			samples_push(&rss0, (double)before * 1024);
			samples_push(&rssc, (double)after * 1024);
			samples_push(&perc,
				     (double)(after - before) * 1024 / nc);
		}
		for (int i = 0; i < n; i++)
			arb_close(cl[i]);
		proc_stop(pid);

		/* Held leases, each on its own resource, on a fresh daemon. */
		pid = private_daemon(b, sock, sizeof sock, NULL, 0);
		if (pid < 0)
			break;
		warm(sock);
		n = connect_many(sock, cl, lc, "holder");
		before = proc_rss_kib(pid);
		for (int i = 0; i < n; i++)
			if (hold_many(cl[i], i, lpc) < 0) {
				bench_fail("(5) holding leases: %s",
					   arb_last_error(cl[i]));
				n = -n;
				break;
			}
		after = proc_rss_kib(pid);
		if (n == lc) {
			samples_push(&rssl, (double)after * 1024);
			samples_push(&perl, (double)(after - before) * 1024 /
						((double)lc * lpc));
		}
		for (int i = 0; i < (n < 0 ? -n : n); i++)
			arb_close(cl[i]);
		proc_stop(pid);
	}
	free(cl);
	report_add(5, "rss.base", "daemon RSS, after one client came and went",
		   U_BYTES, &rss0);
	snprintf(name, sizeof name, "daemon RSS with %d idle connections", nc);
	report_add(5, "rss.conns", name, U_BYTES, &rssc);
	r = report_add(5, "rss.per_conn", "RSS per idle connection", U_BYTES,
		       &perc);
	if (r != NULL)
		report_note(r, "goal <= 4096 B");
	snprintf(name, sizeof name, "daemon RSS at %d held leases (%d x %d)",
		 lc * lpc, lc, lpc);
	snprintf(key, sizeof key, "rss.resources");
	report_add(5, key, name, U_BYTES, &rssl);
	report_add(5, "rss.per_resource",
		   "RSS per held lease on its own resource", U_BYTES, &perl);
	samples_free(&rss0);
	samples_free(&rssc);
	samples_free(&perc);
	samples_free(&rssl);
	samples_free(&perl);
}

/* ------------------------------------------------------------ (6) */

void
case_idle(struct bench *b)
{
	enum { NHOLD = 4 };
	arb_client *hold[NHOLD] = {0}, *wait[NHOLD] = {0};
	long long a0, a1, m0 = -1, m1 = -1, r0 = -1, r1 = -1;
	char sock[PATH_MAX], name[128];
	struct arb_lease l;
	uint64_t rid;
	struct row *r;
	pid_t pid;

	bench_progress("(6) idle cost over %.1f s", b->n.idle_seconds);
	pid = private_daemon(b, sock, sizeof sock, NULL, 0);
	if (pid < 0)
		return;
	for (int i = 0; i < NHOLD; i++) {
		char res[32];

		snprintf(res, sizeof res, "idle-%d", i);
		if (arb_connect(&hold[i], sock, "idle-holder") < 0 ||
		    arb_acquire(hold[i], res, ARB_EXCLUSIVE, 0, NULL, &l) < 0 ||
		    arb_connect(&wait[i], sock, "idle-waiter") < 0 ||
		    arb_acquire_async(wait[i], res, ARB_EXCLUSIVE,
				      ARB_WAIT_FOREVER, NULL, &rid) < 0) {
			bench_fail("(6) cannot set up the idle daemon");
			goto out;
		}
	}
	/* Let the Queued replies go out before the window opens. */
	proc_sleep_us(100000);
	a0 = proc_ctxt_switches(pid);
	if (b->daemon_pid > 0)
		m0 = proc_ctxt_switches(b->daemon_pid);
	if (b->redis_pid > 0)
		r0 = proc_ctxt_switches(b->redis_pid);
	proc_sleep_us((long)(b->n.idle_seconds * 1e6));
	a1 = proc_ctxt_switches(pid);
	if (b->daemon_pid > 0)
		m1 = proc_ctxt_switches(b->daemon_pid);
	if (b->redis_pid > 0)
		r1 = proc_ctxt_switches(b->redis_pid);

	snprintf(name, sizeof name,
		 "arbiterd ctx switches in %g s: %d held, %d queued",
		 b->n.idle_seconds, NHOLD, NHOLD);
	r = report_value(6, "idle.arbiter", name, U_COUNT, (double)(a1 - a0));
	report_note(r, "goal 0");
	if (m0 >= 0) {
		snprintf(name, sizeof name,
			 "arbiterd ctx switches in %g s, after the load",
			 b->n.idle_seconds);
		r = report_value(6, "idle.arbiter_after_load", name, U_COUNT,
				 (double)(m1 - m0));
		report_note(r, "goal 0");
	}
	if (r0 >= 0) {
		snprintf(name, sizeof name,
			 "redis-server ctx switches, same %g s",
			 b->n.idle_seconds);
		r = report_value(6, "idle.redis", name, U_COUNT,
				 (double)(r1 - r0));
		report_note(r, "for comparison (hz 10 timers)");
	}
out:
	for (int i = 0; i < NHOLD; i++) {
		arb_close(hold[i]);
		arb_close(wait[i]);
	}
	proc_stop(pid);
}

/* ------------------------------------------------------------ goals */

static double
median_of(const char *key)
{
	struct row *r = report_find(key);

	return r ? r->median : -1;
}

static void
goal_ratio(const char *goal, const char *key, const char *vs, double min,
	   double max)
{
	double a = median_of(key), v = median_of(vs);
	char fig[160];

	if (a < 0 || v <= 0) {
		report_goal(goal, "not measured", -1);
		return;
	}
	snprintf(fig, sizeof fig, "%.2fx (%s / %s)", a / v, key, vs);
	report_goal(goal, fig, a / v >= min && a / v <= max);
}

static void
goal_death(const char *goal, const char *size)
{
	char k1[48], k2[48], fig[160];
	struct row *a, *s;

	snprintf(k1, sizeof k1, "death.arbiter.%s", size);
	snprintf(k2, sizeof k2, "death.socket.%s", size);
	a = report_find(k1);
	s = report_find(k2);
	if (a == NULL || s == NULL) {
		report_goal(goal, "not measured", -1);
		return;
	}
	snprintf(fig, sizeof fig, "p50 %+.3f ms, p99 %+.3f ms",
		 (a->median - s->median) / 1e6, (a->p99 - s->p99) / 1e6);
	report_goal(goal, fig,
		    a->median - s->median <= 1e5 && a->p99 - s->p99 <= 1e5);
}

void
case_goals(struct bench *b)
{
	struct row *r;
	char fig[160];

	for (int i = 0; i < b->nplaces; i++) {
		enum place p = b->places[i];
		const char *sfx = place_suffix(p);
		const char *where = p == PLACE_SAME    ? ", one CPU"
				    : p == PLACE_SPLIT ? ", two CPUs"
						       : "";
		char goal[96], key[48], raw[48];

		snprintf(raw, sizeof raw, "rtt.raw%s", sfx);
		snprintf(goal, sizeof goal,
			 "uncontended acquire <= 1.5x raw socket RTT%s", where);
		snprintf(key, sizeof key, "arb.acquire%s", sfx);
		goal_ratio(goal, key, raw, 0, 1.5);
		snprintf(goal, sizeof goal,
			 "contended handoff median <= 1.5x raw socket RTT%s",
			 where);
		snprintf(key, sizeof key, "handoff.arbiter%s", sfx);
		goal_ratio(goal, key, raw, 0, 1.5);
	}
	goal_ratio("owner changes/s at 8 clients >= 3x Redis pairs/s",
		   "tput.arbiter.8x1.changes", "tput.redis.8x1.pairs", 3, 1e18);
	goal_ratio("owner changes/s at 64 clients >= 3x Redis pairs/s",
		   "tput.arbiter.64x1.changes", "tput.redis.64x1.pairs", 3,
		   1e18);
	goal_ratio("owner changes/s at 8 clients >= 0.7x flock's",
		   "tput.arbiter.8x1.changes", "tput.flock.8x1.changes", 0.7,
		   1e18);
	goal_ratio("owner changes/s at 64 clients >= 0.7x flock's",
		   "tput.arbiter.64x1.changes", "tput.flock.64x1.changes", 0.7,
		   1e18);
	goal_ratio("64 clients on 64 resources >= 2x Redis",
		   "tput.arbiter.64x64.pairs", "tput.redis.64x64.pairs", 2,
		   1e18);
	goal_death("death-to-handoff within 0.1 ms of socket EOF, small",
		   "small");
	goal_death("death-to-handoff within 0.1 ms of socket EOF, big", "big");
	goal_ratio("cluster: cross-host handoff <= 1.5x one etcd watch event",
		   "cl.arb.cross", "cl.watch", 0, 1.5);
	goal_ratio("cluster: owner changes/s, 3 hosts x 8 clients, >= 20x "
		   "etcd's lock recipe",
		   "cl.arb.tput.changes", "cl.recipe.tput.changes", 20, 1e18);
	goal_ratio("cluster: local handoff in cluster mode <= 1.2x "
		   "single-host mode",
		   "cl.arb.local", "cl.arb.single", 0, 1.2);
	goal_ratio("intercept: a flock pair on another file <= 1.05x without "
		   "the shim",
		   "icpt.flock.other", "icpt.flock.plain", 0, 1.05);
	goal_ratio("intercept: an fcntl F_SETLK pair on another file <= 1.05x "
		   "without the shim",
		   "icpt.fcntl.other", "icpt.fcntl.plain", 0, 1.05);
	r = report_find("rss.per_conn");
	if (r != NULL) {
		snprintf(fig, sizeof fig, "%.0f B", r->median);
		report_goal("<= 4 KiB per idle connection", fig,
			    r->median <= 4096);
	} else
		report_goal("<= 4 KiB per idle connection", "not measured", -1);
	r = report_find("idle.arbiter");
	if (r != NULL) {
		snprintf(fig, sizeof fig, "%.0f context switches", r->median);
		report_goal("0 idle wake-ups", fig, r->median == 0);
	} else
		report_goal("0 idle wake-ups", "not measured", -1);
}
