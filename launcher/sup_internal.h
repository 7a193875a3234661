/* sup_internal.h - the supervisor's state and the functions its files
 * share; not an API (callers include launcher/supervisor.h).
 *
 * The supervisor is one libuv loop split by job, each found by file name:
 *   supervisor.c    the loop, its state machine, control messages, exits,
 *                   timeouts and the result (bt_supervisor_run)
 *   sup_spawn.c     spawning workers, their environment, their output
 *   sup_commit.c    collecting shard reports and committing a step, off
 *                   the loop (uv_queue_work)
 *   sup_preempt.c   signals: preemption and stops
 *   sup_joblog.c    the job log: events, metrics, trace, progress
 *   sup_hang.c      the hang analysis (who waits on whom)
 *   sup_remote.c    stages on other nodes: spawned, fed and killed through
 *                   their node agents (launcher/hub.h)
 */
#ifndef BT_LAUNCHER_SUP_INTERNAL_H
#define BT_LAUNCHER_SUP_INTERNAL_H
#include "launcher/supervisor.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>
#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/deadlines.h"
#include "common/error.h"
#include "common/exitcodes.h"
#include "common/json.h"
#include "common/log.h"
#include "common/workerenv.h"
#include "launcher/ending.h"
#include "launcher/hub.h"
#include "launcher/workerproc.h"
#include "schedules/comm.h"


typedef enum { JOB_STARTING, JOB_RUNNING, JOB_STOPPING, JOB_DONE } job_state_t;
typedef enum { W_SPAWNED, W_HELLO, W_READY, W_RUNNING, W_EXITED } worker_state_t;

/* Why a worker failed, ranked for choosing the root cause: a stage that
 * crashed or hung is the cause, a neighbour that then lost its peer (exit
 * code RETRY) is a consequence. */
typedef enum { F_NONE = 0, F_RETRY = 1, F_EXIT = 2, F_CRASH = 3 } fail_rank_t;

typedef bt_linebuf_t linebuf_t; /* launcher/workerproc.h: shared with the node agent */

struct sup;

typedef struct {
  struct sup *sup;
  uint32_t stage;
  uint32_t node;               /* multi-node: its node rank */
  int remote;                  /* on another node: driven through the hub (sup_remote.c) */
  worker_state_t state;
  uv_process_t proc;
  uv_pipe_t out, err, ctl;
  int proc_open, out_open, err_open, ctl_open; /* handle not yet closed */
  int pid;
  linebuf_t lout, lerr;
  bt_tail_t tail;              /* the last lines of its stderr (launcher/workerproc.h) */
  uint8_t *cbuf;
  size_t clen, ccap;
  char addr[BT_ADDR_MAX];
  char gpu[BT_GPU_NAME_MAX];   /* READY.gpu: "" on the CPU */
  uint8_t nccl_id[128];        /* READY.nccl_id (stage 0 with NCCL) */
  uint64_t last_beat_ms, last_progress_ms;
  int64_t actions_done, step, action, steps_reported;
  uint32_t phase;
  int done;                    /* DONE received */
  int done_at_eof;             /* exited 0 before DONE was read: decide at the control EOF */
  int hashes_received;
  bt_hash_rec_t *hashes;
  size_t nhashes;
  char error_text[512];        /* from an ERROR message */
  int error_code;              /* its bt error code */
  int killed_by_us;            /* our SIGKILL: not a failure of its own */
  int64_t exit_status;
  int term_signal;
  fail_rank_t fail;
  uint64_t fail_ms;
  char fail_reason[256];
} worker_t;

typedef struct {
  int64_t step;
  uint32_t count;
  bt_msg_metrics_t *m;         /* nstages entries */
  uint8_t *have;
} pending_step_t;

/* Shard reports of one checkpoint step, until every stage's is durable. */
typedef struct {
  int64_t step;
  uint32_t count;
  bt_msg_shard_t *r;           /* nstages entries */
  uint8_t *have;
} pending_ckpt_t;

