/*
 * arbiter-bench: options, the shared daemons, and the order of sections.
 *
 *   arbiter-bench [--quick] [--json] [--save FILE] [--only 1,3]
 *                 [--build DIR] [--arbiterd PATH] [--runs N]
 *   arbiter-bench --profile uncontended|contended [--count N]
 *                 [--clients C] [--socket PATH]     (see profile.c)
 *   arbiter-bench --lockcost FILE ROUNDS   (internal: what (8) measures,
 *                                           see intercept.c)
 *
 * The daemon under test is <BUILD>/arbiterd (by default the one next to
 * this binary's folder: <BUILD>/bench/arbiter-bench -> <BUILD>/arbiterd).
 * ARBITERD_WRAPPER, as in the integration tests, runs it under a tool
 * (e.g. "valgrind --tool=callgrind").
 *
 * Sections, in the order they run: (1) uncontended, (2) handoff, (3)
 * throughput, (4) death, (5) scale, (6) idle, (7) cluster, (8) intercept.
 */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

static int failures;

static const struct bench_counts full_counts = {
    .runs = 5,
    .rtt_ops = 4000,
    .handoff_rounds = 600,
    .handoff_hold_us = 250,
    .tput_seconds = 1.0,
    .tput_runs = 5,
    .tput_interval_ms = 100,
    .death_small_rounds = 100,
    .death_big_rounds = 20,
    .death_big_mib = 100,
    .scale_conns = 10000,
    .scale_lease_conns = 1000,
    .scale_leases_per_conn = 100,
    .scale_runs = 3,
    .idle_seconds = 5,
    .redis_sleep_us = 1000,
    .cl_watch_rounds = 100,
    .cl_handoff_rounds = 40,
    .cl_synced_rounds = 10,
    .cl_local_rounds = 300,
    .cl_tput_seconds = 2.0,
    .cl_tput_runs = 5,
    .cl_clients_per_host = 8,
    .icpt_pairs = 7,
    .icpt_rounds = 20000,
    .icpt_leased_rounds = 300,
};

/* Everything once, with tiny counts: a smoke test that the bench works. */
static const struct bench_counts quick_counts = {
    .runs = 2,
    .rtt_ops = 300,
    .handoff_rounds = 60,
    .handoff_hold_us = 250,
    .tput_seconds = 0.15,
    .tput_runs = 1,
    .tput_interval_ms = 50,
    .death_small_rounds = 4,
    .death_big_rounds = 2,
    .death_big_mib = 100,
    .scale_conns = 200,
    .scale_lease_conns = 20,
    .scale_leases_per_conn = 10,
    .scale_runs = 1,
    .idle_seconds = 0.5,
    .redis_sleep_us = 1000,
    .cl_watch_rounds = 20,
    .cl_handoff_rounds = 10,
    .cl_synced_rounds = 0, /* 150 ms a round: full runs only */
    .cl_local_rounds = 40,
    .cl_tput_seconds = 0.3,
    .cl_tput_runs = 1,
    .cl_clients_per_host = 8,
    .icpt_pairs = 1,
    .icpt_rounds = 2000,
    .icpt_leased_rounds = 30,
};

