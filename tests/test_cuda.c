/* test_cuda.c - the CUDA backend against its CPU twin, and its absence.
 *
 * Parity: every CUDA op runs on random inputs at several shapes, sizes that
 * are not multiples of any block size among them (1, 7, 13, 33, 1000), and
 * is compared with the CPU backend given the very same inputs:
 * |gpu - cpu| <= atol + rtol |cpu|, and a NaN or Inf must match exactly.
 * Tolerances, per op, and why:
 *
 *   op                         atol   rtol   why not exact
 *   embed fwd / bwd            0      0      same adds in the same order
 *   layernorm fwd              1e-5   1e-5   double statistics, other sum order
 *   layernorm mean, rstd       1e-6   1e-6   same
 *   layernorm bwd input        1e-5   1e-4   double row sums, other order
 *   layernorm bwd weight       0      0      same float ops, rows in order
 *   matmul fwd / bwd           1e-4   1e-4   cuBLAS and OpenBLAS sum differently
 *   matmul bias gradient       0      0      rows in order on both
 *   gelu fwd / bwd             1e-6   1e-5   CUDA's erff/expf differ by ulps
 *   residual, accumulate       0      0      one add
 *   cross-entropy losses       1e-5   1e-5   double sum, other order; expf ulps
 *   cross-entropy probs        1e-6   1e-5   same
 *   cross-entropy bwd          0      0      one subtract, one multiply
 *   adamw                      1e-7   1e-6   IEEE sqrt and divide: expected exact
 *   count_nonfinite            exact
 *
 * These tests skip, saying why, when bt_backend_create("cuda") fails (no
 * library, driver or device). The tests of the no-GPU case itself run
 * everywhere.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/error.h"
#include "kernels/backend.h"
#include "worker/stage.h"
#include "worker/transport_nccl.h"

/* ---- helpers ---- */

static uint64_t rng_state;

static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static float rnd(void) { return (float)((rng_next() >> 40) * 0x1p-23 - 1.0); }

static float *frand(size_t n, float scale) {
  float *p = malloc((n ? n : 1) * sizeof *p);
  cr_assert(p);
  for (size_t i = 0; i < n; i++) p[i] = rnd() * scale;
  return p;
}

static float *fzeros(size_t n) {
  float *p = calloc(n ? n : 1, sizeof *p);
  cr_assert(p);
  return p;
}

static uint8_t *brand(size_t n, unsigned mod) {
  uint8_t *p = malloc(n ? n : 1);
  cr_assert(p);
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rng_next() % mod);
  return p;
}

/* The library sits in the build root; the test binary in BUILD/tests. */
static void point_at_built_library(void) {
  const char *dir = getenv("BATON_BUILD_DIR");
  if (dir && *dir && !getenv("BATON_CUDA_LIB")) setenv("BATON_CUDA_LIB", dir, 1);
}

static int built_library_exists(void) {
  const char *dir = getenv("BATON_BUILD_DIR");
  if (!dir || !*dir) return 0;
  char path[4096];
  snprintf(path, sizeof path, "%s/libbaton_cuda.so", dir);
  return access(path, F_OK) == 0;
}

typedef struct {
  bt_backend_t *cpu, *gpu;
} pair_t;

static pair_t backends_or_skip(void) {
  pair_t p = {NULL, NULL};
  char why[512];
  point_at_built_library();
  int rc = bt_backend_create("cuda", 0, &p.gpu, why, sizeof why);
  if (rc < 0) cr_skip_test("no usable CUDA backend: %s", why);
  /* Parity is for the default math; TF32 would need looser tolerances. */
  cr_assert_eq(p.gpu->ops->set_math(p.gpu, "fp32"), 0);
  cr_assert_eq(bt_backend_create("cpu", 0, &p.cpu, why, sizeof why), 0, "%s", why);
  return p;
}

