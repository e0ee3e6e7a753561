/*
 * metrics: Prometheus /metrics and /healthz over HTTP (see metrics.c).
 */
#ifndef ARBITER_METRICS_H
#define ARBITER_METRICS_H

#include <stddef.h>

#include <event2/buffer.h>

struct server;

/* Listen on metrics.listen if set; -1 with err when it cannot. */
int metrics_start(struct server *srv, char *err, size_t errlen);
void metrics_stop(struct server *srv);
/* The exposition text, for /metrics and for tests. */
void metrics_render(struct server *srv, struct evbuffer *b);

#endif
