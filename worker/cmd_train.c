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
 * goes on, and committed in-process with bt_ckpt_commit(), the function
 * the supervisor uses; a later run resumes from the newest committed step
 * that verifies (any stage count: loading reshards), after checking that
 * the model configuration matches.
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

#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/data.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/log.h"
#include "common/model.h"
#include "common/parse.h"
#include "kernels/backend.h"
#include "launcher/commands.h"
#include "worker/stage.h"

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
          "  --ckpt-dir DIR         checkpoint here, and resume from its newest committed step\n"
          "  --ckpt-every N         also save every N steps (default: only the last step)\n"
          "  --keep N               committed steps kept (default 2)\n"
          "  --help                 this text\n\n"
          "exit codes: 0 done, 1 training failed, 2 bad input, 3 non-finite loss or parameters\n");
}

typedef struct {
  bt_config_t cfg;
  int hash;
  const char *metrics;
  int64_t print_every;
  const char *ckpt_dir;
  int64_t ckpt_every;
  int keep;
} train_args_t;

/* Parses argv into a; returns 0, 1 for --help, or 2 after printing one
 * line on stderr. */
static int parse_args(int argc, char **argv, train_args_t *a) {
  char err[512];
  bt_config_defaults(&a->cfg);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
    if (!strcmp(arg, "--hash")) {
      a->hash = 1;
      continue;
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
    if (eq) value = eq + 1;
    else if (i + 1 < argc) value = argv[++i];
    else value = NULL;
    if (!value) {
      fprintf(stderr, "baton train: %s needs a value\n", name);
      return 2;
    }
    if (!strcmp(name, "--metrics")) {
      a->metrics = value;
    } else if (!strcmp(name, "--ckpt-dir")) {
      if (!*value) {
        fprintf(stderr, "baton train: --ckpt-dir: empty path\n");
        return 2;
      }
      a->ckpt_dir = value;
    } else if (!strcmp(name, "--ckpt-every")) {
      if (bt_parse_i64(value, 1, INT64_MAX, &a->ckpt_every)) {
        fprintf(stderr, "baton train: --ckpt-every: expected a whole number >= 1, got '%s'\n",
                value);
        return 2;
      }
    } else if (!strcmp(name, "--keep")) {
      if (bt_parse_int(value, 1, 1000000, &a->keep)) {
        fprintf(stderr, "baton train: --keep: expected a whole number >= 1, got '%s'\n", value);
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
  if (!a->keep) a->keep = 2;
  if ((a->ckpt_every || a->keep != 2) && !a->ckpt_dir) {
    fprintf(stderr, "baton train: --ckpt-every and --keep need --ckpt-dir\n");
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
  bt_ckpt_tensor_t *desc;  /* every tensor of the stage, data NULL */
  size_t n;
  int64_t pending;         /* saved, not yet committed; -1 none */
  char *model_text, *run_text;
  bt_ckpt_retention_t keep;
} ckpt_t;

/* How long a save or commit may take before the run gives up on it. */
#define CKPT_TIMEOUT_MS (10 * 60 * 1000)

static int fill_tensor(void *arg, size_t i, float *dst) { return bt_stage_tensor_get(arg, i, dst); }

static int ckpt_describe(ckpt_t *ck, bt_stage_t *st) {
  ck->n = bt_stage_tensor_count(st);
  ck->desc = calloc(ck->n, sizeof *ck->desc);
  if (!ck->desc) return -ENOMEM;
  for (size_t i = 0; i < ck->n; i++) {
    bt_stage_tensor_t t;
    bt_ckpt_tensor_t *d = &ck->desc[i];
    int rc = bt_stage_tensor(st, i, &t);
    if (rc) return rc;
    d->layer = (uint32_t)t.layer;
    d->index = (uint32_t)t.index;
    snprintf(d->name, sizeof d->name, "%s", t.name);
    /* bt_tensor_kind_t and bt_ckpt_kind_t number param, m, v alike. */
    d->kind = t.kind;
    d->ndim = t.ndim;
    for (int k = 0; k < t.ndim; k++) d->dims[k] = (uint64_t)t.shape[k];
  }
  return 0;
}

static char *config_text(const bt_config_t *c, int part) {
  size_t n = bt_config_to_text(c, part, NULL, 0);
  char *s = malloc(n + 1);
  if (s) bt_config_to_text(c, part, s, n + 1);
  return s;
}

/* Locks the directory and makes the writer. 2 (after one line on stderr)
 * for a directory another job holds. */
static int ckpt_open(ckpt_t *ck, const train_args_t *a, bt_stage_t *st) {
  char holder[512] = "";
  ck->root = a->ckpt_dir;
  ck->pending = -1;
  ck->keep = (bt_ckpt_retention_t){.keep_last = a->keep, .keep_every = 0};
  int rc = bt_ckpt_lock_acquire(ck->root, &ck->lock, holder, sizeof holder);
  if (rc) {
    fprintf(stderr, "baton train: --ckpt-dir %s: %s%s%s\n", ck->root, bt_strerror(rc),
            holder[0] ? ": " : "", holder);
    return rc == BT_ELOCKED ? 2 : 1;
  }
  ck->locked = 1;
  ck->model_text = config_text(&a->cfg, BT_CONFIG_MODEL);
  ck->run_text = config_text(&a->cfg, BT_CONFIG_RUN);
  if (!ck->model_text || !ck->run_text || (rc = ckpt_describe(ck, st)) ||
      (rc = bt_ckpt_writer_create(&ck->writer, ck->root, NULL, NULL, NULL))) {
    fprintf(stderr, "baton train: --ckpt-dir %s: %s\n", ck->root,
            bt_strerror(rc ? rc : -ENOMEM));
    return 1;
  }
  return 0;
}

static void ckpt_close(ckpt_t *ck) {
  bt_ckpt_writer_destroy(ck->writer);
  if (ck->locked) bt_ckpt_lock_release(&ck->lock);
  free(ck->desc);
  free(ck->model_text);
  free(ck->run_text);
}

/* Resumes from the newest committed step that verifies. *start gets the
 * step to train next (0 when there is none). Returns an exit code: 0, 2 for
 * a checkpoint of another model, 1 for one that cannot be read. */
static int ckpt_resume(ckpt_t *ck, const bt_config_t *cfg, bt_stage_t *st, int64_t *start) {
  *start = 0;
  bt_ckpt_step_t cs;
  memset(&cs, 0, sizeof cs);
  int rc = bt_ckpt_open_latest(ck->root, BT_CKPT_CHECK_CRC, &cs);
  if (rc == -ENOENT) return 0;
  if (rc) {
    fprintf(stderr, "baton train: --ckpt-dir %s: %s\n", ck->root, bt_strerror(rc));
    return 1;
  }
  /* The model configuration first: resuming another model must say which
   * setting differs, not fail on a tensor shape. */
  bt_config_t theirs;
  char err[1024] = "";
  int code = 0;
  if (bt_config_from_text(&theirs, cs.man.meta.model_config ? cs.man.meta.model_config : "",
                          err, sizeof err)) {
    fprintf(stderr, "baton train: %s: unreadable configuration: %s\n", cs.dir, err);
    code = 1;
  } else if (bt_config_model_diff(&theirs.model, &cfg->model, err, sizeof err)) {
    fprintf(stderr, "baton train: %s holds another model (checkpoint vs now: %s)\n", cs.dir,
            err);
    code = 2;
  }
  bt_ckpt_step_close(&cs);
  if (code) return code;

  size_t total = 0;
  for (size_t i = 0; i < ck->n; i++) total += bt_ckpt_numel(&ck->desc[i]);
  float *host = malloc((total ? total : 1) * sizeof(float));
  bt_ckpt_tensor_t *want = malloc(ck->n * sizeof *want);
  if (!host || !want) {
    rc = -ENOMEM;
    goto out;
  }
  size_t off = 0;
  for (size_t i = 0; i < ck->n; i++) {
    want[i] = ck->desc[i];
    want[i].data = host + off;
    off += bt_ckpt_numel(&ck->desc[i]);
  }
  rc = bt_ckpt_restore(ck->root, want, ck->n, &cs);
  if (rc) goto out;
  for (size_t i = 0; i < ck->n && !rc; i++) rc = bt_stage_tensor_set(st, i, want[i].data);
  if (!rc && cs.man.meta.adam_t != cs.man.meta.step) rc = BT_ECORRUPT;
  if (!rc) {
    bt_stage_set_opt_step(st, cs.man.meta.adam_t);
    *start = cs.man.meta.step;
    printf("resumed from %s (step %lld)\n", cs.dir, (long long)cs.man.meta.step);
  }
  bt_ckpt_step_close(&cs);
out:
  free(want);
  free(host);
  if (rc) {
    fprintf(stderr, "baton train: --ckpt-dir %s: cannot restore: %s\n", ck->root,
            bt_strerror(rc));
    return rc == BT_ECONFIG ? 2 : 1;
  }
  return 0;
}

/* Commits the pending save once the writer is done with it (waits at most
 * timeout_ms; 0 only polls). Returns 0, or a negative code. */
static int ckpt_commit_pending(ckpt_t *ck, int64_t timeout_ms) {
  if (ck->pending < 0) return 0;
  bt_ckpt_result_t last;
  int rc = bt_ckpt_writer_wait(ck->writer, timeout_ms, &last);
  if (rc == BT_ETIMEOUT && timeout_ms == 0) return 0;
  if (rc) return rc;
  if (last.rc) return last.rc;
  if (last.step != ck->pending) return BT_EARG;
  if ((rc = bt_ckpt_commit(ck->root, ck->pending, &last.shard, 1))) return rc;
  /* Retention failing costs disk, not correctness: warn and go on. */
  int removed = 0;
  if ((rc = bt_ckpt_retain(ck->root, &ck->keep, ck->pending, &removed)))
    bt_warn("checkpoint retention in %s: %s", ck->root, bt_strerror(rc));
  ck->pending = -1;
  return 0;
}

/* Saves the state after `done` updates: the copy into the writer's
 * snapshot is all training waits for. */
static int ckpt_save(ckpt_t *ck, bt_stage_t *st, const bt_model_config_t *m, int64_t done) {
  int rc = ckpt_commit_pending(ck, CKPT_TIMEOUT_MS);
  if (rc) return rc;
  size_t bad = 0;
  if ((rc = bt_stage_count_nonfinite(st, &bad))) return rc;
  if (bad) return BT_ENONFINITE;
  bt_ckpt_meta_t meta = {
      .step = done,
      .stage = 0,
      .stages = 1,
      .chunks = 1,
      .layer_count = (uint32_t)bt_model_layer_count(m),
      .seed = (uint64_t)m->seed,
      .adam_t = bt_stage_opt_step(st),
      .model_config = ck->model_text,
      .run_settings = ck->run_text,
  };
  rc = bt_ckpt_save_async_fill(ck->writer, &meta, ck->desc, ck->n, fill_tensor, st,
                               CKPT_TIMEOUT_MS);
  if (!rc) ck->pending = done;
  return rc;
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
  if (fprintf(f, "%s\n", bt_json_cstr(j)) < 0) return -EIO;
  return 0;
}

/* The parameter hash of every layer of the stage. */
static int stage_hash(bt_stage_t *st, char hex[33]) {
  size_t n = bt_stage_param_tensor_count(st), got = 0;
  bt_hash_rec_t *recs = calloc(n ? n : 1, sizeof *recs);
  if (!recs) return -ENOMEM;
  bt_hash128_t h;
  int rc = bt_stage_hash_records(st, recs, n, &got);
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
  ckpt_t ck;
  memset(&ck, 0, sizeof ck);
  bt_json_t j;
  bt_json_init(&j);
  char why[512] = "";

  rc = bt_backend_create(a.cfg.run.backend, -1, &be, why, sizeof why);
  if (rc) {
    fprintf(stderr, "baton train: --backend %s: %s\n", a.cfg.run.backend,
            why[0] ? why : bt_strerror(rc));
    code = 2;
    goto out;
  }
  if (a.metrics) {
    metrics = fopen(a.metrics, "w");
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
  int64_t start = 0;
  if (a.ckpt_dir) {
    if ((code = ckpt_open(&ck, &a, st)) || (code = ckpt_resume(&ck, &a.cfg, st, &start))) goto out;
    code = 1;
  }

  {
    /* The data description line: the entropies tell the user (and the
     * tests) what loss the model can reach. */
    const bt_data_t *d = bt_stage_data(st);
    printf("baton train: L=%d D=%d K=%d M=%d T=%d, %llu parameters, backend %s, data %s\n",
           m->layers, m->dim, m->context, m->microbatches, m->mb_tokens,
           (unsigned long long)bt_model_param_count(m), a.cfg.run.backend, m->data);
    if (bt_data_is_synthetic(d))
      printf("data entropy_rate %.6f unigram_entropy %.6f (nats/byte)\n",
             bt_data_entropy_rate(d), bt_data_unigram_entropy(d));
    else
      printf("data unigram_entropy %.6f (nats/byte)\n", bt_data_unigram_entropy(d));
  }
  fflush(stdout);

  const int64_t steps = a.cfg.run.steps;
  const double tokens = (double)m->microbatches * (double)m->mb_tokens;
  double window[FINAL_WINDOW];
  int nwin = 0;
  double t0 = bt_clock_s(), tlast = t0;
  int64_t slast = start;
  double loss = 0;
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
    if (metrics) {
      double dt = now - ts;
      rc = write_metrics(metrics, &j, s + 1, loss, lr, dt > 0 ? tokens / dt : 0, now - t0);
      if (rc) {
        fprintf(stderr, "baton train: --metrics %s: %s\n", a.metrics, bt_strerror(rc));
        goto out;
      }
    }
    if ((s + 1) % a.print_every == 0 || s + 1 == steps) {
      double dt = now - tlast;
      printf("step %lld/%lld loss %.4f lr %.3g tokens/s %.0f\n", (long long)s + 1,
             (long long)steps, loss, lr, dt > 0 ? tokens * (double)(s + 1 - slast) / dt : 0.0);
      fflush(stdout);
      tlast = now;
      slast = s + 1;
    }
    if (a.ckpt_dir) {
      /* The last step is always saved; others every --ckpt-every. */
      int due = s + 1 == steps || (a.ckpt_every && (s + 1) % a.ckpt_every == 0);
      rc = due ? ckpt_save(&ck, st, m, s + 1) : ckpt_commit_pending(&ck, 0);
      if (rc) {
        fprintf(stderr, "baton train: checkpoint: %s\n", bt_strerror(rc));
        code = rc == BT_ENONFINITE ? 3 : 1;
        goto out;
      }
    }
  }
  if (a.ckpt_dir && (rc = ckpt_commit_pending(&ck, CKPT_TIMEOUT_MS))) {
    fprintf(stderr, "baton train: checkpoint: %s\n", bt_strerror(rc));
    code = rc == BT_ENONFINITE ? 3 : 1;
    goto out;
  }
  final_line(window, nwin, loss, start, steps, bt_clock_s() - t0, tokens);
  if (a.hash) {
    char hex[33];
    rc = stage_hash(st, hex);
    if (rc) {
      fprintf(stderr, "baton train: hash: %s\n", bt_strerror(rc));
      goto out;
    }
    printf("hash %s\n", hex);
  }
  code = 0;
out:
  if (a.ckpt_dir) ckpt_close(&ck);
  if (metrics && fclose(metrics) != 0 && code == 0) {
    fprintf(stderr, "baton train: --metrics %s: %s\n", a.metrics, strerror(errno));
    code = 1;
  }
  fflush(stdout);
  bt_json_free(&j);
  bt_stage_destroy(st);
  if (be) bt_backend_destroy(be);
  return code;
}
