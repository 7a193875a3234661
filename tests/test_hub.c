/* test_hub.c - the coordinator's hub (launcher/hub.h) against fake node
 * agents written here with blocking sockets: joining, the events the
 * supervisor gets (JOINED, LOST, MSG), a silent node, a node that comes
 * back as a new generation, a second join of a live rank, a node that
 * stops reading, and sends to a lost node. The real agent against a fake
 * hub is tests/test_agent.c; both together end to end are
 * tests/test_e2e_multinode.c. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/frame.h"
#include "launcher/hub.h"

static bt_secret_t secret;

static bt_hub_t *start_hub(uint32_t nnodes, int64_t timeout_ms) {
  memset(&secret, 0, sizeof secret);
  memcpy(secret.key, "0123456789abcdef0123456789abcdef", 32);
  secret.len = 32;
  bt_hub_opts_t o;
  bt_hub_opts_default(&o);
  o.bind_host = "127.0.0.1";
  o.nnodes = nnodes;
  o.secret = &secret;
  o.job_id = "hubtest";
  o.beat_ms = 100;
  o.node_timeout_ms = timeout_ms;
  o.handshake_ms = 2000;
  bt_hub_t *h = NULL;
  char why[512] = "";
  cr_assert_eq(bt_hub_start(&o, &h, why, sizeof why), 0, "%s", why);
  return h;
}

/* ---- a fake agent ---- */

typedef struct {
  int fd;
  uint8_t buf[1 << 16];
  size_t len;
} fake_t;

static void fsend(fake_t *a, uint16_t type, const bt_node_msg_t *m) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, m);
  cr_assert_eq(b.err, 0);
  cr_assert_eq(write(a->fd, b.data, b.len), (ssize_t)b.len);
  bt_buf_free(&b);
}

/* The next frame, skipping BEATs; 0, or -1 on EOF or after timeout_ms. */
static int frecv(fake_t *a, uint16_t *type, bt_node_msg_t *m, int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms;) {
    bt_frame_t f;
    long n = bt_frame_parse(a->buf, a->len, &f);
    cr_assert_geq(n, 0, "the hub sent a malformed frame");
    if (n > 0) {
      *type = f.type;
      cr_assert_eq(bt_node_decode(&f, m), 0);
      memmove(a->buf, a->buf + n, a->len - (size_t)n);
      a->len -= (size_t)n;
      if (*type == BT_NODE_BEAT) continue;
      return 0;
    }
    struct pollfd p = {.fd = a->fd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0) {
      waited += 50;
      continue;
    }
    ssize_t r = read(a->fd, a->buf + a->len, sizeof a->buf - a->len);
    if (r <= 0) return -1;
    a->len += (size_t)r;
  }
  return -1;
}

/* Connects and joins as `rank`; returns the type of the hub's last answer
 * (WELCOME followed by our JOIN, or REFUSE). */
static uint16_t join(fake_t *a, bt_hub_t *h, uint32_t rank) {
  memset(a, 0, sizeof *a);
  a->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bt_hub_port(h)),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(connect(a->fd, (struct sockaddr *)&sa, sizeof sa), 0);
  bt_node_msg_t m, r;
  uint16_t t;
  memset(&m, 0, sizeof m);
  m.node = rank;
  snprintf(m.text, sizeof m.text, "hubtest");
  bt_random_bytes(m.nonce, sizeof m.nonce);
  uint8_t mine[BT_NONCE_LEN];
  memcpy(mine, m.nonce, sizeof mine);
  fsend(a, BT_NODE_HELLO, &m);
  cr_assert_eq(frecv(a, &t, &r, 3000), 0);
  cr_assert_eq(t, BT_NODE_CHALLENGE);
  char ctx[64];
  snprintf(ctx, sizeof ctx, "hubtest %u", rank);
  uint8_t want[BT_SHA256_LEN];
  bt_auth_proof(&secret, "baton-coord", ctx, mine, r.nonce, want);
  cr_assert(bt_ct_equal(want, r.proof, sizeof want), "the hub's proof does not verify");
  memset(&m, 0, sizeof m);
  bt_auth_proof(&secret, "baton-node", ctx, r.nonce, mine, m.proof);
  fsend(a, BT_NODE_AUTH, &m);
  cr_assert_eq(frecv(a, &t, &r, 3000), 0);
  if (t != BT_NODE_WELCOME) return t;
  memset(&m, 0, sizeof m);
  m.num[0] = 2;
  snprintf(m.text, sizeof m.text, "127.0.0.1");
  fsend(a, BT_NODE_JOIN, &m);
  return t;
}

