/* test_e2e_train_ckpt.c - `baton train` with checkpoints, end to end: exact
 * resume after SIGKILL, extending a finished run, a finished job rerun,
 * the model read back from the checkpoint (and a conflicting flag refused
 * naming both values), --resume never and PATH, compressed shards that
 * verify and resume bit for bit, retention on disk, and the LOCK.
 *
 * Every hash compared here is computed by a run in the same test: nothing
 * is hard-coded. The model is small (3 blocks, width 32, 32 tokens per
 * micro-batch) so a step takes milliseconds. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/e2e.h"
#include "tests/support/proc.h"

#define MODEL "--layers", "3", "--dim", "32", "--mb-tokens", "32", "--seed", "7"

typedef struct {
  int code;  /* exit code, or 128 + signal */
  char *out; /* stdout */
  char *err; /* stderr */
} result_t;

static bt_e2e_dirs_t e2e;

static void setup(void) { bt_e2e_setup(&e2e, "train_ckpt"); }
static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(train_ckpt, .init = setup, .fini = teardown);

/* The scratch directory's <name>. */
static const char *path_in(const char *name) { return bt_e2e_path(&e2e, name); }

static char *slurp(const char *path) {
  char *s = bt_proc_slurp(path);
  cr_assert(s != NULL, "%s: cannot read", path);
  return s;
}

/* Runs `baton CMD ARGS...` with a deadline; output goes to files so a
 * chatty child never blocks on a full pipe. */
static result_t run_baton(int timeout_s, const char *cmd, const char *const *args) {
  const char *argv[64];
  int n = 0;
  argv[n++] = bt_e2e_env("BATON_BIN");
  argv[n++] = cmd;
  for (int i = 0; args[i]; i++) argv[n++] = args[i];
  argv[n] = NULL;
  result_t r;
  r.code = bt_e2e_run(&e2e, (char *const *)argv, NULL, NULL, timeout_s * 1000);
  r.out = slurp(e2e.out);
  r.err = slurp(e2e.err);
  return r;
}

static result_t run_train(const char *const *args) { return run_baton(120, "train", args); }

static void result_free(result_t *r) {
  free(r->out);
  free(r->err);
}

/* The hash on the last line of stdout, checked for its format. */
static void last_hash(const result_t *r, char hex[33]) {
  const char *out = r->out;
  size_t n = strlen(out);
  cr_assert(n > 0 && out[n - 1] == '\n', "stdout does not end in a line: '%s' (stderr %s)", out,
            r->err);
  const char *p = out + n - 1;
  while (p > out && p[-1] != '\n') p--;
  cr_assert_eq(strncmp(p, "hash ", 5), 0, "last line is not a hash: %s", p);
  cr_assert_eq(strlen(p), 5 + 32 + 1, "last line: %s", p);
  memcpy(hex, p + 5, 32);
  hex[32] = 0;
}

/* Runs `baton train ARGS`, expects exit 0, returns the hash. */
static void train_hash(const char *const *args, char hex[33]) {
  result_t r = run_train(args);
  cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
  last_hash(&r, hex);
  result_free(&r);
}

static void expect_usage_error(const char *const *args, const char *mention) {
  result_t r = run_train(args);
  cr_assert_eq(r.code, 2, "exit %d (want 2), stderr: %s", r.code, r.err);
  int lines = 0;
  for (const char *p = r.err; *p; p++) lines += *p == '\n';
  cr_assert_eq(lines, 1, "not one line on stderr: '%s'", r.err);
  cr_assert_str_eq(r.out, "", "stdout should be empty: %s", r.out);
  cr_assert(strstr(r.err, mention) != NULL, "'%s' does not mention '%s'", r.err, mention);
  result_free(&r);
}

/* The committed steps of a checkpoint root (step-N directories holding a
 * manifest), ascending, into steps; returns how many. */
static int committed(const char *root, long *steps, int max) {
  DIR *d = opendir(root);
  if (!d) return 0;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < max) {
    char *end;
    if (strncmp(e->d_name, "step-", 5)) continue;
    long s = strtol(e->d_name + 5, &end, 10);
    if (*end) continue; /* step-N.tmp: in flight */
    char man[1024];
    snprintf(man, sizeof man, "%s/%s/MANIFEST.json", root, e->d_name);
    if (access(man, F_OK)) continue;
    int i = n++;
    while (i > 0 && steps[i - 1] > s) {
      steps[i] = steps[i - 1];
      i--;
    }
    steps[i] = s;
  }
  closedir(d);
  return n;
}

