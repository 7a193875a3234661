/* test_frame.c - the control-frame codec (common/frame.h): round trips of
 * every message, and the strict parser against truncation, corruption and
 * random bytes. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/crc.h"
#include "common/error.h"
#include "common/frame.h"

/* Parses the single frame in b and checks it spans the whole buffer. */
static bt_frame_t parse_one(const bt_buf_t *b, uint16_t type) {
  cr_assert_eq(b->err, 0, "encode failed: %d", b->err);
  bt_frame_t f;
  long n = bt_frame_parse(b->data, b->len, &f);
  cr_assert_eq(n, (long)b->len, "parse returned %ld for a %zu-byte frame", n, b->len);
  cr_assert_eq(f.type, type);
  cr_assert_eq(f.len, b->len - BT_FRAME_HEADER - BT_FRAME_TRAILER);
  return f;
}

/* Rewrites the CRC of the frame at the start of buf after an edit, so a
 * test reaches the payload checks instead of stopping at the CRC. */
static void fix_crc(uint8_t *buf) {
  uint32_t plen = (uint32_t)buf[8] | (uint32_t)buf[9] << 8 | (uint32_t)buf[10] << 16 |
                  (uint32_t)buf[11] << 24;
  uint32_t c = bt_crc32(0, buf, BT_FRAME_HEADER + plen);
  for (uint32_t i = 0; i < 4; i++) buf[BT_FRAME_HEADER + plen + i] = (uint8_t)(c >> (8 * i));
}

static void set_len(uint8_t *buf, uint32_t plen) {
  for (int i = 0; i < 4; i++) buf[8 + i] = (uint8_t)(plen >> (8 * i));
}

Test(frame, hello_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_hello_t in = {.stage = 3, .incarnation = 7, .pid = -12345678901ll}, out;
  bt_msg_encode_hello(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_HELLO);
  cr_assert_eq(bt_msg_decode_hello(&f, &out), 0);
  cr_assert_eq(out.stage, 3);
  cr_assert_eq(out.incarnation, 7);
  cr_assert_eq(out.pid, in.pid);
  bt_buf_free(&b);
}

Test(frame, ready_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_ready_t in = {.stage = 255}, out;
  strcpy(in.addr, "tcp:127.0.0.1:40123");
  bt_msg_encode_ready(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_READY);
  cr_assert_eq(bt_msg_decode_ready(&f, &out), 0);
  cr_assert_eq(out.stage, 255);
  cr_assert_str_eq(out.addr, in.addr);
  bt_buf_free(&b);
}

Test(frame, heartbeat_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_heartbeat_t in = {.stage = 1, .phase = BT_PHASE_WAIT, .step = 1ll << 40, .action = 17,
                           .actions_done = INT64_MAX},
                     out;
  bt_msg_encode_heartbeat(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_HEARTBEAT);
  cr_assert_eq(bt_msg_decode_heartbeat(&f, &out), 0);
  cr_assert_eq(out.stage, in.stage);
  cr_assert_eq(out.phase, in.phase);
  cr_assert_eq(out.step, in.step);
  cr_assert_eq(out.action, in.action);
  cr_assert_eq(out.actions_done, in.actions_done);
  bt_buf_free(&b);
}

Test(frame, metrics_round_trip_keeps_every_bit) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_metrics_t in = {.stage = 2, .step = 99, .loss = NAN, .busy_s = 0.1, .idle_s = -0.0,
                         .step_s = 1e-300, .tokens = 4096},
                   out;
  bt_msg_encode_metrics(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_METRICS);
  cr_assert_eq(bt_msg_decode_metrics(&f, &out), 0);
  cr_assert_eq(out.stage, 2);
  cr_assert_eq(out.step, 99);
  cr_assert(isnan(out.loss));
  cr_assert_eq(memcmp(&out.busy_s, &in.busy_s, sizeof(double)), 0);
  cr_assert_eq(memcmp(&out.idle_s, &in.idle_s, sizeof(double)), 0, "the sign of -0.0 is lost");
  cr_assert_eq(memcmp(&out.step_s, &in.step_s, sizeof(double)), 0);
  cr_assert_eq(out.tokens, 4096);
  bt_buf_free(&b);
}

