/*
 * admin: the line-based text protocol on the daemon's socket (see admin.c).
 */
#ifndef ARBITER_ADMIN_H
#define ARBITER_ADMIN_H

struct conn;

/* Run the complete lines in c's input. */
void admin_input(struct conn *c);
/* Produce the next part of a streamed reply (c->stream set). */
void admin_stream(struct conn *c);

#endif
