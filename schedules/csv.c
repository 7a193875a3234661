/* csv.c - reading and writing the CSV formats of csv.h. Reading is two
 * passes: cells are parsed into records first, because which notation a
 * file uses (and so what its B means) depends on cells anywhere in it. */
#include "schedules/csv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/file.h"
#include "schedules/comm.h"
#include "schedules/sim.h"

/* What a cell names, before the notation gives B its meaning. */
enum {
  R_F,
  R_I,
  R_W,
  R_B,  /* full (current notation) or input half (earlier, when a W exists) */
  R_BW, /* full backward, earlier notation */
  R_SEND_F,
  R_RECV_F,
  R_SEND_B,
  R_RECV_B,
  R_UNSUP, /* UNSHARD, RESHARD, REDUCE_GRAD */
};

static const struct {
  const char *word;
  int kind;
} words[] = {{"F", R_F},           {"I", R_I},           {"W", R_W},
             {"B", R_B},           {"BW", R_BW},         {"SEND_F", R_SEND_F},
             {"RECV_F", R_RECV_F}, {"SEND_B", R_SEND_B}, {"RECV_B", R_RECV_B},
             {"UNSHARD", R_UNSUP}, {"RESHARD", R_UNSUP}, {"REDUCE_GRAD", R_UNSUP}};

typedef struct {
  int32_t stage, mb; /* mb -1 where the cell names none (UNSHARD) */
  int kind;
  int overlap;       /* the F of a compound cell */
  uint32_t line, col;
  const char *text; /* the cell, for messages */
  int textlen;
  size_t pos;       /* comm cells: compute actions of its row before it */
} cell_t;

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

/* Up to 9 digits at *p; 0 or BT_EFORMAT. */
static int digits(const char **p, const char *end, int32_t *out) {
  const char *s = *p;
  int32_t v = 0;
  int n = 0;
  while (s < end && *s >= '0' && *s <= '9') {
    if (++n > 9) return BT_EFORMAT;
    v = v * 10 + (*s++ - '0');
  }
  if (n == 0) return BT_EFORMAT;
  *p = s;
  *out = v;
  return 0;
}

/* "<stage><WORD>[<mb>]" exactly. */
static int parse_simple(const char *s, const char *end, cell_t *c) {
  if (digits(&s, end, &c->stage)) return BT_EFORMAT;
  const char *w = s;
  while (s < end && ((*s >= 'A' && *s <= 'Z') || *s == '_')) s++;
  size_t wl = (size_t)(s - w);
  c->kind = -1;
  for (size_t k = 0; k < sizeof words / sizeof words[0]; k++)
    if (strlen(words[k].word) == wl && !memcmp(words[k].word, w, wl)) c->kind = words[k].kind;
  if (c->kind < 0) return BT_EFORMAT;
  c->mb = -1;
  if (s == end) return c->kind == R_UNSUP ? 0 : BT_EFORMAT;
  if (digits(&s, end, &c->mb) || s != end) return BT_EFORMAT;
  return 0;
}

static const char compound_tail[] = ")OVERLAP_F_B";

/* One cell into one record, or two for "(aF x;bB y)OVERLAP_F_B". */
static int parse_cell(const char *a, const char *b, cell_t *out, int *n) {
  if (*a != '(') {
    *n = 1;
    out[0].overlap = 0;
    return parse_simple(a, b, &out[0]);
  }
  size_t tl = sizeof compound_tail - 1;
  const char *semi = memchr(a, ';', (size_t)(b - a));
  if ((size_t)(b - a) <= tl + 1 || memcmp(b - tl, compound_tail, tl) || !semi) return BT_EFORMAT;
  if (parse_simple(a + 1, semi, &out[0]) || parse_simple(semi + 1, b - tl, &out[1])) return BT_EFORMAT;
  if (out[0].kind != R_F || (out[1].kind != R_B && out[1].kind != R_BW)) return BT_EFORMAT;
  out[0].overlap = 1;
  out[1].overlap = 0;
  *n = 2;
  return 0;
}

