/*
 * chaos_worker: one client of the mutual-exclusion checker (see README.md).
 *
 *   chaos_worker SOCKET DATADIR LOGFILE SEED [RESOURCES]
 *
 * Loops until SIGTERM: pick a resource chaos-0..chaos-(RESOURCES-1) and a
 * mode (mostly exclusive), acquire it with libarbiter (sometimes with a short
 * timeout so timeouts happen), run a critical section against the
 * resource's "storage" in DATADIR, log the section, release.
 *
 * Storage (per resource, shared by every worker):
 *   rN.counter  append-only journal of 64-byte records "value token pid";
 *               the counter's value is the last record (0 when empty)
 *   rN.fence    two fencing tokens: the highest a writer (or a claiming
 *               read) has used, and the highest any access has used
 * A storage operation takes flock(rN.counter) for its own few syscalls only,
 * like a database latching a row; it never covers the critical section.
 * Exclusive: read (claims the storage: refused if any access had a higher
 * token, raises both fences), pause, write value+1 (refused likewise).
 * Shared: read (refused if a writer had a higher token; raises only the
 * second fence, so readers never refuse each other). A reader's token thus
 * fences off a stale writer that comes after it: a converter that read
 * under a shared lease and writes after its upgrade is protected from an
 * outlived writer of an earlier daemon slipping in between, as it would be
 * in a store that records every token it sees. A refusal is a "fenced"
 * section.
 *
 * Log lines (one write(2) each, so a SIGKILL never leaves half a line):
 *   C dpid t_ns                      connected to the daemon with that pid
 *   S res token E|S t0 t1 outcome dpid value revoked vu tr tw
 *                                    a section: t0 after the grant, t1 before
 *                                    the release (CLOCK_MONOTONIC ns);
 *                                    outcome inc|read|fenced; revoked: the
 *                                    Revoked event's reason (0: none); vu:
 *                                    the lease's deadline (Granted or the
 *                                    last Extended seen) on CLOCK_MONOTONIC,
 *                                    0 for a local lease; tr, tw: when the
 *                                    storage took the read and the write
 *                                    (under its flock; 0: none)
 *   T res E|S timeout_ms errname     an acquire that timed out / would block
 *   L res errname                    the connection was lost (daemon killed)
 *   E res code message               an unexpected error (a violation)
 *   X kind lease resource            an unexpected event (a violation)
 *   U res result                     an upgrade: upgraded, deadlock,
 *                                    timeout or wouldblock
 *   P res token t_ns                 a long section (SIGUSR2) starts its pause
 *   R res reason                     the lease was revoked after its section
 *                                    was logged, before the release
 *   Q sections                       clean exit after SIGTERM
 *
 * Converters (CHAOS_CONVERTER=1 in the environment; the driver makes every
 * fourth worker one) do read-modify-write by upgrading in most of their
 * sections: acquire shared, read the counter (a shared section), upgrade to
 * exclusive and write the value read + 1 under the upgraded token (an
 * exclusive section). The lease is never let go in between, so no other
 * writer can come between the read and the write: a lost update would show
 * in the journal as a doubled value. Two converters upgrading one resource
 * at once meet the DEADLOCK refusal, and the refused one releases. Some
 * downgrade after the write and read again: the value must be theirs.
 *
 * About 2 sections in 1000 are slow (20-150 ms between read and write), so
 * that some are still running when the driver kill -9s the daemon and a new
 * incarnation grants the resource to someone else: that is what the fence
 * is for, and the checker counts such sections. SIGUSR1 makes the next
 * exclusive section slow (100-200 ms): the driver sends it just before it
 * kill -9s the daemon, so every restart races old holders against new ones.
 * SIGUSR2 makes an exclusive section that starts within 500 ms of it long
 * (CHAOS_LONG_MS, 0-20 % more): the multi-host driver sends it to one host's
 * workers just before it pauses, partitions or kills that host's arbiterd,
 * so holders run past their lease's deadline and another host's holder
 * meets them in the storage. The worker never checks the deadline itself:
 * it is the client that relies on fencing alone.
 *
 * CHAOS_BREAK in the environment breaks the worker on purpose, to prove the
 * checker catches it (chaos.py --self-test):
 *   nolock   each worker locks its own private resource name, so there is
 *            no mutual exclusion at all
 *   nofence  the storage ignores tokens (no fencing)
 *   nolock,nofence  both
 *   noconvert  converters "upgrade" by releasing and acquiring exclusive
 *            anew, so another writer can come between read and write
 *
 * Exit codes: 0 after SIGTERM, 2 bad usage, 3 storage unusable.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"

#define MAX_RES 16
#define REC	64 /* journal record size */
#define FENCE	64 /* fence record size */

