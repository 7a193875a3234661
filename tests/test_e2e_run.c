/* test_e2e_run.c - `baton run` end to end: the supervisor with fake workers
 * (tests/helpers/fake_worker.c) that crash, exit, freeze, hang, ignore STOP
 * or start slowly; signals to the supervisor; SIGKILL of the supervisor.
 *
 * Every test starts `baton run` in its own process group through
 * tests/support/proc.h, learns the worker pids from the supervisor's log,
 * and kills every group in teardown, so a failing test leaves nothing
 * behind.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "common/clock.h"
#include "common/hash.h"
#include "tests/support/e2e.h"
#include "tests/support/proc.h"

static bt_e2e_dirs_t e2e;
static char *const dir = e2e.dir, *const out_path = e2e.out, *const err_path = e2e.err;

static void setup(void) { bt_e2e_setup(&e2e, "run"); }

static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(run, .init = setup, .fini = teardown, .timeout = 120);

static char fake_path[512];

/* Starts `baton run --worker-cmd fake_worker ARGS…` (args NULL-terminated). */
static pid_t start_run(const char *const *args) {
  const char *bin = bt_e2e_env("BATON_BIN");
  snprintf(fake_path, sizeof fake_path, "%s/fake_worker", bt_e2e_env("BATON_HELPERS_DIR"));
  char *argv[64];
  int k = 0;
  argv[k++] = (char *)bin;
  argv[k++] = "run";
  argv[k++] = "--worker-cmd";
  argv[k++] = fake_path;
  for (int i = 0; args[i] && k < 62; i++) argv[k++] = (char *)args[i];
  argv[k] = NULL;
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_gt(pid, 0, "spawn failed: %s", strerror(-pid));
  return pid;
}

/* Runs to the end; returns the exit code (signals fail the test). */
static int finish(pid_t pid, int timeout_ms) {
  int st = 0;
  int rc = bt_proc_wait(pid, timeout_ms, &st);
  if (rc != 0) {
    /* copied out first: a failed assertion leaves the function for good */
    static char msg[8192];
    char *err = bt_proc_slurp(err_path);
    snprintf(msg, sizeof msg, "%s", err ? err : "");
    free(err);
    cr_assert_fail("baton run did not end within %d ms; stderr:\n%s", timeout_ms, msg);
  }
  cr_assert(WIFEXITED(st), "baton run died of signal %d", WTERMSIG(st));
  return WEXITSTATUS(st);
}

static int run_to_end(const char *const *args, int timeout_ms) { return finish(start_run(args), timeout_ms); }

static void assert_contains(const char *path, const char *needle) {
  char *s = bt_proc_slurp(path);
  cr_assert_not_null(s);
  cr_assert_not_null(strstr(s, needle), "'%s' not in %s:\n%s", needle, path, s);
  free(s);
}

/* Every worker the supervisor started must be gone within timeout_ms. */
static void assert_workers_gone(int nstages, int timeout_ms) {
  pid_t pids[16] = {0};
  int n = bt_proc_worker_pids(err_path, pids, 16);
  cr_assert_eq(n, nstages, "found %d worker pids in the log, expected %d", n, nstages);
  for (int i = 0; i < nstages; i++)
    cr_assert(bt_proc_wait_gone(pids[i], timeout_ms), "worker of stage %d (pid %d) still runs", i, (int)pids[i]);
  pid_t left[16];
  int nleft = bt_proc_running_children(left, 16);
  cr_assert_eq(nleft, 0, "%d processes left behind (first pid %d)", nleft, nleft ? (int)left[0] : 0);
}

/* The fake worker's records (see fake_worker.c), combined independently. */
static void expected_hash(int nstages, int64_t steps, char hex[33]) {
  bt_hash_rec_t recs[32];
  int n = 0;
  for (int s = 0; s < nstages; s++)
    for (int i = 0; i < 2; i++) {
      float data[4] = {(float)s, (float)steps, (float)i, 0.5f};
      recs[n].layer = 2 * (uint32_t)s + (uint32_t)i;
      recs[n].index = 0;
      snprintf(recs[n].name, sizeof recs[n].name, "w");
      recs[n].h = bt_hash_tensor(data, 4);
      n++;
    }
  bt_hash128_t h;
  cr_assert_eq(bt_hash_combine(recs, (size_t)n, &h), 0);
  bt_hash_hex(h, hex);
}

