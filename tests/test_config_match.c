/* test_config_match.c - common/config.c bt_config_model_match and
 * bt_config_match_checkpoint: the one rule train, run and the worker use to
 * decide whether a checkpoint is this model and data. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/error.h"

static char dir[64], file_a[128], file_b[128];

static void write_file(const char *p, char first) {
  FILE *f = fopen(p, "w");
  cr_assert_not_null(f);
  fputc(first, f);
  for (int i = 0; i < 4095; i++) fputc("xyz \n"[i % 5], f);
  cr_assert_eq(fclose(f), 0);
}

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/bt-cfgmatch-XXXXXX");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(file_a, sizeof file_a, "%s/a.bin", dir);
  snprintf(file_b, sizeof file_b, "%s/b.bin", dir);
  write_file(file_a, 'q');
  write_file(file_b, 'q'); /* the same bytes under another name */
}

static void teardown(void) {
  unlink(file_a);
  unlink(file_b);
  rmdir(dir);
}

TestSuite(config_match, .init = setup, .fini = teardown);

static bt_config_t with_data(const char *path) {
  bt_config_t c;
  char err[256];
  bt_config_defaults(&c);
  if (path) cr_assert_eq(bt_config_flag(&c, BT_CONFIG_ALL, "--data", path, err, sizeof err), 0, "%s", err);
  cr_assert_eq(bt_config_finish(&c, err, sizeof err), 0, "%s", err);
  return c;
}

Test(config_match, data_is_identified_by_content_not_path) {
  bt_config_t a = with_data(file_a), b = with_data(file_b);
  char why[512];
  cr_expect_eq(bt_config_model_match(&a.model, &b.model, NULL, 0, why, sizeof why), 0, "%s", why);
  write_file(file_b, 'r');
  b = with_data(file_b);
  cr_expect_eq(bt_config_model_match(&a.model, &b.model, NULL, 0, why, sizeof why), 1);
  cr_expect(strstr(why, "CRC-32") && strstr(why, file_a) && strstr(why, file_b), "%s", why);
  bt_config_t s = with_data(NULL);
  cr_expect_eq(bt_config_model_match(&s.model, &a.model, NULL, 0, why, sizeof why), 1);
  cr_expect(strstr(why, "--data: the checkpoint has synthetic") != NULL, "%s", why);
}

Test(config_match, a_given_flag_is_named_with_both_values) {
  bt_config_t a = with_data(NULL), b = a;
  b.model.dim = 48;
  b.model.seed = 9;
  char why[512];
  const char *given[] = {"--dim"};
  cr_expect_eq(bt_config_model_match(&a.model, &b.model, given, 1, why, sizeof why), 2);
  cr_expect(strstr(why, "--dim: the checkpoint has 128, the command line says 48") != NULL, "%s", why);
  cr_expect(strstr(why, "seed: the checkpoint has 1, now 9") != NULL, "%s", why);
}

Test(config_match, resuming_adopts_the_checkpoint_and_resolves_a_relative_data_path) {
  bt_config_t ck = with_data(file_a);
  char text[4096], err[1024] = "";
  bt_config_to_text(&ck, BT_CONFIG_MODEL, text, sizeof text);
  cr_assert_eq(chdir(dir), 0);
  bt_config_t now;
  bt_config_defaults(&now);
  const char *names[] = {"--data"}, *values[] = {"b.bin"};
  cr_expect_eq(bt_config_match_checkpoint(&now, text, names, values, 1, err, sizeof err), 0, "%s", err);
  cr_expect_str_eq(now.model.data, file_b);
  cr_expect_eq(now.model.data_crc, ck.model.data_crc);
  /* no flags: the checkpoint's own file */
  bt_config_defaults(&now);
  cr_expect_eq(bt_config_match_checkpoint(&now, text, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
  cr_expect_str_eq(now.model.data, file_a);
  /* edited: refused, both values named */
  write_file(file_a, 'z');
  bt_config_defaults(&now);
  cr_expect_eq(bt_config_match_checkpoint(&now, text, NULL, NULL, 0, err, sizeof err), BT_ECONFIG);
  cr_expect(strstr(err, "CRC-32") != NULL, "%s", err);
  /* gone: a one-line error */
  unlink(file_a);
  cr_expect_eq(bt_config_match_checkpoint(&now, text, NULL, NULL, 0, err, sizeof err), BT_EARG);
  cr_expect(strstr(err, "a.bin") != NULL, "%s", err);
  cr_expect_eq(bt_config_match_checkpoint(&now, "nonsense", NULL, NULL, 0, err, sizeof err), BT_EFORMAT);
}
