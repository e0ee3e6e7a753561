/*
 * Unit tests for libarbiter (client/client.c) against fake servers: a
 * forked child listens on a socket in a private folder and plays a script
 * (answer the handshake, then stay silent, answer late, die, ...), telling
 * the test what it received through a pipe. Servers and clients that must
 * run as another uid are forked children that call setuid(), so those
 * cases need root and are skipped otherwise.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"
#include "child_exit.h"
#include "codec.h"
#include "frame.h"

#define NOBODY 65534

static char dir[64];

static void
rm_rf(const char *path)
{
	pid_t pid = fork();

	if (pid == 0) {
		execlp("rm", "rm", "-rf", path, (char *)NULL);
		_exit(127);
	}
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

static void
setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/arbiter-client-test-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	/* Reachable by the other uids some tests switch to. */
	chmod(dir, 0755);
	unsetenv("ARBITER_SOCKET");
	unsetenv("ARBITER_TRUST_UID");
}

/* A default folder a test made, removed even when an assertion fails. */
static char made_folder[64];

static void
teardown(void)
{
	rm_rf(dir);
	if (made_folder[0] != '\0')
		rm_rf(made_folder);
}

TestSuite(client, .init = setup, .fini = teardown, .timeout = 20);

static uint64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ the fake */

/* What the fake tells the test about each request it read. */
struct seen {
	int kind; /* Arbiter__Request__KindCase; 0: the client closed */
	uint64_t id;
	uint64_t key; /* Release: lease_id or request_id; Convert: lease_id */
	int by_request;
	int mode; /* Convert: the mode asked for */
};

struct fake {
	pid_t pid;
	int seen; /* read end: struct seen records */
	char path[108];
};

static int
read_full(int fd, void *buf, size_t n)
{
	size_t off = 0;

	while (off < n) {
		ssize_t r = read(fd, (char *)buf + off, n - off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		off += (size_t)r;
	}
	return 0;
}

/* One request from the client, decoded into a; NULL at EOF. */
static Arbiter__Request *
fake_read(int fd, struct codec_arena *a)
{
	uint8_t hdr[FRAME_HEADER], *buf;
	uint32_t n;
	Arbiter__Request *req;

	if (read_full(fd, hdr, sizeof hdr) < 0)
		return NULL;
	n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
	    (uint32_t)hdr[2] << 8 | hdr[3];
	if (n == 0 || n > 65536)
		return NULL;
	buf = malloc(n);
	if (buf == NULL || read_full(fd, buf, n) < 0) {
		free(buf);
		return NULL;
	}
	codec_arena_reset(a);
	req = codec_unpack_request(a, buf, n);
	free(buf);
	return req;
}

static void
fake_send(int fd, Arbiter__ServerMessage *m)
{
	uint8_t buf[4096];
	size_t n = codec_pack_frame(&m->base, buf);

	if (write(fd, buf, n) != (ssize_t)n)
		child_exit(3);
}

static void
tell(int out, const Arbiter__Request *req)
{
	struct seen s = {0};

	if (req != NULL) {
		s.kind = (int)req->kind_case;
		s.id = req->id;
		if (req->kind_case == ARBITER__REQUEST__KIND_RELEASE) {
			s.by_request = req->release->has_request_id;
			s.key = s.by_request ? req->release->request_id
					     : req->release->lease_id;
		}
		if (req->kind_case == ARBITER__REQUEST__KIND_CONVERT) {
			s.key = req->convert->lease_id;
			s.mode = (int)req->convert->mode;
		}
	}
	if (write(out, &s, sizeof s) != (ssize_t)sizeof s)
		child_exit(3);
}

static void
send_welcome(int fd, uint64_t id)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Welcome w = ARBITER__WELCOME__INIT;

	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_WELCOME;
	m.welcome = &w;
	w.server_version = "fake";
	w.protocol_version = ARB_PROTOCOL_VERSION;
	fake_send(fd, &m);
}

static void
send_granted(int fd, uint64_t id, uint64_t lease_id)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Granted g = ARBITER__GRANTED__INIT;

	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_GRANTED;
	m.granted = &g;
	g.lease_id = lease_id;
	g.token = 42;
	g.resource = "db";
	fake_send(fd, &m);
}

/* 0, or -1 once the client is gone. */
static int
send_queued(int fd, uint64_t id)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Queued q = ARBITER__QUEUED__INIT;
	uint8_t buf[256];
	size_t n;
	struct timespec ts = {0, 1000000};

	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_QUEUED;
	m.queued = &q;
	q.lease_id = id;
	q.resource = "db";
	q.has_position = true;
	q.position = 1;
	n = codec_pack_frame(&m.base, buf);
	nanosleep(&ts, NULL);
	return send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n ? 0 : -1;
}

static void
send_pong(int fd, uint64_t id)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Pong p = ARBITER__PONG__INIT;

	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_PONG;
	m.pong = &p;
	p.role = "active";
	fake_send(fd, &m);
}

static void
send_converted(int fd, uint64_t id, uint64_t lease_id, uint64_t token,
	       Arbiter__Mode mode)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Converted cv = ARBITER__CONVERTED__INIT;

	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_CONVERTED;
	m.converted = &cv;
	cv.lease_id = lease_id;
	cv.token = token;
	cv.has_mode = true;
	cv.mode = mode;
	cv.resource = "db";
	fake_send(fd, &m);
}

static void
send_error(int fd, uint64_t id, Arbiter__ErrorCode code, const char *text)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Error e = ARBITER__ERROR__INIT;

	m.has_id = true;
	m.id = id;
	m.kind_case = ARBITER__SERVER_MESSAGE__KIND_ERROR;
	m.error = &e;
	e.code = code;
	e.message = (char *)text;
	fake_send(fd, &m);
}

