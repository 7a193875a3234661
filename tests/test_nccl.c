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
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
  int rc = d->post(c, NULL, NULL, b, 1024, 0, g.be->ops->stream(g.be), deadline, &op);
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
  if (rc == 0) cr_skip_test("NCCL is usable here: the no-GPU message cannot be seen (by design on a GPU node)");
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
  cr_assert(strstr(why, "libbaton_nccl.so") != NULL, "message: '%s'", why);
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
  /* gpu-check's try of an NCCL that might allow two ranks on one GPU. */
  setenv("BATON_NCCL_SHARED_GPU", "1", 1);
  cr_assert_eq(bt_tx_nccl_choose(shared, 3, why, sizeof why), 1, "%s", why);
  setenv("BATON_NCCL_SHARED_GPU", "0", 1);
  cr_assert_eq(bt_tx_nccl_choose(shared, 3, why, sizeof why), 0);
  unsetenv("BATON_NCCL_SHARED_GPU");
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

/* ---- the transport's logic over a CPU imitation of NCCL ----
 *
 * fake_dev imitates the device table of kernels/cuda/nccl_dev.h in host
 * memory, with ranks as threads of this process: communicators are shared
 * objects; ncclCommSplit is a rendezvous of every rank of the parent (the
 * k-th split call of each rank is the same split, as in NCCL); a send and
 * a receive between the same two ranks of one communicator match in the
 * order they were posted and copy header and payload at once. Aborting or
 * revoking a communicator fails only the calling process's operations:
 * as with real NCCL, the peer is NOT told, and its operations on the same
 * communicator just never complete (its deadline ends them). Every post,
 * join, revoke and abort goes into a log, so the tests can check that
 * transfers are ordered with the compute stream and that every
 * communicator is revoked before any is aborted.
 * It lets these tests check what the transport itself decides — channels,
 * creation order, tag checks, deadlines, aborts — on a machine without a
 * GPU. NCCL's own behaviour is what the GPU tests above check. */

#define FK_MAX_RANKS 8
#define FK_MAX_SPLITS 512

typedef struct fk_shared fk_shared_t;
typedef struct fk_msg fk_msg_t;

struct bt_nccl_op {
  int pending; /* halves not yet matched */
  uint8_t hdr[BT_NCCL_HDR_BYTES];
  bt_nccl_comm_t *comm;
};

struct fk_msg {
  int src, dst, is_send;
  uint8_t hdr[BT_NCCL_HDR_BYTES];
  const void *sbuf;
  void *rbuf;
  size_t bytes;
  struct bt_nccl_op *op;
  fk_msg_t *next;
};

typedef struct {
  int color[FK_MAX_RANKS], key[FK_MAX_RANKS], arrived;
  fk_shared_t *child[FK_MAX_RANKS]; /* per rank of the parent */
  int child_rank[FK_MAX_RANKS];
  int built;
} fk_split_t;

struct fk_shared {
  int n;
  int aborted;
  fk_msg_t *q;
  fk_split_t *splits[FK_MAX_SPLITS];
  fk_shared_t *next_all;
};

struct bt_nccl_comm {
  fk_shared_t *sh;
  int rank;
  int wrank;  /* the world rank of the process (thread) that owns it */
  int nsplit; /* splits this rank made on this communicator */
  int broken;
};

/* The log: what each world rank asked of the device layer, in order. */
typedef struct {
  int wrank;
  char what;          /* 'P' post, 'J' join, 'R' revoke, 'A' abort */
  const void *stream; /* P: the compute stream it was ordered after; J: the one joined */
  const void *comm;
  int64_t step;       /* P, J: the tag in the header */
  int32_t mb, kind;
  int is_send;
} fk_log_t;
#define FK_LOG_MAX 4096
static fk_log_t fk_log[FK_LOG_MAX];
static int fk_nlog;

static void fk_note(fk_log_t e) {
  if (fk_nlog < FK_LOG_MAX) fk_log[fk_nlog++] = e;
}

/* The compute streams the ranks' transports are given: opaque to the
 * transport, compared by address here. */
static char fk_stream[FK_MAX_RANKS];

static pthread_mutex_t fk_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fk_cv = PTHREAD_COND_INITIALIZER;
static fk_shared_t *fk_all;      /* every shared object, freed by fk_reset */
static fk_shared_t *fk_world;    /* the world being joined */
static int fk_world_joined;
static int fk_splits_made[FK_MAX_RANKS]; /* per world rank */

static fk_shared_t *fk_shared_new(int n) {
  fk_shared_t *s = calloc(1, sizeof *s);
  cr_assert(s);
  s->n = n;
  s->next_all = fk_all;
  fk_all = s;
  return s;
}

static void fk_reset(void) {
  pthread_mutex_lock(&fk_mu);
  while (fk_all) {
    fk_shared_t *s = fk_all;
    fk_all = s->next_all;
    for (int i = 0; i < FK_MAX_SPLITS; i++) free(s->splits[i]);
    while (s->q) {
      fk_msg_t *m = s->q;
      s->q = m->next;
      free(m);
    }
    free(s);
  }
  fk_world = NULL;
  fk_world_joined = 0;
  fk_nlog = 0;
  memset(fk_splits_made, 0, sizeof fk_splits_made);
  pthread_mutex_unlock(&fk_mu);
}

