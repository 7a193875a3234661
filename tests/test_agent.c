/* test_agent.c - the node agent (launcher/agent.c) against a fake
 * coordinator written here: a listening socket on 127.0.0.1 speaking the
 * BT_NODE_* protocol with blocking I/O and poll deadlines. bt_agent_run
 * runs in a forked child (its own process group, output to files) so a
 * test sees its exit code; the workers it spawns are
 * tests/helpers/agent_worker. The test process is a child subreaper, so a
 * worker the agent left behind would show up as our child.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/clock.h"
#include "common/exitcodes.h"
#include "common/frame.h"
#include "launcher/agent.h"
#include "support/proc.h"

#define JOB "job-42"
#define NODE 1u
#define KEY "correct horse battery staple, 2026"

static double g_handshake_s = 5; /* the agent's handshake_s */

typedef struct {
  int lfd, fd, port;
  uint8_t *buf;        /* bytes from the agent not yet parsed */
  size_t len, cap;
  uint8_t *seen;       /* every byte the agent ever sent */
  size_t nseen, seencap;
  uint8_t data[BT_FRAME_MAX_PAYLOAD]; /* the last message's data */
  pid_t agent;
  char dir[64], out[96], err[96];
} coord_t;

static bt_secret_t secret_of(const char *key) {
  bt_secret_t s;
  memset(&s, 0, sizeof s);
  s.len = strlen(key);
  memcpy(s.key, key, s.len);
  snprintf(s.source, sizeof s.source, "test");
  return s;
}

static void coord_listen(coord_t *c) {
  c->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  cr_assert_geq(c->lfd, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(bind(c->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
  cr_assert_eq(listen(c->lfd, 4), 0);
  socklen_t sl = sizeof sa;
  getsockname(c->lfd, (struct sockaddr *)&sa, &sl);
  c->port = ntohs(sa.sin_port);
}

static coord_t *coord_new(void) {
  bt_proc_init();
  coord_t *c = calloc(1, sizeof *c);
  cr_assert(c);
  c->fd = -1;
  c->cap = 2 * BT_FRAME_MAX_PAYLOAD;
  c->buf = malloc(c->cap);
  c->seencap = 1 << 22;
  c->seen = malloc(c->seencap);
  cr_assert(c->buf && c->seen);
  snprintf(c->dir, sizeof c->dir, "/tmp/bt_agent_XXXXXX");
  cr_assert(mkdtemp(c->dir));
  snprintf(c->out, sizeof c->out, "%s/out", c->dir);
  snprintf(c->err, sizeof c->err, "%s/err", c->dir);
  coord_listen(c);
  return c;
}

static void coord_free(coord_t *c) {
  if (c->fd >= 0) close(c->fd);
  if (c->lfd >= 0) close(c->lfd);
  bt_proc_cleanup();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", c->dir);
  if (system(cmd)) {
  }
  free(c->buf);
  free(c->seen);
  free(c);
}

/* Starts the agent in a child of its own process group. */
static void start_agent(coord_t *c, const bt_secret_t *s, const char *ckpt_dir, double join_s) {
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    setpgid(0, 0);
    /* the agent's own environment: passed on, but never the secret */
    setenv("AGENT_INHERITED", "from the agent", 1);
    setenv("BATON_SECRET", KEY, 1);
    setenv("AGENT_TEST_VAR", "overridden by SPAWN", 1);
    int o = open(c->out, O_WRONLY | O_CREAT | O_TRUNC, 0600), e = open(c->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (o < 0 || e < 0) _exit(120);
    dup2(o, 1);
    dup2(e, 2);
    close(c->lfd);
    char exe[512];
    snprintf(exe, sizeof exe, "%s/agent_worker", getenv("BATON_HELPERS_DIR"));
    bt_agent_opts_t opt = {.rdzv_host = "127.0.0.1", .rdzv_port = c->port, .node_rank = NODE, .job_id = JOB,
                           .secret = s, .slots = 2, .ckpt_dir = ckpt_dir, .join_timeout_s = join_s,
                           .handshake_s = g_handshake_s, .worker_exe = exe};
    _exit(bt_agent_run(&opt));
  }
  setpgid(pid, pid);
  bt_proc_track(pid);
  c->agent = pid;
}

static void coord_accept(coord_t *c) {
  struct pollfd p = {.fd = c->lfd, .events = POLLIN};
  cr_assert_eq(poll(&p, 1, 10000), 1, "the agent did not connect within 10 s");
  c->fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
  cr_assert_geq(c->fd, 0);
}

static void coord_send(coord_t *c, uint16_t type, const bt_node_msg_t *m) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, m);
  cr_assert_eq(b.err, 0);
  cr_assert_eq(send(c->fd, b.data, b.len, MSG_NOSIGNAL), (ssize_t)b.len);
  bt_buf_free(&b);
}

/* The next message from the agent within ms, BEATs skipped unless
 * want_beats; m->data is copied into c->data. Returns its type, or 0 on
 * EOF, -1 on timeout. */
static int coord_recv_any(coord_t *c, int ms, bt_node_msg_t *m, int want_beats) {
  int64_t deadline = (int64_t)(bt_clock_s() * 1000) + ms;
  for (;;) {
    bt_frame_t f;
    long n = bt_frame_parse(c->buf, c->len, &f);
    cr_assert_geq(n, 0, "the agent sent a malformed frame");
    if (n > 0) {
      cr_assert_eq(bt_node_decode(&f, m), 0, "undecodable %s", bt_msg_type_name(f.type));
      if (m->dlen) memcpy(c->data, m->data, m->dlen);
      m->data = c->data;
      memmove(c->buf, c->buf + n, c->len - (size_t)n);
      c->len -= (size_t)n;
      if (f.type == BT_NODE_BEAT && !want_beats) continue;
      return f.type;
    }
    int64_t left = deadline - (int64_t)(bt_clock_s() * 1000);
    if (left <= 0) return -1;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, (int)left) <= 0) continue;
    ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (k <= 0) return 0;
    if (c->nseen + (size_t)k <= c->seencap) memcpy(c->seen + c->nseen, c->buf + c->len, (size_t)k);
    c->nseen += (size_t)k;
    c->len += (size_t)k;
  }
}

