/* schedule.c - actions, the four builders, and the structural checks.
 *
 * Builders write each worker's list directly, in the order the worker will
 * run it; nothing here knows about time (sim.c) or bytes (the worker).
 */
#include "schedules/schedule.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "schedules/comm.h"
#include "schedules/sim.h"

const char *const bt_sched_names[] = {"gpipe", "1f1b", "interleaved", "zb-h1", NULL};

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
  bt_action_t a;
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
  s->acts = malloc((total ? total : 1) * sizeof *s->acts);
  if (!s->off || !s->acts) {
    bt_sched_free(s);
    return -ENOMEM;
  }
  return 0;
}

void bt_sched_free(bt_schedule_t *s) {
  free(s->acts);
  free(s->off);
  memset(s, 0, sizeof *s);
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

static int check_params(const char *name, int p, int v, int m, char *err, size_t errlen) {
  int known = 0;
  for (int i = 0; bt_sched_names[i]; i++) known |= !strcmp(name, bt_sched_names[i]);
  if (!known) {
    bt_errf(err, errlen, "unknown schedule '%s': use gpipe, 1f1b, interleaved or zb-h1", name);
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
  int interleaved = !strcmp(name, "interleaved");
  if (!interleaved && v != 1) {
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
  if (m < p) {
    bt_errf(err, errlen,
         "%s needs at least as many micro-batches as stages, m >= p "
         "(got m=%d, p=%d); try --microbatches %d",
         name, m, p, p);
    return BT_EARG;
  }
  size_t per = (size_t)v * (size_t)m * (strcmp(name, "zb-h1") ? 2 : 3);
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
  int rc = check_params(name, p, v, m, err, errlen);
  if (rc) goto done;
  int split = !strcmp(name, "zb-h1");
  size_t per = (size_t)v * (size_t)m * (split ? 3 : 2);
  rc = bt_sched_alloc(out, name, p, v, m, per * (size_t)p);
  if (rc) goto done;
  int interleaved = !strcmp(name, "interleaved");
  if (interleaved) {
    tab = malloc(2 * (size_t)m * (size_t)v * sizeof *tab);
    if (!tab) {
      rc = -ENOMEM;
      goto done;
    }
  }
  builder_t b = {.s = out, .n = 0};
  for (int w = 0; w < p; w++) {
    out->off[w] = b.n;
    if (!strcmp(name, "gpipe"))
      build_gpipe(&b, w);
    else if (interleaved)
      build_interleaved(&b, w, tab, tab + (size_t)m * v);
    else
      build_1f1b(&b, w, split);
  }
  out->off[p] = b.n;
done:
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
      idx[key] = (uint32_t)(s->off[w] + j);
    }
  if (rc)
    free(idx);
  else
    *out = idx;
  return rc;
}

/* Every (virtual stage, micro-batch) has one F and one backward. */
static int check_complete(const bt_schedule_t *s, const uint32_t *idx, char *err, size_t errlen) {
  int V = bt_sched_nstages(s);
  char a1[32], a2[32];
  for (int k = 0; k < V; k++) {
    int w = bt_sched_worker_of(s, k);
    for (int i = 0; i < s->m; i++) {
      uint32_t f = idx[bt_sched_key(s, k, BT_ACT_F, i)];
      uint32_t b = idx[bt_sched_key(s, k, BT_ACT_B, i)];
      uint32_t in = idx[bt_sched_key(s, k, BT_ACT_I, i)];
      uint32_t wg = idx[bt_sched_key(s, k, BT_ACT_W, i)];
      bt_action_t fa = {.stage = k, .mb = i, .type = BT_ACT_F};
      if (f == UINT32_MAX) {
        bt_errf(err, errlen, "worker %d: virtual stage %d micro-batch %d has no forward (%s)", w, k, i,
             bt_action_format(&fa, a1, sizeof a1));
        return BT_ESCHEDULE;
      }
      if (b != UINT32_MAX && (in != UINT32_MAX || wg != UINT32_MAX)) {
        uint32_t other = in != UINT32_MAX ? in : wg;
        bt_errf(err, errlen, "worker %d position %zu: %s duplicates the backward %s at position %zu",
             w, (size_t)other - s->off[w], bt_action_format(&s->acts[other], a1, sizeof a1),
             bt_action_format(&s->acts[b], a2, sizeof a2), (size_t)b - s->off[w]);
        return BT_ESCHEDULE;
      }
      if (b == UINT32_MAX && in == UINT32_MAX && wg == UINT32_MAX) {
        bt_errf(err, errlen,
             "worker %d position %zu: %s has no backward (%dB%d, or %dI%d then "
             "%dW%d)",
             w, (size_t)f - s->off[w], bt_action_format(&fa, a1, sizeof a1), k, i, k, i, k, i);
        return BT_ESCHEDULE;
      }
      if (b == UINT32_MAX && (in == UINT32_MAX) != (wg == UINT32_MAX)) {
        uint32_t have = in != UINT32_MAX ? in : wg;
        bt_errf(err, errlen, "worker %d position %zu: %s has no matching %d%c%d", w,
             (size_t)have - s->off[w], bt_action_format(&s->acts[have], a1, sizeof a1), k,
             in != UINT32_MAX ? 'W' : 'I', i);
        return BT_ESCHEDULE;
      }
      if (b == UINT32_MAX && wg < in) {
        bt_errf(err, errlen, "worker %d position %zu: %s comes before its %s (position %zu)", w,
             (size_t)wg - s->off[w], bt_action_format(&s->acts[wg], a1, sizeof a1),
             bt_action_format(&s->acts[in], a2, sizeof a2), (size_t)in - s->off[w]);
        return BT_ESCHEDULE;
      }
    }
  }
  return 0;
}

int bt_sched_validate(const bt_schedule_t *s, char *err, size_t errlen) {
  uint32_t *idx = NULL;
  int rc = bt_sched_index(s, &idx, err, errlen);
  if (rc) goto done;
  rc = check_complete(s, idx, err, errlen);
  if (rc) goto done;
  /* The dependency order is checked by running the schedule under the
   * communication rule: it completes exactly when the per-worker orders and
   * the data dependencies admit one global order. */
  bt_sim_costs_t c;
  bt_sim_costs_default(&c);
  rc = bt_sim_walk(s, idx, &c, NULL, err, errlen);
done:
  free(idx);
  return rc;
}

int bt_sched_check_microbatch_order(const bt_schedule_t *s, char *err, size_t errlen) {
  int V = bt_sched_nstages(s);
  int *next = calloc((size_t)V, sizeof *next);
  if (!next) {
    bt_errf(err, errlen, "out of memory");
    return 0;
  }
  int ok = 1;
  char a1[32];
  for (int w = 0; w < s->p && ok; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      const bt_action_t *a = bt_sched_at(s, w, j);
      if (a->type != BT_ACT_B && a->type != BT_ACT_W) continue;
      if (a->mb != next[a->stage]) {
        bt_errf(err, errlen,
             "worker %d position %zu: %s accumulates weight gradients of virtual "
             "stage %d before micro-batch %d",
             w, j, bt_action_format(a, a1, sizeof a1), a->stage, next[a->stage]);
        ok = 0;
        break;
      }
      next[a->stage]++;
    }
  free(next);
  return ok;
}

int bt_sched_check_channel_order(const bt_schedule_t *s, char *err, size_t errlen) {
  /* With placement k % p every channel has one receiver per (sender, kind):
   * activations go to the next worker, gradients to the previous. So it is
   * enough to number the sends of each (sender, kind) and check that the
   * receiver consumes them in that numbering. */
  int V = bt_sched_nstages(s), p = s->p, ok = 1;
  size_t nkey = 2 * (size_t)V * (size_t)s->m;
  uint32_t *seq = malloc(nkey * sizeof *seq);
  uint32_t *count = calloc(4 * (size_t)p, sizeof *count); /* sent, received per kind */
  if (!seq || !count) {
    bt_errf(err, errlen, "out of memory");
    ok = 0;
    goto done;
  }
  bt_comm_t c;
  for (int w = 0; w < p; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      bt_comm_of(s, w, j, 0, &c);
      for (int q = 0; q < c.nsend; q++) {
        const bt_tag_t *t = &c.send[q].tag;
        seq[((size_t)t->mb * V + t->stage) * 2 + t->kind] = count[2 * w + t->kind]++;
      }
    }
  for (int w = 0; w < p && ok; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      bt_comm_of(s, w, j, 0, &c);
      for (int q = 0; q < c.nrecv && ok; q++) {
        const bt_msg_t *msg = &c.recv[q];
        const bt_tag_t *t = &msg->tag;
        uint32_t want = count[2 * (size_t)p + 2 * msg->peer + t->kind]++;
        uint32_t got = seq[((size_t)t->mb * V + t->stage) * 2 + t->kind];
        if (got != want) {
          char a1[32];
          bt_errf(err, errlen,
               "worker %d position %zu: %s receives the %s of virtual stage %d "
               "micro-batch %d from worker %d as message %u of that channel, but it was sent "
               "as message %u",
               w, j, bt_action_format(bt_sched_at(s, w, j), a1, sizeof a1),
               bt_msg_kind_name(t->kind), t->stage, t->mb, msg->peer, want, got);
          ok = 0;
        }
      }
      if (!ok) break;
    }
done:
  free(count);
  free(seq);
  return ok;
}