Test(frame, hashes_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_hash_rec_t recs[3] = {
      {.layer = 0, .index = 0, .name = "tables", .h = {1, 2}},
      {.layer = 1, .index = 4, .name = "w1", .h = {UINT64_MAX, 0}},
      {.layer = 9, .index = 1, .name = "", .h = {0x0123456789abcdefull, 42}},
  };
  bt_msg_hashes_t in = {.stage = 1, .step = 10, .n = 3, .recs = recs}, out;
  bt_msg_encode_hashes(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_HASHES);
  cr_assert_eq(bt_msg_decode_hashes(&f, &out), 0);
  cr_assert_eq(out.n, 3);
  cr_assert_eq(out.step, 10);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(out.recs[i].layer, recs[i].layer);
    cr_assert_eq(out.recs[i].index, recs[i].index);
    cr_assert_str_eq(out.recs[i].name, recs[i].name);
    cr_assert_eq(out.recs[i].h.hi, recs[i].h.hi);
    cr_assert_eq(out.recs[i].h.lo, recs[i].h.lo);
  }
  bt_msg_hashes_free(&out);
  cr_assert_null(out.recs);

  bt_buf_reset(&b);
  bt_msg_hashes_t empty = {.stage = 0, .step = 1, .n = 0, .recs = NULL};
  bt_msg_encode_hashes(&b, &empty);
  f = parse_one(&b, BT_MSG_HASHES);
  cr_assert_eq(bt_msg_decode_hashes(&f, &out), 0);
  cr_assert_eq(out.n, 0);
  bt_msg_hashes_free(&out);
  bt_buf_free(&b);
}

Test(frame, shard_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_shard_t in = {.stage = 4, .step = 1200, .size = 1ull << 35, .crc = 0xdeadbeef}, out;
  strcpy(in.file, "stage-004-of-008.h5");
  bt_msg_encode_shard(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_SHARD_DURABLE);
  cr_assert_eq(bt_msg_decode_shard(&f, &out), 0);
  cr_assert_eq(out.stage, 4);
  cr_assert_eq(out.step, 1200);
  cr_assert_str_eq(out.file, in.file);
  cr_assert_eq(out.size, in.size);
  cr_assert_eq(out.crc, in.crc);
  bt_buf_free(&b);
}

Test(frame, error_round_trip_with_longest_text) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_error_t in = {.stage = 0, .code = BT_EPEER, .exit_code = 75}, out;
  memset(in.text, 'x', sizeof in.text - 1);
  in.text[sizeof in.text - 1] = '\0';
  bt_msg_encode_error(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_ERROR);
  cr_assert_eq(bt_msg_decode_error(&f, &out), 0);
  cr_assert_eq(out.code, BT_EPEER);
  cr_assert_eq(out.exit_code, 75);
  cr_assert_str_eq(out.text, in.text);
  bt_buf_free(&b);
}

Test(frame, unterminated_field_is_cut_to_fit) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_ready_t in = {.stage = 1}, out;
  memset(in.addr, 'a', sizeof in.addr); /* no NUL anywhere */
  bt_msg_encode_ready(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_READY);
  cr_assert_eq(bt_msg_decode_ready(&f, &out), 0);
  cr_assert_eq(strlen(out.addr), sizeof out.addr - 1);
  bt_buf_free(&b);
}

Test(frame, trace_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_trace_ev_t ev[2] = {{.worker = 1, .action = "2F0", .start_s = 0.5, .end_s = 0.75},
                         {.worker = 1, .action = "5W3", .start_s = 1.0 / 3, .end_s = 2.0}};
  bt_msg_trace_t in = {.stage = 1, .step = 5, .n = 2, .ev = ev}, out;
  bt_msg_encode_trace(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_TRACE);
  cr_assert_eq(bt_msg_decode_trace(&f, &out), 0);
  cr_assert_eq(out.n, 2);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(out.ev[i].worker, ev[i].worker);
    cr_assert_str_eq(out.ev[i].action, ev[i].action);
    cr_assert_eq(out.ev[i].start_s, ev[i].start_s);
    cr_assert_eq(out.ev[i].end_s, ev[i].end_s);
  }
  bt_msg_trace_free(&out);
  bt_buf_free(&b);
}

