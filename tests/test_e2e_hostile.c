/* test_e2e_hostile.c - hostile inputs, stopped supervisors and failed saves
 * (issue 11): a FIFO or /dev/zero where baton expects a file, a connection
 * flood on the data plane, Ctrl-Z and SIGSTOP of the supervisor, SIGHUP, a
 * full disk at the final save, `latest` replaced by a directory, LOCK deleted
 * under a running job. Each must end in one line and a documented exit code
 * (or in the job finishing with `baton train`'s hash), never in a hang. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/exitcodes.h"
#include "tests/support/e2e.h"
#include "tests/support/proc.h"

static bt_e2e_dirs_t e2e;
static char *const dir = e2e.dir, *const out_path = e2e.out, *const err_path = e2e.err,
                  *const ckpt_path = e2e.ckpt;

static void setup(void) { bt_e2e_setup(&e2e, "hostile"); }
static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(hostile, .init = setup, .fini = teardown, .timeout = 240);

#define MODEL "--layers", "4", "--dim", "32", "--mb-tokens", "32"
/* A hang is what these tests exist to catch: a refusal takes milliseconds. */
#define REFUSE_MS 20000
#define RUN_MS 120000

static char scratch[8][600];
static int nscratch;

/* dir/name, in one of a few static buffers. */
static char *path_in(const char *name) {
  char *p = scratch[nscratch++ % 8];
  snprintf(p, sizeof scratch[0], "%s/%s", dir, name);
  return p;
}

/* Starts `baton ARGS…` (NULL-terminated) with fresh stdout and stderr files. */
static pid_t start(const char *const *args, char *const *env) {
  char *argv[64];
  int k = 0;
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  for (int i = 0; args[i] && k < 63; i++) argv[k++] = (char *)args[i];
  argv[k] = NULL;
  unlink(out_path);
  unlink(err_path);
  pid_t pid = bt_proc_spawn(argv, env, out_path, err_path);
  cr_assert_gt(pid, 0, "spawn failed: %s", strerror(-pid));
  return pid;
}

static char *slurp_err(void) {
  char *s = bt_proc_slurp(err_path);
  return s ? s : strdup("");
}

/* Waits for `pid`; its exit code (a signal fails the test). */
static int finish(pid_t pid, int timeout_ms) {
  int st = 0;
  if (bt_proc_wait(pid, timeout_ms, &st) != 0) {
    static char msg[8192];
    char *err = slurp_err();
    snprintf(msg, sizeof msg, "%s", err);
    free(err);
    kill(-pid, SIGKILL);
    cr_assert_fail("baton did not end within %d ms (a hang); stderr:\n%s", timeout_ms, msg);
  }
  cr_assert(WIFEXITED(st), "baton died of signal %d", WTERMSIG(st));
  return WEXITSTATUS(st);
}

static int run_to_end(const char *const *args, int timeout_ms) { return finish(start(args, NULL), timeout_ms); }

/* `baton ARGS…` must exit 2 with exactly one line on stderr holding `needle`. */
static void assert_refused(const char *const *args, const char *needle) {
  int code = run_to_end(args, REFUSE_MS);
  char *e = slurp_err();
  int lines = 0;
  for (const char *p = e; *p; p++) lines += *p == '\n';
  cr_assert_eq(code, 2, "%s %s: exit %d, stderr:\n%s", args[0], args[1], code, e);
  cr_assert_eq(lines, 1, "%s %s: %d lines on stderr:\n%s", args[0], args[1], lines, e);
  cr_assert_not_null(strstr(e, needle), "'%s' not in:\n%s", needle, e);
  free(e);
}

static int file_has(const char *path, const char *needle) {
  char *s = bt_proc_slurp(path);
  int has = s && strstr(s, needle);
  free(s);
  return has;
}

/* The 32 hex digits after the last "hash " in a file (0 when none). */
static int hash_of(const char *path, char hex[33]) {
  char *s = bt_proc_slurp(path), *p = s, *last = NULL;
  while (p && (p = strstr(p, "hash ")))
    last = p, p += 5;
  int ok = last && strlen(last) >= 5 + 32;
  if (ok) {
    memcpy(hex, last + 5, 32);
    hex[32] = 0;
  }
  free(s);
  return ok;
}

