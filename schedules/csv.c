/* csv.c - reading and writing the compute_only CSV of csv.h. */
#include "schedules/csv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/file.h"
#include "schedules/sim.h"

/* Rows of the text, trailing blank lines dropped ("\r\n" accepted). */
static size_t count_rows(const char *t, size_t len) {
  size_t rows = 0, last_nonblank = 0;
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    int blank = 1;
    while (j < len && t[j] != '\n') {
      if (t[j] != '\r' && t[j] != ' ' && t[j] != '\t') blank = 0;
      j++;
    }
    rows++;
    if (!blank) last_nonblank = rows;
    i = j + 1;
  }
  return last_nonblank;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

int bt_sched_csv_parse(const char *text, size_t len, bt_schedule_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  size_t rows = count_rows(text, len);
  int rc = 0;
  if (rows == 0) {
    bt_errf(err, errlen, "CSV has no rows: expected one row of actions per worker");
    return BT_EFORMAT;
  }
  if (rows > BT_SCHED_MAX_STAGES) {
    bt_errf(err, errlen, "CSV has %zu rows: at most %d workers", rows, BT_SCHED_MAX_STAGES);
    return BT_EFORMAT;
  }
  /* Cells bound the action count; commas + rows is an upper bound. */
  size_t cap = rows;
  for (size_t i = 0; i < len; i++) cap += text[i] == ',';
  if (cap > BT_SCHED_MAX_ACTIONS) {
    bt_errf(err, errlen, "CSV has more than %zu cells", BT_SCHED_MAX_ACTIONS);
    return BT_EFORMAT;
  }
  rc = bt_sched_alloc(out, "csv", (int)rows, 1, 1, cap);
  if (rc) {
    bt_errf(err, errlen, "out of memory reading CSV");
    return rc;
  }
  size_t n = 0, i = 0;
  int max_stage = -1, max_mb = -1;
  for (size_t row = 0; row < rows; row++) {
    out->off[row] = n;
    size_t col = 0;
    for (;;) {
      size_t a = i;
      while (i < len && text[i] != ',' && text[i] != '\n') i++;
      size_t b = i;
      while (a < b && is_space(text[a])) a++;
      while (b > a && is_space(text[b - 1])) b--;
      col++;
      if (b > a) {
        char cell[32];
        bt_action_t act;
        if (b - a >= sizeof cell ||
            (memcpy(cell, text + a, b - a), cell[b - a] = 0, bt_action_parse(cell, &act))) {
          bt_errf(err, errlen,
               "CSV line %zu column %zu: '%.*s' is not an action like 2F0, 5I3 or "
               "5W3",
               row + 1, col, (int)(b - a > 40 ? 40 : b - a), text + a);
          rc = BT_EFORMAT;
          goto done;
        }
        if (act.stage >= BT_SCHED_MAX_STAGES * BT_SCHED_MAX_CHUNKS ||
            act.mb >= BT_SCHED_MAX_MICROBATCHES) {
          bt_errf(err, errlen,
               "CSV line %zu column %zu: %s is beyond the limits (%d virtual "
               "stages, %d micro-batches)",
               row + 1, col, cell, BT_SCHED_MAX_STAGES * BT_SCHED_MAX_CHUNKS,
               BT_SCHED_MAX_MICROBATCHES);
          rc = BT_EFORMAT;
          goto done;
        }
        if (act.stage % (int)rows != (int)row) {
          bt_errf(err, errlen,
               "CSV line %zu column %zu: %s is on worker %zu, but with %zu workers "
               "virtual stage %d belongs to worker %d (stage k runs on worker k %% %zu)",
               row + 1, col, cell, row, rows, act.stage, act.stage % (int)rows, rows);
          rc = BT_EFORMAT;
          goto done;
        }
        if (act.stage > max_stage) max_stage = act.stage;
        if (act.mb > max_mb) max_mb = act.mb;
        out->acts[n++] = act;
      }
      if (i >= len || text[i] == '\n') break;
      i++; /* the comma */
    }
    i++; /* the newline */
  }
  out->off[rows] = n;
  if (n == 0) {
    bt_errf(err, errlen, "CSV holds no actions");
    rc = BT_EFORMAT;
    goto done;
  }
  if ((max_stage + 1) % (int)rows != 0) {
    bt_errf(err, errlen,
         "CSV names virtual stages 0..%d on %zu workers: the stage count must be "
         "a multiple of the worker count (each worker holds the same number of chunks)",
         max_stage, rows);
    rc = BT_EFORMAT;
    goto done;
  }
  out->v = (max_stage + 1) / (int)rows;
  out->m = max_mb + 1;
done:
  if (rc) bt_sched_free(out);
  return rc;
}

int bt_sched_csv_read(const char *path, bt_schedule_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  char *buf = NULL;
  size_t len = 0;
  int rc = bt_file_read(path, BT_FILE_SCHEDULE, &buf, &len);
  if (rc) {
    bt_errf(err, errlen, "cannot read %s: %s", path, bt_strerror(rc));
    return rc;
  }
  rc = bt_sched_csv_parse(buf, len, out, err, errlen);
  free(buf);
  return rc;
}

int bt_sched_csv_write(const bt_schedule_t *s, FILE *f) {
  bt_sim_costs_t unit = {.cost = {1, 1, 1, 1}, .stage_cost = NULL, .transfer = 0};
  bt_sim_result_t r;
  int timed = bt_sim_run(s, &unit, &r, NULL, 0) == 0;
  char a1[32];
  for (int w = 0; w < s->p; w++) {
    /* The k-th cell of a row follows k commas. */
    long cell = 0;
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      long at = timed ? (long)r.start[s->off[w] + j] : (long)j;
      for (; cell < at; cell++) fputc(',', f);
      fputs(bt_action_format(bt_sched_at(s, w, j), a1, sizeof a1), f);
    }
    fputc('\n', f);
  }
  if (timed) bt_sim_result_free(&r);
  return ferror(f) ? -EIO : 0;
}