Test(frame, start_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  static bt_msg_start_t in, out;
  in.nstages = 4;
  in.first_step = 101;
  in.last_step = 200;
  for (int i = 0; i < 4; i++) snprintf(in.addrs[i], sizeof in.addrs[i], "tcp:10.0.0.%d:%d", i, 5000 + i);
  for (size_t i = 0; i < sizeof in.nccl_id; i++) in.nccl_id[i] = (uint8_t)(i * 7);
  strcpy(out.addrs[5], "stale");
  bt_msg_encode_start(&b, &in);
  bt_frame_t f = parse_one(&b, BT_MSG_START);
  cr_assert_eq(bt_msg_decode_start(&f, &out), 0);
  cr_assert_eq(out.nstages, 4);
  cr_assert_eq(out.first_step, 101);
  cr_assert_eq(out.last_step, 200);
  for (int i = 0; i < 4; i++) cr_assert_str_eq(out.addrs[i], in.addrs[i]);
  cr_assert_str_empty(out.addrs[5]);
  cr_assert_eq(memcmp(out.nccl_id, in.nccl_id, sizeof in.nccl_id), 0);

  bt_buf_reset(&b);
  in.nstages = BT_MAX_STAGES + 1;
  bt_msg_encode_start(&b, &in);
  cr_assert_eq(b.err, BT_EARG);
  cr_assert_eq(b.len, 0);
  bt_buf_free(&b);
}

Test(frame, step_and_empty_round_trip) {
  bt_buf_t b;
  bt_buf_init(&b);
  uint16_t types[] = {BT_MSG_DONE, BT_MSG_CKPT_AT, BT_MSG_STOP};
  for (int i = 0; i < 3; i++) {
    bt_buf_reset(&b);
    bt_msg_step_t in = {.step = 1000 + i}, out;
    bt_msg_encode_step(&b, types[i], &in);
    bt_frame_t f = parse_one(&b, types[i]);
    cr_assert_eq(bt_msg_decode_step(&f, &out), 0);
    cr_assert_eq(out.step, 1000 + i);
  }
  bt_buf_reset(&b);
  bt_msg_step_t s = {.step = 1};
  bt_msg_encode_step(&b, BT_MSG_HELLO, &s);
  cr_assert_eq(b.err, BT_EARG, "a step message of a non-step type was encoded");

  bt_buf_reset(&b);
  bt_msg_encode_empty(&b, BT_MSG_ABORT);
  bt_frame_t f = parse_one(&b, BT_MSG_ABORT);
  cr_assert_eq(f.len, 0);
  cr_assert_eq(bt_msg_decode_empty(&f, BT_MSG_ABORT), 0);
  cr_assert_eq(bt_msg_decode_empty(&f, BT_MSG_STOP), BT_EFORMAT);
  bt_buf_free(&b);
}

Test(frame, several_frames_in_one_buffer_parse_in_turn) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_hello_t h = {.stage = 1, .incarnation = 0, .pid = 42};
  bt_msg_step_t s = {.step = 7};
  bt_msg_encode_hello(&b, &h);
  bt_msg_encode_step(&b, BT_MSG_STOP, &s);
  bt_msg_encode_empty(&b, BT_MSG_ABORT);
  cr_assert_eq(b.err, 0);
  uint16_t want[] = {BT_MSG_HELLO, BT_MSG_STOP, BT_MSG_ABORT};
  size_t off = 0;
  for (int i = 0; i < 3; i++) {
    bt_frame_t f;
    long n = bt_frame_parse(b.data + off, b.len - off, &f);
    cr_assert_gt(n, 0);
    cr_assert_eq(f.type, want[i]);
    off += (size_t)n;
  }
  cr_assert_eq(off, b.len);
  cr_assert_str_eq(bt_msg_type_name(BT_MSG_CKPT_AT), "checkpoint-at");
  cr_assert_str_eq(bt_msg_type_name(999), "unknown");
  bt_buf_free(&b);
}

