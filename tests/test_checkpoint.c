/* test_checkpoint.c - shards, commit protocol, restore and reshard,
 * corruption, disk full, lock, non-finite values, async saves, retention.
 * All on synthetic tensors (tests/support/checkpoint_synth.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/crc.h"
#include "common/error.h"
#include "common/log.h"
#include "tests/support/checkpoint_synth.h"

#define L 13 /* > 10 layers: "10" sorts before "2" when names are not padded */

static char root[256];

static void setup(void) {
  ckpt_synth_tmpdir(root, sizeof root);
  cr_assert(root[0], "mkdtemp failed");
  bt_log_set_level(BT_LOG_ERROR);
}

static void teardown(void) {
  char cmd[300];
  /* The tmpfs of the disk-full tests, if an assertion ended one early. */
  static const char *mounts[] = {"small", "ro"};
  for (int i = 0; i < 2 && root[0]; i++) {
    snprintf(cmd, sizeof cmd, "%s/%s", root, mounts[i]);
    umount2(cmd, MNT_DETACH);
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (root[0] && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
}

static const uint32_t four[] = {0, 1, 5, 12, L}; /* uneven: 1, 4, 7, 1 layers */

static void path_of(char *out, size_t len, int64_t step, const char *file) {
  snprintf(out, len, "%s/step-%08lld/%s", root, (long long)step, file);
}

/* Every tensor of `got` equals the synthetic one bit for bit. */
static void assert_same(const ckpt_synth_t *got, const ckpt_synth_t *want) {
  cr_assert_eq(got->n, want->n);
  for (size_t i = 0; i < want->n; i++) {
    const bt_ckpt_tensor_t *a = &got->t[i], *b = &want->t[i];
    cr_assert_eq(a->layer, b->layer);
    cr_assert_str_eq(a->name, b->name);
    cr_assert(memcmp(a->data, b->data, bt_ckpt_numel(b) * sizeof(float)) == 0,
              "layer %u tensor %s kind %d differs", b->layer, b->name, b->kind);
  }
}

static void roundtrip(const bt_ckpt_opts_t *opts) {
  cr_assert_eq(ckpt_synth_save_step(root, 7, L, (uint32_t[]){0, L}, 1, 42, opts), 0);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_step_open(root, BT_CKPT_CHECK_DEEP, &st, NULL, NULL), BT_ENOTCKPT);
  char dir[512];
  snprintf(dir, sizeof dir, "%s/step-00000007", root);
  cr_assert_eq(bt_ckpt_step_open(dir, BT_CKPT_CHECK_DEEP, &st, NULL, NULL), 0);
  bt_ckpt_meta_t want = ckpt_synth_meta(7, 0, 1, L, 42);
  cr_assert_eq(st.step, 7);
  cr_assert_eq(st.man.meta.stages, 1);
  cr_assert_eq(st.man.meta.chunks, want.chunks);
  cr_assert_eq(st.man.meta.seed, 42);
  cr_assert_eq(st.man.meta.adam_t, want.adam_t);
  cr_assert_eq(st.man.meta.layer_count, L);
  cr_assert_str_eq(st.man.meta.model_config, want.model_config);
  cr_assert_str_eq(st.man.meta.run_settings, want.run_settings);
  ckpt_synth_t exp, got;
  cr_assert_eq(ckpt_synth_make(&exp, 0, L, L, 42, 7, 1), 0);
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  cr_assert_eq(bt_ckpt_step_load(&st, got.t, got.n), 0);
  assert_same(&got, &exp);

  /* The shard itself: root attributes and every dataset listed in order. */
  char path[600];
  path_of(path, sizeof path, 7, "stage-000-of-001.h5");
  bt_ckpt_shard_t *sh;
  cr_assert_eq(bt_ckpt_shard_open(path, &sh), 0);
  const bt_ckpt_meta_t *m = bt_ckpt_shard_meta(sh);
  cr_assert_eq(m->step, 7);
  cr_assert_eq(m->stage, 0);
  cr_assert_str_eq(m->model_config, want.model_config);
  bt_ckpt_tensor_t *ts;
  size_t nt;
  cr_assert_eq(bt_ckpt_shard_list(sh, &ts, &nt), 0);
  cr_assert_eq(nt, exp.n);
  for (size_t i = 1; i < nt; i++) {
    cr_assert(ts[i - 1].layer < ts[i].layer ||
                  (ts[i - 1].layer == ts[i].layer &&
                   (ts[i - 1].kind < ts[i].kind ||
                    (ts[i - 1].kind == ts[i].kind && ts[i - 1].index < ts[i].index))),
              "listing not sorted at %zu", i);
  }
  free(ts);
  bt_ckpt_shard_close(sh);
  ckpt_synth_free(&exp);
  ckpt_synth_free(&got);
  bt_ckpt_step_close(&st);
}

Test(roundtrip, plain, .init = setup, .fini = teardown) { roundtrip(NULL); }

Test(roundtrip, deflate_shuffle, .init = setup, .fini = teardown) {
  roundtrip(&(bt_ckpt_opts_t){.deflate = 6, .shuffle = 1});
}

Test(roundtrip, fletcher32_deflate1, .init = setup, .fini = teardown) {
  roundtrip(&(bt_ckpt_opts_t){.deflate = 1, .fletcher32 = 1});
}

Test(manifest, copied_step_still_verifies, .init = setup, .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 3, L, four, 4, 1, NULL), 0);
  char cmd[1200], copy[600];
  snprintf(copy, sizeof copy, "%s/elsewhere", root);
  snprintf(cmd, sizeof cmd, "cp -r '%s/step-00000003' '%s'", root, copy);
  cr_assert_eq(system(cmd), 0);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_step_open(copy, BT_CKPT_CHECK_DEEP, &st, NULL, NULL), 0);
  bt_ckpt_step_close(&st);
}

Test(manifest, strict_reader_rejects_edits, .init = setup, .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 3, L, four, 4, 1, NULL), 0);
  char p[600];
  path_of(p, sizeof p, 3, "MANIFEST.json");
  bt_ckpt_manifest_t m;
  char err[256];
  cr_assert_eq(bt_ckpt_manifest_read(p, &m, err, sizeof err), 0, "%s", err);
  cr_assert_eq(m.nshards, 4);
  cr_assert_eq(m.layer_shard[0], 0);
  cr_assert_eq(m.layer_shard[4], 1);
  cr_assert_eq(m.layer_shard[11], 2);
  cr_assert_eq(m.layer_shard[12], 3);
  bt_ckpt_manifest_free(&m);
  FILE *f = fopen(p, "a");
  fputs(" x", f);
  fclose(f);
  cr_assert_eq(bt_ckpt_manifest_read(p, &m, err, sizeof err), BT_EFORMAT);
  cr_assert(strstr(err, "trailing"), "%s", err);
}