static int coord_recv(coord_t *c, int ms, bt_node_msg_t *m) { return coord_recv_any(c, ms, m, 0); }

static void expect(coord_t *c, uint16_t type, bt_node_msg_t *m) {
  int got = coord_recv(c, 10000, m);
  cr_assert_eq(got, type, "expected %s from the agent, got %s (%d)", bt_msg_type_name(type),
               got > 0 ? bt_msg_type_name((uint16_t)got) : "nothing", got);
}

/* The coordinator's half of the handshake, holding `cs` (the right secret
 * or not); returns after WELCOME (and JOIN in *join when the agent got
 * that far). */
static void coord_handshake(coord_t *c, const bt_secret_t *cs, const char *probe, int64_t beat_ms,
                            int64_t timeout_ms, bt_node_msg_t *join) {
  coord_accept(c);
  bt_node_msg_t m;
  expect(c, BT_NODE_HELLO, &m);
  cr_assert_eq(m.node, NODE);
  cr_assert_str_eq(m.text, JOB);
  uint8_t cn[BT_NONCE_LEN], sn[BT_NONCE_LEN];
  memcpy(cn, m.nonce, sizeof cn);
  cr_assert_eq(bt_random_bytes(sn, sizeof sn), 0);
  char ctx[64];
  snprintf(ctx, sizeof ctx, "%s %u", JOB, NODE);
  memset(&m, 0, sizeof m);
  memcpy(m.nonce, sn, sizeof sn);
  bt_auth_proof(cs, "baton-coord", ctx, cn, sn, m.proof);
  coord_send(c, BT_NODE_CHALLENGE, &m);
  if (!join) return;
  expect(c, BT_NODE_AUTH, &m);
  uint8_t want[BT_SHA256_LEN];
  bt_auth_proof(cs, "baton-node", ctx, sn, cn, want);
  cr_assert(bt_ct_equal(want, m.proof, sizeof want), "the agent's proof is wrong");
  memset(&m, 0, sizeof m);
  m.num[0] = beat_ms;
  m.num[1] = timeout_ms;
  snprintf(m.text, sizeof m.text, "%s", probe);
  coord_send(c, BT_NODE_WELCOME, &m);
  expect(c, BT_NODE_JOIN, join);
}

