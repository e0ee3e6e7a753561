/*
 * arbiterctl run: hold a lease while a command runs, like flock(1). The
 * command inherits the connection that holds the lease, so the lease lives
 * exactly as long as the command, even if arbiterctl itself is killed.
 *
 * What it owns:
 *
 * Waiting. The acquire is sent without blocking and the wait runs in our
 * own poll, so -w SECS is kept by this process whatever the daemon does
 * (stopped, hung): when the bound passes, the request is withdrawn and
 * run exits with the conflict code. The daemon's own timer (the same
 * bound) normally answers first, with the holder in its message. When
 * the daemon goes away meanwhile (killed, restarted by systemd or
 * Kubernetes), run connects again with back-off and queues anew, within
 * the same -w; -n and --fail-fast give up at once instead (exit 69).
 *
 * The command's tree. CMD runs in a process group of its own, so that
 * everything it starts (sh -c 'worker; ...') can be signalled at once.
 * When arbiterctl runs in the foreground of its terminal, that group
 * becomes the terminal's foreground group, so Ctrl-C and Ctrl-\ reach the
 * whole tree from the kernel as they would without arbiterctl; Ctrl-Z
 * stops the tree and then arbiterctl, so the shell sees the job stop, and
 * when Ctrl-C ends CMD arbiterctl ends by SIGINT too, so the shell sees
 * that. The terminal is given back at the end. SIGINT, SIGTERM, SIGHUP and
 * SIGQUIT sent to arbiterctl itself are passed on to the whole group.
 *
 * Losing the lease (revoked by an admin, ttl run out, the daemon gone):
 * SIGTERM (and SIGCONT, should it be stopped) to the whole group, SIGKILL
 * to the group when --grace has passed since, then exit 75 as soon as the
 * group is empty. arbiterctl is a child subreaper, so every orphaned
 * member of the tree becomes its child and its end arrives as SIGCHLD,
 * read through a signalfd in the same poll as the daemon's socket: no
 * sleeping, no polling at intervals. A process that left the group (a
 * daemon that called setsid) is out of reach of both signals, as with any
 * process-group supervisor. Should members outlive SIGKILL (stuck in the
 * kernel), run gives up on them KILL_WAIT_MS later rather than hang.
 *
 * A cluster lease (the arbiter's cluster mode) has a deadline on
 * CLOCK_BOOTTIME, moved later by each Extended the arbiter sends after
 * renewing its etcd session. A timerfd on that clock, in the same poll,
 * fires at the deadline whatever the arbiter does, frozen (SIGSTOP) or cut
 * off: whatever the socket holds by then is read first (a late Extended
 * counts), and if the deadline still stands the lease is lost as above,
 * exit 75. Being on CLOCK_BOOTTIME it also fires on waking from a suspend
 * that outlived the deadline, and arbiterctl checks it again after its
 * own stop (Ctrl-Z) before CMD continues.
 *
 * When CMD itself ends while the lease is held, run exits with its status
 * at once; background processes CMD leaves behind keep running (and keep
 * the lease through the inherited connection), as with flock(1).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"
#include "ctl_run.h"

/* How long past -w the daemon's own timeout answer is awaited before ours
 * is used; well inside the promised bound (-w plus a quarter second). */
#define LATE_MS 50
/* How long members of the group may outlive SIGKILL before run gives up
 * on them (a process in uninterruptible sleep cannot die at once). */
#define KILL_WAIT_MS 5000
/* Between attempts to reach a daemon that is coming back: 50 ms doubling
 * to 1 s, each drawn from its upper half so that clients cut off together
 * do not come back in lockstep (the Python client does the same). */
#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS	 1000

