/* cmd_train.c - `baton train`: the model trained in one process, as ONE
 * stage holding ONE chunk with all L+2 layers (DESIGN.md §1, §8).
 *
 * It runs exactly the per-action code a pipeline worker runs
 * (worker/stage.h): for each micro-batch in increasing order, F then B, then
 * the optimizer step. That makes it the reference every `baton run` must
 * match bit for bit, whatever its stage count, schedule or layout.
 *
 * With --ckpt-dir it checkpoints as a one-stage job (DESIGN.md §6): the
 * shard is written by the checkpoint module's writer thread while training
 * goes on, and committed on that same thread right after (the commit
 * protocol of bt_ckpt_commit(), the function the supervisor uses, taking
 * the shard's attributes from the snapshot rather than reopening it), so
 * the training thread waits for the snapshot copy only, never for an
 * fsync. The checkpoint flags are parsed by
 * checkpoint/flags.h, as `baton run` parses them. Resuming (--resume auto,
 * the default; or PATH) reads the model configuration back from the
 * checkpoint: model flags not given take the checkpoint's values, a model
 * flag given with another value is refused naming both, and the run
 * settings (--steps, checkpoint flags) come from the command line, so a
 * larger --steps extends a finished job. Loading reshards, so a step saved
 * by `baton run` on any number of stages resumes here too. A job already
 * at --steps prints its hash and trains nothing. --resume never refuses a
 * directory that already holds committed steps rather than mixing two runs
 * in it (docs/train-checkpoints.md).
 *
 * Not here: pipelines (`baton run`). Output: progress lines on stdout; with
 * --hash the last stdout line is `hash <32 hex>`. Exit codes: 0 done, 1 a
 * failure while training (backend error, checkpoint I/O), 2 bad input
 * (before anything is allocated; a checkpoint of another model or a locked
 * checkpoint directory too), 3 non-finite loss or parameters (nothing is
 * committed).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/flags.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/data.h"
#include "common/deadlines.h"
#include "common/error.h"
#include "common/exitcodes.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/log.h"
#include "common/model.h"
#include "common/parse.h"
#include "kernels/backend.h"
#include "worker/cmd.h"
#include "worker/stage.h"
#include "worker/stage_ckpt.h"

/* How many final steps the closing "final loss" line averages: one step's
 * loss is a mean over only M*T tokens and jitters. */
#define FINAL_WINDOW 20

static void usage(FILE *f) {
  char flags[4096];
  fprintf(f,
          "usage: baton train [options]\n\n"
          "Trains the byte-level model in one process (one stage, one chunk): the\n"
          "reference that every pipeline run (`baton run`) matches bit for bit.\n\n"
          "model options (shared with `baton run`; stored in checkpoints):\n");
  bt_config_help(BT_CONFIG_MODEL, flags, sizeof flags);
  fputs(flags, f);
  fprintf(f, "\nrun options:\n");
  /* --steps and --backend come from the shared table too, defaults and all. */
  size_t n;
  const bt_config_flag_t *t = bt_config_flags(&n);
  for (size_t i = 0; i < n; i++) {
    if (strcmp(t[i].name, "steps") && strcmp(t[i].name, "backend")) continue;
    char opt[64];
    snprintf(opt, sizeof opt, "--%s %s", t[i].name, t[i].type == BT_FLAG_STRING ? "S" : "N");
    fprintf(f, "  %-22s %s (default %s)\n", opt, t[i].help, t[i].def);
  }
  fprintf(f,
          "  --hash                 print `hash <32 hex>` (all parameters) as the last line\n"
          "  --metrics FILE         write one JSON line per step (step, loss, lr, tokens_per_s)\n"
          "  --print-every N        a progress line every N steps (default: steps/20)\n"
          "  --help                 this text\n\n"
          "checkpoint options (shared with `baton run`):\n");
  fputs(bt_ckpt_flags_help(), f);
  fprintf(f,
          "\nResuming takes the model configuration from the checkpoint: leave the model\n"
          "flags out, or give the values it holds. --steps may be larger than before to\n"
          "extend a finished run; a run already at --steps prints its hash and exits 0.\n\n"
          "exit codes: 0 done, 1 training or checkpoint I/O failed (or no checkpoint in\n"
          "--ckpt-dir verifies), 2 bad input (also: another model in the checkpoint, a\n"
          "locked --ckpt-dir, --resume never on a directory with steps), 3 non-finite\n"
          "loss or parameters (nothing committed), 80 finished but the final checkpoint\n"
          "was not committed (the newest committed step is said last)\n");
}

