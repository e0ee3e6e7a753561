/*
 * arbiterctl: the command line of arbiter. argv becomes libarbiter calls and
 * the results are printed. `run` works like flock(1): the command inherits
 * the connection that holds the lease, so the lease lives exactly as long as
 * the command, even if arbiterctl itself is killed.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ini.h>

#include "arbiter.h"
#include "arbiter.pb-c.h"
#include "ctl_intercept.h"
#include "ctl_run.h"
#include "defaults.h"

const char *socket_path;   /* -S, or NULL: the default */
int io_timeout_ms = 10000; /* -t: for everything but waiting */
char trust_env[512];	   /* --trust-uid values, for intercept's program */

void die(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

void
die(int code, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "arbiterctl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

/* socket.path from a config file, resolved against the file's folder. */
struct conf_sock {
	char path[4096];
	const char *file;
};

static int
conf_handler(void *user, const char *section, const char *name,
	     const char *value)
{
	struct conf_sock *cs = user;

	if (strcmp(section, "socket") == 0 && strcmp(name, "path") == 0) {
		if (value[0] == '/' || value[0] == '\0') {
			snprintf(cs->path, sizeof cs->path, "%s", value);
		} else {
			const char *slash = strrchr(cs->file, '/');

			if (slash == NULL)
				snprintf(cs->path, sizeof cs->path, "%s",
					 value);
			else
				snprintf(cs->path, sizeof cs->path, "%.*s/%s",
					 (int)(slash - cs->file), cs->file,
					 value);
		}
	}
	return 1;
}

static const char *
socket_from_config(const char *file)
{
	static struct conf_sock cs;
	char *abs = realpath(file, NULL);

	cs.file = abs ? abs : file;
	cs.path[0] = '\0';
	if (ini_parse(file, conf_handler, &cs) < 0)
		die(EXIT_USAGE, "cannot read config %s", file);
	free(abs);
	if (cs.path[0] == '\0')
		return NULL; /* the config uses the default */
	return cs.path;
}

arb_client *
connect_or_die(const char *name)
{
	arb_client *c;

	int rc = arb_connect_timeout(&c, socket_path, name, io_timeout_ms);

	if (rc < 0)
		die(rc == -ARB_EUNTRUSTED ? EXIT_NOPERM : EXIT_UNAVAIL, "%s",
		    arb_connect_error());
	return c;
}

int
exit_for(int rc)
{
	if (rc == -ARB_EUNTRUSTED)
		return EXIT_NOPERM;
	if (rc == -ARB_ECONNLOST || rc == -ENOENT || rc == -ECONNREFUSED ||
	    rc == -ETIMEDOUT || rc == -ARB_EUNAVAILABLE)
		return EXIT_UNAVAIL;
	return EXIT_SOFTWARE;
}

/* --trust-uid: a uid, a user name, or '*' for any. */
static void
trust_uid_arg(const char *arg)
{
	struct passwd *pw;
	char *end;
	unsigned long v;
	size_t len = strlen(trust_env);

	/* intercept passes them on in ARBITER_TRUST_UID. */
	if ((size_t)snprintf(trust_env + len, sizeof trust_env - len, "%s%s",
			     len ? "," : "", arg) >= sizeof trust_env - len)
		die(EXIT_USAGE, "--trust-uid: too many uids");
	if (strcmp(arg, "*") == 0) {
		(void)arb_trust_uid(ARB_TRUST_ANY_UID);
		return;
	}
	errno = 0;
	v = strtoul(arg, &end, 10);
	if (arg[0] >= '0' && arg[0] <= '9' && *end == '\0' && errno == 0 &&
	    v < (unsigned long)(uid_t)-1) {
		if (arb_trust_uid((uid_t)v) < 0)
			die(EXIT_USAGE, "--trust-uid: too many uids");
		return;
	}
	pw = getpwnam(arg);
	if (pw == NULL)
		die(EXIT_USAGE,
		    "--trust-uid: '%s' is neither a uid nor a user "
		    "name",
		    arg);
	if (arb_trust_uid(pw->pw_uid) < 0)
		die(EXIT_USAGE, "--trust-uid: too many uids");
}

double
parse_secs(const char *s, const char *what)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !(v >= 0) || isinf(v) || v > 1e9)
		die(EXIT_USAGE, "%s: '%s' is not a number of seconds", what, s);
	return v;
}

/* ------------------------------------------------------------ JSON */

