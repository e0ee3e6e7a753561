/*
 * admin: the line-based text protocol on the daemon's socket, for humans and
 * shell tools in a pod (`socat - UNIX-CONNECT:/run/arbiter/arbiter.sock`).
 * A connection whose first byte is an ASCII letter lands here. Commands come
 * from one table with usage strings, so `help` cannot fall out of date.
 * Replies are Redis INFO-like: `# Section` headers and `key:value` lines,
 * ending with a line holding only "." so scripts know where a reply stops.
 *
 * `status` and `stats` may cover a million resources: tens of megabytes and
 * seconds of work. They are streamed: each loop turn that finds the
 * client's output drained produces the next part (a bounded number of
 * resources, walked with dispatch_scan), so the reply never sits whole in
 * memory and other clients are served between parts. Lines after such a
 * command wait until its reply is complete.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "admin.h"
#include "cluster.h"
#include "conn.h"
#include "dispatch.h"
#include "report.h"
#include "role.h"
#include "server.h"

static void out(struct conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
out(struct conn *c, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	conn_send_text(c, buf,
		       (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static void
end_reply(struct conn *c)
{
	out(c, ".\n");
}

static void
print_field(const struct stats_field *fd, const struct stats_value *v,
	    void *arg)
{
	char buf[256];
	int n = report_text_field(fd, v, buf, sizeof buf);

	if (n > 0)
		conn_send_text(arg, buf,
			       (size_t)n < sizeof buf ? (size_t)n
						      : sizeof buf - 1);
}

static void
print_figures(struct conn *c, const struct stats_res *r)
{
	struct stats_figures f;

	stats_since_reset(r, &f);
	stats_emit(&f, print_field, c);
}

enum { STREAM_NONE, STREAM_STATUS, STREAM_STATS };

/* Resources per part of a streamed reply (weighed as in Status pages). */
#define STREAM_STATUS_BUDGET 256
#define STREAM_STATS_BUDGET  64

/* The reply's parts come from conn_flush once what is queued (the header,
 * at least) has been written; never from here, so that a run of pipelined
 * commands cannot nest admin_input calls. Read nothing more until the reply
 * is out: the lines that follow wait in the socket, not in memory. */
static void
stream_start(struct conn *c, uint8_t kind)
{
	c->stream = kind;
	c->stream_cursor = 0;
	event_del(&c->ev_read);
}

static size_t
stats_one(void *e, void *arg)
{
	struct conn *c = arg;
	const struct stats_res *r = e;

	out(c, "# Resource %s\n", r->name);
	print_figures(c, r);
	return 1;
}

static void
cmd_stats(struct conn *c, const char *arg)
{
	struct server *srv = c->srv;

	out(c,
	    "# Server\nversion:%s\npid:%ld\nrole:%s\nuptime_seconds:%.3f\n"
	    "connections:%u\nstorage_locked:%d\nholders:%u\nwaiters:%u\n"
	    "token_last:%" PRIu64 "\ntoken_reserved:%" PRIu64
	    "\nstate_writes:%u\nstate_fsyncs:%u\nresources_tracked:%u\n",
	    ARBITER_VERSION, (long)getpid(), role_name(srv),
	    (double)(now_ns() - srv->t_start) / 1e9, srv->nconns,
	    srv->storage.held ? 1 : 0, srv->lm.nheld, srv->lm.nwaiting,
	    srv->lm.last_token, srv->lm.token_limit, srv->state_writes,
	    srv->state_fsyncs, srv->stats.nres);
	if (*arg != '\0') {
		struct stats_res *r = stats_find(&srv->stats, arg, strlen(arg));

		if (r != NULL)
			stats_one(r, c);
		end_reply(c);
		return;
	}
	out(c, "# Total\n");
	print_figures(c, &srv->stats.total);
	stream_start(c, STREAM_STATS);
}

/* ------------------------------------------------------------ cluster */