/* Model flags remembered as given, to tell "left out" from "given with the
 * default value" when a checkpoint supplies the model. */
#define MAX_MODEL_FLAGS 64

typedef struct {
  bt_config_t cfg;
  int hash;
  const char *metrics;
  int64_t print_every;
  bt_ckpt_flags_t ck;
  int nmodel;
  char model_name[MAX_MODEL_FLAGS][64];
  const char *model_value[MAX_MODEL_FLAGS];
} train_args_t;

/* Parses argv into a; returns 0, 1 for --help, or 2 after printing one
 * line on stderr. */
static int parse_args(int argc, char **argv, train_args_t *a) {
  char err[512];
  bt_config_defaults(&a->cfg);
  bt_ckpt_flags_init(&a->ck);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
    if (!strcmp(arg, "--hash")) {
      a->hash = 1;
      continue;
    }
    if (!strncmp(arg, "--hash=", 7)) {
      fprintf(stderr, "baton train: --hash takes no value\n");
      return 2;
    }
    if (strncmp(arg, "--", 2)) {
      fprintf(stderr, "baton train: unexpected argument '%s' (try --help)\n", arg);
      return 2;
    }
    /* --flag=value or --flag value */
    char name[64];
    const char *eq = strchr(arg, '='), *value;
    size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
    if (nl >= sizeof name) nl = sizeof name - 1;
    memcpy(name, arg, nl);
    name[nl] = 0;
    int known = !strcmp(name, "--metrics") || bt_ckpt_flags_known(name) || !strcmp(name, "--print-every") ||
                bt_config_has_flag(BT_CONFIG_MODEL, name) || !strcmp(name, "--steps") ||
                !strcmp(name, "--backend");
    if (!known) {
      fprintf(stderr, "baton train: unknown option '%s' (try --help)\n", name);
      return 2;
    }
    if (eq) value = eq + 1;
    else if (i + 1 < argc) value = argv[++i];
    else value = NULL;
    if (!value) {
      fprintf(stderr, "baton train: %s needs a value\n", name);
      return 2;
    }
    if (!strcmp(name, "--metrics")) {
      a->metrics = value;
    } else if (bt_ckpt_flags_known(name)) {
      if (bt_ckpt_flags_parse(&a->ck, name, value, err, sizeof err)) {
        fprintf(stderr, "baton train: %s\n", err);
        return 2;
      }
    } else if (!strcmp(name, "--print-every")) {
      if (bt_parse_i64(value, 1, INT64_MAX, &a->print_every)) {
        fprintf(stderr, "baton train: --print-every: expected a whole number >= 1, got '%s'\n",
                value);
        return 2;
      }
    } else if (bt_config_has_flag(BT_CONFIG_MODEL, name) || !strcmp(name, "--steps") ||
               !strcmp(name, "--backend")) {
      if (bt_config_flag(&a->cfg, BT_CONFIG_ALL, name, value, err, sizeof err)) {
        fprintf(stderr, "baton train: %s\n", err);
        return 2;
      }
      if (bt_config_has_flag(BT_CONFIG_MODEL, name)) {
        if (a->nmodel == MAX_MODEL_FLAGS) {
          fprintf(stderr, "baton train: more than %d model flags\n", MAX_MODEL_FLAGS);
          return 2;
        }
        snprintf(a->model_name[a->nmodel], sizeof a->model_name[0], "%s", name);
        a->model_value[a->nmodel++] = value;
      }
    } else {
      fprintf(stderr, "baton train: unknown option '%s' (try --help)\n", name);
      return 2;
    }
  }
  if (bt_config_finish(&a->cfg, err, sizeof err)) {
    fprintf(stderr, "baton train: %s\n", err);
    return 2;
  }
  if (!a->print_every) a->print_every = a->cfg.run.steps >= 20 ? a->cfg.run.steps / 20 : 1;
  if (bt_ckpt_flags_check(&a->ck, err, sizeof err)) {
    fprintf(stderr, "baton train: %s\n", err);
    return 2;
  }
  return 0;
}

/* ---- checkpoints: one stage, one shard per step ---- */

