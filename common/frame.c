/* frame.c - the control-frame codec of frame.h (DESIGN.md §5).
 *
 * What it is for: turning control messages into framed bytes and back, with
 * one strict parser that never trusts the sender. Every multi-byte integer
 * is written little-endian byte by byte (never by copying a struct), doubles
 * travel as the little-endian bytes of their IEEE-754 bit pattern, strings
 * as a u32 length and that many bytes (no NUL on the wire).
 *
 * What it does not do: I/O, buffering of partial reads, or deciding what a
 * message means. Callers feed bytes to bt_frame_parse() and, for a whole
 * frame, call the decoder of its type.
 *
 * Payload layouts (all fields in this order):
 *   hello      u32 stage, u32 incarnation, i64 pid
 *   ready      u32 stage, str addr, str gpu, 128 bytes nccl_id
 *   heartbeat  u32 stage, u32 phase, i64 step, i64 action, i64 actions_done
 *   metrics    u32 stage, i64 step, f64 loss, f64 busy_s, f64 idle_s,
 *              f64 step_s, i64 tokens
 *   hashes     u32 stage, i64 step, u32 n, n x (u32 layer, u32 index,
 *              str name, u64 hash hi, u64 hash lo)
 *   shard      u32 stage, i64 step, str file, u64 size, u32 crc
 *   error      u32 stage, i32 code, i32 exit_code, str text
 *   trace      u32 stage, i64 step, u32 n, n x (u32 worker, str action,
 *              f64 start_s, f64 end_s)
 *   start      u32 nstages, i64 first_step, i64 last_step,
 *              nstages x str addr, 128 bytes nccl_id,
 *              i64 restore_step, i64 ckpt_every, u32 ckpt_last,
 *              nstages x str gpu
 *   step       i64 step            (DONE, CKPT_AT, STOP, CKPT_LATE)
 *   empty      nothing             (ABORT)
 */
#include "common/frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/crc.h"
#include "common/error.h"

/* ---- byte order helpers ---- */

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)p[1] << 8); }

static uint32_t ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t ld64(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }

static void st16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void st32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void st64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static int type_known(uint16_t type) {
  return (type >= BT_MSG_HELLO && type <= BT_MSG_CKPT_LATE) ||
         (type >= BT_MSG_START && type <= BT_MSG_ABORT) || (type >= BT_NODE_HELLO && type <= BT_NODE_BYE);
}

const char *bt_msg_type_name(uint16_t type) {
  switch (type) {
  case BT_MSG_HELLO: return "hello";
  case BT_MSG_READY: return "ready";
  case BT_MSG_HEARTBEAT: return "heartbeat";
  case BT_MSG_METRICS: return "metrics";
  case BT_MSG_HASHES: return "hashes";
  case BT_MSG_SHARD_DURABLE: return "shard-durable";
  case BT_MSG_ERROR: return "error";
  case BT_MSG_DONE: return "done";
  case BT_MSG_TRACE: return "trace";
  case BT_MSG_CKPT_LATE: return "checkpoint-late";
  case BT_MSG_START: return "start";
  case BT_MSG_CKPT_AT: return "checkpoint-at";
  case BT_MSG_STOP: return "stop";
  case BT_MSG_ABORT: return "abort";
  case BT_NODE_HELLO: return "node-hello";
  case BT_NODE_CHALLENGE: return "node-challenge";
  case BT_NODE_AUTH: return "node-auth";
  case BT_NODE_WELCOME: return "node-welcome";
  case BT_NODE_JOIN: return "node-join";
  case BT_NODE_REFUSE: return "node-refuse";
  case BT_NODE_BEAT: return "node-beat";
  case BT_NODE_SPAWN: return "node-spawn";
  case BT_NODE_SPAWNED: return "node-spawned";
  case BT_NODE_CTL: return "node-ctl";
  case BT_NODE_EXITED: return "node-exited";
  case BT_NODE_KILL: return "node-kill";
  case BT_NODE_BYE: return "node-bye";
  default: return "unknown";
  }
}

/* ---- parsing ---- */