/*
 * CONVERT: lease 1 converts (token 43 for an upgrade), lease 2 is refused
 * as DEADLOCK, lease 3 as a daemon that predates Convert would refuse it.
 */
static void
answer_convert(int fd, const Arbiter__Request *req)
{
	const Arbiter__Convert *cv = req->convert;

	if (cv->lease_id == 1)
		send_converted(fd, req->id, 1,
			       cv->mode == ARBITER__MODE__EXCLUSIVE ? 43 : 42,
			       cv->mode);
	else if (cv->lease_id == 2)
		send_error(fd, req->id, ARBITER__ERROR_CODE__DEADLOCK,
			   "upgrading lease 2 on 'db' would deadlock: lease 9 "
			   "of pid 123 (other) already waits to upgrade");
	else
		send_error(fd, req->id, ARBITER__ERROR_CODE__BAD_REQUEST,
			   "request 2 has no known kind (field 19); this "
			   "arbiter speaks protocol version 1");
}

/* How the fake behaves once a client has connected. */
enum script {
	ANSWER_HELLO_ONLY, /* Welcome, then read and never answer */
	SILENT,		   /* never answer anything, Hello included */
	LATE_GRANT,	   /* grant an acquire only after it was withdrawn */
	DIE_AT_ACQUIRE,	   /* exit when the acquire comes, as a crash would */
	SERVE,		   /* answer Hello and Ping */
	TRICKLE,	   /* answer Ping one byte every 50 ms, forever */
	FLOOD_QUEUED,	   /* answer an acquire with Queued, forever */
	CONVERT,	   /* answer Convert by lease id (answer_convert) */
	LATE_CONVERT,	   /* answer an upgrade only after its withdrawal */
	CLUSTER,	   /* cluster mode (play_cluster) */
};

static uint64_t
boottime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Deadlines the CLUSTER fake gives: the grant's, and an Extended's. */
#define CLUSTER_GRANT_MS  300
#define CLUSTER_EXTEND_MS 10000

/*
 * CLUSTER: Welcome says cluster; an acquire of "db" is Queued (2 hosts
 * ahead) and granted as lease 5, valid for CLUSTER_GRANT_MS; of anything
 * else refused as UNAVAILABLE. A Ping is answered after an Extended of
 * lease 5 (valid for CLUSTER_EXTEND_MS); a Release with Released.
 */
static void
play_cluster(int fd, const Arbiter__Request *req)
{
	Arbiter__ServerMessage m = ARBITER__SERVER_MESSAGE__INIT;
	Arbiter__Welcome w = ARBITER__WELCOME__INIT;
	Arbiter__Queued q = ARBITER__QUEUED__INIT;
	Arbiter__Granted g = ARBITER__GRANTED__INIT;
	Arbiter__Extended x = ARBITER__EXTENDED__INIT;
	Arbiter__Released r = ARBITER__RELEASED__INIT;

	m.has_id = true;
	m.id = req->id;
	switch (req->kind_case) {
	case ARBITER__REQUEST__KIND_HELLO:
		m.kind_case = ARBITER__SERVER_MESSAGE__KIND_WELCOME;
		m.welcome = &w;
		w.protocol_version = ARB_PROTOCOL_VERSION;
		w.has_cluster = w.cluster = true;
		break;
	case ARBITER__REQUEST__KIND_ACQUIRE:
		if (req->acquire->resource.len != 2 ||
		    memcmp(req->acquire->resource.data, "db", 2) != 0) {
			send_error(fd, req->id,
				   ARBITER__ERROR_CODE__UNAVAILABLE,
				   "etcd at http://127.0.0.1:1 cannot be "
				   "reached");
			return;
		}
		m.kind_case = ARBITER__SERVER_MESSAGE__KIND_QUEUED;
		m.queued = &q;
		q.lease_id = 5;
		q.has_position = q.has_hosts_ahead = true;
		q.position = 1;
		q.hosts_ahead = 2;
		q.resource = "db";
		fake_send(fd, &m);
		m.kind_case = ARBITER__SERVER_MESSAGE__KIND_GRANTED;
		m.granted = &g;
		g.lease_id = 5;
		g.token = 42;
		g.resource = "db";
		g.has_valid_until_ns = true;
		g.valid_until_ns =
		    boottime_ns() + (uint64_t)CLUSTER_GRANT_MS * 1000000;
		break;
	case ARBITER__REQUEST__KIND_PING:
		m.has_id = false;
		m.kind_case = ARBITER__SERVER_MESSAGE__KIND_EXTENDED;
		m.extended = &x;
		x.lease_id = 5;
		x.has_valid_until_ns = true;
		x.valid_until_ns =
		    boottime_ns() + (uint64_t)CLUSTER_EXTEND_MS * 1000000;
		x.resource = "db";
		fake_send(fd, &m);
		send_pong(fd, req->id);
		return;
	case ARBITER__REQUEST__KIND_RELEASE:
		m.kind_case = ARBITER__SERVER_MESSAGE__KIND_RELEASED;
		m.released = &r;
		break;
	default:
		return;
	}
	fake_send(fd, &m);
}

