/* test_e2e_recovery.c - the supervisor's side of fault tolerance, end to end
 * (`baton run` with checkpoints, restarts, re-forming, preemption, a killed
 * supervisor). Every hash is compared with `baton train` of the same model
 * in the same test, never a stored value. The per-kind fault runs and the
 * random campaign are in test_e2e_faults.c.
 *
 * Runs are small (4 layers, dim 32, 32-token micro-batches) with short
 * timeouts (--heartbeat-timeout 1 --progress-timeout 2 --grace 1
 * --backoff 0.05), so each costs about a second plus its detection time.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

#define RUN_TIMEOUT_MS 90000

static bt_e2e_dirs_t e2e;
static char *const dir = e2e.dir, *const out_path = e2e.out, *const err_path = e2e.err,
                  *const events_path = e2e.events, *const ckpt_path = e2e.ckpt;

static void setup(void) { bt_e2e_setup(&e2e, "recovery"); }

static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(recovery, .init = setup, .fini = teardown, .timeout = 240);

static const char *const model[] = {"--layers", "4", "--dim", "32", "--mb-tokens", "32", NULL};
static const char *const quick[] = {"--heartbeat-timeout", "1", "--progress-timeout", "2", "--grace", "1",
                                    "--backoff", "0.05", "--no-progress", NULL};

/* argv of `baton CMD` + model flags + --steps N + the NULL-terminated lists. */
static int build_argv(char **argv, const char *cmd, int steps, const char *const *a, const char *const *b) {
  static char ssteps[8][16];
  static int slot;
  char *s = ssteps[slot++ % 8];
  snprintf(s, 16, "%d", steps);
  int k = 0;
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  argv[k++] = (char *)cmd;
  for (int i = 0; model[i]; i++) argv[k++] = (char *)model[i];
  argv[k++] = "--steps";
  argv[k++] = s;
  for (int i = 0; a && a[i]; i++) argv[k++] = (char *)a[i];
  for (int i = 0; b && b[i]; i++) argv[k++] = (char *)b[i];
  argv[k] = NULL;
  return k;
}

static char *slurp_or_empty(const char *path) {
  char *s = bt_proc_slurp(path);
  return s ? s : strdup("");
}

/* Runs argv to its end with fresh out/err files; returns the exit code. */
static int run_argv(char **argv, int timeout_ms) {
  int code = bt_e2e_run(&e2e, argv, NULL, NULL, timeout_ms);
  cr_assert_lt(code, 128, "%s %s died of signal %d", argv[0], argv[1], code - 128);
  return code;
}

/* Fails with the run's stderr when its exit code is not `want`. */
static void check_code(int got, int want) {
  if (got == want) return;
  static char msg[24576];
  char *e = slurp_or_empty(err_path);
  size_t n = strlen(e);
  snprintf(msg, sizeof msg, "%s", n > 24000 ? e + n - 24000 : e);
  free(e);
  cr_assert_fail("exit code %d, expected %d; stderr:\n%s", got, want, msg);
}

static void read_hash(char hex[33]) {
  char *out = slurp_or_empty(out_path);
  char *p = NULL;
  for (char *q = strstr(out, "hash "); q; q = strstr(q + 1, "hash "))
    if (q == out || q[-1] == '\n') p = q;
  static char msg[8192];
  snprintf(msg, sizeof msg, "%s", out);
  cr_assert_not_null(p, "no hash line in the output:\n%s", msg);
  memcpy(hex, p + 5, 32);
  hex[32] = 0;
  free(out);
  cr_assert_eq(strspn(hex, "0123456789abcdef"), 32, "bad hash '%s'", hex);
}

static void train_hash(int steps, char hex[33]) {
  char *argv[64];
  const char *h[] = {"--hash", NULL};
  build_argv(argv, "train", steps, h, NULL);
  cr_assert_eq(run_argv(argv, 60000), 0, "baton train failed");
  read_hash(hex);
}

static void assert_file_has(const char *path, const char *needle) {
  char *s = slurp_or_empty(path);
  static char msg[16384];
  snprintf(msg, sizeof msg, "%s", s);
  int yes = strstr(s, needle) != NULL;
  free(s);
  cr_assert(yes, "'%s' not in %s:\n%s", needle, path, msg);
}

static void assert_err_has(const char *needle) { assert_file_has(err_path, needle); }

