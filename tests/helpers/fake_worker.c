/* fake_worker.c - a stand-in for `baton worker` that the supervisor tests
 * spawn through `baton run --worker-cmd` (libuv's spawn_helper idea).
 *
 * It speaks the real control protocol through worker/control.c, trains
 * nothing, and misbehaves on cue. It skips the --key=value configuration
 * flags `baton run` passes to every worker; its own arguments come after
 * `baton run … --`:
 *
 *   --mode M        normal | crash | exit | freeze | noprogress | ignore-stop
 *                   | slow-start | no-hash | ckpt-late | slow-setup
 *                   | no-connect
 *   --fail-stage S  the stage that misbehaves (default: every stage)
 *   --at-step N     the step at which it does (default 2)
 *   --code X        exit code for --mode exit (default 4)
 *   --step-ms MS    time one step takes (default 20)
 *   --start-ms MS   slow-start: sleep this long before HELLO (default 5000)
 *   --setup-ms MS   slow-setup: after START, report BT_PHASE_SETUP (NCCL's
 *                   set-up) and stay in it this long (default 3000)
 *
 * In mode no-connect the misbehaving stage reports BT_PHASE_CONNECT after
 * START (connecting to its peers) and stays there, heartbeating, until it
 * is killed: what a data plane held by strangers looks like.
 *
 * With BATON_CKPT_DIR every stage writes a real (tiny) shard through the
 * checkpoint module after the step a CKPT_AT names and after the last
 * step, and reports it with SHARD_DURABLE; a CKPT_AT for a step it already
 * finished gets CKPT_LATE. In mode ckpt-late the misbehaving stage answers
 * the first CKPT_AT with CKPT_LATE claiming to be two steps ahead, so the
 * supervisor must name a later step.
 *
 * Every stage prints "fake stage S pid P" to stderr and its BATON_* and
 * torchrun variables to stdout ("env NAME=value") first thing. At the end it
 * sends HASHES with two records per stage derived from the stage and the
 * step count, so a test can recompute the combined hash independently.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/parse.h"
#include "worker/control.h"

#define ACTIONS_PER_STEP 4

typedef struct {
  const char *mode;
  int fail_stage; /* -1: all */
  int64_t at_step, code, step_ms, start_ms, setup_ms;
} fake_opts_t;

static int parse_args(int argc, char **argv, fake_opts_t *o) {
  o->mode = "normal";
  o->fail_stage = -1;
  o->at_step = 2;
  o->code = 4;
  o->step_ms = 20;
  o->start_ms = 5000;
  o->setup_ms = 3000;
  for (int i = 1; i < argc; i++) {
    /* `baton run` passes its whole configuration as --key=value: not ours */
    if (!strncmp(argv[i], "--", 2) && strchr(argv[i], '=')) continue;
    if (i + 1 >= argc) return BT_EARG;
    const char *a = argv[i], *v = argv[++i];
    int64_t x;
    if (!strcmp(a, "--mode")) {
      o->mode = v;
      continue;
    }
    if (bt_parse_i64(v, -1, INT64_C(1) << 40, &x) < 0) return BT_EARG;
    if (!strcmp(a, "--fail-stage")) o->fail_stage = (int)x;
    else if (!strcmp(a, "--at-step")) o->at_step = x;
    else if (!strcmp(a, "--code")) o->code = x;
    else if (!strcmp(a, "--step-ms")) o->step_ms = x;
    else if (!strcmp(a, "--start-ms")) o->start_ms = x;
    else if (!strcmp(a, "--setup-ms")) o->setup_ms = x;
    else return BT_EARG;
  }
  return 0;
}

/* The contract's variables as this worker received them (the table of
 * common/workerenv.h), the torchrun names and BATON_FAKE_MARKER, a variable
 * of the supervisor's own environment that must pass through. */
static void print_env(void) {
  static const char *const names[] = {
#define X(kind, var, ...) #var,
      BT_WORKER_ENV(X)
#undef X
      "BATON_FAKE_MARKER"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *v = getenv(names[i]);
    if (v) printf("env %s=%s\n", names[i], v);
  }
  fflush(stdout);
}