static int count_lines(const char *path) {
  char *s = slurp(path);
  int n = 0;
  for (char *p = s; *p; p++) n += *p == '\n';
  free(s);
  return n;
}

/* Starts `baton train ARGS` in the background; returns its pid. */
static pid_t spawn_train(const char *const *args, const char *out, const char *err) {
  const char *argv[64];
  int n = 0;
  argv[n++] = getenv("BATON_BIN");
  cr_assert(argv[0] != NULL, "BATON_BIN is not set");
  argv[n++] = "train";
  for (int i = 0; args[i]; i++) argv[n++] = args[i];
  argv[n] = NULL;
  pid_t pid = bt_proc_spawn((char *const *)argv, NULL, out, err);
  cr_assert(pid > 0, "spawn: %s", strerror((int)-pid));
  return pid;
}

/* Polls until root holds at least `want` committed steps or the child
 * exits; at most timeout_ms. Returns the count seen. */
static int wait_committed(const char *root, int want, pid_t pid, int timeout_ms) {
  long steps[256];
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int n = committed(root, steps, 256);
    if (n >= want) return n;
    if (bt_proc_gone(pid)) return n;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 > timeout_ms)
      return n;
    usleep(2000);
  }
}

Test(train_ckpt, sigkill_then_the_same_command_gives_the_uninterrupted_hash) {
  const char *dir = path_in("ck");
  const char *straight[] = {MODEL, "--steps", "400", "--hash", NULL};
  const char *cmd[] = {MODEL, "--steps", "400", "--ckpt-every", "5", "--ckpt-dir", dir, "--hash",
                       NULL};
  pid_t pid = spawn_train(cmd, path_in("bg.out"), path_in("bg.err"));
  int n = wait_committed(dir, 3, pid, 60000);
  kill(-pid, SIGKILL);
  int status = 0;
  cr_assert_eq(bt_proc_wait(pid, 10000, &status), 0, "the killed run did not go away");
  cr_assert(WIFSIGNALED(status), "the run ended before the kill (status %d): the test proves "
            "nothing; stderr: %s", status, bt_proc_slurp(path_in("bg.err")));
  cr_assert_geq(n, 3, "only %d committed steps before the kill", n);
  long steps[64];
  int nc = committed(dir, steps, 64);
  cr_assert(nc >= 1 && steps[nc - 1] < 400, "killed at step %ld of 400", steps[nc - 1]);

  char h1[33], h2[33];
  result_t r = run_train(cmd);
  cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
  char want[128];
  snprintf(want, sizeof want, "resumed from %s/step-", dir);
  cr_assert(strstr(r.out, want) != NULL, "no '%s' in: %s", want, r.out);
  last_hash(&r, h1);
  result_free(&r);
  train_hash(straight, h2);
  cr_assert_str_eq(h1, h2, "killed at step %ld and resumed: %s; uninterrupted: %s",
                   steps[nc - 1], h1, h2);
}

/* baton train commits on its writer thread. The process is stopped
 * inside that commit (the checkpoint module's test hook raises SIGSTOP at
 * the named phase of the first commit, step 10) and killed there: the
 * directory then holds no torn committed step, the step counts only from
 * the directory rename on, and the same command finishes with the
 * uninterrupted hash. */
