/* backend.h - the compute backend interface: CPU or CUDA behind one vtable.
 *
 * The model's layers (kernels/model.c) and the worker call only these
 * functions, so the CPU backend (kernels/cpu/, the readable reference) and
 * the CUDA backend (kernels/cuda/, a library loaded on demand) are
 * interchangeable. Tensor pointers are backend memory: host memory for the
 * CPU backend, device memory for CUDA; nobody but the backend dereferences
 * them. Every op returns 0 or a negative code (a CUDA launch can fail).
 *
 * Conventions (after llm.c): outputs first, then inputs, then sizes; every
 * tensor's shape is in a comment; float32, row-major. *_backward_input ops
 * (the "I" half) overwrite the input gradient; *_backward_weight ops (the
 * "W" half) ACCUMULATE (+=) into parameter gradients, so gradients summed
 * over micro-batches in increasing order need no extra pass. A W op adds
 * its whole sum over rows once (grad = grad + sum), so two calls from zero
 * give exactly twice one call. A full backward ("B") is exactly the I half
 * then the W half.
 *
 * Determinism (DESIGN.md §8): an op must give the same bits for the same
 * inputs and sizes, whatever else ran before it. The CPU backend runs
 * OpenBLAS with one thread; nothing may batch across micro-batches.
 *
 * Not here: which layers exist, how stages split them (kernels/model.h,
 * worker/), and communication (worker/transport.h).
 */
#ifndef BT_KERNELS_BACKEND_H
#define BT_KERNELS_BACKEND_H
#include <stddef.h>
#include <stdint.h>

typedef struct bt_backend bt_backend_t;