/* Waits on the condition variable until the deadline; 0 or BT_ETIMEOUT. */
static int fk_wait(uint64_t deadline) {
  if (bt_clock_ns() > deadline) return BT_ETIMEOUT;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += 2000000;
  if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
  pthread_cond_timedwait(&fk_cv, &fk_mu, &ts);
  return 0;
}

static void fk_versions(char *out, size_t cap) { snprintf(out, cap, "fake NCCL"); }
static int fk_probe(int device, char *why, size_t why_len) { return 0; }
static int fk_unique_id(uint8_t out[BT_NCCL_ID_BYTES]) {
  memset(out, 0x5a, BT_NCCL_ID_BYTES);
  return 0;
}

static int fk_comm_init(int device, int nranks, const uint8_t id[BT_NCCL_ID_BYTES], int rank,
                        uint64_t deadline, bt_nccl_comm_t **out) {
  pthread_mutex_lock(&fk_mu);
  if (!fk_world) fk_world = fk_shared_new(nranks);
  fk_shared_t *w = fk_world;
  fk_world_joined++;
  pthread_cond_broadcast(&fk_cv);
  int rc = 0;
  while (fk_world_joined < nranks && !(rc = fk_wait(deadline))) continue;
  pthread_mutex_unlock(&fk_mu);
  if (rc) return rc;
  bt_nccl_comm_t *c = calloc(1, sizeof *c);
  c->sh = w;
  c->rank = rank;
  c->wrank = rank;
  *out = c;
  return 0;
}

static int fk_comm_split(bt_nccl_comm_t *parent, int color, int key, uint64_t deadline,
                         bt_nccl_comm_t **out) {
  *out = NULL;
  pthread_mutex_lock(&fk_mu);
  fk_shared_t *p = parent->sh;
  int k = parent->nsplit++, me = parent->rank, rc = 0;
  cr_assert(k < FK_MAX_SPLITS);
  if (p == fk_world) fk_splits_made[me]++;
  if (!p->splits[k]) p->splits[k] = calloc(1, sizeof *p->splits[k]);
  fk_split_t *s = p->splits[k];
  s->color[me] = color;
  s->key[me] = key;
  s->arrived++;
  pthread_cond_broadcast(&fk_cv);
  while (s->arrived < p->n && !(rc = fk_wait(deadline))) continue;
  if (!rc && !s->built) {
    /* Members of one colour, ordered by (key, rank). */
    for (int r = 0; r < p->n; r++) {
      if (s->color[r] < 0 || s->child[r]) continue;
      int members[FK_MAX_RANKS], n = 0;
      for (int q = 0; q < p->n; q++)
        if (s->color[q] == s->color[r]) members[n++] = q;
      for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && s->key[members[j]] < s->key[members[j - 1]]; j--) {
          int t = members[j];
          members[j] = members[j - 1];
          members[j - 1] = t;
        }
      fk_shared_t *child = fk_shared_new(n);
      for (int i = 0; i < n; i++) {
        s->child[members[i]] = child;
        s->child_rank[members[i]] = i;
      }
    }
    s->built = 1;
  }
  if (!rc && color >= 0) {
    bt_nccl_comm_t *c = calloc(1, sizeof *c);
    c->sh = s->child[me];
    c->rank = s->child_rank[me];
    c->wrank = parent->wrank;
    *out = c;
  }
  pthread_mutex_unlock(&fk_mu);
  return rc;
}

static int fk_comm_size(bt_nccl_comm_t *c, int *n, int *rank) {
  *n = c->sh->n;
  *rank = c->rank;
  return 0;
}

/* Matches the oldest send and the oldest receive of each (src, dst): the
 * sends are scanned in post order, so the first one with a receive of its
 * pair waiting is the oldest send of that pair (an older one would have
 * matched that receive already). */
static void fk_unlink(fk_shared_t *sh, fk_msg_t *m) {
  fk_msg_t **pp = &sh->q;
  while (*pp != m) pp = &(*pp)->next;
  *pp = m->next;
}

static void fk_match(fk_shared_t *sh) {
  for (;;) {
    fk_msg_t *s = NULL, *r = NULL;
    for (fk_msg_t *m = sh->q; m && !r; m = m->next) {
      if (!m->is_send || !m->op) continue;
      for (fk_msg_t *q = sh->q; q; q = q->next)
        if (!q->is_send && q->op && q->src == m->src && q->dst == m->dst) {
          s = m, r = q;
          break;
        }
    }
    if (!r) return;
    memcpy(r->op->hdr, s->hdr, BT_NCCL_HDR_BYTES);
    if (s->bytes && r->bytes) memcpy(r->rbuf, s->sbuf, s->bytes < r->bytes ? s->bytes : r->bytes);
    s->op->pending--;
    r->op->pending--;
    fk_unlink(sh, s);
    fk_unlink(sh, r);
    free(s);
    free(r);
  }
}

/* The header's tag fields (worker/transport_nccl.c's hdr_t: step, kind,
 * stage, mb). */