/* Random edits of a valid manifest: the strict reader answers 0,
 * BT_EFORMAT or BT_EVERSION, never crashes (run under the sanitizers). */
Test(manifest, mutated_manifests_are_rejected_not_crashed_on, .init = setup, .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 3, L, four, 4, 1, NULL), 0);
  char p[600], q[600];
  path_of(p, sizeof p, 3, "MANIFEST.json");
  snprintf(q, sizeof q, "%s/mutated.json", root);
  char *text = NULL;
  size_t cap = 0;
  FILE *f = fopen(p, "r");
  cr_assert(f);
  ssize_t len = getdelim(&text, &cap, 0, f);
  fclose(f);
  cr_assert_gt(len, 10);
  char *m = malloc((size_t)len + 64);
  uint64_t x = 0x2545f4914f6cdd1dull;
  int ok = 0, rejected = 0;
  for (int it = 0; it < 2000; it++) {
    memcpy(m, text, (size_t)len);
    size_t n = (size_t)len;
    int edits = 1 + (int)(x % 3);
    for (int e = 0; e < edits; e++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      size_t pos = (size_t)(x >> 8) % n;
      switch (x % 4) {
      case 0: m[pos] = (char)(x >> 40); break;                  /* any byte */
      case 1: m[pos] = "0123456789{}[],:\"-e."[(x >> 20) % 19]; break; /* JSON-ish */
      case 2: n = pos + 1; break;                                /* truncate */
      default: memmove(m + pos, m + pos + 1, n - pos - 1); n--; /* delete */
      }
    }
    f = fopen(q, "wb");
    fwrite(m, 1, n, f);
    fclose(f);
    bt_ckpt_manifest_t man;
    char err[256];
    int rc = bt_ckpt_manifest_read(q, &man, err, sizeof err);
    cr_assert(rc == 0 || rc == BT_EFORMAT || rc == BT_EVERSION, "iteration %d: %d", it, rc);
    if (rc == 0) {
      /* Whatever parses is internally consistent. */
      for (uint32_t l = 0; l < man.meta.layer_count; l++) cr_assert_lt(man.layer_shard[l], man.nshards);
      bt_ckpt_manifest_free(&man);
      ok++;
    } else {
      cr_assert(err[0], "iteration %d: rejected without a message", it);
      rejected++;
    }
  }
  cr_assert_gt(rejected, 1000, "only %d of 2000 edits rejected", rejected);
  free(m);
  free(text);
}

/* A checkpoint written as 4 uneven shards loads onto 1, 2, 3 and 6 stages. */
Test(reshard, four_shards_onto_1_2_3_6_stages, .init = setup, .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 5, L, four, 4, 9, NULL), 0);
  static const uint32_t splits[][8] = {
      {0, L}, {0, 6, L}, {0, 2, 10, L}, {0, 1, 3, 5, 8, 11, L}};
  static const int counts[] = {1, 2, 3, 6};
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_open_latest(root, BT_CKPT_CHECK_CRC, &st), 0);
  cr_assert_eq(st.step, 5);
  for (int k = 0; k < 4; k++)
    for (int s = 0; s < counts[k]; s++) {
      uint32_t lo = splits[k][s], hi = splits[k][s + 1];
      ckpt_synth_t exp, got;
      cr_assert_eq(ckpt_synth_make(&exp, lo, hi, L, 9, 5, 1), 0);
      cr_assert_eq(ckpt_synth_empty(&got, lo, hi, L, 1), 0);
      cr_assert_eq(bt_ckpt_step_load(&st, got.t, got.n), 0, "%d stages, stage %d", counts[k], s);
      assert_same(&got, &exp);
      ckpt_synth_free(&exp);
      ckpt_synth_free(&got);
    }
  /* A wrong shape is a model mismatch, not corruption. */
  ckpt_synth_t got;
  cr_assert_eq(ckpt_synth_empty(&got, 3, 4, L, 0), 0);
  got.t[0].dims[0] = 31;
  cr_assert_eq(bt_ckpt_step_load(&st, got.t, 1), BT_ECONFIG);
  ckpt_synth_free(&got);
  bt_ckpt_step_close(&st);
}

static void save_shards(int64_t step, const uint32_t *lo, const uint32_t *hi, uint32_t n,
                        bt_msg_shard_t *rep) {
  for (uint32_t s = 0; s < n; s++) {
    ckpt_synth_t sy;
    cr_assert_eq(ckpt_synth_make(&sy, lo[s], hi[s], L, 1, step, 1), 0);
    bt_ckpt_meta_t m = ckpt_synth_meta(step, s, n, L, 1);
    cr_assert_eq(bt_ckpt_save(root, &m, sy.t, sy.n, NULL, &rep[s]), 0);
    ckpt_synth_free(&sy);
  }
}

Test(commit, coverage_gap_refused, .init = setup, .fini = teardown) {
  bt_msg_shard_t rep[2];
  save_shards(2, (uint32_t[]){0, 6}, (uint32_t[]){5, L}, 2, rep); /* layer 5 in none */
  cr_assert_eq(bt_ckpt_commit(root, 2, rep, 2), BT_ECORRUPT);
  int64_t *steps;
  size_t n;
  cr_assert_eq(bt_ckpt_list_steps(root, &steps, &n), 0);
  cr_assert_eq(n, 0);
  free(steps);
}

Test(commit, duplicate_layer_refused, .init = setup, .fini = teardown) {
  bt_msg_shard_t rep[2];
  save_shards(2, (uint32_t[]){0, 4}, (uint32_t[]){5, L}, 2, rep); /* layer 4 twice */
  cr_assert_eq(bt_ckpt_commit(root, 2, rep, 2), BT_ECORRUPT);
  /* A missing report (one stage of two) is refused too. */
  cr_assert_eq(bt_ckpt_commit(root, 2, rep, 1), BT_ECORRUPT);
}

/* ---- crash safety, phase by phase ---- */

