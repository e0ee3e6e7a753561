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
#include <fnmatch.h>
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
	const char *help;	  /* for --help-config and value errors */
};

static const char *const hold_names[] = {"always", "on-demand", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "error",
					  NULL};
static const char *const format_names[] = {"logfmt", "json", NULL};
static const char *const bool_names[] = {"no", "yes", NULL};
static const char *const backend_names[] = {"none", "etcd", NULL};
static const char *const unavailable_names[] = {"queue", "fail", NULL};

#define O(f) offsetof(struct config, f)
#define MAXU UINT64_C(1000000000000)

static const struct config_key keys[] = {
    {
	.section = "socket",
	.key = "path",
	.type = T_PATH,
	.off = O(socket_path),
	.def = "",
	.help = "Unix socket clients connect to; empty: "
		"/run/arbiter/arbiter.sock as root, "
		"/tmp/arbiter-UID/arbiter.sock otherwise",
    },
    {
	.section = "socket",
	.key = "mode",
	.type = T_MODE,
	.off = O(socket_mode),
	.max = 0777,
	.def = "0660",
	.help = "file mode of the socket; connecting needs write permission",
    },
    {
	.section = "socket",
	.key = "group",
	.type = T_STR,
	.off = O(socket_group),
	.def = "",
	.help = "group of the socket, a name or number; empty: the "
		"daemon's group",
    },
    {
	.section = "storage",
	.key = "path",
	.type = T_PATH,
	.off = O(storage_path),
	.def = "/var/lib/arbiter",
	.help = "the storage folder whose lock arbiter holds; created if "
		"missing",
    },
    {
	.section = "storage",
	.key = "lock_file",
	.type = T_PATH,
	.off = O(lock_file),
	.def = "",
	.help = "the lock file; empty: <storage.path>/.arbiter.lock",
    },
    {
	.section = "storage",
	.key = "state_file",
	.type = T_PATH,
	.off = O(state_file),
	.def = "",
	.help = "the state file of fencing-token high-water marks; empty:"
		" <storage.path>/.arbiter.state",
    },
    {
	.section = "storage",
	.key = "group",
	.type = T_STR,
	.off = O(storage_group),
	.def = "",
	.help = "a group that may also open the lock file (0660) and read "
		"the state file (0640); empty: the daemon's user alone",
    },
    {
	.section = "storage",
	.key = "hold",
	.type = T_ENUM,
	.off = O(hold),
	.def = "always",
	.names = hold_names,
	.help = "always: hold the storage lock for the daemon's life (a "
		"second arbiter waits as a standby); on-demand: take it "
		"with the first lease, drop it linger_ms after the last",
    },
    {
	.section = "storage",
	.key = "linger_ms",
	.type = T_UINT,
	.off = O(linger_ms),
	.max = 86400000,
	.def = "1000",
	.live = true,
	.help = "on-demand only: how long the storage lock outlives the "
		"last lease",
    },
    {
	.section = "limits",
	.key = "max_connections",
	.type = T_UINT,
	.off = O(max_connections),
	.min = 1,
	.max = 1000000,
	.def = "4096",
	.live = true,
	.help = "client connections at once; more are refused with an error",
    },
    {
	.section = "limits",
	.key = "max_frame_bytes",
	.type = T_BYTES,
	.off = O(max_frame_bytes),
	.min = 64,
	.max = 16777215,
	.def = "65536",
	.live = true,
	.help = "largest request frame in bytes (K/M suffixes allowed)",
    },
    {
	.section = "limits",
	.key = "max_resources",
	.type = T_UINT,
	.off = O(max_resources),
	.min = 1,
	.max = 100000000,
	.def = "1000000",
	.live = true,
	.help = "distinct resources held or waited for at once",
    },
    {
	.section = "limits",
	.key = "max_leases_per_connection",
	.type = T_UINT,
	.off = O(max_leases_per_connection),
	.min = 1,
	.max = 1000000,
	.def = "1024",
	.live = true,
	.help = "leases plus pending requests on one connection",
    },
    {
	.section = "limits",
	.key = "max_waiters_per_resource",
	.type = T_UINT,
	.off = O(max_waiters_per_resource),
	.min = 1,
	.max = 10000000,
	.def = "100000",
	.live = true,
	.help = "waiters queued on one resource",
    },
    {
	.section = "limits",
	.key = "handshake_timeout_ms",
	.type = T_UINT,
	.off = O(handshake_timeout_ms),
	.min = 10,
	.max = 3600000,
	.def = "5000",
	.live = true,
	.help = "a client must send Hello within this many ms of connecting",
    },
    {
	.section = "limits",
	.key = "output_buffer_bytes",
	.type = T_BYTES,
	.off = O(output_buffer_bytes),
	.min = 4096,
	.max = 1073741824,
	.def = "4M",
	.live = true,
	.help = "replies queued for a client that does not read them; "
		"past this it is disconnected",
    },
    {
	.section = "limits",
	.key = "output_total_bytes",
	.type = T_BYTES,
	.off = O(output_total_bytes),
	.min = 65536,
	.max = 17179869184ULL,
	.def = "16M",
	.live = true,
	.help = "replies queued for all clients together; past this the "
		"slowest readers are disconnected first",
    },
    {
	.section = "limits",
	.key = "close_flush_ms",
	.type = T_UINT,
	.off = O(close_flush_ms),
	.min = 10,
	.max = 3600000,
	.def = "10000",
	.live = true,
	.help = "how long a closing text session may take to read its "
		"last replies",
    },
    {
	.section = "limits",
	.key = "max_text_line",
	.type = T_BYTES,
	.off = O(max_text_line),
	.min = 64,
	.max = 65536,
	.def = "1024",
	.live = true,
	.help = "longest line of the text admin protocol",
    },
    {
	.section = "leases",
	.key = "lock_delay_ms",
	.type = T_UINT,
	.off = O(lock_delay_ms),
	.max = 3600000,
	.def = "0",
	.live = true,
	.help = "after a lease ends uncleanly, the resource is not "
		"granted again for this long; in cluster mode also after "
		"another host's key went with its expired session; 0: off",
    },
    {
	.section = "leases",
	.key = "max_lock_delay_ms",
	.type = T_UINT,
	.off = O(max_lock_delay_ms),
	.max = 3600000,
	.def = "60000",
	.live = true,
	.help = "the longest lock delay a client may ask for",
    },
    {
	.section = "leases",
	.key = "max_ttl_ms",
	.type = T_UINT,
	.off = O(max_ttl_ms),
	.min = 1,
	.max = MAXU,
	.def = "86400000",
	.live = true,
	.help = "the longest ttl_ms a client may ask for",
    },
    {
	.section = "leases",
	.key = "slow_grant_ms",
	.type = T_UINT,
	.off = O(slow_grant_ms),
	.max = MAXU,
	.def = "1000",
	.live = true,
	.help = "a grant that waited at least this long is logged; 0: never",
    },
    {
	.section = "access",
	.key = "allow_uids",
	.type = T_UIDS,
	.off = O(allow_uids),
	.def = "",
	.live = true,
	.help = "users (names or numbers, comma-separated) who may "
		"connect; with allow_gids empty too: anyone who can open "
		"the socket",
    },
    {
	.section = "access",
	.key = "allow_gids",
	.type = T_GIDS,
	.off = O(allow_gids),
	.def = "",
	.live = true,
	.help = "groups (names or numbers, comma-separated) whose members"
		" may connect",
    },
    {
	.section = "access",
	.key = "admin_uids",
	.type = T_UIDS,
	.off = O(admin_uids),
	.def = "0",
	.live = true,
	.help = "users who may revoke leases and reset stats (the "
		"daemon's own uid always may)",
    },
    {
	.section = "log",
	.key = "level",
	.type = T_ENUM,
	.off = O(log_level),
	.def = "info",
	.names = level_names,
	.live = true,
	.help = "debug, info, warn or error",
    },
    {
	.section = "log",
	.key = "format",
	.type = T_ENUM,
	.off = O(log_format),
	.def = "logfmt",
	.names = format_names,
	.live = true,
	.help = "logfmt (key=value) or json (one object per line)",
    },
    {
	.section = "metrics",
	.key = "listen",
	.type = T_STR,
	.off = O(metrics_listen),
	.def = "",
	.live = true,
	.help = "HOST:PORT of the Prometheus /metrics and /healthz "
		"listener; empty: off",
    },
    {
	.section = "metrics",
	.key = "max_resource_labels",
	.type = T_UINT,
	.off = O(max_resource_labels),
	.max = 100000,
	.def = "100",
	.live = true,
	.help = "resources that get their own label; the rest are folded "
		"into \"_other\"",
    },
    {
	.section = "metrics",
	.key = "max_connections",
	.type = T_UINT,
	.off = O(metrics_max_connections),
	.min = 1,
	.max = 10000,
	.def = "16",
	.live = true,
	.help = "metrics connections at once; past it a new one gets 503",
    },
    {
	.section = "metrics",
	.key = "max_header_bytes",
	.type = T_BYTES,
	.off = O(metrics_max_header_bytes),
	.min = 512,
	.max = 1048576,
	.def = "8K",
	.live = true,
	.help = "largest request line plus headers; past it 431",
    },
    {
	.section = "metrics",
	.key = "max_body_bytes",
	.type = T_BYTES,
	.off = O(metrics_max_body_bytes),
	.max = 1048576,
	.def = "4K",
	.live = true,
	.help = "largest request body, read and dropped; past it 413",
    },
    {
	.section = "metrics",
	.key = "timeout_ms",
	.type = T_UINT,
	.off = O(metrics_timeout_ms),
	.min = 100,
	.max = 600000,
	.def = "10000",
	.live = true,
	.help = "ms a metrics client has to send its request, and again "
		"to read the reply",
    },
    {
	.section = "stats",
	.key = "max_resources",
	.type = T_UINT,
	.off = O(stats_max_resources),
	.min = 1,
	.max = 10000000,
	.def = "10000",
	.live = true,
	.help = "resources whose figures are kept one by one; the rest "
		"are folded together",
    },
    {
	.section = "stats",
	.key = "enabled",
	.type = T_ENUM,
	.off = O(stats_enabled),
	.def = "yes",
	.names = bool_names,
	.live = true,
	.help = "no: record nothing (stats and /metrics show zeros)",
    },
    {
	.section = "shutdown",
	.key = "timeout_ms",
	.type = T_UINT,
	.off = O(shutdown_timeout_ms),
	.max = 600000,
	.def = "5000",
	.live = true,
	.help = "on SIGTERM/SIGINT, how long to wait for the holders' "
		"Revoked messages to be written",
    },
    {
	.section = "cluster",
	.key = "backend",
	.type = T_ENUM,
	.off = O(cluster_backend),
	.def = "none",
	.names = backend_names,
	.help = "none: every resource is this host's alone; etcd: the "
		"resources named by cluster.resources are one lock across "
		"every arbiterd on the same etcd and prefix",
    },
    {
	.section = "cluster",
	.key = "endpoints",
	.type = T_STR,
	.off = O(cluster_endpoints),
	.def = "",
	.help = "the etcd members, comma-separated http://host:port or "
		"https://host:port; list every member: one that hangs or "
		"refuses is left for the next",
    },
    {
	.section = "cluster",
	.key = "prefix",
	.type = T_STR,
	.off = O(cluster_prefix),
	.def = "arbiter/",
	.help = "every etcd key arbiter writes starts with this; one "
		"prefix per group of arbiterds that share resources",
    },
    {
	.section = "cluster",
	.key = "host_id",
	.type = T_STR,
	.off = O(cluster_host_id),
	.def = "",
	.help = "this arbiterd's name in the cluster, shown by status on "
		"every host; empty: the host name",
    },
    {
	.section = "cluster",
	.key = "resources",
	.type = T_STR,
	.off = O(cluster_resources),
	.def = "*",
	.help = "comma-separated globs (fnmatch: *, ?, [...]) of the "
		"resource names that are cluster-wide; the others stay "
		"local to this host",
    },
    {
	.section = "cluster",
	.key = "tls_ca",
	.type = T_PATH,
	.off = O(cluster_tls_ca),
	.def = "",
	.help = "https endpoints: the CA file that signed the members' "
		"certificates; empty: the system's CAs",
    },
    {
	.section = "cluster",
	.key = "tls_cert",
	.type = T_PATH,
	.off = O(cluster_tls_cert),
	.def = "",
	.help = "https endpoints: a client certificate, when etcd runs "
		"with --client-cert-auth",
    },
    {
	.section = "cluster",
	.key = "tls_key",
	.type = T_PATH,
	.off = O(cluster_tls_key),
	.def = "",
	.help = "the key of tls_cert",
    },
    {
	.section = "cluster",
	.key = "session_ttl_ms",
	.type = T_UINT,
	.off = O(cluster_session_ttl_ms),
	.min = 2000,
	.max = 600000,
	.def = "10000",
	.help = "the TTL of this host's etcd lease, in whole seconds' "
		"worth of ms: what a dead host costs the others at most "
		"(plus half a second; up to twice across an etcd "
		"election); at least 3 election timeouts plus the margin",
    },
    {
	.section = "cluster",
	.key = "request_timeout_ms",
	.type = T_UINT,
	.min = 50,
	.max = 60000,
	.off = O(cluster_request_timeout_ms),
	.def = "1000",
	.help = "how long one etcd request may take on one member before "
		"that member is left for the next",
    },
    {
	.section = "cluster",
	.key = "safety_margin_ms",
	.type = T_UINT,
	.max = 600000,
	.off = O(cluster_safety_margin_ms),
	.def = "1000",
	.help = "cluster leases are revoked this long before etcd could "
		"let the host's keys go, so a slow revoke never overlaps "
		"another host's grant",
    },
    {
	.section = "cluster",
	.key = "max_clock_drift_ppm",
	.type = T_UINT,
	.max = 100000,
	.off = O(cluster_max_clock_drift_ppm),
	.def = "1000",
	.help = "how much faster etcd's clock may run than this host's, in "
		"parts per million; the deadline is shortened by as much",
    },
    {
	.section = "cluster",
	.key = "yield_after_ms",
	.type = T_UINT,
	.max = 3600000,
	.off = O(cluster_yield_after_ms),
	.def = "100",
	.live = true,
	.help = "when another host waits for a resource this host holds, "
		"stop granting it here after this long, so hosts take "
		"turns",
    },
    {
	.section = "cluster",
	.key = "when_unavailable",
	.type = T_ENUM,
	.off = O(cluster_when_unavailable),
	.def = "queue",
	.names = unavailable_names,
	.live = true,
	.help = "while etcd cannot be reached: queue: cluster acquires "
		"wait (their timeouts still run); fail: they fail at once "
		"with UNAVAILABLE",
    },
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
				snprintf(err, errlen, "id %s out of range",
					 tok);
				return -1;
			}
		} else if (gids) {
			struct group *g = getgrnam(tok);

			if (g == NULL) {
				snprintf(err, errlen, "no group named '%s'",
					 tok);
				return -1;
			}
			id = g->gr_gid;
		} else {
			struct passwd *p = getpwnam(tok);

			if (p == NULL) {
				snprintf(err, errlen, "no user named '%s'",
					 tok);
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
		if ((k->type == T_UINT ? parse_u64(v, &u)
				       : parse_bytes(v, &u)) < 0) {
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
			snprintf(err, errlen, "'%s' is not one of: %s", v,
				 opts);
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

static void fail(struct file_ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

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
		fail(x, "%s.%s: %s [%s]", section, name, msg, k->help);
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
	struct file_ctx x = {
	    .c = c, .name = path, .err = err, .errlen = errlen};
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
			snprintf(err, errlen, "environment %s: %s.%s: %s [%s]",
				 name, keys[i].section, keys[i].key, msg,
				 keys[i].help);
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
		snprintf(err, errlen, "-o %s: %s.%s: %s [%s]", o, section, key,
			 msg, k->help);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ load */

static bool
has_control(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	}
	return false;
}

/* The cluster keys that only make sense together. */
static int
derive_cluster(struct config *c, char *err, size_t errlen)
{
	uint64_t ttl = c->cluster_session_ttl_ms, usable, need;

	if (c->cluster_host_id[0] == '\0') {
		char host[256] = "";

		if (gethostname(host, sizeof host - 1) < 0 || host[0] == '\0')
			snprintf(host, sizeof host, "host-%ld", (long)getpid());
		free(c->cluster_host_id);
		c->cluster_host_id = strdup(host);
		if (c->cluster_host_id == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
	}
	if (strlen(c->cluster_host_id) > 200 ||
	    has_control(c->cluster_host_id) ||
	    strpbrk(c->cluster_host_id, "\"\\") != NULL) {
		snprintf(err, errlen,
			 "cluster.host_id: '%.64s' must be at most 200 bytes, "
			 "without quotes, backslashes or newlines",
			 c->cluster_host_id);
		return -1;
	}
	if (c->cluster_backend == CLUSTER_NONE)
		return 0;
	if (c->cluster_endpoints[0] == '\0') {
		snprintf(err, errlen,
			 "cluster.endpoints: cluster.backend = etcd needs the "
			 "etcd members, e.g. endpoints = "
			 "http://etcd-0:2379,http://etcd-1:2379");
		return -1;
	}
	if (strlen(c->cluster_prefix) > 200 || has_control(c->cluster_prefix)) {
		snprintf(err, errlen,
			 "cluster.prefix: must be at most 200 bytes, without "
			 "control characters");
		return -1;
	}
	if (c->cluster_prefix[0] == '\0') {
		snprintf(err, errlen,
			 "cluster.prefix: must not be empty (it keeps "
			 "arbiter's keys apart from everything else in etcd)");
		return -1;
	}
	if (ttl % 1000 != 0) {
		snprintf(err, errlen,
			 "cluster.session_ttl_ms: %" PRIu64
			 " is not a whole number of seconds (etcd leases "
			 "count in seconds), e.g. %" PRIu64,
			 ttl, (ttl / 1000 + 1) * 1000);
		return -1;
	}
	if (c->hold == HOLD_ON_DEMAND) {
		snprintf(err, errlen,
			 "storage.hold: on-demand cannot be used with "
			 "cluster.backend = etcd (a folder-wide lock taken "
			 "on demand and per-resource etcd keys can wait for "
			 "each other); use hold = always");
		return -1;
	}
	/* A keepalive goes out every TTL/3 and may take two request
	 * timeouts (one member, then the next): the deadline it renews must
	 * still lie ahead when it comes back. */
	usable = ttl - ttl * c->cluster_max_clock_drift_ppm / 1000000;
	need = ttl / 3 + 2 * c->cluster_request_timeout_ms;
	if (usable <= c->cluster_safety_margin_ms ||
	    usable - c->cluster_safety_margin_ms < need) {
		snprintf(
		    err, errlen,
		    "cluster.session_ttl_ms: %" PRIu64
		    " leaves no time to renew the session: it must be "
		    "at least safety_margin_ms (%" PRIu64
		    ") + a third of itself + 2 x request_timeout_ms (%" PRIu64
		    "), plus the clock drift; raise it or lower those",
		    ttl, c->cluster_safety_margin_ms,
		    c->cluster_request_timeout_ms);
		return -1;
	}
	return 0;
}

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
		snprintf(err, errlen,
			 "storage.path: must name the storage folder");
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
		snprintf(
		    err, errlen,
		    "socket.path: '%s' is longer than the 107 bytes a Unix "
		    "socket path may have",
		    c->socket_path);
		return -1;
	}
	if (derive_cluster(c, err, errlen) < 0)
		return -1;
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
		if (set_value(c, &keys[i], keys[i].def, NULL, msg, sizeof msg) <
		    0) {
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

	fprintf(out, "; effective configuration%s%s\n", c->path ? " from " : "",
		c->path ? c->path : "");
	for (size_t i = 0; i < NKEYS; i++) {
		if (strcmp(section, keys[i].section) != 0) {
			section = keys[i].section;
			fprintf(out, "\n[%s]\n", section);
		}
		format_value(c, &keys[i], v, sizeof v);
		fprintf(out, "%s = %s\n", keys[i].key, v);
	}
}

/* The range or choices of a key, for --help-config. */
static void
describe_type(const struct config_key *k, char *buf, size_t len)
{
	size_t o;

	switch (k->type) {
	case T_UINT:
	case T_BYTES:
		snprintf(buf, len, "%s, %" PRIu64 " to %" PRIu64,
			 k->type == T_UINT ? "number" : "size (K, M, G)",
			 k->min, k->max);
		break;
	case T_ENUM:
		o = (size_t)snprintf(buf, len, "one of");
		for (unsigned i = 0; k->names[i] != NULL && o < len; i++)
			o += (size_t)snprintf(buf + o, len - o, "%s %s",
					      i ? "," : "", k->names[i]);
		break;
	case T_MODE:
		snprintf(buf, len, "octal file mode");
		break;
	case T_PATH:
		snprintf(buf, len, "path, relative to the config file");
		break;
	case T_STR:
		snprintf(buf, len, "text");
		break;
	case T_UIDS:
	case T_GIDS:
		snprintf(buf, len, "list of %s names or numbers",
			 k->type == T_UIDS ? "user" : "group");
		break;
	}
}

void
config_help(FILE *out)
{
	char type[200];

	for (size_t i = 0; i < NKEYS; i++) {
		describe_type(&keys[i], type, sizeof type);
		fprintf(out, "%s.%s = %s\n    %s; %s\n    %s\n",
			keys[i].section, keys[i].key, keys[i].def, type,
			keys[i].live ? "a reload (SIGHUP) applies it"
				     : "changing it needs a restart",
			keys[i].help);
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
config_cluster_resource(const struct config *c, const char *name, size_t len)
{
	const char *p = c->cluster_resources;
	char glob[256], nm[256];

	if (c->cluster_backend == CLUSTER_NONE || len >= sizeof nm)
		return false;
	memcpy(nm, name, len);
	nm[len] = '\0';
	while (*p != '\0') {
		size_t n = strcspn(p, ",");
		const char *g = p;

		while (n > 0 && (*g == ' ' || *g == '\t')) {
			g++;
			n--;
		}
		while (n > 0 && (g[n - 1] == ' ' || g[n - 1] == '\t'))
			n--;
		if (n > 0 && n < sizeof glob) {
			memcpy(glob, g, n);
			glob[n] = '\0';
			if (fnmatch(glob, nm, 0) == 0)
				return true;
		}
		p += strcspn(p, ",");
		if (*p == ',')
			p++;
	}
	return false;
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
