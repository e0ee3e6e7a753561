/*
 * report: the Stats and Status replies, and the renderings of one
 * resource's figures that the protobuf reply and the text protocol share
 * (see report.c).
 */
#ifndef ARBITER_REPORT_H
#define ARBITER_REPORT_H

#include <stddef.h>

#include "codec.h"
#include "stats.h"

struct conn;
struct dispatch_reply;

/* The request table's handlers for Stats and Status (paged replies). */
void report_stats(struct conn *c, const Arbiter__Request *req,
		  struct dispatch_reply *rp);
void report_status(struct conn *c, const Arbiter__Request *req,
		   struct dispatch_reply *rp);

/*
 * Set every field of f on rs, found by name in rs's message descriptor;
 * the two histograms are filled in hists[] and pointed at. A field the
 * message lacks, or has with another type, is left unset (the unit tests
 * make sure there is none).
 */
/* A histogram summary as its protobuf message. */
void report_fill_hist(Arbiter__Histogram *h, const struct hist_summary *s);
void report_pb_figures(Arbiter__ResourceStats *rs,
		       Arbiter__Histogram hists[STATS_NHISTS],
		       const struct stats_figures *f);

/* One field as text protocol lines ("name:value\n"); snprintf's result. */
int report_text_field(const struct stats_field *fd, const struct stats_value *v,
		      char *buf, size_t len);

#endif
