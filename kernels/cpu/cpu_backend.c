/* cpu_backend.c - the CPU compute backend: the readable reference.
 *
 * Every op of bt_backend_ops_t (kernels/backend.h) in plain C that the
 * compiler vectorises, plus OpenBLAS's cblas_sgemm for the three matrix
 * products. The CUDA backend is tested against these functions, and the
 * finite-difference tests check these against calculus, so they stay simple
 * rather than fast.
 *
 * Determinism (DESIGN.md §8): OpenBLAS is pinned to ONE thread when the
 * backend is created (openblas_set_num_threads(1)), so the environment's
 * OPENBLAS_NUM_THREADS changes nothing; with -ffp-contract=off and no
 * -ffast-math every loop below rounds the same way on every run. Parameter
 * gradients are summed over rows in increasing row order, then added to the
 * caller's gradient ONCE: so "+=" over micro-batches is exactly "gradient +
 * this micro-batch's sum", and two calls from a zero gradient give exactly
 * twice one call. For a matrix product of up to DIRECT_WGRAD_MAX_ROWS rows
 * that is one sgemm with beta = 1 (a single K-block); beyond, OpenBLAS
 * would add its K-blocks one by one, so the sum goes to a scratch buffer.
 *
 * Speed without giving up one binary for every node: this directory is
 * built with -O3 -fno-math-errno -fno-trapping-math (neither changes a
 * result), and the hot elementwise loops (GELU, AdamW) are cloned for
 * AVX-512, AVX2 and plain x86-64 with target_clones, picked at load time.
 *
 * Not here: threads. A backend is used by one thread at a time (its scratch
 * buffer is shared by its ops); a process that computes on two threads
 * creates two backends.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "kernels/backend.h"
#include "kernels/cpu/gelu.h"

#define LN_EPS 1e-5f
#define ALIGN 64

typedef struct cpu_state {
  float *scratch; /* parameter-gradient sums of one op, before the "+=" */
  size_t scratch_floats;
} cpu_state_t;

/* Grows the scratch to n floats; refused once the backend is sealed. */
static int scratch_grow(bt_backend_t *be, size_t n) {
  cpu_state_t *st = be->impl;
  if (st->scratch_floats < n) {
    if (be->sealed) {
      bt_error("CPU backend: an op needs %zu scratch floats, %zu were reserved at set-up", n,
               st->scratch_floats);
      return BT_EUNSUPPORTED;
    }
    void *p = NULL;
    if (posix_memalign(&p, ALIGN, n * sizeof(float)) != 0) return -ENOMEM;
    free(st->scratch);
    st->scratch = p;
    st->scratch_floats = n;
    be->allocs++;
  }
  return 0;
}

/* A scratch buffer of at least n floats, grown before seal() and kept. */
static int scratch_get(bt_backend_t *be, size_t n, float **out) {
  int rc = scratch_grow(be, n);
  if (rc < 0) return rc;
  *out = ((cpu_state_t *)be->impl)->scratch;
  return 0;
}

/* ---- memory: host memory, 64-byte aligned so loops vectorise cleanly ---- */

static int cpu_alloc(bt_backend_t *be, void **ptr, size_t bytes) {
  if (be->sealed) {
    bt_error("CPU backend: an allocation of %zu bytes after set-up", bytes);
    return BT_EUNSUPPORTED;
  }
  void *p = NULL;
  /* posix_memalign(0) may hand back NULL; callers expect a pointer. */
  size_t want = bytes ? bytes : 1;
  if (posix_memalign(&p, ALIGN, want) != 0) return -ENOMEM;
  memset(p, 0, want);
  *ptr = p;
  be->allocs++;
  return 0;
}

static void cpu_free(bt_backend_t *be, void *ptr) { free(ptr); }

static int cpu_copy(bt_backend_t *be, void *dst, const void *src, size_t bytes) {
  if (bytes) memmove(dst, src, bytes);
  return 0;
}

static int cpu_zero(bt_backend_t *be, void *ptr, size_t bytes) {
  if (bytes) memset(ptr, 0, bytes);
  return 0;
}

static int cpu_sync(bt_backend_t *be) { return 0; }

/* ---- embedding ---- */

static int cpu_embed_forward(bt_backend_t *be, float *out, const float *tables,
                             const uint8_t *ctx, int T, int K, int D) {
  if (T < 0 || K < 1 || D < 1) return BT_EARG;
  for (int t = 0; t < T; t++) {
    float *o = out + (size_t)t * D;
    /* k = 0 is the byte just before position t's target: ctx[t + K - 1]. */
    const float *row = tables + (size_t)ctx[t + K - 1] * D;
    for (int d = 0; d < D; d++) o[d] = row[d];
    for (int k = 1; k < K; k++) {
      row = tables + ((size_t)k * 256 + ctx[t + K - 1 - k]) * D;
      for (int d = 0; d < D; d++) o[d] += row[d];
    }
  }
  return 0;
}

