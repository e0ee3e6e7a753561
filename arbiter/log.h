/*
 * log: one line per event on stderr, as logfmt (`ts=... level=info
 * msg="..." key=value ...`) or as JSON lines. Callers pass the message and
 * the key/value pairs as a printf-style tail: log_info("lease granted",
 * "resource=%s pid=%u", name, pid). Values with spaces or quotes are quoted
 * by log_quote(). No allocation on the logging path.
 */
#ifndef ARBITER_LOG_H
#define ARBITER_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_setup(enum log_level level, bool json);
bool log_enabled(enum log_level level);
int log_parse_level(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);

void log_msg(enum log_level level, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

/*
 * Make s safe as a logfmt value: returned as is when it has no space, quote,
 * '=' or control character, else quoted and escaped into buf.
 */
const char *log_quote(const char *s, char *buf, size_t len);

/* Route libevent's own warnings through log_msg. */
void log_hook_libevent(void);

#endif
