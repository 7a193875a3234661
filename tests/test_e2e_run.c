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

#include "common/clock.h"
#include "common/hash.h"
#include "tests/support/proc.h"

static char dir[256];
static char out_path[300], err_path[300];

static void setup(void) {
  bt_proc_init();
  snprintf(dir, sizeof dir, "/tmp/bt_e2e_run_XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(out_path, sizeof out_path, "%s/out", dir);
  snprintf(err_path, sizeof err_path, "%s/err", dir);
}

static void teardown(void) {
  bt_proc_cleanup();
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

TestSuite(run, .init = setup, .fini = teardown, .timeout = 120);

static const char *env_or_skip(const char *name) {
  const char *v = getenv(name);
  if (!v) cr_skip_test("%s is not set (run through ctest)", name);
  return v;
}

static char fake_path[512];

/* Starts `baton run --worker-cmd fake_worker ARGS…` (args NULL-terminated). */
static pid_t start_run(const char *const *args) {
  const char *bin = env_or_skip("BATON_BIN");
  snprintf(fake_path, sizeof fake_path, "%s/fake_worker", env_or_skip("BATON_HELPERS_DIR"));
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
  char *err = bt_proc_slurp(err_path);
  cr_assert_eq(rc, 0, "baton run did not end within %d ms; stderr:\n%s", timeout_ms, err ? err : "");
  free(err);
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
  const char *args[] = {"--stages", "2", "--steps", "1", "--ckpt-dir", "/nonexistent/ck", NULL};
  char *extra[] = {"BATON_FAKE_MARKER=kept", "RANK=99", NULL};
  const char *bin = env_or_skip("BATON_BIN");
  snprintf(fake_path, sizeof fake_path, "%s/fake_worker", env_or_skip("BATON_HELPERS_DIR"));
  char *argv[16] = {(char *)bin, "run", "--worker-cmd", fake_path};
  int k = 4;
  for (int i = 0; args[i]; i++) argv[k++] = (char *)args[i];
  argv[k] = NULL;
  pid_t pid = bt_proc_spawn(argv, extra, out_path, err_path);
  cr_assert_gt(pid, 0);
  cr_assert_eq(finish(pid, 30000), 0);
  char want[128];
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
    snprintf(want, sizeof want, "[stage %d] env BATON_CKPT_DIR=/nonexistent/ck\n", s);
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
  const char *args[] = {"--stages", "3", "--steps", "20", "--no-progress", "--", "--mode", "crash",
                        "--fail-stage", "1", "--at-step", "2", NULL};
  cr_assert_eq(run_to_end(args, 30000), 1);
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
  assert_contains(err_path, "at step 3 (killed)");
  assert_workers_gone(3, 2000);
}

Test(run, sigint_stops_cleanly_and_leaves_no_process) {
  const char *args[] = {"--stages", "3", "--steps", "100000", "--no-progress", NULL};
  pid_t pid = start_run(args);
  cr_assert(bt_proc_wait_for_text(err_path, "training", 20000));
  bt_sleep_ms(200);
  kill(pid, SIGINT);
  cr_assert_eq(finish(pid, 20000), 130);
  assert_contains(err_path, "stopping (after step");
  assert_contains(err_path, "fake stage 0: stopping after step");
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
  const char *bin = env_or_skip("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--stages", "2", "--worker-cmd", "/nonexistent/worker", NULL};
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_eq(finish(pid, 10000), 1);
  assert_contains(err_path, "cannot start stage 0");
}
