/* test_faults.c - the fault-injection spec parser (common/fault.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"

Test(fault_spec, parses_every_kind_with_its_fields) {
  static const char *names[] = {"crash", "exit", "freeze", "hang", "slow", "ckpt-die", "ckpt-slow"};
  for (int k = 0; k < BT_FAULT_NKINDS_; k++) {
    char spec[64];
    snprintf(spec, sizeof spec, "%s@stage=%d,step=%d,action=%d", names[k], k, 10 + k, 2 * k);
    bt_fault_t f;
    char why[256] = "";
    cr_assert_eq(bt_fault_parse(spec, &f, why, sizeof why), 0, "%s: %s", spec, why);
    cr_assert_eq((int)f.kind, k, "%s: kind %d", spec, (int)f.kind);
    cr_assert_eq(f.stage, k);
    cr_assert_eq(f.step, 10 + k);
    cr_assert_eq(f.action, 2 * k);
    cr_assert_str_eq(bt_fault_kind_name(f.kind), names[k]);
  }
}

Test(fault_spec, defaults_and_kind_specific_fields) {
  bt_fault_t f;
  cr_assert_eq(bt_fault_parse("exit@step=3,stage=1,code=42", &f, NULL, 0), 0);
  cr_assert_eq(f.code, 42, "code %d", f.code);
  cr_assert_eq(f.action, 0);
  cr_assert_eq(bt_fault_parse("slow@stage=0,step=1,ms=250", &f, NULL, 0), 0);
  cr_assert_eq(f.ms, 250, "ms %d", f.ms);
  cr_assert_eq(bt_fault_parse("exit@stage=0,step=1", &f, NULL, 0), 0);
  cr_assert_eq(f.code, 1, "default code %d", f.code);
  cr_assert_eq(bt_fault_parse("ckpt-die@stage=0,step=1", &f, NULL, 0), 0);
  cr_assert_eq(f.at, BT_FAULT_AT_SNAPSHOT, "default at %d", f.at);
  cr_assert_eq(bt_fault_parse("ckpt-die@stage=0,step=1,at=write", &f, NULL, 0), 0);
  cr_assert_eq(f.at, BT_FAULT_AT_WRITE, "at %d", f.at);
  cr_assert_eq(bt_fault_parse("ckpt-slow@stage=0,step=1", &f, NULL, 0), 0);
  cr_assert_eq(f.ms, 2000, "ckpt-slow's default ms %d", f.ms);
  cr_assert_eq(bt_fault_parse("ckpt-die@stage=0,step=1,at=snapshot", &f, NULL, 0), 0);
  cr_assert_eq(f.at, BT_FAULT_AT_SNAPSHOT, "at %d", f.at);
}

Test(fault_spec, rejects_bad_specs_naming_the_problem) {
  struct { const char *spec, *needle; } bad[] = {
    {"explode@stage=0,step=1", "unknown kind 'explode'"},
    {"crash@stage=0,step=1,when=3", "unknown field 'when'"},
    {"crash@step=1", "stage= is required"},
    {"crash@stage=0", "step= is required"},
    {"crash@stage=-1,step=1", "bad value '-1' for stage"},
    {"crash@stage=0,step=0", "bad value '0' for step"},
    {"crash@stage=0,step=1x", "bad value '1x' for step"},
    {"crash@stage=0,step=1,code=3", "code= applies to exit only"},
    {"exit@stage=0,step=1,code=0", "bad value '0' for code"},
    {"crash@stage=0,step=1,ms=3", "ms= applies to slow and ckpt-slow only"},
    {"crash@stage=0,step=1,at=write", "at= applies to ckpt-die only"},
    {"ckpt-die@stage=0,step=1,at=flush", "bad value 'flush' for at"},
    {"crash@stage", "needs a value"},
    {"crash", "expected KIND@"},
    {"", "empty"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_fault_t f;
    char why[256] = "";
    cr_assert_eq(bt_fault_parse(bad[i].spec, &f, why, sizeof why), BT_EARG, "'%s' accepted",
                 bad[i].spec);
    cr_assert(strstr(why, bad[i].needle), "'%s': got '%s', want '%s'", bad[i].spec, why,
              bad[i].needle);
    cr_assert_null(strchr(why, '\n'), "multi-line reason '%s'", why);
  }
}

Test(fault_spec, format_round_trips) {
  const char *specs[] = {"crash@stage=2,step=7,action=5", "exit@stage=0,step=1,code=9",
                         "slow@stage=1,step=4,ms=30", "ckpt-die@stage=1,step=10",
                         "ckpt-die@stage=1,step=10,at=write"};
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
    bt_fault_t a, b;
    cr_assert_eq(bt_fault_parse(specs[i], &a, NULL, 0), 0);
    char buf[BT_FAULT_SPEC_MAX];
    int w = bt_fault_format(&a, buf, sizeof buf);
    cr_assert(w > 0 && (size_t)w < sizeof buf, "width %d", w);
    cr_assert_eq(bt_fault_parse(buf, &b, NULL, 0), 0, "'%s' does not parse back", buf);
    /* field by field: the struct has tail padding */
    cr_assert(a.kind == b.kind && a.stage == b.stage && a.step == b.step &&
                  a.action == b.action && a.code == b.code && a.ms == b.ms && a.at == b.at,
              "'%s' -> '%s' differs", specs[i], buf);
  }
}

