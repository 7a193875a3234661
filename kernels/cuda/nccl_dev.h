/* nccl_dev.h - the device side of the NCCL transport, as plain C.
 *
 * What it is for: `baton` links neither CUDA nor NCCL (one binary runs on
 * machines without them, DESIGN.md §1), so every call into NCCL and the
 * CUDA runtime that the NCCL transport (worker/transport_nccl.c) needs lives
 * in libbaton_cuda.so, next to the CUDA backend, behind this table of
 * function pointers. The worker finds the table with one dlsym through
 * bt_cuda_lib_symbol() (kernels/backend.c: the library is dlopen'ed once,
 * never dlclose'd) and calls bt_nccl_dev_get(BT_NCCL_DEV_VERSION).
 *
 * What it deliberately does not do: tags, channels, ordering, deadlines
 * across several requests — the worker's transport does those. Every
 * function here returns at once or after a wait bounded by its `deadline`
 * (bt_clock_ns() units); none blocks on a peer without one. Communicators
 * are NON-BLOCKING (config.blocking = 0): creation and every enqueue may
 * report "in progress", which these functions poll with
 * ncclCommGetAsyncError until done, failed or past the deadline; on failure
 * or timeout they abort the communicator (ncclCommAbort) themselves, so the
 * caller only has to report the code (BT_ENCCL or BT_ETIMEOUT).
 *
 * Handles are opaque: a communicator (ncclComm_t), a stream
 * (cudaStream_t), an event (cudaEvent_t), each wrapped in a small struct.
 */
#ifndef BT_KERNELS_CUDA_NCCL_DEV_H
#define BT_KERNELS_CUDA_NCCL_DEV_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BT_NCCL_DEV_VERSION 2
#define BT_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId), checked at build time */
#define BT_NCCL_HDR_BYTES 32 /* the header sent ahead of every message */
#define BT_NCCL_MAX_INFLIGHT 4096 /* ops of one communicator not yet freed */

typedef struct bt_nccl_comm bt_nccl_comm_t;
typedef struct bt_nccl_op bt_nccl_op_t;

