/* parse.c - see parse.h. */
#include "common/parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int bt_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (!s || !*s) return BT_EARG;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return BT_EARG;
  *out = v;
  return 0;
}

int bt_parse_int(const char *s, int lo, int hi, int *out) {
  int64_t v;
  int rc = bt_parse_i64(s, lo, hi, &v);
  if (rc) return rc;
  *out = (int)v;
  return 0;
}

int bt_parse_double(const char *s, double lo, double hi, double *out) {
  if (!s || !*s) return BT_EARG;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v) || v < lo || v > hi) return BT_EARG;
  *out = v;
  return 0;
}

/* Splits on commas into a scratch copy; calls `one` per field. */
static int each_field(const char *s, size_t max, size_t *n,
                      int (*one)(const char *field, size_t i, void *ctx), void *ctx) {
  if (!s || !*s) return BT_EARG;
  char *copy = strdup(s);
  if (!copy) return -ENOMEM;
  size_t count = 0;
  int rc = 0;
  /* strtok_r would skip empty fields ("1,,2"): walk by hand instead. */
  char *p = copy;
  for (;;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = 0;
    if (count >= max) {
      rc = BT_EARG;
      break;
    }
    rc = one(p, count, ctx);
    if (rc) break;
    count++;
    if (!comma) break;
    p = comma + 1;
  }
  free(copy);
  if (!rc) *n = count;
  return rc;
}

static int one_double(const char *f, size_t i, void *ctx) {
  return bt_parse_double(f, -HUGE_VAL, HUGE_VAL, (double *)ctx + i);
}

int bt_parse_doubles(const char *s, double *out, size_t max, size_t *n) {
  return each_field(s, max, n, one_double, out);
}

struct int_ctx {
  int lo, hi, *out;
};

static int one_int(const char *f, size_t i, void *ctx) {
  struct int_ctx *c = ctx;
  return bt_parse_int(f, c->lo, c->hi, c->out + i);
}

int bt_parse_ints(const char *s, int lo, int hi, int *out, size_t max, size_t *n) {
  struct int_ctx c = {lo, hi, out};
  return each_field(s, max, n, one_int, &c);
}
