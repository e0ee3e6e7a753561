/*
 * conn-t: the connection's types alone, for headers that hold a connection
 * list or a pointer without needing conn.c's functions (server.h). The
 * functions are in conn.h.
 */
#ifndef ARBITER_CONN_T_H
#define ARBITER_CONN_T_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include <event2/event_struct.h>

#include "lockmgr.h"

/* The most one read(2) from a client takes. */
#define CONN_READ_CHUNK 65536

enum conn_state {
	CONN_NEW,    /* nothing read yet */
	CONN_BINARY, /* framed protobuf */
	CONN_TEXT,   /* line-based admin protocol */
	CONN_DEAD,   /* closed; freed on a later loop turn */
};

struct server;
struct evbuffer;

struct conn {
	struct server *srv;
	int fd;
	uint64_t id;
	enum conn_state state;
	bool welcomed;
	bool in_flushq;
	bool want_write;  /* ev_write is armed */
	const char *kill; /* close after this turn, with this reason */
	bool refused;	  /* over max_connections: answer, then close */
	struct event ev_read;
	struct event ev_write;
	struct event ev_deadline; /* handshake deadline, until Welcome */
	struct evbuffer *in;
	struct evbuffer *out;
	size_t out_counted; /* its share of server.out_total */
	bool linger;	    /* kill only once the output is written */
	bool eof;	    /* text: the peer shut down its side */
	uint8_t stream;	    /* text: a status/stats reply being produced */
	uint64_t stream_cursor;
	struct lm_owner owner; /* pid, uid, gid and name live here */
	uint64_t t_connected;  /* monotonic ns */
	TAILQ_ENTRY(conn) entry;
	TAILQ_ENTRY(conn) flush_entry;
};

TAILQ_HEAD(conn_list, conn);

#endif