long bt_frame_parse(const uint8_t *buf, size_t len, bt_frame_t *out) {
  uint8_t magic[4];
  st32(magic, BT_FRAME_MAGIC);
  /* Check the magic byte by byte as it arrives, so a stream of garbage is
   * refused on its first byte instead of after a whole header's worth. */
  for (size_t i = 0; i < 4 && i < len; i++)
    if (buf[i] != magic[i]) return BT_EFORMAT;
  if (len < 6) return 0;
  if (ld16(buf + 4) != BT_FRAME_VERSION) return BT_EVERSION;
  if (len < 8) return 0;
  uint16_t type = ld16(buf + 6);
  if (!type_known(type)) return BT_EFORMAT;
  if (len < BT_FRAME_HEADER) return 0;
  uint32_t plen = ld32(buf + 8);
  if (plen > BT_FRAME_MAX_PAYLOAD) return BT_EFORMAT;
  size_t total = (size_t)BT_FRAME_HEADER + plen + BT_FRAME_TRAILER;
  if (len < total) return 0;
  uint32_t want = ld32(buf + BT_FRAME_HEADER + plen);
  if (bt_crc32(0, buf, BT_FRAME_HEADER + (size_t)plen) != want) return BT_ECRC;
  if (out) {
    out->type = type;
    out->len = plen;
    out->payload = buf + BT_FRAME_HEADER;
  }
  return (long)total;
}

/* ---- the growing buffer ---- */

void bt_buf_init(bt_buf_t *b) { memset(b, 0, sizeof *b); }

void bt_buf_free(bt_buf_t *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

void bt_buf_reset(bt_buf_t *b) {
  b->len = 0;
  b->err = 0;
}

/* Makes room for n more bytes; returns where they go, or NULL (sticky err). */
static uint8_t *buf_grow(bt_buf_t *b, size_t n) {
  if (b->err) return NULL;
  if (n > SIZE_MAX - b->len) {
    b->err = -ENOMEM;
    return NULL;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) {
      b->err = -ENOMEM;
      return NULL;
    }
    b->data = d;
    b->cap = cap;
  }
  uint8_t *p = b->data + b->len;
  b->len += n;
  return p;
}

static void put_u32(bt_buf_t *b, uint32_t v) {
  uint8_t *p = buf_grow(b, 4);
  if (p) st32(p, v);
}

static void put_u64(bt_buf_t *b, uint64_t v) {
  uint8_t *p = buf_grow(b, 8);
  if (p) st64(p, v);
}

static void put_i32(bt_buf_t *b, int32_t v) { put_u32(b, (uint32_t)v); }
static void put_i64(bt_buf_t *b, int64_t v) { put_u64(b, (uint64_t)v); }

static void put_f64(bt_buf_t *b, double v) {
  uint64_t u;
  memcpy(&u, &v, sizeof u);
  put_u64(b, u);
}

static void put_bytes(bt_buf_t *b, const void *src, size_t n) {
  uint8_t *p = buf_grow(b, n);
  if (p && n) memcpy(p, src, n);
}

/* A string field of capacity `cap`: what a decoder into the same field can
 * hold, i.e. at most cap - 1 bytes, so a field that lacks its NUL is cut
 * rather than read past its end. */
static void put_str(bt_buf_t *b, const char *s, size_t cap) {
  size_t n = strnlen(s, cap - 1);
  put_u32(b, (uint32_t)n);
  put_bytes(b, s, n);
}

/* Starts a frame: writes its header with a zero length; returns the offset
 * of the frame, which end_frame() needs. */
static size_t begin_frame(bt_buf_t *b, uint16_t type) {
  size_t at = b->len;
  uint8_t *p = buf_grow(b, BT_FRAME_HEADER);
  if (p) {
    st32(p, BT_FRAME_MAGIC);
    st16(p + 4, BT_FRAME_VERSION);
    st16(p + 6, type);
    st32(p + 8, 0);
  }
  return at;
}

/* Fills in the length and appends the CRC. A failed or oversized frame is
 * removed whole, so the buffer never holds half a frame. */
