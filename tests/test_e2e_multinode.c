/* test_e2e_multinode.c - one job over two "nodes" on this machine: two
 * `baton run` processes on loopback, rank 0 coordinating (launcher/hub.c),
 * rank 1 a node agent (launcher/agent.c), each running two stages. Every
 * hash is compared with `baton train` of the same model in the same test.
 *
 * Covered: the 2 x 2 job is bit-identical to baton train; losing node 1
 * mid-run, during a checkpoint save and during start-up re-forms on the
 * coordinator's stages and ends with the same hash; losing the coordinator
 * stops the agent (exit 81) with nothing left behind and rerunning the same
 * commands resumes bit-identically; strangers (garbage, silence, a wrong
 * secret, a flood, a wrong-secret baton) are refused without disturbing the
 * job; a node that never joins is named at the join deadline (exit 82).
 * Real network separation (namespaces, veth, netem) is test_e2e_netns.c.
 */
#include <arpa/inet.h>
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
#include <unistd.h>

#include "common/auth.h"
#include "common/clock.h"
#include "common/exitcodes.h"
#include "common/frame.h"
#include "tests/support/e2e.h"
#include "tests/support/proc.h"

#define RUN_TIMEOUT_MS 120000

static bt_e2e_dirs_t e2e;

static void setup(void) { bt_e2e_setup(&e2e, "multinode"); }
static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(multinode, .init = setup, .fini = teardown, .timeout = 300);

static const char *const model[] = {"--layers", "4", "--dim", "32", "--mb-tokens", "32", NULL};

static char *slurp_or_empty(const char *path) {
  char *s = bt_proc_slurp(path);
  return s ? s : strdup("");
}

static void read_hash(const char *path, char hex[33]) { bt_e2e_read_hash(path, hex); }

static void train_hash(int steps, char hex[33]) { bt_e2e_train_hash(&e2e, model, steps, RUN_TIMEOUT_MS, hex); }

static void assert_has(const char *path, const char *needle) {
  char *s = slurp_or_empty(path);
  size_t n = strlen(s);
  static char msg[16384];
  snprintf(msg, sizeof msg, "%s", n > 16000 ? s + n - 16000 : s);
  int ok = strstr(s, needle) != NULL;
  free(s);
  cr_assert(ok, "'%s' not in %s:\n%s", needle, path, msg);
}

static int count_of(const char *path, const char *needle) {
  char *s = slurp_or_empty(path);
  int n = 0;
  for (char *q = strstr(s, needle); q; q = strstr(q + 1, needle)) n++;
  free(s);
  return n;
}

static int count_lines(const char *path) {
  char *s = slurp_or_empty(path);
  int n = 0;
  for (char *q = s; *q; q++) n += *q == '\n';
  free(s);
  return n;
}

/* A port nobody listens on now (the kernel's pick, released). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  getsockname(fd, (struct sockaddr *)&a, &l);
  close(fd);
  return ntohs(a.sin_port);
}

static void write_secret(const char *name, const char *text) {
  const char *p = bt_e2e_path(&e2e, name);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

typedef struct {
  int port;
  int steps;
  const char *secret;   /* file name in the scratch dir */
  const char *job;
  const char *extra[8]; /* more flags, NULL-terminated */
} job_t;

static job_t job_new(int steps) {
  job_t j;
  memset(&j, 0, sizeof j);
  j.port = free_port();
  j.steps = steps;
  j.secret = "secret";
  j.job = "e2e";
  write_secret("secret", "0123456789abcdef0123456789abcdef\n");
  return j;
}

