/* schedule.c - actions, placement, the builders and the action index.
 *
 * Builders write each worker's list directly, in the order the worker will
 * run it; nothing here knows about time (sim.c), messages (comm.c) or
 * bytes (the worker). The checks that need time and messages are check.c,
 * above the simulator.
 */
#include "schedules/schedule.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

const char *const bt_sched_names[] = {"gpipe", "1f1b", "interleaved", "zb-h1", "zb-v", "dualpipev", NULL};

static int is_v_name(const char *name) { return !strcmp(name, "zb-v") || !strcmp(name, "dualpipev"); }

char bt_act_letter(int type) {
  static const char letters[BT_ACT_NTYPES] = {'F', 'B', 'I', 'W'};
  return type >= 0 && type < BT_ACT_NTYPES ? letters[type] : '?';
}

char *bt_action_format(const bt_action_t *a, char *buf, size_t len) {
  snprintf(buf, len, "%d%c%d", (int)a->stage, bt_act_letter(a->type), (int)a->mb);
  return buf;
}

/* Digits only, at most 9 of them, so the value fits an int32 unchecked. */
static int parse_index(const char **p, int32_t *out) {
  const char *s = *p;
  int32_t v = 0;
  int n = 0;
  while (*s >= '0' && *s <= '9') {
    if (++n > 9) return BT_EFORMAT;
    v = v * 10 + (*s - '0');
    s++;
  }
  if (n == 0) return BT_EFORMAT;
  *p = s;
  *out = v;
  return 0;
}

int bt_action_parse(const char *s, bt_action_t *out) {
  bt_action_t a = {0};
  if (!s || parse_index(&s, &a.stage)) return BT_EFORMAT;
  switch (*s) {
    case 'F': a.type = BT_ACT_F; break;
    case 'B': a.type = BT_ACT_B; break;
    case 'I': a.type = BT_ACT_I; break;
    case 'W': a.type = BT_ACT_W; break;
    default: return BT_EFORMAT;
  }
  s++;
  if (parse_index(&s, &a.mb) || *s) return BT_EFORMAT;
  *out = a;
  return 0;
}

int bt_sched_alloc(bt_schedule_t *s, const char *name, int p, int v, int m, size_t total) {
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  s->p = p;
  s->v = v;
  s->m = m;
  s->off = calloc((size_t)p + 1, sizeof *s->off);
  s->acts = calloc(total ? total : 1, sizeof *s->acts);
  if (!s->off || !s->acts) {
    bt_sched_free(s);
    return -ENOMEM;
  }
  return 0;
}

void bt_sched_free(bt_schedule_t *s) {
  free(s->acts);
  free(s->off);
  free(s->place);
  free(s->chunk);
  free(s->stage_at);
  memset(s, 0, sizeof *s);
}

void bt_sched_v_placement(int p, int32_t *place) {
  for (int k = 0; k < 2 * p; k++) place[k] = k < p ? k : 2 * p - 1 - k;
}

int bt_sched_is_v(const bt_schedule_t *s) {
  if (s->v != 2 || !s->place) return 0;
  for (int k = 0; k < 2 * s->p; k++)
    if (s->place[k] != (k < s->p ? k : 2 * s->p - 1 - k)) return 0;
  return 1;
}

