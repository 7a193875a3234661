/* sup_hang.c - the hang analysis: where every stage is in the schedule
 * grid and which stage the others wait on, followed through the schedule's
 * communication (schedules/comm.h). Part of the supervisor
 * (sup_internal.h). */
#include "launcher/sup_internal.h"

/* The stage stage w waits on: the sender of the receive its current action
 * needs (schedules/comm.h), or NULL when it is not waiting on a peer. */
static worker_t *waits_on(sup_t *s, worker_t *w) {
  const bt_schedule_t *sc = s->o->sched;
  if (!sc || w->phase != BT_PHASE_WAIT || w->action < 0 || (int)w->stage >= sc->p) return NULL;
  bt_comm_t c;
  if (bt_comm_of(sc, (int)w->stage, (size_t)w->action, w->step, &c) < 0 || c.nrecv == 0) return NULL;
  int peer = c.recv[0].peer;
  return peer >= 0 && (uint32_t)peer < s->n ? &s->w[peer] : NULL;
}

/* A hang, before anything is stopped: prints (and logs) where every stage
 * is in the schedule grid, and returns the root cause — the stage the
 * others wait on. Starting from the suspect, follow "waits on" through the
 * schedule's communication: a stage waiting for a peer is not the cause
 * while that peer is itself stuck elsewhere. The end of the chain (a stage
 * not waiting on anyone, or the first one seen twice) is blamed. */
worker_t *sup_hang_report(sup_t *s, worker_t *suspect) {
  worker_t *root = suspect;
  uint8_t *seen = calloc(s->n, 1);
  if (seen) {
    for (worker_t *w = suspect; w && !seen[w->stage]; w = waits_on(s, w)) {
      seen[w->stage] = 1;
      root = w;
    }
    free(seen);
  }
  uint64_t now = sup_now_ms(s);
  sup_clear_progress(s);
  bt_error("hang: no progress; where each stage is (the one the others wait on is the cause):");
  bt_json_t j;
  int ev = sup_event_begin(s, &j, "hang");
  if (ev) {
    bt_json_kint(&j, "root_stage", root->stage);
    bt_json_key(&j, "stages");
    bt_json_arr_begin(&j);
  }
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    char act[32] = "?", done[32] = "-";
    const bt_schedule_t *sc = s->o->sched;
    if (sc && (int)i < sc->p && w->action >= 0 && (size_t)w->action < bt_sched_len(sc, (int)i))
      bt_action_format(bt_sched_at(sc, (int)i, (size_t)w->action), act, sizeof act);
    if (sc && (int)i < sc->p && w->action > 0 && (size_t)w->action <= bt_sched_len(sc, (int)i))
      bt_action_format(bt_sched_at(sc, (int)i, (size_t)w->action - 1), done, sizeof done);
    worker_t *on = waits_on(s, w);
    const char *phase = w->phase == BT_PHASE_WAIT ? "waiting" : w->phase == BT_PHASE_COMPUTE ? "computing"
                        : w->phase == BT_PHASE_CKPT ? "checkpointing" : w->phase == BT_PHASE_IDLE ? "idle"
                        : w->phase == BT_PHASE_SETUP ? "setting up NCCL"
                        : w->phase == BT_PHASE_CONNECT ? "connecting" : "starting";
    char on_text[48] = "";
    if (on) snprintf(on_text, sizeof on_text, " for stage %u", on->stage);
    bt_error("  stage %u: step %lld, last done %s, at action %lld (%s) %s%s, %.1f s without progress%s", i,
             (long long)w->step, done, (long long)w->action, act, phase, on_text,
             (double)(now - w->last_progress_ms) / 1000.0, w == root ? "   <- hung" : "");
    if (ev) {
      bt_json_obj_begin(&j);
      bt_json_kint(&j, "stage", i);
      bt_json_kint(&j, "step", w->step);
      bt_json_kint(&j, "action", w->action);
      bt_json_kstr(&j, "action_name", act);
      bt_json_kstr(&j, "last_done", done);
      bt_json_kstr(&j, "phase", phase);
      bt_json_kint(&j, "waits_on", on ? (int64_t)on->stage : -1);
      bt_json_knum(&j, "stalled_s", (double)(now - w->last_progress_ms) / 1000.0);
      bt_json_obj_end(&j);
    }
  }
  if (ev) {
    bt_json_arr_end(&j);
    sup_event_end(s, &j);
  }
  return root;
}