static void backends_free(pair_t *p) {
  bt_backend_destroy(p->gpu);
  bt_backend_destroy(p->cpu);
}

/* Device copy of host bytes. */
static void *up(bt_backend_t *g, const void *host, size_t bytes) {
  void *d = NULL;
  cr_assert_eq(g->ops->alloc(g, &d, bytes), 0);
  if (host && bytes) cr_assert_eq(g->ops->to_device(g, d, host, bytes), 0);
  return d;
}

static float *down(bt_backend_t *g, const void *dev, size_t n) {
  float *h = fzeros(n);
  cr_assert_eq(g->ops->to_host(g, h, dev, n * sizeof *h), 0);
  return h;
}

/* Compares the device tensor dev with the CPU result cpu (frees nothing). */
static void parity(bt_backend_t *g, const char *what, const void *dev, const float *cpu, size_t n,
                   double atol, double rtol) {
  float *gpu = down(g, dev, n);
  for (size_t i = 0; i < n; i++) {
    float a = gpu[i], b = cpu[i];
    if (isnan(b) || isinf(b) || !isfinite(a)) {
      cr_assert((isnan(a) && isnan(b)) || a == b, "%s[%zu]: gpu %.9g, cpu %.9g (non-finite)", what,
                i, (double)a, (double)b);
      continue;
    }
    double err = fabs((double)a - b);
    cr_assert(err <= atol + rtol * fabs(b), "%s[%zu]: gpu %.9g, cpu %.9g (err %.3g)", what, i,
              (double)a, (double)b, err);
  }
  free(gpu);
}

static void same_bits(bt_backend_t *g, const char *what, const void *d1, const void *d2,
                      size_t n) {
  float *a = down(g, d1, n), *b = down(g, d2, n);
  for (size_t i = 0; i < n; i++)
    cr_assert(memcmp(&a[i], &b[i], sizeof(float)) == 0, "%s[%zu]: %.9g vs %.9g", what, i,
              (double)a[i], (double)b[i]);
  free(a), free(b);
}

/* (rows, width, out width): odd sizes, one row, and one bigger case. */
static const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 64, 256}, {1000, 128, 33}};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

/* ---- parity ---- */

Test(cuda, embed_matches_cpu) {
  pair_t p = backends_or_skip();
  rng_state = 21;
  for (size_t s = 0; s < NSHAPES; s++) {
    int T = shapes[s][0], D = shapes[s][1], K = 1 + (int)(s % 3);
    size_t nt = (size_t)K * 256 * D, no = (size_t)T * D;
    float *tables = frand(nt, 1), *dout = frand(no, 1), *out = fzeros(no), *dt = fzeros(nt);
    uint8_t *ctx = brand((size_t)T + K, s == 3 ? 5 : 256); /* few bytes: repeats */
    float *g_tables = up(p.gpu, tables, nt * 4), *g_dout = up(p.gpu, dout, no * 4);
    uint8_t *g_ctx = up(p.gpu, ctx, (size_t)T + K);
    float *g_out = up(p.gpu, NULL, no * 4), *g_dt = up(p.gpu, dt, nt * 4);
    cr_assert_eq(p.cpu->ops->embed_forward(p.cpu, out, tables, ctx, T, K, D), 0);
    cr_assert_eq(p.gpu->ops->embed_forward(p.gpu, g_out, g_tables, g_ctx, T, K, D), 0);
    parity(p.gpu, "embed out", g_out, out, no, 0, 0);
    cr_assert_eq(p.cpu->ops->embed_backward_weight(p.cpu, dt, dout, ctx, T, K, D), 0);
    cr_assert_eq(p.gpu->ops->embed_backward_weight(p.gpu, g_dt, g_dout, g_ctx, T, K, D), 0);
    parity(p.gpu, "embed dtables", g_dt, dt, nt, 0, 0);
    p.gpu->ops->free(p.gpu, g_tables), p.gpu->ops->free(p.gpu, g_dout);
    p.gpu->ops->free(p.gpu, g_ctx), p.gpu->ops->free(p.gpu, g_out), p.gpu->ops->free(p.gpu, g_dt);
    free(tables), free(dout), free(out), free(dt), free(ctx);
  }
  backends_free(&p);
}