static char *last_line(char *s) {
  size_t n = strlen(s);
  while (n > 0 && s[n - 1] == '\n') s[--n] = 0;
  char *p = strrchr(s, '\n');
  return p ? p + 1 : s;
}

Test(run, normal_run_reports_hash_metrics_and_trace) {
  char metrics[320], trace[320];
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
  snprintf(trace, sizeof trace, "%s/trace.json", dir);
  const char *args[] = {"--stages", "3", "--steps", "4", "--hash", "--metrics", metrics, "--trace", trace, NULL};
  cr_assert_eq(run_to_end(args, 30000), 0);
  char *out = bt_proc_slurp(out_path);
  char want[40];
  expected_hash(3, 4, want);
  char line[64];
  snprintf(line, sizeof line, "hash %s", want);
  cr_assert_str_eq(last_line(out), line);
  free(out);
  char *m = bt_proc_slurp(metrics);
  cr_assert_not_null(m);
  int lines = 0;
  for (char *p = m; *p; p++) lines += *p == '\n';
  cr_assert_eq(lines, 4, "metrics:\n%s", m);
  cr_assert_not_null(strstr(m, "{\"step\":1,\"loss\":1,\"tokens_per_s\":"), "metrics:\n%s", m);
  cr_assert_not_null(strstr(m, "{\"step\":2,\"loss\":0.5,"), "metrics:\n%s", m);
  free(m);
  char *t = bt_proc_slurp(trace);
  cr_assert_not_null(t);
  cr_assert_eq(strncmp(t, "{\"traceEvents\":[", 16), 0);
  cr_assert_not_null(strstr(t, "{\"name\":\"2F3\",\"ph\":\"X\",\"ts\":"));
  cr_assert_not_null(strstr(t, "\"pid\":0,\"tid\":2}"));
  free(t);
  assert_workers_gone(3, 2000);
}

Test(run, workers_get_their_environment) {
  /* The supervisor locks and owns the checkpoint directory, so it must exist
   * (or be creatable); the workers get its path. */
  char ck[300];
  snprintf(ck, sizeof ck, "%s/ck", dir);
  const char *args[] = {"--stages", "2", "--steps", "1", "--ckpt-dir", ck, NULL};
  char *extra[] = {"BATON_FAKE_MARKER=kept", "RANK=99", NULL};
  const char *bin = bt_e2e_env("BATON_BIN");
  snprintf(fake_path, sizeof fake_path, "%s/fake_worker", bt_e2e_env("BATON_HELPERS_DIR"));
  char *argv[16] = {(char *)bin, "run", "--worker-cmd", fake_path};
  int k = 4;
  for (int i = 0; args[i]; i++) argv[k++] = (char *)args[i];
  argv[k] = NULL;
  pid_t pid = bt_proc_spawn(argv, extra, out_path, err_path);
  cr_assert_gt(pid, 0);
  cr_assert_eq(finish(pid, 30000), 0);
  char want[512];
  for (int s = 0; s < 2; s++) {
    const char *fmt[] = {"[stage %d] env RANK=%d\n", "[stage %d] env LOCAL_RANK=%d\n", "[stage %d] env BATON_STAGE=%d\n"};
    for (int f = 0; f < 3; f++) {
      snprintf(want, sizeof want, fmt[f], s, s);
      assert_contains(out_path, want);
    }
    snprintf(want, sizeof want, "[stage %d] env WORLD_SIZE=2\n", s);
    assert_contains(out_path, want);
    snprintf(want, sizeof want, "[stage %d] env BATON_SUPERVISOR_PID=%d\n", s, (int)pid);
    assert_contains(out_path, want);
    snprintf(want, sizeof want, "[stage %d] env BATON_FAKE_MARKER=kept\n", s);
    assert_contains(out_path, want);
    snprintf(want, sizeof want, "[stage %d] env BATON_CKPT_DIR=%s\n", s, ck);
    assert_contains(out_path, want);
    snprintf(want, sizeof want, "[stage %d] env BATON_CONTROL_FD=3\n", s);
    assert_contains(out_path, want);
  }
  assert_contains(out_path, "env MASTER_ADDR=127.0.0.1\n");
  assert_contains(out_path, "env BATON_JOB_TOKEN=");
  /* the stale RANK=99 of an outer launcher must not reach the workers */
  char *o = bt_proc_slurp(out_path);
  cr_assert_null(strstr(o, "RANK=99"), "%s", o);
  free(o);
}