/* A set of (stage, mb) pairs: open addressing over 64-bit keys. */
typedef struct {
  uint64_t *keys;
  size_t cap;
} pairset_t;

static uint64_t pair_key(int32_t stage, int32_t mb) { return ((uint64_t)(uint32_t)stage << 32 | (uint32_t)mb) + 1; }

static size_t pair_slot(const pairset_t *ps, uint64_t k) {
  size_t h = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 17) & (ps->cap - 1);
  while (ps->keys[h] && ps->keys[h] != k) h = (h + 1) & (ps->cap - 1);
  return h;
}

static int pairset_init(pairset_t *ps, size_t n) {
  ps->cap = 16;
  while (ps->cap < 2 * n + 16) ps->cap *= 2;
  ps->keys = calloc(ps->cap, sizeof *ps->keys);
  return ps->keys ? 0 : -ENOMEM;
}

static void pairset_add(pairset_t *ps, int32_t stage, int32_t mb) {
  uint64_t k = pair_key(stage, mb);
  ps->keys[pair_slot(ps, k)] = k;
}

static int pairset_has(const pairset_t *ps, int32_t stage, int32_t mb) {
  uint64_t k = pair_key(stage, mb);
  return ps->keys[pair_slot(ps, k)] == k;
}

static const char *cell_word(int kind) {
  for (size_t k = 0; k < sizeof words / sizeof words[0]; k++)
    if (words[k].kind == kind) return words[k].word;
  return "?";
}

/* The notation the cell shows: -1 none, else BT_CSV_CURRENT/EARLIER. */
static int notation_of(const cell_t *c, const pairset_t *wset) {
  if (c->kind == R_I) return BT_CSV_CURRENT;
  if (c->kind == R_BW) return BT_CSV_EARLIER;
  if (c->kind == R_B && !c->overlap && pairset_has(wset, c->stage, c->mb)) return BT_CSV_EARLIER;
  return -1;
}

static const char *notation_says(const cell_t *c) {
  switch (c->kind) {
    case R_I: return "I, the input half, is the current notation";
    case R_BW: return "BW, the full backward, is the earlier notation";
    default: return "B with a W of the same stage and micro-batch is the earlier notation's input half";
  }
}

/* The compute actions a comm cell pairs with: the action that needs
 * (RECV) or produces (SEND) the message, and the message itself. */
static int comm_action(const cell_t *c, bt_action_t *a, int *is_recv) {
  *is_recv = c->kind == R_RECV_F || c->kind == R_RECV_B;
  a->stage = c->stage;
  a->mb = c->mb;
  a->overlap = 0;
  a->type = c->kind == R_SEND_F || c->kind == R_RECV_F ? BT_ACT_F : BT_ACT_B;
  return 0;
}

/* The derived message a comm cell stands for, if the schedule has it. */
static int comm_derived(const bt_schedule_t *s, const cell_t *c, bt_msg_t *m) {
  int V = bt_sched_nstages(s), k = c->stage, w = bt_sched_worker_of(s, k);
  switch (c->kind) {
    case R_RECV_F:
      if (k == 0 || bt_sched_worker_of(s, k - 1) == w) return 0;
      *m = (bt_msg_t){.peer = bt_sched_worker_of(s, k - 1), .tag = {.kind = BT_MSG_ACTIVATION, .stage = k - 1, .mb = c->mb}};
      return 1;
    case R_SEND_F:
      if (k == V - 1 || bt_sched_worker_of(s, k + 1) == w) return 0;
      *m = (bt_msg_t){.peer = bt_sched_worker_of(s, k + 1), .tag = {.kind = BT_MSG_ACTIVATION, .stage = k, .mb = c->mb}};
      return 1;
    case R_RECV_B:
      if (k == V - 1 || bt_sched_worker_of(s, k + 1) == w) return 0;
      *m = (bt_msg_t){.peer = bt_sched_worker_of(s, k + 1), .tag = {.kind = BT_MSG_GRADIENT, .stage = k + 1, .mb = c->mb}};
      return 1;
    case R_SEND_B:
      if (k == 0 || bt_sched_worker_of(s, k - 1) == w) return 0;
      *m = (bt_msg_t){.peer = bt_sched_worker_of(s, k - 1), .tag = {.kind = BT_MSG_GRADIENT, .stage = k, .mb = c->mb}};
      return 1;
  }
  return 0;
}

