/* e2e.c - see e2e.h. */
#include "tests/support/e2e.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/proc.h"

void bt_e2e_setup(bt_e2e_dirs_t *d, const char *name) {
  bt_proc_init();
  snprintf(d->dir, sizeof d->dir, "/tmp/bt_e2e_%s_XXXXXX", name);
  cr_assert_not_null(mkdtemp(d->dir), "mkdtemp %s", d->dir);
  snprintf(d->out, sizeof d->out, "%s/out", d->dir);
  snprintf(d->err, sizeof d->err, "%s/err", d->dir);
  snprintf(d->events, sizeof d->events, "%s/events.jsonl", d->dir);
  snprintf(d->ckpt, sizeof d->ckpt, "%s/ck", d->dir);
}

void bt_e2e_teardown(bt_e2e_dirs_t *d) {
  bt_proc_cleanup();
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", d->dir);
}

const char *bt_e2e_env(const char *name) {
  const char *v = getenv(name);
  if (!v) cr_skip_test("%s is not set (run through ctest)", name);
  return v;
}

const char *bt_e2e_path(const bt_e2e_dirs_t *d, const char *name) {
  static char ring[16][512];
  static int next;
  char *p = ring[next++ % 16];
  snprintf(p, sizeof ring[0], "%s/%s", d->dir, name);
  return p;
}

int bt_e2e_run(const bt_e2e_dirs_t *d, char *const argv[], const char *out_path,
               const char *err_path, int timeout_ms) {
  if (!out_path) out_path = d->out;
  if (!err_path) err_path = d->err;
  unlink(out_path);
  unlink(err_path);
  pid_t pid = bt_proc_spawn(argv, NULL, out_path, err_path);
  cr_assert_gt(pid, 0, "spawn %s: %s", argv[0], strerror((int)-pid));
  int st = 0;
  if (bt_proc_wait(pid, timeout_ms, &st) != 0) {
    /* copied out first: a failed assertion leaves the function for good */
    static char msg[4096];
    char *err = bt_proc_slurp(err_path);
    size_t n = err ? strlen(err) : 0;
    snprintf(msg, sizeof msg, "%s", err ? err + (n > 4000 ? n - 4000 : 0) : "");
    free(err);
    cr_assert_fail("%s %s did not end within %d ms; stderr:\n%s", argv[0], argv[1] ? argv[1] : "",
                   timeout_ms, msg);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int bt_e2e_sh(const bt_e2e_dirs_t *d, const char *cmd, int timeout_ms) {
  char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
  return bt_e2e_run(d, argv, NULL, NULL, timeout_ms);
}

void bt_e2e_read_hash(const char *path, char hex[33]) {
  char *out = bt_proc_slurp(path);
  if (!out) out = strdup("");
  char *p = NULL;
  for (char *q = strstr(out, "hash "); q; q = strstr(q + 1, "hash ")) p = q;
  size_t n = strlen(out);
  cr_assert_not_null(p, "no hash line in %s:\n%s", path, n > 8000 ? out + n - 8000 : out);
  memcpy(hex, p + 5, 32);
  hex[32] = 0;
  free(out);
  cr_assert_eq(strspn(hex, "0123456789abcdef"), 32, "bad hash '%s' in %s", hex, path);
}

void bt_e2e_train_hash(const bt_e2e_dirs_t *d, const char *const *model, int steps, int timeout_ms, char hex[33]) {
  char s[16];
  snprintf(s, sizeof s, "%d", steps);
  char *argv[64];
  int k = 0;
  argv[k++] = (char *)bt_e2e_env("BATON_BIN");
  argv[k++] = "train";
  for (int i = 0; model[i] && k < 58; i++) argv[k++] = (char *)model[i];
  argv[k++] = "--steps";
  argv[k++] = s;
  argv[k++] = "--hash";
  argv[k] = NULL;
  const char *out = bt_e2e_path(d, "train.out");
  int code = bt_e2e_run(d, argv, out, bt_e2e_path(d, "train.err"), timeout_ms);
  cr_assert_eq(code, 0, "baton train exited %d", code);
  bt_e2e_read_hash(out, hex);
}