Test(run, crash_names_the_stage_and_its_stderr_tail) {
  char events[320];
  snprintf(events, sizeof events, "%s/events.jsonl", dir);
  const char *args[] = {"--stages", "3", "--steps", "20", "--no-progress", "--events", events, "--", "--mode",
                        "crash", "--fail-stage", "1", "--at-step", "2", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
  assert_contains(events, "{\"event\":\"spawn\",");
  assert_contains(events, "\"stage\":1,\"kind\":\"crash\",\"reason\":\"killed by signal 6");
  assert_contains(events, "\"exit_code\":1,");
  assert_contains(events, "\"failed_stage\":1,");
  assert_contains(err_path, "baton: stage 1 failed: killed by signal 6");
  assert_contains(err_path, "  [stage 1] fake stage 1: crashing at step 2\n");
  assert_workers_gone(3, 2000);
}

Test(run, exit_code_is_reported_with_the_stderr_tail) {
  const char *args[] = {"--stages", "3", "--steps", "20", "--no-progress", "--", "--mode", "exit",
                        "--fail-stage", "2", "--code", "4", "--at-step", "3", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
  assert_contains(err_path, "baton: stage 2 failed: exited with code 4 (fatal: bad configuration)");
  assert_contains(err_path, "  [stage 2] fake stage 2: line one before exit\n");
  assert_contains(err_path, "  [stage 2] fake stage 2: exiting with code 4 at step 3\n");
  /* forwarded stderr is prefixed with the stage as it happens */
  assert_contains(err_path, "\n[stage 2] fake stage 2: line one before exit\n");
  assert_workers_gone(3, 2000);
}

Test(run, retryable_exit_is_reported) {
  const char *args[] = {"--stages", "2", "--steps", "20", "--no-progress", "--", "--mode", "exit",
                        "--fail-stage", "0", "--code", "3", "--at-step", "2", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
  assert_contains(err_path, "baton: stage 0 failed: exited with code 3 (retryable");
  assert_workers_gone(2, 2000);
}

Test(run, frozen_worker_is_killed_by_the_heartbeat_timeout) {
  const char *args[] = {"--stages", "3", "--steps", "1000", "--no-progress", "--heartbeat-timeout", "1",
                        "--", "--mode", "freeze", "--fail-stage", "0", "--at-step", "2", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
  assert_contains(err_path, "baton: stage 0 failed: no heartbeat for ");
  assert_workers_gone(3, 2000);
}

Test(run, beating_worker_without_progress_is_detected) {
  const char *args[] = {"--stages", "3", "--steps", "1000", "--no-progress", "--progress-timeout", "1",
                        "--", "--mode", "noprogress", "--fail-stage", "1", "--at-step", "3", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
  assert_contains(err_path, "baton: stage 1 failed: no progress for ");
  assert_contains(err_path, "at step 3, action 0, computing (killed)");
  assert_workers_gone(3, 2000);
}

/* NCCL's set-up is a phase of its own (BT_PHASE_SETUP) with its own
 * deadline, BATON_NCCL_SETUP_MS: 3 s of set-up outlasts the first-step
 * allowance of a 0.5 s progress timeout (1 s) but not a 10 s set-up
 * deadline; with a 1 s deadline the stage is named and killed. */
Test(run, nccl_setup_has_its_own_deadline) {
  setenv("BATON_NCCL_SETUP_MS", "10000", 1);
  const char *args[] = {"--stages", "2", "--steps", "3", "--no-progress", "--progress-timeout", "0.5",
                        "--", "--mode", "slow-setup", "--fail-stage", "1", "--setup-ms", "3000", NULL};
  int rc = run_to_end(args, 60000);
  unsetenv("BATON_NCCL_SETUP_MS");
  cr_assert_eq(rc, 0, "a 3 s set-up within a 10 s deadline failed the job");
}

Test(run, nccl_setup_past_its_deadline_is_named) {
  setenv("BATON_NCCL_SETUP_MS", "1000", 1);
  const char *args[] = {"--stages", "2", "--steps", "1000", "--no-progress", "--progress-timeout", "0.5",
                        "--", "--mode", "slow-setup", "--fail-stage", "1", "--setup-ms", "60000", NULL};
  int rc = run_to_end(args, 60000);
  unsetenv("BATON_NCCL_SETUP_MS");
  cr_assert_eq(rc, 1);
  assert_contains(err_path, "baton: stage 1 failed: no progress for ");
  assert_contains(err_path, "setting up NCCL (killed)");
  assert_workers_gone(2, 2000);
}

/* A stage still connecting to its peers when the progress allowance runs
 * out is a start-up failure, said as such (who did not connect), not a
 * hang in computing. */
Test(run, a_stage_that_never_connects_is_a_start_up_failure) {
  const char *args[] = {"--stages", "3", "--steps", "10", "--no-progress", "--progress-timeout", "0.5",
                        "--", "--mode", "no-connect", "--fail-stage", "2", NULL};
  cr_assert_eq(run_to_end(args, 60000), 1);
  assert_contains(err_path, "baton: stage 2 failed: start-up: stage 2 did not connect to its peers within ");
  char *err = bt_proc_slurp(err_path);
  cr_assert_not_null(err);
  int hang = strstr(err, "computing (killed)") != NULL;
  free(err);
  cr_assert(!hang, "a start-up failure was reported as a hang in computing");
  assert_workers_gone(3, 2000);
}

Test(run, sigint_stops_cleanly_and_leaves_no_process) {
  char events[320];
  snprintf(events, sizeof events, "%s/events.jsonl", dir);
  const char *args[] = {"--stages", "3", "--steps", "100000", "--no-progress", "--events", events, NULL};
  pid_t pid = start_run(args);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 20000));
  bt_sleep_ms(200);
  kill(pid, SIGINT);
  cr_assert_eq(finish(pid, 20000), 130);
  assert_contains(err_path, "stopping (after step");
  assert_contains(err_path, "fake stage 0: stopping after step");
  assert_contains(events, "{\"event\":\"stop\",");
  assert_contains(events, "\"signal\":\"SIGINT\"");
  assert_contains(events, "\"exit_code\":130,");
  assert_workers_gone(3, 2000);
}

Test(run, worker_ignoring_stop_is_killed_after_grace) {
  const char *args[] = {"--stages", "2", "--steps", "100000", "--no-progress", "--grace", "0.5", "--",
                        "--mode", "ignore-stop", "--fail-stage", "1", NULL};
  pid_t pid = start_run(args);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 20000));
  bt_sleep_ms(200);
  kill(pid, SIGTERM);
  cr_assert_eq(finish(pid, 20000), 143);
  assert_contains(err_path, "grace period over");
  assert_workers_gone(2, 2000);
}

Test(run, second_sigint_kills_at_once) {
  const char *args[] = {"--stages", "2", "--steps", "100000", "--no-progress", "--grace", "60", "--",
                        "--mode", "ignore-stop", NULL};
  pid_t pid = start_run(args);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 20000));
  kill(pid, SIGINT);
  cr_assert(bt_proc_wait_for_text(err_path, "stopping", 5000));
  kill(pid, SIGINT);
  /* far less than the 60 s grace */
  cr_assert_eq(finish(pid, 10000), 130);
  assert_contains(err_path, "killing every worker now");
  assert_workers_gone(2, 2000);
}