Test(train_ckpt, killed_inside_the_writer_threads_commit_resumes_to_the_same_hash) {
  const char *straight[] = {MODEL, "--steps", "30", "--hash", NULL};
  char want[33];
  train_hash(straight, want);
  static const struct {
    const char *phase;
    long committed; /* the step committed at the kill, 0 none */
  } at[] = {{"manifest-partial", 0}, {"manifest-renamed", 0}, {"dir-renamed", 10}};
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
    char name[64], env[96];
    snprintf(name, sizeof name, "ck-%s", at[i].phase);
    const char *dir = path_in(name);
    const char *cmd[] = {MODEL, "--steps", "30", "--ckpt-every", "10", "--ckpt-dir", dir, "--hash",
                         NULL};
    snprintf(env, sizeof env, "BATON_CKPT_TEST_STOP=%s", at[i].phase);
    char *extra[] = {env, NULL};
    const char *argv[] = {getenv("BATON_BIN"), "train", MODEL, "--steps", "30", "--ckpt-every", "10",
                          "--ckpt-dir", dir, "--hash", NULL};
    cr_assert(argv[0] != NULL, "BATON_BIN is not set");
    snprintf(name, sizeof name, "stop-%zu.err", i);
    const char *errp = path_in(name);
    pid_t pid = bt_proc_spawn((char *const *)argv, extra, path_in("stop.out"), errp);
    cr_assert(pid > 0, "spawn: %s", strerror((int)-pid));
    char needle[96];
    snprintf(needle, sizeof needle, "stopping at %s", at[i].phase);
    int seen = bt_proc_wait_for_text(errp, needle, 60000);
    kill(-pid, SIGKILL);
    int status = 0;
    cr_assert_eq(bt_proc_wait(pid, 10000, &status), 0, "the killed run did not go away");
    cr_assert(seen, "the run never stopped at %s; stderr: %s", at[i].phase, bt_proc_slurp(errp));
    cr_assert(WIFSIGNALED(status), "%s: the run ended before the kill (status %d)", at[i].phase,
              status);
    long steps[8];
    int nc = committed(dir, steps, 8);
    if (at[i].committed) {
      cr_assert(nc == 1 && steps[0] == at[i].committed, "%s: %d committed steps (want step %ld)",
                at[i].phase, nc, at[i].committed);
    } else {
      cr_assert_eq(nc, 0, "%s: a step counts as committed before its directory was renamed",
                   at[i].phase);
    }
    result_t r = run_train(cmd);
    cr_assert_eq(r.code, 0, "%s: rerun exit %d: %s", at[i].phase, r.code, r.err);
    if (at[i].committed)
      cr_assert(strstr(r.out, "resumed from") != NULL, "%s: the rerun did not resume: %s",
                at[i].phase, r.out);
    char got[33];
    last_hash(&r, got);
    result_free(&r);
    cr_assert_str_eq(got, want, "%s: killed in the commit and rerun: %s; uninterrupted: %s",
                     at[i].phase, got, want);
    nc = committed(dir, steps, 8);
    cr_assert(nc >= 1 && steps[nc - 1] == 30, "%s: the final step 30 is not committed",
              at[i].phase);
  }
}

Test(train_ckpt, a_run_extended_to_2n_steps_matches_a_straight_2n_run) {
  const char *dir = path_in("ck");
  const char *first[] = {MODEL, "--steps", "25", "--ckpt-dir", dir, "--hash", NULL};
  /* The model flags left out: they come from the checkpoint (--seed 7
   * included, which is not the default). */
  const char *second[] = {"--steps", "50", "--ckpt-dir", dir, "--hash", NULL};
  const char *straight[] = {MODEL, "--steps", "50", "--hash", NULL};
  char h25[33], h50[33], hs[33];
  train_hash(first, h25);
  train_hash(second, h50);
  train_hash(straight, hs);
  cr_assert_str_eq(h50, hs, "25 + 25 resumed: %s; 50 straight: %s", h50, hs);
  cr_assert_str_neq(h25, h50, "the second run trained nothing");
}

Test(train_ckpt, rerunning_a_finished_job_prints_its_hash_without_training) {
  const char *dir = path_in("ck"), *metrics = path_in("m.jsonl");
  const char *cmd[] = {MODEL,     "--steps", "30",   "--ckpt-dir", dir,
                       "--metrics", metrics, "--hash", NULL};
  char h1[33], h2[33];
  train_hash(cmd, h1);
  cr_assert_eq(count_lines(metrics), 30);
  result_t r = run_train(cmd);
  cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
  last_hash(&r, h2);
  cr_assert_str_eq(h1, h2);
  cr_assert(strstr(r.out, "nothing to train") != NULL, "%s", r.out);
  cr_assert_null(strstr(r.out, "\nstep "), "it trained: %s", r.out);
  cr_assert_eq(count_lines(metrics), 30, "the rerun wrote metrics lines");
  long steps[8];
  cr_assert_eq(committed(dir, steps, 8), 1);
  cr_assert_eq(steps[0], 30);
  result_free(&r);
  /* A shorter --steps than the checkpoint holds: its state, as it is. */
  const char *shorter[] = {"--steps", "10", "--ckpt-dir", dir, "--hash", NULL};
  train_hash(shorter, h2);
  cr_assert_str_eq(h1, h2);
}