static void
json_str(FILE *out, const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p;
	     p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(out, "\\u%04x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

/* ------------------------------------------------------------ stats */

/*
 * `stats` renders the Stats reply from its message descriptor, not from a
 * list of figures kept here, so a figure the daemon adds to arbiter.proto
 * reaches the table and --json with no change to this file. Fields come in
 * field-number order; the rules are the same in the Python client
 * (stats_dict in _proto.py):
 *  - a repeated message lists one entry per element, named by the element's
 *    first field when that is a string (ResourceStats.resource), which is
 *    then not repeated inside the entry;
 *  - in --json the top level's total (the single message of the type the
 *    repeated one lists) is spread over the top level, and the repeated
 *    one comes last, keyed by name; another single message (the cluster
 *    session) keeps its own key, and is left out when absent;
 *  - a message whose floating-point fields all end in "_seconds" (a
 *    Histogram) moves the unit to its own name: wait -> wait_seconds
 *    holding count, sum, mean, max, p50, p90, p99;
 *  - bytes (the paging cursor) are not shown.
 */
#define SECONDS "_seconds"

typedef ProtobufCFieldDescriptor field_desc;

static const void *
field_at(const ProtobufCMessage *m, const field_desc *f)
{
	return (const char *)m + f->offset;
}

static size_t
field_count(const ProtobufCMessage *m, const field_desc *f)
{
	return *(const size_t *)(const void *)((const char *)m +
					       f->quantifier_offset);
}

/* An absent submessage reads as one holding its defaults. */
static const ProtobufCMessage *
sub_message(const field_desc *f, const void *at, void *spare, size_t len)
{
	const ProtobufCMessage *sub = *(ProtobufCMessage *const *)at;
	const ProtobufCMessageDescriptor *d = f->descriptor;

	if (sub != NULL)
		return sub;
	if (d->sizeof_message > len)
		die(EXIT_SOFTWARE,
		    "stats: message %s is larger than expected; "
		    "rebuild arbiterctl",
		    d->name);
	protobuf_c_message_init(d, spare);
	return spare;
}

/* The first field names an element of a repeated message if a string. */
static bool
has_key(const ProtobufCMessageDescriptor *d)
{
	return d->n_fields > 0 && d->fields[0].type == PROTOBUF_C_TYPE_STRING &&
	       d->fields[0].label != PROTOBUF_C_LABEL_REPEATED;
}

static bool
is_key(const ProtobufCMessage *m, const field_desc *f)
{
	return f == &m->descriptor->fields[0] && has_key(m->descriptor);
}

static const char *
key_of(const ProtobufCMessage *m)
{
	const char *const *at;

	if (!has_key(m->descriptor))
		return "";
	at = field_at(m, &m->descriptor->fields[0]);
	return *at ? *at : "";
}

/* Whether a message's floating-point fields all end in _seconds. */
static bool
in_seconds(const ProtobufCMessageDescriptor *d)
{
	size_t n = 0, sl = strlen(SECONDS);

	for (unsigned i = 0; i < d->n_fields; i++) {
		const field_desc *f = &d->fields[i];
		size_t len = strlen(f->name);

		if (f->type != PROTOBUF_C_TYPE_DOUBLE &&
		    f->type != PROTOBUF_C_TYPE_FLOAT)
			continue;
		if (len <= sl || strcmp(f->name + len - sl, SECONDS) != 0)
			return false;
		n++;
	}
	return n > 0;
}

/* A field's name, less the _seconds its message moved to its own name. */
static int
name_len(const field_desc *f, bool strip)
{
	size_t len = strlen(f->name), sl = strlen(SECONDS);

	if (strip && len > sl && strcmp(f->name + len - sl, SECONDS) == 0)
		len -= sl;
	return (int)len;
}

static bool
is_number(const field_desc *f)
{
	return f->type != PROTOBUF_C_TYPE_STRING &&
	       f->type != PROTOBUF_C_TYPE_BYTES &&
	       f->type != PROTOBUF_C_TYPE_MESSAGE &&
	       f->type != PROTOBUF_C_TYPE_ENUM &&
	       f->type != PROTOBUF_C_TYPE_BOOL;
}

/* A numeric scalar as a double (exact below 2^53). */
static double
number_at(const field_desc *f, const void *at)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return *(const int32_t *)at;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return *(const uint32_t *)at;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return (double)*(const int64_t *)at;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return (double)*(const uint64_t *)at;
	case PROTOBUF_C_TYPE_FLOAT:
		return *(const float *)at;
	case PROTOBUF_C_TYPE_DOUBLE:
		return *(const double *)at;
	case PROTOBUF_C_TYPE_BOOL:
		return *(const protobuf_c_boolean *)at ? 1 : 0;
	default:
		return 0;
	}
}

/*
 * One scalar value: integers exactly, floating point with %.9f in JSON and
 * %.6g in the table, enums by their lower-case name, bools as true/false.
 */
static void
put_scalar(FILE *out, const field_desc *f, const void *at, bool json)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		fprintf(out, "%" PRId32, *(const int32_t *)at);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		fprintf(out, "%" PRIu32, *(const uint32_t *)at);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		fprintf(out, "%" PRId64, *(const int64_t *)at);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		fprintf(out, "%" PRIu64, *(const uint64_t *)at);
		break;
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE:
		fprintf(out, json ? "%.9f" : "%.6g", number_at(f, at));
		break;
	case PROTOBUF_C_TYPE_BOOL:
		fputs(*(const protobuf_c_boolean *)at ? "true" : "false", out);
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumValue *v =
		    protobuf_c_enum_descriptor_get_value(f->descriptor,
							 *(const int *)at);
		char name[64];
		size_t i;

		snprintf(name, sizeof name, "%s", v ? v->name : "unknown");
		for (i = 0; name[i]; i++)
			name[i] = (char)tolower((unsigned char)name[i]);
		if (json)
			json_str(out, name);
		else
			fputs(name, out);
		break;
	}
	case PROTOBUF_C_TYPE_STRING:
		if (json)
			json_str(out, *(char *const *)at);
		else
			fputs(*(char *const *)at ? *(char *const *)at : "",
			      out);
		break;
	default:
		break;
	}
}

/* Spare room for an absent submessage's defaults. */
union spare {
	ProtobufCMessage base;
	char room[512];
	max_align_t align;
};

/* The size of one element of a repeated scalar field. */
static size_t
scalar_size(const field_desc *f)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return sizeof(uint64_t);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_ENUM:
		return sizeof(int);
	default:
		return sizeof(uint32_t);
	}
}

static void json_message(FILE *out, const ProtobufCMessage *m, bool strip,
			 bool keyed);

/* The total beside a list of the same type (Stats.total, .resources). */
static bool
is_total(const ProtobufCMessageDescriptor *d, const field_desc *f)
{
	if (f->type != PROTOBUF_C_TYPE_MESSAGE ||
	    f->label == PROTOBUF_C_LABEL_REPEATED)
		return false;
	for (unsigned i = 0; i < d->n_fields; i++)
		if (d->fields[i].type == PROTOBUF_C_TYPE_MESSAGE &&
		    d->fields[i].label == PROTOBUF_C_LABEL_REPEATED &&
		    d->fields[i].descriptor == f->descriptor)
			return true;
	return false;
}

/* A single message that is absent and no histogram: not shown. */
static bool
absent_part(const ProtobufCMessage *m, const field_desc *f)
{
	return f->type == PROTOBUF_C_TYPE_MESSAGE &&
	       f->label != PROTOBUF_C_LABEL_REPEATED &&
	       *(ProtobufCMessage *const *)field_at(m, f) == NULL &&
	       !in_seconds(f->descriptor) && !is_total(m->descriptor, f);
}

/* A repeated field: an object keyed by the elements' names, else a list. */
static void
json_list(FILE *out, const ProtobufCMessage *m, const field_desc *f)
{
	const void *const *v = *(const void *const *const *)field_at(m, f);
	bool msg = f->type == PROTOBUF_C_TYPE_MESSAGE;
	bool keyed = msg && has_key(f->descriptor);

	fputc(keyed ? '{' : '[', out);
	for (size_t j = 0; j < field_count(m, f); j++) {
		fputs(j ? ", " : "", out);
		if (keyed) {
			json_str(out, key_of(v[j]));
			fputs(": ", out);
		}
		if (msg)
			json_message(out, v[j], false, true);
		else
			put_scalar(out, f, (const char *)v + j * scalar_size(f),
				   true);
	}
	fputc(keyed ? '}' : ']', out);
}

/*
 * The fields of m as JSON members, after *first; spread: the top level;
 * keyed: m is named by its first field elsewhere (an element of a keyed
 * list, the total), which is then left out.
 */