/* Rows of one table may repeat (the same byte twice), so each table cell
 * sums its positions in increasing t; the sum goes to a scratch copy of the
 * tables' touched rows and is added once, for the reason in the header. */
static int cpu_embed_backward_weight(bt_backend_t *be, float *dtables, const float *dout,
                                     const uint8_t *ctx, int T, int K, int D) {
  if (T < 0 || K < 1 || D < 1) return BT_EARG;
  size_t n = (size_t)K * 256 * D;
  float *sum;
  size_t rows = (size_t)K * 256;
  /* The scratch holds the sums, then one mark byte per table row. */
  int rc = scratch_get(be, n + rows / sizeof(float) + 1, &sum);
  if (rc < 0) return rc;
  /* touched[k*256+b] marks the rows to fold in, so a short sequence does
   * not walk all K*256*D cells. */
  unsigned char *touched = (unsigned char *)(sum + n);
  memset(touched, 0, rows);
  for (int t = 0; t < T; t++) {
    const float *g = dout + (size_t)t * D;
    for (int k = 0; k < K; k++) {
      size_t r = (size_t)k * 256 + ctx[t + K - 1 - k];
      float *s = sum + r * D;
      if (!touched[r]) {
        touched[r] = 1;
        for (int d = 0; d < D; d++) s[d] = g[d];
      } else {
        for (int d = 0; d < D; d++) s[d] += g[d];
      }
    }
  }
  for (size_t r = 0; r < rows; r++) {
    if (!touched[r]) continue;
    float *dst = dtables + r * D;
    const float *s = sum + r * D;
    for (int d = 0; d < D; d++) dst[d] += s[d];
  }
  return 0;
}

/* ---- layernorm: statistics in double, so a row's mean does not depend on
 * how large C is relative to float's precision ---- */

static int cpu_layernorm_forward(bt_backend_t *be, float *out, float *mean, float *rstd,
                                 const float *inp, const float *weight, const float *bias,
                                 int N, int C) {
  if (N < 0 || C < 1) return BT_EARG;
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * C;
    double s = 0.0;
    for (int i = 0; i < C; i++) s += x[i];
    double m = s / C;
    double v = 0.0;
    for (int i = 0; i < C; i++) {
      double d = x[i] - m;
      v += d * d;
    }
    v /= C;
    double rs = 1.0 / sqrt(v + (double)LN_EPS);
    float *o = out + (size_t)n * C;
    /* xhat in double too: with a row far from zero, a float mean would
     * cost x - mean most of its digits. */
    for (int i = 0; i < C; i++) o[i] = (float)((x[i] - m) * rs) * weight[i] + bias[i];
    mean[n] = (float)m;
    rstd[n] = (float)rs;
  }
  return 0;
}

static int cpu_layernorm_backward_input(bt_backend_t *be, float *dinp, const float *dout,
                                        const float *inp, const float *weight,
                                        const float *mean, const float *rstd, int N, int C) {
  if (N < 0 || C < 1) return BT_EARG;
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * C;
    const float *g = dout + (size_t)n * C;
    float m = mean[n], rs = rstd[n];
    double sg = 0.0, sgx = 0.0; /* mean of dnorm and of dnorm * xhat */
    for (int i = 0; i < C; i++) {
      float dn = g[i] * weight[i];
      sg += dn;
      sgx += (double)dn * ((x[i] - m) * rs);
    }
    float mg = (float)(sg / C), mgx = (float)(sgx / C);
    float *di = dinp + (size_t)n * C;
    for (int i = 0; i < C; i++) {
      float xhat = (x[i] - m) * rs;
      di[i] = (g[i] * weight[i] - mg - xhat * mgx) * rs;
    }
  }
  return 0;
}

static int cpu_layernorm_backward_weight(bt_backend_t *be, float *dweight, float *dbias,
                                         const float *dout, const float *inp, const float *mean,
                                         const float *rstd, int N, int C) {
  if (N < 0 || C < 1) return BT_EARG;
  float *sw;
  int rc = scratch_get(be, 2 * (size_t)C, &sw);
  if (rc < 0) return rc;
  float *sb = sw + C;
  memset(sw, 0, 2 * (size_t)C * sizeof(float));
  for (int n = 0; n < N; n++) {
    const float *x = inp + (size_t)n * C;
    const float *g = dout + (size_t)n * C;
    float m = mean[n], rs = rstd[n];
    for (int i = 0; i < C; i++) {
      sw[i] += g[i] * ((x[i] - m) * rs);
      sb[i] += g[i];
    }
  }
  for (int i = 0; i < C; i++) {
    dweight[i] += sw[i];
    dbias[i] += sb[i];
  }
  return 0;
}