/* `baton run` with checkpoints in ckpt_path, the quick timeouts, --hash,
 * the events file and `extra` (NULL-terminated). */
static int run_job(int steps, const char *const *extra) {
  char *argv[96];
  const char *sup[] = {"--ckpt-dir", ckpt_path, "--events", events_path, "--hash", NULL};
  int k = build_argv(argv, "run", steps, sup, quick);
  for (int i = 0; extra && extra[i]; i++) argv[k++] = (char *)extra[i];
  argv[k] = NULL;
  return run_argv(argv, RUN_TIMEOUT_MS);
}

static void assert_hash_is(const char *want) {
  char got[33];
  read_hash(got);
  cr_assert_str_eq(got, want, "hash %s, baton train gives %s", got, want);
}

/* ---- restart policy, with the fake worker ---- */

static int run_fake(const char *const *extra) {
  static char fake[512];
  snprintf(fake, sizeof fake, "%s/fake_worker", bt_e2e_env("BATON_HELPERS_DIR"));
  char *argv[64] = {(char *)bt_e2e_env("BATON_BIN"), "run", "--worker-cmd", fake,
                    "--steps", "20", "--events", events_path, "--no-progress", "--backoff", "0.05"};
  int k = 11;
  int has_stages = 0;
  for (int i = 0; extra[i] && strcmp(extra[i], "--"); i++) has_stages |= !strcmp(extra[i], "--stages");
  if (!has_stages) {
    argv[k++] = "--stages";
    argv[k++] = "2";
  }
  for (int i = 0; extra[i]; i++) argv[k++] = (char *)extra[i];
  argv[k] = NULL;
  return run_argv(argv, 30000);
}

Test(recovery, restart_budget_ends_the_job_with_its_code) {
  const char *extra[] = {"--max-restarts", "2", "--max-stalled-restarts", "9", "--", "--mode", "crash",
                         "--fail-stage", "1", "--at-step", "2", NULL};
  check_code(run_fake(extra), BT_EXIT_RESTARTS);
  assert_err_has("restart budget spent (2 restarts, --max-restarts 2)");
  assert_err_has("baton: summary: 3 failures, 2 restarts");
  assert_err_has("first failure (root cause): stage 1");
  assert_file_has(events_path, "\"event\":\"give_up\"");
  assert_file_has(events_path, "\"exit_code\":76");
}

Test(recovery, restarts_without_progress_trip_the_breaker) {
  const char *extra[] = {"--max-restarts", "10", "--max-stalled-restarts", "2", "--", "--mode", "crash",
                         "--fail-stage", "0", "--at-step", "3", NULL};
  check_code(run_fake(extra), BT_EXIT_NO_PROGRESS);
  assert_err_has("2 restarts in a row made no progress past step 2");
  assert_file_has(events_path, "\"exit_code\":77");
}

Test(recovery, without_a_checkpoint_dir_a_failure_ends_the_job) {
  const char *extra[] = {"--", "--mode", "crash", "--fail-stage", "1", "--at-step", "2", NULL};
  check_code(run_fake(extra), BT_EXIT_FAILED);
  assert_err_has("baton: stage 1 failed: killed by signal 6");
  char *e = slurp_or_empty(err_path);
  cr_assert_null(strstr(e, "restart 1"), "restarted without --ckpt-dir:\n%s", e);
  free(e);
}

Test(recovery, a_slot_that_must_retire_below_min_stages_ends_the_job_with_its_code) {
  const char *extra[] = {"--stages", "3", "--min-stages", "2", "--max-slot-failures", "1", "--max-restarts", "5",
                         "--", "--mode", "crash", "--fail-stage", "1", "--at-step", "2", NULL};
  /* stage 1 fails: re-form on 2 stages; stage 1 fails again: 1 < 2 */
  check_code(run_fake(extra), BT_EXIT_TOO_FEW);
  assert_err_has("re-forming on 2 stages");
  assert_err_has("below --min-stages 2");
  assert_file_has(events_path, "\"exit_code\":79");
}

Test(recovery, a_fatal_worker_code_is_not_restarted) {
  char ck[320];
  snprintf(ck, sizeof ck, "%s/fk", dir);
  const char *extra[] = {"--ckpt-dir", ck, "--", "--mode", "exit", "--code", "4", "--fail-stage", "0",
                         "--at-step", "2", NULL};
  check_code(run_fake(extra), BT_EXIT_FAILED);
  assert_err_has("stage 0 failed in a way a restart cannot fix");
  char *e = slurp_or_empty(err_path);
  cr_assert_null(strstr(e, "restart 1"), "a fatal code was restarted:\n%s", e);
  free(e);
}