Test(cuda, layernorm_matches_cpu) {
  pair_t p = backends_or_skip();
  rng_state = 22;
  for (size_t s = 0; s < NSHAPES; s++) {
    int N = shapes[s][0], C = shapes[s][1];
    size_t n = (size_t)N * C;
    float *x = frand(n, 3), *w = frand(C, 1), *b = frand(C, 1), *dout = frand(n, 1);
    float *out = fzeros(n), *mean = fzeros(N), *rstd = fzeros(N), *dinp = fzeros(n);
    float *dw = frand(C, 1), *db = frand(C, 1); /* nonzero: "+=" onto a gradient */
    float *g_x = up(p.gpu, x, n * 4), *g_w = up(p.gpu, w, C * 4), *g_b = up(p.gpu, b, C * 4);
    float *g_dout = up(p.gpu, dout, n * 4), *g_out = up(p.gpu, NULL, n * 4);
    float *g_mean = up(p.gpu, NULL, N * 4), *g_rstd = up(p.gpu, NULL, N * 4);
    float *g_dinp = up(p.gpu, NULL, n * 4), *g_dw = up(p.gpu, dw, C * 4),
          *g_db = up(p.gpu, db, C * 4);
    cr_assert_eq(p.cpu->ops->layernorm_forward(p.cpu, out, mean, rstd, x, w, b, N, C), 0);
    cr_assert_eq(p.gpu->ops->layernorm_forward(p.gpu, g_out, g_mean, g_rstd, g_x, g_w, g_b, N, C),
                 0);
    parity(p.gpu, "ln out", g_out, out, n, 1e-5, 1e-5);
    parity(p.gpu, "ln mean", g_mean, mean, N, 1e-6, 1e-6);
    parity(p.gpu, "ln rstd", g_rstd, rstd, N, 1e-6, 1e-6);
    /* The backward halves get the CPU's statistics, so each op is compared
     * on identical inputs. */
    cr_assert_eq(p.gpu->ops->to_device(p.gpu, g_mean, mean, N * 4), 0);
    cr_assert_eq(p.gpu->ops->to_device(p.gpu, g_rstd, rstd, N * 4), 0);
    cr_assert_eq(p.cpu->ops->layernorm_backward_input(p.cpu, dinp, dout, x, w, mean, rstd, N, C),
                 0);
    cr_assert_eq(p.gpu->ops->layernorm_backward_input(p.gpu, g_dinp, g_dout, g_x, g_w, g_mean,
                                                      g_rstd, N, C), 0);
    parity(p.gpu, "ln dinp", g_dinp, dinp, n, 1e-5, 1e-4);
    cr_assert_eq(p.cpu->ops->layernorm_backward_weight(p.cpu, dw, db, dout, x, mean, rstd, N, C),
                 0);
    cr_assert_eq(p.gpu->ops->layernorm_backward_weight(p.gpu, g_dw, g_db, g_dout, g_x, g_mean,
                                                       g_rstd, N, C), 0);
    parity(p.gpu, "ln dweight", g_dw, dw, C, 0, 0);
    parity(p.gpu, "ln dbias", g_db, db, C, 0, 0);
    void *all[] = {g_x, g_w, g_b, g_dout, g_out, g_mean, g_rstd, g_dinp, g_dw, g_db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) p.gpu->ops->free(p.gpu, all[i]);
    free(x), free(w), free(b), free(dout), free(out), free(mean), free(rstd), free(dinp);
    free(dw), free(db);
  }
  backends_free(&p);
}