/* A set scalar field of m as text, rendered from the descriptor. */
static bool
field_text(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
	   char *buf, size_t len)
{
	const char *p = (const char *)m + f->offset;
	const ProtobufCEnumValue *ev;
	double d;
	float fl;

	if (f->label == PROTOBUF_C_LABEL_REPEATED ||
	    f->type == PROTOBUF_C_TYPE_MESSAGE ||
	    f->type == PROTOBUF_C_TYPE_BYTES)
		return false;
	if (f->type == PROTOBUF_C_TYPE_STRING) {
		const char *str = *(char *const *)p;

		if (str == NULL)
			return false;
		/* One line per field, whatever a host wrote into etcd. */
		snprintf(buf, len, "%s", str);
		for (char *q = buf; *q != '\0'; q++)
			if ((unsigned char)*q < 0x20 || *q == 0x7f)
				*q = '?';
		return true;
	}
	if (f->quantifier_offset != 0 &&
	    !*(const protobuf_c_boolean *)((const char *)m +
					   f->quantifier_offset))
		return false;
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		snprintf(buf, len, "%" PRId32, *(const int32_t *)p);
		return true;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		snprintf(buf, len, "%" PRIu32, *(const uint32_t *)p);
		return true;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		snprintf(buf, len, "%" PRId64, *(const int64_t *)p);
		return true;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		snprintf(buf, len, "%" PRIu64, *(const uint64_t *)p);
		return true;
	case PROTOBUF_C_TYPE_BOOL:
		snprintf(buf, len, "%d",
			 *(const protobuf_c_boolean *)p ? 1 : 0);
		return true;
	case PROTOBUF_C_TYPE_DOUBLE:
		memcpy(&d, p, sizeof d);
		snprintf(buf, len, "%.6f", d);
		return true;
	case PROTOBUF_C_TYPE_FLOAT:
		memcpy(&fl, p, sizeof fl);
		snprintf(buf, len, "%.6f", (double)fl);
		return true;
	case PROTOBUF_C_TYPE_ENUM:
		ev = protobuf_c_enum_descriptor_get_value(f->descriptor,
							  *(const int *)p);
		if (ev == NULL)
			return false;
		/* As the rest of the text protocol spells them. */
		snprintf(buf, len, "%s", ev->name);
		for (char *q = buf; *q != '\0'; q++)
			*q = (char)tolower((unsigned char)*q);
		return true;
	default:
		return false;
	}
}

/* m's set scalar fields on one line: name=value, space-separated. */
static void
out_pairs(struct conn *c, const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const char *sep = "";
	char buf[256];

	for (unsigned i = 0; i < d->n_fields; i++)
		if (field_text(m, &d->fields[i], buf, sizeof buf)) {
			out(c, "%s%s=%s", sep, d->fields[i].name, buf);
			sep = " ";
		}
	out(c, "\n");
}

/* The session, as Status.cluster has it: a cluster_FIELD line per field
 * (a histogram on one line). Nothing outside cluster mode. */
static void
status_cluster(struct conn *c)
{
	struct dispatch_reply rp = {0};
	const Arbiter__Cluster *m = cluster_report(c->srv, &rp);
	const ProtobufCMessageDescriptor *d;
	char buf[256];

	if (m == NULL)
		return;
	d = m->base.descriptor;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
		    f->label != PROTOBUF_C_LABEL_REPEATED) {
			const ProtobufCMessage *sub =
			    *(const ProtobufCMessage *const *)((const char *)m +
							       f->offset);

			if (sub != NULL) {
				out(c, "cluster_%s:", f->name);
				out_pairs(c, sub);
			}
		} else if (field_text(&m->base, f, buf, sizeof buf)) {
			out(c, "cluster_%s:%s\n", f->name, buf);
		}
	}
	dispatch_reply_free(&rp);
}

/* A cluster resource: this host's state and every host's key, holding
 * hosts first, as ResourceStatus has them. */
