/* bench_train.c - `baton train`'s step against PyTorch eager and against
 * bare matrix products, on the CPU, one thread each.
 *
 * For D = 128, 256 and 512 (the other model settings at their defaults),
 * in rounds that interleave the three programs so that a neighbour's load
 * hits them alike:
 *   baton  the stage code `baton train` runs (one chunk, F then B per
 *          micro-batch, AdamW): tokens/s;
 *   sgemm  bare cblas_sgemm over exactly the matrix products of those steps
 *          (same shapes, same transposes, same order, one OpenBLAS thread):
 *          the ratio of the stage's matmul GFLOP/s to this one says what
 *          the layers cost beyond their products (1.0: nothing);
 *   ops    the backend's three matrix-product ops alone (forward with its
 *          bias, input gradient, weight gradient with its bias gradient)
 *          at the model's shapes, against cblas_sgemm with the same
 *          arguments: GFLOP/s op / GFLOP/s sgemm for each half, which says
 *          what the wrapping (bias, accumulation) costs;
 *   torch  bench/torch_model.py --device cpu --threads 1, the same model and
 *          step in PyTorch eager (OPENBLAS_NUM_THREADS=1 and friends set:
 *          torch.set_num_threads alone leaves OpenBLAS's pool free), run
 *          by /usr/bin/python3 (Debian's
 *          python3-torch; BATON_TORCH_PYTHON picks another). The bench
 *          installs nothing: without torch it says so and prints the rest.
 * Each figure is the median over the rounds; the ratios baton/torch and
 * stage/sgemm come from the same run. Not a test: it asserts nothing.
 *
 * usage: bench_train [steps [rounds]]   (default 8 timed steps, 3 rounds)
 */
#include <cblas.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/torch_peer.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/error.h"
#include "common/json.h"
#include "common/model.h"
#include "common/parse.h"
#include "common/sysinfo.h"
#include "kernels/backend.h"
#include "worker/stage.h"

#define NW 3
#define MAX_ROUNDS 15
static const int widths[NW] = {128, 256, 512};

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
 * gradient dinp = dout W, weight gradient dW += dout^T in. */
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
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, D, T, 1, b->logits, V, b->x, D, 1, b->dw,
              D);
  for (int l = m->layers - 1; l >= 0; l--) {
    /* I: d(gelu out) = dout W2, d(ln out) = dh W1 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, H, D, 1, b->dx, D, b->w2, H, 0, b->h,
                H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, H, 1, b->h, H, b->w1, D, 0, b->x,
                D);
    /* W: dW2 += dout^T g, dW1 += dh^T ln */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, H, T, 1, b->dx, D, b->h, H, 1, b->dw, H);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, D, T, 1, b->h, H, b->x, D, 1, b->dw, D);
  }
}

/* Small values, so that repeated products stay finite. */
static float *filled(size_t n) {
  float *p = malloc(n * sizeof(float));
  for (size_t i = 0; p && i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) * 1e-6f - 5e-4f;
  return p;
}

typedef struct {
  bt_config_t cfg;
  bt_stage_t *st;
  gemm_bufs_t b;
  int64_t step;
  double baton[MAX_ROUNDS], sgemm[MAX_ROUNDS], torch[MAX_ROUNDS]; /* tokens/s */
  double op[3][MAX_ROUNDS];  /* forward, input gradient, weight gradient: op / sgemm */
} width_t;

/* The model's three product shapes (N, C, OC, bias?) for one width. */
static void product_shapes(const bt_model_config_t *m, int sh[3][4]) {
  int T = m->mb_tokens, D = m->dim;
  int v[3][4] = {{T, D, 4 * D, 1}, {T, 4 * D, D, 1}, {T, D, 256, 0}};
  memcpy(sh, v, sizeof v);
}

/* Seconds of `reps` passes over the three shapes: kind 0 forward, 1 input
 * gradient, 2 weight gradient; through the backend (bare = 0) or straight
 * cblas_sgemm with the arguments the CPU backend passes (bare = 1). */
static double time_products(bt_backend_t *be, width_t *w, int kind, int bare, int reps) {
  int sh[3][4];
  product_shapes(&w->cfg.model, sh);
  gemm_bufs_t *b = &w->b;
  const bt_backend_ops_t *o = be->ops;
  float *bias = b->logits, *dbias = b->logits + 4096; /* T * 256 floats: room for both */
  double t0 = bt_clock_s();
  for (int r = 0; r < reps; r++)
    for (int k = 0; k < 3; k++) {
      int N = sh[k][0], C = sh[k][1], OC = sh[k][2], hb = sh[k][3];
      float *in = b->h, *w_ = b->w1, *out = b->dw, *dout = b->x;
      if (kind == 0 && bare)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1, in, C, w_, C, 0, out, OC);
      else if (kind == 0)
        o->matmul_forward(be, out, in, w_, hb ? bias : NULL, N, C, OC);
      else if (kind == 1 && bare)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1, dout, OC, w_, C, 0, out,
                    C);
      else if (kind == 1)
        o->matmul_backward_input(be, out, dout, w_, N, C, OC);
      else if (bare)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1, dout, OC, in, C, 1, out,
                    C);
      else
        o->matmul_backward_weight(be, out, hb ? dbias : NULL, dout, in, N, C, OC);
    }
  return bt_clock_s() - t0;
}

