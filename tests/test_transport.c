/* test_transport.c - the socket transport (worker/transport.h): ranks on
 * loopback in one process (each transport has its own progress thread), raw
 * sockets speaking the wire format of docs/protocol.md for peers that
 * misbehave, and a forked child for a peer that dies. No test asserts a
 * speed; time bounds are loose upper limits that tell "at once" from "at the
 * deadline". */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "tests/support/dpwire.h"
#include "worker/transport.h"

static const uint8_t token[16] = {0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe,
                                  0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};

/* Set by the tests that run over Unix sockets (opts.local) instead of TCP;
 * every test runs in its own process. */
static int g_local;
/* The acceptor's handshake deadline (ms); a test may lengthen it. */
static int64_t g_handshake_ms = 500;

static bt_tx_t *mk(int rank, int nranks, const int *peers, int npeers) {
  bt_tx_socket_opts_t o = {.rank = rank, .nranks = nranks, .peers = peers, .npeers = npeers,
                           .token = token, .token_len = sizeof token, .handshake_ms = g_handshake_ms,
                           .local = g_local};
  bt_tx_t *tx = NULL;
  int rc = bt_tx_socket_create(&o, &tx);
  cr_assert_eq(rc, 0, "create rank %d: %s", rank, bt_strerror(rc));
  const char *a = bt_tx_socket_address(tx);
  const char *want = g_local ? "unix:@" : "tcp:127.0.0.1:";
  cr_assert(a && !strncmp(a, want, strlen(want)), "address %s", a ? a : "(null)");
  return tx;
}

/* Connects ranks in increasing order: each dials its higher peers, whose
 * progress threads accept in the background. */
static void connect_all(bt_tx_t **tx, int n) {
  const char *addrs[8];
  for (int i = 0; i < n; i++) addrs[i] = tx[i] ? bt_tx_socket_address(tx[i]) : "tcp:127.0.0.1:1";
  for (int i = 0; i < n; i++) {
    if (!tx[i]) continue;
    int rc = bt_tx_socket_connect(tx[i], addrs, bt_deadline_ms(5000));
    cr_assert_eq(rc, 0, "connect rank %d: %s", i, bt_strerror(rc));
  }
}

static bt_tag_t tag(int64_t step, int kind, int stage, int mb) {
  return (bt_tag_t){.step = step, .kind = kind, .stage = stage, .mb = mb};
}

/* Bytes that differ per tag and position, so a swapped message shows. */
static void fill(uint8_t *b, size_t n, bt_tag_t t) {
  uint64_t s = (uint64_t)t.step * 1000003u + (uint64_t)t.kind * 7919u + (uint64_t)t.stage * 131u +
               (uint64_t)t.mb + 1;
  for (size_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    b[i] = (uint8_t)(s >> 56);
  }
}

static void check(const uint8_t *b, size_t n, bt_tag_t t) {
  uint8_t *want = malloc(n ? n : 1);
  fill(want, n, t);
  size_t bad = n;
  for (size_t i = 0; i < n; i++)
    if (b[i] != want[i]) {
      bad = i;
      break;
    }
  free(want);
  cr_assert_eq(bad, n, "message (kind %d, stage %d, mb %d) differs at byte %zu of %zu", t.kind,
               t.stage, t.mb, bad, n);
}

static void wait_ok(bt_tx_t *tx, bt_tx_req_t *r) {
  int rc = bt_tx_wait(tx, r, bt_deadline_ms(10000));
  cr_assert_eq(rc, 0, "wait: %s", bt_strerror(rc));
}

/* One activation of `n` bytes (at most 128) from rank 0 to rank 1
 * arrives intact: the pipeline still works. */
static void exchange_one(bt_tx_t *from, bt_tx_t *to, size_t n) {
  uint8_t m[128], r[128];
  cr_assert_leq(n, sizeof m);
  bt_tag_t t = tag(1, BT_MSG_ACTIVATION, 0, 0);
  fill(m, n, t);
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_irecv(to, r, n, 0, t, &q), 0);
  cr_assert_eq(bt_tx_isend(from, m, n, 1, t, NULL), 0);
  wait_ok(to, q);
  check(r, n, t);
}

/* Waits until tx has received `n` whole messages (held or not). */
static void wait_arrivals(bt_tx_t *tx, uint64_t n) {
  uint64_t deadline = bt_deadline_ms(10000);
  bt_tx_stats_t st;
  for (;;) {
    bt_tx_stats(tx, &st);
    if (st.msgs_recv >= n || bt_clock_ns() > deadline) break;
    bt_sleep_ms(2);
  }
  cr_assert_geq(st.msgs_recv, n, "only %llu of %llu messages arrived",
                (unsigned long long)st.msgs_recv, (unsigned long long)n);
}

