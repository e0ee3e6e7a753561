/*
 * lock: one interface over the four locks the bench compares.
 *
 *   arbiter  libarbiter's blocking arb_acquire / arb_release, one connection
 *            per lock object (so per process).
 *   flock    flock(2) LOCK_EX / LOCK_UN on a file in the bench's temporary
 *            folder, one open file description per lock object.
 *   mutex    a PTHREAD_PROCESS_SHARED mutex in shared memory (one, for the
 *            handoff measurement).
 *   redis    the usual single-instance Redis lock: SET key token NX PX 30000
 *            to take it, and a compare-and-delete script (EVALSHA) to let it
 *            go. A waiter that finds the key taken sleeps redis_sleep_us
 *            (1 ms, like redis-py's Lock(sleep=0.001)) and tries again, which
 *            is how redis-py, node-redlock and go-redsync wait. RESP is
 *            spoken by hand over the Unix socket: no hiredis needed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "arbiter.h"
#include "bench.h"

#define REDIS_UNLOCK_SCRIPT                                                    \
	"if redis.call('get', KEYS[1]) == ARGV[1] then "                       \
	"return redis.call('del', KEYS[1]) else return 0 end"

const char *
lock_name(enum lock_kind k)
{
	static const char *const names[] = {
	    [LOCK_ARBITER] = "arbiter",
	    [LOCK_FLOCK] = "flock",
	    [LOCK_MUTEX] = "mutex",
	    [LOCK_REDIS] = "redis",
	    [LOCK_ARBITER_NOWAIT] = "arbiter-nowait",
	};

	return names[k];
}

/* ------------------------------------------------------------ RESP */

static int
resp_send(struct lock *l, int argc, const char *const *argv)
{
	char buf[1024];
	int off = snprintf(buf, sizeof buf, "*%d\r\n", argc);

	for (int i = 0; i < argc; i++) {
		size_t len = strlen(argv[i]);

		if (off + (int)len + 32 > (int)sizeof buf)
			return -EMSGSIZE;
		off += snprintf(buf + off, sizeof buf - (size_t)off,
				"$%zu\r\n%s\r\n", len, argv[i]);
	}
	return proc_write_all(l->fd, buf, (size_t)off) < 0 ? -EIO : 0;
}

static int
resp_getc(struct lock *l)
{
	if (l->roff == l->rlen) {
		ssize_t n;

		do
			n = read(l->fd, l->rbuf, sizeof l->rbuf);
		while (n < 0 && errno == EINTR);
		if (n <= 0)
			return -1;
		l->roff = 0;
		l->rlen = (size_t)n;
	}
	return (unsigned char)l->rbuf[l->roff++];
}

/* One CRLF-terminated line, without the CRLF. */
static int
resp_line(struct lock *l, char *out, size_t cap)
{
	size_t n = 0;
	int c;

	while ((c = resp_getc(l)) >= 0) {
		if (c == '\r')
			continue;
		if (c == '\n') {
			out[n] = '\0';
			return 0;
		}
		if (n + 1 < cap)
			out[n++] = (char)c;
	}
	return -1;
}

/*
 * Read one reply. *type is its first byte ('+', '-', ':', '$'); a bulk
 * string is copied into out (NUL-terminated), a nil bulk gives *num = -1.
 */
static int
resp_reply(struct lock *l, char *type, long long *num, char *out, size_t cap)
{
	char line[512];

	if (resp_line(l, line, sizeof line) < 0)
		return -EIO;
	*type = line[0];
	*num = 0;
	if (out != NULL && cap > 0)
		out[0] = '\0';
	switch (line[0]) {
	case '+':
	case '-':
		if (out != NULL && cap > 0) {
			size_t k = strlen(line + 1);

			/* Truncating a status or error line is fine. */
			if (k >= cap)
				k = cap - 1;
			memcpy(out, line + 1, k);
			out[k] = '\0';
		}
		return 0;
	case ':':
		*num = strtoll(line + 1, NULL, 10);
		return 0;
	case '$':
		*num = strtoll(line + 1, NULL, 10);
		if (*num < 0)
			return 0;
		for (long long i = 0; i < *num + 2; i++) {
			int c = resp_getc(l);

			if (c < 0)
				return -EIO;
			if (out != NULL && i < *num && (size_t)i + 1 < cap) {
				out[i] = (char)c;
				out[i + 1] = '\0';
			}
		}
		return 0;
	default:
		return -EPROTO;
	}
}

static int
redis_open(struct lock *l)
{
	const char *load[] = {"SCRIPT", "LOAD", REDIS_UNLOCK_SCRIPT};
	long long num;
	char type;
	int rc;

	if (l->b->redis_sock[0] == '\0')
		return -ENOENT;
	l->fd = proc_connect(l->b->redis_sock);
	if (l->fd < 0)
		return l->fd;
	snprintf(l->key, sizeof l->key, "bench:%s", l->resource);
	rc = resp_send(l, 3, load);
	if (rc == 0)
		rc = resp_reply(l, &type, &num, l->sha, sizeof l->sha);
	if (rc == 0 && type != '$')
		rc = -EPROTO;
	return rc;
}

