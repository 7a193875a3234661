/* test_file.c - common/file: regular files only, with a size bound, and a
 * FIFO or a device refused at once instead of blocking or spinning. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/crc.h"
#include "common/error.h"
#include "common/file.h"

static char tmpdir[64];

static void setup(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/bt_file_XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

TestSuite(file, .init = setup, .fini = teardown, .timeout = 30);

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  cr_assert_eq(fclose(f), 0);
}

Test(file, reads_a_regular_file_whole_and_nul_terminated) {
  char p[128];
  snprintf(p, sizeof p, "%s/a.csv", tmpdir);
  write_text(p, "0F0,1F0\n");
  char *buf;
  size_t len;
  cr_assert_eq(bt_file_read(p, BT_FILE_SCHEDULE, &buf, &len), 0);
  cr_assert_eq(len, 8);
  cr_assert_str_eq(buf, "0F0,1F0\n");
  free(buf);
  uint32_t crc;
  uint64_t size;
  cr_assert_eq(bt_file_crc32(p, BT_FILE_DATA, &crc, &size), 0);
  cr_assert_eq(size, 8);
  cr_assert_eq(crc, bt_crc32(0, "0F0,1F0\n", 8));
}

/* Without O_NONBLOCK the open itself would wait for a writer for ever. */
Test(file, a_fifo_is_refused_without_blocking) {
  char p[128];
  snprintf(p, sizeof p, "%s/fifo", tmpdir);
  cr_assert_eq(mkfifo(p, 0600), 0);
  char *buf = NULL;
  size_t len;
  uint32_t crc;
  uint64_t size;
  cr_assert_eq(bt_file_read(p, BT_FILE_TRACE, &buf, &len), BT_ENOTREG);
  cr_assert_null(buf);
  cr_assert_eq(bt_file_crc32(p, BT_FILE_SHARD, &crc, &size), BT_ENOTREG);
  cr_assert_eq(bt_crc32_file(p, &crc, &size), BT_ENOTREG);
  cr_assert_str_eq(bt_strerror(BT_ENOTREG), "not a regular file");
}

Test(file, dev_zero_and_a_link_to_it_are_refused) {
  char p[128];
  snprintf(p, sizeof p, "%s/zero", tmpdir);
  cr_assert_eq(symlink("/dev/zero", p), 0);
  uint32_t crc;
  uint64_t size;
  char *buf = NULL;
  size_t len;
  cr_assert_eq(bt_file_crc32("/dev/zero", BT_FILE_DATA, &crc, &size), BT_ENOTREG);
  cr_assert_eq(bt_file_crc32(p, BT_FILE_SHARD, &crc, &size), BT_ENOTREG);
  cr_assert_eq(bt_file_read(p, BT_FILE_MANIFEST, &buf, &len), BT_ENOTREG);
}

Test(file, a_directory_is_eisdir_and_a_missing_file_enoent) {
  char *buf = NULL;
  size_t len;
  cr_assert_eq(bt_file_read(tmpdir, BT_FILE_SCHEDULE, &buf, &len), -EISDIR);
  char p[128];
  snprintf(p, sizeof p, "%s/none", tmpdir);
  cr_assert_eq(bt_file_read(p, BT_FILE_SCHEDULE, &buf, &len), -ENOENT);
}

Test(file, a_file_over_its_kinds_bound_is_efbig) {
  char p[128];
  snprintf(p, sizeof p, "%s/big", tmpdir);
  int fd = open(p, O_WRONLY | O_CREAT, 0600);
  cr_assert_geq(fd, 0);
  /* Sparse: the bound is judged on st_size, before any byte is read. */
  cr_assert_eq(ftruncate(fd, (off_t)bt_file_limit(BT_FILE_MANIFEST) + 1), 0);
  close(fd);
  char *buf = NULL;
  size_t len;
  cr_assert_eq(bt_file_read(p, BT_FILE_MANIFEST, &buf, &len), -EFBIG);
  int rfd;
  uint64_t size;
  cr_assert_eq(bt_file_open(p, 100, &rfd, &size), -EFBIG);
  cr_assert_eq(bt_file_open(p, UINT64_MAX, &rfd, &size), 0);
  cr_assert_eq(size, bt_file_limit(BT_FILE_MANIFEST) + 1);
  /* The descriptor handed back blocks again (reads wait, not EAGAIN). */
  cr_assert_eq(fcntl(rfd, F_GETFL) & O_NONBLOCK, 0);
  close(rfd);
}

Test(file, every_kind_has_a_bound_and_schedules_are_small) {
  for (int k = BT_FILE_DATA; k <= BT_FILE_SHARD; k++) cr_assert_gt(bt_file_limit((bt_file_kind_t)k), 0);
  cr_assert_leq(bt_file_limit(BT_FILE_SCHEDULE), (uint64_t)1 << 30);
  cr_assert_leq(bt_file_limit(BT_FILE_MANIFEST), (uint64_t)1 << 30);
}

/* The bound is inclusive: a file of exactly `max` bytes reads whole, one
 * byte more is -EFBIG; a /proc file (st_size 0) still reads, grown as it
 * comes, up to the bound. */
Test(file, an_explicit_bound_is_inclusive_and_proc_files_read) {
  char p[128];
  snprintf(p, sizeof p, "%s/eight", tmpdir);
  write_text(p, "01234567");
  char *buf = NULL;
  size_t len = 0;
  cr_assert_eq(bt_file_read_max(p, 8, &buf, &len), 0);
  cr_assert_eq(len, 8);
  cr_assert_str_eq(buf, "01234567");
  free(buf);
  buf = NULL;
  cr_assert_eq(bt_file_read_max(p, 7, &buf, &len), -EFBIG);
  cr_assert_null(buf);
  cr_assert_eq(bt_file_read_max("/proc/self/status", 1 << 20, &buf, &len), 0);
  cr_assert_gt(len, 0);
  cr_assert_not_null(strstr(buf, "Pid:"));
  cr_assert_eq(strlen(buf), len);
  free(buf);
  buf = NULL;
  cr_assert_eq(bt_file_read_max("/proc/self/status", 16, &buf, &len), -EFBIG);
  cr_assert_null(buf);
}
