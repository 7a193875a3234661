/* cuda_backend.cu - the CUDA compute backend (libbaton_cuda.so).
 *
 * Every op of bt_backend_ops_t (kernels/backend.h) with the CPU backend's
 * names and arguments; the stream lives in the backend's state. Matrix
 * products go to cuBLAS (float32, CUBLAS_DEFAULT_MATH; TF32 tensor cores
 * only when asked: BATON_CUDA_MATH=tf32 or ops->set_math). Everything else
 * is our own kernels, written to mirror the CPU reference
 * (kernels/cpu/cpu_backend.c) expression for expression, and built with
 * --fmad=false, so many of them give the CPU's bits outright.
 *
 * Determinism (DESIGN.md §8, for one GPU model, SM count, CUDA and cuBLAS
 * version, math mode): one stream per cuBLAS handle, a fixed cuBLAS
 * workspace (cublasSetWorkspace), and no floating-point atomics. Every
 * reduction has a fixed shape: a warp's butterfly, or one thread walking
 * rows in increasing order. The embedding's weight gradient in particular
 * is one thread per (table, byte, d) cell that walks the positions t in
 * order, never atomics racing on a repeated byte. Parameter gradients are
 * summed into a scratch buffer and added once, as on the CPU, so "+=" over
 * micro-batches means the same thing on both backends.
 *
 * Waiting: to_host, to_device and sync poll the stream with a deadline
 * (BATON_CUDA_SYNC_TIMEOUT seconds, default 60) and return BT_ETIMEOUT
 * rather than block forever on a hung kernel. A copy between the device
 * and pageable host memory would block inside cudaMemcpyAsync, outside any
 * deadline, so such copies go through a page-locked bounce buffer made at
 * creation, one bounded wait per piece; page-locked destinations (the
 * pipeline's staging twins) are copied directly.
 *
 * Memory after set-up: seal() sizes the scratch for the model and from
 * then on nothing is allocated or freed until destroy. cudaMalloc and
 * cudaFree synchronise the whole device, including NCCL kernels that wait
 * for a peer which waits for us: a scratch that grew mid-step (256·D
 * floats for the head, then 4·D² for a block) hung 1F1B on two GPUs.
 *
 * Not here: NCCL (worker/transport_nccl), which this library links for the
 * transport's later use; the choice between backends (kernels/backend.c).
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "common/error.h"
#include "common/log.h"
#include "kernels/backend.h"
}

#define WORKSPACE_BYTES ((size_t)32 << 20)
#define BOUNCE_BYTES ((size_t)4 << 20) /* page-locked staging for pageable host copies */
#define THREADS 256
#define ROWS_PER_BLOCK 4 /* warp-per-row kernels: 4 warps, 128 threads */
#define MAX_BLOCKS 65535

/* ---- error wrapping: every failure names file, line, call and message ---- */

static int cuda_check(cudaError_t e, const char *file, int line, const char *what) {
  if (e == cudaSuccess) return 0;
  bt_error("%s:%d: %s: %s", file, line, what, cudaGetErrorString(e));
  return BT_ECUDA;
}

static int cublas_check(cublasStatus_t s, const char *file, int line, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return 0;
  bt_error("%s:%d: %s: %s", file, line, what, cublasGetStatusString(s));
  return BT_ECUDA;
}

