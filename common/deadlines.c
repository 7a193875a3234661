/* deadlines.c - see deadlines.h. Every factor is here with its reason. */
#include "common/deadlines.h"

#include "common/error.h"

static int64_t ms(double s) { return (int64_t)(s * 1000.0 + 0.5); }

static int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

static int64_t max2(int64_t a, int64_t b) { return a > b ? a : b; }

int64_t bt_deadlines_fault_hang_ms(int64_t peer_ms) {
  /* An injected hang must outlast the neighbours' transport deadline (the
   * failure it stands for) and the supervisor's progress timeout, yet end,
   * so a test that lost its supervisor does not leave a process behind. */
  return 4 * peer_ms;
}

int bt_deadlines_derive(double heartbeat_timeout_s, double progress_timeout_s, double start_timeout_s,
                        double grace_s, bt_deadlines_t *d) {
  if (!(heartbeat_timeout_s > 0) || !(progress_timeout_s > 0) || !(start_timeout_s > 0) || !(grace_s >= 0) ||
      heartbeat_timeout_s > 1e7 || progress_timeout_s > 1e7 || start_timeout_s > 1e7 || grace_s > 1e7)
    return BT_EARG;
  d->heartbeat_timeout_ms = ms(heartbeat_timeout_s);
  d->progress_ms = ms(progress_timeout_s);
  d->start_ms = ms(start_timeout_s);
  d->grace_ms = ms(grace_s);

  /* Heartbeat: five beats per timeout, so one late or lost beat (a busy
   * core, a page fault storm) never looks like a frozen worker; at least
   * 10 ms (a beat is a syscall and a frame) and at most 1 s (the summary's
   * detection latency is measured from the last beat). */
  d->heartbeat_ms = clamp(d->heartbeat_timeout_ms / 5, 10, 1000);

  /* The supervisor's tick decides every timeout: a tenth of the shortest
   * keeps detection within 10% of its nominal time; 10 ms at least (the
   * loop does real work each tick), 500 ms at most. */
  int64_t shortest = d->heartbeat_timeout_ms < d->progress_ms ? d->heartbeat_timeout_ms : d->progress_ms;
  d->tick_ms = clamp(shortest / 10, 10, 500);

  /* Progress before a stage's first step: allocation, first touches,
   * connecting to the peers and loading a checkpoint all come before the
   * first action completes, so twice the allowance. */
  d->first_step_ms = 2 * d->progress_ms;

  /* Peer: the transport deadline outlasts the supervisor's longest
   * progress allowance (the first step's) by a margin of half a progress
   * timeout, at least a second (two ticks and the kill's delivery). When
   * one stage hangs its neighbours wait on it: the supervisor must name the
   * hung stage before the neighbours time out and look like the cause
   * (DESIGN.md §7). */
  d->peer_ms = d->first_step_ms + max2(d->progress_ms / 2, 1000);

  /* Checkpoint: a stage copying its snapshot or waiting for its previous
   * save moves no action index; the supervisor allows it ten progress
   * timeouts (a shard write is disk-bound and may take far longer than a
   * step). The worker's own wait ends earlier by the same margin as above,
   * so the worker reports "the save did not finish" (an ERROR naming the
   * step) before the supervisor kills it for lack of progress. */
  d->ckpt_ms = 10 * d->progress_ms;
  d->ckpt_wait_ms = d->ckpt_ms - max2(d->progress_ms / 2, 1000);
  if (d->ckpt_wait_ms < d->progress_ms) d->ckpt_wait_ms = d->progress_ms;

  /* Hang: see bt_deadlines_fault_hang_ms. */
  d->fault_hang_ms = bt_deadlines_fault_hang_ms(d->peer_ms);

  /* Preemption: the checkpoint at S must be committed within the grace
   * period plus two progress timeouts (a step to reach S, a save), else
   * the job stops without it rather than outlive the scheduler's patience. */
  d->preempt_ms = d->grace_ms + 2 * d->progress_ms;
  return 0;
}
