/* ending.c - see ending.h. */
#include "launcher/ending.h"

#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/exitcodes.h"

/* What a restart can do about the root cause: a bad configuration or NaN
 * comes back on every restart; a crash, hang or lost peer may not. */
static bt_sup_end_t classify(const bt_worker_end_t *w) {
  if (!w->term_signal && (w->exit_status == BT_WEXIT_FATAL || w->exit_status == BT_WEXIT_USAGE))
    return BT_SUP_END_FATAL;
  if ((!w->term_signal && w->exit_status == BT_WEXIT_NONFINITE) || w->error_code == BT_ENONFINITE)
    return BT_SUP_END_NONFINITE;
  return BT_SUP_END_RETRYABLE;
}

void bt_job_ending(const bt_incarnation_t *in, bt_ending_t *out) {
  memset(out, 0, sizeof *out);
  /* One stopping signal with a checkpoint directory is a preemption: what
   * is committed stands, and running again resumes from it. */
  int preempted = in->stop_signal && in->has_ckpt_dir && in->signals_seen == 1;
  if (!in->root && in->stop_signal && in->all_done && in->steps_done >= in->last_step && !in->nonfinite) {
    /* The signal came as the last step ended: the job is simply done. */
    out->end = BT_SUP_END_DONE;
    out->exit_code = BT_EXIT_OK;
  } else if (in->root) {
    out->end = classify(in->root);
    out->exit_code = BT_EXIT_FAILED;
    if (preempted && out->end != BT_SUP_END_NONFINITE) {
      /* A stage failed while the job was being preempted. */
      out->end = BT_SUP_END_PREEMPTED;
      out->exit_code = BT_EXIT_PREEMPTED;
    } else if (in->stop_signal) {
      out->end = BT_SUP_END_KILLED;
    }
  } else if (in->nonfinite) {
    out->end = BT_SUP_END_NONFINITE;
    out->exit_code = BT_EXIT_NONFINITE;
    snprintf(out->reason, sizeof out->reason, "non-finite parameters at a checkpoint: nothing committed");
  } else if (preempted) {
    out->end = BT_SUP_END_PREEMPTED;
    out->exit_code = BT_EXIT_PREEMPTED;
    /* The newest committed step: this incarnation's, else the one it
     * resumed from (a signal during the back-off commits nothing new). */
    int64_t newest = in->committed_step > 0 ? in->committed_step : in->resumed_step;
    if (newest > 0 && newest >= in->preempt_at)
      snprintf(out->reason, sizeof out->reason, "preempted by %s: checkpoint step %lld committed",
               strsignal(in->stop_signal), (long long)newest);
    else if (newest > 0)
      snprintf(out->reason, sizeof out->reason,
               "preempted by %s before checkpoint step %lld could be committed: step %lld is",
               strsignal(in->stop_signal), (long long)in->preempt_at, (long long)newest);
    else
      snprintf(out->reason, sizeof out->reason, "preempted by %s before a checkpoint could be committed",
               strsignal(in->stop_signal));
  } else if (in->stop_signal) {
    out->end = BT_SUP_END_KILLED;
    out->exit_code = 128 + in->stop_signal;
    snprintf(out->reason, sizeof out->reason, "stopped by %s after step %lld", strsignal(in->stop_signal),
             (long long)in->steps_done);
  } else if (in->internal_error) {
    out->end = BT_SUP_END_INTERNAL;
    out->exit_code = BT_EXIT_FAILED;
    snprintf(out->reason, sizeof out->reason, "supervisor error: %s", bt_strerror(in->internal_error));
  } else {
    out->end = BT_SUP_END_DONE;
    out->exit_code = BT_EXIT_OK;
  }
}

void bt_job_next(bt_recovery_t *r, const bt_sup_result_t *res, int64_t progress_step, bt_recovery_decision_t *d) {
  switch (res->end) {
  case BT_SUP_END_DONE:
  case BT_SUP_END_PREEMPTED:
  case BT_SUP_END_KILLED:
    /* Over whatever the policy says: the incarnation's code stands. */
    memset(d, 0, sizeof *d);
    d->action = BT_RECOVERY_GIVE_UP;
    d->exit_code = res->exit_code;
    d->retire = -1;
    return;
  default:
    bt_recovery_decide(r, res, progress_step, d);
  }
}
