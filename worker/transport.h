/* transport.h - point-to-point tensor messages between pipeline workers
 * (DESIGN.md §4).
 *
 * What it is for: moving activations and gradients between the workers of
 * one job, without ever blocking forever. One interface (a vtable), several
 * implementations: `socket` here (worker/transport_socket.c: TCP between
 * any hosts, or Unix sockets within one) and `nccl`
 * (worker/transport_nccl.c, GPUs).
 *
 * The communication rule, shared with the simulator (schedules/comm.h):
 * a worker blocks only on the receives its next action needs; a send starts
 * when the action that produced it ends and completes in the background,
 * its buffer untouched until then; receives are posted as early as their
 * buffers allow; a pending send never delays a later receive.
 *
 *   bt_tx_isend(tx, buf, bytes, peer, tag, &req);   starts, never blocks
 *   bt_tx_irecv(tx, buf, bytes, peer, tag, &req);   posts, never blocks
 *   bt_tx_wait(tx, req, deadline);                  bounded by the deadline
 *
 * Matching: every message carries its tag (schedules/comm.h: step, kind,
 * virtual stage, micro-batch) and is matched to a receive by (peer, exact
 * tag), never by arrival order, so two same-size tensors between the same
 * pair of workers cannot be swapped. A message that arrives before its
 * receive is posted is held (copied into transport memory) until it is.
 * Errors of matching are BT_ETAG:
 *   - a receive posted with the tag of another receive still pending;
 *   - a message whose tag and peer match a receive but whose size differs;
 *   - a message whose tag repeats one already held;
 *   - a message of a step already closed by bt_tx_end_step(), or more than
 *     one step ahead of the open one (a neighbour can run at most one step
 *     ahead: its next step needs our data);
 *   - at bt_tx_end_step(s): any held message of step <= s (it will never be
 *     received).
 * A tag error from the wire marks that peer broken: nothing more from it
 * can be trusted.
 *
 * Failure: a peer that closes its connection or dies makes every pending
 * and future request with that peer fail with BT_EPEER at once (no waiting
 * for the deadline), except messages it had sent completely before, which
 * are still delivered. Corrupt stream headers give BT_ETRANSPORT.
 *
 * Memory: buffers are host memory, read or written by the transport's
 * progress thread until the request completes. The worker stages device
 * tensors through host buffers for the socket transport; the NCCL
 * transport takes device pointers. Neither copies a posted receive's data
 * twice: a message whose receive is already posted lands in its buffer.
 *
 * NCCL note (for worker/transport_nccl.c): NCCL has no tags. It uses one
 * channel (communicator + stream) per (peer, kind), created in one fixed
 * order on every worker; within a channel messages are sent and received
 * in the same order, so the tag there is checked against the expected
 * order (bt_sched_*), not used to match.
 *
 * Not thread-safe for concurrent callers: one worker thread drives a
 * transport (its own progress thread runs inside).
 */
#ifndef BT_WORKER_TRANSPORT_H
#define BT_WORKER_TRANSPORT_H
#include <stddef.h>
#include <stdint.h>

#include "schedules/comm.h" /* bt_tag_t, bt_msg_kind_t */

typedef struct bt_tx bt_tx_t;
typedef struct bt_tx_req bt_tx_req_t;

/* Counters, for metrics and tests. */
typedef struct {
  uint64_t msgs_sent, msgs_recv;   /* whole messages */
  uint64_t bytes_sent, bytes_recv; /* payload bytes */
  uint64_t held;                   /* messages that arrived before their receive */
  uint64_t held_bytes_peak;        /* most payload bytes held at one time */
  uint64_t refused;                /* connections refused (bad token, garbage, late) */
} bt_tx_stats_t;

typedef struct {
  const char *name;
  int (*isend)(bt_tx_t *tx, const void *buf, size_t bytes, int peer, bt_tag_t tag, bt_tx_req_t **req);
  int (*irecv)(bt_tx_t *tx, void *buf, size_t bytes, int peer, bt_tag_t tag, bt_tx_req_t **req);
  int (*test)(bt_tx_t *tx, bt_tx_req_t *req);
  int (*wait)(bt_tx_t *tx, bt_tx_req_t *req, uint64_t deadline);
  int (*wait_sends)(bt_tx_t *tx, uint64_t deadline);
  int (*end_step)(bt_tx_t *tx, int64_t step, uint64_t deadline);
  void (*stats)(bt_tx_t *tx, bt_tx_stats_t *out);
  void (*destroy)(bt_tx_t *tx);
} bt_tx_ops_t;

/* The common head of every transport; implementations embed it first. */
struct bt_tx {
  const bt_tx_ops_t *ops;
  int rank, nranks;
};

