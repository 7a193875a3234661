/* test_transport_auth.c - the socket data plane's handshake
 * (worker/transport_socket.c, docs/protocol.md): both ends prove the job
 * token by HMAC over fresh nonces, so the token never crosses the wire, a
 * wrong token is refused on either side, a recorded proof is worthless
 * against a new nonce, and a dialer that reaches a listener without the
 * token sends it nothing. The test side of the wire is written by hand
 * (tests/support/dpwire.h): plain sockets that listen, relay and record. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "tests/support/dpwire.h"
#include "worker/transport.h"

static const uint8_t token[16] = {0x5a, 0x11, 0xc3, 0x94, 0x27, 0xe8, 0x6b, 0x0d,
                                  0xf2, 0x49, 0xae, 0x30, 0x87, 0x1c, 0xd5, 0x66};
static const uint8_t other[16] = {0x5a, 0x11, 0xc3, 0x94, 0x27, 0xe8, 0x6b, 0x0d,
                                  0xf2, 0x49, 0xae, 0x30, 0x87, 0x1c, 0xd5, 0x67};

static int g_local;

static bt_tx_t *mk_with(int rank, const uint8_t *tok) {
  static const int p0[] = {1}, p1[] = {0};
  bt_tx_socket_opts_t o = {.rank = rank, .nranks = 2, .peers = rank ? p1 : p0, .npeers = 1, .token = tok,
                           .token_len = 16, .handshake_ms = 1000, .local = g_local};
  bt_tx_t *tx = NULL;
  int rc = bt_tx_socket_create(&o, &tx);
  cr_assert_eq(rc, 0, "create rank %d: %s", rank, bt_strerror(rc));
  return tx;
}

static bt_tx_t *mk(int rank) { return mk_with(rank, token); }

static void exchange(bt_tx_t *from, bt_tx_t *to) {
  uint8_t m[100], r[100] = {0};
  for (size_t i = 0; i < sizeof m; i++) m[i] = (uint8_t)(i * 7 + 3);
  bt_tag_t t = {.step = 1, .kind = BT_MSG_ACTIVATION, .stage = 0, .mb = 0};
  bt_tx_req_t *q;
  cr_assert_eq(bt_tx_irecv(to, r, sizeof r, 0, t, &q), 0);
  cr_assert_eq(bt_tx_isend(from, m, sizeof m, 1, t, NULL), 0);
  int rc = bt_tx_wait(to, q, bt_deadline_ms(10000));
  cr_assert_eq(rc, 0, "wait: %s", bt_strerror(rc));
  cr_assert_arr_eq(r, m, sizeof m, "the message arrived changed");
}

/* Rank 0 dials rank 1 in a thread (bt_tx_socket_connect blocks), so the
 * test can play the other end meanwhile. */
typedef struct {
  bt_tx_t *tx;
  const char *addrs[2];
  int64_t ms;
  int rc;
  double took_s;
  pthread_t th;
} dialer_t;

static void *dial_main(void *arg) {
  dialer_t *d = arg;
  uint64_t t0 = bt_clock_ns();
  d->rc = bt_tx_socket_connect(d->tx, d->addrs, bt_deadline_ms(d->ms));
  d->took_s = (double)(bt_clock_ns() - t0) * 1e-9;
  return NULL;
}

static void dial_start(dialer_t *d, bt_tx_t *tx, const char *to, int64_t ms) {
  d->tx = tx;
  d->addrs[0] = bt_tx_socket_address(tx);
  d->addrs[1] = to;
  d->ms = ms;
  cr_assert_eq(pthread_create(&d->th, NULL, dial_main, d), 0);
}

/* A plain TCP listener on loopback: the fake acceptor or the relay. */
static int plain_listener(char *addr, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  cr_assert_geq(fd, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s", strerror(errno));
  cr_assert_eq(listen(fd, 4), 0);
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  snprintf(addr, cap, "tcp:127.0.0.1:%d", ntohs(sa.sin_port));
  return fd;
}

static int accept_within(int lfd, int ms) {
  struct pollfd p = {.fd = lfd, .events = POLLIN};
  cr_assert_eq(poll(&p, 1, ms), 1, "nobody dialed within %d ms", ms);
  int fd = accept(lfd, NULL, NULL);
  cr_assert_geq(fd, 0, "accept: %s", strerror(errno));
  return fd;
}

/* Everything the other end sends until it closes (at most cap bytes, within
 * ms): the count. */
static size_t drain(int fd, uint8_t *buf, size_t cap, int ms) {
  size_t got = 0;
  uint64_t deadline = bt_deadline_ms(ms);
  for (;;) {
    int64_t left = bt_ms_left(deadline);
    cr_assert_gt(left, 0, "the other end neither closed nor stopped within %d ms", ms);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)left) <= 0) continue;
    uint8_t scratch[256];
    ssize_t n = read(fd, got < cap ? buf + got : scratch, got < cap ? cap - got : sizeof scratch);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return got;
    got += (size_t)n;
  }
}

