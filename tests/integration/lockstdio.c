/*
 * lockstdio: a C program that locks the way C programs do, for
 * test_intercept.py: its lock file through stdio, closed with fclose()
 * (glibc closes the descriptor inside, past close()), or a vfork()ed
 * child that closes the locked descriptor before it would exec (as
 * posix_spawn's file actions do), while the parent keeps the lock.
 *
 *     lockstdio fclose|vfork FILE
 *
 * Prints "holding" once locked, then waits for a line on stdin; then
 * "fclose" closes the stream and prints "closed", "vfork" unlocks and
 * prints "unlocked", and both wait for another line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static void
await_line(void)
{
	char line[64];

	if (fgets(line, sizeof line, stdin) == NULL)
		exit(0);
}

int
main(int argc, char **argv)
{
	FILE *f;
	pid_t pid;

	if (argc != 3) {
		fprintf(stderr, "usage: lockstdio fclose|vfork FILE\n");
		return 64;
	}
	f = fopen(argv[2], "a+");
	if (f == NULL || flock(fileno(f), LOCK_EX | LOCK_NB) < 0) {
		perror(argv[2]);
		return 1;
	}
	if (strcmp(argv[1], "vfork") == 0) {
		pid = vfork();
		if (pid == 0) {
			close(fileno(f));
			_exit(0);
		}
		if (pid < 0 || waitpid(pid, NULL, 0) != pid) {
			perror("vfork");
			return 1;
		}
	}
	printf("holding\n");
	fflush(stdout);
	await_line();
	if (strcmp(argv[1], "fclose") == 0) {
		fclose(f);
		printf("closed\n");
	} else {
		flock(fileno(f), LOCK_UN);
		printf("unlocked\n");
	}
	fflush(stdout);
	await_line();
	return 0;
}
