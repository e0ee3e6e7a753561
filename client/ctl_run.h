/*
 * ctl_run.h: arbiterctl's `run` command, and the few helpers of
 * arbiterctl.c it shares (connecting, errors, usage), so that the command
 * that runs a process under a lease lives in a file of its own.
 */
#ifndef ARBITER_CTL_RUN_H
#define ARBITER_CTL_RUN_H

#include <stdio.h>

#include "arbiter.h"

/* arbiterctl's exit statuses (sysexits.h where one fits). */
#define EXIT_USAGE    64  /* bad command line */
#define EXIT_UNAVAIL  69  /* cannot reach the daemon */
#define EXIT_SOFTWARE 70  /* the daemon refused for another reason */
#define EXIT_REVOKED  75  /* run: the lease was lost under the command */
#define EXIT_NOPERM   77  /* the socket or its server is not trusted */
#define EXIT_NOEXEC   126 /* run: command found but not executable */
#define EXIT_NOTFOUND 127 /* run: command not found */

/* arbiterctl run ARGS: argv[0] is "run". Returns the exit status. */
int ctl_run(int argc, char **argv);
/* The paragraph of `arbiterctl help run`, under the synopsis that
 * arbiterctl.c's command table holds. */
void ctl_run_usage(FILE *out);

/* From arbiterctl.c. */
extern int io_timeout_ms;	/* -t, in ms; 0: no bound */
extern const char *socket_path; /* -S, or NULL: the default */
void usage(FILE *out);
/* All about one command (`arbiterctl help NAME`); -1 if there is none. */
int command_help(FILE *out, const char *name);
void die(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
double parse_secs(const char *s, const char *what);
arb_client *connect_or_die(const char *name);
int exit_for(int rc);

#endif
