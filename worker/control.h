/* control.h - the worker's side of the control channel (DESIGN.md §5).
 *
 * A worker is started by the supervisor (`baton run`) with one end of a
 * socketpair at fd BATON_CONTROL_FD. This module owns that fd: it sends
 * HELLO, READY, METRICS, TRACE, HASHES, ERROR and DONE frames (thread-safe:
 * one lock around each whole frame), and runs one background thread that
 * sends a HEARTBEAT every heartbeat interval — so a worker busy in a long
 * matrix multiply still beats — and reads what the supervisor sends (START,
 * CKPT_AT, STOP, ABORT).
 *
 * It does not train, move tensors or decide what to do on STOP: the caller
 * polls bt_control_stop_step() between steps. ABORT is the one message acted
 * on here: the thread ends the process at once (_exit), since the main
 * thread may be blocked in a transport wait with a long deadline.
 *
 * Called by worker/cmd_worker.c (the real pipeline worker) and by
 * tests/helpers/fake_worker.c (the fake worker the supervisor tests spawn).
 */
#ifndef BT_WORKER_CONTROL_H
#define BT_WORKER_CONTROL_H
#include <stdint.h>

#include "common/exitcodes.h"
#include "common/frame.h"
#include "common/workerenv.h"

/* Worker exit codes (BT_WEXIT_*): the contract with the supervisor lives in
 * common/exitcodes.h, which both sides include. */

/* The worker's environment: the table of common/workerenv.h, the one
 * contract the supervisor, the worker, the tests' fake worker and
 * `baton worker --help` share. */
typedef bt_worker_env_t bt_control_env_t;

/* First thing a worker does, before anything that can take time:
 * PR_SET_PDEATHSIG(SIGKILL), then checks that its parent is still
 * BATON_SUPERVISOR_PID (the supervisor may have died before the prctl, and
 * then no death signal would ever come), and ignores SIGTERM and SIGINT (a
 * scheduler signals every process of a job; workers obey the control
 * channel only). Returns 0, BT_EARG when BATON_SUPERVISOR_PID is missing or
 * malformed, BT_EPEER when the parent is not the supervisor. */
int bt_control_guard(void);

/* Reads the BATON_* variables above. BT_EARG (with a one-line log naming the
 * variable) when a required one is missing or malformed. */
int bt_control_env(bt_control_env_t *env);

typedef struct bt_control bt_control_t;

/* Takes over env->fd, sends HELLO and starts the heartbeat/reader thread. */
int bt_control_open(bt_control_t **out, const bt_control_env_t *env);
/* Stops the thread and closes the fd. NULL is a no-op. */
void bt_control_close(bt_control_t *c);

/* Progress for the next heartbeats. `action` is the index in this stage's
 * action list of the step; actions_done counts completed actions over the
 * whole run and is what the supervisor's progress timeout watches. */
void bt_control_progress(bt_control_t *c, int64_t step, int64_t action, bt_phase_t phase);
void bt_control_action_done(bt_control_t *c);

int bt_control_send_ready(bt_control_t *c, const char *addr);
/* READY with the GPU identity ("HOST/PCI-BUS-ID", "" on the CPU) and, from
 * stage 0 when NCCL is available, NCCL's unique id (NULL: zeros). */
int bt_control_send_ready_gpu(bt_control_t *c, const char *addr, const char *gpu, const uint8_t *nccl_id);
/* Blocks until START arrives or `deadline` (bt_clock_ns) passes
 * (BT_ETIMEOUT), or the channel breaks (BT_EPEER). */
int bt_control_wait_start(bt_control_t *c, bt_msg_start_t *start, uint64_t deadline);
int bt_control_send_metrics(bt_control_t *c, const bt_msg_metrics_t *m);
/* Trace times are bt_clock_s() values (CLOCK_MONOTONIC, one clock for every
 * process on the host): the supervisor makes them relative to its start. */
int bt_control_send_trace(bt_control_t *c, const bt_msg_trace_t *m);
int bt_control_send_hashes(bt_control_t *c, const bt_msg_hashes_t *m);
int bt_control_send_error(bt_control_t *c, int code, int exit_code, const char *text);
int bt_control_send_done(bt_control_t *c, int64_t step);
/* SHARD_DURABLE: this stage's shard of m->step is on disk (called from the
 * checkpoint writer's thread: every send takes the frame lock). */
int bt_control_send_shard(bt_control_t *c, const bt_msg_shard_t *m);
/* CKPT_LATE: a CKPT_AT named a step this worker had already completed;
 * `step` is its last completed step. */
int bt_control_send_ckpt_late(bt_control_t *c, int64_t step);

/* The step after which to stop (from STOP), or -1 when no STOP came. A STOP
 * of step 0 means "at once". */
int64_t bt_control_stop_step(bt_control_t *c);
/* The step after which to save a shard (latest CKPT_AT), or -1. */
int64_t bt_control_ckpt_step(bt_control_t *c);
/* After step `step` completed: 1 when the latest CKPT_AT names it (save a
 * shard of it), 0 otherwise. A CKPT_AT naming a step already behind is
 * answered with CKPT_LATE carrying `step`, so the supervisor can name a
 * later one (a negative code when that send fails). *handled is the
 * caller's record of the last CKPT_AT acted on (start it at -1): each is
 * acted on once. The pipeline worker and the test's fake worker both
 * decide here. */
int bt_control_ckpt_due(bt_control_t *c, int64_t step, int64_t *handled);

#endif
