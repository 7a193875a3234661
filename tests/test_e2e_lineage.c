/* test_e2e_lineage.c - a job restores only steps on its own lineage
 * (checkpoint/lineage.c), end to end, and `run` and `train` resume by the
 * same rules (common/config.c, bt_config_match_checkpoint).
 *
 * The case that motivated it: `baton run --resume A/step-20 --ckpt-dir X`
 * where X already holds a newer committed step of the same model (from the
 * run being rolled back). A restart used to load X's newest step, say 0
 * steps replayed, and end with another hash than `baton train`. Now the
 * start refuses such a directory (exit 2 naming the steps) unless asked to
 * move them aside, and a restart picks this job's newest commit, else the
 * step it started from. Every run ends with `baton train`'s hash, computed
 * in the same test.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/exitcodes.h"
#include "tests/support/e2e.h"
#include "tests/support/proc.h"

#define RUN_TIMEOUT_MS 90000

static bt_e2e_dirs_t e2e;

static void setup(void) { bt_e2e_setup(&e2e, "lineage"); }
static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(lineage, .init = setup, .fini = teardown, .timeout = 300);

static const char *const model[] = {"--layers", "4", "--dim", "32", "--mb-tokens", "32", NULL};
static const char *const quick[] = {"--heartbeat-timeout", "1", "--progress-timeout", "2", "--grace", "1",
                                    "--backoff", "0.05", "--no-progress", NULL};

static char *slurp_or_empty(const char *path) {
  char *s = bt_proc_slurp(path);
  return s ? s : strdup("");
}

/* Runs `baton CMD` + model flags + --steps N + args (NULL-terminated), in
 * `cwd` when not NULL; returns the exit code. */
static int baton(const char *cwd, const char *cmd, int steps, const char *const *args) {
  char *argv[96], ssteps[16];
  int k = 0;
  snprintf(ssteps, sizeof ssteps, "%d", steps);
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  argv[k++] = (char *)cmd;
  for (int i = 0; model[i]; i++) argv[k++] = (char *)model[i];
  argv[k++] = "--steps";
  argv[k++] = ssteps;
  for (int i = 0; args && args[i]; i++) argv[k++] = (char *)args[i];
  if (!strcmp(cmd, "run"))
    for (int i = 0; quick[i]; i++) argv[k++] = (char *)quick[i];
  argv[k] = NULL;
  unlink(e2e.out);
  unlink(e2e.err);
  char here[4096];
  cr_assert_not_null(getcwd(here, sizeof here));
  if (cwd) cr_assert_eq(chdir(cwd), 0, "chdir %s: %s", cwd, strerror(errno));
  pid_t pid = bt_proc_spawn(argv, NULL, e2e.out, e2e.err);
  if (cwd) cr_assert_eq(chdir(here), 0);
  cr_assert_gt(pid, 0, "spawn failed: %s", strerror(-pid));
  int st = 0;
  cr_assert_eq(bt_proc_wait(pid, RUN_TIMEOUT_MS, &st), 0, "baton %s did not end in time", cmd);
  cr_assert(WIFEXITED(st), "baton %s died of signal %d", cmd, WTERMSIG(st));
  return WEXITSTATUS(st);
}

static void check_code(int got, int want) {
  if (got == want) return;
  static char msg[24576];
  char *e = slurp_or_empty(e2e.err);
  size_t n = strlen(e);
  snprintf(msg, sizeof msg, "%s", n > 24000 ? e + n - 24000 : e);
  free(e);
  cr_assert_fail("exit code %d, expected %d; stderr:\n%s", got, want, msg);
}

static void read_hash(char hex[33]) {
  char *out = slurp_or_empty(e2e.out);
  char *p = NULL;
  for (char *q = strstr(out, "hash "); q; q = strstr(q + 1, "hash "))
    if (q == out || q[-1] == '\n') p = q;
  cr_assert_not_null(p, "no hash line in the output:\n%s", out);
  memcpy(hex, p + 5, 32);
  hex[32] = 0;
  free(out);
}

static void train_hash(int steps, char hex[33]) {
  const char *h[] = {"--hash", NULL};
  check_code(baton(NULL, "train", steps, h), 0);
  read_hash(hex);
}