/* Saves this stage's shard of `step` (layers 2s and 2s+1, one 4-float
 * tensor each) and reports it. */
static void fake_save(bt_control_t *c, const char *root, uint32_t stage, uint32_t nstages, int64_t step) {
  float data[2][4];
  bt_ckpt_tensor_t t[2];
  memset(t, 0, sizeof t);
  for (int i = 0; i < 2; i++) {
    for (int k = 0; k < 4; k++) data[i][k] = (float)(stage + (uint32_t)i) + 0.25f * (float)k;
    t[i].layer = 2 * stage + (uint32_t)i;
    snprintf(t[i].name, sizeof t[i].name, "w");
    t[i].kind = BT_CKPT_PARAM;
    t[i].ndim = 1;
    t[i].dims[0] = 4;
    t[i].data = data[i];
  }
  bt_ckpt_meta_t meta = {.step = step, .stage = stage, .stages = nstages, .chunks = 1,
                         .layer_count = 2 * nstages, .adam_t = step, .model_config = "fake\n",
                         .run_settings = ""};
  bt_msg_shard_t r;
  int rc = bt_ckpt_save(root, &meta, t, 2, NULL, &r);
  if (rc < 0) {
    fprintf(stderr, "fake stage %u: save of step %lld: %s\n", stage, (long long)step, bt_strerror(rc));
    return;
  }
  bt_control_send_shard(c, &r);
}

/* The records the test recomputes: layers 2s and 2s+1, one tensor each. */
static void make_hashes(uint32_t stage, int64_t steps, bt_hash_rec_t recs[2]) {
  for (int i = 0; i < 2; i++) {
    float data[4] = {(float)stage, (float)steps, (float)i, 0.5f};
    recs[i].layer = 2 * stage + (uint32_t)i;
    recs[i].index = 0;
    snprintf(recs[i].name, sizeof recs[i].name, "w");
    recs[i].h = bt_hash_tensor(data, 4);
  }
}

