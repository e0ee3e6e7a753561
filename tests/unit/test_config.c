/*
 * Unit tests for the config (arbiter/config.c): every key is read from a
 * file, bounds hold at both ends, errors read "file:line: section.key:
 * message", and the environment overrides the file and -o the environment.
 * Each test runs in its own process (criterion), so setenv stays local.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

extern char **environ;

static char dir[] = "/tmp/arbiter-test-config-XXXXXX";
static char path[256];
static struct config cfg;
static char err[1024];

static void
clean_env(void)
{
	for (char **e = environ; *e != NULL;) {
		if (strncmp(*e, "ARBITER_", 8) == 0) {
			char name[256];
			size_t n = strcspn(*e, "=");

			snprintf(name, sizeof name, "%.*s", (int)n, *e);
			unsetenv(name);
			continue; /* environ shifted down */
		}
		e++;
	}
}

static void
setup(void)
{
	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/arbiter.conf", dir);
	clean_env();
	memset(&cfg, 0, sizeof cfg);
	err[0] = '\0';
}

static void
teardown(void)
{
	config_free(&cfg);
	unlink(path);
	rmdir(dir);
}

TestSuite(config, .init = setup, .fini = teardown);

static void
write_conf(const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

/* Load text as the config file; the result of config_load. */
static int
load(const char *text, char *const *ov, size_t nov)
{
	write_conf(text);
	return config_load(&cfg, path, ov, nov, err, sizeof err);
}

/* config_print's output, for comparing effective values. */
static char *
printed(void)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert_not_null(f);
	config_print(&cfg, f);
	fclose(f);
	return buf;
}

static const struct {
	const char *section, *key, *value, *shown;
} every[] = {
    {"socket", "path", "/tmp/a.sock", "/tmp/a.sock"},
    {"socket", "mode", "0600", "0600"},
    {"socket", "group", "42", "42"},
    {"storage", "path", "/srv/data", "/srv/data"},
    {"storage", "lock_file", "/srv/l", "/srv/l"},
    {"storage", "state_file", "/srv/s", "/srv/s"},
    {"storage", "group", "0", "0"},
    {"storage", "hold", "on-demand", "on-demand"},
    {"storage", "linger_ms", "7", "7"},
    {"limits", "max_connections", "11", "11"},
    {"limits", "max_frame_bytes", "2K", "2048"},
    {"limits", "max_resources", "12", "12"},
    {"limits", "max_leases_per_connection", "13", "13"},
    {"limits", "max_waiters_per_resource", "14", "14"},
    {"limits", "handshake_timeout_ms", "15", "15"},
    {"limits", "output_buffer_bytes", "1M", "1048576"},
    {"limits", "output_total_bytes", "1G", "1073741824"},
    {"limits", "close_flush_ms", "16", "16"},
    {"limits", "max_text_line", "100", "100"},
    {"leases", "lock_delay_ms", "17", "17"},
    {"leases", "max_lock_delay_ms", "18", "18"},
    {"leases", "max_ttl_ms", "19", "19"},
    {"leases", "slow_grant_ms", "20", "20"},
    {"access", "allow_uids", "1,2", "1,2"},
    {"access", "allow_gids", "3", "3"},
    {"access", "admin_uids", "4, 5", "4,5"},
    {"log", "level", "debug", "debug"},
    {"log", "format", "json", "json"},
    {"metrics", "listen", "127.0.0.1:9", "127.0.0.1:9"},
    {"metrics", "max_resource_labels", "21", "21"},
    {"metrics", "max_connections", "24", "24"},
    {"metrics", "max_header_bytes", "2K", "2048"},
    {"metrics", "max_body_bytes", "0", "0"},
    {"metrics", "timeout_ms", "250", "250"},
    {"stats", "max_resources", "22", "22"},
    {"stats", "enabled", "no", "no"},
    {"shutdown", "timeout_ms", "23", "23"},
    {"cluster", "backend", "none", "none"},
    {"cluster", "endpoints", "http://e1:2379,http://e2:2379",
     "http://e1:2379,http://e2:2379"},
    {"cluster", "prefix", "team-a/", "team-a/"},
    {"cluster", "host_id", "node-7", "node-7"},
    {"cluster", "resources", "db, shared-*", "db, shared-*"},
    {"cluster", "tls_ca", "/etc/ca.pem", "/etc/ca.pem"},
    {"cluster", "tls_cert", "/etc/c.pem", "/etc/c.pem"},
    {"cluster", "tls_key", "/etc/k.pem", "/etc/k.pem"},
    {"cluster", "session_ttl_ms", "12000", "12000"},
    {"cluster", "request_timeout_ms", "700", "700"},
    {"cluster", "safety_margin_ms", "900", "900"},
    {"cluster", "max_clock_drift_ppm", "50", "50"},
    {"cluster", "yield_after_ms", "40", "40"},
    {"cluster", "when_unavailable", "fail", "fail"},
};

