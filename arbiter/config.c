/*
 * config: table-driven settings (see config.h).
 *
 * The file is read with inih, through our own line reader so that every
 * error can name its line, an indented line is refused (Debian's inih would
 * otherwise read it as a continuation of the key above), and an over-long
 * line is reported instead of being cut. Defaults are written as text in the
 * table and go through the same parser as the file, so --check-config prints
 * exactly what the daemon uses.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"
#include "defaults.h"

enum ctype { T_STR, T_PATH, T_UINT, T_BYTES, T_MODE, T_ENUM, T_UIDS, T_GIDS };

struct config_key {
	const char *section;
	const char *key;
	enum ctype type;
	size_t off;
	uint64_t min, max;
	const char *def;
	const char *const *names; /* T_ENUM */
	bool live;		  /* SIGHUP applies it without a restart */
};

static const char *const hold_names[] = {"always", "on-demand", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "error",
					  NULL};
static const char *const format_names[] = {"logfmt", "json", NULL};
static const char *const bool_names[] = {"no", "yes", NULL};

#define O(f) offsetof(struct config, f)
#define MAXU UINT64_C(1000000000000)

static const struct config_key keys[] = {
	{"socket", "path", T_PATH, O(socket_path), 0, 0, "", NULL, false},
	{"socket", "mode", T_MODE, O(socket_mode), 0, 0777, "0660", NULL, false},
	{"socket", "group", T_STR, O(socket_group), 0, 0, "", NULL, false},
	{"storage", "path", T_PATH, O(storage_path), 0, 0, "/var/lib/arbiter",
	 NULL, false},
	{"storage", "lock_file", T_PATH, O(lock_file), 0, 0, "", NULL, false},
	{"storage", "state_file", T_PATH, O(state_file), 0, 0, "", NULL, false},
	{"storage", "group", T_STR, O(storage_group), 0, 0, "", NULL, false},
	{"storage", "hold", T_ENUM, O(hold), 0, 0, "always", hold_names, false},
	{"storage", "linger_ms", T_UINT, O(linger_ms), 0, 86400000, "1000", NULL,
	 true},
	{"limits", "max_connections", T_UINT, O(max_connections), 1, 1000000,
	 "4096", NULL, true},
	{"limits", "max_frame_bytes", T_BYTES, O(max_frame_bytes), 64, 16777215,
	 "65536", NULL, true},
	{"limits", "max_resources", T_UINT, O(max_resources), 1, 100000000,
	 "1000000", NULL, true},
	{"limits", "max_leases_per_connection", T_UINT,
	 O(max_leases_per_connection), 1, 1000000, "1024", NULL, true},
	{"limits", "max_waiters_per_resource", T_UINT,
	 O(max_waiters_per_resource), 1, 10000000, "100000", NULL, true},
	{"limits", "handshake_timeout_ms", T_UINT, O(handshake_timeout_ms), 10,
	 3600000, "5000", NULL, true},
	{"limits", "output_buffer_bytes", T_BYTES, O(output_buffer_bytes), 4096,
	 1073741824, "4M", NULL, true},
	{"limits", "max_text_line", T_BYTES, O(max_text_line), 64, 65536, "1024",
	 NULL, true},
	{"leases", "lock_delay_ms", T_UINT, O(lock_delay_ms), 0, 3600000, "0",
	 NULL, true},
	{"leases", "max_lock_delay_ms", T_UINT, O(max_lock_delay_ms), 0, 3600000,
	 "60000", NULL, true},
	{"leases", "max_ttl_ms", T_UINT, O(max_ttl_ms), 1, MAXU, "86400000",
	 NULL, true},
	{"leases", "slow_grant_ms", T_UINT, O(slow_grant_ms), 0, MAXU, "1000",
	 NULL, true},
	{"access", "allow_uids", T_UIDS, O(allow_uids), 0, 0, "", NULL, true},
	{"access", "allow_gids", T_GIDS, O(allow_gids), 0, 0, "", NULL, true},
	{"access", "admin_uids", T_UIDS, O(admin_uids), 0, 0, "0", NULL, true},
	{"log", "level", T_ENUM, O(log_level), 0, 0, "info", level_names, true},
	{"log", "format", T_ENUM, O(log_format), 0, 0, "logfmt", format_names,
	 true},
	{"metrics", "listen", T_STR, O(metrics_listen), 0, 0, "", NULL, true},
	{"metrics", "max_resource_labels", T_UINT, O(max_resource_labels), 0,
	 100000, "100", NULL, true},
	{"stats", "max_resources", T_UINT, O(stats_max_resources), 1, 10000000,
	 "10000", NULL, true},
	{"stats", "enabled", T_ENUM, O(stats_enabled), 0, 0, "yes", bool_names,
	 true},
	{"shutdown", "timeout_ms", T_UINT, O(shutdown_timeout_ms), 0, 600000,
	 "5000", NULL, true},
};