static void fk_tag(const uint8_t *h, fk_log_t *e) {
  memcpy(&e->step, h, 8);
  memcpy(&e->kind, h + 8, 4);
  memcpy(&e->mb, h + 16, 4);
}

static int fk_post(bt_nccl_comm_t *c, const void *send_hdr, const void *send_buf, void *recv_buf,
                   size_t bytes, int peer, void *after, uint64_t deadline, bt_nccl_op_t **out) {
  *out = NULL;
  pthread_mutex_lock(&fk_mu);
  if (c->broken) {
    pthread_mutex_unlock(&fk_mu);
    return BT_ENCCL;
  }
  fk_log_t e = {.wrank = c->wrank, .what = 'P', .stream = after, .comm = c, .step = -2,
                .is_send = send_hdr != NULL};
  if (send_hdr) fk_tag(send_hdr, &e);
  fk_note(e);
  bt_nccl_op_t *op = calloc(1, sizeof *op);
  op->comm = c;
  fk_msg_t **tail = &c->sh->q;
  while (*tail) tail = &(*tail)->next;
  if (send_hdr) {
    fk_msg_t *m = calloc(1, sizeof *m);
    *m = (fk_msg_t){.src = c->rank, .dst = peer, .is_send = 1, .sbuf = send_buf, .bytes = bytes,
                    .op = op};
    memcpy(m->hdr, send_hdr, BT_NCCL_HDR_BYTES);
    *tail = m;
    tail = &m->next;
    op->pending++;
  }
  if (recv_buf) {
    fk_msg_t *m = calloc(1, sizeof *m);
    *m = (fk_msg_t){.src = peer, .dst = c->rank, .rbuf = recv_buf, .bytes = bytes, .op = op};
    *tail = m;
    op->pending++;
  }
  fk_match(c->sh);
  pthread_mutex_unlock(&fk_mu);
  *out = op;
  return 0;
}

static int fk_op_test(bt_nccl_comm_t *c, bt_nccl_op_t *op) {
  pthread_mutex_lock(&fk_mu);
  int rc = c->broken ? BT_ENCCL : op->pending == 0;
  pthread_mutex_unlock(&fk_mu);
  return rc;
}

static int fk_op_join(bt_nccl_op_t *op, void *stream) {
  pthread_mutex_lock(&fk_mu);
  fk_log_t e = {.wrank = op->comm->wrank, .what = 'J', .stream = stream, .comm = op->comm};
  fk_tag(op->hdr, &e);
  fk_note(e);
  pthread_mutex_unlock(&fk_mu);
  return 0;
}

static const void *fk_op_header(bt_nccl_op_t *op) { return op->hdr; }

/* An aborted communicator's queued halves stay in its queue (freed by
 * fk_reset): they point at ops their owners free. */
static void fk_op_free(bt_nccl_op_t *op) {
  pthread_mutex_lock(&fk_mu);
  for (fk_shared_t *s = fk_all; s; s = s->next_all)
    for (fk_msg_t *m = s->q; m; m = m->next)
      if (m->op == op) m->op = NULL, m->sbuf = NULL, m->rbuf = NULL;
  pthread_mutex_unlock(&fk_mu);
  free(op);
}

/* Revoke and abort stop this process's side only: nothing reaches the
 * peer, as with NCCL. */
static int fk_comm_revoke(bt_nccl_comm_t *c) {
  if (!c) return 0;
  pthread_mutex_lock(&fk_mu);
  fk_note((fk_log_t){.wrank = c->wrank, .what = 'R', .comm = c});
  c->broken = 1;
  pthread_mutex_unlock(&fk_mu);
  return 0;
}

static void fk_comm_abort(bt_nccl_comm_t *c) {
  if (!c) return;
  pthread_mutex_lock(&fk_mu);
  fk_note((fk_log_t){.wrank = c->wrank, .what = 'A', .comm = c});
  c->broken = 1;
  pthread_mutex_unlock(&fk_mu);
}

static void fk_comm_destroy(bt_nccl_comm_t *c, uint64_t deadline) { free(c); }
static int fk_host_alloc(void **p, size_t bytes) { return (*p = malloc(bytes ? bytes : 1)) ? 0 : -ENOMEM; }
static void fk_host_free(void *p) { free(p); }
static int fk_bus_id(int device, char *out, size_t cap) {
  snprintf(out, cap, "fake:%d", device);
  return 0;
}

static const bt_nccl_dev_t fake_dev = {
    BT_NCCL_DEV_VERSION, fk_versions,    fk_probe,      fk_unique_id,
    fk_comm_init,        fk_comm_split,  fk_comm_size,  fk_post,
    fk_op_test,          fk_op_join,     fk_op_header,  fk_op_free,
    fk_comm_revoke,      fk_comm_abort,  fk_comm_destroy, fk_host_alloc,
    fk_host_free,        fk_bus_id,
};

/* ---- ranks in threads over the fake ---- */

typedef struct rank_ctx rank_ctx_t;
struct rank_ctx {
  int rank, nranks;
  int peers[FK_MAX_RANKS], npeers;
  int64_t init_ms;
  void (*body)(rank_ctx_t *c);
  int create_rc;
  char why[256];
  bt_tx_t *tx;
  int rc;          /* what the body saw (its own meaning per test) */
  double seconds;  /* how long the body's wait took */
  char msg[256];   /* a failure the body found, for the main thread to report */
};