Test(fault_spec, list_splits_on_semicolons) {
  bt_fault_t f[BT_FAULT_MAX];
  size_t n = 99;
  cr_assert_eq(bt_fault_parse_list("crash@stage=0,step=2;;hang@stage=1,step=3;", f,
                                   BT_FAULT_MAX, &n, NULL, 0), 0);
  cr_assert_eq(n, 2, "n %zu", n);
  cr_assert_eq(f[0].kind, BT_FAULT_CRASH);
  cr_assert_eq(f[1].kind, BT_FAULT_HANG);
  cr_assert_eq(f[1].stage, 1);
  cr_assert_eq(bt_fault_parse_list("", f, BT_FAULT_MAX, &n, NULL, 0), 0);
  cr_assert_eq(n, 0);
  char why[256] = "";
  cr_assert_eq(bt_fault_parse_list("crash@stage=0,step=1;crash@stage=0,step=2", f, 1, &n,
                                   why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "more than 1"), "why '%s'", why);
  cr_assert_eq(bt_fault_parse_list("crash@stage=0,step=1;bogus@stage=0,step=1", f,
                                   BT_FAULT_MAX, &n, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "bogus"), "why '%s'", why);
}

Test(fault_spec, check_against_the_job_shape) {
  bt_fault_t f;
  char why[256] = "";
  cr_assert_eq(bt_fault_parse("crash@stage=3,step=5", &f, NULL, 0), 0);
  cr_assert_eq(bt_fault_check(&f, 4, 5, why, sizeof why), 0, "%s", why);
  cr_assert_eq(bt_fault_check(&f, 3, 5, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "3 stages"), "why '%s'", why);
  cr_assert_eq(bt_fault_check(&f, 4, 4, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "last step 4"), "why '%s'", why);
}

/* ---- worker/faults.c: firing ---- */

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "worker/faults.h"

Test(fault_fire, keeps_only_its_stage) {
  bt_faults_t fs;
  char why[256] = "";
  cr_assert_eq(bt_faults_init(&fs, "crash@stage=0,step=2;slow@stage=1,step=3;hang@stage=1,step=4", 1, 100,
                              why, sizeof why), 0, "%s", why);
  cr_assert_eq(fs.n, 2, "n %zu", fs.n);
  cr_assert_eq(fs.f[0].kind, BT_FAULT_SLOW);
  cr_assert_eq(fs.f[1].kind, BT_FAULT_HANG);
  cr_assert_eq(bt_faults_init(&fs, "boom@stage=1,step=1", 1, 100, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "boom"), "why '%s'", why);
  cr_assert_eq(bt_faults_init(&fs, NULL, 0, 100, why, sizeof why), 0);
  cr_assert_eq(fs.n, 0);
}

/* Runs one action boundary in a child; returns its wait status. */
static int fire_in_child(const char *spec, int64_t step, int64_t action) {
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    bt_faults_t fs;
    if (bt_faults_init(&fs, spec, 0, 100, NULL, 0) < 0) _exit(100);
    bt_faults_action(&fs, step, action);
    _exit(0);
  }
  int st = 0;
  /* WUNTRACED: a frozen child reports as stopped */
  while (waitpid(pid, &st, WUNTRACED) < 0) cr_assert_eq(errno, EINTR);
  if (WIFSTOPPED(st)) {
    kill(pid, SIGKILL);
    int ignored;
    while (waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {
    }
  }
  return st;
}

