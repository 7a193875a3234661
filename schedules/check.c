/* check.c - the checks of a schedule that need its messages (comm.h) and
 * a walk under the communication rule (sim.h): completeness, deadlock,
 * micro-batch order, channel order. It sits above the simulator, so the
 * modules form a line (schedule <- comm, sim <- check) rather than a
 * circle; see check.h.
 */
#include "schedules/check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "schedules/comm.h"
#include "schedules/sim.h"

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
  /* Number the sends of each (sender, receiver, kind) channel and check
   * that the receiver consumes them in that numbering. With the k % p
   * placement a sender has one receiver per kind; with the V placement it
   * has two (chunk 0 sends activations forward, chunk 1 backward). */
  int V = bt_sched_nstages(s), p = s->p, ok = 1;
  size_t nkey = 2 * (size_t)V * (size_t)s->m, nch = (size_t)p * (size_t)p * 2;
  uint32_t *seq = malloc(nkey * sizeof *seq);
  uint32_t *sent = calloc(nch, sizeof *sent), *got_n = calloc(nch, sizeof *got_n);
  if (!seq || !sent || !got_n) {
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
        size_t ch = ((size_t)w * p + (size_t)c.send[q].peer) * 2 + (size_t)t->kind;
        seq[((size_t)t->mb * V + t->stage) * 2 + t->kind] = sent[ch]++;
      }
    }
  for (int w = 0; w < p && ok; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      bt_comm_of(s, w, j, 0, &c);
      for (int q = 0; q < c.nrecv && ok; q++) {
        const bt_msg_t *msg = &c.recv[q];
        const bt_tag_t *t = &msg->tag;
        size_t ch = ((size_t)msg->peer * p + (size_t)w) * 2 + (size_t)t->kind;
        uint32_t want = got_n[ch]++;
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
  free(got_n);
  free(sent);
  free(seq);
  return ok;
}