static void wrong_token_refused_on_both_sides(void) {
  bt_tx_t *acc = mk(1);
  const char *addr = bt_tx_socket_address(acc);
  /* A worker of another job dials: our acceptor's proof does not check
   * with its token, so it fails at once (not at its deadline) and sends no
   * proof of its own. */
  bt_tx_t *stranger = mk_with(0, other);
  const char *addrs[2] = {bt_tx_socket_address(stranger), addr};
  uint64_t t0 = bt_clock_ns();
  int rc = bt_tx_socket_connect(stranger, addrs, bt_deadline_ms(20000));
  double took = (double)(bt_clock_ns() - t0) * 1e-9;
  cr_assert_eq(rc, BT_ETRANSPORT, "dialing a listener of another job: %s", bt_strerror(rc));
  cr_assert_lt(took, 5.0, "the dialer gave up after %.1f s: at its deadline, not at the bad proof", took);
  bt_tx_destroy(stranger);
  /* The acceptor's side: a dialer that proves with the wrong token is
   * refused, though it speaks the protocol to the letter. */
  int fd = dpw_connect(addr);
  cr_assert_geq(fd, 0);
  cr_assert_eq(dpw_dial(fd, 0, 1, other, sizeof other, 0, NULL, NULL), 0, "no challenge came");
  uint8_t ack[DPW_ACK];
  cr_assert_eq(dpw_read(fd, ack, sizeof ack, 5000), 0, "a proof made with the wrong token was acknowledged");
  close(fd);
  bt_tx_stats_t st;
  bt_tx_stats(acc, &st);
  cr_assert_eq(st.refused, 2, "refused %llu (the stranger worker and the raw dialer)", (unsigned long long)st.refused);
  /* The job is undisturbed: its own rank 0 connects and exchanges. */
  bt_tx_t *tx0 = mk(0);
  const char *ok[2] = {bt_tx_socket_address(tx0), addr};
  cr_assert_eq(bt_tx_socket_connect(tx0, ok, bt_deadline_ms(10000)), 0);
  cr_assert_eq(bt_tx_socket_connect(acc, ok, bt_deadline_ms(10000)), 0);
  exchange(tx0, acc);
  bt_tx_destroy(tx0);
  bt_tx_destroy(acc);
}

Test(transport_auth, a_wrong_token_is_refused_on_both_sides) { wrong_token_refused_on_both_sides(); }

Test(transport_auth, local_a_wrong_token_is_refused_on_both_sides) {
  g_local = 1;
  wrong_token_refused_on_both_sides();
}

static void challenge_without_token(void) {
  bt_tx_t *acc = mk(1);
  const char *addr = bt_tx_socket_address(acc);
  /* A stranger that knows the wire format but not the token: it sends a
   * hello and reads all the acceptor ever says to it. */
  int fd = dpw_connect(addr);
  cr_assert_geq(fd, 0);
  uint8_t nd[DPW_NONCE], hello[DPW_HELLO], got[512];
  memset(nd, 0x42, sizeof nd);
  dpw_hello(hello, 0, 1, nd);
  cr_assert_eq(dpw_send(fd, hello, sizeof hello), 0);
  size_t n = drain(fd, got, sizeof got, 10000); /* closed at the handshake deadline */
  close(fd);
  cr_assert_eq(n, (size_t)DPW_CHAL, "the acceptor sent %zu bytes, not one challenge", n);
  cr_assert_eq(dpw_get32(got), DPW_MAGIC_CHAL);
  cr_assert_not(dpw_contains_window(got, n, token, sizeof token, 4), "the challenge carries token bytes");
  /* It is a proof all the same: the token and both nonces make it. */
  uint8_t want[DPW_MAC];
  dpw_proof(token, sizeof token, "baton-dp-accept", 0, 1, nd, got + 4, want);
  cr_assert_arr_eq(got + 4 + DPW_NONCE, want, DPW_MAC, "the acceptor's proof is not the documented HMAC");
  /* The same hello again: a fresh acceptor nonce, so a fresh proof. */
  fd = dpw_connect(addr);
  cr_assert_geq(fd, 0);
  cr_assert_eq(dpw_send(fd, hello, sizeof hello), 0);
  uint8_t again[DPW_CHAL];
  cr_assert_eq(dpw_read(fd, again, sizeof again, 5000), (long)sizeof again);
  close(fd);
  cr_assert(memcmp(again + 4, got + 4, DPW_NONCE) != 0, "the acceptor drew the same nonce twice");
  cr_assert(memcmp(again + 4 + DPW_NONCE, got + 4 + DPW_NONCE, DPW_MAC) != 0, "the same proof twice");
  /* And a client that says nothing hears nothing. */
  fd = dpw_connect(addr);
  cr_assert_geq(fd, 0);
  cr_assert_eq(drain(fd, got, sizeof got, 10000), 0, "a silent client was sent something");
  close(fd);
  bt_tx_destroy(acc);
}