static void *rank_main(void *arg) {
  rank_ctx_t *c = arg;
  uint8_t id[BT_NCCL_ID_BYTES];
  fake_dev.unique_id(id);
  bt_tx_nccl_opts_t o = {.rank = c->rank, .nranks = c->nranks, .device = 0, .id = id,
                         .peers = c->peers, .npeers = c->npeers,
                         .init_ms = c->init_ms ? c->init_ms : 10000, .enqueue_ms = 5000,
                         .stream = &fk_stream[c->rank]};
  c->create_rc = bt_tx_nccl_create_with(&fake_dev, &o, &c->tx, c->why, sizeof c->why);
  if (c->create_rc == 0 && c->body) c->body(c);
  bt_tx_destroy(c->tx);
  return NULL;
}

/* Runs n ranks, each with its peers (ring neighbours unless given). */
static void run_ranks(rank_ctx_t *ctx, int n, void (*body)(rank_ctx_t *)) {
  fk_reset();
  pthread_t th[FK_MAX_RANKS];
  for (int r = 0; r < n; r++) {
    ctx[r].rank = r;
    ctx[r].nranks = n;
    if (!ctx[r].body) ctx[r].body = body;
    if (ctx[r].npeers == 0 && ctx[r].peers[0] == 0 && n > 1) {
      /* -1 in peers[0] says "no peers at all" (see the asymmetric test). */
      ctx[r].peers[ctx[r].npeers++] = (r + 1) % n;
      if (n > 2) ctx[r].peers[ctx[r].npeers++] = (r + n - 1) % n;
    }
    cr_assert_eq(pthread_create(&th[r], NULL, rank_main, &ctx[r]), 0);
  }
  for (int r = 0; r < n; r++) pthread_join(th[r], NULL);
}

static uint8_t pattern(int rank, int64_t step, int kind, int mb, size_t i) {
  return (uint8_t)(rank * 31 + step * 7 + kind * 3 + mb + (int64_t)i);
}

/* A ring's traffic: activations to the next rank, gradients to the
 * previous one, M micro-batches, receives posted before any send. */
static void ring_body(rank_ctx_t *c) {
  enum { M = 4, BYTES = 333 };
  int n = c->nranks, next = (c->rank + 1) % n, prev = (c->rank + n - 1) % n;
  for (int64_t step = 0; step < 3; step++) {
    uint8_t in[2][M][BYTES], out[2][M][BYTES];
    bt_tx_req_t *req[2][M];
    for (int mb = 0; mb < M; mb++) {
      bt_tag_t ta = {step, BT_MSG_ACTIVATION, c->rank == 0 ? n - 1 : c->rank - 1, mb};
      bt_tag_t tg = {step, BT_MSG_GRADIENT, c->rank == n - 1 ? 0 : c->rank + 1, mb};
      if ((c->rc = bt_tx_irecv(c->tx, in[0][mb], BYTES, prev, ta, &req[0][mb])) ||
          (c->rc = bt_tx_irecv(c->tx, in[1][mb], BYTES, next, tg, &req[1][mb]))) {
        snprintf(c->msg, sizeof c->msg, "rank %d: irecv: %s", c->rank, bt_strerror(c->rc));
        return;
      }
    }
    for (int mb = 0; mb < M; mb++)
      for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < BYTES; i++) out[k][mb][i] = pattern(c->rank, step, k, mb, i);
        bt_tag_t t = {step, k, c->rank, mb};
        if ((c->rc = bt_tx_isend(c->tx, out[k][mb], BYTES, k ? prev : next, t, NULL))) {
          snprintf(c->msg, sizeof c->msg, "rank %d: isend: %s", c->rank, bt_strerror(c->rc));
          return;
        }
      }
    for (int mb = 0; mb < M; mb++)
      for (int k = 0; k < 2; k++) {
        if ((c->rc = bt_tx_wait(c->tx, req[k][mb], bt_deadline_ms(5000)))) {
          snprintf(c->msg, sizeof c->msg, "rank %d: wait: %s", c->rank, bt_strerror(c->rc));
          return;
        }
        int from = k ? next : prev;
        for (size_t i = 0; i < BYTES; i++)
          if (in[k][mb][i] != pattern(from, step, k, mb, i)) {
            snprintf(c->msg, sizeof c->msg, "rank %d step %lld kind %d mb %d byte %zu: %u, "
                     "sent %u", c->rank, (long long)step, k, mb, i, in[k][mb][i],
                     pattern(from, step, k, mb, i));
            c->rc = -1;
            return;
          }
      }
    if ((c->rc = bt_tx_end_step(c->tx, step, bt_deadline_ms(5000)))) {
      snprintf(c->msg, sizeof c->msg, "rank %d: end_step: %s", c->rank, bt_strerror(c->rc));
      return;
    }
  }
  bt_tx_stats_t st;
  bt_tx_stats(c->tx, &st);
  if (st.msgs_sent != 3 * 2 * M || st.msgs_recv != 3 * 2 * M || st.bytes_recv != 3 * 2 * M * BYTES) {
    snprintf(c->msg, sizeof c->msg, "rank %d: stats sent %llu recv %llu", c->rank,
             (unsigned long long)st.msgs_sent, (unsigned long long)st.msgs_recv);
    c->rc = -1;
  }
}

