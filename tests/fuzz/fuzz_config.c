/*
 * fuzz_config: the bytes are a config file for config_load() (inih through
 * config.c's own line reader, the key table, every value parser, derive()).
 * On success the result is printed back and compared with the defaults, as
 * --check-config and SIGHUP do; either way nothing may leak.
 *
 * The file is a memfd named through /proc/self/fd, so nothing touches the
 * disk. config_load() only reads it; paths in it are never opened.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *devnull;
static struct config defaults;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[1024];

	(void)argc;
	(void)argv;
	/* ARBITER_* variables are an input of config_load too: keep them
	 * out, so a crash reproduces anywhere. */
	for (char **e = environ; *e != NULL;) {
		if (strncmp(*e, "ARBITER_", 8) == 0) {
			char name[256];

			snprintf(name, sizeof name, "%.*s",
				 (int)strcspn(*e, "="), *e);
			unsetenv(name);
			continue; /* environ shifted down */
		}
		e++;
	}
	devnull = fopen("/dev/null", "w");
	if (devnull == NULL ||
	    config_load(&defaults, NULL, NULL, 0, err, sizeof err) < 0)
		abort();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config c;
	char path[64], err[1024];
	int fd = memfd_create("arbiter.conf", MFD_CLOEXEC);
	size_t off = 0;

	if (fd < 0)
		abort();
	while (off < size) {
		ssize_t n = write(fd, data + off, size - off);

		if (n <= 0)
			abort();
		off += (size_t)n;
	}
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	memset(err, 'x', sizeof err);
	if (config_load(&c, path, NULL, 0, err, sizeof err) == 0) {
		config_print(&c, devnull);
		(void)config_restart_needed(&defaults, &c);
		(void)config_restart_needed(&c, &defaults);
		config_free(&c);
	} else if (memchr(err, '\0', sizeof err) == NULL || err[0] == '\0') {
		/* Every failure says why, in a terminated string. */
		abort();
	}
	close(fd);
	return 0;
}