/* `baton train MODEL --steps N --hash`: the reference every run must match. */
static void train_hash(int steps, char hex[33]) {
  char s[16];
  snprintf(s, sizeof s, "%d", steps);
  const char *args[] = {"train", MODEL, "--steps", s, "--hash", NULL};
  cr_assert_eq(run_to_end(args, RUN_MS), 0);
  cr_assert(hash_of(out_path, hex), "no hash from baton train");
}

/* A FIFO and a symlink to /dev/zero in the scratch directory. */
static void make_hostile(char **fifo, char **zero) {
  *fifo = path_in("fifo");
  *zero = path_in("zero");
  cr_assert_eq(mkfifo(*fifo, 0600), 0, "mkfifo: %s", strerror(errno));
  cr_assert_eq(symlink("/dev/zero", *zero), 0, "symlink: %s", strerror(errno));
}

/* ---- files that are not files ---- */

Test(hostile, data_flag_refuses_fifo_and_dev_zero) {
  char *fifo, *zero;
  make_hostile(&fifo, &zero);
  const char *paths[] = {fifo, zero, "/dev/zero", NULL};
  for (int i = 0; paths[i]; i++) {
    const char *train[] = {"train", MODEL, "--steps", "1", "--data", paths[i], NULL};
    assert_refused(train, "not a regular file");
    const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "1", "--data", paths[i], NULL};
    assert_refused(run, "not a regular file");
  }
}

Test(hostile, schedule_flag_refuses_fifo_dev_zero_and_directory) {
  char *fifo, *zero;
  make_hostile(&fifo, &zero);
  const char *paths[] = {fifo, zero, NULL};
  for (int i = 0; paths[i]; i++) {
    const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "1", "--schedule", paths[i], NULL};
    assert_refused(run, "not a regular file");
  }
  const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "1", "--schedule", dir, NULL};
  assert_refused(run, "Is a directory");
}

Test(hostile, from_trace_refuses_fifo_and_dev_zero) {
  char *fifo, *zero;
  make_hostile(&fifo, &zero);
  const char *paths[] = {fifo, zero, NULL};
  for (int i = 0; paths[i]; i++) {
    const char *args[] = {"schedule", "--from-trace", paths[i], NULL};
    assert_refused(args, "not a regular file");
  }
}

/* --resume STEP whose MANIFEST.json is a FIFO or /dev/zero: refused, one line. */
Test(hostile, resume_manifest_fifo_and_dev_zero_refused) {
  char *fifo_step = path_in("step-00000005"), *zero_step = path_in("step-00000006");
  cr_assert_eq(mkdir(fifo_step, 0755), 0);
  cr_assert_eq(mkdir(zero_step, 0755), 0);
  char man[700];
  snprintf(man, sizeof man, "%s/MANIFEST.json", fifo_step);
  cr_assert_eq(mkfifo(man, 0600), 0);
  snprintf(man, sizeof man, "%s/MANIFEST.json", zero_step);
  cr_assert_eq(symlink("/dev/zero", man), 0);
  const char *steps[] = {fifo_step, zero_step, NULL};
  for (int i = 0; steps[i]; i++) {
    const char *train[] = {"train", MODEL, "--steps", "1", "--ckpt-dir", ckpt_path, "--resume", steps[i], NULL};
    assert_refused(train, steps[i]);
    const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "1", "--ckpt-dir", ckpt_path, "--resume",
                         steps[i], NULL};
    assert_refused(run, "not a regular file");
  }
  /* One line, and the path as given (the leading '/' kept). */
  const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "1", "--ckpt-dir", ckpt_path, "--resume",
                       "/nonexistent-bt-step", NULL};
  assert_refused(run, "--resume /nonexistent-bt-step: ");
}

/* Rewrites stage 1's entry of step-20's manifest to size 0, CRC 0 and puts
 * `make` in place of the shard: a forged step whose shard is not a file. */