static void crash_at(const char *phase, int64_t expect_step) {
  cr_assert_eq(ckpt_synth_save_step(root, 1, L, four, 4, 3, NULL), 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    setenv("BATON_CKPT_TEST_STOP", phase, 1);
    int rc = ckpt_synth_save_step(root, 2, L, four, 4, 3, NULL);
    _exit(rc == 0 ? 0 : 1);
  }
  int status = 0, stopped = 0;
  uint64_t deadline = bt_deadline_ms(30000);
  while (bt_ms_left(deadline) > 0) {
    pid_t r = waitpid(pid, &status, WUNTRACED | WNOHANG);
    if (r == pid) {
      stopped = WIFSTOPPED(status);
      break;
    }
    bt_sleep_ms(5);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  cr_assert(stopped, "the writer never stopped at %s", phase);

  /* No committed step is torn, and restore finds the last good one. */
  int64_t *steps;
  size_t n;
  cr_assert_eq(bt_ckpt_list_steps(root, &steps, &n), 0);
  for (size_t i = 0; i < n; i++) {
    char dir[512];
    bt_ckpt_step_t st;
    snprintf(dir, sizeof dir, "%s/step-%08lld", root, (long long)steps[i]);
    cr_assert_eq(bt_ckpt_step_open(dir, BT_CKPT_CHECK_DEEP, &st, NULL, NULL), 0,
                 "committed step %lld is torn after a crash at %s", (long long)steps[i], phase);
    bt_ckpt_step_close(&st);
  }
  free(steps);
  ckpt_synth_t got, exp;
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  cr_assert_eq(ckpt_synth_make(&exp, 0, L, L, 3, expect_step, 1), 0);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_restore(root, got.t, got.n, &st), 0);
  cr_assert_eq(st.step, expect_step, "crash at %s: restored step %lld", phase, (long long)st.step);
  assert_same(&got, &exp);
  bt_ckpt_step_close(&st);
  /* The job goes on: step 2 is saved again over the debris and commits. */
  cr_assert_eq(ckpt_synth_save_step(root, 2, L, four, 4, 3, NULL), 0);
  cr_assert_eq(bt_ckpt_restore(root, got.t, got.n, &st), 0);
  cr_assert_eq(st.step, 2);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&got);
  ckpt_synth_free(&exp);
}

Test(crash, before_shard_rename, .init = setup, .fini = teardown) { crash_at("shard-tmp", 1); }
Test(crash, after_shard_rename_before_report, .init = setup, .fini = teardown) {
  crash_at("shard-renamed", 1);
}
Test(crash, with_some_shards_durable, .init = setup, .fini = teardown) {
  crash_at("shard-renamed:2", 1);
}
Test(crash, mid_manifest, .init = setup, .fini = teardown) { crash_at("manifest-partial", 1); }
Test(crash, after_manifest_before_dir_rename, .init = setup, .fini = teardown) {
  crash_at("manifest-renamed", 1);
}
Test(crash, before_latest_moves, .init = setup, .fini = teardown) { crash_at("dir-renamed", 2); }

/* ---- corruption ---- */

/* File offset and size of a contiguous dataset's raw data. */
static void raw_extent(const char *file, const char *dset, haddr_t *off, hsize_t *size) {
  hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
  cr_assert_geq(f, 0);
  hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
  cr_assert_geq(d, 0);
  *off = H5Dget_offset(d);
  *size = H5Dget_storage_size(d);
  cr_assert_neq(*off, HADDR_UNDEF);
  H5Dclose(d);
  H5Fclose(f);
}

static void flip_bit(const char *file, off_t off) {
  int fd = open(file, O_RDWR);
  cr_assert_geq(fd, 0);
  unsigned char b;
  cr_assert_eq(pread(fd, &b, 1, off), 1);
  b ^= 0x10;
  cr_assert_eq(pwrite(fd, &b, 1, off), 1);
  close(fd);
}

typedef struct {
  int lines;
  char first[512];
} lines_t;

static void count_line(void *arg, const char *line) {
  lines_t *l = arg;
  if (!l->lines++) snprintf(l->first, sizeof l->first, "%s", line);
}

/* The damage is seen by a deep verify, and restore falls back to step 1. */
static void expect_caught(const char *what) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/step-00000002", root);
  bt_ckpt_step_t st;
  lines_t l = {0};
  cr_assert_lt(bt_ckpt_step_open(dir, BT_CKPT_CHECK_DEEP, &st, count_line, &l), 0,
               "%s not caught", what);
  cr_assert_gt(l.lines, 0, "%s: no problem line", what);
  ckpt_synth_t got;
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  /* Restore falls back and says why: its warnings go to stderr (fd 2),
   * captured here in a file. */
  char logp[400];
  snprintf(logp, sizeof logp, "%s/restore.log", root);
  int logfd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644), saved = dup(2);
  cr_assert(logfd >= 0 && saved >= 0);
  dup2(logfd, 2);
  bt_log_set_level(BT_LOG_WARN);
  int rc = bt_ckpt_restore(root, got.t, got.n, &st);
  bt_log_set_level(BT_LOG_ERROR);
  dup2(saved, 2);
  close(saved);
  close(logfd);
  cr_assert_eq(rc, 0);
  cr_assert_eq(st.step, 1, "%s: restore did not fall back", what);
  char log[2048] = "";
  FILE *f = fopen(logp, "r");
  cr_assert(f);
  size_t n = fread(log, 1, sizeof log - 1, f);
  log[n] = 0;
  fclose(f);
  cr_assert(strstr(log, "skipping") && strstr(log, "step-00000002") &&
                strstr(log, "trying the previous step"),
            "%s: restore gave no reason: %s", what, log);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&got);
}

static void two_steps(void) {
  cr_assert_eq(ckpt_synth_save_step(root, 1, L, four, 4, 5, NULL), 0);
  cr_assert_eq(ckpt_synth_save_step(root, 2, L, four, 4, 5, NULL), 0);
}

Test(corrupt, bit_flip_in_tensor_data, .init = setup, .fini = teardown) {
  two_steps();
  char p[600];
  path_of(p, sizeof p, 2, "stage-002-of-004.h5");
  haddr_t off;
  hsize_t size;
  raw_extent(p, "/layers/000010/W2", &off, &size);
  flip_bit(p, (off_t)(off + size / 2));
  expect_caught("a bit flipped in tensor data");
  /* The dataset's own CRC names the tensor, without the manifest. */
  bt_ckpt_shard_t *sh;
  cr_assert_eq(bt_ckpt_shard_open(p, &sh), 0);
  ckpt_synth_t got;
  cr_assert_eq(ckpt_synth_empty(&got, 10, 11, L, 0), 0);
  cr_assert_eq(bt_ckpt_shard_read(sh, &got.t[2], NULL), BT_ECRC);
  ckpt_synth_free(&got);
  bt_ckpt_shard_close(sh);
}