Test(cuda, matmul_matches_cpu) {
  pair_t p = backends_or_skip();
  rng_state = 23;
  for (size_t s = 0; s < NSHAPES; s++) {
    int N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
    size_t ni = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    float *x = frand(ni, 1), *w = frand(nw, 1), *bias = frand(OC, 1), *dout = frand(no, 1);
    float *out = fzeros(no), *dinp = fzeros(ni), *dw = frand(nw, 1), *db = frand(OC, 1);
    float *g_x = up(p.gpu, x, ni * 4), *g_w = up(p.gpu, w, nw * 4), *g_bias = up(p.gpu, bias, OC * 4);
    float *g_dout = up(p.gpu, dout, no * 4), *g_out = up(p.gpu, NULL, no * 4);
    float *g_dinp = up(p.gpu, NULL, ni * 4), *g_dw = up(p.gpu, dw, nw * 4),
          *g_db = up(p.gpu, db, OC * 4);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
      cr_assert_eq(p.cpu->ops->matmul_forward(p.cpu, out, x, w, with_bias ? bias : NULL, N, C, OC),
                   0);
      cr_assert_eq(p.gpu->ops->matmul_forward(p.gpu, g_out, g_x, g_w, with_bias ? g_bias : NULL, N,
                                              C, OC), 0);
      parity(p.gpu, with_bias ? "mm out" : "mm out (no bias)", g_out, out, no, 1e-4, 1e-4);
    }
    cr_assert_eq(p.cpu->ops->matmul_backward_input(p.cpu, dinp, dout, w, N, C, OC), 0);
    cr_assert_eq(p.gpu->ops->matmul_backward_input(p.gpu, g_dinp, g_dout, g_w, N, C, OC), 0);
    parity(p.gpu, "mm dinp", g_dinp, dinp, ni, 1e-4, 1e-4);
    cr_assert_eq(p.cpu->ops->matmul_backward_weight(p.cpu, dw, db, dout, x, N, C, OC), 0);
    cr_assert_eq(p.gpu->ops->matmul_backward_weight(p.gpu, g_dw, g_db, g_dout, g_x, N, C, OC), 0);
    parity(p.gpu, "mm dweight", g_dw, dw, nw, 1e-4, 1e-4);
    parity(p.gpu, "mm dbias", g_db, db, OC, 0, 0);
    void *all[] = {g_x, g_w, g_bias, g_dout, g_out, g_dinp, g_dw, g_db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) p.gpu->ops->free(p.gpu, all[i]);
    free(x), free(w), free(bias), free(dout), free(out), free(dinp), free(dw), free(db);
  }
  backends_free(&p);
}

Test(cuda, elementwise_ops_match_cpu) {
  pair_t p = backends_or_skip();
  rng_state = 24;
  const size_t sizes[] = {1, 7, 33, 1000, 100003};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    float *x = frand(n, 5), *y = frand(n, 1), *out = fzeros(n), *acc = frand(n, 1);
    x[0] = NAN; /* a NaN must stay a NaN */
    if (n > 2) x[1] = INFINITY, x[2] = -INFINITY;
    float *g_x = up(p.gpu, x, n * 4), *g_y = up(p.gpu, y, n * 4), *g_out = up(p.gpu, NULL, n * 4);
    float *g_acc = up(p.gpu, acc, n * 4);
    cr_assert_eq(p.cpu->ops->gelu_forward(p.cpu, out, x, n), 0);
    cr_assert_eq(p.gpu->ops->gelu_forward(p.gpu, g_out, g_x, n), 0);
    parity(p.gpu, "gelu out", g_out, out, n, 1e-6, 1e-5);
    cr_assert_eq(p.cpu->ops->gelu_backward(p.cpu, out, x, y, n), 0);
    cr_assert_eq(p.gpu->ops->gelu_backward(p.gpu, g_out, g_x, g_y, n), 0);
    parity(p.gpu, "gelu dinp", g_out, out, n, 1e-6, 1e-5);
    cr_assert_eq(p.cpu->ops->residual_forward(p.cpu, out, x, y, n), 0);
    cr_assert_eq(p.gpu->ops->residual_forward(p.gpu, g_out, g_x, g_y, n), 0);
    parity(p.gpu, "residual", g_out, out, n, 0, 0);
    cr_assert_eq(p.cpu->ops->accumulate(p.cpu, acc, y, n), 0);
    cr_assert_eq(p.gpu->ops->accumulate(p.gpu, g_acc, g_y, n), 0);
    parity(p.gpu, "accumulate", g_acc, acc, n, 0, 0);
    size_t cc = 0, gc = 0;
    cr_assert_eq(p.cpu->ops->count_nonfinite(p.cpu, x, n, &cc), 0);
    cr_assert_eq(p.gpu->ops->count_nonfinite(p.gpu, g_x, n, &gc), 0);
    cr_assert_eq(gc, cc, "count_nonfinite: gpu %zu, cpu %zu", gc, cc);
    p.gpu->ops->free(p.gpu, g_x), p.gpu->ops->free(p.gpu, g_y);
    p.gpu->ops->free(p.gpu, g_out), p.gpu->ops->free(p.gpu, g_acc);
    free(x), free(y), free(out), free(acc);
  }
  backends_free(&p);
}