static void forge_shard(int fifo) {
  char man[700], shard[700];
  snprintf(man, sizeof man, "%s/step-00000020/MANIFEST.json", ckpt_path);
  snprintf(shard, sizeof shard, "%s/step-00000020/stage-001-of-002.h5", ckpt_path);
  char *m = bt_proc_slurp(man);
  cr_assert_not_null(m);
  char *e = strstr(m, "\"file\":\"stage-001-of-002.h5\",\"size\":");
  cr_assert_not_null(e, "%s", m);
  char *num = e + strlen("\"file\":\"stage-001-of-002.h5\",\"size\":");
  char *end = strchr(num, '}');
  cr_assert_not_null(end);
  FILE *f = fopen(man, "w");
  cr_assert_not_null(f);
  fprintf(f, "%.*s0,\"crc\":0%s", (int)(num - m), m, end);
  cr_assert_eq(fclose(f), 0);
  free(m);
  cr_assert_eq(unlink(shard), 0);
  if (fifo)
    cr_assert_eq(mkfifo(shard, 0600), 0);
  else
    cr_assert_eq(symlink("/dev/zero", shard), 0);
}

/* A shard that is a FIFO or /dev/zero: every `baton ckpt` command says "not
 * a regular file" at once (exit 1), and a run falls back to the previous
 * committed step and still ends with `baton train`'s hash. */
Test(hostile, shard_fifo_and_dev_zero_fall_back_to_previous_step) {
  char ref[33], got[33];
  train_hash(24, ref);
  for (int fifo = 1; fifo >= 0; fifo--) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", ckpt_path);
    cr_assert_eq(system(cmd), 0);
    const char *save[] = {"run", "--stages", "2", MODEL, "--steps", "20", "--ckpt-every", "10", "--ckpt-dir",
                          ckpt_path, NULL};
    cr_assert_eq(run_to_end(save, RUN_MS), 0);
    forge_shard(fifo);
    char step[700];
    snprintf(step, sizeof step, "%s/step-00000020", ckpt_path);
    const char *verbs[] = {"verify", "show", "hash", NULL};
    for (int v = 0; verbs[v]; v++) {
      const char *args[] = {"ckpt", verbs[v], step, NULL};
      int code = run_to_end(args, REFUSE_MS);
      cr_assert_eq(code, 1, "ckpt %s: exit %d", verbs[v], code);
      cr_assert(file_has(out_path, "stage-001-of-002.h5: not a regular file") ||
                    file_has(err_path, "stage-001-of-002.h5: not a regular file"),
                "ckpt %s does not say 'not a regular file'", verbs[v]);
    }
    const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "24", "--ckpt-dir", ckpt_path, "--hash", NULL};
    int code = run_to_end(run, RUN_MS);
    cr_assert_eq(code, 0, "run: exit %d", code);
    cr_assert(file_has(err_path, "stage-001-of-002.h5: not a regular file"));
    cr_assert(file_has(err_path, "resuming from"), "did not resume");
    cr_assert(file_has(err_path, "step 10"), "did not resume from step 10");
    cr_assert(hash_of(out_path, got));
    cr_assert_str_eq(got, ref, "fifo=%d: run hash %s, train hash %s", fifo, got, ref);
  }
}

/* ---- signals to the supervisor ---- */

#define LONG_STEPS "2500" /* several seconds on 2 stages: long enough to stop it midway */