Test(train_ckpt, an_explicit_model_flag_with_another_value_names_both_values) {
  const char *dir = path_in("ck");
  const char *first[] = {MODEL, "--steps", "5", "--ckpt-dir", dir, NULL};
  result_t r = run_train(first);
  cr_assert_eq(r.code, 0, "%s", r.err);
  result_free(&r);
  const char *dim[] = {"--layers", "3", "--dim", "48", "--steps", "10", "--ckpt-dir", dir, NULL};
  expect_usage_error(dim, "--dim: the checkpoint has 32, the command line says 48");
  const char *seed[] = {"--seed", "8", "--steps", "10", "--ckpt-dir", dir, NULL};
  expect_usage_error(seed, "--seed: the checkpoint has 7, the command line says 8");
  const char *two[] = {"--layers", "4", "--lr", "0.01", "--steps", "10", "--ckpt-dir", dir, NULL};
  expect_usage_error(two, "--layers: the checkpoint has 3, the command line says 4; --lr: the "
                          "checkpoint has");
  /* The same values given again are fine. */
  const char *same[] = {MODEL, "--steps", "10", "--ckpt-dir", dir, "--hash", NULL};
  char h[33];
  train_hash(same, h);
}

Test(train_ckpt, resume_never_starts_fresh_and_refuses_a_directory_with_steps) {
  const char *dir = path_in("ck");
  const char *cmd[] = {MODEL, "--steps", "10", "--ckpt-dir", dir, "--resume", "never", "--hash",
                       NULL};
  const char *straight[] = {MODEL, "--steps", "10", "--hash", NULL};
  char h1[33], h2[33];
  result_t r = run_train(cmd);
  cr_assert_eq(r.code, 0, "%s", r.err);
  cr_assert_null(strstr(r.out, "resumed"), "%s", r.out);
  last_hash(&r, h1);
  result_free(&r);
  train_hash(straight, h2);
  cr_assert_str_eq(h1, h2);
  expect_usage_error(cmd, "already holds committed step 10");
  long steps[8];
  cr_assert_eq(committed(dir, steps, 8), 1, "the refused run touched the directory");
  cr_assert_eq(steps[0], 10);
}

Test(train_ckpt, resume_from_a_step_directory_or_a_root) {
  const char *src = path_in("src");
  const char *first[] = {MODEL, "--steps", "20", "--ckpt-every", "5", "--keep", "10",
                         "--ckpt-dir", src, NULL};
  result_t r = run_train(first);
  cr_assert_eq(r.code, 0, "%s", r.err);
  result_free(&r);
  char step10[600];
  snprintf(step10, sizeof step10, "%s/step-00000010", src);
  /* A step directory: that step, even though the root holds newer ones.
   * Going on to 20 again must give the first run's step 20. */
  const char *from_step[] = {"--steps", "20", "--ckpt-dir", path_in("a"), "--resume", step10,
                             "--hash", NULL};
  const char *straight20[] = {MODEL, "--steps", "20", "--hash", NULL};
  char h[33], hs[33];
  r = run_train(from_step);
  cr_assert_eq(r.code, 0, "%s", r.err);
  cr_assert(strstr(r.out, "(step 10)") != NULL, "%s", r.out);
  last_hash(&r, h);
  result_free(&r);
  train_hash(straight20, hs);
  cr_assert_str_eq(h, hs, "from step 10 to 20: %s; straight: %s", h, hs);
  /* A root: its newest committed step. */
  const char *from_root[] = {"--steps", "30", "--ckpt-dir", path_in("b"), "--resume", src,
                             "--hash", NULL};
  const char *straight30[] = {MODEL, "--steps", "30", "--hash", NULL};
  r = run_train(from_root);
  cr_assert_eq(r.code, 0, "%s", r.err);
  cr_assert(strstr(r.out, "(step 20)") != NULL, "%s", r.out);
  last_hash(&r, h);
  result_free(&r);
  train_hash(straight30, hs);
  cr_assert_str_eq(h, hs);
  /* Into the directory it came from, behind its newest step: refused. */
  const char *behind[] = {"--steps", "30", "--ckpt-dir", src, "--resume", step10, NULL};
  expect_usage_error(behind, "already holds step 20");
  const char *missing[] = {"--steps", "30", "--ckpt-dir", path_in("c"), "--resume",
                           path_in("nowhere"), NULL};
  expect_usage_error(missing, "nowhere");
  const char *empty[] = {"--steps", "30", "--ckpt-dir", path_in("d"), "--resume", e2e.dir, NULL};
  expect_usage_error(empty, "neither a step directory");
}