Test(cuda, crossentropy_matches_cpu) {
  pair_t p = backends_or_skip();
  rng_state = 25;
  const int rows[] = {1, 7, 33, 1000}, widths[] = {1, 13, 256, 256};
  for (int s = 0; s < 4; s++) {
    int N = rows[s], V = widths[s];
    size_t n = (size_t)N * V;
    float *logits = frand(n, 8), *losses = fzeros(N), *probs = fzeros(n), *dl = fzeros(n);
    if (s == 3) logits[5] = 1e30f, logits[V + 7] = -1e30f; /* extreme, still finite */
    uint8_t *tg = brand(N, (unsigned)V);
    float *g_logits = up(p.gpu, logits, n * 4), *g_losses = up(p.gpu, NULL, N * 4);
    float *g_probs = up(p.gpu, NULL, n * 4), *g_dl = up(p.gpu, NULL, n * 4);
    uint8_t *g_tg = up(p.gpu, tg, N);
    cr_assert_eq(p.cpu->ops->crossentropy_forward(p.cpu, losses, probs, logits, tg, N, V), 0);
    cr_assert_eq(p.gpu->ops->crossentropy_forward(p.gpu, g_losses, g_probs, g_logits, g_tg, N, V),
                 0);
    parity(p.gpu, "ce losses", g_losses, losses, N, 1e-5, 1e-5);
    parity(p.gpu, "ce probs", g_probs, probs, n, 1e-6, 1e-5);
    cr_assert_eq(p.gpu->ops->to_device(p.gpu, g_probs, probs, n * 4), 0);
    cr_assert_eq(p.cpu->ops->crossentropy_backward(p.cpu, dl, probs, tg, 1.0f / 3, N, V), 0);
    cr_assert_eq(p.gpu->ops->crossentropy_backward(p.gpu, g_dl, g_probs, g_tg, 1.0f / 3, N, V), 0);
    parity(p.gpu, "ce dlogits", g_dl, dl, n, 0, 0);
    p.gpu->ops->free(p.gpu, g_logits), p.gpu->ops->free(p.gpu, g_losses);
    p.gpu->ops->free(p.gpu, g_probs), p.gpu->ops->free(p.gpu, g_dl), p.gpu->ops->free(p.gpu, g_tg);
    free(logits), free(losses), free(probs), free(dl), free(tg);
  }
  backends_free(&p);
}

