/* e2e.c - see e2e.h. */
#include "tests/support/e2e.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

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
