/*
 * libarbiter (client/client.c) against a real daemon: the non-blocking API
 * (arb_acquire_async, arb_next_event, arb_cancel), arb_release_nowait,
 * ttl leases kept by arb_keepalive, the admin calls, the stats and status
 * accessors and every error's text. The daemon is this build's server code
 * run in a forked child on a private socket and storage; the test waits
 * for its READY=1 on a NOTIFY_SOCKET, never on a sleep.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arbiter.h"
#include "child_exit.h"
#include "arbiter.pb-c.h"
#include "config.h"
#include "log.h"
#include "server.h"

static char dir[64];
static char sock[128];
static pid_t daemon_pid = -1;

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

/* Start the daemon with extra -o overrides; returns once it is ready. */
static void
daemon_start(const char *const *extra)
{
	char notify[128], storage[128], logf[128], buf[64];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int nfd;
	struct pollfd p;
	ssize_t n;

	snprintf(notify, sizeof notify, "%s/notify", dir);
	snprintf(storage, sizeof storage, "%s/data", dir);
	snprintf(logf, sizeof logf, "%s/daemon.log", dir);
	nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memcpy(sa.sun_path, notify, strlen(notify) + 1);
	cr_assert_eq(bind(nfd, (struct sockaddr *)&sa, sizeof sa), 0);
	daemon_pid = fork();
	cr_assert_geq(daemon_pid, 0);
	if (daemon_pid == 0) {
		char *ov[16], err[1024];
		size_t nov = 0;
		struct server srv;
		int rc, fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);

		dup2(fd, STDERR_FILENO);
		close(nfd);
		setenv("NOTIFY_SOCKET", notify, 1);
		(void)!asprintf(&ov[nov++], "socket.path=%s", sock);
		(void)!asprintf(&ov[nov++], "storage.path=%s", storage);
		ov[nov++] = strdup("log.level=debug");
		for (size_t i = 0; extra != NULL && extra[i] != NULL; i++)
			ov[nov++] = strdup(extra[i]);
		memset(&srv, 0, sizeof srv);
		if (config_load(&srv.cfg, NULL, ov, nov, err, sizeof err) < 0) {
			fprintf(stderr, "config: %s\n", err);
			child_exit(2);
		}
		srv.overrides = ov;
		srv.noverrides = nov;
		log_setup((enum log_level)srv.cfg.log_level, false);
		if (server_init(&srv, err, sizeof err) < 0) {
			fprintf(stderr, "server_init: %s\n", err);
			server_free(&srv);
			child_exit(1);
		}
		rc = server_run(&srv);
		server_free(&srv);
		for (size_t i = 0; i < nov; i++)
			free(ov[i]);
		child_exit(rc);
	}
	p = (struct pollfd){.fd = nfd, .events = POLLIN};
	for (;;) {
		cr_assert_eq(poll(&p, 1, 20000), 1,
			     "the daemon never said READY=1 (see %s)", logf);
		n = recv(nfd, buf, sizeof buf - 1, 0);
		cr_assert_gt(n, 0);
		buf[n] = '\0';
		if (strstr(buf, "READY=1") != NULL)
			break;
	}
	close(nfd);
}

static int
daemon_stop(void)
{
	int status = 0;

	if (daemon_pid <= 0)
		return -1;
	kill(daemon_pid, SIGTERM);
	waitpid(daemon_pid, &status, 0);
	daemon_pid = -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void
setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/arb-lib-test-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(sock, sizeof sock, "%s/a.sock", dir);
	unsetenv("ARBITER_SOCKET");
}

static void
teardown(void)
{
	/* SIGTERM, not SIGKILL: a daemon under valgrind must end with
	 * its verdict. */
	(void)daemon_stop();
	rm_rf(dir);
}

TestSuite(lib, .init = setup, .fini = teardown, .timeout = 30);

static arb_client *
connect_as(const char *name)
{
	arb_client *c = NULL;

	cr_assert_eq(arb_connect(&c, sock, name), 0, "%s", arb_connect_error());
	return c;
}

