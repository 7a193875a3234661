/* test_faults.c - the fault-injection spec parser (common/fault.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"

Test(fault_spec, parses_every_kind_with_its_fields) {
  static const char *names[] = {"crash", "exit", "freeze", "hang", "slow", "ckpt-die"};
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
    {"crash@stage=0,step=1,ms=3", "ms= applies to slow only"},
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
                         "slow@stage=1,step=4,ms=30", "ckpt-die@stage=1,step=10"};
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
    bt_fault_t a, b;
    cr_assert_eq(bt_fault_parse(specs[i], &a, NULL, 0), 0);
    char buf[BT_FAULT_SPEC_MAX];
    int w = bt_fault_format(&a, buf, sizeof buf);
    cr_assert(w > 0 && (size_t)w < sizeof buf, "width %d", w);
    cr_assert_eq(bt_fault_parse(buf, &b, NULL, 0), 0, "'%s' does not parse back", buf);
    /* field by field: the struct has tail padding */
    cr_assert(a.kind == b.kind && a.stage == b.stage && a.step == b.step &&
                  a.action == b.action && a.code == b.code && a.ms == b.ms,
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
