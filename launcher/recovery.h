/* recovery.h - what `baton run` does between incarnations (DESIGN.md §7):
 * the restart policy (budget, back-off, the no-progress breaker, retiring
 * failing slots) and the choice of the checkpoint to restore. The hash of
 * a finished job read back from its checkpoint is bt_ckpt_step_hash.
 *
 * Not here: running an incarnation (supervisor.c) or planning the pipeline
 * (plan.c, cmd_run.c). The policy is a pure function of what the
 * incarnations reported, so tests/test_supervisor.c checks it without
 * spawning anything.
 */
#ifndef BT_LAUNCHER_RECOVERY_H
#define BT_LAUNCHER_RECOVERY_H
#include <stddef.h>
#include <stdint.h>

#include "launcher/supervisor.h"

typedef struct {
  int max_restarts;        /* restarts for the whole job (default 10) */
  int max_stalled;         /* the breaker: restarts in a row without progress (default 3) */
  int min_stages;          /* re-form down to this many stages (default: the start count) */
  int max_slot_failures;   /* a slot failing this often is retired (default 2) */
  double backoff_s;        /* first back-off (default 0.2 s), doubled per restart */
  double backoff_max_s;    /* its cap (default 5 s) */
} bt_recovery_opts_t;

void bt_recovery_opts_default(bt_recovery_opts_t *o);

typedef enum {
  BT_RECOVERY_RESTART = 0, /* respawn the same stages */
  BT_RECOVERY_REFORM,      /* respawn on one stage fewer (the slot in `retire`) */
  BT_RECOVERY_GIVE_UP,     /* end the job with `exit_code` */
} bt_recovery_action_t;

typedef struct {
  bt_recovery_opts_t o;
  uint32_t stages;         /* stages of the current formation */
  int restarts;            /* restarts done so far */
  int stalled;             /* restarts in a row that made no progress */
  int shrink;              /* --min-stages below the start count: slots may retire */
  int slot_failures[BT_MAX_STAGES];
  int64_t best_step;       /* furthest the job got: a commit, or steps without a checkpoint */
} bt_recovery_t;

void bt_recovery_init(bt_recovery_t *r, const bt_recovery_opts_t *o, uint32_t stages, int64_t start_step);

typedef struct {
  bt_recovery_action_t action;
  int exit_code;           /* GIVE_UP: BT_EXIT_* */
  int retire;              /* REFORM: the slot retired */
  double backoff_s;        /* RESTART/REFORM: wait before spawning */
  char why[256];           /* GIVE_UP: the one line to print */
} bt_recovery_decision_t;

/* Decides after an incarnation that ended in a failure. `progress_step` is
 * how far it got: the newest committed step when there is a checkpoint
 * directory, else the steps every stage finished. Updates the counters. */
void bt_recovery_decide(bt_recovery_t *r, const bt_sup_result_t *res, int64_t progress_step,
                        bt_recovery_decision_t *d);

/* The step a restart of job `job` restores (checkpoint/lineage.c): the
 * newest step of `root` (may be NULL) that the job committed and that
 * verifies, else the step the job started from (`start_dir`, `start_step`;
 * "" and 0 for a fresh start). Its directory goes to `dir` ("" for step 0).
 * Steps of other jobs in `root` are never chosen. 0 or a negative code. */
int bt_recovery_restore_point(const char *root, const char *job, const char *start_dir, int64_t start_step,
                               char *dir, size_t dirlen, int64_t *step);

#endif
