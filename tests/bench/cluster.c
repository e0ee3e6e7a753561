/*
 * cluster: section (7), cluster mode on a real 3-member etcd (issue 16).
 *
 * The etcd is the test bed's (tests/cluster/etcdlib.py, started through
 * etcd_bed.py): Debian's etcd, 3 members on loopback, data on tmpfs,
 * niced. Three arbiterds in cluster mode stand for three hosts; host h lists
 * member h first, so the hosts reach etcd through different members, and a
 * fourth arbiterd without cluster mode is the single-host reference.
 *
 * Measured in the same run, interleaved run by run:
 *   - one etcd watch event: a put on one connection -> the event on a watch
 *     started at header revision + 1 (put on host A's member, watch on host
 *     B's, and B to A, as handoffs go both ways; and both on one member);
 *   - etcd's own lock recipe, as `etcdctl lock` uses it: a lease grant, then
 *     /v3/lock/lock with that lease (etcd runs its concurrency.Mutex: a key
 *     per waiter, each waiting for its predecessor's delete); release is
 *     /v3/lock/unlock, then the lease is revoked. Handoff latency between
 *     two clients on different hosts, and owner changes per second with 8
 *     clients on each of 3 hosts;
 *   - arbiter: the cross-host handoff (holder on host A releases -> waiter
 *     on host B granted), owner changes per second with 8 clients on each
 *     of 3 hosts, and a local handoff in cluster mode against the same in
 *     single-host mode.
 *
 * Handoffs follow section (2)'s protocol: the waiter says it is about to
 * block, the holder waits until the waiter is queued, then handoff_hold_us
 * more, stamps t0 (CLOCK_MONOTONIC) and releases; the waiter stamps t1 when
 * its acquire returns. Across hosts "queued" means the waiter's etcd key
 * exists: the holder watches the keys and waits for one created after its
 * own grant (for arbiter: the waiting host's key, so the waiting arbiterd
 * has put its key before the release). Locally it means the waiter's
 * Queued event, as in (2).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arbiter.h"
#include "arbiter.pb-c.h"
#include "bench.h"
#include "gw.h"

#define HOSTS	       3
#define ETCD_BIN       "/usr/bin/etcd" /* what the test bed runs */
#define BED_TIMEOUT_MS 90000
/* A waiter queued this long has its etcd watch synced (etcd catches up
 * older watches on a 100 ms loop): the recipe's best case. */
#define SYNCED_HOLD_US 150000
#define RECIPE_TTL_S   60 /* etcdctl lock's session TTL */

#define ARB_PREFIX "arb/"
#define WATCH_KEYS "w/"
#define LOCK_CROSS "lock/cross"
#define LOCK_TPUT  "lock/tput"
#define RES_CROSS  "cl-cross"
#define RES_LOCAL  "cl-local"
#define RES_TPUT   "cl-tput"
#define RES_WARM   "cl-warm"

struct cluster {
	struct bench *b;
	pid_t bed;
	int bed_in; /* the bed's stdin: closing it stops etcd */
	char ep[HOSTS][64];
	int leader;
	pid_t pid[HOSTS]; /* cluster-mode arbiterds, one per host */
	char sock[HOSTS][108];
	pid_t single; /* the single-host arbiterd */
	char single_sock[108];
	bool arbiter; /* the arbiterds run in cluster mode */
};