/* The help text keeps its own layout. */
/* clang-format off */
void
ctl_run_usage(FILE *out)
{
	fputs("        Hold a lease on RESOURCE while CMD runs, like flock(1). Exclusive\n"
	      "        (-x) by default, -s for shared. -n fails at once if it is held;\n"
	      "        -w waits at most SECS (fractions allowed), whatever the arbiter\n"
	      "        does, then withdraws the request; both exit with CODE (-E,\n"
	      "        default 1) on conflict or timeout (69 if the arbiter did not\n"
	      "        even answer the connection in time). Otherwise waits forever.\n"
	      "        While waiting (-w or forever) it rides out a restart of the\n"
	      "        arbiter: it connects again (50 ms doubling to 1 s) and queues\n"
	      "        anew, and exits 69 only if the arbiter is not back in time.\n"
	      "        --fail-fast exits 69 at once when the arbiter is gone instead.\n"
	      "        Options may follow RESOURCE too when '--' ends them: CMD is\n"
	      "        what follows '--'.\n"
	      "        CMD inherits the connection, so the lease ends when CMD ends (even\n"
	      "        if arbiterctl is killed), and finds ARBITER_RESOURCE,\n"
	      "        ARBITER_LEASE_ID and ARBITER_TOKEN (the fencing token) in its\n"
	      "        environment. While it waits, the queue position and the holder\n"
	      "        (\"waiting for 'db': position 1, held by pid 4242\"; for a\n"
	      "        cluster resource also \"2 hosts ahead\" in the cluster's queue)\n"
	      "        are shown only when stderr is a terminal, or with -v. --ttl SECS\n"
	      "        gives the lease a ttl that arbiterctl renews while CMD runs. -h,\n"
	      "        --help: this text.\n"
	      "        CMD runs in a process group of its own, the terminal's foreground\n"
	      "        one when arbiterctl has the terminal (Ctrl-C reaches all of it);\n"
	      "        SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to arbiterctl are passed\n"
	      "        on to the group. If the lease is lost (revoked, ttl run out, the\n"
	      "        arbiter gone, or a cluster lease's deadline passed unrenewed) the\n"
	      "        whole group gets SIGTERM, then SIGKILL when --grace SECS (default\n"
	      "        10) have passed, and arbiterctl exits 75 as soon as the group is\n"
	      "        gone. Meanwhile the arbiter may grant RESOURCE again once\n"
	      "        leases.lock_delay_ms has passed (after an unclean end of the\n"
	      "        arbiter itself too): keep that at least the grace, 10000 for the\n"
	      "        default, and the two never overlap. Exits with CMD's status\n"
	      "        (128+N if killed by signal N).\n"
	      "        A cluster lease (the arbiter's [cluster] mode) has a deadline\n"
	      "        that the arbiter moves on while it renews its etcd session;\n"
	      "        arbiterctl keeps it with a timer of its own on CLOCK_BOOTTIME,\n"
	      "        so CMD gets SIGTERM at the deadline (exit 75 as above) even when\n"
	      "        the arbiter is frozen or cut off from etcd and says nothing.\n"
	      "        Another host may get RESOURCE about cluster.safety_margin_ms\n"
	      "        after the deadline: keep --grace short there, and fence writes.\n"
	      "        -v shows how long the lease is valid when granted. A cluster\n"
	      "        resource that etcd cannot serve now (cluster.when_unavailable =\n"
	      "        fail) exits 69.\n",
	      out);
}
/* clang-format on */

static int verbose;

struct run_opts {
	enum arb_mode mode;
	int64_t timeout_ms; /* ARB_WAIT_FOREVER, 0 (-n) or -w */
	int conflict;	    /* -E */
	bool fail_fast;	    /* --fail-fast: no waiting for a restart */
	double ttl, grace;
	const char *resource;
	char **cmd; /* NULL-terminated, from argv */
};

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A poll timeout that reaches due_ns, rounded up so it never wakes early. */
static int
ms_until(uint64_t due_ns)
{
	uint64_t now = mono_ns();

	if (due_ns <= now)
		return 0;
	if (due_ns - now > (uint64_t)INT32_MAX * 1000000)
		return INT32_MAX;
	return (int)((due_ns - now + 999999) / 1000000);
}

/* ------------------------------------------------------------ options */

/*
 * Parse options from v[1..n) (v[0] names the command for getopt's
 * messages); returns the index of the first argument that is not one.
 */