Test(cuda, adamw_matches_cpu) {
  pair_t p = backends_or_skip();
  rng_state = 26;
  const size_t n = 100003;
  float *w = frand(n, 1), *m = fzeros(n), *v = fzeros(n);
  float *g_w = up(p.gpu, w, n * 4), *g_m = up(p.gpu, NULL, n * 4), *g_v = up(p.gpu, NULL, n * 4);
  for (int t = 1; t <= 3; t++) {
    float *g = frand(n, 1);
    float *g_g = up(p.gpu, g, n * 4);
    float bc1 = (float)(1 - pow(0.9, t)), bc2 = (float)(1 - pow(0.95, t));
    cr_assert_eq(p.cpu->ops->adamw_update(p.cpu, w, m, v, g, n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
                                          bc1, bc2), 0);
    cr_assert_eq(p.gpu->ops->adamw_update(p.gpu, g_w, g_m, g_v, g_g, n, 3e-3f, 0.9f, 0.95f, 1e-8f,
                                          0.1f, bc1, bc2), 0);
    p.gpu->ops->free(p.gpu, g_g);
    free(g);
  }
  parity(p.gpu, "adamw params", g_w, w, n, 1e-7, 1e-6);
  parity(p.gpu, "adamw m", g_m, m, n, 1e-7, 1e-6);
  parity(p.gpu, "adamw v", g_v, v, n, 1e-7, 1e-6);
  p.gpu->ops->free(p.gpu, g_w), p.gpu->ops->free(p.gpu, g_m), p.gpu->ops->free(p.gpu, g_v);
  free(w), free(m), free(v);
  backends_free(&p);
}

/* ---- determinism ---- */

/* The ops with reductions, twice on the device with the same inputs, in
 * fresh buffers: same bits. */
Test(cuda, same_inputs_give_same_bits) {
  pair_t p = backends_or_skip();
  rng_state = 27;
  enum { N = 1000, C = 256, OC = 1024, K = 3 };
  bt_backend_t *g = p.gpu;
  const bt_backend_ops_t *o = g->ops;
  float *x = frand((size_t)N * C, 1), *w = frand((size_t)OC * C, 1), *dout = frand((size_t)N * OC, 1);
  uint8_t *ctx = brand(N + K, 7);
  float *g_x = up(g, x, (size_t)N * C * 4), *g_w = up(g, w, (size_t)OC * C * 4);
  float *g_dout = up(g, dout, (size_t)N * OC * 4);
  uint8_t *g_ctx = up(g, ctx, N + K);
  float *r[2][6];
  for (int run = 0; run < 2; run++) {
    r[run][0] = up(g, NULL, (size_t)N * OC * 4);
    r[run][1] = up(g, NULL, (size_t)OC * C * 4);
    r[run][2] = up(g, NULL, (size_t)OC * 4);
    r[run][3] = up(g, NULL, (size_t)K * 256 * C * 4);
    r[run][4] = up(g, NULL, (size_t)N * C * 4);
    r[run][5] = up(g, NULL, (size_t)N * 4 * 2);
    cr_assert_eq(o->matmul_forward(g, r[run][0], g_x, g_w, NULL, N, C, OC), 0);
    cr_assert_eq(o->matmul_backward_weight(g, r[run][1], r[run][2], g_dout, g_x, N, C, OC), 0);
    cr_assert_eq(o->embed_backward_weight(g, r[run][3], g_x, g_ctx, N, K, C), 0);
    cr_assert_eq(o->layernorm_forward(g, r[run][4], r[run][5], r[run][5] + N, g_x, g_w, g_w + C,
                                      N, C), 0);
  }
  size_t sizes[6] = {(size_t)N * OC, (size_t)OC * C, OC, (size_t)K * 256 * C, (size_t)N * C,
                     (size_t)N * 2};
  for (int i = 0; i < 6; i++) {
    char what[32];
    snprintf(what, sizeof what, "result %d", i);
    same_bits(g, what, r[0][i], r[1][i], sizes[i]);
    o->free(g, r[0][i]), o->free(g, r[1][i]);
  }
  o->free(g, g_x), o->free(g, g_w), o->free(g, g_dout), o->free(g, g_ctx);
  free(x), free(w), free(dout), free(ctx);
  backends_free(&p);
}

