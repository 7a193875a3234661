/* frame.h - the control protocol between supervisor and workers (DESIGN.md §5).
 *
 * A frame on the wire (all integers little-endian):
 *
 *   u32 magic 'BTNC' | u16 version | u16 type | u32 payload length | payload | u32 CRC-32
 *
 * The CRC covers header and payload. bt_frame_parse() is the one strict
 * parser: it rejects a bad magic, version, type, a length over
 * BT_FRAME_MAX_PAYLOAD, a truncated frame or a CRC mismatch, without
 * crashing or reading past `len` (it is fuzzed: fuzz/fuzz_frame.c). Payloads
 * are typed records encoded field by field; each bt_msg_decode_* checks
 * every length and fails with BT_EFORMAT rather than trust the sender.
 *
 * This file does no I/O: the supervisor (libuv) and the worker (blocking
 * socket + heartbeat thread) read and write bytes themselves and hand them
 * to these functions.
 */
#ifndef BT_COMMON_FRAME_H
#define BT_COMMON_FRAME_H
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

#define BT_FRAME_MAGIC 0x434e5442u /* "BTNC" read as little-endian bytes */
#define BT_FRAME_VERSION 1
#define BT_FRAME_HEADER 12
#define BT_FRAME_TRAILER 4
#define BT_FRAME_MAX_PAYLOAD (1u << 20)

typedef enum {
  /* worker -> supervisor */
  BT_MSG_HELLO = 1,         /* bt_msg_hello_t */
  BT_MSG_READY = 2,         /* bt_msg_ready_t: data plane listening */
  BT_MSG_HEARTBEAT = 3,     /* bt_msg_heartbeat_t */
  BT_MSG_METRICS = 4,       /* bt_msg_metrics_t: one per finished step */
  BT_MSG_HASHES = 5,        /* bt_msg_hashes_t: the stage's tensor hashes */
  BT_MSG_SHARD_DURABLE = 6, /* bt_msg_shard_t */
  BT_MSG_ERROR = 7,         /* bt_msg_error_t */
  BT_MSG_DONE = 8,          /* bt_msg_step_t: trained through step */
  BT_MSG_TRACE = 9,         /* bt_msg_trace_t: timed actions of one step */
  BT_MSG_CKPT_LATE = 10,    /* bt_msg_step_t: a CKPT_AT came after its step; the
                               payload is the last step this worker completed */
  /* supervisor -> worker */
  BT_MSG_START = 64,        /* bt_msg_start_t */
  BT_MSG_CKPT_AT = 65,      /* bt_msg_step_t: save a shard after this step */
  BT_MSG_STOP = 66,         /* bt_msg_step_t: stop after this step (or at once: 0) */
  BT_MSG_ABORT = 67,        /* no payload: exit now */
  /* node agent <-> coordinator (multi-node, launcher/hub.c and agent.c):
   * every one carries a bt_node_msg_t */
  BT_NODE_HELLO = 128,      /* agent: node, text = rendezvous job id, nonce */
  BT_NODE_CHALLENGE = 129,  /* coordinator: nonce, proof (it holds the secret) */
  BT_NODE_AUTH = 130,       /* agent: proof */
  BT_NODE_WELCOME = 131,    /* coordinator: text = probe file in the checkpoint dir ("" none),
                               num[0] = heartbeat ms, num[1] = node timeout ms */
  BT_NODE_JOIN = 132,       /* agent: num[0] = slots, num[1] = pid, text = data-plane host,
                               text2 = the probe file's content, data = hostname */
  BT_NODE_REFUSE = 133,     /* either: text = why; the connection closes */
  BT_NODE_BEAT = 134,       /* either: num[0] = sequence number */
  BT_NODE_SPAWN = 135,      /* coordinator: inc, stage, num[0] = argc, num[1] = envc,
                               text2 = the data-plane token's derivation label,
                               data = argv then env, each NUL-terminated */
  BT_NODE_SPAWNED = 136,    /* agent: inc, stage, num[0] = pid */
  BT_NODE_CTL = 137,        /* either: inc, stage, data = control-channel bytes */
  BT_NODE_EXITED = 138,     /* agent: inc, stage, num[0] = exit status, num[1] = signal,
                               num[2] = 1 if it could not be started, text = stderr tail */
  BT_NODE_KILL = 139,       /* coordinator: inc, stage (BT_NODE_ALL: every worker) */
  BT_NODE_BYE = 140,        /* coordinator: num[0] = the job's exit code, text = why */
} bt_msg_type_t;

