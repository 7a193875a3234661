/* test_e2e_faults.c - every injected fault kind on an interleaved pipeline
 * (`baton run --inject-fault`) is survived bit-identically: the faulty run
 * ends with exactly the parameter hash of `baton train` with the same model
 * flags, computed in the same test (never a stored hash). Then a seeded
 * random campaign: BATON_FAULT_ROUNDS rounds (default 3) of one random
 * fault (kind, stage, step, action) each; BATON_FAULT_SEED picks the seed
 * (default 1; the failing round prints its spec and seed).
 *
 * Every run uses short timeouts (--heartbeat-timeout 1 --progress-timeout 2)
 * and a small model, so a fault costs a couple of seconds.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/parse.h"
#include "tests/support/e2e.h"
#include "tests/support/proc.h"

#define STEPS 24
#define STEPS_S "24"
/* Per run: a fault costs detection (<= 2 s, 6 s before the first step),
 * a stop and a restart; a clean run of this model takes well under 1 s. */
#define RUN_TIMEOUT_MS 90000

static bt_e2e_dirs_t e2e;
static char *const out_path = e2e.out, *const err_path = e2e.err, *const events_path = e2e.events,
                  *const ckpt_path = e2e.ckpt;

static void setup(void) { bt_e2e_setup(&e2e, "faults"); }

static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(faults, .init = setup, .fini = teardown, .timeout = 300);

/* The model of every run here: small, 2 chunks per stage possible. */
static const char *const model[] = {"--layers", "4", "--dim", "32", "--mb-tokens", "32", "--steps", STEPS_S, NULL};

/* Runs argv (NULL-terminated) to the end with fresh out/err files; returns
 * the exit code. Dying of a signal or running past the limit fails. */
static int run_argv(char **argv, int timeout_ms) {
  int code = bt_e2e_run(&e2e, argv, NULL, NULL, timeout_ms);
  cr_assert_lt(code, 128, "%s %s died of signal %d", argv[0], argv[1], code - 128);
  return code;
}