/* Starts node `rank` of the job; its stdout/stderr go to out-R/err-R. */
static pid_t start_node(const job_t *j, int rank) {
  static char steps[16], rdzv[64], rk[8];
  snprintf(steps, sizeof steps, "%d", j->steps);
  snprintf(rdzv, sizeof rdzv, "127.0.0.1:%d", j->port);
  snprintf(rk, sizeof rk, "%d", rank);
  char *argv[80];
  int k = 0;
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  argv[k++] = "run";
  for (int i = 0; model[i]; i++) argv[k++] = (char *)model[i];
  const char *common[] = {"--steps", steps, "--nnodes", "2", "--node-rank", rk, "--rdzv", rdzv, "--job-id", j->job,
                          "--secret-file", bt_e2e_path(&e2e, j->secret), "--stages-per-node", "2", "--ckpt-dir",
                          e2e.ckpt, "--ckpt-every", "2", "--node-timeout", "2", "--heartbeat-timeout", "2",
                          "--progress-timeout", "4", "--grace", "1", "--backoff", "0.05", "--no-progress", NULL};
  for (int i = 0; common[i]; i++) argv[k++] = (char *)common[i];
  if (rank == 0) {
    const char *c[] = {"--hash", "--events", e2e.events, "--metrics", bt_e2e_path(&e2e, "metrics.jsonl"), NULL};
    for (int i = 0; c[i]; i++) argv[k++] = (char *)c[i];
  }
  for (int i = 0; j->extra[i]; i++) argv[k++] = (char *)j->extra[i];
  argv[k] = NULL;
  char outn[16], errn[16];
  snprintf(outn, sizeof outn, "out-%d", rank);
  snprintf(errn, sizeof errn, "err-%d", rank);
  const char *op = bt_e2e_path(&e2e, outn), *ep = bt_e2e_path(&e2e, errn);
  unlink(op);
  unlink(ep);
  pid_t pid = bt_proc_spawn(argv, NULL, op, ep);
  cr_assert_gt(pid, 0, "spawn: %s", strerror(-pid));
  return pid;
}

static const char *err_of(int rank) { return bt_e2e_path(&e2e, rank ? "err-1" : "err-0"); }
static const char *out_of(int rank) { return bt_e2e_path(&e2e, rank ? "out-1" : "out-0"); }

/* Waits for a node's exit; returns its code (128 + signal when killed). */
static int wait_node(pid_t pid, int rank, int timeout_ms) {
  int st = 0;
  if (bt_proc_wait(pid, timeout_ms, &st) < 0) {
    char *e = slurp_or_empty(err_of(rank));
    size_t n = strlen(e);
    cr_assert_fail("node %d did not end within %d ms; its stderr:\n%s", rank, timeout_ms,
                   n > 8000 ? e + n - 8000 : e);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void assert_code(int got, int want, int rank) {
  if (got == want) return;
  char *e = slurp_or_empty(err_of(rank));
  size_t n = strlen(e);
  cr_assert_fail("node %d exited %d, want %d; its stderr:\n%s", rank, got, want, n > 12000 ? e + n - 12000 : e);
}

/* Nothing this test started runs any more (workers of both nodes included:
 * the subreaper makes orphans ours). */
static void assert_nothing_left(void) {
  pid_t left[64];
  int n = 0;
  for (int i = 0; i < 100; i++) {
    if ((n = bt_proc_running_children(left, 64)) == 0) return;
    bt_sleep_ms(100);
  }
  cr_assert_fail("%d processes left behind (first pid %d)", n, (int)left[0]);
}

static void wait_metrics_lines(int n, int timeout_ms) {
  const char *m = bt_e2e_path(&e2e, "metrics.jsonl");
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    if (count_lines(m) >= n) return;
    bt_sleep_ms(20);
  }
  cr_assert_fail("fewer than %d steps in %s within %d ms", n, m, timeout_ms);
}

Test(multinode, two_nodes_of_two_stages_match_baton_train) {
  char want[33], got[33];
  train_hash(8, want);
  job_t j = job_new(8);
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  assert_code(wait_node(a, 1, 30000), 0, 1);
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "2 nodes x 2 stages give %s, baton train %s", got, want);
  assert_has(err_of(0), "started stage 2 on node 1");
  assert_has(err_of(0), "started stage 3 on node 1");
  assert_has(err_of(0), "all 4 stages ready");
  assert_nothing_left();
}

Test(multinode, losing_a_node_mid_run_reforms_bit_identically) {
  char want[33], got[33];
  train_hash(24, want);
  job_t j = job_new(24);
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  wait_metrics_lines(6, 60000);
  /* The whole node: its agent (its workers die with it, PR_SET_PDEATHSIG). */
  kill(-a, SIGKILL);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  wait_node(a, 1, 10000);
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "after losing node 1: %s, baton train %s", got, want);
  assert_has(err_of(0), "node 1 lost");
  assert_has(err_of(0), "re-forming on 2 stages");
  assert_has(e2e.events, "\"failure\"");
  assert_nothing_left();
}

