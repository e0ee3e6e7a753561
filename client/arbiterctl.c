/*
 * arbiterctl: the command line of arbiter. argv becomes libarbiter calls and
 * the results are printed. `run` works like flock(1): the command inherits
 * the connection that holds the lease, so the lease lives exactly as long as
 * the command, even if arbiterctl itself is killed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ini.h>

#include "arbiter.h"
#include "arbiter.pb-c.h"
#include "ctl_run.h"
#include "defaults.h"

static const char *socket_path;
int io_timeout_ms = 10000; /* -t: for everything but waiting */

void
usage(FILE *out)
{
	fprintf(out,
"usage: arbiterctl [-S SOCKET | -c CONFIG] [-t SECS] [--trust-uid UID]...\n"
"                  COMMAND [ARGS]\n"
"\n"
"Commands:\n");
	ctl_run_usage(out);
	fprintf(out,
"  ping             exit 0 when the arbiter answers; prints its role\n"
"  stats [--json] [RESOURCE]\n"
"                   acquisitions, failures, wait and hold times\n"
"  status [--json] [RESOURCE]\n"
"                   every resource with its holders and waiters, in order\n"
"                   (up to 1000 of each per resource; the rest counted)\n"
"  who              who holds the storage lock and every resource\n"
"  revoke --lease ID | --pid PID\n"
"                   end a lease (admins only); its holder is told\n"
"  stats-reset      restart the stats reply's figures (admins only)\n"
"\n"
"The socket is -S SOCKET, else socket.path from -c CONFIG, else\n"
"$ARBITER_SOCKET, else /run/arbiter/arbiter.sock (root) or\n"
"/tmp/arbiter-UID/arbiter.sock (other users).\n"
"\n"
"-t SECS bounds how long any answer may take (default 10; 0: no bound),\n"
"waiting for a lease excepted, so a hung arbiter fails a probe. A wait\n"
"for a lease (-w) ends at most 0.15 s after SECS even if the arbiter\n"
"never answers.\n"
"\n"
"Trust: arbiterctl talks only to a server run by you, by root, by a uid\n"
"in $ARBITER_TRUST_UID (uids or user names, comma-separated; '*': any)\n"
"or by --trust-uid UID (a uid or user name, repeatable), or by the owner\n"
"of a socket folder that only root can have handed over (systemd's\n"
"RuntimeDirectory=). The default socket's folder must be yours and closed\n"
"to others. Anything else is refused (exit 77), naming the uid.\n"
"\n"
"Exit codes: 0 ok; 1 (or -E CODE) busy or timed out; 64 usage; 69 the\n"
"arbiter cannot be reached; 70 the arbiter refused; 75 lease revoked;\n"
"77 the socket or its server is not trusted; 126/127 CMD not\n"
"executable/not found; else CMD's own status.\n");
}

void
die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));

void
die(int code, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "arbiterctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

/* socket.path from a config file, resolved against the file's folder. */
struct conf_sock {
	char path[4096];
	const char *file;
};

static int
conf_handler(void *user, const char *section, const char *name,
	     const char *value)
{
	struct conf_sock *cs = user;

	if (strcmp(section, "socket") == 0 && strcmp(name, "path") == 0) {
		if (value[0] == '/' || value[0] == '\0') {
			snprintf(cs->path, sizeof cs->path, "%s", value);
		} else {
			const char *slash = strrchr(cs->file, '/');

			if (slash == NULL)
				snprintf(cs->path, sizeof cs->path, "%s", value);
			else
				snprintf(cs->path, sizeof cs->path, "%.*s/%s",
					 (int)(slash - cs->file), cs->file,
					 value);
		}
	}
	return 1;
}

static const char *
socket_from_config(const char *file)
{
	static struct conf_sock cs;
	char *abs = realpath(file, NULL);

	cs.file = abs ? abs : file;
	cs.path[0] = '\0';
	if (ini_parse(file, conf_handler, &cs) < 0)
		die(EXIT_USAGE, "cannot read config %s", file);
	free(abs);
	if (cs.path[0] == '\0')
		return NULL; /* the config uses the default */
	return cs.path;
}

arb_client *
connect_or_die(const char *name)
{
	arb_client *c;

	int rc = arb_connect_timeout(&c, socket_path, name, io_timeout_ms);

	if (rc < 0)
		die(rc == -ARB_EUNTRUSTED ? EXIT_NOPERM : EXIT_UNAVAIL, "%s",
		    arb_connect_error());
	return c;
}

int
exit_for(int rc)
{
	if (rc == -ARB_EUNTRUSTED)
		return EXIT_NOPERM;
	if (rc == -ARB_ECONNLOST || rc == -ENOENT || rc == -ECONNREFUSED ||
	    rc == -ETIMEDOUT)
		return EXIT_UNAVAIL;
	return EXIT_SOFTWARE;
}

/* --trust-uid: a uid, a user name, or '*' for any. */
static void
trust_uid_arg(const char *arg)
{
	struct passwd *pw;
	char *end;
	unsigned long v;

	if (strcmp(arg, "*") == 0) {
		(void)arb_trust_uid(ARB_TRUST_ANY_UID);
		return;
	}
	errno = 0;
	v = strtoul(arg, &end, 10);
	if (arg[0] >= '0' && arg[0] <= '9' && *end == '\0' && errno == 0 &&
	    v < (unsigned long)(uid_t)-1) {
		if (arb_trust_uid((uid_t)v) < 0)
			die(EXIT_USAGE, "--trust-uid: too many uids");
		return;
	}
	pw = getpwnam(arg);
	if (pw == NULL)
		die(EXIT_USAGE, "--trust-uid: '%s' is neither a uid nor a user "
				"name",
		    arg);
	if (arb_trust_uid(pw->pw_uid) < 0)
		die(EXIT_USAGE, "--trust-uid: too many uids");
}

double
parse_secs(const char *s, const char *what)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !(v >= 0) || isinf(v) || v > 1e9)
		die(EXIT_USAGE, "%s: '%s' is not a number of seconds", what, s);
	return v;
}

