/* supervisor.h - the libuv supervisor behind `baton run` (DESIGN.md §5, §7).
 *
 * One libuv loop spawns one worker process per pipeline stage directly (no
 * shell), each in its own session and process group, with stdin on
 * /dev/null, stdout and stderr captured and forwarded line by line as
 * "[stage S] …", and a control channel (a socketpair inherited at fd 3, see
 * worker/control.h for the other end). It runs the rendezvous (every worker
 * sends READY with its data-plane address; when all have, everyone gets
 * START with the address table), watches heartbeats and progress, turns
 * SIGINT/SIGTERM/SIGUSR1 into a clean stop, collects metrics, traces and
 * tensor hashes, and reports the failed stage with the tail of its stderr.
 *
 * The job is a state machine — STARTING (spawned, waiting for READY),
 * RUNNING (START sent), STOPPING (STOP or ABORT sent, grace timer running),
 * DONE (every worker reaped) — so a restart policy can later be a transition
 * from STOPPING back to STARTING. This file does not build schedules or
 * parse model flags: `baton run` (launcher/cmd_run.c) does, and hands the
 * worker command line over in bt_sup_opts_t.
 *
 * It never includes kernels/ or worker/ (DESIGN.md §1); the worker exit
 * codes it interprets are mirrored below from worker/control.h.
 */
#ifndef BT_LAUNCHER_SUPERVISOR_H
#define BT_LAUNCHER_SUPERVISOR_H
#include <stdint.h>

#include "common/frame.h"
#include "common/hash.h"

/* Exit codes of `baton run`. A job stopped by a signal exits 128 + the
 * signal number (130 SIGINT, 143 SIGTERM, 138 SIGUSR1), like a shell. */
enum {
  BT_SUP_EXIT_OK = 0,     /* every stage trained through the last step */
  BT_SUP_EXIT_FAILED = 1, /* a worker failed (exit code, signal, heartbeat or progress timeout) */
  BT_SUP_EXIT_USAGE = 2,  /* bad command line or configuration, nothing spawned */
};

/* Worker exit codes, the same numbers as BT_WEXIT_* of worker/control.h. */
enum {
  BT_SUP_WEXIT_DONE = 0,
  BT_SUP_WEXIT_ERROR = 1,
  BT_SUP_WEXIT_USAGE = 2,
  BT_SUP_WEXIT_RETRY = 3,
  BT_SUP_WEXIT_FATAL = 4,
  BT_SUP_WEXIT_STOPPED = 5,
  BT_SUP_WEXIT_ORPHAN = 6,
};

#define BT_SUP_TAIL_LINES 20

typedef struct {
  uint32_t nstages;            /* worker processes, 1..BT_MAX_STAGES */
  uint32_t chunks;             /* virtual stages per worker (BATON_CHUNKS) */
  char *const *worker_argv;    /* program and its arguments, NULL-terminated */
  /* BATON_LAYERS of each stage ("lo-hi,lo-hi": global layers per chunk);
   * NULL entries or a NULL array leave it unset. */
  const char *const *stage_layers;
  const char *ckpt_dir;        /* BATON_CKPT_DIR, or NULL */
  const char *const *extra_env;/* more "K=V" for every worker, NULL-terminated, or NULL */
  int64_t first_step;          /* START.first_step */
  int64_t last_step;           /* START.last_step */
  uint32_t restart_count;      /* BATON_RESTART_COUNT */
  double grace_s;              /* STOP/ABORT -> SIGKILL */
  double heartbeat_timeout_s;  /* no heartbeat for this long: SIGKILL at once */
  double progress_timeout_s;   /* heartbeats but no finished action for this long */
  double start_timeout_s;      /* spawn -> every stage READY */
  const char *metrics_path;    /* JSON lines per step, or NULL */
  const char *trace_path;      /* Chrome trace JSON, or NULL */
  const char *events_path;     /* JSON lines: spawns, readiness, failures, stops, the end */
  int want_hash;               /* collect HASHES and combine them */
  int progress;                /* print progress on stdout */
} bt_sup_opts_t;

/* The documented defaults (also what `baton run --help` prints). */
void bt_sup_opts_default(bt_sup_opts_t *o);

typedef struct {
  int exit_code;               /* the exit code `baton run` should use */
  int failed_stage;            /* the root-cause stage, or -1 */
  char reason[256];            /* why it failed or stopped ("" on success) */
  int stop_signal;             /* the signal that stopped the job, or 0 */
  int have_hash;
  bt_hash128_t hash;           /* bt_hash_combine of every stage's HASHES */
  int64_t steps_done;          /* steps every stage finished */
} bt_sup_result_t;

/* Runs the job to its end; prints forwarded output, progress and, on
 * failure, a summary naming the stage with the tail of its stderr. Returns
 * 0 with *res filled (res->exit_code says how the job went), or a negative
 * code when the supervisor itself could not run (bad options, out of
 * memory, libuv failure before anything was spawned). Installs handlers for
 * SIGINT, SIGTERM and SIGUSR1 for its duration. */
int bt_supervisor_run(const bt_sup_opts_t *o, bt_sup_result_t *res);

#endif
