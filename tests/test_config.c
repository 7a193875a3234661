/* test_config.c - the configuration: canonical text, model/run split,
 * mismatch reports, the shared flag table, validation, memory refusal. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/error.h"
#include "common/model.h"

static void set(bt_config_t *c, const char *flag, const char *value) {
  char err[256] = "";
  int rc = bt_config_flag(c, BT_CONFIG_ALL, flag, value, err, sizeof err);
  cr_assert_eq(rc, 0, "%s %s: %s", flag, value, err);
}

Test(config, canonical_text_round_trips_exactly) {
  bt_config_t a, b;
  bt_config_defaults(&a);
  set(&a, "--layers", "7");
  set(&a, "dim", "48");
  set(&a, "--lr", "0.0123456789012345678");
  set(&a, "--beta2", "0.987654321");
  set(&a, "--eps", "1e-7");
  set(&a, "--seed", "9007199254740993");
  set(&a, "--steps", "31");
  set(&a, "--layout", "2,3,4");
  cr_assert_eq(bt_config_extra_set(&a, "ckpt-dir", "/tmp/x y"), 0);
  size_t need = bt_config_to_text(&a, BT_CONFIG_ALL, NULL, 0);
  char *text = malloc(need + 1);
  cr_assert_eq(bt_config_to_text(&a, BT_CONFIG_ALL, text, need + 1), need);
  char err[256] = "";
  cr_assert_eq(bt_config_from_text(&b, text, err, sizeof err), 0, "%s", err);
  cr_assert_eq(memcmp(&a.model, &b.model, sizeof a.model), 0);
  cr_assert_eq(b.model.lr, a.model.lr, "%.17g vs %.17g", b.model.lr, a.model.lr);
  cr_assert_eq(b.run.steps, 31);
  cr_assert_str_eq(b.run.layout, "2,3,4");
  cr_assert_str_eq(bt_config_extra_get(&b, "ckpt-dir"), "/tmp/x y");
  /* Text of the parsed copy is the same text: the form is canonical. */
  char *again = malloc(need + 1);
  bt_config_to_text(&b, BT_CONFIG_ALL, again, need + 1);
  cr_assert_str_eq(again, text);
  free(again);
  free(text);
}

Test(config, text_is_sorted_key_value_lines) {
  bt_config_t a;
  bt_config_defaults(&a);
  char text[8192];
  bt_config_to_text(&a, BT_CONFIG_ALL, text, sizeof text);
  char prev[128] = "";
  int lines = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    cr_assert(strchr(line, '=') != NULL, "%s", line);
    char key[128];
    snprintf(key, sizeof key, "%.*s", (int)(strchr(line, '=') - line), line);
    cr_assert_lt(strcmp(prev, key), 0, "'%s' after '%s'", key, prev);
    snprintf(prev, sizeof prev, "%s", key);
    lines++;
  }
  cr_assert_gt(lines, 15);
}

/* 1 if text has a line starting with key ("dim="). */
static int has_key(const char *text, const char *key) {
  size_t kl = strlen(key);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    if (!strncmp(p, key, kl)) return 1;
  return 0;
}

Test(config, model_and_run_parts_are_split) {
  bt_config_t a;
  bt_config_defaults(&a);
  char model[8192], run[8192];
  bt_config_to_text(&a, BT_CONFIG_MODEL, model, sizeof model);
  bt_config_to_text(&a, BT_CONFIG_RUN, run, sizeof run);
  const char *model_keys[] = {"layers=", "dim=", "context=", "microbatches=", "mb-tokens=",
                              "seed=", "data=", "lr=", "warmup=", "lr-decay-steps=", "beta1=",
                              "beta2=", "eps=", "weight-decay=", "math="};
  const char *run_keys[] = {"steps=", "stages=", "chunks=", "schedule=", "layout=", "backend="};
  for (size_t i = 0; i < sizeof model_keys / sizeof *model_keys; i++) {
    cr_assert(has_key(model, model_keys[i]), "model text lacks %s", model_keys[i]);
    cr_assert(!has_key(run, model_keys[i]), "run text has %s", model_keys[i]);
  }
  for (size_t i = 0; i < sizeof run_keys / sizeof *run_keys; i++) {
    cr_assert(has_key(run, run_keys[i]), "run text lacks %s", run_keys[i]);
    cr_assert(!has_key(model, run_keys[i]), "model text has %s", run_keys[i]);
  }
  /* Changing run settings leaves the model configuration equal. */
  bt_config_t b = a;
  set(&b, "--steps", "5");
  set(&b, "--stages", "3");
  set(&b, "--schedule", "zb-h1");
  cr_assert_eq(bt_config_model_diff(&a.model, &b.model, NULL, 0), 0);
}

Test(config, mismatch_names_each_key_with_both_values) {
  bt_config_t a, b;
  bt_config_defaults(&a);
  bt_config_defaults(&b);
  set(&b, "--dim", "96");
  set(&b, "--lr", "0.5");
  char out[512];
  int n = bt_config_model_diff(&a.model, &b.model, out, sizeof out);
  cr_assert_eq(n, 2, "%s", out);
  cr_assert(strstr(out, "dim: 128 vs 96") != NULL, "%s", out);
  cr_assert(strstr(out, "lr: 0.003 vs 0.5") != NULL, "%s", out);
}