static int agent_exit(coord_t *c, int ms) {
  int st = 0;
  cr_assert_eq(bt_proc_wait(c->agent, ms, &st), 0, "the agent did not exit within %d ms", ms);
  cr_assert(WIFEXITED(st), "the agent died of signal %d", WTERMSIG(st));
  return WEXITSTATUS(st);
}

static void assert_err_has(coord_t *c, const char *needle) {
  char *s = bt_proc_slurp(c->err);
  cr_assert(s && strstr(s, needle), "agent stderr lacks '%s':\n%s", needle, s ? s : "(none)");
  free(s);
}

/* No worker or grandchild of the agent runs any more (the subreaper makes
 * every orphan our child). */
static void assert_nothing_left(void) {
  pid_t left[8];
  int n = 0;
  for (int i = 0; i < 50 && (n = bt_proc_running_children(left, 8)) > 0; i++) bt_sleep_ms(20);
  cr_assert_eq(n, 0, "%d process(es) left behind (first pid %d)", n, n ? left[0] : 0);
}

/* SPAWN agent_worker with args (one string, space-free words). */
static void spawn(coord_t *c, uint32_t inc, uint32_t stage, const char *const *args, size_t nargs,
                  const char *const *envs, size_t nenv, const char *label) {
  uint8_t data[4096];
  size_t len = 0;
  for (size_t i = 0; i < nargs; i++) {
    size_t n = strlen(args[i]) + 1;
    memcpy(data + len, args[i], n);
    len += n;
  }
  for (size_t i = 0; i < nenv; i++) {
    size_t n = strlen(envs[i]) + 1;
    memcpy(data + len, envs[i], n);
    len += n;
  }
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.inc = inc;
  m.stage = stage;
  m.num[0] = (int64_t)nargs;
  m.num[1] = (int64_t)nenv;
  snprintf(m.text2, sizeof m.text2, "%s", label);
  m.data = data;
  m.dlen = (uint32_t)len;
  coord_send(c, BT_NODE_SPAWN, &m);
}

static void bye(coord_t *c, int code, const char *text) {
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.num[0] = code;
  snprintf(m.text, sizeof m.text, "%s", text);
  coord_send(c, BT_NODE_BYE, &m);
}

Test(agent, wrong_secret_on_the_coordinator_is_refused_and_the_secret_never_sent) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY), wrong = secret_of("not the secret of this job, no");
  start_agent(c, &s, NULL, 10);
  coord_handshake(c, &wrong, "", 0, 0, NULL);
  cr_assert_eq(agent_exit(c, 10000), BT_EXIT_RENDEZVOUS);
  /* nothing after HELLO: no AUTH for a coordinator that failed its proof */
  bt_node_msg_t m;
  cr_assert_eq(coord_recv(c, 2000, &m), 0);
  cr_assert_gt(c->nseen, 0);
  cr_assert_null(memmem(c->seen, c->nseen, KEY, strlen(KEY)), "the secret crossed the wire");
  assert_err_has(c, "does not hold this job's secret");
  coord_free(c);
}