typedef struct {
  const char *root;
  bt_ckpt_lock_t lock;
  int locked;
  bt_ckpt_writer_t *writer;
  bt_stage_ckpt_t sc;       /* the stage's tensors and texts (worker/stage_ckpt.h) */
  int64_t pending;         /* saved, not yet committed; -1 none */
  int64_t newest;          /* the newest step committed (or resumed from); 0 none */
  char closing[512];       /* said last, after the clean-up's own lines */
  bt_ckpt_retention_t keep;
  bt_ckpt_step_t src;      /* the step resumed from, while src_open */
  int src_open;
  const char *src_root;    /* root to fall back in when loading src fails;
                              NULL for a step directory named by --resume */
  bt_ckpt_lineage_t lin;   /* the job and the step resumed from, in every commit */
  /* Set by the writer thread (committed()) before it reports idle, read by
   * the training thread after bt_ckpt_writer_wait: the writer's mutex
   * orders the two. */
  int commit_rc;           /* the commit's result, or the save's when it failed */
  int64_t commit_step;     /* the step that result is for; -1 none */
  double writer_cpu_s;     /* the writer thread's CPU time after its last commit */
  /* Training thread only: what the checkpoints cost the loop. */
  int saves;
  double loop_wait_s;      /* inside ckpt_save and ckpt_commit_pending in the loop */
} ckpt_t;

/* How long a save or commit may take before the run gives up on it. */
#define CKPT_TIMEOUT_MS BT_DEADLINE_TRAIN_CKPT_MS

/* Locks the directory for the whole run. Returns an exit code: 2 (after
 * one line naming the holder) for a directory another job holds. */
static int ckpt_lock(ckpt_t *ck, const train_args_t *a) {
  char holder[512] = "";
  ck->root = a->ck.dir;
  ck->pending = -1;
  ck->keep = bt_ckpt_flags_retention(&a->ck);
  int rc = bt_ckpt_lock_acquire(ck->root, &ck->lock, holder, sizeof holder);
  if (rc) {
    if (rc != BT_ELOCKED && holder[0]) /* the reason says it all */
      fprintf(stderr, "baton train: --ckpt-dir %s: %s\n", ck->root, holder);
    else
      fprintf(stderr, "baton train: --ckpt-dir %s: %s%s%s\n", ck->root, bt_strerror(rc),
              holder[0] ? ": " : "", holder);
    return rc == BT_ELOCKED || rc == -EACCES || rc == -ENOTDIR || rc == -EEXIST || rc == -ENOENT ||
                   rc == -EROFS
               ? 2
               : 1;
  }
  ck->locked = 1;
  return 0;
}

/* The newest committed step of the checkpoint root `root` that verifies,
 * opened into ck->src. Returns an exit code; *none is set when the root
 * holds no committed step at all. Committed steps of which none verifies
 * are an error, not a fresh start: training would later try to commit over
 * them and the user would lose the evidence. */
static int open_root(ckpt_t *ck, const char *root, const char *flag, int *none) {
  int64_t *steps = NULL;
  size_t ns = 0;
  *none = 0;
  int rc = bt_ckpt_list_steps(root, &steps, &ns);
  free(steps);
  if (rc) {
    fprintf(stderr, "baton train: %s %s: %s\n", flag, root, bt_strerror(rc));
    return rc == -ENOENT || rc == -ENOTDIR ? 2 : 1;
  }
  if (ns == 0) {
    *none = 1;
    return 0;
  }
  rc = bt_ckpt_open_latest(root, BT_CKPT_CHECK_CRC, &ck->src);
  if (rc) {
    fprintf(stderr,
            "baton train: %s %s: none of its %zu committed step%s verifies (%s); `baton ckpt "
            "ls` shows them; move them away to start over\n",
            flag, root, ns, ns == 1 ? "" : "s", bt_strerror(rc));
    return 1;
  }
  ck->src_open = 1;
  ck->src_root = root;
  return 0;
}

/* --resume PATH: a step directory (it holds the manifest) or a root. */
static int open_path(ckpt_t *ck, const char *path) {
  char man[4096];
  struct stat sb;
  if (stat(path, &sb)) {
    fprintf(stderr, "baton train: --resume %s: %s\n", path, strerror(errno));
    return 2;
  }
  if (!S_ISDIR(sb.st_mode)) {
    fprintf(stderr, "baton train: --resume %s: not a directory (give a step directory or a "
            "checkpoint root)\n", path);
    return 2;
  }
  if (snprintf(man, sizeof man, "%s/%s", path, BT_CKPT_MANIFEST) >= (int)sizeof man) {
    fprintf(stderr, "baton train: --resume: path too long\n");
    return 2;
  }
  if (access(man, F_OK) == 0) {
    int rc = bt_ckpt_step_open(path, BT_CKPT_CHECK_CRC, &ck->src, NULL, NULL);
    if (rc) {
      fprintf(stderr, "baton train: --resume %s: %s (`baton ckpt verify %s` says why)\n", path,
              bt_strerror(rc), path);
      return rc == BT_ENOTCKPT ? 2 : 1;
    }
    ck->src_open = 1;
    return 0;
  }
  int none = 0, code = open_root(ck, path, "--resume", &none);
  if (!code && none) {
    fprintf(stderr, "baton train: --resume %s: neither a step directory (no %s) nor a "
            "checkpoint root with committed steps\n", path, BT_CKPT_MANIFEST);
    code = 2;
  }
  return code;
}

