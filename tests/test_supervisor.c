/* test_supervisor.c - the worker's control channel (worker/control.c) over a
 * socketpair, and the supervisor (launcher/supervisor.c) run in-process
 * with the fake worker. Signals and SIGKILL of the supervisor are tested end
 * to end in test_e2e_run.c, where the supervisor is a process of its own.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/frame.h"
#include "common/exitcodes.h"
#include "launcher/recovery.h"
#include "launcher/supervisor.h"
#include "schedules/csv.h"
#include "schedules/plan.h"
#include "worker/control.h"

Test(control, exit_codes_match_the_supervisors_mirror) {
  cr_assert_eq(BT_WEXIT_DONE, BT_SUP_WEXIT_DONE);
  cr_assert_eq(BT_WEXIT_ERROR, BT_SUP_WEXIT_ERROR);
  cr_assert_eq(BT_WEXIT_USAGE, BT_SUP_WEXIT_USAGE);
  cr_assert_eq(BT_WEXIT_RETRY, BT_SUP_WEXIT_RETRY);
  cr_assert_eq(BT_WEXIT_FATAL, BT_SUP_WEXIT_FATAL);
  cr_assert_eq(BT_WEXIT_STOPPED, BT_SUP_WEXIT_STOPPED);
  cr_assert_eq(BT_WEXIT_ORPHAN, BT_SUP_WEXIT_ORPHAN);
}

Test(control, env_requires_the_supervisor_variables) {
  bt_control_env_t e;
  unsetenv("BATON_CONTROL_FD");
  setenv("BATON_SUPERVISOR_PID", "1", 1);
  setenv("BATON_STAGES", "2", 1);
  setenv("BATON_STAGE", "1", 1);
  cr_assert_eq(bt_control_env(&e), BT_EARG);
  setenv("BATON_CONTROL_FD", "3", 1);
  cr_assert_eq(bt_control_env(&e), 0);
  cr_assert_eq(e.fd, 3);
  cr_assert_eq(e.stage, 1);
  cr_assert_eq(e.heartbeat_ms, 1000);
  setenv("BATON_STAGE", "2", 1); /* stage must be below the stage count */
  cr_assert_eq(bt_control_env(&e), BT_EARG);
  setenv("BATON_STAGE", "1", 1);
  setenv("BATON_HEARTBEAT_MS", "10x", 1);
  cr_assert_eq(bt_control_env(&e), BT_EARG);
}

Test(control, guard_refuses_a_parent_that_is_not_the_supervisor) {
  char pid[32];
  snprintf(pid, sizeof pid, "%d", (int)getppid() + 100000);
  setenv("BATON_SUPERVISOR_PID", pid, 1);
  cr_assert_eq(bt_control_guard(), BT_EPEER);
  unsetenv("BATON_SUPERVISOR_PID");
  cr_assert_eq(bt_control_guard(), BT_EARG);
}

/* Reads frames from fd until one of `type` arrives (or the deadline). */
static int read_until(int fd, uint16_t type, uint8_t *buf, size_t cap, size_t *len, bt_frame_t *f,
                      int timeout_ms) {
  uint64_t deadline = bt_deadline_ms(timeout_ms);
  for (;;) {
    long n;
    while ((n = bt_frame_parse(buf, *len, f)) > 0) {
      int match = f->type == type;
      if (match) {
        /* keep the frame at the buffer's start until the caller decodes it */
        return (int)n;
      }
      memmove(buf, buf + n, *len - (size_t)n);
      *len -= (size_t)n;
    }
    if (n < 0) return (int)n;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)bt_ms_left(deadline));
    if (r == 0) return BT_ETIMEOUT;
    ssize_t k = read(fd, buf + *len, cap - *len);
    if (k <= 0) return BT_EPEER;
    *len += (size_t)k;
  }
}

static void consume(uint8_t *buf, size_t *len, int n) {
  memmove(buf, buf + n, *len - (size_t)n);
  *len -= (size_t)n;
}