Test(agent, spawn_relays_control_bytes_both_ways_and_reports_the_exit) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  const char *args[] = {"ignored-argv0", "echo", "3"};
  const char *envs[] = {"AGENT_TEST_VAR=hello", "BATON_SUPERVISOR_PID=1", "BATON_STAGE=1",
                        "BATON_JOB_TOKEN=not-this-one"};
  const char *label = "data-plane job-42 00ff";
  spawn(c, 7, 1, args, 3, envs, 4, label);
  expect(c, BT_NODE_SPAWNED, &m);
  cr_assert_eq(m.node, NODE);
  cr_assert_eq(m.inc, 7);
  cr_assert_eq(m.stage, 1);
  pid_t wpid = (pid_t)m.num[0];
  cr_assert_gt(wpid, 0);
  bt_proc_track(wpid);
  /* the HELLO frame the worker wrote to its fd 3, byte for byte */
  bt_buf_t hello;
  bt_buf_init(&hello);
  bt_msg_hello_t h = {.stage = 1, .incarnation = 0, .pid = wpid};
  bt_msg_encode_hello(&hello, &h);
  uint8_t got[4096];
  size_t n = 0;
  while (n < hello.len) {
    expect(c, BT_NODE_CTL, &m);
    cr_assert_eq(m.inc, 7);
    cr_assert_eq(m.stage, 1);
    cr_assert_leq(n + m.dlen, sizeof got);
    memcpy(got + n, m.data, m.dlen);
    n += m.dlen;
  }
  cr_assert_eq(n, hello.len);
  cr_assert_eq(memcmp(got, hello.data, n), 0, "the control bytes were changed on the way");
  bt_buf_free(&hello);
  /* coordinator -> worker: echoed back */
  const char ping[] = "ping from the coordinator";
  memset(&m, 0, sizeof m);
  m.inc = 7;
  m.stage = 1;
  m.data = (const uint8_t *)ping;
  m.dlen = sizeof ping;
  coord_send(c, BT_NODE_CTL, &m);
  n = 0;
  while (n < sizeof ping) {
    expect(c, BT_NODE_CTL, &m);
    memcpy(got + n, m.data, m.dlen);
    n += m.dlen;
  }
  cr_assert_eq(memcmp(got, ping, sizeof ping), 0);
  expect(c, BT_NODE_EXITED, &m);
  cr_assert_eq(m.inc, 7);
  cr_assert_eq(m.stage, 1);
  cr_assert_eq(m.num[0], 3, "exit status %lld", (long long)m.num[0]);
  cr_assert_eq(m.num[1], 0);
  cr_assert_eq(m.num[2], 0);
  /* the stderr tail, oldest first, with the environment the agent built */
  char want[512];
  char tok[2 * BT_SHA256_LEN + 1];
  bt_auth_derive_hex(&s, label, tok);
  uint8_t d[BT_SHA256_LEN];
  bt_sha256(tok, strlen(tok), d);
  char hex[2 * BT_SHA256_LEN + 1];
  for (int i = 0; i < BT_SHA256_LEN; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
  snprintf(want, sizeof want, "sup=%ld\ntoken-sha=%s\ngiven=hello\nsecret=(unset)\ninherited=from the agent\nlast line",
           (long)c->agent, hex);
  cr_assert_str_eq(m.text, want);
  bye(c, 0, "");
  cr_assert_eq(agent_exit(c, 10000), 0);
  char *out = bt_proc_slurp(c->out);
  cr_assert(out && strstr(out, "[stage 1] hello out\n"), "stdout: %s", out ? out : "(none)");
  free(out);
  assert_err_has(c, "[stage 1] last line\n");
  cr_assert_null(memmem(c->seen, c->nseen, KEY, strlen(KEY)), "the secret crossed the wire");
  cr_assert_null(memmem(c->seen, c->nseen, tok, strlen(tok)), "the data-plane token crossed the wire");
  assert_nothing_left();
  coord_free(c);
}