/* ---- raw peers speaking the wire format ---- */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The raw_* helpers assert nothing: a forked child uses them too, and a
 * Criterion assertion in a child would report into the parent's test. */
static int raw_connect(const char *addr) {
  if (!strncmp(addr, "unix:@", 6)) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(addr + 6);
    memcpy(sa.sun_path + 1, addr + 6, n);
    if (connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) < 0) {
      close(fd);
      return -1;
    }
    return fd;
  }
  int port = atoi(strrchr(addr, ':') + 1);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int raw_send(int fd, const void *buf, size_t n) {
  const uint8_t *p = buf;
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The dialer's side of the handshake (tests/support/dpwire.h), proving
 * `tok` whether or not the acceptor proved it: a peer with a wrong token
 * gets as far as its proof. */
static int raw_handshake(int fd, uint32_t from, uint32_t to, const uint8_t *tok, size_t tl) {
  return dpw_dial(fd, from, to, tok, tl, 0, NULL, NULL);
}

static int tcp_connect(const char *addr) {
  int fd = raw_connect(addr);
  cr_assert_geq(fd, 0, "connect to %s: %s", addr, strerror(errno));
  return fd;
}

static void send_all(int fd, const void *buf, size_t n) {
  cr_assert_eq(raw_send(fd, buf, n), 0, "send: %s", strerror(errno));
}

static void send_handshake(int fd, uint32_t from, uint32_t to, const uint8_t *tok, size_t tl) {
  cr_assert_eq(raw_handshake(fd, from, to, tok, tl), 0, "send: %s", strerror(errno));
}

/* 1 when the other end acknowledged, 0 when it closed, -1 on timeout, 2 for
 * an acknowledgement that is not one. */
static int read_ack(int fd, int ms) {
  uint8_t ack[8];
  size_t got = 0;
  while (got < sizeof ack) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0) return -1;
    ssize_t n = read(fd, ack + got, sizeof ack - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    got += (size_t)n;
  }
  return ((uint32_t)ack[0] | (uint32_t)ack[1] << 8 | (uint32_t)ack[2] << 16 | (uint32_t)ack[3] << 24) == 0x4b415442u ? 1 : 2;
}

static void msg_header(uint8_t *h, bt_tag_t t, uint64_t bytes) {
  put32(h, 0x4d445442u); /* "BTDM" */
  put32(h + 4, (uint32_t)t.kind);
  put32(h + 8, (uint32_t)t.step);
  put32(h + 12, (uint32_t)((uint64_t)t.step >> 32));
  put32(h + 16, (uint32_t)t.stage);
  put32(h + 20, (uint32_t)t.mb);
  put32(h + 24, (uint32_t)bytes);
  put32(h + 28, (uint32_t)(bytes >> 32));
}

/* ---- tests ---- */

static void ping_pong_of_every_size(void) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  size_t sizes[] = {1, 1000, 16384, 262144, 4u << 20, 8u << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t n = sizes[k];
    bt_tag_t ta = tag(1, BT_MSG_ACTIVATION, 0, (int)k), tg = tag(1, BT_MSG_GRADIENT, 1, (int)k);
    uint8_t *out = malloc(n), *mid = malloc(n), *back = malloc(n), *ret = malloc(n);
    fill(out, n, ta);
    fill(back, n, tg);
    bt_tx_req_t *r0, *r1, *s0, *s1;
    cr_assert_eq(bt_tx_irecv(tx[0], ret, n, 1, tg, &r0), 0);
    cr_assert_eq(bt_tx_irecv(tx[1], mid, n, 0, ta, &r1), 0);
    cr_assert_eq(bt_tx_isend(tx[0], out, n, 1, ta, &s0), 0);
    wait_ok(tx[1], r1);
    check(mid, n, ta);
    cr_assert_eq(bt_tx_isend(tx[1], back, n, 0, tg, &s1), 0);
    wait_ok(tx[0], r0);
    check(ret, n, tg);
    wait_ok(tx[0], s0);
    wait_ok(tx[1], s1);
    free(out);
    free(mid);
    free(back);
    free(ret);
  }
  bt_tx_stats_t st;
  bt_tx_stats(tx[1], &st);
  cr_assert_eq(st.msgs_recv, 6);
  cr_assert_eq(st.held, 0, "a message posted in advance was held");
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, ping_pong_of_every_size_is_exact) { ping_pong_of_every_size(); }

Test(transport, local_ping_pong_of_every_size_is_exact) {
  g_local = 1;
  ping_pong_of_every_size();
}