Test(nccl_logic, two_ranks_exchange_both_ways_in_both_kinds) {
  rank_ctx_t ctx[2] = {0};
  run_ranks(ctx, 2, ring_body);
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(ctx[r].create_rc, 0, "rank %d: %s", r, ctx[r].why);
    cr_assert_eq(ctx[r].rc, 0, "%s", ctx[r].msg);
  }
  fk_reset();
}

/* Every rank made every split: 4 per round of the ring's edge colouring
 * (2 kinds x 2 directions), plus one loopback split per kind. */
static void ring_of(int n) {
  rank_ctx_t ctx[FK_MAX_RANKS] = {{0}};
  run_ranks(ctx, n, ring_body);
  int rounds = bt_tx_nccl_ring_rounds(n);
  for (int r = 0; r < n; r++) {
    cr_assert_eq(ctx[r].create_rc, 0, "%d ranks, rank %d: %s", n, r, ctx[r].why);
    cr_assert_eq(ctx[r].rc, 0, "%d ranks: %s", n, ctx[r].msg);
    cr_assert_eq(fk_splits_made[r], 4 * rounds + 2, "%d ranks: rank %d made %d splits", n, r,
                 fk_splits_made[r]);
  }
  fk_reset();
}

Test(nccl_logic, three_rank_ring_and_the_fixed_creation_order) { ring_of(3); }

Test(nccl_logic, rings_of_four_five_and_eight_ranks_need_few_splits) {
  ring_of(4);
  ring_of(5);
  ring_of(8);
  /* 10 splits for even p, 14 for odd: not 2p(p-1)+2 (114 at p = 8). */
  cr_assert_eq(4 * bt_tx_nccl_ring_rounds(8) + 2, 10);
  cr_assert_eq(4 * bt_tx_nccl_ring_rounds(7) + 2, 14);
}

/* The colouring behind one split per round: every ring edge has a round,
 * and no rank is on two edges of one round (else a split would need two
 * colours for it). */
Test(nccl_logic, ring_edge_colouring_puts_no_rank_on_two_edges_of_a_round) {
  for (int p = 1; p <= 64; p++) {
    int edges = bt_tx_nccl_ring_edges(p), rounds = bt_tx_nccl_ring_rounds(p);
    cr_assert_eq(edges, p > 2 ? p : p - 1, "p=%d: %d edges", p, edges);
    cr_assert(rounds <= 3, "p=%d: %d rounds", p, rounds);
    for (int round = 0; round < rounds; round++) {
      int on[64] = {0};
      for (int i = 0; i < edges; i++) {
        int rd = bt_tx_nccl_edge_round(i, p);
        cr_assert(rd >= 0 && rd < rounds, "p=%d edge %d: round %d of %d", p, i, rd, rounds);
        if (rd != round) continue;
        cr_assert_eq(on[i]++, 0, "p=%d round %d: rank %d on two edges", p, round, i);
        cr_assert_eq(on[(i + 1) % p]++, 0, "p=%d round %d: rank %d on two edges", p, round,
                     (i + 1) % p);
      }
    }
  }
}

Test(nccl_logic, a_peer_that_is_not_a_ring_neighbour_is_refused) {
  uint8_t id[BT_NCCL_ID_BYTES] = {1};
  int peers[] = {2};
  bt_tx_nccl_opts_t o = {.rank = 0, .nranks = 4, .id = id, .peers = peers, .npeers = 1};
  bt_tx_t *tx = NULL;
  char why[256] = "";
  int rc = bt_tx_nccl_create_with(&fake_dev, &o, &tx, why, sizeof why);
  cr_assert_eq(rc, BT_EARG, "got %s", bt_strerror(rc));
  cr_assert(strstr(why, "not a ring neighbour"), "why: '%s'", why);
  cr_assert_null(tx);
}

/* Rank 0 sends micro-batches 1 then 0; rank 1 expects 0 then 1. */
static void swap_body(rank_ctx_t *c) {
  enum { BYTES = 64 };
  uint8_t a[BYTES] = {1}, b[BYTES] = {2}, in0[BYTES], in1[BYTES];
  bt_tag_t t0 = {0, BT_MSG_ACTIVATION, 0, 0}, t1 = {0, BT_MSG_ACTIVATION, 0, 1};
  if (c->rank == 0) {
    bt_tx_isend(c->tx, b, BYTES, 1, t1, NULL);
    bt_tx_isend(c->tx, a, BYTES, 1, t0, NULL);
    c->rc = bt_tx_wait_sends(c->tx, bt_deadline_ms(5000));
    return;
  }
  bt_tx_req_t *r0 = NULL, *r1 = NULL;
  bt_tx_irecv(c->tx, in0, BYTES, 0, t0, &r0);
  bt_tx_irecv(c->tx, in1, BYTES, 0, t1, &r1);
  c->rc = bt_tx_wait(c->tx, r0, bt_deadline_ms(5000));
}