Test(control, hello_heartbeats_start_stop_over_a_socketpair) {
  int sv[2];
  cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  bt_control_env_t e = {.fd = sv[1], .stage = 2, .nstages = 3, .chunks = 1, .heartbeat_ms = 20};
  bt_control_t *c = NULL;
  cr_assert_eq(bt_control_open(&c, &e), 0);
  static uint8_t buf[1 << 21];
  size_t len = 0;
  bt_frame_t f;
  int n = read_until(sv[0], BT_MSG_HELLO, buf, sizeof buf, &len, &f, 2000);
  cr_assert_gt(n, 0);
  bt_msg_hello_t hello;
  cr_assert_eq(bt_msg_decode_hello(&f, &hello), 0);
  cr_assert_eq(hello.stage, 2);
  cr_assert_eq(hello.pid, getpid());
  consume(buf, &len, n);

  /* the thread beats on its own while the "main thread" does nothing */
  bt_control_progress(c, 7, 3, BT_PHASE_WAIT);
  bt_control_action_done(c);
  bt_control_action_done(c);
  bt_msg_heartbeat_t hb = {0};
  for (int tries = 0; tries < 10 && hb.step != 7; tries++) {
    n = read_until(sv[0], BT_MSG_HEARTBEAT, buf, sizeof buf, &len, &f, 2000);
    cr_assert_gt(n, 0);
    cr_assert_eq(bt_msg_decode_heartbeat(&f, &hb), 0);
    consume(buf, &len, n);
  }
  cr_assert_eq(hb.step, 7);
  cr_assert_eq(hb.action, 3);
  cr_assert_eq(hb.phase, BT_PHASE_WAIT);
  cr_assert_eq(hb.actions_done, 2);

  cr_assert_eq(bt_control_send_ready(c, "tcp:127.0.0.1:5"), 0);
  n = read_until(sv[0], BT_MSG_READY, buf, sizeof buf, &len, &f, 2000);
  cr_assert_gt(n, 0);
  bt_msg_ready_t ready;
  cr_assert_eq(bt_msg_decode_ready(&f, &ready), 0);
  cr_assert_str_eq(ready.addr, "tcp:127.0.0.1:5");
  consume(buf, &len, n);

  /* no START yet: a bounded wait */
  bt_msg_start_t *st = calloc(1, sizeof *st);
  cr_assert_eq(bt_control_wait_start(c, st, bt_deadline_ms(50)), BT_ETIMEOUT);
  bt_msg_start_t *sent = calloc(1, sizeof *sent);
  sent->nstages = 3;
  sent->first_step = 4;
  sent->last_step = 9;
  snprintf(sent->addrs[1], BT_ADDR_MAX, "tcp:127.0.0.1:77");
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_encode_start(&b, sent);
  bt_msg_step_t stop = {.step = 6};
  bt_msg_encode_step(&b, BT_MSG_STOP, &stop);
  bt_msg_step_t ck = {.step = 5};
  bt_msg_encode_step(&b, BT_MSG_CKPT_AT, &ck);
  cr_assert_eq(write(sv[0], b.data, b.len), (ssize_t)b.len);
  bt_buf_free(&b);
  cr_assert_eq(bt_control_wait_start(c, st, bt_deadline_ms(2000)), 0);
  cr_assert_eq(st->first_step, 4);
  cr_assert_eq(st->last_step, 9);
  cr_assert_str_eq(st->addrs[1], "tcp:127.0.0.1:77");
  uint64_t deadline = bt_deadline_ms(2000);
  while ((bt_control_stop_step(c) < 0 || bt_control_ckpt_step(c) < 0) && bt_ms_left(deadline) > 0) bt_sleep_ms(5);
  cr_assert_eq(bt_control_stop_step(c), 6);
  cr_assert_eq(bt_control_ckpt_step(c), 5);
  free(st);
  free(sent);
  bt_control_close(c);
  close(sv[0]);
}