/* Starts sending `bytes` from `buf` to `peer`. Never blocks. The buffer
 * must stay untouched until the request completes. With req NULL the send
 * is detached: nobody waits for it alone, bt_tx_wait_sends() covers it and
 * reports its error. Returns 0, BT_EARG (bad peer, tag or buffer), or the
 * peer's error (BT_EPEER, BT_ETAG, BT_ETRANSPORT) when it is already
 * broken. Messages to one peer leave in the order they were started. */
int bt_tx_isend(bt_tx_t *tx, const void *buf, size_t bytes, int peer, bt_tag_t tag,
                bt_tx_req_t **req);

/* Posts a receive of exactly `bytes` from `peer` with `tag`. Never blocks;
 * completes at once (on the next test/wait) when the message was held.
 * Returns 0, BT_EARG, BT_ETAG (the tag is already posted, or held with
 * another size), or the peer's error. */
int bt_tx_irecv(bt_tx_t *tx, void *buf, size_t bytes, int peer, bt_tag_t tag, bt_tx_req_t **req);

/* Non-blocking: 0 while pending; 1 when done (req released); a negative code
 * when it failed (req released). */
int bt_tx_test(bt_tx_t *tx, bt_tx_req_t *req);

/* Waits until req completes or the monotonic `deadline` (bt_clock_ns())
 * passes. Returns 0 (req released), BT_ETIMEOUT (req still pending: wait
 * again, or destroy the transport before freeing its buffer), or the
 * request's error (BT_EPEER, BT_ETAG, BT_ETRANSPORT; req released). */
int bt_tx_wait(bt_tx_t *tx, bt_tx_req_t *req, uint64_t deadline);

/* Waits until every send started so far has completed (its buffer is free
 * again). Returns 0, BT_ETIMEOUT, or the first error of a detached send. */
int bt_tx_wait_sends(bt_tx_t *tx, uint64_t deadline);

/* Closes step `step`: waits for the sends (as bt_tx_wait_sends), then
 * checks that nothing of this step or before is still held (BT_ETAG
 * otherwise, naming the message in the log). From now on messages of step
 * <= `step` are refused, and of step > step + 2 too. */
int bt_tx_end_step(bt_tx_t *tx, int64_t step, uint64_t deadline);

void bt_tx_stats(bt_tx_t *tx, bt_tx_stats_t *out);

/* Stops the progress thread, closes every connection, frees everything
 * including requests not yet collected. NULL is a no-op. */
void bt_tx_destroy(bt_tx_t *tx);

/* "activation 3/5/2" style description of a tag, for logs. */
void bt_tag_str(const bt_tag_t *tag, char *out, size_t cap);

/* The per-job token from BATON_JOB_TOKEN: hex, at least 16 bytes (32 hex
 * digits), at most BT_TX_TOKEN_MAX bytes. BT_EARG when missing or bad. */
#define BT_TX_TOKEN_MAX 64
int bt_tx_token_from_env(uint8_t *token, size_t *len);
/* The same for a hex string. */
int bt_tx_token_parse(const char *hex, uint8_t *token, size_t *len);

/* ---- the socket transport ---- */

typedef struct {
  int rank, nranks;
  const int *peers;          /* the ranks this worker exchanges messages with */
  int npeers;
  const uint8_t *token;      /* the per-job token (>= 16 bytes): the key both ends of a
                                connection prove they hold; it is never sent */
  size_t token_len;
  int local;                 /* 1: listen on a Unix socket ("unix:@NAME", same host only):
                                faster than loopback TCP for a single-node job */
  const char *bind_host;     /* TCP: NULL is "127.0.0.1" (single-node job); "0.0.0.0" for
                                multi-node */
  const char *advertise_host;/* the host others dial; NULL: bind_host, or this host's name
                                when bound to the wildcard address */
  int64_t handshake_ms;      /* an accepted connection must prove the token (finish its
                                handshake) within this time (0: 2000) */
} bt_tx_socket_opts_t;

/* Listens on an ephemeral port (port 0), or on a kernel-named abstract Unix
 * socket with opts.local, and starts the progress thread,
 * which accepts the peers of lower rank as soon as they dial (before
 * bt_tx_socket_connect() is called). BT_EARG for bad options. */
int bt_tx_socket_create(const bt_tx_socket_opts_t *opts, bt_tx_t **out);

/* "tcp:HOST:PORT" or "unix:@NAME": what to report to the supervisor (READY). */
const char *bt_tx_socket_address(bt_tx_t *tx);

/* Connects to the peers: dials every peer of higher rank at addrs[peer]
 * (either kind of address, whatever this worker listens on)
 * (retrying until the deadline, since peers start at different times), and
 * waits until every peer of lower rank has dialed in. BT_ETIMEOUT when a
 * peer is still missing at the deadline (the log names it); BT_ETRANSPORT
 * at once when the listener at a peer's address cannot prove the job token
 * (it is sent nothing beyond the hello). */
int bt_tx_socket_connect(bt_tx_t *tx, const char *const *addrs, uint64_t deadline);

#endif