void
bench_progress(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "bench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void
bench_fail(const char *fmt, ...)
{
	va_list ap;

	failures++;
	fprintf(stderr, "bench: error: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void
watchdog(int sig)
{
	static const char msg[] = "bench: error: gave up: a section hung "
				  "(--quick: 120 s, full: 900 s)\n";

	(void)sig;
	(void)!write(2, msg, sizeof msg - 1);
	_exit(1); /* our children die with us (PR_SET_PDEATHSIG) */
}

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: arbiter-bench [--quick] [--json] [--save FILE] "
		"[--only 1,2,...] [--runs N]\n"
		"                     [--build DIR | --arbiterd PATH]\n"
		"\n"
		"Measure arbiterd against a raw socket round trip, flock(2), a "
		"process-shared\n"
		"mutex and a Redis lock, and cluster mode against etcd's own "
		"lock recipe\n"
		"on a 3-member etcd, in one run, and print one table.\n"
		"\n"
		"  --quick         tiny counts: a smoke test of a few seconds\n"
		"  --json          the same figures as JSON\n"
		"  --only LIST     sections to run: 1 uncontended, 2 handoff, "
		"3 throughput,\n"
		"                  4 death, 5 scale, 6 idle, 7 cluster, "
		"8 intercept\n"
		"                  (default: all)\n"
		"  --runs N        repetitions of the latency measurements\n"
		"  --save FILE     also write the JSON to FILE\n"
		"  --build DIR     use DIR/arbiterd\n"
		"  --arbiterd PATH the daemon to measure\n"
		"  --etcd-bed PATH (7): the script that runs a 3-member etcd "
		"(default\n"
		"                  tests/bench/etcd_bed.py, from the source "
		"tree)\n"
		"\n"
		"Profiling: a fixed amount of one kind of work, nothing "
		"printed but its rate:\n"
		"  --profile uncontended|contended  [--count N] [--clients C] "
		"[--socket PATH]\n"
		"                  N acquire+release pairs per client (C "
		"clients on one\n"
		"                  resource when contended), against the "
		"daemon at PATH or our own\n"
		"\n"
		"Latency figures (sections 1, 2) are taken twice: every "
		"process on one CPU,\n"
		"and the servers (daemon, Redis, echo server, peer) on one "
		"CPU with the clients\n"
		"on another; each is compared with the raw round trip of the "
		"same placement.\n"
		"\n"
		"ARBITERD_WRAPPER=\"valgrind --tool=callgrind\" runs the "
		"daemon under a tool.\n"
		"CI=true: a full run without /usr/bin/redis-server fails "
		"instead of skipping Redis.\n"
		"Never fails on speed; exits 1 only when something could not "
		"be measured.\n"
		"\n"
		"Internal: --lockcost FILE ROUNDS is the program section 8 "
		"runs, with and\n"
		"without the shim (nanoseconds per lock call on FILE).\n");
}

static unsigned
parse_sections(const char *s)
{
	unsigned m = 0;

	for (; *s; s++)
		if (*s >= '1' && *s <= '8')
			m |= 1u << (*s - '1');
	return m;
}

static void
default_daemon(struct bench *b)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

	if (n <= 0) {
		snprintf(b->arbiterd, sizeof b->arbiterd, "build/arbiterd");
		return;
	}
	exe[n] = '\0';
	/* <BUILD>/bench/arbiter-bench -> <BUILD>/arbiterd */
	snprintf(b->arbiterd, sizeof b->arbiterd, "%s/../arbiterd",
		 dirname(exe));
}