static void
status_cluster_resource(struct conn *c, const struct lm_res *res)
{
	struct dispatch_reply rp = {0};
	Arbiter__ResourceStatus s = ARBITER__RESOURCE_STATUS__INIT;

	if (!res->cluster)
		return;
	cluster_status_resource(c->srv, res, &s, &rp);
	if (s.cluster_state != NULL)
		out(c, "cluster_state:%s\n", s.cluster_state);
	for (size_t i = 0; i < s.n_hosts; i++) {
		out(c, "cluster_host:");
		out_pairs(c, &s.hosts[i]->base);
	}
	dispatch_reply_free(&rp);
}

static size_t
status_one(void *e, void *arg)
{
	struct conn *c = arg;
	const struct lm_res *res = e;
	const struct lm_req *r;
	uint64_t now = now_ns();
	unsigned pos = 0, n = 0;

	out(c, "# Resource %s\n", res->name);
	status_cluster_resource(c, res);
	TAILQ_FOREACH(r, &res->holders, q_entry) {
		if (n++ == DISPATCH_LIST_MAX)
			break;
		out(c,
		    "holder:lease=%" PRIu64 " mode=%s pid=%u uid=%u "
		    "name=%s held_ms=%" PRIu64 " token=%" PRIu64
		    " handed_to_pid=%u",
		    r->id, lockmgr_mode_name(r->mode), r->owner->pid,
		    r->owner->uid, r->owner->name[0] ? r->owner->name : "-",
		    (now - r->t_granted) / 1000000, r->token,
		    r->owner->handed_to_pid);
		if (r->converting)
			out(c, " converting_ms=%" PRIu64,
			    (now - r->t_conv) / 1000000);
		out(c, "\n");
	}
	if (res->nholders > DISPATCH_LIST_MAX)
		out(c, "holders_omitted:%u\n",
		    res->nholders - DISPATCH_LIST_MAX);
	TAILQ_FOREACH(r, &res->waiters, q_entry) {
		if (pos == DISPATCH_LIST_MAX)
			break;
		out(c,
		    "waiter:position=%u lease=%" PRIu64 " mode=%s pid=%u "
		    "uid=%u name=%s waiting_ms=%" PRIu64 " handed_to_pid=%u\n",
		    ++pos, r->id, lockmgr_mode_name(r->mode), r->owner->pid,
		    r->owner->uid, r->owner->name[0] ? r->owner->name : "-",
		    (now - r->t_queued) / 1000000, r->owner->handed_to_pid);
	}
	if (res->nwaiters > DISPATCH_LIST_MAX)
		out(c, "waiters_omitted:%u\n",
		    res->nwaiters - DISPATCH_LIST_MAX);
	return 1 + ((res->nholders < DISPATCH_LIST_MAX ? res->nholders
						       : DISPATCH_LIST_MAX) +
		    (res->nwaiters < DISPATCH_LIST_MAX ? res->nwaiters
						       : DISPATCH_LIST_MAX)) /
		       4;
}

static void
cmd_status(struct conn *c, const char *arg)
{
	struct server *srv = c->srv;

	out(c,
	    "# Server\nrole:%s\nstorage:%s\nconnections:%u\n"
	    "resources:%u\nholders:%u\nwaiters:%u\n",
	    role_name(srv), srv->cfg.storage_path, srv->nconns, srv->lm.nres,
	    srv->lm.nheld, srv->lm.nwaiting);
	if (srv->role == ROLE_STANDBY)
		out(c, "storage_holder:%s\n", srv->storage_holder);
	status_cluster(c);
	if (*arg != '\0') {
		struct lm_res *res = lockmgr_find(&srv->lm, arg, strlen(arg));

		if (res != NULL)
			status_one(res, c);
		end_reply(c);
		return;
	}
	stream_start(c, STREAM_STATUS);
}

void
admin_stream(struct conn *c)
{
	struct server *srv = c->srv;

	if (c->stream == STREAM_STATUS)
		dispatch_scan(srv->lm.res ? &srv->lm.res->hh : NULL,
			      &c->stream_cursor, STREAM_STATUS_BUDGET,
			      status_one, c);
	else if (c->stream == STREAM_STATS)
		dispatch_scan(
		    srv->stats.by_name ? &srv->stats.by_name->hh : NULL,
		    &c->stream_cursor, STREAM_STATS_BUDGET, stats_one, c);
	else
		return;
	if (c->stream_cursor != 0)
		return;
	c->stream = STREAM_NONE;
	end_reply(c);
	if (!c->eof && c->state != CONN_DEAD)
		event_add(&c->ev_read, NULL);
	/* Go on with the lines that came meanwhile. */
	admin_input(c);
}