Test(cuda, math_mode_switches_between_fp32_and_tf32) {
  pair_t p = backends_or_skip();
  cr_assert_str_eq(p.gpu->ops->math_mode(p.gpu), "fp32");
  cr_assert_eq(p.gpu->ops->set_math(p.gpu, "tf32"), 0);
  cr_assert_str_eq(p.gpu->ops->math_mode(p.gpu), "tf32");
  cr_assert_eq(p.gpu->ops->set_math(p.gpu, "bf16"), BT_EARG);
  cr_assert_str_eq(p.gpu->ops->math_mode(p.gpu), "tf32");
  backends_free(&p);
}

/* ---- without a GPU (these run everywhere) ---- */

static void assert_one_line(const char *why) {
  cr_assert(why[0], "no reason given");
  cr_assert_null(strchr(why, '\n'), "reason spans lines: %s", why);
  cr_assert(strstr(why, "CUDA"), "reason does not say CUDA: %s", why);
}

Test(cuda, no_gpu_gives_one_line_naming_what_is_missing) {
  point_at_built_library();
  bt_backend_t *be = NULL;
  char why[512];
  int rc = bt_backend_create("cuda", 0, &be, why, sizeof why);
  if (rc == 0) {
    bt_backend_destroy(be);
    cr_skip_test("a CUDA device is present, so the no-GPU message cannot be seen here (by design on a GPU node)");
  }
  cr_assert_eq(rc, BT_EBACKEND, "rc %d (%s): %s", rc, bt_strerror(rc), why);
  assert_one_line(why);
  if (built_library_exists()) {
    /* The library loaded, so the reason is the driver or the device. */
    cr_assert(strstr(why, "no CUDA driver") || strstr(why, "no CUDA device") ||
                  strstr(why, "no usable CUDA driver"),
              "reason: %s", why);
  } else {
    cr_assert(strstr(why, "libbaton_cuda.so"), "reason: %s", why);
  }
}

Test(cuda, missing_library_is_named) {
  setenv("BATON_CUDA_LIB", "/nonexistent-baton-dir", 1);
  bt_backend_t *be = NULL;
  char why[512];
  cr_assert_eq(bt_backend_create("cuda", 0, &be, why, sizeof why), BT_EBACKEND);
  assert_one_line(why);
  cr_assert_str_eq(why,
                   "CUDA library libbaton_cuda.so not found next to baton (built without CUDA?)");
}

/* What a CUDA-enabled baton on a machine without a GPU does: the CUDA
 * attempt fails cleanly and CPU work goes on in the same process. */
Test(cuda, cpu_backend_works_after_cuda_fails) {
  point_at_built_library();
  bt_backend_t *be = NULL, *cpu = NULL;
  char why[512];
  if (bt_backend_create("cuda", 0, &be, why, sizeof why) == 0) {
    bt_backend_destroy(be);
    cr_skip_test("a CUDA device is present (by design on a GPU node)");
  }
  cr_assert_eq(bt_backend_create("cpu", 0, &cpu, why, sizeof why), 0, "%s", why);
  float x[6] = {1, 2, 3, 4, 5, 6}, w[2 * 3] = {1, 0, 0, 0, 1, 1}, out[4];
  cr_assert_eq(cpu->ops->matmul_forward(cpu, out, x, w, NULL, 2, 3, 2), 0);
  cr_assert_eq(out[0], 1.0f);
  cr_assert_eq(out[1], 5.0f);
  cr_assert_eq(out[2], 4.0f);
  cr_assert_eq(out[3], 11.0f);
  bt_backend_destroy(cpu);
}

/* NCCL is loaded only by a run that uses it: creating the CUDA backend
 * (whether or not a GPU is there) maps libbaton_cuda.so and never NCCL, so
 * the compute backend works where NCCL is missing or cannot load. */