/* The next event, waiting for the socket to be readable. */
static void
next_event(arb_client *c, struct arb_event *ev)
{
	for (;;) {
		int rc = arb_next_event(c, ev);
		struct pollfd p = {.fd = arb_fd(c), .events = POLLIN};

		cr_assert_geq(rc, 0, "arb_next_event: %d %s", rc,
			      arb_last_error(c));
		if (rc == 1)
			return;
		cr_assert_eq(poll(&p, 1, 20000), 1, "no event came");
	}
}

static const Arbiter__ResourceStatus *
status_of(arb_client *c, const char *name)
{
	const Arbiter__Status *st;

	cr_assert_eq(arb_status(c, name, (const void **)&st), 0, "%s",
		     arb_last_error(c));
	for (size_t i = 0; i < st->n_resources; i++)
		if (strcmp(st->resources[i]->resource, name) == 0)
			return st->resources[i];
	return NULL;
}

Test(lib, every_error_code_has_its_own_text)
{
	static const int codes[] = {
	    ARB_EBADFRAME,   ARB_EBADREQUEST,  ARB_ENOTWELCOME,
	    ARB_EVERSION,    ARB_EINVALIDNAME, ARB_EALREADYHELD,
	    ARB_EWOULDBLOCK, ARB_ETIMEOUT,     ARB_EUNKNOWNLEASE,
	    ARB_EFORBIDDEN,  ARB_ELIMIT,       ARB_ESHUTTINGDOWN,
	    ARB_ESTORAGE,    ARB_EINTERNAL,    ARB_ECANCELLED,
	    ARB_EPROTO,	     ARB_ECONNLOST,    ARB_EREVOKED,
	    ARB_EUNTRUSTED,
	};
	size_t n = sizeof codes / sizeof codes[0];
	char unknown[64];

	for (size_t i = 0; i < n; i++) {
		const char *s = arb_strerror(-codes[i]);

		cr_assert_not_null(s);
		cr_assert_neq(strncmp(s, "Unknown error", 13), 0, "%d",
			      codes[i]);
		cr_assert_str_eq(arb_strerror(codes[i]), s,
				 "the sign does not matter");
		for (size_t j = 0; j < i; j++)
			cr_assert_str_neq(arb_strerror(codes[j]), s,
					  "%d and %d share a text", codes[i],
					  codes[j]);
	}
	cr_assert_str_eq(arb_strerror(ARB_EWOULDBLOCK), "resource is busy");
	cr_assert_str_eq(arb_strerror(-ARB_ECONNLOST),
			 "connection to the daemon lost");
	/* Plain errno values read as strerror. */
	cr_assert_str_eq(arb_strerror(-ETIMEDOUT), strerror(ETIMEDOUT));
	/* An unknown code reads as strerror's text, which glibc builds in a
	 * buffer the next call reuses: keep a copy. */
	snprintf(unknown, sizeof unknown, "%s", arb_strerror(-1050));
	cr_assert_str_eq(unknown, strerror(1050));
}

Test(lib, an_async_acquire_is_granted_as_an_event)
{
	arb_client *c;
	struct arb_event ev;
	uint64_t rid;

	daemon_start(NULL);
	c = connect_as("async");
	cr_assert_eq(arb_next_event(c, &ev), 0, "no event before a request");
	cr_assert_eq(arb_acquire_async(c, "db", ARB_SHARED, ARB_WAIT_FOREVER,
				       NULL, &rid),
		     0);
	next_event(c, &ev);
	cr_assert_eq(ev.kind, ARB_EV_GRANTED);
	cr_assert_eq(ev.request_id, rid);
	cr_assert_eq(ev.lease.mode, ARB_SHARED);
	cr_assert_gt(ev.lease.token, 0);
	cr_assert_str_eq(ev.resource, "db");
	cr_assert_eq(arb_release(c, ev.lease.id), 0, "%s", arb_last_error(c));
	arb_close(c);
	cr_assert_eq(daemon_stop(), 0);
}