Test(transport, early_messages_are_held_until_posted) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  enum { N = 100000 };
  bt_tag_t a = tag(3, BT_MSG_ACTIVATION, 0, 0), b = tag(3, BT_MSG_ACTIVATION, 0, 1);
  static uint8_t sa[N], sb[N], ra[N], rb[N];
  fill(sa, N, a);
  fill(sb, N, b);
  /* B leaves first, then A; both arrive before any receive exists. */
  cr_assert_eq(bt_tx_isend(tx[0], sb, N, 1, b, NULL), 0);
  cr_assert_eq(bt_tx_isend(tx[0], sa, N, 1, a, NULL), 0);
  cr_assert_eq(bt_tx_wait_sends(tx[0], bt_deadline_ms(10000)), 0);
  wait_arrivals(tx[1], 2);
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_irecv(tx[1], ra, N, 0, a, &q), 0);
  cr_assert_eq(bt_tx_test(tx[1], q), 1, "a held message did not complete its receive at once");
  check(ra, N, a);
  cr_assert_eq(bt_tx_irecv(tx[1], rb, N, 0, b, &q), 0);
  wait_ok(tx[1], q);
  check(rb, N, b);
  bt_tx_stats_t st;
  bt_tx_stats(tx[1], &st);
  cr_assert_eq(st.held, 2);
  cr_assert_geq(st.held_bytes_peak, 2 * N);
  cr_assert_eq(bt_tx_end_step(tx[1], 3, bt_deadline_ms(5000)), 0);
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

/* Interleaving with p = 2, v = 2 and m not a multiple of p: activations and
 * gradients of one size cross between the two workers, sent in one order
 * and received in another. Matching by tag keeps each in its place. */
Test(transport, same_size_messages_in_swapped_order_match_by_tag) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  enum { N = 4096, M = 3 };
  static uint8_t send0[2 * M][N], send1[2 * M][N], recv0[2 * M][N], recv1[2 * M][N];
  bt_tag_t t0[2 * M], t1[2 * M];
  /* worker 0 sends activations of virtual stages 0 and 2; worker 1 sends
   * gradients of virtual stages 1 and 3. */
  for (int i = 0; i < 2 * M; i++) {
    t0[i] = tag(1, BT_MSG_ACTIVATION, (i / M) * 2, i % M);
    t1[i] = tag(1, BT_MSG_GRADIENT, (i / M) * 2 + 1, i % M);
    fill(send0[i], N, t0[i]);
    fill(send1[i], N, t1[i]);
  }
  bt_tx_req_t *r0[2 * M], *r1[2 * M];
  /* Half the receives are posted before the sends, half after. */
  for (int i = 0; i < M; i++) {
    cr_assert_eq(bt_tx_irecv(tx[1], recv1[2 * M - 1 - i], N, 0, t0[2 * M - 1 - i], &r1[2 * M - 1 - i]), 0);
    cr_assert_eq(bt_tx_irecv(tx[0], recv0[2 * M - 1 - i], N, 1, t1[2 * M - 1 - i], &r0[2 * M - 1 - i]), 0);
  }
  for (int i = 0; i < 2 * M; i++) {
    cr_assert_eq(bt_tx_isend(tx[0], send0[i], N, 1, t0[i], NULL), 0);
    cr_assert_eq(bt_tx_isend(tx[1], send1[i], N, 0, t1[i], NULL), 0);
  }
  for (int i = M - 1; i >= 0; i--) {
    cr_assert_eq(bt_tx_irecv(tx[1], recv1[i], N, 0, t0[i], &r1[i]), 0);
    cr_assert_eq(bt_tx_irecv(tx[0], recv0[i], N, 1, t1[i], &r0[i]), 0);
  }
  for (int i = 2 * M - 1; i >= 0; i--) {
    wait_ok(tx[1], r1[i]);
    wait_ok(tx[0], r0[i]);
    check(recv1[i], N, t0[i]);
    check(recv0[i], N, t1[i]);
  }
  cr_assert_eq(bt_tx_end_step(tx[0], 1, bt_deadline_ms(5000)), 0);
  cr_assert_eq(bt_tx_end_step(tx[1], 1, bt_deadline_ms(5000)), 0);
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, both_directions_at_once_with_large_messages) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  enum { K = 12 };
  size_t n = 1u << 20;
  uint8_t *s[2][K], *r[2][K];
  bt_tx_req_t *rq[2][K];
  for (int w = 0; w < 2; w++)
    for (int i = 0; i < K; i++) {
      s[w][i] = malloc(n);
      r[w][i] = malloc(n);
      fill(s[w][i], n, tag(1, w, w, i));
      cr_assert_eq(bt_tx_irecv(tx[w], r[w][i], n, 1 - w, tag(1, 1 - w, 1 - w, i), &rq[w][i]), 0);
    }
  /* Both sides write megabytes at the same time: neither may wait for the
   * other to read first. */
  for (int i = 0; i < K; i++)
    for (int w = 0; w < 2; w++) cr_assert_eq(bt_tx_isend(tx[w], s[w][i], n, 1 - w, tag(1, w, w, i), NULL), 0);
  for (int w = 0; w < 2; w++) {
    for (int i = 0; i < K; i++) {
      wait_ok(tx[w], rq[w][i]);
      check(r[w][i], n, tag(1, 1 - w, 1 - w, i));
    }
    cr_assert_eq(bt_tx_wait_sends(tx[w], bt_deadline_ms(10000)), 0);
  }
  for (int w = 0; w < 2; w++)
    for (int i = 0; i < K; i++) {
      free(s[w][i]);
      free(r[w][i]);
    }
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

