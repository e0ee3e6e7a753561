/*
 * Helper threads (the standby's lock wait, the state writer): they do one
 * blocking job and signal the loop through an eventfd.
 */
#ifndef ARBITER_THREAD_H
#define ARBITER_THREAD_H

#include <pthread.h>
#include <signal.h>

/* Start fn(arg) on a thread that takes none of the daemon's signals: they
 * must reach the event loop. 0, or an errno value. */
static inline int
thread_start(pthread_t *tid, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(tid, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

#endif