Test(multinode, losing_a_node_during_a_checkpoint_save) {
  char want[33], got[33];
  train_hash(16, want);
  job_t j = job_new(16);
  /* Stage 3 (on node 1) pauses 5 s half-way through writing step 6's shard. */
  j.extra[0] = "--inject-fault";
  j.extra[1] = "ckpt-slow@stage=3,step=6,ms=5000";
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  cr_assert(bt_proc_wait_for_text(err_of(1), "pauses 5000 ms", 60000), "the slow save never began");
  kill(-a, SIGKILL);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  wait_node(a, 1, 10000);
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "after losing node 1 mid-save: %s, baton train %s", got, want);
  assert_has(err_of(0), "node 1 lost");
  /* The torn step was never restored: the restart came from an earlier one. */
  cr_assert_eq(count_of(err_of(0), "restored step 6 "), 0, "a step missing a shard was restored");
  assert_nothing_left();
}

Test(multinode, losing_a_node_during_start_up) {
  char want[33], got[33];
  train_hash(8, want);
  job_t j = job_new(8);
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  /* Freeze the agent as soon as it has joined: it never spawns (or never
   * relays) its stages and sends no heartbeat; the node timeout decides. */
  cr_assert(bt_proc_wait_for_text(err_of(0), "node 1 joined", 60000), "node 1 never joined");
  kill(-a, SIGSTOP);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "after losing node 1 at start-up: %s, baton train %s", got, want);
  assert_has(err_of(0), "node 1 lost");
  /* Thawed, the agent finds its coordinator gone: 81, workers stopped. */
  kill(-a, SIGCONT);
  assert_code(wait_node(a, 1, 30000), BT_EXIT_COORD_LOST, 1);
  assert_nothing_left();
}

Test(multinode, losing_the_coordinator_stops_the_agent_and_a_rerun_resumes) {
  char want[33], got[33];
  train_hash(24, want);
  job_t j = job_new(24);
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  wait_metrics_lines(8, 60000);
  /* A commit to resume from (commits may trail the steps). */
  char latest[400];
  snprintf(latest, sizeof latest, "%s/latest", e2e.ckpt);
  for (int waited = 0; waited < 60000 && access(latest, F_OK) != 0; waited += 20) bt_sleep_ms(20);
  cr_assert_eq(access(latest, F_OK), 0, "nothing committed within 60 s");
  kill(-c, SIGKILL);
  double t0 = bt_clock_s();
  int code = wait_node(a, 1, 30000);
  double took = bt_clock_s() - t0;
  assert_code(code, BT_EXIT_COORD_LOST, 1);
  cr_assert_lt(took, 15.0, "the agent took %.1f s to stop", took);
  assert_has(err_of(1), "rerun the same command");
  wait_node(c, 0, 10000);
  assert_nothing_left();
  /* The same two commands again: they resume from the newest commit. */
  c = start_node(&j, 0);
  a = start_node(&j, 1);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  assert_code(wait_node(a, 1, 30000), 0, 1);
  assert_has(err_of(0), "resuming from");
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "resumed after losing the coordinator: %s, baton train %s", got, want);
  assert_nothing_left();
}

/* ---- strangers ---- */

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  for (int i = 0; i < 200; i++) {
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
    close(fd);
    bt_sleep_ms(25);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  }
  close(fd);
  return -1;
}

/* 1 when the peer closed the connection within timeout_ms. */
static int closed_within(int fd, int timeout_ms) {
  uint8_t buf[4096];
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 50) > 0) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n <= 0) return 1;
    }
  }
  return 0;
}

static void send_node(int fd, uint16_t type, const bt_node_msg_t *m) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, m);
  cr_assert_eq(b.err, 0);
  cr_assert_eq(write(fd, b.data, b.len), (ssize_t)b.len);
  bt_buf_free(&b);
}