/* One rank per thread, as in a real job: each posts a receive, sends,
 * waits for its send, then for its receive, many times over, so that the
 * worker threads and the progress threads race on every socket. */
typedef struct {
  bt_tx_t *tx;
  int64_t step;
  int iters;
  size_t bytes;
  int rc;
} rank_job_t;

static void *rank_loop(void *arg) {
  rank_job_t *j = arg;
  int me = j->tx->rank, peer = 1 - me;
  uint8_t *out = malloc(j->bytes), *in = malloc(j->bytes);
  for (int i = 0; i < j->iters && !j->rc; i++) {
    bt_tag_t mine = tag(j->step, me, me, i), theirs = tag(j->step, peer, peer, i);
    fill(out, j->bytes, mine);
    bt_tx_req_t *r, *s;
    j->rc = bt_tx_irecv(j->tx, in, j->bytes, peer, theirs, &r);
    if (!j->rc) j->rc = bt_tx_isend(j->tx, out, j->bytes, peer, mine, &s);
    if (!j->rc) j->rc = bt_tx_wait(j->tx, s, bt_deadline_ms(10000));
    if (!j->rc) j->rc = bt_tx_wait(j->tx, r, bt_deadline_ms(10000));
    uint8_t *want = malloc(j->bytes);
    fill(want, j->bytes, theirs);
    if (!j->rc && memcmp(in, want, j->bytes)) j->rc = BT_EFORMAT;
    free(want);
  }
  free(out);
  free(in);
  return NULL;
}

static void ranks_race(void) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  size_t sizes[] = {100, 65536, 1u << 20};
  int iters[] = {2000, 400, 40};
  for (int k = 0; k < 3; k++) {
    rank_job_t j[2] = {{tx[0], k + 1, iters[k], sizes[k], 0}, {tx[1], k + 1, iters[k], sizes[k], 0}};
    pthread_t th[2];
    for (int w = 0; w < 2; w++) pthread_create(&th[w], NULL, rank_loop, &j[w]);
    for (int w = 0; w < 2; w++) pthread_join(th[w], NULL);
    for (int w = 0; w < 2; w++)
      cr_assert_eq(j[w].rc, 0, "rank %d, %zu-byte messages: %s", w, sizes[k], bt_strerror(j[w].rc));
    /* One step per size: nothing may be left over when it closes. */
    for (int w = 0; w < 2; w++) cr_assert_eq(bt_tx_end_step(tx[w], k + 1, bt_deadline_ms(5000)), 0);
  }
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, ranks_in_threads_race_sends_and_receives) { ranks_race(); }

Test(transport, local_ranks_in_threads_race_sends_and_receives) {
  g_local = 1;
  ranks_race();
}

Test(transport, pending_large_send_does_not_delay_a_receive) {
  /* Rank 1 sends 64 MB to rank 0, a raw peer that never reads, so the send
   * stays pending; a small message from rank 2 must still arrive. */
  int p1[] = {0, 2}, p2[] = {1};
  bt_tx_t *tx[3] = {NULL, mk(1, 3, p1, 2), mk(2, 3, p2, 1)};
  int raw = tcp_connect(bt_tx_socket_address(tx[1]));
  send_handshake(raw, 0, 1, token, sizeof token);
  cr_assert_eq(read_ack(raw, 5000), 1, "the raw rank 0 was not accepted");
  connect_all(tx, 3);

  size_t big = 64u << 20;
  uint8_t *bigbuf = calloc(1, big);
  bt_tx_req_t *sbig, *r;
  cr_assert_eq(bt_tx_isend(tx[1], bigbuf, big, 0, tag(1, BT_MSG_GRADIENT, 1, 0), &sbig), 0);
  uint8_t small[1024], got[1024];
  bt_tag_t ts = tag(1, BT_MSG_GRADIENT, 2, 0);
  fill(small, sizeof small, ts);
  cr_assert_eq(bt_tx_irecv(tx[1], got, sizeof got, 2, ts, &r), 0);
  cr_assert_eq(bt_tx_isend(tx[2], small, sizeof small, 1, ts, NULL), 0);
  wait_ok(tx[1], r);
  check(got, sizeof got, ts);
  cr_assert_eq(bt_tx_test(tx[1], sbig), 0, "64 MB went to a peer that reads nothing");

  /* The raw peer goes away: the pending send fails at once. */
  close(raw);
  uint64_t t0 = bt_clock_ns();
  int rc = bt_tx_wait(tx[1], sbig, bt_deadline_ms(30000));
  double took = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(rc, BT_EPEER, "got %s", bt_strerror(rc));
  cr_assert_lt(took, 10.0, "the lost peer was noticed only after %.1f s", took);
  bt_tx_destroy(tx[1]);
  bt_tx_destroy(tx[2]);
  free(bigbuf);
}