Test(agent, kill_reports_signal_9_and_bye_leaves_nothing_behind) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  const char *args[] = {"x", "hang"};
  spawn(c, 1, 0, args, 2, NULL, 0, "");
  spawn(c, 1, 1, args, 2, NULL, 0, "");
  pid_t pids[2] = {0, 0};
  for (int i = 0; i < 2; i++) {
    expect(c, BT_NODE_SPAWNED, &m);
    cr_assert_lt(m.stage, 2);
    pids[m.stage] = (pid_t)m.num[0];
    bt_proc_track(pids[m.stage]);
  }
  /* each writes its grandchild's pid: "gpid=N" */
  pid_t g[2] = {0, 0};
  while (!g[0] || !g[1]) {
    expect(c, BT_NODE_CTL, &m);
    char t[64] = "";
    memcpy(t, m.data, m.dlen < 63 ? m.dlen : 63);
    cr_assert_eq(strncmp(t, "gpid=", 5), 0, "%s", t);
    g[m.stage] = (pid_t)atol(t + 5);
  }
  memset(&m, 0, sizeof m);
  m.inc = 1;
  m.stage = 0;
  coord_send(c, BT_NODE_KILL, &m);
  expect(c, BT_NODE_EXITED, &m);
  cr_assert_eq(m.stage, 0);
  cr_assert_eq(m.num[1], SIGKILL, "signal %lld", (long long)m.num[1]);
  cr_assert(bt_proc_wait_gone(g[0], 5000), "stage 0's grandchild survived its group");
  /* stage 1 still runs; BYE takes it down */
  cr_assert_not(bt_proc_gone(pids[1]));
  bye(c, 0, "the job is done");
  cr_assert_eq(agent_exit(c, 10000), 0);
  assert_err_has(c, "the job is done");
  for (int i = 0; i < 2; i++) {
    cr_assert(bt_proc_gone(pids[i]), "worker %d survived", i);
    cr_assert(bt_proc_wait_gone(g[i], 5000), "grandchild %d survived", i);
  }
  assert_nothing_left();
  coord_free(c);
}

Test(agent, a_silent_coordinator_is_lost_after_the_node_timeout) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 50, 600, &join);
  const char *args[] = {"x", "hang"};
  spawn(c, 0, 0, args, 2, NULL, 0, "");
  expect(c, BT_NODE_SPAWNED, &m);
  pid_t w = (pid_t)m.num[0];
  bt_proc_track(w);
  /* the agent keeps beating while we say nothing */
  int beats = 0;
  double t0 = bt_clock_s();
  int type;
  while ((type = coord_recv_any(c, 5000, &m, 1)) > 0)
    if (type == BT_NODE_BEAT) beats++;
  double took = bt_clock_s() - t0;
  cr_assert_eq(agent_exit(c, 10000), BT_EXIT_COORD_LOST);
  cr_assert_geq(beats, 3, "only %d beats", beats);
  cr_assert(took > 0.3 && took < 5, "lost after %.2f s with a 0.6 s timeout", took);
  cr_log_info("silent coordinator: the agent exited %.3f s after SPAWNED (node timeout 0.6 s)", took);
  assert_err_has(c, "lost the coordinator at 127.0.0.1:");
  assert_err_has(c, "no message for 600 ms");
  cr_assert(bt_proc_gone(w));
  assert_nothing_left();
  coord_free(c);
}

Test(agent, a_closed_or_garbled_connection_is_a_lost_coordinator) {
  for (int garble = 0; garble < 2; garble++) {
    coord_t *c = coord_new();
    bt_secret_t s = secret_of(KEY);
    start_agent(c, &s, NULL, 10);
    bt_node_msg_t m, join;
    coord_handshake(c, &s, "", 100, 10000, &join);
    const char *args[] = {"x", "hang"};
    spawn(c, 0, 0, args, 2, NULL, 0, "");
    expect(c, BT_NODE_SPAWNED, &m);
    pid_t w = (pid_t)m.num[0];
    bt_proc_track(w);
    if (garble) {
      const char junk[] = "GET / HTTP/1.0\r\n\r\n";
      cr_assert_eq(send(c->fd, junk, sizeof junk, MSG_NOSIGNAL), (ssize_t)sizeof junk);
    } else {
      close(c->fd);
      c->fd = -1;
    }
    cr_assert_eq(agent_exit(c, 10000), BT_EXIT_COORD_LOST);
    assert_err_has(c, garble ? "a malformed frame" : "connection closed");
    assert_err_has(c, "rerun the same command on every node to resume");
    cr_assert(bt_proc_gone(w));
    assert_nothing_left();
    coord_free(c);
  }
}