Test(lib, an_async_waiter_hears_its_queue_position_then_its_grant)
{
	arb_client *a, *b;
	struct arb_lease held;
	struct arb_event ev;
	struct arb_acquire_opts o = {.lock_delay_ms = -1,
				     .position_updates = true};
	uint64_t rid;

	daemon_start(NULL);
	a = connect_as("holder");
	b = connect_as("waiter");
	cr_assert_eq(arb_acquire(a, "q", ARB_EXCLUSIVE, 0, NULL, &held), 0);
	cr_assert_eq(arb_acquire_async(b, "q", ARB_EXCLUSIVE, ARB_WAIT_FOREVER,
				       &o, &rid),
		     0);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_QUEUED);
	cr_assert_eq(ev.request_id, rid);
	cr_assert_eq(ev.position, 1);
	cr_assert_eq(ev.holder_pid, (uint32_t)getpid());
	cr_assert_str_eq(ev.resource, "q");
	/* The release without a reply hands the lease over. */
	cr_assert_eq(arb_release_nowait(a, held.id), 0);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_GRANTED);
	cr_assert_eq(ev.request_id, rid);
	cr_assert_gt(ev.lease.token, held.token, "tokens only grow");
	/* a's quiet release produced nothing for a to read. */
	cr_assert_eq(arb_ping(a, NULL, 0), 0, "%s", arb_last_error(a));
	cr_assert_eq(arb_next_event(a, &ev), 0);
	arb_close(a);
	arb_close(b);
}

Test(lib, a_cancelled_async_acquire_fails_as_cancelled_and_leaves_the_queue)
{
	arb_client *a, *b;
	struct arb_lease held;
	struct arb_event ev;
	const Arbiter__ResourceStatus *rs;
	uint64_t rid;
	bool failed = false, replied = false;

	daemon_start(NULL);
	a = connect_as("holder");
	b = connect_as("waiter");
	cr_assert_eq(arb_acquire(a, "c", ARB_EXCLUSIVE, 0, NULL, &held), 0);
	cr_assert_eq(arb_acquire_async(b, "c", ARB_EXCLUSIVE, ARB_WAIT_FOREVER,
				       NULL, &rid),
		     0);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_QUEUED, "the first report is sent anyway");
	cr_assert_eq(arb_cancel(b, rid), 0);
	/* The acquire fails as cancelled; the Release's own answer is a
	 * reply event. */
	while (!(failed && replied)) {
		next_event(b, &ev);
		if (ev.kind == ARB_EV_FAILED) {
			cr_assert_eq(ev.request_id, rid);
			cr_assert_eq(ev.error, -ARB_ECANCELLED, "%d %s",
				     ev.error, ev.message);
			failed = true;
		} else {
			cr_assert_eq(ev.kind, ARB_EV_REPLY, "kind %d", ev.kind);
			replied = true;
		}
	}
	rs = status_of(a, "c");
	cr_assert_not_null(rs);
	cr_assert_eq(rs->n_waiters, 0);
	cr_assert_eq(rs->n_holders, 1);
	arb_close(a);
	arb_close(b);
}

Test(lib, an_async_try_lock_on_a_held_resource_fails_as_would_block)
{
	arb_client *a, *b;
	struct arb_lease held;
	struct arb_event ev;
	uint64_t rid;

	daemon_start(NULL);
	a = connect_as("holder");
	b = connect_as("trier");
	cr_assert_eq(arb_acquire(a, "t", ARB_EXCLUSIVE, 0, NULL, &held), 0);
	cr_assert_eq(arb_acquire_async(b, "t", ARB_SHARED, 0, NULL, &rid), 0);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_FAILED);
	cr_assert_eq(ev.error, -ARB_EWOULDBLOCK);
	cr_assert_eq(ev.request_id, rid);
	cr_assert_eq(arb_acquire(b, "t", ARB_SHARED, 0, NULL, &held),
		     -ARB_EWOULDBLOCK);
	cr_assert_neq(arb_last_error(b)[0], '\0');
	arb_close(a);
	arb_close(b);
}