/* One encoded frame of every type, for the table-driven tests below. */
static void encode_all(bt_buf_t *b, size_t *ends, int *count) {
  static bt_msg_start_t st;
  st.nstages = 2;
  strcpy(st.addrs[0], "tcp:127.0.0.1:1");
  strcpy(st.addrs[1], "tcp:127.0.0.1:2");
  bt_hash_rec_t rec = {.layer = 1, .index = 0, .name = "w", .h = {5, 6}};
  bt_trace_ev_t ev = {.worker = 0, .action = "0F0", .start_s = 1, .end_s = 2};
  bt_msg_hello_t h = {.stage = 1};
  bt_msg_ready_t r = {.stage = 1, .addr = "tcp:127.0.0.1:9"};
  bt_msg_heartbeat_t hb = {.stage = 1, .phase = BT_PHASE_COMPUTE, .step = 3};
  bt_msg_metrics_t me = {.stage = 1, .step = 3, .loss = 2.5};
  bt_msg_hashes_t ha = {.stage = 1, .step = 3, .n = 1, .recs = &rec};
  bt_msg_shard_t sh = {.stage = 1, .step = 3, .file = "s.h5", .size = 10, .crc = 1};
  bt_msg_error_t er = {.stage = 1, .code = BT_ETIMEOUT, .exit_code = 3, .text = "late"};
  bt_msg_trace_t tr = {.stage = 1, .step = 3, .n = 1, .ev = &ev};
  bt_msg_step_t sp = {.step = 3};
  int k = 0;
#define ADD(call)        \
  do {                   \
    call;                \
    ends[k++] = b->len;  \
  } while (0)
  ADD(bt_msg_encode_hello(b, &h));
  ADD(bt_msg_encode_ready(b, &r));
  ADD(bt_msg_encode_heartbeat(b, &hb));
  ADD(bt_msg_encode_metrics(b, &me));
  ADD(bt_msg_encode_hashes(b, &ha));
  ADD(bt_msg_encode_shard(b, &sh));
  ADD(bt_msg_encode_error(b, &er));
  ADD(bt_msg_encode_step(b, BT_MSG_DONE, &sp));
  ADD(bt_msg_encode_trace(b, &tr));
  ADD(bt_msg_encode_start(b, &st));
  ADD(bt_msg_encode_step(b, BT_MSG_CKPT_AT, &sp));
  ADD(bt_msg_encode_step(b, BT_MSG_STOP, &sp));
  ADD(bt_msg_encode_empty(b, BT_MSG_ABORT));
#undef ADD
  *count = k;
  cr_assert_eq(b->err, 0);
}

/* Decodes f with the decoder of `as`; frees what it allocated. */
static int decode_as(const bt_frame_t *f, uint16_t as) {
  static bt_msg_start_t st;
  union {
    bt_msg_hello_t h;
    bt_msg_ready_t r;
    bt_msg_heartbeat_t hb;
    bt_msg_metrics_t me;
    bt_msg_hashes_t ha;
    bt_msg_shard_t sh;
    bt_msg_error_t er;
    bt_msg_trace_t tr;
    bt_msg_step_t sp;
  } u;
  int rc;
  switch (as) {
  case BT_MSG_HELLO: return bt_msg_decode_hello(f, &u.h);
  case BT_MSG_READY: return bt_msg_decode_ready(f, &u.r);
  case BT_MSG_HEARTBEAT: return bt_msg_decode_heartbeat(f, &u.hb);
  case BT_MSG_METRICS: return bt_msg_decode_metrics(f, &u.me);
  case BT_MSG_HASHES:
    rc = bt_msg_decode_hashes(f, &u.ha);
    bt_msg_hashes_free(&u.ha);
    return rc;
  case BT_MSG_SHARD_DURABLE: return bt_msg_decode_shard(f, &u.sh);
  case BT_MSG_ERROR: return bt_msg_decode_error(f, &u.er);
  case BT_MSG_TRACE:
    rc = bt_msg_decode_trace(f, &u.tr);
    bt_msg_trace_free(&u.tr);
    return rc;
  case BT_MSG_START: return bt_msg_decode_start(f, &st);
  case BT_MSG_DONE:
  case BT_MSG_CKPT_AT:
  case BT_MSG_STOP: return bt_msg_decode_step(f, &u.sp);
  default: return bt_msg_decode_empty(f, as);
  }
}

static const uint16_t all_types[] = {BT_MSG_HELLO, BT_MSG_READY, BT_MSG_HEARTBEAT, BT_MSG_METRICS,
                                     BT_MSG_HASHES, BT_MSG_SHARD_DURABLE, BT_MSG_ERROR,
                                     BT_MSG_DONE, BT_MSG_TRACE, BT_MSG_START, BT_MSG_CKPT_AT,
                                     BT_MSG_STOP, BT_MSG_ABORT};