Test(agent, no_coordinator_exits_82_after_the_join_timeout) {
  coord_t *c = coord_new();
  close(c->lfd); /* the port is now closed: connection refused */
  c->lfd = -1;
  bt_secret_t s = secret_of(KEY);
  double t0 = bt_clock_s();
  start_agent(c, &s, NULL, 1.5);
  cr_assert_eq(agent_exit(c, 15000), BT_EXIT_RENDEZVOUS);
  double took = bt_clock_s() - t0;
  cr_assert(took >= 1.45 && took < 8, "gave up after %.2f s with a 1.5 s join timeout", took);
  assert_err_has(c, "could not reach the coordinator at 127.0.0.1:");
  assert_err_has(c, "within 1.5 s: Connection refused");
  coord_free(c);
}

Test(agent, a_coordinator_that_starts_late_is_joined) {
  coord_t *c = coord_new();
  int port = c->port;
  close(c->lfd);
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 20);
  bt_sleep_ms(1200); /* a few refused attempts */
  c->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(c->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(bind(c->lfd, (struct sockaddr *)&sa, sizeof sa), 0, "port %d taken meanwhile", port);
  cr_assert_eq(listen(c->lfd, 4), 0);
  bt_node_msg_t join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  bye(c, 0, "");
  cr_assert_eq(agent_exit(c, 10000), 0);
  coord_free(c);
}

Test(agent, join_carries_the_probe_slots_pid_address_and_hostname) {
  coord_t *c = coord_new();
  char ck[128], probe[160];
  snprintf(ck, sizeof ck, "%s/ckpt", c->dir);
  cr_assert_eq(mkdir(ck, 0700), 0);
  snprintf(probe, sizeof probe, "%s/.baton-probe-abc", ck);
  FILE *f = fopen(probe, "w");
  cr_assert(f);
  fputs("probe 9f86d081", f);
  fclose(f);
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, ck, 10);
  bt_node_msg_t join;
  coord_handshake(c, &s, ".baton-probe-abc", 100, 10000, &join);
  cr_assert_str_eq(join.text2, "probe 9f86d081");
  cr_assert_eq(join.num[0], 2);
  cr_assert_eq(join.num[1], c->agent);
  cr_assert_str_eq(join.text, "127.0.0.1");
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  cr_assert_eq(join.dlen, strlen(host));
  cr_assert_eq(memcmp(join.data, host, join.dlen), 0);
  /* the coordinator refuses after JOIN (say, a probe mismatch) */
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  snprintf(m.text, sizeof m.text, "node 1 cannot read the checkpoint directory");
  coord_send(c, BT_NODE_REFUSE, &m);
  cr_assert_eq(agent_exit(c, 10000), BT_EXIT_RENDEZVOUS);
  assert_err_has(c, "refused this node: node 1 cannot read the checkpoint directory");
  coord_free(c);
}