#define CUDA_TRY(call)                                              \
  do {                                                              \
    int rc_ = cuda_check((call), __FILE__, __LINE__, #call);        \
    if (rc_ < 0) return rc_;                                        \
  } while (0)
#define CUBLAS_TRY(call)                                            \
  do {                                                              \
    int rc_ = cublas_check((call), __FILE__, __LINE__, #call);      \
    if (rc_ < 0) return rc_;                                        \
  } while (0)
/* A kernel launch reports its configuration errors through the next call. */
#define LAUNCH_TRY() CUDA_TRY(cudaGetLastError())

typedef struct cuda_state {
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *workspace;            /* cuBLAS's, fixed so its algorithm choice is too */
  float *scratch;             /* parameter-gradient sums before the "+=" */
  size_t scratch_floats;
  unsigned long long *counter; /* count_nonfinite's result, on the device */
  void *bounce;               /* BOUNCE_BYTES of page-locked host memory */
  int tf32;
  double sync_timeout_s;
} cuda_state_t;

static cuda_state_t *state(bt_backend_t *be) { return (cuda_state_t *)be->impl; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ns(long ns) {
  struct timespec ts = {0, ns}, rem;
  while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
}

/* Waits for the stream with a deadline: polls, sleeping 1 us doubling to
 * 1 ms, so short waits stay short and long ones cost no CPU. */
static int stream_wait(cuda_state_t *st) {
  double deadline = now_s() + st->sync_timeout_s;
  long ns = 1000;
  for (;;) {
    cudaError_t e = cudaStreamQuery(st->stream);
    if (e == cudaSuccess) return 0;
    if (e != cudaErrorNotReady) return cuda_check(e, __FILE__, __LINE__, "cudaStreamQuery");
    if (now_s() > deadline) {
      bt_error("CUDA stream on device %d still busy after %.0f s", st->device,
               st->sync_timeout_s);
      return BT_ETIMEOUT;
    }
    sleep_ns(ns);
    ns = ns < 1000000 ? ns * 2 : 1000000;
  }
}

/* The calling thread's current device is per thread in the runtime; a
 * backend may be driven from a thread other than its creator's. */
static int enter(bt_backend_t *be) {
  CUDA_TRY(cudaSetDevice(state(be)->device));
  return 0;
}

static unsigned grid_for(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  return (unsigned)(b < MAX_BLOCKS ? b : MAX_BLOCKS);
}

/* Grows the scratch to n floats: only before seal(). Growing waits for
 * the stream first: queued kernels may still read the old buffer. */
static int scratch_grow(bt_backend_t *be, size_t n) {
  cuda_state_t *st = state(be);
  if (st->scratch_floats < n) {
    if (be->sealed) {
      bt_error("CUDA backend: an op needs %zu scratch floats, %zu were reserved at set-up "
               "(growing it now would cudaFree mid-step)", n, st->scratch_floats);
      return BT_EUNSUPPORTED;
    }
    int rc = stream_wait(st);
    if (rc < 0) return rc;
    CUDA_TRY(cudaFree(st->scratch));
    st->scratch = NULL;
    st->scratch_floats = 0;
    CUDA_TRY(cudaMalloc((void **)&st->scratch, n * sizeof(float)));
    st->scratch_floats = n;
    be->allocs++;
  }
  return 0;
}

static int scratch_get(bt_backend_t *be, size_t n, float **out) {
  int rc = scratch_grow(be, n);
  if (rc < 0) return rc;
  *out = state(be)->scratch;
  return 0;
}

/* ---- device helpers ---- */

static __device__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

static __device__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

#define GRID_STRIDE(i, n) \
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
       i += (size_t)gridDim.x * blockDim.x)

/* ---- kernels ---- */

static __global__ void embed_forward_kernel(float *out, const float *tables, const uint8_t *ctx,
                                            int T, int K, int D) {
  GRID_STRIDE(i, (size_t)T * D) {
    int t = (int)(i / D), d = (int)(i % D);
    float o = tables[(size_t)ctx[t + K - 1] * D + d];
    for (int k = 1; k < K; k++) o += tables[((size_t)k * 256 + ctx[t + K - 1 - k]) * D + d];
    out[i] = o;
  }
}

/* One thread per (k, byte, d): walks t in increasing order, so a byte that
 * repeats sums its positions in the CPU's order, with no atomics. */
static __global__ void embed_backward_weight_kernel(float *dtables, const float *dout,
                                                    const uint8_t *ctx, int T, int K, int D) {
  GRID_STRIDE(cell, (size_t)K * 256 * D) {
    int d = (int)(cell % D);
    size_t r = cell / D;
    int k = (int)(r / 256), b = (int)(r % 256);
    float s = 0.0f;
    int touched = 0;
    for (int t = 0; t < T; t++) {
      if (ctx[t + K - 1 - k] != b) continue;
      float g = dout[(size_t)t * D + d];
      s = touched ? s + g : g;
      touched = 1;
    }
    if (touched) dtables[cell] += s;
  }
}

/* One warp per row; statistics in double, as on the CPU. */
static __global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd,
                                                const float *inp, const float *weight,
                                                const float *bias, int N, int C) {
  int lane = threadIdx.x % 32;
  int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= N) return;
  const float *x = inp + (size_t)row * C;
  double s = 0.0;
  for (int i = lane; i < C; i += 32) s += x[i];
  double m = warp_sum(s) / C;
  double v = 0.0;
  for (int i = lane; i < C; i += 32) {
    double d = x[i] - m;
    v += d * d;
  }
  v = warp_sum(v) / C;
  double rs = 1.0 / sqrt(v + (double)1e-5f);
  float *o = out + (size_t)row * C;
  for (int i = lane; i < C; i += 32) o[i] = (float)((x[i] - m) * rs) * weight[i] + bias[i];
  if (lane == 0) {
    mean[row] = (float)m;
    rstd[row] = (float)rs;
  }
}