int bt_sched_set_placement(bt_schedule_t *s, const int32_t *place, char *err, size_t errlen) {
  int V = bt_sched_nstages(s), plain = 1;
  int32_t *pl = NULL, *ch = NULL, *at = NULL;
  int *held = calloc((size_t)s->p, sizeof *held);
  int rc = 0;
  if (!held) return -ENOMEM;
  for (int k = 0; k < V; k++) {
    if (place[k] < 0 || place[k] >= s->p) {
      bt_errf(err, errlen, "virtual stage %d placed on worker %d, outside 0..%d", k, (int)place[k], s->p - 1);
      rc = BT_ESCHEDULE;
      goto done;
    }
    plain &= place[k] == k % s->p;
    held[place[k]]++;
  }
  for (int w = 0; w < s->p; w++)
    if (held[w] != s->v) {
      bt_errf(err, errlen, "worker %d holds %d virtual stages, but every worker must hold %d (%d stages on %d workers)",
              w, held[w], s->v, V, s->p);
      rc = BT_ESCHEDULE;
      goto done;
    }
  free(s->place);
  free(s->chunk);
  free(s->stage_at);
  s->place = s->chunk = s->stage_at = NULL;
  if (plain) goto done;
  pl = malloc((size_t)V * sizeof *pl);
  ch = malloc((size_t)V * sizeof *ch);
  at = malloc((size_t)V * sizeof *at);
  if (!pl || !ch || !at) {
    rc = -ENOMEM;
    goto done;
  }
  memset(held, 0, (size_t)s->p * sizeof *held);
  for (int k = 0; k < V; k++) {
    int w = place[k], c = held[w]++;
    pl[k] = w;
    ch[k] = c;
    at[w * s->v + c] = k;
  }
  s->place = pl;
  s->chunk = ch;
  s->stage_at = at;
  pl = ch = at = NULL;
done:
  free(pl);
  free(ch);
  free(at);
  free(held);
  return rc;
}

int bt_sched_group_size(int p, int m) {
  for (int n = p; n < m; n++)
    if (m % n == 0 || m % n >= p) return n;
  return m;
}

/* Appends to the worker being built: builders fill worker after worker. */
typedef struct {
  bt_schedule_t *s;
  size_t n;
} builder_t;

static void push(builder_t *b, int stage, int type, int mb) {
  b->s->acts[b->n++] = (bt_action_t){.stage = stage, .mb = mb, .type = type};
}

/* push() for the V builders, which construct with at least 2p - 1
 * micro-batches and drop those past m: every action of a dropped
 * micro-batch depends only on actions of that same micro-batch, so the
 * remaining order stays complete and deadlock-free. */
static void push_v(builder_t *b, int stage, int type, int mb, int overlap) {
  if (mb >= b->s->m) return;
  b->s->acts[b->n++] = (bt_action_t){.stage = stage, .mb = mb, .type = type, .overlap = overlap};
}

static void build_gpipe(builder_t *b, int s) {
  for (int i = 0; i < b->s->m; i++) push(b, s, BT_ACT_F, i);
  for (int i = 0; i < b->s->m; i++) push(b, s, BT_ACT_B, i);
}

/* PipeDream-flush 1F1B: p-s-1 warm-up forwards, then one forward and one
 * backward in turn, then the remaining backwards. With `split` the backward
 * is I, and W(j) follows I(j + s): stage s keeps s weight gradients pending
 * to fill the bubbles that 1F1B leaves at its end (ZB-H1), and holds at most
 * p forwards whose W has not run, the first worker's 1F1B peak. */
static void build_1f1b(builder_t *b, int s, int split) {
  int p = b->s->p, m = b->s->m;
  int warm = p - s - 1 < m ? p - s - 1 : m;
  int bw = split ? BT_ACT_I : BT_ACT_B;
  int nf = 0, nb = 0;
  for (; nf < warm; nf++) push(b, s, BT_ACT_F, nf);
  while (nb < m) {
    if (nf < m) push(b, s, BT_ACT_F, nf++);
    push(b, s, bw, nb);
    if (split && nb - s >= 0) push(b, s, BT_ACT_W, nb - s);
    nb++;
  }
  if (split)
    for (int j = m - s > 0 ? m - s : 0; j < m; j++) push(b, s, BT_ACT_W, j);
}

/* Megatron-LM's interleaved 1F1B on rank r. Micro-batches go through the
 * chunks in groups of N (the last group takes what is left, at least p
 * since m mod N is 0 or >= p); backward walks the chunks in reverse. The
 * k-th forward and k-th backward of a rank come from the same table. */