/* ---- linear layers through cblas_sgemm ---- */

static int cpu_matmul_forward(bt_backend_t *be, float *out, const float *inp, const float *weight,
                              const float *bias, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return BT_EARG;
  if (N == 0) return 0;
  /* beta = 0 then the bias: adding the bias inside the product (beta = 1 on
   * a bias-filled out) would round differently per K-block size. */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, 0.0f,
              out, OC);
  if (bias) {
    for (int n = 0; n < N; n++) {
      float *o = out + (size_t)n * OC;
      for (int j = 0; j < OC; j++) o[j] += bias[j];
    }
  }
  return 0;
}

static int cpu_matmul_backward_input(bt_backend_t *be, float *dinp, const float *dout,
                                     const float *weight, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return BT_EARG;
  if (N == 0) return 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C,
              0.0f, dinp, C);
  return 0;
}

/* Up to this many rows the weight gradient is ONE sgemm with beta = 1,
 * accumulating straight into dweight: OpenBLAS's K-block (GEMM_Q, above
 * 256 for sgemm on the x86-64 cores OpenBLAS 0.3 tunes) then spans all N
 * rows, so the product is summed whole before the single add, which is
 * exactly "dweight + this micro-batch's sum" (tests/test_kernels.c checks
 * it at N = 128 and 256 on the machine that runs it). Larger N would be split into K-blocks added one by one, so it
 * keeps the scratch-then-add path. */
#define DIRECT_WGRAD_MAX_ROWS 256

static void bias_grad(float *dbias, float *sb, const float *dout, int N, int OC) {
  memset(sb, 0, (size_t)OC * sizeof(float));
  for (int n = 0; n < N; n++) {
    const float *g = dout + (size_t)n * OC;
    for (int j = 0; j < OC; j++) sb[j] += g[j];
  }
  for (int j = 0; j < OC; j++) dbias[j] += sb[j];
}

static int cpu_matmul_backward_weight(bt_backend_t *be, float *dweight, float *dbias,
                                      const float *dout, const float *inp, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return BT_EARG;
  if (N == 0) return 0;
  float *s;
  if (N <= DIRECT_WGRAD_MAX_ROWS) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f,
                dweight, C);
    if (dbias) {
      int rc = scratch_get(be, (size_t)OC, &s);
      if (rc < 0) return rc;
      bias_grad(dbias, s, dout, N, OC);
    }
    return 0;
  }
  /* The product goes through the scratch buffer in bands of output rows
   * about 128 KiB large, each added to dweight while it is still in cache:
   * a whole (OC, C) scratch would be written, then read back from memory.
   * The band height depends only on C, so the call sequence, and hence the
   * bits, are the same on every run. */
  int band = 32768 / C;
  band = band < 16 ? 16 : band / 16 * 16;
  if (band > OC) band = OC;
  int rc = scratch_get(be, (size_t)band * C + (size_t)OC, &s);
  if (rc < 0) return rc;
  for (int o = 0; o < OC; o += band) {
    int rows = OC - o < band ? OC - o : band;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, C, N, 1.0f, dout + o, OC, inp, C,
                0.0f, s, C);
    float *dw = dweight + (size_t)o * C;
    size_t nb = (size_t)rows * C;
    for (size_t i = 0; i < nb; i++) dw[i] += s[i];
  }
  if (dbias) bias_grad(dbias, s + (size_t)band * C, dout, N, OC);
  return 0;
}

/* ---- GELU, exact (erf) form, as PyTorch's default: kernels/cpu/gelu.c
 * (computed in double, vectorised; the accuracy bound is in gelu.h) ---- */

static int cpu_gelu_forward(bt_backend_t *be, float *out, const float *inp, size_t n) {
  bt_cpu_gelu_forward(out, inp, n);
  return 0;
}

static int cpu_gelu_backward(bt_backend_t *be, float *dinp, const float *inp, const float *dout,
                             size_t n) {
  bt_cpu_gelu_backward(dinp, inp, dout, n);
  return 0;
}

/* ---- residual ---- */

static int cpu_residual_forward(bt_backend_t *be, float *out, const float *a, const float *b,
                                size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
  return 0;
}

static int cpu_accumulate(bt_backend_t *be, float *acc, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) acc[i] += x[i];
  return 0;
}

/* ---- softmax cross-entropy ---- */

/* Subtracting the row maximum keeps expf in range, and the loss is
 * log(sum) - (logit - max) rather than -log(prob): a target whose
 * probability underflows to 0 still gets a large finite loss, not Inf. */
