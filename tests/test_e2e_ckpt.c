/* test_e2e_ckpt.c - `baton ckpt` on checkpoints written through the API:
 * outputs and exit codes of ls/show/verify/diff/hash, h5dump and h5py
 * reading a shard, and bad input that must give one line and exit 2 (or 1
 * for a damaged checkpoint), never a crash or a hang. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "common/hash.h"
#include "common/log.h"
#include "tests/support/checkpoint_synth.h"
#include "tests/support/e2e.h"

#define L 13

static bt_e2e_dirs_t e2e;
static char *const dir = e2e.dir, *const out_path = e2e.out, *const err_path = e2e.err;

static void setup(void) {
  bt_e2e_setup(&e2e, "ckpt");
  bt_log_set_level(BT_LOG_ERROR);
}

static void teardown(void) { bt_e2e_teardown(&e2e); }

static char out[1 << 16], err[1 << 14];

static void slurp(const char *path, char *buf, size_t len) {
  buf[0] = 0;
  FILE *f = fopen(path, "r");
  if (!f) return;
  size_t n = fread(buf, 1, len - 1, f);
  buf[n] = 0;
  fclose(f);
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

/* Runs `baton ckpt ARGS` (under a timeout: a hang fails the test) and
 * returns its exit code; stdout and stderr land in out and err. With
 * hdf5_may_trip, a sanitizer report from inside HDF5 reading a damaged
 * file is tolerated (the library is not ours, and baton contains it). */
static int ckpt_run(const char *args, int hdf5_may_trip) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "exec '%s' ckpt %s", bt_e2e_env("BATON_BIN"), args);
  int code = bt_e2e_sh(&e2e, cmd, 60000);
  slurp(out_path, out, sizeof out);
  slurp(err_path, err, sizeof err);
  /* A sanitizer build's report goes to the child's stderr, not ours. */
  if (!hdf5_may_trip)
    cr_assert(!strstr(err, "runtime error: ") && !strstr(err, "Sanitizer"),
              "baton ckpt %s: sanitizer report:\n%s", args, err);
  cr_assert(code == 0 || code == 1 || code == 2,
            "baton ckpt %s: exit %d (crash or hang)\nstdout: %s\nstderr: %s", args, code, out, err);
  return code;
}

static int ckpt(const char *args) { return ckpt_run(args, 0); }

static const uint32_t four[] = {0, 1, 5, 12, L};
static const uint32_t two[] = {0, 7, L};

/* a: steps 1 and 2 in 4 shards; b: step 2 in 2 shards, same tensors;
 * c: step 2 from another seed. */
static void make_three(void) {
  char p[400];
  snprintf(p, sizeof p, "%s/a", dir);
  cr_assert_eq(ckpt_synth_save_step(p, 1, L, four, 4, 11, NULL), 0);
  cr_assert_eq(ckpt_synth_save_step(p, 2, L, four, 4, 11, NULL), 0);
  snprintf(p, sizeof p, "%s/b", dir);
  cr_assert_eq(ckpt_synth_save_step(p, 2, L, two, 2, 11, &(bt_ckpt_opts_t){.deflate = 1, .shuffle = 1}), 0);
  snprintf(p, sizeof p, "%s/c", dir);
  cr_assert_eq(ckpt_synth_save_step(p, 2, L, four, 4, 12, NULL), 0);
}

static char args_buf[2048];
__attribute__((format(printf, 1, 2))) static const char *fmt(const char *f, ...) {
  va_list ap;
  va_start(ap, f);
  vsnprintf(args_buf, sizeof args_buf, f, ap);
  va_end(ap);
  return args_buf;
}

Test(ckpt_cli, ls_lists_every_step_with_its_state, .init = setup, .fini = teardown) {
  make_three();
  char p[600];
  snprintf(p, sizeof p, "%s/a/step-00000003.tmp", dir);
  cr_assert_eq(mkdir(p, 0755), 0);
  cr_assert_eq(ckpt(fmt("ls '%s/a'", dir)), 0, "%s", err);
  cr_assert(strstr(out, "step-00000001") && strstr(out, "step-00000002") &&
                strstr(out, "step-00000003.tmp"),
            "%s", out);
  cr_assert(strstr(out, "committed") && strstr(out, "incomplete"), "%s", out);
  cr_assert(strstr(out, "<- latest"), "%s", out);
  snprintf(p, sizeof p, "%s/a/step-00000001/stage-001-of-004.h5", dir);
  cr_assert_eq(unlink(p), 0);
  cr_assert_eq(ckpt(fmt("ls '%s/a'", dir)), 0);
  cr_assert(strstr(out, "corrupt"), "%s", out);
}