Test(agent, a_probe_name_outside_the_checkpoint_dir_is_refused) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, "/tmp", 10);
  coord_accept(c);
  bt_node_msg_t m;
  expect(c, BT_NODE_HELLO, &m);
  uint8_t cn[BT_NONCE_LEN], sn[BT_NONCE_LEN] = {1, 2, 3};
  memcpy(cn, m.nonce, sizeof cn);
  memset(&m, 0, sizeof m);
  memcpy(m.nonce, sn, sizeof sn);
  bt_auth_proof(&s, "baton-coord", JOB " 1", cn, sn, m.proof);
  coord_send(c, BT_NODE_CHALLENGE, &m);
  expect(c, BT_NODE_AUTH, &m);
  memset(&m, 0, sizeof m);
  m.num[0] = 100;
  m.num[1] = 1000;
  snprintf(m.text, sizeof m.text, "../etc/passwd");
  coord_send(c, BT_NODE_WELCOME, &m);
  cr_assert_eq(agent_exit(c, 10000), BT_EXIT_RENDEZVOUS);
  cr_assert_eq(coord_recv(c, 1000, &m), 0, "the agent sent a JOIN anyway");
  assert_err_has(c, "outside the checkpoint directory");
  coord_free(c);
}

Test(agent, a_malformed_spawn_is_reported_not_started) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  /* argc says 3, the data holds 2 strings */
  const char *args[] = {"x", "hang"};
  memset(&m, 0, sizeof m);
  uint8_t data[] = "x\0hang";
  m.inc = 2;
  m.stage = 5;
  m.num[0] = 3;
  m.data = data;
  m.dlen = sizeof data;
  coord_send(c, BT_NODE_SPAWN, &m);
  expect(c, BT_NODE_EXITED, &m);
  cr_assert_eq(m.stage, 5);
  cr_assert_eq(m.num[2], 1);
  cr_assert(strstr(m.text, "malformed SPAWN"), "%s", m.text);
  /* an environment entry without '=' */
  const char *envs[] = {"NOEQUALS"};
  spawn(c, 2, 6, args, 2, envs, 1, "");
  expect(c, BT_NODE_EXITED, &m);
  cr_assert_eq(m.stage, 6);
  cr_assert_eq(m.num[2], 1);
  /* the agent goes on: a well-formed SPAWN after them starts */
  spawn(c, 2, 7, args, 2, NULL, 0, "");
  expect(c, BT_NODE_SPAWNED, &m);
  cr_assert_eq(m.stage, 7);
  bt_proc_track((pid_t)m.num[0]);
  bye(c, 0, "");
  cr_assert_eq(agent_exit(c, 10000), 0);
  assert_nothing_left();
  coord_free(c);
}

Test(agent, the_first_sigterm_is_ignored_and_the_second_stops_the_node) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  const char *args[] = {"x", "hang"};
  spawn(c, 0, 0, args, 2, NULL, 0, "");
  expect(c, BT_NODE_SPAWNED, &m);
  pid_t w = (pid_t)m.num[0];
  bt_proc_track(w);
  expect(c, BT_NODE_CTL, &m); /* "gpid=N": the worker is up */
  cr_assert_eq(kill(c->agent, SIGTERM), 0);
  cr_assert(bt_proc_wait_for_text(c->err, "left to the coordinator", 5000));
  /* still beating, the worker still running */
  cr_assert_eq(coord_recv_any(c, 2000, &m, 1), BT_NODE_BEAT);
  cr_assert_not(bt_proc_gone(w));
  cr_assert_eq(kill(c->agent, SIGTERM), 0);
  cr_assert_eq(agent_exit(c, 10000), 128 + SIGTERM);
  cr_assert(bt_proc_gone(w));
  assert_nothing_left();
  coord_free(c);
}

Test(agent, a_coordinator_silent_during_the_handshake_is_given_up_after_its_deadline) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  g_handshake_s = 1;
  start_agent(c, &s, NULL, 30);
  coord_accept(c);
  bt_node_msg_t m;
  expect(c, BT_NODE_HELLO, &m);
  double t0 = bt_clock_s();
  cr_assert_eq(agent_exit(c, 10000), BT_EXIT_RENDEZVOUS);
  double took = bt_clock_s() - t0;
  cr_assert(took > 0.5 && took < 5, "gave up after %.2f s with a 1 s handshake deadline", took);
  assert_err_has(c, "could not join the coordinator at 127.0.0.1:");
  assert_err_has(c, "CHALLENGE: deadline passed");
  coord_free(c);
}