static void
cmd_ping(struct conn *c, const char *arg)
{
	(void)arg;
	out(c, "pong %s\n", role_name(c->srv));
}

static void
cmd_quit(struct conn *c, const char *arg)
{
	(void)arg;
	c->kill = "quit";
	c->linger = true; /* the replies before it still go out whole */
}

static void cmd_help(struct conn *c, const char *arg);

static const struct admin_cmd {
	const char *name;
	const char *usage;
	const char *help;
	void (*fn)(struct conn *, const char *);
} cmds[] = {
    {"help", "help", "list the commands", cmd_help},
    {"ping", "ping", "answer 'pong' and the role (active or standby)",
     cmd_ping},
    {"stats", "stats [RESOURCE]",
     "counters and wait/hold times, total and per resource", cmd_stats},
    {"status", "status [RESOURCE]",
     "every resource with its holders and waiters in queue order; in "
     "cluster mode the etcd session and every host's key too",
     cmd_status},
    {"quit", "quit", "close the connection", cmd_quit},
};

static void
cmd_help(struct conn *c, const char *arg)
{
	(void)arg;
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
		out(c, "%-18s %s\n", cmds[i].usage, cmds[i].help);
	end_reply(c);
}

static void
run_line(struct conn *c, char *line)
{
	char *arg, *end;
	size_t n = strlen(line);

	while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' '))
		line[--n] = '\0';
	arg = strchr(line, ' ');
	if (arg != NULL) {
		*arg++ = '\0';
		while (*arg == ' ')
			arg++;
	} else
		arg = line + n;
	end = arg;
	(void)end;
	if (*line == '\0')
		return;
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
		if (strcmp(line, cmds[i].name) == 0) {
			cmds[i].fn(c, arg);
			return;
		}
	}
	out(c, "error: unknown command '%.64s'; try 'help'\n", line);
}

void
admin_input(struct conn *c)
{
	struct server *srv = c->srv;
	size_t max = srv->cfg.max_text_line;

	if (!c->welcomed) {
		/* The text protocol is read-only, but access control still
		 * applies: the same allow lists as binary clients. */
		if (!dispatch_access(srv, &c->owner, ACCESS_CLIENT)) {
			stats_count(&srv->stats, NULL, STAT_failed_forbidden);
			out(c,
			    "error: forbidden: uid %u gid %u is not in "
			    "access.allow_uids or access.allow_gids\n",
			    c->owner.uid, c->owner.gid);
			c->kill = "forbidden";
			return;
		}
		c->welcomed = true;
	}
	while (c->kill == NULL && c->stream == STREAM_NONE) {
		struct evbuffer_ptr eol;
		size_t len;
		char line[65537];

		eol = evbuffer_search_eol(c->in, NULL, NULL, EVBUFFER_EOL_LF);
		if (eol.pos < 0) {
			if (evbuffer_get_length(c->in) > max) {
				out(c,
				    "error: line longer than "
				    "limits.max_text_line (%zu bytes); "
				    "closing\n",
				    max);
				c->kill = "text line too long";
			}
			break;
		}
		len = (size_t)eol.pos;
		if (len > max) {
			out(c,
			    "error: line longer than limits.max_text_line "
			    "(%zu bytes); closing\n",
			    max);
			c->kill = "text line too long";
			return;
		}
		evbuffer_remove(c->in, line, len + 1);
		line[len] = '\0';
		run_line(c, line);
	}
	if (c->eof && c->kill == NULL && c->stream == STREAM_NONE) {
		/* The peer is done sending: close once it has every reply. */
		c->kill = "eof";
		c->linger = true;
	}
}
