/* json.c - see json.h. */
#include "common/json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

void bt_json_init(bt_json_t *j) { memset(j, 0, sizeof *j); }

void bt_json_free(bt_json_t *j) {
  free(j->buf);
  memset(j, 0, sizeof *j);
}

void bt_json_reset(bt_json_t *j) {
  char *b = j->buf;
  size_t cap = j->cap;
  memset(j, 0, sizeof *j);
  j->buf = b;
  j->cap = cap;
  if (b) b[0] = 0;
}

static void put(bt_json_t *j, const char *s, size_t n) {
  if (j->err) return;
  if (j->len + n + 1 > j->cap) {
    size_t cap = j->cap ? j->cap : 256;
    while (cap < j->len + n + 1) cap *= 2;
    char *b = realloc(j->buf, cap);
    if (!b) {
      j->err = -ENOMEM;
      return;
    }
    j->buf = b;
    j->cap = cap;
  }
  memcpy(j->buf + j->len, s, n);
  j->len += n;
  j->buf[j->len] = 0;
}

static void puts_(bt_json_t *j, const char *s) { put(j, s, strlen(s)); }

/* Called before every value: the comma that separates it from the previous. */
static void before_value(bt_json_t *j) {
  if (j->after_key) {
    j->after_key = 0;
    return;
  }
  if (j->depth > 0) {
    if (j->count[j->depth - 1]) put(j, ",", 1);
    j->count[j->depth - 1] = 1;
  }
}

static void open_(bt_json_t *j, const char *c) {
  before_value(j);
  if (j->depth >= BT_JSON_MAX_DEPTH) {
    j->err = BT_EARG;
    return;
  }
  put(j, c, 1);
  j->count[j->depth++] = 0;
}

static void close_(bt_json_t *j, const char *c) {
  if (j->depth <= 0) {
    j->err = BT_EARG;
    return;
  }
  j->depth--;
  put(j, c, 1);
}

void bt_json_obj_begin(bt_json_t *j) { open_(j, "{"); }
void bt_json_obj_end(bt_json_t *j) { close_(j, "}"); }
void bt_json_arr_begin(bt_json_t *j) { open_(j, "["); }
void bt_json_arr_end(bt_json_t *j) { close_(j, "]"); }

static void quoted(bt_json_t *j, const char *s) {
  put(j, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    switch (*p) {
    case '"': puts_(j, "\\\""); break;
    case '\\': puts_(j, "\\\\"); break;
    case '\n': puts_(j, "\\n"); break;
    case '\r': puts_(j, "\\r"); break;
    case '\t': puts_(j, "\\t"); break;
    default:
      if (*p < 0x20) {
        snprintf(esc, sizeof esc, "\\u%04x", *p);
        puts_(j, esc);
      } else {
        put(j, (const char *)p, 1);
      }
    }
  }
  put(j, "\"", 1);
}

void bt_json_key(bt_json_t *j, const char *key) {
  before_value(j);
  quoted(j, key);
  put(j, ":", 1);
  j->after_key = 1;
}

void bt_json_str(bt_json_t *j, const char *s) {
  before_value(j);
  if (!s) {
    puts_(j, "null");
    return;
  }
  quoted(j, s);
}

void bt_json_num(bt_json_t *j, double v) {
  before_value(j);
  if (!isfinite(v)) {
    puts_(j, "null");
    return;
  }
  char b[40];
  snprintf(b, sizeof b, "%.17g", v);
  puts_(j, b);
}

void bt_json_int(bt_json_t *j, int64_t v) {
  before_value(j);
  char b[32];
  snprintf(b, sizeof b, "%" PRId64, v);
  puts_(j, b);
}

void bt_json_uint(bt_json_t *j, uint64_t v) {
  before_value(j);
  char b[32];
  snprintf(b, sizeof b, "%" PRIu64, v);
  puts_(j, b);
}

void bt_json_bool(bt_json_t *j, int v) {
  before_value(j);
  puts_(j, v ? "true" : "false");
}

void bt_json_null(bt_json_t *j) {
  before_value(j);
  puts_(j, "null");
}

void bt_json_raw(bt_json_t *j, const char *text) {
  before_value(j);
  puts_(j, text);
}

void bt_json_kstr(bt_json_t *j, const char *k, const char *s) { bt_json_key(j, k); bt_json_str(j, s); }
void bt_json_knum(bt_json_t *j, const char *k, double v) { bt_json_key(j, k); bt_json_num(j, v); }
void bt_json_kint(bt_json_t *j, const char *k, int64_t v) { bt_json_key(j, k); bt_json_int(j, v); }
void bt_json_kbool(bt_json_t *j, const char *k, int v) { bt_json_key(j, k); bt_json_bool(j, v); }

const char *bt_json_cstr(const bt_json_t *j) { return j->buf ? j->buf : ""; }
int bt_json_error(const bt_json_t *j) {
  if (j->err) return j->err;
  return j->depth == 0 ? 0 : BT_EARG;
}