Test(frame, every_truncation_needs_more_bytes) {
  bt_buf_t b;
  bt_buf_init(&b);
  size_t ends[16];
  int n;
  encode_all(&b, ends, &n);
  size_t start = 0;
  for (int i = 0; i < n; i++) {
    size_t flen = ends[i] - start;
    /* Each prefix goes into a buffer of exactly its size, so ASan catches a
     * parser that reads one byte past `len`. */
    for (size_t cut = 0; cut < flen; cut++) {
      uint8_t *p = malloc(cut ? cut : 1);
      memcpy(p, b.data + start, cut);
      bt_frame_t f;
      long r = bt_frame_parse(p, cut, &f);
      cr_assert_eq(r, 0, "type %u cut at %zu of %zu: %ld", all_types[i], cut, flen, r);
      free(p);
    }
    start = ends[i];
  }
  bt_buf_free(&b);
}

Test(frame, decode_refuses_wrong_type_and_short_or_long_payload) {
  bt_buf_t b;
  bt_buf_init(&b);
  size_t ends[16];
  int n;
  encode_all(&b, ends, &n);
  size_t start = 0;
  for (int i = 0; i < n; i++) {
    bt_frame_t f;
    long len = bt_frame_parse(b.data + start, ends[i] - start, &f);
    cr_assert_gt(len, 0);
    cr_assert_eq(decode_as(&f, all_types[i]), 0, "type %u", all_types[i]);
    for (int k = 0; k < n; k++) {
      int same = all_types[k] == all_types[i] ||
                 ((all_types[k] == BT_MSG_DONE || all_types[k] == BT_MSG_CKPT_AT ||
                   all_types[k] == BT_MSG_STOP) &&
                  (all_types[i] == BT_MSG_DONE || all_types[i] == BT_MSG_CKPT_AT ||
                   all_types[i] == BT_MSG_STOP));
      if (same) continue;
      cr_assert_eq(decode_as(&f, all_types[k]), BT_EFORMAT, "type %u decoded as %u",
                   all_types[i], all_types[k]);
    }
    /* Every shorter payload is refused. */
    for (uint32_t l = 0; l < f.len; l++) {
      bt_frame_t g = f;
      g.len = l;
      cr_assert_eq(decode_as(&g, all_types[i]), BT_EFORMAT, "type %u with %u of %u bytes",
                   all_types[i], l, f.len);
    }
    /* A trailing byte is refused. */
    uint8_t *big = calloc(f.len + 1, 1);
    memcpy(big, f.payload, f.len);
    bt_frame_t g = {.type = f.type, .len = f.len + 1, .payload = big};
    cr_assert_eq(decode_as(&g, all_types[i]), BT_EFORMAT, "type %u with a trailing byte",
                 all_types[i]);
    free(big);
    start = ends[i];
  }
  bt_buf_free(&b);
}

Test(frame, bad_header_fields_are_refused) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_step_t s = {.step = 5};
  bt_msg_encode_step(&b, BT_MSG_STOP, &s);
  cr_assert_eq(b.err, 0);
  uint8_t good[64];
  size_t len = b.len;
  memcpy(good, b.data, len);
  uint8_t p[64];
  bt_frame_t f;

  memcpy(p, good, len);
  p[0] ^= 1;
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_EFORMAT, "bad magic accepted");
  cr_assert_eq(bt_frame_parse(p, 1, &f), BT_EFORMAT, "bad first magic byte not refused at once");

  memcpy(p, good, len);
  p[4] = 2;
  fix_crc(p);
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_EVERSION);

  memcpy(p, good, len);
  p[6] = 200;
  fix_crc(p);
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_EFORMAT, "unknown type accepted");
  p[6] = 0;
  fix_crc(p);
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_EFORMAT, "type 0 accepted");

  memcpy(p, good, len);
  set_len(p, BT_FRAME_MAX_PAYLOAD + 1);
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_EFORMAT, "oversized length accepted");
  cr_assert_eq(bt_frame_parse(p, BT_FRAME_HEADER, &f), BT_EFORMAT,
               "oversized length waits for more bytes");
  set_len(p, UINT32_MAX);
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_EFORMAT);

  memcpy(p, good, len);
  p[len - 1] ^= 0x80;
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_ECRC, "wrong CRC accepted");
  memcpy(p, good, len);
  p[BT_FRAME_HEADER] ^= 1;
  cr_assert_eq(bt_frame_parse(p, len, &f), BT_ECRC, "corrupt payload accepted");
  bt_buf_free(&b);
}