/* The state letter of /proc/PID/stat ('T' stopped, 'S', 'R', ...), or 0. */
static char proc_state(pid_t pid) {
  char p[64], buf[512];
  snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(p, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' ? rp[2] : 0;
}

/* Starts a long 2-stage run and waits until it trains; its pid. */
static pid_t start_long_run(const char *const *extra) {
  const char *args[32] = {"run", "--stages", "2", MODEL, "--steps", LONG_STEPS, "--hash"};
  int k = 0;
  while (args[k]) k++;
  for (int i = 0; extra && extra[i]; i++) args[k++] = extra[i];
  args[k] = NULL;
  pid_t pid = start(args, NULL);
  cr_assert(bt_proc_wait_for_text(err_path, ": training", 60000), "the run did not start training");
  usleep(300 * 1000);
  return pid;
}

/* Ctrl-Z for 3 s (longer than the 2 s heartbeat timeout), then fg: the
 * workers are stopped with the supervisor, nobody is blamed, and the job
 * ends with `baton train`'s hash. */
Test(hostile, sigtstp_stops_the_whole_job_and_sigcont_continues_it) {
  char ref[33], got[33];
  train_hash(atoi(LONG_STEPS), ref);
  pid_t sup = start_long_run(NULL);
  pid_t w[2];
  cr_assert_eq(bt_proc_worker_pids(err_path, w, 2), 2);
  cr_assert_eq(kill(sup, SIGTSTP), 0);
  usleep(1000 * 1000);
  cr_assert_eq(proc_state(sup), 'T', "the supervisor is not stopped");
  for (int i = 0; i < 2; i++) cr_assert_eq(proc_state(w[i]), 'T', "stage %d is not stopped (%c)", i, proc_state(w[i]));
  usleep(2000 * 1000);
  cr_assert_eq(kill(sup, SIGCONT), 0);
  int code = finish(sup, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, 0, "exit %d:\n%s", code, e);
  cr_assert_null(strstr(e, "no heartbeat"), "a worker was blamed for the supervisor's stop:\n%s", e);
  cr_assert_not_null(strstr(e, "re-armed"), "%s", e);
  free(e);
  cr_assert(hash_of(out_path, got));
  cr_assert_str_eq(got, ref);
}

/* SIGSTOP of the supervisor alone for 4 s: its workers ran on, their
 * heartbeats waited in the socket; the late tick is recognised as the
 * supervisor's own stall and the job finishes. */
Test(hostile, sigstop_of_the_supervisor_does_not_kill_healthy_workers) {
  char ref[33], got[33];
  train_hash(atoi(LONG_STEPS), ref);
  pid_t sup = start_long_run(NULL);
  cr_assert_eq(kill(sup, SIGSTOP), 0);
  usleep(4000 * 1000);
  cr_assert_eq(kill(sup, SIGCONT), 0);
  int code = finish(sup, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, 0, "exit %d:\n%s", code, e);
  cr_assert_null(strstr(e, "killed"), "%s", e);
  free(e);
  cr_assert(hash_of(out_path, got));
  cr_assert_str_eq(got, ref);
}

/* SIGHUP (a closed terminal or ssh session) is a preemption: checkpoint,
 * exit 75; the rerun resumes and ends with `baton train`'s hash. */
Test(hostile, sighup_is_a_preemption_with_a_checkpoint) {
  char ref[33], got[33];
  train_hash(atoi(LONG_STEPS), ref);
  const char *ck[] = {"--ckpt-dir", ckpt_path, NULL};
  pid_t sup = start_long_run(ck);
  cr_assert_eq(kill(sup, SIGHUP), 0);
  int code = finish(sup, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, BT_EXIT_PREEMPTED, "exit %d:\n%s", code, e);
  cr_assert_not_null(strstr(e, "committed"), "%s", e);
  free(e);
  const char *again[] = {"run", "--stages", "2", MODEL, "--steps", LONG_STEPS, "--hash", "--ckpt-dir", ckpt_path, NULL};
  cr_assert_eq(run_to_end(again, RUN_MS), 0);
  cr_assert(file_has(err_path, "resuming from"));
  cr_assert(hash_of(out_path, got));
  cr_assert_str_eq(got, ref);
}

/* ---- the checkpoint directory ---- */

/* Deleting LOCK under a running job does not let a second job in: the
 * directory itself is locked for the job's life. */
Test(hostile, deleting_lock_does_not_admit_a_second_job) {
  const char *ck[] = {"--ckpt-dir", ckpt_path, NULL};
  pid_t first = start_long_run(ck);
  char lock[700];
  snprintf(lock, sizeof lock, "%s/LOCK", ckpt_path);
  cr_assert_eq(unlink(lock), 0, "unlink LOCK: %s", strerror(errno));
  char err2[700];
  snprintf(err2, sizeof err2, "%s/err2", dir);
  const char *bin = bt_e2e_env("BATON_BIN");
  char *argv[] = {(char *)bin, "run", "--stages", "2", MODEL, "--steps", "5", "--ckpt-dir", ckpt_path, NULL};
  pid_t second = bt_proc_spawn(argv, NULL, NULL, err2);
  cr_assert_gt(second, 0);
  int st = 0;
  cr_assert_eq(bt_proc_wait(second, REFUSE_MS, &st), 0, "the second job did not end");
  char *e2 = bt_proc_slurp(err2);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "second job: status %d\n%s", st, e2 ? e2 : "");
  cr_assert_not_null(strstr(e2, "locked"), "%s", e2);
  free(e2);
  int code = finish(first, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, 0, "first job: exit %d\n%s", code, e);
  /* Re-checked at the final commit: LOCK is written again, with a warning. */
  cr_assert_not_null(strstr(e, "LOCK was removed or replaced under this job"), "%s", e);
  free(e);
}

