/*
 * lockcost: what one lock call costs, for test_intercept.py, which runs it
 * with and without libarbiter-intercept.so preloaded. Linked statically it
 * is also the program `arbiterctl intercept` must refuse.
 *
 *     lockcost FILE ROUNDS
 *
 * prints, for FILE, the nanoseconds of one flock(LOCK_EX) + flock(LOCK_UN)
 * pair, of one fcntl(F_SETLK) write lock + unlock pair, and of one
 * fcntl(F_GETFL): the best of five runs of ROUNDS each.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

static double
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int
pair(int fd, int what)
{
	struct flock fl = {.l_whence = SEEK_SET};

	switch (what) {
	case 0:
		return flock(fd, LOCK_EX) | flock(fd, LOCK_UN);
	case 1:
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
main(int argc, char **argv)
{
	static const char *const names[] = {"flock", "fcntl", "getfl"};
	int fd, rounds;

	if (argc != 3) {
		fprintf(stderr, "usage: lockcost FILE ROUNDS\n");
		return 64;
	}
	fd = open(argv[1], O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	rounds = atoi(argv[2]);
	if (fd < 0 || rounds <= 0) {
		perror(argv[1]);
		return 1;
	}
	for (int what = 0; what < 3; what++) {
		double best = 0;

		for (int run = 0; run < 5; run++) {
			double t0 = now_ns();

			for (int i = 0; i < rounds; i++)
				if (pair(fd, what) < 0) {
					perror(names[what]);
					return 1;
				}
			double t = (now_ns() - t0) / rounds;

			if (run == 0 || t < best)
				best = t;
		}
		printf("%s %.1f\n", names[what], best);
	}
	return 0;
}