/* Speaks HELLO as node 1 and answers the challenge with a made-up proof. */
static int wrong_secret_client(int port, const char *job) {
  int fd = dial(port);
  cr_assert_geq(fd, 0);
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.node = 1;
  snprintf(m.text, sizeof m.text, "%s", job);
  memset(m.nonce, 7, sizeof m.nonce);
  send_node(fd, BT_NODE_HELLO, &m);
  /* the challenge */
  uint8_t buf[8192];
  size_t got = 0;
  bt_frame_t f;
  long n = 0;
  for (int waited = 0; waited < 5000 && n == 0; waited += 50) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 50) > 0) {
      ssize_t r = read(fd, buf + got, sizeof buf - got);
      if (r <= 0) break;
      got += (size_t)r;
      n = bt_frame_parse(buf, got, &f);
    }
  }
  cr_assert_gt(n, 0, "no challenge from the coordinator");
  cr_assert_eq(f.type, BT_NODE_CHALLENGE);
  memset(&m, 0, sizeof m);
  memset(m.proof, 0x42, sizeof m.proof);
  send_node(fd, BT_NODE_AUTH, &m);
  return fd;
}

Test(multinode, strangers_are_refused_and_the_job_is_undisturbed) {
  char want[33], got[33];
  train_hash(12, want);
  job_t j = job_new(12);
  pid_t c = start_node(&j, 0);
  /* During the rendezvous: garbage, a silent client, a wrong secret, a flood. */
  int g = dial(j.port);
  cr_assert_geq(g, 0, "the coordinator does not listen");
  cr_assert_eq(write(g, "GET / HTTP/1.0\r\n\r\n", 18), 18);
  cr_assert(closed_within(g, 5000), "garbage was not refused");
  close(g);
  int silent = dial(j.port);
  int ws = wrong_secret_client(j.port, j.job);
  cr_assert(closed_within(ws, 5000), "a wrong proof was not refused");
  close(ws);
  int flood[100];
  for (int i = 0; i < 100; i++) flood[i] = dial(j.port);
  /* A real baton with another secret: refused, exit 82 (it is told nothing). */
  write_secret("wrong", "not-the-secret-not-the-secret!!!\n");
  job_t bad = j;
  bad.secret = "wrong";
  pid_t b = start_node(&bad, 1);
  assert_code(wait_node(b, 1, 60000), BT_EXIT_RENDEZVOUS, 1);
  /* the silent client is closed after the handshake deadline (5 s) */
  cr_assert(closed_within(silent, 10000), "a silent client was not closed");
  close(silent);
  for (int i = 0; i < 100; i++)
    if (flood[i] >= 0) close(flood[i]);
  /* Now the real node joins and the job runs; more garbage while it does. */
  pid_t a = start_node(&j, 1);
  wait_metrics_lines(3, 60000);
  for (int i = 0; i < 20; i++) {
    int x = dial(j.port);
    if (x >= 0) {
      cr_assert_eq(write(x, "\x42\x54\x4e\x43garbage-after-the-magic", 27), 27);
      close(x);
    }
  }
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  assert_code(wait_node(a, 1, 30000), 0, 1);
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "with strangers about: %s, baton train %s", got, want);
  /* No restart happened, and each reason was logged once, not per stranger. */
  cr_assert_eq(count_of(err_of(0), "restart 1 of"), 0, "the strangers caused a restart");
  cr_assert_eq(count_of(err_of(0), "refused a connection: garbage"), 1);
  cr_assert_eq(count_of(err_of(0), "refused a connection: wrong secret"), 1);
  cr_assert_eq(count_of(err_of(0), "refused a connection: silent"), 1);
  assert_nothing_left();
}

Test(multinode, a_node_that_never_joins_is_named_at_the_join_deadline) {
  job_t j = job_new(4);
  j.extra[0] = "--join-timeout";
  j.extra[1] = "1";
  pid_t c = start_node(&j, 0);
  assert_code(wait_node(c, 0, 30000), BT_EXIT_RENDEZVOUS, 0);
  assert_has(err_of(0), "missing node 1");
  assert_nothing_left();
}