Test(transport_auth, a_client_reading_the_challenge_never_sees_the_token) { challenge_without_token(); }

Test(transport_auth, local_a_client_reading_the_challenge_never_sees_the_token) {
  g_local = 1;
  challenge_without_token();
}

/* Copies what `from` sends, one read at a time, to `to`, appending it to
 * rec; stops after `want` bytes. */
static void relay(int from, int to, uint8_t *rec, size_t *reclen, size_t want) {
  size_t moved = 0;
  while (moved < want) {
    long n = dpw_read(from, rec + *reclen, 1, 5000);
    cr_assert_eq(n, 1, "the relay got %zu of %zu bytes", moved, want);
    cr_assert_eq(dpw_send(to, rec + *reclen, 1), 0);
    (*reclen)++;
    moved++;
  }
}

/* The real rank 0 dials a relay that records everything both ways on its
 * way to the real rank 1: the handshake succeeds through it, and no token
 * bytes pass. The recorded hello and response are then replayed to a new
 * acceptor, which draws a new nonce: refused. */
Test(transport_auth, the_wire_carries_no_token_and_a_recorded_proof_is_refused) {
  bt_tx_t *acc = mk(1), *tx0 = mk(0);
  char raddr[64];
  int lfd = plain_listener(raddr, sizeof raddr);
  dialer_t d;
  dial_start(&d, tx0, raddr, 10000);
  int dfd = accept_within(lfd, 5000);
  int afd = dpw_connect(bt_tx_socket_address(acc));
  cr_assert_geq(afd, 0);
  uint8_t up[256], down[256];
  size_t nup = 0, ndown = 0;
  relay(dfd, afd, up, &nup, DPW_HELLO);
  relay(afd, dfd, down, &ndown, DPW_CHAL);
  relay(dfd, afd, up, &nup, DPW_RESP);
  relay(afd, dfd, down, &ndown, DPW_ACK);
  pthread_join(d.th, NULL);
  cr_assert_eq(d.rc, 0, "the dialer through the relay: %s", bt_strerror(d.rc));
  cr_assert_eq(dpw_get32(up), DPW_MAGIC_HELLO);
  cr_assert_eq(dpw_get32(up + DPW_HELLO), DPW_MAGIC_RESP);
  cr_assert_eq(dpw_get32(down + DPW_CHAL), DPW_MAGIC_ACK);
  cr_assert_not(dpw_contains_window(up, nup, token, sizeof token, 4), "the dialer sent token bytes");
  cr_assert_not(dpw_contains_window(down, ndown, token, sizeof token, 4), "the acceptor sent token bytes");
  close(dfd);
  close(afd);
  close(lfd);
  bt_tx_destroy(tx0);
  bt_tx_destroy(acc);

  /* Replay against a new acceptor (same job, same token). */
  bt_tx_t *acc2 = mk(1);
  int fd = dpw_connect(bt_tx_socket_address(acc2));
  cr_assert_geq(fd, 0);
  cr_assert_eq(dpw_send(fd, up, DPW_HELLO), 0);
  uint8_t ch[DPW_CHAL];
  cr_assert_eq(dpw_read(fd, ch, sizeof ch, 5000), (long)sizeof ch);
  cr_assert(memcmp(ch + 4, down + 4, DPW_NONCE) != 0, "the new acceptor drew the recorded nonce");
  cr_assert_eq(dpw_send(fd, up + DPW_HELLO, DPW_RESP), 0);
  uint8_t ack[DPW_ACK];
  cr_assert_eq(dpw_read(fd, ack, sizeof ack, 5000), 0, "a replayed proof was acknowledged");
  close(fd);
  bt_tx_stats_t st;
  bt_tx_stats(acc2, &st);
  cr_assert_eq(st.refused, 1);
  /* Still open to the real peer. */
  bt_tx_t *tx0b = mk(0);
  const char *addrs[2] = {bt_tx_socket_address(tx0b), bt_tx_socket_address(acc2)};
  cr_assert_eq(bt_tx_socket_connect(tx0b, addrs, bt_deadline_ms(10000)), 0);
  cr_assert_eq(bt_tx_socket_connect(acc2, addrs, bt_deadline_ms(10000)), 0);
  exchange(tx0b, acc2);
  bt_tx_destroy(tx0b);
  bt_tx_destroy(acc2);
}