Test(control, abort_ends_the_process_at_once) {
  int sv[2];
  cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    close(sv[0]);
    bt_control_env_t e = {.fd = sv[1], .stage = 0, .nstages = 1, .chunks = 1, .heartbeat_ms = 1000};
    bt_control_t *c = NULL;
    if (bt_control_open(&c, &e) < 0) _exit(99);
    for (;;) bt_sleep_ms(1000); /* "busy" in a long wait: only ABORT ends it */
  }
  close(sv[1]);
  bt_buf_t b;
  bt_buf_init(&b);
  bt_msg_encode_empty(&b, BT_MSG_ABORT);
  cr_assert_eq(write(sv[0], b.data, b.len), (ssize_t)b.len);
  bt_buf_free(&b);
  int st = 0;
  uint64_t deadline = bt_deadline_ms(5000);
  pid_t r;
  while ((r = waitpid(pid, &st, WNOHANG)) == 0 && bt_ms_left(deadline) > 0) bt_sleep_ms(5);
  if (r == 0) kill(pid, SIGKILL);
  cr_assert_eq(r, pid, "ABORT did not end the worker");
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), BT_WEXIT_STOPPED);
  close(sv[0]);
}

Test(control, closed_channel_makes_the_worker_exit_as_orphan) {
  int sv[2];
  cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    close(sv[0]);
    bt_control_env_t e = {.fd = sv[1], .stage = 0, .nstages = 1, .chunks = 1, .heartbeat_ms = 1000};
    bt_control_t *c = NULL;
    if (bt_control_open(&c, &e) < 0) _exit(99);
    for (;;) bt_sleep_ms(1000);
  }
  close(sv[1]);
  /* after HELLO, so the worker is past bt_control_open when the channel goes */
  static uint8_t buf[1 << 16];
  size_t len = 0;
  bt_frame_t f;
  cr_assert_gt(read_until(sv[0], BT_MSG_HELLO, buf, sizeof buf, &len, &f, 5000), 0);
  close(sv[0]);
  int st = 0;
  uint64_t deadline = bt_deadline_ms(5000);
  pid_t r;
  while ((r = waitpid(pid, &st, WNOHANG)) == 0 && bt_ms_left(deadline) > 0) bt_sleep_ms(5);
  if (r == 0) kill(pid, SIGKILL);
  cr_assert_eq(r, pid);
  cr_assert(WIFEXITED(st));
  cr_assert_eq(WEXITSTATUS(st), BT_WEXIT_ORPHAN);
}

Test(supervisor, rejects_bad_options) {
  bt_sup_opts_t o;
  bt_sup_result_t r;
  bt_sup_opts_default(&o);
  cr_assert_eq(bt_supervisor_run(&o, &r), BT_EARG, "no worker command");
  char *argv[] = {"/bin/true", NULL};
  o.worker_argv = argv;
  o.nstages = 0;
  cr_assert_eq(bt_supervisor_run(&o, &r), BT_EARG);
  o.nstages = 2;
  o.heartbeat_timeout_s = 0;
  cr_assert_eq(bt_supervisor_run(&o, &r), BT_EARG);
}

Test(supervisor, defaults_are_the_documented_ones) {
  bt_sup_opts_t o;
  bt_sup_opts_default(&o);
  cr_assert_eq(o.grace_s, 5.0);
  cr_assert_eq(o.heartbeat_timeout_s, 2.0);
  cr_assert_eq(o.progress_timeout_s, 5.0);
  cr_assert_eq(o.start_timeout_s, 120.0);
}

static char fake[512];

static void fake_opts(bt_sup_opts_t *o, char **argv) {
  const char *dir = getenv("BATON_HELPERS_DIR");
  if (!dir) cr_skip_test("BATON_HELPERS_DIR is not set (run through ctest)");
  snprintf(fake, sizeof fake, "%s/fake_worker", dir);
  argv[0] = fake;
  bt_sup_opts_default(o);
  o->worker_argv = argv;
  o->progress = 0;
}

