/* bench_gpu.c - baton on one GPU: tokens per second of `baton train
 * --backend cuda`, the share of a step spent in matrix products, PyTorch
 * on the same model, and the two-stage pipeline on the same GPU.
 *
 * Rows, all measured in this one run on the same GPU:
 *   train      `baton train --backend cuda` (the binary), median tokens/s
 *              of the steps after the first 3 (its --metrics lines);
 *   stage      the same step in this process (worker/stage.h, the code
 *              baton train runs), timed with a device sync per step;
 *   matmul     the step's matrix products alone, replayed through the CUDA
 *              backend's matmul ops with the same shapes and order (cuBLAS
 *              sgemm; the weight-gradient op adds one elementwise sum):
 *              matmul / stage is cuBLAS's share of the step;
 *   torch      bench/torch_model.py: the same model in PyTorch eager
 *              (float32, exact GELU, AdamW with the same settings), tokens/s
 *              of its median step: train / torch (median against median)
 *              is the headline ratio;
 *   pipeline   `baton run --backend cuda --stages 2` on this one GPU
 *              against train (two stages share the GPU, so the workers
 *              move tensors through pinned host buffers and sockets, not
 *              NCCL; "not available" with the reason when the run fails).
 *
 * Without a GPU it prints "bench_gpu: skipped (reason)" and exits 0. It
 * asserts nothing; it prints a table, then one JSON line.
 *
 * usage: bench_gpu [--dim 1024] [--layers 8] [--mb-tokens 512]
 *                  [--microbatches 4] [--steps 20] [--baton PATH]
 *                  [--python PATH] [--no-torch] [--no-pipeline]
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/torch_peer.h"
#include "common/sysinfo.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/error.h"
#include "common/json.h"
#include "common/model.h"
#include "common/parse.h"
#include "kernels/backend.h"
#include "worker/stage.h"

#define SKIP_STEPS 3 /* first steps of a run left out: cuBLAS and allocator warm-up */

typedef struct {
  int dim, layers, mb_tokens, microbatches, steps;
  const char *baton, *python;
  int no_torch, no_pipeline;
} opts_t;

/* The first line a command prints (popen), or "" . */
static void first_line(const char *cmd, char *out, size_t cap) {
  out[0] = '\0';
  FILE *p = popen(cmd, "r");
  if (!p) return;
  if (fgets(out, (int)cap, p)) out[strcspn(out, "\n")] = '\0';
  while (fgetc(p) != EOF) continue;
  pclose(p);
}

static void dir_of_exe(char *out, size_t cap) {
  ssize_t k = readlink("/proc/self/exe", out, cap - 1);
  if (k < 0) k = 0;
  out[k] = '\0';
  char *slash = strrchr(out, '/');
  if (slash) *slash = '\0';
  else snprintf(out, cap, ".");
}

/* ---- running the binary ---- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median tokens_per_s of a --metrics file's steps after SKIP_STEPS;
 * 0 when there are none. */
