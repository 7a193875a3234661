/* bench_train.c - how close `baton train`'s layers come to bare matrix
 * products.
 *
 * For the default width and a wider one, in one run: tokens per second of
 * the stage code that `baton train` runs (one chunk, F then B per
 * micro-batch, AdamW), the GFLOP/s that represents (flops from the model
 * description, common/model.h), and the GFLOP/s of bare cblas_sgemm over
 * exactly the matrix products of those steps (same shapes, same transposes,
 * same order, one OpenBLAS thread). The ratio stage/sgemm over the matmul
 * flops is the figure: 1.0 would mean the layers cost nothing beyond their
 * matrix products. Each measurement is the best of several repetitions, as
 * the machine is shared. Not a test: it asserts nothing.
 *
 * usage: bench_train [steps]   (default 8 timed steps per width)
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>

#include "common/sysinfo.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/json.h"
#include "common/model.h"
#include "kernels/backend.h"
#include "worker/stage.h"

#define REPS 3

/* Flops of the matrix products alone, per micro-batch (2*m*n*k each). */
static double matmul_flops(const bt_model_config_t *m) {
  double T = m->mb_tokens, D = m->dim, V = 256;
  return m->layers * 3.0 * (2 * T * D * 4 * D * 2) + 3.0 * 2 * T * D * V;
}

typedef struct {
  float *x, *h, *w1, *w2, *wout, *logits, *dw, *dx;
} gemm_bufs_t;

/* The products of one micro-batch through the model, as the CPU backend
 * issues them (kernels/cpu/cpu_backend.c): forward out = in W^T, input
 * gradient dinp = dout W, weight gradient dW = dout^T in into scratch. */
static void gemm_microbatch(const bt_model_config_t *m, gemm_bufs_t *b) {
  int T = m->mb_tokens, D = m->dim, H = 4 * m->dim, V = 256;
  for (int l = 0; l < m->layers; l++) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, H, D, 1, b->x, D, b->w1, D, 0, b->h, H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, D, H, 1, b->h, H, b->w2, H, 0, b->dx, D);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, V, D, 1, b->x, D, b->wout, D, 0,
              b->logits, V);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, V, 1, b->logits, V, b->wout, D, 0,
              b->dx, D);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, D, T, 1, b->logits, V, b->x, D, 0, b->dw,
              D);
  for (int l = m->layers - 1; l >= 0; l--) {
    /* I: d(gelu out) = dout W2, d(ln out) = dh W1 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, H, D, 1, b->dx, D, b->w2, H, 0, b->h,
                H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, H, 1, b->h, H, b->w1, D, 0, b->x,
                D);
    /* W: dW2 = dout^T g, dW1 = dh^T ln */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, H, T, 1, b->dx, D, b->h, H, 0, b->dw, H);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, D, T, 1, b->h, H, b->x, D, 0, b->dw, D);
  }
}

