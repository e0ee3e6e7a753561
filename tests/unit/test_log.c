/*
 * Unit tests for the log (arbiter/log.c): levels, logfmt quoting, JSON
 * lines and the bounds of a line. Each test points stderr at a pipe and
 * reads back what one log_msg() wrote.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

static int saved_stderr = -1;
static int pipe_rd = -1;

static void
capture(void)
{
	int p[2];

	cr_assert_eq(pipe(p), 0);
	saved_stderr = dup(STDERR_FILENO);
	dup2(p[1], STDERR_FILENO);
	close(p[1]);
	pipe_rd = p[0];
}

/* Everything written since capture(), with stderr given back. */
static char *
captured(void)
{
	static char out[65536];
	size_t o = 0;
	ssize_t n;

	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	while ((n = read(pipe_rd, out + o, sizeof out - 1 - o)) > 0)
		o += (size_t)n;
	out[o] = '\0';
	close(pipe_rd);
	return out;
}

static void
teardown(void)
{
	log_setup(LOG_INFO, false);
}

TestSuite(log, .fini = teardown);

Test(log, every_level_name_parses_back_to_its_level)
{
	const char *names[] = {"debug", "info", "warn", "error"};

	for (int i = 0; i < 4; i++) {
		enum log_level l = LOG_ERROR;

		cr_assert_eq(log_parse_level(names[i], &l), 0, "%s", names[i]);
		cr_assert_eq((int)l, i);
		cr_assert_str_eq(log_level_name(l), names[i]);
	}
}

Test(log, an_unknown_level_name_is_refused)
{
	enum log_level l = LOG_WARN;

	cr_assert_eq(log_parse_level("verbose", &l), -1);
	cr_assert_eq(log_parse_level("", &l), -1);
	cr_assert_eq((int)l, LOG_WARN,
		     "a refused name leaves the level as it was");
}

Test(log, messages_below_the_level_are_not_written)
{
	log_setup(LOG_WARN, false);
	cr_assert_not(log_enabled(LOG_INFO));
	cr_assert(log_enabled(LOG_WARN));
	cr_assert(log_enabled(LOG_ERROR));
	capture();
	log_info("hidden", "k=%d", 1);
	log_debug("hidden too", NULL);
	log_error("shown", "k=%d", 2);
	char *out = captured();
	cr_assert_null(strstr(out, "hidden"), "%s", out);
	cr_assert_not_null(strstr(out, "level=error msg=shown k=2\n"), "%s",
			   out);
}

Test(log, a_logfmt_line_has_time_level_message_and_pairs)
{
	log_setup(LOG_DEBUG, false);
	capture();
	log_debug("lease granted", "resource=%s pid=%u", "db", 42u);
	char *out = captured();
	cr_assert(strncmp(out, "ts=", 3) == 0, "%s", out);
	cr_assert_not_null(strstr(out, "Z level=debug msg=\"lease granted\" "
				       "resource=db pid=42\n"),
			   "%s", out);
	cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "one line: %s",
		     out);
}

Test(log, plain_values_are_left_alone)
{
	char buf[64];
	const char *s = "db-1/x.y";

	cr_assert_eq(log_quote(s, buf, sizeof buf), s);
}

Test(log, quotes_backslashes_and_control_characters_are_escaped)
{
	char buf[64];

	cr_assert_str_eq(log_quote("a \"b\" c\\d", buf, sizeof buf),
			 "\"a \\\"b\\\" c\\\\d\"");
	cr_assert_str_eq(log_quote("x\ny\x7f", buf, sizeof buf),
			 "\"x\\x0ay\\x7f\"");
	cr_assert_str_eq(log_quote("k=v", buf, sizeof buf), "\"k=v\"");
	cr_assert_str_eq(log_quote("", buf, sizeof buf), "\"\"");
}

Test(log, a_quoted_value_is_cut_to_its_buffer_and_stays_quoted)
{
	char buf[16];
	const char *r =
	    log_quote("a long value with spaces in it", buf, sizeof buf);

	cr_assert_eq(r, buf);
	cr_assert_lt(strlen(r), sizeof buf);
	cr_assert_eq(r[0], '"');
	cr_assert_eq(r[strlen(r) - 1], '"', "%s", r);
	/* Too small to hold even "": the value is returned as is. */
	cr_assert_str_eq(log_quote("a b", buf, 2), "a b");
}