static void assert_hash_is(const char *want) {
  char got[33];
  read_hash(got);
  cr_assert_str_eq(got, want, "hash %s, baton train gives %s", got, want);
}

static void assert_file_has(const char *path, const char *needle) {
  char *s = slurp_or_empty(path);
  int yes = strstr(s, needle) != NULL;
  static char msg[16384];
  snprintf(msg, sizeof msg, "%s", s);
  free(s);
  cr_assert(yes, "'%s' not in %s:\n%s", needle, path, msg);
}

static void assert_file_lacks(const char *path, const char *needle) {
  char *s = slurp_or_empty(path);
  int no = strstr(s, needle) == NULL;
  static char msg[16384];
  snprintf(msg, sizeof msg, "%s", s);
  free(s);
  cr_assert(no, "'%s' unexpectedly in %s:\n%s", needle, path, msg);
}

static int exists(const char *fmt, const char *a, const char *b) {
  char p[1024];
  struct stat sb;
  snprintf(p, sizeof p, fmt, a, b);
  return stat(p, &sb) == 0;
}

/* The one aside-* folder of root, into out. */
static void aside_dir(const char *root, char *out, size_t len) {
  DIR *d = opendir(root);
  cr_assert_not_null(d);
  struct dirent *e;
  int found = 0;
  while ((e = readdir(d)))
    if (!strncmp(e->d_name, "aside-", 6)) {
      snprintf(out, len, "%s/%s", root, e->d_name);
      found++;
    }
  closedir(d);
  cr_assert_eq(found, 1, "%d aside folders in %s", found, root);
}

/* The restore_step of the first restart event. */
static long restart_restore_step(void) {
  char *s = slurp_or_empty(e2e.events);
  char *r = strstr(s, "\"event\":\"restart\"");
  cr_assert_not_null(r, "no restart event:\n%s", s);
  char *k = strstr(r, "\"restore_step\":");
  cr_assert_not_null(k);
  long v = strtol(k + strlen("\"restore_step\":"), NULL, 10);
  free(s);
  return v;
}

/* dir/A holds step 10 of the model (the point to roll back to). */
static void make_a(char *a, size_t alen, char *step, size_t slen) {
  snprintf(a, alen, "%s/A", e2e.dir);
  snprintf(step, slen, "%s/step-00000010", a);
  const char *args[] = {"--stages", "2", "--ckpt-dir", a, NULL};
  check_code(baton(NULL, "run", 10, args), 0);
}

/* A crash of stage 1 of a job resumed from A/step-10 into an empty X,
 * training to 30 with a checkpoint every `every`: ends with train's hash;
 * returns the step the restart restored. */
static long resume_then_crash(const char *every, const char *crash) {
  char h[33], a[300], step[340];
  train_hash(30, h);
  make_a(a, sizeof a, step, sizeof step);
  const char *args[] = {"--stages",      "3",  "--resume", step,  "--ckpt-dir", e2e.ckpt, "--ckpt-every",
                        every,           "--events", e2e.events, "--inject-fault", crash, "--hash", NULL};
  check_code(baton(NULL, "run", 30, args), 0);
  assert_hash_is(h);
  return restart_restore_step();
}

Test(lineage, resume_path_then_a_crash_before_the_first_new_commit_restarts_from_path) {
  /* the first commit of the new job is step 20 */
  cr_assert_eq(resume_then_crash("10", "crash@stage=1,step=15"), 10);
  assert_file_has(e2e.err, "from checkpoint step 10");
}

Test(lineage, resume_path_then_a_crash_after_the_first_new_commit_restarts_from_it) {
  /* commits at 15, 20, 25 race the crash at 29 (shards are written in the
   * background): the restart must take one of them, never A's step 10 */
  long r = resume_then_crash("5", "crash@stage=1,step=29");
  cr_assert(r == 15 || r == 20 || r == 25, "restored step %ld, expected one of this job's commits", r);
}

/* The case: X holds a newer committed step of the same model (the
 * run being rolled back); --resume A/step-10 into X is refused before
 * anything starts, naming the step and the ways on. */
