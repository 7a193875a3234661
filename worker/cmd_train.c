/* cmd_train.c - `baton train`: the model trained in one process, as ONE
 * stage holding ONE chunk with all L+2 layers (DESIGN.md §1, §8).
 *
 * It runs exactly the per-action code a pipeline worker runs
 * (worker/stage.h): for each micro-batch in increasing order, F then B, then
 * the optimizer step. That makes it the reference every `baton run` must
 * match bit for bit, whatever its stage count, schedule or layout.
 *
 * Not here: checkpoints and pipelines (`baton run`). Output: progress lines
 * on stdout; with --hash the last stdout line is `hash <32 hex>`. Exit
 * codes: 0 done, 1 a failure while training (non-finite loss, backend
 * error), 2 bad input (before anything is allocated).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/data.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/json.h"
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
          "  --help                 this text\n\n"
          "exit codes: 0 done, 1 training failed, 2 bad input\n");
}

typedef struct {
  bt_config_t cfg;
  int hash;
  const char *metrics;
  int64_t print_every;
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
  return 0;
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

  {
    bt_data_t *d = NULL;
    /* The data description line: the entropies tell the user (and the
     * tests) what loss the model can reach. */
    if (!bt_data_open(m, &d, why, sizeof why)) {
      printf("baton train: L=%d D=%d K=%d M=%d T=%d, %llu parameters, backend %s, data %s\n",
             m->layers, m->dim, m->context, m->microbatches, m->mb_tokens,
             (unsigned long long)bt_model_param_count(m), a.cfg.run.backend, m->data);
      if (bt_data_is_synthetic(d))
        printf("data entropy_rate %.6f unigram_entropy %.6f (nats/byte)\n",
               bt_data_entropy_rate(d), bt_data_unigram_entropy(d));
      else
        printf("data unigram_entropy %.6f (nats/byte)\n", bt_data_unigram_entropy(d));
      bt_data_close(d);
    }
  }
  fflush(stdout);

  const int64_t steps = a.cfg.run.steps;
  const double tokens = (double)m->microbatches * (double)m->mb_tokens;
  double window[FINAL_WINDOW];
  int nwin = 0;
  double t0 = bt_clock_s(), tlast = t0;
  int64_t slast = 0;
  double loss = 0;
  for (int64_t s = 0; s < steps; s++) {
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
  }
  {
    int k = nwin < FINAL_WINDOW ? nwin : FINAL_WINDOW;
    double sum = 0;
    for (int i = 0; i < k; i++) sum += window[i];
    double total = bt_clock_s() - t0;
    printf("final loss %.6f (mean of the last %d steps) last %.6f, %lld steps in %.1f s, %.0f "
           "tokens/s\n",
           sum / k, k, loss, (long long)steps, total,
           total > 0 ? tokens * (double)steps / total : 0.0);
  }
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