Test(corrupt, bit_flip_in_hdf5_metadata, .init = setup, .fini = teardown) {
  two_steps();
  char p[600];
  path_of(p, sizeof p, 2, "stage-001-of-004.h5");
  /* Byte 200 lies in the root group's object header area, before any raw
   * data: check that against every dataset of the shard. */
  off_t target = 200;
  bt_ckpt_shard_t *sh;
  cr_assert_eq(bt_ckpt_shard_open(p, &sh), 0);
  bt_ckpt_tensor_t *ts;
  size_t nt;
  cr_assert_eq(bt_ckpt_shard_list(sh, &ts, &nt), 0);
  bt_ckpt_shard_close(sh);
  for (size_t i = 0; i < nt; i++) {
    char ds[128];
    if (ts[i].kind == BT_CKPT_PARAM)
      snprintf(ds, sizeof ds, "/layers/%06u/%s", ts[i].layer, ts[i].name);
    else
      snprintf(ds, sizeof ds, "/optim/%06u/%s/%s", ts[i].layer,
               ts[i].kind == BT_CKPT_ADAM_M ? "m" : "v", ts[i].name);
    haddr_t off;
    hsize_t size;
    raw_extent(p, ds, &off, &size);
    cr_assert(target < (off_t)off || target >= (off_t)(off + size), "byte %lld is raw data",
              (long long)target);
  }
  free(ts);
  flip_bit(p, target);
  expect_caught("a bit flipped in HDF5 metadata");
}

Test(corrupt, truncated_shard, .init = setup, .fini = teardown) {
  two_steps();
  char p[600];
  path_of(p, sizeof p, 2, "stage-002-of-004.h5");
  struct stat sb;
  cr_assert_eq(stat(p, &sb), 0);
  cr_assert_eq(truncate(p, sb.st_size / 2), 0);
  expect_caught("a truncated shard");
}

Test(corrupt, deleted_shard, .init = setup, .fini = teardown) {
  two_steps();
  char p[600];
  path_of(p, sizeof p, 2, "stage-003-of-004.h5");
  cr_assert_eq(unlink(p), 0);
  expect_caught("a deleted shard");
}

Test(corrupt, edited_manifest, .init = setup, .fini = teardown) {
  two_steps();
  char p[600];
  path_of(p, sizeof p, 2, "MANIFEST.json");
  char *text = NULL;
  size_t len = 0;
  FILE *f = fopen(p, "r");
  cr_assert(f);
  cr_assert_eq(getdelim(&text, &len, 0, f) > 0, 1);
  fclose(f);
  /* Move layer 5 to another shard in the map: still valid JSON. */
  char *lay = strstr(text, "\"layers\":[");
  cr_assert(lay);
  char *five = lay + strlen("\"layers\":[") + 2 * 5;
  cr_assert_eq(*five, '2', "layer 5 map entry is '%c'", *five);
  *five = '1';
  f = fopen(p, "w");
  fputs(text, f);
  fclose(f);
  free(text);
  expect_caught("an edited manifest");
}

/* A stage restoring its own layers checks the CRCs of the shards holding
 * them, not the whole checkpoint; damage elsewhere sends only the stages
 * that need the damaged shard back to the previous step. */
Test(corrupt, restore_checks_only_the_shards_it_loads, .init = setup, .fini = teardown) {
  two_steps();
  char p[600];
  path_of(p, sizeof p, 2, "stage-003-of-004.h5"); /* layer 12 only */
  haddr_t off;
  hsize_t size;
  raw_extent(p, "/layers/000012/Wout", &off, &size);
  flip_bit(p, (off_t)(off + 3));
  ckpt_synth_t got, exp;
  bt_ckpt_step_t st;
  cr_assert_eq(ckpt_synth_empty(&got, 0, 5, L, 1), 0);
  cr_assert_eq(ckpt_synth_make(&exp, 0, 5, L, 5, 2, 1), 0);
  cr_assert_eq(bt_ckpt_restore(root, got.t, got.n, &st), 0);
  cr_assert_eq(st.step, 2, "layers 0-4 do not need the damaged shard");
  assert_same(&got, &exp);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&got);
  ckpt_synth_free(&exp);
  cr_assert_eq(ckpt_synth_empty(&got, 12, 13, L, 1), 0);
  cr_assert_eq(ckpt_synth_make(&exp, 12, 13, L, 5, 1, 1), 0);
  cr_assert_eq(bt_ckpt_restore(root, got.t, got.n, &st), 0);
  cr_assert_eq(st.step, 1, "layer 12 was loaded from the damaged shard");
  assert_same(&got, &exp);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&got);
  ckpt_synth_free(&exp);
  /* Finding the step alone checks every shard. */
  cr_assert_eq(bt_ckpt_restore(root, NULL, 0, &st), 0);
  cr_assert_eq(st.step, 1);
  bt_ckpt_step_close(&st);
}

/* ---- disk full ---- */

typedef struct {
  int calls;
  bt_ckpt_result_t r;
} seen_t;

static void on_done(void *arg, const bt_ckpt_result_t *r) {
  seen_t *s = arg;
  s->calls++;
  s->r = *r;
}