static double metrics_median(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  double v[4096];
  int n = 0, line_no = 0;
  char line[2048];
  while (fgets(line, sizeof line, f) && n < 4096) {
    char *p = strstr(line, "\"tokens_per_s\":");
    if (!p) continue;
    if (line_no++ < SKIP_STEPS) continue;
    v[n++] = strtod(p + 15, NULL);
  }
  fclose(f);
  if (!n) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Runs `baton ARGS --metrics FILE`; returns the median tokens/s, or 0 with
 * the first line of its standard error in why. */
static double run_baton(const opts_t *o, const char *dir, const char *name, const char *args,
                        char *why, size_t why_len) {
  char metrics[PATH_MAX], log[PATH_MAX], cmd[3 * PATH_MAX];
  snprintf(metrics, sizeof metrics, "%s/%s.jsonl", dir, name);
  snprintf(log, sizeof log, "%s/%s.log", dir, name);
  snprintf(cmd, sizeof cmd,
           "'%s' %s --backend cuda --dim %d --layers %d --mb-tokens %d --microbatches %d "
           "--steps %d --metrics '%s' >'%s' 2>&1",
           o->baton, args, o->dim, o->layers, o->mb_tokens, o->microbatches,
           o->steps + SKIP_STEPS, metrics, log);
  int st = system(cmd);
  double tps = metrics_median(metrics);
  if (st != 0 || tps <= 0) {
    /* The reason is the first line that says "baton". */
    snprintf(why, why_len, "exit status %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    FILE *f = fopen(log, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
      if (strstr(line, "baton")) {
        line[strcspn(line, "\n")] = '\0';
        snprintf(why, why_len, "%s", line);
        break;
      }
    if (f) fclose(f);
    return 0;
  }
  return tps;
}

/* ---- in process: the stage, and its matrix products alone ---- */

typedef struct {
  float *x, *h, *w1, *w2, *wout, *logits, *dw, *dx;
} dbufs_t;

/* The products of one micro-batch, as kernels/model.c issues them through
 * the backend (forward, then I and W per block in reverse). */
static int matmul_microbatch(bt_backend_t *be, const bt_model_config_t *m, dbufs_t *b) {
  const bt_backend_ops_t *op = be->ops;
  int T = m->mb_tokens, D = m->dim, H = 4 * m->dim, V = 256, rc = 0;
  for (int l = 0; l < m->layers && !rc; l++) {
    rc = op->matmul_forward(be, b->h, b->x, b->w1, NULL, T, D, H);
    if (!rc) rc = op->matmul_forward(be, b->dx, b->h, b->w2, NULL, T, H, D);
  }
  if (!rc) rc = op->matmul_forward(be, b->logits, b->x, b->wout, NULL, T, D, V);
  if (!rc) rc = op->matmul_backward_input(be, b->dx, b->logits, b->wout, T, D, V);
  if (!rc) rc = op->matmul_backward_weight(be, b->dw, NULL, b->logits, b->x, T, D, V);
  for (int l = m->layers - 1; l >= 0 && !rc; l--) {
    rc = op->matmul_backward_input(be, b->h, b->dx, b->w2, T, H, D);
    if (!rc) rc = op->matmul_backward_input(be, b->x, b->h, b->w1, T, D, H);
    if (!rc) rc = op->matmul_backward_weight(be, b->dw, NULL, b->dx, b->h, T, H, D);
    if (!rc) rc = op->matmul_backward_weight(be, b->dw, NULL, b->h, b->x, T, D, H);
  }
  return rc;
}

static int stage_and_matmul(bt_backend_t *be, const opts_t *o, double *stage_s, double *mm_s,
                            char *why, size_t why_len) {
  bt_config_t cfg;
  bt_config_defaults(&cfg);
  cfg.model.dim = o->dim;
  cfg.model.layers = o->layers;
  cfg.model.mb_tokens = o->mb_tokens;
  cfg.model.microbatches = o->microbatches;
  const bt_model_config_t *m = &cfg.model;
  bt_stage_t *st = NULL;
  dbufs_t b = {0};
  float **all[] = {&b.x, &b.h, &b.w1, &b.w2, &b.wout, &b.logits, &b.dw, &b.dx};
  size_t T = (size_t)o->mb_tokens, D = (size_t)o->dim, H = 4 * D, V = 256;
  size_t sizes[] = {T * D, T * H, H * D, D * H, V * D, T * V, H * D > V * D ? H * D : V * D, T * D};
  bt_layer_range_t range = {0, m->layers + 1};
  int rc = bt_stage_create(be, m, &range, 1, &st, why, why_len);
  if (rc) goto out;
  double t0 = 0;
  for (int s = 0; s < o->steps + SKIP_STEPS && !rc; s++) {
    if (s == SKIP_STEPS) {
      if ((rc = be->ops->sync(be))) break;
      t0 = bt_clock_s();
    }
    rc = bt_stage_begin_step(st, s);
    for (int mb = 0; mb < m->microbatches && !rc; mb++) {
      rc = bt_stage_forward(st, 0, mb);
      if (!rc) rc = bt_stage_backward(st, 0, mb);
    }
    if (!rc) rc = bt_stage_optimizer_step(st);
  }
  if (!rc) rc = be->ops->sync(be);
  if (rc) {
    snprintf(why, why_len, "stage step: %s", bt_strerror(rc));
    goto out;
  }
  *stage_s = (bt_clock_s() - t0) / o->steps;
  bt_stage_destroy(st);
  st = NULL;
  /* Inputs are zeros (alloc zeroes): sgemm's speed does not depend on the
   * values. */
  for (size_t i = 0; i < sizeof all / sizeof all[0] && !rc; i++)
    rc = be->ops->alloc(be, (void **)all[i], sizes[i] * sizeof(float));
  for (int s = 0; s < o->steps + SKIP_STEPS && !rc; s++) {
    if (s == SKIP_STEPS) {
      if ((rc = be->ops->sync(be))) break;
      t0 = bt_clock_s();
    }
    for (int mb = 0; mb < m->microbatches && !rc; mb++) rc = matmul_microbatch(be, m, &b);
  }
  if (!rc) rc = be->ops->sync(be);
  if (rc) {
    snprintf(why, why_len, "matmul replay: %s", bt_strerror(rc));
    goto out;
  }
  *mm_s = (bt_clock_s() - t0) / o->steps;
out:
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    if (*all[i]) be->ops->free(be, *all[i]);
  bt_stage_destroy(st);
  return rc;
}

/* ---- PyTorch ---- */

static double run_torch(const opts_t *o, char *why, size_t why_len) {
  char args[256];
  snprintf(args, sizeof args, "--dim %d --layers %d --mb-tokens %d --microbatches %d --steps %d --warmup-steps %d",
           o->dim, o->layers, o->mb_tokens, o->microbatches, o->steps, SKIP_STEPS);
  return bt_torch_run(o->python, "", args, 1, why, why_len);
}

/* ---- main ---- */

static int parse(int argc, char **argv, opts_t *o) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int *num = !strcmp(a, "--dim")            ? &o->dim
               : !strcmp(a, "--layers")       ? &o->layers
               : !strcmp(a, "--mb-tokens")    ? &o->mb_tokens
               : !strcmp(a, "--microbatches") ? &o->microbatches
               : !strcmp(a, "--steps")        ? &o->steps
                                              : NULL;
    if (num) {
      if (!v || bt_parse_int(v, 1, 1 << 20, num)) {
        fprintf(stderr, "bench_gpu: %s needs a whole number >= 1\n", a);
        return 2;
      }
      i++;
    } else if (!strcmp(a, "--baton") && v) {
      o->baton = argv[++i];
    } else if (!strcmp(a, "--python") && v) {
      o->python = argv[++i];
    } else if (!strcmp(a, "--no-torch")) {
      o->no_torch = 1;
    } else if (!strcmp(a, "--no-pipeline")) {
      o->no_pipeline = 1;
    } else if (!strcmp(a, "--help")) {
      printf("usage: bench_gpu [--dim 1024] [--layers 8] [--mb-tokens 512] [--microbatches 4]\n"
             "                 [--steps 20] [--baton PATH] [--python PATH] [--no-torch]\n"
             "                 [--no-pipeline]\n");
      return 1;
    } else {
      fprintf(stderr, "bench_gpu: unknown option '%s' (try --help)\n", a);
      return 2;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  opts_t o = {1024, 8, 512, 4, 20, NULL, NULL, 0, 0};
  int prc = parse(argc, argv, &o);
  if (prc) return prc == 1 ? 0 : 2;
  char exe_dir[PATH_MAX], baton[PATH_MAX + 16];
  dir_of_exe(exe_dir, sizeof exe_dir);
  if (!o.baton) o.baton = getenv("BATON_BIN");
  if (!o.baton || !*o.baton) {
    snprintf(baton, sizeof baton, "%s/../baton", exe_dir);
    o.baton = baton;
  }
  if (!o.python) o.python = getenv("BATON_PYTHON") && *getenv("BATON_PYTHON")
                                ? getenv("BATON_PYTHON") : "python3";
  /* The in-process backend finds libbaton_cuda.so next to baton. */
  if (!getenv("BATON_CUDA_LIB")) {
    char libdir[PATH_MAX + 16];
    snprintf(libdir, sizeof libdir, "%s", o.baton);
    char *slash = strrchr(libdir, '/');
    if (slash) *slash = '\0';
    setenv("BATON_CUDA_LIB", slash ? libdir : ".", 1);
  }
  char why[512] = "";
  bt_backend_t *be = NULL;
  if (bt_backend_create("cuda", 0, &be, why, sizeof why) < 0) {
    printf("bench_gpu: skipped (%s)\n", why[0] ? why : "no CUDA backend");
    return 0;
  }
  if (access(o.baton, X_OK) != 0) {
    fprintf(stderr, "bench_gpu: %s is not executable (--baton PATH)\n", o.baton);
    bt_backend_destroy(be);
    return 2;
  }
  char cpu[256], gpu[256], tmp[] = "/tmp/bench_gpu.XXXXXX";
  bt_sys_cpu_model(cpu, sizeof cpu);
  first_line("nvidia-smi --query-gpu=name,driver_version --format=csv,noheader -i 0 2>/dev/null",
             gpu, sizeof gpu);
  if (!gpu[0]) snprintf(gpu, sizeof gpu, "unknown (no nvidia-smi)");
  if (!mkdtemp(tmp)) {
    fprintf(stderr, "bench_gpu: mkdtemp: %s\n", strerror(errno));
    bt_backend_destroy(be);
    return 1;
  }
  printf("bench_gpu: GPU %s; CPU %s; filesystem %s (%s)\n", gpu, cpu, bt_sys_fs_name(tmp), tmp);
  printf("model D=%d L=%d T=%d M=%d, fp32; %d timed steps after %d untimed\n\n", o.dim, o.layers,
         o.mb_tokens, o.microbatches, o.steps, SKIP_STEPS);
  fflush(stdout);

  double stage_s = 0, mm_s = 0;
  char stage_why[512] = "";
  int src = stage_and_matmul(be, &o, &stage_s, &mm_s, stage_why,
                             sizeof stage_why);
  bt_backend_destroy(be);
  double tokens_per_step = (double)o.mb_tokens * o.microbatches;

  char train_why[512] = "", run_why[512] = "", torch_why[512] = "";
  double train = run_baton(&o, tmp, "train", "train", train_why, sizeof train_why);
  double run = 0, torch = 0;
  if (o.no_pipeline)
    snprintf(run_why, sizeof run_why, "--no-pipeline");
  else
    run = run_baton(&o, tmp, "run2", "run --stages 2", run_why, sizeof run_why);
  if (o.no_torch)
    snprintf(torch_why, sizeof torch_why, "--no-torch");
  else
    torch = run_torch(&o, torch_why, sizeof torch_why);

  printf("\n%-10s %14s %10s  %s\n", "row", "tokens/s", "ratio", "note");
  if (train > 0)
    printf("%-10s %14.0f %10s  baton train --backend cuda (median step)\n", "train", train, "1.000");
  else
    printf("%-10s %14s %10s  failed: %s\n", "train", "-", "-", train_why);
  if (!src) {
    printf("%-10s %14.0f %10s  the same step in process, %.2f ms/step\n", "stage",
           tokens_per_step / stage_s, "", stage_s * 1e3);
    printf("%-10s %14s %10.3f  matmul ops alone %.2f ms/step = cuBLAS share of the step\n",
           "matmul", "", mm_s / stage_s, mm_s * 1e3);
  } else {
    printf("%-10s %14s %10s  failed: %s\n", "stage", "-", "-", stage_why);
  }
  if (torch > 0 && train > 0)
    printf("%-10s %14.0f %10.3f  PyTorch, same model (ratio: baton / torch = %.3f)\n", "torch",
           torch, torch / train, train / torch);
  else
    printf("%-10s %14s %10s  not available: %s\n", "torch", "-", "-",
           torch_why[0] ? torch_why : train_why);
  if (run > 0 && train > 0)
    printf("%-10s %14.0f %10.3f  baton run --stages 2 on this one GPU / train\n", "pipeline",
           run, run / train);
  else
    printf("%-10s %14s %10s  not available: %s\n", "pipeline", "-", "-", run_why);

  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "gpu");
  bt_json_kstr(&j, "gpu", gpu);
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kstr(&j, "filesystem", bt_sys_fs_name(tmp));
  bt_json_kint(&j, "dim", o.dim);
  bt_json_kint(&j, "layers", o.layers);
  bt_json_kint(&j, "mb_tokens", o.mb_tokens);
  bt_json_kint(&j, "microbatches", o.microbatches);
  bt_json_kint(&j, "steps", o.steps);
  bt_json_knum(&j, "train_tokens_per_s", train);
  if (!src) {
    bt_json_knum(&j, "stage_ms_per_step", stage_s * 1e3);
    bt_json_knum(&j, "matmul_ms_per_step", mm_s * 1e3);
    bt_json_knum(&j, "cublas_share", mm_s / stage_s);
  }
  if (torch > 0) bt_json_knum(&j, "torch_tokens_per_s", torch);
  if (torch > 0 && train > 0) bt_json_knum(&j, "baton_over_torch", train / torch);
  if (run > 0 && train > 0) bt_json_knum(&j, "pipeline2_over_train", run / train);
  else bt_json_kstr(&j, "pipeline2", run_why);
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_cstr(&j));
  bt_json_free(&j);

  char rm[64];
  snprintf(rm, sizeof rm, "rm -rf '%s'", tmp);
  if (system(rm) != 0) fprintf(stderr, "bench_gpu: could not remove %s\n", tmp);
  return 0;
}
