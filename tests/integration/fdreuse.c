/*
 * fdreuse: for test_intercept.py, a lock file that lands on a descriptor
 * number an unrelated file had a moment before. The shim lets lock calls
 * on descriptors it saw opened on other files go straight to the kernel;
 * each way of freeing a number and each way of opening a file must make
 * it look again, or the lock file's lock would pass without a lease.
 *
 *     fdreuse HOW FILE
 *
 * HOW frees the number of FILE.other (opened with open()) and puts FILE
 * on it:
 *   close, close_range, closefrom   the wrapped close, then a raw openat
 *                                   system call (no wrapper sees it)
 *   dup2, dupfd                     a raw close, then dup2 / F_DUPFD of
 *                                   FILE, opened raw, onto the number
 *   proc                            a raw close, then open() of
 *                                   /proc/self/fd/N of FILE opened raw
 *   open, open64, openat, open_2, creat, fopen
 *                                   a raw close, then that call (open_2:
 *                                   open() with flags not known at build
 *                                   time, which _FORTIFY_SOURCE turns into
 *                                   __open_2)
 *   freopen                         FILE.other by fopen, then freopen
 * then flock(LOCK_EX | LOCK_NB) on it.
 *
 *     fdreuse end-close_range|end-closefrom|end-fcntl-close_range FILE
 *
 * locks FILE (flock; fcntl F_SETLK for end-fcntl-), and after the first
 * line on stdin closes it with close_range / closefrom.
 *
 * Prints "holding" once locked (or "not reused" and exits 2 when the
 * number was not reused, which would prove nothing), then waits for a
 * line on stdin; the end- forms then print "closed" and wait again.
 * Build with -D_FORTIFY_SOURCE=2 -O2. Linked statically it is also the
 * program `arbiterctl intercept` must refuse.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <unistd.h>

static void
await_line(void)
{
	char line[64];

	if (fgets(line, sizeof line, stdin) == NULL)
		exit(0);
}

static int
raw_open(const char *path)
{
	return (int)syscall(SYS_openat, AT_FDCWD, path, O_RDWR | O_CREAT, 0644);
}

static void
raw_close(int fd)
{
	(void)syscall(SYS_close, fd);
}

static int
die(const char *what)
{
	perror(what);
	return 1;
}

int
main(int argc, char **argv)
{
	static volatile int rdwr = O_RDWR; /* not known at build time */
	const char *how, *path;
	char other[4096];
	FILE *f = NULL;
	int n, fd = -1, t;

	if (argc != 3) {
		fprintf(stderr, "usage: fdreuse HOW FILE\n");
		return 64;
	}
	how = argv[1];
	path = argv[2];
	snprintf(other, sizeof other, "%s.other", path);
	t = raw_open(path); /* FILE exists from here on */
	if (t < 0)
		return die(path);
	raw_close(t);

	if (strncmp(how, "end-", 4) == 0) {
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};

		fd = open(path, O_RDWR);
		if (fd < 0 ||
		    (strstr(how, "fcntl") ? fcntl(fd, F_SETLK, &fl)
					  : flock(fd, LOCK_EX | LOCK_NB)) < 0)
			return die(path);
		printf("holding\n");
		fflush(stdout);
		await_line();
		if (strstr(how, "close_range") != NULL) {
			if (close_range((unsigned)fd, (unsigned)fd, 0) < 0)
				return die("close_range");
		} else {
			closefrom(fd);
		}
		printf("closed\n");
		fflush(stdout);
		await_line();
		return 0;
	}

	if (strcmp(how, "freopen") == 0) {
		f = fopen(other, "a+");
		if (f == NULL)
			return die(other);
		n = fileno(f);
		f = freopen(path, "a+", f);
		if (f == NULL)
			return die("freopen");
		fd = fileno(f);
		goto lock;
	}
	n = open(other, O_RDWR | O_CREAT, 0644);
	if (n < 0)
		return die(other);
	if (strcmp(how, "close") == 0) {
		close(n);
		fd = raw_open(path);
	} else if (strcmp(how, "close_range") == 0) {
		close_range((unsigned)n, (unsigned)n, 0);
		fd = raw_open(path);
	} else if (strcmp(how, "closefrom") == 0) {
		closefrom(n);
		fd = raw_open(path);
	} else if (strcmp(how, "dup2") == 0) {
		t = raw_open(path);
		raw_close(n);
		fd = dup2(t, n);
	} else if (strcmp(how, "proc") == 0) {
		char link[64];

		t = raw_open(path);
		raw_close(n);
		snprintf(link, sizeof link, "/proc/self/fd/%d", t);
		fd = open(link, O_RDWR);
	} else if (strcmp(how, "dupfd") == 0) {
		t = raw_open(path);
		raw_close(n);
		fd = fcntl(t, F_DUPFD, n);
	} else {
		raw_close(n);
		if (strcmp(how, "open") == 0)
			fd = open(path, O_RDWR);
		else if (strcmp(how, "open64") == 0)
			fd = open64(path, O_RDWR);
		else if (strcmp(how, "openat") == 0)
			fd = openat(AT_FDCWD, path, O_RDWR);
		else if (strcmp(how, "open_2") == 0)
			fd = open(path, rdwr);
		else if (strcmp(how, "creat") == 0)
			fd = creat(path, 0644);
		else if (strcmp(how, "fopen") == 0)
			fd = (f = fopen(path, "a+")) ? fileno(f) : -1;
		else {
			fprintf(stderr, "fdreuse: no such way: %s\n", how);
			return 64;
		}
	}
lock:
	if (fd < 0)
		return die(how);
	if (fd != n) {
		printf("not reused\n");
		return 2;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0)
		return die("flock");
	printf("holding\n");
	fflush(stdout);
	await_line();
	return 0;
}
