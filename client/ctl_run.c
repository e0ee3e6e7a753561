/*
 * arbiterctl run: hold a lease while a command runs, like flock(1). The
 * command inherits the connection that holds the lease, so the lease lives
 * exactly as long as the command, even if arbiterctl itself is killed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arbiter.h"
#include "ctl_run.h"

/* Exit codes of run besides the command's own (see usage()). */
#define EXIT_USAGE    64  /* bad command line */
#define EXIT_SOFTWARE 70  /* the daemon refused for another reason */
#define EXIT_REVOKED  75  /* the lease was revoked under the command */
#define EXIT_NOEXEC   126 /* command found but not executable */
#define EXIT_NOTFOUND 127 /* command not found */

static int verbose;

/* The help text keeps its own layout. */
/* clang-format off */
void
ctl_run_usage(FILE *out)
{
	fputs("  run [-x|-s] [-n | -w SECS] [-E CODE] [-v] [--ttl SECS] RESOURCE -- CMD [ARG...]\n"
	      "        Hold a lease on RESOURCE while CMD runs, like flock(1). Exclusive\n"
	      "        (-x) by default, -s for shared. -n fails at once if it is held;\n"
	      "        -w waits at most SECS (fractions allowed); both exit with CODE\n"
	      "        (-E, default 1) on conflict or timeout. Otherwise waits forever.\n"
	      "        CMD inherits the connection, so the lease ends when CMD ends (even\n"
	      "        if arbiterctl is killed), and finds ARBITER_RESOURCE,\n"
	      "        ARBITER_LEASE_ID and ARBITER_TOKEN (the fencing token) in its\n"
	      "        environment. -v (or a terminal on stderr) shows the queue position\n"
	      "        and the holder while waiting. --ttl SECS gives the lease a ttl that\n"
	      "        arbiterctl renews while CMD runs; if the lease is revoked anyway\n"
	      "        CMD gets SIGTERM, then SIGKILL after --grace SECS (default 10),\n"
	      "        and arbiterctl exits 75. Exits with CMD's status (128+N if killed\n"
	      "        by signal N).\n",
	      out);
}
/* clang-format on */

struct wait_view {
	bool show;
};

static void
on_queued(void *ctx, const char *resource, uint32_t position,
	  uint32_t holder_pid, const char *holder_name)
{
	struct wait_view *v = ctx;

	if (!v->show)
		return;
	if (holder_pid != 0)
		fprintf(
		    stderr,
		    "arbiterctl: waiting for '%s': position %u, held by pid "
		    "%u (%s)\n",
		    resource, position, holder_pid,
		    holder_name[0] ? holder_name : "unnamed");
	else
		fprintf(stderr, "arbiterctl: waiting for '%s': position %u\n",
			resource, position);
}