Test(supervisor, in_process_run_collects_hashes_from_every_stage) {
  char *argv[] = {NULL, NULL};
  bt_sup_opts_t o;
  fake_opts(&o, argv);
  o.nstages = 2;
  o.last_step = 3;
  o.want_hash = 1;
  bt_sup_result_t r;
  cr_assert_eq(bt_supervisor_run(&o, &r), 0);
  cr_assert_eq(r.exit_code, BT_SUP_EXIT_OK, "reason: %s", r.reason);
  cr_assert_eq(r.failed_stage, -1);
  cr_assert_eq(r.steps_done, 3);
  cr_assert(r.have_hash);
  /* the fake worker's records, recomputed (see fake_worker.c) */
  bt_hash_rec_t recs[4];
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < 2; i++) {
      float data[4] = {(float)s, 3.0f, (float)i, 0.5f};
      bt_hash_rec_t *x = &recs[2 * s + i];
      x->layer = (uint32_t)(2 * s + i);
      x->index = 0;
      snprintf(x->name, sizeof x->name, "w");
      x->h = bt_hash_tensor(data, 4);
    }
  bt_hash128_t want;
  cr_assert_eq(bt_hash_combine(recs, 4, &want), 0);
  cr_assert_eq(r.hash.hi, want.hi);
  cr_assert_eq(r.hash.lo, want.lo);
}

Test(supervisor, in_process_failure_names_the_root_cause) {
  char *argv[] = {NULL, "--mode", "exit", "--fail-stage", "1", "--code", "4", NULL};
  bt_sup_opts_t o;
  fake_opts(&o, argv);
  o.nstages = 3;
  o.last_step = 50;
  bt_sup_result_t r;
  cr_assert_eq(bt_supervisor_run(&o, &r), 0);
  cr_assert_eq(r.exit_code, BT_SUP_EXIT_FAILED);
  cr_assert_eq(r.failed_stage, 1);
  cr_assert_not_null(strstr(r.reason, "exited with code 4"), "%s", r.reason);
}

Test(supervisor, slow_start_past_the_start_timeout_fails) {
  char *argv[] = {NULL, "--mode", "slow-start", "--fail-stage", "0", "--start-ms", "20000", NULL};
  bt_sup_opts_t o;
  fake_opts(&o, argv);
  o.nstages = 2;
  o.start_timeout_s = 0.3;
  bt_sup_result_t r;
  uint64_t t0 = bt_clock_ns();
  cr_assert_eq(bt_supervisor_run(&o, &r), 0);
  cr_assert_eq(r.exit_code, BT_SUP_EXIT_FAILED);
  cr_assert_eq(r.failed_stage, 0);
  cr_assert_not_null(strstr(r.reason, "start-up timeout"), "%s", r.reason);
  cr_assert_lt(bt_clock_ns() - t0, 10ull * 1000000000ull, "took over 10 s");
}

/* ---------- planning: launcher/plan.c and its copy in worker/pipeline.c ---------- */

static void small_config(bt_config_t *c, int stages, int chunks, int mb, const char *schedule) {
  bt_config_defaults(c);
  c->model.layers = 6;
  c->model.microbatches = mb;
  c->run.stages = stages;
  c->run.chunks = chunks;
  snprintf(c->run.schedule, sizeof c->run.schedule, "%s", schedule);
}

static void same_schedule(const bt_schedule_t *a, const bt_schedule_t *b, size_t i) {
  cr_assert_eq(a->p, b->p, "case %zu", i);
  cr_assert_eq(a->v, b->v, "case %zu", i);
  cr_assert_eq(a->m, b->m, "case %zu", i);
  for (int w = 0; w <= a->p; w++) cr_assert_eq(a->off[w], b->off[w], "case %zu worker %d", i, w);
  cr_assert_eq(memcmp(a->acts, b->acts, a->off[a->p] * sizeof *a->acts), 0, "case %zu: schedules differ", i);
}

