/* fault.h - the fault-injection spec:
 * `KIND@stage=S,step=N[,action=J][,code=X][,ms=M][,at=snapshot|write]`.
 *
 * `baton run --inject-fault SPEC` (repeatable) validates its specs with this
 * parser before spawning anything; the supervisor hands them to the first
 * incarnation's workers in env BATON_INJECT_FAULTS (';'-separated), and the
 * worker (worker/faults.c) parses them again and fires the ones of its own
 * stage. This file only parses and prints specs: it fires nothing, so the
 * launcher may link it without depending on worker/.
 *
 * Kinds:
 *   crash     die as if by SIGSEGV (SIGKILL to itself: no handler, no flush)
 *   exit      exit with `code` (default 1) at that point
 *   freeze    SIGSTOP itself: the heartbeat thread stops too
 *   hang      stop before posting the next send; heartbeats go on but the
 *             action index stops moving
 *   slow      sleep `ms` (default 100) before every action from then on
 *   ckpt-die  die (SIGKILL) in the first checkpoint at or after `step`:
 *             at=snapshot (the default) half-way through copying its
 *             snapshot (worker/faults.c bt_faults_fill), before the writer
 *             thread writes anything; at=write on the writer thread once
 *             half of the shard's datasets are in its temporary file and
 *             before HDF5 flushes it (bt_faults_write), so a torn shard
 *             file is really left in step-N.tmp/
 *   ckpt-slow sleep `ms` (default 2000) on the writer thread half-way
 *             through writing the shard of the first checkpoint at or after
 *             `step` (training and heartbeats go on): a window in which the
 *             save is in flight, for losing a node or a stage mid-save
 * Fields: stage (0-based worker, required), step (1-based optimizer step,
 * required), action (index into the stage's action list of that step,
 * default 0), code (exit only, 1..255), ms (slow and ckpt-slow, 1..600000), at
 * (ckpt-die only, snapshot or write).
 */
#ifndef BT_COMMON_FAULT_H
#define BT_COMMON_FAULT_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
  BT_FAULT_CRASH = 0,
  BT_FAULT_EXIT,
  BT_FAULT_FREEZE,
  BT_FAULT_HANG,
  BT_FAULT_SLOW,
  BT_FAULT_CKPT_DIE,
  BT_FAULT_CKPT_SLOW,
  BT_FAULT_NKINDS_
} bt_fault_kind_t;

/* Where a ckpt-die dies. */
typedef enum { BT_FAULT_AT_SNAPSHOT = 0, BT_FAULT_AT_WRITE = 1 } bt_fault_at_t;

typedef struct {
  bt_fault_kind_t kind;
  int stage;      /* 0-based worker index */
  int64_t step;   /* 1-based optimizer step */
  int action;     /* action index within the step (0 = before the first) */
  int code;       /* exit: the exit status */
  int ms;         /* slow: milliseconds of sleep per action */
  int at;         /* ckpt-die: bt_fault_at_t */
} bt_fault_t;

/* The most specs one job carries (flags plus env). */
#define BT_FAULT_MAX 16
/* Longest printed spec, including the terminating NUL. */
#define BT_FAULT_SPEC_MAX 96

/* "crash", "exit", ... ; NULL for an out-of-range kind. */
const char *bt_fault_kind_name(bt_fault_kind_t k);

/* Parses one spec. 0, or BT_EARG with a one-line reason (no trailing
 * newline) in `why` (may be NULL) naming the bad kind or field. */
int bt_fault_parse(const char *spec, bt_fault_t *out, char *why, size_t why_len);

/* Parses a ';'-separated list (empty items are skipped) into out[0..max).
 * *n gets the count. BT_EARG with `why` on a bad spec or too many specs. */
int bt_fault_parse_list(const char *list, bt_fault_t *out, size_t max, size_t *n,
                        char *why, size_t why_len);

/* Prints the canonical spec (parses back to the same fault); returns the
 * length snprintf would have written. */
int bt_fault_format(const bt_fault_t *f, char *buf, size_t len);

/* Checks a spec against a job's shape: stage < nstages, step <= last_step.
 * BT_EARG with `why` otherwise. */
int bt_fault_check(const bt_fault_t *f, int nstages, int64_t last_step,
                   char *why, size_t why_len);

#endif