Test(nccl_logic, swapped_micro_batches_are_a_tag_error) {
  rank_ctx_t ctx[2] = {0};
  run_ranks(ctx, 2, swap_body);
  cr_assert_eq(ctx[0].create_rc, 0, "%s", ctx[0].why);
  cr_assert_eq(ctx[1].create_rc, 0, "%s", ctx[1].why);
  cr_assert_eq(ctx[1].rc, BT_ETAG, "rank 1 got %s", bt_strerror(ctx[1].rc));
  fk_reset();
}

/* Rank 0 waits for an activation rank 1 never sends; rank 1 waits for a
 * gradient, with a longer deadline, that rank 0 never sends. */
static void silent_body(rank_ctx_t *c) {
  uint8_t buf[128];
  bt_tx_req_t *r = NULL;
  bt_tag_t t = {0, c->rank == 0 ? BT_MSG_ACTIVATION : BT_MSG_GRADIENT, 1 - c->rank, 0};
  if ((c->rc = bt_tx_irecv(c->tx, buf, sizeof buf, 1 - c->rank, t, &r))) return;
  uint64_t t0 = bt_clock_ns();
  c->rc = bt_tx_wait(c->tx, r, bt_deadline_ms(c->rank == 0 ? 200 : 1500));
  c->seconds = (double)(bt_clock_ns() - t0) * 1e-9;
}

/* Rank 0 of three waits 200 ms for an activation nobody sends. */
static void silent3_body(rank_ctx_t *c) {
  if (c->rank != 0) return;
  uint8_t buf[16];
  bt_tx_req_t *r = NULL;
  bt_tag_t t = {0, BT_MSG_ACTIVATION, 2, 0};
  if ((c->rc = bt_tx_irecv(c->tx, buf, sizeof buf, 2, t, &r))) return;
  c->rc = bt_tx_wait(c->tx, r, bt_deadline_ms(200));
}

Test(nccl_logic, silent_peer_ends_at_the_deadline_and_the_peer_is_not_told) {
  rank_ctx_t ctx[2] = {0};
  run_ranks(ctx, 2, silent_body);
  cr_assert_eq(ctx[0].create_rc, 0, "%s", ctx[0].why);
  cr_assert_eq(ctx[0].rc, BT_ETIMEOUT, "rank 0 got %s", bt_strerror(ctx[0].rc));
  cr_assert(ctx[0].seconds >= 0.19 && ctx[0].seconds < 5, "rank 0 waited %.3f s", ctx[0].seconds);
  /* Rank 0's abort does not reach rank 1 (NCCL does not tell the peer):
   * rank 1 ends at its own deadline, with its own timeout. */
  cr_assert_eq(ctx[1].rc, BT_ETIMEOUT, "rank 1 got %s", bt_strerror(ctx[1].rc));
  cr_assert(ctx[1].seconds >= 1.49 && ctx[1].seconds < 10, "rank 1 waited %.3f s",
            ctx[1].seconds);
  fk_reset();
}

/* Rank 0 breaks (a receive that never comes); the log must show every
 * one of its communicators revoked before the first is aborted. */
Test(nccl_logic, every_communicator_is_revoked_before_any_is_aborted) {
  rank_ctx_t ctx[3] = {0};
  run_ranks(ctx, 3, silent3_body);
  for (int r = 0; r < 3; r++) cr_assert_eq(ctx[r].create_rc, 0, "rank %d: %s", r, ctx[r].why);
  cr_assert_eq(ctx[0].rc, BT_ETIMEOUT, "rank 0 got %s", bt_strerror(ctx[0].rc));
  int revokes = 0, aborts = 0, last_revoke = -1, first_abort = -1;
  const void *revoked[64];
  for (int i = 0; i < fk_nlog; i++) {
    if (fk_log[i].wrank != 0) continue;
    if (fk_log[i].what == 'R') {
      cr_assert(revokes < 64);
      revoked[revokes++] = fk_log[i].comm;
      last_revoke = i;
    }
    if (fk_log[i].what == 'A') {
      if (first_abort < 0) first_abort = i;
      aborts++;
      int seen = 0;
      for (int k = 0; k < revokes; k++) seen |= revoked[k] == fk_log[i].comm;
      cr_assert(seen, "log entry %d: a communicator aborted without being revoked first", i);
    }
  }
  /* Rank 0 of a 3-ring: 4 channels to each of its two neighbours (no
   * loopback: it does not list itself), plus the world communicator. */
  cr_assert_eq(revokes, 9, "rank 0 revoked %d communicators", revokes);
  cr_assert_eq(aborts, 9, "rank 0 aborted %d communicators", aborts);
  cr_assert(last_revoke < first_abort, "revoke at log %d after an abort at %d", last_revoke,
            first_abort);
  fk_reset();
}

/* Every transfer is ordered with the compute stream: each post (after the
 * warm-ups) names the rank's own stream, and each completed receive joined
 * that stream before bt_tx_wait returned. */