static void
play(int fd, int out, enum script script)
{
	struct codec_arena a;
	Arbiter__Request *req;
	uint64_t acquire_id = 0, upgrade_id = 0;

	codec_arena_init(&a, 1 << 16);
	while ((req = fake_read(fd, &a)) != NULL) {
		tell(out, req);
		if (script == CLUSTER) {
			play_cluster(fd, req);
			continue;
		}
		switch (req->kind_case) {
		case ARBITER__REQUEST__KIND_HELLO:
			if (script != SILENT)
				send_welcome(fd, req->id);
			break;
		case ARBITER__REQUEST__KIND_PING:
			if (script == SERVE || script == LATE_GRANT ||
			    script == LATE_CONVERT)
				send_pong(fd, req->id);
			if (script == TRICKLE) {
				/* A frame that never ends: 4 KiB promised. */
				static const uint8_t hdr[] = {0, 0, 16, 0};

				for (size_t i = 0;; i++) {
					uint8_t b = i < 4 ? hdr[i] : 0;
					struct timespec ts = {0, 50000000};

					if (write(fd, &b, 1) != 1)
						break;
					nanosleep(&ts, NULL);
				}
			}
			break;
		case ARBITER__REQUEST__KIND_ACQUIRE:
			if (script == DIE_AT_ACQUIRE)
				child_exit(0);
			while (script == FLOOD_QUEUED &&
			       send_queued(fd, req->id) == 0)
				;
			acquire_id = req->id;
			break;
		case ARBITER__REQUEST__KIND_RELEASE:
			/* As if the grant had crossed the withdrawal. */
			if (script == LATE_GRANT &&
			    req->release->has_request_id &&
			    req->release->request_id == acquire_id)
				send_granted(fd, acquire_id, 77);
			break;
		case ARBITER__REQUEST__KIND_CONVERT:
			if (script == CONVERT)
				answer_convert(fd, req);
			if (script != LATE_CONVERT)
				break;
			if (req->convert->mode == ARBITER__MODE__EXCLUSIVE) {
				upgrade_id = req->id;
				break;
			}
			/* The upgrade happened just before the withdrawal
			 * came, which then downgrades it again. */
			send_converted(fd, upgrade_id, req->convert->lease_id,
				       43, ARBITER__MODE__EXCLUSIVE);
			send_converted(fd, req->id, req->convert->lease_id, 43,
				       ARBITER__MODE__SHARED);
			break;
		default:
			break;
		}
	}
	tell(out, NULL);
	codec_arena_free(&a);
}

/*
 * Start a fake at dir/name. as_uid != 0: the child listens as that uid
 * (the socket file is bound first, as root, and opened to everyone).
 */
static void
fake_start(struct fake *f, const char *folder, const char *name, uid_t as_uid,
	   enum script script)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int p[2], ready[2];
	char ok;

	snprintf(f->path, sizeof f->path, "%s/%s", folder, name);
	cr_assert_eq(pipe(p), 0);
	cr_assert_eq(pipe(ready), 0);
	f->pid = fork();
	cr_assert_geq(f->pid, 0);
	if (f->pid == 0) {
		int lfd = socket(AF_UNIX, SOCK_STREAM, 0), fd;

		close(p[0]);
		close(ready[0]);
		snprintf(sa.sun_path, sizeof sa.sun_path, "%s", f->path);
		if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
			child_exit(2);
		chmod(f->path, 0777);
		/* SO_PEERCRED reports who called listen(). */
		if (as_uid != 0 && (setgid(as_uid) < 0 || setuid(as_uid) < 0))
			child_exit(2);
		/* Gone with the test, even when an assertion ends it early
		 * (set after setuid, which clears it). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (listen(lfd, 8) < 0 || write(ready[1], "r", 1) != 1)
			child_exit(2);
		while ((fd = accept(lfd, NULL, NULL)) >= 0) {
			play(fd, p[1], script);
			close(fd);
		}
		child_exit(0);
	}
	close(p[1]);
	close(ready[1]);
	cr_assert_eq(read(ready[0], &ok, 1), 1,
		     "the fake server did not start");
	close(ready[0]);
	f->seen = p[0];
}

static void
fake_stop(struct fake *f)
{
	if (f->pid > 0) {
		kill(f->pid, SIGTERM); /* valgrind still writes its summary */
		waitpid(f->pid, NULL, 0);
		f->pid = 0;
	}
	if (f->seen >= 0)
		close(f->seen);
	f->seen = -1;
}

/* The next request the fake saw, within timeout_ms; false if none. */
static bool
fake_next(struct fake *f, struct seen *s, int timeout_ms)
{
	struct pollfd p = {.fd = f->seen, .events = POLLIN};

	if (poll(&p, 1, timeout_ms) <= 0)
		return false;
	return read_full(f->seen, s, sizeof *s) == 0;
}

/* Skip past requests until one of kind comes; false if none does. */
static bool
fake_expect(struct fake *f, int kind, struct seen *s)
{
	while (fake_next(f, s, 5000)) {
		if (s->kind == kind)
			return true;
	}
	return false;
}

static void
need_root(const char *why)
{
	if (geteuid() != 0)
		cr_skip_test("needs root: %s", why);
}

#define ANOTHER_SERVER                                                         \
	"a server run by another uid is made with setuid() in a forked child"

/* ------------------------------------------------------------ deadlines */