Test(multinode, bad_multinode_flags_are_usage_errors) {
  job_t j = job_new(4);
  const char *cases[][6] = {
      {"--nnodes", "2", "--node-rank", "2", NULL},               /* rank out of range */
      {"--nnodes", "2", "--node-rank", "0", "--rdzv", "nohost"}, /* fine host, no port: default; no job id */
      {"--node-rank", "1", NULL},                                /* rank without nnodes */
      {"--nnodes", "2", "--rdzv", "127.0.0.1:99999", NULL},     /* bad port */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *argv[32];
    int k = 0;
    argv[k++] = (char *)bt_e2e_env("BATON_BIN");
    argv[k++] = "run";
    for (int q = 0; q < 6 && cases[i][q]; q++) argv[k++] = (char *)cases[i][q];
    argv[k] = NULL;
    int code = bt_e2e_run(&e2e, argv, NULL, NULL, 30000);
    cr_assert_eq(code, 2, "case %zu exited %d", i, code);
    char *e = slurp_or_empty(e2e.err);
    int lines = 0;
    for (char *q = e; *q; q++) lines += *q == '\n';
    cr_expect_eq(lines, 1, "case %zu: not one line:\n%s", i, e);
    free(e);
  }
  /* A secret on the command line is impossible; a world-readable file is refused. */
  const char *p = bt_e2e_path(&e2e, "secret");
  chmod(p, 0644);
  char rdzv[64];
  snprintf(rdzv, sizeof rdzv, "127.0.0.1:%d", j.port);
  char *argv[] = {(char *)bt_e2e_env("BATON_BIN"), "run", "--nnodes", "2", "--node-rank", "1", "--rdzv", rdzv,
                  "--job-id", "x", "--secret-file", (char *)p, NULL};
  cr_assert_eq(bt_e2e_run(&e2e, argv, NULL, NULL, 30000), 2);
  assert_has(e2e.err, "chmod 600");
}

/* The pid in the first "started stage S (pid P)" line of the coordinator
 * after the text `after`, waiting for it up to timeout_ms; 0 if none. */
static pid_t local_pid_after(int stage, const char *after, int timeout_ms) {
  char needle[64];
  snprintf(needle, sizeof needle, "started stage %d (pid ", stage);
  for (int waited = 0; waited <= timeout_ms; waited += 20) {
    char *e = slurp_or_empty(err_of(0));
    char *from = strstr(e, after), *q = from ? strstr(from, needle) : NULL;
    pid_t pid = q ? (pid_t)atoi(q + strlen(needle)) : 0;
    free(e);
    if (pid > 0) return pid;
    bt_sleep_ms(20);
  }
  return 0;
}

Test(multinode, a_node_that_comes_back_is_used_from_the_next_restart) {
  char want[33], got[33];
  train_hash(600, want);
  job_t j = job_new(600);
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  wait_metrics_lines(4, 60000);
  kill(-a, SIGKILL);
  wait_node(a, 1, 10000);
  cr_assert(bt_proc_wait_for_text(err_of(0), "re-forming on 2 stages", 30000), "no re-form after the loss");
  /* The node comes back while the job runs on 2 stages ... */
  a = start_node(&j, 1);
  cr_assert(bt_proc_wait_for_text(err_of(0), "used from the next restart", 30000), "node 1 did not rejoin");
  /* ... and the next restart (a crash of stage 0 here) takes it back. */
  /* stage 0 of the 2-stage incarnation, not of the one before */
  pid_t s0 = local_pid_after(0, "re-forming on 2 stages", 30000);
  cr_assert_gt(s0, 0, "no stage 0 started after the re-form");
  kill(s0, SIGKILL);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  assert_code(wait_node(a, 1, 30000), 0, 1);
  assert_has(err_of(0), "re-forming on 4 stages");
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "shrunk and grown again: %s, baton train %s", got, want);
  assert_nothing_left();
}

Test(multinode, a_preemption_signal_to_every_node_commits_and_both_exit_75) {
  job_t j = job_new(600);
  pid_t c = start_node(&j, 0), a = start_node(&j, 1);
  wait_metrics_lines(4, 60000);
  /* What a scheduler does: SIGTERM to every process of the job at once. */
  kill(a, SIGTERM);
  kill(c, SIGTERM);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), BT_EXIT_PREEMPTED, 0);
  assert_code(wait_node(a, 1, 30000), BT_EXIT_PREEMPTED, 1);
  assert_has(err_of(1), "left to the coordinator");
  assert_nothing_left();
  /* The committed step resumes on both nodes to baton train's hash. */
  char want[33], got[33];
  train_hash(600, want);
  c = start_node(&j, 0);
  a = start_node(&j, 1);
  assert_code(wait_node(c, 0, RUN_TIMEOUT_MS), 0, 0);
  assert_code(wait_node(a, 1, 30000), 0, 1);
  assert_has(err_of(0), "resuming from");
  read_hash(out_of(0), got);
  cr_assert_str_eq(got, want, "preempted and resumed: %s, baton train %s", got, want);
}