static int adopt_model(train_args_t *a, const char *text, const char *where);

/* Finds the state the run starts from, as --resume says; leaves ck->src
 * open when there is one. Returns an exit code. */
static int ckpt_find(ckpt_t *ck, train_args_t *a) {
  int64_t *steps = NULL;
  size_t ns = 0;
  int none = 0, code = 0, rc;
  switch (a->ck.resume) {
  case BT_CKPT_RESUME_AUTO:
    return open_root(ck, ck->root, "--ckpt-dir", &none);
  case BT_CKPT_RESUME_NEVER:
    /* Starting over in a directory that holds another run's steps would
     * interleave the two: restore takes the newest step, whichever run
     * wrote it. Refusing costs the user one `rm`; mixing costs a job. */
    if ((rc = bt_ckpt_list_steps(ck->root, &steps, &ns))) {
      fprintf(stderr, "baton train: --ckpt-dir %s: %s\n", ck->root, bt_strerror(rc));
      return 1;
    }
    if (ns)
      fprintf(stderr, "baton train: --resume never: --ckpt-dir %s already holds committed step "
              "%lld; give an empty directory, or --resume auto to continue from it\n",
              ck->root, (long long)steps[0]);
    code = ns ? 2 : 0;
    free(steps);
    return code;
  default: {
    if ((code = open_path(ck, a->ck.resume_path))) return code;
    /* Steps newer than the one resumed from, or of another lineage,
     * belong to a future this run replaces: a later auto resume would pick
     * them over ours, and saving the same step number again would collide.
     * The model is checked first: a refusal must come before any move. */
    if ((code = adopt_model(a, ck->src.man.meta.model_config ? ck->src.man.meta.model_config : "",
                            ck->src.dir)))
      return code;
    char msg[1024] = "";
    rc = bt_ckpt_resume_settle(ck->root, &ck->src, a->ck.resume_path, a->ck.move_aside, msg, sizeof msg);
    if (msg[0]) fprintf(stderr, "baton train: %s\n", msg);
    return rc == 0 ? 0 : rc == 1 ? 2 : 1;
  }
  }
}

/* The lineage of this run's commits (checkpoint/lineage.c): continuing a
 * directory (--resume auto) keeps its job; --resume PATH, never, or a
 * fresh directory make a new job; the parent is the step resumed from. */
static void ckpt_lineage(ckpt_t *ck, const train_args_t *a) {
  ck->lin.parent_step = -1;
  if (ck->src_open && a->ck.resume == BT_CKPT_RESUME_AUTO && bt_ckpt_job_valid(ck->src.man.lineage.job))
    snprintf(ck->lin.job, sizeof ck->lin.job, "%s", ck->src.man.lineage.job);
  else
    bt_ckpt_job_new(ck->lin.job);
  if (ck->src_open) {
    snprintf(ck->lin.parent_job, sizeof ck->lin.parent_job, "%s", ck->src.man.lineage.job);
    ck->lin.parent_step = ck->src.step;
  }
}

/* Takes the model configuration from the checkpoint text, the flags
 * given on the command line applied over it (bt_config_match_checkpoint,
 * the rule `baton run` and the worker use too). Returns an exit code: 2
 * for another model or data, after one line naming each value. */
static int adopt_model(train_args_t *a, const char *text, const char *where) {
  char err[2048] = "";
  const char *names[MAX_MODEL_FLAGS];
  for (int i = 0; i < a->nmodel; i++) names[i] = a->model_name[i];
  int rc = bt_config_match_checkpoint(&a->cfg, text, names, a->model_value, a->nmodel, err, sizeof err);
  if (rc == BT_ECONFIG) fprintf(stderr, "baton train: %s holds another model: %s\n", where, err);
  else if (rc == BT_EFORMAT) fprintf(stderr, "baton train: %s: %s\n", where, err);
  else if (rc) fprintf(stderr, "baton train: %s\n", err);
  return rc == 0 ? 0 : rc == BT_EFORMAT ? 1 : 2;
}

/* The state of the stage from ck->src (or, when that fails for a reason
 * other than the model, from the previous committed step of its root).
 * *start gets the step to train next. Returns an exit code. */
