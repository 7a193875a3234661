/* test_lineage.c - checkpoint/lineage.c: the job and parent a manifest
 * records, which steps a job may restore, which steps a resume must not
 * run beside, and moving them aside. Synthetic checkpoints, no model. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "common/error.h"
#include "tests/support/checkpoint_synth.h"

#define LAYERS 4

static char root[64];

static void setup(void) { ckpt_synth_tmpdir(root, sizeof root); }
static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", root);
  cr_assert_eq(system(cmd), 0);
}

TestSuite(lineage, .init = setup, .fini = teardown);

/* Commits `step` (one shard) into dir as job `job` with the given parent. */
static void commit_as(const char *dir, int64_t step, const char *job, const char *pjob, int64_t pstep) {
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, LAYERS, LAYERS, 1, step, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(step, 0, 1, LAYERS, 1);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(dir, &m, sy.t, sy.n, NULL, &rep), 0);
  ckpt_synth_free(&sy);
  bt_ckpt_lineage_t lin = {.parent_step = pstep};
  snprintf(lin.job, sizeof lin.job, "%s", job);
  snprintf(lin.parent_job, sizeof lin.parent_job, "%s", pjob);
  cr_assert_eq(bt_ckpt_commit_lineage(dir, step, &rep, 1, &lin), 0);
}

static const char *J1 = "11111111111111111111111111111111", *J2 = "22222222222222222222222222222222",
                  *J3 = "33333333333333333333333333333333";

static void open_step(int64_t step, bt_ckpt_step_t *st) {
  char dir[256];
  cr_assert_eq(bt_ckpt_step_path(root, step, 0, dir, sizeof dir), 0);
  memset(st, 0, sizeof *st);
  cr_assert_eq(bt_ckpt_step_open(dir, BT_CKPT_CHECK_CRC, st, NULL, NULL), 0);
}

Test(lineage, job_ids_are_32_hex_digits_and_differ) {
  char a[BT_CKPT_JOB_LEN + 1], b[BT_CKPT_JOB_LEN + 1];
  bt_ckpt_job_new(a);
  bt_ckpt_job_new(b);
  cr_expect(bt_ckpt_job_valid(a), "%s", a);
  cr_expect_str_neq(a, b);
  cr_expect_not(bt_ckpt_job_valid(""));
  cr_expect_not(bt_ckpt_job_valid("1111111111111111111111111111111G"));
  cr_expect_not(bt_ckpt_job_valid("111"));
}

Test(lineage, the_manifest_records_job_and_parent_and_reads_them_back) {
  commit_as(root, 10, J1, "", -1);
  commit_as(root, 20, J2, J1, 10);
  bt_ckpt_step_t st;
  open_step(10, &st);
  cr_expect_str_eq(st.man.lineage.job, J1);
  cr_expect_eq(st.man.lineage.parent_step, -1);
  bt_ckpt_step_close(&st);
  open_step(20, &st);
  cr_expect_str_eq(st.man.lineage.job, J2);
  cr_expect_str_eq(st.man.lineage.parent_job, J1);
  cr_expect_eq(st.man.lineage.parent_step, 10);
  bt_ckpt_step_close(&st);
}

Test(lineage, a_manifest_without_lineage_reads_as_an_unknown_job) {
  uint32_t bounds[] = {0, LAYERS};
  cr_assert_eq(ckpt_synth_save_step(root, 5, LAYERS, bounds, 1, 1, NULL), 0);
  bt_ckpt_step_t st;
  open_step(5, &st);
  cr_expect_str_eq(st.man.lineage.job, "");
  cr_expect_eq(st.man.lineage.parent_step, -1);
  bt_ckpt_step_close(&st);
}

Test(lineage, a_commit_with_a_malformed_job_id_is_refused) {
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, LAYERS, LAYERS, 1, 3, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(3, 0, 1, LAYERS, 1);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(root, &m, sy.t, sy.n, NULL, &rep), 0);
  ckpt_synth_free(&sy);
  bt_ckpt_lineage_t lin = {.job = "not-a-job", .parent_step = -1};
  cr_expect_eq(bt_ckpt_commit_lineage(root, 3, &rep, 1, &lin), BT_EARG);
}

/* The silent-wrong-state bug: a newer step of another job in the same
 * directory is never what a restart of this job loads. */
