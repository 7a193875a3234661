/* fuzz_frame.c - libFuzzer target for the control-frame codec.
 *
 * Feeds arbitrary bytes to bt_frame_parse() frame after frame, as a reader
 * of the control socket would, and hands every accepted frame to the
 * decoder of its type and to every other decoder (a decoder must refuse a
 * frame of another type without reading it). Sanitizers (address,
 * undefined) turn any out-of-bounds read, leak or UB into a crash.
 * Not a test of meaning: round trips live in tests/test_frame.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/frame.h"

static const uint16_t types[] = {BT_MSG_HELLO, BT_MSG_READY, BT_MSG_HEARTBEAT, BT_MSG_METRICS,
                                 BT_MSG_HASHES, BT_MSG_SHARD_DURABLE, BT_MSG_ERROR, BT_MSG_DONE,
                                 BT_MSG_TRACE, BT_MSG_START, BT_MSG_CKPT_AT, BT_MSG_STOP,
                                 BT_MSG_ABORT, BT_NODE_HELLO, BT_NODE_SPAWN, BT_NODE_CTL, BT_NODE_EXITED};

/* Decodes f as `as`, re-encodes what decoded and checks the result parses:
 * a decoded message must always be encodable again. */
static void decode_as(const bt_frame_t *f, uint16_t as) {
  static bt_msg_start_t st;
  bt_buf_t b;
  bt_buf_init(&b);
  int rc;
  switch (as) {
  case BT_MSG_HELLO: {
    bt_msg_hello_t m;
    if (bt_msg_decode_hello(f, &m) == 0) bt_msg_encode_hello(&b, &m);
    break;
  }
  case BT_MSG_READY: {
    bt_msg_ready_t m;
    if (bt_msg_decode_ready(f, &m) == 0) bt_msg_encode_ready(&b, &m);
    break;
  }
  case BT_MSG_HEARTBEAT: {
    bt_msg_heartbeat_t m;
    if (bt_msg_decode_heartbeat(f, &m) == 0) bt_msg_encode_heartbeat(&b, &m);
    break;
  }
  case BT_MSG_METRICS: {
    bt_msg_metrics_t m;
    if (bt_msg_decode_metrics(f, &m) == 0) bt_msg_encode_metrics(&b, &m);
    break;
  }
  case BT_MSG_HASHES: {
    bt_msg_hashes_t m;
    rc = bt_msg_decode_hashes(f, &m);
    if (rc == 0) bt_msg_encode_hashes(&b, &m);
    bt_msg_hashes_free(&m);
    break;
  }
  case BT_MSG_SHARD_DURABLE: {
    bt_msg_shard_t m;
    if (bt_msg_decode_shard(f, &m) == 0) bt_msg_encode_shard(&b, &m);
    break;
  }
  case BT_MSG_ERROR: {
    bt_msg_error_t m;
    if (bt_msg_decode_error(f, &m) == 0) bt_msg_encode_error(&b, &m);
    break;
  }
  case BT_MSG_TRACE: {
    bt_msg_trace_t m;
    rc = bt_msg_decode_trace(f, &m);
    if (rc == 0) bt_msg_encode_trace(&b, &m);
    bt_msg_trace_free(&m);
    break;
  }
  case BT_MSG_START:
    if (bt_msg_decode_start(f, &st) == 0) bt_msg_encode_start(&b, &st);
    break;
  case BT_MSG_DONE:
  case BT_MSG_CKPT_AT:
  case BT_MSG_STOP: {
    bt_msg_step_t m;
    if (bt_msg_decode_step(f, &m) == 0) bt_msg_encode_step(&b, f->type, &m);
    break;
  }
  default:
    if (as >= BT_NODE_HELLO && as <= BT_NODE_BYE) {
      bt_node_msg_t m;
      if (f->type == as && bt_node_decode(f, &m) == 0) bt_node_encode(&b, as, &m);
    } else if (bt_msg_decode_empty(f, as) == 0)
      bt_msg_encode_empty(&b, as);
    break;
  }
  if (b.len) {
    bt_frame_t g;
    /* The re-encoded frame is the same bytes as the original. */
    if (b.err || bt_frame_parse(b.data, b.len, &g) != (long)b.len || g.len != f->len) abort();
    for (uint32_t i = 0; i < g.len; i++)
      if (g.payload[i] != f->payload[i]) abort();
  }
  bt_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t off = 0;
  while (off < size) {
    bt_frame_t f;
    long n = bt_frame_parse(data + off, size - off, &f);
    if (n <= 0) break;
    if ((size_t)n > size - off) abort();
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) decode_as(&f, types[t]);
    off += (size_t)n;
  }
  return 0;
}