static int ckpt_load(ckpt_t *ck, bt_stage_t *st, int64_t *start) {
  int rc = bt_stage_ckpt_load(&ck->sc, st, &ck->src);
  /* Falling back stays on the lineage: the previous step of the same job
   * (steps written before lineage existed fall back among themselves). */
  while (rc && rc != BT_ECONFIG && ck->src_root) {
    char job[BT_CKPT_JOB_LEN + 1];
    int64_t failed = ck->src.step;
    snprintf(job, sizeof job, "%s", ck->src.man.lineage.job);
    bt_warn("checkpoint: loading %s failed (%s); trying the previous committed step of this job", ck->src.dir,
            bt_strerror(rc));
    bt_ckpt_step_close(&ck->src);
    ck->src_open = 0;
    if ((rc = bt_ckpt_job_pick(ck->src_root, job, failed, &ck->src)) < 0) break;
    ck->src_open = 1;
    ck->lin.parent_step = ck->src.step;
    rc = bt_stage_ckpt_load(&ck->sc, st, &ck->src);
  }
  if (rc) {
    fprintf(stderr, "baton train: %s: cannot restore: %s\n", ck->src_open ? ck->src.dir : ck->root,
            bt_strerror(rc));
    return rc == BT_ECONFIG ? 2 : 1;
  }
  *start = ck->src.man.meta.step;
  ck->newest = *start;
  return 0;
}

/* The writer thread's done callback: commits the shard just saved and
 * applies retention there, so the fsyncs of the manifest, the directory
 * rename and `latest` never stall a training step. The order of durable
 * effects is bt_ckpt_commit's; a crash at any point leaves the previous
 * committed step restorable. A run that stops early (a non-finite loss, a
 * failed write) still gets the save in flight, taken from finite
 * parameters, committed: the writer finishes it before it is joined. */
