/* sim.c - the simulator of sim.h: a longest-path walk over the schedule's
 * dependency graph, worker orders plus data edges, in one linear pass. */
#include "schedules/sim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define NONE UINT32_MAX

void bt_sim_costs_default(bt_sim_costs_t *c) {
  memset(c, 0, sizeof *c);
  c->cost[BT_ACT_F] = 1;
  c->cost[BT_ACT_B] = 2;
  c->cost[BT_ACT_I] = 1;
  c->cost[BT_ACT_W] = 1;
}

void bt_sim_result_free(bt_sim_result_t *r) {
  free(r->busy);
  free(r->idle);
  free(r->peak);
  free(r->start);
  free(r->end);
  memset(r, 0, sizeof *r);
}

static int result_alloc(bt_sim_result_t *r, int p, size_t n, int timed) {
  memset(r, 0, sizeof *r);
  r->p = p;
  r->n = n;
  r->busy = calloc((size_t)p, sizeof *r->busy);
  r->idle = calloc((size_t)p, sizeof *r->idle);
  r->peak = calloc((size_t)p, sizeof *r->peak);
  if (timed) {
    r->start = malloc((n ? n : 1) * sizeof *r->start);
    r->end = malloc((n ? n : 1) * sizeof *r->end);
  }
  if (!r->busy || !r->idle || !r->peak || (timed && (!r->start || !r->end))) {
    bt_sim_result_free(r);
    return -ENOMEM;
  }
  return 0;
}

/* One input of an action: the producing action, or a named absence. */
typedef struct {
  uint32_t at;    /* index into acts, NONE when missing */
  bt_action_t of; /* what is needed, for messages */
} dep_t;

/* The inputs of a: at most two (see comm.h for the rule). The input
 * gradient of B/I(k,i) comes from whichever of I(k+1,i) or B(k+1,i) the
 * schedule has. */
static int deps_of(const bt_schedule_t *s, const uint32_t *idx, const bt_action_t *a, dep_t d[2]) {
  int n = 0, V = bt_sched_nstages(s), k = a->stage, i = a->mb;
  switch (a->type) {
    case BT_ACT_F:
      if (k > 0)
        d[n++] = (dep_t){idx[bt_sched_key(s, k - 1, BT_ACT_F, i)],
                         {.stage = k - 1, .mb = i, .type = BT_ACT_F}};
      break;
    case BT_ACT_B:
    case BT_ACT_I:
      d[n++] =
          (dep_t){idx[bt_sched_key(s, k, BT_ACT_F, i)], {.stage = k, .mb = i, .type = BT_ACT_F}};
      if (k < V - 1) {
        uint32_t g = idx[bt_sched_key(s, k + 1, BT_ACT_I, i)];
        int t = BT_ACT_I;
        if (g == NONE) {
          g = idx[bt_sched_key(s, k + 1, BT_ACT_B, i)];
          t = BT_ACT_B;
        }
        d[n++] = (dep_t){g, {.stage = k + 1, .mb = i, .type = t}};
      }
      break;
    case BT_ACT_W:
      d[n++] =
          (dep_t){idx[bt_sched_key(s, k, BT_ACT_I, i)], {.stage = k, .mb = i, .type = BT_ACT_I}};
      break;
  }
  return n;
}

static double cost_of(const bt_schedule_t *s, const bt_sim_costs_t *c, const bt_action_t *a) {
  if (c->stage_cost) return c->stage_cost[(size_t)a->stage * BT_ACT_NTYPES + (size_t)a->type];
  return c->cost[a->type];
}

/* "worker 0 at position 4 (0B2) waits for the gradient of 1I2 from worker
 * 1 (position 3)" for each stuck worker, as one line. */
