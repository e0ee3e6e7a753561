/*
 * arbiter-bench: the load generator behind `make bench`. It starts its own
 * arbiterd (and redis-server, and a plain epoll echo server) in a temporary
 * folder, measures arbiter and its baselines in the same run, and prints one
 * table (or JSON) of medians and 99th percentiles with ratios.
 *
 * Files: bench.c runs the sections and owns the options; proc.c starts and
 * watches processes and reads /proc; lock.c puts arbiter, flock(2), a
 * process-shared mutex and a Redis lock behind one interface; cases.c holds
 * the measurements of (1)-(6), cluster.c those of (7) and intercept.c
 * those of (8); report.c turns samples into rows and prints them;
 * profile.c runs a fixed load for profilers.
 *
 * Nothing here ever fails on speed: a benchmark measures, it does not judge.
 * The exit status is non-zero only when something could not be measured.
 */
#ifndef ARBITER_BENCH_H
#define ARBITER_BENCH_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <pthread.h>
#include <sched.h>

/* ------------------------------------------------------------ settings */

struct bench_counts {
	int runs;	     /* repetitions of each latency measurement */
	int rtt_ops;	     /* round trips per run */
	int handoff_rounds;  /* handoffs per run */
	int handoff_hold_us; /* holder waits this long after the waiter
				says it is about to block */
	double tput_seconds; /* one throughput run */
	int tput_runs;
	int tput_interval_ms; /* sampling interval inside a run */
	int death_small_rounds;
	int death_big_rounds;
	int death_big_mib;
	int scale_conns;       /* idle connections */
	int scale_lease_conns; /* connections holding leases */
	int scale_leases_per_conn;
	int scale_runs;
	double idle_seconds;
	int redis_sleep_us; /* Redis lock retry pause */
	/* (7) cluster mode */
	int cl_watch_rounds;	/* watch events per run and placement */
	int cl_handoff_rounds;	/* cross-host handoffs per run */
	int cl_synced_rounds;	/* etcd recipe, waiter queued 150 ms */
	int cl_local_rounds;	/* local handoffs per run */
	double cl_tput_seconds; /* one throughput run, counted */
	int cl_tput_runs;
	int cl_clients_per_host; /* throughput: clients on each of 3 hosts */
	/* (8) intercept */
	int icpt_pairs;		/* runs of the measured program, each way */
	int icpt_rounds;	/* calls per timed loop: plain, other file */
	int icpt_leased_rounds; /* calls per timed loop: intercepted file */
};

/*
 * Where the processes of a latency figure run. A wake-up on the same CPU
 * and one that crosses to another CPU cost very different amounts on a
 * virtual machine, so each latency figure is taken in both placements and
 * compared with the raw round trip taken in the same one.
 */
enum place {
	PLACE_NONE,  /* not pinned: the scheduler decides */
	PLACE_SAME,  /* every process of the figure on cpu_server */
	PLACE_SPLIT, /* servers on cpu_server, clients on cpu_client */
};
#define PLACE_COUNT 3

struct bench {
	bool quick, json;
	unsigned sections; /* bit i: section i+1 runs */
	struct bench_counts n;
	char arbiterd[PATH_MAX];
	const char *wrapper;	 /* ARBITERD_WRAPPER: e.g. valgrind */
	char etcd_bed[PATH_MAX]; /* (7): the script that runs etcd */
	/* Unix socket paths must fit in 108 bytes, so these are short. */
	char tmp[64];
	char sock[108];	      /* the shared daemon's socket */
	char echo_sock[108];  /* the epoll echo server */
	char redis_sock[108]; /* empty: no Redis */
	pid_t daemon_pid, echo_pid, redis_pid;
	struct bench_shm *shm;
	int echo_notify; /* read end: one byte per EOF the echo server saw */
	int daemons;	 /* counter for private daemon folders */
	char load_start[48], load_end[48]; /* /proc/loadavg, 1 5 15 min */
	/* Placement: the daemon, Redis, the echo server and the socketpair
	 * peer always run on cpu_server (pinned before exec); clients move.
	 * cpu_server < 0: pinning is not possible, nothing is pinned. */
	int cpu_server, cpu_client;
	cpu_set_t cpus_all; /* the mask we started with, for unpinned work */
	enum place places[2];
	int nplaces;
};

/* ------------------------------------------------------------ shared memory */

#define BENCH_MAX_CLIENTS 64
#define BENCH_MAX_SAMPLES 100000

/* One cache line per client so counters do not bounce between CPUs. */
struct bench_client_slot {
	_Atomic uint64_t pairs;
	_Atomic uint64_t changes;
	_Atomic uint64_t retries; /* Redis: SETs that found the key taken */
	_Atomic uint64_t host_changes; /* (7): grants on another host */
	char pad[32];
};

struct bench_res_slot {
	_Atomic int in_cs;
	_Atomic int last_owner;
	_Atomic uint64_t violations;
	_Atomic int last_host;	     /* (7): host of the last holder, 1-based */
	_Atomic uint64_t last_token; /* (7): fencing token of the last grant */
	char pad[32];
};

/* Mapped MAP_SHARED before any fork, so every process sees it. */
struct bench_shm {
	pthread_mutex_t mutex; /* PTHREAD_PROCESS_SHARED */
	_Atomic int stop;
	_Atomic uint64_t t0;	 /* a release or kill, CLOCK_MONOTONIC ns */
	_Atomic uint64_t t1;	 /* the grant that followed */
	_Atomic uint64_t eof_ns; /* echo server: last EOF seen */
	_Atomic uint64_t eof_count;
	_Atomic uint64_t not_queued; /* handoffs dropped: waiter not queued */
	struct bench_client_slot client[BENCH_MAX_CLIENTS];
	struct bench_res_slot res[BENCH_MAX_CLIENTS];
	uint32_t nsamples;
	double samples[BENCH_MAX_SAMPLES];
};

