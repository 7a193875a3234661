/* transport_nccl.h - the NCCL transport: worker/transport.h's interface
 * over ncclSend/ncclRecv, for workers that each own a GPU (DESIGN.md §4).
 *
 * What it is for: moving activations and gradients between the GPUs of a
 * pipeline without staging them through host memory. Buffers are device
 * pointers from the CUDA backend. All NCCL calls go through
 * libbaton_nccl.so (kernels/cuda/nccl_dev.h), which `baton` loads only
 * when a run uses NCCL, so this file builds and links where there is no
 * CUDA at all, and the CUDA backend runs where NCCL cannot load.
 *
 * Ordering with the compute stream (opts.stream, the backend's
 * ops->stream()). A send reads a buffer that kernels queued just before
 * it are still writing, and a receive posted at the start of a step may
 * overwrite a buffer that the previous step's kernels still read. So every
 * post records an event on the compute stream and makes the channel's
 * stream wait for it, and every completed receive makes the compute stream
 * wait for the channel's completion event: producer before transfer before
 * consumer, on the device, with no host-wide sync on the hot path.
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
 * revoked (ncclCommRevoke, where the NCCL has it), then every one aborted
 * (ncclCommAbort), and every request fails: BT_ETIMEOUT or BT_ENCCL
 * (BT_ECUDA), which the worker reports as "retryable". After that the
 * transport is broken; destroy it. Unlike the socket transport, a request
 * that timed out is not "still pending": its communicator is gone. NCCL
 * does not tell the peer of an abort: the peer's operations end at its
 * own deadline (or when the supervisor stops it).
 *
 * Creation is collective over all ranks: the world communicator
 * (ncclCommInitRankConfig, non-blocking, polled), then the channels of the
 * ring's edges e_i = (i, i+1 mod p) — pipeline peers are ring neighbours
 * (a peer that is not is BT_EARG). The edges are coloured into rounds in
 * which no rank is on two edges: even edges, odd edges, and for odd p > 2
 * the edge that closes the ring alone. For each round, each kind
 * (activation, gradient) and each direction (i -> i+1, then back) every
 * rank calls ncclCommSplit once, the two ends of that round's edge with
 * the edge's index as colour, so one split makes one channel per edge of
 * the round. Each split is followed by a one-header exchange on the new
 * channels, so NCCL's lazy connection set-up happens there and never in
 * training. Splits: 4 per round plus 2 loopback ones — 10 for any even
 * p > 2, 14 for odd p > 2 (it was 2p(p−1)+2: 114 at p = 8).
 *
 * Why the order is the same on every rank: the sequence of splits depends
 * on p alone, so the k-th split call of every rank is the same split (as
 * NCCL requires of a collective); within a round the edges are disjoint,
 * so a warm-up exchange waits only for the other end of its own edge,
 * which runs the same split at the same position; and within a channel
 * (one sender, one receiver, one kind) messages are enqueued in send order
 * on one side and post order on the other, which
 * bt_sched_check_channel_order() proves equal. The deadline for all of it
 * is opts.init_ms: the worker passes BATON_NCCL_SETUP_MS (default 120 s),
 * reports the phase as BT_PHASE_SETUP, and logs the time taken.
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
  void *stream;            /* the compute stream (be->ops->stream(be)); NULL: none */
} bt_tx_nccl_opts_t;

/* The ring's edge colouring (see Creation above): edges of p ranks, rounds,
 * and the round of edge i. */
int bt_tx_nccl_ring_edges(int p);
int bt_tx_nccl_ring_rounds(int p);
int bt_tx_nccl_edge_round(int i, int p);

/* Whether NCCL can be used here: libbaton_nccl.so (and NCCL) loads, a driver and the
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
 * libbaton_nccl.so): tests run the transport's logic — channels, creation
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