Test(client, convert_returns_the_new_token_and_maps_errors)
{
	struct fake f;
	struct arb_event ev;
	arb_client *c;
	uint64_t token = 0, rid;
	int rc;

	fake_start(&f, dir, "a.sock", 0, CONVERT);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	cr_assert_eq(arb_convert(c, 1, ARB_EXCLUSIVE, 500, &token), 0, "%s",
		     arb_last_error(c));
	cr_assert_eq(token, 43);
	cr_assert_eq(arb_convert(c, 1, ARB_SHARED, -1, NULL), 0);
	rc = arb_convert(c, 2, ARB_EXCLUSIVE, ARB_WAIT_FOREVER, &token);
	cr_assert_eq(rc, -ARB_EDEADLOCK, "rc %d", rc);
	cr_assert_not_null(strstr(arb_strerror(rc), "deadlock"));
	cr_assert_not_null(strstr(arb_last_error(c), "lease 9 of pid 123"),
			   "%s", arb_last_error(c));
	rc = arb_convert(c, 3, ARB_EXCLUSIVE, 0, &token);
	cr_assert_eq(rc, -EOPNOTSUPP, "rc %d", rc);
	cr_assert_not_null(strstr(arb_last_error(c), "does not support"), "%s",
			   arb_last_error(c));
	cr_assert_eq(arb_convert(c, 1, (enum arb_mode)7, 0, NULL), -EINVAL);
	/* The async variant answers with an event. */
	cr_assert_eq(arb_convert_async(c, 1, ARB_EXCLUSIVE, -1, &rid), 0);
	for (;;) {
		struct pollfd p = {.fd = arb_fd(c), .events = POLLIN};

		cr_assert_gt(poll(&p, 1, 5000), 0, "no Converted came");
		rc = arb_next_event(c, &ev);
		cr_assert_geq(rc, 0);
		if (rc == 1)
			break;
	}
	cr_assert_eq(ev.kind, ARB_EV_CONVERTED);
	cr_assert_eq(ev.request_id, rid);
	cr_assert(ev.lease.id == 1 && ev.lease.token == 43 &&
		  ev.lease.mode == ARB_EXCLUSIVE);
	arb_close(c);
	fake_stop(&f);
}

static void
note_hosts(void *ctx, const char *resource, uint32_t position,
	   uint32_t holder_pid, const char *holder_name)
{
	arb_client **c = ctx;

	(void)resource;
	(void)position;
	(void)holder_pid;
	(void)holder_name;
	/* Told from inside the callback, for the Queued it reports. */
	cr_assert_eq(arb_hosts_ahead(*c), 2);
	cr_assert_eq(position, 1);
}

Test(client, a_cluster_lease_is_valid_until_its_deadline_and_extended)
{
	struct fake f;
	struct arb_lease l;
	struct arb_event ev;
	arb_client *c;
	struct arb_acquire_opts o = {
	    .lock_delay_ms = -1, .on_queued = note_hosts, .ctx = &c};
	uint64_t t0, until, later;
	char role[16];
	int rc;

	fake_start(&f, dir, "a.sock", 0, CLUSTER);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	cr_assert(arb_cluster_mode(c));
	t0 = arb_boottime_ns();
	cr_assert_eq(arb_acquire(c, "db", ARB_EXCLUSIVE, -1, &o, &l), 0, "%s",
		     arb_last_error(c));
	until = arb_lease_valid_until(c, l.id);
	cr_assert(until > t0 &&
		      until <= arb_boottime_ns() +
				   (uint64_t)CLUSTER_GRANT_MS * 1000000,
		  "deadline %llu, now %llu", (unsigned long long)until,
		  (unsigned long long)arb_boottime_ns());
	cr_assert(arb_lease_valid(c, l.id));
	/* The fake says nothing more: the deadline passes on the clock. */
	while (arb_boottime_ns() < until)
		(void)poll(NULL, 0,
			   (int)((until - arb_boottime_ns()) / 1000000 + 1));
	cr_assert_not(arb_lease_valid(c, l.id),
		      "a cluster lease past its deadline is not valid");
	/* An Extended read while a call waits for its answer moves it. */
	cr_assert_eq(arb_ping(c, role, sizeof role), 0, "%s",
		     arb_last_error(c));
	later = arb_lease_valid_until(c, l.id);
	cr_assert_gt(later,
		     until + (uint64_t)(CLUSTER_EXTEND_MS / 2) * 1000000);
	cr_assert(arb_lease_valid(c, l.id));
	cr_assert_eq(arb_next_event(c, &ev), 1);
	cr_assert_eq(ev.kind, ARB_EV_EXTENDED);
	cr_assert_eq(ev.lease.id, l.id);
	cr_assert_str_eq(ev.resource, "db");
	/* Another resource: etcd is out of reach. */
	rc = arb_acquire(c, "other", ARB_EXCLUSIVE, 0, NULL, &l);
	cr_assert_eq(rc, -ARB_EUNAVAILABLE, "rc %d", rc);
	cr_assert_not_null(strstr(arb_strerror(rc), "etcd"));
	cr_assert_not_null(strstr(arb_last_error(c), "http://127.0.0.1:1"));
	/* Released: no deadline, not valid. */
	cr_assert_eq(arb_release(c, 5), 0, "%s", arb_last_error(c));
	cr_assert_not(arb_lease_valid(c, 5));
	cr_assert_eq(arb_lease_valid_until(c, 5), 0);
	cr_assert_str_eq(arb_reason_name(ARB_REASON_CLUSTER_LOST),
			 "cluster_lost");
	arb_close(c);
	fake_stop(&f);
}

Test(client, a_grant_crossing_its_cancel_is_no_valid_lease)
{
	struct fake f;
	struct seen s;
	arb_client *c;
	uint64_t rid;

	fake_start(&f, dir, "a.sock", 0, LATE_GRANT);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	cr_assert_not(arb_cluster_mode(c));
	/* The fake grants lease 77 when its acquire is withdrawn. */
	cr_assert_eq(arb_acquire_async(c, "db", ARB_EXCLUSIVE, -1, NULL, &rid),
		     0);
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_ACQUIRE, &s));
	cr_assert_eq(arb_cancel(c, rid), 0);
	for (;;) {
		struct arb_event ev;
		struct pollfd p = {.fd = arb_fd(c), .events = POLLIN};

		cr_assert_gt(poll(&p, 1, 5000), 0, "no Granted came");
		if (arb_next_event(c, &ev) == 1 && ev.kind == ARB_EV_GRANTED)
			break;
	}
	cr_assert_not(arb_lease_valid(c, 77));
	arb_close(c);
	fake_stop(&f);
}

