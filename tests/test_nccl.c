/* test_nccl.c - the NCCL transport (worker/transport_nccl.h).
 *
 * On a GPU: a one-rank communicator sends to and receives from itself (a
 * loopback channel) and the bytes arrive exactly; a mismatched tag is
 * BT_ETAG; a receive that is never matched ends at its deadline with the
 * communicators aborted, well within a bound, and so does a lone NCCL
 * receive at the device layer. These skip with the reason where NCCL cannot
 * run (no library, driver or device).
 *
 * Everywhere: asking for NCCL without a GPU gives one line naming what is
 * missing; the socket-fallback decision; the staging helpers with the CPU
 * backend.
 *
 * The loopback tests call the vtable (tx->ops->isend) directly, since
 * bt_tx_isend refuses a message to oneself: that refusal is right for
 * workers, and NCCL refuses two ranks on one GPU, so loopback is the only
 * way to move bytes through NCCL on a one-GPU machine.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cuda/nccl_dev.h"
#include "worker/transport_nccl.h"

/* The library sits in the build root; the test binary in BUILD/tests. */
static void point_at_built_library(void) {
  const char *dir = getenv("BATON_BUILD_DIR");
  if (dir && *dir && !getenv("BATON_CUDA_LIB")) setenv("BATON_CUDA_LIB", dir, 1);
}

typedef struct {
  bt_backend_t *be;
  bt_tx_t *tx;
} gpu_t;

/* A CUDA backend (device memory) and a one-rank transport with loopback
 * channels, or a skip naming what is missing. */
static gpu_t loopback_or_skip(void) {
  gpu_t g = {NULL, NULL};
  char why[512];
  point_at_built_library();
  if (bt_tx_nccl_available(0, why, sizeof why) < 0) cr_skip_test("no NCCL here: %s", why);
  int rc = bt_backend_create("cuda", 0, &g.be, why, sizeof why);
  if (rc < 0) cr_skip_test("no usable CUDA backend: %s", why);
  uint8_t id[BT_TX_NCCL_ID_BYTES];
  cr_assert_eq(bt_tx_nccl_unique_id(id), 0);
  int self = 0;
  bt_tx_nccl_opts_t o = {.rank = 0, .nranks = 1, .device = 0, .id = id, .peers = &self,
                         .npeers = 1, .init_ms = 60000, .enqueue_ms = 10000};
  rc = bt_tx_nccl_create(&o, &g.tx, why, sizeof why);
  cr_assert_eq(rc, 0, "bt_tx_nccl_create: %s (%s)", bt_strerror(rc), why);
  return g;
}

static void gpu_free(gpu_t *g) {
  bt_tx_destroy(g->tx);
  bt_backend_destroy(g->be);
}

static void *dev_alloc(bt_backend_t *be, size_t bytes) {
  void *d = NULL;
  cr_assert_eq(be->ops->alloc(be, &d, bytes), 0);
  return d;
}

static void fill(uint8_t *p, size_t n, unsigned seed) {
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    p[i] = (uint8_t)x;
  }
}

