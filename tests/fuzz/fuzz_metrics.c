/*
 * fuzz_metrics: the metrics port end to end (metrics.c on http.c): each
 * input is what one TCP client sends to a real listener on 127.0.0.1, on
 * the daemon's own loop, under small limits (512-byte head, 64-byte body)
 * so that every refusal is within reach.
 *
 * The client sends its input, then half-closes and reads until the daemon
 * closes; the answer must be one well-formed reply (status line, a
 * Content-Length equal to the body, none for HEAD, "Connection: close")
 * with the status http_parse gives for the same bytes, or nothing when the
 * input ends before a whole request. A last byte with its top bit set makes
 * the client reset the connection right after sending instead (a peer gone
 * mid-reply). Either way the connection must be gone, with no timer run,
 * before the next input: the daemon needs none once the peer has left.
 * A violation or a hang aborts.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "fuzz_server.h"
#include "http.h"
#include "metrics.h"

#define MAX_HEAD  512
#define MAX_BODY  64
#define PASS_MAX  100000
#define REPLY_MAX (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct server srv;
static struct sockaddr_in addr;
static char reply[REPLY_MAX];

static void
fail(const char *what, const uint8_t *data, size_t size)
{
	fprintf(stderr, "fuzz_metrics: %s (input of %zu bytes: '%.*s')\n", what,
		size, (int)(size < 200 ? size : 200), (const char *)data);
	abort();
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char listen[64], err[1024];
	char head[] = "metrics.max_header_bytes=512";
	char body[] = "metrics.max_body_bytes=64";
	char *overrides[] = {listen, head, body};
	socklen_t alen = sizeof addr;
	int s;

	(void)argc;
	(void)argv;
	fuzz_init();
	/* A free port: bound, named, closed, then the daemon's. */
	s = socket(AF_INET, SOCK_STREAM, 0);
	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 ||
	    getsockname(s, (struct sockaddr *)&addr, &alen) < 0) {
		perror("fuzz_metrics: a free port on 127.0.0.1");
		abort();
	}
	close(s);
	snprintf(listen, sizeof listen, "metrics.listen=127.0.0.1:%u",
		 (unsigned)ntohs(addr.sin_port));
	if (config_load(&srv.cfg, NULL, overrides, 3, err, sizeof err) < 0 ||
	    server_core_init(&srv, err, sizeof err) < 0 ||
	    metrics_start(&srv, err, sizeof err) < 0) {
		fprintf(stderr, "fuzz_metrics: %s\n", err);
		abort();
	}
	return 0;
}

/* The status the daemon must answer data with; 0: no reply at all. */
static int
expected_status(const uint8_t *data, size_t size, bool *head_only)
{
	struct http_request r;

	http_request_init(&r);
	switch (http_parse(&r, (const char *)data, size, MAX_HEAD, MAX_BODY)) {
	case HTTP_MORE:
		return 0; /* closed before a whole head */
	case HTTP_ERROR:
		*head_only = r.head_only;
		return r.status;
	case HTTP_REQUEST:
		break;
	}
	*head_only = r.head_only;
	if (r.body_len > size - r.head_len)
		return 0; /* closed mid-body */
	if (r.route == HTTP_ROUTE_METRICS)
		return 200;
	/* The fuzzed daemon is idle: not ready. */
	return r.route == HTTP_ROUTE_HEALTHZ ? 503 : 404;
}

static void
check_reply(const uint8_t *data, size_t size, size_t n)
{
	bool head_only = false;
	int want = expected_status(data, size, &head_only), status = 0;
	const char *end, *cl;
	size_t body;
	char *e;

	if (want == 0) {
		if (n != 0)
			fail("a reply to an incomplete request", data, size);
		return;
	}
	reply[n < REPLY_MAX ? n : REPLY_MAX - 1] = '\0';
	if (n < 16 || sscanf(reply, "HTTP/1.1 %3d ", &status) != 1)
		fail("no status line", data, size);
	if (status != want) {
		fprintf(stderr,
			"fuzz_metrics: answered %d, the parser says "
			"%d\n",
			status, want);
		fail("the wrong status", data, size);
	}
	end = strstr(reply, "\r\n\r\n");
	if (end == NULL)
		fail("no end of the reply head", data, size);
	if (strstr(reply, "\r\nConnection: close\r\n") == NULL)
		fail("no Connection: close", data, size);
	cl = strstr(reply, "\r\nContent-Length: ");
	if (cl == NULL || cl > end)
		fail("no Content-Length", data, size);
	body = n - (size_t)(end + 4 - reply);
	if (head_only ? body != 0
		      : strtoull(cl + 18, &e, 10) != body || *e != '\r')
		fail("a body that is not what Content-Length says", data, size);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool reset = fuzz_flags_from(data, size) != 0;
	bool shut = false, eof = false, closed = false;
	size_t off = 0, n = 0;
	int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	/* Nonblocking: libFuzzer's SIGALRM would interrupt a blocking one. */
	if (c < 0 || (connect(c, (struct sockaddr *)&addr, sizeof addr) < 0 &&
		      errno != EINPROGRESS && errno != EINTR)) {
		perror("fuzz_metrics: connect");
		abort();
	}
	for (;;) {
		struct pollfd pfd = {c, POLLOUT, 0};
		int e = 0;
		socklen_t elen = sizeof e;

		if (poll(&pfd, 1, 5000) < 0 && errno == EINTR)
			continue;
		if (!(pfd.revents & (POLLOUT | POLLERR | POLLHUP)) ||
		    getsockopt(c, SOL_SOCKET, SO_ERROR, &e, &elen) < 0 || e) {
			fprintf(stderr, "fuzz_metrics: connect: %s\n",
				strerror(e ? e : ETIMEDOUT));
			abort();
		}
		break;
	}
	for (long pass = 0;; pass++) {
		if (pass > PASS_MAX)
			fail("the connection did not settle", data, size);
		event_base_loop(srv.base, EVLOOP_NONBLOCK);
		if (off < size && !shut) {
			ssize_t k = send(c, data + off, size - off,
					 MSG_NOSIGNAL | MSG_DONTWAIT);

			if (k > 0)
				off += (size_t)k;
			else if (k < 0 && errno != EAGAIN && errno != EINTR)
				fail("the daemon closed while it was sent to",
				     data, size);
		}
		/* A reset waits until the daemon holds the connection. */
		if (off == size && !shut &&
		    (!reset || metrics_nconns(&srv) > 0)) {
			if (reset) {
				struct linger lg = {1, 0};

				setsockopt(c, SOL_SOCKET, SO_LINGER, &lg,
					   sizeof lg);
				close(c);
				closed = eof = true;
			} else {
				shutdown(c, SHUT_WR);
			}
			shut = true;
		}
		while (!eof) {
			ssize_t k =
			    recv(c, reply + n, REPLY_MAX - 1 - n, MSG_DONTWAIT);

			if (k < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			if (k < 0)
				fail("the connection was reset", data, size);
			if (k == 0)
				eof = true;
			n += (size_t)k;
			if (n == REPLY_MAX - 1)
				fail("a reply over 1 MiB", data, size);
		}
		if (eof && metrics_nconns(&srv) == 0)
			break;
	}
	event_base_loop(srv.base, EVLOOP_NONBLOCK); /* the reaper */
	if (!closed)
		close(c);
	if (!reset)
		check_reply(data, size, n);
	return 0;
}