Test(lineage, a_newer_step_in_the_directory_is_refused_naming_it) {
  char a[300], step[340];
  make_a(a, sizeof a, step, sizeof step);
  const char *ahead[] = {"--stages", "2", "--ckpt-dir", e2e.ckpt, "--ckpt-every", "10", NULL};
  check_code(baton(NULL, "run", 20, ahead), 0);
  const char *args[] = {"--stages", "3", "--resume", step, "--ckpt-dir", e2e.ckpt, "--hash", NULL};
  check_code(baton(NULL, "run", 30, args), BT_EXIT_USAGE);
  assert_file_has(e2e.err, "step-00000020");
  assert_file_has(e2e.err, "--newer-steps move-aside");
  assert_file_lacks(e2e.err, "started stage");
  /* nothing was touched */
  cr_assert(exists("%s/%s", e2e.ckpt, "step-00000020/MANIFEST.json"));
  /* `baton train` says the same */
  check_code(baton(NULL, "train", 30, args + 2), BT_EXIT_USAGE);
  assert_file_has(e2e.err, "step-00000020");
}

/* A foreign step (another seed) older than PATH is off the lineage too:
 * the new job's retention would delete it. */
Test(lineage, an_older_step_of_another_job_is_refused_too) {
  char a[300], step[340];
  make_a(a, sizeof a, step, sizeof step);
  const char *other[] = {"--stages", "2", "--ckpt-dir", e2e.ckpt, "--seed", "7", NULL};
  check_code(baton(NULL, "run", 5, other), 0);
  const char *args[] = {"--stages", "2", "--resume", step, "--ckpt-dir", e2e.ckpt, NULL};
  check_code(baton(NULL, "run", 20, args), BT_EXIT_USAGE);
  assert_file_has(e2e.err, "step-00000005");
}

/* --newer-steps move-aside: the newer steps of the rolled-back run (and a
 * foreign one) go into CKPT_DIR/aside-<UTC>/, intact; the job then crashes
 * after its first commit and still ends with train's hash. */
Test(lineage, move_aside_keeps_the_newer_steps_and_the_job_keeps_train_s_hash) {
  char h[33], a[300], step[340], aside[700];
  train_hash(30, h);
  make_a(a, sizeof a, step, sizeof step);
  const char *ahead[] = {"--stages", "2", "--ckpt-dir", e2e.ckpt, "--ckpt-every", "10", "--seed", "7", NULL};
  check_code(baton(NULL, "run", 40, ahead), 0);
  const char *args[] = {"--stages", "3", "--resume", step, "--ckpt-dir", e2e.ckpt, "--ckpt-every", "5",
                        "--newer-steps", "move-aside", "--events", e2e.events, "--inject-fault",
                        "crash@stage=2,step=29", "--hash", NULL};
  check_code(baton(NULL, "run", 30, args), 0);
  assert_hash_is(h);
  assert_file_has(e2e.err, "moved step-00000040, step-00000030");
  long r = restart_restore_step();
  cr_assert(r == 15 || r == 20 || r == 25, "restored step %ld, expected one of this job's commits", r);
  aside_dir(e2e.ckpt, aside, sizeof aside);
  cr_assert(exists("%s/%s", aside, "step-00000040/MANIFEST.json"), "step 40 not kept in %s", aside);
  cr_assert(exists("%s/%s", aside, "step-00000030/MANIFEST.json"), "step 30 not kept in %s", aside);
  /* the new job's step 30 is in place, and a rerun continues it */
  check_code(baton(NULL, "run", 30, (const char *const[]){"--stages", "2", "--ckpt-dir", e2e.ckpt, "--hash", NULL}),
             0);
  assert_hash_is(h);
}

Test(lineage, train_moves_newer_steps_aside_too_and_keeps_its_hash) {
  char h[33], a[300], step[340], aside[700];
  train_hash(20, h);
  make_a(a, sizeof a, step, sizeof step);
  const char *ahead[] = {"--ckpt-dir", e2e.ckpt, NULL};
  check_code(baton(NULL, "train", 15, ahead), 0);
  const char *args[] = {"--resume", step, "--ckpt-dir", e2e.ckpt, "--newer-steps", "move-aside", "--hash", NULL};
  check_code(baton(NULL, "train", 20, args), 0);
  assert_hash_is(h);
  aside_dir(e2e.ckpt, aside, sizeof aside);
  cr_assert(exists("%s/%s", aside, "step-00000015/MANIFEST.json"));
}