static int
reap_ok(pid_t pid, const char *what)
{
	int status;

	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		bench_fail("(7) %s (pid %d) ended with status %d", what,
			   (int)pid, status);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ etcd */

/*
 * The bed runs without PR_SET_PDEATHSIG: when the bench ends in any way,
 * its stdin reaches EOF and it stops the members itself (a SIGKILL would
 * leave them running).
 */
static int
bed_start(struct cluster *cl)
{
	struct bench *b = cl->b;
	int in[2], out[2];
	char line[512], *p, *save = NULL;
	size_t n = 0;
	pid_t pid;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
		bench_fail("pipe: %s", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		bench_fail("fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		setpgid(0, 0); /* a ^C of the bench reaches it through EOF */
		execl("/usr/bin/python3", "python3", b->etcd_bed, (char *)NULL);
		printf("error exec /usr/bin/python3: %s\n", strerror(errno));
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	cl->bed = pid;
	cl->bed_in = in[1];
	/* One line: "endpoints A,B,C leader=I" or "error ...". */
	while (n + 1 < sizeof line) {
		struct pollfd pf = {.fd = out[0], .events = POLLIN};
		ssize_t r;

		if (poll(&pf, 1, BED_TIMEOUT_MS) <= 0)
			break;
		r = read(out[0], line + n, 1);
		if (r <= 0 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	close(out[0]);
	if (strncmp(line, "endpoints ", 10) != 0) {
		bench_fail("(7) the etcd test bed (%s) did not start: %s",
			   b->etcd_bed, n ? line : "no answer");
		return -1;
	}
	p = strtok_r(line + 10, ", ", &save);
	for (int i = 0; i < HOSTS; i++) {
		if (p == NULL) {
			bench_fail("(7) etcd bed: fewer than %d endpoints",
				   HOSTS);
			return -1;
		}
		snprintf(cl->ep[i], sizeof cl->ep[i], "%s", p);
		p = strtok_r(NULL, ", ", &save);
	}
	cl->leader = p && strncmp(p, "leader=", 7) == 0 ? atoi(p + 7) : -1;
	return 0;
}

static void
bed_stop(struct cluster *cl)
{
	if (cl->bed <= 0)
		return;
	close(cl->bed_in);
	waitpid(cl->bed, NULL, 0);
	cl->bed = 0;
}

/* Header revision now, from a count-only range over prefix. */
static int64_t
etcd_revision(struct gw *g, const char *prefix)
{
	char end[128];
	json_t *r;
	int64_t rev;

	gw_prefix_end(prefix, end, sizeof end);
	r = gw_post(g, "/v3/kv/range",
		    json_pack("{s:o,s:o,s:b}", "key",
			      gw_b64(prefix, strlen(prefix)), "range_end",
			      gw_b64(end, strlen(end)), "count_only", 1));
	if (r == NULL)
		return -1;
	rev = gw_int(json_object_get(r, "header"), "revision");
	json_decref(r);
	return rev;
}

/* A watch on prefix from the revision after now: events stream at once. */
static int
watch_open(struct gw *w, const char *url, const char *prefix)
{
	struct gw g;
	int64_t rev;

	if (gw_open(&g, url) < 0) {
		fprintf(stderr, "bench: (7) %s\n", g.err);
		gw_close(&g);
		return -1;
	}
	rev = etcd_revision(&g, prefix);
	if (rev < 0)
		fprintf(stderr, "bench: (7) %s\n", g.err);
	gw_close(&g);
	if (rev < 0 || gw_open(w, url) < 0 ||
	    gw_watch(w, prefix, rev + 1) < 0) {
		fprintf(stderr, "bench: (7) watch: %s\n", w->err);
		return -1;
	}
	return 0;
}

/* Wait for a PUT of a key created after revision rev. */
static int
watch_new_key(struct gw *w, int64_t rev)
{
	for (;;) {
		json_t *m = gw_next(w, 30000), *ev;
		size_t i;
		int found = 0;

		if (m == NULL) {
			fprintf(stderr, "bench: (7) %s\n", w->err);
			return -1;
		}
		json_array_foreach(json_object_get(m, "events"), i, ev)
		{
			json_t *kv = json_object_get(ev, "kv");

			/* PUT is the default type, so it is left out. */
			if (json_object_get(ev, "type") == NULL &&
			    gw_int(kv, "create_revision") > rev)
				found = 1;
		}
		json_decref(m);
		if (found)
			return 0;
	}
}

/* ------------------------------------------------------------ contenders */

enum ckind {
	C_RECIPE,  /* etcd's lock recipe on member `host` */
	C_ARBITER, /* an arbiter client of sock */
};

struct contender {
	enum ckind kind;
	const struct bench *b;
	char res[64];
	struct gw g; /* recipe: the client's connection */
	char lease[32];
	json_t *key; /* recipe: the lock key held (base64) */
	int64_t rev; /* recipe: header revision of the grant */
	arb_client *arb;
	uint64_t lease_id;
	uint64_t token; /* grows with every grant (recipe: its revision) */
	bool want_queued, queued;
};

static void
on_queued(void *ctx, const char *resource, uint32_t position,
	  uint32_t holder_pid, const char *holder_name)
{
	struct contender *c = ctx;

	(void)resource;
	(void)position;
	(void)holder_pid;
	(void)holder_name;
	c->queued = true;
}

static int
c_open(struct contender *c, enum ckind k, const struct bench *b,
       const char *where, const char *res)
{
	memset(c, 0, sizeof *c);
	c->kind = k;
	c->b = b;
	c->g.fd = -1;
	snprintf(c->res, sizeof c->res, "%s", res);
	if (k == C_RECIPE) {
		if (gw_open(&c->g, where) < 0) {
			fprintf(stderr, "bench: (7) %s\n", c->g.err);
			return -1;
		}
		return 0;
	}
	if (arb_connect(&c->arb, where, "bench-cluster") < 0) {
		fprintf(stderr, "bench: (7) %s\n", arb_connect_error());
		return -1;
	}
	return 0;
}

/* 0 when held, < 0 on error. */
static int
c_acquire(struct contender *c)
{
	if (c->kind == C_RECIPE) {
		json_t *r = gw_post(&c->g, "/v3/lease/grant",
				    json_pack("{s:i}", "TTL", RECIPE_TTL_S));

		if (r == NULL)
			goto fail;
		snprintf(c->lease, sizeof c->lease, "%" PRId64,
			 gw_int(r, "ID"));
		json_decref(r);
		r = gw_post(&c->g, "/v3/lock/lock",
			    json_pack("{s:o,s:s}", "name",
				      gw_b64(c->res, strlen(c->res)), "lease",
				      c->lease));
		if (r == NULL)
			goto fail;
		c->key = json_incref(json_object_get(r, "key"));
		c->rev = gw_int(json_object_get(r, "header"), "revision");
		c->token = (uint64_t)c->rev;
		json_decref(r);
		return c->key ? 0 : -1;
	fail:
		fprintf(stderr, "bench: (7) lock recipe: %s\n", c->g.err);
		return -1;
	} else {
		struct arb_acquire_opts o = {.lock_delay_ms = -1};
		struct arb_lease l;
		int rc;

		if (c->want_queued) {
			o.on_queued = on_queued;
			o.ctx = c;
		}
		c->queued = false;
		rc = arb_acquire(c->arb, c->res, ARB_EXCLUSIVE,
				 ARB_WAIT_FOREVER, &o, &l);
		if (rc < 0) {
			fprintf(stderr, "bench: (7) acquire %s: %s\n", c->res,
				arb_last_error(c->arb));
			return rc;
		}
		c->lease_id = l.id;
		c->token = l.token;
		return 0;
	}
}

static int
c_release(struct contender *c)
{
	json_t *r;

	if (c->kind == C_ARBITER)
		return arb_release(c->arb, c->lease_id);
	r = gw_post(&c->g, "/v3/lock/unlock",
		    json_pack("{s:O}", "key", c->key));
	json_decref(c->key);
	c->key = NULL;
	if (r == NULL)
		goto fail;
	json_decref(r);
	r = gw_post(&c->g, "/v3/lease/revoke",
		    json_pack("{s:s}", "ID", c->lease));
	if (r == NULL)
		goto fail;
	json_decref(r);
	return 0;
fail:
	fprintf(stderr, "bench: (7) lock recipe: %s\n", c->g.err);
	return -1;
}

static void
c_close(struct contender *c)
{
	if (c->arb != NULL)
		arb_close(c->arb);
	c->arb = NULL;
	json_decref(c->key);
	c->key = NULL;
	gw_close(&c->g);
}

/* ------------------------------------------------------------ watch event */

/*
 * The watcher: one sample per event, acknowledged over a pipe. Putter and
 * watcher run where the arbiterds run (cpu_server): in a cross-host handoff
 * the etcd clients are the arbiterds, so the baseline's etcd clients sit in
 * their place.
 */
static void
watcher_main(struct bench *b, const char *url, int rounds, int ready, int ack)
{
	struct gw w;
	int got = 0;

	proc_pin(b->cpu_server);
	if (watch_open(&w, url, WATCH_KEYS) < 0)
		_exit(2);
	proc_write_all(ready, "r", 1);
	while (got < rounds) {
		json_t *m = gw_next(&w, 30000);
		size_t n;
		uint64_t t1 = proc_now_ns();

		if (m == NULL) {
			fprintf(stderr, "bench: (7) %s\n", w.err);
			_exit(3);
		}
		n = json_array_size(json_object_get(m, "events"));
		json_decref(m);
		if (n == 0)
			continue;
		if (b->shm->nsamples < BENCH_MAX_SAMPLES)
			b->shm->samples[b->shm->nsamples++] =
			    (double)(t1 - atomic_load(&b->shm->t0));
		got++;
		proc_write_all(ack, "e", 1);
	}
	gw_close(&w);
	_exit(0);
}

/* Put on member pm, watch on member wm: one sample per round. */
static void
watch_run(struct cluster *cl, int pm, int wm, int rounds, struct samples *s)
{
	struct bench *b = cl->b;
	int ready[2], ack[2];
	struct gw g;
	pid_t w;
	char c;

	b->shm->nsamples = 0;
	if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(ack, O_CLOEXEC) < 0) {
		bench_fail("pipe: %s", strerror(errno));
		return;
	}
	w = proc_fork();
	if (w == 0)
		watcher_main(b, cl->ep[wm], rounds, ready[1], ack[1]);
	close(ready[1]);
	close(ack[1]);
	proc_pin(b->cpu_server);
	if (gw_open(&g, cl->ep[pm]) < 0 || proc_read_all(ready[0], &c, 1) < 0) {
		bench_fail("(7) watch latency: %s",
			   g.err[0] ? g.err : "the watcher did not start");
		goto out;
	}
	for (int i = 0; i < rounds; i++) {
		char val[32];
		json_t *r;

		/* Let the previous round's replies settle, as (2) does. */
		proc_sleep_us(b->n.handoff_hold_us);
		snprintf(val, sizeof val, "%d", i);
		atomic_store(&b->shm->t0, proc_now_ns());
		r = gw_post(&g, "/v3/kv/put",
			    json_pack("{s:o,s:o}", "key",
				      gw_b64(WATCH_KEYS "k", 3), "value",
				      gw_b64(val, strlen(val))));
		if (r == NULL) {
			bench_fail("(7) watch latency: put: %s", g.err);
			goto out;
		}
		json_decref(r);
		if (proc_read_all(ack[0], &c, 1) < 0) {
			bench_fail("(7) watch latency: the watcher ended");
			goto out;
		}
	}
out:
	proc_unpin(b);
	gw_close(&g);
	close(ready[0]);
	close(ack[0]);
	kill(w, SIGKILL);
	waitpid(w, NULL, 0);
	for (uint32_t i = 0; i < b->shm->nsamples; i++)
		samples_push(s, b->shm->samples[i]);
}

/* ------------------------------------------------------------ handoff */

enum hkind {
	H_RECIPE,	 /* etcd lock recipe, host A -> host B */
	H_RECIPE_SYNCED, /* the same, waiter queued SYNCED_HOLD_US */
	H_CROSS,	 /* arbiter, host A -> host B */
	H_SINGLE,	 /* arbiter single-host mode */
	H_LOCAL,	 /* arbiter cluster mode, both on host A */
	H_KINDS
};

/* Where process id (0: starts as holder, 1: waiter) of kind k connects. */
static const char *
h_where(const struct cluster *cl, enum hkind k, int id)
{
	switch (k) {
	case H_RECIPE:
	case H_RECIPE_SYNCED:
		return cl->ep[id];
	case H_CROSS:
		return cl->sock[id];
	case H_LOCAL:
		return cl->sock[0];
	default:
		return cl->single_sock;
	}
}

static void
h_main(struct cluster *cl, enum hkind k, int id, int in, int out)
{
	struct bench *b = cl->b;
	struct bench_shm *shm = b->shm;
	bool holder = id == 0, etcd_queue = k != H_LOCAL && k != H_SINGLE;
	bool recipe = k == H_RECIPE || k == H_RECIPE_SYNCED;
	long hold =
	    k == H_RECIPE_SYNCED ? SYNCED_HOLD_US : b->n.handoff_hold_us;
	const char *keys = recipe ? LOCK_CROSS "/" : ARB_PREFIX;
	struct contender c;
	struct gw ctl = {.fd = -1}, w = {.fd = -1};
	int64_t rev = 0;
	int rounds = k == H_RECIPE_SYNCED ? b->n.cl_synced_rounds
		     : etcd_queue	  ? b->n.cl_handoff_rounds
					  : b->n.cl_local_rounds;
	char x = 'x';

	proc_pin(b->cpu_client);
	if (c_open(&c, recipe ? C_RECIPE : C_ARBITER, b, h_where(cl, k, id),
		   recipe	  ? LOCK_CROSS
		   : k == H_CROSS ? RES_CROSS
				  : RES_LOCAL) < 0)
		_exit(2);
	c.want_queued = !etcd_queue;
	/* The etcd keys of the resource, to see the waiter queued there. */
	if (etcd_queue && (gw_open(&ctl, cl->ep[id]) < 0 ||
			   watch_open(&w, cl->ep[id], keys) < 0))
		_exit(2);
	if (holder) {
		if (c_acquire(&c) < 0)
			_exit(3);
		if (etcd_queue && (rev = etcd_revision(&ctl, keys)) < 0)
			_exit(3);
		proc_write_all(out, &x, 1);
	} else if (proc_read_all(in, &x, 1) < 0)
		_exit(4);
	for (int i = 0; i < rounds; i++) {
		if (holder) {
			if (proc_read_all(in, &x, 1) < 0)
				_exit(4);
			if (etcd_queue && watch_new_key(&w, rev) < 0)
				_exit(6);
			proc_sleep_us(hold);
			atomic_store(&shm->t0, proc_now_ns());
			if (c_release(&c) < 0)
				_exit(5);
			if (proc_read_all(in, &x, 1) < 0)
				_exit(4);
			holder = false;
		} else {
			uint64_t t1;

			proc_write_all(out, &x, 1);
			if (c_acquire(&c) < 0)
				_exit(3);
			t1 = proc_now_ns();
			if (!etcd_queue && !c.queued)
				atomic_fetch_add(&shm->not_queued, 1);
			else if (shm->nsamples < BENCH_MAX_SAMPLES)
				shm->samples[shm->nsamples++] =
				    (double)(t1 - atomic_load(&shm->t0));
			/* Keys created after this are the other's. */
			if (etcd_queue && (rev = etcd_revision(&ctl, keys)) < 0)
				_exit(3);
			proc_write_all(out, &x, 1);
			holder = true;
		}
	}
	if (holder)
		c_release(&c);
	c_close(&c);
	gw_close(&ctl);
	gw_close(&w);
	_exit(0);
}

/* Returns the rounds dropped because the waiter was not queued. */
static uint64_t
h_run(struct cluster *cl, enum hkind k, struct samples *s)
{
	struct bench *b = cl->b;
	uint64_t dropped = atomic_load(&b->shm->not_queued);
	int ab[2], ba[2];
	pid_t a, c;

	b->shm->nsamples = 0;
	if (pipe2(ab, O_CLOEXEC) < 0 || pipe2(ba, O_CLOEXEC) < 0) {
		bench_fail("pipe: %s", strerror(errno));
		return 0;
	}
	a = proc_fork();
	if (a == 0) {
		close(ab[0]);
		close(ba[1]);
		h_main(cl, k, 0, ba[0], ab[1]);
	}
	c = proc_fork();
	if (c == 0) {
		close(ab[1]);
		close(ba[0]);
		h_main(cl, k, 1, ab[0], ba[1]);
	}
	close(ab[0]);
	close(ab[1]);
	close(ba[0]);
	close(ba[1]);
	reap_ok(a, "handoff process");
	reap_ok(c, "handoff process");
	for (uint32_t i = 0; i < b->shm->nsamples; i++)
		samples_push(s, b->shm->samples[i]);
	return atomic_load(&b->shm->not_queued) - dropped;
}

/* ------------------------------------------------------------ throughput */

enum tkind { T_RECIPE, T_ARBITER, T_KINDS };

static void
t_client(struct cluster *cl, enum tkind k, int idx, int ready, int go)
{
	struct bench *b = cl->b;
	struct bench_shm *shm = b->shm;
	struct bench_res_slot *rs = &shm->res[0];
	struct bench_client_slot *cs = &shm->client[idx];
	int host = idx / b->n.cl_clients_per_host, me = idx + 1;
	uint64_t pairs = 0, changes = 0, hosts = 0;
	struct contender c;
	char x;

	if (c_open(&c, k == T_RECIPE ? C_RECIPE : C_ARBITER, b,
		   k == T_RECIPE ? cl->ep[host] : cl->sock[host],
		   k == T_RECIPE ? LOCK_TPUT : RES_TPUT) < 0)
		_exit(2);
	proc_write_all(ready, "r", 1);
	(void)!read(go, &x, 1); /* returns 0 when the parent closes it */
	while (!atomic_load_explicit(&shm->stop, memory_order_relaxed)) {
		if (c_acquire(&c) < 0)
			_exit(3);
		/* The critical section: exclusion across every host, seen as
		 * two holders at once or (more often: the section is short)
		 * as a token that did not grow, which a fenced store would
		 * refuse. */
		if (atomic_fetch_add(&rs->in_cs, 1) != 0)
			atomic_fetch_add(&rs->violations, 1);
		if (atomic_exchange(&rs->last_token, c.token) >= c.token)
			atomic_fetch_add(&rs->violations, 1);
		if (atomic_load_explicit(&rs->last_owner,
					 memory_order_relaxed) != me) {
			changes++;
			atomic_store_explicit(&rs->last_owner, me,
					      memory_order_relaxed);
		}
		if (atomic_load_explicit(&rs->last_host,
					 memory_order_relaxed) != host + 1) {
			hosts++;
			atomic_store_explicit(&rs->last_host, host + 1,
					      memory_order_relaxed);
		}
		atomic_fetch_sub(&rs->in_cs, 1);
		if (c_release(&c) < 0)
			_exit(5);
		pairs++;
		atomic_store_explicit(&cs->pairs, pairs, memory_order_relaxed);
		atomic_store_explicit(&cs->changes, changes,
				      memory_order_relaxed);
		atomic_store_explicit(&cs->host_changes, hosts,
				      memory_order_relaxed);
	}
	c_close(&c);
	_exit(0);
}

static void
t_totals(const struct bench_shm *shm, int n, uint64_t v[3])
{
	v[0] = v[1] = v[2] = 0;
	for (int i = 0; i < n; i++) {
		v[0] += atomic_load(&shm->client[i].pairs);
		v[1] += atomic_load(&shm->client[i].changes);
		v[2] += atomic_load(&shm->client[i].host_changes);
	}
}

/* One run; pushes pairs/s, owner changes/s, host changes/s. */
static void
t_run(struct cluster *cl, enum tkind k, struct samples s[3])
{
	struct bench *b = cl->b;
	struct bench_shm *shm = b->shm;
	int n = HOSTS * b->n.cl_clients_per_host, started = 0;
	pid_t pids[BENCH_MAX_CLIENTS];
	int ready[2], go[2];
	uint64_t v0[3], v1[3], t0, t1;
	long warm = (long)(b->n.cl_tput_seconds * 2e5);

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
			t_client(cl, k, i, ready[1], go[0]);
		}
	}
	close(ready[1]);
	close(go[0]);
	for (char c; started < n && proc_read_all(ready[0], &c, 1) == 0;)
		started++;
	close(ready[0]);
	close(go[1]); /* go */
	if (started < n) {
		bench_fail("(7) throughput: only %d of %d clients connected",
			   started, n);
		atomic_store(&shm->stop, 1);
	} else {
		/* Let every client queue once, then count. */
		proc_sleep_us(warm);
		t_totals(shm, n, v0);
		t0 = proc_now_ns();
		proc_sleep_us((long)(b->n.cl_tput_seconds * 1e6));
		t_totals(shm, n, v1);
		t1 = proc_now_ns();
		atomic_store(&shm->stop, 1);
		for (int j = 0; j < 3; j++)
			samples_push(&s[j], (double)(v1[j] - v0[j]) * 1e9 /
						(double)(t1 - t0));
	}
	for (int i = 0; i < n; i++)
		reap_ok(pids[i], "throughput client");
	if (atomic_load(&shm->res[0].violations) > 0)
		bench_fail(
		    "(7) %s: %llu times two clients held the resource "
		    "at once, or a grant's token did not grow",
		    k == T_RECIPE ? "etcd lock recipe" : "arbiter",
		    (unsigned long long)atomic_load(&shm->res[0].violations));
}

/* ------------------------------------------------------------ daemons */

/*
 * Cluster mode is on when the daemon's Status has a cluster part (a daemon
 * without cluster mode never sends one). The session is then waited for by
 * an acquire: a cluster resource is granted once the host's etcd session is
 * active and its key owns, so no polling is needed.
 */
static int
daemons_start(struct cluster *cl)
{
	struct bench *b = cl->b;
	char data[PATH_MAX + 32], eps[256], host[48], opt[4][300];

	for (int h = 0; h < HOSTS; h++) {
		const char *opts[5];
		const void *st = NULL;
		struct arb_lease l;
		arb_client *c;
		int i = b->daemons;

		/* Host h reaches etcd through member h first. */
		snprintf(eps, sizeof eps, "%s,%s,%s", cl->ep[h],
			 cl->ep[(h + 1) % HOSTS], cl->ep[(h + 2) % HOSTS]);
		snprintf(host, sizeof host, "host-%d", h);
		snprintf(opt[0], sizeof opt[0], "cluster.backend=etcd");
		snprintf(opt[1], sizeof opt[1], "cluster.endpoints=%s", eps);
		snprintf(opt[2], sizeof opt[2], "cluster.host_id=%s", host);
		snprintf(opt[3], sizeof opt[3], "cluster.prefix=%s",
			 ARB_PREFIX);
		for (int j = 0; j < 4; j++)
			opts[j] = opt[j];
		snprintf(cl->sock[h], sizeof cl->sock[h], "%.63s/h%d.sock",
			 b->tmp, h);
		snprintf(data, sizeof data, "%s/h%d-data", b->tmp, h);
		mkdir(data, 0700);
		cl->pid[h] = proc_start_daemon(b, cl->sock[h], data, opts, 4);
		if (cl->pid[h] < 0)
			return -1;
		if (arb_connect(&c, cl->sock[h], "bench-cluster") < 0) {
			bench_fail("(7) host-%d: %s", h, arb_connect_error());
			return -1;
		}
		if (arb_status(c, NULL, &st) < 0 ||
		    ((const Arbiter__Status *)st)->cluster == NULL) {
			arb_close(c);
			bench_progress("(7) %s has no cluster mode (its Status "
				       "has no cluster part): arbiter rows "
				       "skipped",
				       b->arbiterd);
			return 1;
		}
		if (arb_acquire(c, RES_WARM, ARB_EXCLUSIVE, 30000, NULL, &l) <
			0 ||
		    arb_release(c, l.id) < 0) {
			bench_fail("(7) host-%d: no cluster grant within 30 s: "
				   "%s (log: %s/arbiterd-%d.log)",
				   h, arb_last_error(c), b->tmp, i);
			arb_close(c);
			return -1;
		}
		arb_close(c);
	}
	snprintf(cl->single_sock, sizeof cl->single_sock, "%.63s/single.sock",
		 b->tmp);
	snprintf(data, sizeof data, "%s/single-data", b->tmp);
	mkdir(data, 0700);
	cl->single = proc_start_daemon(b, cl->single_sock, data, NULL, 0);
	return cl->single < 0 ? -1 : 0;
}

/* ------------------------------------------------------------ rows */

/* Samples over this look like etcd's 100 ms catch-up loop (a watch that
 * started at or below the current revision) or a poll: said in the row. */
#define SLOW_NS 50e6

static struct row *
lat_row(const char *key, const char *name, struct samples *s, enum place p)
{
	struct row *r;
	size_t slow = 0;

	for (size_t i = 0; i < s->n; i++)
		slow += s->v[i] > SLOW_NS;
	r = report_add(7, key, name, U_NS, s);
	report_place(r, p);
	if (slow > 0)
		report_note(r, "%zu over %.0f ms", slow, SLOW_NS / 1e6);
	samples_free(s);
	return r;
}

void
case_cluster(struct bench *b)
{
	static const char *const hnames[H_KINDS] = {
	    "etcd lock recipe: unlock on A -> lock returns on B",
	    "etcd lock recipe, waiter queued 150 ms before",
	    "arbiter cross-host: release on A -> Granted on B",
	    "arbiter local handoff, single-host mode",
	    "arbiter local handoff, cluster mode (one host)",
	};
	static const char *const hkeys[H_KINDS] = {
	    "cl.recipe.handoff", "cl.recipe.handoff_synced", "cl.arb.cross",
	    "cl.arb.single", "cl.arb.local"};
	struct samples wx = {0}, w1 = {0}, hs[H_KINDS] = {{0}},
		       ts[T_KINDS][3] = {{{0}}};
	uint64_t dropped[H_KINDS] = {0};
	struct cluster cl = {.b = b};
	char name[96];
	struct row *r;
	int rc;

	bench_progress("(7) cluster mode on a 3-member etcd");
	if (access(ETCD_BIN, X_OK) != 0) {
		const char *ci = getenv("CI");

		/* As for Redis: CI compares against every baseline, a smoke
		 * run only checks that the bench works. */
		if (!b->quick && ci != NULL && strcmp(ci, "true") == 0)
			bench_fail("(7) no %s, and CI=true needs the etcd "
				   "baseline: `sh scripts/deps.sh bench` "
				   "installs it (Debian package etcd-server)",
				   ETCD_BIN);
		else
			bench_progress("(7) no %s: cluster rows skipped (`sh "
				       "scripts/deps.sh bench` installs it)",
				       ETCD_BIN);
		return;
	}
	if (access(b->etcd_bed, R_OK) != 0) {
		bench_fail("(7) no etcd test bed at %s (run from the source "
			   "tree, or pass --etcd-bed)",
			   b->etcd_bed);
		return;
	}
	if (bed_start(&cl) < 0)
		goto out;
	rc = daemons_start(&cl);
	if (rc < 0)
		goto out;
	cl.arbiter = rc == 0;
	if (!cl.arbiter && !b->quick)
		bench_fail("(7) the arbiter rows need an arbiterd with cluster "
			   "mode");
	for (int run = 0; run < b->n.runs; run++) {
		bench_progress("(7) run %d of %d: latencies", run + 1,
			       b->n.runs);
		/* Handoffs go both ways (A -> B, then B -> A): so do these. */
		for (int d = 0; d < 2; d++) {
			watch_run(&cl, d, 1 - d, b->n.cl_watch_rounds / 2, &wx);
			watch_run(&cl, d, d, b->n.cl_watch_rounds / 2, &w1);
		}
		for (int k = 0; k < H_KINDS; k++) {
			if (k == H_RECIPE_SYNCED && b->quick)
				continue;
			if (k >= H_CROSS && !cl.arbiter)
				continue;
			dropped[k] += h_run(&cl, (enum hkind)k, &hs[k]);
		}
	}
	for (int run = 0; run < b->n.cl_tput_runs; run++) {
		bench_progress("(7) run %d of %d: throughput", run + 1,
			       b->n.cl_tput_runs);
		t_run(&cl, T_RECIPE, ts[T_RECIPE]);
		if (cl.arbiter)
			t_run(&cl, T_ARBITER, ts[T_ARBITER]);
	}

	r = lat_row("cl.watch",
		    "etcd watch event: put -> watch, across members", &wx,
		    PLACE_SAME);
	if (r != NULL && cl.leader >= 0)
		report_note(r, "leader: member %d", cl.leader);
	r = lat_row("cl.watch.one",
		    "etcd watch event: put -> watch, on one member", &w1,
		    PLACE_SAME);
	report_ratio(r, "cl.watch", "cross-member");
	for (int k = 0; k < H_KINDS; k++) {
		r = lat_row(hkeys[k], hnames[k], &hs[k], PLACE_SPLIT);
		if (k == H_RECIPE)
			report_note(r, "etcd's /v3/lock, as etcdctl lock");
		if (k != H_SINGLE)
			report_ratio(
			    r, k == H_LOCAL ? "cl.arb.single" : "cl.watch",
			    k == H_LOCAL ? "single-host" : "watch event");
		if (k == H_CROSS)
			report_ratio(r, "cl.recipe.handoff", "etcd recipe");
		if (dropped[k] > 0)
			report_note(r, "%llu rounds dropped: waiter not queued",
				    (unsigned long long)dropped[k]);
	}
	for (int k = 0; k < T_KINDS; k++) {
		static const char *const who[T_KINDS] = {"etcd lock recipe",
							 "arbiter"};
		static const char *const tk[T_KINDS] = {"cl.recipe.tput",
							"cl.arb.tput"};
		static const char *const what[3] = {"pairs", "changes",
						    "hosts"};
		static const char *const wname[3] = {"acquire+release pairs/s",
						     "owner changes/s",
						     "host changes/s"};
		char key[48];

		for (int j = 0; j < 3; j++) {
			snprintf(key, sizeof key, "%s.%s", tk[k], what[j]);
			snprintf(name, sizeof name, "%s, 3 hosts x %d: %s",
				 who[k], b->n.cl_clients_per_host, wname[j]);
			r = report_add(7, key, name, U_RATE, &ts[k][j]);
			if (k == T_ARBITER && j == 2)
				report_note(r, "hosts take turns: "
					       "yield_after_ms 100");
			if (k == T_ARBITER && j < 2) {
				snprintf(key, sizeof key, "cl.recipe.tput.%s",
					 what[j]);
				report_ratio(r, key, "etcd recipe");
			}
			samples_free(&ts[k][j]);
		}
	}
out:
	for (int h = 0; h < HOSTS; h++)
		proc_stop(cl.pid[h]);
	proc_stop(cl.single);
	bed_stop(&cl);
}