Test(fault_fire, crash_exit_freeze_act_at_their_action) {
  int st = fire_in_child("crash@stage=0,step=3,action=2", 3, 2);
  cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "crash: status %#x", st);
  st = fire_in_child("exit@stage=0,step=3,action=2,code=42", 3, 2);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 42, "exit: status %#x", st);
  st = fire_in_child("freeze@stage=0,step=3,action=2", 3, 2);
  cr_assert(WIFSTOPPED(st) && WSTOPSIG(st) == SIGSTOP, "freeze: status %#x", st);
  /* an earlier action, another step: nothing fires */
  st = fire_in_child("crash@stage=0,step=3,action=2", 3, 1);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "early: status %#x", st);
  st = fire_in_child("crash@stage=0,step=3,action=2", 4, 5);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "other step: status %#x", st);
  /* an action index past the end fires at the optimizer boundary */
  st = fire_in_child("crash@stage=0,step=3,action=99", 3, 16);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "past the end, at action 16: status %#x", st);
  st = fire_in_child("crash@stage=0,step=3,action=99", 3, BT_FAULTS_END_OF_STEP);
  cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "past the end, end of step: status %#x", st);
}

Test(fault_fire, hang_blocks_the_next_send_once_with_a_deadline) {
  bt_faults_t fs;
  cr_assert_eq(bt_faults_init(&fs, "hang@stage=0,step=2,action=1", 0, 150, NULL, 0), 0);
  bt_faults_action(&fs, 2, 0);
  cr_assert_eq(bt_faults_before_send(&fs), 0, "fired before its action");
  bt_faults_action(&fs, 2, 1);
  double t0 = bt_clock_s();
  cr_assert_eq(bt_faults_before_send(&fs), BT_ETIMEOUT);
  double dt = bt_clock_s() - t0;
  cr_assert(dt >= 0.14, "hung only %.3f s", dt);
  cr_assert_eq(bt_faults_before_send(&fs), 0, "hung twice");
  bt_faults_action(&fs, 2, 1);
  cr_assert_eq(bt_faults_before_send(&fs), 0, "fired twice");
}

Test(fault_fire, slow_sleeps_before_every_later_action) {
  bt_faults_t fs;
  cr_assert_eq(bt_faults_init(&fs, "slow@stage=0,step=2,action=3,ms=30", 0, 100, NULL, 0), 0);
  double t0 = bt_clock_s();
  bt_faults_action(&fs, 2, 2);
  cr_assert(bt_clock_s() - t0 < 0.025, "slept before the fault");
  bt_faults_action(&fs, 2, 3);
  bt_faults_action(&fs, 3, 0);
  double dt = bt_clock_s() - t0;
  cr_assert(dt >= 0.058, "two slow actions took %.3f s", dt);
}

Test(fault_fire, ckpt_die_kills_halfway_through_the_snapshot) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    bt_faults_t fs;
    if (bt_faults_init(&fs, "ckpt-die@stage=0,step=5", 0, 100, NULL, 0) < 0) _exit(100);
    bt_faults_fill(&fs, 9, 10); /* not armed yet: survives */
    bt_faults_action(&fs, 5, 0);
    for (unsigned char i = 0; i < 10; i++) {
      /* tell the parent which tensor the snapshot is at */
      if (write(fds[1], &i, 1) != 1) _exit(101);
      bt_faults_fill(&fs, i, 10);
    }
    _exit(0);
  }
  close(fds[1]);
  unsigned char last = 255, b;
  ssize_t r;
  while ((r = read(fds[0], &b, 1)) == 1 || (r < 0 && errno == EINTR))
    if (r == 1) last = b;
  close(fds[0]);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) cr_assert_eq(errno, EINTR);
  cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %#x", st);
  cr_assert_eq(last, 5, "died at tensor %d of 10, expected 5", last);
}

/* ---- ckpt-die at=write: a torn shard on disk, never restored ---- */

#include <sys/stat.h>

#include "checkpoint/internal.h"
#include "tests/support/checkpoint_synth.h"

#define TEAR_LAYERS 40u