Test(ckpt_cli, show_prints_attributes_and_tensor_stats, .init = setup, .fini = teardown) {
  make_three();
  cr_assert_eq(ckpt(fmt("show '%s/b'", dir)), 0, "%s", err);
  cr_assert(strstr(out, "step            2"), "%s", out);
  cr_assert(strstr(out, "stages          2"), "%s", out);
  cr_assert(strstr(out, "model_config") && strstr(out, "layers=11"), "%s", out);
  cr_assert(strstr(out, "W1") && strstr(out, "(32,8)") && strstr(out, "adam_v"), "%s", out);
  cr_assert(strstr(out, "RATIO") && strstr(out, "NAN"), "%s", out);
  /* One shard alone: its own stage. */
  cr_assert_eq(ckpt(fmt("show '%s/a/step-00000002/stage-002-of-004.h5'", dir)), 0);
  cr_assert(strstr(out, "stage           2"), "%s", out);
}

Test(ckpt_cli, verify_sound_and_damaged, .init = setup, .fini = teardown) {
  make_three();
  cr_assert_eq(ckpt(fmt("verify '%s/a'", dir)), 0, "%s%s", out, err);
  cr_assert(strstr(out, "ok:") && strstr(out, "step 2"), "%s", out);
  cr_assert_eq(ckpt(fmt("verify '%s/a/step-00000001'", dir)), 0, "%s%s", out, err);
  cr_assert_eq(ckpt(fmt("verify '%s/a/step-00000002/stage-000-of-004.h5'", dir)), 0, "%s", out);
  /* A flipped bit in the middle of a shard. */
  char p[600];
  snprintf(p, sizeof p, "%s/a/step-00000002/stage-002-of-004.h5", dir);
  struct stat sb;
  cr_assert_eq(stat(p, &sb), 0);
  int fd = open(p, O_RDWR);
  unsigned char b;
  cr_assert_eq(pread(fd, &b, 1, sb.st_size - 64), 1);
  b ^= 1;
  cr_assert_eq(pwrite(fd, &b, 1, sb.st_size - 64), 1);
  close(fd);
  cr_assert_eq(ckpt(fmt("verify '%s/a'", dir)), 1, "%s", out);
  cr_assert(strstr(out, "stage-002-of-004.h5") && strstr(out, "CRC"), "%s", out);
  /* A missing shard: one line for it. */
  snprintf(p, sizeof p, "%s/a/step-00000001/stage-003-of-004.h5", dir);
  cr_assert_eq(unlink(p), 0);
  cr_assert_eq(ckpt(fmt("verify '%s/a/step-00000001'", dir)), 1);
  cr_assert(strstr(out, "stage-003-of-004.h5: missing"), "%s", out);
  cr_assert_eq(count_lines(out), 1, "%s", out);
  cr_assert_eq(ckpt(fmt("hash '%s/a/step-00000001'", dir)), 1);
}

Test(ckpt_cli, diff_matches_tensors_across_shardings, .init = setup, .fini = teardown) {
  make_three();
  cr_assert_eq(ckpt(fmt("diff '%s/a' '%s/b'", dir, dir)), 0, "%s%s", out, err);
  cr_assert(strstr(out, "identical"), "%s", out);
  cr_assert_eq(ckpt(fmt("diff '%s/a' '%s/c'", dir, dir)), 1);
  cr_assert(strstr(out, "W1") && !strstr(out, "only in"), "%s", out);
  cr_assert_eq(ckpt(fmt("diff '%s/a/step-00000001' '%s/a/step-00000002'", dir, dir)), 1);
  /* One shard against the whole step: tensors missing on one side. */
  cr_assert_eq(ckpt(fmt("diff '%s/a/step-00000002/stage-001-of-004.h5' '%s/b'", dir, dir)), 1);
  cr_assert(strstr(out, "only in"), "%s", out);
}

