/* log.h - leveled logging to stderr.
 *
 * One line per call, "baton[PREFIX]: level: message". The level comes from
 * BATON_LOG (error, warn, info, debug; default info) or bt_log_set_level().
 * Thread-safe: each line is written with one write(2). Not a metrics or
 * event sink: those are JSON files written by their owners.
 */
#ifndef BT_COMMON_LOG_H
#define BT_COMMON_LOG_H

enum { BT_LOG_ERROR = 0, BT_LOG_WARN = 1, BT_LOG_INFO = 2, BT_LOG_DEBUG = 3 };

void bt_log_set_level(int level);
int bt_log_get_level(void);
/* A short tag such as "stage 2" shown in every line; NULL clears it. */
void bt_log_set_prefix(const char *prefix);
void bt_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define bt_error(...) bt_log(BT_LOG_ERROR, __VA_ARGS__)
#define bt_warn(...) bt_log(BT_LOG_WARN, __VA_ARGS__)
#define bt_info(...) bt_log(BT_LOG_INFO, __VA_ARGS__)
#define bt_debug(...) bt_log(BT_LOG_DEBUG, __VA_ARGS__)

#endif