Test(nccl, loopback_moves_exact_bytes) {
  gpu_t g = loopback_or_skip();
  /* Odd sizes, one large; both kinds; several in flight on one channel. */
  const size_t sizes[] = {1, 13, 4097, (1u << 20) + 3};
  enum { N = sizeof sizes / sizeof sizes[0] };
  void *src[N], *dst[N];
  uint8_t *want[N];
  bt_tx_req_t *sreq[N], *rreq[N];
  for (int i = 0; i < N; i++) {
    want[i] = malloc(sizes[i]);
    cr_assert(want[i]);
    fill(want[i], sizes[i], (unsigned)i + 1);
    src[i] = dev_alloc(g.be, sizes[i]);
    dst[i] = dev_alloc(g.be, sizes[i]);
    cr_assert_eq(g.be->ops->to_device(g.be, src[i], want[i], sizes[i]), 0);
  }
  /* Receives first, as the pipeline posts them at the start of a step. */
  for (int i = 0; i < N; i++) {
    bt_tag_t tag = {7, i % 2 ? BT_MSG_GRADIENT : BT_MSG_ACTIVATION, i, i};
    cr_assert_eq(g.tx->ops->irecv(g.tx, dst[i], sizes[i], 0, tag, &rreq[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    bt_tag_t tag = {7, i % 2 ? BT_MSG_GRADIENT : BT_MSG_ACTIVATION, i, i};
    cr_assert_eq(g.tx->ops->isend(g.tx, src[i], sizes[i], 0, tag, &sreq[i]), 0);
  }
  for (int i = 0; i < N; i++) {
    cr_assert_eq(bt_tx_wait(g.tx, rreq[i], bt_deadline_ms(30000)), 0, "receive %d", i);
    cr_assert_eq(bt_tx_wait(g.tx, sreq[i], bt_deadline_ms(30000)), 0, "send %d", i);
  }
  for (int i = 0; i < N; i++) {
    uint8_t *got = malloc(sizes[i]);
    cr_assert(got);
    cr_assert_eq(g.be->ops->to_host(g.be, got, dst[i], sizes[i]), 0);
    for (size_t k = 0; k < sizes[i]; k++)
      cr_assert_eq(got[k], want[i][k], "message %d byte %zu: got %u, sent %u", i, k, got[k],
                   want[i][k]);
    free(got);
  }
  bt_tx_stats_t st;
  bt_tx_stats(g.tx, &st);
  cr_assert_eq(st.msgs_sent, (uint64_t)N);
  cr_assert_eq(st.msgs_recv, (uint64_t)N);
  cr_assert_eq(bt_tx_end_step(g.tx, 7, bt_deadline_ms(10000)), 0);
  for (int i = 0; i < N; i++) {
    g.be->ops->free(g.be, src[i]);
    g.be->ops->free(g.be, dst[i]);
    free(want[i]);
  }
  gpu_free(&g);
}

Test(nccl, loopback_refuses_a_swapped_tag) {
  gpu_t g = loopback_or_skip();
  void *a = dev_alloc(g.be, 64), *b = dev_alloc(g.be, 64);
  bt_tag_t want = {1, BT_MSG_ACTIVATION, 0, 1}, sent = {1, BT_MSG_ACTIVATION, 0, 2};
  bt_tx_req_t *r = NULL;
  cr_assert_eq(g.tx->ops->irecv(g.tx, b, 64, 0, want, &r), 0);
  int rc = g.tx->ops->isend(g.tx, a, 64, 0, sent, NULL);
  cr_assert_eq(rc, BT_ETAG, "a send of micro-batch 2 into a receive of 1: got %s", bt_strerror(rc));
  /* The transport is broken now: the pending receive fails too. */
  rc = bt_tx_wait(g.tx, r, bt_deadline_ms(5000));
  cr_assert_eq(rc, BT_ETAG, "got %s", bt_strerror(rc));
  g.be->ops->free(g.be, a);
  g.be->ops->free(g.be, b);
  gpu_free(&g);
}

Test(nccl, unmatched_receive_ends_at_its_deadline) {
  gpu_t g = loopback_or_skip();
  void *b = dev_alloc(g.be, 256);
  bt_tag_t tag = {3, BT_MSG_GRADIENT, 1, 0};
  bt_tx_req_t *r = NULL;
  cr_assert_eq(g.tx->ops->irecv(g.tx, b, 256, 0, tag, &r), 0);
  uint64_t t0 = bt_clock_ns();
  int rc = bt_tx_wait(g.tx, r, bt_deadline_ms(300));
  double waited = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(rc, BT_ETIMEOUT, "got %s", bt_strerror(rc));
  /* 300 ms deadline; 10 s is the bound that tells "ends" from "hangs". */
  cr_assert(waited >= 0.29 && waited < 10.0, "waited %.3f s", waited);
  /* Aborted: everything after fails at once, and the request is released
   * by this second wait. */
  cr_assert_eq(bt_tx_wait(g.tx, r, bt_deadline_ms(1000)), BT_ETIMEOUT);
  cr_assert_eq(g.tx->ops->isend(g.tx, b, 256, 0, tag, NULL), BT_ETIMEOUT);
  t0 = bt_clock_ns();
  gpu_free(&g);
  cr_assert((double)(bt_clock_ns() - t0) * 1e-9 < 20.0, "destroy after abort took too long");
}

/* The device layer alone: a lone NCCL receive from self (no matching send
 * ever) on a one-rank communicator. It must end — at the deadline with the
 * communicator aborted, or with NCCL's own error — never hang. */
Test(nccl, lone_nccl_receive_is_aborted_not_waited_for) {
  gpu_t g = loopback_or_skip();
  char why[512];
  void *sym = bt_cuda_lib_symbol(BT_NCCL_DEV_SYMBOL, why, sizeof why);
  cr_assert(sym, "%s", why);
  bt_nccl_dev_get_fn get;
  memcpy(&get, &sym, sizeof get);
  const bt_nccl_dev_t *d = get(BT_NCCL_DEV_VERSION);
  cr_assert(d);
  uint8_t id[BT_NCCL_ID_BYTES];
  cr_assert_eq(d->unique_id(id), 0);
  bt_nccl_comm_t *c = NULL;
  cr_assert_eq(d->comm_init(0, 1, id, 0, bt_deadline_ms(60000), &c), 0);
  void *b = dev_alloc(g.be, 1024);
  bt_nccl_op_t *op = NULL;
  uint64_t t0 = bt_clock_ns(), deadline = bt_deadline_ms(500);
  int rc = d->post(c, NULL, NULL, b, 1024, 0, deadline, &op);
  while (rc == 0) {
    rc = d->op_test(c, op);
    if (rc == 1) break;
    if (rc == 0 && bt_clock_ns() > deadline) {
      d->comm_abort(c);
      rc = BT_ETIMEOUT;
    }
    if (rc == 0) usleep(1000);
  }
  double waited = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert(rc == BT_ETIMEOUT || rc == BT_ENCCL, "a lone receive ended with %d (%s)", rc,
            rc < 0 ? bt_strerror(rc) : "completed?");
  cr_assert(waited < 10.0, "waited %.3f s", waited);
  d->op_free(op);
  d->comm_destroy(c, bt_deadline_ms(5000));
  g.be->ops->free(g.be, b);
  gpu_free(&g);
}

/* ---- everywhere ---- */

Test(nccl, no_gpu_gives_one_line_naming_what_is_missing) {
  char why[512] = "";
  point_at_built_library();
  int rc = bt_tx_nccl_available(0, why, sizeof why);
  if (rc == 0) cr_skip_test("NCCL is usable here: the no-GPU message cannot be seen");
  cr_assert_eq(rc, BT_EBACKEND, "got %s", bt_strerror(rc));
  cr_assert(strncmp(why, "NCCL transport: ", 16) == 0, "message: '%s'", why);
  cr_assert(strlen(why) > 24, "message says nothing: '%s'", why);
  cr_assert_null(strchr(why, '\n'), "more than one line: '%s'", why);
  /* It names what is missing: the library, a driver or a device. */
  cr_assert(strstr(why, "libbaton_cuda.so") || strstr(why, "driver") || strstr(why, "device") ||
                strstr(why, "lib"),
            "names nothing missing: '%s'", why);
  /* Creating the transport fails the same way, before anything else. */
  uint8_t id[BT_TX_NCCL_ID_BYTES] = {0};
  bt_tx_t *tx = (bt_tx_t *)1;
  char why2[512] = "";
  bt_tx_nccl_opts_t o = {.rank = 0, .nranks = 1, .device = 0, .id = id};
  rc = bt_tx_nccl_create(&o, &tx, why2, sizeof why2);
  cr_assert_eq(rc, BT_EBACKEND, "got %s", bt_strerror(rc));
  cr_assert_null(tx);
  cr_assert_str_eq(why2, why);
}

Test(nccl, missing_library_is_named) {
  char why[512] = "";
  setenv("BATON_CUDA_LIB", "/nonexistent/libbaton_cuda.so", 1);
  int rc = bt_tx_nccl_available(0, why, sizeof why);
  unsetenv("BATON_CUDA_LIB");
  /* A library loaded earlier in this process stays loaded (never
   * dlclose'd); this test runs in its own process. */
  cr_assert_eq(rc, BT_EBACKEND);
  cr_assert(strstr(why, "libbaton_cuda.so") != NULL, "message: '%s'", why);
  cr_assert_null(strchr(why, '\n'));
}

Test(nccl, shared_gpu_falls_back_to_sockets) {
  const char *distinct[] = {"node1/0000:3b:00.0", "node1/0000:5e:00.0", "node2/0000:3b:00.0"};
  const char *shared[] = {"node1/0000:3b:00.0", "node1/0000:5e:00.0", "node1/0000:3b:00.0"};
  char why[256] = "";
  cr_assert_eq(bt_tx_nccl_choose(distinct, 3, why, sizeof why), 1, "%s", why);
  cr_assert_str_eq(why, "");
  cr_assert_eq(bt_tx_nccl_choose(shared, 3, why, sizeof why), 0);
  cr_assert(strstr(why, "ranks 0 and 2") && strstr(why, "node1/0000:3b:00.0"), "why: '%s'", why);
  cr_assert_eq(bt_tx_nccl_choose(shared, 1, why, sizeof why), 1);
}

Test(nccl, staging_round_trip_with_the_cpu_backend) {
  bt_backend_t *be = NULL;
  char why[256];
  cr_assert_eq(bt_backend_create("cpu", 0, &be, why, sizeof why), 0, "%s", why);
  enum { N = 1031 };
  void *dev = NULL, *dev2 = NULL, *host = NULL;
  cr_assert_eq(be->ops->alloc(be, &dev, N), 0);
  cr_assert_eq(be->ops->alloc(be, &dev2, N), 0);
  uint8_t want[N];
  fill(want, N, 9);
  cr_assert_eq(be->ops->to_device(be, dev, want, N), 0);
  cr_assert_eq(bt_tx_stage_alloc(be, N, &host), 0);
  cr_assert_eq(bt_tx_stage_out(be, host, dev, N), 0);
  cr_assert_eq(memcmp(host, want, N), 0);
  cr_assert_eq(bt_tx_stage_in(be, dev2, host, N), 0);
  cr_assert_eq(memcmp(dev2, want, N), 0);
  cr_assert_eq(bt_tx_stage_out(be, NULL, dev, N), BT_EARG);
  bt_tx_stage_free(be, host);
  be->ops->free(be, dev);
  be->ops->free(be, dev2);
  bt_backend_destroy(be);
}
