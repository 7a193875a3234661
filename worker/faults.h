/* faults.h - firing injected faults inside a pipeline worker (`baton run
 * --inject-fault`).
 *
 * The supervisor hands the specs (common/fault.h) to the first incarnation
 * only, in BATON_INJECT_FAULTS; this module keeps the ones of this stage and
 * fires each once at its (step, action): the training loop calls
 * bt_faults_action() before every action (and once more, with the action
 * count, before the optimizer), bt_faults_before_send() before posting a
 * send, bt_faults_fill() from the checkpoint snapshot's fill callback and
 * bt_faults_write() from the checkpoint writer's hook (its own thread).
 * Nothing here is compiled out: with no specs every hook is one branch.
 *
 * What each kind does is in common/fault.h. Not here: parsing (common/),
 * detecting the fault (the supervisor).
 */
#ifndef BT_WORKER_FAULTS_H
#define BT_WORKER_FAULTS_H
#include <stddef.h>
#include <stdint.h>

#include "common/fault.h"

typedef struct {
  bt_fault_t f[BT_FAULT_MAX];
  int fired[BT_FAULT_MAX];
  size_t n;
  int slow_ms;          /* > 0 once a slow fault fired */
  int hang_armed;       /* a hang fired: block before the next send */
  int ckpt_die_armed;   /* a ckpt-die fired: die in the next snapshot */
  /* A ckpt-die at=write fired: the writer thread dies writing the shard of
   * this step or a later one (0: none). Read by the writer thread, so
   * accessed with __atomic builtins. */
  int64_t tear_from_step;
  /* A ckpt-slow fired: the writer thread sleeps slow_write_ms once in the
   * shard of this step or a later one (0: none; __atomic too). */
  int64_t slow_write_from_step;
  int slow_write_ms;
  int64_t hang_ms;      /* how long a hang lasts before it gives up */
} bt_faults_t;

/* Keeps the specs of `list` (may be NULL or empty) that name `stage`.
 * BT_EARG with a one-line reason in why on a bad spec. hang_ms bounds an
 * injected hang (every wait has a deadline): make it longer than the
 * supervisor's progress timeout. */
int bt_faults_init(bt_faults_t *fs, const char *list, int stage, int64_t hang_ms, char *why,
                   size_t why_len);

/* The action index of the boundary before the optimizer step: every fault
 * of the step not fired yet (its action index at or past the action
 * count) fires there. */
#define BT_FAULTS_END_OF_STEP INT64_MAX

/* Before action `action` of `step` (or BT_FAULTS_END_OF_STEP). Crash, exit
 * and freeze act here; hang, slow and ckpt-die arm. Sleeps when slow. */
void bt_faults_action(bt_faults_t *fs, int64_t step, int64_t action);

/* Before posting a send: an armed hang blocks here for hang_ms and then
 * returns BT_ETIMEOUT; 0 otherwise. */
int bt_faults_before_send(bt_faults_t *fs);

/* From the snapshot's fill callback, tensor i of n: an armed ckpt-die kills
 * the process halfway through the snapshot. */
void bt_faults_fill(bt_faults_t *fs, size_t i, size_t n);

/* A bt_ckpt_write_hook_fn (arg: the bt_faults_t), on the writer thread
 * after dataset i of n of step's shard is written: an armed ckpt-die
 * at=write kills the process once half the datasets are in the temporary
 * file, before HDF5 flushes it, leaving a torn shard. */
void bt_faults_write(void *fs, int64_t step, size_t i, size_t n);

#endif
