/* nccl_dev.cu - the device side of the NCCL transport (libbaton_cuda.so).
 *
 * Every NCCL and CUDA runtime call the transport needs, behind the table of
 * kernels/cuda/nccl_dev.h, so that `baton` itself links neither. Written
 * as C (no kernels here); compiled by nvcc only because this library is.
 *
 * Non-blocking communicators throughout: ncclCommInitRankConfig and
 * ncclCommSplit with config.blocking = 0 return at once, and so may
 * ncclGroupEnd (ncclInProgress while NCCL's threads still enqueue). Each
 * such call is followed by poll_ready(), which asks ncclCommGetAsyncError
 * until ncclSuccess, an error or the deadline; on an error or the deadline
 * the communicator is aborted, so no later call can hang in it.
 *
 * Ordering with the compute stream: a post records an event on the
 * caller's compute stream and makes the channel's stream wait for it, and
 * op_join makes the compute stream wait for a receive's completion event,
 * so kernels and transfers are ordered on the device, never by a host
 * sync. Aborting: ncclCommRevoke (found with dlsym, NCCL 2.28 and later)
 * first on every communicator, then ncclCommAbort (the transport does the
 * order; see comm_revoke in nccl_dev.h).
 *
 * This file is its own library, libbaton_nccl.so, loaded only when a run
 * uses NCCL: the compute backend (libbaton_cuda.so) works where NCCL is
 * absent or cannot load.
 *
 * Not here: tags, channel order, requests (worker/transport_nccl.c).
 */
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <errno.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "common/error.h"
#include "common/log.h"
#include "kernels/cuda/nccl_dev.h"
}

static_assert(sizeof(ncclUniqueId) == BT_NCCL_ID_BYTES, "ncclUniqueId is not 128 bytes");

/* Headers travel from and to a ring of device slots, one slot per op:
 * ops of one communicator complete in stream order, so a slot is reused
 * only after BT_NCCL_MAX_INFLIGHT later posts, and `inflight` (ops not yet
 * freed) never lets it be reused earlier. */
struct bt_nccl_comm {
  ncclComm_t comm;
  cudaStream_t stream;
  int device;
  int broken;    /* aborted: every later call fails at once */
  uint8_t *dhdr; /* (MAX_INFLIGHT, 2, HDR): send and receive slot per op */
  uint8_t *hhdr; /* pinned twin of dhdr */
  unsigned next; /* next slot */
  unsigned inflight;
};

