/* test_e2e_vschedules.c - the V schedules (zb-v, dualpipev) and PyTorch CSV
 * files end to end: `baton run` must end with `baton train`'s hash and
 * per-step losses, through every fault kind, a re-form onto fewer stages
 * and checkpoints moved between V and k % p placements. Every hash is
 * compared with `baton train` of the same model in the same test.
 *
 * Runs are small (6 layers, dim 16 for the schedule grid; 4 layers, dim 32
 * with the quick timeouts of test_e2e_recovery.c for faults).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/e2e.h"
#include "tests/support/proc.h"

#define RUN_TIMEOUT_MS 90000

static bt_e2e_dirs_t e2e;
static char *const dir = e2e.dir, *const out_path = e2e.out, *const err_path = e2e.err,
                  *const events_path = e2e.events, *const ckpt_path = e2e.ckpt;

static void setup(void) { bt_e2e_setup(&e2e, "vsched"); }

static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(vsched, .init = setup, .fini = teardown, .timeout = 400);

/* Runs BATON ARGS… to the end with fresh out/err; the exit code. */
static int run_args(const char *const *args, int timeout_ms) {
  char *argv[96];
  int k = 0;
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  for (int i = 0; args[i] && k < 95; i++) argv[k++] = (char *)args[i];
  argv[k] = NULL;
  int code = bt_e2e_run(&e2e, argv, NULL, NULL, timeout_ms);
  cr_assert_lt(code, 128, "baton %s died of signal %d", args[0], code - 128);
  return code;
}

/* The last "hash <hex>" line of out_path. */
static void read_hash(char hex[33]) {
  char *out = bt_proc_slurp(out_path);
  cr_assert_not_null(out);
  char *p = NULL;
  for (char *q = strstr(out, "hash "); q; q = strstr(q + 1, "hash "))
    if (q == out || q[-1] == '\n') p = q;
  static char msg[8192];
  snprintf(msg, sizeof msg, "%s", out);
  cr_assert_not_null(p, "no hash line:\n%s", msg);
  memcpy(hex, p + 5, 32);
  hex[32] = 0;
  free(out);
}

static void check_ok(int code, const char *what) {
  static char msg[16384];
  char *e = bt_proc_slurp(err_path);
  snprintf(msg, sizeof msg, "%s", e ? e : "");
  free(e);
  cr_assert_eq(code, 0, "%s exited %d:\n%s", what, code, msg);
}

/* The "loss" values of a metrics file joined by '|'. */
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

/* ---- the schedule grid: hash and losses of baton train ------------------- */

#define GRID_MODEL "--layers", "6", "--dim", "16", "--mb-tokens", "16", "--context", "2", "--steps", "3"

typedef struct {
  char hash[33], losses[1024];
} ref_t;

static void train_ref(int m, ref_t *r) {
  char ms[8], metrics[320];
  snprintf(ms, sizeof ms, "%d", m);
  snprintf(metrics, sizeof metrics, "%s/train.jsonl", dir);
  const char *args[] = {"train", GRID_MODEL, "--microbatches", ms, "--hash", "--metrics", metrics, NULL};
  check_ok(run_args(args, 60000), "baton train");
  read_hash(r->hash);
  losses_of(metrics, r->losses, sizeof r->losses);
}

/* `baton run --schedule S` (or a CSV path) on p stages matches ref. */
static void run_matches(const ref_t *ref, const char *sched, int p, int m) {
  char ps[8], ms[8], metrics[320], got[33], losses[1024], what[400];
  snprintf(ps, sizeof ps, "%d", p);
  snprintf(ms, sizeof ms, "%d", m);
  snprintf(metrics, sizeof metrics, "%s/run.jsonl", dir);
  snprintf(what, sizeof what, "baton run --schedule %s --stages %d --microbatches %d", sched, p, m);
  const char *with_p[] = {"run", "--no-progress", "--schedule", sched, "--stages", ps, GRID_MODEL,
                          "--microbatches", ms, "--hash", "--metrics", metrics, NULL};
  const char *csv[] = {"run", "--no-progress", "--schedule", sched, GRID_MODEL, "--hash", "--metrics", metrics, NULL};
  check_ok(run_args(p ? with_p : csv, RUN_TIMEOUT_MS), what);
  read_hash(got);
  cr_assert_str_eq(got, ref->hash, "%s", what);
  losses_of(metrics, losses, sizeof losses);
  cr_assert_str_eq(losses, ref->losses, "losses of %s", what);
}