static int width_init(bt_backend_t *be, width_t *w, int dim) {
  bt_config_defaults(&w->cfg);
  w->cfg.model.dim = dim;
  const bt_model_config_t *m = &w->cfg.model;
  char err[256] = "";
  bt_layer_range_t all = {0, m->layers + 1};
  int rc = bt_stage_create(be, m, &all, 1, &w->st, err, sizeof err);
  if (rc) {
    fprintf(stderr, "bench_train: stage: %s\n", err);
    return rc;
  }
  size_t T = (size_t)m->mb_tokens, D = (size_t)dim, H = 4 * D, V = 256;
  gemm_bufs_t *b = &w->b;
  b->x = filled(T * H); /* also the products' (T, 4D) output gradient */
  b->h = filled(T * H);
  b->w1 = filled(H * D);
  b->w2 = filled(D * H);
  b->wout = filled(V * D);
  b->logits = filled(T * V > 8192 ? T * V : 8192);
  b->dw = filled(H * D > V * D ? H * D : V * D);
  b->dx = filled(T * D);
  if (!b->x || !b->h || !b->w1 || !b->w2 || !b->wout || !b->logits || !b->dw || !b->dx) return -1;
  return 0;
}

static void width_free(width_t *w) {
  gemm_bufs_t *b = &w->b;
  free(b->x), free(b->h), free(b->w1), free(b->w2), free(b->wout), free(b->logits), free(b->dw);
  free(b->dx);
  bt_stage_destroy(w->st);
}

/* tokens/s of `steps` steps of the stage (one untimed step first). */
static int time_baton(width_t *w, int steps, double *tps) {
  const bt_model_config_t *m = &w->cfg.model;
  double t0 = 0;
  for (int k = -1; k < steps; k++, w->step++) {
    if (k == 0) t0 = bt_clock_s();
    int rc = bt_stage_begin_step(w->st, w->step);
    for (int mb = 0; mb < m->microbatches && !rc; mb++) {
      rc = bt_stage_forward(w->st, 0, mb);
      if (!rc) rc = bt_stage_backward(w->st, 0, mb);
    }
    if (!rc) rc = bt_stage_optimizer_step(w->st);
    if (rc) return rc;
  }
  *tps = (double)steps * m->microbatches * m->mb_tokens / (bt_clock_s() - t0);
  return 0;
}

static double time_sgemm(width_t *w, int steps) {
  const bt_model_config_t *m = &w->cfg.model;
  gemm_microbatch(m, &w->b);
  double t0 = bt_clock_s();
  for (int k = 0; k < steps; k++)
    for (int mb = 0; mb < m->microbatches; mb++) gemm_microbatch(m, &w->b);
  return (double)steps * m->microbatches * m->mb_tokens / (bt_clock_s() - t0);
}

/* tokens/s of PyTorch on the same model and steps; 0 and a reason in why
 * when torch cannot run. torch.set_num_threads(1) leaves the OpenBLAS
 * under Debian's torch free to start its own threads: the environment pins
 * those too. Three untimed steps, as a fresh process's allocator and
 * kernels warm up. */