static void
json_members(FILE *out, const ProtobufCMessage *m, bool strip, bool spread,
	     bool keyed, bool *first)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;

	for (int late = 0; late < 2; late++)
		for (unsigned i = 0; i < d->n_fields; i++) {
			const field_desc *f = &d->fields[i];
			const void *at = field_at(m, f);
			bool rep = f->label == PROTOBUF_C_LABEL_REPEATED;
			bool msg = f->type == PROTOBUF_C_TYPE_MESSAGE;
			const ProtobufCMessage *sub = NULL;
			union spare spare;

			/* The top level's repeated messages come last. */
			if (f->type == PROTOBUF_C_TYPE_BYTES ||
			    (keyed && is_key(m, f)) ||
			    late != (spread && rep && msg))
				continue;
			if (absent_part(m, f))
				continue;
			if (msg && !rep)
				sub = sub_message(f, at, &spare, sizeof spare);
			if (sub != NULL && spread && is_total(d, f)) {
				json_members(out, sub, false, false, true,
					     first);
				continue;
			}
			fprintf(out, "%s\"%.*s", *first ? "" : ", ",
				name_len(f, strip), f->name);
			*first = false;
			if (sub != NULL && in_seconds(f->descriptor))
				fputs(SECONDS, out);
			fputs("\": ", out);
			if (rep)
				json_list(out, m, f);
			else if (sub != NULL)
				json_message(out, sub,
					     in_seconds(f->descriptor), false);
			else
				put_scalar(out, f, at, true);
		}
}

static void
json_message(FILE *out, const ProtobufCMessage *m, bool strip, bool keyed)
{
	bool first = true;

	fputc('{', out);
	json_members(out, m, strip, false, keyed, &first);
	fputc('}', out);
}

/*
 * The table: a headline of the figures people read first, then every other
 * scalar field, those that share the word before their first '_' on one
 * line ("revoked: disconnect 1, expired 0, ..."), then one row per
 * histogram. A headline marks what it showed in a bit set (by field index),
 * so nothing is shown twice and nothing is left out.
 */
typedef uint64_t shown_set;

static const field_desc *
take(const ProtobufCMessage *m, const char *name, shown_set *shown)
{
	const field_desc *f = protobuf_c_message_descriptor_get_field_by_name(
	    m->descriptor, name);
	size_t i;

	if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED ||
	    f->type == PROTOBUF_C_TYPE_MESSAGE ||
	    f->type == PROTOBUF_C_TYPE_BYTES)
		return NULL;
	i = (size_t)(f - m->descriptor->fields);
	if (i < 64)
		*shown |= (shown_set)1 << i;
	return f;
}

static double
take_num(const ProtobufCMessage *m, const char *name, shown_set *shown)
{
	const field_desc *f = take(m, name, shown);

	return f && f->type != PROTOBUF_C_TYPE_STRING &&
		       f->type != PROTOBUF_C_TYPE_ENUM
		   ? number_at(f, field_at(m, f))
		   : 0;
}

static const char *
take_str(const ProtobufCMessage *m, const char *name, shown_set *shown)
{
	const field_desc *f = take(m, name, shown);
	const char *s;

	if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING)
		return "?";
	s = *(char *const *)field_at(m, f);
	return s ? s : "?";
}

/* A field name as words: failed_would_block -> "failed would block". */
static void
put_words(const char *s, int len)
{
	for (int i = 0; i < len && s[i]; i++)
		putchar(s[i] == '_' ? ' ' : s[i]);
}

static bool
text_skips(const ProtobufCMessage *m, const field_desc *f, shown_set shown)
{
	size_t i = (size_t)(f - m->descriptor->fields);

	return f->label == PROTOBUF_C_LABEL_REPEATED ||
	       f->type == PROTOBUF_C_TYPE_MESSAGE ||
	       f->type == PROTOBUF_C_TYPE_BYTES || is_key(m, f) ||
	       (i < 64 && (shown >> i & 1));
}

/* The scalar fields not in shown, grouped by their first word. */
static void
text_scalars(const ProtobufCMessage *m, shown_set shown, const char *indent)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	bool *done = calloc(d->n_fields + 1, sizeof *done);
	bool any = false;

	if (done == NULL)
		die(EXIT_SOFTWARE, "stats: out of memory");
	for (unsigned i = 0; i < d->n_fields; i++)
		done[i] = text_skips(m, &d->fields[i], shown);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const char *name = d->fields[i].name;
		size_t p = strcspn(name, "_");
		unsigned mates = 0;

		if (done[i] || name[p] != '_')
			continue;
		for (unsigned j = i + 1; j < d->n_fields; j++)
			mates += !done[j] &&
				 strncmp(d->fields[j].name, name, p + 1) == 0;
		if (mates == 0)
			continue;
		printf("%s%.*s:", indent, (int)p, name);
		for (unsigned j = i, n = 0; j < d->n_fields; j++) {
			const field_desc *f = &d->fields[j];

			if (done[j] || strncmp(f->name, name, p + 1) != 0)
				continue;
			printf("%s ", n++ ? "," : "");
			put_words(f->name + p + 1, INT_MAX);
			putchar(' ');
			put_scalar(stdout, f, field_at(m, f), false);
			done[j] = true;
		}
		putchar('\n');
	}
	for (unsigned i = 0; i < d->n_fields; i++) {
		const field_desc *f = &d->fields[i];

		if (done[i])
			continue;
		printf("%s", any ? ", " : indent);
		put_words(f->name, INT_MAX);
		putchar(' ');
		put_scalar(stdout, f, field_at(m, f), false);
		any = true;
	}
	if (any)
		putchar('\n');
	free(done);
}

/* A histogram in one row, durations in ms; "-" when it saw nothing. */
static void
text_seconds_row(const char *name, const ProtobufCMessage *h)
{
	const ProtobufCMessageDescriptor *d = h->descriptor;
	bool empty = true;

	for (unsigned i = 0; i < d->n_fields; i++)
		if (is_number(&d->fields[i]) &&
		    number_at(&d->fields[i], field_at(h, &d->fields[i])) != 0)
			empty = false;
	printf("  %-6s", name);
	if (empty) {
		printf(" -\n");
		return;
	}
	for (unsigned i = 0; i < d->n_fields; i++) {
		const field_desc *f = &d->fields[i];

		if (!is_number(f))
			continue;
		printf(" %s", i ? " " : "");
		put_words(f->name, name_len(f, true));
		if (f->type == PROTOBUF_C_TYPE_DOUBLE ||
		    f->type == PROTOBUF_C_TYPE_FLOAT)
			printf(" %.3f ms", number_at(f, field_at(h, f)) * 1e3);
		else {
			putchar(' ');
			put_scalar(stdout, f, field_at(h, f), false);
		}
	}
	putchar('\n');
}