static void ordered_body(rank_ctx_t *c) {
  enum { M = 5, BYTES = 40 };
  uint8_t buf[M][BYTES];
  if (c->rank == 0) {
    for (int mb = 0; mb < M; mb++) {
      memset(buf[mb], mb + 1, BYTES);
      bt_tag_t t = {0, BT_MSG_ACTIVATION, 0, mb};
      if ((c->rc = bt_tx_isend(c->tx, buf[mb], BYTES, 1, t, NULL))) return;
    }
    c->rc = bt_tx_wait_sends(c->tx, bt_deadline_ms(5000));
    return;
  }
  bt_tx_req_t *r[M];
  for (int mb = 0; mb < M; mb++) {
    bt_tag_t t = {0, BT_MSG_ACTIVATION, 0, mb};
    if ((c->rc = bt_tx_irecv(c->tx, buf[mb], BYTES, 0, t, &r[mb]))) return;
  }
  for (int mb = 0; mb < M; mb++) {
    if ((c->rc = bt_tx_wait(c->tx, r[mb], bt_deadline_ms(5000)))) return;
    /* The join for this micro-batch is in the log already. */
    int joined = 0;
    pthread_mutex_lock(&fk_mu);
    for (int i = 0; i < fk_nlog; i++)
      if (fk_log[i].wrank == 1 && fk_log[i].what == 'J' && fk_log[i].step == 0 &&
          fk_log[i].mb == mb && fk_log[i].stream == &fk_stream[1])
        joined = 1;
    pthread_mutex_unlock(&fk_mu);
    if (!joined) {
      snprintf(c->msg, sizeof c->msg, "micro-batch %d completed without joining the stream", mb);
      c->rc = -1;
      return;
    }
  }
}

Test(nccl_logic, transfers_are_ordered_with_the_compute_stream) {
  rank_ctx_t ctx[2] = {0};
  run_ranks(ctx, 2, ordered_body);
  for (int r = 0; r < 2; r++) {
    cr_assert_eq(ctx[r].create_rc, 0, "rank %d: %s", r, ctx[r].why);
    cr_assert_eq(ctx[r].rc, 0, "rank %d: %s %s", r, bt_strerror(ctx[r].rc), ctx[r].msg);
  }
  int sends = 0, recvs = 0;
  for (int i = 0; i < fk_nlog; i++) {
    fk_log_t *e = &fk_log[i];
    if (e->what != 'P') continue;
    /* Warm-ups too: one header each way per channel at creation. */
    if (e->step != -1 && e->is_send) sends++;
    if (!e->is_send) recvs++;
    cr_assert_eq(e->stream, (const void *)&fk_stream[e->wrank],
                 "log %d: rank %d posted a %s not ordered after its compute stream", i, e->wrank,
                 e->is_send ? "send" : "receive");
  }
  cr_assert_eq(sends, 5, "%d sends posted", sends);
  /* 5 receives, and one warm-up receive at the receiving end of each of
   * the 4 channels between the two ranks. */
  cr_assert_eq(recvs, 5 + 4, "%d receives posted", recvs);
  fk_reset();
}

Test(nccl_logic, peers_that_do_not_list_each_other_are_refused_in_bounded_time) {
  rank_ctx_t ctx[2] = {0};
  ctx[0].peers[0] = 1, ctx[0].npeers = 1, ctx[0].init_ms = 1000;
  ctx[1].peers[0] = -1, ctx[1].npeers = 0, ctx[1].init_ms = 1000; /* lists nobody */
  uint64_t t0 = bt_clock_ns();
  run_ranks(ctx, 2, NULL);
  double s = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(ctx[0].create_rc, BT_EARG, "rank 0 got %s", bt_strerror(ctx[0].create_rc));
  cr_assert(strstr(ctx[0].why, "do not both list each other"), "why: '%s'", ctx[0].why);
  /* Rank 1 waits for rank 0 in the next split: its deadline ends that. */
  cr_assert_eq(ctx[1].create_rc, BT_ETIMEOUT, "rank 1 got %s (%s)",
               bt_strerror(ctx[1].create_rc), ctx[1].why);
  cr_assert(s < 10, "took %.2f s", s);
  fk_reset();
}

static void window_body(rank_ctx_t *c) {
  if (c->rank != 0) return;
  uint8_t buf[16];
  bt_tx_req_t *r = NULL;
  char *m = c->msg;
  size_t cap = sizeof c->msg;
  int rc;
  if ((rc = bt_tx_end_step(c->tx, 0, bt_deadline_ms(1000))) != 0) {
    snprintf(m, cap, "empty end_step(0): %s", bt_strerror(rc));
  } else if ((rc = bt_tx_irecv(c->tx, buf, 16, 1, (bt_tag_t){0, BT_MSG_ACTIVATION, 1, 0}, &r)) !=
             BT_ETAG) {
    snprintf(m, cap, "a receive of closed step 0: %s", bt_strerror(rc));
  } else if ((rc = bt_tx_irecv(c->tx, buf, 16, 1, (bt_tag_t){3, BT_MSG_ACTIVATION, 1, 0}, &r)) !=
             BT_ETAG) {
    snprintf(m, cap, "a receive of step 3 with step 0 closed: %s", bt_strerror(rc));
  } else if ((rc = bt_tx_irecv(c->tx, buf, 16, 1, (bt_tag_t){1, BT_MSG_ACTIVATION, 1, 0}, &r))) {
    snprintf(m, cap, "a receive of step 1: %s", bt_strerror(rc));
  } else if ((rc = bt_tx_irecv(c->tx, buf, 16, 1, (bt_tag_t){1, BT_MSG_ACTIVATION, 1, 0}, &r)) !=
             BT_ETAG) {
    snprintf(m, cap, "the same receive posted twice: %s", bt_strerror(rc));
  } else if ((rc = bt_tx_end_step(c->tx, 1, bt_deadline_ms(1000))) != BT_ETAG) {
    snprintf(m, cap, "end_step(1) with its receive still posted: %s", bt_strerror(rc));
  } else {
    return;
  }
  c->rc = -1;
}

