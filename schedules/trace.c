/* trace.c - the strict Chrome trace reader of trace.h. */
#include "schedules/trace.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/file.h"
#include "common/jsonread.h"

typedef struct {
  bt_jr_t r;
  bt_trace_t *out;
  size_t cap;
} parser_t;

static int add_box(parser_t *p, const bt_box_t *b) {
  if (p->out->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 256;
    bt_box_t *nb = realloc(p->out->boxes, cap * sizeof *nb);
    if (!nb) return bt_jr_fail(&p->r, "out of memory");
    p->out->boxes = nb;
    p->cap = cap;
  }
  p->out->boxes[p->out->n++] = *b;
  return 0;
}

/* One event object; a complete event named like an action becomes a box. */
static int event(parser_t *p) {
  bt_jr_t *r = &p->r;
  char key[16], name[40] = "", ph[8] = "";
  int name_fits = 0, fits;
  double ts = 0, dur = 0, tid = 0, num;
  int has_ts = 0, has_dur = 0, has_tid = 0;
  if (bt_jr_expect(r, '{')) return BT_EFORMAT;
  size_t at = r->i - 1;
  if (!bt_jr_accept(r, '}')) do {
      if (bt_jr_str(r, key, sizeof key, &fits) || bt_jr_expect(r, ':')) return BT_EFORMAT;
      if (fits && (!strcmp(key, "name") || !strcmp(key, "ph"))) {
        if (bt_jr_peek(r) != '"') return bt_jr_fail(r, "\"%s\" must be a string", key);
        int bad = key[0] == 'n' ? bt_jr_str(r, name, sizeof name, &name_fits)
                                : bt_jr_str(r, ph, sizeof ph, &fits);
        if (bad) return BT_EFORMAT;
      } else if (fits && (!strcmp(key, "ts") || !strcmp(key, "dur") || !strcmp(key, "tid"))) {
        if (bt_jr_num(r, &num)) return BT_EFORMAT;
        if (key[0] == 't' && key[1] == 's')
          ts = num, has_ts = 1;
        else if (key[0] == 'd')
          dur = num, has_dur = 1;
        else
          tid = num, has_tid = 1;
      } else if (bt_jr_skip(r)) {
        return BT_EFORMAT;
      }
    } while (bt_jr_accept(r, ','));
  if (bt_jr_expect(r, '}')) return BT_EFORMAT;
  size_t after = r->i;
  bt_box_t b;
  if (strcmp(ph, "X") || !name_fits || bt_action_parse(name, &b.act)) return 0;
  r->i = at; /* errors below point at the event's start */
  if (!has_ts || !has_dur || !has_tid)
    return bt_jr_fail(r, "complete event %s lacks \"%s\"", name,
                      !has_ts    ? "ts"
                      : !has_dur ? "dur"
                                 : "tid");
  if (dur < 0) return bt_jr_fail(r, "event %s has a negative duration", name);
  if (tid < 0 || tid >= BT_SCHED_MAX_STAGES || tid != floor(tid))
    return bt_jr_fail(r, "event %s has tid %g: expected a worker number 0..%d", name, tid,
                      BT_SCHED_MAX_STAGES - 1);
  b.worker = (int)tid;
  b.start = ts;
  b.end = ts + dur;
  if (add_box(p, &b)) return BT_EFORMAT;
  r->i = after;
  return 0;
}

static int events(parser_t *p) {
  if (bt_jr_expect(&p->r, '[')) return BT_EFORMAT;
  if (bt_jr_accept(&p->r, ']')) return 0;
  do
    if (event(p)) return BT_EFORMAT;
  while (bt_jr_accept(&p->r, ','));
  return bt_jr_expect(&p->r, ']');
}

int bt_trace_parse(const char *text, size_t len, bt_trace_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  parser_t p = {.out = out};
  bt_jr_t *r = &p.r;
  int rc = bt_jr_init(r, "trace", text, len, bt_file_limit(BT_FILE_TRACE), err, errlen), seen = 0;
  if (rc) goto done;
  if (bt_jr_peek(r) == '[') {
    rc = events(&p);
    seen = 1;
  } else if (!(rc = bt_jr_expect(r, '{')) && !bt_jr_accept(r, '}')) {
    do {
      char key[16];
      int fits;
      if ((rc = bt_jr_str(r, key, sizeof key, &fits)) || (rc = bt_jr_expect(r, ':'))) break;
      if (fits && !strcmp(key, "traceEvents")) {
        rc = events(&p);
        seen = 1;
      } else {
        rc = bt_jr_skip(r);
      }
    } while (!rc && bt_jr_accept(r, ','));
    if (!rc) rc = bt_jr_expect(r, '}');
  }
  if (!rc && bt_jr_peek(r) != -1) rc = bt_jr_fail(r, "text after the trace");
  if (!rc && !seen) rc = bt_jr_fail(r, "no \"traceEvents\" array");
  if (!rc && out->n == 0)
    rc = bt_jr_fail(r, "no complete (\"ph\":\"X\") event named like an action (2F0, 5I3)");
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