static int
redis_acquire(struct lock *l)
{
	const char *set[] = {"SET", l->key, l->token, "NX", "PX", "30000"};
	long long num;
	char type;
	int rc;

	for (;;) {
		/* A fresh token per attempt, as redis-py does (uuid). */
		snprintf(l->token, sizeof l->token, "%d-%llu", (int)getpid(),
			 (unsigned long long)++l->seq);
		rc = resp_send(l, 6, set);
		if (rc == 0)
			rc = resp_reply(l, &type, &num, NULL, 0);
		if (rc < 0)
			return rc;
		if (type == '+')
			return 0;
		if (type != '$')
			return -EPROTO;
		if (atomic_load_explicit(&l->b->shm->stop,
					 memory_order_relaxed))
			return 1;
		l->retries++;
		proc_sleep_us(l->b->n.redis_sleep_us);
	}
}

static int
redis_release(struct lock *l)
{
	const char *del[] = {"EVALSHA", l->sha, "1", l->key, l->token};
	long long num;
	char type;
	int rc = resp_send(l, 5, del);

	if (rc == 0)
		rc = resp_reply(l, &type, &num, NULL, 0);
	if (rc == 0 && (type != ':' || num != 1))
		rc = -EPROTO; /* we did not hold it: the lock is broken */
	return rc;
}

/* ------------------------------------------------------------ arbiter */

static void
on_queued(void *ctx, const char *resource, uint32_t position,
	  uint32_t holder_pid, const char *holder_name)
{
	struct lock *l = ctx;

	(void)resource;
	(void)position;
	(void)holder_pid;
	(void)holder_name;
	l->queued = true;
	if (l->queued_fd >= 0)
		(void)!write(l->queued_fd, "q", 1);
}

/* ------------------------------------------------------------ interface */

int
lock_open(struct lock *l, enum lock_kind k, const struct bench *b,
	  const char *resource)
{
	char path[PATH_MAX + 80];
	int rc;

	memset(l, 0, sizeof *l);
	l->kind = k;
	l->b = b;
	l->fd = -1;
	l->queued_fd = -1;
	snprintf(l->resource, sizeof l->resource, "%s", resource);
	switch (k) {
	case LOCK_ARBITER:
	case LOCK_ARBITER_NOWAIT:
		rc = arb_connect(&l->arb, b->sock, "bench");
		if (rc < 0)
			fprintf(stderr, "arbiter-bench: %s\n",
				arb_connect_error());
		return rc;
	case LOCK_FLOCK:
		snprintf(path, sizeof path, "%s/flock-%s", b->tmp, resource);
		l->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		return l->fd < 0 ? -errno : 0;
	case LOCK_MUTEX:
		return 0;
	case LOCK_REDIS:
		return redis_open(l);
	}
	return -EINVAL;
}

int
lock_acquire(struct lock *l)
{
	struct arb_acquire_opts o = {.lock_delay_ms = -1};
	struct arb_lease lease;
	int rc;

	switch (l->kind) {
	case LOCK_ARBITER:
	case LOCK_ARBITER_NOWAIT:
		if (l->want_queued) { /* the handoff needs to know */
			o.on_queued = on_queued;
			o.ctx = l;
		}
		l->queued = false;
		rc = arb_acquire(l->arb, l->resource, ARB_EXCLUSIVE,
				 ARB_WAIT_FOREVER, &o, &lease);
		if (rc < 0)
			return rc;
		l->lease = lease.id;
		return 0;
	case LOCK_FLOCK:
		while ((rc = flock(l->fd, LOCK_EX)) < 0 && errno == EINTR)
			;
		return rc < 0 ? -errno : 0;
	case LOCK_MUTEX:
		return -pthread_mutex_lock(&l->b->shm->mutex);
	case LOCK_REDIS:
		return redis_acquire(l);
	}
	return -EINVAL;
}

int
lock_release(struct lock *l)
{
	switch (l->kind) {
	case LOCK_ARBITER:
		return arb_release(l->arb, l->lease);
	case LOCK_ARBITER_NOWAIT:
		return arb_release_nowait(l->arb, l->lease);
	case LOCK_FLOCK:
		return flock(l->fd, LOCK_UN) < 0 ? -errno : 0;
	case LOCK_MUTEX:
		return -pthread_mutex_unlock(&l->b->shm->mutex);
	case LOCK_REDIS:
		return redis_release(l);
	}
	return -EINVAL;
}

void
lock_close(struct lock *l)
{
	if (l->arb != NULL)
		arb_close(l->arb);
	l->arb = NULL;
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
}
