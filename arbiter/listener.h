/*
 * listener: one listening socket and its accept loop (see listener.c).
 */
#ifndef ARBITER_LISTENER_H
#define ARBITER_LISTENER_H

#include <stdbool.h>
#include <stdint.h>

struct event;
struct server;

/*
 * Every listener (the Unix socket, the metrics port) backs off the same way
 * when the process is out of descriptors: it stops polling until a client
 * descriptor is closed or a second passes, and says so once per pause.
 */
struct listener {
	struct server *srv;
	const char *name; /* for logs: "socket" or "metrics" */
	int fd;		  /* the listening socket; not owned */
	struct event *ev_accept;
	struct event *ev_resume; /* the one-second back-off */
	bool paused;
	unsigned pauses;   /* back-offs since the last accept that worked */
	uint64_t t_paused; /* monotonic ns, first of those */
	/* Owns fd from then on: serve it or close it. */
	void (*accepted)(struct listener *l, int fd);
	void *arg;
};

/* Start polling l->fd; accepted() gets each new connection. */
int listener_start(struct listener *l, struct server *srv, int fd,
		   const char *name,
		   void (*accepted)(struct listener *l, int fd), void *arg);
/* Stop polling and free the events (the socket stays open); idempotent. */
void listener_stop(struct listener *l);
/* A paused listener polls again now (a client descriptor was closed). */
void listener_resume(struct listener *l);

#endif