/* The comm cell kind of a derived message, as seen from `recv`'s side. */
static int cell_kind_of(const bt_msg_t *m, int recv) {
  if (m->tag.kind == BT_MSG_ACTIVATION) return recv ? R_RECV_F : R_SEND_F;
  return recv ? R_RECV_B : R_SEND_B;
}

/* The stage a comm cell names: the stage that sends or receives. */
static int cell_stage_of(const bt_msg_t *m, int recv) {
  if (!recv) return m->tag.stage;
  return m->tag.kind == BT_MSG_ACTIVATION ? m->tag.stage + 1 : m->tag.stage - 1;
}

static size_t seen_key(const bt_schedule_t *s, int kind, int stage, int mb) {
  return ((size_t)mb * (size_t)bt_sched_nstages(s) + (size_t)stage) * 4 + (size_t)(kind - R_SEND_F);
}

/* Checks the comm cells of each row against the derived messages. */
static int check_comms(const bt_schedule_t *s, const cell_t *cells, size_t ncells, const size_t *row_of,
                       char *err, size_t errlen) {
  uint32_t *idx = NULL;
  unsigned char *seen = NULL;
  char a1[32];
  int rc = bt_sched_index(s, &idx, err, errlen);
  if (rc) return rc;
  int V = bt_sched_nstages(s);
  seen = calloc((size_t)V * (size_t)s->m * 4, 1);
  if (!seen) {
    rc = -ENOMEM;
    goto done;
  }
  for (size_t q = 0; q < ncells; q++) {
    const cell_t *c = &cells[q];
    if (c->kind < R_SEND_F || c->kind > R_RECV_B) continue;
    int w = (int)row_of[q], recv;
    bt_action_t a;
    bt_msg_t m;
    comm_action(c, &a, &recv);
    if (c->stage >= V || c->mb >= s->m) {
      bt_errf(err, errlen, "CSV line %u column %u: %.*s names a stage or micro-batch the schedule does not have",
              c->line, c->col, c->textlen, c->text);
      rc = BT_EFORMAT;
      goto done;
    }
    uint32_t at = idx[bt_sched_key(s, a.stage, a.type, a.mb)];
    if (a.type == BT_ACT_B && at == UINT32_MAX) at = idx[bt_sched_key(s, a.stage, BT_ACT_I, a.mb)];
    if (at == UINT32_MAX || at < s->off[w] || at >= s->off[w + 1]) {
      a.type = a.type == BT_ACT_F ? BT_ACT_F : BT_ACT_I;
      bt_errf(err, errlen, "CSV line %u column %u: %.*s, but %s of stage %d micro-batch %d is not on this worker",
              c->line, c->col, c->textlen, c->text, a.type == BT_ACT_F ? "the forward" : "the backward", a.stage,
              a.mb);
      rc = BT_EFORMAT;
      goto done;
    }
    if (!comm_derived(s, c, &m)) {
      bt_errf(err, errlen,
              "CSV line %u column %u: %.*s is not a message baton derives (the neighbouring stage is on the "
              "same worker, a local handoff, or there is none)",
              c->line, c->col, c->textlen, c->text);
      rc = BT_EFORMAT;
      goto done;
    }
    size_t j = (size_t)at - s->off[w];
    if (recv ? j < c->pos : j >= c->pos) {
      bt_errf(err, errlen, "CSV line %u column %u: %.*s comes %s %s, which %s it (the worker's communication rule)",
              c->line, c->col, c->textlen, c->text, recv ? "after" : "before",
              bt_action_format(&s->acts[at], a1, sizeof a1), recv ? "needs" : "produces");
      rc = BT_EFORMAT;
      goto done;
    }
    size_t key = seen_key(s, c->kind, c->stage, c->mb);
    if (seen[key]) {
      bt_errf(err, errlen, "CSV line %u column %u: %.*s appears twice", c->line, c->col, c->textlen, c->text);
      rc = BT_EFORMAT;
      goto done;
    }
    seen[key] = 1;
  }
  for (int w = 0; w < s->p; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      bt_comm_t cm;
      bt_comm_of(s, w, j, 0, &cm);
      for (int d = 0; d < 2; d++)
        for (int q = 0; q < (d ? cm.nsend : cm.nrecv); q++) {
          const bt_msg_t *m = d ? &cm.send[q] : &cm.recv[q];
          int kind = cell_kind_of(m, !d), stage = cell_stage_of(m, !d);
          if (!seen[seen_key(s, kind, stage, m->tag.mb)]) {
            bt_errf(err, errlen, "CSV line %d: %s %s the %s of micro-batch %d, but no %d%s%d cell says so", w + 1,
                    bt_action_format(bt_sched_at(s, w, j), a1, sizeof a1), d ? "sends" : "receives",
                    bt_msg_kind_name(m->tag.kind), m->tag.mb, stage, cell_word(kind), m->tag.mb);
            rc = BT_EFORMAT;
            goto done;
          }
        }
    }
done:
  free(seen);
  free(idx);
  return rc;
}

