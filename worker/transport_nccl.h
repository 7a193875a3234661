/* transport_nccl.h - the NCCL transport: worker/transport.h's interface
 * over ncclSend/ncclRecv, for workers that each own a GPU (DESIGN.md §4).
 *
 * What it is for: moving activations and gradients between the GPUs of a
 * pipeline without staging them through host memory. Buffers are device
 * pointers from the CUDA backend. All NCCL and CUDA calls go through
 * libbaton_cuda.so (kernels/cuda/nccl_dev.h), which `baton` loads on
 * demand, so this file builds and links where there is no CUDA at all.
 *
 * Channels. NCCL has no tags, and operations on one communicator run in
 * the order they were issued. So every (sender, receiver, kind) — the
 * channels of bt_sched_check_channel_order(), which every schedule builder
 * satisfies — gets its own communicator and CUDA stream: a two-rank
 * communicator split from the world one. Within a channel the sender
 * enqueues in send order and the receiver in the order it posts, which
 * the schedule check proves to be the same; a pending send therefore never
 * holds up a receive of another channel. (One stream per (peer, kind) for
 * both directions would deadlock: each side's early-posted receives would
 * queue in front of its sends.)
 *
 * Tags are checked, not trusted: every message travels behind a 32-byte
 * header (step, kind, virtual stage, micro-batch, size) in the same NCCL
 * group, and a completed receive compares the header with the tag and size
 * it was posted with; any difference is BT_ETAG naming both, and breaks the
 * transport. Two receives with the same tag pending on one channel are
 * BT_ETAG at post time. What cannot be checked before completion: a size
 * mismatch makes NCCL's matched operations disagree, which ends at the
 * deadline (abort), not sooner.
 *
 * Waiting. Every wait polls cudaEventQuery and ncclCommGetAsyncError
 * against its deadline (1 us doubling to 200 us between polls). On a
 * deadline or any NCCL or CUDA error every communicator of the transport is
 * aborted (ncclCommAbort) and every request fails: BT_ETIMEOUT or BT_ENCCL
 * (BT_ECUDA), which the worker reports as "retryable". After that the
 * transport is broken; destroy it. Unlike the socket transport, a request
 * that timed out is not "still pending": its communicator is gone.
 *
 * Creation is collective over all ranks: the world communicator
 * (ncclCommInitRankConfig, non-blocking, polled), then for every pair of
 * ranks a < b in increasing order and for kind activation then gradient,
 * direction a->b then b->a, one ncclCommSplit that every rank calls (colour
 * only for the two ends that list each other as peers), each followed by
 * a one-header exchange on the new channel, so NCCL's lazy connection
 * set-up happens there, in the same order on every rank, and never during
 * training. p·(p−1)·2 splits: fine for pipeline sizes (p = 8: 112).
 *
 * Concurrency (NCCL's guide warns that communicators used concurrently on
 * one device can deadlock when their kernels are launched in different
 * orders on different GPUs and cannot all be resident at once): each
 * worker owns one GPU; its channels' kernels are launched from one thread,
 * and at most four channels (two peers, two kinds) of one worker carry
 * traffic at once. That is the arrangement we chose; it has been built and
 * linked here, but NOT run on GPUs yet (no GPU on the development machine)
 * — docs/gpu.md says what scripts/gpu-check.sh runs on a GPU node.
 *
 * A loopback channel (a rank listing itself as a peer) exists for tests on
 * one GPU, where NCCL refuses two ranks: a send and a receive to self are
 * paired (tags compared at once) and issued in one group. The vtable is
 * called directly there, since bt_tx_isend refuses peer == rank.
 *
 * Not here: the choice between NCCL and sockets (bt_tx_nccl_choose below),
 * the supervisor's part (the unique id travels in START.nccl_id).
 */
#ifndef BT_WORKER_TRANSPORT_NCCL_H
#define BT_WORKER_TRANSPORT_NCCL_H
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"
#include "kernels/cuda/nccl_dev.h"
#include "worker/transport.h"

#define BT_TX_NCCL_ID_BYTES 128