static __global__ void layernorm_backward_input_kernel(float *dinp, const float *dout,
                                                       const float *inp, const float *weight,
                                                       const float *mean, const float *rstd,
                                                       int N, int C) {
  int lane = threadIdx.x % 32;
  int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= N) return;
  const float *x = inp + (size_t)row * C;
  const float *g = dout + (size_t)row * C;
  float m = mean[row], rs = rstd[row];
  double sg = 0.0, sgx = 0.0;
  for (int i = lane; i < C; i += 32) {
    float dn = g[i] * weight[i];
    sg += dn;
    sgx += (double)dn * ((x[i] - m) * rs);
  }
  float mg = (float)(warp_sum(sg) / C), mgx = (float)(warp_sum(sgx) / C);
  float *di = dinp + (size_t)row * C;
  for (int i = lane; i < C; i += 32) {
    float xhat = (x[i] - m) * rs;
    di[i] = (g[i] * weight[i] - mg - xhat * mgx) * rs;
  }
}

/* One thread per column, rows in increasing order: the CPU's sums. */
static __global__ void layernorm_backward_weight_kernel(float *dweight, float *dbias,
                                                        const float *dout, const float *inp,
                                                        const float *mean, const float *rstd,
                                                        int N, int C) {
  GRID_STRIDE(i, (size_t)C) {
    float sw = 0.0f, sb = 0.0f;
    for (int n = 0; n < N; n++) {
      float g = dout[(size_t)n * C + i];
      sw += g * ((inp[(size_t)n * C + i] - mean[n]) * rstd[n]);
      sb += g;
    }
    dweight[i] += sw;
    dbias[i] += sb;
  }
}

static __global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
  GRID_STRIDE(i, (size_t)N * OC) out[i] += bias[i % OC];
}

static __global__ void column_sum_add_kernel(float *dbias, const float *dout, int N, int OC) {
  GRID_STRIDE(j, (size_t)OC) {
    float s = 0.0f;
    for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + j];
    dbias[j] += s;
  }
}

static __global__ void add_kernel(float *out, const float *a, const float *b, size_t n) {
  GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

static __global__ void gelu_forward_kernel(float *out, const float *inp, size_t n) {
  GRID_STRIDE(i, n) {
    float x = inp[i];
    /* Phi(x) from erfc, not 1 + erf: no cancellation for negative x, and
     * gelu(-Inf) = -0 like the CPU (x * Phi(x) would be -Inf * 0 = NaN). */
    float cdf = 0.5f * erfcf(-x * (float)M_SQRT1_2);
    out[i] = cdf == 0.0f ? -0.0f : x * cdf;
  }
}

static __global__ void gelu_backward_kernel(float *dinp, const float *inp, const float *dout,
                                            size_t n) {
  const float inv_sqrt_2pi = 0.3989422804014327f;
  GRID_STRIDE(i, n) {
    float x = inp[i];
    float cdf = 0.5f * erfcf(-x * (float)M_SQRT1_2);
    float pdf = expf(-0.5f * x * x) * inv_sqrt_2pi;
    /* gelu'(+-Inf) = 1 or 0 like the CPU: x * pdf is +-Inf * 0 there. */
    dinp[i] = (cdf + (pdf == 0.0f ? 0.0f : x * pdf)) * dout[i];
  }
}

/* One warp per row. A target outside [0, V) yields a NaN loss (the CPU
 * returns BT_EARG; here the bytes are on the device), which the trainer's
 * non-finite guard then stops on. */
static __global__ void crossentropy_forward_kernel(float *losses, float *probs,
                                                   const float *logits, const uint8_t *targets,
                                                   int N, int V) {
  int lane = threadIdx.x % 32;
  int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= N) return;
  const float *x = logits + (size_t)row * V;
  float *p = probs + (size_t)row * V;
  float mx = -INFINITY;
  for (int i = lane; i < V; i += 32) mx = fmaxf(mx, x[i]);
  mx = warp_max(mx);
  double s = 0.0;
  for (int i = lane; i < V; i += 32) {
    float e = expf(x[i] - mx);
    p[i] = e;
    s += e;
  }
  s = warp_sum(s);
  float inv = (float)(1.0 / s);
  for (int i = lane; i < V; i += 32) p[i] *= inv;
  if (lane == 0) {
    int t = targets[row];
    losses[row] = t < V ? (float)(log(s) - (double)(x[t] - mx)) : NAN;
  }
}

static __global__ void crossentropy_backward_kernel(float *dlogits, const float *probs,
                                                    const uint8_t *targets, float scale, int N,
                                                    int V) {
  GRID_STRIDE(i, (size_t)N * V) {
    size_t row = i / V;
    int c = (int)(i % V);
    float p = probs[i];
    dlogits[i] = c == targets[row] ? (p - 1.0f) * scale : p * scale;
  }
}

