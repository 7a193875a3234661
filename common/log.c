/* log.c - see log.h. */
#include "common/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int g_level = -1;
static char g_prefix[64];

static int level_from_env(void) {
  const char *s = getenv("BATON_LOG");
  if (!s) return BT_LOG_INFO;
  if (!strcasecmp(s, "error")) return BT_LOG_ERROR;
  if (!strcasecmp(s, "warn")) return BT_LOG_WARN;
  if (!strcasecmp(s, "debug")) return BT_LOG_DEBUG;
  return BT_LOG_INFO;
}

/* Atomic: the first bt_log() may come from a heartbeat or writer thread
 * while the main thread logs too (a data race under ThreadSanitizer). Two
 * threads computing the level from the environment at once agree. */
void bt_log_set_level(int level) { __atomic_store_n(&g_level, level, __ATOMIC_RELAXED); }

int bt_log_get_level(void) {
  int level = __atomic_load_n(&g_level, __ATOMIC_RELAXED);
  if (level < 0) {
    level = level_from_env();
    __atomic_store_n(&g_level, level, __ATOMIC_RELAXED);
  }
  return level;
}

void bt_log_set_prefix(const char *prefix) {
  if (!prefix) {
    g_prefix[0] = 0;
    return;
  }
  snprintf(g_prefix, sizeof g_prefix, "%s", prefix);
}

void bt_log(int level, const char *fmt, ...) {
  static const char *names[] = {"error", "warning", "info", "debug"};
  if (level > bt_log_get_level()) return;
  char line[2048];
  int n;
  if (g_prefix[0])
    n = snprintf(line, sizeof line, "baton[%s]: %s: ", g_prefix, names[level]);
  else
    n = snprintf(line, sizeof line, "baton: %s: ", names[level]);
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  /* One write so lines of concurrent threads and processes never interleave. */
  const char *p = line;
  while (n > 0) {
    ssize_t w = write(STDERR_FILENO, p, (size_t)n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    p += w;
    n -= (int)w;
  }
}