typedef struct {
  int version; /* BT_NCCL_DEV_VERSION */

  /* "NCCL 2.28.9, CUDA runtime 13.0" into out. */
  void (*versions)(char *out, size_t cap);

  /* Whether NCCL can run here: a driver and `device` present. 0, or
   * BT_EBACKEND with one line in why naming what is missing. */
  int (*probe)(int device, char *why, size_t why_len);

  /* ncclGetUniqueId: the creator of the id hosts NCCL's bootstrap root, so
   * it must be a process that stays alive (worker rank 0). */
  int (*unique_id)(uint8_t out[BT_NCCL_ID_BYTES]);

  /* The world communicator on `device`: ncclCommInitRankConfig, non-blocking,
   * polled until ready. Every rank calls it with the same id and nranks. */
  int (*comm_init)(int device, int nranks, const uint8_t id[BT_NCCL_ID_BYTES], int rank,
                   uint64_t deadline, bt_nccl_comm_t **out);

  /* ncclCommSplit of parent, collective over every rank of parent, polled
   * until both are ready. color < 0 is NCCL_SPLIT_NOCOLOR: *out is NULL.
   * The child gets its own stream. */
  int (*comm_split)(bt_nccl_comm_t *parent, int color, int key, uint64_t deadline,
                    bt_nccl_comm_t **out);

  /* ncclCommCount and ncclCommUserRank. */
  int (*comm_size)(bt_nccl_comm_t *c, int *nranks, int *rank);

  /* Enqueues, in one NCCL group on the communicator's own stream, a
   * header of BT_NCCL_HDR_BYTES then `bytes` bytes of device memory (none
   * when bytes is 0) to and/or from `peer`, and records an event after
   * them. Sending: send_hdr (host memory, copied at once) and send_buf.
   * Receiving: recv_buf, and the header lands in the op (op_header).
   * Either side may be absent; both together form one group, which is how
   * a rank sends to itself. BT_EUNSUPPORTED when more than
   * BT_NCCL_MAX_INFLIGHT ops of this communicator are not yet freed.
   * `after` (a compute stream, or NULL): the transfer starts only after
   * everything queued on it so far — an event recorded there, waited for
   * by the channel's stream — so a send never reads a buffer its producing
   * kernels are still writing, and a receive never overwrites one that
   * earlier kernels still read. No host synchronisation. */
  int (*post)(bt_nccl_comm_t *c, const void *send_hdr, const void *send_buf, void *recv_buf,
              size_t bytes, int peer, void *after, uint64_t deadline, bt_nccl_op_t **op);

  /* 1 done, 0 pending, BT_ENCCL / BT_ECUDA when the communicator or the
   * stream failed (the communicator is aborted then). A completed event
   * is trusted only once ncclCommGetAsyncError says the communicator is
   * healthy (an aborted operation may complete its event with garbage).
   * Never blocks. */
  int (*op_test)(bt_nccl_comm_t *c, bt_nccl_op_t *op);
  /* Makes `stream` (a compute stream) wait for the op's completion event:
   * the kernels that read a received buffer run after it has landed. */
  int (*op_join)(bt_nccl_op_t *op, void *stream);
  /* The header a completed receive brought (BT_NCCL_HDR_BYTES). */
  const void *(*op_header)(bt_nccl_op_t *op);
  void (*op_free)(bt_nccl_op_t *op);

  /* ncclCommRevoke (NCCL 2.28 and later, looked up at run time; 0 when it
   * ran, BT_EUNSUPPORTED where this NCCL lacks it): stops the
   * communicator's operations without freeing anything. Revoking every
   * communicator before aborting any matters: ncclCommAbort frees memory,
   * which synchronises the device, which waits for the kernels of the
   * communicators not yet aborted (spinning for a peer that will never
   * come). Aborting does NOT tell the peer process: its operations on the
   * same communicator fail only at its own deadline. */
  int (*comm_revoke)(bt_nccl_comm_t *c);
  /* ncclCommAbort: every pending operation of THIS process ends, now. */
  void (*comm_abort)(bt_nccl_comm_t *c);
  /* Finalizes (polled to the deadline) and destroys; aborts instead when
   * the communicator failed, or when finalizing does not end in time. */
  void (*comm_destroy)(bt_nccl_comm_t *c, uint64_t deadline);

  /* Page-locked host memory, for staging device tensors through the socket
   * transport (cudaMallocHost / cudaFreeHost). */
  int (*host_alloc)(void **ptr, size_t bytes);
  void (*host_free)(void *ptr);

  /* The PCI bus id of `device` ("0000:3b:00.0"): two ranks on one host
   * share a GPU exactly when these match (device numbers alone depend on
   * CUDA_VISIBLE_DEVICES). */
  int (*device_bus_id)(int device, char *out, size_t cap);
} bt_nccl_dev_t;

/* The table, exported by libbaton_cuda.so; NULL for another version. */
typedef const bt_nccl_dev_t *(*bt_nccl_dev_get_fn)(int version);
#define BT_NCCL_DEV_SYMBOL "bt_nccl_dev_get"

/* Implemented in kernels/backend.c (linked into baton): loads
 * libbaton_cuda.so once (BATON_CUDA_LIB, else next to the executable) and
 * looks `name` up in it. NULL with one line in why when the library or the
 * symbol is missing. */
void *bt_cuda_lib_symbol(const char *name, char *why, size_t why_len);

/* Also kernels/backend.c: the device a backend created with `device` uses
 * (-1: LOCAL_RANK, or 0 when CUDA_VISIBLE_DEVICES names one device). */
int bt_cuda_resolve_device(int device);

#ifdef __cplusplus
}
#endif
#endif