static long file_size(const char *path) {
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0, "%s: %s", path, strerror(errno));
  return (long)sb.st_size;
}

Test(train_ckpt, deflate_shards_verify_and_resume_bit_identically) {
  const char *zdir = path_in("z"), *pdir = path_in("p");
  const char *zrun[] = {MODEL, "--steps", "20", "--ckpt-every", "10", "--ckpt-dir", zdir,
                        "--ckpt-compress", "deflate:3", "--hash", NULL};
  const char *prun[] = {MODEL, "--steps", "20", "--ckpt-every", "10", "--ckpt-dir", pdir,
                        "--hash", NULL};
  char hz[33], hp[33];
  train_hash(zrun, hz);
  train_hash(prun, hp);
  cr_assert_str_eq(hz, hp, "compression changed the training");
  char zs[600], ps[600], z10[600];
  snprintf(zs, sizeof zs, "%s/step-00000020/stage-000-of-001.h5", zdir);
  snprintf(ps, sizeof ps, "%s/step-00000020/stage-000-of-001.h5", pdir);
  snprintf(z10, sizeof z10, "%s/step-00000010", zdir);
  long zb = file_size(zs), pb = file_size(ps);
  cr_assert_lt(zb, pb, "deflate shard %ld bytes, plain %ld", zb, pb);
  const char *verify[] = {"verify", z10, NULL};
  result_t r = run_baton(60, "ckpt", verify);
  cr_assert_eq(r.code, 0, "verify %s: exit %d: %s%s", z10, r.code, r.out, r.err);
  result_free(&r);
  const char *hash[] = {"hash", zdir, NULL};
  r = run_baton(60, "ckpt", hash);
  cr_assert_eq(r.code, 0, "%s", r.err);
  char hc[33];
  last_hash(&r, hc);
  result_free(&r);
  cr_assert_str_eq(hc, hz, "baton ckpt hash of the compressed step 20");
  /* Resume from the compressed step 10 (into a plain directory). */
  const char *resume[] = {"--steps", "20", "--ckpt-dir", path_in("r"), "--resume", z10, "--hash",
                          NULL};
  char hr[33];
  train_hash(resume, hr);
  cr_assert_str_eq(hr, hz);
}

Test(train_ckpt, keep_and_keep_every_decide_what_stays_on_disk) {
  const char *dir = path_in("ck");
  const char *cmd[] = {MODEL, "--steps", "24", "--ckpt-every", "2", "--keep", "2",
                       "--keep-every", "8", "--ckpt-dir", dir, NULL};
  result_t r = run_train(cmd);
  cr_assert_eq(r.code, 0, "%s", r.err);
  result_free(&r);
  long steps[32];
  int n = committed(dir, steps, 32);
  long want[] = {8, 16, 22, 24};
  cr_assert_eq(n, 4, "%d committed steps kept", n);
  for (int i = 0; i < 4; i++) cr_assert_eq(steps[i], want[i], "kept[%d] = %ld", i, steps[i]);
  /* Nothing else: no .tmp directory, no step without a manifest. */
  DIR *d = opendir(dir);
  struct dirent *e;
  int others = 0;
  while ((e = readdir(d)))
    others += !strncmp(e->d_name, "step-", 5) && strchr(e->d_name, '.') != NULL;
  closedir(d);
  cr_assert_eq(others, 0);
}