Test(config, one_flag_table_for_train_and_run) {
  size_t n;
  const bt_config_flag_t *f = bt_config_flags(&n);
  int model_flags = 0;
  for (size_t i = 0; i < n; i++) {
    if (f[i].part != BT_CONFIG_MODEL || !f[i].is_flag) continue;
    model_flags++;
    cr_assert(bt_config_has_flag(BT_CONFIG_MODEL, f[i].name), "%s", f[i].name);
    /* Setting through the model-only entry point and the general one gives
     * the same configuration: both read the one table. */
    bt_config_t a, b;
    bt_config_defaults(&a);
    bt_config_defaults(&b);
    char err[256];
    cr_assert_eq(bt_config_model_flag(&a, f[i].name, f[i].def, err, sizeof err), 0, "%s", err);
    cr_assert_eq(bt_config_flag(&b, BT_CONFIG_ALL, f[i].name, f[i].def, err, sizeof err), 0);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0, "%s", f[i].name);
  }
  cr_assert_geq(model_flags, 14);
  char err[256];
  bt_config_t c;
  bt_config_defaults(&c);
  cr_assert_eq(bt_config_model_flag(&c, "--steps", "3", err, sizeof err), BT_EARG,
               "--steps is a run setting, not a model flag");
  char help[4096];
  bt_config_help(BT_CONFIG_MODEL, help, sizeof help);
  cr_assert(strstr(help, "--lr-decay-steps") != NULL, "%s", help);
  cr_assert(strstr(help, "--steps") == NULL, "%s", help);
}

Test(config, bad_values_are_rejected_with_the_flag_named) {
  struct {
    const char *flag, *value;
  } bad[] = {{"--layers", "0"},  {"--layers", "-1"}, {"--dim", "abc"},   {"--dim", "1e3"},
             {"--lr", "0"},      {"--lr", "-0.1"},   {"--lr", "nan"},    {"--microbatches", ""},
             {"--steps", "0"},   {"--beta1", "1"},   {"--eps", "0"},     {"--mb-tokens", "12x"},
             {"--nope", "1"},    {"--context", "99999"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_config_t c;
    bt_config_defaults(&c);
    char err[256] = "";
    int rc = bt_config_flag(&c, BT_CONFIG_ALL, bad[i].flag, bad[i].value, err, sizeof err);
    cr_assert_eq(rc, BT_EARG, "%s %s accepted", bad[i].flag, bad[i].value);
    const char *name = bad[i].flag + 2;
    cr_assert(strstr(err, name) != NULL, "'%s' does not name %s", err, name);
    cr_assert(strchr(err, '\n') == NULL, "one line: %s", err);
  }
}

Test(config, memory_estimate_refuses_a_model_too_big) {
  bt_config_t c;
  bt_config_defaults(&c);
  char err[512] = "";
  cr_assert_eq(bt_config_finish(&c, err, sizeof err), 0, "%s", err);
  uint64_t small = bt_config_memory_bytes(&c.model);
  /* parameters x 4 copies x 4 bytes is a lower bound */
  cr_assert_geq(small, 16 * bt_model_param_count(&c.model));
  set(&c, "--layers", "4096");
  set(&c, "--dim", "16384");
  uint64_t big = bt_config_memory_bytes(&c.model);
  cr_assert_gt(big, bt_config_physical_bytes());
  cr_assert_eq(bt_config_finish(&c, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "GiB") != NULL, "%s", err);
}

Test(config, data_file_is_resolved_with_size_and_crc) {
  char path[] = "/tmp/bt_config_dataXXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  char buf[1000];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)('a' + i % 7);
  cr_assert_eq(write(fd, buf, sizeof buf), (ssize_t)sizeof buf);
  close(fd);
  bt_config_t c;
  bt_config_defaults(&c);
  set(&c, "--data", path);
  char err[512] = "";
  cr_assert_eq(bt_config_finish(&c, err, sizeof err), 0, "%s", err);
  cr_assert_eq(c.model.data_size, 1000);
  cr_assert_neq(c.model.data_crc, 0);
  bt_config_t d = c;
  d.model.data_crc ^= 1;
  char out[256];
  cr_assert_eq(bt_config_model_diff(&c.model, &d.model, out, sizeof out), 1);
  cr_assert(strstr(out, "data-crc") != NULL, "%s", out);
  /* Too short for one micro-batch. */
  cr_assert_eq(truncate(path, 10), 0);
  set(&c, "--data", path);
  cr_assert_eq(bt_config_finish(&c, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "need at least") != NULL, "%s", err);
  unlink(path);
  set(&c, "--data", path);
  cr_assert_eq(bt_config_finish(&c, err, sizeof err), BT_EARG);
}

Test(config, malformed_text_is_rejected) {
  bt_config_t c;
  char err[256];
  cr_assert_eq(bt_config_from_text(&c, "layers=4\nnonsense\n", err, sizeof err), BT_EFORMAT);
  cr_assert_eq(bt_config_from_text(&c, "dim=-4\n", err, sizeof err), BT_EFORMAT);
  cr_assert_eq(bt_config_from_text(&c, "=4\n", err, sizeof err), BT_EFORMAT);
}