/* ---- saves that fail ---- */

static char small_mnt[400];

static void umount_small(void) {
  if (small_mnt[0]) umount2(small_mnt, MNT_DETACH);
  small_mnt[0] = 0;
  teardown();
}

/* A 1.5 MB tmpfs at DIR/small (unmounted by umount_small), or the test is
 * skipped where mounting is not allowed; ck gets DIR/small/ck. */
static void mount_small(char *ck, size_t cklen) {
  snprintf(small_mnt, sizeof small_mnt, "%s/small", dir);
  cr_assert_eq(mkdir(small_mnt, 0755), 0);
  if (mount("tmpfs", small_mnt, "tmpfs", 0, "size=1500k") != 0) {
    int e = errno;
    small_mnt[0] = 0;
    cr_skip_test("cannot mount a small tmpfs here (%s): needs root", strerror(e));
  }
  snprintf(ck, cklen, "%s/ck", small_mnt);
}

/* The last line of a non-empty text ending in a newline. */
static const char *last_line(const char *e) {
  size_t n = strlen(e);
  cr_assert(n > 1);
  const char *last = e + n - 1;
  while (last > e && last[-1] != '\n') last--;
  return last;
}

/* A 1.5 MB tmpfs holds one checkpoint of this model (about 0.95 MB) but not
 * two: step 10 commits, steps 20-40 fail for space. The job finishes with
 * `baton train`'s hash, exits 80 with a closing line naming step 10, and
 * leaves no .tmp debris and no HDF5 complaint at exit. The stages save on
 * their own writer threads, so on a fast run stage 0's shard of step 20
 * could take the space before stage 1's shard of step 10 is written (then
 * nothing commits, and exit 80 names step 0, as true); steps after 10 are
 * slowed (3 ms per action) so that step 10's shards are written first. */
Test(hostile, disk_full_at_the_final_save_exits_80_naming_the_committed_step, .fini = umount_small) {
  char ck[500];
  mount_small(ck, sizeof ck);
  char ref[33], got[33];
  train_hash(40, ref);
  const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "40", "--ckpt-every", "10", "--ckpt-dir", ck,
                       "--inject-fault", "slow@stage=0,step=11,ms=3", "--hash", NULL};
  int code = run_to_end(run, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, BT_EXIT_UNCOMMITTED, "exit %d:\n%s", code, e);
  const char *last = last_line(e);
  cr_assert_not_null(strstr(last, "the newest committed step is 10"), "last line: %s", last);
  cr_assert_not_null(strstr(last, "No space left on device"), "last line: %s", last);
  cr_assert_null(strstr(e, "infinite loop"), "%s", e);
  free(e);
  cr_assert(hash_of(out_path, got));
  cr_assert_str_eq(got, ref);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q '\\.tmp'", ck);
  cr_assert_neq(system(cmd), 0, ".tmp debris left in %s", ck);
  snprintf(cmd, sizeof cmd, "%s/step-00000010/MANIFEST.json", ck);
  cr_assert_eq(access(cmd, F_OK), 0, "step 10 is gone");
}

/* The same for `baton train`: step 10 commits, the final save (step 20)
 * fails for space; training finished, so the exit is 80 with the newest
 * committed step said last, not 1. */