Test(train_ckpt, a_second_train_on_a_locked_directory_is_refused_naming_the_holder) {
  const char *dir = path_in("ck");
  const char *first[] = {MODEL, "--steps", "100000", "--ckpt-every", "5", "--ckpt-dir", dir,
                         NULL};
  pid_t pid = spawn_train(first, path_in("bg.out"), path_in("bg.err"));
  cr_assert_geq(wait_committed(dir, 1, pid, 60000), 1, "the first run committed nothing: %s",
                bt_proc_slurp(path_in("bg.err")));
  cr_assert_not(bt_proc_gone(pid), "the first run ended early");
  char holder[64];
  snprintf(holder, sizeof holder, "pid %d on host", (int)pid);
  const char *second[] = {MODEL, "--steps", "10", "--ckpt-dir", dir, NULL};
  expect_usage_error(second, holder);
  cr_assert_not(bt_proc_gone(pid), "the refused run disturbed the first");
  kill(-pid, SIGKILL);
  int status;
  cr_assert_eq(bt_proc_wait(pid, 10000, &status), 0);
  /* Its holder is gone now: the lock is taken over. */
  const char *third[] = {"--steps", "1", "--ckpt-dir", dir, "--hash", NULL};
  char h[33];
  train_hash(third, h);
}

Test(train_ckpt, bad_checkpoint_flags_exit_2_with_one_line) {
  const char *dir = path_in("ck");
  const char *cases[][8] = {
      {"--keep", "0", "--ckpt-dir", dir, NULL},
      {"--ckpt-every", "x", "--ckpt-dir", dir, NULL},
      {"--ckpt-compress", "gzip", "--ckpt-dir", dir, NULL},
      {"--ckpt-compress", "deflate:12", "--ckpt-dir", dir, NULL},
      {"--keep-every", "4", NULL},
      {"--resume", "never", NULL},
  };
  const char *mention[] = {"--keep", "--ckpt-every", "--ckpt-compress", "deflate level",
                           "--keep-every", "--resume"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_usage_error(cases[i], mention[i]);
}

/* Puts a NaN into AdamW's m of /layers/000001/w1 of a one-shard step and
 * reseals it (dataset crc attribute, manifest size and CRC), so the step
 * verifies and loads; the NaN reaches the parameters only through the
 * next optimizer step, when the loss of that step is still finite. */
static const char poison_py[] =
    "import sys, os, re, zlib\n"
    "import h5py, numpy as np\n"
    "step = sys.argv[1]\n"
    "shard = os.path.join(step, 'stage-000-of-001.h5')\n"
    "with h5py.File(shard, 'r+') as f:\n"
    "    d = f['/optim/000001/m/w1']\n"
    "    a = d[...]\n"
    "    a.flat[0] = np.nan\n"
    "    d[...] = a\n"
    "    d.attrs.modify('crc', zlib.crc32(a.astype('<f4').tobytes()))\n"
    "data = open(shard, 'rb').read()\n"
    "p = os.path.join(step, 'MANIFEST.json')\n"
    "m = re.sub(r'\"size\":\\d+,\"crc\":\\d+', '\"size\":%d,\"crc\":%d' % (len(data), "
    "zlib.crc32(data)), open(p).read())\n"
    "open(p, 'w').write(m)\n";

Test(train_ckpt, nonfinite_parameters_at_a_save_exit_3_naming_the_step) {
  if (bt_e2e_sh(&e2e, "/usr/bin/python3 -c 'import h5py, numpy'", 30000) != 0)
    cr_skip_test("/usr/bin/python3 cannot import h5py and numpy");
  const char *src = path_in("src"), *out = path_in("dst"), *py = path_in("poison.py");
  const char *first[] = {MODEL, "--steps", "10", "--ckpt-dir", src, NULL};
  result_t r = run_train(first);
  cr_assert_eq(r.code, 0, "%s", r.err);
  result_free(&r);
  FILE *f = fopen(py, "w");
  cr_assert(f != NULL);
  fputs(poison_py, f);
  fclose(f);
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s/step-00000010", py, src);
  cr_assert_eq(bt_e2e_sh(&e2e, cmd, 60000), 0, "%s failed: %s", cmd, slurp(e2e.err));
  const char *resume[] = {"--steps", "15", "--ckpt-every", "1", "--ckpt-dir", out, "--resume",
                          src, NULL};
  r = run_train(resume);
  cr_assert_eq(r.code, 3, "exit %d (want 3): %s", r.code, r.err);
  cr_assert(strstr(r.err, "step 11: the parameters hold NaN or Inf") != NULL, "%s", r.err);
  result_free(&r);
  long steps[8];
  cr_assert_eq(committed(out, steps, 8), 0, "a step with NaN was committed");
}
