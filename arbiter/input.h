/*
 * input: bytes from a client become requests (see input.c).
 */
#ifndef ARBITER_INPUT_H
#define ARBITER_INPUT_H

#include <event2/util.h>

/* The read callback of every connection; arg is its struct conn. */
void input_read_cb(evutil_socket_t fd, short what, void *arg);

#endif