Test(nccl_logic, step_window_and_receives_left_at_the_end_of_a_step) {
  rank_ctx_t ctx[2] = {0};
  run_ranks(ctx, 2, window_body);
  cr_assert_eq(ctx[0].create_rc, 0, "%s", ctx[0].why);
  cr_assert_eq(ctx[0].rc, 0, "%s", ctx[0].msg);
  fk_reset();
}

/* The loopback channel's pairing, over the fake: what the GPU loopback
 * tests above check on NCCL, here on any machine. */
static void loopback_body(rank_ctx_t *c) {
  enum { N = 3 };
  const size_t sizes[N] = {1, 4097, 70000};
  uint8_t *src[N], *dst[N];
  bt_tx_req_t *rr[N], *sr[N];
  for (int i = 0; i < N; i++) {
    src[i] = malloc(sizes[i]);
    dst[i] = calloc(1, sizes[i]);
    fill(src[i], sizes[i], (unsigned)i + 5);
  }
  c->rc = 0;
  for (int i = 0; i < N && !c->rc; i++) {
    bt_tag_t t = {2, i % 2, 0, i};
    c->rc = c->tx->ops->irecv(c->tx, dst[i], sizes[i], 0, t, &rr[i]);
  }
  for (int i = 0; i < N && !c->rc; i++) {
    bt_tag_t t = {2, i % 2, 0, i};
    c->rc = c->tx->ops->isend(c->tx, src[i], sizes[i], 0, t, &sr[i]);
  }
  for (int i = 0; i < N && !c->rc; i++) {
    if ((c->rc = bt_tx_wait(c->tx, sr[i], bt_deadline_ms(5000))) ||
        (c->rc = bt_tx_wait(c->tx, rr[i], bt_deadline_ms(5000))))
      break;
    if (memcmp(src[i], dst[i], sizes[i])) {
      snprintf(c->msg, sizeof c->msg, "message %d arrived different", i);
      c->rc = -1;
    }
  }
  if (!c->rc) c->rc = bt_tx_end_step(c->tx, 2, bt_deadline_ms(5000));
  /* A send with another tag than the receive waiting: refused at pairing. */
  bt_tx_req_t *r = NULL;
  if (!c->rc && !(c->rc = c->tx->ops->irecv(c->tx, dst[0], 1, 0, (bt_tag_t){3, 0, 0, 1}, &r))) {
    int rc = c->tx->ops->isend(c->tx, src[0], 1, 0, (bt_tag_t){3, 0, 0, 2}, NULL);
    int rc2 = bt_tx_wait(c->tx, r, bt_deadline_ms(5000));
    if (rc != BT_ETAG || rc2 != BT_ETAG) {
      snprintf(c->msg, sizeof c->msg, "swapped loopback tag: send %s, receive %s",
               bt_strerror(rc), bt_strerror(rc2));
      c->rc = -1;
    }
  }
  if (c->rc && !c->msg[0]) snprintf(c->msg, sizeof c->msg, "%s", bt_strerror(c->rc));
  for (int i = 0; i < N; i++) free(src[i]), free(dst[i]);
}

Test(nccl_logic, loopback_pairs_sends_with_receives) {
  rank_ctx_t ctx[1] = {0};
  ctx[0].npeers = 1; /* peers[0] = 0: itself */
  run_ranks(ctx, 1, loopback_body);
  cr_assert_eq(ctx[0].create_rc, 0, "%s", ctx[0].why);
  cr_assert_eq(ctx[0].rc, 0, "%s", ctx[0].msg);
  fk_reset();
}

static void loopback_silent_body(rank_ctx_t *c) {
  uint8_t buf[8];
  bt_tx_req_t *r = NULL;
  if ((c->rc = c->tx->ops->irecv(c->tx, buf, 8, 0, (bt_tag_t){0, 0, 0, 0}, &r))) return;
  uint64_t t0 = bt_clock_ns();
  c->rc = bt_tx_wait(c->tx, r, bt_deadline_ms(200));
  c->seconds = (double)(bt_clock_ns() - t0) * 1e-9;
}

Test(nccl_logic, loopback_receive_without_a_send_ends_at_its_deadline) {
  rank_ctx_t ctx[1] = {0};
  ctx[0].npeers = 1;
  run_ranks(ctx, 1, loopback_silent_body);
  cr_assert_eq(ctx[0].create_rc, 0, "%s", ctx[0].why);
  cr_assert_eq(ctx[0].rc, BT_ETIMEOUT, "got %s", bt_strerror(ctx[0].rc));
  cr_assert(ctx[0].seconds >= 0.19 && ctx[0].seconds < 5, "waited %.3f s", ctx[0].seconds);
  fk_reset();
}