/* The child: fires ckpt-die at=write at step 10 and saves step 10 through
 * a writer whose hook is bt_faults_write, as the pipeline worker does.
 * It never returns: the fault kills it, or it exits with a code. */
static void tear_child(const char *root) {
  bt_faults_t fs;
  bt_ckpt_writer_t *w = NULL;
  ckpt_synth_t sy;
  if (bt_faults_init(&fs, "ckpt-die@stage=0,step=10,at=write", 0, 100, NULL, 0) < 0) _exit(100);
  bt_faults_write(&fs, 10, 39, 40); /* not fired yet: survives */
  bt_faults_action(&fs, 10, 0);
  bt_faults_write(&fs, 9, 39, 40);  /* an earlier step still being written: survives */
  bt_faults_write(&fs, 10, 0, 40);  /* less than half written: survives */
  if (ckpt_synth_make(&sy, 0, TEAR_LAYERS, TEAR_LAYERS, 7, 10, 1) < 0) _exit(101);
  if (bt_ckpt_writer_create(&w, root, NULL, NULL, NULL) < 0) _exit(102);
  bt_ckpt_writer_set_hook(w, bt_faults_write, &fs);
  bt_ckpt_meta_t m = ckpt_synth_meta(10, 0, 1, TEAR_LAYERS, 7);
  if (bt_ckpt_save_async(w, &m, sy.t, sy.n, 10000) < 0) _exit(103);
  bt_ckpt_result_t r;
  bt_ckpt_writer_wait(w, 10000, &r);
  _exit(104); /* the shard was written whole: the fault never fired */
}

Test(fault_fire, ckpt_die_at_write_leaves_a_torn_shard_that_is_never_restored) {
  char root[64], torn[256], whole[256], done[256];
  ckpt_synth_tmpdir(root, sizeof root);
  cr_assert(root[0], "mkdtemp failed");
  uint32_t bounds[] = {0, TEAR_LAYERS};
  cr_assert_eq(ckpt_synth_save_step(root, 5, TEAR_LAYERS, bounds, 1, 7, NULL), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) tear_child(root);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) cr_assert_eq(errno, EINTR);
  cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child status %#x (exit %d)", st,
            WIFEXITED(st) ? WEXITSTATUS(st) : -1);

  /* The torn file is there, holds part of the data, and is no shard. */
  snprintf(torn, sizeof torn, "%s/step-00000010.tmp/stage-000-of-001.h5.tmp", root);
  snprintf(whole, sizeof whole, "%s/step-00000005/stage-000-of-001.h5", root);
  snprintf(done, sizeof done, "%s/step-00000010.tmp/stage-000-of-001.h5", root);
  struct stat ts, ws;
  cr_assert_eq(stat(torn, &ts), 0, "no torn shard at %s", torn);
  cr_assert_eq(stat(whole, &ws), 0);
  cr_assert_gt(ts.st_size, 0, "the torn shard is empty");
  cr_assert_lt(ts.st_size, ws.st_size, "torn %lld bytes, a whole shard %lld", (long long)ts.st_size,
               (long long)ws.st_size);
  cr_assert_neq(access(done, F_OK), 0, "the torn shard was renamed into place");
  bt_ckpt_shard_t *sh = NULL;
  int rc = bt_ckpt_shard_open(torn, &sh);
  if (rc == 0) bt_ckpt_shard_close(sh);
  cr_assert_neq(rc, 0, "the torn shard opens as a shard");

  /* Restore takes the previous committed step; step 10 is not listed. */
  int64_t *steps = NULL;
  size_t n = 0;
  cr_assert_eq(bt_ckpt_list_steps(root, &steps, &n), 0);
  cr_assert_eq(n, 1, "%zu committed steps", n);
  cr_assert_eq(steps[0], 5, "committed step %lld", (long long)steps[0]);
  free(steps);
  ckpt_synth_t want;
  cr_assert_eq(ckpt_synth_empty(&want, 0, TEAR_LAYERS, TEAR_LAYERS, 1), 0);
  bt_ckpt_step_t cs;
  memset(&cs, 0, sizeof cs);
  cr_assert_eq(bt_ckpt_restore(root, want.t, want.n, &cs), 0);
  cr_assert_eq(cs.step, 5, "restored step %lld", (long long)cs.step);
  bt_ckpt_step_close(&cs);
  ckpt_synth_free(&want);
  bt_rm_rf(root);
}