static void kill_supervisor_and_check(pid_t pid, int nstages) {
  kill(pid, SIGKILL);
  int st;
  cr_assert_eq(bt_proc_wait(pid, 5000, &st), 0);
  /* PDEATHSIG: every worker dies with the supervisor, well within 2 s */
  assert_workers_gone(nstages, 2000);
}

Test(run, sigkill_of_the_supervisor_during_startup_kills_the_workers) {
  const char *args[] = {"--stages", "3", "--steps", "10", "--no-progress", "--", "--mode", "slow-start",
                        "--start-ms", "30000", NULL};
  pid_t pid = start_run(args);
  cr_assert(bt_proc_wait_for_text(err_path, "fake stage 2 pid", 20000));
  pid_t pids[16] = {0};
  cr_assert_eq(bt_proc_worker_pids(err_path, pids, 16), 3);
  kill_supervisor_and_check(pid, 3);
}

Test(run, sigkill_of_the_supervisor_during_the_run_kills_the_workers) {
  const char *args[] = {"--stages", "3", "--steps", "100000", "--no-progress", NULL};
  pid_t pid = start_run(args);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 20000));
  bt_sleep_ms(200);
  kill_supervisor_and_check(pid, 3);
}

Test(run, missing_hashes_fail_the_job) {
  const char *args[] = {"--stages", "2", "--steps", "2", "--hash", "--no-progress", "--", "--mode", "no-hash",
                        "--fail-stage", "1", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
  assert_contains(err_path, "stage 1 failed: sent no tensor hashes");
}

Test(run, bad_usage_exits_2_with_one_line) {
  const char *cases[][4] = {
      {"--steps", "3", NULL},
      {"--stages", "0", NULL},
      {"--stages", "2", "--grace", "soon"},
      {"--stages", "2", "--bogus", NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    truncate(err_path, 0);
    const char *args[5] = {cases[i][0], cases[i][1], cases[i][2], cases[i][3], NULL};
    cr_assert_eq(run_to_end(args, 10000), 2, "case %zu", i);
    char *e = bt_proc_slurp(err_path);
    int lines = 0;
    for (char *p = e; *p; p++) lines += *p == '\n';
    cr_assert_eq(lines, 1, "case %zu: stderr:\n%s", i, e);
    free(e);
  }
}

Test(run, unstartable_worker_command_fails_the_job) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--stages", "2", "--worker-cmd", "/nonexistent/worker", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 10000), 1);
  assert_contains(err_path, "cannot start stage 0");
}

/* ---------- the real pipeline: bit-identical to `baton train` ---------- */

/* A small, fast model: 8 layers (6 blocks + embed + head), so 4 stages of
 * 2 chunks put embed and head alone on a virtual stage. */
static const char *const MODEL[] = {"--layers", "6", "--dim", "16", "--mb-tokens", "16", "--context", "2",
                                    "--steps", "3", NULL};

/* Runs `baton ARGS… MODEL… --microbatches M --hash --metrics FILE`; returns
 * the exit code, the last stdout line in hash_line. */
static int run_baton(const char *const *args, int mb, const char *metrics, char *hash_line, size_t cap) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[96];
  char mbs[16];
  snprintf(mbs, sizeof mbs, "%d", mb);
  int k = 0;
  argv[k++] = (char *)bin;
  for (int i = 0; args[i]; i++) argv[k++] = (char *)args[i];
  for (int i = 0; MODEL[i]; i++) argv[k++] = (char *)MODEL[i];
  argv[k++] = "--microbatches";
  argv[k++] = mbs;
  argv[k++] = "--hash";
  argv[k++] = "--metrics";
  argv[k++] = (char *)metrics;
  argv[k] = NULL;
  truncate(out_path, 0);
  truncate(err_path, 0);
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_gt(pid, 0);
  int code = finish(pid, 60000);
  char *out = bt_proc_slurp(out_path);
  snprintf(hash_line, cap, "%s", out ? last_line(out) : "");
  free(out);
  return code;
}