Test(cuda, the_backend_does_not_load_nccl) {
  point_at_built_library();
  if (!built_library_exists()) cr_skip_test("built without CUDA: no library to load");
  bt_backend_t *be = NULL;
  char why[512];
  if (bt_backend_create("cuda", 0, &be, why, sizeof why) == 0) bt_backend_destroy(be);
  FILE *f = fopen("/proc/self/maps", "r");
  cr_assert(f);
  char line[1024];
  int cuda = 0, nccl = 0;
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "libbaton_cuda.so")) cuda = 1;
    if (strstr(line, "libnccl") || strstr(line, "libbaton_nccl.so")) nccl = 1;
  }
  fclose(f);
  cr_assert(cuda, "libbaton_cuda.so was not loaded (%s)", why);
  cr_assert_not(nccl, "creating the CUDA backend loaded NCCL");
}

/* Host copies larger than the 4 MiB bounce buffer, to and from pageable
 * memory (through the bounce buffer, every piece's wait bounded) and
 * page-locked memory (directly), arrive exactly. */
Test(cuda, host_copies_through_the_bounce_buffer_are_exact) {
  pair_t p = backends_or_skip();
  bt_backend_t *g = p.gpu;
  const size_t n = ((size_t)9 << 20) + 3;
  uint8_t *src = brand(n, 256), *back = calloc(1, n);
  cr_assert(back);
  void *dev = NULL;
  cr_assert_eq(g->ops->alloc(g, &dev, n), 0);
  cr_assert_eq(g->ops->to_device(g, dev, src, n), 0);
  cr_assert_eq(g->ops->to_host(g, back, dev, n), 0);
  cr_assert_eq(memcmp(src, back, n), 0, "pageable round trip differs");
  void *pinned = NULL;
  cr_assert_eq(bt_tx_stage_alloc(g, n, &pinned), 0);
  cr_assert_eq(g->ops->to_host(g, pinned, dev, n), 0);
  cr_assert_eq(memcmp(src, pinned, n), 0, "page-locked copy differs");
  bt_tx_stage_free(g, pinned);
  g->ops->free(g, dev);
  free(src);
  free(back);
  backends_free(&p);
}

/* After seal the CUDA backend allocates nothing: a stage trains 2 steps
 * with the allocation counter unchanged, and alloc is refused. */
Test(cuda, a_sealed_backend_allocates_nothing_in_training) {
  pair_t p = backends_or_skip();
  bt_backend_t *g = p.gpu;
  bt_config_t c;
  bt_config_defaults(&c);
  c.model.layers = 2;
  c.model.dim = 64;
  c.model.microbatches = 2;
  c.model.mb_tokens = 32;
  bt_layer_range_t r = {0, c.model.layers + 1};
  bt_stage_t *st = NULL;
  char err[256] = "";
  cr_assert_eq(bt_stage_create(g, &c.model, &r, 1, &st, err, sizeof err), 0, "%s", err);
  cr_assert_eq(bt_stage_seal(st), 0);
  uint64_t sealed = g->allocs;
  for (int s = 0; s < 2; s++) {
    cr_assert_eq(bt_stage_begin_step(st, s), 0);
    for (int mb = 0; mb < 2; mb++) cr_assert_eq(bt_stage_forward(st, 0, mb), 0);
    for (int mb = 0; mb < 2; mb++) cr_assert_eq(bt_stage_backward(st, 0, mb), 0);
    cr_assert_eq(bt_stage_optimizer_step(st), 0);
  }
  cr_assert_eq(g->ops->sync(g), 0);
  cr_assert_eq(g->allocs, sealed, "%llu device allocations during training",
               (unsigned long long)(g->allocs - sealed));
  void *d = NULL;
  cr_assert_eq(g->ops->alloc(g, &d, 64), BT_EUNSUPPORTED);
  bt_stage_destroy(st);
  backends_free(&p);
}