#define NKEYS (sizeof keys / sizeof keys[0])

static void *
field(struct config *c, const struct config_key *k)
{
	return (char *)c + k->off;
}

static const void *
cfield(const struct config *c, const struct config_key *k)
{
	return (const char *)c + k->off;
}

static const struct config_key *
find_key(const char *section, const char *key, bool *section_known)
{
	*section_known = false;
	for (size_t i = 0; i < NKEYS; i++) {
		if (strcmp(keys[i].section, section) != 0)
			continue;
		*section_known = true;
		if (strcmp(keys[i].key, key) == 0)
			return &keys[i];
	}
	return NULL;
}

static int
parse_u64(const char *v, uint64_t *out)
{
	char *end;

	if (!isdigit((unsigned char)*v))
		return -1;
	errno = 0;
	*out = strtoull(v, &end, 10);
	if (errno != 0 || *end != '\0')
		return -1;
	return 0;
}

static int
parse_bytes(const char *v, uint64_t *out)
{
	char *end;
	uint64_t mult = 1;

	if (!isdigit((unsigned char)*v))
		return -1;
	errno = 0;
	*out = strtoull(v, &end, 10);
	if (errno != 0)
		return -1;
	if (*end == 'k' || *end == 'K')
		mult = UINT64_C(1) << 10, end++;
	else if (*end == 'm' || *end == 'M')
		mult = UINT64_C(1) << 20, end++;
	else if (*end == 'g' || *end == 'G')
		mult = UINT64_C(1) << 30, end++;
	if (*end != '\0' || *out > UINT64_MAX / mult)
		return -1;
	*out *= mult;
	return 0;
}

static int
parse_ids(const char *v, struct idlist *l, bool gids, char *err, size_t errlen)
{
	char buf[512], *save = NULL, *tok;

	l->n = 0;
	if (strlen(v) >= sizeof buf) {
		snprintf(err, errlen, "list too long");
		return -1;
	}
	snprintf(buf, sizeof buf, "%s", v);
	for (tok = strtok_r(buf, ", ", &save); tok != NULL;
	     tok = strtok_r(NULL, ", ", &save)) {
		uint64_t id;

		if (parse_u64(tok, &id) == 0) {
			if (id > UINT32_MAX) {
				snprintf(err, errlen, "id %s out of range", tok);
				return -1;
			}
		} else if (gids) {
			struct group *g = getgrnam(tok);

			if (g == NULL) {
				snprintf(err, errlen, "no group named '%s'", tok);
				return -1;
			}
			id = g->gr_gid;
		} else {
			struct passwd *p = getpwnam(tok);

			if (p == NULL) {
				snprintf(err, errlen, "no user named '%s'", tok);
				return -1;
			}
			id = p->pw_uid;
		}
		if (l->n == sizeof l->ids / sizeof l->ids[0]) {
			snprintf(err, errlen, "at most %zu ids",
				 sizeof l->ids / sizeof l->ids[0]);
			return -1;
		}
		l->ids[l->n++] = (uint32_t)id;
	}
	return 0;
}

/* Resolve a relative path against base (the config file's folder). */
static char *
resolve_path(const char *v, const char *base)
{
	char *out;
	size_t n;

	if (*v == '\0' || *v == '/' || base == NULL)
		return strdup(v);
	n = strlen(base) + strlen(v) + 2;
	out = malloc(n);
	if (out != NULL)
		snprintf(out, n, "%s/%s", base, v);
	return out;
}

