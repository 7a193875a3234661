/* test_deadlines.c - common/deadlines.c: each link of the chain outlasts
 * the one before it, for the defaults, the tests' quick flags and extremes,
 * so the party that knows the cause always acts first. */
#include <criterion/criterion.h>

#include "common/deadlines.h"
#include "common/error.h"

static void check_order(double hb, double progress, double start, double grace) {
  bt_deadlines_t d;
  cr_assert_eq(bt_deadlines_derive(hb, progress, start, grace, &d), 0);
  /* at least two beats fit in the silence that kills a worker */
  cr_expect_leq(2 * d.heartbeat_ms, d.heartbeat_timeout_ms, "beat %lld, timeout %lld", (long long)d.heartbeat_ms,
                (long long)d.heartbeat_timeout_ms);
  /* the tick is finer than every timeout it checks */
  cr_expect_lt(d.tick_ms, d.heartbeat_timeout_ms);
  cr_expect_lt(d.tick_ms, d.progress_ms);
  /* progress -> first step -> peer: the supervisor names a hang first */
  cr_expect_gt(d.first_step_ms, d.progress_ms);
  cr_expect_geq(d.peer_ms - d.first_step_ms, 2 * d.tick_ms, "peer %lld, first step %lld, tick %lld",
                (long long)d.peer_ms, (long long)d.first_step_ms, (long long)d.tick_ms);
  /* checkpoint: the worker's own wait ends before the supervisor's kill */
  cr_expect_lt(d.ckpt_wait_ms, d.ckpt_ms);
  cr_expect_geq(d.ckpt_wait_ms, d.progress_ms);
  cr_expect_gt(d.ckpt_ms, d.first_step_ms);
  /* an injected hang trips the transport deadline */
  cr_expect_gt(d.fault_hang_ms, d.peer_ms);
  cr_expect_eq(d.fault_hang_ms, bt_deadlines_fault_hang_ms(d.peer_ms));
  /* a preemption's checkpoint gets the grace and a step and a save more */
  cr_expect_gt(d.preempt_ms, d.grace_ms);
  cr_expect_eq(d.start_ms, (int64_t)(start * 1000.0 + 0.5));
}

Test(deadlines, the_defaults_are_ordered) { check_order(2, 5, 120, 5); }

Test(deadlines, the_tests_quick_flags_are_ordered) { check_order(1, 2, 120, 1); }

Test(deadlines, tiny_and_huge_flags_are_ordered) {
  check_order(0.05, 0.05, 0.05, 0);
  check_order(3600, 3600, 3600, 60);
  check_order(0.05, 600, 1, 0);
  check_order(600, 0.05, 1, 0);
}

Test(deadlines, the_defaults_give_the_documented_values) {
  bt_deadlines_t d;
  cr_assert_eq(bt_deadlines_derive(2, 5, 120, 5, &d), 0);
  cr_expect_eq(d.heartbeat_ms, 400);
  cr_expect_eq(d.tick_ms, 200);
  cr_expect_eq(d.first_step_ms, 10000);
  cr_expect_eq(d.peer_ms, 12500);
  cr_expect_eq(d.ckpt_ms, 50000);
  cr_expect_eq(d.ckpt_wait_ms, 47500);
  cr_expect_eq(d.preempt_ms, 15000);
}

Test(deadlines, bad_flags_are_refused) {
  bt_deadlines_t d;
  cr_expect_eq(bt_deadlines_derive(0, 5, 120, 5, &d), BT_EARG);
  cr_expect_eq(bt_deadlines_derive(2, -1, 120, 5, &d), BT_EARG);
  cr_expect_eq(bt_deadlines_derive(2, 5, 120, -1, &d), BT_EARG);
  cr_expect_eq(bt_deadlines_derive(2, 5, 1e8, 5, &d), BT_EARG);
}
