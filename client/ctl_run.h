/*
 * ctl_run.h: arbiterctl's `run` command, and the few helpers of
 * arbiterctl.c it shares (connecting, errors, usage), so that the command
 * that runs a process under a lease lives in a file of its own.
 */
#ifndef ARBITER_CTL_RUN_H
#define ARBITER_CTL_RUN_H

#include <stdio.h>

#include "arbiter.h"

/* arbiterctl run ARGS: argv[0] is "run". Returns the exit status. */
int ctl_run(int argc, char **argv);
/* The run paragraph of `arbiterctl --help`. */
void ctl_run_usage(FILE *out);

/* From arbiterctl.c. */
extern int io_timeout_ms; /* -t, in ms; 0: no bound */
void usage(FILE *out);
void die(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
double parse_secs(const char *s, const char *what);
arb_client *connect_or_die(const char *name);
int exit_for(int rc);

#endif