static void end_frame(bt_buf_t *b, size_t at) {
  if (!b->err && b->len - at - BT_FRAME_HEADER > BT_FRAME_MAX_PAYLOAD) b->err = -EMSGSIZE;
  if (b->err) {
    if (b->len > at) b->len = at;
    return;
  }
  uint32_t plen = (uint32_t)(b->len - at - BT_FRAME_HEADER);
  st32(b->data + at + 8, plen);
  uint32_t crc = bt_crc32(0, b->data + at, BT_FRAME_HEADER + (size_t)plen);
  put_u32(b, crc);
  if (b->err) b->len = at;
}

/* ---- encoders ---- */

void bt_msg_encode_hello(bt_buf_t *b, const bt_msg_hello_t *m) {
  size_t at = begin_frame(b, BT_MSG_HELLO);
  put_u32(b, m->stage);
  put_u32(b, m->incarnation);
  put_i64(b, m->pid);
  end_frame(b, at);
}

void bt_msg_encode_ready(bt_buf_t *b, const bt_msg_ready_t *m) {
  size_t at = begin_frame(b, BT_MSG_READY);
  put_u32(b, m->stage);
  put_str(b, m->addr, sizeof m->addr);
  put_str(b, m->gpu, sizeof m->gpu);
  put_bytes(b, m->nccl_id, sizeof m->nccl_id);
  end_frame(b, at);
}

void bt_msg_encode_heartbeat(bt_buf_t *b, const bt_msg_heartbeat_t *m) {
  size_t at = begin_frame(b, BT_MSG_HEARTBEAT);
  put_u32(b, m->stage);
  put_u32(b, m->phase);
  put_i64(b, m->step);
  put_i64(b, m->action);
  put_i64(b, m->actions_done);
  end_frame(b, at);
}

void bt_msg_encode_metrics(bt_buf_t *b, const bt_msg_metrics_t *m) {
  size_t at = begin_frame(b, BT_MSG_METRICS);
  put_u32(b, m->stage);
  put_i64(b, m->step);
  put_f64(b, m->loss);
  put_f64(b, m->busy_s);
  put_f64(b, m->idle_s);
  put_f64(b, m->step_s);
  put_i64(b, m->tokens);
  end_frame(b, at);
}

void bt_msg_encode_hashes(bt_buf_t *b, const bt_msg_hashes_t *m) {
  size_t at = begin_frame(b, BT_MSG_HASHES);
  put_u32(b, m->stage);
  put_i64(b, m->step);
  put_u32(b, m->n);
  for (uint32_t i = 0; i < m->n && !b->err; i++) {
    const bt_hash_rec_t *r = &m->recs[i];
    put_u32(b, r->layer);
    put_u32(b, r->index);
    put_str(b, r->name, sizeof r->name);
    put_u64(b, r->h.hi);
    put_u64(b, r->h.lo);
  }
  end_frame(b, at);
}

void bt_msg_encode_shard(bt_buf_t *b, const bt_msg_shard_t *m) {
  size_t at = begin_frame(b, BT_MSG_SHARD_DURABLE);
  put_u32(b, m->stage);
  put_i64(b, m->step);
  put_str(b, m->file, sizeof m->file);
  put_u64(b, m->size);
  put_u32(b, m->crc);
  end_frame(b, at);
}

void bt_msg_encode_error(bt_buf_t *b, const bt_msg_error_t *m) {
  size_t at = begin_frame(b, BT_MSG_ERROR);
  put_u32(b, m->stage);
  put_i32(b, m->code);
  put_i32(b, m->exit_code);
  put_str(b, m->text, sizeof m->text);
  end_frame(b, at);
}

void bt_msg_encode_trace(bt_buf_t *b, const bt_msg_trace_t *m) {
  size_t at = begin_frame(b, BT_MSG_TRACE);
  put_u32(b, m->stage);
  put_i64(b, m->step);
  put_u32(b, m->n);
  for (uint32_t i = 0; i < m->n && !b->err; i++) {
    const bt_trace_ev_t *e = &m->ev[i];
    put_u32(b, e->worker);
    put_str(b, e->action, sizeof e->action);
    put_f64(b, e->start_s);
    put_f64(b, e->end_s);
  }
  end_frame(b, at);
}