/* zb-v takes any m: 3 is below p = 4 and no multiple of 2 or 4; 5 is no
 * multiple of 2, 3 or 4. */
Test(vsched, zb_v_is_bit_identical_to_train_at_p_2_3_4) {
  int ms[] = {3, 5};
  for (int i = 0; i < 2; i++) {
    ref_t ref;
    train_ref(ms[i], &ref);
    for (int p = 2; p <= 4; p++) run_matches(&ref, "zb-v", p, ms[i]);
  }
}

/* dualpipev takes m >= 2p: 2p and 2p + 1 (no multiple of p) at each p. */
Test(vsched, dualpipev_is_bit_identical_to_train_at_p_2_3_4) {
  for (int p = 2; p <= 4; p++)
    for (int m = 2 * p; m <= 2 * p + 1; m++) {
      ref_t ref;
      train_ref(m, &ref);
      run_matches(&ref, "dualpipev", p, m);
    }
}

Test(vsched, wrong_chunks_and_too_few_microbatches_are_refused_in_one_line) {
  const char *chunks[] = {"run", "--no-progress", "--stages", "2", "--chunks", "3", "--schedule", "zb-v", GRID_MODEL, NULL};
  cr_assert_eq(run_args(chunks, 30000), 2);
  char *e = bt_proc_slurp(err_path);
  cr_assert(strstr(e, "--schedule zb-v: zb-v places two chunks on each stage in a V"), "%s", e);
  cr_assert(strstr(e, "use --chunks 2"), "%s", e);
  cr_assert_null(strstr(e, "started stage"), "%s", e);
  free(e);
  const char *few[] = {"run", "--no-progress", "--stages", "3", "--schedule", "dualpipev", GRID_MODEL,
                       "--microbatches", "5", NULL};
  cr_assert_eq(run_args(few, 30000), 2);
  e = bt_proc_slurp(err_path);
  cr_assert(strstr(e, "m >= 2p (got m=5, p=3); try --microbatches 6"), "%s", e);
  free(e);
}

/* ---- CSV files in each notation ------------------------------------------ */

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  cr_assert_eq(fclose(f), 0);
}

Test(vsched, csv_files_in_each_notation_train_like_train) {
  char path[320];
  snprintf(path, sizeof path, "%s/s.csv", dir);
  /* PyTorch's earlier notation, 2-rank interleaved zero bubble by hand */
  write_file(path,
             "0F0,2F0,0F1,2F1,,2B0,2W0,0B0,0W0,2B1,2W1,0B1,0W1\n"
             ",1F0,3F0,1F1,3F1,3B0,3W0,1B0,3B1,1W0,3W1,1B1,1W1\n");
  ref_t ref;
  train_ref(2, &ref);
  run_matches(&ref, path, 0, 2);
  /* written by baton schedule: zb-v in the earlier notation, dualpipev in
   * the current one with its communication cells */
  const char *how[][12] = {
      {"schedule", "--schedule", "zb-v", "--stages", "3", "--microbatches", "5", "--csv-out", path, "--csv-notation",
       "earlier", NULL},
      {"schedule", "--schedule", "dualpipev", "--stages", "2", "--microbatches", "5", "--csv-out", path, "--comms",
       NULL},
  };
  for (int i = 0; i < 2; i++) {
    check_ok(run_args(how[i], 30000), "baton schedule --csv-out");
    train_ref(5, &ref);
    run_matches(&ref, path, 0, 5);
  }
  /* FSDP actions: baton run refuses them in one line */
  write_file(path, "0UNSHARD,0F0,0B0\n");
  const char *bad[] = {"run", "--no-progress", "--schedule", path, GRID_MODEL, NULL};
  cr_assert_eq(run_args(bad, 30000), 2);
  char *e = bt_proc_slurp(err_path);
  cr_assert(strstr(e, "0UNSHARD is an FSDP action baton does not run"), "%s", e);
  free(e);
}

/* ---- faults, re-form and checkpoints across placements -------------------- */

#define FAULT_MODEL "--layers", "4", "--dim", "32", "--mb-tokens", "32"
#define QUICK "--heartbeat-timeout", "1", "--progress-timeout", "2", "--grace", "1", "--backoff", "0.05", "--no-progress"

static void train_hash(const char *steps, char hex[33]) {
  const char *args[] = {"train", FAULT_MODEL, "--steps", steps, "--hash", NULL};
  check_ok(run_args(args, 60000), "baton train");
  read_hash(hex);
}

