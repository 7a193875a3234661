/* ending.h - how a job ends: one place that turns what the workers did into
 * the ending of an incarnation and its exit code (bt_job_ending, called by
 * the supervisor when every worker is gone), and the ending of the whole
 * job after each incarnation (bt_job_next: the end, or a restart that the
 * policy of launcher/recovery.h allows). `baton run`'s exit codes are the
 * contract of common/exitcodes.h.
 *
 * Pure functions of plain facts: tests/test_ending.c checks every path
 * without spawning anything. Not here: watching workers (supervisor.c),
 * the restart policy's counters (recovery.c).
 */
#ifndef BT_LAUNCHER_ENDING_H
#define BT_LAUNCHER_ENDING_H
#include <stdint.h>

#include "launcher/recovery.h"
#include "launcher/supervisor.h"

/* How the root-cause worker ended, as the supervisor saw it. */
typedef struct {
  int term_signal;       /* killed by this signal (0: it exited) */
  int64_t exit_status;   /* its exit code when it exited (BT_WEXIT_*) */
  int error_code;        /* the bt code of its last ERROR message (0: none) */
} bt_worker_end_t;

/* What an incarnation came to when its last worker was gone. */
typedef struct {
  const bt_worker_end_t *root; /* the root cause, NULL when no worker failed */
  int all_done;          /* every worker sent DONE */
  int stop_signal;       /* the first stopping signal (0: none) */
  int signals_seen;      /* stopping signals received */
  int has_ckpt_dir;      /* the job checkpoints */
  int nonfinite;         /* a commit found NaN or Inf */
  int internal_error;    /* the supervisor's own negative code (0: none) */
  int64_t steps_done, last_step, committed_step, preempt_at;
  int64_t resumed_step;  /* the step this incarnation restored (0: none) */
} bt_incarnation_t;

typedef struct {
  bt_sup_end_t end;
  int exit_code;         /* of `baton run`, were this the last incarnation */
  char reason[256];      /* "" when the root cause's own reason stands */
} bt_ending_t;

/* The ending of one incarnation. */
void bt_job_ending(const bt_incarnation_t *in, bt_ending_t *out);

/* After an incarnation: BT_RECOVERY_GIVE_UP with d->exit_code when the job
 * is over (done, preempted, killed, or a failure the policy will not
 * restart; d->why is "" when the incarnation said it all), else RESTART or
 * REFORM as bt_recovery_decide says. `progress_step` as for
 * bt_recovery_decide. */
void bt_job_next(bt_recovery_t *r, const bt_sup_result_t *res, int64_t progress_step, bt_recovery_decision_t *d);

#endif