Test(transport, unmatched_receive_ends_at_its_deadline) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  uint8_t buf[64];
  bt_tx_req_t *r;
  cr_assert_eq(bt_tx_irecv(tx[1], buf, sizeof buf, 0, tag(1, BT_MSG_ACTIVATION, 0, 0), &r), 0);
  uint64_t t0 = bt_clock_ns();
  int rc = bt_tx_wait(tx[1], r, bt_deadline_ms(300));
  double took = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(rc, BT_ETIMEOUT, "got %s", bt_strerror(rc));
  cr_assert_geq(took, 0.29, "returned %.3f s before its deadline", 0.3 - took);
  cr_assert_lt(took, 2.3, "took %.3f s for a 0.3 s deadline", took);
  /* The request is still posted: a message sent now completes it. */
  uint8_t msg[64];
  fill(msg, sizeof msg, tag(1, BT_MSG_ACTIVATION, 0, 0));
  cr_assert_eq(bt_tx_isend(tx[0], msg, sizeof msg, 1, tag(1, BT_MSG_ACTIVATION, 0, 0), NULL), 0);
  wait_ok(tx[1], r);
  check(buf, sizeof buf, tag(1, BT_MSG_ACTIVATION, 0, 0));
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

static void peer_killed_mid_message(void) {
  int p1[] = {0};
  bt_tx_t *tx = mk(1, 2, p1, 1);
  const char *addr = bt_tx_socket_address(tx);
  bt_tag_t t = tag(1, BT_MSG_ACTIVATION, 0, 0);
  pid_t child = fork();
  cr_assert_geq(child, 0);
  if (child == 0) {
    /* Rank 0: handshake, then one megabyte of an eight-megabyte message,
     * then nothing until killed. The alarm ends it if the parent fails
     * before killing it. */
    alarm(30);
    int fd = raw_connect(addr);
    if (fd < 0 || raw_handshake(fd, 0, 1, token, sizeof token) || read_ack(fd, 5000) != 1) _exit(1);
    uint8_t h[32];
    msg_header(h, t, 8u << 20);
    uint8_t *part = calloc(1, 1u << 20);
    if (!part || raw_send(fd, h, sizeof h) || raw_send(fd, part, 1u << 20)) _exit(1);
    for (;;) pause();
  }
  const char *addrs[2] = {"tcp:127.0.0.1:1", addr};
  cr_assert_eq(bt_tx_socket_connect(tx, addrs, bt_deadline_ms(10000)), 0);
  uint8_t *buf = malloc(8u << 20), *big = calloc(1, 64u << 20);
  bt_tx_req_t *r, *s;
  cr_assert_eq(bt_tx_irecv(tx, buf, 8u << 20, 0, t, &r), 0);
  cr_assert_eq(bt_tx_isend(tx, big, 64u << 20, 0, tag(1, BT_MSG_GRADIENT, 1, 0), &s), 0);
  /* Let the megabyte arrive, so the kill lands in the middle of a message. */
  bt_sleep_ms(200);
  cr_assert_eq(bt_tx_test(tx, r), 0, "an 8 MB message completed from 1 MB");
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  uint64_t t0 = bt_clock_ns();
  int rc = bt_tx_wait(tx, r, bt_deadline_ms(30000));
  int rs = bt_tx_wait(tx, s, bt_deadline_ms(30000));
  double took = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(rc, BT_EPEER, "receive: %s", bt_strerror(rc));
  cr_assert_eq(rs, BT_EPEER, "send: %s", bt_strerror(rs));
  cr_assert_lt(took, 10.0, "waits ended after %.1f s: at the deadline, not at the death", took);
  /* Every later request with that peer fails at once too. */
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_irecv(tx, buf, 8, 0, tag(1, BT_MSG_ACTIVATION, 0, 1), &q), BT_EPEER);
  cr_assert_eq(bt_tx_isend(tx, big, 8, 0, tag(1, BT_MSG_GRADIENT, 1, 1), NULL), BT_EPEER);
  bt_tx_destroy(tx);
  free(buf);
  free(big);
}