typedef struct {
  int rank, nranks;
  int device;              /* CUDA device; -1: as the CUDA backend picks it (LOCAL_RANK) */
  const uint8_t *id;       /* BT_TX_NCCL_ID_BYTES from bt_tx_nccl_unique_id() on rank 0 */
  const int *peers;        /* the ranks this worker exchanges messages with; both ends of
                              a pair must list each other. The rank itself: loopback. */
  int npeers;
  int64_t init_ms;         /* deadline for creating every communicator (0: 120000) */
  int64_t enqueue_ms;      /* deadline for NCCL to accept one send or receive (0: 60000) */
} bt_tx_nccl_opts_t;

/* Whether NCCL can be used here: libbaton_cuda.so loads, a driver and the
 * device exist. 0, or BT_EBACKEND with one line in why naming what is
 * missing ("NCCL transport: no CUDA driver ..."). */
int bt_tx_nccl_available(int device, char *why, size_t why_len);

/* ncclGetUniqueId. Called by worker rank 0 only, which then hosts NCCL's
 * bootstrap root, so it must be the process that stays in the job. 0, or
 * BT_EBACKEND (logged with the reason). */
int bt_tx_nccl_unique_id(uint8_t out[BT_TX_NCCL_ID_BYTES]);

/* Creates every communicator (collective: all ranks call it with the same
 * id and nranks) within opts->init_ms. BT_EARG for bad options or peer
 * lists that are not symmetric, BT_EBACKEND without NCCL, BT_ETIMEOUT,
 * BT_ENCCL; why gets one line. */
int bt_tx_nccl_create(const bt_tx_nccl_opts_t *opts, bt_tx_t **out, char *why, size_t why_len);

/* The same over a device table of the caller's (dev NULL: the one in
 * libbaton_cuda.so): tests run the transport's logic — channels, creation
 * order, tag checks, deadlines, aborts — over a CPU imitation of NCCL. */
int bt_tx_nccl_create_with(const bt_nccl_dev_t *dev, const bt_tx_nccl_opts_t *opts, bt_tx_t **out,
                           char *why, size_t why_len);

/* "NCCL 2.28.9, CUDA runtime 13.0", or why not. */
void bt_tx_nccl_versions(char *out, size_t cap);

/* ---- when NCCL cannot be used: sockets through pinned host buffers ----
 *
 * NCCL refuses two ranks of one communicator on one GPU, so when any two
 * ranks share a GPU (two stages on one GPU) the whole job uses the socket
 * transport: every worker decides alike from the same table, and says so
 * once. gpu_of_rank[r] names rank r's GPU uniquely in the job, e.g.
 * "HOST/PCI-BUS-ID" from bt_tx_nccl_gpu_name(). Returns 1 for NCCL, 0 for
 * sockets, with the reason in why ("ranks 0 and 1 share GPU HOST/0000:3b:00.0").
 *
 * How the pipeline worker uses it: each worker sends its gpu name to the
 * supervisor (READY), START hands every worker the table; then
 *   if (bt_tx_nccl_choose(names, p, why, n)) bt_tx_nccl_create(...)
 *   else { bt_warn("%s: socket transport through pinned host buffers", why);
 *          bt_tx_socket_create(...); }
 * and with sockets, per message:
 *   send:    bt_tx_stage_out(be, host, dev, bytes); bt_tx_isend(tx, host, ...)
 *   receive: bt_tx_irecv(tx, host, ...); bt_tx_wait(...); bt_tx_stage_in(be, dev, host, bytes)
 * where host is a bt_tx_stage_alloc() buffer per in-flight message (a
 * send's buffer stays untouched until the send completes). */
int bt_tx_nccl_choose(const char *const *gpu_of_rank, int nranks, char *why, size_t why_len);

/* "HOST/PCI-BUS-ID" of this worker's device (-1: as the backend picks). */
int bt_tx_nccl_gpu_name(int device, char *out, size_t cap);

/* A host buffer for staging: page-locked (cudaMallocHost) with the CUDA
 * backend, so copies run at full speed and asynchronously; plain memory
 * with the CPU backend. Free with bt_tx_stage_free and the same backend. */
int bt_tx_stage_alloc(bt_backend_t *be, size_t bytes, void **host);
void bt_tx_stage_free(bt_backend_t *be, void *host);
/* Device -> host before a send; host -> device after a receive. Both
 * return when the copy is complete (bounded by the backend's own stream
 * deadline, BATON_CUDA_SYNC_TIMEOUT). */
int bt_tx_stage_out(bt_backend_t *be, void *host, const void *dev, size_t bytes);
int bt_tx_stage_in(bt_backend_t *be, void *dev, const void *host, size_t bytes);

#endif