/* One resource's figures (or the total's). */
static void
print_figures(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	shown_set shown = 0;
	double ok = take_num(m, "total_acquisitions", &shown);
	double failed = take_num(m, "failed_acquisitions", &shown);
	double now = take_num(m, "acquired_immediate", &shown);
	double later = take_num(m, "acquired_after_wait", &shown);
	double holders = take_num(m, "holders", &shown);
	double waiters = take_num(m, "waiters", &shown);

	printf("  acquisitions %.0f (immediate %.0f, after wait %.0f)  failed "
	       "%.0f (%.1f %%)\n",
	       ok, now, later, failed,
	       ok + failed > 0 ? 100.0 * failed / (ok + failed) : 0.0);
	printf("  now: %.0f holding, %.0f waiting\n", holders, waiters);
	text_scalars(m, shown, "  ");
	for (unsigned i = 0; i < d->n_fields; i++) {
		const field_desc *f = &d->fields[i];
		union spare spare;
		const ProtobufCMessage *sub;

		if (f->type != PROTOBUF_C_TYPE_MESSAGE ||
		    f->label == PROTOBUF_C_LABEL_REPEATED)
			continue;
		sub = sub_message(f, field_at(m, f), &spare, sizeof spare);
		if (in_seconds(f->descriptor)) {
			text_seconds_row(f->name, sub);
		} else {
			printf("  %s:\n", f->name);
			text_scalars(sub, 0, "    ");
		}
	}
}

/*
 * A message that is no resource's figures (the cluster session): the
 * headline fields it has, then its other scalars and histograms.
 */
/* The cluster session's state, host, member, lease and deadline, as one
 * line's words (stats and status). */
static void
session_words(const ProtobufCMessage *m, shown_set *shown_out)
{
	shown_set shown = 0;
	const field_desc *f;

	f = take(m, "state", &shown);
	if (f != NULL) {
		putchar(' ');
		put_scalar(stdout, f, field_at(m, f), false);
	}
	f = take(m, "host_id", &shown);
	if (f != NULL) {
		printf(" as host ");
		put_scalar(stdout, f, field_at(m, f), false);
	}
	f = take(m, "endpoint", &shown);
	if (f != NULL) {
		printf(" via ");
		put_scalar(stdout, f, field_at(m, f), false);
	}
	f = take(m, "lease_id", &shown);
	if (f != NULL && f->type == PROTOBUF_C_TYPE_INT64)
		/* As etcdctl prints lease ids. */
		printf(", etcd lease %" PRIx64,
		       (uint64_t) * (const int64_t *)field_at(m, f));
	f = take(m, "valid_for_ms", &shown);
	if (f != NULL)
		printf(", valid for %.3f s",
		       number_at(f, field_at(m, f)) / 1e3);
	*shown_out = shown;
}

static void
print_part(const char *name, const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	shown_set shown = 0;
	const field_desc *f;

	printf("%s:", name);
	session_words(m, &shown);
	putchar('\n');
	f = take(m, "message", &shown);
	if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING &&
	    *(char *const *)field_at(m, f) != NULL &&
	    **(char *const *)field_at(m, f) != '\0')
		printf("  last error: %s\n", *(char *const *)field_at(m, f));
	text_scalars(m, shown, "  ");
	for (unsigned i = 0; i < d->n_fields; i++) {
		union spare spare;

		f = &d->fields[i];
		if (f->type != PROTOBUF_C_TYPE_MESSAGE ||
		    f->label == PROTOBUF_C_LABEL_REPEATED ||
		    !in_seconds(f->descriptor))
			continue;
		text_seconds_row(f->name, sub_message(f, field_at(m, f), &spare,
						      sizeof spare));
	}
}

/* The whole Stats reply as a table: a headline, the other top-level
 * figures, then the total (unless one resource was asked for) and each
 * resource. */
static void
print_stats_table(const Arbiter__Stats *s, const char *resource)
{
	const ProtobufCMessage *m = &s->base;
	const ProtobufCMessageDescriptor *d = m->descriptor;
	shown_set shown = 0;
	const char *role = take_str(m, "role", &shown);
	double up = take_num(m, "uptime_seconds", &shown);
	double conns = take_num(m, "connections", &shown);
	bool locked = take_num(m, "storage_locked", &shown) != 0;
	size_t listed = 0;

	printf("arbiter %s, up %.0f s, %.0f connection%s, storage %s\n", role,
	       up, conns, conns == 1 ? "" : "s",
	       locked ? "locked" : "NOT locked");
	text_scalars(m, shown, "");
	/* Parts that are no figures of resources first (the cluster). */
	for (unsigned i = 0; i < d->n_fields; i++) {
		const field_desc *f = &d->fields[i];

		if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
		    f->label != PROTOBUF_C_LABEL_REPEATED && !is_total(d, f) &&
		    !absent_part(m, f))
			print_part(f->name,
				   *(ProtobufCMessage *const *)field_at(m, f));
	}
	for (unsigned i = 0; i < d->n_fields; i++) {
		const field_desc *f = &d->fields[i];
		const void *at = field_at(m, f);
		union spare spare;

		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			const ProtobufCMessage *const *v =
			    *(const ProtobufCMessage *const *const *)at;

			for (size_t j = 0; j < field_count(m, f); j++) {
				printf("%s:\n", key_of(v[j]));
				print_figures(v[j]);
				listed++;
			}
		} else if (resource == NULL && is_total(d, f)) {
			printf("%s:\n", f->name);
			print_figures(sub_message(f, at, &spare, sizeof spare));
		}
	}
	if (resource != NULL && listed == 0)
		printf("no figures for '%s' yet\n", resource);
}

/* stats and status take [RESOURCE] [--json], in any order. */
static const char *
resource_and_json(int argc, char **argv, bool *json)
{
	const char *resource = NULL;

	*json = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			*json = true;
		else if (resource == NULL && argv[i][0] != '-')
			resource = argv[i];
		else
			die(EXIT_USAGE, "%s: unexpected '%s'", argv[0],
			    argv[i]);
	}
	return resource;
}