static void disk_full(const bt_ckpt_opts_t *opts) {
  char mnt[400];
  snprintf(mnt, sizeof mnt, "%s/small", root);
  cr_assert_eq(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") < 0)
    cr_skip_test("cannot mount a small tmpfs (%s): needs root", strerror(errno));
  char ck[500];
  snprintf(ck, sizeof ck, "%s/ck", mnt);
  /* Step 1: small, fits. Step 2: a 3 MB tensor, cannot. */
  cr_assert_eq(ckpt_synth_save_step(ck, 1, L, (uint32_t[]){0, L}, 1, 2, NULL), 0);
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 2, 2, 0), 0);
  size_t big = 768 * 1024;
  float *huge = calloc(big, sizeof *huge);
  /* Incompressible, so that deflate cannot make it fit. */
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < big; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    huge[i] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5);
  }
  bt_ckpt_tensor_t *ts = calloc(sy.n + 1, sizeof *ts);
  memcpy(ts, sy.t, sy.n * sizeof *ts);
  ts[sy.n] = (bt_ckpt_tensor_t){.layer = 3, .index = 9, .name = "big", .kind = BT_CKPT_PARAM,
                                .ndim = 1, .dims = {big}, .data = huge};
  bt_ckpt_meta_t m = ckpt_synth_meta(2, 0, 1, L, 2);
  seen_t seen = {0};
  bt_ckpt_writer_t *w;
  cr_assert_eq(bt_ckpt_writer_create(&w, ck, opts, on_done, &seen), 0);
  cr_assert_eq(bt_ckpt_save_async(w, &m, ts, sy.n + 1, 10000), 0, "the caller must not fail");
  bt_ckpt_result_t r;
  cr_assert_eq(bt_ckpt_writer_wait(w, 30000, &r), 0);
  cr_assert_eq(r.rc, -ENOSPC, "a save onto a full disk gave %d (%s)", r.rc, bt_strerror(r.rc));
  cr_assert_eq(seen.calls, 1);
  cr_assert_eq(seen.r.rc, r.rc);
  /* Every HDF5 handle of the failed save is closed (a half-open file
   * crashes HDF5 1.10.8 at exit). */
  cr_assert_eq(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0, "%lld HDF5 objects left open",
               (long long)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL));
  /* The writer still works after the failure (a smaller save fits). */
  m.step = 3;
  cr_assert_eq(bt_ckpt_save_async(w, &m, sy.t, sy.n, 10000), 0);
  cr_assert_eq(bt_ckpt_writer_wait(w, 30000, &r), 0);
  bt_ckpt_writer_destroy(w);
  bt_ckpt_step_t st;
  char dir[600];
  snprintf(dir, sizeof dir, "%s/step-00000001", ck);
  cr_assert_eq(bt_ckpt_step_open(dir, BT_CKPT_CHECK_DEEP, &st, NULL, NULL), 0);
  bt_ckpt_step_close(&st);
  int64_t *steps;
  size_t n;
  cr_assert_eq(bt_ckpt_list_steps(ck, &steps, &n), 0);
  cr_assert_eq(n, 1);
  cr_assert_eq(steps[0], 1);
  free(steps);
  free(ts);
  free(huge);
  ckpt_synth_free(&sy);
  umount2(mnt, MNT_DETACH);
}

Test(diskfull, failed_save_leaves_previous_checkpoint, .init = setup, .fini = teardown) {
  disk_full(NULL);
}

/* With filters the chunk cache holds data until the dataset closes: that
 * close is where the full disk shows. */
Test(diskfull, failed_deflate_save_leaves_previous_checkpoint, .init = setup, .fini = teardown) {
  disk_full(&(bt_ckpt_opts_t){.deflate = 1, .shuffle = 1, .fletcher32 = 1});
}

/* ---- lock ---- */

Test(lock, second_holder_refused, .init = setup, .fini = teardown) {
  bt_ckpt_lock_t a, b;
  char who[256];
  cr_assert_eq(bt_ckpt_lock_acquire(root, &a, who, sizeof who), 0);
  cr_assert_eq(bt_ckpt_lock_acquire(root, &b, who, sizeof who), BT_ELOCKED);
  char pid[32];
  snprintf(pid, sizeof pid, "pid %ld ", (long)getpid());
  cr_assert(strstr(who, pid) && strstr(who, "on host") && strstr(who, "since"), "holder: %s", who);
  pid_t c = fork();
  if (c == 0) {
    bt_ckpt_lock_t x;
    _exit(bt_ckpt_lock_acquire(root, &x, NULL, 0) == BT_ELOCKED ? 0 : 1);
  }
  int status;
  cr_assert_eq(waitpid(c, &status, 0), c);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "another process took the lock");
  bt_ckpt_lock_release(&a);
  cr_assert_eq(bt_ckpt_lock_acquire(root, &b, who, sizeof who), 0);
  bt_ckpt_lock_release(&b);
}

Test(lock, stale_lock_taken_over, .init = setup, .fini = teardown) {
  pid_t c = fork();
  if (c == 0) _exit(0);
  int status;
  waitpid(c, &status, 0); /* c is now a pid that runs nothing */
  char host[256] = "", p[400];
  gethostname(host, sizeof host - 1);
  snprintf(p, sizeof p, "%s/LOCK", root);
  FILE *f = fopen(p, "w");
  fprintf(f, "pid=%ld host=%s since=2020-01-01T00:00:00Z\n", (long)c, host);
  fclose(f);
  bt_ckpt_lock_t a;
  char who[256];
  cr_assert_eq(bt_ckpt_lock_acquire(root, &a, who, sizeof who), 0);
  char *text = NULL;
  size_t len = 0;
  f = fopen(p, "r");
  cr_assert_gt(getline(&text, &len, f), 0);
  fclose(f);
  char mine[64];
  snprintf(mine, sizeof mine, "pid=%ld ", (long)getpid());
  cr_assert(strstr(text, mine), "LOCK says %s", text);
  free(text);
  bt_ckpt_lock_release(&a);
}

/* ---- non-finite values ---- */

Test(nonfinite, nan_refused_and_never_committed, .init = setup, .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 1, L, (uint32_t[]){0, L}, 1, 4, NULL), 0);
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 4, 2, 1), 0);
  sy.t[5].data[3] = NAN;
  bt_ckpt_meta_t m = ckpt_synth_meta(2, 0, 1, L, 4);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(root, &m, sy.t, sy.n, NULL, &rep), BT_ENONFINITE);
  sy.t[5].data[3] = INFINITY;
  seen_t seen = {0};
  bt_ckpt_writer_t *w;
  cr_assert_eq(bt_ckpt_writer_create(&w, root, NULL, on_done, &seen), 0);
  cr_assert_eq(bt_ckpt_save_async(w, &m, sy.t, sy.n, 10000), 0);
  bt_ckpt_result_t r;
  cr_assert_eq(bt_ckpt_writer_wait(w, 30000, &r), 0);
  cr_assert_eq(r.rc, BT_ENONFINITE);
  bt_ckpt_writer_destroy(w);
  /* Nothing to commit: no shard was written. */
  rep = (bt_msg_shard_t){.stage = 0, .step = 2, .file = "stage-000-of-001.h5", .size = 1};
  cr_assert_lt(bt_ckpt_commit(root, 2, &rep, 1), 0);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_restore(root, NULL, 0, &st), 0);
  cr_assert_eq(st.step, 1);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&sy);
}

/* The finiteness scan works on blocks of 4096 floats with a scalar tail:
 * a NaN or an Inf at a block's first or last element, or in the tail, is
 * refused; the largest finite values, subnormals and -0 are not. */