/* Pass 1 of the reader: every cell of the `rows` rows into records (a cell
 * gives one or two), each with its row in row_of. *ncells and *nw (the W
 * records) are set. Returns 0 or BT_EFORMAT with the line and column. */
static int read_cells(const char *text, size_t len, size_t rows, cell_t *cells, size_t *row_of, size_t *ncells_out,
                      size_t *nw_out, char *err, size_t errlen) {
  size_t i = 0, ncells = 0, nw = 0;
  for (size_t row = 0; row < rows; row++) {
    size_t col = 0;
    for (;;) {
      size_t a = i;
      while (i < len && text[i] != ',' && text[i] != '\n') i++;
      size_t b = i;
      while (a < b && is_space(text[a])) a++;
      while (b > a && is_space(text[b - 1])) b--;
      col++;
      if (b > a) {
        int n = 0;
        if (b - a > 64 || parse_cell(text + a, text + b, &cells[ncells], &n)) {
          bt_errf(err, errlen,
                  "CSV line %zu column %zu: '%.*s' is not an action like 2F0, 5I3, 5W3, 1B0, 1BW0, "
                  "(0F7;7B3)OVERLAP_F_B or 1RECV_F0",
                  row + 1, col, (int)(b - a > 40 ? 40 : b - a), text + a);
          return BT_EFORMAT;
        }
        for (int k = 0; k < n; k++) {
          cell_t *c = &cells[ncells + (size_t)k];
          c->line = (uint32_t)(row + 1);
          c->col = (uint32_t)col;
          c->text = text + a;
          c->textlen = (int)(b - a);
          row_of[ncells + (size_t)k] = row;
          if (c->stage >= BT_SCHED_MAX_STAGES * BT_SCHED_MAX_CHUNKS || c->mb >= BT_SCHED_MAX_MICROBATCHES) {
            bt_errf(err, errlen,
                    "CSV line %zu column %zu: %.*s is beyond the limits (%d virtual stages, %d micro-batches)",
                    row + 1, col, c->textlen, c->text, BT_SCHED_MAX_STAGES * BT_SCHED_MAX_CHUNKS,
                    BT_SCHED_MAX_MICROBATCHES);
            return BT_EFORMAT;
          }
          if (c->kind == R_W) nw++;
        }
        ncells += (size_t)n;
      }
      if (i >= len || text[i] == '\n') break;
      i++; /* the comma */
    }
    i++; /* the newline */
  }
  *ncells_out = ncells;
  *nw_out = nw;
  return 0;
}