static void committed(void *arg, const bt_ckpt_result_t *r) {
  ckpt_t *ck = arg;
  int rc = r->rc;
  if (rc == 0) rc = bt_ckpt_commit_saved(ck->root, r, &ck->lin);
  if (rc == 0) {
    /* Retention failing costs disk, not correctness: warn and go on. */
    int removed = 0, e = bt_ckpt_retain(ck->root, &ck->keep, r->step, &removed);
    if (e) bt_warn("checkpoint retention in %s: %s", ck->root, bt_strerror(e));
  }
  ck->commit_rc = rc;
  ck->commit_step = r->step;
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
    ck->writer_cpu_s = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The texts stored in every shard, the tensor list, and the writer with its
 * snapshot buffer touched now, so the first save costs training a memcpy
 * rather than page faults. Returns a negative code on failure. */
static int ckpt_start_writer(ckpt_t *ck, const train_args_t *a) {
  int rc;
  ck->commit_step = -1;
  if ((rc = bt_ckpt_writer_create(&ck->writer, ck->root, &a->ck.opts, committed, ck))) return rc;
  return bt_ckpt_writer_reserve(ck->writer, ck->sc.desc, ck->sc.n, CKPT_TIMEOUT_MS);
}

static void ckpt_close(ckpt_t *ck) {
  bt_ckpt_writer_destroy(ck->writer);
  if (ck->src_open) bt_ckpt_step_close(&ck->src);
  if (ck->locked) {
    /* The writer is joined and we hold the lock: a step directory without
     * a manifest (a failed save) can never be completed now. */
    int removed = 0;
    if (bt_ckpt_remove_debris(ck->root, &removed) == 0 && removed > 0)
      bt_info("checkpoint: removed %d step director%s that never committed", removed,
              removed == 1 ? "y" : "ies");
    bt_ckpt_lock_release(&ck->lock);
  }
  bt_stage_ckpt_free(&ck->sc);
}

/* Collects the pending save once the writer has saved and committed it
 * (waits at most timeout_ms; 0 only polls). Returns 0, or the save's or the
 * commit's negative code. */
static int ckpt_commit_pending(ckpt_t *ck, int64_t timeout_ms) {
  if (ck->pending < 0) return 0;
  int rc = bt_ckpt_writer_wait(ck->writer, timeout_ms, NULL);
  if (rc == BT_ETIMEOUT && timeout_ms == 0) return 0;
  if (rc) return rc;
  if (ck->commit_step != ck->pending) return BT_EARG;
  if (ck->commit_rc) return ck->commit_rc;
  ck->newest = ck->pending;
  ck->pending = -1;
  return 0;
}

/* Saves the state after `done` updates: the copy into the writer's
 * snapshot is all training waits for. */
static int ckpt_save(ckpt_t *ck, bt_stage_t *st, int64_t done) {
  int rc = ckpt_commit_pending(ck, CKPT_TIMEOUT_MS);
  if (rc) return rc;
  rc = bt_stage_ckpt_save(&ck->sc, st, ck->writer, done, NULL, NULL, CKPT_TIMEOUT_MS, NULL);
  if (!rc) ck->pending = done;
  return rc;
}

/* One line for a failed save or commit; returns the exit code. Non-finite
 * parameters have their own code: rerunning replays the same bits. */
static int ckpt_failed(int rc, int64_t step) {
  if (rc == BT_ENONFINITE) {
    fprintf(stderr, "baton train: step %lld: the parameters hold NaN or Inf; checkpoint not "
            "committed\n", (long long)step);
    return 3;
  }
  fprintf(stderr, "baton train: checkpoint of step %lld: %s\n", (long long)step, bt_strerror(rc));
  return 1;
}

/* Training finished but its last save did not commit: as in `baton run`,
 * the final state is lost and scripts must be able to tell (exit 80, the
 * newest committed step said last). Non-finite parameters keep exit 3. */
static int final_save_failed(ckpt_t *ck, int rc, int64_t steps) {
  if (rc == BT_ENONFINITE) return ckpt_failed(rc, steps);
  snprintf(ck->closing, sizeof ck->closing,
           "baton train: finished step %lld, but its checkpoint was not committed: the newest committed step "
           "is %lld (%s)\n",
           (long long)steps, (long long)ck->newest, bt_strerror(rc));
  return BT_EXIT_UNCOMMITTED;
}

static int write_metrics(FILE *f, bt_json_t *j, int64_t step, double loss, double lr,
                         double tokens_per_s, double elapsed) {
  bt_json_reset(j);
  bt_json_obj_begin(j);
  bt_json_kint(j, "step", step);
  bt_json_knum(j, "loss", loss);
  bt_json_knum(j, "lr", lr);
  bt_json_knum(j, "tokens_per_s", tokens_per_s);
  bt_json_knum(j, "elapsed_s", elapsed);
  bt_json_obj_end(j);
  if (bt_json_error(j)) return bt_json_error(j);
  errno = 0;
  if (fprintf(f, "%s\n", bt_json_cstr(j)) < 0 || fflush(f) != 0) return errno ? -errno : -EIO;
  return 0;
}

/* The parameter hash of every layer of the stage. */
static int stage_hash(bt_stage_t *st, char hex[33]) {
  bt_hash_rec_t *recs = NULL;
  size_t got = 0;
  bt_hash128_t h;
  int rc = bt_stage_ckpt_hash(st, &recs, &got);
  if (!rc) rc = bt_hash_combine(recs, got, &h);
  if (!rc) bt_hash_hex(h, hex);
  free(recs);
  return rc;
}

/* One step as a single stage runs it: F then B per micro-batch, in order. */
static int train_step(bt_stage_t *st, int64_t step, int M) {
  int rc = bt_stage_begin_step(st, step);
  for (int mb = 0; mb < M && !rc; mb++) {
    rc = bt_stage_forward(st, 0, mb);
    if (!rc) rc = bt_stage_backward(st, 0, mb);
  }
  if (!rc) rc = bt_stage_optimizer_step(st);
  return rc;
}

/* The progress and closing lines; the closing one averages the last steps. */
static void final_line(const double *window, int nwin, double last, int64_t start, int64_t steps,
                       double seconds, double tokens) {
  int k = nwin < FINAL_WINDOW ? nwin : FINAL_WINDOW;
  if (!k) {
    printf("nothing to train: the checkpoint is at step %lld, --steps is %lld\n",
           (long long)start, (long long)steps);
    return;
  }
  double sum = 0;
  for (int i = 0; i < k; i++) sum += window[i];
  int64_t ran = steps - start;
  printf("final loss %.6f (mean of the last %d steps) last %.6f, %lld steps in %.1f s, %.0f "
         "tokens/s\n",
         sum / k, k, last, (long long)ran, seconds,
         seconds > 0 ? tokens * (double)ran / seconds : 0.0);
}

/* The run's description line: the entropies tell the user (and the
 * tests) what loss the model can reach. */
static void describe(const train_args_t *a, bt_stage_t *st) {
  const bt_model_config_t *m = &a->cfg.model;
  const bt_data_t *d = bt_stage_data(st);
  printf("baton train: L=%d D=%d K=%d M=%d T=%d, %llu parameters, backend %s, data %s\n",
         m->layers, m->dim, m->context, m->microbatches, m->mb_tokens,
         (unsigned long long)bt_model_param_count(m), a->cfg.run.backend, m->data);
  if (bt_data_is_synthetic(d))
    printf("data entropy_rate %.6f unigram_entropy %.6f (nats/byte)\n",
           bt_data_entropy_rate(d), bt_data_unigram_entropy(d));
  else
    printf("data unigram_entropy %.6f (nats/byte)\n", bt_data_unigram_entropy(d));
  fflush(stdout);
}

/* Trains steps start+1..steps: metrics lines, progress lines, saves every
 * --ckpt-every and the last step, then the final commit and the summary
 * line. A failed --metrics write is said once and closes *metrics (the
 * exit says so later). Returns 0, or the exit code of the failure. */
static int train_loop(const train_args_t *a, bt_stage_t *st, ckpt_t *ck, int64_t start, FILE **metrics,
                      int *metrics_failed) {
  const bt_model_config_t *m = &a->cfg.model;
  const int64_t steps = a->cfg.run.steps;
  const double tokens = (double)m->microbatches * (double)m->mb_tokens;
  double window[FINAL_WINDOW];
  int nwin = 0, rc = 0, code = 1;
  double t0 = bt_clock_s(), tlast = t0;
  int64_t slast = start;
  double loss = 0;
  bt_json_t j;
  bt_json_init(&j);
  for (int64_t s = start; s < steps; s++) {
    double ts = bt_clock_s();
    rc = train_step(st, s, m->microbatches);
    if (!rc) rc = bt_stage_loss(st, &loss);
    if (rc) {
      fprintf(stderr, "baton train: step %lld: %s\n", (long long)s + 1, bt_strerror(rc));
      goto out;
    }
    double now = bt_clock_s();
    if (!isfinite(loss)) {
      fprintf(stderr, "baton train: step %lld: the loss is not finite (%g)\n", (long long)s + 1,
              loss);
      code = 3;
      goto out;
    }
    window[nwin++ % FINAL_WINDOW] = loss;
    double lr = bt_stage_lr(m, s);
    if (*metrics) {
      double dt = now - ts;
      rc = write_metrics(*metrics, &j, s + 1, loss, lr, dt > 0 ? tokens / dt : 0, now - t0);
      if (rc) {
        /* As in `baton run`: said once, training goes on, the exit says so. */
        fprintf(stderr, "baton train: --metrics %s: %s: no more lines are written there; the job will "
                "exit 1\n", a->metrics, bt_strerror(rc));
        fclose(*metrics);
        *metrics = NULL;
        *metrics_failed = 1;
        rc = 0;
      }
    }
    if ((s + 1) % a->print_every == 0 || s + 1 == steps) {
      double dt = now - tlast;
      printf("step %lld/%lld loss %.4f lr %.3g tokens/s %.0f\n", (long long)s + 1,
             (long long)steps, loss, lr, dt > 0 ? tokens * (double)(s + 1 - slast) / dt : 0.0);
      fflush(stdout);
      tlast = now;
      slast = s + 1;
    }
    if (a->ck.dir) {
      /* The last step is always saved; others every --ckpt-every. */
      int due = s + 1 == steps || (a->ck.every && (s + 1) % a->ck.every == 0);
      double tw = bt_clock_s();
      rc = due ? ckpt_save(ck, st, s + 1) : ckpt_commit_pending(ck, 0);
      ck->loop_wait_s += bt_clock_s() - tw;
      ck->saves += due && !rc;
      if (rc) {
        code = s + 1 == steps ? final_save_failed(ck, rc, steps)
                              : ckpt_failed(rc, ck->pending >= 0 ? ck->pending : s + 1);
        goto out;
      }
    }
  }
  double tf = bt_clock_s();
  if (a->ck.dir && (rc = ckpt_commit_pending(ck, CKPT_TIMEOUT_MS))) {
    code = final_save_failed(ck, rc, steps);
    goto out;
  }
  if (a->ck.dir && ck->saves > 0)
    /* What checkpointing cost this run, measured where it is paid: the
     * training thread's waits (the snapshot copies) and the writer thread's
     * CPU (shard write, CRC, fsyncs, commit), which needs a spare core to
     * be free (docs/train-checkpoints.md). */
    bt_info("checkpoint: %d saves; the training loop waited %.2f ms per save, then %.0f ms for "
            "the last to commit; the writer thread used %.1f ms of CPU per save",
            ck->saves, 1e3 * ck->loop_wait_s / ck->saves, 1e3 * (bt_clock_s() - tf),
            1e3 * ck->writer_cpu_s / ck->saves);
  final_line(window, nwin, loss, start, steps, bt_clock_s() - t0, tokens);
  code = 0;
out:
  bt_json_free(&j);
  return code;
}

int bt_cmd_train(int argc, char **argv) {
  train_args_t a;
  memset(&a, 0, sizeof a);
  int prc = parse_args(argc, argv, &a);
  if (prc == 1) {
    usage(stdout);
    return 0;
  }
  if (prc) return 2;

  const bt_model_config_t *m = &a.cfg.model;
  int code = 1, rc = 0;
  bt_backend_t *be = NULL;
  bt_stage_t *st = NULL;
  FILE *metrics = NULL;
  int metrics_failed = 0;
  ckpt_t ck;
  memset(&ck, 0, sizeof ck);
  char why[512] = "";

  rc = bt_backend_create(a.cfg.run.backend, -1, &be, why, sizeof why);
  if (rc) {
    fprintf(stderr, "baton train: --backend %s: %s\n", a.cfg.run.backend,
            why[0] ? why : bt_strerror(rc));
    code = 2;
    goto out;
  }
  if (a.ck.dir) {
    /* The model comes from the checkpoint when there is one, so the
     * directory is read before anything is sized. */
    if ((code = ckpt_lock(&ck, &a)) || (code = ckpt_find(&ck, &a))) goto out;
    if (ck.src_open && a.ck.resume != BT_CKPT_RESUME_PATH &&
        (code = adopt_model(&a, ck.src.man.meta.model_config ? ck.src.man.meta.model_config : "", ck.src.dir)))
      goto out;
    ckpt_lineage(&ck, &a);
    code = 1;
  }
  if (a.metrics) {
    /* A resumed run adds to the lines of the runs before it; a step
     * replayed after a crash then appears twice, the later line last. */
    metrics = fopen(a.metrics, ck.src_open ? "a" : "w");
    if (!metrics) {
      fprintf(stderr, "baton train: --metrics %s: %s\n", a.metrics, strerror(errno));
      code = 2;
      goto out;
    }
  }
  bt_layer_range_t all = {0, m->layers + 1};
  rc = bt_stage_create(be, m, &all, 1, &st, why, sizeof why);
  if (rc) {
    fprintf(stderr, "baton train: %s\n", why[0] ? why : bt_strerror(rc));
    /* Out of memory is a failure; anything else here is the user's input
     * (a data file, a math mode the backend lacks). */
    code = rc == -ENOMEM ? 1 : 2;
    goto out;
  }
  /* Set-up ends here: no step allocates (or, on CUDA, frees) memory. */
  if ((rc = bt_stage_seal(st)) < 0) {
    fprintf(stderr, "baton train: sizing the backend's scratch memory: %s\n", bt_strerror(rc));
    code = 1;
    goto out;
  }
  const int64_t steps = a.cfg.run.steps;
  int64_t start = 0;
  if (a.ck.dir) {
    if ((rc = bt_stage_ckpt_init(&ck.sc, st, &a.cfg, 0, 1, 1))) {
      fprintf(stderr, "baton train: %s\n", bt_strerror(rc));
      goto out;
    }
    if (ck.src_open) {
      if ((code = ckpt_load(&ck, st, &start))) goto out;
      code = 1;
      printf("resumed from %s (step %lld)\n", ck.src.dir, (long long)start);
    }
    if (start >= steps) {
      /* A finished job: its result is the checkpoint already loaded. */
      final_line(NULL, 0, 0, start, steps, 0, 0);
      goto done;
    }
    if ((rc = ckpt_start_writer(&ck, &a))) {
      fprintf(stderr, "baton train: --ckpt-dir %s: %s\n", ck.root, bt_strerror(rc));
      goto out;
    }
  }

  describe(&a, st);
  if ((code = train_loop(&a, st, &ck, start, &metrics, &metrics_failed))) goto out;
done:
  if (a.hash) {
    char hex[33];
    rc = stage_hash(st, hex);
    if (rc) {
      fprintf(stderr, "baton train: hash: %s\n", bt_strerror(rc));
      goto out;
    }
    printf("hash %s\n", hex);
  }
  code = metrics_failed ? 1 : 0;
out:
  if (a.ck.dir) ckpt_close(&ck);
  if (ck.closing[0]) fputs(ck.closing, stderr);
  if (metrics && fclose(metrics) != 0 && code == 0) {
    fprintf(stderr, "baton train: --metrics %s: %s\n", a.metrics, strerror(errno));
    code = 1;
  }
  fflush(stdout);
  bt_stage_destroy(st);
  if (be) bt_backend_destroy(be);
  return code;
}
