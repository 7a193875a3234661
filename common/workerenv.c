/* workerenv.c - see workerenv.h. Everything here is generated from the two
 * tables there, so a variable is added, bounded or dropped in one place. */
#include "common/workerenv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/parse.h"

enum { SUP = 1, USER = 0 };

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  bt_errf(err, errlen, "%s", line);
  return BT_EARG;
}

void bt_worker_env_defaults(bt_worker_env_t *e) {
  memset(e, 0, sizeof *e);
#define NUM(var, field, type, lo, hi, def, ...) e->field = (type)(def);
#define STR(var, field, size, lo, hi, def, ...) snprintf(e->field, sizeof e->field, "%s", def);
#define X(kind, ...) kind(__VA_ARGS__)
  BT_WORKER_ENV(X)
#undef X
#undef NUM
#undef STR
}

static int num(const char *name, int64_t lo, int64_t hi, int required, int64_t *out, char *err, size_t errlen) {
  const char *s = getenv(name);
  if (!s) {
    if (required) return fail(err, errlen, "%s is not set (workers are started by `baton run`)", name);
    return 0;
  }
  if (bt_parse_i64(s, lo, hi, out) < 0)
    return fail(err, errlen, "%s: expected a whole number in [%lld, %lld], got '%s'", name, (long long)lo,
                   (long long)hi, s);
  return 1;
}

static int str(const char *name, char *dst, size_t size, int required, char *err, size_t errlen) {
  const char *s = getenv(name);
  if (!s) {
    if (required) return fail(err, errlen, "%s is not set (workers are started by `baton run`)", name);
    return 0;
  }
  if (strlen(s) >= size) return fail(err, errlen, "%s: longer than %zu bytes", name, size - 1);
  snprintf(dst, size, "%s", s);
  return 1;
}

int bt_worker_env_read(bt_worker_env_t *e, char *err, size_t errlen) {
  bt_worker_env_defaults(e);
  int rc;
  int64_t v = 0;
#define NUM(var, field, type, lo, hi, def, req, ...)                                      \
  if ((rc = num(#var, (int64_t)(lo), (int64_t)(hi), req, &v, err, errlen)) < 0) return rc; \
  if (rc) e->field = (type)v;
#define STR(var, field, size, lo, hi, def, req, ...) \
  if ((rc = str(#var, e->field, sizeof e->field, req, err, errlen)) < 0) return rc;
#define X(kind, ...) kind(__VA_ARGS__)
  BT_WORKER_ENV(X)
#undef X
#undef NUM
#undef STR
  if (e->stage >= e->nstages)
    return fail(err, errlen, "BATON_STAGE=%u is not below BATON_STAGES=%u", e->stage, e->nstages);
  if (strcmp(e->data_plane, "unix") && strcmp(e->data_plane, "tcp"))
    return fail(err, errlen, "BATON_DATA_PLANE: expected unix or tcp, got '%s'", e->data_plane);
  e->data_plane_tcp = !strcmp(e->data_plane, "tcp");
  return 0;
}

size_t bt_worker_env_count(void) {
  size_t n = 0;
#define X(kind, var, field, t, lo, hi, def, req, who, ...) n += who == SUP;
  BT_WORKER_ENV(X)
#undef X
  return n;
}

int bt_worker_env_format(const bt_worker_env_t *e, char **out, size_t max) {
  size_t k = 0;
  int fail = 0;
#define NUM(var, field, type, lo, hi, def, req, who, ...)                                        \
  if (who == SUP && k < max) {                                                                 \
    if (asprintf(&out[k], "%s=%lld", #var, (long long)e->field) < 0) fail = 1;                 \
    else k++;                                                                                  \
  }
#define STR(var, field, size, lo, hi, def, req, who, ...)                                        \
  if (who == SUP && e->field[0] && k < max) {                                                  \
    if (asprintf(&out[k], "%s=%s", #var, e->field) < 0) fail = 1;                              \
    else k++;                                                                                  \
  }
#define X(kind, ...) kind(__VA_ARGS__)
  BT_WORKER_ENV(X)
#undef X
#undef NUM
#undef STR
  if (fail) {
    for (size_t i = 0; i < k; i++) free(out[i]);
    return -ENOMEM;
  }
  return (int)k;
}

int bt_worker_env_is_ours(const char *kv) {
  static const char *const names[] = {
#define X(kind, var, field, t, lo, hi, def, req, who, ...) who == SUP ? #var : NULL,
      BT_WORKER_ENV(X)
#undef X
  };
  size_t kl = strcspn(kv, "=");
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (names[i] && strlen(names[i]) == kl && !strncmp(kv, names[i], kl)) return 1;
  /* The multi-node job secret (common/auth.h) is the launcher's alone: a
   * worker never inherits it (it gets the derived data-plane token). */
  if ((kl == 12 && !strncmp(kv, "BATON_SECRET", 12)) || (kl == 17 && !strncmp(kv, "BATON_SECRET_FILE", 17))) return 1;
  return 0;
}

int bt_worker_start_check(const bt_msg_start_t *m, const bt_worker_env_t *e, char *err, size_t errlen) {
  /* The numeric fields against their bounds. */
#define X(field, type, lo, hi, ...)                                                                       \
  if ((int64_t)m->field < (int64_t)(lo) || (uint64_t)m->field > (uint64_t)(hi))                         \
    return fail(err, errlen, "START: %s %lld is outside [%lld, %lld]", #field, (long long)m->field, \
                   (long long)(lo), (long long)(hi));
  BT_WORKER_START_NUM(X)
#undef X
  if (m->nstages != e->nstages)
    return fail(err, errlen, "START: %u stages, BATON_STAGES says %u", m->nstages, e->nstages);
  if (m->restore_step > 0 && m->first_step != m->restore_step + 1)
    return fail(err, errlen, "START: first step %lld after restoring step %lld", (long long)m->first_step,
                   (long long)m->restore_step);
  if (m->restore_step == 0 && m->first_step != 1)
    return fail(err, errlen, "START: first step %lld without a step to restore", (long long)m->first_step);
  if (m->restore_step > 0 && !e->restore_dir[0])
    return fail(err, errlen, "START names step %lld to restore but BATON_RESTORE_DIR is not set",
                   (long long)m->restore_step);
  return 0;
}

void bt_worker_env_help(char *out, size_t outlen) {
  size_t len = 0;
  if (outlen) out[0] = 0;
#define ADD(...)                                                                  \
  do {                                                                            \
    if (len < outlen) {                                                           \
      int w_ = snprintf(out + len, outlen - len, __VA_ARGS__);                    \
      if (w_ > 0) len += (size_t)w_;                                              \
    }                                                                             \
  } while (0)
  ADD("environment (common/workerenv.h; set by the supervisor unless marked):\n");
#define NUM(var, field, type, lo, hi, def, req, who, reader, help) \
  ADD("  %-22s %s [%lld, %lld]%s%s\n", #var, help, (long long)(lo), (long long)(hi), req ? ", required" : "", \
      who == USER ? ", from your environment" : "");
#define STR(var, field, size, lo, hi, def, req, who, reader, help) \
  ADD("  %-22s %s%s%s\n", #var, help, req ? ", required" : "", who == USER ? ", from your environment" : "");
#define X(kind, ...) kind(__VA_ARGS__)
  BT_WORKER_ENV(X)
#undef X
#undef NUM
#undef STR
  ADD("START fields (the supervisor's go, once every stage is ready):\n");
#define X(field, type, lo, hi, who, reader, help) ADD("  %-22s %s\n", #field, help);
  BT_WORKER_START(X)
#undef X
#undef ADD
}