static void build_interleaved(builder_t *b, int r, int *tab_mb, int *tab_chunk) {
  int p = b->s->p, v = b->s->v, m = b->s->m;
  int N = bt_sched_group_size(p, m);
  int total = m * v, t = 0;
  for (int lo = 0; lo < m; lo += N) {
    int hi = lo + N >= m ? m : lo + N;
    for (int c = 0; c < v; c++)
      for (int i = lo; i < hi; i++) {
        tab_mb[t] = i;
        tab_chunk[t] = c;
        t++;
      }
    if (hi == m) break;
  }
  long warm = (long)(p - r - 1) * 2 + (long)(v - 1) * N;
  if (warm > total) warm = total;
  int nf = 0, nb = 0;
  for (; nf < warm; nf++) push(b, tab_chunk[nf] * p + r, BT_ACT_F, tab_mb[nf]);
  while (nb < total) {
    if (nf < total) {
      push(b, tab_chunk[nf] * p + r, BT_ACT_F, tab_mb[nf]);
      nf++;
    }
    push(b, (v - 1 - tab_chunk[nb]) * p + r, BT_ACT_B, tab_mb[nb]);
    nb++;
  }
}

/* ZB-V (Qi et al., the zero-bubble repository; PyTorch's
 * ScheduleZBVZeroBubble) on worker r, chunk 0 = virtual stage r and chunk 1
 * = 2p - 1 - r. Warm-up: 2(p - r) - 1 forwards of chunk 0, then r pairs
 * F1 F0, then p - r rounds F1 I1 W1; steady state: F0 I0 W0 F1 I1 W1 per
 * micro-batch; cool-down: r pairs I0 I1, p - r pairs I0 W0, then the
 * pending W of chunk 1 and chunk 0. Built for n = max(m, 2p - 1)
 * micro-batches and filtered to m, as PyTorch does. */
static void build_zbv(builder_t *b, int r) {
  int p = b->s->p, m = b->s->m, n = m > 2 * p - 1 ? m : 2 * p - 1;
  int s0 = r, s1 = 2 * p - 1 - r;
  int f0 = 0, f1 = 0, b0 = 0, b1 = 0;
  for (int i = 0; i < 2 * (p - r) - 1; i++) push_v(b, s0, BT_ACT_F, f0++, 0);
  for (int i = 0; i < r; i++) {
    push_v(b, s1, BT_ACT_F, f1++, 0);
    push_v(b, s0, BT_ACT_F, f0++, 0);
  }
  for (int i = 0; i < p - r; i++) {
    push_v(b, s1, BT_ACT_F, f1++, 0);
    push_v(b, s1, BT_ACT_I, b1, 0);
    push_v(b, s1, BT_ACT_W, b1++, 0);
  }
  while (f1 < f0 || f0 < n) {
    if (f0 < n) push_v(b, s0, BT_ACT_F, f0++, 0);
    push_v(b, s0, BT_ACT_I, b0, 0);
    push_v(b, s0, BT_ACT_W, b0++, 0);
    push_v(b, s1, BT_ACT_F, f1++, 0);
    push_v(b, s1, BT_ACT_I, b1, 0);
    push_v(b, s1, BT_ACT_W, b1++, 0);
  }
  int w0 = b0, w1 = b1;
  for (int i = 0; i < r; i++) {
    push_v(b, s0, BT_ACT_I, b0++, 0);
    push_v(b, s1, BT_ACT_I, b1++, 0);
  }
  for (int i = 0; i < p - r; i++) {
    push_v(b, s0, BT_ACT_I, b0++, 0);
    push_v(b, s0, BT_ACT_W, w0++, 0);
  }
  while (w1 < b1) push_v(b, s1, BT_ACT_W, w1++, 0);
  while (w0 < b0) push_v(b, s0, BT_ACT_W, w0++, 0);
}