Test(ckpt_cli, hash_is_independent_of_sharding, .init = setup, .fini = teardown) {
  make_three();
  char ha[64], hb[64];
  cr_assert_eq(ckpt(fmt("hash '%s/a'", dir)), 0, "%s", err);
  cr_assert_eq(strlen(out), 38, "%s", out);
  cr_assert_eq(strncmp(out, "hash ", 5), 0);
  for (int i = 5; i < 37; i++) cr_assert(strchr("0123456789abcdef", out[i]), "%s", out);
  snprintf(ha, sizeof ha, "%s", out);
  cr_assert_eq(ckpt(fmt("hash '%s/b/step-00000002'", dir)), 0);
  snprintf(hb, sizeof hb, "%s", out);
  cr_assert_str_eq(ha, hb);
  cr_assert_eq(ckpt(fmt("hash '%s/c'", dir)), 0);
  cr_assert_str_neq(ha, out);
  /* The same hash computed here from the tensors that were written. */
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 0, L, L, 11, 2, 0), 0);
  bt_hash_rec_t *recs = calloc(sy.n, sizeof *recs);
  for (size_t i = 0; i < sy.n; i++) {
    recs[i].layer = sy.t[i].layer;
    recs[i].index = sy.t[i].index;
    snprintf(recs[i].name, sizeof recs[i].name, "%s", sy.t[i].name);
    recs[i].h = bt_hash_tensor(sy.t[i].data, bt_ckpt_numel(&sy.t[i]));
  }
  bt_hash128_t h;
  cr_assert_eq(bt_hash_combine(recs, sy.n, &h), 0);
  char hex[33], line[64];
  bt_hash_hex(h, hex);
  snprintf(line, sizeof line, "hash %s\n", hex);
  cr_assert_str_eq(ha, line);
  free(recs);
  ckpt_synth_free(&sy);
}

Test(ckpt_cli, h5dump_and_h5py_read_a_shard, .init = setup, .fini = teardown) {
  make_three();
  char shard[600], cmd[2048], raw[700];
  snprintf(shard, sizeof shard, "%s/a/step-00000002/stage-001-of-004.h5", dir);
  snprintf(cmd, sizeof cmd, "h5dump -A '%s' 2>&1", shard);
  cr_assert_eq(bt_e2e_sh(&e2e, cmd, 60000), 0, "h5dump failed");
  slurp(out_path, out, sizeof out);
  cr_assert(strstr(out, "000003") && strstr(out, "\"crc\"") && strstr(out, "format_version"),
            "%.2000s", out);
  if (access("/usr/bin/python3", X_OK) != 0 ||
      bt_e2e_sh(&e2e, "/usr/bin/python3 -c 'import h5py, numpy'", 30000) != 0)
    cr_skip_test("no /usr/bin/python3 with h5py and numpy");
  snprintf(raw, sizeof raw, "%s/w1.raw", dir);
  snprintf(cmd, sizeof cmd,
           "/usr/bin/python3 -c \"import h5py, numpy, sys; f = h5py.File(sys.argv[1], 'r'); "
           "d = f['/layers/000003/W1']; a = numpy.asarray(d[...], dtype='<f4'); "
           "assert a.shape == (32, 8), a.shape; assert int(d.attrs['index']) == 0; "
           "assert int(f.attrs['step']) == 2; open(sys.argv[2], 'wb').write(a.tobytes())\" "
           "'%s' '%s'",
           shard, raw);
  int st = bt_e2e_sh(&e2e, cmd, 60000);
  slurp(err_path, err, sizeof err);
  cr_assert_eq(st, 0, "h5py failed: %s", err);
  ckpt_synth_t sy;
  cr_assert_eq(ckpt_synth_make(&sy, 3, 4, L, 11, 2, 0), 0);
  cr_assert_str_eq(sy.t[0].name, "W1");
  float got[256];
  FILE *f = fopen(raw, "rb");
  cr_assert(f);
  cr_assert_eq(fread(got, sizeof(float), 256, f), 256);
  fclose(f);
  cr_assert(memcmp(got, sy.t[0].data, sizeof got) == 0, "h5py read other values than written");
  ckpt_synth_free(&sy);
}

