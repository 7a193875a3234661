/* test_ending.c - launcher/ending.c: the one function from the workers'
 * ends to an incarnation's ending and exit code, and the job's next move.
 * No process is spawned. */
#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>

#include "common/error.h"
#include "common/exitcodes.h"
#include "launcher/ending.h"

static bt_incarnation_t base(void) {
  return (bt_incarnation_t){.all_done = 1, .has_ckpt_dir = 1, .steps_done = 20, .last_step = 20};
}

static bt_ending_t ending(const bt_incarnation_t *in) {
  bt_ending_t e;
  bt_job_ending(in, &e);
  return e;
}

Test(ending, a_clean_run_is_done_with_0) {
  bt_incarnation_t in = base();
  bt_ending_t e = ending(&in);
  cr_expect_eq(e.end, BT_SUP_END_DONE);
  cr_expect_eq(e.exit_code, BT_EXIT_OK);
}

Test(ending, a_worker_code_says_whether_a_restart_can_help) {
  bt_incarnation_t in = base();
  bt_worker_end_t w = {.exit_status = BT_WEXIT_FATAL};
  in.root = &w;
  cr_expect_eq(ending(&in).end, BT_SUP_END_FATAL);
  w.exit_status = BT_WEXIT_USAGE;
  cr_expect_eq(ending(&in).end, BT_SUP_END_FATAL);
  w.exit_status = BT_WEXIT_NONFINITE;
  cr_expect_eq(ending(&in).end, BT_SUP_END_NONFINITE);
  w = (bt_worker_end_t){.exit_status = BT_WEXIT_RETRY};
  cr_expect_eq(ending(&in).end, BT_SUP_END_RETRYABLE);
  w = (bt_worker_end_t){.term_signal = SIGKILL, .exit_status = BT_WEXIT_FATAL};
  cr_expect_eq(ending(&in).end, BT_SUP_END_RETRYABLE, "a killed worker's stale status says nothing");
  w = (bt_worker_end_t){.term_signal = SIGSEGV, .error_code = BT_ENONFINITE};
  cr_expect_eq(ending(&in).end, BT_SUP_END_NONFINITE);
  cr_expect_eq(ending(&in).exit_code, BT_EXIT_FAILED);
}

Test(ending, one_signal_with_a_checkpoint_dir_is_a_preemption) {
  bt_incarnation_t in = base();
  in.all_done = 0;
  in.steps_done = 12;
  in.stop_signal = SIGTERM;
  in.signals_seen = 1;
  in.committed_step = 13;
  in.preempt_at = 13;
  bt_ending_t e = ending(&in);
  cr_expect_eq(e.end, BT_SUP_END_PREEMPTED);
  cr_expect_eq(e.exit_code, BT_EXIT_PREEMPTED);
  cr_expect(strstr(e.reason, "checkpoint step 13 committed") != NULL, "%s", e.reason);
  /* a stage that failed meanwhile does not change it */
  bt_worker_end_t w = {.exit_status = BT_WEXIT_RETRY};
  in.root = &w;
  cr_expect_eq(ending(&in).exit_code, BT_EXIT_PREEMPTED);
  /* without a checkpoint directory it is a stop: 128 + N */
  in.root = NULL;
  in.has_ckpt_dir = 0;
  e = ending(&in);
  cr_expect_eq(e.end, BT_SUP_END_KILLED);
  cr_expect_eq(e.exit_code, 128 + SIGTERM);
  /* a second signal kills: a failure then stays exit 1 */
  in.has_ckpt_dir = 1;
  in.signals_seen = 2;
  in.root = &w;
  e = ending(&in);
  cr_expect_eq(e.end, BT_SUP_END_KILLED);
  cr_expect_eq(e.exit_code, BT_EXIT_FAILED);
}

Test(ending, a_signal_as_the_last_step_ends_is_simply_done) {
  bt_incarnation_t in = base();
  in.stop_signal = SIGINT;
  in.signals_seen = 1;
  cr_expect_eq(ending(&in).exit_code, BT_EXIT_OK);
}

Test(ending, nonfinite_and_internal_errors_have_their_codes) {
  bt_incarnation_t in = base();
  in.nonfinite = 1;
  cr_expect_eq(ending(&in).exit_code, BT_EXIT_NONFINITE);
  in.nonfinite = 0;
  in.internal_error = -12;
  bt_ending_t e = ending(&in);
  cr_expect_eq(e.end, BT_SUP_END_INTERNAL);
  cr_expect_eq(e.exit_code, BT_EXIT_FAILED);
}

Test(ending, the_job_ends_on_done_preempted_or_killed_and_asks_the_policy_otherwise) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 2, 0);
  bt_sup_result_t res;
  memset(&res, 0, sizeof res);
  bt_recovery_decision_t d;
  res.end = BT_SUP_END_PREEMPTED;
  res.exit_code = BT_EXIT_PREEMPTED;
  bt_job_next(&r, &res, 0, &d);
  cr_expect_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_expect_eq(d.exit_code, BT_EXIT_PREEMPTED);
  cr_expect_eq(r.restarts, 0);
  res.end = BT_SUP_END_RETRYABLE;
  res.exit_code = BT_EXIT_FAILED;
  bt_job_next(&r, &res, 10, &d);
  cr_expect_eq(d.action, BT_RECOVERY_RESTART);
  cr_expect_eq(r.restarts, 1);
  res.end = BT_SUP_END_FATAL;
  bt_job_next(&r, &res, 10, &d);
  cr_expect_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_expect_eq(d.exit_code, BT_EXIT_FAILED);
}