/* DualPipeV (DeepSeek's DualPipe folded onto p ranks; PyTorch's
 * ScheduleDualPipeV) on worker r, needing m >= 2p. Eight phases: F0 alone,
 * F0 F1 pairs, I1 W F1 (zero bubble), the main phase of overlapped
 * F0&B1 / F1&B0 pairs, B1 then F1&B0, B1 B0 (switching to I halves at the
 * middle so their W fill the tail), W B0, and the remaining W. A W queue
 * keeps each stage's weight gradients in micro-batch order. */
typedef struct {
  builder_t *b;
  int st[2];          /* virtual stages of chunk 0 and 1 */
  int f[2], bw[2];    /* next forward, next backward (B or I) micro-batch */
  int *qs, *qm;       /* pending W: stage, micro-batch */
  int qhead, qtail;
} dpv_t;

static void dpv_f(dpv_t *d, int c, int overlap) { push_v(d->b, d->st[c], BT_ACT_F, d->f[c]++, overlap); }

static void dpv_b(dpv_t *d, int c, int split) {
  int mb = d->bw[c]++;
  push_v(d->b, d->st[c], split ? BT_ACT_I : BT_ACT_B, mb, 0);
  if (split) {
    d->qs[d->qtail] = d->st[c];
    d->qm[d->qtail++] = mb;
  }
}

static void dpv_w(dpv_t *d) {
  if (d->qhead == d->qtail) return;
  push_v(d->b, d->qs[d->qhead], BT_ACT_W, d->qm[d->qhead], 0);
  d->qhead++;
}

static void build_dualpipev(builder_t *b, int r, int *qs, int *qm) {
  int p = b->s->p, m = b->s->m;
  dpv_t d = {.b = b, .st = {r, 2 * p - 1 - r}, .qs = qs, .qm = qm};
  for (int i = 0; i < (p - r - 1) * 2; i++) dpv_f(&d, 0, 0);
  for (int i = 0; i < r + 1; i++) {
    dpv_f(&d, 0, 0);
    dpv_f(&d, 1, 0);
  }
  for (int i = 0; i < p - r - 1; i++) {
    dpv_b(&d, 1, 1);
    dpv_w(&d);
    dpv_f(&d, 1, 0);
  }
  for (int i = 0; i < m - 2 * p + r + 1; i++) {
    /* The last rank does not overlap its first pair: a smaller bubble. */
    dpv_f(&d, 0, !(i == 0 && r == p - 1));
    dpv_b(&d, 1, 0);
    dpv_f(&d, 1, 1);
    dpv_b(&d, 0, 0);
  }
  for (int i = 0; i < p - r - 1; i++) {
    dpv_b(&d, 1, 0);
    dpv_f(&d, 1, 1);
    dpv_b(&d, 0, 0);
  }
  int zb = 0, n6 = r + 1;
  for (int i = 0; i < n6; i++) {
    if (i == n6 / 2 && r % 2 == 1) zb = 1;
    dpv_b(&d, 1, zb);
    if (i == n6 / 2 && r % 2 == 0) zb = 1;
    dpv_b(&d, 0, zb);
  }
  for (int i = 0; i < p - r - 1; i++) {
    dpv_w(&d);
    dpv_b(&d, 0, zb);
  }
  while (d.qhead < d.qtail) dpv_w(&d);
}