/* Every subcommand on a path that is not a checkpoint: exit 2, one line. */
static void expect_not_ckpt(const char *path, const char *what) {
  static const char *cmds[] = {"ls", "show", "verify", "hash"};
  for (int i = 0; i < 4; i++) {
    cr_assert_eq(ckpt(fmt("%s '%s'", cmds[i], path)), 2, "%s on %s: %s%s", cmds[i], what, out, err);
    cr_assert_eq(count_lines(err) + count_lines(out), 1, "%s on %s: %s%s", cmds[i], what, out, err);
  }
  cr_assert_eq(ckpt(fmt("diff '%s' '%s/b'", path, dir)), 2, "diff on %s: %s%s", what, out, err);
  cr_assert_eq(count_lines(err) + count_lines(out), 1, "diff on %s: %s%s", what, out, err);
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert(f);
  if (n) cr_assert_eq(fwrite(data, 1, n, f), n);
  fclose(f);
}

Test(ckpt_cli, bad_input_gives_exit_2_with_one_line, .init = setup, .fini = teardown) {
  make_three();
  char p[600];
  snprintf(p, sizeof p, "%s/garbage.h5", dir);
  char junk[4096];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(i * 131 + 7);
  write_bytes(p, junk, sizeof junk);
  expect_not_ckpt(p, "a garbage file");
  snprintf(p, sizeof p, "%s/empty.h5", dir);
  write_bytes(p, "", 0);
  expect_not_ckpt(p, "an empty file");
  snprintf(p, sizeof p, "%s/nonexistent", dir);
  expect_not_ckpt(p, "a nonexistent path");
  snprintf(p, sizeof p, "%s/plain-dir", dir);
  cr_assert_eq(mkdir(p, 0755), 0);
  expect_not_ckpt(p, "a directory without manifest or steps");
  /* A shard truncated to its first bytes: the HDF5 signature is gone. */
  char src[600];
  snprintf(src, sizeof src, "%s/a/step-00000002/stage-000-of-004.h5", dir);
  int fd = open(src, O_RDONLY);
  char head[4];
  cr_assert_eq(read(fd, head, sizeof head), 4);
  close(fd);
  snprintf(p, sizeof p, "%s/stub.h5", dir);
  write_bytes(p, head, sizeof head);
  expect_not_ckpt(p, "a 4-byte stub of a shard");
  /* Bad arguments. */
  cr_assert_eq(ckpt(""), 2);
  cr_assert_eq(ckpt("frobnicate x"), 2);
  cr_assert_eq(count_lines(err), 1, "%s", err);
  cr_assert_eq(ckpt("verify"), 2);
  cr_assert_eq(ckpt(fmt("verify --bogus '%s/a'", dir)), 2);
  cr_assert_eq(count_lines(err), 1, "%s", err);
  cr_assert_eq(ckpt(fmt("diff '%s/a'", dir)), 2);
  cr_assert_eq(ckpt(fmt("hash '%s/a' '%s/b'", dir, dir)), 2);
  static const char *subs[] = {"ls", "show", "verify", "diff", "hash"};
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(ckpt(fmt("%s --help", subs[i])), 0);
    cr_assert(strstr(out, "usage: baton ckpt"), "%s", out);
  }
  cr_assert_eq(ckpt("--help"), 0);
}

Test(ckpt_cli, damaged_files_inside_a_step_give_exit_1, .init = setup, .fini = teardown) {
  make_three();
  char p[600];
  /* A shard truncated to half: the signature survives, the file is torn. */
  snprintf(p, sizeof p, "%s/a/step-00000002/stage-002-of-004.h5", dir);
  struct stat sb;
  cr_assert_eq(stat(p, &sb), 0);
  cr_assert_eq(truncate(p, sb.st_size / 2), 0);
  static const char *cmds[] = {"show", "verify", "hash"};
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(ckpt(fmt("%s '%s/a'", cmds[i], dir)), 1, "%s: %s%s", cmds[i], out, err);
    cr_assert_eq(ckpt(fmt("%s '%s'", cmds[i], p)), 1, "%s on the shard: %s%s", cmds[i], out, err);
    cr_assert_geq(count_lines(out), 1);
  }
  cr_assert_eq(ckpt(fmt("diff '%s/a' '%s/b'", dir, dir)), 1);
  cr_assert_eq(ckpt(fmt("ls '%s/a'", dir)), 0);
  cr_assert(strstr(out, "corrupt"), "%s", out);
  /* A root with no committed step left. */
  snprintf(p, sizeof p, "%s/c/step-00000002/MANIFEST.json", dir);
  cr_assert_eq(unlink(p), 0);
  cr_assert_eq(ckpt(fmt("verify '%s/c'", dir)), 1, "%s%s", out, err);
  /* An edited manifest. */
  snprintf(p, sizeof p, "%s/b/step-00000002/MANIFEST.json", dir);
  write_bytes(p, "{\"format\":\"baton-checkpoint\",\"version\":1}", 40);
  cr_assert_eq(ckpt(fmt("verify '%s/b'", dir)), 1, "%s%s", out, err);
  cr_assert(strstr(out, "MANIFEST.json"), "%s", out);
}