/* One `baton run` with checkpoints in ckpt_path plus extra args. */
static int run_job(const char *steps, const char *const *extra) {
  const char *args[64] = {"run", FAULT_MODEL, "--steps", steps, "--ckpt-dir", ckpt_path, "--ckpt-every", "5",
                          "--events", events_path, "--hash", QUICK};
  int k = 0;
  while (args[k]) k++;
  for (int i = 0; extra[i]; i++) args[k++] = extra[i];
  args[k] = NULL;
  return run_args(args, RUN_TIMEOUT_MS);
}

Test(vsched, every_fault_kind_on_a_v_schedule_keeps_the_hash) {
  char want[33], got[33];
  train_hash("16", want);
  /* kind, schedule, stages: each kind once, both V schedules */
  const char *cases[][3] = {
      {"crash@stage=1,step=8,action=3", "zb-v", "2"},  {"exit@stage=0,step=12,action=5,code=1", "dualpipev", "2"},
      {"freeze@stage=1,step=7,action=2", "zb-v", "2"}, {"hang@stage=0,step=9,action=1", "dualpipev", "2"},
      {"slow@stage=1,step=3,ms=5", "zb-v", "3"},       {"ckpt-die@stage=1,step=10", "dualpipev", "2"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char rm[400];
    snprintf(rm, sizeof rm, "rm -rf '%s'", ckpt_path);
    cr_assert_eq(system(rm), 0);
    unlink(events_path);
    const char *extra[] = {"--schedule", cases[i][1], "--stages", cases[i][2], "--inject-fault", cases[i][0], NULL};
    int code = run_job("16", extra);
    check_ok(code, cases[i][0]);
    char *e = bt_proc_slurp(err_path);
    cr_assert(strstr(e, "injected fault"), "%s never fired:\n%s", cases[i][0], e);
    free(e);
    /* a kind that kills or stops a stage is seen as a failure */
    if (strncmp(cases[i][0], "slow@", 5)) {
      char *ev = bt_proc_slurp(events_path);
      cr_assert(ev && strstr(ev, "\"event\":\"failure\""), "%s: no failure event", cases[i][0]);
      free(ev);
    }
    read_hash(got);
    cr_assert_str_eq(got, want, "%s on %s: hash %s, train %s", cases[i][0], cases[i][1], got, want);
  }
}

Test(vsched, a_reform_from_a_v_schedule_onto_fewer_stages_keeps_the_hash) {
  char want[33], got[33];
  train_hash("20", want);
  const char *extra[] = {"--schedule", "zb-v", "--stages", "3", "--min-stages", "2", "--max-slot-failures", "1",
                         "--inject-fault", "crash@stage=1,step=8", NULL};
  check_ok(run_job("20", extra), "re-form");
  read_hash(got);
  cr_assert_str_eq(got, want);
  char *e = bt_proc_slurp(err_path);
  cr_assert(strstr(e, "re-forming on 2 stages"), "%s", e);
  free(e);
}

/* A checkpoint is keyed by global layer: a V-placed one resumes on 1f1b or
 * interleaved with another stage count, and back. */
Test(vsched, checkpoints_move_between_v_and_k_mod_p_placements) {
  char want[33], got[33], step[400];
  train_hash("16", want);
  const char *legs[][2][12] = {
      {{"--schedule", "zb-v", "--stages", "2", NULL}, {"--schedule", "1f1b", "--stages", "3", NULL}},
      {{"--schedule", "interleaved", "--stages", "2", "--chunks", "2", NULL},
       {"--schedule", "dualpipev", "--stages", "3", "--microbatches", "6", NULL}},
  };
  for (int i = 0; i < 2; i++) {
    char rm[400];
    snprintf(rm, sizeof rm, "rm -rf '%s'", ckpt_path);
    cr_assert_eq(system(rm), 0);
    const char *const *first = legs[i][0];
    const char *a[24];
    int k = 0;
    for (int j = 0; first[j]; j++) a[k++] = first[j];
    if (i == 1) {
      a[k++] = "--microbatches";
      a[k++] = "6";
    }
    a[k] = NULL;
    check_ok(run_job("10", a), "first leg");
    snprintf(step, sizeof step, "%s/step-00000010", ckpt_path);
    const char *b[24];
    k = 0;
    for (int j = 0; legs[i][1][j]; j++) b[k++] = legs[i][1][j];
    b[k++] = "--resume";
    b[k++] = step;
    b[k] = NULL;
    check_ok(run_job("16", b), "second leg");
    read_hash(got);
    if (i == 0) cr_assert_str_eq(got, want, "zb-v -> 1f1b: %s vs train %s", got, want);
    if (i == 1) {
      char want6[33];
      const char *t[] = {"train", FAULT_MODEL, "--steps", "16", "--microbatches", "6", "--hash", NULL};
      check_ok(run_args(t, 60000), "baton train");
      read_hash(want6);
      cr_assert_str_eq(got, want6, "interleaved -> dualpipev");
    }
  }
}

/* ---- the local handoff, seen from the worker's transport calls ------------ */

static int count_lines(const char *text, const char *a, const char *b) {
  int n = 0;
  for (const char *line = text; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    char buf[512];
    snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf ? len : sizeof buf - 1), line);
    if (strstr(buf, a) && (!b || strstr(buf, b))) n++;
    line = end ? end + 1 : NULL;
  }
  return n;
}