/* The "loss" value texts of a metrics file, one per line, joined by '|'. */
static void losses_of(const char *path, char *out, size_t cap) {
  char *s = bt_proc_slurp(path);
  cr_assert_not_null(s, "no metrics file %s", path);
  size_t n = 0;
  out[0] = 0;
  for (char *p = strstr(s, "\"loss\":"); p; p = strstr(p + 1, "\"loss\":")) {
    p += 7;
    size_t len = strcspn(p, ",}");
    n += (size_t)snprintf(out + n, n < cap ? cap - n : 0, "%.*s|", (int)len, p);
  }
  free(s);
}

TestSuite(pipeline, .init = setup, .fini = teardown, .timeout = 300);

typedef struct {
  int mb;
  char hash[80];
  char losses[1024];
} reference_t;

static void reference(int mb, reference_t *r) {
  char metrics[320];
  snprintf(metrics, sizeof metrics, "%s/train-%d.jsonl", dir, mb);
  const char *args[] = {"train", NULL};
  r->mb = mb;
  cr_assert_eq(run_baton(args, mb, metrics, r->hash, sizeof r->hash), 0);
  cr_assert_eq(strncmp(r->hash, "hash ", 5), 0, "train printed '%s'", r->hash);
  losses_of(metrics, r->losses, sizeof r->losses);
  cr_assert_gt(strlen(r->losses), 3);
}

/* `baton run` with extra arguments must match the reference bit for bit. */
static void assert_run_matches(const reference_t *ref, const char *const *extra) {
  char metrics[320], hash[80], losses[1024], what[256] = "";
  snprintf(metrics, sizeof metrics, "%s/run.jsonl", dir);
  const char *args[48] = {"run", "--no-progress"};
  int k = 2;
  for (int i = 0; extra[i]; i++) {
    args[k++] = extra[i];
    strncat(what, extra[i], sizeof what - strlen(what) - 2);
    strcat(what, " ");
  }
  args[k] = NULL;
  int code = run_baton(args, ref->mb, metrics, hash, sizeof hash);
  char *err = bt_proc_slurp(err_path);
  cr_assert_eq(code, 0, "baton run %s--microbatches %d exited %d:\n%s", what, ref->mb, code, err);
  free(err);
  cr_assert_str_eq(hash, ref->hash, "baton run %s--microbatches %d", what, ref->mb);
  losses_of(metrics, losses, sizeof losses);
  cr_assert_str_eq(losses, ref->losses, "losses of baton run %s--microbatches %d", what, ref->mb);
}