/* ------------------------------------------------------------ proc.c */

uint64_t proc_now_ns(void);
void proc_sleep_us(long us);
/* Write or read exactly n bytes; -1 on error or EOF. */
int proc_write_all(int fd, const void *p, size_t n);
int proc_read_all(int fd, void *p, size_t n);
/* A new process that dies with us; returns 0 in the child. */
pid_t proc_fork(void);
int proc_make_tmp(struct bench *b);
void proc_remove_tmp(struct bench *b);
/* Raise RLIMIT_NOFILE as far as allowed; returns the soft limit. */
long proc_raise_nofile(long want);
/*
 * Start an arbiterd on sock with storage dir (both created under tmp), with
 * extra "-o" settings, and wait until it accepts connections.
 */
pid_t proc_start_daemon(struct bench *b, const char *sock, const char *data,
			const char *const *opts, int nopts);
pid_t proc_start_redis(struct bench *b);
pid_t proc_start_echo(struct bench *b);
void proc_stop(pid_t pid);
/* Connect to a Unix socket path; -errno on failure. */
int proc_connect(const char *path);
long proc_rss_kib(pid_t pid);
/* Voluntary + involuntary context switches over all threads. */
long long proc_ctxt_switches(pid_t pid);
void proc_machine(char *buf, size_t len);
/* Choose cpu_server and cpu_client among the CPUs we may use, and the
 * placements that can be measured with them. */
void proc_cpus_init(struct bench *b);
/* Pin the calling process (and what it forks or execs later) to one CPU;
 * cpu < 0 does nothing. -errno on failure. */
int proc_pin(int cpu);
/* Back to the mask the bench started with. */
void proc_unpin(const struct bench *b);
/* The CPU of a client process in placement p (-1: unpinned). */
int place_client_cpu(const struct bench *b, enum place p);
/* "" / ".same" / ".split": the suffix of a row key in placement p. */
const char *place_suffix(enum place p);
/* "0.52 0.61 0.70": the 1, 5 and 15 minute load averages. */
void proc_loadavg(char *buf, size_t len);

/* ------------------------------------------------------------ lock.c */

enum lock_kind {
	LOCK_ARBITER,
	LOCK_FLOCK,
	LOCK_MUTEX,
	LOCK_REDIS,
	LOCK_ARBITER_NOWAIT, /* arbiter, released with arb_release_nowait */
};

struct lock {
	enum lock_kind kind;
	const struct bench *b;
	char resource[64];
	/* arbiter */
	struct arb_client *arb;
	uint64_t lease;
	bool want_queued; /* arbiter: ask for Queued (else a quiet acquire) */
	bool queued;	  /* set when the daemon reported a queue position */
	int queued_fd;	  /* >= 0: write one byte there when queued */
	/* flock: the lock file; redis: the socket */
	int fd;
	/* redis */
	char rbuf[512];
	size_t roff, rlen;
	char token[48];
	char key[80];
	char sha[48];
	uint64_t seq;
	long retries;
};

const char *lock_name(enum lock_kind k);
int lock_open(struct lock *l, enum lock_kind k, const struct bench *b,
	      const char *resource);
/* 0 when held; 1 when shm->stop was set while polling; < 0 on error. */
int lock_acquire(struct lock *l);
int lock_release(struct lock *l);
void lock_close(struct lock *l);

/* ------------------------------------------------------------ report.c */

enum unit { U_NS, U_RATE, U_BYTES, U_COUNT };

struct samples {
	double *v;
	size_t n, cap;
};

void samples_push(struct samples *s, double v);
void samples_free(struct samples *s);

struct row {
	int section;
	enum place place; /* latency rows: where their processes ran */
	char key[48];
	char name[96];
	enum unit unit;
	bool rate; /* p99 is the low tail: the 1st percentile */
	double median, p99;
	size_t n;
	char ratio[96];	  /* free text for the table */
	char vs[48];	  /* JSON: key of the baseline */
	double ratio_val; /* JSON: median / baseline median */
};

/* Summarise samples into a new row; NULL when there were none. */
struct row *report_add(int section, const char *key, const char *name,
		       enum unit u, struct samples *s);
struct row *report_value(int section, const char *key, const char *name,
			 enum unit u, double v);
struct row *report_find(const char *key);
/* Ratio of this row's median to another's: "1.32x raw RTT". */
void report_ratio(struct row *r, const char *vs_key, const char *label);
void report_place(struct row *r, enum place p);
void report_note(struct row *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void report_goal(const char *goal, const char *figure, int met);
void report_table(const struct bench *b, double seconds);
void report_json(FILE *out, const struct bench *b, double seconds);

/* ------------------------------------------------------------ cases.c */

void case_uncontended(struct bench *b);
void case_handoff(struct bench *b);
void case_throughput(struct bench *b);
void case_death(struct bench *b);
void case_scale(struct bench *b);
void case_idle(struct bench *b);
void case_goals(struct bench *b);

/* ------------------------------------------------------------ cluster.c */

/* (7): cluster mode on a 3-member etcd against etcd's lock recipe. */
void case_cluster(struct bench *b);

/* ------------------------------------------------------------ intercept.c */

/* (8): a lock call under libarbiter-intercept.so against one without. */
void case_intercept(struct bench *b);
/* The program (8) measures: `arbiter-bench --lockcost FILE ROUNDS`. */
int intercept_lockcost(const char *file, const char *rounds);

/* ------------------------------------------------------------ profile.c */

int profile_run(struct bench *b, const char *mode, long count, int clients);

/* Progress lines go to stderr so stdout stays one table (or JSON). */
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Something could not be measured: say so, remember it for the exit code. */
void bench_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