/* With BATON_LOG=debug every worker logs each send it hands the transport,
 * each receive it waits for and each tensor it passes on in memory: the
 * turn of the V (virtual stage p-1 to p on the last worker) is only ever
 * the last kind. p = 3, m = 4, one step. */
Test(vsched, the_turn_of_the_v_never_touches_the_transport) {
  const char *schedules[] = {"zb-v", "dualpipev"};
  for (int i = 0; i < 2; i++) {
    const char *ms = i ? "6" : "4";
    int m = i ? 6 : 4, p = 3;
    char *argv[] = {(char *)bt_e2e_env("BATON_BIN"), "run", "--no-progress", "--stages", "3", "--schedule",
                    (char *)schedules[i], "--layers", "6", "--dim", "16", "--mb-tokens", "16", "--steps", "1",
                    "--microbatches", (char *)ms, NULL};
    char *env[] = {"BATON_LOG=debug", NULL};
    unlink(out_path);
    unlink(err_path);
    pid_t pid = bt_proc_spawn(argv, env, out_path, err_path);
    int st = 0;
    cr_assert_eq(bt_proc_wait(pid, RUN_TIMEOUT_MS, &st), 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *e = bt_proc_slurp(err_path);
    int sends = count_lines(e, " sends ", NULL), waits = count_lines(e, " waits for ", NULL);
    /* 2p - 1 hops, one local: (2p - 2) m activations and as many gradients */
    cr_assert_eq(sends, 2 * (2 * p - 2) * m, "%s: %d sends", schedules[i], sends);
    cr_assert_eq(waits, sends, "%s: %d receives waited for, %d sends", schedules[i], waits, sends);
    cr_assert_eq(count_lines(e, " sends activation of virtual stage 2,", NULL), 0, "%s", schedules[i]);
    cr_assert_eq(count_lines(e, " sends gradient of virtual stage 3,", NULL), 0, "%s", schedules[i]);
    cr_assert_eq(count_lines(e, "waits for activation of virtual stage 2,", NULL), 0);
    cr_assert_eq(count_lines(e, "in memory", NULL), 2 * m, "%s", schedules[i]);
    cr_assert_eq(count_lines(e, "in memory", "[stage 2]"), 2 * m, "%s: not all on the last worker", schedules[i]);
    free(e);
  }
}

/* A real V run's trace is drawn as a V too. */
Test(vsched, the_trace_of_a_v_run_is_drawn_as_a_v) {
  char trace[320], svg[320];
  snprintf(trace, sizeof trace, "%s/t.json", dir);
  snprintf(svg, sizeof svg, "%s/t.svg", dir);
  const char *run[] = {"run", "--no-progress", "--stages", "2", "--schedule", "zb-v", GRID_MODEL, "--trace", trace, NULL};
  check_ok(run_args(run, RUN_TIMEOUT_MS), "baton run --trace");
  const char *draw[] = {"schedule", "--from-trace", trace, "--svg", svg, NULL};
  check_ok(run_args(draw, 30000), "baton schedule --from-trace");
  char *s = bt_proc_slurp(svg);
  cr_assert_not_null(s);
  cr_assert(strstr(s, "class=\"vshape\""), "no V legend in the trace's drawing");
  cr_assert(strstr(s, "data-action=\"3F0\""), "no chunk-1 action of worker 0");
  free(s);
}