typedef struct {
  uint16_t type;
  uint32_t len;            /* payload bytes */
  const uint8_t *payload;  /* points into the parsed buffer */
} bt_frame_t;

/* Parses one frame at the start of buf. Returns the frame's total size (> 0),
 * 0 when buf holds only a prefix of a valid frame (read more), or a negative
 * code (BT_EFORMAT, BT_ECRC, BT_EVERSION) when the bytes can never become a
 * valid frame: the connection is then broken and must be closed. */
long bt_frame_parse(const uint8_t *buf, size_t len, bt_frame_t *out);

/* A growing byte buffer for encoding. Errors are sticky (check .err). */
typedef struct {
  uint8_t *data;
  size_t len, cap;
  int err;
} bt_buf_t;

void bt_buf_init(bt_buf_t *b);
void bt_buf_free(bt_buf_t *b);
void bt_buf_reset(bt_buf_t *b);

/* ---- messages ---- */

typedef struct {
  uint32_t stage, incarnation;
  int64_t pid;
} bt_msg_hello_t;

#define BT_ADDR_MAX 128
#define BT_GPU_NAME_MAX 64
typedef struct {
  uint32_t stage;
  char addr[BT_ADDR_MAX]; /* "tcp:HOST:PORT" or "unix:PATH" */
  char gpu[BT_GPU_NAME_MAX]; /* host + GPU identity ("" on the CPU): two stages
                                on one GPU make NCCL fall back to sockets */
  uint8_t nccl_id[128];   /* stage 0 with NCCL: the unique id; else zero */
} bt_msg_ready_t;

/* Appended only (the numbers are on the wire). BT_PHASE_SETUP: creating the
 * NCCL transport's communicators, allowed BATON_NCCL_SETUP_MS (default
 * 120 s) by the supervisor. BT_PHASE_CONNECT: connecting to the data-plane
 * peers after START, so a stall there is reported as a start-up failure,
 * not as a hang in computing. */
typedef enum {
  BT_PHASE_INIT = 0,
  BT_PHASE_COMPUTE,
  BT_PHASE_WAIT,
  BT_PHASE_CKPT,
  BT_PHASE_IDLE,
  BT_PHASE_SETUP,
  BT_PHASE_CONNECT,
} bt_phase_t;

typedef struct {
  uint32_t stage, phase;
  int64_t step;         /* the step being trained (1-based: step s makes update s) */
  int64_t action;       /* index into this stage's action list in that step */
  int64_t actions_done; /* monotonic count over the whole run: progress */
} bt_msg_heartbeat_t;

typedef struct {
  uint32_t stage;
  int64_t step;
  double loss;          /* mean loss of the step; NaN on stages without the head */
  double busy_s, idle_s, step_s;
  int64_t tokens;
} bt_msg_metrics_t;

typedef struct {
  uint32_t stage;
  int64_t step;
  uint32_t n;
  bt_hash_rec_t *recs;  /* decode allocates; free with bt_msg_hashes_free */
} bt_msg_hashes_t;

typedef struct {
  uint32_t stage;
  int64_t step;
  char file[256];       /* relative to the step directory */
  uint64_t size;
  uint32_t crc;
} bt_msg_shard_t;

typedef struct {
  uint32_t stage;
  int32_t code;         /* a bt error code */
  int32_t exit_code;    /* the exit code the worker is about to use */
  char text[512];
} bt_msg_error_t;

typedef struct {
  int64_t step;
} bt_msg_step_t;

typedef struct {
  uint32_t worker;      /* stage that ran them */
  char action[16];      /* "2F0" */
  double start_s, end_s;/* seconds since the job's epoch */
} bt_trace_ev_t;

typedef struct {
  uint32_t stage;
  int64_t step;
  uint32_t n;
  bt_trace_ev_t *ev;    /* decode allocates; free with bt_msg_trace_free */
} bt_msg_trace_t;