/* A fresh CSV file to write, open; its path goes to path. */
static FILE *new_csv(char *path, size_t len) {
  const char *dir = getenv("TMPDIR");
  snprintf(path, len, "%s/bt_plan_XXXXXX.csv", dir && dir[0] ? dir : "/tmp");
  int fd = mkstemps(path, 4);
  cr_assert_geq(fd, 0, "mkstemps %s: %s", path, strerror(errno));
  FILE *f = fdopen(fd, "w");
  cr_assert_not_null(f);
  return f;
}

/* The one plan that the supervisor checks and every worker rebuilds
 * (schedules/plan.c): the layers of the virtual stages are contiguous,
 * non-empty, and end at the head (L+1); a builder name gives the builder's
 * schedule, and the same schedule read back from CSV gives it again. */
Test(plan, one_plan_from_a_builder_or_its_csv) {
  const struct {
    int p, v, m;
    const char *sched, *layout;
  } cases[] = {{1, 1, 4, "1f1b", ""},   {2, 1, 5, "gpipe", ""},       {3, 1, 4, "zb-h1", "1,5,2"},
               {2, 2, 5, "interleaved", ""}, {4, 2, 4, "interleaved", ""}, {2, 2, 3, "interleaved", "1,2,4,1"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bt_config_t c;
    small_config(&c, cases[i].p, cases[i].v, cases[i].m, cases[i].sched);
    snprintf(c.run.layout, sizeof c.run.layout, "%s", cases[i].layout);
    char err[512];
    int nv = cases[i].p * cases[i].v, first[16], last[16];
    cr_assert_eq(bt_plan_layout(&c, first, last, err, sizeof err), 0, "case %zu: %s", i, err);
    cr_assert_eq(first[0], 0);
    cr_assert_eq(last[nv - 1], 7, "case %zu: the layers end at L+1", i);
    for (int k = 0; k < nv; k++) {
      cr_assert_leq(first[k], last[k], "case %zu: virtual stage %d is empty", i, k);
      if (k) cr_assert_eq(first[k], last[k - 1] + 1, "case %zu: not contiguous at %d", i, k);
    }
    if (cases[i].layout[0]) cr_assert_eq(last[0] - first[0] + 1, cases[i].layout[0] - '0', "case %zu: --layout", i);

    bt_schedule_t built, planned, read;
    cr_assert_eq(bt_sched_build(cases[i].sched, cases[i].p, cases[i].v, cases[i].m, &built, err, sizeof err), 0,
                 "case %zu: %s", i, err);
    cr_assert_eq(bt_plan_schedule(&c, NULL, &planned, err, sizeof err), 0, "case %zu: %s", i, err);
    same_schedule(&built, &planned, i);
    char path[4096];
    FILE *f = new_csv(path, sizeof path);
    cr_assert_eq(bt_sched_csv_write(&built, f), 0);
    cr_assert_eq(fclose(f), 0);
    snprintf(c.run.schedule, sizeof c.run.schedule, "csv");
    int rc = bt_plan_schedule(&c, path, &read, err, sizeof err);
    cr_assert_eq(rc, 0, "case %zu: %s", i, err);
    same_schedule(&built, &read, i);
    /* the CSV's counts must be the run's */
    c.model.microbatches++;
    bt_schedule_t wrong;
    rc = bt_plan_schedule(&c, path, &wrong, err, sizeof err);
    unlink(path);
    cr_assert_eq(rc, BT_EARG, "case %zu: a CSV for another micro-batch count", i);
    cr_assert_not_null(strstr(err, "the CSV has"), "case %zu: %s", i, err);
    bt_sched_free(&read);
    bt_sched_free(&planned);
    bt_sched_free(&built);
  }
}

Test(plan, refuses_what_cannot_run) {
  bt_config_t c;
  char err[512];
  int f[32], l[32];
  small_config(&c, 5, 2, 4, "interleaved");
  cr_assert_eq(bt_plan_layout(&c, f, l, err, sizeof err), BT_EARG);
  cr_assert_not_null(strstr(err, "10 virtual stages, but the model has only 8 layers"), "%s", err);
  small_config(&c, 2, 1, 4, "1f1b");
  snprintf(c.run.layout, sizeof c.run.layout, "4,3");
  cr_assert_eq(bt_plan_layout(&c, f, l, err, sizeof err), BT_EARG, "7 of 8 layers");
  bt_schedule_t s;
  small_config(&c, 4, 1, 2, "1f1b");
  cr_assert_lt(bt_plan_schedule(&c, NULL, &s, err, sizeof err), 0, "m < p");
  small_config(&c, 2, 1, 4, "csv");
  cr_assert_eq(bt_plan_schedule(&c, "/nonexistent/x.csv", &s, err, sizeof err), BT_EARG);
  cr_assert_not_null(strstr(err, "/nonexistent/x.csv"), "%s", err);
  small_config(&c, 2, 1, 4, "round-robin");
  cr_assert_eq(bt_plan_schedule(&c, NULL, &s, err, sizeof err), BT_EARG);
  cr_assert(bt_plan_is_builder("zb-h1"));
  cr_assert(!bt_plan_is_builder("zb-h2"));
  /* valid, but micro-batch 1's weight gradient accumulates before 0's */
  char path[4096];
  FILE *csv = new_csv(path, sizeof path);
  fputs("0F0,0F1,0B1,0B0\n", csv);
  cr_assert_eq(fclose(csv), 0);
  small_config(&c, 1, 1, 2, "csv");
  int rc = bt_plan_schedule(&c, path, &s, err, sizeof err);
  unlink(path);
  cr_assert_eq(rc, BT_ESCHEDULE, "%s", err);
  cr_assert_not_null(strstr(err, "micro-batch order"), "%s", err);
}

/* ---- the restart policy (launcher/recovery.c) ---- */

static bt_sup_result_t failed_at(int stage, bt_sup_end_t end) {
  bt_sup_result_t r;
  memset(&r, 0, sizeof r);
  r.exit_code = BT_EXIT_FAILED;
  r.failed_stage = stage;
  r.end = end;
  snprintf(r.reason, sizeof r.reason, "killed by signal 9");
  return r;
}

Test(recovery, restarts_back_off_exponentially_up_to_the_cap) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  o.backoff_s = 0.25;
  o.backoff_max_s = 1.0;
  o.max_stalled = 100;
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 4, 0);
  bt_sup_result_t res = failed_at(1, BT_SUP_END_RETRYABLE);
  double want[] = {0.25, 0.5, 1.0, 1.0};
  for (int i = 0; i < 4; i++) {
    bt_recovery_decision_t d;
    bt_recovery_decide(&r, &res, 10 * (i + 1), &d);
    cr_assert_eq(d.action, BT_RECOVERY_RESTART, "restart %d: action %d", i, d.action);
    cr_assert_float_eq(d.backoff_s, want[i], 1e-12, "restart %d: %g vs %g", i, d.backoff_s, want[i]);
  }
  cr_assert_eq(r.restarts, 4);
}