static void describe_deadlock(const bt_schedule_t *s, const uint32_t *idx, const size_t *pos,
                              const unsigned char *done, char *err, size_t errlen) {
  if (!err || !errlen) return;
  size_t used = 0;
  int shown = 0, stuck = 0;
  char a1[32], a2[32];
  used += (size_t)snprintf(err, errlen, "schedule deadlocks:");
  for (int w = 0; w < s->p; w++) {
    if (pos[w] >= bt_sched_len(s, w)) continue;
    stuck++;
    if (shown >= 4 || used >= errlen) continue;
    const bt_action_t *a = bt_sched_at(s, w, pos[w]);
    dep_t d[2];
    int n = deps_of(s, idx, a, d);
    for (int q = 0; q < n; q++) {
      if (d[q].at != NONE && done[d[q].at]) continue;
      int from = bt_sched_worker_of(s, d[q].of.stage);
      const char *what = d[q].of.type == BT_ACT_F ? "the activation of" : "the gradient of";
      if (d[q].at == NONE)
        used += (size_t)snprintf(err + used, errlen - used,
                                 "%s worker %d at position %zu (%s) "
                                 "needs %s, which is missing",
                                 shown ? ";" : "", w, pos[w], bt_action_format(a, a1, sizeof a1),
                                 bt_action_format(&d[q].of, a2, sizeof a2));
      else if (from == w)
        used += (size_t)snprintf(err + used, errlen - used,
                                 "%s worker %d at position %zu (%s) "
                                 "waits for %s, which comes later in its own order (position "
                                 "%zu)",
                                 shown ? ";" : "", w, pos[w], bt_action_format(a, a1, sizeof a1),
                                 bt_action_format(&d[q].of, a2, sizeof a2),
                                 (size_t)d[q].at - s->off[w]);
      else
        used += (size_t)snprintf(err + used, errlen - used,
                                 "%s worker %d at position %zu (%s) "
                                 "waits for %s %s from worker %d (its position %zu)",
                                 shown ? ";" : "", w, pos[w], bt_action_format(a, a1, sizeof a1),
                                 what, bt_action_format(&d[q].of, a2, sizeof a2), from,
                                 (size_t)d[q].at - s->off[from]);
      if (used >= errlen) used = errlen;
      break;
    }
    shown++;
  }
  if (stuck > shown && used < errlen)
    snprintf(err + used, errlen - used, "; and %d more workers", stuck - shown);
}

int bt_sim_walk(const bt_schedule_t *s, const uint32_t *idx, const bt_sim_costs_t *c,
                bt_sim_result_t *r, char *err, size_t errlen) {
  int p = s->p, rc = 0;
  size_t n = s->off[p];
  size_t *pos = calloc((size_t)p, sizeof *pos);
  double *free_at = calloc((size_t)p, sizeof *free_at);
  double *end = malloc((n ? n : 1) * sizeof *end);
  unsigned char *done = calloc(n ? n : 1, 1);
  int *stack = malloc((size_t)p * sizeof *stack);
  unsigned char *queued = calloc((size_t)p, 1);
  if (!pos || !free_at || !end || !done || !stack || !queued) {
    rc = -ENOMEM;
    goto done;
  }
  /* Workers that may be able to move: all at first, then those woken by
   * the completion of an action they may be waiting for. */
  int top = 0;
  for (int w = p - 1; w >= 0; w--) {
    stack[top++] = w;
    queued[w] = 1;
  }
  size_t finished = 0;
  while (top > 0) {
    int w = stack[--top];
    queued[w] = 0;
    size_t len = bt_sched_len(s, w);
    while (pos[w] < len) {
      size_t at = s->off[w] + pos[w];
      const bt_action_t *a = &s->acts[at];
      dep_t d[2];
      int nd = deps_of(s, idx, a, d), ready = 1;
      double t = free_at[w];
      for (int q = 0; q < nd; q++) {
        if (d[q].at == NONE) {
          char a1[32], a2[32];
          bt_errf(err, errlen, "worker %d position %zu: %s needs %s, which is not in the schedule", w,
               pos[w], bt_action_format(a, a1, sizeof a1),
               bt_action_format(&d[q].of, a2, sizeof a2));
          rc = BT_ESCHEDULE;
          goto done;
        }
        if (!done[d[q].at]) {
          ready = 0;
          break;
        }
        double arrive = end[d[q].at];
        if (bt_sched_worker_of(s, d[q].of.stage) != w) arrive += c->transfer;
        if (arrive > t) t = arrive;
      }
      if (!ready) break;
      double cost = cost_of(s, c, a);
      if (r) {
        r->start[at] = t;
        r->end[at] = t + cost;
        r->busy[w] += cost;
      }
      end[at] = t + cost;
      free_at[w] = t + cost;
      done[at] = 1;
      pos[w]++;
      finished++;
      /* The neighbour that consumes this action's output may be waiting. */
      int wake = -1;
      if (a->type == BT_ACT_F && a->stage + 1 < bt_sched_nstages(s))
        wake = bt_sched_worker_of(s, a->stage + 1);
      else if ((a->type == BT_ACT_B || a->type == BT_ACT_I) && a->stage > 0)
        wake = bt_sched_worker_of(s, a->stage - 1);
      if (wake >= 0 && wake != w && !queued[wake]) {
        stack[top++] = wake;
        queued[wake] = 1;
      }
    }
  }
  if (finished < n) {
    describe_deadlock(s, idx, pos, done, err, errlen);
    rc = BT_EDEADLOCK;
    goto done;
  }
  if (r) {
    double makespan = 0, idle = 0;
    for (int w = 0; w < p; w++)
      if (free_at[w] > makespan) makespan = free_at[w];
    for (int w = 0; w < p; w++) {
      r->idle[w] = makespan - r->busy[w];
      idle += r->idle[w];
    }
    r->makespan = makespan;
    r->bubble_fraction = makespan > 0 ? idle / ((double)p * makespan) : 0;
  }
done:
  free(queued);
  free(stack);
  free(done);
  free(end);
  free(free_at);
  free(pos);
  return rc;
}