/* A listener at the peer's address that does not hold the token: the
 * dialer sends its hello, finds the proof wrong, and closes without
 * sending another byte; its connect fails at once with BT_ETRANSPORT. */
static void fake_acceptor(int garbage) {
  bt_tx_t *tx0 = mk(0);
  char faddr[64];
  int lfd = plain_listener(faddr, sizeof faddr);
  dialer_t d;
  dial_start(&d, tx0, faddr, 20000);
  int fd = accept_within(lfd, 5000);
  uint8_t hello[DPW_HELLO];
  cr_assert_eq(dpw_read(fd, hello, sizeof hello, 5000), (long)sizeof hello);
  cr_assert_eq(dpw_get32(hello), DPW_MAGIC_HELLO);
  cr_assert_eq(hello[4] | hello[5] << 8, DPW_VERSION);
  cr_assert_eq(dpw_get32(hello + 8), 0);
  cr_assert_eq(dpw_get32(hello + 12), 1);
  cr_assert_not(dpw_contains_window(hello, sizeof hello, token, sizeof token, 4), "the hello carries token bytes");
  uint8_t ch[DPW_CHAL];
  if (garbage) {
    memset(ch, 'x', sizeof ch);
    memcpy(ch, "HTTP/1.0 400 Bad Request\r\n\r\n", 28);
  } else {
    /* The right form, a proof made with another key. */
    dpw_put32(ch, DPW_MAGIC_CHAL);
    memset(ch + 4, 0x17, DPW_NONCE);
    dpw_proof(other, sizeof other, "baton-dp-accept", 0, 1, hello + 16, ch + 4, ch + 4 + DPW_NONCE);
  }
  cr_assert_eq(dpw_send(fd, ch, sizeof ch), 0);
  uint8_t after[256];
  size_t n = drain(fd, after, sizeof after, 10000);
  pthread_join(d.th, NULL);
  cr_assert_eq(n, 0, "the dialer sent %zu bytes to a listener that did not prove the token", n);
  cr_assert_eq(d.rc, BT_ETRANSPORT, "connect: %s", bt_strerror(d.rc));
  cr_assert_lt(d.took_s, 5.0, "the dialer gave up after %.1f s, at its deadline", d.took_s);
  /* It did not come back for another try either. */
  struct pollfd p = {.fd = lfd, .events = POLLIN};
  cr_assert_eq(poll(&p, 1, 300), 0, "the dialer dialed the fake listener again");
  close(fd);
  close(lfd);
  bt_tx_destroy(tx0);
}

Test(transport_auth, a_fake_acceptor_without_the_token_gets_nothing_but_the_hello) { fake_acceptor(0); }

Test(transport_auth, a_listener_answering_garbage_gets_nothing_but_the_hello) { fake_acceptor(1); }

/* The per-direction labels: the acceptor's proof for a pair of nonces is
 * not a dialer's proof for the same pair (reflection), nor for the pair
 * swapped; and a proof is bound to its ranks. */
Test(transport_auth, a_reflected_proof_is_refused) {
  bt_tx_t *acc = mk(1);
  const char *addr = bt_tx_socket_address(acc);
  int fd = dpw_connect(addr);
  cr_assert_geq(fd, 0);
  uint8_t nd[DPW_NONCE], hello[DPW_HELLO], ch[DPW_CHAL], resp[DPW_RESP];
  memset(nd, 0x99, sizeof nd);
  dpw_hello(hello, 0, 1, nd);
  cr_assert_eq(dpw_send(fd, hello, sizeof hello), 0);
  cr_assert_eq(dpw_read(fd, ch, sizeof ch, 5000), (long)sizeof ch);
  /* Send the acceptor's own proof back as ours. */
  dpw_put32(resp, DPW_MAGIC_RESP);
  memcpy(resp + 4, ch + 4 + DPW_NONCE, DPW_MAC);
  cr_assert_eq(dpw_send(fd, resp, sizeof resp), 0);
  uint8_t ack[DPW_ACK];
  cr_assert_eq(dpw_read(fd, ack, sizeof ack, 5000), 0, "the acceptor's own proof, reflected, was acknowledged");
  close(fd);
  bt_tx_stats_t st;
  bt_tx_stats(acc, &st);
  cr_assert_eq(st.refused, 1);
  bt_tx_destroy(acc);
}