/* A shard (or step) of another format version is not ours to read: 2. */
Test(ckpt_cli, other_format_version_gives_exit_2, .init = setup, .fini = teardown) {
  make_three();
  char p[600];
  snprintf(p, sizeof p, "%s/a/step-00000002/stage-001-of-004.h5", dir);
  hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
  cr_assert_geq(f, 0);
  hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
  cr_assert_geq(a, 0);
  unsigned v = 2;
  cr_assert_geq(H5Awrite(a, H5T_NATIVE_UINT, &v), 0);
  H5Aclose(a);
  H5Fclose(f);
  static const char *cmds[] = {"show", "verify", "hash"};
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(ckpt(fmt("%s '%s'", cmds[i], p)), 2, "%s: %s%s", cmds[i], out, err);
    cr_assert_eq(count_lines(err) + count_lines(out), 1, "%s: %s%s", cmds[i], out, err);
    cr_assert(strstr(err, "format version"), "%s", err);
  }
  snprintf(p, sizeof p, "%s/b/step-00000002/MANIFEST.json", dir);
  char *text = NULL;
  size_t len = 0;
  FILE *fp = fopen(p, "r");
  cr_assert(fp);
  cr_assert_gt(getdelim(&text, &len, 0, fp), 0);
  fclose(fp);
  char *ver = strstr(text, "\"version\":1,");
  cr_assert(ver, "%s", text);
  ver[10] = '7';
  fp = fopen(p, "w");
  fputs(text, fp);
  fclose(fp);
  free(text);
  cr_assert_eq(ckpt(fmt("verify '%s/b'", dir)), 2, "%s%s", out, err);
  cr_assert(strstr(err, "format version"), "%s", err);
  cr_assert_eq(count_lines(err) + count_lines(out), 1, "%s%s", out, err);
}

/* The hash of a checkpoint `baton train` wrote equals the hash it printed
 * (DESIGN.md §8): the tool needs no model code to get there. */
Test(ckpt_cli, hash_matches_what_baton_train_printed, .init = setup, .fini = teardown) {
  char *argv[] = {(char *)bt_e2e_env("BATON_BIN"), "train", "--layers", "2", "--dim", "32",
                  "--mb-tokens", "32", "--steps", "4", "--ckpt-dir", (char *)bt_e2e_path(&e2e, "t"),
                  "--hash", NULL};
  int code = bt_e2e_run(&e2e, argv, NULL, NULL, 120000);
  slurp(out_path, out, sizeof out);
  slurp(err_path, err, sizeof err);
  cr_assert_eq(code, 0, "baton train failed: %s", err);
  const char *h = NULL; /* the last line that starts with "hash " */
  for (const char *p = out; (p = strstr(p, "hash ")); p++)
    if (p == out || p[-1] == '\n') h = p;
  cr_assert(h, "no hash line: %s", out);
  char trained[64];
  snprintf(trained, sizeof trained, "%.37s\n", h);
  cr_assert_eq(ckpt(fmt("hash '%s/t'", dir)), 0, "%s%s", out, err);
  cr_assert_str_eq(out, trained, "ckpt hash differs from train's");
  cr_assert_eq(ckpt(fmt("verify '%s/t'", dir)), 0, "%s%s", out, err);
  cr_assert(strstr(out, "step 4"), "%s", out);
}