/* The `hash <32 hex>` line of out_path into hex; fails the test without. */
static void read_hash(char hex[33]) {
  char *out = bt_proc_slurp(out_path);
  cr_assert_not_null(out);
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

/* `baton train` of the same model: the reference every faulty run must hit. */
static void clean_hash(char hex[33]) {
  char *argv[32] = {(char *)bt_e2e_env("BATON_BIN"), "train", "--hash"};
  int k = 3;
  for (int i = 0; model[i]; i++) argv[k++] = (char *)model[i];
  argv[k] = NULL;
  cr_assert_eq(run_argv(argv, 60000), 0, "baton train failed");
  read_hash(hex);
}

/* `baton run` of the model on `stages` x `chunks` with checkpoints every 5
 * steps and the given fault specs (NULL-terminated, may be empty). */
static int run_faulty(int stages, int chunks, const char *const *specs) {
  static char sstages[16], schunks[16];
  snprintf(sstages, sizeof sstages, "%d", stages);
  snprintf(schunks, sizeof schunks, "%d", chunks);
  char *argv[64] = {(char *)bt_e2e_env("BATON_BIN"), "run", "--stages", sstages, "--chunks", schunks};
  int k = 6;
  for (int i = 0; model[i]; i++) argv[k++] = (char *)model[i];
  const char *sup[] = {"--ckpt-dir", ckpt_path, "--ckpt-every", "5", "--heartbeat-timeout", "1",
                       "--progress-timeout", "2", "--grace", "1", "--events", events_path,
                       "--hash", "--no-progress", NULL};
  for (int i = 0; sup[i]; i++) argv[k++] = (char *)sup[i];
  for (int i = 0; specs && specs[i] && k < 60; i++) {
    argv[k++] = "--inject-fault";
    argv[k++] = (char *)specs[i];
  }
  argv[k] = NULL;
  return run_argv(argv, RUN_TIMEOUT_MS);
}

static int file_has(const char *path, const char *needle) {
  char *s = bt_proc_slurp(path);
  int yes = s && strstr(s, needle) != NULL;
  free(s);
  return yes;
}

/* One fault on `stages` x 2 chunks: exit 0, the clean hash, and proof that
 * the fault fired (the worker's announcement on stderr) and, for a kind
 * that kills or stops a stage, that the supervisor saw a failure. */
static void survives(int stages, const char *spec) {
  char want[33], got[33];
  clean_hash(want);
  const char *specs[] = {spec, NULL};
  int code = run_faulty(stages, 2, specs);
  static char msg[16384];
  char *err = bt_proc_slurp(err_path);
  snprintf(msg, sizeof msg, "%s", err ? err : "");
  free(err);
  cr_assert_eq(code, 0, "%s: baton run exited %d; stderr:\n%s", spec, code, msg);
  cr_assert(strstr(msg, "injected fault"), "%s never fired; stderr:\n%s", spec, msg);
  bt_fault_t f;
  cr_assert_eq(bt_fault_parse(spec, &f, NULL, 0), 0);
  if (f.kind != BT_FAULT_SLOW)
    cr_assert(file_has(events_path, "\"event\":\"failure\""), "%s: no failure event in %s", spec, events_path);
  read_hash(got);
  cr_assert_str_eq(got, want, "%s: hash %s after the fault, %s without", spec, got, want);
}

Test(faults, clean_run_matches_train) {
  char want[33], got[33];
  clean_hash(want);
  cr_assert_eq(run_faulty(2, 2, NULL), 0);
  read_hash(got);
  cr_assert_str_eq(got, want);
}

Test(faults, crash_keeps_the_hash) { survives(2, "crash@stage=1,step=8,action=3"); }

Test(faults, exit_keeps_the_hash) { survives(2, "exit@stage=0,step=12,action=5,code=1"); }

Test(faults, freeze_keeps_the_hash) { survives(2, "freeze@stage=1,step=7,action=2"); }

Test(faults, hang_keeps_the_hash) { survives(3, "hang@stage=0,step=9,action=1"); }

Test(faults, slow_keeps_the_hash) { survives(2, "slow@stage=1,step=3,ms=5"); }

Test(faults, ckpt_die_keeps_the_hash) { survives(2, "ckpt-die@stage=1,step=10"); }

/* Dying mid-write of the shard of step 10 (ckpt-every 5) leaves a torn
 * stage-001 file in step-00000010.tmp/: the restart restores the newest
 * step committed before it (step 5, or step 0 when the dying worker had not
 * yet reported its shard of step 5: both are correct), never the torn step
 * 10, and the run still ends on train's hash. */
Test(faults, ckpt_die_mid_write_restores_the_previous_commit) {
  survives(2, "ckpt-die@stage=1,step=10,at=write");
  cr_assert(file_has(err_path, "dying in the middle of writing the shard of step 10"),
            "the worker did not die writing the shard of step 10");
  char *ev = bt_proc_slurp(events_path);
  cr_assert_not_null(ev);
  static char msg[16384];
  snprintf(msg, sizeof msg, "%s", ev);
  const char *restart = strstr(ev, "\"event\":\"restart\"");
  const char *restore = restart ? strstr(restart, "\"restore_step\":") : NULL;
  int restored = restore ? atoi(restore + strlen("\"restore_step\":")) : -1;
  /* The newest commit before the restart. */
  int newest = 0;
  for (const char *c = ev; restart && (c = strstr(c, "\"event\":\"checkpoint\"")) && c < restart; c++) {
    const char *st = strstr(c, "\"step\":"), *res = strstr(c, "\"result\":\"committed\"");
    const char *eol = strchr(c, '\n');
    if (st && res && (!eol || res < eol)) newest = atoi(st + strlen("\"step\":"));
  }
  free(ev);
  cr_assert_not_null(restart, "no restart:\n%s", msg);
  cr_assert_lt(newest, 10, "step 10 committed before the restart:\n%s", msg);
  cr_assert_eq(restored, newest, "the restart restored step %d, the newest commit was %d:\n%s", restored, newest,
               msg);
}

/* A small deterministic generator (splitmix64): the same seed gives the
 * same faults on every machine. */
static uint64_t next_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int64_t env_num(const char *name, int64_t dflt, int64_t lo, int64_t hi) {
  const char *v = getenv(name);
  int64_t x;
  if (!v) return dflt;
  cr_assert_eq(bt_parse_i64(v, lo, hi, &x), 0, "%s: expected a number in [%lld, %lld], got '%s'", name,
               (long long)lo, (long long)hi, v);
  return x;
}

Test(faults, random_campaign) {
  int64_t rounds = env_num("BATON_FAULT_ROUNDS", 3, 0, 1000000);
  uint64_t seed = (uint64_t)env_num("BATON_FAULT_SEED", 1, 0, INT64_MAX);
  char want[33];
  clean_hash(want);
  uint64_t rs = seed;
  /* 2 chunks x 4 micro-batches, F and B each: 16 actions per stage and step */
  const int nact = 16;
  for (int64_t r = 0; r < rounds; r++) {
    int stages = 2 + (int)(next_rand(&rs) % 2);
    bt_fault_t f = {.kind = (bt_fault_kind_t)(next_rand(&rs) % BT_FAULT_NKINDS_),
                    .stage = (int)(next_rand(&rs) % (uint64_t)stages),
                    .step = 1 + (int64_t)(next_rand(&rs) % STEPS),
                    .action = (int)(next_rand(&rs) % (nact + 1)),
                    .code = next_rand(&rs) % 2 ? 1 : 3, /* retryable codes: 2 and 4 end the job */
                    .ms = 1 + (int)(next_rand(&rs) % 10)};
    char spec[BT_FAULT_SPEC_MAX];
    bt_fault_format(&f, spec, sizeof spec);
    fprintf(stderr, "round %lld of %lld (seed %llu): %s on %d stages\n", (long long)r + 1, (long long)rounds,
            (unsigned long long)seed, spec, stages);
    /* every round starts from an empty checkpoint directory */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", ckpt_path);
    cr_assert_eq(system(cmd), 0);
    const char *specs[] = {spec, NULL};
    int code = run_faulty(stages, 2, specs);
    static char msg[16384];
    char *err = bt_proc_slurp(err_path);
    snprintf(msg, sizeof msg, "%s", err ? err : "");
    free(err);
    cr_assert_eq(code, 0, "round %lld (seed %llu) %s: exit %d; stderr:\n%s", (long long)r + 1,
                 (unsigned long long)seed, spec, code, msg);
    char got[33];
    read_hash(got);
    cr_assert_str_eq(got, want, "round %lld (seed %llu) %s: hash %s, clean %s", (long long)r + 1,
                     (unsigned long long)seed, spec, got, want);
  }
}

/* `baton worker --probe`: what `baton run` can ask before spawning. */
static int lines_in(const char *path) {
  char *s = bt_proc_slurp(path);
  int n = 0;
  for (char *p = s; p && *p; p++) n += *p == '\n';
  free(s);
  return n;
}

Test(faults, worker_probe_answers_in_one_line) {
  char *argv[] = {(char *)bt_e2e_env("BATON_BIN"), "worker", "--probe", "cpu", NULL};
  cr_assert_eq(run_argv(argv, 30000), 0);
  cr_assert(file_has(out_path, "ok\n"));
  argv[3] = "tpu";
  cr_assert_eq(run_argv(argv, 30000), 2);
  cr_assert_eq(lines_in(err_path), 1, "stderr is not one line");
  cr_assert(file_has(err_path, "unknown backend 'tpu'"));
  /* without a GPU (or a CUDA build) one line and 2; with one, ok and 0 */
  argv[3] = "cuda";
  int code = run_argv(argv, 60000);
  cr_assert(code == 0 || code == 2, "exit %d", code);
  if (code == 2) cr_assert_eq(lines_in(err_path), 1, "stderr is not one line");
}
