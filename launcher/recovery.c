/* recovery.c - the restart policy and the checkpoint queries of `baton run`
 * (see recovery.h). */
#include "launcher/recovery.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/ckpt.h"
#include "common/error.h"
#include "common/exitcodes.h"
#include "common/log.h"

void bt_recovery_opts_default(bt_recovery_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->max_restarts = 10;
  o->max_stalled = 3;
  o->min_stages = 0; /* 0: the starting count, i.e. no shrinking */
  o->max_slot_failures = 2;
  o->backoff_s = 0.2;
  o->backoff_max_s = 5.0;
}

void bt_recovery_init(bt_recovery_t *r, const bt_recovery_opts_t *o, uint32_t stages, int64_t start_step) {
  memset(r, 0, sizeof *r);
  r->o = *o;
  if (r->o.min_stages <= 0 || (uint32_t)r->o.min_stages > stages) r->o.min_stages = (int)stages;
  r->stages = stages;
  r->shrink = (uint32_t)r->o.min_stages < stages;
  r->best_step = start_step;
}

static void give_up(bt_recovery_decision_t *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void give_up(bt_recovery_decision_t *d, int code, const char *fmt, ...) {
  d->action = BT_RECOVERY_GIVE_UP;
  d->exit_code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->why, sizeof d->why, fmt, ap);
  va_end(ap);
}

void bt_recovery_decide(bt_recovery_t *r, const bt_sup_result_t *res, int64_t progress_step,
                        bt_recovery_decision_t *d) {
  memset(d, 0, sizeof *d);
  d->retire = -1;
  /* Progress is measured against the furthest point of the whole job, so
   * a loop of restarts that each die before the next commit trips the
   * breaker however long each of them trains. */
  if (progress_step > r->best_step) {
    r->best_step = progress_step;
    r->stalled = 0;
  } else
    r->stalled++;
  switch (res->end) {
  case BT_SUP_END_FATAL:
    give_up(d, BT_EXIT_FAILED, "stage %d failed in a way a restart cannot fix (%s)", res->failed_stage,
            res->reason);
    return;
  case BT_SUP_END_NONFINITE:
    give_up(d, BT_EXIT_NONFINITE, "non-finite loss or parameters: a restart would replay the same bits");
    return;
  case BT_SUP_END_INTERNAL:
    give_up(d, BT_EXIT_FAILED, "%s", res->reason);
    return;
  default: break;
  }
  if (r->o.max_restarts == 0) {
    give_up(d, BT_EXIT_FAILED, "no restarts allowed (--max-restarts 0)");
    return;
  }
  if (r->restarts >= r->o.max_restarts) {
    give_up(d, BT_EXIT_RESTARTS, "restart budget spent (%d restarts, --max-restarts %d)", r->restarts,
            r->o.max_restarts);
    return;
  }
  if (r->stalled >= r->o.max_stalled) {
    give_up(d, BT_EXIT_NO_PROGRESS,
            "%d restarts in a row made no progress past step %lld: giving up (the breaker)", r->stalled,
            (long long)r->best_step);
    return;
  }
  r->restarts++;
  double b = r->o.backoff_s;
  for (int i = 1; i < r->restarts && b < r->o.backoff_max_s; i++) b *= 2;
  d->backoff_s = b < r->o.backoff_max_s ? b : r->o.backoff_max_s;
  d->action = BT_RECOVERY_RESTART;
  int slot = res->failed_stage;
  /* Retiring slots is asked for with --min-stages below the start count;
   * otherwise the restart budget alone governs. */
  if (!r->shrink || slot < 0 || (uint32_t)slot >= r->stages) return;
  if (++r->slot_failures[slot] < r->o.max_slot_failures) return;
  if (r->stages <= (uint32_t)r->o.min_stages) {
    give_up(d, BT_EXIT_TOO_FEW,
            "stage %d failed %d times and retiring it would leave %u stages, below --min-stages %d", slot,
            r->slot_failures[slot], r->stages - 1, r->o.min_stages);
    return;
  }
  d->action = BT_RECOVERY_REFORM;
  d->retire = slot;
  /* Positions renumber after a re-form: the counts start over. */
  memset(r->slot_failures, 0, sizeof r->slot_failures);
  r->stages--;
}

int bt_recovery_restore_point(const char *root, const char *job, const char *start_dir, int64_t start_step,
                               char *dir, size_t dirlen, int64_t *step) {
  bt_ckpt_step_t st;
  memset(&st, 0, sizeof st);
  int rc = root ? bt_ckpt_job_pick(root, job, INT64_MAX, &st) : -ENOENT;
  if (rc == 0) {
    /* Never behind the start: the job's own steps all come after it. */
    *step = st.step;
    snprintf(dir, dirlen, "%s", st.dir);
    bt_ckpt_step_close(&st);
    return 0;
  }
  if (rc != -ENOENT) return rc;
  *step = start_step;
  snprintf(dir, dirlen, "%s", start_dir ? start_dir : "");
  return 0;
}
