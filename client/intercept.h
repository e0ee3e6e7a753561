/*
 * intercept.h: the environment that configures libarbiter-intercept.so,
 * the LD_PRELOAD shim that turns an unmodified program's locks on its lock
 * files into arbiter leases. `arbiterctl intercept` sets these variables;
 * a Dockerfile ENV or a Kubernetes env block can set them as well.
 */
#ifndef ARBITER_INTERCEPT_H
#define ARBITER_INTERCEPT_H

/* The files to intercept, ':'-separated; a folder means every file under
 * it. Unset or empty: the shim does nothing. */
#define INTERCEPT_ENV_FILES "ARBITER_INTERCEPT_FILES"
/* The resource every intercepted lock leases; default: the lock file's
 * absolute path (the name arbiter_client.FileLock uses too). */
#define INTERCEPT_ENV_RESOURCE "ARBITER_INTERCEPT_RESOURCE"
/* "exclusive" or "shared" leases whatever the lock's own kind; unset: as
 * the lock says (a shared lock leases shared). */
#define INTERCEPT_ENV_MODE "ARBITER_INTERCEPT_MODE"
/* Seconds a non-blocking lock waits for its lease before failing as the
 * kernel would (EWOULDBLOCK); unset or "forever": no bound. */
#define INTERCEPT_ENV_WAIT "ARBITER_INTERCEPT_WAIT"
/* "lock" (default): when the arbiter cannot be reached, say so once and
 * take the plain lock; "fail": the lock fails with ENOLCK. */
#define INTERCEPT_ENV_ON_UNAVAILABLE "ARBITER_INTERCEPT_ON_UNAVAILABLE"
/* "1": one stderr line per lease taken, waited for and ended. */
#define INTERCEPT_ENV_VERBOSE "ARBITER_INTERCEPT_VERBOSE"
/* Where arbiterctl finds the shim when not beside itself. */
#define INTERCEPT_ENV_LIB "ARBITER_INTERCEPT_LIB"

#define INTERCEPT_LIB_NAME "libarbiter-intercept.so"

#endif