static int
cmd_stats(int argc, char **argv)
{
	bool json;
	const char *resource;
	const Arbiter__Stats *s;
	const void *p;
	arb_client *c;
	int rc;

	resource = resource_and_json(argc, argv, &json);
	c = connect_or_die("arbiterctl");
	rc = arb_stats(c, resource, &p);
	if (rc < 0)
		die(exit_for(rc), "stats: %s", arb_last_error(c));
	s = p;
	if (json) {
		bool first = true;

		putchar('{');
		json_members(stdout, &s->base, false, true, true, &first);
		printf("}\n");
	} else {
		print_stats_table(s, resource);
	}
	arb_close(c);
	return 0;
}

/* ------------------------------------------------------------ status */

static void
fmt_dur(char *buf, size_t len, uint64_t us)
{
	if (us < 1000)
		snprintf(buf, len, "%" PRIu64 "us", us);
	else if (us < 10000000)
		snprintf(buf, len, "%.1fms", us / 1e3);
	else
		snprintf(buf, len, "%.1fs", us / 1e6);
}

/*
 * The process shown as a holder or waiter: the one its client handed the
 * connection to (arbiterctl run's CMD), else the connecting one. The CLIENT
 * text then names the connecting pid too ("arbiterctl:sleep via 122"),
 * since a handed-over pid is the client's word, not the kernel's.
 */
static uint32_t
shown_pid(uint32_t pid, uint32_t handed_to, const char *name, char *buf,
	  size_t len)
{
	const char *n = name && name[0] ? name : "-";

	if (handed_to == 0) {
		snprintf(buf, len, "%s", n);
		return pid;
	}
	snprintf(buf, len, "%s via %u", n, pid);
	return handed_to;
}

/*
 * A cluster resource: this host's part, then every host's key in cluster
 * queue order (holding hosts first, as the daemon lists them).
 */
static void
print_hosts(const Arbiter__ResourceStatus *r)
{
	size_t waiting = 0;

	if ((r->cluster_state == NULL || r->cluster_state[0] == '\0') &&
	    r->n_hosts == 0)
		return;
	printf("%-20s cluster: %s here; %zu host%s\n", r->resource,
	       r->cluster_state && r->cluster_state[0] ? r->cluster_state : "?",
	       r->n_hosts, r->n_hosts == 1 ? "" : "s");
	if (r->n_hosts > 0)
		printf("  %-20s %-8s %-9s %8s %7s %7s %10s\n", "HOST", "STATE",
		       "MODE", "ARBITERD", "HOLDERS", "WAITERS", "REVISION");
	for (size_t j = 0; j < r->n_hosts; j++) {
		const Arbiter__ClusterHost *h = r->hosts[j];
		char state[32];

		if (h->holding)
			snprintf(state, sizeof state, "holds");
		else
			snprintf(state, sizeof state, "waits#%zu", ++waiting);
		printf("  %-20s %-8s %-9s %8u %7u %7u %10" PRId64 "\n",
		       h->host_id ? h->host_id : "-", state,
		       h->mode ? "shared" : "exclusive", h->pid, h->holders,
		       h->waiters, h->create_revision);
	}
}

static int
cmd_status(int argc, char **argv)
{
	bool json;
	const char *resource;
	const Arbiter__Status *s;
	const void *p;
	arb_client *c;
	int rc;

	resource = resource_and_json(argc, argv, &json);
	c = connect_or_die("arbiterctl");
	rc = arb_status(c, resource, &p);
	if (rc < 0)
		die(exit_for(rc), "status: %s", arb_last_error(c));
	s = p;
	if (json) {
		printf("{\"role\": ");
		json_str(stdout, s->role);
		printf(", \"pid\": %u, \"version\": ", s->pid);
		json_str(stdout, s->server_version);
		printf(", \"storage\": ");
		json_str(stdout, s->storage_path);
		printf(", \"storage_holder\": ");
		json_str(stdout, s->storage_holder);
		printf(", \"connections\": %u, \"resources\": {",
		       s->connections);
		for (size_t i = 0; i < s->n_resources; i++) {
			const Arbiter__ResourceStatus *r = s->resources[i];

			printf("%s", i ? ", " : "");
			json_str(stdout, r->resource);
			printf(": {\"delayed_us\": %" PRIu64 ", \"holders\": [",
			       r->delayed_us);
			for (size_t j = 0; j < r->n_holders; j++) {
				const Arbiter__Holder *h = r->holders[j];

				printf("%s{\"lease_id\": %" PRIu64
				       ", \"mode\": \"%s\", \"pid\": %u, "
				       "\"handed_to_pid\": %u, "
				       "\"uid\": %u, \"client_name\": ",
				       j ? ", " : "", h->lease_id,
				       h->mode ? "shared" : "exclusive", h->pid,
				       h->handed_to_pid, h->uid);
				json_str(stdout, h->client_name);
				printf(", \"held_us\": %" PRIu64
				       ", \"token\": %" PRIu64
				       ", \"ttl_ms\": %" PRIu64
				       ", \"converting\": %s"
				       ", \"converting_us\": %" PRIu64 "}",
				       h->held_us, h->token, h->ttl_ms,
				       h->converting ? "true" : "false",
				       h->converting ? h->converting_us : 0);
			}
			printf("], \"waiters\": [");
			for (size_t j = 0; j < r->n_waiters; j++) {
				const Arbiter__Waiter *w = r->waiters[j];

				printf("%s{\"position\": %zu, \"lease_id\": "
				       "%" PRIu64 ", \"mode\": \"%s\", "
				       "\"pid\": %u, \"handed_to_pid\": %u, "
				       "\"uid\": %u, \"client_name\": ",
				       j ? ", " : "", j + 1, w->lease_id,
				       w->mode ? "shared" : "exclusive", w->pid,
				       w->handed_to_pid, w->uid);
				json_str(stdout, w->client_name);
				printf(", \"waiting_us\": %" PRIu64 "}",
				       w->waiting_us);
			}
			printf("], \"holders_omitted\": %u, "
			       "\"waiters_omitted\": %u, \"cluster_state\": ",
			       r->holders_omitted, r->waiters_omitted);
			json_str(stdout, r->cluster_state);
			printf(", \"hosts\": [");
			for (size_t j = 0; j < r->n_hosts; j++) {
				bool first = false;

				printf("%s{\"host_id\": ", j ? ", " : "");
				json_str(stdout, r->hosts[j]->host_id);
				json_members(stdout, &r->hosts[j]->base, false,
					     false, true, &first);
				putchar('}');
			}
			printf("]}");
		}
		putchar('}');
		if (s->cluster != NULL) {
			printf(", \"cluster\": ");
			json_message(stdout, &s->cluster->base, false, false);
		}
		printf("}\n");
	} else {
		printf("arbiter pid %u (%s), %s, storage %s, %u connection%s\n",
		       s->pid, s->server_version, s->role, s->storage_path,
		       s->connections, s->connections == 1 ? "" : "s");
		if (s->storage_holder && s->storage_holder[0])
			printf("storage held by: %s\n", s->storage_holder);
		if (s->cluster != NULL) {
			shown_set shown;

			printf("cluster:");
			session_words(&s->cluster->base, &shown);
			if (s->cluster->message && s->cluster->message[0])
				printf("; last error: %s", s->cluster->message);
			putchar('\n');
		}
		if (s->n_resources == 0)
			printf("no resource is held or waited for\n");
		else
			printf("%-20s %-8s %-9s %8s %6s %-24s %10s %8s\n",
			       "RESOURCE", "STATE", "MODE", "PID", "UID",
			       "CLIENT", "FOR", "TOKEN");
		for (size_t i = 0; i < s->n_resources; i++) {
			const Arbiter__ResourceStatus *r = s->resources[i];
			char d[32];

			for (size_t j = 0; j < r->n_holders; j++) {
				const Arbiter__Holder *h = r->holders[j];
				char who[96];
				uint32_t pid =
				    shown_pid(h->pid, h->handed_to_pid,
					      h->client_name, who, sizeof who);

				fmt_dur(d, sizeof d, h->held_us);
				printf("%-20s %-8s %-9s %8u %6u %-24s %10s "
				       "%8" PRIu64,
				       r->resource, "holds",
				       h->mode ? "shared" : "exclusive", pid,
				       h->uid, who, d, h->token);
				/* A shared holder whose upgrade waits. */
				if (h->converting) {
					fmt_dur(d, sizeof d, h->converting_us);
					printf(" (upgrading for %s)", d);
				}
				printf("\n");
			}
			for (size_t j = 0; j < r->n_waiters; j++) {
				const Arbiter__Waiter *w = r->waiters[j];
				char state[32], who[96];
				uint32_t pid =
				    shown_pid(w->pid, w->handed_to_pid,
					      w->client_name, who, sizeof who);

				fmt_dur(d, sizeof d, w->waiting_us);
				snprintf(state, sizeof state, "waits#%zu",
					 j + 1);
				printf(
				    "%-20s %-8s %-9s %8u %6u %-24s %10s %8s\n",
				    r->resource, state,
				    w->mode ? "shared" : "exclusive", pid,
				    w->uid, who, d, "-");
			}
			if (r->holders_omitted > 0 || r->waiters_omitted > 0)
				printf("%-20s and %u more holders, %u more "
				       "waiters, not listed\n",
				       r->resource, r->holders_omitted,
				       r->waiters_omitted);
			if (r->delayed_us > 0) {
				fmt_dur(d, sizeof d, r->delayed_us);
				printf("%-20s lock-delay for %s more\n",
				       r->resource, d);
			}
			print_hosts(r);
		}
	}
	arb_close(c);
	return 0;
}