Test(lib, an_admin_revoke_reaches_the_holder_as_a_revoked_event)
{
	arb_client *a, *adm;
	struct arb_lease held;
	struct arb_event ev;

	daemon_start(NULL);
	a = connect_as("holder");
	adm = connect_as("admin");
	cr_assert_eq(arb_acquire(a, "r", ARB_EXCLUSIVE, 0, NULL, &held), 0);
	cr_assert_eq(arb_revoke(adm, held.id, 0), 1, "%s", arb_last_error(adm));
	next_event(a, &ev);
	cr_assert_eq(ev.kind, ARB_EV_REVOKED);
	cr_assert_eq(ev.request_id, 0);
	cr_assert_eq(ev.lease.id, held.id);
	cr_assert_eq(ev.reason, ARBITER__REVOKE_REASON__ADMIN);
	cr_assert_str_eq(ev.resource, "r");
	cr_assert_eq(arb_release(a, held.id), -ARB_EUNKNOWNLEASE);
	/* By pid: every lease of this process, here none is left. */
	cr_assert_eq(arb_revoke(adm, 0, (uint32_t)getpid()), 0);
	arb_close(a);
	arb_close(adm);
}

Test(lib, keepalive_renews_a_ttl_lease_so_it_outlives_its_ttl)
{
	arb_client *a, *b;
	struct arb_lease held, other;
	struct arb_acquire_opts o = {.ttl_ms = 300, .lock_delay_ms = -1};
	int64_t due;
	int renewals = 0;

	daemon_start(NULL);
	a = connect_as("ttl");
	b = connect_as("other");
	cr_assert_eq(arb_keepalive(a), -1, "no ttl lease: nothing is due");
	cr_assert_eq(arb_acquire(a, "k", ARB_EXCLUSIVE, 0, &o, &held), 0, "%s",
		     arb_last_error(a));
	cr_assert_eq(held.ttl_ms, 300);
	due = arb_keepalive(a);
	cr_assert(due > 0 && due <= 100, "renewed at a third of the ttl: %lld",
		  (long long)due);
	/* Keep it alive past three ttls; the waiting is the behaviour. */
	for (int i = 0; i < 10; i++) {
		struct pollfd p = {.fd = arb_fd(a), .events = POLLIN};

		cr_assert_eq(poll(&p, 1, (int)due), 0, "nothing to read");
		due = arb_keepalive(a);
		cr_assert_geq(due, 0, "%s", arb_last_error(a));
		renewals++;
	}
	cr_assert_eq(arb_acquire(b, "k", ARB_EXCLUSIVE, 0, NULL, &other),
		     -ARB_EWOULDBLOCK, "the renewed lease is still held");
	cr_assert_eq(arb_renew(a, held.id, 600), 0, "%s", arb_last_error(a));
	cr_assert_gt(arb_keepalive(a), 100,
		     "the new ttl sets the next renewal");
	cr_assert_eq(arb_release(a, held.id), 0);
	cr_assert_eq(arb_keepalive(a), -1, "a released lease is forgotten");
	cr_assert_eq(arb_renew(a, held.id, 0), -ARB_EUNKNOWNLEASE);
	arb_close(a);
	arb_close(b);
}

Test(lib, keepalive_of_a_lease_revoked_meanwhile_fails_and_says_which)
{
	arb_client *a, *adm;
	struct arb_lease held;
	/* Long enough not to run out before the revoke on a slow build. */
	struct arb_acquire_opts o = {.ttl_ms = 1500, .lock_delay_ms = 0};
	char want[64];
	int64_t due;
	struct pollfd p;

	daemon_start(NULL);
	a = connect_as("ttl");
	adm = connect_as("admin");
	cr_assert_eq(arb_acquire(a, "kr", ARB_EXCLUSIVE, 0, &o, &held), 0, "%s",
		     arb_last_error(a));
	cr_assert_eq(arb_revoke(adm, held.id, 0), 1);
	/* The Revoked notice is on a's socket; keepalive's renew meets it. */
	p = (struct pollfd){.fd = arb_fd(a), .events = POLLIN};
	cr_assert_eq(poll(&p, 1, 20000), 1);
	due = arb_keepalive(a);
	while (due > 0) {
		p = (struct pollfd){.fd = -1};
		(void)poll(&p, 1, (int)due);
		due = arb_keepalive(a);
	}
	if (due == -1) {
		/* The Revoked event was read first: the lease is forgotten. */
		struct arb_event ev;

		cr_assert_eq(arb_next_event(a, &ev), 1);
		cr_assert_eq(ev.kind, ARB_EV_REVOKED);
	} else {
		cr_assert_eq(due, -ARB_EUNKNOWNLEASE, "%lld %s", (long long)due,
			     arb_last_error(a));
		snprintf(want, sizeof want, "renewing lease %llu failed: ",
			 (unsigned long long)held.id);
		cr_assert_not_null(strstr(arb_last_error(a), want), "%s",
				   arb_last_error(a));
		cr_assert_eq(arb_keepalive(a), -1,
			     "the failed lease is dropped");
	}
	arb_close(a);
	arb_close(adm);
}