Test(nonfinite, any_position_of_a_large_tensor_is_checked, .init = setup, .fini = teardown) {
  enum { N = 3 * 4096 + 5 };
  float *x = malloc(N * sizeof *x);
  cr_assert(x);
  for (size_t k = 0; k < N; k++) x[k] = (float)k * 1e-3f - 5.0f;
  x[7] = FLT_MAX;
  x[8] = -FLT_MAX;
  x[9] = 1e-45f;
  x[10] = -0.0f;
  bt_ckpt_tensor_t t = {.layer = 0, .index = 0, .name = "w", .kind = BT_CKPT_PARAM, .ndim = 1,
                        .dims = {N}, .data = x};
  bt_ckpt_meta_t m = ckpt_synth_meta(1, 0, 1, 1, 3);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(root, &m, &t, 1, NULL, &rep), 0, "finite values refused");
  const size_t at[] = {0, 4095, 4096, 8191, 12287, 12288, N - 1};
  const float bad[] = {NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
    for (size_t b = 0; b < 3; b++) {
      float keep = x[at[i]];
      x[at[i]] = bad[b];
      m.step = 2;
      cr_expect_eq(bt_ckpt_save(root, &m, &t, 1, NULL, &rep), BT_ENONFINITE,
                   "%g at element %zu was not refused", (double)bad[b], at[i]);
      x[at[i]] = keep;
    }
  free(x);
}

/* A shard that holds NaN although bt_ckpt_save would have refused it
 * (another writer, a bit flip between save and commit): commit reads no
 * tensor, so it commits the step, but the file no longer matches the CRC
 * its save reported, so restore skips the step and loads the one before,
 * and verify names the shard. */
Test(nonfinite, a_shard_changed_after_its_save_is_never_restored, .init = setup,
     .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 1, L, (uint32_t[]){0, L}, 1, 4, NULL), 0);
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 4, 2, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(2, 0, 1, L, 4);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(root, &m, sy.t, sy.n, NULL, &rep), 0);
  char p[600];
  snprintf(p, sizeof p, "%s/step-00000002.tmp/%s", root, rep.file);
  hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
  cr_assert_geq(f, 0);
  hid_t d = H5Dopen2(f, "/layers/000007/b2", H5P_DEFAULT);
  cr_assert_geq(d, 0);
  float vals[8];
  cr_assert_geq(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, vals), 0);
  vals[6] = INFINITY;
  cr_assert_geq(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, vals), 0);
  /* Keep the dataset CRC consistent: only the value is wrong. */
  hid_t a = H5Aopen(d, "crc", H5P_DEFAULT);
  uint32_t c = bt_crc32(0, vals, sizeof vals);
  cr_assert_geq(H5Awrite(a, H5T_NATIVE_UINT32, &c), 0);
  H5Aclose(a);
  H5Dclose(d);
  H5Fclose(f);
  struct stat sb;
  cr_assert_eq(stat(p, &sb), 0);
  cr_assert_eq((uint64_t)sb.st_size, rep.size, "the change must keep the size");
  cr_assert_eq(bt_ckpt_commit(root, 2, &rep, 1), 0);
  bt_ckpt_step_t st;
  char dir[512];
  snprintf(dir, sizeof dir, "%s/step-00000002", root);
  cr_assert_eq(bt_ckpt_step_open(dir, BT_CKPT_CHECK_CRC, &st, NULL, NULL), BT_ECRC);
  cr_assert_eq(bt_ckpt_restore(root, NULL, 0, &st), 0);
  cr_assert_eq(st.step, 1, "restore loaded step %lld, the changed one", (long long)st.step);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&sy);
}

/* The CRC a save reports (put together from the tensors' CRCs and the
 * metadata between them) is the CRC of the file's bytes, with and
 * without filters. */
Test(nonfinite, the_reported_crc_is_the_files, .init = setup, .fini = teardown) {
  const bt_ckpt_opts_t plain = {0}, filtered = {.deflate = 1, .shuffle = 1, .fletcher32 = 1};
  const bt_ckpt_opts_t *opts[2] = {&plain, &filtered};
  for (int k = 0; k < 2; k++) {
    ckpt_synth_t sy;
    cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 4, 3 + k, 1), 0);
    bt_ckpt_meta_t m = ckpt_synth_meta(3 + k, 0, 1, L, 4);
    bt_msg_shard_t rep;
    cr_assert_eq(bt_ckpt_save(root, &m, sy.t, sy.n, opts[k], &rep), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/step-%08d.tmp/%s", root, 3 + k, rep.file);
    uint32_t crc;
    uint64_t size;
    cr_assert_eq(bt_crc32_file(p, &crc, &size), 0);
    cr_assert_eq(size, rep.size);
    cr_assert_eq(crc, rep.crc, "%s: file CRC %08x, reported %08x", k ? "filtered" : "plain", crc,
                 rep.crc);
    ckpt_synth_free(&sy);
  }
}

/* ---- asynchronous saves ---- */

typedef struct {
  int calls;
  double done_at[4];
  int64_t steps[4];
  int rcs[4];
} slow_t;

static void slow_done(void *arg, const bt_ckpt_result_t *r) {
  slow_t *s = arg;
  bt_sleep_ms(300); /* a slow disk: the writer is busy past the next save */
  if (s->calls < 4) {
    s->done_at[s->calls] = bt_clock_s();
    s->steps[s->calls] = r->step;
    s->rcs[s->calls] = r->rc;
  }
  s->calls++;
}