static int
cmd_who(int argc, char **argv)
{
	const Arbiter__Status *s;
	const void *p;
	arb_client *c = connect_or_die("arbiterctl");
	int rc = arb_status(c, NULL, &p);

	(void)argc;
	(void)argv;
	if (rc < 0)
		die(exit_for(rc), "who: %s", arb_last_error(c));
	s = p;
	if (s->storage_holder && s->storage_holder[0])
		printf("storage %s: held by another arbiter (%s); this one "
		       "(pid %u) is %s\n",
		       s->storage_path, s->storage_holder, s->pid, s->role);
	else
		printf("storage %s: held by arbiter pid %u (%s)\n",
		       s->storage_path, s->pid, s->role);
	for (size_t i = 0; i < s->n_resources; i++) {
		const Arbiter__ResourceStatus *r = s->resources[i];

		for (size_t j = 0; j < r->n_holders; j++) {
			const Arbiter__Holder *h = r->holders[j];
			char who[96];
			uint32_t pid = shown_pid(
			    h->pid, h->handed_to_pid,
			    h->client_name && h->client_name[0] ? h->client_name
								: "unnamed",
			    who, sizeof who);

			printf("%s: pid %u (%s), %s, token %" PRIu64 "\n",
			       r->resource, pid, who,
			       h->mode ? "shared" : "exclusive", h->token);
		}
		if (r->n_waiters > 0)
			printf("%s: %zu waiting\n", r->resource, r->n_waiters);
	}
	arb_close(c);
	return 0;
}

static int
cmd_revoke(int argc, char **argv)
{
	uint64_t lease = 0;
	uint32_t pid = 0;
	arb_client *c;
	int rc;

	if (argc == 3 && strcmp(argv[1], "--lease") == 0)
		lease = strtoull(argv[2], NULL, 10);
	else if (argc == 3 && strcmp(argv[1], "--pid") == 0)
		pid = (uint32_t)strtoul(argv[2], NULL, 10);
	if (lease == 0 && pid == 0)
		die(EXIT_USAGE,
		    "usage: arbiterctl revoke --lease ID | --pid PID");
	c = connect_or_die("arbiterctl");
	rc = arb_revoke(c, lease, pid);
	if (rc < 0)
		die(exit_for(rc), "revoke: %s", arb_last_error(c));
	printf("revoked %d lease%s\n", rc, rc == 1 ? "" : "s");
	arb_close(c);
	return 0;
}

static int
cmd_ping(int argc, char **argv)
{
	arb_client *c = connect_or_die("arbiterctl");
	char role[32];
	int rc = arb_ping(c, role, sizeof role);

	(void)argc;
	(void)argv;
	if (rc < 0)
		die(exit_for(rc), "ping: %s", arb_last_error(c));
	printf("pong %s\n", role);
	arb_close(c);
	return 0;
}

static int
cmd_stats_reset(int argc, char **argv)
{
	arb_client *c = connect_or_die("arbiterctl");
	int rc = arb_stats_reset(c);

	(void)argc;
	(void)argv;
	if (rc < 0)
		die(exit_for(rc), "stats-reset: %s", arb_last_error(c));
	arb_close(c);
	return 0;
}

static int cmd_help(int argc, char **argv);

/* ------------------------------------------------------------ commands */

/*
 * Every command, once: the dispatcher, `arbiterctl --help`, `arbiterctl
 * help COMMAND` and the unknown-command error are all read from this
 * table, and tests/integration/test_ctl_help.py holds README.md's synopsis
 * block to what --help prints, so none of them can leave a command out.
 */