Test(client, convert_returns_in_time_and_withdraws_to_shared)
{
	struct fake f;
	struct seen s;
	arb_client *c;
	uint64_t t0, took, token = 0;
	int rc;

	fake_start(&f, dir, "a.sock", 0, ANSWER_HELLO_ONLY);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	t0 = now_ms();
	rc = arb_convert(c, 5, ARB_EXCLUSIVE, 300, &token);
	took = now_ms() - t0;
	cr_assert_eq(rc, -ARB_ETIMEOUT, "rc %d: %s", rc, arb_last_error(c));
	cr_assert_geq(took, 300);
	cr_assert_leq(took, 300 + 250, "took %llu ms",
		      (unsigned long long)took);
	cr_assert_not_null(strstr(arb_last_error(c), "held shared"), "%s",
			   arb_last_error(c));
	cr_assert_eq(token, 0);
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_CONVERT, &s));
	cr_assert(s.key == 5 && s.mode == ARBITER__MODE__EXCLUSIVE);
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_CONVERT, &s),
		  "the upgrade was not withdrawn");
	cr_assert(s.key == 5 && s.mode == ARBITER__MODE__SHARED);
	arb_close(c);
	fake_stop(&f);
}

Test(client, try_once_upgrade_and_downgrade_are_bounded_by_the_io_timeout)
{
	struct fake f;
	struct seen s;
	arb_client *c;
	uint64_t t0, took;
	int rc;

	fake_start(&f, dir, "a.sock", 0, ANSWER_HELLO_ONLY);
	cr_assert_eq(arb_connect_timeout(&c, f.path, "t", 300), 0, "%s",
		     arb_connect_error());
	t0 = now_ms();
	rc = arb_convert(c, 5, ARB_EXCLUSIVE, 0, NULL);
	took = now_ms() - t0;
	cr_assert_eq(rc, -ARB_ETIMEOUT, "rc %d: %s", rc, arb_last_error(c));
	cr_assert_leq(took, 300 + 250, "took %llu ms",
		      (unsigned long long)took);
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_CONVERT, &s));
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_CONVERT, &s),
		  "the try-once upgrade was not withdrawn");
	cr_assert(s.key == 5 && s.mode == ARBITER__MODE__SHARED);
	/* A downgrade cannot be taken back: treat the lease as shared. */
	rc = arb_convert(c, 5, ARB_SHARED, ARB_WAIT_FOREVER, NULL);
	cr_assert_eq(rc, -ETIMEDOUT, "rc %d", rc);
	cr_assert_not_null(strstr(arb_last_error(c), "treat it as shared"),
			   "%s", arb_last_error(c));
	arb_close(c);
	fake_stop(&f);
}

Test(client, late_upgrade_after_withdrawal_is_swallowed)
{
	struct fake f;
	struct arb_event ev;
	arb_client *c;
	char role[16];
	int rc;

	fake_start(&f, dir, "a.sock", 0, LATE_CONVERT);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	rc = arb_convert(c, 5, ARB_EXCLUSIVE, 100, NULL);
	cr_assert_eq(rc, -ARB_ETIMEOUT, "rc %d: %s", rc, arb_last_error(c));
	/* The next call reads both late answers on its way to its own. */
	cr_assert_eq(arb_ping(c, role, sizeof role), 0, "%s",
		     arb_last_error(c));
	while ((rc = arb_next_event(c, &ev)) > 0)
		cr_assert_neq(ev.kind, ARB_EV_CONVERTED,
			      "a withdrawn upgrade was reported");
	cr_assert_eq(rc, 0, "%s", arb_last_error(c));
	arb_close(c);
	fake_stop(&f);
}

Test(client, acquire_returns_in_time_when_the_daemon_never_answers)
{
	struct fake f;
	struct arb_lease l;
	struct seen s;
	arb_client *c;
	uint64_t t0, took;
	uint64_t acquire_id;
	int rc;

	fake_start(&f, dir, "a.sock", 0, ANSWER_HELLO_ONLY);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	t0 = now_ms();
	rc = arb_acquire(c, "db", ARB_EXCLUSIVE, 300, NULL, &l);
	took = now_ms() - t0;
	cr_assert_eq(rc, -ARB_ETIMEOUT, "rc %d: %s", rc, arb_last_error(c));
	cr_assert_geq(took, 300);
	cr_assert_leq(took, 300 + 250, "took %llu ms",
		      (unsigned long long)took);
	cr_assert_not_null(strstr(arb_last_error(c), f.path), "%s",
			   arb_last_error(c));
	/* The request was withdrawn, by its request id. */
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_ACQUIRE, &s));
	acquire_id = s.id;
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_RELEASE, &s));
	cr_assert(s.by_request && s.key == acquire_id);
	/* A try-lock is bounded the same way. */
	t0 = now_ms();
	rc = arb_acquire(c, "db2", ARB_EXCLUSIVE, 0, NULL, &l);
	took = now_ms() - t0;
	cr_assert_eq(rc, -ARB_ETIMEOUT);
	cr_assert_leq(took, 250, "took %llu ms", (unsigned long long)took);
	arb_close(c);
	fake_stop(&f);
}