void bt_msg_encode_start(bt_buf_t *b, const bt_msg_start_t *m) {
  if (!b->err && m->nstages > BT_MAX_STAGES) b->err = BT_EARG;
  size_t at = begin_frame(b, BT_MSG_START);
  put_u32(b, m->nstages);
  put_i64(b, m->first_step);
  put_i64(b, m->last_step);
  for (uint32_t i = 0; i < m->nstages && !b->err; i++) put_str(b, m->addrs[i], sizeof m->addrs[i]);
  put_bytes(b, m->nccl_id, sizeof m->nccl_id);
  put_i64(b, m->restore_step);
  put_i64(b, m->ckpt_every);
  put_u32(b, m->ckpt_last);
  for (uint32_t i = 0; i < m->nstages && !b->err; i++) put_str(b, m->gpus[i], sizeof m->gpus[i]);
  end_frame(b, at);
}

static int is_step_type(uint16_t type) {
  return type == BT_MSG_DONE || type == BT_MSG_CKPT_AT || type == BT_MSG_STOP ||
         type == BT_MSG_CKPT_LATE;
}

void bt_msg_encode_step(bt_buf_t *b, uint16_t type, const bt_msg_step_t *m) {
  if (!b->err && !is_step_type(type)) b->err = BT_EARG;
  size_t at = begin_frame(b, type);
  put_i64(b, m->step);
  end_frame(b, at);
}

void bt_msg_encode_empty(bt_buf_t *b, uint16_t type) {
  if (!b->err && !type_known(type)) b->err = BT_EARG;
  size_t at = begin_frame(b, type);
  end_frame(b, at);
}

/* ---- decoders ---- */

/* A cursor over a payload. Any read past the end sets err and yields zeros,
 * so a decoder reads all its fields and checks once at the end. */
typedef struct {
  const uint8_t *p;
  size_t left;
  int err;
} rd_t;

static void rd_init(rd_t *r, const bt_frame_t *f) {
  r->p = f->payload;
  r->left = f->len;
  r->err = 0;
}

static const uint8_t *rd_take(rd_t *r, size_t n) {
  if (r->err || r->left < n) {
    r->err = BT_EFORMAT;
    return NULL;
  }
  const uint8_t *p = r->p;
  r->p += n;
  r->left -= n;
  return p;
}

static uint32_t get_u32(rd_t *r) {
  const uint8_t *p = rd_take(r, 4);
  return p ? ld32(p) : 0;
}

static uint64_t get_u64(rd_t *r) {
  const uint8_t *p = rd_take(r, 8);
  return p ? ld64(p) : 0;
}

static int32_t get_i32(rd_t *r) { return (int32_t)get_u32(r); }
static int64_t get_i64(rd_t *r) { return (int64_t)get_u64(r); }

static double get_f64(rd_t *r) {
  uint64_t u = get_u64(r);
  double v;
  memcpy(&v, &u, sizeof v);
  return v;
}

/* A string into a field of capacity cap: refused when it would not fit with
 * its NUL, or when it holds a NUL itself (it would be cut silently). */
static void get_str(rd_t *r, char *dst, size_t cap) {
  dst[0] = '\0';
  uint32_t n = get_u32(r);
  if (r->err) return;
  if (n > cap - 1) {
    r->err = BT_EFORMAT;
    return;
  }
  const uint8_t *p = rd_take(r, n);
  if (!p) return;
  if (memchr(p, '\0', n)) {
    r->err = BT_EFORMAT;
    return;
  }
  memcpy(dst, p, n);
  dst[n] = '\0';
}

/* The verdict: every field read, no byte left over. */
static int rd_done(const rd_t *r) { return r->err || r->left ? BT_EFORMAT : 0; }

static int check_type(const bt_frame_t *f, uint16_t type) {
  if (!f || f->type != type || (f->len && !f->payload)) return BT_EFORMAT;
  return 0;
}