Test(hostile, train_disk_full_at_the_final_save_exits_80_naming_the_committed_step, .fini = umount_small) {
  char ck[500];
  mount_small(ck, sizeof ck);
  const char *train[] = {"train", MODEL, "--steps", "20", "--ckpt-every", "10", "--ckpt-dir", ck, NULL};
  int code = run_to_end(train, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, BT_EXIT_UNCOMMITTED, "exit %d:\n%s", code, e);
  const char *last = last_line(e);
  cr_assert_not_null(strstr(last, "finished step 20, but its checkpoint was not committed"), "last line: %s", last);
  cr_assert_not_null(strstr(last, "the newest committed step is 10"), "last line: %s", last);
  cr_assert_null(strstr(e, "infinite loop"), "%s", e);
  free(e);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "%s/step-00000010/MANIFEST.json", ck);
  cr_assert_eq(access(cmd, F_OK), 0, "step 10 is gone");
  snprintf(cmd, sizeof cmd, "%s/step-00000020", ck);
  cr_assert_neq(access(cmd, F_OK), 0, "step 20 exists though its save failed");
}

/* `latest` replaced by a directory: every step still commits (a commit is
 * the step directory with its manifest), with a warning about `latest`. */
Test(hostile, latest_as_a_directory_is_a_warning_not_a_failed_commit) {
  char latest[700];
  cr_assert_eq(mkdir(ckpt_path, 0755), 0);
  snprintf(latest, sizeof latest, "%s/latest", ckpt_path);
  cr_assert_eq(mkdir(latest, 0755), 0);
  char keep[750];
  snprintf(keep, sizeof keep, "%s/x", latest); /* non-empty: rename cannot replace it */
  FILE *f = fopen(keep, "w");
  cr_assert_not_null(f);
  fclose(f);
  const char *run[] = {"run", "--stages", "2", MODEL, "--steps", "20", "--ckpt-every", "10", "--ckpt-dir",
                       ckpt_path, NULL};
  int code = run_to_end(run, RUN_MS);
  char *e = slurp_err();
  cr_assert_eq(code, 0, "exit %d:\n%s", code, e);
  cr_assert_null(strstr(e, "not committed"), "%s", e);
  cr_assert_not_null(strstr(e, "could not name it"), "%s", e);
  free(e);
  const char *verify[] = {"ckpt", "verify", NULL, NULL};
  char step[700];
  snprintf(step, sizeof step, "%s/step-00000020", ckpt_path);
  verify[2] = step;
  cr_assert_eq(run_to_end(verify, RUN_MS), 0, "step 20 does not verify");
}

/* ---- the data plane ---- */

/* The listening abstract Unix sockets ("@name") of process `pid`: their
 * names, found through its fds' socket inodes in /proc/net/unix. */
static int listening_sockets(pid_t pid, char names[][108], int max) {
  char fdir[64], link[128], p[400];
  unsigned long inodes[256];
  int ni = 0, n = 0;
  snprintf(fdir, sizeof fdir, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(fdir);
  if (!d) return 0;
  struct dirent *e;
  while ((e = readdir(d)) && ni < 256) {
    snprintf(p, sizeof p, "%s/%s", fdir, e->d_name);
    ssize_t k = readlink(p, link, sizeof link - 1);
    if (k <= 0) continue;
    link[k] = 0;
    unsigned long ino;
    if (sscanf(link, "socket:[%lu]", &ino) == 1) inodes[ni++] = ino;
  }
  closedir(d);
  FILE *f = fopen("/proc/net/unix", "r");
  if (!f) return 0;
  char line[512];
  while (fgets(line, sizeof line, f) && n < max) {
    unsigned long flags, ino;
    unsigned st;
    char path[108] = "";
    if (sscanf(line, "%*s %*s %*s %lx %*s %x %lu %107s", &flags, &st, &ino, path) < 4) continue;
    if (!(flags & 0x10000) || path[0] != '@') continue; /* __SO_ACCEPTCON: listening */
    for (int i = 0; i < ni; i++)
      if (inodes[i] == ino) snprintf(names[n++], 108, "%s", path);
  }
  fclose(f);
  return n;
}

static int dial_abstract(const char *name) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t n = strlen(name + 1);
  memcpy(sa.sun_path + 1, name + 1, n);
  if (connect(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) < 0 &&
      errno != EINPROGRESS && errno != EAGAIN) {
    close(fd);
    return -1;
  }
  return fd;
}

typedef struct {
  const char *err_path;
  volatile int stop;
  int silent, garbage; /* connections made */
} flood_t;

/* From the moment the workers exist until told to stop: open silent
 * connections to every listening socket of every worker and hold them all
 * (up to HOLD: the backlog stays full of silent peers), and keep sending
 * garbage and half handshakes, so start-up itself is flooded. */