static int cpu_crossentropy_forward(bt_backend_t *be, float *losses, float *probs,
                                    const float *logits, const uint8_t *targets, int N, int V) {
  if (N < 0 || V < 1 || V > 256) return BT_EARG;
  for (int n = 0; n < N; n++) {
    if (targets[n] >= V) return BT_EARG;
  }
  for (int n = 0; n < N; n++) {
    const float *x = logits + (size_t)n * V;
    float *p = probs + (size_t)n * V;
    float mx = x[0];
    for (int i = 1; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0.0;
    for (int i = 0; i < V; i++) {
      p[i] = expf(x[i] - mx);
      s += p[i];
    }
    float inv = (float)(1.0 / s);
    for (int i = 0; i < V; i++) p[i] *= inv;
    losses[n] = (float)(log(s) - (double)(x[targets[n]] - mx));
  }
  return 0;
}

static int cpu_crossentropy_backward(bt_backend_t *be, float *dlogits, const float *probs,
                                     const uint8_t *targets, float scale, int N, int V) {
  if (N < 0 || V < 1 || V > 256) return BT_EARG;
  for (int n = 0; n < N; n++) {
    if (targets[n] >= V) return BT_EARG;
  }
  for (int n = 0; n < N; n++) {
    const float *p = probs + (size_t)n * V;
    float *d = dlogits + (size_t)n * V;
    for (int i = 0; i < V; i++) d[i] = p[i] * scale;
    d[targets[n]] = (p[targets[n]] - 1.0f) * scale;
  }
  return 0;
}

/* ---- AdamW (decoupled weight decay), as llm.c and PyTorch write it;
 * cloned per ISA like GELU (the same IEEE operations on every path) ---- */

__attribute__((target_clones("avx512f", "avx2", "default")))
static int cpu_adamw_update(bt_backend_t *be, float *params, float *m, float *v,
                            const float *grads, size_t n, float lr, float beta1, float beta2,
                            float eps, float weight_decay, float bias_correction1,
                            float bias_correction2) {
  for (size_t i = 0; i < n; i++) {
    float g = grads[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    float mhat = mi / bias_correction1;
    float vhat = vi / bias_correction2;
    m[i] = mi;
    v[i] = vi;
    params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
  }
  return 0;
}

static int cpu_count_nonfinite(bt_backend_t *be, const float *x, size_t n, size_t *count) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += !isfinite(x[i]);
  *count = c;
  return 0;
}

static int cpu_set_math(bt_backend_t *be, const char *mode) {
  if (!mode) return BT_EARG;
  if (!strcmp(mode, "fp32")) return 0;
  return !strcmp(mode, "tf32") ? BT_EUNSUPPORTED : BT_EARG;
}

static const char *cpu_math_mode(bt_backend_t *be) { return "fp32"; }

static void *cpu_stream(bt_backend_t *be) { return NULL; }

static int cpu_seal(bt_backend_t *be, size_t scratch_floats) {
  int rc = scratch_grow(be, scratch_floats);
  if (rc == 0) be->sealed = 1;
  return rc;
}

static void cpu_destroy(bt_backend_t *be) {
  if (!be) return;
  cpu_state_t *st = be->impl;
  if (st) free(st->scratch);
  free(st);
  free(be);
}

static const bt_backend_ops_t cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_host = cpu_copy,
    .to_device = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .embed_forward = cpu_embed_forward,
    .embed_backward_weight = cpu_embed_backward_weight,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward_input = cpu_layernorm_backward_input,
    .layernorm_backward_weight = cpu_layernorm_backward_weight,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward_input = cpu_matmul_backward_input,
    .matmul_backward_weight = cpu_matmul_backward_weight,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .residual_forward = cpu_residual_forward,
    .accumulate = cpu_accumulate,
    .crossentropy_forward = cpu_crossentropy_forward,
    .crossentropy_backward = cpu_crossentropy_backward,
    .adamw_update = cpu_adamw_update,
    .count_nonfinite = cpu_count_nonfinite,
    .destroy = cpu_destroy,
    .set_math = cpu_set_math,
    .math_mode = cpu_math_mode,
    .stream = cpu_stream,
    .seal = cpu_seal,
};

int bt_backend_cpu_create(bt_backend_t **out) {
  int rc = 0;
  bt_backend_t *be = calloc(1, sizeof *be);
  cpu_state_t *st = calloc(1, sizeof *st);
  if (!be || !st) {
    rc = -ENOMEM;
    goto fail;
  }
  /* One BLAS thread per process, whatever OPENBLAS_NUM_THREADS says:
   * OpenBLAS splits work by thread count, and the split changes the bits. */
  openblas_set_num_threads(1);
  be->ops = &cpu_ops;
  be->impl = st;
  *out = be;
  return 0;
fail:
  free(st);
  free(be);
  return rc;
}