Test(lib, stats_and_status_describe_what_the_daemon_holds)
{
	arb_client *a, *b;
	struct arb_lease held;
	const Arbiter__Stats *st;
	const Arbiter__ResourceStatus *rs;
	const Arbiter__Status *all;
	char role[32];
	uint64_t rid;
	struct arb_event ev;

	daemon_start(NULL);
	a = connect_as("holder-name");
	b = connect_as("waiter-name");
	cr_assert_eq(arb_ping(a, role, sizeof role), 0);
	cr_assert_str_eq(role, "active");
	cr_assert_eq(arb_acquire(a, "s", ARB_EXCLUSIVE, 0, NULL, &held), 0);
	cr_assert_eq(arb_acquire_async(b, "s", ARB_EXCLUSIVE, ARB_WAIT_FOREVER,
				       NULL, &rid),
		     0);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_QUEUED);

	rs = status_of(a, "s");
	cr_assert_not_null(rs);
	cr_assert_eq(rs->n_holders, 1);
	cr_assert_eq(rs->holders[0]->lease_id, held.id);
	cr_assert_eq(rs->holders[0]->token, held.token);
	cr_assert_str_eq(rs->holders[0]->client_name, "holder-name");
	cr_assert_eq(rs->holders[0]->pid, (uint32_t)getpid());
	cr_assert_eq(rs->n_waiters, 1);
	cr_assert_str_eq(rs->waiters[0]->client_name, "waiter-name");
	cr_assert_eq(arb_status(a, NULL, (const void **)&all), 0);
	cr_assert_str_eq(all->role, "active");
	cr_assert_eq(all->holders_total, 1);
	cr_assert_eq(all->waiters_total, 1);
	cr_assert_eq(all->connections, 2);

	cr_assert_eq(arb_stats(a, "s", (const void **)&st), 0, "%s",
		     arb_last_error(a));
	cr_assert_eq(st->n_resources, 1);
	cr_assert_str_eq(st->resources[0]->resource, "s");
	cr_assert_eq(st->resources[0]->acquired_immediate, 1);
	cr_assert_eq(st->total->acquired_immediate, 1);
	cr_assert(st->storage_locked);
	cr_assert_eq(arb_stats_reset(a), 0, "%s", arb_last_error(a));
	cr_assert_eq(arb_stats(a, NULL, (const void **)&st), 0);
	cr_assert_eq(st->total->acquired_immediate, 0, "reset to zero");
	arb_close(a);
	arb_close(b);
}

Test(lib, a_bad_resource_name_is_refused_before_sending)
{
	arb_client *c;
	struct arb_lease l;
	uint64_t rid;
	char big[300];

	daemon_start(NULL);
	c = connect_as("names");
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	cr_assert_eq(arb_acquire(c, big, ARB_EXCLUSIVE, 0, NULL, &l),
		     -ARB_EINVALIDNAME);
	cr_assert_neq(arb_last_error(c)[0], '\0');
	cr_assert_eq(arb_acquire(c, "", ARB_EXCLUSIVE, 0, NULL, &l),
		     -ARB_EINVALIDNAME);
	cr_assert_eq(arb_acquire_async(c, "\xff", ARB_EXCLUSIVE, 0, NULL, &rid),
		     -ARB_EINVALIDNAME);
	cr_assert_eq(arb_ping(c, NULL, 0), 0, "the connection is still good");
	arb_close(c);
}