static int
set_value(struct config *c, const struct config_key *k, const char *v,
	  const char *base, char *err, size_t errlen)
{
	void *f = field(c, k);
	uint64_t u;

	switch (k->type) {
	case T_STR:
	case T_PATH: {
		char *s = k->type == T_PATH ? resolve_path(v, base) : strdup(v);

		if (s == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		if (k->type == T_PATH && strlen(s) >= 4096) {
			free(s);
			snprintf(err, errlen, "path too long");
			return -1;
		}
		free(*(char **)f);
		*(char **)f = s;
		return 0;
	}
	case T_UINT:
	case T_BYTES:
		if ((k->type == T_UINT ? parse_u64(v, &u) : parse_bytes(v, &u)) < 0) {
			snprintf(err, errlen,
				 k->type == T_UINT
					 ? "'%s' is not a whole number"
					 : "'%s' is not a size (a number, "
					   "optionally followed by K, M or G)",
				 v);
			return -1;
		}
		if (u < k->min || u > k->max) {
			snprintf(err, errlen,
				 "%" PRIu64 " is out of range (%" PRIu64
				 " to %" PRIu64 ")",
				 u, k->min, k->max);
			return -1;
		}
		*(uint64_t *)f = u;
		return 0;
	case T_MODE: {
		char *end;
		unsigned long m;

		errno = 0;
		m = strtoul(v, &end, 8);
		if (*v == '\0' || *end != '\0' || errno != 0 || m > k->max) {
			snprintf(err, errlen,
				 "'%s' is not an octal file mode such as 0660",
				 v);
			return -1;
		}
		*(unsigned *)f = (unsigned)m;
		return 0;
	}
	case T_ENUM:
		for (unsigned i = 0; k->names[i] != NULL; i++) {
			if (strcmp(v, k->names[i]) == 0) {
				*(unsigned *)f = i;
				return 0;
			}
		}
		{
			char opts[200] = "";

			for (unsigned i = 0; k->names[i] != NULL; i++) {
				strncat(opts, i ? ", " : "",
					sizeof opts - strlen(opts) - 1);
				strncat(opts, k->names[i],
					sizeof opts - strlen(opts) - 1);
			}
			snprintf(err, errlen, "'%s' is not one of: %s", v, opts);
		}
		return -1;
	case T_UIDS:
	case T_GIDS:
		return parse_ids(v, f, k->type == T_GIDS, err, errlen);
	}
	return -1;
}

/* ------------------------------------------------------------ the file */

struct file_ctx {
	struct config *c;
	FILE *fp;
	const char *name;
	const char *base;
	int line;
	char *err;
	size_t errlen;
	bool failed;
};

static void
fail(struct file_ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
fail(struct file_ctx *x, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (x->failed)
		return;
	x->failed = true;
	n = snprintf(x->err, x->errlen, "%s:%d: ", x->name, x->line);
	if (n < 0 || (size_t)n >= x->errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(x->err + n, x->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

/* fgets for inih that counts lines and refuses what inih would misread. */
static char *
reader(char *str, int num, void *stream)
{
	struct file_ctx *x = stream;
	size_t len;

	if (fgets(str, num, x->fp) == NULL)
		return NULL;
	x->line++;
	len = strlen(str);
	if (len > 0 && str[len - 1] != '\n' && !feof(x->fp)) {
		int ch;

		fail(x, "line is longer than %d bytes", num - 2);
		while ((ch = fgetc(x->fp)) != EOF && ch != '\n')
			;
		str[0] = '\0';
		return str;
	}
	if (str[0] == ' ' || str[0] == '\t') {
		const char *p = str;

		while (*p == ' ' || *p == '\t')
			p++;
		if (*p != '\n' && *p != '\r' && *p != '\0') {
			fail(x, "line starts with white space; keys and "
				"[sections] must start in the first column");
			str[0] = '\0';
		}
	}
	return str;
}

static int
handler(void *user, const char *section, const char *name, const char *value)
{
	struct file_ctx *x = user;
	const struct config_key *k;
	bool section_known;
	char msg[300];

	if (*section == '\0') {
		fail(x, "%s: key outside any [section]", name);
		return 1;
	}
	k = find_key(section, name, &section_known);
	if (k == NULL) {
		if (section_known)
			fail(x, "%s.%s: unknown key in [%s]", section, name,
			     section);
		else
			fail(x, "[%s]: unknown section", section);
		return 1;
	}
	if (set_value(x->c, k, value, x->base, msg, sizeof msg) < 0)
		fail(x, "%s.%s: %s", section, name, msg);
	return 1;
}

/*
 * Open the config file for reading. Links are followed (config maps and
 * /etc/alternatives use them), but the open never blocks and only a
 * regular file (or a character device such as /dev/null) is read: a FIFO
 * there would otherwise hang the start, or the event loop on SIGHUP.
 */
static FILE *
open_config(const char *path, char *err, size_t errlen)
{
	struct stat st;
	FILE *fp;
	int fd, e;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "%s: cannot open config file: %s", path,
			 strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 ||
	    !(S_ISREG(st.st_mode) || S_ISCHR(st.st_mode))) {
		close(fd);
		snprintf(err, errlen,
			 "%s: the config file is not a regular file (%s); "
			 "point -c at a file",
			 path,
			 S_ISFIFO(st.st_mode)  ? "a FIFO"
			 : S_ISDIR(st.st_mode) ? "a folder"
					       : "a socket or device");
		return NULL;
	}
	/* A character device (-c /dev/null for no settings) keeps
	 * O_NONBLOCK: one that has nothing to read fails instead of
	 * hanging. */
	if (S_ISREG(st.st_mode))
		(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	fp = fdopen(fd, "r");
	if (fp == NULL) {
		e = errno;
		close(fd);
		snprintf(err, errlen, "%s: cannot read config file: %s", path,
			 strerror(e));
	}
	return fp;
}

static int
load_file(struct config *c, const char *path, char *err, size_t errlen)
{
	struct file_ctx x = {.c = c, .name = path, .err = err, .errlen = errlen};
	char *abs = NULL, *slash;
	int rc;

	x.fp = open_config(path, err, errlen);
	if (x.fp == NULL)
		return -1;
	abs = realpath(path, NULL);
	c->path = abs ? strdup(abs) : strdup(path);
	if (abs != NULL && (slash = strrchr(abs, '/')) != NULL)
		*(slash == abs ? slash + 1 : slash) = '\0';
	x.base = abs;
	ini_allow_multiline = false;
	rc = ini_parse_stream(reader, &x, handler, &x);
	fclose(x.fp);
	free(abs);
	if (x.failed)
		return -1;
	if (rc > 0) {
		x.line = rc;
		fail(&x, "syntax error: expected '[section]', 'key = value' "
			 "or a comment starting with ';' or '#'");
		return -1;
	}
	if (rc < 0) {
		snprintf(err, errlen, "%s: cannot read config file", path);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ overrides */

static int
apply_env(struct config *c, char *err, size_t errlen)
{
	char name[128], msg[300];

	for (size_t i = 0; i < NKEYS; i++) {
		const char *v;
		size_t o = 0;

		o += (size_t)snprintf(name, sizeof name, "ARBITER_%s_%s",
				      keys[i].section, keys[i].key);
		for (size_t j = 0; j < o && j < sizeof name; j++)
			name[j] = (char)toupper((unsigned char)name[j]);
		v = getenv(name);
		if (v == NULL)
			continue;
		if (set_value(c, &keys[i], v, NULL, msg, sizeof msg) < 0) {
			snprintf(err, errlen, "environment %s: %s.%s: %s", name,
				 keys[i].section, keys[i].key, msg);
			return -1;
		}
	}
	return 0;
}

static int
apply_override(struct config *c, const char *o, char *err, size_t errlen)
{
	char section[64], key[64], msg[300];
	const char *dot = strchr(o, '.'), *eq = strchr(o, '=');
	const struct config_key *k;
	bool known;

	if (dot == NULL || eq == NULL || dot > eq || dot == o ||
	    (size_t)(dot - o) >= sizeof section ||
	    (size_t)(eq - dot - 1) >= sizeof key) {
		snprintf(err, errlen,
			 "-o %s: expected SECTION.KEY=VALUE, e.g. "
			 "-o limits.max_connections=100",
			 o);
		return -1;
	}
	snprintf(section, sizeof section, "%.*s", (int)(dot - o), o);
	snprintf(key, sizeof key, "%.*s", (int)(eq - dot - 1), dot + 1);
	k = find_key(section, key, &known);
	if (k == NULL) {
		snprintf(err, errlen, "-o %s: %s", o,
			 known ? "unknown key" : "unknown section");
		return -1;
	}
	if (set_value(c, k, eq + 1, NULL, msg, sizeof msg) < 0) {
		snprintf(err, errlen, "-o %s: %s.%s: %s", o, section, key, msg);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ load */

static int
derive(struct config *c, char *err, size_t errlen)
{
	char buf[4200];

	if (c->socket_path[0] == '\0') {
		arb_default_socket_path(buf, sizeof buf);
		free(c->socket_path);
		c->socket_path = strdup(buf);
	}
	if (c->storage_path[0] == '\0') {
		snprintf(err, errlen, "storage.path: must name the storage folder");
		return -1;
	}
	if (c->lock_file[0] == '\0') {
		snprintf(buf, sizeof buf, "%s/.arbiter.lock", c->storage_path);
		free(c->lock_file);
		c->lock_file = strdup(buf);
	}
	if (c->state_file[0] == '\0') {
		snprintf(buf, sizeof buf, "%s/.arbiter.state", c->storage_path);
		free(c->state_file);
		c->state_file = strdup(buf);
	}
	if (c->socket_path == NULL || c->lock_file == NULL ||
	    c->state_file == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (strlen(c->socket_path) >= 108) {
		snprintf(err, errlen,
			 "socket.path: '%s' is longer than the 107 bytes a Unix "
			 "socket path may have",
			 c->socket_path);
		return -1;
	}
	if (c->lock_delay_ms > c->max_lock_delay_ms) {
		snprintf(err, errlen,
			 "leases.lock_delay_ms: %" PRIu64
			 " is above leases.max_lock_delay_ms (%" PRIu64 ")",
			 c->lock_delay_ms, c->max_lock_delay_ms);
		return -1;
	}
	return 0;
}

int
config_load(struct config *c, const char *path, char *const *overrides,
	    size_t noverrides, char *err, size_t errlen)
{
	char msg[300];

	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NKEYS; i++) {
		if (set_value(c, &keys[i], keys[i].def, NULL, msg, sizeof msg) < 0) {
			snprintf(err, errlen, "built-in default %s.%s: %s",
				 keys[i].section, keys[i].key, msg);
			goto bad;
		}
	}
	if (path != NULL && load_file(c, path, err, errlen) < 0)
		goto bad;
	if (apply_env(c, err, errlen) < 0)
		goto bad;
	for (size_t i = 0; i < noverrides; i++) {
		if (apply_override(c, overrides[i], err, errlen) < 0)
			goto bad;
	}
	if (derive(c, err, errlen) < 0)
		goto bad;
	return 0;
bad:
	config_free(c);
	return -1;
}

void
config_free(struct config *c)
{
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type == T_STR || keys[i].type == T_PATH) {
			free(*(char **)field(c, &keys[i]));
			*(char **)field(c, &keys[i]) = NULL;
		}
	}
	free(c->path);
	c->path = NULL;
}

static void
format_value(const struct config *c, const struct config_key *k, char *buf,
	     size_t len)
{
	const void *f = cfield(c, k);

	switch (k->type) {
	case T_STR:
	case T_PATH:
		snprintf(buf, len, "%s", *(char *const *)f);
		break;
	case T_UINT:
	case T_BYTES:
		snprintf(buf, len, "%" PRIu64, *(const uint64_t *)f);
		break;
	case T_MODE:
		snprintf(buf, len, "%04o", *(const unsigned *)f);
		break;
	case T_ENUM:
		snprintf(buf, len, "%s", k->names[*(const unsigned *)f]);
		break;
	case T_UIDS:
	case T_GIDS: {
		const struct idlist *l = f;
		size_t o = 0;

		buf[0] = '\0';
		for (unsigned i = 0; i < l->n && o < len; i++)
			o += (size_t)snprintf(buf + o, len - o, "%s%u",
					      i ? "," : "", l->ids[i]);
		break;
	}
	}
}

void
config_print(const struct config *c, FILE *out)
{
	const char *section = "";
	char v[4200];

	fprintf(out, "; effective configuration%s%s\n",
		c->path ? " from " : "", c->path ? c->path : "");
	for (size_t i = 0; i < NKEYS; i++) {
		if (strcmp(section, keys[i].section) != 0) {
			section = keys[i].section;
			fprintf(out, "\n[%s]\n", section);
		}
		format_value(c, &keys[i], v, sizeof v);
		fprintf(out, "%s = %s\n", keys[i].key, v);
	}
}

const char *
config_restart_needed(const struct config *old, const struct config *new)
{
	static char name[140];
	char a[4200], b[4200];

	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].live)
			continue;
		format_value(old, &keys[i], a, sizeof a);
		format_value(new, &keys[i], b, sizeof b);
		if (strcmp(a, b) != 0) {
			snprintf(name, sizeof name, "%s.%s", keys[i].section,
				 keys[i].key);
			return name;
		}
	}
	return NULL;
}

bool
config_id_allowed(const struct idlist *l, uint32_t id)
{
	for (unsigned i = 0; i < l->n; i++) {
		if (l->ids[i] == id)
			return true;
	}
	return false;
}
