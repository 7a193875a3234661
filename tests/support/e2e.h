/* e2e.h - what every end-to-end test suite sets up and tears down: a fresh
 * scratch directory with the usual file paths in it, the process-group
 * bookkeeping of proc.h, and the environment ctest passes (BATON_BIN, ...).
 */
#ifndef BT_TESTS_SUPPORT_E2E_H
#define BT_TESTS_SUPPORT_E2E_H

typedef struct {
  char dir[256];    /* /tmp/bt_e2e_<name>_XXXXXX */
  char out[300];    /* dir/out: a child's stdout */
  char err[300];    /* dir/err: a child's stderr */
  char events[300]; /* dir/events.jsonl */
  char ckpt[300];   /* dir/ck: a checkpoint root (not created) */
} bt_e2e_dirs_t;

/* bt_proc_init(), then a fresh scratch directory and the paths in it. */
void bt_e2e_setup(bt_e2e_dirs_t *d, const char *name);
/* Kills every process group the test started (bt_proc_cleanup), then
 * removes the scratch directory. */
void bt_e2e_teardown(bt_e2e_dirs_t *d);
/* getenv(name), or skips the test when it is unset (not run through ctest). */
const char *bt_e2e_env(const char *name);
/* d->dir/name, in a ring of 16 static buffers (for argv lists). */
const char *bt_e2e_path(const bt_e2e_dirs_t *d, const char *name);
/* Runs argv to its end in its own process group (bt_proc_spawn, tracked:
 * teardown kills it) with stdout and stderr into out_path and err_path
 * (emptied first; NULL: d->out and d->err). Returns the exit code, 128 +
 * the signal for a death by signal; running past timeout_ms fails the
 * test with the tail of its stderr. */
int bt_e2e_run(const bt_e2e_dirs_t *d, char *const argv[], const char *out_path,
               const char *err_path, int timeout_ms);
/* bt_e2e_run of `/bin/sh -c cmd` into d->out and d->err, for a command
 * line with redirections or a `cd`. */
int bt_e2e_sh(const bt_e2e_dirs_t *d, const char *cmd, int timeout_ms);
/* The last "hash <32 hex>" line of the file at path into hex (fails the
 * test, showing the file, when there is none). */
void bt_e2e_read_hash(const char *path, char hex[33]);
/* `baton train MODEL --steps N --hash` (model: NULL-terminated flags) into
 * d->dir/train.out; its hash. Fails the test unless it exits 0. */
void bt_e2e_train_hash(const bt_e2e_dirs_t *d, const char *const *model, int steps, int timeout_ms, char hex[33]);

#endif