/* P = 1..4 with micro-batch counts 4 and 5 (5 is no multiple of 2, 3, 4). */
static void check_schedule(const char *name, const char *chunks) {
  for (int mb = 4; mb <= 5; mb++) {
    reference_t ref;
    reference(mb, &ref);
    for (int p = 1; p <= 4; p++) {
      char ps[8];
      snprintf(ps, sizeof ps, "%d", p);
      const char *extra[] = {"--stages", ps, "--chunks", chunks, "--schedule", name, NULL};
      assert_run_matches(&ref, extra);
    }
  }
}

Test(pipeline, gpipe_is_bit_identical_to_train) { check_schedule("gpipe", "1"); }
Test(pipeline, one_f_one_b_is_bit_identical_to_train) { check_schedule("1f1b", "1"); }
/* V = 2: with P = 4 every virtual stage holds one layer, embed and head alone */
Test(pipeline, interleaved_is_bit_identical_to_train) { check_schedule("interleaved", "2"); }
Test(pipeline, zb_h1_is_bit_identical_to_train) { check_schedule("zb-h1", "1"); }

Test(pipeline, uneven_layouts_with_embed_or_head_alone_are_bit_identical) {
  reference_t ref;
  reference(5, &ref);
  const char *embed_alone[] = {"--stages", "3", "--layout", "1,5,2", NULL};
  const char *head_alone[] = {"--stages", "3", "--layout", "3,4,1", "--schedule", "gpipe", NULL};
  const char *interleaved[] = {"--stages", "2", "--chunks", "2", "--layout", "1,2,4,1", NULL};
  const char *zb[] = {"--stages", "2", "--layout", "6,2", "--schedule", "zb-h1", NULL};
  assert_run_matches(&ref, embed_alone);
  assert_run_matches(&ref, head_alone);
  assert_run_matches(&ref, interleaved);
  assert_run_matches(&ref, zb);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  cr_assert_eq(fclose(f), 0);
}

Test(pipeline, csv_schedule_is_bit_identical_to_train) {
  char csv[320];
  snprintf(csv, sizeof csv, "%s/sched.csv", dir);
  /* a hand-written 2-worker schedule with an idle cell, and counts inferred
   * from the CSV (3 micro-batches, no --stages) */
  write_file(csv, "0F0,0F1,0F2,,0B0,0B1,0B2\n1F0,1B0,1F1,1B1,1F2,1B2\n");
  reference_t ref;
  reference(3, &ref);
  const char *extra[] = {"--schedule", csv, NULL};
  assert_run_matches(&ref, extra);
}

static void assert_refused(const char *const *extra, const char *needle) {
  char metrics[320], hash[80];
  snprintf(metrics, sizeof metrics, "%s/refused.jsonl", dir);
  const char *args[32] = {"run", "--no-progress"};
  int k = 2;
  for (int i = 0; extra[i]; i++) args[k++] = extra[i];
  args[k] = NULL;
  cr_assert_eq(run_baton(args, 4, metrics, hash, sizeof hash), 2, "not refused: %s", needle);
  char *e = bt_proc_slurp(err_path);
  int lines = 0;
  for (char *p = e; *p; p++) lines += *p == '\n';
  cr_assert_eq(lines, 1, "want one line on stderr:\n%s", e);
  cr_assert_not_null(strstr(e, needle), "'%s' not in: %s", needle, e);
  cr_assert_null(strstr(e, "started stage"), "something was spawned: %s", e);
  free(e);
}

Test(pipeline, out_of_order_csv_is_refused) {
  char csv[320];
  snprintf(csv, sizeof csv, "%s/bad.csv", dir);
  /* valid, but virtual stages 0 and 1 accumulate micro-batch 1 before 0;
   * the CSV's 2 micro-batches are taken from it (no --microbatches) */
  write_file(csv, "0F0,0F1,0B1,0B0\n1F0,1F1,1B1,1B0\n");
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--schedule", csv, "--layers", "2", "--steps", "1", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 20000), 2);
  char *e = bt_proc_slurp(err_path);
  cr_assert_not_null(strstr(e, "refused"), "%s", e);
  cr_assert_not_null(strstr(e, "micro-batch order"), "%s", e);
  cr_assert_null(strstr(e, "started stage"), "%s", e);
  free(e);
}