static double time_torch(const char *python, const width_t *w, int steps, char *why,
                         size_t why_len) {
  const bt_model_config_t *m = &w->cfg.model;
  char args[256];
  snprintf(args, sizeof args,
           "--device cpu --threads 1 --dim %d --layers %d --context %d --mb-tokens %d --microbatches %d "
           "--steps %d --warmup-steps 3",
           m->dim, m->layers, m->context, m->mb_tokens, m->microbatches, steps);
  return bt_torch_run(python, "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1", args, 0, why,
                      why_len);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
  double s[MAX_ROUNDS];
  memcpy(s, v, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmp_double);
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

int main(int argc, char **argv) {
  int steps = 8, rounds = 3;
  if ((argc > 1 && bt_parse_int(argv[1], 1, 100000, &steps)) ||
      (argc > 2 && bt_parse_int(argv[2], 1, MAX_ROUNDS, &rounds)) || argc > 3) {
    fprintf(stderr, "usage: bench_train [timed steps >= 1 [rounds 1-%d]]\n", MAX_ROUNDS);
    return 2;
  }
  const char *python = getenv("BATON_TORCH_PYTHON");
  if (!python || !*python) python = "/usr/bin/python3";
  bt_backend_t *be = NULL;
  if (bt_backend_cpu_create(&be)) {
    fprintf(stderr, "bench_train: no CPU backend\n");
    return 1;
  }
  static width_t w[NW];
  int rc = 0;
  for (int i = 0; i < NW && !rc; i++) rc = width_init(be, &w[i], widths[i]);
  char why[512] = "";
  int have_torch = 1;
  for (int r = 0; r < rounds && !rc; r++) {
    for (int i = 0; i < NW && !rc; i++) {
      rc = time_baton(&w[i], steps, &w[i].baton[r]);
      w[i].sgemm[r] = time_sgemm(&w[i], steps);
      for (int k = 0; k < 3; k++) {
        time_products(be, &w[i], k, 0, 1); /* warm */
        double op = time_products(be, &w[i], k, 0, 4 * steps);
        double bare = time_products(be, &w[i], k, 1, 4 * steps);
        w[i].op[k][r] = bare / op;
      }
      if (have_torch) {
        w[i].torch[r] = time_torch(python, &w[i], steps, why, sizeof why);
        have_torch = w[i].torch[r] > 0;
      }
    }
  }
  if (rc) {
    fprintf(stderr, "bench_train: the stage failed: %s\n", bt_strerror(rc));
    for (int i = 0; i < NW; i++) width_free(&w[i]);
    bt_backend_destroy(be);
    return 1;
  }
  char cpu[256];
  bt_sys_cpu_model(cpu, sizeof cpu);
  const bt_model_config_t *d = &w[0].cfg.model;
  printf("bench_train: CPU %s, one thread each (OpenBLAS pinned; torch.set_num_threads(1))\n", cpu);
  printf("model: L=%d K=%d M=%d T=%d; %d timed steps, median of %d interleaved rounds\n",
         d->layers, d->context, d->microbatches, d->mb_tokens, steps, rounds);
  if (!have_torch) printf("torch: not measured: %s\n", why);
  printf("%6s %12s %12s %9s %16s %14s %8s %6s %6s %6s\n", "dim", "baton tok/s", "torch tok/s",
         "b/torch", "matmul GFLOP/s", "sgemm GFLOP/s", "ratio", "op F", "op I", "op W");
  double med[NW][6];
  for (int i = 0; i < NW; i++) {
    const bt_model_config_t *m = &w[i].cfg.model;
    double per_tok = matmul_flops(m) / m->mb_tokens * 1e-9;
    med[i][0] = median(w[i].baton, rounds);
    med[i][1] = have_torch ? median(w[i].torch, rounds) : 0;
    med[i][2] = median(w[i].sgemm, rounds);
    for (int k = 0; k < 3; k++) med[i][3 + k] = median(w[i].op[k], rounds);
    printf("%6d %12.0f %12.0f %9.3f %16.2f %14.2f %8.3f %6.3f %6.3f %6.3f\n", widths[i],
           med[i][0], med[i][1], have_torch ? med[i][0] / med[i][1] : 0.0, med[i][0] * per_tok,
           med[i][2] * per_tok, med[i][0] / med[i][2], med[i][3], med[i][4], med[i][5]);
  }
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "train");
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kint(&j, "steps", steps);
  bt_json_kint(&j, "rounds", rounds);
  if (!have_torch) bt_json_kstr(&j, "torch_skipped", why);
  bt_json_key(&j, "widths");
  bt_json_arr_begin(&j);
  for (int i = 0; i < NW; i++) {
    const bt_model_config_t *m = &w[i].cfg.model;
    double per_tok = matmul_flops(m) / m->mb_tokens * 1e-9;
    bt_json_obj_begin(&j);
    bt_json_kint(&j, "dim", widths[i]);
    bt_json_knum(&j, "tokens_per_s", med[i][0]);
    if (have_torch) {
      bt_json_knum(&j, "torch_tokens_per_s", med[i][1]);
      bt_json_knum(&j, "ratio_baton_to_torch", med[i][0] / med[i][1]);
    }
    bt_json_knum(&j, "gflops_model", med[i][0] * bt_model_flops(m) / m->mb_tokens * 1e-9);
    bt_json_knum(&j, "gflops_stage_matmul", med[i][0] * per_tok);
    bt_json_knum(&j, "gflops_sgemm", med[i][2] * per_tok);
    bt_json_knum(&j, "ratio_stage_to_sgemm", med[i][0] / med[i][2]);
    bt_json_knum(&j, "ratio_op_forward_to_sgemm", med[i][3]);
    bt_json_knum(&j, "ratio_op_input_grad_to_sgemm", med[i][4]);
    bt_json_knum(&j, "ratio_op_weight_grad_to_sgemm", med[i][5]);
    bt_json_obj_end(&j);
  }
  bt_json_arr_end(&j);
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_cstr(&j));
  bt_json_free(&j);
  for (int i = 0; i < NW; i++) width_free(&w[i]);
  bt_backend_destroy(be);
  return 0;
}