static float *filled(size_t n) {
  float *p = malloc(n * sizeof(float));
  for (size_t i = 0; p && i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-4f - 0.05f;
  return p;
}

typedef struct {
  int dim;
  double tokens_per_s, gflops_model, gflops_stage_matmul, gflops_sgemm, ratio;
} row_t;

static int bench_width(bt_backend_t *be, int dim, int steps, row_t *row) {
  bt_config_t cfg;
  bt_config_defaults(&cfg);
  cfg.model.dim = dim;
  const bt_model_config_t *m = &cfg.model;
  int M = m->microbatches, rc = 0;
  bt_stage_t *st = NULL;
  gemm_bufs_t b = {0};
  char err[256] = "";
  bt_layer_range_t all = {0, m->layers + 1};
  rc = bt_stage_create(be, m, &all, 1, &st, err, sizeof err);
  if (rc) {
    fprintf(stderr, "bench_train: stage: %s\n", err);
    goto out;
  }
  double best = 1e300;
  int64_t s = 0;
  for (int rep = 0; rep < REPS; rep++) {
    double t0 = bt_clock_s();
    for (int k = 0; k < steps; k++, s++) {
      rc = bt_stage_begin_step(st, s);
      for (int mb = 0; mb < M && !rc; mb++) {
        rc = bt_stage_forward(st, 0, mb);
        if (!rc) rc = bt_stage_backward(st, 0, mb);
      }
      if (!rc) rc = bt_stage_optimizer_step(st);
      if (rc) goto out;
    }
    double dt = bt_clock_s() - t0;
    if (dt < best) best = dt;
  }
  size_t T = (size_t)m->mb_tokens, D = (size_t)dim, H = 4 * D, V = 256;
  b.x = filled(T * D);
  b.h = filled(T * H);
  b.w1 = filled(H * D);
  b.w2 = filled(D * H);
  b.wout = filled(V * D);
  b.logits = filled(T * V);
  b.dw = filled(H * D > V * D ? H * D : V * D);
  b.dx = filled(T * D);
  if (!b.x || !b.h || !b.w1 || !b.w2 || !b.wout || !b.logits || !b.dw || !b.dx) {
    rc = -1;
    goto out;
  }
  double best_gemm = 1e300;
  for (int rep = 0; rep < REPS; rep++) {
    double t0 = bt_clock_s();
    for (int k = 0; k < steps; k++)
      for (int mb = 0; mb < M; mb++) gemm_microbatch(m, &b);
    double dt = bt_clock_s() - t0;
    if (dt < best_gemm) best_gemm = dt;
  }
  double n_mb = (double)steps * M;
  row->dim = dim;
  row->tokens_per_s = n_mb * (double)T / best;
  row->gflops_model = n_mb * bt_model_flops(m) / best * 1e-9;
  row->gflops_stage_matmul = n_mb * matmul_flops(m) / best * 1e-9;
  row->gflops_sgemm = n_mb * matmul_flops(m) / best_gemm * 1e-9;
  row->ratio = row->gflops_stage_matmul / row->gflops_sgemm;
out:
  free(b.x);
  free(b.h);
  free(b.w1);
  free(b.w2);
  free(b.wout);
  free(b.logits);
  free(b.dw);
  free(b.dx);
  bt_stage_destroy(st);
  return rc;
}

int main(int argc, char **argv) {
  int steps = argc > 1 ? atoi(argv[1]) : 8;
  if (steps < 1) {
    fprintf(stderr, "usage: bench_train [timed steps per width, >= 1]\n");
    return 2;
  }
  bt_backend_t *be = NULL;
  if (bt_backend_cpu_create(&be)) {
    fprintf(stderr, "bench_train: no CPU backend\n");
    return 1;
  }
  char cpu[256];
  bt_sys_cpu_model(cpu, sizeof cpu);
  const char *fs = bt_sys_fs_name(".");
  bt_config_t def;
  bt_config_defaults(&def);
  int dims[2] = {def.model.dim, 256};
  row_t rows[2];
  int rc = 0;
  for (int i = 0; i < 2 && !rc; i++) rc = bench_width(be, dims[i], steps, &rows[i]);
  bt_backend_destroy(be);
  if (rc) return 1;
  printf("bench_train: CPU %s, filesystem %s (no file I/O measured), one OpenBLAS thread\n", cpu,
         fs);
  printf("model: L=%d K=%d M=%d T=%d, %d timed steps per width, best of %d\n", def.model.layers,
         def.model.context, def.model.microbatches, def.model.mb_tokens, steps, REPS);
  printf("%6s %12s %14s %16s %14s %8s\n", "dim", "tokens/s", "model GFLOP/s", "matmul GFLOP/s",
         "sgemm GFLOP/s", "ratio");
  for (int i = 0; i < 2; i++)
    printf("%6d %12.0f %14.2f %16.2f %14.2f %8.3f\n", rows[i].dim, rows[i].tokens_per_s,
           rows[i].gflops_model, rows[i].gflops_stage_matmul, rows[i].gflops_sgemm, rows[i].ratio);
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "train");
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kstr(&j, "filesystem", fs);
  bt_json_kint(&j, "steps", steps);
  bt_json_key(&j, "widths");
  bt_json_arr_begin(&j);
  for (int i = 0; i < 2; i++) {
    bt_json_obj_begin(&j);
    bt_json_kint(&j, "dim", rows[i].dim);
    bt_json_knum(&j, "tokens_per_s", rows[i].tokens_per_s);
    bt_json_knum(&j, "gflops_model", rows[i].gflops_model);
    bt_json_knum(&j, "gflops_stage_matmul", rows[i].gflops_stage_matmul);
    bt_json_knum(&j, "gflops_sgemm", rows[i].gflops_sgemm);
    bt_json_knum(&j, "ratio_stage_to_sgemm", rows[i].ratio);
    bt_json_obj_end(&j);
  }
  bt_json_arr_end(&j);
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_cstr(&j));
  bt_json_free(&j);
  return 0;
}