Test(client, late_grant_after_withdrawal_is_released_and_never_reported)
{
	struct fake f;
	struct arb_lease l;
	struct arb_event ev;
	struct seen s;
	arb_client *c;
	char role[16];
	int rc;

	fake_start(&f, dir, "a.sock", 0, LATE_GRANT);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	rc = arb_acquire(c, "db", ARB_EXCLUSIVE, 100, NULL, &l);
	cr_assert_eq(rc, -ARB_ETIMEOUT, "rc %d: %s", rc, arb_last_error(c));
	/* The next call reads the late Granted on its way to its answer. */
	cr_assert_eq(arb_ping(c, role, sizeof role), 0, "%s",
		     arb_last_error(c));
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_RELEASE, &s));
	cr_assert(s.by_request, "first the withdrawal");
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_RELEASE, &s),
		  "the late grant was never released");
	cr_assert(!s.by_request && s.key == 77, "released lease %llu",
		  (unsigned long long)s.key);
	while ((rc = arb_next_event(c, &ev)) > 0)
		cr_assert_neq(ev.kind, ARB_EV_GRANTED,
			      "a withdrawn request was reported granted");
	cr_assert_eq(rc, 0);
	arb_close(c);
	fake_stop(&f);
}

Test(client, late_grant_is_released_by_the_event_api_too)
{
	struct fake f;
	struct arb_lease l;
	struct arb_event ev;
	struct seen s;
	arb_client *c;
	int rc;
	uint64_t until;

	fake_start(&f, dir, "a.sock", 0, LATE_GRANT);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	cr_assert_eq(arb_acquire(c, "db", ARB_EXCLUSIVE, 100, NULL, &l),
		     -ARB_ETIMEOUT);
	cr_assert(fake_expect(&f, ARBITER__REQUEST__KIND_RELEASE, &s));
	/* Poll and drain events until the fake saw the lease released. */
	until = now_ms() + 5000;
	for (;;) {
		struct pollfd p = {.fd = arb_fd(c), .events = POLLIN};

		cr_assert_lt(now_ms(), until,
			     "the late grant was never released");
		poll(&p, 1, 100);
		while ((rc = arb_next_event(c, &ev)) > 0)
			cr_assert_neq(ev.kind, ARB_EV_GRANTED);
		cr_assert_geq(rc, 0, "%s", arb_last_error(c));
		if (fake_next(&f, &s, 0) &&
		    s.kind == ARBITER__REQUEST__KIND_RELEASE) {
			cr_assert(!s.by_request && s.key == 77);
			break;
		}
	}
	arb_close(c);
	fake_stop(&f);
}

Test(client, handshake_with_a_silent_server_is_bounded)
{
	struct fake f;
	arb_client *c;
	uint64_t t0, took;
	int rc;

	fake_start(&f, dir, "a.sock", 0, SILENT);
	t0 = now_ms();
	rc = arb_connect_timeout(&c, f.path, "t", 300);
	took = now_ms() - t0;
	cr_assert_eq(rc, -ETIMEDOUT, "rc %d", rc);
	cr_assert_null(c);
	cr_assert_leq(took, 300 + 250);
	cr_assert_not_null(strstr(arb_connect_error(), f.path), "%s",
			   arb_connect_error());
	fake_stop(&f);
}

Test(client, ping_to_a_server_that_stops_answering_is_bounded)
{
	struct fake f;
	arb_client *c;
	uint64_t t0, took;

	fake_start(&f, dir, "a.sock", 0, ANSWER_HELLO_ONLY);
	cr_assert_eq(arb_connect_timeout(&c, f.path, "t", 300), 0);
	t0 = now_ms();
	cr_assert_eq(arb_ping(c, NULL, 0), -ETIMEDOUT);
	cr_assert_eq(arb_release(c, 5), -ETIMEDOUT);
	took = now_ms() - t0;
	cr_assert_leq(took, 2 * 300 + 250);
	arb_close(c);
	fake_stop(&f);
}

Test(client, a_flood_of_queued_reports_does_not_stretch_an_acquire)
{
	struct fake f;
	struct arb_lease l;
	arb_client *c;
	uint64_t t0, took;
	int rc;

	fake_start(&f, dir, "a.sock", 0, FLOOD_QUEUED);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	t0 = now_ms();
	rc = arb_acquire(c, "db", ARB_EXCLUSIVE, 300, NULL, &l);
	took = now_ms() - t0;
	cr_assert_eq(rc, -ARB_ETIMEOUT, "rc %d: %s", rc, arb_last_error(c));
	cr_assert_leq(took, 300 + 250, "took %llu ms",
		      (unsigned long long)took);
	arb_close(c);
	fake_stop(&f);
}

Test(client, a_server_that_trickles_its_answer_is_still_bounded)
{
	struct fake f;
	arb_client *c;
	uint64_t t0, took;

	fake_start(&f, dir, "a.sock", 0, TRICKLE);
	cr_assert_eq(arb_connect_timeout(&c, f.path, "t", 300), 0);
	t0 = now_ms();
	cr_assert_eq(arb_ping(c, NULL, 0), -ETIMEDOUT);
	took = now_ms() - t0;
	cr_assert_leq(took, 300 + 250, "took %llu ms",
		      (unsigned long long)took);
	arb_close(c);
	fake_stop(&f);
}

/* ------------------------------------------------------------ lost */

Test(client, a_dead_daemon_is_reported_as_lost_and_maybe_dead)
{
	struct fake f;
	struct arb_lease l;
	arb_client *c;
	int rc;

	fake_start(&f, dir, "a.sock", 0, DIE_AT_ACQUIRE);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	rc = arb_acquire(c, "db", ARB_EXCLUSIVE, ARB_WAIT_FOREVER, NULL, &l);
	cr_assert_eq(rc, -ARB_ECONNLOST, "rc %d", rc);
	cr_assert_not_null(strstr(arb_last_error(c), "was lost"), "%s",
			   arb_last_error(c));
	cr_assert_not_null(strstr(arb_last_error(c), "may have died"), "%s",
			   arb_last_error(c));
	cr_assert_not_null(strstr(arb_last_error(c), f.path));
	cr_assert_null(strstr(arb_last_error(c), "closed it"));
	arb_close(c);
	fake_stop(&f);
}