Test(lib, a_lock_delay_asked_for_holds_the_next_grant_back)
{
	arb_client *a, *b;
	struct arb_lease held, next;
	struct arb_acquire_opts o = {.lock_delay_ms = 60000};
	const Arbiter__ResourceStatus *rs;

	daemon_start(NULL);
	a = connect_as("delay");
	b = connect_as("next");
	cr_assert_eq(arb_acquire(a, "d", ARB_EXCLUSIVE, 0, &o, &held), 0, "%s",
		     arb_last_error(a));
	/* A holder that goes away without releasing leaves the delay. */
	arb_close(a);
	rs = status_of(b, "d");
	while (rs == NULL || rs->n_holders > 0)
		rs = status_of(b, "d");
	cr_assert_gt(rs->delayed_us, 0);
	cr_assert_eq(arb_acquire(b, "d", ARB_EXCLUSIVE, 0, NULL, &next),
		     -ARB_EWOULDBLOCK);
	arb_close(b);
}

Test(lib, connect_errors_say_what_is_wrong_with_the_socket)
{
	arb_client *c = NULL;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char stale[128];
	int fd;

	/* A socket file nobody listens on. */
	snprintf(stale, sizeof stale, "%s/stale.sock", dir);
	memcpy(sa.sun_path, stale, strlen(stale) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	cr_assert_eq(arb_connect(&c, stale, "t"), -ECONNREFUSED);
	cr_assert_not_null(strstr(arb_connect_error(), "nothing listens on"),
			   "%s", arb_connect_error());
	cr_assert_not_null(strstr(arb_connect_error(), stale));
	close(fd);

	/* A path through a file: neither missing nor refused. */
	snprintf(stale, sizeof stale, "%s/file", dir);
	close(open(stale, O_CREAT | O_WRONLY, 0600));
	strcat(stale, "/x.sock");
	cr_assert_eq(arb_connect(&c, stale, "t"), -ENOTDIR);
	cr_assert_not_null(strstr(arb_connect_error(), "cannot connect to "),
			   "%s", arb_connect_error());
	arb_close(NULL);
}

Test(lib, a_daemon_that_stops_tells_waiters_it_is_shutting_down)
{
	arb_client *a, *b;
	struct arb_lease held;
	struct arb_event ev;
	uint64_t rid;
	bool revoked = false;

	daemon_start(NULL);
	a = connect_as("holder");
	b = connect_as("waiter");
	cr_assert_eq(arb_acquire(a, "z", ARB_EXCLUSIVE, 0, NULL, &held), 0);
	cr_assert_eq(arb_acquire_async(b, "z", ARB_EXCLUSIVE, ARB_WAIT_FOREVER,
				       NULL, &rid),
		     0);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_QUEUED);
	kill(daemon_pid, SIGTERM);
	next_event(b, &ev);
	cr_assert_eq(ev.kind, ARB_EV_FAILED);
	cr_assert_eq(ev.error, -ARB_ESHUTTINGDOWN);
	for (;;) {
		int rc = arb_next_event(a, &ev);
		struct pollfd p = {.fd = arb_fd(a), .events = POLLIN};

		if (rc == 1) {
			cr_assert_eq(ev.kind, ARB_EV_REVOKED);
			cr_assert_eq(ev.reason,
				     ARBITER__REVOKE_REASON__SHUTDOWN);
			revoked = true;
			continue;
		}
		if (rc < 0) {
			cr_assert_eq(rc, -ARB_ECONNLOST, "%d", rc);
			break;
		}
		cr_assert_eq(poll(&p, 1, 20000), 1);
	}
	cr_assert(revoked);
	cr_assert_eq(arb_ping(a, NULL, 0), -ARB_ECONNLOST);
	cr_assert_eq(daemon_stop(), 0);
	arb_close(a);
	arb_close(b);
}

/*
 * A path longer than a socket address holds is refused and named, never cut
 * to 107 bytes and connected to as another path.
 */
Test(lib, a_socket_path_over_107_bytes_is_refused_and_named)
{
	arb_client *c = NULL;
	char longp[200];

	memset(longp, 'p', sizeof longp - 1);
	longp[0] = '/';
	longp[sizeof longp - 1] = '\0';
	cr_assert_eq(arb_connect(&c, longp, "t"), -ENAMETOOLONG, "%s",
		     arb_connect_error());
	cr_assert_not_null(
	    strstr(arb_connect_error(), "longer than 107 bytes"));
}