#define BT_MAX_STAGES 256
typedef struct {
  uint32_t nstages;
  int64_t first_step;   /* the step to train next (resume point + 1) */
  int64_t last_step;    /* train through this step */
  char addrs[BT_MAX_STAGES][BT_ADDR_MAX]; /* data-plane address of each stage */
  uint8_t nccl_id[128]; /* the NCCL unique id (zero when unused) */
  int64_t restore_step; /* load step-S of the checkpoint directory first (0: fresh) */
  int64_t ckpt_every;   /* save a shard after every multiple of this step (0: never) */
  uint32_t ckpt_last;   /* 1: also save after last_step */
  char gpus[BT_MAX_STAGES][BT_GPU_NAME_MAX]; /* each stage's READY.gpu */
} bt_msg_start_t;

/* The one payload of every BT_NODE_* message (see their comments for
 * which fields each uses; the others are zero). Fixed layout: the strict
 * decoder checks every length, and `data` points into the parsed frame. */
#define BT_NODE_ALL 0xffffffffu
#define BT_NODE_NONCE 32
typedef struct {
  uint32_t node, inc, stage;
  int64_t num[4];
  uint8_t nonce[BT_NODE_NONCE];
  uint8_t proof[BT_NODE_NONCE];
  char text[1024];
  char text2[512];
  const uint8_t *data;  /* decode: into the frame; encode: the bytes to send */
  uint32_t dlen;
} bt_node_msg_t;

/* Each encode appends one whole frame (header, payload, CRC) to b. */
void bt_msg_encode_hello(bt_buf_t *b, const bt_msg_hello_t *m);
void bt_msg_encode_ready(bt_buf_t *b, const bt_msg_ready_t *m);
void bt_msg_encode_heartbeat(bt_buf_t *b, const bt_msg_heartbeat_t *m);
void bt_msg_encode_metrics(bt_buf_t *b, const bt_msg_metrics_t *m);
void bt_msg_encode_hashes(bt_buf_t *b, const bt_msg_hashes_t *m);
void bt_msg_encode_shard(bt_buf_t *b, const bt_msg_shard_t *m);
void bt_msg_encode_error(bt_buf_t *b, const bt_msg_error_t *m);
void bt_msg_encode_trace(bt_buf_t *b, const bt_msg_trace_t *m);
void bt_msg_encode_start(bt_buf_t *b, const bt_msg_start_t *m);
/* DONE, CKPT_AT, STOP */
void bt_msg_encode_step(bt_buf_t *b, uint16_t type, const bt_msg_step_t *m);
/* ABORT and other empty messages */
void bt_msg_encode_empty(bt_buf_t *b, uint16_t type);

/* BT_NODE_* only (BT_EARG otherwise, sticky in b->err). */
void bt_node_encode(bt_buf_t *b, uint16_t type, const bt_node_msg_t *m);

/* Each decode takes a parsed frame of its type; BT_EFORMAT on any mismatch
 * (wrong type, short or long payload, unterminated string, count too big). */
int bt_msg_decode_hello(const bt_frame_t *f, bt_msg_hello_t *m);
int bt_msg_decode_ready(const bt_frame_t *f, bt_msg_ready_t *m);
int bt_msg_decode_heartbeat(const bt_frame_t *f, bt_msg_heartbeat_t *m);
int bt_msg_decode_metrics(const bt_frame_t *f, bt_msg_metrics_t *m);
int bt_msg_decode_hashes(const bt_frame_t *f, bt_msg_hashes_t *m);
void bt_msg_hashes_free(bt_msg_hashes_t *m);
int bt_msg_decode_shard(const bt_frame_t *f, bt_msg_shard_t *m);
int bt_msg_decode_error(const bt_frame_t *f, bt_msg_error_t *m);
int bt_msg_decode_trace(const bt_frame_t *f, bt_msg_trace_t *m);
void bt_msg_trace_free(bt_msg_trace_t *m);
int bt_msg_decode_start(const bt_frame_t *f, bt_msg_start_t *m);
/* Any BT_NODE_* frame. */
int bt_node_decode(const bt_frame_t *f, bt_node_msg_t *m);
int bt_msg_decode_step(const bt_frame_t *f, bt_msg_step_t *m);
/* ABORT and other payload-less messages: the frame is of `type` and empty. */
int bt_msg_decode_empty(const bt_frame_t *f, uint16_t type);

const char *bt_msg_type_name(uint16_t type);

#endif