#define NEVERY (sizeof every / sizeof every[0])

Test(config, every_key_is_read_from_the_file)
{
	char text[8192] = "", line[256], *out;
	const char *section = "";
	unsigned nkeys = 0;

	for (size_t i = 0; i < NEVERY; i++) {
		if (strcmp(section, every[i].section) != 0) {
			section = every[i].section;
			snprintf(line, sizeof line, "[%s]\n", section);
			strcat(text, line);
		}
		snprintf(line, sizeof line, "%s = %s\n", every[i].key,
			 every[i].value);
		strcat(text, line);
	}
	cr_assert_eq(load(text, NULL, 0), 0, "%s", err);
	out = printed();
	for (size_t i = 0; i < NEVERY; i++) {
		snprintf(line, sizeof line, "\n%s = %s\n", every[i].key,
			 every[i].shown);
		cr_assert(strstr(out, line) != NULL, "%s.%s not applied: %s",
			  every[i].section, every[i].key, out);
	}
	/* A key added to the table must be added above too. */
	for (const char *p = out; (p = strstr(p, " = ")) != NULL; p++)
		nkeys++;
	cr_assert_eq(nkeys, NEVERY, "config_print shows %u keys, this test %zu",
		     nkeys, NEVERY);
	free(out);
}

Test(config, the_defaults_load_and_derive_the_storage_files)
{
	cr_assert_eq(config_load(&cfg, NULL, NULL, 0, err, sizeof err), 0, "%s",
		     err);
	cr_assert_str_eq(cfg.storage_path, "/var/lib/arbiter");
	cr_assert_str_eq(cfg.lock_file, "/var/lib/arbiter/.arbiter.lock");
	cr_assert_str_eq(cfg.state_file, "/var/lib/arbiter/.arbiter.state");
	cr_assert_eq(cfg.max_connections, 4096);
	cr_assert_eq(cfg.output_buffer_bytes, 4u << 20);
	cr_assert_eq(cfg.socket_mode, 0660);
	cr_assert_eq(cfg.hold, HOLD_ALWAYS);
	cr_assert_eq(cfg.admin_uids.n, 1);
	cr_assert_eq(cfg.admin_uids.ids[0], 0);
	cr_assert_neq(cfg.socket_path[0], '\0');
	cr_assert_null(cfg.path);
}

Test(config, relative_paths_are_relative_to_the_file)
{
	char want[4200], real[4096];

	cr_assert_eq(load("[storage]\npath = data\n", NULL, 0), 0, "%s", err);
	cr_assert_not_null(realpath(dir, real));
	snprintf(want, sizeof want, "%s/data", real);
	cr_assert_str_eq(cfg.storage_path, want);
	snprintf(want, sizeof want, "%s/data/.arbiter.lock", real);
	cr_assert_str_eq(cfg.lock_file, want);
}