static int check_params(const char *name, int p, int v, int m, char *err, size_t errlen) {
  int known = 0;
  for (int i = 0; bt_sched_names[i]; i++) known |= !strcmp(name, bt_sched_names[i]);
  if (!known) {
    bt_errf(err, errlen, "unknown schedule '%s': use gpipe, 1f1b, interleaved, zb-h1, zb-v or dualpipev", name);
    return BT_EARG;
  }
  if (p < 1 || p > BT_SCHED_MAX_STAGES) {
    bt_errf(err, errlen, "stages must be between 1 and %d (got %d); try --stages 4",
         BT_SCHED_MAX_STAGES, p);
    return BT_EARG;
  }
  if (m < 1 || m > BT_SCHED_MAX_MICROBATCHES) {
    bt_errf(err, errlen, "micro-batches must be between 1 and %d (got %d); try --microbatches %d",
         BT_SCHED_MAX_MICROBATCHES, m, 4 * p);
    return BT_EARG;
  }
  int interleaved = !strcmp(name, "interleaved"), vshape = is_v_name(name);
  if (vshape && v != 2) {
    bt_errf(err, errlen,
            "%s places two chunks on each stage in a V (stage s holds virtual stages s and 2p-1-s): "
            "chunks must be 2 (got %d); use --chunks 2",
            name, v);
    return BT_EARG;
  }
  if (!strcmp(name, "dualpipev") && m < 2 * p) {
    bt_errf(err, errlen,
            "dualpipev needs at least as many micro-batches as virtual stages, m >= 2p "
            "(got m=%d, p=%d); try --microbatches %d, or --schedule zb-v, which takes any m",
            m, p, 2 * p);
    return BT_EARG;
  }
  if (!interleaved && !vshape && v != 1) {
    bt_errf(err, errlen,
         "%s places one chunk on each stage: chunks must be 1 (got %d); "
         "use --schedule interleaved for more",
         name, v);
    return BT_EARG;
  }
  if (interleaved && (v < 2 || v > BT_SCHED_MAX_CHUNKS)) {
    bt_errf(err, errlen,
         "interleaved needs between 2 and %d chunks per stage (got %d); "
         "try --chunks 2, or --schedule 1f1b for one chunk",
         BT_SCHED_MAX_CHUNKS, v);
    return BT_EARG;
  }
  if (m < p && !vshape) {
    bt_errf(err, errlen,
         "%s needs at least as many micro-batches as stages, m >= p "
         "(got m=%d, p=%d); try --microbatches %d",
         name, m, p, p);
    return BT_EARG;
  }
  size_t per = (size_t)v * (size_t)m * (strcmp(name, "zb-h1") && !vshape ? 2 : 3);
  if (per * (size_t)p > BT_SCHED_MAX_ACTIONS) {
    bt_errf(err, errlen,
         "%s with p=%d, v=%d, m=%d has more than %zu actions; try fewer "
         "micro-batches",
         name, p, v, m, BT_SCHED_MAX_ACTIONS);
    return BT_EARG;
  }
  return 0;
}

int bt_sched_build(const char *name, int p, int v, int m, bt_schedule_t *out, char *err,
                   size_t errlen) {
  memset(out, 0, sizeof *out);
  int *tab = NULL;
  int32_t *place = NULL;
  int rc = check_params(name, p, v, m, err, errlen);
  if (rc) goto done;
  int split = !strcmp(name, "zb-h1"), zbv = !strcmp(name, "zb-v"), dpv = !strcmp(name, "dualpipev");
  /* Split backwards need I and W; dualpipev mixes B and I/W. */
  size_t per = (size_t)v * (size_t)m * (split || zbv || dpv ? 3 : 2);
  rc = bt_sched_alloc(out, name, p, v, m, per * (size_t)p);
  if (rc) goto done;
  int interleaved = !strcmp(name, "interleaved");
  if (interleaved || dpv) {
    tab = malloc(2 * (size_t)m * (size_t)v * sizeof *tab);
    if (!tab) {
      rc = -ENOMEM;
      goto done;
    }
  }
  if (zbv || dpv) {
    if (!(place = malloc(2 * (size_t)p * sizeof *place))) {
      rc = -ENOMEM;
      goto done;
    }
    bt_sched_v_placement(p, place);
    if ((rc = bt_sched_set_placement(out, place, err, errlen)) < 0) goto done;
  }
  builder_t b = {.s = out, .n = 0};
  for (int w = 0; w < p; w++) {
    out->off[w] = b.n;
    if (!strcmp(name, "gpipe"))
      build_gpipe(&b, w);
    else if (interleaved)
      build_interleaved(&b, w, tab, tab + (size_t)m * v);
    else if (zbv)
      build_zbv(&b, w);
    else if (dpv)
      build_dualpipev(&b, w, tab, tab + (size_t)m * v);
    else
      build_1f1b(&b, w, split);
  }
  out->off[p] = b.n;
done:
  free(place);
  free(tab);
  if (rc) {
    if (rc == -ENOMEM) bt_errf(err, errlen, "out of memory building %s", name);
    bt_sched_free(out);
  }
  return rc;
}

