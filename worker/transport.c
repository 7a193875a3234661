/* transport.c - the parts of transport.h every implementation shares:
 * argument checks in front of the vtable, tag formatting, the job token.
 * The implementations (transport_socket.c, transport_nccl.c) see only
 * arguments that passed these checks. */
#include "worker/transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"

static int check_msg(const bt_tx_t *tx, const void *buf, size_t bytes, int peer, bt_tag_t tag) {
  if (!tx || peer < 0 || peer >= tx->nranks || peer == tx->rank) return BT_EARG;
  if (bytes && !buf) return BT_EARG;
  if (tag.kind != BT_MSG_ACTIVATION && tag.kind != BT_MSG_GRADIENT) return BT_EARG;
  if (tag.stage < 0 || tag.mb < 0) return BT_EARG;
  return 0;
}

int bt_tx_isend(bt_tx_t *tx, const void *buf, size_t bytes, int peer, bt_tag_t tag,
                bt_tx_req_t **req) {
  if (req) *req = NULL;
  int rc = check_msg(tx, buf, bytes, peer, tag);
  if (rc) return rc;
  return tx->ops->isend(tx, buf, bytes, peer, tag, req);
}

int bt_tx_irecv(bt_tx_t *tx, void *buf, size_t bytes, int peer, bt_tag_t tag, bt_tx_req_t **req) {
  if (!req) return BT_EARG;
  *req = NULL;
  int rc = check_msg(tx, buf, bytes, peer, tag);
  if (rc) return rc;
  return tx->ops->irecv(tx, buf, bytes, peer, tag, req);
}

int bt_tx_test(bt_tx_t *tx, bt_tx_req_t *req) {
  if (!tx || !req) return BT_EARG;
  return tx->ops->test(tx, req);
}

int bt_tx_wait(bt_tx_t *tx, bt_tx_req_t *req, uint64_t deadline) {
  if (!tx || !req) return BT_EARG;
  return tx->ops->wait(tx, req, deadline);
}

int bt_tx_wait_sends(bt_tx_t *tx, uint64_t deadline) {
  if (!tx) return BT_EARG;
  return tx->ops->wait_sends(tx, deadline);
}

int bt_tx_end_step(bt_tx_t *tx, int64_t step, uint64_t deadline) {
  if (!tx) return BT_EARG;
  return tx->ops->end_step(tx, step, deadline);
}

void bt_tx_stats(bt_tx_t *tx, bt_tx_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (tx) tx->ops->stats(tx, out);
}

void bt_tx_destroy(bt_tx_t *tx) {
  if (tx) tx->ops->destroy(tx);
}

void bt_tag_str(const bt_tag_t *tag, char *out, size_t cap) {
  snprintf(out, cap, "%s of virtual stage %d, micro-batch %d, step %lld",
           bt_msg_kind_name(tag->kind), tag->stage, tag->mb, (long long)tag->step);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int bt_tx_token_parse(const char *hex, uint8_t *token, size_t *len) {
  size_t n = hex ? strlen(hex) : 0;
  /* At least 16 random bytes: a token that short can be guessed by anyone
   * on the network who tries for long enough. */
  if (n < 32 || n % 2 || n / 2 > BT_TX_TOKEN_MAX) return BT_EARG;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return BT_EARG;
    token[i] = (uint8_t)(hi << 4 | lo);
  }
  *len = n / 2;
  return 0;
}

int bt_tx_token_from_env(uint8_t *token, size_t *len) {
  const char *hex = getenv("BATON_JOB_TOKEN");
  if (!hex || !*hex) {
    bt_error("BATON_JOB_TOKEN is not set: the data plane needs the job's token");
    return BT_EARG;
  }
  int rc = bt_tx_token_parse(hex, token, len);
  if (rc) bt_error("BATON_JOB_TOKEN must be 32 to %d hex digits (16 or more random bytes)",
                   2 * BT_TX_TOKEN_MAX);
  return rc;
}