Test(agent, a_pipe_held_by_an_escaped_grandchild_delays_exited_by_the_drain_only) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  const char *args[] = {"x", "escape"};
  spawn(c, 0, 3, args, 2, NULL, 0, "");
  expect(c, BT_NODE_SPAWNED, &m);
  double t0 = bt_clock_s();
  expect(c, BT_NODE_CTL, &m);
  char t[64] = "";
  memcpy(t, m.data, m.dlen < 63 ? m.dlen : 63);
  cr_assert_eq(strncmp(t, "gpid=", 5), 0, "%s", t);
  pid_t g = (pid_t)atol(t + 5);
  bt_proc_track(g);
  expect(c, BT_NODE_EXITED, &m);
  double took = bt_clock_s() - t0;
  cr_assert_eq(m.stage, 3);
  cr_assert_eq(m.num[0], 0);
  cr_assert(took > 0.5 && took < 5, "EXITED after %.2f s (drain: 1 s)", took);
  kill(g, SIGKILL);
  bye(c, 0, "");
  cr_assert_eq(agent_exit(c, 10000), 0);
  coord_free(c);
}

Test(agent, bad_options_are_one_line_and_exit_2) {
  bt_secret_t s = secret_of(KEY), shorty = secret_of("short");
  bt_agent_opts_t good = {.rdzv_host = "127.0.0.1", .rdzv_port = 1, .node_rank = 1, .job_id = JOB,
                          .secret = &s, .slots = 1, .join_timeout_s = 0};
  bt_agent_opts_t o;
  o = good, o.node_rank = 0;
  cr_assert_eq(bt_agent_run(&o), BT_EXIT_USAGE);
  o = good, o.rdzv_port = 0;
  cr_assert_eq(bt_agent_run(&o), BT_EXIT_USAGE);
  o = good, o.secret = &shorty;
  cr_assert_eq(bt_agent_run(&o), BT_EXIT_USAGE);
  o = good, o.job_id = "";
  cr_assert_eq(bt_agent_run(&o), BT_EXIT_USAGE);
  o = good, o.slots = 0;
  cr_assert_eq(bt_agent_run(&o), BT_EXIT_USAGE);
}

/* The bytes come from a descendant 0.3 s after the worker exited (inside
 * the 1 s drain): EXITED must wait for the channel's EOF, not the exit. */
Test(agent, control_bytes_beyond_64_kib_arrive_in_order_in_chunks_before_exited) {
  coord_t *c = coord_new();
  bt_secret_t s = secret_of(KEY);
  start_agent(c, &s, NULL, 10);
  bt_node_msg_t m, join;
  coord_handshake(c, &s, "", 100, 10000, &join);
  enum { N = 300000 };
  const char *args[] = {"x", "big", "300000"};
  spawn(c, 4, 2, args, 3, NULL, 0, "");
  expect(c, BT_NODE_SPAWNED, &m);
  bt_proc_track((pid_t)m.num[0]);
  size_t got = 0;
  int chunks = 0;
  for (;;) {
    int type = coord_recv(c, 10000, &m);
    cr_assert(type == BT_NODE_CTL || type == BT_NODE_EXITED, "got %d", type);
    if (type == BT_NODE_EXITED) break;
    cr_assert_leq(m.dlen, 65536);
    for (uint32_t i = 0; i < m.dlen; i++)
      cr_assert_eq(m.data[i], (uint8_t)((got + i) * 7 % 251), "byte %zu changed", got + i);
    got += m.dlen;
    chunks++;
  }
  cr_assert_eq(got, N, "EXITED after %zu of %d control bytes", got, N);
  cr_assert_geq(chunks, 5);
  cr_assert_eq(m.num[0], 0);
  bye(c, 0, "");
  cr_assert_eq(agent_exit(c, 10000), 0);
  coord_free(c);
}