Test(log, a_json_line_carries_plain_and_quoted_values_as_strings)
{
	char q[64];

	log_setup(LOG_INFO, true);
	capture();
	log_warn("storage lost", "path=%s who=%s n=%d",
		 log_quote("/srv/a b/\"x\"", q, sizeof q), "me", 3);
	char *out = captured();
	cr_assert(strncmp(out, "{\"ts\":\"", 7) == 0, "%s", out);
	cr_assert_not_null(strstr(out,
				  "\"level\":\"warn\",\"msg\":\"storage lost\","
				  "\"path\":\"/srv/a b/\\\"x\\\"\","
				  "\"who\":\"me\",\"n\":\"3\"}\n"),
			   "%s", out);
}

Test(log, a_json_line_escapes_quotes_in_unquoted_values)
{
	log_setup(LOG_INFO, true);
	capture();
	log_info("m", "raw=a\"b\\c tail=%s", "x");
	char *out = captured();
	cr_assert_not_null(
	    strstr(out, "\"raw\":\"a\\\"b\\\\c\",\"tail\":\"x\"}"), "%s", out);
}

Test(log, a_json_tail_without_pairs_ends_the_object)
{
	log_setup(LOG_INFO, true);
	capture();
	log_info("started", "just words");
	log_info("bare", NULL);
	char *out = captured();
	cr_assert_not_null(strstr(out, "\"msg\":\"started\"}\n"), "%s", out);
	cr_assert_not_null(strstr(out, "\"msg\":\"bare\"}\n"), "%s", out);
}

/*
 * log_quote() writes a control character as \xNN; JSON has no \x escape,
 * so a value with a newline or tab (a resource name, a path) must become
 * \u00NN in a JSON line, or the line does not parse.
 */
Test(log, a_json_line_escapes_control_characters_as_json)
{
	char q[64];

	log_setup(LOG_INFO, true);
	capture();
	log_info("m", "resource=%s", log_quote("a\tb", q, sizeof q));
	char *out = captured();
	cr_assert_not_null(strstr(out, "\"resource\":\"a\\u0009b\"}"), "%s",
			   out);
}

Test(log, an_overlong_line_is_cut_but_still_one_line)
{
	static char big[4000];

	memset(big, 'v', sizeof big - 1);
	log_setup(LOG_INFO, false);
	capture();
	log_info("long", "k=%s", big);
	char *out = captured();
	size_t n = strlen(out);
	cr_assert_leq(n, 2048);
	cr_assert_eq(out[n - 1], '\n');
	cr_assert_eq(strchr(out, '\n'), out + n - 1);

	log_setup(LOG_INFO, true);
	capture();
	log_info("long", "a=%s", big);
	out = captured();
	n = strlen(out);
	cr_assert_leq(n, 2048);
	cr_assert_str_eq(out + n - 2, "}\n", "%s", out + n - 20);
}

Test(log, an_overlong_message_in_json_is_cut_and_closed)
{
	static char msg[3000];

	memset(msg, 'm', sizeof msg - 1);
	log_setup(LOG_INFO, true);
	capture();
	log_info(msg, "k=v");
	char *out = captured();
	size_t n = strlen(out);
	cr_assert_leq(n, 2048);
	cr_assert_str_eq(out + n - 2, "}\n");
}

Test(log, libevent_warnings_come_out_as_log_lines)
{
	log_setup(LOG_INFO, false);
	log_hook_libevent();
	capture();
	/* With every method avoided, libevent warns that it has none. */
	struct event_config *cfg = event_config_new();
	const char **m = event_get_supported_methods();
	for (int i = 0; m[i] != NULL; i++)
		event_config_avoid_method(cfg, m[i]);
	struct event_base *b = event_base_new_with_config(cfg);
	event_config_free(cfg);
	cr_assert_null(b);
	event_set_log_callback(NULL);
	char *out = captured();
	cr_assert_not_null(strstr(out, "msg=libevent detail="), "%s", out);
}
