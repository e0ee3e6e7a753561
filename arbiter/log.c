/*
 * log: logfmt or JSON lines to stderr. Each line is built in one buffer and
 * written with one write(2), so lines from a crashing daemon are never
 * interleaved half-way.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

static enum log_level log_min = LOG_INFO;
static bool log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void
log_setup(enum log_level level, bool json)
{
	log_min = level;
	log_json = json;
}

bool
log_enabled(enum log_level level)
{
	return level >= log_min;
}

int
log_parse_level(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0];
	     i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

const char *
log_level_name(enum log_level level)
{
	return level_names[level];
}

const char *
log_quote(const char *s, char *buf, size_t len)
{
	size_t o = 0;
	bool plain = *s != '\0';

	for (const char *p = s; *p && plain; p++) {
		unsigned char c = (unsigned char)*p;

		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
			plain = false;
	}
	if (plain || len < 3)
		return s;
	buf[o++] = '"';
	for (const char *p = s; *p && o + 4 < len; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < ' ' || c == 0x7f) {
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
		} else
			buf[o++] = (char)c;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* Append "key":"value" pairs parsed from a logfmt tail to a JSON line. */
static size_t
json_tail(char *out, size_t cap, const char *kv)
{
	size_t o = 0;
	const char *p = kv;

	while (*p && o + 8 < cap) {
		const char *eq;
		size_t klen;

		while (*p == ' ')
			p++;
		eq = strchr(p, '=');
		if (eq == NULL)
			break;
		klen = (size_t)(eq - p);
		o += (size_t)snprintf(out + o, cap - o, ",\"%.*s\":\"",
				      (int)klen, p);
		p = eq + 1;
		if (*p == '"') {
			p++;
			while (*p && *p != '"' && o + 8 < cap) {
				/* log_quote's \xNN is logfmt's; JSON spells
				 * it \u00NN. */
				if (p[0] == '\\' && p[1] == 'x' && p[2] &&
				    p[3]) {
					out[o++] = '\\';
					out[o++] = 'u';
					out[o++] = '0';
					out[o++] = '0';
					out[o++] = p[2];
					out[o++] = p[3];
					p += 4;
					continue;
				}
				if (*p == '\\' && p[1])
					out[o++] = *p++;
				out[o++] = *p++;
			}
			if (*p == '"')
				p++;
		} else {
			while (*p && *p != ' ' && o + 4 < cap) {
				if (*p == '"' || *p == '\\')
					out[o++] = '\\';
				out[o++] = *p++;
			}
		}
		if (o + 2 < cap)
			out[o++] = '"';
	}
	return o < cap ? o : cap - 1;
}

void
log_msg(enum log_level level, const char *msg, const char *kvfmt, ...)
{
	char line[2048], kv[1400], ts[40], qbuf[600];
	struct timespec now;
	struct tm tm;
	size_t o;
	va_list ap;

	if (level < log_min)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	kv[0] = '\0';
	if (kvfmt != NULL && *kvfmt != '\0') {
		va_start(ap, kvfmt);
		vsnprintf(kv, sizeof kv, kvfmt, ap);
		va_end(ap);
	}
	if (log_json) {
		o = (size_t)snprintf(line, sizeof line,
				     "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\","
				     "\"msg\":\"%s\"",
				     ts, now.tv_nsec / 1000000,
				     level_names[level], msg);
		if (o < sizeof line)
			o += json_tail(line + o, sizeof line - o, kv);
		if (o > sizeof line - 3)
			o = sizeof line - 3;
		line[o++] = '}';
	} else {
		o = (size_t)snprintf(
		    line, sizeof line, "ts=%s.%03ldZ level=%s msg=%s%s%s", ts,
		    now.tv_nsec / 1000000, level_names[level],
		    log_quote(msg, qbuf, sizeof qbuf), kv[0] ? " " : "", kv);
		if (o > sizeof line - 2)
			o = sizeof line - 2;
	}
	line[o++] = '\n';
	(void)!write(STDERR_FILENO, line, o);
}

static void
libevent_log(int severity, const char *msg)
{
	char q[600];

	log_msg(severity >= EVENT_LOG_ERR ? LOG_ERROR : LOG_WARN, "libevent",
		"detail=%s", log_quote(msg, q, sizeof q));
}

void
log_hook_libevent(void)
{
	event_set_log_callback(libevent_log);
}