static void *flood_main(void *arg) {
  flood_t *fl = arg;
  enum { HOLD = 600 };
  int held[HOLD], nh = 0;
  while (!fl->stop) {
    pid_t w[2] = {0, 0};
    int nw = 0;
    char *e = bt_proc_slurp(fl->err_path);
    for (char *p = e; p && (p = strstr(p, "(pid ")) && nw < 2; p += 5) w[nw++] = (pid_t)atoi(p + 5);
    free(e);
    for (int i = 0; i < nw; i++) {
      char names[4][108];
      int ns = listening_sockets(w[i], names, 4);
      for (int s = 0; s < ns; s++) {
        for (int k = 0; k < 8 && nh < HOLD; k++) {
          int fd = dial_abstract(names[s]);
          if (fd >= 0) held[nh++] = fd, fl->silent++;
        }
        int g = dial_abstract(names[s]);
        if (g >= 0) {
          static const char junk[] = "GET / HTTP/1.0\r\n\r\nBTHS\x01\x00\x10\x00garbage";
          ssize_t wr = send(g, junk, (fl->garbage & 1) ? 4 : sizeof junk - 1, MSG_NOSIGNAL);
          (void)wr;
          close(g);
          fl->garbage++;
        }
      }
    }
    usleep(2000);
  }
  for (int i = 0; i < nh; i++) close(held[i]);
  return NULL;
}

/* Hundreds of silent and garbage connections on the workers' data sockets,
 * from before the pipeline forms to its end: the job still forms, finishes
 * with `baton train`'s hash, and logs each kind of refusal once, not once
 * per connection. */
Test(hostile, connection_flood_during_start_up_still_ends_with_train_hash) {
  char ref[33], got[33];
  train_hash(300, ref);
  const char *args[] = {"run", "--stages", "2", MODEL, "--steps", "300", "--hash", NULL};
  flood_t fl = {.err_path = err_path};
  unlink(err_path);
  pthread_t th;
  pid_t sup = start(args, NULL);
  cr_assert_eq(pthread_create(&th, NULL, flood_main, &fl), 0);
  int st = 0, waited = bt_proc_wait(sup, RUN_MS, &st);
  fl.stop = 1; /* before any assertion: the thread uses this frame */
  pthread_join(th, NULL);
  if (waited != 0) kill(-sup, SIGKILL);
  cr_assert_eq(waited, 0, "baton run did not end within %d ms", RUN_MS);
  cr_assert(WIFEXITED(st), "baton run died of signal %d", WTERMSIG(st));
  int code = WEXITSTATUS(st);
  char *e = slurp_err();
  cr_assert_eq(code, 0, "exit %d after %d silent and %d garbage connections:\n%s", code, fl.silent, fl.garbage, e);
  cr_assert_gt(fl.silent, 100, "the flood made only %d connections", fl.silent);
  int lines = 0;
  for (const char *p = e; (p = strstr(p, "refused a connection from")); p++) lines++;
  cr_assert_leq(lines, 2 * 11, "%d refusal lines for %d connections:\n%s", lines, fl.silent + fl.garbage, e);
  free(e);
  cr_assert(hash_of(out_path, got));
  cr_assert_str_eq(got, ref);
}

/* ---- output files ---- */

/* One rule for --metrics, --events and --trace of `baton run` and --metrics
 * of `baton train`: a failed write is said once, training finishes (the
 * hash is printed), and the exit is 1. */
Test(hostile, a_failed_output_write_is_said_once_and_exits_1) {
  const char *flags[][2] = {{"run", "--metrics"}, {"run", "--events"}, {"run", "--trace"}, {"train", "--metrics"}};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    const char *run[] = {flags[i][0], "--stages", "2", MODEL, "--steps", "20", "--hash", flags[i][1], "/dev/full", NULL};
    const char *train[] = {flags[i][0], MODEL, "--steps", "20", "--hash", flags[i][1], "/dev/full", NULL};
    int code = run_to_end(strcmp(flags[i][0], "run") ? train : run, RUN_MS);
    char *e = slurp_err();
    cr_assert_eq(code, 1, "%s %s /dev/full: exit %d\n%s", flags[i][0], flags[i][1], code, e);
    int said = 0;
    for (const char *p = e; (p = strstr(p, "/dev/full")); p++) said++;
    cr_assert_eq(said, 1, "%s %s: said %d times:\n%s", flags[i][0], flags[i][1], said, e);
    free(e);
    char hex[33];
    cr_assert(hash_of(out_path, hex), "%s %s: no hash: training did not finish", flags[i][0], flags[i][1]);
  }
}

