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

#endif
