/*
 * defaults: the values the daemon and every client must agree on without a
 * config file, kept in one header so they cannot drift apart. The Python
 * client mirrors default_socket_path(); a test checks both give one answer.
 */
#ifndef ARBITER_DEFAULTS_H
#define ARBITER_DEFAULTS_H

#include <stdio.h>
#include <unistd.h>

/*
 * The socket path when neither a config nor $ARBITER_SOCKET names one:
 * /run/arbiter/arbiter.sock for root, /tmp/arbiter-UID/arbiter.sock for
 * anyone else (like tmux, so an unprivileged `make run` works as is).
 */
static inline void
arb_default_socket_path(char *buf, size_t len)
{
	uid_t uid = getuid();

	if (uid == 0)
		snprintf(buf, len, "/run/arbiter/arbiter.sock");
	else
		snprintf(buf, len, "/tmp/arbiter-%u/arbiter.sock",
			 (unsigned)uid);
}

#define ARB_DEFAULT_CONFIG "/etc/arbiter/arbiter.conf"

#endif