static const struct {
	const char *text;
	bool ok;
} bounds[] = {
    {"[limits]\nmax_connections = 0\n", false},
    {"[limits]\nmax_connections = 1\n", true},
    {"[limits]\nmax_connections = 1000000\n", true},
    {"[limits]\nmax_connections = 1000001\n", false},
    {"[limits]\nmax_frame_bytes = 63\n", false},
    {"[limits]\nmax_frame_bytes = 64\n", true},
    {"[limits]\nmax_frame_bytes = 16777215\n", true},
    {"[limits]\nmax_frame_bytes = 16M\n", false},
    {"[limits]\nmax_text_line = 64K\n", true},
    {"[limits]\nmax_text_line = 65537\n", false},
    {"[limits]\noutput_total_bytes = 16G\n", true},
    {"[limits]\noutput_total_bytes = 17179869185\n", false},
    {"[limits]\nhandshake_timeout_ms = 9\n", false},
    {"[storage]\nlinger_ms = 86400001\n", false},
    {"[socket]\nmode = 0777\n", true},
    {"[socket]\nmode = 01000\n", false},
    {"[socket]\nmode = 8\n", false},
    {"[shutdown]\ntimeout_ms = 600001\n", false},
    {"[stats]\nmax_resources = 0\n", false},
    {"[metrics]\nmax_resource_labels = 0\n", true},
    {"[limits]\nmax_connections = -1\n", false},
    {"[limits]\nmax_connections = 99999999999999999999999\n", false},
    {"[limits]\noutput_buffer_bytes = 99999999999G\n", false},
    {"[access]\nallow_uids = 4294967296\n", false},
    {"[access]\nallow_uids = 4294967295\n", true},
    {"[leases]\nlock_delay_ms = 60001\n", false},
    {"[leases]\nlock_delay_ms = 60001\nmax_lock_delay_ms = 60001\n", true},
};

Test(config, bounds_hold_at_both_ends)
{
	for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
		int rc = load(bounds[i].text, NULL, 0);

		cr_assert_eq(rc == 0, bounds[i].ok, "%s-> %s", bounds[i].text,
			     rc == 0 ? "accepted" : err);
		if (rc == 0)
			config_free(&cfg);
	}
}

static const struct {
	const char *text;
	const char *want; /* after "<path>" */
} errors[] = {
    {"[limits]\nmax_connections = 0\n",
     ":2: limits.max_connections: 0 is out of range (1 to 1000000) ["},
    {"[limits]\n\nmax_connections = lots\n",
     ":3: limits.max_connections: 'lots' is not a whole number ["},
    {"[limits]\noutput_buffer_bytes = 4T\n",
     ":2: limits.output_buffer_bytes: '4T' is not a size"},
    {"[limits]\nmax_conns = 5\n", ":2: limits.max_conns: unknown key"},
    {"[nope]\nx = 1\n", ":2: [nope]: unknown section"},
    {"x = 1\n", ":1: x: key outside any [section]"},
    {"[storage]\nhold = sometimes\n",
     ":2: storage.hold: 'sometimes' is not one of: always, on-demand ["},
    {"[socket]\nmode = rw\n",
     ":2: socket.mode: 'rw' is not an octal file mode"},
    {"[log]\nlevel = info\n  format = json\n",
     ":3: line starts with white space"},
    {"[log]\nthis is not ini\n", ":2: syntax error"},
    {"[access]\nallow_uids = no-such-user-here\n",
     ":2: access.allow_uids: no user named 'no-such-user-here'"},
    {"[access]\nallow_gids = no-such-group-here\n",
     ":2: access.allow_gids: no group named 'no-such-group-here'"},
};

Test(config, errors_name_the_file_the_line_and_the_key)
{
	char want[600];

	for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
		cr_assert_lt(load(errors[i].text, NULL, 0), 0, "%s accepted",
			     errors[i].text);
		snprintf(want, sizeof want, "%s%s", path, errors[i].want);
		cr_assert(strncmp(err, want, strlen(want)) == 0,
			  "got '%s', want '%s...'", err, want);
	}
}

Test(config, a_value_error_quotes_what_the_key_is_for)
{
	cr_assert_lt(load("[limits]\nmax_connections = 0\n", NULL, 0), 0);
	cr_assert(strstr(err, "[client connections at once") != NULL, "%s",
		  err);
}

Test(config, an_over_long_line_is_reported_not_cut)
{
	char text[600] = "[log]\nlevel = ";

	memset(text + strlen(text), 'x', 400);
	strcat(text, "\n");
	cr_assert_lt(load(text, NULL, 0), 0);
	cr_assert(strstr(err, ":2: line is longer than") != NULL, "%s", err);
}

Test(config, a_missing_file_says_so)
{
	cr_assert_lt(config_load(&cfg, "/nonexistent/arbiter.conf", NULL, 0,
				 err, sizeof err),
		     0);
	cr_assert(strstr(err, "/nonexistent/arbiter.conf: cannot open config "
			      "file") == err,
		  "%s", err);
}

