/* trace.c - the strict Chrome trace reader of trace.h. */
#include "schedules/trace.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/file.h"

#define MAX_DEPTH 64

typedef struct {
  const char *s;
  size_t len, i;
  char *err;
  size_t errlen;
  bt_trace_t *out;
  size_t cap;
} parser_t;

static int fail(parser_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(parser_t *p, const char *fmt, ...) {
  if (p->err && p->errlen) {
    int n = snprintf(p->err, p->errlen, "trace byte %zu: ", p->i);
    if (n > 0 && (size_t)n < p->errlen) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
      va_end(ap);
    }
  }
  return BT_EFORMAT;
}

static void ws(parser_t *p) {
  while (p->i < p->len &&
         (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
    p->i++;
}

static int peek(parser_t *p) {
  ws(p);
  return p->i < p->len ? (unsigned char)p->s[p->i] : -1;
}

static int expect(parser_t *p, char c) {
  if (peek(p) != c) return fail(p, "expected '%c'", c);
  p->i++;
  return 0;
}

/* A JSON string into buf (escapes decoded for ASCII, others as '?');
 * *fits is 0 when it was longer than cap - 1. */
static int string(parser_t *p, char *buf, size_t cap, int *fits) {
  if (expect(p, '"')) return BT_EFORMAT;
  size_t n = 0;
  *fits = 1;
  while (p->i < p->len && p->s[p->i] != '"') {
    char c = p->s[p->i++];
    if ((unsigned char)c < 0x20) return fail(p, "control character in a string");
    if (c == '\\') {
      if (p->i >= p->len) break;
      char e = p->s[p->i++];
      switch (e) {
        case '"':
        case '\\':
        case '/': c = e; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u':
          for (int k = 0; k < 4; k++, p->i++)
            if (p->i >= p->len || !strchr("0123456789abcdefABCDEF", p->s[p->i]) || !p->s[p->i])
              return fail(p, "bad \\u escape");
          c = '?';
          break;
        default: return fail(p, "bad escape '\\%c'", e);
      }
    }
    if (n + 1 < cap)
      buf[n++] = c;
    else
      *fits = 0;
  }
  if (p->i >= p->len) return fail(p, "unterminated string");
  p->i++;
  if (cap) buf[n] = 0;
  return 0;
}

static int digits(parser_t *p) {
  size_t a = p->i;
  while (p->i < p->len && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
  return p->i > a;
}

/* A number in JSON's grammar, converted with strtod. */
static int number(parser_t *p, double *out) {
  ws(p);
  size_t a = p->i;
  if (p->i < p->len && p->s[p->i] == '-') p->i++;
  size_t first = p->i;
  if (!digits(p)) return fail(p, "expected a number");
  if (p->s[first] == '0' && p->i - first > 1)
    return fail(p, "expected a number without leading zeros");
  if (p->i < p->len && p->s[p->i] == '.') {
    p->i++;
    if (!digits(p)) return fail(p, "expected digits after '.'");
  }
  if (p->i < p->len && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
    p->i++;
    if (p->i < p->len && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
    if (!digits(p)) return fail(p, "expected an exponent");
  }
  char tmp[64];
  size_t n = p->i - a;
  if (n >= sizeof tmp) return fail(p, "number too long");
  memcpy(tmp, p->s + a, n);
  tmp[n] = 0;
  *out = strtod(tmp, NULL);
  if (!isfinite(*out)) return fail(p, "number out of range");
  return 0;
}

static int literal(parser_t *p, const char *word) {
  size_t n = strlen(word);
  if (p->len - p->i < n || memcmp(p->s + p->i, word, n)) return fail(p, "unexpected character");
  p->i += n;
  return 0;
}

static int skip_value(parser_t *p, int depth) {
  if (depth > MAX_DEPTH) return fail(p, "nested too deeply");
  int c = peek(p), fits;
  double d;
  char dummy[1];
  switch (c) {
    case '"': return string(p, dummy, sizeof dummy, &fits);
    case 't': return literal(p, "true");
    case 'f': return literal(p, "false");
    case 'n': return literal(p, "null");
    case '[':
      p->i++;
      if (peek(p) == ']') return p->i++, 0;
      for (;;) {
        if (skip_value(p, depth + 1)) return BT_EFORMAT;
        if (peek(p) == ',') {
          p->i++;
          continue;
        }
        return expect(p, ']');
      }
    case '{':
      p->i++;
      if (peek(p) == '}') return p->i++, 0;
      for (;;) {
        if (string(p, dummy, sizeof dummy, &fits) || expect(p, ':') || skip_value(p, depth + 1))
          return BT_EFORMAT;
        if (peek(p) == ',') {
          p->i++;
          continue;
        }
        return expect(p, '}');
      }
    default:
      if (c == '-' || (c >= '0' && c <= '9')) return number(p, &d);
      return fail(p, "expected a value");
  }
}

static int add_box(parser_t *p, const bt_box_t *b) {
  if (p->out->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 256;
    bt_box_t *nb = realloc(p->out->boxes, cap * sizeof *nb);
    if (!nb) return fail(p, "out of memory");
    p->out->boxes = nb;
    p->cap = cap;
  }
  p->out->boxes[p->out->n++] = *b;
  return 0;
}

/* One event object; a complete event named like an action becomes a box. */
static int event(parser_t *p) {
  size_t at = p->i;
  char key[16], name[40] = "", ph[8] = "";
  int name_fits = 0, fits;
  double ts = 0, dur = 0, tid = 0, num;
  int has_ts = 0, has_dur = 0, has_tid = 0;
  if (expect(p, '{')) return BT_EFORMAT;
  if (peek(p) == '}') {
    p->i++;
    return 0;
  }
  for (;;) {
    if (string(p, key, sizeof key, &fits) || expect(p, ':')) return BT_EFORMAT;
    if (fits && !strcmp(key, "name")) {
      if (peek(p) != '"') return fail(p, "\"name\" must be a string");
      if (string(p, name, sizeof name, &name_fits)) return BT_EFORMAT;
    } else if (fits && !strcmp(key, "ph")) {
      if (peek(p) != '"') return fail(p, "\"ph\" must be a string");
      if (string(p, ph, sizeof ph, &fits)) return BT_EFORMAT;
    } else if (fits && (!strcmp(key, "ts") || !strcmp(key, "dur") || !strcmp(key, "tid"))) {
      if (number(p, &num)) return BT_EFORMAT;
      if (key[0] == 't' && key[1] == 's')
        ts = num, has_ts = 1;
      else if (key[0] == 'd')
        dur = num, has_dur = 1;
      else
        tid = num, has_tid = 1;
    } else if (skip_value(p, 2)) {
      return BT_EFORMAT;
    }
    if (peek(p) == ',') {
      p->i++;
      continue;
    }
    if (expect(p, '}')) return BT_EFORMAT;
    break;
  }
  size_t after = p->i;
  bt_box_t b;
  if (strcmp(ph, "X") || !name_fits || bt_action_parse(name, &b.act)) return 0;
  p->i = at; /* errors below point at the event's start */
  if (!has_ts || !has_dur || !has_tid)
    return fail(p, "complete event %s lacks \"%s\"", name,
                !has_ts    ? "ts"
                : !has_dur ? "dur"
                           : "tid");
  if (dur < 0) return fail(p, "event %s has a negative duration", name);
  if (tid < 0 || tid >= BT_SCHED_MAX_STAGES || tid != floor(tid))
    return fail(p, "event %s has tid %g: expected a worker number 0..%d", name, tid,
                BT_SCHED_MAX_STAGES - 1);
  b.worker = (int)tid;
  b.start = ts;
  b.end = ts + dur;
  if (add_box(p, &b)) return BT_EFORMAT;
  p->i = after;
  return 0;
}

static int events(parser_t *p) {
  if (expect(p, '[')) return BT_EFORMAT;
  if (peek(p) == ']') return p->i++, 0;
  for (;;) {
    if (event(p)) return BT_EFORMAT;
    if (peek(p) == ',') {
      p->i++;
      continue;
    }
    return expect(p, ']');
  }
}

int bt_trace_parse(const char *text, size_t len, bt_trace_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  parser_t p = {.s = text, .len = len, .err = err, .errlen = errlen, .out = out};
  int rc = 0, seen = 0, fits;
  if (peek(&p) == '[') {
    rc = events(&p);
    seen = 1;
  } else {
    rc = expect(&p, '{');
    if (!rc && peek(&p) == '}')
      p.i++;
    else
      while (!rc) {
        char key[16];
        rc = string(&p, key, sizeof key, &fits) || expect(&p, ':') ? BT_EFORMAT : 0;
        if (rc) break;
        if (fits && !strcmp(key, "traceEvents")) {
          rc = events(&p);
          seen = 1;
        } else {
          rc = skip_value(&p, 1);
        }
        if (rc) break;
        if (peek(&p) == ',') {
          p.i++;
          continue;
        }
        rc = expect(&p, '}');
        break;
      }
  }
  if (!rc && peek(&p) != -1) rc = fail(&p, "text after the trace");
  if (!rc && !seen) rc = fail(&p, "no \"traceEvents\" array");
  if (!rc && out->n == 0)
    rc = fail(&p, "no complete (\"ph\":\"X\") event named like an action (2F0, 5I3)");
  if (rc) goto done;
  int maxw = 0, maxk = 0, maxmb = 0;
  double t0 = out->boxes[0].start;
  for (size_t j = 0; j < out->n; j++) {
    const bt_box_t *b = &out->boxes[j];
    if (b->worker > maxw) maxw = b->worker;
    if (b->act.stage > maxk) maxk = b->act.stage;
    if (b->act.mb > maxmb) maxmb = b->act.mb;
    if (b->start < t0) t0 = b->start;
  }
  for (size_t j = 0; j < out->n; j++) {
    out->boxes[j].start -= t0;
    out->boxes[j].end -= t0;
  }
  out->p = maxw + 1;
  out->v = maxk / out->p + 1;
  out->m = maxmb + 1;
done:
  if (rc) bt_trace_free(out);
  return rc;
}

int bt_trace_read(const char *path, bt_trace_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  char *buf = NULL;
  size_t len = 0;
  int rc = bt_file_read(path, BT_FILE_TRACE, &buf, &len);
  if (rc) {
    snprintf(err, errlen, "cannot read %s: %s", path, bt_strerror(rc));
    return rc;
  }
  rc = bt_trace_parse(buf, len, out, err, errlen);
  free(buf);
  return rc;
}

void bt_trace_free(bt_trace_t *t) {
  free(t->boxes);
  memset(t, 0, sizeof *t);
}