int bt_msg_decode_hello(const bt_frame_t *f, bt_msg_hello_t *m) {
  if (check_type(f, BT_MSG_HELLO)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->incarnation = get_u32(&r);
  m->pid = get_i64(&r);
  return rd_done(&r);
}

int bt_msg_decode_ready(const bt_frame_t *f, bt_msg_ready_t *m) {
  if (check_type(f, BT_MSG_READY)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  get_str(&r, m->addr, sizeof m->addr);
  get_str(&r, m->gpu, sizeof m->gpu);
  const uint8_t *id = rd_take(&r, sizeof m->nccl_id);
  if (id) memcpy(m->nccl_id, id, sizeof m->nccl_id);
  return rd_done(&r);
}

int bt_msg_decode_heartbeat(const bt_frame_t *f, bt_msg_heartbeat_t *m) {
  if (check_type(f, BT_MSG_HEARTBEAT)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->phase = get_u32(&r);
  m->step = get_i64(&r);
  m->action = get_i64(&r);
  m->actions_done = get_i64(&r);
  if (m->phase > BT_PHASE_CONNECT) return BT_EFORMAT;
  return rd_done(&r);
}

int bt_msg_decode_metrics(const bt_frame_t *f, bt_msg_metrics_t *m) {
  if (check_type(f, BT_MSG_METRICS)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->step = get_i64(&r);
  m->loss = get_f64(&r);
  m->busy_s = get_f64(&r);
  m->idle_s = get_f64(&r);
  m->step_s = get_f64(&r);
  m->tokens = get_i64(&r);
  return rd_done(&r);
}

/* The fewest payload bytes one hash record or trace event can take: the
 * bound on a count before anything is allocated for it. */
enum { HASH_REC_MIN = 4 + 4 + 4 + 16, TRACE_EV_MIN = 4 + 4 + 8 + 8 };

int bt_msg_decode_hashes(const bt_frame_t *f, bt_msg_hashes_t *m) {
  m->n = 0;
  m->recs = NULL;
  if (check_type(f, BT_MSG_HASHES)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->step = get_i64(&r);
  uint32_t n = get_u32(&r);
  if (r.err || n > r.left / HASH_REC_MIN) return BT_EFORMAT;
  bt_hash_rec_t *recs = n ? calloc(n, sizeof *recs) : NULL;
  if (n && !recs) return -ENOMEM;
  for (uint32_t i = 0; i < n && !r.err; i++) {
    recs[i].layer = get_u32(&r);
    recs[i].index = get_u32(&r);
    get_str(&r, recs[i].name, sizeof recs[i].name);
    recs[i].h.hi = get_u64(&r);
    recs[i].h.lo = get_u64(&r);
  }
  int rc = rd_done(&r);
  if (rc) {
    free(recs);
    return rc;
  }
  m->n = n;
  m->recs = recs;
  return 0;
}

void bt_msg_hashes_free(bt_msg_hashes_t *m) {
  free(m->recs);
  m->recs = NULL;
  m->n = 0;
}

int bt_msg_decode_shard(const bt_frame_t *f, bt_msg_shard_t *m) {
  if (check_type(f, BT_MSG_SHARD_DURABLE)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->step = get_i64(&r);
  get_str(&r, m->file, sizeof m->file);
  m->size = get_u64(&r);
  m->crc = get_u32(&r);
  return rd_done(&r);
}

int bt_msg_decode_error(const bt_frame_t *f, bt_msg_error_t *m) {
  if (check_type(f, BT_MSG_ERROR)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->code = get_i32(&r);
  m->exit_code = get_i32(&r);
  get_str(&r, m->text, sizeof m->text);
  return rd_done(&r);
}

int bt_msg_decode_trace(const bt_frame_t *f, bt_msg_trace_t *m) {
  m->n = 0;
  m->ev = NULL;
  if (check_type(f, BT_MSG_TRACE)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->stage = get_u32(&r);
  m->step = get_i64(&r);
  uint32_t n = get_u32(&r);
  if (r.err || n > r.left / TRACE_EV_MIN) return BT_EFORMAT;
  bt_trace_ev_t *ev = n ? calloc(n, sizeof *ev) : NULL;
  if (n && !ev) return -ENOMEM;
  for (uint32_t i = 0; i < n && !r.err; i++) {
    ev[i].worker = get_u32(&r);
    get_str(&r, ev[i].action, sizeof ev[i].action);
    ev[i].start_s = get_f64(&r);
    ev[i].end_s = get_f64(&r);
  }
  int rc = rd_done(&r);
  if (rc) {
    free(ev);
    return rc;
  }
  m->n = n;
  m->ev = ev;
  return 0;
}

void bt_msg_trace_free(bt_msg_trace_t *m) {
  free(m->ev);
  m->ev = NULL;
  m->n = 0;
}

int bt_msg_decode_start(const bt_frame_t *f, bt_msg_start_t *m) {
  if (check_type(f, BT_MSG_START)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->nstages = get_u32(&r);
  m->first_step = get_i64(&r);
  m->last_step = get_i64(&r);
  if (r.err || m->nstages > BT_MAX_STAGES) return BT_EFORMAT;
  for (uint32_t i = 0; i < m->nstages && !r.err; i++) get_str(&r, m->addrs[i], sizeof m->addrs[i]);
  /* Unused slots are cleared so a reused struct never shows a stale peer. */
  for (uint32_t i = m->nstages; i < BT_MAX_STAGES; i++) m->addrs[i][0] = '\0';
  const uint8_t *id = rd_take(&r, sizeof m->nccl_id);
  if (id) memcpy(m->nccl_id, id, sizeof m->nccl_id);
  m->restore_step = get_i64(&r);
  m->ckpt_every = get_i64(&r);
  m->ckpt_last = get_u32(&r);
  for (uint32_t i = 0; i < m->nstages && !r.err; i++) get_str(&r, m->gpus[i], sizeof m->gpus[i]);
  for (uint32_t i = m->nstages; i < BT_MAX_STAGES; i++) m->gpus[i][0] = '\0';
  if (!r.err && (m->restore_step < 0 || m->ckpt_every < 0 || m->ckpt_last > 1)) return BT_EFORMAT;
  return rd_done(&r);
}

int bt_msg_decode_step(const bt_frame_t *f, bt_msg_step_t *m) {
  if (!f || !is_step_type(f->type) || (f->len && !f->payload)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->step = get_i64(&r);
  return rd_done(&r);
}

int bt_msg_decode_empty(const bt_frame_t *f, uint16_t type) {
  if (check_type(f, type)) return BT_EFORMAT;
  return f->len ? BT_EFORMAT : 0;
}

/* ---- node agent <-> coordinator ---- */

static int is_node_type(uint16_t type) { return type >= BT_NODE_HELLO && type <= BT_NODE_BYE; }

void bt_node_encode(bt_buf_t *b, uint16_t type, const bt_node_msg_t *m) {
  if (!b->err && (!is_node_type(type) || (m->dlen && !m->data))) b->err = BT_EARG;
  size_t at = begin_frame(b, type);
  put_u32(b, m->node);
  put_u32(b, m->inc);
  put_u32(b, m->stage);
  for (int i = 0; i < 4; i++) put_i64(b, m->num[i]);
  put_bytes(b, m->nonce, sizeof m->nonce);
  put_bytes(b, m->proof, sizeof m->proof);
  put_str(b, m->text, sizeof m->text);
  put_str(b, m->text2, sizeof m->text2);
  put_u32(b, m->dlen);
  if (m->dlen) put_bytes(b, m->data, m->dlen);
  end_frame(b, at);
}

int bt_node_decode(const bt_frame_t *f, bt_node_msg_t *m) {
  if (!f || !is_node_type(f->type) || (f->len && !f->payload)) return BT_EFORMAT;
  rd_t r;
  rd_init(&r, f);
  m->node = get_u32(&r);
  m->inc = get_u32(&r);
  m->stage = get_u32(&r);
  for (int i = 0; i < 4; i++) m->num[i] = get_i64(&r);
  const uint8_t *p = rd_take(&r, sizeof m->nonce);
  if (p) memcpy(m->nonce, p, sizeof m->nonce);
  p = rd_take(&r, sizeof m->proof);
  if (p) memcpy(m->proof, p, sizeof m->proof);
  get_str(&r, m->text, sizeof m->text);
  get_str(&r, m->text2, sizeof m->text2);
  m->dlen = get_u32(&r);
  m->data = rd_take(&r, m->dlen);
  if (!m->dlen) m->data = NULL;
  return rd_done(&r);
}