enum {
	CMD_CONNECTS = 1 << 0, /* talks to the arbiter: -S, -c, -t apply */
	CMD_ADMIN = 1 << 1,    /* the arbiter allows it to admins only */
};

struct ctl_cmd {
	const char *name;
	const char *alias;	    /* another name it answers to, not listed */
	const char *args;	    /* the synopsis after the name */
	const char *help;	    /* one line for --help */
	const char *more;	    /* a paragraph for `help NAME`, or NULL */
	void (*more_fn)(FILE *out); /* or one printed by the command's file */
	int (*fn)(int argc, char **argv); /* argv[0] is the command */
	unsigned flags;
};

static const struct ctl_cmd cmds[] = {
    {
	.name = "run",
	.args = "[-x|-s] [-n | -w SECS] [-E CODE] [-v] [--ttl SECS] "
		"[--grace SECS] [--fail-fast] RESOURCE [--] CMD [ARG...]",
	.help = "hold a lease on RESOURCE while CMD runs",
	.more_fn = ctl_run_usage,
	.fn = ctl_run,
	.flags = CMD_CONNECTS,
    },
    {
	.name = "intercept",
	.args = "--file PATH [--file PATH]... [--resource NAME] [-x|-s] "
		"[-w SECS] [-v] [--on-unavailable lock|fail] -- CMD [ARG...]",
	.help = "run an unchanged CMD whose own locks on PATH become leases",
	.more_fn = ctl_intercept_usage,
	.fn = ctl_intercept,
	.flags = CMD_CONNECTS,
    },
    {
	.name = "ping",
	.alias = "health",
	.help = "exit 0 when the arbiter answers; prints its role",
	.more = "Prints 'pong' and the arbiter's role: active while it holds "
		"the storage lock, standby while it waits for another arbiter "
		"to let it go. Exits 69 when no arbiter answers within -t "
		"SECS, so it serves as a liveness probe.",
	.fn = cmd_ping,
	.flags = CMD_CONNECTS,
    },
    {
	.name = "stats",
	.args = "[--json] [RESOURCE]",
	.help = "acquisitions, failures, wait and hold times",
	.more = "Every figure of the arbiter, in total and for each resource "
		"(only RESOURCE's when one is named): acquisitions, immediate "
		"and after a wait; failures by cause; how leases ended; "
		"conversions; wait, hold and upgrade wait times (count, "
		"mean, max, p50, p90, p99). --json "
		"prints the same as one JSON object. The figures are read "
		"from the reply's own field list, so one the arbiter adds is "
		"shown with no change to arbiterctl. In cluster mode also the "
		"host's etcd session ('cluster:': state, host, member, etcd "
		"lease, how long it is valid, sessions, losses, etcd errors, "
		"fail-overs, keepalive round trip, last error; 'cluster' in "
		"--json) and per resource the cluster figures (revoked: "
		"cluster lost, cluster yields, cluster_wait, cluster_hold).",
	.fn = cmd_stats,
	.flags = CMD_CONNECTS,
    },
    {
	.name = "status",
	.args = "[--json] [RESOURCE]",
	.help = "every resource with its holders and waiters",
	.more = "Every resource (or only RESOURCE) with its holders and its "
		"waiters in queue order: mode, pid, uid, client name, for how "
		"long, and each holder's fencing token, with '(upgrading for "
		"T)' after a shared holder whose upgrade waits; up to 1000 "
		"holders and 1000 waiters per resource, the rest counted. "
		"In cluster mode also the host's etcd session (state, host, "
		"member, etcd lease, how long it is valid) and, for a "
		"cluster resource, this host's part and every host in the "
		"cluster's queue: holding hosts, then waiting ones in order, "
		"with mode, arbiterd pid, holders, waiters and create "
		"revision. --json prints the same as one JSON object "
		"(converting, converting_us; cluster, and per resource "
		"cluster_state and hosts).",
	.fn = cmd_status,
	.flags = CMD_CONNECTS,
    },
    {
	.name = "who",
	.help = "who holds the storage lock and every resource",
	.more = "Which arbiter holds the storage lock, then every resource's "
		"holders (pid, client name, mode, fencing token) and how many "
		"wait for it: a shorter status.",
	.fn = cmd_who,
	.flags = CMD_CONNECTS,
    },
    {
	.name = "revoke",
	.args = "--lease ID | --pid PID",
	.help = "end a lease; its holder is told",
	.more = "Ends lease ID, or every lease that process PID holds, and "
		"prints how many ended. The holder is told: under arbiterctl "
		"run, CMD's process group gets SIGTERM and arbiterctl exits "
		"75. The resource goes to its next waiter once "
		"leases.lock_delay_ms has passed.",
	.fn = cmd_revoke,
	.flags = CMD_CONNECTS | CMD_ADMIN,
    },
    {
	.name = "stats-reset",
	.help = "restart the stats reply's figures",
	.more = "Starts the counters and histograms that stats shows from "
		"zero again, in total and per resource. Only the stats "
		"reply's baseline moves: the Prometheus counters of the "
		"metrics port keep counting.",
	.fn = cmd_stats_reset,
	.flags = CMD_CONNECTS | CMD_ADMIN,
    },
    {
	.name = "help",
	.args = "[COMMAND]",
	.help = "this help, or all about one command",
	.more = "Without COMMAND, prints what 'arbiterctl --help' does: every "
		"command with its synopsis, then the options and exit codes. "
		"With COMMAND, prints all about that one.",
	.fn = cmd_help,
    },
};

#define N_CMDS		(sizeof cmds / sizeof cmds[0])
#define HELP_WIDTH	78 /* where text wraps */
#define HELP_COLUMN	28 /* where --help's one-line helps start */
#define SYNOPSIS_INDENT 6  /* a synopsis's second line */
#define MORE_INDENT	8  /* a paragraph of `help NAME` */

static const struct ctl_cmd *
find_cmd(const char *name)
{
	for (size_t i = 0; i < N_CMDS; i++)
		if (strcmp(name, cmds[i].name) == 0 ||
		    (cmds[i].alias && strcmp(name, cmds[i].alias) == 0))
			return &cmds[i];
	return NULL;
}

/* The length of s's first word; a bracket's contents are one word. */
static size_t
word_len(const char *s)
{
	int depth = 0;
	size_t n = 0;

	for (; s[n] && (s[n] != ' ' || depth > 0); n++)
		depth += (s[n] == '[') - (s[n] == ']');
	return n;
}

/*
 * Prints s from column col word by word, starting a line at indent where
 * the next word would pass HELP_WIDTH; returns the column reached.
 */
