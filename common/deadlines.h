/* deadlines.h - the whole deadline chain of a job, derived in one place
 * from the user's flags (`baton run --heartbeat-timeout --progress-timeout
 * --start-timeout --grace`).
 *
 *   heartbeat -> progress -> peer -> checkpoint -> hang -> init
 *
 * Each link must outlast the one before it, so that the party that knows
 * the cause acts first: the supervisor names a hung stage before its
 * neighbours' transport deadline fires and blames them; a worker whose
 * save is stuck says so before the supervisor kills it for silence; an
 * injected hang lasts past the transport deadline it is meant to trip.
 * The reasons for every factor are in deadlines.c beside the arithmetic,
 * and tests/test_deadlines.c checks the order for a range of flags.
 *
 * Used by launcher/supervisor.c (its timers and the values it hands the
 * workers through common/workerenv.h) and worker/ (the same values read
 * back). Not here: the flags' parsing and defaults (launcher/cmd_run.c).
 */
#ifndef BT_COMMON_DEADLINES_H
#define BT_COMMON_DEADLINES_H
#include <stdint.h>

typedef struct {
  int64_t heartbeat_timeout_ms; /* --heartbeat-timeout: silence that kills a worker */
  int64_t heartbeat_ms;         /* a worker's beat period (BATON_HEARTBEAT_MS) */
  int64_t tick_ms;              /* the supervisor's timer that checks every timeout */
  int64_t progress_ms;          /* --progress-timeout: beats but no action done (a hang) */
  int64_t first_step_ms;        /* the same before a stage's first step (start-up, restore) */
  int64_t peer_ms;              /* the transport deadline (BATON_PEER_TIMEOUT_MS) */
  int64_t ckpt_ms;              /* a stage in a checkpoint phase, as the supervisor allows */
  int64_t ckpt_wait_ms;         /* a worker waiting for its previous save (BATON_CKPT_TIMEOUT_MS) */
  int64_t fault_hang_ms;        /* how long an injected hang lasts */
  int64_t start_ms;             /* --start-timeout: every stage READY */
  int64_t grace_ms;             /* --grace: STOP -> SIGKILL */
  int64_t preempt_ms;           /* a preemption's checkpoint commits within this, or the job stops */
} bt_deadlines_t;

/* Derives the chain from the flags (seconds, all > 0 but grace >= 0).
 * Returns 0, or BT_EARG for a value out of range. */
int bt_deadlines_derive(double heartbeat_timeout_s, double progress_timeout_s, double start_timeout_s,
                        double grace_s, bt_deadlines_t *d);

/* The injected hang for a worker that knows only its transport deadline. */
int64_t bt_deadlines_fault_hang_ms(int64_t peer_ms);

/* `baton train` has no supervisor watching it: how long it waits for a save
 * (the snapshot waits for the previous one; the end waits for the last)
 * before calling the disk broken. */
#define BT_DEADLINE_TRAIN_CKPT_MS (10 * 60 * 1000)

#endif