/* ---- run and train resume by the same rules (bt_config_match_checkpoint) ---- */

/* dir/NAME/d.bin: 8 KiB of text-like bytes (the same for every call, so a
 * copy is the same data). */
static void make_data(const char *sub, char *folder, size_t len) {
  snprintf(folder, len, "%s/%s", e2e.dir, sub);
  mkdir(folder, 0755);
  char p[600];
  snprintf(p, sizeof p, "%s/d.bin", folder);
  FILE *f = fopen(p, "w");
  cr_assert_not_null(f);
  uint32_t x = 12345;
  for (int i = 0; i < 8192; i++) {
    x = x * 1103515245u + 12345u;
    fputc("abcdefgh ijklmnop\n"[(x >> 16) % 18], f);
  }
  cr_assert_eq(fclose(f), 0);
}

static void train_data_hash(const char *folder, int steps, char hex[33]) {
  char p[600];
  snprintf(p, sizeof p, "%s/d.bin", folder);
  const char *args[] = {"--data", p, "--hash", NULL};
  check_code(baton(NULL, "train", steps, args), 0);
  read_hash(hex);
}

/* `baton run --data d.bin --ckpt-dir ck` run twice from the same folder
 * (preempted, "run again to resume"), then from another folder holding a
 * copy of the file: the same data by content, so it resumes. */
Test(lineage, a_relative_data_path_resumes_from_the_same_and_from_another_folder) {
  char one[300], two[300], h16[33], h22[33];
  make_data("one", one, sizeof one);
  make_data("two", two, sizeof two);
  train_data_hash(one, 16, h16);
  train_data_hash(one, 22, h22);
  const char *args[] = {"--stages", "2", "--data", "d.bin", "--ckpt-dir", "ck", "--hash", NULL};
  check_code(baton(one, "run", 10, args), 0);
  check_code(baton(one, "run", 16, args), 0);
  assert_file_has(e2e.err, "resuming from ck step 10");
  assert_hash_is(h16);
  const char *elsewhere[] = {"--stages", "3", "--data", "d.bin", "--ckpt-dir", "../one/ck", "--hash", NULL};
  check_code(baton(two, "run", 22, elsewhere), 0);
  assert_hash_is(h22);
  /* `baton train` by the same rule, from the other folder too */
  const char *t[] = {"--data", "d.bin", "--ckpt-dir", "../one/ck", "--hash", NULL};
  check_code(baton(two, "train", 22, t), 0);
  assert_hash_is(h22);
}

/* A data file edited under a checkpoint: exit 2 before any worker starts,
 * naming both sizes and CRCs; `baton train` the same. */
Test(lineage, a_data_file_edited_under_a_checkpoint_is_refused_before_anything_starts) {
  char one[300], p[600];
  make_data("one", one, sizeof one);
  const char *args[] = {"--stages", "2", "--data", "d.bin", "--ckpt-dir", "ck", NULL};
  check_code(baton(one, "run", 6, args), 0);
  snprintf(p, sizeof p, "%s/d.bin", one);
  FILE *f = fopen(p, "r+");
  cr_assert_not_null(f);
  fputc('Z', f);
  cr_assert_eq(fclose(f), 0);
  check_code(baton(one, "run", 12, args), BT_EXIT_USAGE);
  assert_file_has(e2e.err, "holds another model: --data: the checkpoint was trained on 8192 bytes");
  assert_file_lacks(e2e.err, "started stage");
  const char *t[] = {"--data", "d.bin", "--ckpt-dir", "ck", NULL};
  check_code(baton(one, "train", 12, t), BT_EXIT_USAGE);
  assert_file_has(e2e.err, "holds another model: --data: the checkpoint was trained on 8192 bytes");
  /* and without --data (the checkpoint's own path): the same refusal */
  const char *bare[] = {"--stages", "2", "--ckpt-dir", "ck", NULL};
  check_code(baton(one, "run", 12, bare), BT_EXIT_USAGE);
  assert_file_has(e2e.err, "with CRC-32");
  assert_file_lacks(e2e.err, "started stage");
}
