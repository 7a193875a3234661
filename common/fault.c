/* fault.c - see fault.h. Pure parsing: no I/O, no signals. */
#include "common/fault.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/parse.h"

static const char *const kind_names[BT_FAULT_NKINDS_] = {
  [BT_FAULT_CRASH] = "crash",   [BT_FAULT_EXIT] = "exit",
  [BT_FAULT_FREEZE] = "freeze", [BT_FAULT_HANG] = "hang",
  [BT_FAULT_SLOW] = "slow",     [BT_FAULT_CKPT_DIE] = "ckpt-die",
    [BT_FAULT_CKPT_SLOW] = "ckpt-slow",
};

const char *bt_fault_kind_name(bt_fault_kind_t k) {
  if ((int)k < 0 || k >= BT_FAULT_NKINDS_) return NULL;
  return kind_names[k];
}

/* Writes the reason and returns BT_EARG, so every failure is one line. */
static int fail(char *why, size_t len, const char *fmt, ...) {
  if (why && len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
  }
  return BT_EARG;
}

int bt_fault_parse(const char *spec, bt_fault_t *out, char *why, size_t why_len) {
  if (!spec) return fail(why, why_len, "empty fault spec");
  char buf[256];
  size_t sl = strlen(spec);
  if (sl == 0) return fail(why, why_len, "empty fault spec");
  if (sl >= sizeof buf) return fail(why, why_len, "fault spec too long: %.40s...", spec);
  memcpy(buf, spec, sl + 1);

  char *at = strchr(buf, '@');
  if (!at) return fail(why, why_len, "fault spec '%s': expected KIND@stage=S,step=N", spec);
  *at = '\0';
  bt_fault_t f = {.kind = BT_FAULT_NKINDS_, .stage = -1, .step = -1,
                  .action = 0, .code = 1, .ms = 100, .at = BT_FAULT_AT_SNAPSHOT};
  for (int k = 0; k < BT_FAULT_NKINDS_; k++)
    if (strcmp(buf, kind_names[k]) == 0) f.kind = (bt_fault_kind_t)k;
  if (f.kind == BT_FAULT_NKINDS_)
    return fail(why, why_len,
                "fault spec '%s': unknown kind '%s' (crash, exit, freeze, hang, slow, ckpt-die, ckpt-slow)",
                spec, buf);
  if (f.kind == BT_FAULT_CKPT_SLOW) f.ms = 2000;

  char *save = NULL;
  for (char *kv = strtok_r(at + 1, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(kv, '=');
    if (!eq) return fail(why, why_len, "fault spec '%s': field '%s' needs a value", spec, kv);
    *eq = '\0';
    const char *v = eq + 1;
    int rc;
    if (strcmp(kv, "stage") == 0) {
      rc = bt_parse_int(v, 0, 1 << 20, &f.stage);
    } else if (strcmp(kv, "step") == 0) {
      rc = bt_parse_i64(v, 1, INT64_MAX / 2, &f.step);
    } else if (strcmp(kv, "action") == 0) {
      rc = bt_parse_int(v, 0, 1 << 24, &f.action);
    } else if (strcmp(kv, "code") == 0) {
      if (f.kind != BT_FAULT_EXIT)
        return fail(why, why_len, "fault spec '%s': code= applies to exit only", spec);
      rc = bt_parse_int(v, 1, 255, &f.code);
    } else if (strcmp(kv, "ms") == 0) {
      if (f.kind != BT_FAULT_SLOW && f.kind != BT_FAULT_CKPT_SLOW)
        return fail(why, why_len, "fault spec '%s': ms= applies to slow and ckpt-slow only", spec);
      rc = bt_parse_int(v, 1, 600000, &f.ms);
    } else if (strcmp(kv, "at") == 0) {
      if (f.kind != BT_FAULT_CKPT_DIE)
        return fail(why, why_len, "fault spec '%s': at= applies to ckpt-die only", spec);
      rc = strcmp(v, "snapshot") == 0 ? (f.at = BT_FAULT_AT_SNAPSHOT, 0)
           : strcmp(v, "write") == 0  ? (f.at = BT_FAULT_AT_WRITE, 0)
                                      : BT_EARG;
    } else {
      return fail(why, why_len,
                  "fault spec '%s': unknown field '%s' (stage, step, action, code, ms, at)",
                  spec, kv);
    }
    if (rc) return fail(why, why_len, "fault spec '%s': bad value '%s' for %s", spec, v, kv);
  }
  if (f.stage < 0) return fail(why, why_len, "fault spec '%s': stage= is required", spec);
  if (f.step < 0) return fail(why, why_len, "fault spec '%s': step= is required", spec);
  *out = f;
  return 0;
}

int bt_fault_parse_list(const char *list, bt_fault_t *out, size_t max, size_t *n,
                        char *why, size_t why_len) {
  *n = 0;
  if (!list) return 0;
  size_t count = 0;
  const char *p = list;
  while (*p) {
    const char *end = strchr(p, ';');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > 0) {
      char one[256];
      if (len >= sizeof one) return fail(why, why_len, "fault spec too long");
      memcpy(one, p, len);
      one[len] = '\0';
      if (count >= max) return fail(why, why_len, "more than %zu fault specs", max);
      int rc = bt_fault_parse(one, &out[count], why, why_len);
      if (rc) return rc;
      count++;
    }
    p += len;
    if (*p == ';') p++;
  }
  *n = count;
  return 0;
}

int bt_fault_format(const bt_fault_t *f, char *buf, size_t len) {
  const char *k = bt_fault_kind_name(f->kind);
  int w = snprintf(buf, len, "%s@stage=%d,step=%lld,action=%d", k ? k : "?", f->stage,
                   (long long)f->step, f->action);
  if (w < 0) return w;
  size_t used = (size_t)w < len ? (size_t)w : (len ? len - 1 : 0);
  int extra = 0;
  if (f->kind == BT_FAULT_EXIT)
    extra = snprintf(buf + used, len - used, ",code=%d", f->code);
  else if (f->kind == BT_FAULT_SLOW || f->kind == BT_FAULT_CKPT_SLOW)
    extra = snprintf(buf + used, len - used, ",ms=%d", f->ms);
  else if (f->kind == BT_FAULT_CKPT_DIE && f->at == BT_FAULT_AT_WRITE)
    extra = snprintf(buf + used, len - used, ",at=write");
  return extra < 0 ? extra : w + extra;
}

int bt_fault_check(const bt_fault_t *f, int nstages, int64_t last_step, char *why,
                   size_t why_len) {
  char s[BT_FAULT_SPEC_MAX];
  bt_fault_format(f, s, sizeof s);
  if (f->stage >= nstages)
    return fail(why, why_len, "fault spec '%s': stage %d but the job has %d stages", s,
                f->stage, nstages);
  if (f->step > last_step)
    return fail(why, why_len, "fault spec '%s': step %lld is past the last step %lld", s,
                (long long)f->step, (long long)last_step);
  return 0;
}