Test(recovery, a_non_finite_worker_ends_the_job_with_its_code) {
  char ck[320];
  snprintf(ck, sizeof ck, "%s/nk", dir);
  const char *extra[] = {"--ckpt-dir", ck, "--", "--mode", "exit", "--code", "7", "--fail-stage", "1",
                         "--at-step", "2", NULL};
  check_code(run_fake(extra), BT_EXIT_NONFINITE);
  assert_err_has("non-finite loss or parameters");
}

static int count_of(const char *path, const char *needle) {
  char *s = slurp_or_empty(path);
  int n = 0;
  for (char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) n++;
  free(s);
  return n;
}

Test(recovery, faults_reach_the_first_incarnation_only_and_settings_every_one) {
  char ck[320];
  snprintf(ck, sizeof ck, "%s/ek", dir);
  const char *extra[] = {"--ckpt-dir", ck, "--ckpt-compress", "6", "--inject-fault", "crash@stage=1,step=20",
                         "--max-restarts", "1", "--progress-timeout", "2", "--", "--mode", "crash",
                         "--fail-stage", "1", "--at-step", "2", NULL};
  check_code(run_fake(extra), BT_EXIT_RESTARTS);
  /* two incarnations of two stages; the fault spec in the first only */
  cr_assert_eq(count_of(out_path, "env BATON_RESTART_COUNT=0\n"), 2);
  cr_assert_eq(count_of(out_path, "env BATON_RESTART_COUNT=1\n"), 2);
  cr_assert_eq(count_of(out_path, "env BATON_INJECT_FAULTS=crash@stage=1,step=20\n"), 2);
  cr_assert_eq(count_of(out_path, "env BATON_CKPT_COMPRESS=6\n"), 4);
  /* the transport deadline: 2 x progress timeout + max(1 s, half of it) */
  cr_assert_eq(count_of(out_path, "env BATON_PEER_TIMEOUT_MS=5000\n"), 4);
}

Test(recovery, bad_fault_specs_and_flags_are_refused_before_spawning) {
  const char *bad[][5] = {{"--inject-fault", "explode@stage=0,step=1", NULL},
                          {"--inject-fault", "crash@stage=5,step=1", NULL},
                          {"--inject-fault", "crash@stage=0,step=999", NULL},
                          {"--ckpt-every", "5", NULL},
                          {"--min-stages", "3", NULL},
                          {"--resume", "sometimes", NULL}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    check_code(run_fake(bad[i]), BT_EXIT_USAGE);
    char *e = slurp_or_empty(err_path);
    static char msg[4096];
    snprintf(msg, sizeof msg, "%s", e);
    cr_assert_null(strstr(e, "started stage"), "case %zu spawned:\n%s", i, msg);
    cr_assert_not_null(strstr(e, "baton run: "), "case %zu: %s", i, msg);
    free(e);
  }
}

Test(recovery, cuda_is_probed_before_spawning) {
  const char *extra[] = {"--backend", "cuda", NULL};
  int code = run_fake(extra);
  /* without a GPU: one line naming cuda, exit 2, nothing started; with one
   * the fake workers run and the job ends 0 */
  cr_assert(code == 0 || code == BT_EXIT_USAGE, "exit %d", code);
  if (code == BT_EXIT_USAGE) {
    char *e = slurp_or_empty(err_path);
    static char msg[4096];
    snprintf(msg, sizeof msg, "%s", e);
    cr_assert_null(strstr(e, "started stage"), "%s", msg);
    cr_assert_not_null(strstr(e, "cuda"), "%s", msg);
    char *nl = strchr(e, '\n');
    cr_assert(nl && nl[1] == 0, "not one line:\n%s", msg);
    free(e);
  }
}

