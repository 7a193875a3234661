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
 * Its files are split by job (launcher/sup_internal.h lists them). It never
 * includes kernels/ or worker/ (DESIGN.md §1); the worker exit codes it
 * interprets are mirrored below from worker/control.h.
 */
#ifndef BT_LAUNCHER_SUPERVISOR_H
#define BT_LAUNCHER_SUPERVISOR_H
#include <stdint.h>

#include "checkpoint/ckpt.h"
#include "common/frame.h"
#include "common/hash.h"
#include "schedules/schedule.h"

/* Exit codes: common/exitcodes.h is the contract (BT_EXIT_* of `baton run`,
 * BT_WEXIT_* of the workers). The names below are this module's older
 * spellings of the same numbers; supervisor.c checks at compile time that
 * they agree. They are not taken from exitcodes.h here because a file that
 * also includes worker/control.h (which still defines BT_WEXIT_* itself)
 * would then see every name twice. */
enum {
  BT_SUP_EXIT_OK = 0,
  BT_SUP_EXIT_FAILED = 1,
  BT_SUP_EXIT_USAGE = 2,
};
enum {
  BT_SUP_WEXIT_DONE = 0,
  BT_SUP_WEXIT_ERROR = 1,
  BT_SUP_WEXIT_USAGE = 2,
  BT_SUP_WEXIT_RETRY = 3,
  BT_SUP_WEXIT_FATAL = 4,
  BT_SUP_WEXIT_STOPPED = 5,
  BT_SUP_WEXIT_ORPHAN = 6,
  BT_SUP_WEXIT_NONFINITE = 7,
};

/* What ended an incarnation, for the restart policy (launcher/recovery.c). */
typedef enum {
  BT_SUP_END_DONE = 0,     /* trained through last_step */
  BT_SUP_END_RETRYABLE,    /* a crash, hang, timeout, lost peer: restart may help */
  BT_SUP_END_FATAL,        /* bad configuration, unusable checkpoint: it will not */
  BT_SUP_END_NONFINITE,    /* non-finite loss or parameters */
  BT_SUP_END_PREEMPTED,    /* a signal: checkpoint committed (or none asked), stopped */
  BT_SUP_END_KILLED,       /* a second signal, or a signal without a checkpoint dir */
  BT_SUP_END_INTERNAL,     /* the supervisor itself failed */
} bt_sup_end_t;

#define BT_SUP_TAIL_LINES 20

struct bt_hub;

typedef struct {
  uint32_t nstages;            /* worker processes, 1..BT_MAX_STAGES */
  uint32_t chunks;             /* virtual stages per worker (BATON_CHUNKS) */
  char *const *worker_argv;    /* program and its arguments, NULL-terminated */
  const char *ckpt_dir;        /* BATON_CKPT_DIR (the checkpoint root), or NULL */
  struct bt_ckpt_lock_s *lock; /* the job's lock on ckpt_dir, re-checked at each commit (may be NULL) */
  const char *restore_dir;     /* BATON_RESTORE_DIR: the step directory restored first, or NULL */
  const char *faults;          /* BATON_INJECT_FAULTS, or NULL */
  const char *schedule_csv;    /* BATON_SCHEDULE_CSV (absolute), or NULL */
  const char *data_bind;       /* BATON_DATA_BIND: the host the data plane binds and advertises, or NULL */
  int ckpt_compress;           /* BATON_CKPT_COMPRESS: deflate level 0..9 */
  int64_t restore_step;        /* START.restore_step: load the step in BATON_RESTORE_DIR first (0: fresh) */
  bt_ckpt_lineage_t lineage;   /* the job and the step restored, recorded by every commit */
  int64_t ckpt_every;          /* START.ckpt_every (0: only the last step) */
  int keep_last;               /* retention after each commit (bt_ckpt_retain) */
  int64_t keep_every;
  const bt_schedule_t *sched;  /* to name actions in the hang report, or NULL */
  double spawn_delay_s;        /* back-off: wait this long (signals handled) before spawning */
  double epoch_s;              /* bt_clock_s() of the job's start, for event times (0: now) */
  int events_append;           /* append to events_path/metrics_path (a later incarnation) */
  /* After a restart: the failure being recovered from, for the `recovered`
   * event this incarnation writes when its first step is done. */
  int recovering;              /* restart number (0: not a restart) */
  double rec_detect_s, rec_stop_s; /* the failure's detection and stop durations */
  double rec_stopped_at_s;     /* when its last worker was gone (epoch_s based) */
  int64_t rec_steps_lost;
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
  void *events_file;           /* a FILE * the caller opened for the whole job (the one writer of
                                  the events; used instead of events_path, never closed here) */
  /* Multi-node (launcher/hub.h): stages placed on other nodes are spawned,
   * fed and killed through their node agents; everything else is the same. */
  struct bt_hub *hub;          /* the coordinator's hub, or NULL: every stage is ours */
  const uint32_t *stage_node;  /* node rank of each stage (0: here), or NULL */
  const char *const *stage_bind; /* BATON_DATA_BIND of each stage, or NULL */
  const uint32_t *stage_local; /* LOCAL_RANK of each stage (with stage_node) */
  const uint32_t *node_stages; /* LOCAL_WORLD_SIZE of each stage (with stage_node) */
  const char *token;           /* the data-plane token (hex), or NULL: a random one */
  const char *token_label;     /* what the agents derive the same token from */
  const char *master_addr;     /* MASTER_ADDR/MASTER_PORT for user code (NULL: 127.0.0.1, 0) */
  int master_port;
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
  bt_sup_end_t end;            /* what ended it, for the restart policy */
  int root_pid;                /* the root-cause worker's pid, or 0 */
  char root_tail[4096];        /* the last lines of its stderr */
  int64_t committed_step;      /* the newest step committed by this incarnation, or 0 */
  double detect_s;             /* event times (epoch_s based): first failure seen, */
  double detect_latency_s;     /* its stage's last sign of progress -> detection */
  double stopped_s;            /*   every worker gone, */
  double first_step_s;         /*   the first step after the restore finished (0: none) */
  double ready_s;              /*   every stage ready (0: never) */
  int spawned;                 /* workers were started (0: stopped during the back-off) */
  char ckpt_error[600];        /* the latest failed save or commit ("" if none) */
  int output_error;            /* a write to --metrics, --events or --trace failed (said once);
                                  training went on, the job's exit says so (1) */
  int events_failed;           /* writing to opts.events_file failed: its owner closes it */
} bt_sup_result_t;

/* Runs the job to its end; prints forwarded output, progress and, on
 * failure, a summary naming the stage with the tail of its stderr. Returns
 * 0 with *res filled (res->exit_code says how the job went), or a negative
 * code when the supervisor itself could not run (bad options, out of
 * memory, libuv failure before anything was spawned). Installs handlers for
 * SIGINT, SIGTERM and SIGUSR1 for its duration. */
int bt_supervisor_run(const bt_sup_opts_t *o, bt_sup_result_t *res);

#endif