static int
pidfd_open_child(pid_t pid)
{
#ifdef SYS_pidfd_open
	return (int)syscall(SYS_pidfd_open, pid, 0);
#else
	(void)pid;
	errno = ENOSYS;
	return -1;
#endif
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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
 * Wait for the child. Without a ttl the parent only waits; with one it
 * renews at a third of the ttl and watches the socket for Revoked.
 */
static int
supervise(arb_client *c, pid_t child, const struct arb_lease *lease,
	  double grace)
{
	int pidfd = pidfd_open_child(child), wstatus = 0;
	uint64_t next_renew = 0, kill_at = 0;
	bool revoked = false, sent_kill = false;

	if (lease->ttl_ms > 0)
		next_renew =
		    mono_ms() + lease->ttl_ms / 3; /* arb_keepalive's */
	for (;;) {
		struct pollfd p[2] = {
		    {.fd = arb_fd(c), .events = POLLIN},
		    {.fd = pidfd, .events = POLLIN},
		};
		int timeout = -1, n;
		uint64_t now = mono_ms(), due = 0;

		if (pidfd < 0) {
			/* No pidfd (old kernel): plain blocking wait, no
			 * renewing; documented limitation. */
			while (waitpid(child, &wstatus, 0) < 0 &&
			       errno == EINTR)
				;
			return status_of(wstatus);
		}
		if (!revoked && next_renew)
			due = next_renew;
		if (revoked && !sent_kill)
			due = kill_at;
		if (due)
			timeout = due > now ? (int)(due - now) : 0;
		n = poll(p, revoked ? 0 : 2, timeout);
		if (revoked) {
			/* Only the child matters now. */
			struct pollfd q = {.fd = pidfd, .events = POLLIN};

			n = poll(&q, 1, timeout);
			if (n > 0) {
				waitpid(child, &wstatus, 0);
				close(pidfd);
				return EXIT_REVOKED;
			}
			if (n == 0 && !sent_kill) {
				kill(child, SIGKILL);
				sent_kill = true;
			}
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (p[1].revents & POLLIN) {
			while (waitpid(child, &wstatus, 0) < 0 &&
			       errno == EINTR)
				;
			close(pidfd);
			return status_of(wstatus);
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			struct arb_event ev;
			char why[600] = "";
			int rc;

			while ((rc = arb_next_event(c, &ev)) > 0) {
				if (ev.kind == ARB_EV_REVOKED &&
				    ev.lease.id == lease->id) {
					revoked = true;
					snprintf(why, sizeof why, "%s",
						 ev.message);
				}
			}
			if (rc < 0 && !revoked) {
				revoked = true; /* the daemon is gone */
				snprintf(why, sizeof why, "%s",
					 arb_last_error(c));
			}
			if (revoked) {
				fprintf(stderr,
					"arbiterctl: lease on '%s' lost (%s); "
					"sending SIGTERM to pid %d\n",
					getenv("ARBITER_RESOURCE"), why,
					(int)child);
				kill(child, SIGTERM);
				kill_at = mono_ms() + (uint64_t)(grace * 1000);
			}
			continue;
		}
		if (next_renew && mono_ms() >= next_renew) {
			int64_t rc = arb_keepalive(c);

			if (rc < -1) {
				fprintf(
				    stderr,
				    "arbiterctl: renewing the lease failed: "
				    "%s; sending SIGTERM to pid %d\n",
				    arb_last_error(c), (int)child);
				revoked = true;
				kill(child, SIGTERM);
				kill_at = mono_ms() + (uint64_t)(grace * 1000);
				continue;
			}
			/* -1: no ttl lease left to renew; never spin on 0. */
			next_renew =
			    rc < 0 ? 0
				   : mono_ms() + (rc > 0 ? (uint64_t)rc : 1);
		}
	}
}

int
ctl_run(int argc, char **argv)
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
	    {NULL, 0, NULL, 0},
	};
	enum arb_mode mode = ARB_EXCLUSIVE;
	int64_t timeout = ARB_WAIT_FOREVER;
	int conflict = 1, ch, rc, status;
	double ttl = 0, grace = 10;
	struct arb_acquire_opts ao = {.lock_delay_ms = -1};
	struct wait_view view = {.show = false};
	struct arb_lease lease;
	const char *resource;
	char name[65], buf[32];
	arb_client *c;
	pid_t pid;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "+xsnw:E:v", opts, NULL)) != -1) {
		switch (ch) {
		case 'x':
			mode = ARB_EXCLUSIVE;
			break;
		case 's':
			mode = ARB_SHARED;
			break;
		case 'n':
			timeout = 0;
			break;
		case 'w':
			timeout =
			    (int64_t)(parse_secs(optarg, "-w") * 1000 + 0.5);
			break;
		case 'E': {
			char *end;
			long v = strtol(optarg, &end, 10);

			if (*end != '\0' || v < 0 || v > 255)
				die(EXIT_USAGE,
				    "-E: '%s' is not an exit code "
				    "(0-255)",
				    optarg);
			conflict = (int)v;
			break;
		}
		case 'v':
			verbose = 1;
			break;
		case 't':
			ttl = parse_secs(optarg, "--ttl");
			break;
		case 'g':
			grace = parse_secs(optarg, "--grace");
			break;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc)
		die(EXIT_USAGE,
		    "run: missing RESOURCE; usage: arbiterctl run "
		    "[-x|-s] [-n|-w SECS] RESOURCE -- CMD [ARG...]");
	resource = argv[optind++];
	if (optind < argc && strcmp(argv[optind], "--") == 0)
		optind++;
	if (optind >= argc)
		die(EXIT_USAGE, "run: missing the command to run after '%s --'",
		    resource);
	if (ttl > 0 && ttl < 0.1)
		die(EXIT_USAGE, "--ttl: at least 0.1 seconds");

	snprintf(name, sizeof name, "arbiterctl:%s", argv[optind]);
	c = connect_or_die(name);
	view.show = verbose || isatty(STDERR_FILENO);
	ao.on_queued = on_queued;
	ao.ctx = &view;
	ao.position_updates = view.show;
	ao.ttl_ms = (uint64_t)(ttl * 1000 + 0.5);
	rc = arb_acquire(c, resource, mode, timeout, &ao, &lease);
	if (rc == -ARB_EWOULDBLOCK || rc == -ARB_ETIMEOUT) {
		fprintf(stderr, "arbiterctl: %s\n", arb_last_error(c));
		arb_close(c);
		return conflict;
	}
	if (rc < 0) {
		fprintf(stderr, "arbiterctl: cannot lock '%s': %s\n", resource,
			arb_last_error(c));
		arb_close(c);
		return exit_for(rc);
	}
	if (verbose)
		fprintf(stderr,
			"arbiterctl: got '%s' (lease %" PRIu64
			", token %" PRIu64 ", waited %.3f s)\n",
			resource, lease.id, lease.token, lease.waited_us / 1e6);

	setenv("ARBITER_RESOURCE", resource, 1);
	snprintf(buf, sizeof buf, "%" PRIu64, lease.id);
	setenv("ARBITER_LEASE_ID", buf, 1);
	snprintf(buf, sizeof buf, "%" PRIu64, lease.token);
	setenv("ARBITER_TOKEN", buf, 1);
	snprintf(buf, sizeof buf, "%d", arb_fd(c));
	setenv("ARBITER_FD", buf, 1);
	/* The command keeps the connection, and with it the lease. */
	arb_set_inherit(c, true);
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		die(EXIT_SOFTWARE, "fork: %s", strerror(errno));
	if (pid == 0) {
		execvp(argv[optind], &argv[optind]);
		fprintf(stderr, "arbiterctl: cannot run %s: %s\n", argv[optind],
			strerror(errno));
		_exit(errno == ENOENT ? EXIT_NOTFOUND : EXIT_NOEXEC);
	}
	arb_set_inherit(c, false);
	status = supervise(c, pid, &lease, grace);
	if (status != EXIT_REVOKED)
		(void)arb_release(c, lease.id); /* closing would do it too */
	arb_close(c);
	return status;
}