static __global__ void adamw_kernel(float *params, float *m, float *v, const float *grads,
                                    size_t n, float lr, float beta1, float beta2, float eps,
                                    float weight_decay, float bc1, float bc2) {
  GRID_STRIDE(i, n) {
    float g = grads[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    float mhat = mi / bc1;
    float vhat = vi / bc2;
    m[i] = mi;
    v[i] = vi;
    params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
  }
}

/* Integer counts: their atomic sum is exact in any order. */
static __global__ void count_nonfinite_kernel(unsigned long long *count, const float *x,
                                              size_t n) {
  __shared__ unsigned int part[THREADS];
  unsigned int c = 0;
  GRID_STRIDE(i, n) c += !isfinite(x[i]);
  part[threadIdx.x] = c;
  __syncthreads();
  for (int s = THREADS / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0 && part[0]) atomicAdd(count, (unsigned long long)part[0]);
}

/* ---- memory ---- */

static int cu_alloc(bt_backend_t *be, void **ptr, size_t bytes) {
  if (be->sealed) {
    bt_error("CUDA backend: an allocation of %zu bytes after set-up (cudaMalloc mid-training)",
             bytes);
    return BT_EUNSUPPORTED;
  }
  int rc = enter(be);
  if (rc < 0) return rc;
  void *p = NULL;
  CUDA_TRY(cudaMalloc(&p, bytes ? bytes : 1));
  cudaError_t e = cudaMemsetAsync(p, 0, bytes, state(be)->stream);
  if (e != cudaSuccess) {
    cudaFree(p);
    return cuda_check(e, __FILE__, __LINE__, "cudaMemsetAsync");
  }
  *ptr = p;
  be->allocs++;
  return 0;
}

static void cu_free(bt_backend_t *be, void *ptr) {
  if (!ptr || enter(be) < 0) return;
  /* cudaFree waits for the whole device, with no deadline: wait for our
   * stream first, with one, and leak the memory rather than hang when a
   * kernel never ends. */
  if (stream_wait(state(be)) < 0) return;
  cuda_check(cudaFree(ptr), __FILE__, __LINE__, "cudaFree");
}

/* Whether host memory is page-locked (cudaMallocHost or registered): a
 * copy to or from it is truly asynchronous. */
static int page_locked(const void *p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return a.type == cudaMemoryTypeHost;
}

static int cu_to_host(bt_backend_t *be, void *host_dst, const void *src, size_t bytes) {
  int rc = enter(be);
  if (rc < 0 || !bytes) return rc;
  cuda_state_t *st = state(be);
  if (page_locked(host_dst)) {
    CUDA_TRY(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, st->stream));
    return stream_wait(st);
  }
  /* Pageable: piece by piece through the bounce buffer, each piece's wait
   * bounded (a direct copy would block in the call, with no deadline). */
  for (size_t off = 0; off < bytes; off += BOUNCE_BYTES) {
    size_t n = bytes - off < BOUNCE_BYTES ? bytes - off : BOUNCE_BYTES;
    CUDA_TRY(cudaMemcpyAsync(st->bounce, (const char *)src + off, n, cudaMemcpyDeviceToHost,
                             st->stream));
    if ((rc = stream_wait(st)) < 0) return rc;
    memcpy((char *)host_dst + off, st->bounce, n);
  }
  return 0;
}

static int cu_to_device(bt_backend_t *be, void *dst, const void *host_src, size_t bytes) {
  int rc = enter(be);
  if (rc < 0 || !bytes) return rc;
  cuda_state_t *st = state(be);
  /* The caller may reuse host_src as soon as this returns: every path
   * waits for its copies. */
  if (page_locked(host_src)) {
    CUDA_TRY(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, st->stream));
    return stream_wait(st);
  }
  for (size_t off = 0; off < bytes; off += BOUNCE_BYTES) {
    size_t n = bytes - off < BOUNCE_BYTES ? bytes - off : BOUNCE_BYTES;
    /* The previous piece's copy has finished (waited below), so the
     * bounce buffer is free to refill. */
    memcpy(st->bounce, (const char *)host_src + off, n);
    CUDA_TRY(cudaMemcpyAsync((char *)dst + off, st->bounce, n, cudaMemcpyHostToDevice,
                             st->stream));
    if ((rc = stream_wait(st)) < 0) return rc;
  }
  return 0;
}

static int cu_copy(bt_backend_t *be, void *dst, const void *src, size_t bytes) {
  int rc = enter(be);
  if (rc < 0 || !bytes) return rc;
  CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, state(be)->stream));
  return 0;
}

static int cu_zero(bt_backend_t *be, void *ptr, size_t bytes) {
  int rc = enter(be);
  if (rc < 0 || !bytes) return rc;
  CUDA_TRY(cudaMemsetAsync(ptr, 0, bytes, state(be)->stream));
  return 0;
}

static int cu_sync(bt_backend_t *be) {
  int rc = enter(be);
  return rc < 0 ? rc : stream_wait(state(be));
}

