/*
 * intercept: what one lock call costs, timed in a program the bench runs
 * with and without the LD_PRELOAD shim libarbiter-intercept.so
 * (client/intercept.c). The program is this binary, run again in a hidden
 * mode:
 *
 *     arbiter-bench --lockcost FILE ROUNDS
 *
 * opens FILE with open(2), so the shim sees it opened, and prints the
 * nanoseconds of one flock(LOCK_EX) + flock(LOCK_UN) pair, of one
 * fcntl(F_SETLK) write lock + unlock pair and of one fcntl(F_GETFL): the
 * best of five timed loops of ROUNDS calls each.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "bench.h"

#define LOCKCOST_RUNS 5

enum { K_FLOCK, K_FCNTL, K_GETFL, K_KINDS };

static const char *const kind_key[K_KINDS] = {"flock", "fcntl", "getfl"};

/* ------------------------------------------------------------ the program */

static int
lock_call(int fd, int kind)
{
	struct flock fl = {.l_whence = SEEK_SET};

	switch (kind) {
	case K_FLOCK:
		if (flock(fd, LOCK_EX) < 0)
			return -1;
		return flock(fd, LOCK_UN);
	case K_FCNTL:
		fl.l_type = F_WRLCK;
		if (fcntl(fd, F_SETLK, &fl) < 0)
			return -1;
		fl.l_type = F_UNLCK;
		return fcntl(fd, F_SETLK, &fl);
	default:
		return fcntl(fd, F_GETFL) < 0 ? -1 : 0;
	}
}

int
intercept_lockcost(const char *file, const char *rounds_arg)
{
	int rounds = atoi(rounds_arg);
	int fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

	if (fd < 0 || rounds <= 0) {
		fprintf(stderr, "arbiter-bench --lockcost %s %s: %s\n", file,
			rounds_arg,
			fd < 0 ? strerror(errno) : "ROUNDS must be > 0");
		return 1;
	}
	for (int kind = 0; kind < K_KINDS; kind++) {
		double best = 0;

		for (int run = 0; run < LOCKCOST_RUNS; run++) {
			uint64_t t0 = proc_now_ns();
			double t;

			for (int i = 0; i < rounds; i++)
				if (lock_call(fd, kind) < 0) {
					fprintf(stderr,
						"arbiter-bench --lockcost: "
						"%s: %s\n",
						kind_key[kind],
						strerror(errno));
					return 1;
				}
			t = (double)(proc_now_ns() - t0) / rounds;
			if (run == 0 || t < best)
				best = t;
		}
		printf("%s %.1f\n", kind_key[kind], best);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}