/* Pass 2: the notation, from the cells that tell (PyTorch's earlier one
 * writes B for a backward whose W is separate). A file that mixes the two
 * is BT_EFORMAT naming both cells. */
static int decide_notation(const cell_t *cells, size_t ncells, const pairset_t *wset, bt_csv_opts_t *opts, char *err,
                           size_t errlen) {
  const cell_t *decided = NULL;
  for (size_t q = 0; q < ncells; q++) {
    int nt = notation_of(&cells[q], wset);
    if (nt < 0) continue;
    if (!decided) {
      decided = &cells[q];
      opts->notation = nt;
    } else if (nt != opts->notation) {
      bt_errf(err, errlen,
              "CSV line %u column %u: %.*s mixes PyTorch's two notations (%s; line %u column %u, %.*s, says "
              "otherwise): a file uses one",
              cells[q].line, cells[q].col, cells[q].textlen, cells[q].text, notation_says(&cells[q]), decided->line,
              decided->col, decided->textlen, decided->text);
      return BT_EFORMAT;
    }
  }
  return 0;
}

int bt_sched_csv_parse_opts(const char *text, size_t len, bt_csv_opts_t *opts, bt_schedule_t *out, char *err,
                            size_t errlen) {
  memset(out, 0, sizeof *out);
  bt_csv_opts_t local = {0};
  if (!opts) opts = &local;
  opts->notation = BT_CSV_CURRENT;
  opts->comms = 0;
  opts->skipped = 0;
  opts->first_skipped[0] = 0;
  size_t rows = count_rows(text, len);
  cell_t *cells = NULL;
  size_t *row_of = NULL, ncells = 0;
  int32_t *place = NULL;
  uint32_t *first_at = NULL;
  pairset_t wset = {0};
  int rc = 0;
  if (rows == 0) {
    bt_errf(err, errlen, "CSV has no rows: expected one row of actions per worker");
    return BT_EFORMAT;
  }
  if (rows > BT_SCHED_MAX_STAGES) {
    bt_errf(err, errlen, "CSV has %zu rows: at most %d workers", rows, BT_SCHED_MAX_STAGES);
    return BT_EFORMAT;
  }
  /* Cells bound the records; each cell gives at most two. */
  size_t cap = rows;
  for (size_t i = 0; i < len; i++) cap += text[i] == ',';
  if (cap > BT_SCHED_MAX_ACTIONS / 2) {
    bt_errf(err, errlen, "CSV has more than %zu cells", BT_SCHED_MAX_ACTIONS / 2);
    return BT_EFORMAT;
  }
  cells = malloc(2 * cap * sizeof *cells);
  row_of = malloc(2 * cap * sizeof *row_of);
  if (!cells || !row_of) {
    rc = -ENOMEM;
    goto done;
  }
  size_t nw = 0;
  int max_stage = -1, max_mb = -1;
  if ((rc = read_cells(text, len, rows, cells, row_of, &ncells, &nw, err, errlen)) < 0) goto done;
  if ((rc = pairset_init(&wset, nw)) < 0) goto done;
  for (size_t q = 0; q < ncells; q++)
    if (cells[q].kind == R_W) pairset_add(&wset, cells[q].stage, cells[q].mb);
  if ((rc = decide_notation(cells, ncells, &wset, opts, err, errlen)) < 0) goto done;
  /* Pass 3: actions, placement. */
  rc = bt_sched_alloc(out, "csv", (int)rows, 1, 1, ncells);
  if (rc) goto done;
  size_t n = 0, nsize = (size_t)BT_SCHED_MAX_STAGES * BT_SCHED_MAX_CHUNKS;
  place = malloc(nsize * sizeof *place);
  first_at = malloc(nsize * sizeof *first_at);
  if (!place || !first_at) {
    rc = -ENOMEM;
    goto done;
  }
  memset(place, 0xff, nsize * sizeof *place);
  size_t row = 0;
  out->off[0] = 0;
  for (size_t q = 0; q < ncells; q++) {
    cell_t *c = &cells[q];
    while (row < row_of[q]) out->off[++row] = n;
    if (c->kind == R_UNSUP) {
      if (!opts->skip_unsupported) {
        bt_errf(err, errlen,
                "CSV line %u column %u: %.*s is an FSDP action baton does not run (UNSHARD, RESHARD, REDUCE_GRAD); "
                "`baton schedule --skip-unsupported` drops them",
                c->line, c->col, c->textlen, c->text);
        rc = BT_EFORMAT;
        goto done;
      }
      if (!opts->skipped++)
        snprintf(opts->first_skipped, sizeof opts->first_skipped, "line %u column %u: %.*s", c->line, c->col,
                 c->textlen > 30 ? 30 : c->textlen, c->text);
      continue;
    }
    if (c->stage > max_stage) max_stage = c->stage;
    if (c->mb > max_mb) max_mb = c->mb;
    if (place[c->stage] < 0) {
      place[c->stage] = (int32_t)row_of[q];
      first_at[c->stage] = (uint32_t)q;
    } else if (place[c->stage] != (int32_t)row_of[q]) {
      const cell_t *f = &cells[first_at[c->stage]];
      bt_errf(err, errlen,
              "CSV line %u column %u: %.*s puts virtual stage %d on worker %zu, but line %u column %u (%.*s) puts it "
              "on worker %d: a stage runs on one worker",
              c->line, c->col, c->textlen, c->text, c->stage, row_of[q], f->line, f->col, f->textlen, f->text,
              (int)place[c->stage]);
      rc = BT_EFORMAT;
      goto done;
    }
    if (c->kind >= R_SEND_F) {
      c->pos = n - out->off[row];
      opts->comms = 1;
      continue;
    }
    int type = BT_ACT_F;
    switch (c->kind) {
      case R_I: type = BT_ACT_I; break;
      case R_W: type = BT_ACT_W; break;
      case R_BW: type = BT_ACT_B; break;
      case R_B:
        type = opts->notation == BT_CSV_EARLIER && !c->overlap && pairset_has(&wset, c->stage, c->mb) ? BT_ACT_I
                                                                                                        : BT_ACT_B;
        break;
    }
    out->acts[n++] = (bt_action_t){.stage = c->stage, .mb = c->mb, .type = type, .overlap = c->overlap};
  }
  while (row < rows) out->off[++row] = n;
  if (n == 0) {
    bt_errf(err, errlen, "CSV holds no actions");
    rc = BT_EFORMAT;
    goto done;
  }
  if ((max_stage + 1) % (int)rows != 0) {
    bt_errf(err, errlen,
            "CSV names virtual stages 0..%d on %zu workers: the stage count must be a multiple of the worker count "
            "(each worker holds the same number of chunks)",
            max_stage, rows);
    rc = BT_EFORMAT;
    goto done;
  }
  out->v = (max_stage + 1) / (int)rows;
  out->m = max_mb + 1;
  /* Stages no cell names keep k % p: validation reports them missing. */
  for (int k = 0; k <= max_stage; k++)
    if (place[k] < 0) place[k] = k % (int)rows;
  char why[256] = "";
  if ((rc = bt_sched_set_placement(out, place, why, sizeof why)) < 0) {
    bt_errf(err, errlen, "CSV placement: %s", why[0] ? why : bt_strerror(rc));
    rc = BT_EFORMAT;
    goto done;
  }
  if (opts->comms && (rc = check_comms(out, cells, ncells, row_of, err, errlen)) < 0) {
    rc = BT_EFORMAT;
    goto done;
  }
done:
  if (rc == -ENOMEM) bt_errf(err, errlen, "out of memory reading CSV");
  free(wset.keys);
  free(first_at);
  free(place);
  free(row_of);
  free(cells);
  if (rc) bt_sched_free(out);
  return rc;
}