Test(async, second_save_waits_for_the_first, .init = setup, .fini = teardown) {
  slow_t s = {0};
  bt_ckpt_writer_t *w;
  cr_assert_eq(bt_ckpt_writer_create(&w, root, NULL, slow_done, &s), 0);
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 6, 1, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(1, 0, 1, L, 6);
  double t0 = bt_clock_s();
  cr_assert_eq(bt_ckpt_save_async(w, &m, sy.t, sy.n, 10000), 0);
  double first_returned = bt_clock_s();
  cr_assert_lt(first_returned - t0, 0.25, "the first save blocked the caller");
  /* The snapshot is a copy: the caller may change its tensors at once. */
  sy.t[0].data[0] += 1.0f;
  /* Too short a deadline: the first is still being written. */
  m.step = 2;
  cr_assert_eq(bt_ckpt_save_async(w, &m, sy.t, sy.n, 10), BT_ETIMEOUT);
  cr_assert_eq(bt_ckpt_save_async(w, &m, sy.t, sy.n, 10000), 0);
  double second_returned = bt_clock_s();
  bt_ckpt_result_t r;
  cr_assert_eq(bt_ckpt_writer_wait(w, 10000, &r), 0);
  cr_assert_eq(s.calls, 2, "a save was skipped");
  cr_assert_eq(s.steps[0], 1);
  cr_assert_eq(s.steps[1], 2);
  cr_assert_eq(s.rcs[0], 0);
  cr_assert_eq(s.rcs[1], 0);
  cr_assert_geq(second_returned, s.done_at[0], "the second save did not wait for the first");
  cr_assert_eq(r.step, 2);
  bt_ckpt_writer_destroy(w);
  /* Step 1 holds the values before the change, step 2 after it. */
  ckpt_synth_t exp, got;
  cr_assert_eq(ckpt_synth_make(&exp, 0, L, L, 6, 1, 1), 0);
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  bt_ckpt_shard_t *sh;
  char p[600];
  snprintf(p, sizeof p, "%s/step-00000001.tmp/stage-000-of-001.h5", root);
  cr_assert_eq(bt_ckpt_shard_open(p, &sh), 0);
  for (size_t i = 0; i < got.n; i++) cr_assert_eq(bt_ckpt_shard_read(sh, &got.t[i], NULL), 0);
  bt_ckpt_shard_close(sh);
  assert_same(&got, &exp);
  snprintf(p, sizeof p, "%s/step-00000002.tmp/stage-000-of-001.h5", root);
  cr_assert_eq(bt_ckpt_shard_open(p, &sh), 0);
  cr_assert_eq(bt_ckpt_shard_read(sh, &got.t[0], NULL), 0);
  cr_assert_eq(got.t[0].data[0], exp.t[0].data[0] + 1.0f);
  bt_ckpt_shard_close(sh);
  ckpt_synth_free(&exp);
  ckpt_synth_free(&got);
  ckpt_synth_free(&sy);
}

/* ---- retention ---- */

static int exists(const char *name) {
  char p[600];
  snprintf(p, sizeof p, "%s/%s", root, name);
  return access(p, F_OK) == 0;
}

Test(retention, keeps_newest_n_and_every_kth, .init = setup, .fini = teardown) {
  for (int64_t s = 1; s <= 10; s++)
    cr_assert_eq(ckpt_synth_save_step(root, s, 3, (uint32_t[]){0, 3}, 1, 1, NULL), 0);
  char p[600];
  snprintf(p, sizeof p, "%s/step-00000003.tmp", root);
  cr_assert_eq(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/step-00000012.tmp", root);
  cr_assert_eq(mkdir(p, 0755), 0);
  int removed = -1;
  cr_assert_eq(bt_ckpt_retain(root, &(bt_ckpt_retention_t){.keep_last = 2, .keep_every = 4}, -1,
                              &removed),
               0);
  static const int kept[] = {4, 8, 9, 10};
  for (int s = 1; s <= 10; s++) {
    char name[32];
    snprintf(name, sizeof name, "step-%08d", s);
    int want = 0;
    for (int k = 0; k < 4; k++) want |= kept[k] == s;
    cr_assert_eq(exists(name), want, "%s kept=%d", name, exists(name));
  }
  cr_assert(!exists("step-00000003.tmp"), "old temporary directory left");
  cr_assert(exists("step-00000012.tmp"), "a directory that may be in flight was removed");
  cr_assert_eq(removed, 7);
  /* A torn newest step: the newest step that verifies is never deleted. */
  snprintf(p, sizeof p, "%s/step-00000010/stage-000-of-001.h5", root);
  cr_assert_eq(unlink(p), 0);
  cr_assert_eq(bt_ckpt_retain(root, &(bt_ckpt_retention_t){.keep_last = 1}, -1, NULL), 0);
  cr_assert(exists("step-00000010") && exists("step-00000009"), "newest verified step removed");
  cr_assert(!exists("step-00000008") && !exists("step-00000004"));
  cr_assert_eq(bt_ckpt_retain(root, &(bt_ckpt_retention_t){.keep_last = 0}, -1, NULL), BT_EARG);
}

/* ---- asynchronous saves filled by a callback (device copies) ---- */

typedef struct {
  const ckpt_synth_t *src;
  size_t calls;
  size_t fail_at;
} fill_t;

static int fill_from(void *arg, size_t i, float *dst) {
  fill_t *f = arg;
  f->calls++;
  if (i == f->fail_at) return BT_EBACKEND;
  memcpy(dst, f->src->t[i].data, bt_ckpt_numel(&f->src->t[i]) * sizeof(float));
  return 0;
}

Test(async, fill_callback_snapshot, .init = setup, .fini = teardown) {
  ckpt_synth_t sy, got;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 8, 4, 1), 0);
  bt_ckpt_tensor_t *desc = calloc(sy.n, sizeof *desc);
  for (size_t i = 0; i < sy.n; i++) {
    desc[i] = sy.t[i];
    desc[i].data = NULL; /* only the description: fill() provides data */
  }
  bt_ckpt_writer_t *w;
  cr_assert_eq(bt_ckpt_writer_create(&w, root, NULL, NULL, NULL), 0);
  cr_assert_eq(bt_ckpt_writer_reserve(w, desc, sy.n, 10000), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(4, 0, 1, L, 8);
  fill_t f = {.src = &sy, .fail_at = 5};
  cr_assert_eq(bt_ckpt_save_async_fill(w, &m, desc, sy.n, fill_from, &f, 10000), BT_EBACKEND);
  bt_ckpt_result_t r;
  cr_assert_eq(bt_ckpt_writer_wait(w, 10000, &r), 0);
  cr_assert_eq(r.rc, BT_EARG, "a failed fill still queued a save");
  f = (fill_t){.src = &sy, .fail_at = SIZE_MAX};
  cr_assert_eq(bt_ckpt_save_async_fill(w, &m, desc, sy.n, fill_from, &f, 10000), 0);
  cr_assert_eq(f.calls, sy.n);
  cr_assert_eq(bt_ckpt_writer_wait(w, 30000, &r), 0);
  cr_assert_eq(r.rc, 0);
  bt_ckpt_writer_destroy(w);
  cr_assert_eq(bt_ckpt_commit(root, 4, &r.shard, 1), 0);
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_restore(root, got.t, got.n, &st), 0);
  assert_same(&got, &sy);
  bt_ckpt_step_close(&st);
  free(desc);
  ckpt_synth_free(&got);
  ckpt_synth_free(&sy);
}

/* `baton train` commits on its writer thread from the done callback, with
 * the snapshot's attributes instead of reopening the shard. */
typedef struct {
  const char *root;
  int calls, rc;
  int had_snapshot;
} commit_cb_t;

static void commit_in_done(void *arg, const bt_ckpt_result_t *r) {
  commit_cb_t *c = arg;
  c->calls++;
  c->had_snapshot = r->meta && r->t && r->n > 0 && r->meta->step == r->step;
  c->rc = bt_ckpt_commit_saved(c->root, r, NULL);
}