Test(recovery, a_stage_past_the_preemption_step_moves_the_checkpoint_later) {
  static char fake[512], ck[320];
  snprintf(fake, sizeof fake, "%s/fake_worker", bt_e2e_env("BATON_HELPERS_DIR"));
  snprintf(ck, sizeof ck, "%s/pk", dir);
  char *argv[] = {(char *)bt_e2e_env("BATON_BIN"), "run", "--worker-cmd", fake, "--stages", "2", "--steps",
                  "100000", "--ckpt-dir", ck, "--events", events_path, "--no-progress", "--", "--mode",
                  "ckpt-late", "--fail-stage", "1", "--step-ms", "20", NULL};
  unlink(out_path);
  unlink(err_path);
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_gt(pid, 0);
  cr_assert(bt_proc_wait_for_text(err_path, "stages ready", 20000));
  bt_sleep_ms(300);
  kill(pid, SIGTERM);
  int st = 0;
  cr_assert_eq(bt_proc_wait(pid, 30000, &st), 0);
  check_code(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), BT_EXIT_PREEMPTED);
  /* stage 1 claimed to be past S: the step moves beyond it, and commits */
  assert_err_has("was past step");
  char *e = slurp_or_empty(err_path);
  long first = -1, moved = -1;
  char *p = strstr(e, "preemption: checkpoint at step ");
  if (p) first = strtol(p + strlen("preemption: checkpoint at step "), NULL, 10);
  p = strstr(e, "instead");
  char *q = strstr(e, ": checkpoint at step ");
  while (q && p && q < p) {
    moved = strtol(q + strlen(": checkpoint at step "), NULL, 10);
    q = strstr(q + 1, ": checkpoint at step ");
  }
  free(e);
  cr_assert(first > 0 && moved > first, "checkpoint step %ld, moved to %ld", first, moved);
  char want[128];
  snprintf(want, sizeof want, "\"step\":%ld,\"result\":\"committed\"", moved);
  assert_file_has(events_path, want);
  assert_file_has(events_path, "\"preemption\":1}");
}

/* ---- checkpoints and resuming, with the real worker ---- */

Test(recovery, rerun_of_a_finished_job_prints_its_hash_and_more_steps_extend_it) {
  char h10[33], h16[33];
  train_hash(10, h10);
  train_hash(16, h16);
  const char *pipe2[] = {"--stages", "2", "--chunks", "2", NULL};
  check_code(run_job(10, pipe2), 0);
  assert_hash_is(h10);
  /* the same command again: nothing spawned, the checkpoint's hash */
  check_code(run_job(10, pipe2), 0);
  assert_hash_is(h10);
  assert_err_has("already holds step 10: nothing to train");
  char *e = slurp_or_empty(err_path);
  cr_assert_null(strstr(e, "started stage"), "a finished job spawned workers:\n%s", e);
  free(e);
  /* more steps, on another stage count: resumes at 11 */
  const char *pipe3[] = {"--stages", "3", "--chunks", "1", NULL};
  check_code(run_job(16, pipe3), 0);
  assert_err_has("resuming from");
  assert_file_has(events_path, "\"first_step\":11,\"last_step\":16,\"restore_step\":10");
  assert_hash_is(h16);
}

Test(recovery, resume_from_a_step_directory_elsewhere_on_another_stage_count) {
  char h16[33];
  train_hash(16, h16);
  char other[320], step[400], pos[440];
  snprintf(other, sizeof other, "%s/other", dir);
  char *argv[96];
  const char *first[] = {"--ckpt-dir", other, "--stages", "2", "--chunks", "2", NULL};
  build_argv(argv, "run", 10, first, quick);
  check_code(run_argv(argv, RUN_TIMEOUT_MS), 0);
  snprintf(step, sizeof step, "%s/step-00000010", other);
  const char *extra[] = {"--stages", "3", "--resume", step, NULL};
  check_code(run_job(16, extra), 0);
  snprintf(pos, sizeof pos, "resuming from %s step 10", step);
  assert_err_has(pos);
  assert_hash_is(h16);
  /* not a step directory: one line, exit 2 */
  const char *bad[] = {"--stages", "2", "--resume", other, NULL};
  check_code(run_job(16, bad), BT_EXIT_USAGE);
  assert_err_has("not a committed checkpoint step");
}

Test(recovery, keep_and_keep_every_decide_what_stays) {
  const char *extra[] = {"--stages", "2", "--ckpt-every", "2", "--keep", "2", "--keep-every", "5", NULL};
  check_code(run_job(12, extra), 0);
  const int kept[] = {10, 12}, gone[] = {2, 4, 6, 8};
  char p[400];
  struct stat sb;
  for (int i = 0; i < 2; i++) {
    snprintf(p, sizeof p, "%s/step-%08d", ckpt_path, kept[i]);
    cr_assert_eq(stat(p, &sb), 0, "%s was removed", p);
  }
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/step-%08d", ckpt_path, gone[i]);
    cr_assert_neq(stat(p, &sb), 0, "%s was kept", p);
  }
}