int bt_sched_csv_parse(const char *text, size_t len, bt_schedule_t *out, char *err, size_t errlen) {
  return bt_sched_csv_parse_opts(text, len, NULL, out, err, errlen);
}

int bt_sched_csv_read_opts(const char *path, bt_csv_opts_t *opts, bt_schedule_t *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  char *buf = NULL;
  size_t len = 0;
  int rc = bt_file_read(path, BT_FILE_SCHEDULE, &buf, &len);
  if (rc) {
    bt_errf(err, errlen, "cannot read %s: %s", path, bt_strerror(rc));
    return rc;
  }
  rc = bt_sched_csv_parse_opts(buf, len, opts, out, err, errlen);
  free(buf);
  return rc;
}

int bt_sched_csv_read(const char *path, bt_schedule_t *out, char *err, size_t errlen) {
  return bt_sched_csv_read_opts(path, NULL, out, err, errlen);
}

/* One action in the requested notation. */
static void put_action(FILE *f, const bt_action_t *a, int notation) {
  const char *t = "F";
  switch (a->type) {
    case BT_ACT_I: t = notation == BT_CSV_EARLIER ? "B" : "I"; break;
    case BT_ACT_W: t = "W"; break;
    case BT_ACT_B: t = notation == BT_CSV_EARLIER ? "BW" : "B"; break;
  }
  fprintf(f, "%d%s%d", (int)a->stage, t, (int)a->mb);
}