Test(frame, oversized_message_is_not_encoded) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_step_t s = {.step = 1};
  bt_msg_encode_step(&b, BT_MSG_DONE, &s);
  size_t before = b.len;
  /* Enough records to pass 1 MiB of payload. */
  uint32_t n = BT_FRAME_MAX_PAYLOAD / 28 + 1;
  bt_hash_rec_t *recs = calloc(n, sizeof *recs);
  bt_msg_hashes_t m = {.stage = 0, .step = 1, .n = n, .recs = recs};
  bt_msg_encode_hashes(&b, &m);
  cr_assert_neq(b.err, 0, "a frame over BT_FRAME_MAX_PAYLOAD was encoded");
  cr_assert_eq(b.len, before, "half a frame left in the buffer");
  free(recs);
  bt_buf_free(&b);
}

Test(frame, string_and_count_limits_are_enforced) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_ready_t r = {.stage = 1, .addr = "tcp:x:1"}, out;
  bt_msg_encode_ready(&b, &r);
  bt_frame_t f = parse_one(&b, BT_MSG_READY);
  uint8_t *p = b.data;
  /* The string length claims BT_ADDR_MAX bytes: too long for the field. */
  uint32_t claim = BT_ADDR_MAX;
  for (int i = 0; i < 4; i++) p[BT_FRAME_HEADER + 4 + i] = (uint8_t)(claim >> (8 * i));
  cr_assert_eq(bt_msg_decode_ready(&f, &out), BT_EFORMAT);
  /* A NUL inside the string would cut it silently. */
  bt_buf_reset(&b);
  bt_msg_encode_ready(&b, &r);
  f = parse_one(&b, BT_MSG_READY);
  b.data[BT_FRAME_HEADER + 8 + 2] = 0;
  cr_assert_eq(bt_msg_decode_ready(&f, &out), BT_EFORMAT);

  /* A hash count far beyond what the payload holds fails before allocating. */
  bt_buf_reset(&b);
  bt_msg_hashes_t h = {.stage = 0, .step = 1, .n = 0, .recs = NULL}, ho;
  bt_msg_encode_hashes(&b, &h);
  f = parse_one(&b, BT_MSG_HASHES);
  for (int i = 0; i < 4; i++) b.data[BT_FRAME_HEADER + 12 + i] = 0xff;
  cr_assert_eq(bt_msg_decode_hashes(&f, &ho), BT_EFORMAT);
  cr_assert_null(ho.recs);

  bt_buf_reset(&b);
  bt_msg_heartbeat_t hb = {.stage = 0, .phase = BT_PHASE_CONNECT + 1}, hbo;
  bt_msg_encode_heartbeat(&b, &hb);
  f = parse_one(&b, BT_MSG_HEARTBEAT);
  cr_assert_eq(bt_msg_decode_heartbeat(&f, &hbo), BT_EFORMAT, "unknown phase accepted");

  static bt_msg_start_t so;
  bt_buf_reset(&b);
  static bt_msg_start_t st = {.nstages = 1};
  bt_msg_encode_start(&b, &st);
  f = parse_one(&b, BT_MSG_START);
  b.data[BT_FRAME_HEADER + 1] = 0x10; /* nstages = 4097 */
  cr_assert_eq(bt_msg_decode_start(&f, &so), BT_EFORMAT);
  bt_buf_free(&b);
}

/* xorshift64*: a seeded generator, so a failure reproduces. */
static uint64_t rng_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