Test(pipeline, bad_combinations_exit_2_before_spawning) {
  const char *too_many[] = {"--stages", "5", "--chunks", "2", NULL};
  assert_refused(too_many, "10 virtual stages, but the model has only 8 layers");
  const char *short_layout[] = {"--stages", "2", "--layout", "1,2", NULL};
  assert_refused(short_layout, "--layout 1,2");
  const char *wrong_count[] = {"--stages", "2", "--layout", "2,2,4", NULL};
  assert_refused(wrong_count, "--layout 2,2,4");
  const char *few_mb[] = {"--stages", "5", "--schedule", "1f1b", NULL};
  assert_refused(few_mb, "--schedule 1f1b");
  const char *no_such[] = {"--stages", "2", "--schedule", "/nonexistent/s.csv", NULL};
  assert_refused(no_such, "--schedule /nonexistent/s.csv");
  const char *chunks[] = {"--stages", "2", "--chunks", "2", "--schedule", "gpipe", NULL};
  assert_refused(chunks, "--schedule gpipe");
  const char *trace[] = {"--stages", "2", "--trace", "/nonexistent/dir/t.json", NULL};
  assert_refused(trace, "--trace /nonexistent/dir/t.json");
}

Test(pipeline, peer_death_mid_step_fails_the_job_naming_the_stage) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--no-progress", "--stages", "3", "--layers", "6", "--dim", "16",
                  "--mb-tokens", "16", "--steps", "1000000", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 30000));
  bt_sleep_ms(300);
  pid_t pids[16] = {0};
  cr_assert_eq(bt_proc_worker_pids(err_path, pids, 16), 3);
  kill(pids[1], SIGKILL);
  /* the neighbours see the peer go at once and never hang */
  cr_assert_eq(finish(pid, 30000), 1);
  assert_contains(err_path, "baton: stage 1 failed: killed by signal 9");
  assert_workers_gone(3, 2000);
}

Test(pipeline, sigint_stops_the_real_pipeline_cleanly) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--no-progress", "--stages", "3", "--chunks", "2", "--layers", "6", "--dim",
                  "16", "--mb-tokens", "16", "--microbatches", "6", "--steps", "1000000", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 30000));
  bt_sleep_ms(300);
  kill(pid, SIGINT);
  cr_assert_eq(finish(pid, 30000), 130);
  /* every stage exited on its own, within grace (on a loaded machine a
   * stage may have started the step after the stop step before its STOP
   * arrived, and stops when its neighbour does) */
  assert_contains(err_path, "[stage 0] baton: info: stopping");
  assert_contains(err_path, "[stage 2] baton: info: stopping");
  char *e = bt_proc_slurp(err_path);
  cr_assert_null(strstr(e, "grace period over"), "%s", e);
  free(e);
  assert_workers_gone(3, 2000);
}

Test(pipeline, help_describes_the_flags) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--help", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 10000), 0);
  assert_contains(out_path, "--stages P");
  assert_contains(out_path, "--layers");
  assert_contains(out_path, "--heartbeat-timeout");
  char *wargv[] = {(char *)bin, "worker", "--help", NULL};
  pid = bt_proc_spawn(wargv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 10000), 0);
  assert_contains(out_path, "3 retryable");
}

/* Dials the stage's data-plane address ("tcp:HOST:PORT" or "unix:@NAME",
 * an abstract Unix socket) like an intruder would. */
static int dial(const char *addr) {
  char host[64];
  int port = 0;
  if (sscanf(addr, "tcp:%63[^:]:%d", host, &port) == 2) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect %s: %s", addr, strerror(errno));
    return fd;
  }
  char name[100];
  cr_assert_eq(sscanf(addr, "unix:@%99[^ \n]", name), 1, "address %s", addr);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un su = {.sun_family = AF_UNIX};
  size_t n = strlen(name);
  memcpy(su.sun_path + 1, name, n); /* sun_path[0] = 0: the abstract namespace */
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
  cr_assert_eq(connect(fd, (struct sockaddr *)&su, len), 0, "connect %s: %s", addr, strerror(errno));
  return fd;
}