static volatile sig_atomic_t stopping, slow_next;
/* SIGUSR2's instant (CLOCK_MONOTONIC ns; an aligned 64-bit store) and the
 * length of the long sections it asks for. */
static volatile uint64_t long_sig_ns;
static uint64_t long_ns;
static int logfd = -1;
static uint64_t rng_state;
static bool break_nolock, break_nofence, break_noconvert, converter;

struct store {
	int cfd; /* rN.counter */
	int ffd; /* rN.fence */
};

static uint64_t now_ns(void);

static void
on_signal(int sig)
{
	if (sig == SIGUSR1)
		slow_next = 1;
	else if (sig == SIGUSR2)
		long_sig_ns = now_ns(); /* clock_gettime: async-signal-safe */
	else
		stopping = 1;
}

static int
lock_store(int fd, int op)
{
	while (flock(fd, op) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t
rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static unsigned
rnd_below(unsigned n)
{
	return (unsigned)(rnd() % n);
}

static void
pause_us(unsigned us)
{
	/* tv_nsec must stay below a second (the long sections are longer). */
	struct timespec ts = {(time_t)(us / 1000000),
			      (long)(us % 1000000) * 1000};

	if (us == 0)
		return;
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !stopping)
		;
}

static void logline(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
logline(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	/* O_APPEND, one write: a line is whole or absent. */
	while (write(logfd, buf, (size_t)n) < 0 && errno == EINTR)
		;
}

/* Make a log-safe copy of a message: no newlines. */
static const char *
oneline(const char *s, char *buf, size_t len)
{
	size_t i;

	for (i = 0; s[i] != '\0' && i + 1 < len; i++)
		buf[i] = (s[i] == '\n' || s[i] == '\r') ? ' ' : s[i];
	buf[i] = '\0';
	return buf;
}

/* ------------------------------------------------------------ storage */

/* The two fences: w, the highest token that wrote or claimed; a, the
 * highest token of any access. */
static int
fence_get(struct store *s, uint64_t *w, uint64_t *a)
{
	char buf[FENCE + 1], *end;
	ssize_t n = pread(s->ffd, buf, FENCE, 0);

	if (n < 0)
		return -errno;
	if (n == 0) {
		*w = *a = 0;
		return 0;
	}
	if (n != FENCE)
		return -EIO;
	buf[n] = '\0';
	*w = strtoull(buf, &end, 10);
	*a = strtoull(end, NULL, 10);
	return 0;
}

static int
fence_set(struct store *s, uint64_t w, uint64_t a)
{
	char buf[FENCE + 1];

	snprintf(buf, sizeof buf, "%020" PRIu64 " %020" PRIu64 "%*s\n", w, a,
		 FENCE - 42, "");
	if (pwrite(s->ffd, buf, FENCE, 0) != FENCE)
		return -EIO;
	return 0;
}

static int
last_value(struct store *s, uint64_t *v)
{
	struct stat st;
	char buf[REC + 1];

	if (fstat(s->cfd, &st) < 0)
		return -errno;
	if (st.st_size == 0) {
		*v = 0;
		return 0;
	}
	if (st.st_size % REC != 0)
		return -EIO;
	if (pread(s->cfd, buf, REC, st.st_size - REC) != REC)
		return -EIO;
	buf[REC] = '\0';
	*v = strtoull(buf, NULL, 10);
	return 0;
}

enum { ST_OK = 0, ST_FENCED = 1 };

/* With the store locked: ST_FENCED when a higher token has used it (for
 * a shared read: a higher writer's token); else record token (claim: as
 * a writer's). */
static int
fence_pass(struct store *s, uint64_t token, bool claim)
{
	uint64_t w = 0, a = 0;
	int rc = fence_get(s, &w, &a);

	if (break_nofence)
		w = a = 0;
	if (rc == 0 && token < (claim ? a : w))
		return ST_FENCED;
	if (rc == 0 && (token > a || (claim && token > w)))
		rc = fence_set(s, claim && token > w ? token : w,
			       token > a ? token : a);
	return rc;
}

/* Read the counter under token. claim: raise the fence to token. *at: when
 * the storage decided (under its lock, so all accesses are ordered). */
static int
store_read(struct store *s, uint64_t token, bool claim, uint64_t *value,
	   uint64_t *at)
{
	int rc;

	if ((rc = lock_store(s->cfd, LOCK_EX)) < 0)
		return rc;
	*at = now_ns();
	rc = fence_pass(s, token, claim);
	if (rc == 0)
		rc = last_value(s, value);
	lock_store(s->cfd, LOCK_UN);
	return rc;
}

/* Append value under token, unless a higher token has used the storage.
 * *at: as for store_read. */
static int
store_write(struct store *s, uint64_t token, uint64_t value, uint64_t *at)
{
	char buf[REC + 1];
	int rc;

	if ((rc = lock_store(s->cfd, LOCK_EX)) < 0)
		return rc;
	*at = now_ns();
	rc = fence_pass(s, token, true);
	if (rc == 0) {
		snprintf(buf, sizeof buf,
			 "%020" PRIu64 " %020" PRIu64 " %010ld", value, token,
			 (long)getpid());
		memset(buf + strlen(buf), ' ', REC - strlen(buf));
		buf[REC - 1] = '\n';
		if (write(s->cfd, buf, REC) != REC)
			rc = -EIO;
	}
	lock_store(s->cfd, LOCK_UN);
	return rc;
}

static int
store_open(struct store *s, const char *dir, unsigned i)
{
	char p[4096];

	snprintf(p, sizeof p, "%s/r%u.counter", dir, i);
	s->cfd = open(p, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	snprintf(p, sizeof p, "%s/r%u.fence", dir, i);
	s->ffd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	return s->cfd < 0 || s->ffd < 0 ? -1 : 0;
}

/* ------------------------------------------------------------ client */

static int
daemon_pid(arb_client *c)
{
	struct ucred uc;
	socklen_t len = sizeof uc;

	if (getsockopt(arb_fd(c), SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0)
		return -1;
	return (int)uc.pid;
}

/* Connect, retrying with backoff while the daemon is down. */
static arb_client *
reconnect(const char *sock, int *dpid)
{
	unsigned backoff = 1000;

	while (!stopping) {
		arb_client *c;

		if (arb_connect(&c, sock, "chaos-worker") == 0) {
			*dpid = daemon_pid(c);
			logline("C %d %" PRIu64, *dpid, now_ns());
			return c;
		}
		pause_us(backoff);
		if (backoff < 50000)
			backoff *= 2;
	}
	return NULL;
}

static bool
is_conn_lost(int rc)
{
	/* -errno from the socket, or the library's own "connection lost". */
	return rc == -ARB_ECONNLOST || (rc < 0 && rc > -1000);
}

/* CLOCK_BOOTTIME ns (a lease's deadline) on CLOCK_MONOTONIC, the clock of
 * the sections: both run together on one machine that does not suspend. */
static uint64_t
boot_to_mono(uint64_t boot_ns)
{
	struct timespec b, m;
	int64_t off;

	if (boot_ns == 0)
		return 0;
	clock_gettime(CLOCK_BOOTTIME, &b);
	clock_gettime(CLOCK_MONOTONIC, &m);
	off = ((int64_t)b.tv_sec - (int64_t)m.tv_sec) * 1000000000 +
	      ((int64_t)b.tv_nsec - (int64_t)m.tv_nsec);
	return (uint64_t)((int64_t)boot_ns - off);
}

/* A lease's deadline on CLOCK_MONOTONIC, as this client knows it now (0: a
 * local lease, or one it no longer holds). */
static uint64_t
lease_deadline(arb_client *c, uint64_t lease_id)
{
	return boot_to_mono(arb_lease_valid_until(c, lease_id));
}

/* Drain events: the reason lease_id was revoked (0: it was not; 100 for
 * a revoke without reason); *vu follows its Extended events (the deadline
 * the client knew last before a revoke forgot it); *lost on a broken link.
 * Each frame updates the client's deadlines when it is taken, in order. */
static int
drain_events(arb_client *c, uint64_t lease_id, bool *lost, uint64_t *vu)
{
	struct arb_event ev;
	int revoked = 0, rc;

	for (;;) {
		uint64_t v = lease_deadline(c, lease_id);

		if (v != 0)
			*vu = v;
		if ((rc = arb_next_event(c, &ev)) <= 0)
			break;
		if (ev.kind == ARB_EV_REVOKED && ev.lease.id == lease_id)
			revoked = ev.reason > 0 ? ev.reason : 100;
		else if (ev.kind != ARB_EV_EXTENDED)
			logline("X %d %" PRIu64 " %s", (int)ev.kind,
				ev.lease.id, ev.resource);
	}
	if (rc < 0)
		*lost = true;
	return revoked;
}

/* The pause of an exclusive section between its read and its write: a
 * long one (logged, so the driver knows one runs) within 500 ms of SIGUSR2,
 * a slow one after SIGUSR1. */
static unsigned
section_pause_us(unsigned pause, unsigned r, uint64_t token)
{
	uint64_t sig = long_sig_ns;

	if (sig != 0 && long_ns != 0 && now_ns() - sig < 500000000ull) {
		long_sig_ns = 0;
		logline("P %u %" PRIu64 " %" PRIu64, r, token, now_ns());
		return (unsigned)((long_ns + long_ns * rnd_below(21) / 100) /
				  1000);
	}
	if (slow_next) {
		slow_next = 0;
		return 100000 + rnd_below(100000);
	}
	return pause;
}

/*
 * The second half of a read-modify-write: the shared section read value
 * under lease; upgrade and write value + 1 under the new token. Logs the
 * exclusive section. Returns how many sections it logged; sets *lost when
 * the connection broke, *gone when the lease is no longer held. *vu: the
 * lease's deadline on CLOCK_MONOTONIC (0: none), moved by Extended events.
 */
static int
rmw_upgrade(arb_client *c, struct store *s, unsigned r,
	    const struct arb_lease *lease, uint64_t value, int dpid, bool *lost,
	    bool *gone, uint64_t *vu)
{
	uint64_t token = 0, t0, t1, again = 0, tk = 0, id = lease->id;
	uint64_t tw = 0, tr = 0;
	struct arb_lease held;
	int timeout =
	    rnd_below(100) < 20 ? (int)rnd_below(20) : ARB_WAIT_FOREVER;
	const char *outcome;
	int revoked;
	char msg[600];
	int rc;

	if (break_noconvert) {
		/* Let go between the read and the write: a lost update. */
		char res[32];

		snprintf(res, sizeof res, "chaos-%u", r);
		*gone = true;
		rc = arb_release(c, lease->id);
		if (rc == 0)
			rc = arb_acquire(c, res, ARB_EXCLUSIVE,
					 ARB_WAIT_FOREVER, NULL, &held);
		if (rc == 0) {
			id = held.id;
			token = held.token;
			*vu = lease_deadline(c, held.id);
		}
	} else
		rc = arb_convert(c, lease->id, ARB_EXCLUSIVE, timeout, &token);
	if (rc == -ARB_EDEADLOCK || rc == -ARB_ETIMEOUT ||
	    rc == -ARB_EWOULDBLOCK) {
		logline("U %u %s", r,
			rc == -ARB_EDEADLOCK  ? "deadlock"
			: rc == -ARB_ETIMEOUT ? "timeout"
					      : "wouldblock");
		return 0; /* still held shared: released by the caller */
	}
	if (is_conn_lost(rc)) {
		*lost = true;
		return 0;
	}
	if (rc == -ARB_ECANCELLED) {
		*gone = true; /* the lease ended while it waited */
		return 0;
	}
	if ((rc == -ARB_EUNKNOWNLEASE || rc == -ARB_EREVOKED) &&
	    (revoked = drain_events(c, id, lost, vu)) != 0) {
		/* Revoked after the shared section, before the Convert
		 * reached the daemon: as for a release. */
		logline("R %u %d", r, revoked);
		*gone = true;
		return 0;
	}
	if (rc < 0) {
		logline("E %u %d convert: %s", r, rc,
			oneline(arb_last_error(c), msg, sizeof msg));
		return 0;
	}
	logline("U %u upgraded", r);
	if (token <= lease->token)
		logline("E %u 0 upgrade token %" PRIu64 " not above %" PRIu64,
			r, token, lease->token);
	t0 = now_ns();
	if (!break_noconvert && lease_deadline(c, id) != 0)
		*vu = lease_deadline(c, id); /* Converted carried it */
	pause_us(section_pause_us(0, r, token));
	value++;
	rc = store_write(s, token, value, &tw);
	outcome = rc == ST_OK ? "inc" : "fenced";
	t1 = now_ns();
	if (rc < 0) {
		logline("E %u %d storage: %s", r, rc, strerror(-rc));
		exit(3);
	}
	revoked = drain_events(c, id, lost, vu);
	logline("S %u %" PRIu64 " E %" PRIu64 " %" PRIu64 " %s %d %" PRIu64
		" %d %" PRIu64 " %" PRIu64 " %" PRIu64,
		r, token, t0, t1, outcome, dpid, value, revoked, *vu, tw, tw);
	if (revoked)
		*gone = true;
	if (break_noconvert) {
		if (!revoked && !*lost && is_conn_lost(arb_release(c, id)))
			*lost = true;
		return 1;
	}
	if (rc != ST_OK || revoked || *lost || rnd_below(100) >= 30)
		return 1;
	/* Downgrade: the token stays, and no writer can come in. */
	rc = arb_convert(c, lease->id, ARB_SHARED, 0, &tk);
	if (is_conn_lost(rc)) {
		*lost = true;
		return 1;
	}
	if (rc < 0 || tk != token) {
		logline("E %u %d downgrade: token %" PRIu64 " (was %" PRIu64
			"): %s",
			r, rc, tk, token,
			oneline(arb_last_error(c), msg, sizeof msg));
		return 1;
	}
	rc = store_read(s, token, false, &again, &tr);
	if (rc == ST_OK && again != value)
		logline("E %u 0 downgraded: read %" PRIu64
			" after writing %" PRIu64 " under token %" PRIu64,
			r, again, value, token);
	return 1;
}

int
main(int argc, char **argv)
{
	struct store st[MAX_RES];
	struct sigaction sa;
	const char *sock, *dir;
	unsigned nres = 3;
	uint64_t sections = 0;
	arb_client *c = NULL;
	int dpid = -1;
	char msg[600];

	if (argc < 5 || argc > 6) {
		fprintf(stderr,
			"usage: chaos_worker SOCKET DATADIR LOGFILE SEED "
			"[RESOURCES]\n");
		return 2;
	}
	sock = argv[1];
	dir = argv[2];
	rng_state =
	    strtoull(argv[4], NULL, 0) ^ ((uint64_t)getpid() << 32) ^ now_ns();
	if (rng_state == 0)
		rng_state = 88172645463325252ull;
	if (getenv("CHAOS_BREAK") != NULL) {
		break_nolock = strstr(getenv("CHAOS_BREAK"), "nolock") != NULL;
		break_nofence =
		    strstr(getenv("CHAOS_BREAK"), "nofence") != NULL;
		break_noconvert =
		    strstr(getenv("CHAOS_BREAK"), "noconvert") != NULL;
	}
	converter = getenv("CHAOS_CONVERTER") != NULL &&
		    strcmp(getenv("CHAOS_CONVERTER"), "1") == 0;
	if (getenv("CHAOS_LONG_MS") != NULL)
		long_ns =
		    strtoull(getenv("CHAOS_LONG_MS"), NULL, 10) * 1000000ull;
	if (argc == 6)
		nres = (unsigned)atoi(argv[5]);
	if (nres < 1 || nres > MAX_RES) {
		fprintf(stderr, "chaos_worker: RESOURCES must be 1..%d\n",
			MAX_RES);
		return 2;
	}
	/* The driver may die; never outlive it. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* Small pauses should be small. */
	prctl(PR_SET_TIMERSLACK, 1000UL);
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);

	logfd = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0) {
		fprintf(stderr, "chaos_worker: %s: %s\n", argv[3],
			strerror(errno));
		return 3;
	}
	for (unsigned i = 0; i < nres; i++) {
		if (store_open(&st[i], dir, i) < 0) {
			fprintf(stderr, "chaos_worker: storage in %s: %s\n",
				dir, strerror(errno));
			return 3;
		}
	}

	while (!stopping) {
		char res[32];
		unsigned r = rnd_below(nres);
		bool rmw = converter && rnd_below(100) < 70;
		enum arb_mode mode =
		    rmw || rnd_below(100) < 25 ? ARB_SHARED : ARB_EXCLUSIVE;
		char mc = mode == ARB_SHARED ? 'S' : 'E';
		bool gone = false;
		int64_t timeout = ARB_WAIT_FOREVER;
		struct arb_lease lease;
		uint64_t t0, t1, value = 0, vu, tr = 0, tw = 0;
		unsigned pause = rnd_below(1000) < 2 ? 20000 + rnd_below(130000)
						     : rnd_below(200);
		const char *outcome;
		bool lost = false;
		int rc, revoked;

		if (c == NULL) {
			c = reconnect(sock, &dpid);
			/* SIGUSR2 asked for a holder of the daemon that was
			 * then up: not of its successor. */
			long_sig_ns = 0;
			if (c == NULL)
				break;
		}
		if (break_nolock)
			snprintf(res, sizeof res, "chaos-%u-%ld", r,
				 (long)getpid());
		else
			snprintf(res, sizeof res, "chaos-%u", r);
		if (rnd_below(100) < 15)
			timeout = (int64_t)rnd_below(4); /* 0 = try once */
		rc = arb_acquire(c, res, mode, timeout, NULL, &lease);
		if (rc == -ARB_ETIMEOUT || rc == -ARB_EWOULDBLOCK) {
			logline("T %u %c %" PRId64 " %s", r, mc, timeout,
				rc == -ARB_ETIMEOUT ? "timeout" : "wouldblock");
			continue;
		}
		if (is_conn_lost(rc)) {
			logline("L %u %s", r, arb_strerror(rc));
			arb_close(c);
			c = NULL;
			continue;
		}
		if (rc < 0) {
			logline("E %u %d %s", r, rc,
				oneline(arb_last_error(c), msg, sizeof msg));
			arb_close(c);
			c = NULL;
			pause_us(10000);
			continue;
		}

		/* ---- the critical section ---- */
		t0 = now_ns();
		vu = lease_deadline(c, lease.id);
		if (mode == ARB_EXCLUSIVE) {
			rc = store_read(&st[r], lease.token, true, &value, &tr);
			if (rc == ST_OK) {
				pause_us(
				    section_pause_us(pause, r, lease.token));
				value++;
				rc = store_write(&st[r], lease.token, value,
						 &tw);
			}
			outcome = rc == ST_OK ? "inc" : "fenced";
		} else {
			rc =
			    store_read(&st[r], lease.token, false, &value, &tr);
			if (rc == ST_OK)
				pause_us(pause / 2);
			outcome = rc == ST_OK ? "read" : "fenced";
		}
		rmw = rmw && rc == ST_OK;
		t1 = now_ns();
		/* ---- end of the critical section ---- */
		if (rc < 0) {
			fprintf(stderr, "chaos_worker: storage of %s: %s\n",
				res, strerror(-rc));
			logline("E %u %d storage: %s", r, rc, strerror(-rc));
			return 3;
		}

		/* Did the daemon take the lease back while we held it? */
		revoked = drain_events(c, lease.id, &lost, &vu);
		logline("S %u %" PRIu64 " %c %" PRIu64 " %" PRIu64
			" %s %d %" PRIu64 " %d %" PRIu64 " %" PRIu64
			" %" PRIu64,
			r, lease.token, mc, t0, t1, outcome, dpid, value,
			revoked, vu, tr, tw);
		sections++;
		if (rmw && !lost && !revoked)
			sections +=
			    (uint64_t)rmw_upgrade(c, &st[r], r, &lease, value,
						  dpid, &lost, &gone, &vu);
		if (!lost && !revoked && !gone) {
			rc = arb_release(c, lease.id);
			if (is_conn_lost(rc)) {
				lost = true;
			} else if ((rc == -ARB_EUNKNOWNLEASE ||
				    rc == -ARB_EREVOKED) &&
				   (revoked = drain_events(c, lease.id, &lost,
							   &vu)) != 0) {
				/* Revoked after the section, before the
				 * release reached the daemon. */
				logline("R %u %d", r, revoked);
			} else if (rc < 0) {
				logline("E %u %d release: %s", r, rc,
					oneline(arb_last_error(c), msg,
						sizeof msg));
			}
		}
		if (lost) {
			logline("L %u %s", r, "release");
			arb_close(c);
			c = NULL;
		}
		if (rnd_below(100) < 10)
			pause_us(rnd_below(500));
	}
	arb_close(c);
	logline("Q %" PRIu64, sections);
	return 0;
}
