/* test_workerenv.c - common/workerenv.h: what the supervisor writes the
 * worker reads back, bounds are enforced with one line naming the
 * variable, START is checked against the same contract. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/workerenv.h"

static void clear_env(void) {
#define X(kind, var, ...) unsetenv(#var);
  BT_WORKER_ENV(X)
#undef X
}

TestSuite(workerenv, .init = clear_env, .fini = clear_env);

/* putenv()s every string of the supervisor's side. */
static void export(const bt_worker_env_t *e) {
  char *out[64];
  int n = bt_worker_env_format(e, out, 64);
  /* every number, and the strings that are set (faults, CSV are not) */
  cr_assert_eq((size_t)n, bt_worker_env_count() - 2, "%d strings", n);
  for (int i = 0; i < n; i++) {
    char *eq = strchr(out[i], '=');
    *eq = 0;
    setenv(out[i], eq + 1, 1);
    free(out[i]);
  }
}

static bt_worker_env_t sample(void) {
  bt_worker_env_t e;
  bt_worker_env_defaults(&e);
  e.stage = e.rank = e.local_rank = 2;
  e.nstages = e.world_size = e.local_world_size = 3;
  e.fd = 3;
  snprintf(e.master_addr, sizeof e.master_addr, "127.0.0.1");
  e.supervisor_pid = 4242;
  e.chunks = 2;
  e.restart = 1;
  snprintf(e.token, sizeof e.token, "%s", "00112233445566778899aabbccddeeff");
  e.heartbeat_ms = 200;
  e.peer_timeout_ms = 5000;
  e.ckpt_timeout_ms = 9000;
  snprintf(e.ckpt_dir, sizeof e.ckpt_dir, "/ck");
  snprintf(e.restore_dir, sizeof e.restore_dir, "/ck/step-00000010");
  e.ckpt_compress = 3;
  snprintf(e.data_bind, sizeof e.data_bind, "10.0.0.7");
  return e;
}

Test(workerenv, what_the_supervisor_writes_the_worker_reads) {
  bt_worker_env_t e = sample(), r;
  export(&e);
  char err[256] = "";
  cr_assert_eq(bt_worker_env_read(&r, err, sizeof err), 0, "%s", err);
  cr_expect_eq(r.stage, 2);
  cr_expect_eq(r.nstages, 3);
  cr_expect_eq(r.chunks, 2);
  cr_expect_eq(r.supervisor_pid, 4242);
  cr_expect_eq(r.peer_timeout_ms, 5000);
  cr_expect_eq(r.ckpt_timeout_ms, 9000);
  cr_expect_eq(r.ckpt_compress, 3);
  cr_expect_str_eq(r.restore_dir, "/ck/step-00000010");
  cr_expect_str_eq(r.faults, "");
  cr_expect_str_eq(r.data_plane, "unix");
  cr_expect_eq(r.data_plane_tcp, 0);
  cr_expect_str_eq(r.data_bind, "10.0.0.7");
}

Test(workerenv, data_bind_is_the_supervisors_and_empty_by_default) {
  bt_worker_env_t e = sample(), r;
  e.data_bind[0] = 0;
  char *out[64];
  int n = bt_worker_env_format(&e, out, 64);
  cr_assert_eq((size_t)n, bt_worker_env_count() - 3, "an empty BATON_DATA_BIND was written (%d strings)", n);
  for (int i = 0; i < n; i++) {
    cr_expect(strncmp(out[i], "BATON_DATA_BIND=", 16) != 0, "%s", out[i]);
    free(out[i]);
  }
  cr_expect(bt_worker_env_is_ours("BATON_DATA_BIND=0.0.0.0"), "an inherited BATON_DATA_BIND would win");
  bt_worker_env_t full = sample();
  export(&full);
  unsetenv("BATON_DATA_BIND");
  char err[256] = "";
  cr_assert_eq(bt_worker_env_read(&r, err, sizeof err), 0, "%s", err);
  cr_expect_str_eq(r.data_bind, "", "unset is today's behaviour");
}

Test(workerenv, help_lists_every_variable_and_start_field) {
  char help[8192];
  bt_worker_env_help(help, sizeof help);
  cr_expect_lt(strlen(help), sizeof help - 1, "the help text fills its buffer: it may be cut");
#define X(kind, var, ...) cr_expect(strstr(help, "  " #var " ") != NULL, "no %s in the help", #var);
  BT_WORKER_ENV(X)
#undef X
#define X(field, ...) cr_expect(strstr(help, "  " #field " ") != NULL, "no START field %s in the help", #field);
  BT_WORKER_START(X)
#undef X
}

Test(workerenv, out_of_bounds_and_missing_values_name_the_variable) {
  bt_worker_env_t e = sample(), r;
  export(&e);
  char err[256] = "";
  setenv("BATON_CKPT_COMPRESS", "12", 1);
  cr_expect_eq(bt_worker_env_read(&r, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "BATON_CKPT_COMPRESS") && strstr(err, "'12'"), "%s", err);
  setenv("BATON_CKPT_COMPRESS", "1", 1);
  setenv("BATON_STAGE", "3", 1);
  cr_expect_eq(bt_worker_env_read(&r, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "BATON_STAGE=3") != NULL, "%s", err);
  setenv("BATON_STAGE", "0", 1);
  setenv("BATON_DATA_PLANE", "udp", 1);
  cr_expect_eq(bt_worker_env_read(&r, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "BATON_DATA_PLANE") != NULL, "%s", err);
  setenv("BATON_DATA_PLANE", "tcp", 1);
  cr_expect_eq(bt_worker_env_read(&r, err, sizeof err), 0, "%s", err);
  cr_expect_eq(r.data_plane_tcp, 1);
  unsetenv("BATON_CONTROL_FD");
  cr_expect_eq(bt_worker_env_read(&r, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "BATON_CONTROL_FD is not set") != NULL, "%s", err);
}

Test(workerenv, the_supervisor_owns_its_variables_only) {
  cr_expect(bt_worker_env_is_ours("RANK=7"));
  cr_expect(bt_worker_env_is_ours("BATON_RESTORE_DIR=/x"));
  cr_expect_not(bt_worker_env_is_ours("BATON_DATA_PLANE=tcp"), "the user's choice passes through");
  cr_expect_not(bt_worker_env_is_ours("BATON_LAYERS=1-2"), "dropped: nothing read it");
  cr_expect_not(bt_worker_env_is_ours("RANKING=1"));
  cr_expect_not(bt_worker_env_is_ours("HOME=/root"));
}

Test(workerenv, start_is_checked_against_the_contract) {
  bt_worker_env_t e = sample();
  bt_msg_start_t *m = calloc(1, sizeof *m);
  char err[256] = "";
  m->nstages = 3;
  m->restore_step = 10;
  m->first_step = 11;
  m->last_step = 20;
  m->ckpt_last = 1;
  cr_expect_eq(bt_worker_start_check(m, &e, err, sizeof err), 0, "%s", err);
  m->first_step = 12;
  cr_expect_eq(bt_worker_start_check(m, &e, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "first step 12 after restoring step 10") != NULL, "%s", err);
  m->first_step = 11;
  m->ckpt_last = 2;
  cr_expect_eq(bt_worker_start_check(m, &e, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "ckpt_last 2") != NULL, "%s", err);
  m->ckpt_last = 1;
  e.restore_dir[0] = 0;
  cr_expect_eq(bt_worker_start_check(m, &e, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "BATON_RESTORE_DIR") != NULL, "%s", err);
  m->nstages = 2;
  cr_expect_eq(bt_worker_start_check(m, &e, err, sizeof err), BT_EARG);
  free(m);
}