/* ---- ops ---- */

static int cu_embed_forward(bt_backend_t *be, float *out, const float *tables,
                            const uint8_t *ctx, int T, int K, int D) {
  if (T < 0 || K < 1 || D < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || T == 0) return rc;
  size_t n = (size_t)T * D;
  embed_forward_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(out, tables, ctx,
                                                                               T, K, D);
  LAUNCH_TRY();
  return 0;
}

static int cu_embed_backward_weight(bt_backend_t *be, float *dtables, const float *dout,
                                    const uint8_t *ctx, int T, int K, int D) {
  if (T < 0 || K < 1 || D < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || T == 0) return rc;
  size_t n = (size_t)K * 256 * D;
  embed_backward_weight_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(
      dtables, dout, ctx, T, K, D);
  LAUNCH_TRY();
  return 0;
}

static unsigned row_blocks(int N) { return (unsigned)((N + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

static int cu_layernorm_forward(bt_backend_t *be, float *out, float *mean, float *rstd,
                                const float *inp, const float *weight, const float *bias, int N,
                                int C) {
  if (N < 0 || C < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  layernorm_forward_kernel<<<row_blocks(N), ROWS_PER_BLOCK * 32, 0, state(be)->stream>>>(
      out, mean, rstd, inp, weight, bias, N, C);
  LAUNCH_TRY();
  return 0;
}

static int cu_layernorm_backward_input(bt_backend_t *be, float *dinp, const float *dout,
                                       const float *inp, const float *weight, const float *mean,
                                       const float *rstd, int N, int C) {
  if (N < 0 || C < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  layernorm_backward_input_kernel<<<row_blocks(N), ROWS_PER_BLOCK * 32, 0, state(be)->stream>>>(
      dinp, dout, inp, weight, mean, rstd, N, C);
  LAUNCH_TRY();
  return 0;
}

static int cu_layernorm_backward_weight(bt_backend_t *be, float *dweight, float *dbias,
                                        const float *dout, const float *inp, const float *mean,
                                        const float *rstd, int N, int C) {
  if (N < 0 || C < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  layernorm_backward_weight_kernel<<<grid_for(C, THREADS), THREADS, 0, state(be)->stream>>>(
      dweight, dbias, dout, inp, mean, rstd, N, C);
  LAUNCH_TRY();
  return 0;
}

/* Row-major products through column-major cuBLAS: a row-major (R, C)
 * matrix is a column-major (C, R) one, so out = inp W^T becomes
 * out^T = W inp^T, as in llm.c. */
static int cu_matmul_forward(bt_backend_t *be, float *out, const float *inp, const float *weight,
                             const float *bias, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  cuda_state_t *st = state(be);
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_TRY(cublasSgemm(st->blas, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, weight, C, inp, C,
                         &zero, out, OC));
  if (bias) {
    size_t n = (size_t)N * OC;
    add_bias_kernel<<<grid_for(n, THREADS), THREADS, 0, st->stream>>>(out, bias, N, OC);
    LAUNCH_TRY();
  }
  return 0;
}

static int cu_matmul_backward_input(bt_backend_t *be, float *dinp, const float *dout,
                                    const float *weight, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_TRY(cublasSgemm(state(be)->blas, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, weight, C,
                         dout, OC, &zero, dinp, C));
  return 0;
}

static int cu_matmul_backward_weight(bt_backend_t *be, float *dweight, float *dbias,
                                     const float *dout, const float *inp, int N, int C, int OC) {
  if (N < 0 || C < 1 || OC < 1) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  cuda_state_t *st = state(be);
  size_t nw = (size_t)OC * C;
  float *s;
  rc = scratch_get(be, nw, &s);
  if (rc < 0) return rc;
  const float one = 1.0f, zero = 0.0f;
  /* dweight^T (C, OC) column-major = inp^T (C, N) dout (N, OC). */
  CUBLAS_TRY(cublasSgemm(st->blas, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, C, dout, OC,
                         &zero, s, C));
  add_kernel<<<grid_for(nw, THREADS), THREADS, 0, st->stream>>>(dweight, dweight, s, nw);
  LAUNCH_TRY();
  if (dbias) {
    column_sum_add_kernel<<<grid_for(OC, THREADS), THREADS, 0, st->stream>>>(dbias, dout, N, OC);
    LAUNCH_TRY();
  }
  return 0;
}

static int cu_gelu_forward(bt_backend_t *be, float *out, const float *inp, size_t n) {
  int rc = enter(be);
  if (rc < 0 || !n) return rc;
  gelu_forward_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(out, inp, n);
  LAUNCH_TRY();
  return 0;
}

static int cu_gelu_backward(bt_backend_t *be, float *dinp, const float *inp, const float *dout,
                            size_t n) {
  int rc = enter(be);
  if (rc < 0 || !n) return rc;
  gelu_backward_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(dinp, inp, dout,
                                                                               n);
  LAUNCH_TRY();
  return 0;
}

static int cu_residual_forward(bt_backend_t *be, float *out, const float *a, const float *b,
                               size_t n) {
  int rc = enter(be);
  if (rc < 0 || !n) return rc;
  add_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(out, a, b, n);
  LAUNCH_TRY();
  return 0;
}

static int cu_accumulate(bt_backend_t *be, float *acc, const float *x, size_t n) {
  return cu_residual_forward(be, acc, acc, x, n);
}

static int cu_crossentropy_forward(bt_backend_t *be, float *losses, float *probs,
                                   const float *logits, const uint8_t *targets, int N, int V) {
  if (N < 0 || V < 1 || V > 256) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  crossentropy_forward_kernel<<<row_blocks(N), ROWS_PER_BLOCK * 32, 0, state(be)->stream>>>(
      losses, probs, logits, targets, N, V);
  LAUNCH_TRY();
  return 0;
}

static int cu_crossentropy_backward(bt_backend_t *be, float *dlogits, const float *probs,
                                    const uint8_t *targets, float scale, int N, int V) {
  if (N < 0 || V < 1 || V > 256) return BT_EARG;
  int rc = enter(be);
  if (rc < 0 || N == 0) return rc;
  size_t n = (size_t)N * V;
  crossentropy_backward_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(
      dlogits, probs, targets, scale, N, V);
  LAUNCH_TRY();
  return 0;
}

static int cu_adamw_update(bt_backend_t *be, float *params, float *m, float *v,
                           const float *grads, size_t n, float lr, float beta1, float beta2,
                           float eps, float weight_decay, float bias_correction1,
                           float bias_correction2) {
  int rc = enter(be);
  if (rc < 0 || !n) return rc;
  adamw_kernel<<<grid_for(n, THREADS), THREADS, 0, state(be)->stream>>>(
      params, m, v, grads, n, lr, beta1, beta2, eps, weight_decay, bias_correction1,
      bias_correction2);
  LAUNCH_TRY();
  return 0;
}

static int cu_count_nonfinite(bt_backend_t *be, const float *x, size_t n, size_t *count) {
  int rc = enter(be);
  if (rc < 0) return rc;
  cuda_state_t *st = state(be);
  unsigned long long c = 0;
  if (n) {
    CUDA_TRY(cudaMemsetAsync(st->counter, 0, sizeof *st->counter, st->stream));
    count_nonfinite_kernel<<<grid_for(n, THREADS), THREADS, 0, st->stream>>>(st->counter, x, n);
    LAUNCH_TRY();
    /* Into the page-locked bounce buffer: a copy to the stack (pageable)
     * would block outside the deadline. */
    CUDA_TRY(cudaMemcpyAsync(st->bounce, st->counter, sizeof c, cudaMemcpyDeviceToHost,
                             st->stream));
    rc = stream_wait(st);
    if (rc < 0) return rc;
    memcpy(&c, st->bounce, sizeof c);
  }
  *count = (size_t)c;
  return 0;
}

/* ---- math mode ---- */

static int apply_math(cuda_state_t *st, const char *mode) {
  int tf32;
  if (!mode) return BT_EARG;
  if (!strcmp(mode, "fp32"))
    tf32 = 0;
  else if (!strcmp(mode, "tf32"))
    tf32 = 1;
  else
    return BT_EARG;
  CUBLAS_TRY(cublasSetMathMode(st->blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  st->tf32 = tf32;
  return 0;
}

/* BATON_CUDA_MATH sets the mode at creation (for programs without a model
 * configuration, such as the benchmarks); a different mode asked for
 * afterwards (--math) is a conflict, BT_ECONFIG, never a silent override. */
static int cu_set_math(bt_backend_t *be, const char *mode) {
  const char *env = getenv("BATON_CUDA_MATH");
  if (mode && env && *env && strcmp(env, mode) != 0) return BT_ECONFIG;
  int rc = enter(be);
  return rc < 0 ? rc : apply_math(state(be), mode);
}

static const char *cu_math_mode(bt_backend_t *be) { return state(be)->tf32 ? "tf32" : "fp32"; }

/* ---- streams and set-up ---- */

static void *cu_stream(bt_backend_t *be) { return (void *)state(be)->stream; }

static int cu_seal(bt_backend_t *be, size_t scratch_floats) {
  int rc = enter(be);
  if (rc < 0) return rc;
  if ((rc = scratch_grow(be, scratch_floats)) < 0) return rc;
  /* Everything queued so far (zeroing, initial parameters) is done before
   * the first step starts timing anything. */
  if ((rc = stream_wait(state(be))) < 0) return rc;
  be->sealed = 1;
  return 0;
}

/* ---- life cycle ---- */

/* Frees what create made. A stream that never drains leaves the device
 * memory to the process's exit: cudaFree would wait without a deadline. */
static void state_release(cuda_state_t *st) {
  if (st->stream && stream_wait(st) < 0) return;
  if (st->counter) cudaFree(st->counter);
  if (st->bounce) cudaFreeHost(st->bounce);
  if (st->scratch) cudaFree(st->scratch);
  if (st->blas) cublasDestroy(st->blas);
  if (st->workspace) cudaFree(st->workspace);
  if (st->stream) cudaStreamDestroy(st->stream);
}

static void cu_destroy(bt_backend_t *be) {
  if (!be) return;
  cuda_state_t *st = state(be);
  if (st) {
    cudaSetDevice(st->device);
    state_release(st);
    free(st);
  }
  free(be);
}

static bt_backend_ops_t cuda_ops;
static pthread_once_t cuda_ops_once = PTHREAD_ONCE_INIT;

/* Filled in once at run time: C++17 has no designated initialisers. */
static void cuda_ops_init(void) {
  bt_backend_ops_t *o = &cuda_ops;
  o->name = "cuda";
  o->alloc = cu_alloc;
  o->free = cu_free;
  o->to_host = cu_to_host;
  o->to_device = cu_to_device;
  o->copy = cu_copy;
  o->zero = cu_zero;
  o->sync = cu_sync;
  o->embed_forward = cu_embed_forward;
  o->embed_backward_weight = cu_embed_backward_weight;
  o->layernorm_forward = cu_layernorm_forward;
  o->layernorm_backward_input = cu_layernorm_backward_input;
  o->layernorm_backward_weight = cu_layernorm_backward_weight;
  o->matmul_forward = cu_matmul_forward;
  o->matmul_backward_input = cu_matmul_backward_input;
  o->matmul_backward_weight = cu_matmul_backward_weight;
  o->gelu_forward = cu_gelu_forward;
  o->gelu_backward = cu_gelu_backward;
  o->residual_forward = cu_residual_forward;
  o->accumulate = cu_accumulate;
  o->crossentropy_forward = cu_crossentropy_forward;
  o->crossentropy_backward = cu_crossentropy_backward;
  o->adamw_update = cu_adamw_update;
  o->count_nonfinite = cu_count_nonfinite;
  o->destroy = cu_destroy;
  o->set_math = cu_set_math;
  o->math_mode = cu_math_mode;
  o->stream = cu_stream;
  o->seal = cu_seal;
}

/* Finds the device, or says in one line why there is none. */
static int pick_device(int device, char *why, size_t why_len) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver) {
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    snprintf(why, why_len, "no CUDA driver (libcuda.so.1 missing or older than CUDA %d.%d)",
             rt / 1000, rt % 1000 / 10);
    return BT_EBACKEND;
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    snprintf(why, why_len, "no CUDA device (the driver sees none; CUDA_VISIBLE_DEVICES=%s)",
             getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
    return BT_EBACKEND;
  }
  if (e != cudaSuccess) {
    snprintf(why, why_len, "no usable CUDA driver: %s", cudaGetErrorString(e));
    return BT_EBACKEND;
  }
  if (device >= count) {
    snprintf(why, why_len, "no CUDA device %d (%d present)", device, count);
    return BT_EBACKEND;
  }
  /* A kernel built for other architectures fails only at its first launch;
   * ask now, so the message can say how to rebuild. */
  e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    /* Busy or prohibited compute mode, out of memory for the context, a
     * driver fault: say which, not a guess. */
    cudaGetLastError();
    snprintf(why, why_len, "cannot use CUDA device %d: %s (%s)", device, cudaGetErrorString(e),
             cudaGetErrorName(e));
    return BT_EBACKEND;
  }
  cudaFuncAttributes fa;
  e = cudaFuncGetAttributes(&fa, (const void *)add_kernel);
  if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction ||
      e == cudaErrorUnsupportedPtxVersion) {
    cudaDeviceProp p;
    int major = 0, minor = 0;
    if (cudaGetDeviceProperties(&p, device) == cudaSuccess) major = p.major, minor = p.minor;
    cudaGetLastError();
    snprintf(why, why_len,
             "no kernel image for CUDA device %d (sm_%d%d): %s; rebuild with "
             "-DBATON_CUDA_ARCHS=%d%d",
             device, major, minor, cudaGetErrorString(e), major, minor);
    return BT_EBACKEND;
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    snprintf(why, why_len, "CUDA device %d: %s (%s)", device, cudaGetErrorString(e),
             cudaGetErrorName(e));
    return BT_EBACKEND;
  }
  return 0;
}

/* ---- helpers the worker needs without NCCL (kernels/backend.h) ---- */

extern "C" __attribute__((visibility("default"))) int bt_cuda_device_count(int *count) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e == cudaErrorNoDevice) return *count = 0, 0;
  if (e != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
    return BT_EBACKEND;
  }
  return 0;
}

extern "C" __attribute__((visibility("default"))) int bt_cuda_host_alloc(void **ptr, size_t bytes) {
  *ptr = NULL;
  CUDA_TRY(cudaMallocHost(ptr, bytes ? bytes : 1));
  return 0;
}

extern "C" __attribute__((visibility("default"))) void bt_cuda_host_free(void *ptr) {
  if (ptr) cudaFreeHost(ptr);
}

extern "C" __attribute__((visibility("default"))) int bt_cuda_device_bus_id(int device, char *out,
                                                                             size_t cap) {
  if (cap > 0x7fffffff) cap = 0x7fffffff;
  CUDA_TRY(cudaDeviceGetPCIBusId(out, (int)cap, device));
  return 0;
}

extern "C" __attribute__((visibility("default"))) int bt_backend_cuda_create(int device,
                                                                              bt_backend_t **out,
                                                                              char *why,
                                                                              size_t why_len) {
  char sink[8];
  if (!why || !why_len) why = sink, why_len = sizeof sink;
  why[0] = '\0';
  if (!out || device < 0) return BT_EARG;
  int rc = pick_device(device, why, why_len);
  if (rc < 0) return rc;

  pthread_once(&cuda_ops_once, cuda_ops_init);
  bt_backend_t *be = (bt_backend_t *)calloc(1, sizeof *be);
  cuda_state_t *st = (cuda_state_t *)calloc(1, sizeof *st);
  const char *math = getenv("BATON_CUDA_MATH");
  const char *tmo = getenv("BATON_CUDA_SYNC_TIMEOUT");
  if (!be || !st) {
    rc = -ENOMEM;
    goto fail;
  }
  st->device = device;
  st->sync_timeout_s = 60.0;
  if (tmo && *tmo) {
    char *end;
    double s = strtod(tmo, &end);
    if (*end || !(s > 0)) {
      snprintf(why, why_len, "BATON_CUDA_SYNC_TIMEOUT=%s is not a positive number of seconds", tmo);
      rc = BT_EARG;
      goto fail;
    }
    st->sync_timeout_s = s;
  }
#define CREATE_TRY(call, text)                                                     \
  do {                                                                             \
    if ((rc = (call)) < 0) {                                                       \
      snprintf(why, why_len, "CUDA backend set-up failed on device %d: %s", device, \
               text);                                                              \
      goto fail;                                                                   \
    }                                                                              \
  } while (0)
  CREATE_TRY(cuda_check(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking), __FILE__,
                        __LINE__, "cudaStreamCreateWithFlags"),
             "stream");
  CREATE_TRY(cublas_check(cublasCreate(&st->blas), __FILE__, __LINE__, "cublasCreate"),
             "cuBLAS handle");
  CREATE_TRY(cublas_check(cublasSetStream(st->blas, st->stream), __FILE__, __LINE__,
                          "cublasSetStream"),
             "cuBLAS stream");
  CREATE_TRY(cuda_check(cudaMalloc(&st->workspace, WORKSPACE_BYTES), __FILE__, __LINE__,
                        "cudaMalloc(workspace)"),
             "cuBLAS workspace");
  CREATE_TRY(cublas_check(cublasSetWorkspace(st->blas, st->workspace, WORKSPACE_BYTES), __FILE__,
                          __LINE__, "cublasSetWorkspace"),
             "cuBLAS workspace");
  CREATE_TRY(cuda_check(cudaMalloc((void **)&st->counter, sizeof *st->counter), __FILE__,
                        __LINE__, "cudaMalloc(counter)"),
             "counter");
  CREATE_TRY(cuda_check(cudaMallocHost(&st->bounce, BOUNCE_BYTES), __FILE__, __LINE__,
                        "cudaMallocHost(bounce)"),
             "page-locked bounce buffer");
#undef CREATE_TRY
  rc = apply_math(st, math && *math ? math : "fp32");
  if (rc < 0) {
    if (rc == BT_EARG)
      snprintf(why, why_len, "BATON_CUDA_MATH=%s is not fp32 or tf32", math);
    else
      snprintf(why, why_len, "CUDA backend set-up failed on device %d: cuBLAS math mode", device);
    goto fail;
  }
  be->ops = &cuda_ops;
  be->impl = st;
  *out = be;
  return 0;
fail:
  if (st) {
    state_release(st);
    free(st);
  }
  free(be);
  return rc;
}