struct bt_nccl_op {
  bt_nccl_comm_t *comm;
  cudaEvent_t ready; /* on the compute stream: the buffer's producers are done */
  cudaEvent_t done;
  uint8_t *hhdr_recv; /* where the received header lands (pinned) */
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(long ns) {
  struct timespec ts = {0, ns}, rem;
  while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
}

static int nccl_check(ncclResult_t r, ncclComm_t c, const char *file, int line, const char *what) {
  if (r == ncclSuccess || r == ncclInProgress) return 0;
  /* ncclGetLastError says more than the code's string (which peer, why). */
  const char *last = ncclGetLastError(c);
  bt_error("%s:%d: %s: %s%s%s", file, line, what, ncclGetErrorString(r),
           last && *last ? ": " : "", last && *last ? last : "");
  return BT_ENCCL;
}

static int cuda_check(cudaError_t e, const char *file, int line, const char *what) {
  if (e == cudaSuccess) return 0;
  bt_error("%s:%d: %s: %s", file, line, what, cudaGetErrorString(e));
  return BT_ECUDA;
}

#define CUDA_TRY(call)                                       \
  do {                                                       \
    int rc_ = cuda_check((call), __FILE__, __LINE__, #call); \
    if (rc_ < 0) return rc_;                                 \
  } while (0)

static void abort_comm(bt_nccl_comm_t *c) {
  if (!c || c->broken || !c->comm) return;
  c->broken = 1;
  /* Abort returns once NCCL's kernels and threads for this communicator
   * have been told to stop; it does not wait for the peer. */
  ncclCommAbort(c->comm);
  c->comm = NULL;
}

/* Polls the communicator until it is no longer "in progress". 0 when
 * ready; BT_ENCCL (error) or BT_ETIMEOUT, the communicator aborted. Sleeps
 * 1 us doubling to 1 ms between polls. */
static int poll_ready(bt_nccl_comm_t *c, uint64_t deadline, const char *what) {
  long ns = 1000;
  for (;;) {
    ncclResult_t st = ncclInProgress;
    ncclResult_t r = ncclCommGetAsyncError(c->comm, &st);
    if (r != ncclSuccess) st = r;
    if (st == ncclSuccess) return 0;
    if (st != ncclInProgress) {
      nccl_check(st, c->comm, __FILE__, __LINE__, what);
      abort_comm(c);
      return BT_ENCCL;
    }
    if (now_ns() > deadline) {
      bt_error("NCCL: %s still in progress at its deadline: aborting the communicator", what);
      abort_comm(c);
      return BT_ETIMEOUT;
    }
    sleep_ns(ns);
    ns = ns < 1000000 ? ns * 2 : 1000000;
  }
}

static ncclConfig_t nonblocking_config(void) {
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  return cfg;
}

static void dev_versions(char *out, size_t cap) {
  int nv = 0, rt = 0;
  ncclGetVersion(&nv);
  cudaRuntimeGetVersion(&rt);
  snprintf(out, cap, "NCCL %d.%d.%d, CUDA runtime %d.%d", nv / 10000, nv / 100 % 100, nv % 100,
           rt / 1000, rt % 1000 / 10);
}

static int dev_probe(int device, char *why, size_t why_len) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver) {
    snprintf(why, why_len, "no CUDA driver (libcuda.so.1 missing or too old), which NCCL needs");
    return BT_EBACKEND;
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    snprintf(why, why_len, "no CUDA device for NCCL (CUDA_VISIBLE_DEVICES=%s)",
             getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
    return BT_EBACKEND;
  }
  if (e != cudaSuccess) {
    snprintf(why, why_len, "no usable CUDA driver for NCCL: %s", cudaGetErrorString(e));
    return BT_EBACKEND;
  }
  if (device < 0 || device >= count) {
    snprintf(why, why_len, "no CUDA device %d for NCCL (%d present)", device, count);
    return BT_EBACKEND;
  }
  return 0;
}

static int dev_unique_id(uint8_t out[BT_NCCL_ID_BYTES]) {
  ncclUniqueId id;
  int rc = nccl_check(ncclGetUniqueId(&id), NULL, __FILE__, __LINE__, "ncclGetUniqueId");
  if (rc < 0) return rc;
  memcpy(out, id.internal, BT_NCCL_ID_BYTES);
  return 0;
}

static bt_nccl_comm_t *comm_new(int device) {
  bt_nccl_comm_t *c = (bt_nccl_comm_t *)calloc(1, sizeof *c);
  if (!c) return NULL;
  c->device = device;
  /* Non-blocking: NCCL's work must not wait behind the legacy default
   * stream, nor the compute stream behind it. */
  size_t ring = (size_t)BT_NCCL_MAX_INFLIGHT * 2 * BT_NCCL_HDR_BYTES;
  if (cudaSetDevice(device) != cudaSuccess ||
      cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc((void **)&c->dhdr, ring) != cudaSuccess ||
      cudaMallocHost((void **)&c->hhdr, ring) != cudaSuccess) {
    bt_error("NCCL channel set-up on device %d: %s", device, cudaGetErrorString(cudaGetLastError()));
    if (c->dhdr) cudaFree(c->dhdr);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
    return NULL;
  }
  return c;
}

/* After an abort the stream may still hold a kernel NCCL is stopping:
 * freeing the ring waits for the device (cudaFree synchronises), which is
 * bounded because the abort has stopped NCCL's kernels. */
static void comm_free(bt_nccl_comm_t *c) {
  if (!c) return;
  if (c->hhdr) cudaFreeHost(c->hhdr);
  if (c->dhdr) cudaFree(c->dhdr);
  if (c->stream) cudaStreamDestroy(c->stream);
  free(c);
}

static int dev_comm_init(int device, int nranks, const uint8_t id[BT_NCCL_ID_BYTES], int rank,
                         uint64_t deadline, bt_nccl_comm_t **out) {
  *out = NULL;
  bt_nccl_comm_t *c = comm_new(device);
  if (!c) return BT_ECUDA;
  ncclUniqueId uid;
  memcpy(uid.internal, id, BT_NCCL_ID_BYTES);
  ncclConfig_t cfg = nonblocking_config();
  int rc = nccl_check(ncclCommInitRankConfig(&c->comm, nranks, uid, rank, &cfg), NULL, __FILE__,
                      __LINE__, "ncclCommInitRankConfig");
  if (rc == 0 && !c->comm) rc = BT_ENCCL;
  if (rc == 0) rc = poll_ready(c, deadline, "ncclCommInitRankConfig");
  if (rc < 0) {
    abort_comm(c);
    comm_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

static int dev_comm_split(bt_nccl_comm_t *parent, int color, int key, uint64_t deadline,
                          bt_nccl_comm_t **out) {
  *out = NULL;
  if (parent->broken) return BT_ENCCL;
  CUDA_TRY(cudaSetDevice(parent->device));
  bt_nccl_comm_t *c = NULL;
  if (color >= 0 && !(c = comm_new(parent->device))) return BT_ECUDA;
  ncclComm_t child = NULL;
  ncclConfig_t cfg = nonblocking_config();
  int rc = nccl_check(ncclCommSplit(parent->comm, color >= 0 ? color : NCCL_SPLIT_NOCOLOR, key,
                                    &child, &cfg),
                      parent->comm, __FILE__, __LINE__, "ncclCommSplit");
  /* The parent is busy until the split is done; the child is ready after. */
  if (rc == 0) rc = poll_ready(parent, deadline, "ncclCommSplit (parent)");
  if (c) {
    c->comm = child;
    if (rc == 0 && !child) rc = BT_ENCCL;
    if (rc == 0) rc = poll_ready(c, deadline, "ncclCommSplit (child)");
    if (rc < 0) {
      abort_comm(c);
      comm_free(c);
      return rc;
    }
  }
  *out = c;
  return rc;
}

static int dev_comm_size(bt_nccl_comm_t *c, int *nranks, int *rank) {
  if (c->broken) return BT_ENCCL;
  int rc = nccl_check(ncclCommCount(c->comm, nranks), c->comm, __FILE__, __LINE__,
                      "ncclCommCount");
  if (rc == 0)
    rc = nccl_check(ncclCommUserRank(c->comm, rank), c->comm, __FILE__, __LINE__,
                    "ncclCommUserRank");
  return rc;
}

static int dev_post(bt_nccl_comm_t *c, const void *send_hdr, const void *send_buf,
                    void *recv_buf, size_t bytes, int peer, void *after, uint64_t deadline,
                    bt_nccl_op_t **out) {
  *out = NULL;
  if (c->broken) return BT_ENCCL;
  if (c->inflight >= BT_NCCL_MAX_INFLIGHT) {
    bt_error("NCCL: more than %d messages in flight on one channel", BT_NCCL_MAX_INFLIGHT);
    return BT_EUNSUPPORTED;
  }
  CUDA_TRY(cudaSetDevice(c->device));
  bt_nccl_op_t *op = (bt_nccl_op_t *)calloc(1, sizeof *op);
  if (!op) return -ENOMEM;
  int rc = cuda_check(cudaEventCreateWithFlags(&op->done, cudaEventDisableTiming), __FILE__,
                      __LINE__, "cudaEventCreateWithFlags");
  if (rc == 0)
    rc = cuda_check(cudaEventCreateWithFlags(&op->ready, cudaEventDisableTiming), __FILE__,
                    __LINE__, "cudaEventCreateWithFlags");
  if (rc < 0) {
    if (op->done) cudaEventDestroy(op->done);
    free(op);
    return rc;
  }
  /* Everything the compute stream has queued so far (the kernels writing
   * the send buffer, or still reading the receive buffer) comes first. */
  if (after) {
    rc = cuda_check(cudaEventRecord(op->ready, (cudaStream_t)after), __FILE__, __LINE__,
                    "cudaEventRecord(compute)");
    if (rc == 0)
      rc = cuda_check(cudaStreamWaitEvent(c->stream, op->ready, 0), __FILE__, __LINE__,
                      "cudaStreamWaitEvent(channel)");
    if (rc < 0) {
      cudaEventDestroy(op->ready);
      cudaEventDestroy(op->done);
      free(op);
      return rc;
    }
  }
  size_t slot = (size_t)(c->next++ % BT_NCCL_MAX_INFLIGHT) * 2 * BT_NCCL_HDR_BYTES;
  uint8_t *hs = c->hhdr + slot, *hr = hs + BT_NCCL_HDR_BYTES;
  uint8_t *ds = c->dhdr + slot, *dr = ds + BT_NCCL_HDR_BYTES;
  op->comm = c;
  op->hhdr_recv = hr;
  if (send_hdr) {
    memcpy(hs, send_hdr, BT_NCCL_HDR_BYTES);
    rc = cuda_check(cudaMemcpyAsync(ds, hs, BT_NCCL_HDR_BYTES, cudaMemcpyHostToDevice, c->stream),
                    __FILE__, __LINE__, "cudaMemcpyAsync(header)");
  }
  /* One group even for one direction: ncclGroupEnd is where a
   * non-blocking communicator reports "in progress", polled below. Within
   * a group NCCL matches operations with one peer in issue order, so the
   * header always pairs with the header. */
  int grc = 0;
  if (rc == 0) grc = rc = nccl_check(ncclGroupStart(), c->comm, __FILE__, __LINE__, "ncclGroupStart");
  if (rc == 0 && send_hdr)
    rc = nccl_check(ncclSend(ds, BT_NCCL_HDR_BYTES, ncclUint8, peer, c->comm, c->stream), c->comm,
                    __FILE__, __LINE__, "ncclSend(header)");
  if (rc == 0 && send_hdr && bytes)
    rc = nccl_check(ncclSend(send_buf, bytes, ncclUint8, peer, c->comm, c->stream), c->comm,
                    __FILE__, __LINE__, "ncclSend");
  if (rc == 0 && recv_buf)
    rc = nccl_check(ncclRecv(dr, BT_NCCL_HDR_BYTES, ncclUint8, peer, c->comm, c->stream), c->comm,
                    __FILE__, __LINE__, "ncclRecv(header)");
  if (rc == 0 && recv_buf && bytes)
    rc = nccl_check(ncclRecv(recv_buf, bytes, ncclUint8, peer, c->comm, c->stream), c->comm,
                    __FILE__, __LINE__, "ncclRecv");
  /* The group opened above is closed even after a failed ncclSend. */
  if (grc == 0) {
    int rc2 = nccl_check(ncclGroupEnd(), c->comm, __FILE__, __LINE__, "ncclGroupEnd");
    if (rc == 0) rc = rc2;
    if (rc == 0) rc = poll_ready(c, deadline, "ncclGroupEnd");
  }
  /* Only now are the operations on the stream, so what follows runs after
   * them: the received header to the host, then the event. */
  if (rc == 0 && recv_buf)
    rc = cuda_check(cudaMemcpyAsync(hr, dr, BT_NCCL_HDR_BYTES, cudaMemcpyDeviceToHost, c->stream),
                    __FILE__, __LINE__, "cudaMemcpyAsync(header)");
  if (rc == 0)
    rc = cuda_check(cudaEventRecord(op->done, c->stream), __FILE__, __LINE__, "cudaEventRecord");
  if (rc < 0) {
    abort_comm(c);
    cudaEventDestroy(op->ready);
    cudaEventDestroy(op->done);
    free(op);
    return rc;
  }
  c->inflight++;
  *out = op;
  return 0;
}

static int dev_op_test(bt_nccl_comm_t *c, bt_nccl_op_t *op) {
  if (c->broken) return BT_ENCCL;
  cudaError_t e = cudaEventQuery(op->done);
  if (e != cudaSuccess && e != cudaErrorNotReady) {
    cuda_check(e, __FILE__, __LINE__, "cudaEventQuery");
    abort_comm(c);
    return BT_ECUDA;
  }
  /* Done or not, the communicator's health is asked first: a completed
   * event is trusted only from a healthy communicator (an operation that
   * NCCL failed may still let its kernel, and so the event, finish). A
   * peer that failed shows here too, not in the event, which would then
   * never complete. */
  ncclResult_t st = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(c->comm, &st);
  if (r != ncclSuccess) st = r;
  if (st != ncclSuccess && st != ncclInProgress) {
    nccl_check(st, c->comm, __FILE__, __LINE__, "NCCL asynchronous error");
    abort_comm(c);
    return BT_ENCCL;
  }
  return e == cudaSuccess ? 1 : 0;
}

static int dev_op_join(bt_nccl_op_t *op, void *stream) {
  if (!stream) return 0;
  CUDA_TRY(cudaStreamWaitEvent((cudaStream_t)stream, op->done, 0));
  return 0;
}

static const void *dev_op_header(bt_nccl_op_t *op) { return op->hhdr_recv; }

static void dev_op_free(bt_nccl_op_t *op) {
  if (!op) return;
  if (op->comm->inflight) op->comm->inflight--;
  cudaEventDestroy(op->ready);
  cudaEventDestroy(op->done);
  free(op);
}

/* ncclCommRevoke exists from NCCL 2.28 on: looked up in the NCCL this
 * library was loaded with, so an older one still loads (and aborts
 * without revoking first). */
typedef ncclResult_t (*revoke_fn)(ncclComm_t, int);

static revoke_fn find_revoke(void) {
  static int looked;
  static revoke_fn fn;
  if (looked) return fn;
  looked = 1;
  Dl_info info;
  void *h = NULL;
  /* The NCCL that ncclCommAbort came from, already loaded. */
  if (dladdr((void *)ncclCommAbort, &info) && info.dli_fname)
    h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
  void *sym = h ? dlsym(h, "ncclCommRevoke") : NULL;
  memcpy(&fn, &sym, sizeof fn);
  return fn;
}

static int dev_comm_revoke(bt_nccl_comm_t *c) {
  if (!c || c->broken || !c->comm) return 0;
  revoke_fn revoke = find_revoke();
  if (!revoke) return BT_EUNSUPPORTED;
  cudaSetDevice(c->device);
  /* Non-blocking communicators may answer "in progress": the abort that
   * follows ends it either way. */
  return nccl_check(revoke(c->comm, 0), c->comm, __FILE__, __LINE__, "ncclCommRevoke");
}

static void dev_comm_abort(bt_nccl_comm_t *c) {
  if (!c) return;
  cudaSetDevice(c->device);
  abort_comm(c);
}

static void dev_comm_destroy(bt_nccl_comm_t *c, uint64_t deadline) {
  if (!c) return;
  cudaSetDevice(c->device);
  if (!c->broken && c->comm) {
    /* Finalize flushes NCCL's outstanding work and is collective-free for
     * p2p; non-blocking, so it is polled like the rest. */
    int rc = nccl_check(ncclCommFinalize(c->comm), c->comm, __FILE__, __LINE__,
                        "ncclCommFinalize");
    if (rc == 0) rc = poll_ready(c, deadline, "ncclCommFinalize");
    if (rc == 0) {
      ncclCommDestroy(c->comm);
      c->comm = NULL;
    } else {
      abort_comm(c);
    }
  }
  /* The stream may still hold work of an aborted communicator: destroying
   * it does not wait for that work, it only releases the handle later. */
  comm_free(c);
}

static int dev_host_alloc(void **ptr, size_t bytes) {
  *ptr = NULL;
  CUDA_TRY(cudaMallocHost(ptr, bytes ? bytes : 1));
  return 0;
}

static void dev_host_free(void *ptr) {
  if (ptr) cudaFreeHost(ptr);
}

static int dev_device_bus_id(int device, char *out, size_t cap) {
  if (cap > 0x7fffffff) cap = 0x7fffffff;
  CUDA_TRY(cudaDeviceGetPCIBusId(out, (int)cap, device));
  return 0;
}

/* In the order of bt_nccl_dev_t's members (C++17: no designated
 * initialisers). */
static const bt_nccl_dev_t dev_table = {
    BT_NCCL_DEV_VERSION, dev_versions,   dev_probe,       dev_unique_id,
    dev_comm_init,       dev_comm_split, dev_comm_size,   dev_post,
    dev_op_test,         dev_op_join,    dev_op_header,   dev_op_free,
    dev_comm_revoke,     dev_comm_abort, dev_comm_destroy, dev_host_alloc,
    dev_host_free,       dev_device_bus_id,
};

extern "C" __attribute__((visibility("default"))) const bt_nccl_dev_t *bt_nccl_dev_get(
    int version) {
  return version == BT_NCCL_DEV_VERSION ? &dev_table : NULL;
}