Test(transport, peer_killed_mid_message_fails_waits_at_once) { peer_killed_mid_message(); }

Test(transport, local_peer_killed_mid_message_fails_waits_at_once) {
  g_local = 1;
  peer_killed_mid_message();
}

static void refuse_without_token(void) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {NULL, mk(1, 2, p1, 1)};
  const char *addr = bt_tx_socket_address(tx[1]);

  uint8_t wrong[16];
  memcpy(wrong, token, sizeof wrong);
  wrong[15] ^= 1;
  int a = tcp_connect(addr);
  send_handshake(a, 0, 1, wrong, sizeof wrong);
  cr_assert_eq(read_ack(a, 5000), 0, "a wrong token was accepted");

  int b = tcp_connect(addr);
  const char junk[] = "GET / HTTP/1.0\r\n\r\n";
  send_all(b, junk, sizeof junk - 1);
  cr_assert_eq(read_ack(b, 5000), 0, "garbage was accepted");

  int c = tcp_connect(addr); /* says nothing: closed after handshake_ms */
  cr_assert_eq(read_ack(c, 5000), 0, "a silent connection was kept");

  int d = tcp_connect(addr);
  /* The right token, not a peer's rank: refused at the hello, before any
   * challenge (so the handshake fails on the raw side). */
  cr_assert_neq(raw_handshake(d, 5, 1, token, sizeof token), 0, "an unknown rank was challenged");
  cr_assert_eq(read_ack(d, 5000), 0, "an unknown rank was accepted");

  int e = tcp_connect(addr);
  send_handshake(e, 0, 1, token, 8); /* keyed by a prefix of the token */
  cr_assert_eq(read_ack(e, 5000), 0, "a short token was accepted");

  tx[0] = mk(0, 2, p0, 1);
  connect_all(tx, 2);
  exchange_one(tx[0], tx[1], 100);
  bt_tx_stats_t st;
  bt_tx_stats(tx[1], &st);
  cr_assert_eq(st.refused, 5);
  close(a);
  close(b);
  close(c);
  close(d);
  close(e);
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, connections_without_the_token_are_refused_and_the_job_goes_on) { refuse_without_token(); }

Test(transport, local_connections_without_the_token_are_refused_and_the_job_goes_on) {
  g_local = 1;
  refuse_without_token();
}

/* Hundreds of silent connections held open before the real peer dials:
 * the handshake slots are bounded and the oldest gives way, so the peer
 * still connects (well within its deadline) and every silent one is
 * refused in the end, counted, not logged one by one. */
static void silent_flood_before_connect(void) {
  enum { FLOOD = 200 };
  int p0[] = {1}, p1[] = {0};
  /* Silent connections would hold their slots for 30 s, longer than the
   * peer's 15 s connect deadline: only giving way to newcomers lets it in. */
  g_handshake_ms = 30000;
  bt_tx_t *tx[2] = {NULL, mk(1, 2, p1, 1)};
  const char *addr = bt_tx_socket_address(tx[1]);
  int fds[FLOOD], n = 0;
  for (int i = 0; i < FLOOD; i++) {
    int fd = raw_connect(addr);
    if (fd >= 0) fds[n++] = fd;
  }
  cr_assert_geq(n, 100, "only %d flood connections were made", n);
  tx[0] = mk(0, 2, p0, 1);
  const char *addrs[2] = {bt_tx_socket_address(tx[0]), addr};
  for (int i = 0; i < 2; i++) {
    int rc = bt_tx_socket_connect(tx[i], addrs, bt_deadline_ms(15000));
    cr_assert_eq(rc, 0, "connect rank %d: %s", i, bt_strerror(rc));
  }
  exchange_one(tx[0], tx[1], 64);
  /* All but the slots' worth were dropped for newcomers, the peer's own
   * connection among the newcomers. */
  bt_tx_stats_t st;
  bt_tx_stats(tx[1], &st);
  cr_assert_geq(st.refused + 32, (uint64_t)n, "%llu of %d silent connections refused", (unsigned long long)st.refused,
                n);
  for (int i = 0; i < n; i++) close(fds[i]);
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, a_flood_of_silent_connections_does_not_keep_the_peer_out) { silent_flood_before_connect(); }

Test(transport, local_a_flood_of_silent_connections_does_not_keep_the_peer_out) {
  g_local = 1;
  silent_flood_before_connect();
}

