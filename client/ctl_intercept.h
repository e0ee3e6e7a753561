/*
 * ctl_intercept.h: arbiterctl's `intercept` command, which runs a program
 * with libarbiter-intercept.so preloaded (ctl_intercept.c).
 */
#ifndef ARBITER_CTL_INTERCEPT_H
#define ARBITER_CTL_INTERCEPT_H

#include <stdio.h>

/* arbiterctl intercept ARGS: argv[0] is "intercept". Execs CMD; returns
 * only when that fails, with the exit status. */
int ctl_intercept(int argc, char **argv);
/* The paragraph of `arbiterctl help intercept`. */
void ctl_intercept_usage(FILE *out);

/* From arbiterctl.c: the --trust-uid values given, comma-separated, for
 * the program's ARBITER_TRUST_UID. */
extern char trust_env[512];

#endif
