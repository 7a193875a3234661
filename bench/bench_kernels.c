/* bench_kernels.c - speed of the backends' matrix products against bare BLAS.
 *
 * For the model's block shapes (N = tokens per micro-batch, C = D, OC = 4D,
 * D in 64, 128, 256, 512) it times the CPU backend's matmul_forward (with
 * bias), matmul_backward_input and matmul_backward_weight (with bias) and,
 * in the same run, bare cblas_sgemm computing the same product, and reports
 * GFLOP/s (2 N C OC per op) and their ratio: what the backend's bias pass and
 * its scratch-then-add gradient accumulation cost over BLAS alone. Where the
 * CUDA backend loads, the same comparison against cuBLAS alone (its own
 * handle, called through the already-loaded library); otherwise it says
 * "CUDA: skipped (reason)". Prints a table, then one JSON line.
 *
 * Usage: bench_kernels [--tokens N] [--seconds S]
 *   --tokens   rows per micro-batch (default 64, baton's --mb-tokens default)
 *   --seconds  time per measurement (default 0.2), split into 15 rounds that
 *              alternate backend and baseline; the best round counts
 *
 * Not a test: it asserts nothing about speed.
 */
#include <cblas.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "common/sysinfo.h"
#include "common/error.h"
#include "common/json.h"
#include "common/parse.h"
#include "kernels/backend.h"

static const int dims[] = {64, 128, 256, 512};
#define NDIMS (sizeof dims / sizeof dims[0])
enum { OP_FWD, OP_BWD_IN, OP_BWD_W, NOPS };
#define ROUNDS 15
static const char *op_names[NOPS] = {"forward", "backward_input", "backward_weight"};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
  int N, C, OC;
  float *x, *w, *bias, *dout, *out, *dinp, *dw, *db, *tmp;
} shape_t;

/* The ops under test. kind 0: the backend; kind 1: bare BLAS. */
typedef int (*op_fn)(void *ctx, const shape_t *s, int op);

typedef struct {
  op_fn fn;
  void *ctx;
  int (*sync)(void *); /* NULL where calls complete on return */
  long iters;
  double best;
} timer_t_;

/* One timed batch of t->iters calls; keeps the best time per call. */
static int timed_batch(timer_t_ *t, const shape_t *s, int op) {
  double t0 = now_s();
  for (long i = 0; i < t->iters; i++) {
    int rc = t->fn(t->ctx, s, op);
    if (rc) return rc;
  }
  if (t->sync) {
    int rc = t->sync(t->ctx);
    if (rc) return rc;
  }
  double per = (now_s() - t0) / t->iters;
  if (per < t->best) t->best = per;
  return 0;
}

/* Sizes a batch to take at least secs / ROUNDS (the first call also warms
 * caches and sizes scratch buffers). */
static int calibrate(timer_t_ *t, const shape_t *s, int op, double secs) {
  t->iters = 1;
  t->best = 1e30;
  for (;;) {
    double t0 = now_s();
    int rc = timed_batch(t, s, op);
    if (rc) return rc;
    if (now_s() - t0 >= secs / ROUNDS) return 0;
    t->iters *= 2;
  }
}

/* The backend and its baseline in alternating rounds, so that load from
 * other processes on a shared machine falls on both alike; best of ROUNDS. */
static int time_pair(timer_t_ *a, timer_t_ *b, const shape_t *s, int op, double secs) {
  int rc;
  if ((rc = calibrate(a, s, op, secs)) || (rc = calibrate(b, s, op, secs))) return rc;
  a->best = b->best = 1e30;
  for (int r = 0; r < ROUNDS; r++)
    if ((rc = timed_batch(a, s, op)) || (rc = timed_batch(b, s, op))) return rc;
  return 0;
}

static int backend_op(void *ctx, const shape_t *s, int op) {
  bt_backend_t *be = ctx;
  switch (op) {
  case OP_FWD: return be->ops->matmul_forward(be, s->out, s->x, s->w, s->bias, s->N, s->C, s->OC);
  case OP_BWD_IN:
    return be->ops->matmul_backward_input(be, s->dinp, s->dout, s->w, s->N, s->C, s->OC);
  default:
    return be->ops->matmul_backward_weight(be, s->dw, s->db, s->dout, s->x, s->N, s->C, s->OC);
  }
}

