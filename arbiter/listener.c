/*
 * listener: one listening socket and its accept loop, shared by the Unix
 * socket (server.c) and the metrics port (metrics.c). Up to ACCEPT_BATCH
 * connections per wake-up go to the owner's accepted(); the owner decides
 * whether each may stay (limits, descriptors). Out of descriptors (or any
 * error that would fail again at once), the listener stops polling for a
 * second or until a client descriptor is closed, never spinning on a
 * level-triggered socket, and logs once per pause.
 *
 * What to do with a connection, and when descriptors are short, is the
 * owner's; this file only accepts.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "listener.h"
#include "log.h"
#include "server.h"

#define ACCEPT_BATCH 64

static void
listener_pause(struct listener *l, int err)
{
	struct timeval tv = {1, 0};

	/* Out of descriptors: stop polling until a client descriptor is
	 * closed (server_fd_freed) or a second passes. A level-triggered
	 * listener left armed would wake the loop again at once, for as long
	 * as a connection waits in the queue. */
	event_del(l->ev_accept);
	evtimer_add(l->ev_resume, &tv);
	l->paused = true;
	if (l->pauses++ == 0) {
		l->t_paused = now_ns();
		log_warn("accept paused",
			 "listener=%s error=\"%s\" nofile=%" PRIu64
			 " conns=%u hint=\"raise the open-file limit or "
			 "lower limits.max_connections\"",
			 l->name, strerror(err), l->srv->fd_limit,
			 l->srv->nconns);
	}
}

static void
listener_cb(evutil_socket_t lfd, short what, void *arg)
{
	struct listener *l = arg;

	(void)what;
	for (int i = 0; i < ACCEPT_BATCH && l->ev_accept != NULL; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			/* Errors of the one connection that went away
			 * (accept(2) asks to retry those at once). */
			if (errno == EINTR || errno == ECONNABORTED ||
			    errno == EPROTO || errno == ENETDOWN ||
			    errno == ENETUNREACH || errno == EHOSTDOWN ||
			    errno == EHOSTUNREACH || errno == ENONET ||
			    errno == ENOPROTOOPT || errno == EOPNOTSUPP)
				continue;
			/* EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything that
			 * would fail again at once: back off, never spin. */
			listener_pause(l, errno);
			return;
		}
		if (l->pauses > 0) {
			log_info("accept resumed",
				 "listener=%s paused_ms=%" PRIu64 " pauses=%u",
				 l->name, (now_ns() - l->t_paused) / 1000000,
				 l->pauses);
			l->pauses = 0;
		}
		l->accepted(l, fd);
	}
}

static void
listener_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct listener *l = arg;

	(void)fd;
	(void)what;
	if (l->paused && !l->srv->stopping) {
		l->paused = false;
		event_add(l->ev_accept, NULL);
	}
}

void
listener_resume(struct listener *l)
{
	event_del(l->ev_resume);
	listener_resume_cb(-1, 0, l);
}

int
listener_start(struct listener *l, struct server *srv, int fd, const char *name,
	       void (*accepted)(struct listener *l, int fd), void *arg)
{
	memset(l, 0, sizeof *l);
	l->srv = srv;
	l->name = name;
	l->fd = fd;
	l->accepted = accepted;
	l->arg = arg;
	l->ev_accept =
	    event_new(srv->base, fd, EV_READ | EV_PERSIST, listener_cb, l);
	l->ev_resume = evtimer_new(srv->base, listener_resume_cb, l);
	if (l->ev_accept == NULL || l->ev_resume == NULL ||
	    event_add(l->ev_accept, NULL) < 0) {
		listener_stop(l);
		return -1;
	}
	return 0;
}

void
listener_stop(struct listener *l)
{
	if (l->ev_accept != NULL)
		event_free(l->ev_accept);
	if (l->ev_resume != NULL)
		event_free(l->ev_resume);
	l->ev_accept = l->ev_resume = NULL;
	l->paused = false;
}