typedef struct sup {
  const bt_sup_opts_t *o;
  bt_sup_result_t *res;
  uv_loop_t loop;
  job_state_t state;
  worker_t *w;
  uint32_t n;
  uv_timer_t tick, grace, drain, delay;
  uv_signal_t sigint, sigterm, sigusr1, sighup, sigtstp, sigcont;
  int tick_open, grace_open, drain_open, delay_open, sig_open;
  int delaying;                /* back-off before the spawn is running */
  pending_ckpt_t *ckpt;
  size_t nckpt;
  pending_ckpt_t *ready;       /* complete steps waiting for the commit in flight, oldest first */
  size_t nready;
  int committing;              /* a commit runs on the thread pool (sup_commit.c) */
  int64_t preempt_at;          /* CKPT_AT step of a preemption (0: none) */
  int nonfinite;               /* a commit found NaN/Inf */
  uint64_t start_ms, started_ms;
  double epoch_s;              /* bt_clock_s() at spawn: trace times are relative to it */
  char token[65];
  uv_async_t hub_async;        /* the hub's wake-up (multi-node) */
  int hub_async_open;
  int stop_signal;             /* first stopping signal */
  int signals_seen;
  uint32_t exited;
  int internal_error;          /* a negative code of the supervisor itself */
  FILE *metrics;
  FILE *events;
  pending_step_t *pend;
  size_t npend;
  int64_t steps_done;
  bt_trace_ev_t *trace;
  size_t ntrace, trace_cap;
  int tty;                     /* progress as one updating line */
  int progress_shown;          /* a progress line without newline is on screen */
  uint64_t progress_drawn_ns;  /* uv_hrtime() of the last progress output */
  bt_deadlines_t dl;           /* the deadline chain (common/deadlines.h) */
  uint64_t last_tick_ms;       /* when the tick last ran: a jump means we did not */
  int continued;               /* our own SIGTSTP path already continued the job */
} sup_t;

uint64_t sup_now_ms(sup_t *s);
void sup_close_handle(uv_handle_t *h, int *flag);
void sup_kill_all(sup_t *s);
void sup_send_step_msg(worker_t *w, uint16_t type, int64_t step);
void sup_begin_stop(sup_t *s, int abort_now, int64_t stop_at);
void sup_on_ctl_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
void sup_on_ctl_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
void sup_on_exit_cb(uv_process_t *p, int64_t status, int term_signal);
void sup_worker_exited(worker_t *w, int64_t status, int term_signal);
void sup_worker_lost(worker_t *w, const char *why);
void sup_ctl_bytes(worker_t *w);
char **sup_build_env(sup_t *s, uint32_t stage, int own_env);
void sup_free_env(char **env);
int sup_remote_spawn(sup_t *s, worker_t *w);
void sup_remote_kill(worker_t *w);
/* 1 when w runs on a node whose link has been silent for half the
 * heartbeat timeout: the node is the suspect, and the node timeout (the
 * hub) decides, not the stage's own heartbeat or progress. */
int sup_remote_silent(worker_t *w);
void sup_remote_ctl(worker_t *w, const bt_buf_t *b);
void sup_on_hub(uv_async_t *a);
void sup_maybe_finish(sup_t *s);
void sup_write_all(int fd, const char *p, size_t n);
void sup_clear_progress(sup_t *s);
int sup_event_begin(sup_t *s, bt_json_t *j, const char *name);
void sup_event_end(sup_t *s, bt_json_t *j);
void sup_log_kill_event(sup_t *s, const char *why);
void sup_add_metrics(sup_t *s, const bt_msg_metrics_t *m);
void sup_add_trace(sup_t *s, const bt_msg_trace_t *t);
int sup_write_trace(sup_t *s);
void sup_add_shard(sup_t *s, const bt_msg_shard_t *m);
void sup_ckpt_late(sup_t *s, worker_t *w, int64_t done);
void sup_on_signal(uv_signal_t *h, int signum);
void sup_make_token(char out[33]);
void sup_spawn_all(sup_t *s);
worker_t *sup_hang_report(sup_t *s, worker_t *suspect);
void sup_rearm_deadlines(sup_t *s, const char *why, double stalled_s);
void sup_on_tstp(uv_signal_t *h, int signum);
void sup_on_cont(uv_signal_t *h, int signum);

#endif
