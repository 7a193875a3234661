/* test_ckpt_flags.c - the checkpoint flag parser shared by `baton train`
 * and `baton run` (checkpoint/flags.h): defaults, every spelling, every
 * rejected value with its one-line message, the --ckpt-dir check. */
#include <criterion/criterion.h>
#include <string.h>

#include "checkpoint/flags.h"
#include "common/error.h"

static bt_ckpt_flags_t f;
static char err[512];

static void setup(void) {
  bt_ckpt_flags_init(&f);
  err[0] = 0;
}

TestSuite(ckpt_flags, .init = setup);

Test(ckpt_flags, defaults) {
  cr_expect_null(f.dir);
  cr_expect_eq(f.every, 0);
  cr_expect_eq(f.keep, 2);
  cr_expect_eq(f.keep_every, 0);
  cr_expect_eq(f.opts.deflate, 0);
  cr_expect_eq(f.opts.shuffle, 0);
  cr_expect_eq(f.opts.fletcher32, 0);
  cr_expect_eq(f.resume, BT_CKPT_RESUME_AUTO);
  cr_expect_eq(f.given, 0u);
  cr_expect_eq(bt_ckpt_flags_check(&f, err, sizeof err), 0);
  bt_ckpt_retention_t r = bt_ckpt_flags_retention(&f);
  cr_expect_eq(r.keep_last, 2);
  cr_expect_eq(r.keep_every, 0);
}

