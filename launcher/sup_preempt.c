/* sup_preempt.c - signals (DESIGN.md §5): the first SIGTERM, SIGUSR1 or
 * SIGINT with a checkpoint directory is a preemption (checkpoint at the
 * highest step any stage reported + 1, commit, stop); without one, a stop;
 * a second signal kills. Part of the supervisor (sup_internal.h). */
#include "launcher/sup_internal.h"

/* Asks every stage to save after step `at` (a preemption). */
static void send_ckpt_at(sup_t *s, int64_t at) {
  s->preempt_at = at;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].state != W_EXITED) sup_send_step_msg(&s->w[i], BT_MSG_CKPT_AT, at);
}

/* A stage had already trained past the preemption step: name a step ahead
 * of everyone again (DESIGN §5). */
void sup_ckpt_late(sup_t *s, worker_t *w, int64_t done) {
  if (!s->preempt_at || s->state != JOB_RUNNING) return;
  int64_t at = done + 1;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].step + 1 > at) at = s->w[i].step + 1;
  if (at > s->o->last_step) at = s->o->last_step;
  if (at <= s->preempt_at) return;
  bt_info("stage %u was past step %lld: checkpoint at step %lld instead", w->stage,
          (long long)s->preempt_at, (long long)at);
  send_ckpt_at(s, at);
}

static void on_preempt_deadline(uv_timer_t *t) {
  sup_t *s = t->data;
  bt_warn("preemption checkpoint step %lld not committed in time: stopping without it",
          (long long)s->preempt_at);
  int64_t at = 0;
  for (uint32_t i = 0; i < s->n; i++)
    if (s->w[i].step > at) at = s->w[i].step;
  sup_begin_stop(s, 0, at + 1);
}

void sup_on_signal(uv_signal_t *h, int signum) {
  sup_t *s = h->data;
  s->signals_seen++;
  sup_clear_progress(s);
  if (s->signals_seen == 1 && s->delaying) {
    /* Preempted during the back-off: nothing runs, nothing to save. */
    s->stop_signal = signum;
    s->delaying = 0;
    uv_timer_stop(&s->delay);
    bt_warn("%s during the back-off: stopping", strsignal(signum));
    s->state = JOB_STOPPING;
    s->exited = s->n;
    sup_maybe_finish(s);
  } else if (s->signals_seen == 1 && s->o->ckpt_dir && s->state == JOB_RUNNING) {
    /* Preemption (DESIGN §5): checkpoint at S = the highest step any stage
     * reported + 1, commit it, then stop. Stages keep training meanwhile;
     * one that is already past S answers CKPT_LATE and S moves on. */
    s->stop_signal = signum;
    int64_t at = 0;
    for (uint32_t i = 0; i < s->n; i++)
      if (s->w[i].step > at) at = s->w[i].step;
    at++;
    if (at > s->o->last_step) at = s->o->last_step;
    bt_warn("%s: preemption: checkpoint at step %lld, then stop (again to kill now)", strsignal(signum),
            (long long)at);
    bt_json_t j;
    if (sup_event_begin(s, &j, "preemption")) {
      char name[32];
      snprintf(name, sizeof name, "SIG%s", sigabbrev_np(signum) ? sigabbrev_np(signum) : "?");
      bt_json_kstr(&j, "signal", name);
      bt_json_kint(&j, "step", at);
      sup_event_end(s, &j);
    }
    send_ckpt_at(s, at);
    /* A save that never becomes durable must not keep the job alive. */
    uv_timer_start(&s->grace, on_preempt_deadline, (uint64_t)s->dl.preempt_ms, 0);
  } else if (s->signals_seen == 1) {
    s->stop_signal = signum;
    /* Every stage must end on the same step S, so S must not be behind any
     * stage. What we know lags: the last stage finishes a step (and starts
     * the next) before the first stage's final backward ends, and messages
     * are in flight. So S is one past the furthest step any stage is known
     * to be training (DESIGN §5: the highest step reported + 1). */
    int64_t at = 0;
    for (uint32_t i = 0; i < s->n; i++)
      if (s->w[i].step > at) at = s->w[i].step;
    if (s->state == JOB_RUNNING) at++;
    /* Before START nothing has been trained: nothing to finish, abort. */
    int starting = s->state == JOB_STARTING;
    /* What we know of each stage's step lags: a stage already in a later
     * step finishes that one, so `at` is the earliest, not the exact end. */
    bt_warn("%s: stopping (after step %lld at the earliest: each stage finishes the step it is in; grace %.1f s; "
            "again to kill now)",
            strsignal(signum), (long long)at, s->o->grace_s);
    bt_json_t j;
    if (sup_event_begin(s, &j, "stop")) {
      char name[32];
      snprintf(name, sizeof name, "SIG%s", sigabbrev_np(signum) ? sigabbrev_np(signum) : "?");
      bt_json_kstr(&j, "signal", name);
      bt_json_kint(&j, "step", starting ? 0 : at);
      sup_event_end(s, &j);
    }
    sup_begin_stop(s, starting, at);
  } else if (signum != SIGUSR1 && signum != SIGHUP) {
    /* Not SIGHUP: a closing terminal or ssh session may send it twice. */
    bt_warn("%s again: killing every worker now", strsignal(signum));
    sup_log_kill_event(s, "second signal");
    sup_kill_all(s);
  }
}

/* Sends `sig` to every live worker's process group (each is a session of
 * its own, so a terminal's job control never reaches them by itself). */
static void signal_workers(sup_t *s, int sig) {
  for (uint32_t i = 0; i < s->n; i++) {
    worker_t *w = &s->w[i];
    if (w->state == W_EXITED || w->pid <= 0 || w->remote) continue; /* a remote pid is not ours */
    kill(-w->pid, sig);
    kill(w->pid, sig);
  }
}

/* Ctrl-Z (SIGTSTP): stop the whole job as a shell user
 * expects, workers first, then ourselves; `fg` (SIGCONT) continues here. */
void sup_on_tstp(uv_signal_t *h, int signum) {
  sup_t *s = h->data;
  sup_clear_progress(s);
  bt_info("%s: stopping every worker and the supervisor (fg or SIGCONT continues)", strsignal(signum));
  uint64_t t0 = uv_hrtime();
  signal_workers(s, SIGSTOP);
  kill(getpid(), SIGSTOP);
  /* Continued. */
  signal_workers(s, SIGCONT);
  s->continued = 1;
  sup_rearm_deadlines(s, "stopped by job control", (double)(uv_hrtime() - t0) / 1e9);
}

/* SIGCONT after a SIGSTOP we did not ask for: our workers may have been
 * stopped with us (kill -STOP of a process group), so continue them too. */
void sup_on_cont(uv_signal_t *h, int signum) {
  sup_t *s = h->data;
  (void)signum;
  if (s->continued) { /* sup_on_tstp has done it */
    s->continued = 0;
    return;
  }
  signal_workers(s, SIGCONT);
  uv_update_time(&s->loop);
  sup_rearm_deadlines(s, "SIGCONT", (double)(sup_now_ms(s) - s->last_tick_ms) / 1000.0);
}