Test(recovery, the_budget_ends_the_job_with_its_code) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  o.max_restarts = 2;
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 2, 0);
  bt_sup_result_t res = failed_at(0, BT_SUP_END_RETRYABLE);
  bt_recovery_decision_t d;
  bt_recovery_decide(&r, &res, 5, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 10, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 15, &d);
  cr_assert_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_assert_eq(d.exit_code, BT_EXIT_RESTARTS);
  cr_assert_not_null(strstr(d.why, "restart budget"), "%s", d.why);
}

Test(recovery, restarts_without_progress_trip_the_breaker) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  o.max_stalled = 3;
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 2, 20);
  bt_sup_result_t res = failed_at(1, BT_SUP_END_RETRYABLE);
  bt_recovery_decision_t d;
  /* progress past 20 resets the count; then three without */
  bt_recovery_decide(&r, &res, 25, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 25, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 25, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 25, &d);
  cr_assert_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_assert_eq(d.exit_code, BT_EXIT_NO_PROGRESS);
}

Test(recovery, fatal_and_nonfinite_are_not_restarted) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 2, 0);
  bt_sup_result_t res = failed_at(1, BT_SUP_END_FATAL);
  bt_recovery_decision_t d;
  bt_recovery_decide(&r, &res, 0, &d);
  cr_assert_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_assert_eq(d.exit_code, BT_EXIT_FAILED);
  res = failed_at(0, BT_SUP_END_NONFINITE);
  bt_recovery_decide(&r, &res, 0, &d);
  cr_assert_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_assert_eq(d.exit_code, BT_EXIT_NONFINITE);
  cr_assert_eq(r.restarts, 0);
}