static int
setup_shm(struct bench *b)
{
	pthread_mutexattr_t ma;

	b->shm = mmap(NULL, sizeof *b->shm, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (b->shm == MAP_FAILED) {
		bench_fail("mmap: %s", strerror(errno));
		return -1;
	}
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	/* A holder that dies must not leave the other side blocked forever. */
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&b->shm->mutex, &ma);
	pthread_mutexattr_destroy(&ma);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"quick", no_argument, NULL, 'q'},
	    {"json", no_argument, NULL, 'j'},
	    {"only", required_argument, NULL, 'o'},
	    {"runs", required_argument, NULL, 'r'},
	    {"build", required_argument, NULL, 'b'},
	    {"arbiterd", required_argument, NULL, 'd'},
	    {"save", required_argument, NULL, 's'},
	    {"profile", required_argument, NULL, 'P'},
	    {"count", required_argument, NULL, 'n'},
	    {"clients", required_argument, NULL, 'c'},
	    {"socket", required_argument, NULL, 'S'},
	    {"etcd-bed", required_argument, NULL, 'E'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static struct bench bench;
	struct bench *b = &bench;
	char data[PATH_MAX + 8];
	const char *save = NULL, *profile = NULL, *ext_sock = NULL, *ci;
	long count = 20000;
	int clients = 2;
	double secs;
	uint64_t t_start;
	int ch, runs = 0;
	long nofile;

	/* The program (8) measures: nothing else of the bench runs. */
	if (argc == 4 && strcmp(argv[1], "--lockcost") == 0)
		return intercept_lockcost(argv[2], argv[3]);
	b->sections = 0xff;
	snprintf(b->etcd_bed, sizeof b->etcd_bed, "tests/bench/etcd_bed.py");
	b->cpu_server = b->cpu_client = -1; /* --profile: nothing pinned */
	default_daemon(b);
	while ((ch = getopt_long(argc, argv, "qjo:r:b:d:s:P:n:c:S:E:h",
				 longopts, NULL)) != -1) {
		switch (ch) {
		case 'q':
			b->quick = true;
			break;
		case 'j':
			b->json = true;
			break;
		case 'o':
			b->sections = parse_sections(optarg);
			break;
		case 'r':
			runs = atoi(optarg);
			break;
		case 'b':
			snprintf(b->arbiterd, sizeof b->arbiterd, "%s/arbiterd",
				 optarg);
			break;
		case 'd':
			snprintf(b->arbiterd, sizeof b->arbiterd, "%s", optarg);
			break;
		case 's':
			save = optarg;
			break;
		case 'P':
			profile = optarg;
			break;
		case 'n':
			count = atol(optarg);
			break;
		case 'c':
			clients = atoi(optarg);
			break;
		case 'S':
			ext_sock = optarg;
			break;
		case 'E':
			snprintf(b->etcd_bed, sizeof b->etcd_bed, "%s", optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	b->n = b->quick ? quick_counts : full_counts;
	if (runs > 0)
		b->n.runs = b->n.tput_runs = b->n.scale_runs =
		    b->n.cl_tput_runs = b->n.icpt_pairs = runs;
	b->wrapper = getenv("ARBITERD_WRAPPER");
	if (ext_sock == NULL && access(b->arbiterd, X_OK) != 0) {
		fprintf(stderr,
			"arbiter-bench: no daemon at %s (build it, or pass "
			"--build DIR)\n",
			b->arbiterd);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	/* A smoke test must end: a hang is a failure, not a wait. */
	signal(SIGALRM, watchdog);
	alarm(profile != NULL ? 0 : b->quick ? 120 : 900);
	t_start = proc_now_ns();
	proc_loadavg(b->load_start, sizeof b->load_start);

	/* 10,000 clients plus their daemon's other end. */
	nofile = proc_raise_nofile(65536);
	if (nofile < b->n.scale_conns + 256) {
		bench_progress("RLIMIT_NOFILE is %ld: scale test cut to %ld "
			       "connections",
			       nofile, nofile - 256);
		b->n.scale_conns = (int)(nofile - 256);
	}
	if (setup_shm(b) < 0 || proc_make_tmp(b) < 0)
		return 1;
	if (profile != NULL) {
		int rc;

		/* A daemon someone else started (under a profiler), or ours. */
		if (ext_sock != NULL)
			snprintf(b->sock, sizeof b->sock, "%s", ext_sock);
		else {
			snprintf(b->sock, sizeof b->sock, "%.63s/a.sock",
				 b->tmp);
			snprintf(data, sizeof data, "%.63s/data", b->tmp);
			mkdir(data, 0700);
			b->daemon_pid =
			    proc_start_daemon(b, b->sock, data, NULL, 0);
		}
		rc = b->daemon_pid < 0
			 ? -1
			 : profile_run(b, profile, count, clients);
		proc_stop(b->daemon_pid);
		proc_remove_tmp(b);
		return rc < 0 ? 1 : 0;
	}
	snprintf(b->sock, sizeof b->sock, "%.63s/a.sock", b->tmp);
	snprintf(data, sizeof data, "%.63s/data", b->tmp);
	mkdir(data, 0700);
	bench_progress("daemon %s, folder %s", b->arbiterd, b->tmp);
	proc_cpus_init(b);
	b->daemon_pid = proc_start_daemon(b, b->sock, data, NULL, 0);
	b->echo_pid = proc_start_echo(b);
	b->redis_pid = proc_start_redis(b);
	if (b->redis_pid == 0) {
		ci = getenv("CI");
		/* CI must compare against every baseline; a smoke run only
		 * checks that the bench works, and runs without Redis. */
		if (!b->quick && ci != NULL && strcmp(ci, "true") == 0) {
			bench_fail(
			    "no /usr/bin/redis-server, and CI=true needs "
			    "the Redis baseline: install it with `sh "
			    "scripts/deps.sh bench` (Debian package "
			    "redis-server)");
			goto out;
		}
		bench_progress("no /usr/bin/redis-server: Redis rows skipped "
			       "(`sh scripts/deps.sh bench` installs it)");
	}
	if (b->daemon_pid < 0 || b->echo_pid < 0)
		goto out;

	if (b->sections & 1)
		case_uncontended(b);
	if (b->sections & 2)
		case_handoff(b);
	if (b->sections & 4)
		case_throughput(b);
	if (b->sections & 8)
		case_death(b);
	if (b->sections & 16)
		case_scale(b);
	if (b->sections & 32)
		case_idle(b);
	if (b->sections & 64)
		case_cluster(b);
	if (b->sections & 128)
		case_intercept(b);
	case_goals(b);

out:
	proc_stop(b->daemon_pid);
	proc_stop(b->echo_pid);
	if (b->redis_pid > 0)
		proc_stop(b->redis_pid);
	if (failures == 0)
		proc_remove_tmp(b);
	else
		bench_progress("kept %s for the logs", b->tmp);
	proc_loadavg(b->load_end, sizeof b->load_end);
	secs = (double)(proc_now_ns() - t_start) / 1e9;
	if (b->json)
		report_json(stdout, b, secs);
	else
		report_table(b, secs);
	if (save != NULL) {
		FILE *f = fopen(save, "w");

		if (f == NULL || (report_json(f, b, secs), fclose(f)) != 0) {
			fprintf(stderr, "arbiter-bench: cannot write %s: %s\n",
				save, strerror(errno));
			return 1;
		}
	}
	return failures ? 1 : 0;
}