/* ---- small ones: each one line, exit 2, and true ---- */

Test(hostile, small_usage_errors_say_what_is_true) {
  const char *stages0[] = {"run", "--stages", "0", NULL};
  assert_refused(stages0, "[1, 256]");
  const char *hash_run[] = {"run", "--stages", "2", "--hash=1", NULL};
  assert_refused(hash_run, "--hash takes no value");
  const char *hash_train[] = {"train", "--hash=1", NULL};
  assert_refused(hash_train, "--hash takes no value");
  const char *bogus[] = {"train", "--bogus", NULL};
  assert_refused(bogus, "unknown option '--bogus'");
  const char *layout[] = {"run", "--stages", "2", "--layout", "", NULL};
  assert_refused(layout, "--layout: empty");
  const char *proc_run[] = {"run", "--stages", "2", MODEL, "--steps", "2", "--ckpt-dir", "/proc/self", NULL};
  assert_refused(proc_run, "cannot create a file in it");
  const char *proc_train[] = {"train", MODEL, "--steps", "2", "--ckpt-dir", "/proc/self", NULL};
  assert_refused(proc_train, "cannot create a file in it");
}

/* A manifest whose step is not its directory's: `ckpt ls` says so, rather
 * than "a shard is missing". */
Test(hostile, ckpt_ls_names_a_step_that_disagrees_with_its_directory) {
  const char *save[] = {"run", "--stages", "2", MODEL, "--steps", "20", "--ckpt-every", "10", "--ckpt-dir",
                        ckpt_path, NULL};
  cr_assert_eq(run_to_end(save, RUN_MS), 0);
  char man[700];
  snprintf(man, sizeof man, "%s/step-00000010/MANIFEST.json", ckpt_path);
  char *m = bt_proc_slurp(man);
  cr_assert_not_null(m);
  char *at = strstr(m, "\"step\":10,");
  cr_assert_not_null(at);
  at[8] = '1'; /* "step":11 */
  FILE *f = fopen(man, "w");
  cr_assert_not_null(f);
  fputs(m, f);
  cr_assert_eq(fclose(f), 0);
  free(m);
  const char *ls[] = {"ckpt", "ls", ckpt_path, NULL};
  run_to_end(ls, REFUSE_MS);
  cr_assert(file_has(out_path, "says step 11"), "ckpt ls does not name the step mismatch");
  cr_assert(!file_has(out_path, "a shard is missing"));
}

/* SIGTERM during the restart back-off: nothing runs, so the job stops at
 * once; the committed step from before the failure is named, and the
 * summary counts no restart (none was spawned). */
Test(hostile, sigterm_during_the_back_off_names_the_committed_step) {
  const char *args[] = {"run", "--stages", "2", MODEL, "--steps", "400", "--ckpt-every", "5", "--ckpt-dir",
                        ckpt_path, "--inject-fault", "crash@stage=1,step=12", "--backoff", "30", "--no-progress",
                        NULL};
  pid_t sup = start(args, NULL);
  cr_assert(bt_proc_wait_for_text(err_path, "restart 1 of at most", 60000), "no restart was planned");
  cr_assert_eq(kill(sup, SIGTERM), 0);
  int code = finish(sup, REFUSE_MS);
  char *e = slurp_err();
  cr_assert_eq(code, BT_EXIT_PREEMPTED, "exit %d\n%s", code, e);
  /* Step 5 or 10, as the crash at step 12 let the save of 10 finish. */
  cr_assert(strstr(e, "checkpoint step 5 committed") || strstr(e, "checkpoint step 10 committed"), "%s", e);
  cr_assert_null(strstr(e, "before a checkpoint could be committed"), "%s", e);
  cr_assert_not_null(strstr(e, "1 failure, 0 restarts"), "%s", e);
  free(e);
}