Test(recovery, a_model_flag_that_differs_from_the_checkpoint_is_refused) {
  const char *pipe2[] = {"--stages", "2", NULL};
  check_code(run_job(4, pipe2), 0);
  char *argv[96];
  const char *sup[] = {"--ckpt-dir", ckpt_path, "--stages", "2", "--dim", "48", "--steps", "8", NULL};
  build_argv(argv, "run", 8, sup, quick);
  cr_assert_eq(run_argv(argv, 30000), BT_EXIT_USAGE);
  assert_err_has("holds another model: --dim: the checkpoint has 32, the command line says 48");
}

/* Damages the shard of stage 0 of committed step `step`. */
static void damage_shard(int step, int truncate_it) {
  char path[512];
  snprintf(path, sizeof path, "%s/step-%08d/stage-000-of-002.h5", ckpt_path, step);
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0, "%s: %s", path, strerror(errno));
  if (truncate_it) {
    cr_assert_eq(truncate(path, sb.st_size / 2), 0);
    return;
  }
  int fd = open(path, O_RDWR);
  cr_assert_geq(fd, 0);
  off_t at = sb.st_size * 3 / 4;
  unsigned char c;
  cr_assert_eq(pread(fd, &c, 1, at), 1);
  c ^= 0x10;
  cr_assert_eq(pwrite(fd, &c, 1, at), 1);
  close(fd);
}

static void corrupt_newest_falls_back(int truncate_it) {
  char h20[33];
  train_hash(20, h20);
  const char *first[] = {"--stages", "2", "--chunks", "2", "--ckpt-every", "5", "--keep", "3", NULL};
  check_code(run_job(15, first), 0);
  damage_shard(15, truncate_it);
  const char *again[] = {"--stages", "2", "--chunks", "2", "--ckpt-every", "5", NULL};
  check_code(run_job(20, again), 0);
  assert_err_has("skipping");
  assert_err_has("step-00000015");
  assert_err_has("resuming from");
  assert_file_has(events_path, "\"restore_step\":10");
  assert_hash_is(h20);
}

Test(recovery, a_bit_flip_in_the_newest_checkpoint_falls_back_to_the_previous) { corrupt_newest_falls_back(0); }

Test(recovery, a_truncated_newest_checkpoint_falls_back_to_the_previous) { corrupt_newest_falls_back(1); }

Test(recovery, a_crash_before_the_first_checkpoint_restarts_from_step_0_and_logs_the_account) {
  char h[33];
  train_hash(20, h);
  const char *extra[] = {"--stages", "2", "--chunks", "2", "--ckpt-every", "10", "--inject-fault",
                         "crash@stage=1,step=4", NULL};
  check_code(run_job(20, extra), 0);
  assert_hash_is(h);
  assert_err_has("restart 1 of at most 10 in 0.05 s, from step 0 (no checkpoint yet)");
  assert_err_has("baton: summary: 1 failure, 1 restart");
  assert_err_has("first failure (root cause): stage 1");
  /* the account: failure, restart (detect, stop, steps lost), recovered
   * (restore, first step after), commits */
  assert_file_has(events_path, "{\"event\":\"failure\",");
  assert_file_has(events_path, "\"event\":\"restart\",");
  assert_file_has(events_path, "\"restore_step\":0,\"steps_lost\":");
  assert_file_has(events_path, "\"detect_s\":");
  assert_file_has(events_path, "\"stop_s\":");
  assert_file_has(events_path, "{\"event\":\"recovered\",");
  assert_file_has(events_path, "\"restore_s\":");
  assert_file_has(events_path, "\"first_step_s\":");
  assert_file_has(events_path, "{\"event\":\"checkpoint\",");
  assert_file_has(events_path, "\"step\":20,\"result\":\"committed\"");
}

Test(recovery, a_reform_from_4_stages_to_3_keeps_the_hash) {
  char h[33];
  train_hash(20, h);
  const char *extra[] = {"--stages", "4", "--min-stages", "3", "--max-slot-failures", "1", "--ckpt-every", "5",
                         "--inject-fault", "crash@stage=2,step=8", NULL};
  check_code(run_job(20, extra), 0);
  assert_hash_is(h);
  assert_err_has("re-forming on 3 stages");
  assert_file_has(events_path, "\"event\":\"reform\",");
  assert_file_has(events_path, "\"stages\":3,\"retired_stage\":2");
  assert_file_has(events_path, "\"ready\",\"time_s\"");
}