/* Peak live activations of one worker walking its actions in order: a
 * (stage, micro-batch) is live from its F until its B, or until its W when
 * the backward is split (a W exists only after its I in a valid schedule). */
static int peak_of(const bt_action_t *const *acts, size_t n) {
  int live = 0, peak = 0;
  for (size_t j = 0; j < n; j++) {
    int t = acts[j]->type;
    if (t == BT_ACT_F) {
      if (++live > peak) peak = live;
    } else if (t == BT_ACT_B || t == BT_ACT_W) {
      live--;
    }
  }
  return peak;
}

int bt_sim_run(const bt_schedule_t *s, const bt_sim_costs_t *c, bt_sim_result_t *r, char *err,
               size_t errlen) {
  uint32_t *idx = NULL;
  const bt_action_t **order = NULL;
  size_t n = s->off[s->p];
  int rc = result_alloc(r, s->p, n, 1);
  if (rc) goto done;
  rc = bt_sched_index(s, &idx, err, errlen);
  if (rc) goto done;
  rc = bt_sim_walk(s, idx, c, r, err, errlen);
  if (rc) goto done;
  order = malloc((n ? n : 1) * sizeof *order);
  if (!order) {
    rc = -ENOMEM;
    goto done;
  }
  for (size_t j = 0; j < n; j++) order[j] = &s->acts[j];
  for (int w = 0; w < s->p; w++) r->peak[w] = peak_of(order + s->off[w], bt_sched_len(s, w));
done:
  free(order);
  free(idx);
  if (rc) bt_sim_result_free(r);
  return rc;
}

int bt_sim_boxes(const bt_schedule_t *s, const bt_sim_result_t *r, bt_box_t **out, size_t *n) {
  *out = NULL;
  *n = 0;
  size_t total = s->off[s->p];
  bt_box_t *b = malloc((total ? total : 1) * sizeof *b);
  if (!b) return -ENOMEM;
  for (int w = 0; w < s->p; w++)
    for (size_t j = s->off[w]; j < s->off[w + 1]; j++)
      b[j] = (bt_box_t){.worker = w, .act = s->acts[j], .start = r->start[j], .end = r->end[j]};
  *out = b;
  *n = total;
  return 0;
}

static int by_worker_start(const void *x, const void *y) {
  const bt_box_t *a = *(const bt_box_t *const *)x, *b = *(const bt_box_t *const *)y;
  if (a->worker != b->worker) return a->worker < b->worker ? -1 : 1;
  if (a->start != b->start) return a->start < b->start ? -1 : 1;
  return 0;
}

int bt_sim_measure(const bt_box_t *boxes, size_t n, int p, bt_sim_result_t *r) {
  const bt_box_t **sorted = NULL;
  const bt_action_t **order = NULL;
  int rc = result_alloc(r, p, n, 0);
  if (rc) return rc;
  if (n == 0) return 0;
  sorted = malloc(n * sizeof *sorted);
  order = malloc(n * sizeof *order);
  if (!sorted || !order) {
    rc = -ENOMEM;
    goto done;
  }
  double t0 = boxes[0].start, t1 = boxes[0].end;
  for (size_t j = 0; j < n; j++) {
    if (boxes[j].worker < 0 || boxes[j].worker >= p) {
      rc = BT_EARG;
      goto done;
    }
    sorted[j] = &boxes[j];
    if (boxes[j].start < t0) t0 = boxes[j].start;
    if (boxes[j].end > t1) t1 = boxes[j].end;
  }
  qsort(sorted, n, sizeof *sorted, by_worker_start);
  for (size_t lo = 0, hi; lo < n; lo = hi) {
    int w = sorted[lo]->worker;
    for (hi = lo; hi < n && sorted[hi]->worker == w; hi++) {
      order[hi] = &sorted[hi]->act;
      r->busy[w] += sorted[hi]->end - sorted[hi]->start;
    }
    r->peak[w] = peak_of(order + lo, hi - lo);
  }
  double makespan = t1 - t0, idle = 0;
  for (int w = 0; w < p; w++) {
    r->idle[w] = makespan - r->busy[w];
    idle += r->idle[w];
  }
  r->makespan = makespan;
  r->bubble_fraction = makespan > 0 ? idle / ((double)p * makespan) : 0;
done:
  free(order);
  free(sorted);
  if (rc) bt_sim_result_free(r);
  return rc;
}