/* ------------------------------------------------------------ JSON */

static void
json_str(FILE *out, const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p;
	     p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(out, "\\u%04x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

static void
json_hist(FILE *out, const char *key, const Arbiter__Histogram *h)
{
	fprintf(out,
		"\"%s\": {\"count\": %" PRIu64 ", \"sum\": %.9f, \"mean\": "
		"%.9f, \"max\": %.9f, \"p50\": %.9f, \"p90\": %.9f, \"p99\": "
		"%.9f}",
		key, h ? h->count : 0, h ? h->sum_seconds : 0,
		h ? h->mean_seconds : 0, h ? h->max_seconds : 0,
		h ? h->p50_seconds : 0, h ? h->p90_seconds : 0,
		h ? h->p99_seconds : 0);
}

static void
json_figures(FILE *out, const Arbiter__ResourceStats *r)
{
	fprintf(out,
		"\"total_acquisitions\": %" PRIu64
		", \"failed_acquisitions\": %" PRIu64
		", \"average_wait_time\": %.9f, \"max_wait_time\": %.9f, "
		"\"acquired_immediate\": %" PRIu64
		", \"acquired_after_wait\": %" PRIu64
		", \"failed_timeout\": %" PRIu64
		", \"failed_would_block\": %" PRIu64
		", \"failed_forbidden\": %" PRIu64
		", \"failed_invalid\": %" PRIu64 ", \"releases\": %" PRIu64
		", \"cancelled\": %" PRIu64 ", \"revoked_disconnect\": %" PRIu64
		", \"revoked_expired\": %" PRIu64 ", \"revoked_admin\": %" PRIu64
		", \"revoked_shutdown\": %" PRIu64
		", \"holders\": %u, \"waiters\": %u, ",
		r->total_acquisitions, r->failed_acquisitions,
		r->average_wait_time, r->max_wait_time, r->acquired_immediate,
		r->acquired_after_wait, r->failed_timeout,
		r->failed_would_block, r->failed_forbidden, r->failed_invalid,
		r->releases, r->cancelled, r->revoked_disconnect,
		r->revoked_expired, r->revoked_admin, r->revoked_shutdown,
		r->holders, r->waiters);
	json_hist(out, "wait_seconds", r->wait);
	fputs(", ", out);
	json_hist(out, "hold_seconds", r->hold);
}

/* ------------------------------------------------------------ stats */

static void
print_hist_row(const char *what, const Arbiter__Histogram *h)
{
	if (h == NULL || h->count == 0) {
		printf("  %-6s -\n", what);
		return;
	}
	printf("  %-6s count %" PRIu64 "  mean %s%.3f ms  p50 %.3f ms  p90 "
	       "%.3f ms  p99 %.3f ms  max %.3f ms\n",
	       what, h->count, "", h->mean_seconds * 1e3, h->p50_seconds * 1e3,
	       h->p90_seconds * 1e3, h->p99_seconds * 1e3,
	       h->max_seconds * 1e3);
}

static void
print_figures(const Arbiter__ResourceStats *r)
{
	double rate = r->total_acquisitions + r->failed_acquisitions
			      ? 100.0 * (double)r->failed_acquisitions /
					(double)(r->total_acquisitions +
						 r->failed_acquisitions)
			      : 0;

	printf("  acquisitions %" PRIu64 " (immediate %" PRIu64
	       ", after wait %" PRIu64 ")  failed %" PRIu64 " (%.1f %%)\n",
	       r->total_acquisitions, r->acquired_immediate,
	       r->acquired_after_wait, r->failed_acquisitions, rate);
	printf("  failures: timeout %" PRIu64 ", busy %" PRIu64
	       ", forbidden %" PRIu64 ", invalid %" PRIu64 "\n",
	       r->failed_timeout, r->failed_would_block, r->failed_forbidden,
	       r->failed_invalid);
	printf("  ends: released %" PRIu64 ", cancelled %" PRIu64
	       ", revoked: disconnect %" PRIu64 ", expired %" PRIu64
	       ", admin %" PRIu64 ", shutdown %" PRIu64 "\n",
	       r->releases, r->cancelled, r->revoked_disconnect,
	       r->revoked_expired, r->revoked_admin, r->revoked_shutdown);
	printf("  now: %u holding, %u waiting\n", r->holders, r->waiters);
	print_hist_row("wait", r->wait);
	print_hist_row("hold", r->hold);
}

/* stats and status take [RESOURCE] [--json], in any order. */
static const char *
resource_and_json(int argc, char **argv, bool *json)
{
	const char *resource = NULL;

	*json = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			*json = true;
		else if (resource == NULL && argv[i][0] != '-')
			resource = argv[i];
		else
			die(EXIT_USAGE, "%s: unexpected '%s'", argv[0],
			    argv[i]);
	}
	return resource;
}

static int
cmd_stats(int argc, char **argv)
{
	bool json;
	const char *resource;
	const Arbiter__Stats *s;
	const void *p;
	arb_client *c;
	int rc;

	resource = resource_and_json(argc, argv, &json);
	c = connect_or_die("arbiterctl");
	rc = arb_stats(c, resource, &p);
	if (rc < 0)
		die(exit_for(rc), "stats: %s", arb_last_error(c));
	s = p;
	if (json) {
		printf("{");
		json_figures(stdout, s->total);
		printf(", \"connections\": %u, \"role\": ", s->connections);
		json_str(stdout, s->role);
		printf(", \"storage_locked\": %s, \"uptime_seconds\": %.3f, "
		       "\"resources_omitted\": %" PRIu64 ", \"resources\": {",
		       s->storage_locked ? "true" : "false", s->uptime_seconds,
		       s->resources_omitted);
		for (size_t i = 0; i < s->n_resources; i++) {
			printf("%s", i ? ", " : "");
			json_str(stdout, s->resources[i]->resource);
			printf(": {");
			json_figures(stdout, s->resources[i]);
			printf("}");
		}
		printf("}}\n");
	} else {
		printf("arbiter %s, up %.0f s, %u connection%s, storage %s\n",
		       s->role, s->uptime_seconds, s->connections,
		       s->connections == 1 ? "" : "s",
		       s->storage_locked ? "locked" : "NOT locked");
		if (resource == NULL) {
			printf("total:\n");
			print_figures(s->total);
		}
		for (size_t i = 0; i < s->n_resources; i++) {
			printf("%s:\n", s->resources[i]->resource);
			print_figures(s->resources[i]);
		}
		if (resource != NULL && s->n_resources == 0)
			printf("no figures for '%s' yet\n", resource);
	}
	arb_close(c);
	return 0;
}

/* ------------------------------------------------------------ status */

static void
fmt_dur(char *buf, size_t len, uint64_t us)
{
	if (us < 1000)
		snprintf(buf, len, "%" PRIu64 "us", us);
	else if (us < 10000000)
		snprintf(buf, len, "%.1fms", us / 1e3);
	else
		snprintf(buf, len, "%.1fs", us / 1e6);
}

static int
cmd_status(int argc, char **argv)
{
	bool json;
	const char *resource;
	const Arbiter__Status *s;
	const void *p;
	arb_client *c;
	int rc;

	resource = resource_and_json(argc, argv, &json);
	c = connect_or_die("arbiterctl");
	rc = arb_status(c, resource, &p);
	if (rc < 0)
		die(exit_for(rc), "status: %s", arb_last_error(c));
	s = p;
	if (json) {
		printf("{\"role\": ");
		json_str(stdout, s->role);
		printf(", \"pid\": %u, \"version\": ", s->pid);
		json_str(stdout, s->server_version);
		printf(", \"storage\": ");
		json_str(stdout, s->storage_path);
		printf(", \"storage_holder\": ");
		json_str(stdout, s->storage_holder);
		printf(", \"connections\": %u, \"resources\": {", s->connections);
		for (size_t i = 0; i < s->n_resources; i++) {
			const Arbiter__ResourceStatus *r = s->resources[i];

			printf("%s", i ? ", " : "");
			json_str(stdout, r->resource);
			printf(": {\"delayed_us\": %" PRIu64 ", \"holders\": [",
			       r->delayed_us);
			for (size_t j = 0; j < r->n_holders; j++) {
				const Arbiter__Holder *h = r->holders[j];

				printf("%s{\"lease_id\": %" PRIu64
				       ", \"mode\": \"%s\", \"pid\": %u, "
				       "\"uid\": %u, \"client_name\": ",
				       j ? ", " : "", h->lease_id,
				       h->mode ? "shared" : "exclusive", h->pid,
				       h->uid);
				json_str(stdout, h->client_name);
				printf(", \"held_us\": %" PRIu64
				       ", \"token\": %" PRIu64
				       ", \"ttl_ms\": %" PRIu64 "}",
				       h->held_us, h->token, h->ttl_ms);
			}
			printf("], \"waiters\": [");
			for (size_t j = 0; j < r->n_waiters; j++) {
				const Arbiter__Waiter *w = r->waiters[j];

				printf("%s{\"position\": %zu, \"lease_id\": "
				       "%" PRIu64 ", \"mode\": \"%s\", "
				       "\"pid\": %u, \"uid\": %u, "
				       "\"client_name\": ",
				       j ? ", " : "", j + 1, w->lease_id,
				       w->mode ? "shared" : "exclusive", w->pid,
				       w->uid);
				json_str(stdout, w->client_name);
				printf(", \"waiting_us\": %" PRIu64 "}",
				       w->waiting_us);
			}
			printf("], \"holders_omitted\": %u, "
			       "\"waiters_omitted\": %u}",
			       r->holders_omitted, r->waiters_omitted);
		}
		printf("}}\n");
	} else {
		printf("arbiter pid %u (%s), %s, storage %s, %u connection%s\n",
		       s->pid, s->server_version, s->role, s->storage_path,
		       s->connections, s->connections == 1 ? "" : "s");
		if (s->storage_holder && s->storage_holder[0])
			printf("storage held by: %s\n", s->storage_holder);
		if (s->n_resources == 0)
			printf("no resource is held or waited for\n");
		else
			printf("%-20s %-8s %-9s %8s %6s %-24s %10s %8s\n",
			       "RESOURCE", "STATE", "MODE", "PID", "UID",
			       "CLIENT", "FOR", "TOKEN");
		for (size_t i = 0; i < s->n_resources; i++) {
			const Arbiter__ResourceStatus *r = s->resources[i];
			char d[32];

			for (size_t j = 0; j < r->n_holders; j++) {
				const Arbiter__Holder *h = r->holders[j];

				fmt_dur(d, sizeof d, h->held_us);
				printf("%-20s %-8s %-9s %8u %6u %-24s %10s "
				       "%8" PRIu64 "\n",
				       r->resource, "holds",
				       h->mode ? "shared" : "exclusive", h->pid,
				       h->uid,
				       h->client_name && h->client_name[0]
					       ? h->client_name
					       : "-",
				       d, h->token);
			}
			for (size_t j = 0; j < r->n_waiters; j++) {
				const Arbiter__Waiter *w = r->waiters[j];
				char state[32];

				fmt_dur(d, sizeof d, w->waiting_us);
				snprintf(state, sizeof state, "waits#%zu", j + 1);
				printf("%-20s %-8s %-9s %8u %6u %-24s %10s %8s\n",
				       r->resource, state,
				       w->mode ? "shared" : "exclusive", w->pid,
				       w->uid,
				       w->client_name && w->client_name[0]
					       ? w->client_name
					       : "-",
				       d, "-");
			}
			if (r->holders_omitted > 0 || r->waiters_omitted > 0)
				printf("%-20s and %u more holders, %u more "
				       "waiters, not listed\n",
				       r->resource, r->holders_omitted,
				       r->waiters_omitted);
			if (r->delayed_us > 0) {
				fmt_dur(d, sizeof d, r->delayed_us);
				printf("%-20s lock-delay for %s more\n",
				       r->resource, d);
			}
		}
	}
	arb_close(c);
	return 0;
}

static int
cmd_who(void)
{
	const Arbiter__Status *s;
	const void *p;
	arb_client *c = connect_or_die("arbiterctl");
	int rc = arb_status(c, NULL, &p);

	if (rc < 0)
		die(exit_for(rc), "who: %s", arb_last_error(c));
	s = p;
	if (s->storage_holder && s->storage_holder[0])
		printf("storage %s: held by another arbiter (%s); this one "
		       "(pid %u) is %s\n",
		       s->storage_path, s->storage_holder, s->pid, s->role);
	else
		printf("storage %s: held by arbiter pid %u (%s)\n",
		       s->storage_path, s->pid, s->role);
	for (size_t i = 0; i < s->n_resources; i++) {
		const Arbiter__ResourceStatus *r = s->resources[i];

		for (size_t j = 0; j < r->n_holders; j++)
			printf("%s: pid %u (%s), %s, token %" PRIu64 "\n",
			       r->resource, r->holders[j]->pid,
			       r->holders[j]->client_name &&
					       r->holders[j]->client_name[0]
				       ? r->holders[j]->client_name
				       : "unnamed",
			       r->holders[j]->mode ? "shared" : "exclusive",
			       r->holders[j]->token);
		if (r->n_waiters > 0)
			printf("%s: %zu waiting\n", r->resource, r->n_waiters);
	}
	arb_close(c);
	return 0;
}

static int
cmd_revoke(int argc, char **argv)
{
	uint64_t lease = 0;
	uint32_t pid = 0;
	arb_client *c;
	int rc;

	if (argc == 3 && strcmp(argv[1], "--lease") == 0)
		lease = strtoull(argv[2], NULL, 10);
	else if (argc == 3 && strcmp(argv[1], "--pid") == 0)
		pid = (uint32_t)strtoul(argv[2], NULL, 10);
	if (lease == 0 && pid == 0)
		die(EXIT_USAGE, "usage: arbiterctl revoke --lease ID | --pid PID");
	c = connect_or_die("arbiterctl");
	rc = arb_revoke(c, lease, pid);
	if (rc < 0)
		die(exit_for(rc), "revoke: %s", arb_last_error(c));
	printf("revoked %d lease%s\n", rc, rc == 1 ? "" : "s");
	arb_close(c);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"trust-uid", required_argument, NULL, 'U'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const char *cmd;
	int ch;

	while ((ch = getopt_long(argc, argv, "+S:c:t:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'U':
			trust_uid_arg(optarg);
			break;
		case 't':
			io_timeout_ms = (int)(parse_secs(optarg, "-t") * 1000);
			break;
		case 'S':
			socket_path = optarg;
			break;
		case 'c':
			socket_path = socket_from_config(optarg);
			break;
		case 'V':
			printf("arbiterctl %s\n", ARBITER_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind];
	argc -= optind;
	argv += optind;
	if (strcmp(cmd, "run") == 0)
		return ctl_run(argc, argv);
	if (strcmp(cmd, "ping") == 0 || strcmp(cmd, "health") == 0) {
		arb_client *c = connect_or_die("arbiterctl");
		char role[32];
		int rc = arb_ping(c, role, sizeof role);

		if (rc < 0)
			die(exit_for(rc), "ping: %s", arb_last_error(c));
		printf("pong %s\n", role);
		arb_close(c);
		return 0;
	}
	if (strcmp(cmd, "stats") == 0)
		return cmd_stats(argc, argv);
	if (strcmp(cmd, "status") == 0)
		return cmd_status(argc, argv);
	if (strcmp(cmd, "who") == 0)
		return cmd_who();
	if (strcmp(cmd, "revoke") == 0)
		return cmd_revoke(argc, argv);
	if (strcmp(cmd, "stats-reset") == 0) {
		arb_client *c = connect_or_die("arbiterctl");
		int rc = arb_stats_reset(c);

		if (rc < 0)
			die(exit_for(rc), "stats-reset: %s", arb_last_error(c));
		arb_close(c);
		return 0;
	}
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "arbiterctl: unknown command '%s'\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}