/* A lone shard has no manifest CRC to check before HDF5 parses it, and
 * HDF5 1.10.8 can crash on a damaged object header (found by flipping
 * bytes: the size field of the "format" attribute's dataspace). baton ckpt
 * must answer 1 or 2, never die with the library. */
Test(ckpt_cli, damaged_object_header_never_crashes_the_tool, .init = setup, .fini = teardown) {
  make_three();
  char p[600];
  snprintf(p, sizeof p, "%s/a/step-00000002/stage-003-of-004.h5", dir);
  int fd = open(p, O_RDWR);
  cr_assert_geq(fd, 0);
  char head[4096];
  ssize_t n = pread(fd, head, sizeof head, 0);
  cr_assert_gt(n, 0);
  char *fmt_name = memmem(head, (size_t)n, "format\0", 7);
  cr_assert(fmt_name && fmt_name > head, "no \"format\" attribute name in the first 4 KiB");
  unsigned char bad = 0x5c;
  cr_assert_eq(pwrite(fd, &bad, 1, (off_t)(fmt_name - head) - 1), 1);
  close(fd);
  static const char *cmds[] = {"verify", "show", "hash"};
  for (int i = 0; i < 3; i++) {
    int code = ckpt_run(fmt("%s '%s'", cmds[i], p), 1);
    cr_assert(code == 1 || code == 2, "%s: exit %d\n%s%s", cmds[i], code, out, err);
  }
  /* Inside a step the manifest CRC catches it before HDF5 sees it. */
  cr_assert_eq(ckpt(fmt("hash '%s/a'", dir)), 1, "%s%s", out, err);
  cr_assert(strstr(out, "stage-003-of-004.h5: file CRC"), "%s", out);
}

/* Random damage to lone shards (which have no manifest CRC in front of
 * HDF5): every command ends with 0, 1 or 2, within the timeout. A small,
 * seeded version of the longer runs described in docs/checkpoints.md. */
Test(ckpt_cli, random_damage_never_crashes_or_hangs, .init = setup, .fini = teardown) {
  make_three();
  char src[600], dst[600];
  snprintf(src, sizeof src, "%s/a/step-00000002/stage-001-of-004.h5", dir);
  snprintf(dst, sizeof dst, "%s/damaged.h5", dir);
  FILE *f = fopen(src, "rb");
  cr_assert(f);
  static unsigned char orig[1 << 20], buf[1 << 20];
  size_t n = fread(orig, 1, sizeof orig, f);
  fclose(f);
  cr_assert_gt(n, 4096);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  static const char *cmds[] = {"verify", "show", "hash"};
  for (int it = 0; it < 25; it++) {
    memcpy(buf, orig, n);
    size_t len = n;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if (x % 10 == 0) {
      len = (size_t)(x >> 16) % n; /* a truncation */
    } else {
      for (int e = 0; e < 1 + (int)(x % 6); e++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        /* Mostly the metadata at the front, where HDF5 is fragile. */
        size_t pos = (size_t)(x >> 20) % (x % 5 ? 12288 : n);
        buf[pos] ^= (unsigned char)(1u << (x % 8));
      }
    }
    write_bytes(dst, buf, len);
    for (int c = 0; c < 3; c++) {
      int code = ckpt_run(fmt("%s '%s'", cmds[c], dst), 1);
      cr_assert(code >= 0 && code <= 2, "iteration %d, %s: exit %d", it, cmds[c], code);
    }
  }
}

/* A read that never ends (the test hook stops the tool's worker process)
 * is cut off at the deadline: exit 1 with one line, never a hang. */
Test(ckpt_cli, a_stuck_read_is_cut_off_at_the_deadline, .init = setup, .fini = teardown) {
  make_three();
  setenv("BATON_CKPT_TEST_STOP", "tool", 1);
  setenv("BATON_CKPT_TIMEOUT_S", "1", 1);
  int code = ckpt(fmt("verify '%s/a'", dir));
  unsetenv("BATON_CKPT_TEST_STOP");
  unsetenv("BATON_CKPT_TIMEOUT_S");
  cr_assert_eq(code, 1, "%s%s", out, err);
  cr_assert(strstr(out, "gave up after 1 s"), "%s", out);
  cr_assert_eq(count_lines(out), 1, "%s", out);
}