Test(frame, random_bytes_never_crash_nor_pass_a_wrong_crc) {
  bt_buf_t b;
  bt_buf_init(&b);
  size_t ends[16];
  int n;
  encode_all(&b, ends, &n);
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  int accepted = 0;
  for (int iter = 0; iter < 4000; iter++) {
    /* A third of the inputs are valid frames with flipped bits, a third
     * valid frames whose payload is noise under a correct CRC, a third pure
     * noise; each is then cut at a random length. */
    int k = (int)(rng_next(&seed) % (uint64_t)n);
    size_t start = k ? ends[k - 1] : 0, flen = ends[k] - start;
    size_t len = flen + 8;
    uint8_t *p = malloc(len);
    memcpy(p, b.data + start, flen);
    for (size_t i = flen; i < len; i++) p[i] = (uint8_t)rng_next(&seed);
    int mode = (int)(rng_next(&seed) % 3);
    if (mode == 0) {
      int flips = 1 + (int)(rng_next(&seed) % 4);
      for (int j = 0; j < flips; j++) p[rng_next(&seed) % flen] ^= (uint8_t)(1u << (rng_next(&seed) % 8));
    } else if (mode == 1) {
      /* A random payload under a valid header and CRC: reaches the decoders. */
      for (size_t i = BT_FRAME_HEADER; i + BT_FRAME_TRAILER < flen; i++) p[i] = (uint8_t)rng_next(&seed);
      fix_crc(p);
    } else {
      for (size_t i = 0; i < len; i++) p[i] = (uint8_t)rng_next(&seed);
    }
    size_t cut = (size_t)(rng_next(&seed) % (len + 1));
    bt_frame_t f;
    long r = bt_frame_parse(p, cut, &f);
    cr_assert_leq(r, (long)cut, "parse claims %ld bytes of %zu", r, cut);
    if (r > 0) {
      uint32_t plen = f.len;
      uint32_t want = (uint32_t)p[BT_FRAME_HEADER + plen] | (uint32_t)p[BT_FRAME_HEADER + plen + 1] << 8 |
                      (uint32_t)p[BT_FRAME_HEADER + plen + 2] << 16 |
                      (uint32_t)p[BT_FRAME_HEADER + plen + 3] << 24;
      cr_assert_eq(bt_crc32(0, p, BT_FRAME_HEADER + plen), want, "accepted a frame with a wrong CRC");
      cr_assert_eq((size_t)r, BT_FRAME_HEADER + plen + BT_FRAME_TRAILER);
      accepted++;
      /* Whatever decodes must not crash; the result itself may be either. */
      for (size_t t = 0; t < sizeof all_types / sizeof all_types[0]; t++) decode_as(&f, all_types[t]);
    }
    free(p);
  }
  /* Not an assertion about speed: it shows the loop reached the decoders. */
  cr_assert_gt(accepted, 0, "no random input was a whole frame: the test proves nothing");
  bt_buf_free(&b);
}

Test(frame, node_message_round_trip_with_data) {
  bt_buf_t b;
  bt_buf_init(&b);
  static const uint8_t bytes[] = "argv0\0worker\0BATON_STAGE=3";
  bt_node_msg_t in = {.node = 2, .inc = 5, .stage = 3, .num = {4, -1, 1ll << 40, 0}, .data = bytes,
                      .dlen = sizeof bytes};
  memset(in.nonce, 0xab, sizeof in.nonce);
  snprintf(in.text, sizeof in.text, "job-42");
  snprintf(in.text2, sizeof in.text2, "data-plane label");
  bt_node_encode(&b, BT_NODE_SPAWN, &in);
  bt_frame_t f = parse_one(&b, BT_NODE_SPAWN);
  bt_node_msg_t out;
  cr_assert_eq(bt_node_decode(&f, &out), 0);
  cr_assert_eq(out.node, 2);
  cr_assert_eq(out.inc, 5);
  cr_assert_eq(out.stage, 3);
  cr_assert_eq(out.num[2], 1ll << 40);
  cr_assert_eq(out.num[1], -1);
  cr_assert_eq(out.nonce[31], 0xab);
  cr_assert_str_eq(out.text, "job-42");
  cr_assert_str_eq(out.text2, "data-plane label");
  cr_assert_eq(out.dlen, sizeof bytes);
  cr_assert_eq(memcmp(out.data, bytes, sizeof bytes), 0);
  /* A data length past the payload is refused, not read. */
  uint8_t *p = b.data;
  size_t dl_at = BT_FRAME_HEADER + f.len - sizeof bytes - 4;
  p[dl_at] = 0xff;
  p[dl_at + 1] = 0xff;
  fix_crc(p);
  cr_assert_eq(bt_frame_parse(p, b.len, &f), (long)b.len);
  cr_assert_eq(bt_node_decode(&f, &out), BT_EFORMAT);
  /* Node messages are not worker messages and the other way round. */
  bt_buf_reset(&b);
  bt_msg_encode_empty(&b, BT_MSG_ABORT);
  f = parse_one(&b, BT_MSG_ABORT);
  cr_assert_eq(bt_node_decode(&f, &out), BT_EFORMAT);
  bt_buf_free(&b);
}