static int
put_wrapped(FILE *out, const char *s, int col, int indent)
{
	bool fresh = true; /* no word of s on this line yet */

	for (s += strspn(s, " "); *s; s += strspn(s, " ")) {
		int n = (int)word_len(s);

		if (!fresh && col + 1 + n > HELP_WIDTH) {
			fprintf(out, "\n%*s", indent, "");
			col = indent;
			fresh = true;
		}
		if (!fresh) {
			fputc(' ', out);
			col++;
		}
		fprintf(out, "%.*s", n, s);
		col += n;
		s += n;
		fresh = false;
	}
	return col;
}

/* One command's line (or two) in --help. */
static void
list_cmd(FILE *out, const struct ctl_cmd *k)
{
	char help[256];
	int col = fprintf(out, "  %s ", k->name);

	if (k->args)
		col = put_wrapped(out, k->args, col, SYNOPSIS_INDENT);
	if (col >= HELP_COLUMN) {
		fputc('\n', out);
		col = 0;
	}
	fprintf(out, "%*s", HELP_COLUMN - col, "");
	snprintf(help, sizeof help, "%s%s", k->help,
		 k->flags & CMD_ADMIN ? " (admins only)" : "");
	put_wrapped(out, help, HELP_COLUMN, HELP_COLUMN);
	fputc('\n', out);
}

/* `arbiterctl help NAME` (and `run --help`): all about one command. */
int
command_help(FILE *out, const char *name)
{
	const struct ctl_cmd *k = find_cmd(name);
	int col;

	if (k == NULL)
		return -1;
	col = fprintf(out, "usage: arbiterctl %s%s",
		      k->flags & CMD_CONNECTS ? "[OPTIONS] " : "", k->name);
	if (k->args) {
		fputc(' ', out);
		put_wrapped(out, k->args, col + 1, MORE_INDENT);
	}
	fputs("\n\n", out);
	if (k->more_fn) {
		k->more_fn(out);
	} else {
		fprintf(out, "%*s", MORE_INDENT, "");
		put_wrapped(out, k->more ? k->more : k->help, MORE_INDENT,
			    MORE_INDENT);
		fputc('\n', out);
	}
	if (k->alias)
		fprintf(out, "\nAlso answers to '%s'.\n", k->alias);
	if (k->flags & CMD_ADMIN)
		fputs(
		    "\nAdmins only: the arbiter refuses it (exit 70) to a uid "
		    "that is neither its\nown nor in [access] admin_uids.\n",
		    out);
	if (k->flags & CMD_CONNECTS)
		fputs(
		    "\nOPTIONS choose and bound the connection to the arbiter: "
		    "-S, -c, -t and\n--trust-uid, in 'arbiterctl --help'.\n",
		    out);
	return 0;
}

void
usage(FILE *out)
{
	fputs("usage: arbiterctl [-S SOCKET | -c CONFIG] [-t SECS] "
	      "[--trust-uid UID]...\n"
	      "                  COMMAND [ARGS]\n"
	      "\n"
	      "Commands:\n",
	      out);
	for (size_t i = 0; i < N_CMDS; i++)
		list_cmd(out, &cmds[i]);
	fputs("\n"
	      "'arbiterctl help COMMAND' tells all about one command.\n"
	      "\n"
	      "The socket is -S SOCKET, else socket.path from -c CONFIG, else\n"
	      "$ARBITER_SOCKET, else /run/arbiter/arbiter.sock (root) or\n"
	      "/tmp/arbiter-UID/arbiter.sock (other users).\n"
	      "\n"
	      "-t SECS bounds how long any answer may take (default 10; 0: no "
	      "bound),\n"
	      "waiting for a lease excepted, so a hung arbiter fails a probe. "
	      "A wait\n"
	      "for a lease (-w) ends at most 0.15 s after SECS even if the "
	      "arbiter\n"
	      "never answers.\n"
	      "\n"
	      "Trust: arbiterctl talks only to a server run by you, by root, "
	      "by a uid\n"
	      "in $ARBITER_TRUST_UID (uids or user names, comma-separated; "
	      "'*': any)\n"
	      "or by --trust-uid UID (a uid or user name, repeatable), or by "
	      "the owner\n"
	      "of a socket folder that only root can have handed over "
	      "(systemd's\n"
	      "RuntimeDirectory=). The default socket's folder must be yours "
	      "and closed\n"
	      "to others. Anything else is refused (exit 77), naming the "
	      "uid.\n"
	      "\n"
	      "Exit codes: 0 ok; 1 (or -E CODE) busy or timed out; 64 usage; "
	      "69 the\n"
	      "arbiter cannot be reached (or, for a cluster resource, etcd); "
	      "70 the\n"
	      "arbiter refused; 75 lease revoked or past its cluster "
	      "deadline;\n"
	      "77 the socket or its server is not trusted; 126/127 CMD not\n"
	      "executable/not found; else CMD's own status.\n",
	      out);
}

static void die_unknown(const char *name) __attribute__((noreturn));

/* What to say of a name that is no command: every one that is. */
static void
die_unknown(const char *name)
{
	char list[512];
	size_t len = 0;

	list[0] = '\0';
	for (size_t i = 0; i < N_CMDS && len < sizeof list; i++)
		len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
					i ? ", " : "", cmds[i].name);
	die(EXIT_USAGE, "unknown command '%s'; commands: %s", name, list);
}

static int
cmd_help(int argc, char **argv)
{
	if (argc < 2) {
		usage(stdout);
		return 0;
	}
	if (argc > 2)
		die(EXIT_USAGE,
		    "help: unexpected '%s'; usage: arbiterctl help "
		    "[COMMAND]",
		    argv[2]);
	if (command_help(stdout, argv[1]) < 0)
		die_unknown(argv[1]);
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"trust-uid", required_argument, NULL, 'U'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	const struct ctl_cmd *k;
	int ch;

	while ((ch = getopt_long(argc, argv, "+S:c:t:hV", opts, NULL)) != -1) {
		switch (ch) {
		case 'U':
			trust_uid_arg(optarg);
			break;
		case 't':
			io_timeout_ms = (int)(parse_secs(optarg, "-t") * 1000);
			break;
		case 'S':
			socket_path = optarg;
			break;
		case 'c':
			socket_path = socket_from_config(optarg);
			break;
		case 'V':
			printf("arbiterctl %s\n", ARBITER_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	k = find_cmd(argv[optind]);
	if (k == NULL)
		die_unknown(argv[optind]);
	return k->fn(argc - optind, argv + optind);
}
