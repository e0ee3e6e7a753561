/*
 * config: the daemon's settings, from a table of keys (config.c) that gives
 * each one its section, type, bounds, default and help. Values come from the
 * file, then ARBITER_<SECTION>_<KEY> environment variables, then -o
 * SECTION.KEY=VALUE options, the last one given winning. Errors name where
 * the bad value came from: "arbiter.conf:12: limits.max_connections: ...".
 */
#ifndef ARBITER_CONFIG_H
#define ARBITER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

enum hold_policy { HOLD_ALWAYS, HOLD_ON_DEMAND };
enum log_format { LOGFMT, LOGJSON };
enum cluster_backend { CLUSTER_NONE, CLUSTER_ETCD };
enum cluster_unavailable { UNAVAILABLE_QUEUE, UNAVAILABLE_FAIL };

struct idlist {
	unsigned n;
	uint32_t ids[32];
};

struct config {
	/* [socket] */
	char *socket_path;
	unsigned socket_mode;
	char *socket_group;
	/* [storage] */
	char *storage_path;
	char *lock_file;
	char *state_file;
	char *storage_group; /* may also open the lock file; "" for none */
	unsigned hold;
	uint64_t linger_ms;
	/* [limits] */
	uint64_t max_connections;
	uint64_t max_frame_bytes;
	uint64_t max_resources;
	uint64_t max_leases_per_connection;
	uint64_t max_waiters_per_resource;
	uint64_t handshake_timeout_ms;
	uint64_t output_buffer_bytes;
	uint64_t output_total_bytes;
	uint64_t close_flush_ms;
	uint64_t max_text_line;
	/* [leases] */
	uint64_t lock_delay_ms;
	uint64_t max_lock_delay_ms;
	uint64_t max_ttl_ms;
	uint64_t slow_grant_ms;
	/* [access] */
	struct idlist allow_uids;
	struct idlist allow_gids;
	struct idlist admin_uids;
	/* [log] */
	unsigned log_level;
	unsigned log_format;
	/* [metrics] */
	char *metrics_listen;
	uint64_t max_resource_labels;
	uint64_t metrics_max_connections;
	uint64_t metrics_max_header_bytes;
	uint64_t metrics_max_body_bytes;
	uint64_t metrics_timeout_ms;
	/* [stats] */
	uint64_t stats_max_resources;
	unsigned stats_enabled;
	/* [shutdown] */
	uint64_t shutdown_timeout_ms;
	/* [cluster] */
	unsigned cluster_backend;
	char *cluster_endpoints;
	char *cluster_prefix;
	char *cluster_host_id; /* the host name when left empty */
	char *cluster_resources;
	char *cluster_tls_ca;
	char *cluster_tls_cert;
	char *cluster_tls_key;
	uint64_t cluster_session_ttl_ms;
	uint64_t cluster_request_timeout_ms;
	uint64_t cluster_safety_margin_ms;
	uint64_t cluster_max_clock_drift_ppm;
	uint64_t cluster_yield_after_ms;
	unsigned cluster_when_unavailable;

	char *path; /* the file it came from, absolute; NULL for none */
};

/*
 * Load: defaults, then the file (NULL for none), the environment, and the
 * overrides ("section.key=value" strings). On failure returns -1 with a
 * message in err and leaves *c freed; on success *c must be freed with
 * config_free().
 */
int config_load(struct config *c, const char *path, char *const *overrides,
		size_t noverrides, char *err, size_t errlen);
void config_free(struct config *c);

/* Print every key with its default, type, bounds and help (--help-config). */
void config_help(FILE *out);

/* Print every key with its effective value, as a loadable config file. */
void config_print(const struct config *c, FILE *out);

/*
 * Which keys differ between two configs and cannot change without a restart.
 * Returns the first such "section.key", or NULL when a reload can apply all.
 */
const char *config_restart_needed(const struct config *old,
				  const struct config *new);

bool config_id_allowed(const struct idlist *l, uint32_t id);

/* Whether a resource name is cluster-wide: cluster mode is on and the name
 * matches one of the comma-separated globs of cluster.resources. */
bool config_cluster_resource(const struct config *c, const char *name,
			     size_t len);

#endif