static int backend_sync(void *ctx) {
  bt_backend_t *be = ctx;
  return be->ops->sync(be);
}

static int blas_op(void *ctx, const shape_t *s, int op) {
  switch (op) {
  case OP_FWD:
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->N, s->OC, s->C, 1.0f, s->x, s->C, s->w,
                s->C, 0.0f, s->out, s->OC);
    break;
  case OP_BWD_IN:
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->N, s->C, s->OC, 1.0f, s->dout, s->OC,
                s->w, s->C, 0.0f, s->dinp, s->C);
    break;
  default:
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->OC, s->C, s->N, 1.0f, s->dout, s->OC,
                s->x, s->C, 0.0f, s->tmp, s->C);
  }
  return 0;
}

/* ---- cuBLAS alone, through the library libbaton_cuda.so already loaded:
 * its own handle on the default stream, the same products, beta = 0 ---- */

typedef struct {
  void *handle;
  int (*sgemm)(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *A,
               int lda, const float *B, int ldb, const float *beta, float *C, int ldc);
  int (*device_sync)(void);
  int (*destroy)(void *h);
} raw_cublas_t;

static void *open_loaded(const char *const *names) {
  for (; *names; names++) {
    void *h = dlopen(*names, RTLD_NOW | RTLD_NOLOAD);
    if (!h) h = dlopen(*names, RTLD_NOW);
    if (h) return h;
  }
  return NULL;
}