static int
parse_opts(struct run_opts *o, int n, char **v)
{
	static const struct option opts[] = {
	    {"exclusive", no_argument, NULL, 'x'},
	    {"shared", no_argument, NULL, 's'},
	    {"nonblock", no_argument, NULL, 'n'},
	    {"wait", required_argument, NULL, 'w'},
	    {"timeout", required_argument, NULL, 'w'},
	    {"conflict-exit-code", required_argument, NULL, 'E'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"ttl", required_argument, NULL, 't'},
	    {"grace", required_argument, NULL, 'g'},
	    {"fail-fast", no_argument, NULL, 'F'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int ch;

	/* 0 makes glibc start afresh on a new vector; "+" stops at the
	 * first argument that is not an option instead of permuting. */
	optind = 0;
	while ((ch = getopt_long(n, v, "+xsnw:E:vh", opts, NULL)) != -1) {
		switch (ch) {
		case 'x':
			o->mode = ARB_EXCLUSIVE;
			break;
		case 's':
			o->mode = ARB_SHARED;
			break;
		case 'n':
			o->timeout_ms = 0;
			break;
		case 'w':
			o->timeout_ms =
			    (int64_t)(parse_secs(optarg, "-w") * 1000 + 0.5);
			break;
		case 'E': {
			char *end;
			long val = strtol(optarg, &end, 10);

			if (*end != '\0' || val < 0 || val > 255)
				die(EXIT_USAGE,
				    "-E: '%s' is not an exit code (0-255)",
				    optarg);
			o->conflict = (int)val;
			break;
		}
		case 'v':
			verbose = 1;
			break;
		case 't':
			o->ttl = parse_secs(optarg, "--ttl");
			break;
		case 'g':
			o->grace = parse_secs(optarg, "--grace");
			break;
		case 'F':
			o->fail_fast = true;
			break;
		case 'h':
			(void)command_help(stdout, "run");
			exit(0);
		default:
			usage(stderr);
			exit(EXIT_USAGE);
		}
	}
	return optind;
}

/*
 * run [OPTIONS] RESOURCE [OPTIONS] -- CMD [ARG...], or the flock(1) form
 * run [OPTIONS] RESOURCE CMD [ARG...]. When RESOURCE is followed by '--'
 * or by an option, everything up to the first '--' is options and CMD is
 * what follows it; when it is followed by a plain word, CMD starts there
 * and a later '--' is CMD's own (run db sh -c 'x' -- y).
 */
static void
parse_args(struct run_opts *o, int argc, char **argv)
{
	static const char use[] = "usage: arbiterctl run [-x|-s] [-n|-w SECS] "
				  "RESOURCE -- CMD [ARG...]";
	char **v = calloc((size_t)argc + 1, sizeof *v);
	int dd = 1, n, k, rest;

	if (v == NULL)
		die(EXIT_SOFTWARE, "run: out of memory");
	while (dd < argc && strcmp(argv[dd], "--") != 0)
		dd++;
	/* getopt never sees the '--' nor what follows it. */
	v[0] = "arbiterctl run";
	for (int i = 1; i < dd; i++)
		v[i] = argv[i];
	n = dd;
	k = parse_opts(o, n, v);
	if (k >= n) {
		free(v);
		die(EXIT_USAGE, "run: missing RESOURCE%s; %s",
		    dd < argc ? " before '--'" : "", use);
	}
	o->resource = argv[k];
	rest = k + 1;
	if (dd < argc && (rest == dd || argv[rest][0] == '-')) {
		/* Options between RESOURCE and '--'. */
		v[0] = "arbiterctl run";
		for (int i = rest; i < dd; i++)
			v[1 + i - rest] = argv[i];
		n = 1 + dd - rest;
		k = parse_opts(o, n, v);
		if (k < n) {
			const char *bad = v[k];

			free(v);
			die(EXIT_USAGE,
			    "run: unexpected '%s' between '%s' and '--': "
			    "put CMD after '--'; %s",
			    bad, o->resource, use);
		}
		rest = dd + 1;
	}
	free(v);
	if (rest >= argc)
		die(EXIT_USAGE, "run: missing the command to run after '%s%s'",
		    o->resource, dd < argc ? " --" : "");
	o->cmd = &argv[rest];
	if (o->ttl > 0 && o->ttl < 0.1)
		die(EXIT_USAGE, "--ttl: at least 0.1 seconds");
}

/* ------------------------------------------------------------ waiting */

struct wait_view {
	bool show;
	arb_client *c; /* the connection whose Queued is being shown */
};

static void
on_queued(void *ctx, const char *resource, uint32_t position,
	  uint32_t holder_pid, const char *holder_name)
{
	struct wait_view *v = ctx;
	uint32_t hosts = v->c != NULL ? arb_hosts_ahead(v->c) : 0;
	char held[300] = "", ahead[48] = "";

	if (!v->show)
		return;
	if (holder_pid != 0)
		snprintf(held, sizeof held, ", held by pid %u (%.255s)",
			 holder_pid, holder_name[0] ? holder_name : "unnamed");
	/* A cluster resource: the position is among this host's waiters. */
	if (hosts > 0)
		snprintf(ahead, sizeof ahead, ", %u host%s ahead", hosts,
			 hosts == 1 ? "" : "s");
	fprintf(stderr, "arbiterctl: waiting for '%s': position %u%s%s\n",
		resource, position, held, ahead);
}

/* The daemon's socket path, from the connection itself. */
static void
peer_path(arb_client *c, char *buf, size_t len)
{
	struct sockaddr_un sa;
	socklen_t sl = sizeof sa;

	memset(&sa, 0, sizeof sa);
	if (getpeername(arb_fd(c), (struct sockaddr *)&sa, &sl) < 0 ||
	    sa.sun_path[0] == '\0')
		snprintf(buf, len, "%s", "its socket");
	else
		snprintf(buf, len, "%.*s", (int)sizeof sa.sun_path,
			 sa.sun_path);
}

/*
 * Acquire with our own deadline: deadline_ns 0 waits as long as the daemon
 * takes. On a deadline the request is withdrawn and -ARB_ETIMEOUT returned
 * with the message in msg (the daemon's own errors leave msg empty and
 * are read with arb_last_error()).
 */
static int
acquire_bounded(arb_client *c, const struct run_opts *o, int64_t timeout_ms,
		uint64_t deadline_ns, const struct arb_acquire_opts *ao,
		struct arb_lease *lease, char *msg, size_t msglen)
{
	uint64_t req, t0 = mono_ns();
	int rc;

	msg[0] = '\0';
	((struct wait_view *)ao->ctx)->c = c;
	rc = arb_acquire_async(c, o->resource, o->mode, timeout_ms, ao, &req);
	if (rc < 0)
		return rc;
	for (;;) {
		struct pollfd p = {.fd = arb_fd(c), .events = POLLIN};
		struct arb_event ev;
		char path[sizeof((struct sockaddr_un *)0)->sun_path + 1];

		while ((rc = arb_next_event(c, &ev)) > 0) {
			if (ev.request_id != req)
				continue;
			switch (ev.kind) {
			case ARB_EV_GRANTED:
				*lease = ev.lease;
				return 0;
			case ARB_EV_QUEUED:
				if (ao->on_queued != NULL)
					ao->on_queued(
					    ao->ctx, o->resource, ev.position,
					    ev.holder_pid, ev.message);
				break;
			case ARB_EV_FAILED:
				return ev.error;
			default:
				break;
			}
		}
		if (rc < 0)
			return rc;
		rc = poll(&p, 1, deadline_ns ? ms_until(deadline_ns) : -1);
		if (rc < 0 && errno != EINTR)
			return -errno;
		if (rc != 0 || (deadline_ns && mono_ns() < deadline_ns))
			continue;
		/* Withdraw it; should the grant cross this, closing the
		 * connection ends the lease as well. */
		(void)arb_cancel(c, req);
		peer_path(c, path, sizeof path);
		snprintf(msg, msglen,
			 "timed out after %" PRIu64
			 " ms waiting for '%s' (the arbiter at %s did not "
			 "answer in time: is it stopped or overloaded?); the "
			 "request was withdrawn",
			 (mono_ns() - t0) / 1000000, o->resource, path);
		return timeout_ms == 0 ? -ETIMEDOUT : -ARB_ETIMEOUT;
	}
}

/*
 * True for a failure that a daemon being restarted explains: no socket
 * yet, nothing listening on it, a full listen queue, or the connection
 * lost (or the daemon stopping) while the request waited.
 */
static bool
daemon_away(int rc)
{
	return rc == -ENOENT || rc == -ECONNREFUSED || rc == -EAGAIN ||
	       rc == -ECONNRESET || rc == -EPIPE || rc == -ARB_ECONNLOST ||
	       rc == -ARB_ESHUTTINGDOWN;
}

/* The next back-off delay in ms, drawn from the upper half of *step,
 * which then doubles up to BACKOFF_MAX_MS. */
static int
backoff_ms(int *step)
{
	int d = *step / 2 + (int)(random() % (*step / 2 + 1));

	*step = *step * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *step * 2;
	return d;
}

/*
 * Connect and acquire, riding out a restart of the daemon: while it is
 * away (see daemon_away) connect again with back-off and queue anew, until
 * the monotonic deadline_ns (0: none). -n and --fail-fast make one attempt.
 * Returns as acquire_bounded, with *c connected (or NULL when the last
 * attempt to connect failed: its text is then in msg).
 */
static int
acquire_riding(arb_client **c, const char *name, const struct run_opts *o,
	       uint64_t t0, uint64_t deadline_ns,
	       const struct arb_acquire_opts *ao, struct arb_lease *lease,
	       bool show, char *msg, size_t msglen)
{
	char path[sizeof((struct sockaddr_un *)0)->sun_path + 1];
	int step = BACKOFF_FIRST_MS, rc;
	bool told = false;

	srandom((unsigned)getpid() ^ (unsigned)mono_ns());
	if (socket_path != NULL)
		snprintf(path, sizeof path, "%s", socket_path);
	else
		arb_socket_path(path, sizeof path);

	for (;;) {
		int64_t left = o->timeout_ms;
		int bound = io_timeout_ms;

		if (deadline_ns != 0 && *c == NULL && o->timeout_ms != 0) {
			/* A new connect gets what is left of -w. */
			int until = ms_until(deadline_ns);

			if (bound <= 0 || until < bound)
				bound = until > 0 ? until : 1;
		}
		rc = arb_connect_timeout(c, socket_path, name, bound);
		if (rc < 0) {
			*c = NULL;
			snprintf(msg, msglen, "%s", arb_connect_error());
		} else {
			if (o->timeout_ms > 0) {
				left = o->timeout_ms -
				       (int64_t)((mono_ns() - t0) / 1000000);
				if (left <= 0)
					left = 1;
			}
			rc = acquire_bounded(*c, o, left, deadline_ns, ao,
					     lease, msg, msglen);
			if (rc < 0 && daemon_away(rc) && msg[0] == '\0')
				snprintf(msg, msglen, "%s", arb_last_error(*c));
		}
		if (rc == 0 || !daemon_away(rc) || o->fail_fast ||
		    o->timeout_ms == 0)
			return rc;
		if (*c != NULL) {
			arb_close(*c);
			*c = NULL;
		}
		int wait = backoff_ms(&step);

		if (deadline_ns != 0) {
			int until = ms_until(deadline_ns);

			if (until <= 0) {
				char why[300];

				snprintf(why, sizeof why, "%.299s", msg);
				snprintf(
				    msg, msglen,
				    "gave up waiting for '%.255s': the arbiter "
				    "at %s went away and was not back "
				    "within -w (last attempt: %s)",
				    o->resource, path, why);
				return -ETIMEDOUT;
			}
			if (wait > until)
				wait = until;
		}
		if (show && !told) {
			fprintf(stderr,
				"arbiterctl: the arbiter at %s is away (%s); "
				"waiting for it to come back\n",
				path, msg);
			told = true;
		}
		(void)poll(NULL, 0, wait);
	}
}

/* ------------------------------------------------------------ the tree */

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

struct run {
	arb_client *c;
	const char *resource;
	struct arb_lease lease;
	double grace;
	pid_t pg;	      /* CMD's pid, and its process group */
	int sigfd;	      /* SIGCHLD and the forwarded signals */
	int tty;	      /* the terminal handed to CMD's group, or -1 */
	sigset_t oldmask;     /* to restore in CMD */
	bool cmd_done;	      /* CMD has been reaped */
	int cmd_status;	      /* its exit status, 128+N for a signal */
	int cmd_sig;	      /* N when a signal ended it, else 0 */
	bool lost;	      /* the lease is gone; CMD is being stopped */
	bool killed;	      /* SIGKILL sent to the group */
	uint64_t next_renew;  /* ns: the next renewal of a ttl lease, or 0 */
	uint64_t valid_until; /* ns: when a ttl lease runs out, unrenewed */
	int timerfd;	      /* CLOCK_BOOTTIME: a cluster lease's deadline */
	uint64_t armed;	      /* the deadline it is armed for; 0: none */
	uint64_t kill_at;     /* ns: when SIGKILL goes out (lost) */
	uint64_t give_up;     /* ns: when members left after SIGKILL are left */
};

static int
status_of(int wstatus)
{
	if (WIFEXITED(wstatus))
		return WEXITSTATUS(wstatus);
	if (WIFSIGNALED(wstatus))
		return 128 + WTERMSIG(wstatus);
	return EXIT_SOFTWARE;
}

/*
 * The controlling terminal when this process is in its foreground (then
 * CMD's group gets it), else -1: in the background, with no terminal, or
 * when the foreground is someone else's.
 */
static int
foreground_tty(void)
{
	int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	if (tcgetpgrp(fd) != getpgrp()) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Block SIGCHLD, SIGTTOU and the forwarded signals, and read the first
 * and the last through a signalfd. SIGTTOU stays blocked so that this
 * process may hand the terminal over and back, and write to it, from the
 * background. A signal this process was started ignoring is not
 * forwarded: CMD inherits that and ignores it too.
 */
static void
block_signals(struct run *r)
{
	sigset_t set, rd;

	sigemptyset(&set);
	sigemptyset(&rd);
	sigaddset(&rd, SIGCHLD);
	for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
		struct sigaction sa;

		if (sigaction(forwarded[i], NULL, &sa) == 0 &&
		    sa.sa_handler == SIG_IGN)
			continue;
		sigaddset(&rd, forwarded[i]);
	}
	set = rd;
	sigaddset(&set, SIGTTOU);
	if (sigprocmask(SIG_BLOCK, &set, &r->oldmask) < 0)
		die(EXIT_SOFTWARE, "run: sigprocmask: %s", strerror(errno));
	r->sigfd = signalfd(-1, &rd, SFD_NONBLOCK | SFD_CLOEXEC);
	if (r->sigfd < 0)
		die(EXIT_SOFTWARE,
		    "run: signalfd: %s (arbiterctl needs Linux 2.6.27 or "
		    "later)",
		    strerror(errno));
}

/*
 * Start CMD with the connection. Before CMD runs, the arbiter is told
 * that the connection is CMD's now (Handover), so that status names CMD's
 * pid as the holder from CMD's first instruction on (the kernel gave the
 * arbiter ours at connect). The child waits for that on a pipe, one round
 * trip (a hung arbiter delays CMD by at most -t); to an arbiter that
 * predates Handover nothing is sent, and CMD runs at once.
 */
static void
spawn(struct run *r, char **cmd)
{
	pid_t pid;
	int go[2];
	char b;

	/* Orphans of CMD's tree become our children, so their end is seen. */
	(void)prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	if (pipe2(go, O_CLOEXEC) < 0)
		die(EXIT_SOFTWARE, "run: pipe: %s", strerror(errno));
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		die(EXIT_SOFTWARE, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* Both sides set the group and the terminal, so neither
		 * the first signal nor CMD's first read can race it. */
		(void)setpgid(0, 0);
		if (r->tty >= 0)
			(void)tcsetpgrp(r->tty, getpid());
		sigprocmask(SIG_SETMASK, &r->oldmask, NULL);
		/* End of file: the arbiter knows, or arbiterctl is gone. */
		close(go[1]);
		while (read(go[0], &b, 1) < 0 && errno == EINTR)
			;
		execvp(cmd[0], cmd);
		fprintf(stderr, "arbiterctl: cannot run %s: %s\n", cmd[0],
			strerror(errno));
		_exit(errno == ENOENT ? EXIT_NOTFOUND : EXIT_NOEXEC);
	}
	(void)setpgid(pid, pid);
	if (r->tty >= 0)
		(void)tcsetpgrp(r->tty, pid);
	r->pg = pid;
	close(go[0]);
	(void)arb_handover(r->c, (uint32_t)pid);
	close(go[1]);
}

/* Give the terminal back if CMD's group (or nobody alive) still has it. */
static void
restore_tty(struct run *r)
{
	pid_t fg;

	if (r->tty < 0)
		return;
	fg = tcgetpgrp(r->tty);
	if (fg > 0 && fg != getpgrp() &&
	    (fg == r->pg || (kill(-fg, 0) < 0 && errno == ESRCH)))
		(void)tcsetpgrp(r->tty, getpgrp());
	close(r->tty);
	r->tty = -1;
}

static void read_daemon(struct run *r);
static void check_deadline(struct run *r);

/*
 * Ctrl-Z stopped CMD's group: take the terminal back and stop too, so the
 * shell sees the job stop. When continued (fg or bg), continue the group,
 * handing it the terminal again if we are in the foreground; but first
 * read what the daemon said meanwhile, so a lease lost while stopped is
 * acted on before CMD runs on.
 */
static void
suspend(struct run *r)
{
	struct pollfd p = {.fd = arb_fd(r->c), .events = POLLIN};

	if (tcgetpgrp(r->tty) == r->pg)
		(void)tcsetpgrp(r->tty, getpgrp());
	(void)kill(getpid(), SIGSTOP);
	if (tcgetpgrp(r->tty) == getpgrp())
		(void)tcsetpgrp(r->tty, r->pg);
	if (poll(&p, 1, 0) > 0)
		read_daemon(r);
	check_deadline(r);
	(void)killpg(r->pg, SIGCONT);
}

static void
reap(struct run *r)
{
	int st, flags = WNOHANG;
	pid_t p;

	if (r->tty >= 0 && !r->lost)
		flags |= WUNTRACED;
	while ((p = waitpid(-1, &st, flags)) != 0) {
		if (p < 0) {
			if (errno == EINTR)
				continue;
			break; /* ECHILD: nobody left */
		}
		if (p != r->pg)
			continue; /* an orphan of CMD's tree */
		if (WIFSTOPPED(st)) {
			suspend(r);
			continue;
		}
		r->cmd_done = true;
		r->cmd_status = status_of(st);
		r->cmd_sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
	}
}

static void
read_signals(struct run *r)
{
	struct signalfd_siginfo si;

	while (read(r->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGCHLD)
			continue; /* reaped below, all at once */
		/* Until CMD is reaped its group cannot vanish. */
		if (!r->cmd_done)
			(void)killpg(r->pg, (int)si.ssi_signo);
	}
	reap(r);
}

static bool
group_gone(const struct run *r)
{
	return r->cmd_done && killpg(r->pg, 0) < 0 && errno == ESRCH;
}

static void
lose(struct run *r, const char *why)
{
	fprintf(stderr,
		"arbiterctl: lease on '%s' lost (%s); sending SIGTERM to "
		"process group %d of the command, SIGKILL in %g s\n",
		r->resource, why, (int)r->pg, r->grace);
	r->lost = true;
	r->kill_at = mono_ns() + (uint64_t)(r->grace * 1e9);
	if (!r->cmd_done) {
		(void)killpg(r->pg, SIGTERM);
		(void)killpg(r->pg, SIGCONT); /* a stopped tree must see it */
	}
}

/* After the loss: SIGKILL at the grace, then a bound on the stragglers. */
static int
lost_tick(struct run *r)
{
	uint64_t now = mono_ns();

	if (!r->killed && now >= r->kill_at) {
		fprintf(stderr,
			"arbiterctl: the command's process group %d still "
			"runs %g s after SIGTERM (--grace); sending SIGKILL\n",
			(int)r->pg, r->grace);
		(void)killpg(r->pg, SIGKILL);
		r->killed = true;
		r->give_up = now + (uint64_t)KILL_WAIT_MS * 1000000;
	} else if (r->killed && now >= r->give_up) {
		fprintf(stderr,
			"arbiterctl: processes of group %d outlived SIGKILL "
			"by %d ms (stuck in the kernel? see ps -g %d); "
			"exiting without them\n",
			(int)r->pg, KILL_WAIT_MS, (int)r->pg);
		return EXIT_REVOKED;
	}
	return -1;
}

/*
 * Arm the timer for the lease's deadline as the library knows it now (an
 * Extended moves it): absolute, on CLOCK_BOOTTIME, the daemon's clock.
 */
static void
arm_deadline(struct run *r)
{
	uint64_t until = arb_lease_valid_until(r->c, r->lease.id);
	struct itimerspec its = {0};

	if (r->timerfd < 0 || r->lost || until == 0 || until == r->armed)
		return;
	its.it_value.tv_sec = (time_t)(until / 1000000000u);
	its.it_value.tv_nsec = (long)(until % 1000000000u);
	if (timerfd_settime(r->timerfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
		die(EXIT_SOFTWARE, "run: timerfd_settime: %s", strerror(errno));
	r->armed = until;
}

/* Revoked events and a lost connection; sets r->lost. */
static void
read_daemon(struct run *r)
{
	struct arb_event ev;
	char why[600];
	int rc;

	while ((rc = arb_next_event(r->c, &ev)) > 0) {
		if (ev.kind == ARB_EV_REVOKED && ev.lease.id == r->lease.id) {
			/* The daemon's words name the reason; its name
			 * only when it sent none. */
			snprintf(why, sizeof why, "%s",
				 ev.message[0] ? ev.message
					       : arb_reason_name(ev.reason));
			lose(r, why);
			return;
		}
	}
	if (rc < 0) {
		snprintf(why, sizeof why, "%s", arb_last_error(r->c));
		lose(r, why);
		return;
	}
	arm_deadline(r);
}

/*
 * A cluster lease past its deadline is lost, whatever the daemon says or
 * does not say: it may be frozen, or its host cut off from etcd, and
 * another host may be granted the resource once the deadline has passed.
 * What the socket holds is read first: an Extended that came in time
 * counts.
 */
static void
check_deadline(struct run *r)
{
	uint64_t now, until;
	uint64_t exp;

	if (r->lost || r->armed == 0)
		return;
	if (r->timerfd >= 0)
		(void)read(r->timerfd, &exp, sizeof exp); /* reset it */
	if (arb_boottime_ns() < r->armed)
		return;
	read_daemon(r);
	if (r->lost)
		return;
	now = arb_boottime_ns();
	until = arb_lease_valid_until(r->c, r->lease.id);
	if (until > now) {
		arm_deadline(r);
		return;
	}
	lose(r, "its cluster deadline passed without a renewal from the "
		"arbiter: is arbiterd frozen, or cut off from etcd? (another "
		"host may hold the resource now)");
}

/*
 * Renew a ttl lease, a third of its ttl after the last renewal. An answer
 * that does not come within -t is no loss by itself (a busy arbiter): the
 * lease holds until its ttl has run out since the last renewal that was
 * answered, and is tried again every tenth of the ttl meanwhile. A
 * refusal (expired, revoked) is a loss.
 */
static void
renew(struct run *r)
{
	uint64_t sent = mono_ns(), ttl = r->lease.ttl_ms * 1000000;
	int rc = arb_renew(r->c, r->lease.id, 0);
	char why[700];

	if (rc == 0) {
		r->valid_until = sent + ttl;
		r->next_renew = sent + ttl / 3;
		return;
	}
	if (rc == -ETIMEDOUT && mono_ns() < r->valid_until) {
		r->next_renew = mono_ns() + ttl / 10;
		if (r->next_renew > r->valid_until)
			r->next_renew = r->valid_until;
		return;
	}
	if (rc == -ETIMEDOUT)
		snprintf(why, sizeof why,
			 "no renewal was answered within its ttl of %" PRIu64
			 " ms: %s",
			 r->lease.ttl_ms, arb_last_error(r->c));
	else
		snprintf(why, sizeof why, "renewing it failed: %s",
			 arb_last_error(r->c));
	lose(r, why);
}

/*
 * Wait for CMD in one poll with the daemon's socket: renew a ttl lease at
 * a third of its ttl, pass signals on, and stop the tree when the lease
 * is lost. Returns the exit status.
 */
static int
supervise(struct run *r)
{
	if (r->lease.ttl_ms > 0) {
		r->valid_until = mono_ns() + r->lease.ttl_ms * 1000000;
		r->next_renew = mono_ns() + r->lease.ttl_ms / 3 * 1000000;
	}
	arm_deadline(r);
	for (;;) {
		struct pollfd p[3] = {
		    {.fd = r->sigfd, .events = POLLIN},
		    {.fd = arb_fd(r->c), .events = POLLIN},
		    {.fd = r->armed ? r->timerfd : -1, .events = POLLIN},
		};
		int timeout = -1, n;

		/* First on every wake-up: the deadline, whatever woke us. */
		check_deadline(r);

		if (!r->lost && r->cmd_done)
			return r->cmd_status;
		if (r->lost && group_gone(r))
			return EXIT_REVOKED;
		if (r->lost) {
			timeout = ms_until(r->killed ? r->give_up : r->kill_at);
		} else if (r->next_renew) {
			timeout = ms_until(r->next_renew);
		}
		/* Once lost, the socket has nothing more to say. */
		n = poll(p, r->lost ? 1 : 3, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die(EXIT_SOFTWARE, "run: poll: %s", strerror(errno));
		}
		if (p[0].revents & POLLIN) {
			read_signals(r);
			continue; /* CMD's end wins over news of the lease */
		}
		if (r->lost) {
			int rc = lost_tick(r);

			if (rc >= 0)
				return rc;
			continue;
		}
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			read_daemon(r);
			continue;
		}
		if (p[2].revents & POLLIN)
			continue; /* check_deadline() at the top */
		if (r->next_renew && mono_ns() >= r->next_renew)
			renew(r);
	}
}

/* ------------------------------------------------------------ run */

int
ctl_run(int argc, char **argv)
{
	struct run_opts o = {.mode = ARB_EXCLUSIVE,
			     .timeout_ms = ARB_WAIT_FOREVER,
			     .conflict = 1,
			     .grace = 10};
	struct arb_acquire_opts ao = {.lock_delay_ms = -1};
	struct wait_view view = {.show = false};
	struct run r = {.sigfd = -1, .tty = -1, .timerfd = -1};
	uint64_t t0 = mono_ns(), deadline = 0, until;
	char name[65], buf[32], msg[800];
	int rc, status;
	bool on_tty;

	parse_args(&o, argc, argv);
	/*
	 * -w bounds the whole wait, the connection's handshake included;
	 * the daemon gets what is left of it and answers first when it can.
	 * -n is one question: it gets the -t bound like any other.
	 */
	if (o.timeout_ms > 0) {
		int64_t bound = o.timeout_ms + LATE_MS;

		if (bound < INT32_MAX &&
		    (io_timeout_ms <= 0 || bound < io_timeout_ms))
			io_timeout_ms = (int)bound;
		deadline = t0 + (uint64_t)bound * 1000000;
	} else if (o.timeout_ms == 0 && io_timeout_ms > 0) {
		deadline = t0 + (uint64_t)io_timeout_ms * 1000000;
	}
	snprintf(name, sizeof name, "arbiterctl:%s", o.cmd[0]);
	view.show = verbose || isatty(STDERR_FILENO);
	ao.on_queued = on_queued;
	ao.ctx = &view;
	ao.position_updates = view.show;
	ao.ttl_ms = (uint64_t)(o.ttl * 1000 + 0.5);
	rc = acquire_riding(&r.c, name, &o, t0, deadline, &ao, &r.lease,
			    view.show, msg, sizeof msg);
	if (r.c == NULL)
		die(rc == -ETIMEDOUT || daemon_away(rc) ? EXIT_UNAVAIL
							: exit_for(rc),
		    "%s", msg);
	if (rc == -ARB_EWOULDBLOCK || rc == -ARB_ETIMEOUT) {
		fprintf(stderr, "arbiterctl: %s\n",
			msg[0] ? msg : arb_last_error(r.c));
		arb_close(r.c);
		return o.conflict;
	}
	if (rc < 0) {
		fprintf(stderr, "arbiterctl: cannot lock '%s': %s\n",
			o.resource, msg[0] ? msg : arb_last_error(r.c));
		arb_close(r.c);
		return rc == -ETIMEDOUT ? EXIT_UNAVAIL : exit_for(rc);
	}
	until = arb_lease_valid_until(r.c, r.lease.id);
	if (until != 0) {
		/* A cluster lease: its deadline is kept by our own timer. */
		r.timerfd =
		    timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK | TFD_CLOEXEC);
		if (r.timerfd < 0)
			die(EXIT_SOFTWARE,
			    "run: timerfd_create(CLOCK_BOOTTIME): %s "
			    "(arbiterctl needs Linux 3.15 or later for a "
			    "cluster lease)",
			    strerror(errno));
	}
	if (until != 0 && !arb_lease_valid(r.c, r.lease.id)) {
		fprintf(stderr,
			"arbiterctl: the cluster lease on '%s' passed its "
			"deadline before %s could start: is arbiterd frozen, "
			"or cut off from etcd?\n",
			o.resource, o.cmd[0]);
		arb_close(r.c);
		return EXIT_REVOKED;
	}
	if (verbose) {
		char valid[64] = "";

		if (until != 0)
			snprintf(valid, sizeof valid,
				 ", cluster lease valid for %.3f s",
				 (double)(int64_t)(until - arb_boottime_ns()) /
				     1e9);
		fprintf(stderr,
			"arbiterctl: got '%s' (lease %" PRIu64
			", token %" PRIu64 ", waited %.3f s%s)\n",
			o.resource, r.lease.id, r.lease.token,
			r.lease.waited_us / 1e6, valid);
	}

	setenv("ARBITER_RESOURCE", o.resource, 1);
	snprintf(buf, sizeof buf, "%" PRIu64, r.lease.id);
	setenv("ARBITER_LEASE_ID", buf, 1);
	snprintf(buf, sizeof buf, "%" PRIu64, r.lease.token);
	setenv("ARBITER_TOKEN", buf, 1);
	snprintf(buf, sizeof buf, "%d", arb_fd(r.c));
	setenv("ARBITER_FD", buf, 1);
	r.resource = o.resource;
	r.grace = o.grace;
	r.tty = foreground_tty();
	block_signals(&r);
	/* The command keeps the connection, and with it the lease. */
	arb_set_inherit(r.c, true);
	spawn(&r, o.cmd);
	arb_set_inherit(r.c, false);
	read_daemon(&r); /* a Revoked kept while Handover was answered */
	status = supervise(&r);
	on_tty = r.tty >= 0;
	restore_tty(&r);
	close(r.sigfd);
	if (r.timerfd >= 0)
		close(r.timerfd);
	if (!r.lost)
		(void)arb_release(r.c, r.lease.id); /* closing would do it */
	arb_close(r.c);
	if (on_tty && !r.lost && r.cmd_sig == SIGINT) {
		/* Ctrl-C ended CMD: end the same way, so that the shell
		 * script that ran us stops as it would without us. */
		sigset_t set;

		fflush(NULL);
		signal(SIGINT, SIG_DFL);
		sigemptyset(&set);
		sigaddset(&set, SIGINT);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		raise(SIGINT);
	}
	return status;
}