Test(lineage, a_job_picks_only_its_own_newest_step) {
  commit_as(root, 10, J1, "", -1);
  commit_as(root, 20, J1, J1, 10);
  commit_as(root, 50, J2, "", -1);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_job_pick(root, J1, INT64_MAX, &st), 0);
  cr_expect_eq(st.step, 20);
  bt_ckpt_step_close(&st);
  cr_assert_eq(bt_ckpt_job_pick(root, J1, 20, &st), 0);
  cr_expect_eq(st.step, 10);
  bt_ckpt_step_close(&st);
  cr_assert_eq(bt_ckpt_job_pick(root, J2, INT64_MAX, &st), 0);
  cr_expect_eq(st.step, 50);
  bt_ckpt_step_close(&st);
  cr_expect_eq(bt_ckpt_job_pick(root, J3, INT64_MAX, &st), -ENOENT);
  cr_expect_eq(bt_ckpt_job_pick(root, "bad", INT64_MAX, &st), BT_EARG);
}

Test(lineage, a_damaged_newest_step_of_the_job_falls_back_to_its_previous_not_to_another_job) {
  commit_as(root, 10, J1, "", -1);
  commit_as(root, 20, J2, "", -1);
  commit_as(root, 30, J1, J1, 10);
  char shard[256];
  snprintf(shard, sizeof shard, "%s/step-00000030/stage-000-of-001.h5", root);
  cr_assert_eq(truncate(shard, 100), 0);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_job_pick(root, J1, INT64_MAX, &st), 0);
  cr_expect_eq(st.step, 10);
  bt_ckpt_step_close(&st);
}

Test(lineage, conflicts_are_newer_steps_and_older_steps_off_the_parent_chain) {
  /* J1: 10 -> J2 resumed from J1/10: 20, 30 -> J3 (another job): 5, 40 */
  commit_as(root, 5, J3, "", -1);
  commit_as(root, 10, J1, "", -1);
  commit_as(root, 20, J2, J1, 10);
  commit_as(root, 30, J2, J2, 20);
  commit_as(root, 40, J3, J3, 5);
  bt_ckpt_step_t from;
  open_step(20, &from);
  int64_t *steps = NULL;
  size_t n = 0;
  cr_assert_eq(bt_ckpt_lineage_conflicts(root, &from, &steps, &n), 0);
  /* 40 and 30 are newer; 10 is J2's parent; 5 is another job's */
  cr_assert_eq(n, 3);
  cr_expect_eq(steps[0], 40);
  cr_expect_eq(steps[1], 30);
  cr_expect_eq(steps[2], 5);
  free(steps);
  bt_ckpt_step_close(&from);
  /* from the newest step, only J3's are off the lineage */
  open_step(30, &from);
  cr_assert_eq(bt_ckpt_lineage_conflicts(root, &from, &steps, &n), 0);
  cr_assert_eq(n, 2);
  cr_expect_eq(steps[0], 40);
  cr_expect_eq(steps[1], 5);
  free(steps);
  bt_ckpt_step_close(&from);
}

Test(lineage, move_aside_renames_the_steps_into_one_folder_and_fixes_latest) {
  commit_as(root, 10, J1, "", -1);
  commit_as(root, 20, J2, "", -1);
  commit_as(root, 30, J2, J2, 20);
  int64_t steps[] = {30, 20};
  char aside[512], p[700];
  cr_assert_eq(bt_ckpt_move_aside(root, steps, 2, aside, sizeof aside), 0);
  struct stat sb;
  snprintf(p, sizeof p, "%s/step-00000030/MANIFEST.json", aside);
  cr_expect_eq(stat(p, &sb), 0, "%s", p);
  snprintf(p, sizeof p, "%s/step-00000020/MANIFEST.json", aside);
  cr_expect_eq(stat(p, &sb), 0, "%s", p);
  int64_t *left = NULL;
  size_t n = 0;
  cr_assert_eq(bt_ckpt_list_steps(root, &left, &n), 0);
  cr_assert_eq(n, 1);
  cr_expect_eq(left[0], 10);
  free(left);
  snprintf(p, sizeof p, "%s/latest", root);
  FILE *f = fopen(p, "r");
  cr_assert_not_null(f);
  char line[64] = "";
  cr_assert_not_null(fgets(line, sizeof line, f));
  fclose(f);
  cr_expect_str_eq(line, "step-00000010\n");
  /* a second move in the same second gets its own folder */
  char aside2[512];
  int64_t ten[] = {10};
  cr_assert_eq(bt_ckpt_move_aside(root, ten, 1, aside2, sizeof aside2), 0);
  cr_expect_str_neq(aside, aside2);
  snprintf(p, sizeof p, "%s/latest", root);
  cr_expect_neq(stat(p, &sb), 0, "latest names no step and should be gone");
}