static int raw_cublas_open(raw_cublas_t *r, char *why, size_t len) {
  static const char *const blas[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so", NULL};
  static const char *const rt[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so", NULL};
  void *hb = open_loaded(blas), *hr = open_loaded(rt);
  if (!hb || !hr) {
    snprintf(why, len, "cuBLAS or the CUDA runtime not loadable: %s", dlerror());
    return BT_EBACKEND;
  }
  int (*create)(void **) = NULL;
  void *p;
  if ((p = dlsym(hb, "cublasCreate_v2"))) memcpy(&create, &p, sizeof p);
  if ((p = dlsym(hb, "cublasSgemm_v2"))) memcpy(&r->sgemm, &p, sizeof p);
  if ((p = dlsym(hb, "cublasDestroy_v2"))) memcpy(&r->destroy, &p, sizeof p);
  if ((p = dlsym(hr, "cudaDeviceSynchronize"))) memcpy(&r->device_sync, &p, sizeof p);
  if (!create || !r->sgemm || !r->destroy || !r->device_sync) {
    snprintf(why, len, "cuBLAS entry points missing");
    return BT_EBACKEND;
  }
  if (create(&r->handle) != 0) {
    snprintf(why, len, "cublasCreate failed");
    return BT_EBACKEND;
  }
  return 0;
}

static int raw_op(void *ctx, const shape_t *s, int op) {
  raw_cublas_t *r = ctx;
  const float one = 1.0f, zero = 0.0f;
  enum { N_ = 0, T_ = 1 }; /* CUBLAS_OP_N, CUBLAS_OP_T */
  int st;
  switch (op) {
  case OP_FWD:
    st = r->sgemm(r->handle, T_, N_, s->OC, s->N, s->C, &one, s->w, s->C, s->x, s->C, &zero, s->out,
                  s->OC);
    break;
  case OP_BWD_IN:
    st = r->sgemm(r->handle, N_, N_, s->C, s->N, s->OC, &one, s->w, s->C, s->dout, s->OC, &zero,
                  s->dinp, s->C);
    break;
  default:
    st = r->sgemm(r->handle, N_, T_, s->C, s->OC, s->N, &one, s->x, s->C, s->dout, s->OC, &zero,
                  s->tmp, s->C);
  }
  return st ? BT_ECUDA : 0;
}

static int raw_sync(void *ctx) {
  raw_cublas_t *r = ctx;
  return r->device_sync() ? BT_ECUDA : 0;
}

/* Allocates one shape's tensors in a backend's memory, random where read. */
static int shape_alloc(bt_backend_t *be, shape_t *s, int N, int D) {
  s->N = N, s->C = D, s->OC = 4 * D;
  size_t nx = (size_t)N * D, nw = (size_t)4 * D * D, no = (size_t)N * 4 * D;
  float **bufs[] = {&s->x, &s->w, &s->bias, &s->dout, &s->out, &s->dinp, &s->dw, &s->db, &s->tmp};
  size_t counts[] = {nx, nw, 4 * (size_t)D, no, no, nx, nw, 4 * (size_t)D, nw};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    int rc = be->ops->alloc(be, (void **)bufs[i], counts[i] * sizeof(float));
    if (rc < 0) return rc;
    if (i > 3) continue; /* outputs stay zero */
    float *h = malloc(counts[i] * sizeof *h);
    if (!h) return -ENOMEM;
    unsigned x = 12345u + (unsigned)i;
    for (size_t k = 0; k < counts[i]; k++) {
      x = x * 1664525u + 1013904223u;
      h[k] = (float)((x >> 8) * 0x1p-24 - 0.5);
    }
    rc = be->ops->to_device(be, *bufs[i], h, counts[i] * sizeof(float));
    free(h);
    if (rc < 0) return rc;
  }
  return 0;
}

static void shape_free(bt_backend_t *be, shape_t *s) {
  float *bufs[] = {s->x, s->w, s->bias, s->dout, s->out, s->dinp, s->dw, s->db, s->tmp};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
    if (bufs[i]) be->ops->free(be, bufs[i]);
  memset(s, 0, sizeof *s);
}

typedef struct {
  double ours[NDIMS][NOPS], base[NDIMS][NOPS];
} results_t;

/* Times every shape and op on backend `be` against `base_fn`. */
static int run_suite(bt_backend_t *be, op_fn base_fn, void *base_ctx, int (*base_sync)(void *),
                     int N, double secs, results_t *r) {
  for (size_t d = 0; d < NDIMS; d++) {
    shape_t s = {0};
    int rc = shape_alloc(be, &s, N, dims[d]);
    for (int op = 0; rc == 0 && op < NOPS; op++) {
      double flops = 2.0 * N * s.C * s.OC;
      timer_t_ ours = {backend_op, be, strcmp(be->ops->name, "cpu") ? backend_sync : NULL, 0, 0};
      timer_t_ base = {base_fn, base_ctx, base_sync, 0, 0};
      rc = time_pair(&ours, &base, &s, op, secs);
      if (rc) break;
      r->ours[d][op] = flops / ours.best * 1e-9;
      r->base[d][op] = flops / base.best * 1e-9;
    }
    shape_free(be, &s);
    if (rc) return rc;
  }
  return 0;
}

static void print_table(const char *title, const char *base_name, int N, const results_t *r) {
  printf("\n%s (N = %d tokens, C = D, OC = 4D), GFLOP/s, best of %d\n", title, N, ROUNDS);
  printf("%5s  %-16s %12s %12s %8s\n", "D", "op", "backend", base_name, "ratio");
  for (size_t d = 0; d < NDIMS; d++)
    for (int op = 0; op < NOPS; op++)
      printf("%5d  %-16s %12.2f %12.2f %8.3f\n", dims[d], op_names[op], r->ours[d][op],
             r->base[d][op], r->ours[d][op] / r->base[d][op]);
}

static void json_results(bt_json_t *j, const char *key, int N, const results_t *r) {
  bt_json_key(j, key);
  bt_json_arr_begin(j);
  for (size_t d = 0; d < NDIMS; d++)
    for (int op = 0; op < NOPS; op++) {
      bt_json_obj_begin(j);
      bt_json_kint(j, "D", dims[d]);
      bt_json_kint(j, "N", N);
      bt_json_kint(j, "C", dims[d]);
      bt_json_kint(j, "OC", 4 * dims[d]);
      bt_json_kstr(j, "op", op_names[op]);
      bt_json_knum(j, "gflops", r->ours[d][op]);
      bt_json_knum(j, "baseline_gflops", r->base[d][op]);
      bt_json_knum(j, "ratio", r->ours[d][op] / r->base[d][op]);
      bt_json_obj_end(j);
    }
  bt_json_arr_end(j);
}

static void usage(FILE *f) {
  fprintf(f, "usage: bench_kernels [--tokens N] [--seconds S]\n"
             "  --tokens N    rows per micro-batch (default 64)\n"
             "  --seconds S   minimum time per measurement (default 0.2)\n");
}

int main(int argc, char **argv) {
  int N = 64;
  double secs = 0.2;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
      if (bt_parse_int(argv[++i], 1, 1 << 20, &N)) {
        fprintf(stderr, "bench_kernels: --tokens: not a whole number in [1, 1048576]: %s\n",
                argv[i]);
        return 2;
      }
    } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
      if (bt_parse_double(argv[++i], 0.001, 60, &secs)) {
        fprintf(stderr, "bench_kernels: --seconds: not a number in [0.001, 60]: %s\n", argv[i]);
        return 2;
      }
    } else {
      fprintf(stderr, "bench_kernels: unknown argument '%s' (try --help)\n", argv[i]);
      return 2;
    }
  }

  char cpu_name[256], why[512] = "";
  bt_sys_cpu_model(cpu_name, sizeof cpu_name);
  printf("bench_kernels: CPU %s, filesystem %s, OpenBLAS one thread\n", cpu_name, bt_sys_fs_name("."));

  /* The library sits in the build root, one level above BUILD/bench. */
  char exe[4096];
  ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 64);
  if (k > 0 && !getenv("BATON_CUDA_LIB")) {
    exe[k] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      strcpy(slash, "/..");
      setenv("BATON_CUDA_LIB", exe, 1);
    }
  }

  int rc = 1;
  bt_backend_t *cpu = NULL, *gpu = NULL;
  raw_cublas_t raw = {0};
  results_t rcpu, rgpu;
  int have_gpu = 0;
  if (bt_backend_create("cpu", 0, &cpu, why, sizeof why) < 0) {
    fprintf(stderr, "bench_kernels: %s\n", why);
    goto done;
  }
  int e = run_suite(cpu, blas_op, NULL, NULL, N, secs, &rcpu);
  if (e < 0) {
    fprintf(stderr, "bench_kernels: CPU: %s\n", bt_strerror(e));
    goto done;
  }
  print_table("CPU backend vs bare cblas_sgemm", "cblas_sgemm", N, &rcpu);

  if (bt_backend_create("cuda", 0, &gpu, why, sizeof why) == 0 &&
      raw_cublas_open(&raw, why, sizeof why) == 0) {
    e = run_suite(gpu, raw_op, &raw, raw_sync, N, secs, &rgpu);
    if (e == 0) {
      have_gpu = 1;
      print_table("CUDA backend vs cuBLAS alone", "cublasSgemm", N, &rgpu);
    } else {
      snprintf(why, sizeof why, "%s", bt_strerror(e));
    }
  }
  if (!have_gpu) printf("\nCUDA: skipped (%s)\n", why);

  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "kernels");
  bt_json_kstr(&j, "cpu", cpu_name);
  bt_json_kstr(&j, "filesystem", bt_sys_fs_name("."));
  bt_json_kint(&j, "tokens", N);
  json_results(&j, "cpu_vs_cblas", N, &rcpu);
  if (have_gpu)
    json_results(&j, "cuda_vs_cublas", N, &rgpu);
  else
    bt_json_kstr(&j, "cuda", why);
  bt_json_obj_end(&j);
  if (bt_json_error(&j) == 0) printf("%s\n", bt_json_cstr(&j));
  bt_json_free(&j);
  rc = 0;
done:
  if (raw.handle) raw.destroy(raw.handle);
  bt_backend_destroy(gpu);
  bt_backend_destroy(cpu);
  return rc;
}