Test(transport, unexpected_and_mismatched_messages_are_tag_errors) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  uint8_t m[32] = {0}, r[32];
  bt_tx_req_t *q, *q2;
  /* A second receive of a tag already posted. */
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(1, BT_MSG_ACTIVATION, 0, 0), &q), 0);
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(1, BT_MSG_ACTIVATION, 0, 0), &q2), BT_ETAG);
  /* A message nobody receives in its step: end_step reports it. */
  cr_assert_eq(bt_tx_isend(tx[0], m, sizeof m, 1, tag(1, BT_MSG_ACTIVATION, 0, 0), NULL), 0);
  cr_assert_eq(bt_tx_isend(tx[0], m, sizeof m, 1, tag(1, BT_MSG_ACTIVATION, 0, 7), NULL), 0);
  wait_ok(tx[1], q);
  wait_arrivals(tx[1], 2);
  cr_assert_eq(bt_tx_end_step(tx[1], 1, bt_deadline_ms(5000)), BT_ETAG);
  /* A held message of another size than its receive. */
  cr_assert_eq(bt_tx_isend(tx[0], m, 16, 1, tag(2, BT_MSG_ACTIVATION, 0, 0), NULL), 0);
  wait_arrivals(tx[1], 3);
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(2, BT_MSG_ACTIVATION, 0, 0), &q), BT_ETAG);
  /* A message of a closed step breaks the peer: a pending receive fails. */
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(2, BT_MSG_ACTIVATION, 0, 1), &q), 0);
  cr_assert_eq(bt_tx_isend(tx[0], m, sizeof m, 1, tag(1, BT_MSG_ACTIVATION, 0, 3), NULL), 0);
  int rc = bt_tx_wait(tx[1], q, bt_deadline_ms(10000));
  cr_assert_eq(rc, BT_ETAG, "got %s", bt_strerror(rc));
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, messages_sent_before_a_peer_closed_are_still_delivered) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  enum { N = 300000 };
  static uint8_t m[2][N], r[N];
  bt_tag_t t[2] = {tag(1, BT_MSG_ACTIVATION, 0, 0), tag(1, BT_MSG_ACTIVATION, 0, 1)};
  for (int i = 0; i < 2; i++) {
    fill(m[i], N, t[i]);
    cr_assert_eq(bt_tx_isend(tx[0], m[i], N, 1, t[i], NULL), 0);
  }
  cr_assert_eq(bt_tx_wait_sends(tx[0], bt_deadline_ms(10000)), 0);
  bt_tx_destroy(tx[0]); /* rank 0 finished its step and left */
  wait_arrivals(tx[1], 2);
  for (int i = 1; i >= 0; i--) {
    bt_tx_req_t *q;
    cr_assert_eq(bt_tx_irecv(tx[1], r, N, 0, t[i], &q), 0);
    wait_ok(tx[1], q);
    check(r, N, t[i]);
  }
  /* Nothing more will come from it. */
  bt_tx_req_t *q;
  uint64_t deadline = bt_deadline_ms(10000);
  int rc = 0;
  while (rc == 0 && bt_clock_ns() < deadline) {
    rc = bt_tx_irecv(tx[1], r, N, 0, tag(1, BT_MSG_ACTIVATION, 0, 2), &q);
    if (rc == 0) rc = bt_tx_wait(tx[1], q, bt_deadline_ms(10000));
  }
  cr_assert_eq(rc, BT_EPEER, "got %s", bt_strerror(rc));
  bt_tx_destroy(tx[1]);
}

Test(transport, a_message_more_than_one_step_ahead_is_a_tag_error) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  uint8_t m[16] = {0}, r[16];
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_end_step(tx[1], 4, bt_deadline_ms(5000)), 0);
  /* Steps 5 and 6 are welcome now; 7 cannot come from a neighbour. */
  cr_assert_eq(bt_tx_isend(tx[0], m, sizeof m, 1, tag(6, BT_MSG_ACTIVATION, 0, 0), NULL), 0);
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(6, BT_MSG_ACTIVATION, 0, 0), &q), 0);
  wait_ok(tx[1], q);
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(5, BT_MSG_ACTIVATION, 0, 0), &q), 0);
  cr_assert_eq(bt_tx_isend(tx[0], m, sizeof m, 1, tag(7, BT_MSG_ACTIVATION, 0, 0), NULL), 0);
  int rc = bt_tx_wait(tx[1], q, bt_deadline_ms(10000));
  cr_assert_eq(rc, BT_ETAG, "got %s", bt_strerror(rc));
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, size_mismatch_with_a_posted_receive_is_a_tag_error) {
  int p0[] = {1}, p1[] = {0};
  bt_tx_t *tx[2] = {mk(0, 2, p0, 1), mk(1, 2, p1, 1)};
  connect_all(tx, 2);
  uint8_t m[64] = {0}, r[32];
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_irecv(tx[1], r, sizeof r, 0, tag(1, BT_MSG_GRADIENT, 0, 0), &q), 0);
  cr_assert_eq(bt_tx_isend(tx[0], m, sizeof m, 1, tag(1, BT_MSG_GRADIENT, 0, 0), NULL), 0);
  int rc = bt_tx_wait(tx[1], q, bt_deadline_ms(10000));
  cr_assert_eq(rc, BT_ETAG, "got %s", bt_strerror(rc));
  bt_tx_destroy(tx[0]);
  bt_tx_destroy(tx[1]);
}

