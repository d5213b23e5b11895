/*
 * Logging to stderr, one line per event, with sd-daemon priority prefixes
 * ("<3>" ...) so journald files each line at the right level.  Every byte
 * that came from outside (addresses, replies, HELO names) goes through
 * log_escape() first, so a peer cannot inject terminal escapes or lines.
 */
#ifndef MAILPOOL_LOG_H
#define MAILPOOL_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/*
 * Decide once, at start, whether lines carry the "<N>" priority prefixes:
 * only when stderr is the journal stream systemd named in $JOURNAL_STREAM
 * ("DEV:INO"), since anywhere else (a terminal, a log file) they are noise.
 * Until it is called, every line has them.
 */
void log_init(void);

/* Parse "error|warn|info|debug"; returns -1 when the word is unknown. */
int log_level_parse(const char *word);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

/* Start-up failure only: log at error level and exit(1). */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/*
 * Copy `len` bytes of `in` into `out` (size `outlen`, always NUL-terminated),
 * replacing control bytes, '"', '\\' and bytes >= 0x7f with \xNN.  Output that
 * does not fit ends in "...".  Returns out.
 */
char *log_escape(const char *in, size_t len, char *out, size_t outlen);

#endif
