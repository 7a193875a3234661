/* faults.c - see faults.h. */
#include "worker/faults.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"

int bt_faults_init(bt_faults_t *fs, const char *list, int stage, int64_t hang_ms, char *why,
                   size_t why_len) {
  memset(fs, 0, sizeof *fs);
  fs->hang_ms = hang_ms;
  bt_fault_t all[BT_FAULT_MAX];
  size_t n = 0;
  int rc = bt_fault_parse_list(list, all, BT_FAULT_MAX, &n, why, why_len);
  if (rc) return rc;
  for (size_t i = 0; i < n; i++)
    if (all[i].stage == stage) fs->f[fs->n++] = all[i];
  return 0;
}

/* Says what is about to happen on stderr: the supervisor keeps the tail of a
 * worker's stderr for its summary, so the cause is on record. */
static void announce(const bt_fault_t *f) {
  char s[BT_FAULT_SPEC_MAX];
  bt_fault_format(f, s, sizeof s);
  bt_warn("injected fault %s fires", s);
}

static void fire(bt_faults_t *fs, const bt_fault_t *f) {
  announce(f);
  switch (f->kind) {
  case BT_FAULT_CRASH:
    /* SIGKILL rather than abort(): no core dump to wait for, no handler. */
    raise(SIGKILL);
    break;
  case BT_FAULT_EXIT:
    fflush(NULL);
    _exit(f->code);
  case BT_FAULT_FREEZE:
    /* Stops every thread, the heartbeat thread included. */
    raise(SIGSTOP);
    break;
  case BT_FAULT_HANG: fs->hang_armed = 1; break;
  case BT_FAULT_SLOW: fs->slow_ms = f->ms; break;
  case BT_FAULT_CKPT_DIE:
    if (f->at == BT_FAULT_AT_WRITE)
      __atomic_store_n(&fs->tear_from_step, f->step, __ATOMIC_RELEASE);
    else
      fs->ckpt_die_armed = 1;
    break;
  case BT_FAULT_CKPT_SLOW:
    fs->slow_write_ms = f->ms;
    __atomic_store_n(&fs->slow_write_from_step, f->step, __ATOMIC_RELEASE);
    break;
  default: break;
  }
}

void bt_faults_action(bt_faults_t *fs, int64_t step, int64_t action) {
  for (size_t i = 0; i < fs->n; i++) {
    const bt_fault_t *f = &fs->f[i];
    /* A fault whose step was skipped (a resumed run past it) never fires;
     * an action index past the end fires at the optimizer boundary. */
    if (fs->fired[i] || f->step != step || (int64_t)f->action > action) continue;
    fs->fired[i] = 1;
    fire(fs, f);
  }
  if (fs->slow_ms > 0) bt_sleep_ms(fs->slow_ms);
}

int bt_faults_before_send(bt_faults_t *fs) {
  if (!fs->hang_armed) return 0;
  fs->hang_armed = 0;
  /* The heartbeat thread goes on; only this thread stops, so the action
   * index in the heartbeats stops moving. The supervisor kills us long
   * before this deadline; it exists so the wait has one. */
  uint64_t until = bt_deadline_ms(fs->hang_ms);
  while (bt_ms_left(until) > 0) bt_sleep_ms(50);
  return BT_ETIMEOUT;
}

void bt_faults_fill(bt_faults_t *fs, size_t i, size_t n) {
  if (!fs->ckpt_die_armed || i < n / 2) return;
  bt_warn("injected fault: dying in the middle of the checkpoint snapshot (tensor %zu of %zu)", i, n);
  raise(SIGKILL);
}

void bt_faults_write(void *arg, int64_t step, size_t i, size_t n) {
  bt_faults_t *fs = arg;
  int64_t slow = __atomic_load_n(&fs->slow_write_from_step, __ATOMIC_ACQUIRE);
  if (slow > 0 && step >= slow && i >= n / 2 &&
      __atomic_compare_exchange_n(&fs->slow_write_from_step, &slow, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    bt_warn("injected fault: the shard of step %lld pauses %d ms half-way through its write", (long long)step,
            fs->slow_write_ms);
    bt_sleep_ms(fs->slow_write_ms);
  }
  int64_t from = __atomic_load_n(&fs->tear_from_step, __ATOMIC_ACQUIRE);
  /* A save of an earlier step still being written when the fault fired
   * is left alone: the fault names the first save at or after its step. */
  if (from <= 0 || step < from || i < n / 2) return;
  bt_warn("injected fault: dying in the middle of writing the shard of step %lld (dataset %zu of %zu "
          "written, not flushed)",
          (long long)step, i + 1, n);
  raise(SIGKILL);
}