Test(transport, bad_arguments_are_refused) {
  int p0[] = {1};
  bt_tx_t *tx = mk(0, 3, p0, 1);
  uint8_t b[8];
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_isend(tx, b, 8, 0, tag(1, 0, 0, 0), NULL), BT_EARG, "send to self");
  cr_assert_eq(bt_tx_isend(tx, b, 8, 3, tag(1, 0, 0, 0), NULL), BT_EARG, "rank out of range");
  cr_assert_eq(bt_tx_isend(tx, b, 8, 2, tag(1, 0, 0, 0), NULL), BT_EARG, "not a peer");
  cr_assert_eq(bt_tx_irecv(tx, b, 8, 1, tag(1, 5, 0, 0), &q), BT_EARG, "bad kind");
  cr_assert_eq(bt_tx_irecv(tx, NULL, 8, 1, tag(1, 0, 0, 0), &q), BT_EARG, "no buffer");
  bt_tx_destroy(tx);

  bt_tx_socket_opts_t o = {.rank = 0, .nranks = 2, .peers = p0, .npeers = 1, .token = token,
                           .token_len = 8};
  cr_assert_eq(bt_tx_socket_create(&o, &tx), BT_EARG, "an 8-byte token was taken");
  const char *addrs[2] = {"tcp:127.0.0.1:1", "127.0.0.1:5"};
  o.token_len = sizeof token;
  cr_assert_eq(bt_tx_socket_create(&o, &tx), 0);
  cr_assert_eq(bt_tx_socket_connect(tx, addrs, bt_deadline_ms(1000)), BT_EARG, "address without tcp:");
  const char *relative[2] = {"tcp:127.0.0.1:1", "unix:sock"};
  cr_assert_eq(bt_tx_socket_connect(tx, relative, bt_deadline_ms(1000)), BT_EARG, "relative Unix path");
  const char *noport[2] = {"tcp:127.0.0.1:1", "tcp:127.0.0.1:x"};
  cr_assert_eq(bt_tx_socket_connect(tx, noport, bt_deadline_ms(1000)), BT_EARG, "port not a number");
  bt_tx_destroy(tx);
}

Test(transport, dialing_a_peer_that_starts_late_retries_until_it_listens) {
  int p0[] = {1};
  bt_tx_t *tx = mk(0, 2, p0, 1);
  /* Nothing listens on this port (it was just bound and closed). */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  cr_assert_eq(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
  socklen_t sl = sizeof sa;
  getsockname(s, (struct sockaddr *)&sa, &sl);
  close(s);
  char dead[64];
  snprintf(dead, sizeof dead, "tcp:127.0.0.1:%d", ntohs(sa.sin_port));
  const char *addrs[2] = {"tcp:127.0.0.1:1", dead};
  uint64_t t0 = bt_clock_ns();
  int rc = bt_tx_socket_connect(tx, addrs, bt_deadline_ms(400));
  double took = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(rc, BT_ETIMEOUT, "got %s", bt_strerror(rc));
  cr_assert(took >= 0.35 && took < 2.4, "gave up after %.2f s for a 0.4 s deadline", took);
  bt_tx_destroy(tx);
}

Test(transport, job_token_parsing) {
  uint8_t t[BT_TX_TOKEN_MAX];
  size_t n = 0;
  cr_assert_eq(bt_tx_token_parse("00112233445566778899aabbccddeeff", t, &n), 0);
  cr_assert_eq(n, 16);
  cr_assert_eq(t[15], 0xff);
  cr_assert_eq(bt_tx_token_parse("00112233445566778899AABBCCDDEEFF0011", t, &n), 0);
  cr_assert_eq(n, 18);
  cr_assert_eq(bt_tx_token_parse("0011223344556677", t, &n), BT_EARG, "8 bytes accepted");
  cr_assert_eq(bt_tx_token_parse("00112233445566778899aabbccddeefg", t, &n), BT_EARG);
  cr_assert_eq(bt_tx_token_parse("00112233445566778899aabbccddeef", t, &n), BT_EARG);
  cr_assert_eq(bt_tx_token_parse(NULL, t, &n), BT_EARG);
  setenv("BATON_JOB_TOKEN", "ffeeddccbbaa99887766554433221100", 1);
  cr_assert_eq(bt_tx_token_from_env(t, &n), 0);
  cr_assert_eq(t[0], 0xff);
  unsetenv("BATON_JOB_TOKEN");
  cr_assert_eq(bt_tx_token_from_env(t, &n), BT_EARG);
}