/* A connection to stage 1's data port without the job's token is refused
 * and the job still ends with baton train's hash, over either data plane. */
static void intruder_is_refused(const char *plane) {
  reference_t ref;
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "train", "--layers", "6", "--dim", "16", "--mb-tokens", "16", "--steps", "150",
                  "--hash", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 60000), 0);
  char *o = bt_proc_slurp(out_path);
  snprintf(ref.hash, sizeof ref.hash, "%s", last_line(o));
  free(o);
  truncate(out_path, 0);
  truncate(err_path, 0);
  char *run_argv[] = {(char *)bin, "run", "--no-progress", "--stages", "2", "--layers", "6", "--dim", "16",
                      "--mb-tokens", "16", "--steps", "150", "--hash", NULL};
  char plane_env[64];
  snprintf(plane_env, sizeof plane_env, "BATON_DATA_PLANE=%s", plane);
  char *env[] = {"BATON_LOG=debug", plane_env, NULL};
  pid = bt_proc_spawn(run_argv, env, out_path, err_path);
  char want[64];
  snprintf(want, sizeof want, "stage 1 ready at %s:", plane);
  cr_assert(bt_proc_wait_for_text(err_path, want, 30000), "no '%s' in the log", want);
  char *e = bt_proc_slurp(err_path);
  char addr[160];
  cr_assert_eq(sscanf(strstr(e, want) + strlen("stage 1 ready at "), "%159s", addr), 1);
  free(e);
  /* an intruder with no token: the worker must close it, not trust it */
  int fd = dial(addr);
  const char junk[] = "GET / HTTP/1.0\r\n\r\nnot a baton handshake, no token at all";
  cr_assert_eq(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
  cr_assert_eq(finish(pid, 60000), 0);
  close(fd);
  assert_contains(err_path, "transport: refused a connection from");
  char *out = bt_proc_slurp(out_path);
  cr_assert_str_eq(last_line(out), ref.hash);
  free(out);
}

Test(pipeline, data_port_without_the_token_is_refused_and_the_job_goes_on) { intruder_is_refused("tcp"); }

Test(pipeline, unix_data_port_without_the_token_is_refused_and_the_job_goes_on) {
  intruder_is_refused("unix");
}

/* BATON_DATA_BIND names the one host the data plane binds and advertises:
 * the workers listen on TCP there (not the default Unix sockets, which
 * other nodes could not reach; it wins over BATON_DATA_PLANE), peers dial
 * that address, and the job ends with baton train's hash. */
Test(pipeline, data_bind_makes_workers_listen_on_that_host_over_tcp) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "train", "--layers", "4", "--dim", "16", "--mb-tokens", "16", "--steps", "20",
                  "--hash", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 60000), 0);
  char *o = bt_proc_slurp(out_path);
  char want_hash[128];
  snprintf(want_hash, sizeof want_hash, "%s", last_line(o));
  free(o);
  truncate(out_path, 0);
  truncate(err_path, 0);
  char *run_argv[] = {(char *)bin, "run", "--no-progress", "--stages", "2", "--layers", "4", "--dim", "16",
                      "--mb-tokens", "16", "--steps", "20", "--hash", NULL};
  char *env[] = {"BATON_LOG=debug", "BATON_DATA_BIND=127.0.0.1", "BATON_DATA_PLANE=unix", NULL};
  pid = bt_proc_spawn(run_argv, env, out_path, err_path);
  cr_assert_eq(finish(pid, 60000), 0);
  for (int s = 0; s < 2; s++) {
    char want[64];
    snprintf(want, sizeof want, "stage %d ready at tcp:127.0.0.1:", s);
    assert_contains(err_path, want);
  }
  char *e = bt_proc_slurp(err_path);
  cr_assert_null(strstr(e, "ready at unix:"), "a worker listened on a Unix socket: %s", e);
  free(e);
  char *out = bt_proc_slurp(out_path);
  cr_assert_str_eq(last_line(out), want_hash);
  free(out);
}

Test(pipeline, data_bind_that_is_not_a_host_is_a_usage_error) {
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--no-progress", "--stages", "2", "--steps", "1", NULL};
  char *env[] = {"BATON_DATA_BIND=not a host", NULL};
  pid_t pid = bt_proc_spawn(argv, env, out_path, err_path);
  cr_assert_eq(finish(pid, 30000), 2);
  assert_contains(err_path, "BATON_DATA_BIND");
}
