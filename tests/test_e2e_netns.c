/* test_e2e_netns.c - multi-node `baton run` over a real network: two network
 * namespaces (bt-<pid>-a and bt-<pid>-b) joined by a veth pair
 * (10.213.X.1/24 and .2/24), the coordinator in the first through
 * `ip netns exec`, the node agent in the second, the checkpoint directory a
 * local path both see. Cases: a 2-node x 2-stage job bit-identical to
 * `baton train`; the link cut mid-run (`ip link set ... down`) and a link
 * that drops every packet (`tc netem loss 100%`, and without netem a
 * `pfifo limit 0` queue): the coordinator detects
 * the lost node within its node timeout, re-forms on its own 2 stages and
 * finishes with the same hash and exit 0, the agent exits 81 within a
 * bounded time, and nothing is left running in either namespace; a link
 * that delays every packet by 50 ms (`tc netem delay 50ms`): the job
 * finishes without a failure, with the same hash.
 *
 * Needs root and CAP_NET_ADMIN (`ip netns add`); the netem cases need the
 * netem qdisc (sch_netem). Each case is skipped with a message otherwise.
 * The fini kills whatever still runs in the namespaces and deletes them,
 * whether the test passed or not.
 *
 * Runs are small (4 layers, dim 32, 32-token micro-batches, --node-timeout
 * 3 --heartbeat-timeout 2): each takes a few seconds plus the 3 s
 * detection.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/exitcodes.h"
#include "tests/support/e2e.h"
#include "tests/support/proc.h"

#define CMD_TIMEOUT_MS 10000   /* one `ip` or `tc` command */
#define RUN_TIMEOUT_MS 120000  /* one baton run or train to its end */
#define AGENT_EXIT_MS 15000    /* the agent's exit after the cut: node timeout 3 s + margin */
#define NODE_TIMEOUT "3"
/* Below the node timeout, as by default (2 s and 10 s): a cut node's stages
 * stop beating too, but while their node's link is silent the supervisor
 * leaves the verdict to the node timeout (sup_remote_silent), so the cause
 * is the node, not its stages. */
#define HB_TIMEOUT "2"
#define RDZV_PORT "29557"

static bt_e2e_dirs_t e2e;
static int net_made; /* the namespaces exist: the fini deletes them */
static char ns_a[32], ns_b[32], veth_a[16], veth_b[16], ip_a[32], ip_b[32], rdzv[48];

static const char *const model[] = {"--layers", "4", "--dim", "32", "--mb-tokens", "32", NULL};

/* `sh -c cmd` with a deadline, its output into dir/sh.out and dir/sh.err
 * (kept away from the runs' files). Returns the exit code. */