static void beat(fake_t *a) {
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  fsend(a, BT_NODE_BEAT, &m);
}

/* The next event of `kind`, skipping others, within timeout_ms. */
static int wait_event(bt_hub_t *h, bt_hub_ev_kind_t kind, bt_hub_event_t *out, int timeout_ms) {
  for (int waited = 0; waited <= timeout_ms; waited += 10) {
    bt_hub_event_t e;
    while (bt_hub_next(h, &e)) {
      if (e.kind == kind) {
        *out = e;
        return 1;
      }
      bt_hub_event_free(&e);
    }
    bt_sleep_ms(10);
  }
  return 0;
}

Test(hub, a_silent_node_is_lost_and_sends_to_it_fail) {
  bt_hub_t *h = start_hub(2, 400);
  fake_t a;
  cr_assert_eq(join(&a, h, 1), BT_NODE_WELCOME);
  char why[256];
  cr_assert_eq(bt_hub_wait_joined(h, 5, why, sizeof why), 0, "%s", why);
  bt_hub_node_t n;
  cr_assert_eq(bt_hub_node(h, 1, &n), 0);
  cr_assert(n.alive);
  cr_assert_eq(n.slots, 2);
  cr_assert_str_eq(n.data_host, "127.0.0.1");
  bt_hub_event_t e;
  cr_assert(wait_event(h, BT_HUB_EV_JOINED, &e, 2000));
  cr_assert_eq(e.node, 1);
  /* silence: lost after the node timeout, named as such */
  double t0 = bt_clock_s();
  cr_assert(wait_event(h, BT_HUB_EV_LOST, &e, 5000), "no LOST event");
  double took = bt_clock_s() - t0;
  cr_assert(strstr(e.why, "no heartbeat"), "%s", e.why);
  cr_assert(took > 0.2 && took < 2.0, "lost after %.2f s with a 0.4 s timeout", took);
  cr_assert_eq(bt_hub_node(h, 1, &n), 0);
  cr_assert(!n.alive);
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  cr_assert_eq(bt_hub_send(h, 1, BT_NODE_KILL, &m), BT_EPEER);
  close(a.fd);
  bt_hub_stop(h, 0, NULL, 1);
}

Test(hub, a_node_that_comes_back_is_a_new_generation_and_a_live_rank_cannot_join_twice) {
  bt_hub_t *h = start_hub(2, 10000);
  fake_t a, b, c;
  cr_assert_eq(join(&a, h, 1), BT_NODE_WELCOME);
  char why[256];
  cr_assert_eq(bt_hub_wait_joined(h, 5, why, sizeof why), 0, "%s", why);
  /* a second agent claiming the live rank is refused, the first undisturbed */
  cr_assert_eq(join(&b, h, 1), BT_NODE_REFUSE);
  close(b.fd);
  bt_hub_node_t n;
  cr_assert_eq(bt_hub_node(h, 1, &n), 0);
  cr_assert(n.alive);
  cr_assert_eq(n.generation, 1);
  /* the first goes away (its connection closes): lost at once */
  close(a.fd);
  bt_hub_event_t e;
  cr_assert(wait_event(h, BT_HUB_EV_LOST, &e, 3000));
  cr_assert(strstr(e.why, "connection closed"), "%s", e.why);
  /* and comes back */
  cr_assert_eq(join(&c, h, 1), BT_NODE_WELCOME);
  cr_assert(wait_event(h, BT_HUB_EV_JOINED, &e, 3000));
  cr_assert_eq(bt_hub_node(h, 1, &n), 0);
  cr_assert(n.alive);
  cr_assert_eq(n.generation, 2);
  bt_hub_stats_t st;
  bt_hub_stats(h, &st);
  cr_assert_eq(st.lost, 1);
  /* what it sends reaches the supervisor's queue */
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.stage = 3;
  m.num[0] = 4242;
  fsend(&c, BT_NODE_SPAWNED, &m);
  cr_assert(wait_event(h, BT_HUB_EV_MSG, &e, 3000));
  cr_assert_eq(e.type, BT_NODE_SPAWNED);
  cr_assert_eq(e.m.stage, 3);
  cr_assert_eq(e.m.num[0], 4242);
  /* BYE reaches it with the job's code */
  bt_hub_stop(h, 7, "done", 2);
  uint16_t t;
  cr_assert_eq(frecv(&c, &t, &m, 3000), 0);
  cr_assert_eq(t, BT_NODE_BYE);
  cr_assert_eq(m.num[0], 7);
  close(c.fd);
}

