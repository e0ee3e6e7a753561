/*
 * metrics: Prometheus /metrics and /healthz over HTTP (see metrics.c).
 */
#ifndef ARBITER_METRICS_H
#define ARBITER_METRICS_H

#include <stddef.h>

#include <event2/buffer.h>

struct server;
struct listener;

/* Listen on metrics.listen if set; -1 with err when it cannot. */
int metrics_start(struct server *srv, char *err, size_t errlen);
void metrics_stop(struct server *srv);
/* Metrics connections open now (0 when off). */
unsigned metrics_nconns(const struct server *srv);
/* The metrics listener, NULL when off: paused and resumed with the others. */
struct listener *metrics_listener(struct server *srv);
/* The exposition text, for /metrics and for tests. */
void metrics_render(struct server *srv, struct evbuffer *b);

#endif