typedef struct bt_backend_ops {
  const char *name; /* "cpu", "cuda" */

  /* ---- memory ---- */
  int (*alloc)(bt_backend_t *be, void **ptr, size_t bytes); /* zeroed */
  void (*free)(bt_backend_t *be, void *ptr);
  int (*to_host)(bt_backend_t *be, void *host_dst, const void *src, size_t bytes);
  int (*to_device)(bt_backend_t *be, void *dst, const void *host_src, size_t bytes);
  int (*copy)(bt_backend_t *be, void *dst, const void *src, size_t bytes);
  int (*zero)(bt_backend_t *be, void *ptr, size_t bytes);
  /* Waits until every op issued so far has finished (a no-op on the CPU). */
  int (*sync)(bt_backend_t *be);

  /* ---- embedding: out[t] = sum_k tables[k][ctx[t + K - 1 - k]] ---- */
  int (*embed_forward)(bt_backend_t *be, float *out, /* (T, D) */
                       const float *tables,          /* (K, 256, D) */
                       const uint8_t *ctx,           /* (T + K) bytes */
                       int T, int K, int D);
  /* dtables[k][ctx[t + K - 1 - k]] += dout[t], t in increasing order. */
  int (*embed_backward_weight)(bt_backend_t *be, float *dtables, /* (K, 256, D) */
                               const float *dout,                /* (T, D) */
                               const uint8_t *ctx, int T, int K, int D);

  /* ---- layernorm over the last dimension, eps 1e-5 ---- */
  int (*layernorm_forward)(bt_backend_t *be, float *out, /* (N, C) */
                           float *mean, float *rstd,     /* (N), (N) */
                           const float *inp,             /* (N, C) */
                           const float *weight, const float *bias, /* (C), (C) */
                           int N, int C);
  /* dinp = d(layernorm)/d(inp) applied to dout (overwrites dinp). */
  int (*layernorm_backward_input)(bt_backend_t *be, float *dinp, /* (N, C) */
                                  const float *dout, const float *inp, /* (N, C) */
                                  const float *weight,                 /* (C) */
                                  const float *mean, const float *rstd, /* (N) */
                                  int N, int C);
  /* dweight += sum_n dout * xhat; dbias += sum_n dout (n increasing). */
  int (*layernorm_backward_weight)(bt_backend_t *be, float *dweight, float *dbias, /* (C) */
                                   const float *dout, const float *inp,        /* (N, C) */
                                   const float *mean, const float *rstd,       /* (N) */
                                   int N, int C);

  /* ---- linear: out = inp @ weight^T + bias (bias may be NULL) ---- */
  int (*matmul_forward)(bt_backend_t *be, float *out, /* (N, OC) */
                        const float *inp,             /* (N, C) */
                        const float *weight,          /* (OC, C) */
                        const float *bias,            /* (OC) or NULL */
                        int N, int C, int OC);
  /* dinp = dout @ weight (overwrites). */
  int (*matmul_backward_input)(bt_backend_t *be, float *dinp, /* (N, C) */
                               const float *dout,             /* (N, OC) */
                               const float *weight,           /* (OC, C) */
                               int N, int C, int OC);
  /* dweight += dout^T @ inp; dbias += sum_n dout (dbias may be NULL). */
  int (*matmul_backward_weight)(bt_backend_t *be, float *dweight, /* (OC, C) */
                                float *dbias,                     /* (OC) or NULL */
                                const float *dout,                /* (N, OC) */
                                const float *inp,                 /* (N, C) */
                                int N, int C, int OC);

  /* ---- GELU, exact: 0.5 x (1 + erf(x / sqrt 2)) ---- */
  int (*gelu_forward)(bt_backend_t *be, float *out, const float *inp, size_t n); /* (n) */
  /* dinp = gelu'(inp) * dout (overwrites; dinp may alias dout). */
  int (*gelu_backward)(bt_backend_t *be, float *dinp, const float *inp, const float *dout, size_t n);

  /* ---- residual: out = a + b (out may alias a or b) ---- */
  int (*residual_forward)(bt_backend_t *be, float *out, const float *a, const float *b, size_t n);
  /* acc += x (for summing the two gradient paths of a residual block). */
  int (*accumulate)(bt_backend_t *be, float *acc, const float *x, size_t n);

  /* ---- softmax cross-entropy over V classes ---- */
  /* losses[t] = -log softmax(logits[t])[targets[t]]; probs keeps the softmax. */
  int (*crossentropy_forward)(bt_backend_t *be, float *losses, /* (N) */
                              float *probs,                    /* (N, V) */
                              const float *logits,             /* (N, V) */
                              const uint8_t *targets,          /* (N) */
                              int N, int V);
  /* dlogits = (probs - onehot(targets)) * scale (overwrites). */
  int (*crossentropy_backward)(bt_backend_t *be, float *dlogits, /* (N, V) */
                               const float *probs, const uint8_t *targets,
                               float scale, int N, int V);

  /* ---- AdamW, elementwise; the host computes lr and the bias corrections
   * in double from the integer step and passes them rounded to float:
   * bias_correction1 = 1 - beta1^t, bias_correction2 = 1 - beta2^t (t from 1).
   *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
   *   p -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + weight_decay * p) ---- */
  int (*adamw_update)(bt_backend_t *be, float *params, float *m, float *v, /* (n) each */
                      const float *grads, size_t n, float lr, float beta1, float beta2,
                      float eps, float weight_decay, float bias_correction1,
                      float bias_correction2);

  /* Counts of NaN and Inf in n floats (for the commit guard). */
  int (*count_nonfinite)(bt_backend_t *be, const float *x, size_t n, size_t *count);

  void (*destroy)(bt_backend_t *be);

  /* ---- math mode (part of the model configuration, DESIGN.md §8) ----
   * "fp32" (the default everywhere) or "tf32" (CUDA only: cuBLAS may use
   * TF32 tensor cores for the matrix products). The CUDA backend starts in
   * the mode named by BATON_CUDA_MATH, else "fp32". set_math returns
   * BT_EUNSUPPORTED for a mode the backend lacks, BT_EARG for an unknown
   * name; math_mode says what is in force, for the checkpoint to record. */
  int (*set_math)(bt_backend_t *be, const char *mode);
  const char *(*math_mode)(bt_backend_t *be);

  /* ---- streams and set-up ----
   * stream: the opaque stream every op of this backend is queued on (a
   * cudaStream_t on CUDA, NULL on the CPU), so a transport can order its
   * transfers after the kernels that produce a buffer and before those
   * that read it (worker/transport_nccl.h) without a host-wide sync.
   * seal: ends set-up. It sizes the scratch memory for ops whose shapes
   * need at most `scratch_floats` floats of it (bt_model_scratch_floats),
   * and from then on the backend allocates nothing: alloc and any scratch
   * that would have to grow return BT_EUNSUPPORTED (logged). On CUDA this
   * is what keeps cudaMalloc/cudaFree, which synchronise the whole device
   * (NCCL's kernels waiting for a peer included), out of a training step. */
  void *(*stream)(bt_backend_t *be);
  int (*seal)(bt_backend_t *be, size_t scratch_floats);
} bt_backend_ops_t;

/* A backend is used by one thread at a time (ops share scratch memory and,
 * on CUDA, one stream). */
struct bt_backend {
  const bt_backend_ops_t *ops;
  void *impl; /* the backend's own state */
  /* Kept by the backends: allocations made (device buffers and scratch
   * growth; for tests that set-up really ended), and whether seal() ran. */
  uint64_t allocs;
  int sealed;
};

/* The CPU backend (OpenBLAS pinned to one thread, whatever
 * OPENBLAS_NUM_THREADS says). */
int bt_backend_cpu_create(bt_backend_t **out);
/* Creates the backend named "cpu" or "cuda". For "cuda" loads the GPU library
 * on first use; if it cannot, returns BT_EBACKEND and writes why (no driver,
 * no device, library not found) into why, one line. device: -1 for
 * LOCAL_RANK or 0 (0 when CUDA_VISIBLE_DEVICES names a single device). */
int bt_backend_create(const char *name, int device, bt_backend_t **out, char *why, size_t why_len);
void bt_backend_destroy(bt_backend_t *be);
/* How many CUDA devices the driver shows, through libbaton_cuda.so (the
 * CUDA runtime only, never NCCL). 0, or BT_EBACKEND with one line in why
 * (no library, no driver); a machine with a driver and no device is 0
 * devices. */
int bt_backend_cuda_devices(int *count, char *why, size_t why_len);

#endif