Test(hub, a_node_that_stops_reading_is_lost_not_buffered_forever) {
  bt_hub_t *h = start_hub(2, 30000);
  fake_t a;
  cr_assert_eq(join(&a, h, 1), BT_NODE_WELCOME);
  char why[256];
  cr_assert_eq(bt_hub_wait_joined(h, 5, why, sizeof why), 0, "%s", why);
  /* It beats (so the node timeout never fires) but reads nothing. */
  static uint8_t big[1 << 20];
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.data = big;
  m.dlen = sizeof big - 4096;
  bt_hub_event_t e;
  int lost = 0;
  for (int i = 0; i < 200 && !lost; i++) {
    int rc = bt_hub_send(h, 1, BT_NODE_CTL, &m);
    if (rc == BT_EPEER) lost = 1;
    else cr_assert_eq(rc, 0);
    if (i % 10 == 0) beat(&a);
    bt_sleep_ms(5);
  }
  cr_assert(wait_event(h, BT_HUB_EV_LOST, &e, 5000), "a node that reads nothing was never lost");
  cr_assert(strstr(e.why, "not reading"), "%s", e.why);
  close(a.fd);
  bt_hub_stop(h, 0, NULL, 1);
}

Test(hub, a_wrong_proof_is_refused_and_counted) {
  bt_hub_t *h = start_hub(2, 10000);
  fake_t a;
  memset(&a, 0, sizeof a);
  a.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bt_hub_port(h)),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(connect(a.fd, (struct sockaddr *)&sa, sizeof sa), 0);
  bt_node_msg_t m, r;
  uint16_t t;
  memset(&m, 0, sizeof m);
  m.node = 1;
  snprintf(m.text, sizeof m.text, "hubtest");
  fsend(&a, BT_NODE_HELLO, &m);
  cr_assert_eq(frecv(&a, &t, &r, 3000), 0);
  cr_assert_eq(t, BT_NODE_CHALLENGE);
  memset(&m, 0, sizeof m);
  memset(m.proof, 0x5a, sizeof m.proof);
  fsend(&a, BT_NODE_AUTH, &m);
  cr_assert_eq(frecv(&a, &t, &r, 3000), 0);
  cr_assert_eq(t, BT_NODE_REFUSE);
  cr_assert_eq(frecv(&a, &t, &r, 3000), -1, "the connection stayed open");
  close(a.fd);
  bt_hub_stats_t st;
  bt_hub_stats(h, &st);
  int secret_reason = -1;
  for (int i = 0; i < 8; i++)
    if (!strcmp(bt_hub_refusal_name(i), "wrong secret")) secret_reason = i;
  cr_assert_geq(secret_reason, 0);
  cr_assert_eq(st.refused[secret_reason], 1);
  bt_hub_node_t n;
  cr_assert_eq(bt_hub_node(h, 1, &n), 0);
  cr_assert(!n.alive);
  bt_hub_stop(h, 0, NULL, 1);
}