Test(client, a_killed_daemon_is_reported_as_lost_on_the_next_call)
{
	struct fake f;
	arb_client *c;
	int rc;

	fake_start(&f, dir, "a.sock", 0, SERVE);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	kill(f.pid, SIGTERM);
	waitpid(f.pid, NULL, 0);
	f.pid = 0;
	rc = arb_ping(c, NULL, 0);
	cr_assert_eq(rc, -ARB_ECONNLOST, "rc %d", rc);
	cr_assert_not_null(strstr(arb_last_error(c), "may have died"), "%s",
			   arb_last_error(c));
	arb_close(c);
	fake_stop(&f);
}

/* ------------------------------------------------------------ trust */

static const char *
name_of(uid_t uid)
{
	struct passwd *pw = getpwuid(uid);

	return pw ? pw->pw_name : NULL;
}

Test(client, a_server_run_by_another_uid_is_refused_before_hello)
{
	struct fake f;
	struct seen s;
	arb_client *c;
	char want[64];
	int rc;

	need_root(ANOTHER_SERVER);
	fake_start(&f, dir, "a.sock", NOBODY, SERVE);
	rc = arb_connect(&c, f.path, "t");
	cr_assert_eq(rc, -ARB_EUNTRUSTED, "rc %d", rc);
	cr_assert_null(c);
	snprintf(want, sizeof want, "uid %u", NOBODY);
	cr_assert_not_null(strstr(arb_connect_error(), want), "%s",
			   arb_connect_error());
	cr_assert_not_null(strstr(arb_connect_error(), f.path));
	cr_assert_not_null(
	    strstr(arb_connect_error(), "ARBITER_TRUST_UID=65534"), "%s",
	    arb_connect_error());
	if (name_of(NOBODY) != NULL)
		cr_assert_not_null(
		    strstr(arb_connect_error(), name_of(NOBODY)));
	/* Nothing was said to it. */
	cr_assert(fake_next(&f, &s, 2000));
	cr_assert_eq(s.kind, 0, "the client sent request kind %d", s.kind);
	fake_stop(&f);
}

Test(client, arbiter_trust_uid_trusts_uids_and_names)
{
	static const char *const values[] = {"65534", " 12 ,65534 ", "*", NULL};
	struct fake f;
	arb_client *c;
	char by_name[80];

	need_root(ANOTHER_SERVER);
	fake_start(&f, dir, "a.sock", NOBODY, SERVE);
	for (int i = 0; values[i] != NULL; i++) {
		setenv("ARBITER_TRUST_UID", values[i], 1);
		cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "'%s': %s",
			     values[i], arb_connect_error());
		arb_close(c);
	}
	if (name_of(NOBODY) != NULL) {
		snprintf(by_name, sizeof by_name, "root, %s", name_of(NOBODY));
		setenv("ARBITER_TRUST_UID", by_name, 1);
		cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
			     arb_connect_error());
		arb_close(c);
	}
	/* A list without it is no trust, and a bad entry is pointed out. */
	setenv("ARBITER_TRUST_UID", "12, no-such-user-here", 1);
	cr_assert_eq(arb_connect(&c, f.path, "t"), -ARB_EUNTRUSTED);
	cr_assert_not_null(strstr(arb_connect_error(), "no-such-user-here"));
	fake_stop(&f);
}

Test(client, arb_trust_uid_trusts_a_uid)
{
	struct fake f;
	arb_client *c;

	need_root(ANOTHER_SERVER);
	fake_start(&f, dir, "a.sock", NOBODY, SERVE);
	cr_assert_eq(arb_connect(&c, f.path, "t"), -ARB_EUNTRUSTED);
	cr_assert_eq(arb_trust_uid(NOBODY), 0);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	arb_close(c);
	fake_stop(&f);
}

Test(client, a_folder_root_handed_to_the_server_uid_is_trusted)
{
	struct fake f;
	arb_client *c;
	char sub[128];

	need_root(ANOTHER_SERVER);
	/* dir is root's, 0755: like /run; sub is the daemon's, like
	 * RuntimeDirectory=arbiter. */
	snprintf(sub, sizeof sub, "%s/run", dir);
	cr_assert_eq(mkdir(sub, 0750), 0);
	cr_assert_eq(chown(sub, NOBODY, NOBODY), 0);
	fake_start(&f, sub, "a.sock", NOBODY, SERVE);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	arb_close(c);
	/* Writable by its group: anyone in it could have made the socket. */
	cr_assert_eq(chmod(sub, 0770), 0);
	cr_assert_eq(arb_connect(&c, f.path, "t"), -ARB_EUNTRUSTED);
	cr_assert_eq(chmod(sub, 0750), 0);
	/* A parent open to others: anyone could have made the folder. */
	cr_assert_eq(chmod(dir, 0757), 0);
	cr_assert_eq(arb_connect(&c, f.path, "t"), -ARB_EUNTRUSTED);
	cr_assert_eq(chmod(dir, 0755), 0);
	fake_stop(&f);
}

/* ------------------------------------------------------- default folder */

/*
 * The default per-user folder, /tmp/arbiter-UID. As root the client runs in
 * a child under a free uid, so the real folders of root and of the users are
 * never touched; as another user, the test uses its own folder only when it
 * does not exist yet.
 */
struct deflt {
	uid_t uid; /* the client's uid */
	char folder[64];
	char sock[96];
};