Test(config, the_environment_overrides_the_file_and_o_the_environment)
{
	char *ov[] = {"limits.max_connections=30", "limits.max_connections=40",
		      "log.level=warn"};

	setenv("ARBITER_LIMITS_MAX_CONNECTIONS", "20", 1);
	setenv("ARBITER_LIMITS_MAX_RESOURCES", "21", 1);
	cr_assert_eq(load("[limits]\nmax_connections = 10\nmax_resources = 11\n"
			  "max_waiters_per_resource = 12\n",
			  NULL, 0),
		     0, "%s", err);
	cr_assert_eq(cfg.max_connections, 20);
	cr_assert_eq(cfg.max_resources, 21);
	cr_assert_eq(cfg.max_waiters_per_resource, 12);
	config_free(&cfg);
	cr_assert_eq(load("[limits]\nmax_connections = 10\n", ov, 3), 0, "%s",
		     err);
	cr_assert_eq(cfg.max_connections, 40, "the last -o wins");
	cr_assert_eq(cfg.max_resources, 21);
	cr_assert_eq(cfg.log_level, LOG_WARN);
}

Test(config, environment_and_o_errors_say_where_the_value_came_from)
{
	char *bad_o[] = {"limits.max_connections=0"};
	char *no_key[] = {"limits.nope=1"};
	char *no_form[] = {"max_connections"};

	setenv("ARBITER_LOG_LEVEL", "loud", 1);
	cr_assert_lt(load("", NULL, 0), 0);
	cr_assert(strstr(err, "environment ARBITER_LOG_LEVEL: log.level: "
			      "'loud' is not one of") == err,
		  "%s", err);
	unsetenv("ARBITER_LOG_LEVEL");
	cr_assert_lt(load("", bad_o, 1), 0);
	cr_assert(strstr(err,
			 "-o limits.max_connections=0: "
			 "limits.max_connections: 0 is out of range") == err,
		  "%s", err);
	cr_assert_lt(load("", no_key, 1), 0);
	cr_assert_str_eq(err, "-o limits.nope=1: unknown key");
	cr_assert_lt(load("", no_form, 1), 0);
	cr_assert(strstr(err, "expected SECTION.KEY=VALUE") != NULL, "%s", err);
}

Test(config, a_socket_path_too_long_for_unix_sockets_is_refused)
{
	char text[400] = "[socket]\npath = /";

	memset(text + strlen(text), 'a', 120);
	strcat(text, "\n");
	cr_assert_lt(load(text, NULL, 0), 0);
	cr_assert(strstr(err, "socket.path: ") == err, "%s", err);
	cr_assert(strstr(err, "107 bytes") != NULL, "%s", err);
}

Test(config, a_reload_names_the_first_key_that_needs_a_restart)
{
	struct config other;

	cr_assert_eq(load("[log]\nlevel = info\n", NULL, 0), 0, "%s", err);
	write_conf("[log]\nlevel = debug\n");
	cr_assert_eq(config_load(&other, path, NULL, 0, err, sizeof err), 0);
	cr_assert_null(config_restart_needed(&cfg, &other));
	config_free(&other);
	write_conf("[storage]\nhold = on-demand\n");
	cr_assert_eq(config_load(&other, path, NULL, 0, err, sizeof err), 0);
	cr_assert_str_eq(config_restart_needed(&cfg, &other), "storage.hold");
	config_free(&other);
}

Test(config, help_lists_every_key_with_its_meaning)
{
	char *buf = NULL, want[200];
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert_not_null(f);
	config_help(f);
	fclose(f);
	for (size_t i = 0; i < NEVERY; i++) {
		snprintf(want, sizeof want, "%s.%s = ", every[i].section,
			 every[i].key);
		cr_assert(strstr(buf, want) != NULL, "--help-config lacks %s",
			  want);
	}
	cr_assert(strstr(buf,
			 "limits.max_connections = 4096\n    number, 1 "
			 "to 1000000; a reload (SIGHUP) applies it\n") != NULL,
		  "%s", buf);
	free(buf);
}

Test(config, id_lists_match_exactly)
{
	struct idlist l = {.n = 2, .ids = {5, 7}};

	cr_assert(config_id_allowed(&l, 7));
	cr_assert_not(config_id_allowed(&l, 6));
	l.n = 0;
	cr_assert_not(config_id_allowed(&l, 0));
}