Test(recovery, a_slot_failing_twice_is_retired_down_to_min_stages) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  o.min_stages = 3;
  o.max_slot_failures = 2;
  o.max_stalled = 100;
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 4, 0);
  bt_sup_result_t res = failed_at(2, BT_SUP_END_RETRYABLE);
  bt_recovery_decision_t d;
  bt_recovery_decide(&r, &res, 1, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 2, &d);
  cr_assert_eq(d.action, BT_RECOVERY_REFORM);
  cr_assert_eq(d.retire, 2);
  cr_assert_eq(r.stages, 3);
  /* at --min-stages: a slot that must go ends the job */
  bt_recovery_decide(&r, &res, 3, &d);
  cr_assert_eq(d.action, BT_RECOVERY_RESTART);
  bt_recovery_decide(&r, &res, 4, &d);
  cr_assert_eq(d.action, BT_RECOVERY_GIVE_UP);
  cr_assert_eq(d.exit_code, BT_EXIT_TOO_FEW);
}

Test(recovery, without_min_stages_slots_are_never_retired) {
  bt_recovery_opts_t o;
  bt_recovery_opts_default(&o);
  o.max_stalled = 100;
  bt_recovery_t r;
  bt_recovery_init(&r, &o, 4, 0);
  bt_sup_result_t res = failed_at(2, BT_SUP_END_RETRYABLE);
  bt_recovery_decision_t d;
  for (int i = 0; i < 5; i++) {
    bt_recovery_decide(&r, &res, i + 1, &d);
    cr_assert_eq(d.action, BT_RECOVERY_RESTART, "failure %d", i);
  }
  cr_assert_eq(r.stages, 4);
}

Test(recovery, exit_codes_are_distinct) {
  int codes[] = {BT_EXIT_OK, BT_EXIT_FAILED, BT_EXIT_USAGE, BT_EXIT_PREEMPTED, BT_EXIT_RESTARTS,
                 BT_EXIT_NO_PROGRESS, BT_EXIT_NONFINITE, BT_EXIT_TOO_FEW};
  size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    cr_assert(codes[i] >= 0 && codes[i] < 128, "code %d collides with 128+signal", codes[i]);
    for (size_t k = i + 1; k < n; k++) cr_assert_neq(codes[i], codes[k], "codes %zu and %zu are both %d", i, k, codes[i]);
  }
}

/* A job signal that comes between two incarnations (no loop watches the
 * signals then) neither kills the process nor is lost: the next
 * incarnation receives it as soon as it watches, and stops. */
Test(supervisor, a_signal_between_incarnations_reaches_the_next_one) {
  char *argv[] = {NULL, NULL};
  bt_sup_opts_t o;
  fake_opts(&o, argv);
  o.nstages = 2;
  o.last_step = 3;
  bt_sup_result_t r;
  cr_assert_eq(bt_supervisor_run(&o, &r), 0);
  cr_assert_eq(r.end, BT_SUP_END_DONE, "reason: %s", r.reason);
  cr_assert_eq(kill(getpid(), SIGTERM), 0); /* the process survives this */
  o.last_step = 100000;
  cr_assert_eq(bt_supervisor_run(&o, &r), 0);
  cr_assert_neq(r.end, BT_SUP_END_DONE, "the held SIGTERM was lost: trained through");
  cr_assert(r.end == BT_SUP_END_PREEMPTED || r.end == BT_SUP_END_KILLED, "end %d, reason: %s", (int)r.end,
            r.reason);
  cr_assert_lt(r.steps_done, 100000);
}