static void
deflt_pick(struct deflt *d)
{
	struct stat st;

	if (geteuid() != 0) {
		char lock[96];
		int fd;

		d->uid = getuid();
		snprintf(d->folder, sizeof d->folder, "/tmp/arbiter-%u",
			 (unsigned)d->uid);
		/* One test at a time in the one folder this user has; the
		 * lock goes with the test's process. */
		snprintf(lock, sizeof lock, "/tmp/arbiter-client-test-%u.lock",
			 (unsigned)d->uid);
		fd =
		    open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		cr_assert_geq(fd, 0, "%s: %s", lock, strerror(errno));
		cr_assert_eq(flock(fd, LOCK_EX), 0);
		if (lstat(d->folder, &st) == 0)
			cr_skip_test(
			    "%s exists (an arbiterd of yours may use it)",
			    d->folder);
	} else {
		for (d->uid = 41000 + (uid_t)(getpid() % 20000);; d->uid++) {
			snprintf(d->folder, sizeof d->folder, "/tmp/arbiter-%u",
				 (unsigned)d->uid);
			if (getpwuid(d->uid) == NULL &&
			    lstat(d->folder, &st) < 0)
				break;
		}
	}
	snprintf(d->sock, sizeof d->sock, "%s/arbiter.sock", d->folder);
	snprintf(made_folder, sizeof made_folder, "%s", d->folder);
}

/*
 * Run arb_connect(NULL) as d->uid with a listening socket at the default
 * path; the child exits 0 when it got want, else prints why and exits 1.
 * The socket is made by the server side before the client runs.
 */
static void
deflt_connect(const struct deflt *d, int want, const char *needle)
{
	pid_t pid = fork();
	int status;

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
		arb_client *c = NULL;
		int rc;

		snprintf(sa.sun_path, sizeof sa.sun_path, "%s", d->sock);
		unlink(d->sock);
		/* Bound and listening as root: the peer check alone would
		 * trust it, so only the folder check can refuse. */
		if (lfd < 0 ||
		    bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
		    chmod(d->sock, 0777) < 0 || listen(lfd, 4) < 0) {
			fprintf(stderr, "cannot listen on %s: %s\n", d->sock,
				strerror(errno));
			child_exit(2);
		}
		if (geteuid() == 0 && d->uid != 0 && drop_uid(d->uid) < 0)
			child_exit(2);
		rc = arb_connect_timeout(&c, NULL, "t", 1000);
		if (rc != want || (needle != NULL && strstr(arb_connect_error(),
							    needle) == NULL)) {
			fprintf(stderr, "got %d (%s), wanted %d with '%s'\n",
				rc, arb_connect_error(), want,
				needle ? needle : "");
			child_exit(1);
		}
		if (want == -ARB_EUNTRUSTED && accept(lfd, NULL, NULL) >= 0) {
			fprintf(stderr, "the client connected anyway\n");
			child_exit(1);
		}
		arb_close(c);
		child_exit(0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the client as uid %u: see its stderr", (unsigned)d->uid);
}

Test(client, a_group_writable_default_folder_is_refused)
{
	struct deflt d;

	deflt_pick(&d);
	cr_assert_eq(mkdir(d.folder, 0700), 0);
	if (geteuid() == 0)
		cr_assert_eq(chown(d.folder, d.uid, d.uid), 0);
	cr_assert_eq(chmod(d.folder, 0770), 0);
	deflt_connect(&d, -ARB_EUNTRUSTED, "writable");
	cr_assert_eq(chmod(d.folder, 0777), 0);
	deflt_connect(&d, -ARB_EUNTRUSTED, d.folder);
}

Test(client, a_default_folder_owned_by_another_uid_is_refused)
{
	struct deflt d;
	char want[64];

	need_root("only root can give a folder to another uid");
	deflt_pick(&d);
	cr_assert_eq(mkdir(d.folder, 0755), 0);
	cr_assert_eq(chown(d.folder, NOBODY, NOBODY), 0);
	snprintf(want, sizeof want, "belongs to uid %u", NOBODY);
	deflt_connect(&d, -ARB_EUNTRUSTED, want);
}

Test(client, a_symlinked_default_folder_is_refused)
{
	struct deflt d;
	char target[128];

	deflt_pick(&d);
	snprintf(target, sizeof target, "%s/elsewhere", dir);
	cr_assert_eq(mkdir(target, 0700), 0);
	if (geteuid() == 0)
		cr_assert_eq(chown(target, d.uid, d.uid), 0);
	cr_assert_eq(symlink(target, d.folder), 0);
	deflt_connect(&d, -ARB_EUNTRUSTED, "symbolic link");
}

Test(client, a_private_default_folder_is_used)
{
	struct deflt d;

	deflt_pick(&d);
	cr_assert_eq(mkdir(d.folder, 0700), 0);
	if (geteuid() == 0)
		cr_assert_eq(chown(d.folder, d.uid, d.uid), 0);
	/* Nobody answers the handshake: the connect got past both checks. */
	deflt_connect(&d, -ETIMEDOUT, NULL);
}

Test(client, an_explicit_socket_skips_the_folder_check)
{
	struct fake f;
	arb_client *c;
	char open_dir[128];

	snprintf(open_dir, sizeof open_dir, "%s/open", dir);
	cr_assert_eq(mkdir(open_dir, 0777), 0);
	cr_assert_eq(chmod(open_dir, 0777), 0);
	fake_start(&f, open_dir, "a.sock", 0, SERVE);
	cr_assert_eq(arb_connect(&c, f.path, "t"), 0, "%s",
		     arb_connect_error());
	arb_close(c);
	setenv("ARBITER_SOCKET", f.path, 1);
	cr_assert_eq(arb_connect(&c, NULL, "t"), 0, "%s", arb_connect_error());
	arb_close(c);
	fake_stop(&f);
}