Test(ckpt_flags, known_names_with_and_without_dashes) {
  const char *names[] = {"--ckpt-dir", "ckpt-dir", "--ckpt-every", "--keep",
                         "--keep-every", "--ckpt-compress", "--resume"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    cr_expect(bt_ckpt_flags_known(names[i]), "%s", names[i]);
  cr_expect_not(bt_ckpt_flags_known("--steps"));
  cr_expect_not(bt_ckpt_flags_known("--keep="));
  cr_expect_not(bt_ckpt_flags_known("--kee"));
  cr_expect_not(bt_ckpt_flags_known(""));
  cr_expect_eq(bt_ckpt_flags_parse(&f, "--steps", "3", err, sizeof err), BT_EARG);
  cr_expect_str_eq(err, "unknown option '--steps'");
}

Test(ckpt_flags, values_land_in_the_struct) {
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--ckpt-dir", "/tmp/x", err, sizeof err), 0, "%s", err);
  cr_assert_eq(bt_ckpt_flags_parse(&f, "ckpt-every", "5", err, sizeof err), 0, "%s", err);
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--keep", "3", err, sizeof err), 0, "%s", err);
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--keep-every", "100", err, sizeof err), 0, "%s", err);
  cr_expect_str_eq(f.dir, "/tmp/x");
  cr_expect_eq(f.every, 5);
  cr_expect_eq(f.keep, 3);
  cr_expect_eq(f.keep_every, 100);
  cr_expect_eq(f.given, BT_CKPT_FLAG_DIR | BT_CKPT_FLAG_EVERY | BT_CKPT_FLAG_KEEP |
                            BT_CKPT_FLAG_KEEP_EVERY);
  bt_ckpt_retention_t r = bt_ckpt_flags_retention(&f);
  cr_expect_eq(r.keep_last, 3);
  cr_expect_eq(r.keep_every, 100);
  cr_expect_eq(bt_ckpt_flags_check(&f, err, sizeof err), 0);
}

Test(ckpt_flags, compress_spellings) {
  static const struct {
    const char *text;
    int level, shuffle;
    const char *canon;
  } ok[] = {
      {"none", 0, 0, "none"},           {"deflate", BT_CKPT_DEFLATE_DEFAULT, 1, NULL},
      {"deflate:1", 1, 1, "deflate:1"}, {"deflate:9", 9, 1, "deflate:9"},
      {"0", 0, 0, "none"},              {"6", 6, 1, "deflate:6"},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    bt_ckpt_flags_init(&f);
    cr_assert_eq(bt_ckpt_flags_parse(&f, "--ckpt-compress", ok[i].text, err, sizeof err), 0,
                 "%s: %s", ok[i].text, err);
    cr_expect_eq(f.opts.deflate, ok[i].level, "%s: level %d", ok[i].text, f.opts.deflate);
    cr_expect_eq(f.opts.shuffle, ok[i].shuffle, "%s: shuffle %d", ok[i].text, f.opts.shuffle);
    cr_expect_eq(f.opts.fletcher32, 0);
    char canon[32];
    bt_ckpt_flags_compress_text(&f, canon, sizeof canon);
    if (ok[i].canon) cr_expect_str_eq(canon, ok[i].canon);
  }
  /* The last value wins: "deflate" then "none" is no compression at all. */
  bt_ckpt_flags_parse(&f, "--ckpt-compress", "deflate", err, sizeof err);
  bt_ckpt_flags_parse(&f, "--ckpt-compress", "none", err, sizeof err);
  cr_expect_eq(f.opts.deflate, 0);
  cr_expect_eq(f.opts.shuffle, 0);
}

Test(ckpt_flags, resume_modes) {
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--resume", "never", err, sizeof err), 0);
  cr_expect_eq(f.resume, BT_CKPT_RESUME_NEVER);
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--resume", "ckpt/step-00000004", err, sizeof err), 0);
  cr_expect_eq(f.resume, BT_CKPT_RESUME_PATH);
  cr_expect_str_eq(f.resume_path, "ckpt/step-00000004");
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--resume", "auto", err, sizeof err), 0);
  cr_expect_eq(f.resume, BT_CKPT_RESUME_AUTO);
  cr_expect_null(f.resume_path);
  cr_assert_eq(bt_ckpt_flags_parse(&f, "--resume", "./auto", err, sizeof err), 0);
  cr_expect_eq(f.resume, BT_CKPT_RESUME_PATH);
  cr_expect(f.given & BT_CKPT_FLAG_RESUME);
}

Test(ckpt_flags, bad_values_give_one_line_naming_flag_and_value) {
  static const struct {
    const char *flag, *value, *msg;
  } bad[] = {
      {"--keep", "0", "--keep: expected a whole number in [1, 1000000], got '0'"},
      {"--keep", "2x", "--keep: expected a whole number in [1, 1000000], got '2x'"},
      {"--keep", "", "--keep: expected a whole number in [1, 1000000], got ''"},
      {"--ckpt-every", "0", "--ckpt-every: expected a whole number >= 1, got '0'"},
      {"--ckpt-every", "-4", "--ckpt-every: expected a whole number >= 1, got '-4'"},
      {"--keep-every", "1.5", "--keep-every: expected a whole number >= 1, got '1.5'"},
      {"--ckpt-compress", "gzip",
       "--ckpt-compress: expected none, deflate or deflate:LEVEL (1..9), got 'gzip'"},
      {"--ckpt-compress", "10",
       "--ckpt-compress: expected none, deflate or deflate:LEVEL (1..9), got '10'"},
      {"--ckpt-compress", "deflate:0", "--ckpt-compress: the deflate level must be 1..9, got '0'"},
      {"--ckpt-compress", "deflate:", "--ckpt-compress: the deflate level must be 1..9, got ''"},
      {"--ckpt-compress", "deflate:10", "--ckpt-compress: the deflate level must be 1..9, got '10'"},
      {"--ckpt-dir", "", "--ckpt-dir: empty path"},
      {"--resume", "", "--resume: expected auto, never or a checkpoint path, got ''"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_ckpt_flags_init(&f);
    err[0] = 0;
    cr_expect_eq(bt_ckpt_flags_parse(&f, bad[i].flag, bad[i].value, err, sizeof err), BT_EARG,
                 "%s '%s' accepted", bad[i].flag, bad[i].value);
    cr_expect_str_eq(err, bad[i].msg);
    cr_expect_null(strchr(err, '\n'), "one line: %s", err);
    cr_expect_eq(f.given, 0u, "%s '%s' marked given", bad[i].flag, bad[i].value);
  }
  cr_expect_eq(bt_ckpt_flags_parse(&f, "--keep", NULL, err, sizeof err), BT_EARG);
  cr_expect_str_eq(err, "--keep needs a value");
}

Test(ckpt_flags, flags_without_a_directory_are_named) {
  bt_ckpt_flags_parse(&f, "--keep", "3", err, sizeof err);
  cr_assert_eq(bt_ckpt_flags_check(&f, err, sizeof err), BT_EARG);
  cr_expect_str_eq(err, "--keep means something only with --ckpt-dir");
  bt_ckpt_flags_parse(&f, "--resume", "never", err, sizeof err);
  bt_ckpt_flags_parse(&f, "--ckpt-compress", "deflate", err, sizeof err);
  cr_assert_eq(bt_ckpt_flags_check(&f, err, sizeof err), BT_EARG);
  cr_expect_str_eq(err, "--keep, --ckpt-compress, --resume mean something only with --ckpt-dir");
  /* Given at its default value still counts: the user asked for it. */
  bt_ckpt_flags_init(&f);
  bt_ckpt_flags_parse(&f, "--resume", "auto", err, sizeof err);
  cr_expect_eq(bt_ckpt_flags_check(&f, err, sizeof err), BT_EARG);
  bt_ckpt_flags_parse(&f, "--ckpt-dir", "d", err, sizeof err);
  cr_expect_eq(bt_ckpt_flags_check(&f, err, sizeof err), 0);
}

Test(ckpt_flags, help_names_every_flag) {
  const char *h = bt_ckpt_flags_help();
  const char *names[] = {"--ckpt-dir", "--ckpt-every", "--keep N", "--keep-every",
                         "--ckpt-compress", "--resume"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    cr_expect_not_null(strstr(h, names[i]), "%s missing from help", names[i]);
  cr_expect_eq(h[strlen(h) - 1], '\n');
}
