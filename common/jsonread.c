/* jsonread.c - see jsonread.h. */
#include "common/jsonread.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

int bt_jr_fail(bt_jr_t *r, const char *fmt, ...) {
  if (!r->failed && r->err && r->errlen) {
    int n = snprintf(r->err, r->errlen, "%s byte %zu: ", r->what, r->i);
    if (n > 0 && (size_t)n < r->errlen) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
      va_end(ap);
    }
  }
  r->failed = 1;
  return BT_EFORMAT;
}

int bt_jr_init(bt_jr_t *r, const char *what, const char *text, size_t len, size_t max, char *err,
               size_t errlen) {
  *r = (bt_jr_t){.s = text, .len = len, .what = what, .err = err, .errlen = errlen};
  if (err && errlen) err[0] = 0;
  if (len > max) return bt_jr_fail(r, "%zu bytes, more than the %zu allowed", len, max);
  const char *nul = memchr(text, 0, len);
  if (nul) {
    r->i = (size_t)(nul - text);
    return bt_jr_fail(r, "NUL byte");
  }
  return 0;
}

int bt_jr_peek(bt_jr_t *r) {
  while (r->i < r->len &&
         (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' || r->s[r->i] == '\r'))
    r->i++;
  return r->i < r->len ? (unsigned char)r->s[r->i] : -1;
}

int bt_jr_accept(bt_jr_t *r, char c) {
  if (bt_jr_peek(r) != (unsigned char)c) return 0;
  r->i++;
  return 1;
}

int bt_jr_expect(bt_jr_t *r, char c) {
  return bt_jr_accept(r, c) ? 0 : bt_jr_fail(r, "expected '%c'", c);
}

int bt_jr_literal(bt_jr_t *r, const char *word) {
  size_t n = strlen(word);
  bt_jr_peek(r);
  if (r->len - r->i < n || memcmp(r->s + r->i, word, n)) return bt_jr_fail(r, "expected %s", word);
  r->i += n;
  return 0;
}

/* Where decoded bytes go: a fixed buffer (cut to fit) or a growing one. */
typedef struct {
  char *b;
  size_t n, cap;
  int grow, fits;
} sink_t;

static int put(sink_t *k, const char *p, size_t n) {
  if (k->grow && k->n + n + 1 > k->cap) {
    size_t cap = k->cap ? k->cap : 64;
    while (k->n + n + 1 > cap) cap *= 2;
    char *nb = realloc(k->b, cap);
    if (!nb) return -ENOMEM;
    k->b = nb;
    k->cap = cap;
  }
  if (k->n + n + 1 > k->cap) {
    k->fits = 0;
    return 0;
  }
  memcpy(k->b + k->n, p, n);
  k->n += n;
  return 0;
}

static int hex4(bt_jr_t *r, unsigned *v) {
  *v = 0;
  for (int k = 0; k < 4; k++, r->i++) {
    char c = r->i < r->len ? r->s[r->i] : 0;
    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (h < 0) return bt_jr_fail(r, "bad \\u escape");
    *v = *v * 16 + (unsigned)h;
  }
  return 0;
}

/* The code point of a \u escape (the "\u" consumed), a surrogate pair
 * joined; \u0000 and lone surrogates refused. */
static int code_point(bt_jr_t *r, unsigned *cp) {
  unsigned lo;
  if (hex4(r, cp)) return BT_EFORMAT;
  if (*cp == 0) return bt_jr_fail(r, "\\u0000 in a string");
  if (*cp >= 0xdc00 && *cp <= 0xdfff) return bt_jr_fail(r, "lone surrogate in a string");
  if (*cp < 0xd800 || *cp > 0xdbff) return 0;
  if (r->len - r->i < 2 || r->s[r->i] != '\\' || r->s[r->i + 1] != 'u')
    return bt_jr_fail(r, "lone surrogate in a string");
  r->i += 2;
  if (hex4(r, &lo)) return BT_EFORMAT;
  if (lo < 0xdc00 || lo > 0xdfff) return bt_jr_fail(r, "lone surrogate in a string");
  *cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
  return 0;
}

static size_t utf8(unsigned cp, char *o) {
  if (cp < 0x80) return o[0] = (char)cp, 1;
  if (cp < 0x800) return o[0] = (char)(0xc0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3f)), 2;
  if (cp < 0x10000) {
    o[0] = (char)(0xe0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  o[0] = (char)(0xf0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  o[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

static int string(bt_jr_t *r, sink_t *k) {
  if (bt_jr_expect(r, '"')) return BT_EFORMAT;
  for (;;) {
    if (r->i >= r->len) return bt_jr_fail(r, "unterminated string");
    unsigned char c = (unsigned char)r->s[r->i++];
    char o[4];
    size_t n = 1;
    if (c == '"') break;
    if (c < 0x20) return bt_jr_fail(r, "control character in a string");
    o[0] = (char)c;
    if (c == '\\') {
      char e = r->i < r->len ? r->s[r->i++] : 0;
      unsigned cp;
      switch (e) {
      case '"': case '\\': case '/': o[0] = e; break;
      case 'b': o[0] = '\b'; break;
      case 'f': o[0] = '\f'; break;
      case 'n': o[0] = '\n'; break;
      case 'r': o[0] = '\r'; break;
      case 't': o[0] = '\t'; break;
      case 'u':
        if (code_point(r, &cp)) return BT_EFORMAT;
        n = utf8(cp, o);
        break;
      default: return bt_jr_fail(r, "bad escape '\\%c'", e ? e : '0');
      }
    }
    int rc = put(k, o, n);
    if (rc < 0) return rc;
  }
  if (k->b) k->b[k->n] = 0;
  return 0;
}

int bt_jr_str(bt_jr_t *r, char *buf, size_t cap, int *fits) {
  sink_t k = {.b = cap ? buf : NULL, .cap = cap, .fits = 1};
  int rc = string(r, &k);
  if (fits) *fits = k.fits;
  return rc;
}

int bt_jr_str_dup(bt_jr_t *r, char **out) {
  sink_t k = {.grow = 1, .fits = 1};
  int rc = string(r, &k);
  if (rc == 0 && !k.b) rc = put(&k, "", 0);
  if (rc < 0) {
    free(k.b);
    return rc;
  }
  k.b[k.n] = 0;
  *out = k.b;
  return 0;
}

int bt_jr_key(bt_jr_t *r, const char *name) {
  char k[64];
  int fits;
  size_t at = (bt_jr_peek(r), r->i);
  if (bt_jr_str(r, k, sizeof k, &fits)) return BT_EFORMAT;
  if (!fits || strcmp(k, name)) {
    r->i = at;
    return bt_jr_fail(r, "expected key \"%s\", found \"%.40s\"", name, k);
  }
  return bt_jr_expect(r, ':');
}

int bt_jr_next_key_is(bt_jr_t *r, const char *name) {
  size_t n = strlen(name);
  if (bt_jr_peek(r) != '"' || r->len - r->i < n + 2) return 0;
  return !memcmp(r->s + r->i + 1, name, n) && r->s[r->i + 1 + n] == '"';
}

static int digits(bt_jr_t *r) {
  size_t a = r->i;
  while (r->i < r->len && r->s[r->i] >= '0' && r->s[r->i] <= '9') r->i++;
  return r->i > a;
}

/* Scans a number's text into tmp (NUL-terminated); *integer is 1 when it
 * has no fraction or exponent. */
static int scan_number(bt_jr_t *r, char tmp[64], int *integer) {
  bt_jr_peek(r);
  size_t a = r->i;
  if (r->i < r->len && r->s[r->i] == '-') r->i++;
  size_t first = r->i;
  if (!digits(r)) return bt_jr_fail(r, "expected a number");
  if (r->s[first] == '0' && r->i - first > 1) {
    r->i = first;
    return bt_jr_fail(r, "expected a number without leading zeros");
  }
  *integer = 1;
  if (r->i < r->len && r->s[r->i] == '.') {
    r->i++;
    *integer = 0;
    if (!digits(r)) return bt_jr_fail(r, "expected digits after '.'");
  }
  if (r->i < r->len && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
    r->i++;
    *integer = 0;
    if (r->i < r->len && (r->s[r->i] == '+' || r->s[r->i] == '-')) r->i++;
    if (!digits(r)) return bt_jr_fail(r, "expected an exponent");
  }
  size_t n = r->i - a;
  if (n >= 64) return bt_jr_fail(r, "number too long");
  memcpy(tmp, r->s + a, n);
  tmp[n] = 0;
  return 0;
}

int bt_jr_num(bt_jr_t *r, double *out) {
  char tmp[64];
  int integer;
  if (scan_number(r, tmp, &integer)) return BT_EFORMAT;
  *out = strtod(tmp, NULL);
  if (!isfinite(*out)) return bt_jr_fail(r, "number out of range");
  return 0;
}

/* An integer's sign and magnitude. */
static int integer(bt_jr_t *r, const char *what, int *neg, uint64_t *mag) {
  char tmp[64];
  int is_int;
  if (scan_number(r, tmp, &is_int)) return BT_EFORMAT;
  if (!is_int) return bt_jr_fail(r, "%s: not an integer", what);
  *neg = tmp[0] == '-';
  *mag = 0;
  for (const char *p = tmp + *neg; *p; p++) {
    unsigned d = (unsigned)(*p - '0');
    if (*mag > (UINT64_MAX - d) / 10) return bt_jr_fail(r, "%s: out of range", what);
    *mag = *mag * 10 + d;
  }
  return 0;
}

int bt_jr_int(bt_jr_t *r, const char *what, int64_t lo, int64_t hi, int64_t *out) {
  int neg;
  uint64_t m;
  if (integer(r, what, &neg, &m)) return BT_EFORMAT;
  if (neg ? m > (uint64_t)INT64_MAX + 1 : m > (uint64_t)INT64_MAX)
    return bt_jr_fail(r, "%s: out of range", what);
  int64_t v = neg ? (m ? -(int64_t)(m - 1) - 1 : 0) : (int64_t)m;
  if (v < lo || v > hi) return bt_jr_fail(r, "%s: out of range", what);
  *out = v;
  return 0;
}

int bt_jr_u64(bt_jr_t *r, const char *what, uint64_t hi, uint64_t *out) {
  int neg;
  uint64_t m;
  if (integer(r, what, &neg, &m)) return BT_EFORMAT;
  if ((neg && m) || m > hi) return bt_jr_fail(r, "%s: out of range", what);
  *out = m;
  return 0;
}

static int skip(bt_jr_t *r, int depth) {
  if (depth > BT_JR_MAX_DEPTH) return bt_jr_fail(r, "nested more than %d deep", BT_JR_MAX_DEPTH);
  double d;
  int c = bt_jr_peek(r);
  switch (c) {
  case '"': return bt_jr_str(r, NULL, 0, NULL);
  case 't': return bt_jr_literal(r, "true");
  case 'f': return bt_jr_literal(r, "false");
  case 'n': return bt_jr_literal(r, "null");
  case '[':
  case '{':
    r->i++;
    if (bt_jr_accept(r, c == '[' ? ']' : '}')) return 0;
    do {
      if (c == '{' && (bt_jr_str(r, NULL, 0, NULL) || bt_jr_expect(r, ':'))) return BT_EFORMAT;
      if (skip(r, depth + 1)) return BT_EFORMAT;
    } while (bt_jr_accept(r, ','));
    return bt_jr_expect(r, c == '[' ? ']' : '}');
  default:
    if (c == '-' || (c >= '0' && c <= '9')) return bt_jr_num(r, &d);
    return bt_jr_fail(r, "expected a value");
  }
}

int bt_jr_skip(bt_jr_t *r) { return skip(r, 1); }

int bt_jr_end(bt_jr_t *r) {
  return bt_jr_peek(r) == -1 ? 0 : bt_jr_fail(r, "trailing bytes after the %s", r->what);
}