static void put_comms(FILE *f, const bt_schedule_t *s, const bt_action_t *a, int recv, int *first) {
  bt_comm_t cm;
  bt_comm_of_action(s, a, 0, &cm);
  int n = recv ? cm.nrecv : cm.nsend;
  for (int q = 0; q < n; q++) {
    const bt_msg_t *m = recv ? &cm.recv[q] : &cm.send[q];
    fprintf(f, "%s%d%s%d", *first ? "" : ",", cell_stage_of(m, recv), cell_word(cell_kind_of(m, recv)),
            (int)m->tag.mb);
    *first = 0;
  }
}

int bt_sched_csv_write_opts(const bt_schedule_t *s, const bt_csv_opts_t *opts, FILE *f) {
  int notation = opts ? opts->notation : BT_CSV_CURRENT, comms = opts && opts->comms;
  bt_sim_costs_t unit = {.cost = {1, 1, 1, 1}, .stage_cost = NULL, .transfer = 0};
  bt_sim_result_t r;
  int timed = !comms && bt_sim_run(s, &unit, &r, NULL, 0) == 0;
  for (int w = 0; w < s->p; w++) {
    /* The k-th cell of a row follows k commas. */
    long cell = 0, written = 0;
    int first = 1;
    size_t len = bt_sched_len(s, w);
    for (size_t j = 0; j < len; j++) {
      const bt_action_t *a = bt_sched_at(s, w, j);
      int pair = a->overlap && j + 1 < len;
      if (comms) {
        put_comms(f, s, a, 1, &first);
        if (pair) put_comms(f, s, a + 1, 1, &first);
        if (!first) fputc(',', f);
      } else {
        long at = timed ? (long)r.start[s->off[w] + j] : written;
        for (; cell < at; cell++) fputc(',', f);
      }
      if (pair) {
        fputc('(', f);
        put_action(f, a, notation);
        fputc(';', f);
        put_action(f, a + 1, notation);
        fputs(compound_tail, f);
      } else {
        put_action(f, a, notation);
      }
      first = 0;
      written++;
      if (comms) {
        put_comms(f, s, a, 0, &first);
        if (pair) put_comms(f, s, a + 1, 0, &first);
      }
      if (pair) j++;
    }
    fputc('\n', f);
  }
  if (timed) bt_sim_result_free(&r);
  return ferror(f) ? -EIO : 0;
}

int bt_sched_csv_write(const bt_schedule_t *s, FILE *f) { return bt_sched_csv_write_opts(s, NULL, f); }