Test(async, commit_saved_in_the_done_callback_commits_a_restorable_step, .init = setup,
     .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 1, L, (uint32_t[]){0, L}, 1, 4, NULL), 0);
  ckpt_synth_t sy, got;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 4, 2, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(2, 0, 1, L, 4);
  commit_cb_t c = {.root = root, .rc = 1};
  bt_ckpt_writer_t *w;
  cr_assert_eq(bt_ckpt_writer_create(&w, root, NULL, commit_in_done, &c), 0);
  cr_assert_eq(bt_ckpt_save_async(w, &m, sy.t, sy.n, 10000), 0);
  bt_ckpt_result_t r;
  cr_assert_eq(bt_ckpt_writer_wait(w, 30000, &r), 0);
  bt_ckpt_writer_destroy(w);
  cr_assert_eq(c.calls, 1);
  cr_assert(c.had_snapshot, "the done callback got no snapshot");
  cr_assert_eq(c.rc, 0, "commit_saved: %s", bt_strerror(c.rc));
  cr_assert_null(r.meta, "the waiter's copy must not point into the snapshot");
  bt_ckpt_step_t st;
  char dir[512];
  snprintf(dir, sizeof dir, "%s/step-00000002", root);
  cr_assert_eq(bt_ckpt_step_open(dir, BT_CKPT_CHECK_DEEP, &st, NULL, NULL), 0);
  cr_assert_eq(st.man.meta.adam_t, m.adam_t);
  cr_assert_eq(st.man.meta.layer_count, L);
  cr_assert_str_eq(st.man.meta.model_config, m.model_config);
  for (uint32_t l = 0; l < L; l++) cr_assert_eq(st.man.layer_shard[l], 0);
  bt_ckpt_step_close(&st);
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  cr_assert_eq(bt_ckpt_restore(root, got.t, got.n, &st), 0);
  cr_assert_eq(st.step, 2);
  assert_same(&got, &sy);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&got);
  ckpt_synth_free(&sy);
}

/* What commit_saved still checks without reopening the shard: the save
 * succeeded, one stage, layers in range, every layer present, the size on
 * disk; a refused commit leaves the previous step the one restored. */
Test(async, commit_saved_refuses_what_it_cannot_vouch_for, .init = setup, .fini = teardown) {
  cr_assert_eq(ckpt_synth_save_step(root, 1, L, (uint32_t[]){0, L}, 1, 4, NULL), 0);
  ckpt_synth_t sy, part;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 4, 2, 1), 0);
  cr_assert_eq(ckpt_synth_make(&part, 0, L - 1, L, 4, 2, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(2, 0, 1, L, 4);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(root, &m, sy.t, sy.n, NULL, &rep), 0);
  bt_ckpt_result_t r = {.rc = 0, .step = 2, .shard = rep, .meta = &m, .t = sy.t, .n = sy.n};
  bt_ckpt_result_t bad = r;
  bad.rc = BT_ENONFINITE;
  cr_expect_eq(bt_ckpt_commit_saved(root, &bad, NULL), BT_EARG);
  bt_ckpt_meta_t two = ckpt_synth_meta(2, 0, 2, L, 4);
  bad = r;
  bad.meta = &two;
  cr_expect_eq(bt_ckpt_commit_saved(root, &bad, NULL), BT_EARG);
  bad = r;
  bad.step = 3;
  cr_expect_eq(bt_ckpt_commit_saved(root, &bad, NULL), BT_EARG);
  uint32_t keep = sy.t[0].layer;
  sy.t[0].layer = L;
  cr_expect_eq(bt_ckpt_commit_saved(root, &r, NULL), BT_EARG);
  sy.t[0].layer = keep;
  bad = r;
  bad.t = part.t;
  bad.n = part.n;
  cr_expect_eq(bt_ckpt_commit_saved(root, &bad, NULL), BT_ECORRUPT, "a layer missing");
  char p[600];
  snprintf(p, sizeof p, "%s/step-00000002.tmp/%s", root, rep.file);
  FILE *f = fopen(p, "ab");
  cr_assert(f);
  fputc(0, f);
  fclose(f);
  cr_expect_eq(bt_ckpt_commit_saved(root, &r, NULL), BT_ECORRUPT, "a shard of another size");
  bt_ckpt_step_t st;
  cr_assert_eq(bt_ckpt_restore(root, NULL, 0, &st), 0);
  cr_assert_eq(st.step, 1);
  bt_ckpt_step_close(&st);
  cr_assert_eq(truncate(p, (off_t)rep.size), 0);
  cr_assert_eq(bt_ckpt_commit_saved(root, &r, NULL), 0);
  cr_assert_eq(bt_ckpt_restore(root, NULL, 0, &st), 0);
  cr_assert_eq(st.step, 2);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&part);
  ckpt_synth_free(&sy);
}

/* A save that cannot write at all (a read-only filesystem stands in for a
 * permission error: the tests run as root, which ignores file modes). */
Test(diskfull, read_only_filesystem_save_fails_cleanly, .init = setup, .fini = teardown) {
  char mnt[400];
  snprintf(mnt, sizeof mnt, "%s/ro", root);
  cr_assert_eq(mkdir(mnt, 0755), 0);
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=4m") < 0)
    cr_skip_test("cannot mount a tmpfs (%s): needs root", strerror(errno));
  char ck[500];
  snprintf(ck, sizeof ck, "%s/ck", mnt);
  cr_assert_eq(ckpt_synth_save_step(ck, 1, L, four, 4, 2, NULL), 0);
  cr_assert_eq(mount(NULL, mnt, NULL, MS_REMOUNT | MS_RDONLY, NULL), 0, "%s", strerror(errno));
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 2, 2, 1), 0);
  bt_ckpt_meta_t m = ckpt_synth_meta(2, 0, 1, L, 2);
  bt_msg_shard_t rep;
  cr_assert_eq(bt_ckpt_save(ck, &m, sy.t, sy.n, NULL, &rep), -EROFS);
  bt_ckpt_step_t st;
  ckpt_synth_t got;
  cr_assert_eq(ckpt_synth_empty(&got, 0, L, L, 1), 0);
  cr_assert_eq(bt_ckpt_restore(ck, got.t, got.n, &st), 0);
  cr_assert_eq(st.step, 1);
  bt_ckpt_step_close(&st);
  ckpt_synth_free(&got);
  ckpt_synth_free(&sy);
  umount2(mnt, MNT_DETACH);
}