static int shf(const char *fmt, ...) {
  char cmd[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  char *argv[] = {"/bin/sh", "-c", cmd, NULL};
  return bt_e2e_run(&e2e, argv, bt_e2e_path(&e2e, "sh.out"), bt_e2e_path(&e2e, "sh.err"), CMD_TIMEOUT_MS);
}

/* The last command's stderr, trimmed, in a static buffer. */
static const char *sh_err(void) {
  static char buf[1024];
  char *s = bt_proc_slurp(bt_e2e_path(&e2e, "sh.err"));
  snprintf(buf, sizeof buf, "%s", s ? s : "");
  free(s);
  size_t n = strlen(buf);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = 0;
  return buf;
}

/* SIGKILLs every process still in namespace ns (by pid, from `ip netns
 * pids`), without assertions: used by the fini. */
static void kill_in_ns(const char *ns) {
  char path[512], cmd[700];
  snprintf(path, sizeof path, "%s/pids.%s", e2e.dir, ns);
  snprintf(cmd, sizeof cmd, "timeout 10 ip netns pids %s > %s 2>/dev/null", ns, path);
  if (system(cmd) != 0) return;
  FILE *f = fopen(path, "r");
  if (!f) return;
  int pid;
  while (fscanf(f, "%d", &pid) == 1)
    if (pid > 1 && pid != getpid()) kill(pid, SIGKILL);
  fclose(f);
}

/* Kills what runs in the namespaces and deletes them (no assertions). */
static void net_down(void) {
  if (!net_made) return;
  kill_in_ns(ns_a);
  kill_in_ns(ns_b);
  bt_proc_cleanup();
  char cmd[200];
  snprintf(cmd, sizeof cmd, "timeout 10 ip netns del %s 2>/dev/null; timeout 10 ip netns del %s 2>/dev/null",
           ns_a, ns_b);
  if (system(cmd) != 0) fprintf(stderr, "netns: could not delete %s or %s\n", ns_a, ns_b);
  net_made = 0;
}

/* Skips the test; cr_skip_test ends the test process without the fini, so
 * the namespaces and the scratch directory go first (the message is
 * formatted before, it may quote a file there). */
static void skip_net(const char *fmt, ...) {
  static char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  net_down();
  bt_e2e_teardown(&e2e);
  cr_skip_test("%s", msg);
}

static void setup(void) { bt_e2e_setup(&e2e, "netns"); }

static void teardown(void) {
  net_down();
  bt_e2e_teardown(&e2e);
}

TestSuite(netns, .init = setup, .fini = teardown, .timeout = 240);

/* Two namespaces joined by a veth pair, loopback and the pair up; skips
 * the test when the machine does not allow it. */
static void net_up(void) {
  if (geteuid() != 0) skip_net("netns: not root: network namespaces need root (CAP_NET_ADMIN)");
  pid_t me = getpid();
  snprintf(ns_a, sizeof ns_a, "bt-%d-a", (int)me);
  snprintf(ns_b, sizeof ns_b, "bt-%d-b", (int)me);
  snprintf(veth_a, sizeof veth_a, "bt%da", (int)(me % 10000000));
  snprintf(veth_b, sizeof veth_b, "bt%db", (int)(me % 10000000));
  snprintf(ip_a, sizeof ip_a, "10.213.%d.1", (int)(me % 250));
  snprintf(ip_b, sizeof ip_b, "10.213.%d.2", (int)(me % 250));
  snprintf(rdzv, sizeof rdzv, "%s:%s", ip_a, RDZV_PORT);
  /* leftovers of an earlier run with this pid that was killed before its fini */
  shf("ip netns del %s 2>/dev/null; ip netns del %s 2>/dev/null; true", ns_a, ns_b);
  if (shf("ip netns add %s", ns_a) != 0)
    skip_net("netns: `ip netns add` failed (no iproute2, or no CAP_NET_ADMIN in this container): %s", sh_err());
  net_made = 1;
  if (shf("ip netns add %s", ns_b) != 0) skip_net("netns: second `ip netns add` failed: %s", sh_err());
  if (shf("ip link add %s netns %s type veth peer name %s netns %s", veth_a, ns_a, veth_b, ns_b) != 0)
    skip_net("netns: cannot create a veth pair: %s", sh_err());
  int rc = shf("ip -n %s addr add %s/24 dev %s && ip -n %s addr add %s/24 dev %s && "
               "ip -n %s link set lo up && ip -n %s link set lo up && "
               "ip -n %s link set %s up && ip -n %s link set %s up",
               ns_a, ip_a, veth_a, ns_b, ip_b, veth_b, ns_a, ns_b, ns_a, veth_a, ns_b, veth_b);
  cr_assert_eq(rc, 0, "netns: configuring the veth pair failed: %s", sh_err());
}

/* Adds a netem qdisc with `spec` on B's end of the pair; skips the test
 * when netem is not there (no sch_netem in the kernel). */
static void netem_or_skip(const char *spec) {
  if (shf("tc -n %s qdisc add dev %s root netem %s", ns_b, veth_b, spec) != 0)
    skip_net("netns: cannot add the netem qdisc (`tc qdisc add ... netem %s`: %s); "
                 "no tc, or no sch_netem in this kernel",
                 spec, sh_err());
}

/* `baton train` of the model for `steps` steps: its hash (hex). */
static void train_hash(int steps, char hex[33]) { bt_e2e_train_hash(&e2e, model, steps, RUN_TIMEOUT_MS, hex); }

/* The hash the coordinator printed last on stdout, or "" */
static void run_hash(char hex[64]) {
  hex[0] = 0;
  char *txt = bt_proc_slurp(bt_e2e_path(&e2e, "coord.out"));
  if (!txt) return;
  char *h = NULL, *p = txt;
  while ((p = strstr(p, "hash ")) != NULL) h = p++;
  if (h && sscanf(h, "hash %63s", hex) != 1) hex[0] = 0;
  free(txt);
}

static void write_secret(void) {
  const char *path = bt_e2e_path(&e2e, "secret");
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  /* 32 bytes in hex; the test's own value (no randomness needed) */
  fprintf(f, "%08x5e1f0c2a9b7d4e3f6a8c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b\n", (unsigned)getpid());
  fclose(f);
  cr_assert_eq(chmod(path, 0600), 0);
}

/* Starts node `rank` of the job in its namespace: `ip netns exec NS baton
 * run ...` (ip execs baton: the pid is baton's). */
static pid_t start_node(int rank, int steps, const char *job) {
  static char s[16];
  snprintf(s, sizeof s, "%d", steps);
  char *argv[64];
  int k = 0;
  argv[k++] = "ip";
  argv[k++] = "netns";
  argv[k++] = "exec";
  argv[k++] = rank == 0 ? ns_a : ns_b;
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  argv[k++] = "run";
  for (int i = 0; model[i]; i++) argv[k++] = (char *)model[i];
  const char *common[] = {"--nnodes", "2", "--rdzv", rdzv, "--job-id", job, "--secret-file",
                          bt_e2e_path(&e2e, "secret"), "--stages-per-node", "2", "--steps", s,
                          "--ckpt-dir", e2e.ckpt, "--ckpt-every", "5", "--node-timeout", NODE_TIMEOUT,
                          "--heartbeat-timeout", HB_TIMEOUT, "--grace", "1",
                          "--join-timeout", "30", NULL};
  for (int i = 0; common[i]; i++) argv[k++] = (char *)common[i];
  argv[k++] = "--node-rank";
  argv[k++] = rank == 0 ? "0" : "1";
  if (rank == 0) {
    const char *coord[] = {"--hash", "--no-progress", "--metrics", bt_e2e_path(&e2e, "m.jsonl"),
                           "--events", e2e.events, NULL};
    for (int i = 0; coord[i]; i++) argv[k++] = (char *)coord[i];
  }
  argv[k] = NULL;
  const char *out = bt_e2e_path(&e2e, rank == 0 ? "coord.out" : "agent.out");
  const char *err = bt_e2e_path(&e2e, rank == 0 ? "coord.err" : "agent.err");
  pid_t pid = bt_proc_spawn(argv, NULL, out, err);
  cr_assert_gt(pid, 0, "spawn of node %d failed", rank);
  return pid;
}

/* Waits for pid's exit at most timeout_ms; the exit code (128 + signal),
 * or fails the test with both nodes' stderr tails. */
static int wait_node(pid_t pid, const char *what, int timeout_ms) {
  int st = 0;
  if (bt_proc_wait(pid, timeout_ms, &st) != 0) {
    static char msg[12288];
    char *c = bt_proc_slurp(bt_e2e_path(&e2e, "coord.err"));
    char *a = bt_proc_slurp(bt_e2e_path(&e2e, "agent.err"));
    size_t nc = c ? strlen(c) : 0, na = a ? strlen(a) : 0;
    snprintf(msg, sizeof msg, "coordinator:\n%s\nagent:\n%s", c ? c + (nc > 6000 ? nc - 6000 : 0) : "",
             a ? a + (na > 4000 ? na - 4000 : 0) : "");
    free(c);
    free(a);
    cr_assert_fail("%s did not end within %d ms\n%s", what, timeout_ms, msg);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void check_code(int got, int want, const char *what, const char *err_name) {
  if (got == want) return;
  static char msg[12288];
  char *e = bt_proc_slurp(bt_e2e_path(&e2e, err_name));
  size_t n = e ? strlen(e) : 0;
  snprintf(msg, sizeof msg, "%s", e ? e + (n > 12000 ? n - 12000 : 0) : "");
  free(e);
  cr_assert_fail("%s exited %d, expected %d; stderr:\n%s", what, got, want, msg);
}

static int count_lines(const char *path) {
  char *s = bt_proc_slurp(path);
  if (!s) return 0;
  int n = 0;
  for (char *p = s; *p; p++) n += *p == '\n';
  free(s);
  return n;
}

/* Waits until the coordinator's metrics file has `lines` steps in it. */
static void wait_steps(pid_t coord, int lines) {
  const char *m = bt_e2e_path(&e2e, "m.jsonl");
  double end = bt_clock_s() + RUN_TIMEOUT_MS / 1000.0;
  while (count_lines(m) < lines) {
    cr_assert(!bt_proc_gone(coord), "the coordinator ended before step %d", lines);
    cr_assert_lt(bt_clock_s(), end, "no %d steps in %s within %d ms", lines, m, RUN_TIMEOUT_MS);
    usleep(10000);
  }
}

/* Nothing runs any more in namespace ns (the pids `ip netns pids` lists
 * are gone or zombies, within a deadline). */
static void assert_ns_empty(const char *ns) {
  char cmd[200];
  snprintf(cmd, sizeof cmd, "ip netns pids %s", ns);
  double end = bt_clock_s() + 10.0;
  for (;;) {
    cr_assert_eq(shf("%s", cmd), 0, "`%s` failed: %s", cmd, sh_err());
    char *s = bt_proc_slurp(bt_e2e_path(&e2e, "sh.out"));
    int left = 0, first = 0;
    char *p = s;
    int pid, used;
    while (p && sscanf(p, "%d%n", &pid, &used) == 1) {
      p += used;
      if (!bt_proc_gone(pid)) {
        if (!left) first = pid;
        left++;
      }
    }
    free(s);
    if (!left) return;
    cr_assert_lt(bt_clock_s(), end, "%d processes left in %s (first pid %d)", left, ns, first);
    usleep(50000);
  }
}

static int file_has(const char *path, const char *needle) {
  char *s = bt_proc_slurp(path);
  int has = s && strstr(s, needle);
  free(s);
  return has;
}

/* The job's end on the coordinator: exit 0 and baton train's hash. */
static void assert_same_hash(int code, const char *want) {
  check_code(code, 0, "the coordinator", "coord.err");
  char got[64];
  run_hash(got);
  cr_assert_str_eq(got, want, "hash %s across namespaces, baton train's %s", got, want);
}

Test(netns, two_nodes_across_namespaces_match_baton_train) {
  net_up();
  write_secret();
  char want[64];
  train_hash(40, want);
  pid_t agent = start_node(1, 40, "nsbase");
  pid_t coord = start_node(0, 40, "nsbase");
  int cc = wait_node(coord, "the coordinator", RUN_TIMEOUT_MS);
  int ac = wait_node(agent, "the agent", RUN_TIMEOUT_MS);
  assert_same_hash(cc, want);
  check_code(ac, 0, "the agent", "agent.err");
  cr_assert(file_has(bt_e2e_path(&e2e, "coord.err"), ip_b),
            "the coordinator's log does not name the agent's address %s", ip_b);
  cr_assert(!file_has(e2e.events, "\"event\":\"failure\""), "a failure in a clean run");
  assert_ns_empty(ns_a);
  assert_ns_empty(ns_b);
}

/* Starts a 200-step job, runs `fault` (a shell command) after 20 steps,
 * and checks detection, re-form, the hash, the agent's exit 81 and that
 * nothing is left behind. */
static void lose_node_mid_run(const char *job, const char *fault_fmt) {
  char want[64];
  train_hash(200, want);
  pid_t agent = start_node(1, 200, job);
  pid_t coord = start_node(0, 200, job);
  wait_steps(coord, 20);
  cr_assert(!file_has(e2e.events, "\"event\":\"end\""), "the job ended before the fault");
  double t0 = bt_clock_s();
  cr_assert_eq(shf(fault_fmt, ns_b, veth_b), 0, "the fault command failed: %s", sh_err());
  int ac = wait_node(agent, "the agent after the fault", AGENT_EXIT_MS);
  double agent_s = bt_clock_s() - t0;
  check_code(ac, BT_EXIT_COORD_LOST, "the agent", "agent.err");
  int cc = wait_node(coord, "the coordinator", RUN_TIMEOUT_MS);
  assert_same_hash(cc, want);
  cr_assert(file_has(bt_e2e_path(&e2e, "agent.err"), "lost the coordinator"),
            "the agent did not say it lost the coordinator");
  cr_assert(file_has(e2e.events, "node 1 lost"), "no 'node 1 lost' failure in the events:\n%s",
            bt_proc_slurp(e2e.events));
  cr_assert(file_has(e2e.events, "\"cause\":\"node 1 lost"), "no restart caused by the lost node in the events");
  cr_assert(file_has(e2e.events, "\"stages\":2,"), "no incarnation on 2 stages in the events");
  cr_assert(file_has(bt_e2e_path(&e2e, "coord.err"), "re-forming on 2 stages"), "no re-form in the log");
  cr_assert_lt(agent_s, AGENT_EXIT_MS / 1000.0);
  fprintf(stderr, "netns %s: the agent exited 81 %.2f s after the fault\n", job, agent_s);
  assert_ns_empty(ns_a);
  assert_ns_empty(ns_b);
}

Test(netns, link_cut_mid_run_reforms_on_the_coordinator_with_the_same_hash) {
  net_up();
  write_secret();
  lose_node_mid_run("nscut", "ip -n %s link set %s down");
}

Test(netns, link_dropping_every_packet_reforms_with_the_same_hash) {
  net_up();
  write_secret();
  /* netem present? (added and removed before the run, so a missing netem
   * skips before anything starts) */
  netem_or_skip("loss 100%");
  cr_assert_eq(shf("tc -n %s qdisc del dev %s root", ns_b, veth_b), 0, "%s", sh_err());
  lose_node_mid_run("nsloss", "tc -n %s qdisc add dev %s root netem loss 100%%");
}

/* The same loss without netem (missing from many kernels and containers):
 * a pfifo queue of length 0 on B's end drops every packet B sends, which
 * the qdisc's counters show. */
Test(netns, link_whose_queue_drops_every_packet_reforms_with_the_same_hash) {
  net_up();
  write_secret();
  lose_node_mid_run("nsfifo", "tc -n %s qdisc add dev %s root pfifo limit 0");
  cr_assert_eq(shf("tc -n %s -s qdisc show dev %s", ns_b, veth_b), 0, "%s", sh_err());
  char *st = bt_proc_slurp(bt_e2e_path(&e2e, "sh.out"));
  cr_assert_not_null(st);
  char *d = strstr(st, "dropped ");
  long dropped = d ? strtol(d + 8, NULL, 10) : 0;
  cr_assert_gt(dropped, 0, "the queue dropped nothing:\n%s", st);
  free(st);
}

Test(netns, link_delaying_packets_finishes_without_a_reform) {
  net_up();
  write_secret();
  netem_or_skip("delay 50ms");
  char want[64];
  train_hash(20, want);
  pid_t agent = start_node(1, 20, "nsdelay");
  pid_t coord = start_node(0, 20, "nsdelay");
  int cc = wait_node(coord, "the coordinator", RUN_TIMEOUT_MS);
  int ac = wait_node(agent, "the agent", RUN_TIMEOUT_MS);
  assert_same_hash(cc, want);
  check_code(ac, 0, "the agent", "agent.err");
  cr_assert(!file_has(e2e.events, "\"event\":\"failure\""), "a failure on a slow link:\n%s",
            bt_proc_slurp(e2e.events));
  cr_assert(!file_has(e2e.events, "\"event\":\"restart\""), "a restart on a slow link");
  assert_ns_empty(ns_a);
  assert_ns_empty(ns_b);
}