int main(int argc, char **argv) {
  int grc = bt_control_guard();
  if (grc == BT_EPEER) return BT_WEXIT_ORPHAN;
  if (grc < 0) return BT_WEXIT_USAGE;
  fake_opts_t o;
  if (parse_args(argc, argv, &o) < 0) {
    fprintf(stderr, "fake_worker: bad arguments\n");
    return BT_WEXIT_USAGE;
  }
  bt_control_env_t env;
  if (bt_control_env(&env) < 0) return BT_WEXIT_USAGE;
  int me = o.fail_stage < 0 || o.fail_stage == (int)env.stage;
  fprintf(stderr, "fake stage %u pid %d\n", env.stage, (int)getpid());
  print_env();
  if (me && !strcmp(o.mode, "slow-start")) bt_sleep_ms(o.start_ms);

  bt_control_t *c = NULL;
  if (bt_control_open(&c, &env) < 0) return BT_WEXIT_ORPHAN;
  char addr[64];
  snprintf(addr, sizeof addr, "fake:%u", env.stage);
  bt_control_send_ready(c, addr);
  bt_msg_start_t *start = calloc(1, sizeof *start);
  if (!start || bt_control_wait_start(c, start, bt_deadline_ms(60000)) < 0) {
    fprintf(stderr, "fake_worker: no START\n");
    return BT_WEXIT_RETRY;
  }
  for (uint32_t i = 0; i < start->nstages; i++) {
    char want[64];
    snprintf(want, sizeof want, "fake:%u", i);
    if (strcmp(start->addrs[i], want)) {
      fprintf(stderr, "fake_worker: address %u is '%s'\n", i, start->addrs[i]);
      return BT_WEXIT_FATAL;
    }
  }
  char why[512];
  if (bt_worker_start_check(start, &env, why, sizeof why) < 0) {
    fprintf(stderr, "fake_worker: %s\n", why);
    return BT_WEXIT_FATAL;
  }
  int64_t first = start->first_step, last = start->last_step;
  free(start);
  if (me && !strcmp(o.mode, "slow-setup")) {
    bt_control_progress(c, first - 1, 0, BT_PHASE_SETUP);
    bt_sleep_ms(o.setup_ms);
  }
  if (me && !strcmp(o.mode, "no-connect")) {
    bt_control_progress(c, first - 1, 0, BT_PHASE_CONNECT);
    for (;;) bt_sleep_ms(1000); /* heartbeats come from the control thread */
  }
  int ignore_stop = me && !strcmp(o.mode, "ignore-stop");
  const char *root = env.ckpt_dir[0] ? env.ckpt_dir : NULL;
  int64_t handled = -1;
  int lied = 0;
  for (int64_t step = first; step <= last || ignore_stop; step++) {
    bt_control_progress(c, step, 0, BT_PHASE_COMPUTE);
    if (me && step == o.at_step) {
      if (!strcmp(o.mode, "crash")) {
        fprintf(stderr, "fake stage %u: crashing at step %lld\n", env.stage, (long long)step);
        abort();
      }
      if (!strcmp(o.mode, "exit")) {
        fprintf(stderr, "fake stage %u: line one before exit\n", env.stage);
        fprintf(stderr, "fake stage %u: exiting with code %lld at step %lld\n", env.stage, (long long)o.code,
                (long long)step);
        bt_control_send_error(c, BT_ECONFIG, (int)o.code, "fake failure on request");
        return (int)o.code;
      }
      if (!strcmp(o.mode, "freeze")) raise(SIGSTOP);
      if (!strcmp(o.mode, "noprogress"))
        for (;;) bt_sleep_ms(1000); /* the heartbeat thread goes on beating */
    }
    bt_trace_ev_t ev[ACTIONS_PER_STEP];
    double t0 = bt_clock_s();
    for (int a = 0; a < ACTIONS_PER_STEP; a++) {
      bt_control_progress(c, step, a, BT_PHASE_COMPUTE);
      double s0 = bt_clock_s();
      bt_sleep_ms(o.step_ms / ACTIONS_PER_STEP);
      bt_control_action_done(c);
      snprintf(ev[a].action, sizeof ev[a].action, "%uF%d", env.stage, a);
      ev[a].worker = env.stage;
      ev[a].start_s = s0;
      ev[a].end_s = bt_clock_s();
    }
    double dt = bt_clock_s() - t0;
    bt_msg_metrics_t m = {.stage = env.stage, .step = step, .busy_s = dt, .idle_s = 0, .step_s = dt,
                          .tokens = 1000};
    m.loss = env.stage + 1 == env.nstages ? 1.0 / (double)step : NAN;
    bt_control_send_metrics(c, &m);
    bt_msg_trace_t tr = {.stage = env.stage, .step = step, .n = ACTIONS_PER_STEP, .ev = ev};
    bt_control_send_trace(c, &tr);
    if (root) {
      int64_t at = bt_control_ckpt_step(c);
      if (me && !strcmp(o.mode, "ckpt-late") && !lied && at > 0 && at != handled) {
        /* the misbehaviour: the first CKPT_AT answered with a lie */
        lied = 1;
        handled = at;
        bt_control_send_ckpt_late(c, step + 2);
      }
      if (bt_control_ckpt_due(c, step, &handled) > 0 || step == last)
        fake_save(c, root, env.stage, env.nstages, step);
    }
    int64_t stop = bt_control_stop_step(c);
    if (!ignore_stop && stop >= 0 && step >= stop) {
      fprintf(stderr, "fake stage %u: stopping after step %lld\n", env.stage, (long long)step);
      bt_control_close(c);
      return BT_WEXIT_STOPPED;
    }
  }
  if (!(me && !strcmp(o.mode, "no-hash"))) {
    bt_hash_rec_t recs[2];
    make_hashes(env.stage, last, recs);
    bt_msg_hashes_t h = {.stage = env.stage, .step = last, .n = 2, .recs = recs};
    bt_control_send_hashes(c, &h);
  }
  bt_control_send_done(c, last);
  bt_control_close(c);
  return BT_WEXIT_DONE;
}