int bt_sched_index(const bt_schedule_t *s, uint32_t **out, char *err, size_t errlen) {
  *out = NULL;
  if (s->p < 1 || s->v < 1 || s->m < 1) {
    bt_errf(err, errlen, "schedule has %d workers, %d chunks, %d micro-batches", s->p, s->v, s->m);
    return BT_ESCHEDULE;
  }
  int V = bt_sched_nstages(s), rc = 0;
  /* A complete schedule has 2·V·m actions or more; one naming far more
   * (stage, micro-batch) pairs than it has actions is incomplete anyway,
   * and its table could be huge (a two-cell CSV naming stage 60000 and
   * micro-batch 10^6), so it is refused before allocating. */
  size_t pairs = (size_t)V * (size_t)s->m, total = s->off[s->p];
  if (pairs > 2 * total + 4096) {
    bt_errf(err, errlen,
         "schedule names %d virtual stages and %d micro-batches but holds only %zu "
         "actions (a complete one has %zu)",
         V, s->m, total, 2 * pairs);
    return BT_ESCHEDULE;
  }
  size_t n = pairs * BT_ACT_NTYPES;
  uint32_t *idx = malloc(n * sizeof *idx);
  if (!idx) return -ENOMEM;
  memset(idx, 0xff, n * sizeof *idx);
  char a1[32];
  for (int w = 0; w < s->p && !rc; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      const bt_action_t *a = bt_sched_at(s, w, j);
      if (a->stage < 0 || a->stage >= V || a->mb < 0 || a->mb >= s->m || a->type < 0 ||
          a->type >= BT_ACT_NTYPES) {
        bt_errf(err, errlen,
             "worker %d position %zu: %s is outside %d virtual stages x %d "
             "micro-batches",
             w, j, bt_action_format(a, a1, sizeof a1), V, s->m);
        rc = BT_ESCHEDULE;
        break;
      }
      int owner = bt_sched_worker_of(s, a->stage);
      if (owner != w) {
        bt_errf(err, errlen,
             "worker %d position %zu: %s belongs on worker %d (virtual stage %d "
             "is chunk %d of worker %d)",
             w, j, bt_action_format(a, a1, sizeof a1), owner, a->stage,
             bt_sched_chunk_of(s, a->stage), owner);
        rc = BT_ESCHEDULE;
        break;
      }
      size_t key = bt_sched_key(s, a->stage, a->type, a->mb);
      if (idx[key] != UINT32_MAX) {
        bt_errf(err, errlen, "worker %d position %zu: %s appears twice (first at position %zu)", w, j,
             bt_action_format(a, a1, sizeof a1), (size_t)idx[key] - s->off[w]);
        rc = BT_ESCHEDULE;
        break;
      }
      if (a->overlap && (a->type != BT_ACT_F || j + 1 >= bt_sched_len(s, w) ||
                         (bt_sched_at(s, w, j + 1)->type != BT_ACT_B && bt_sched_at(s, w, j + 1)->type != BT_ACT_I))) {
        bt_errf(err, errlen, "worker %d position %zu: %s is marked as the forward of an overlapped pair, but no "
                "backward follows it", w, j, bt_action_format(a, a1, sizeof a1));
        rc = BT_ESCHEDULE;
        break;
      }
      idx[key] = (uint32_t)(s->off[w] + j);
    }
  if (rc)
    free(idx);
  else
    *out = idx;
  return rc;
}