Test(recovery, a_hang_names_the_hung_stage_not_its_neighbour) {
  char h[33];
  train_hash(16, h);
  const char *extra[] = {"--stages", "3", "--chunks", "2", "--ckpt-every", "5", "--inject-fault",
                         "hang@stage=1,step=7,action=3", NULL};
  check_code(run_job(16, extra), 0);
  assert_hash_is(h);
  assert_err_has("hang: no progress");
  assert_err_has("   <- hung");
  char *e = slurp_or_empty(err_path);
  char *mark = strstr(e, "   <- hung");
  cr_assert_not_null(mark);
  char *line = mark;
  while (line > e && line[-1] != '\n') line--;
  static char msg[16384];
  snprintf(msg, sizeof msg, "%s", e);
  cr_assert(strstr(line, "stage 1: step") != NULL && strstr(line, "stage 1: step") < mark,
            "the hung stage is not stage 1:\n%s", msg);
  cr_assert_not_null(strstr(e, "baton:   1. stage 1 "), "%s", msg);
  free(e);
  assert_file_has(events_path, "{\"event\":\"hang\",");
  assert_file_has(events_path, "\"root_stage\":1,");
}

/* ---- signals ---- */

/* Starts a slow run (an injected `slow` fault on stage 0 makes its steps
 * take about 0.3 s) and waits for its first checkpoint. */
static pid_t start_slow_job(pid_t *workers, int nworkers) {
  char *argv[96];
  const char *sup[] = {"--ckpt-dir", ckpt_path, "--events", events_path, "--hash", "--stages", "2", "--chunks",
                       "2", "--ckpt-every", "5", "--inject-fault", "slow@stage=0,step=1,ms=15", NULL};
  build_argv(argv, "run", 40, sup, quick);
  unlink(out_path);
  unlink(err_path);
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_gt(pid, 0);
  cr_assert(bt_proc_wait_for_text(events_path, "\"step\":5,\"result\":\"committed\"", 30000),
            "no checkpoint of step 5");
  cr_assert_eq(bt_proc_worker_pids(err_path, workers, nworkers), nworkers);
  return pid;
}

Test(recovery, preemption_by_sigterm_to_every_process_then_a_rerun_keeps_the_hash) {
  char h[33];
  train_hash(40, h);
  pid_t w[2];
  pid_t pid = start_slow_job(w, 2);
  /* as a scheduler does: every process of the job at once */
  kill(pid, SIGTERM);
  kill(w[0], SIGTERM);
  kill(w[1], SIGTERM);
  int st = 0;
  cr_assert_eq(bt_proc_wait(pid, 30000, &st), 0, "the preempted job did not end");
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == BT_EXIT_PREEMPTED, "status %#x", st);
  assert_err_has("preemption: checkpoint at step");
  assert_file_has(events_path, "{\"event\":\"preemption\",");
  assert_file_has(events_path, "\"preemption\":1}");
  cr_assert(bt_proc_wait_gone(w[0], 2000) && bt_proc_wait_gone(w[1], 2000), "a worker outlived the job");
  const char *again[] = {"--stages", "2", "--chunks", "2", "--ckpt-every", "5", NULL};
  check_code(run_job(40, again), 0);
  assert_err_has("resuming from");
  assert_hash_is(h);
}

Test(recovery, sigkill_of_the_supervisor_leaves_no_process_and_a_rerun_keeps_the_hash) {
  char h[33];
  train_hash(40, h);
  pid_t w[2];
  pid_t pid = start_slow_job(w, 2);
  double t0 = bt_clock_s();
  kill(pid, SIGKILL);
  int st = 0;
  cr_assert_eq(bt_proc_wait(pid, 5000, &st), 0);
  cr_assert(bt_proc_wait_gone(w[0], 2000) && bt_proc_wait_gone(w[1], 2000),
            "a worker still runs %.2f s after the supervisor's SIGKILL", bt_clock_s() - t0);
  const char *again[] = {"--stages", "2", "--chunks", "2", "--ckpt-every", "5", NULL};
  check_code(run_job(40, again), 0);
  assert_err_has("resuming from");
  assert_hash_is(h);
}
