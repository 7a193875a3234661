/* check.h - is a schedule runnable, and runnable bit-identically?
 *
 * Structural validity (every action once, on its worker, no deadlock under
 * the communication rule), the micro-batch order of weight gradients, and
 * the channel order an untagged transport needs. These need derived
 * messages (comm.h) and the simulator's walk (sim.h), so they live above
 * both; schedule.h itself knows neither.
 */
#ifndef BT_SCHEDULES_CHECK_H
#define BT_SCHEDULES_CHECK_H
#include <stddef.h>

#include "schedules/schedule.h"

/* Structural validity: every (virtual stage, micro-batch) has exactly one F
 * and exactly one backward (B, or I then W on the same worker), every action
 * sits on its stage's worker, and the per-worker orders respect the data
 * dependencies under the communication rule (no deadlock). 0, BT_ESCHEDULE
 * or BT_EDEADLOCK with a one-line message naming worker, position, action. */
int bt_sched_validate(const bt_schedule_t *s, char *err, size_t errlen);

/* 1 when every virtual stage accumulates weight gradients (B or W) in
 * micro-batch order 0..m-1, as bit-identical training needs; 0 with the
 * first offender in err. Assumes a structurally valid schedule. */
int bt_sched_check_microbatch_order(const bt_schedule_t *s, char *err, size_t errlen);

/* 1 when, on every (sender, receiver, kind) channel, messages are received
 * in the order they are sent (what an untagged transport such as NCCL
 * needs); 0 with the first mismatch in err. Assumes a valid schedule. */
int bt_sched_check_channel_order(const bt_schedule_t *s, char *err, size_t errlen);

#endif
