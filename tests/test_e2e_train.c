/* test_e2e_train.c - `baton train` end to end: reproducible hashes, the
 * default run reaching the synthetic stream's entropy rate, learning on a
 * real text file, and bad input refused with exit code 2 and one line. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/support/e2e.h"
#include "tests/support/proc.h"

static bt_e2e_dirs_t e2e;

static void setup(void) { bt_e2e_setup(&e2e, "train"); }
static void teardown(void) { bt_e2e_teardown(&e2e); }

TestSuite(train, .init = setup, .fini = teardown);

typedef struct {
  int code;      /* exit code, or 128 + signal */
  char *out;     /* stdout */
  char *err;     /* stderr */
} result_t;

static char *slurp(const char *path) {
  char *s = bt_proc_slurp(path);
  cr_assert(s != NULL, "%s: cannot read", path);
  return s;
}

/* An empty file in the scratch directory. */
static const char *scratch(const char *name) {
  const char *p = bt_e2e_path(&e2e, name);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  cr_assert_geq(fd, 0, "%s", p);
  close(fd);
  return p;
}

/* Runs `baton train ARGS...` to its end on the shared scaffold (its own
 * process group, killed in teardown) with a deadline. */
static result_t run_train(int timeout_s, const char *const *args) {
  const char *argv[64];
  int n = 0;
  argv[n++] = bt_e2e_env("BATON_BIN");
  argv[n++] = "train";
  for (int i = 0; args[i]; i++) argv[n++] = args[i];
  argv[n] = NULL;
  result_t r;
  r.code = bt_e2e_run(&e2e, (char *const *)argv, NULL, NULL, timeout_s * 1000);
  r.out = slurp(e2e.out);
  r.err = slurp(e2e.err);
  return r;
}

static void result_free(result_t *r) {
  free(r->out);
  free(r->err);
}

/* The hash on the last line of stdout, checked for its format. */
static void last_hash(const char *out, char hex[33]) {
  size_t n = strlen(out);
  cr_assert(n > 0 && out[n - 1] == '\n', "stdout does not end in a line");
  const char *p = out + n - 1;
  while (p > out && p[-1] != '\n') p--;
  cr_assert_eq(strncmp(p, "hash ", 5), 0, "last line is not a hash: %s", p);
  cr_assert_eq(strlen(p), 5 + 32 + 1, "last line: %s", p);
  for (int i = 0; i < 32; i++)
    cr_assert((p[5 + i] >= '0' && p[5 + i] <= '9') || (p[5 + i] >= 'a' && p[5 + i] <= 'f'),
              "not lowercase hex: %s", p);
  memcpy(hex, p + 5, 32);
  hex[32] = 0;
}

/* Losses of a --metrics file, in order; checks each line's fields. */
static int read_losses(const char *path, double *loss, int max) {
  char *text = slurp(path);
  int n = 0;
  for (char *line = strtok(text, "\n"); line && n < max; line = strtok(NULL, "\n")) {
    cr_assert(strstr(line, "\"step\":") && strstr(line, "\"tokens_per_s\":"), "%s", line);
    const char *l = strstr(line, "\"loss\":");
    cr_assert(l != NULL, "%s", line);
    int step = atoi(strstr(line, "\"step\":") + 7);
    cr_assert_eq(step, n + 1, "%s", line);
    loss[n++] = strtod(l + 7, NULL);
  }
  free(text);
  return n;
}

static double mean(const double *x, int from, int to) {
  double s = 0;
  for (int i = from; i < to; i++) s += x[i];
  return s / (to - from);
}

Test(train, same_configuration_same_hash_other_seed_other_hash) {
  const char *a[] = {"--layers", "2", "--dim", "32", "--mb-tokens", "32", "--steps", "15",
                     "--hash", NULL};
  const char *b[] = {"--layers", "2", "--dim", "32", "--mb-tokens", "32", "--steps", "15",
                     "--seed", "2", "--hash", NULL};
  result_t r1 = run_train(120, a), r2 = run_train(120, a), r3 = run_train(120, b);
  cr_assert_eq(r1.code, 0, "%s", r1.err);
  cr_assert_eq(r2.code, 0, "%s", r2.err);
  cr_assert_eq(r3.code, 0, "%s", r3.err);
  char h1[33], h2[33], h3[33];
  last_hash(r1.out, h1);
  last_hash(r2.out, h2);
  last_hash(r3.out, h3);
  cr_assert_str_eq(h1, h2, "two identical runs differ");
  cr_assert_str_neq(h1, h3, "another seed gave the same parameters");
  result_free(&r1);
  result_free(&r2);
  result_free(&r3);
}

Test(train, default_run_reaches_the_entropy_rate_of_the_synthetic_stream) {
  const char *metrics = scratch("metrics");
  const char *a[] = {"--metrics", metrics, NULL};
  result_t r = run_train(540, a);
  cr_assert_eq(r.code, 0, "%s", r.err);
  const char *e = strstr(r.out, "entropy_rate ");
  cr_assert(e != NULL, "no entropy line: %s", r.out);
  double rate = strtod(e + 13, NULL);
  const char *u = strstr(r.out, "unigram_entropy ");
  cr_assert(u != NULL);
  double unigram = strtod(u + 16, NULL);
  static double loss[100000];
  int n = read_losses(metrics, loss, 100000);
  cr_assert_geq(n, 100);
  /* One step's loss is a mean over only M*T tokens: judge the last 20. */
  double final = mean(loss, n - 20, n), first = loss[0];
  cr_assert_leq(final, rate + 0.3, "final loss %.4f, entropy rate %.4f", final, rate);
  cr_assert_lt(final, unigram - 1.0, "final loss %.4f, unigram entropy %.4f", final, unigram);
  cr_assert_gt(first, unigram, "the untrained model should not beat the unigram entropy");
  result_free(&r);
}

Test(train, a_real_text_file_is_learned) {
  /* Real text: the project's own sources, always present. */
  const char *src = getenv("BATON_SOURCE_DIR");
  cr_assert(src != NULL);
  const char *data = scratch("text");
  int fd = open(data, O_WRONLY);
  const char *files[] = {"DESIGN.md", "README.md", "common/config.c", "common/model.c",
                         "common/data.c", "worker/stage.c", "kernels/model.c", "common/json.c"};
  size_t total = 0;
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", src, files[i]);
    FILE *f = fopen(path, "rb");
    if (!f) continue;
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
      cr_assert_eq(write(fd, buf, n), (ssize_t)n);
      total += n;
    }
    fclose(f);
  }
  close(fd);
  cr_assert_gt(total, 20000, "too little text gathered (%zu bytes)", total);
  const char *metrics = scratch("metrics");
  const char *a[] = {"--data", data, "--dim", "64", "--mb-tokens", "64", "--steps", "200",
                     "--metrics", metrics, NULL};
  result_t r = run_train(300, a);
  cr_assert_eq(r.code, 0, "%s", r.err);
  static double loss[1000];
  int n = read_losses(metrics, loss, 1000);
  cr_assert_eq(n, 200);
  double start = mean(loss, 0, 5), end = mean(loss, n - 20, n);
  cr_assert_gt(start - end, 1.0, "loss went from %.3f to %.3f only", start, end);
  result_free(&r);
}

static void expect_usage_error(const char *const *args, const char *mention) {
  result_t r = run_train(60, args);
  cr_assert_eq(r.code, 2, "%s %s: exit %d, stderr: %s", args[0], args[1] ? args[1] : "", r.code,
               r.err);
  size_t len = strlen(r.err);
  int lines = 0;
  for (size_t i = 0; i < len; i++) lines += r.err[i] == '\n';
  cr_assert_eq(lines, 1, "not one line on stderr: '%s'", r.err);
  cr_assert_str_eq(r.out, "", "stdout should be empty: %s", r.out);
  if (mention) cr_assert(strstr(r.err, mention) != NULL, "'%s' does not mention %s", r.err, mention);
  result_free(&r);
}

Test(train, bad_input_exits_2_with_one_line) {
  const char *empty = scratch("empty"), *shortf = scratch("short");
  int fd = open(shortf, O_WRONLY);
  cr_assert_eq(write(fd, "hello world", 11), 11);
  close(fd);
  const char *cases[][6] = {
      {"--dim", "0", NULL},
      {"--layers", "-3", NULL},
      {"--lr", "fast", NULL},
      {"--steps", "0", NULL},
      {"--microbatches", "1.5", NULL},
      {"--mb-tokens", "", NULL},
      {"--data", "/nonexistent/baton/data.txt", NULL},
      {"--data", empty, NULL},
      {"--data", shortf, NULL},
      {"--layers", "4096", "--dim", "16384", NULL},
      {"--frobnicate", "1", NULL},
      {"stray", NULL},
      {"--steps", NULL},
  };
  const char *mention[] = {"--dim", "--layers", "--lr", "--steps", "--microbatches",
                           "--mb-tokens", "--data", "--data", "--data", "GiB", "--frobnicate",
                           "stray", "--steps"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_usage_error(cases[i], mention[i]);
}

Test(train, cuda_without_a_gpu_is_a_one_line_error) {
  const char *a[] = {"--backend", "cuda", "--layers", "1", "--dim", "16", "--mb-tokens", "16",
                     "--steps", "2", NULL};
  result_t r = run_train(120, a);
  if (r.code == 0) {
    /* A machine with a working GPU library: the run itself must work. */
    cr_assert(strstr(r.out, "final loss") != NULL, "%s", r.out);
  } else {
    cr_assert_eq(r.code, 2, "exit %d: %s", r.code, r.err);
    size_t lines = 0;
    for (const char *p = r.err; *p; p++) lines += *p == '\n';
    cr_assert_eq(lines, 1, "'%s'", r.err);
    cr_assert(strstr(r.err, "cuda") != NULL, "%s", r.err);
  }
  result_free(&r);
}

Test(train, help_lists_the_shared_model_flags) {
  const char *a[] = {"--help", NULL};
  result_t r = run_train(30, a);
  cr_assert_eq(r.code, 0);
  const char *flags[] = {"--layers", "--dim", "--context", "--microbatches", "--mb-tokens",
                         "--lr", "--warmup", "--lr-decay-steps", "--seed", "--data",
                         "--backend", "--steps", "--hash", "--metrics"};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    cr_assert(strstr(r.out, flags[i]) != NULL, "--help lacks %s", flags[i]);
  result_free(&r);
}


/* The "loss" field of each metrics line, as text, keyed by step. */
static int loss_texts(const char *path, char texts[][40], int max) {
  char *text = slurp(path);
  int n = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    int step = atoi(strstr(line, "\"step\":") + 7);
    const char *l = strstr(line, "\"loss\":");
    cr_assert(l && step >= 1 && step <= max, "%s", line);
    snprintf(texts[step - 1], 40, "%.*s", (int)strcspn(l + 7, ",}"), l + 7);
    n++;
  }
  free(text);
  return n;
}

Test(train, resuming_from_a_checkpoint_gives_the_same_bits) {
  const char *dir = e2e.ckpt, *m2 = scratch("m2"), *m3 = scratch("m3");
  /* 12 steps with saves at 5, 10 and 12; then on to 20 from step 12. */
  const char *a1[] = {"--layers", "2", "--dim", "32", "--mb-tokens", "32", "--steps", "12",
                      "--ckpt-dir", dir, "--ckpt-every", "5", NULL};
  const char *a2[] = {"--layers", "2", "--dim", "32", "--mb-tokens", "32", "--steps", "20",
                      "--ckpt-dir", dir, "--metrics", m2, "--hash", NULL};
  const char *a3[] = {"--layers", "2", "--dim", "32", "--mb-tokens", "32", "--steps", "20",
                      "--metrics", m3, "--hash", NULL};
  result_t r1 = run_train(120, a1);
  cr_assert_eq(r1.code, 0, "%s", r1.err);
  char latest[4096];
  snprintf(latest, sizeof latest, "%s/step-00000012/MANIFEST.json", dir);
  cr_assert_eq(access(latest, F_OK), 0, "the last step was not committed");
  result_t r2 = run_train(120, a2), r3 = run_train(120, a3);
  cr_assert_eq(r2.code, 0, "%s", r2.err);
  cr_assert_eq(r3.code, 0, "%s", r3.err);
  cr_assert(strstr(r2.out, "resumed from") != NULL, "%s", r2.out);
  char h2[33], h3[33];
  last_hash(r2.out, h2);
  last_hash(r3.out, h3);
  cr_assert_str_eq(h2, h3, "12 + 8 resumed steps differ from 20 straight");
  static char l2[20][40], l3[20][40];
  cr_assert_eq(loss_texts(m2, l2, 20), 8);
  cr_assert_eq(loss_texts(m3, l3, 20), 20);
  for (int s = 12; s < 20; s++)
    cr_assert_str_eq(l2[s], l3[s], "step %d: loss %s after resume, %s straight", s + 1, l2[s],
                     l3[s]);
  /* Another model in the same directory: refused, naming the setting. */
  const char *a4[] = {"--layers", "2", "--dim", "48", "--mb-tokens", "32", "--steps", "20",
                      "--ckpt-dir", dir, NULL};
  expect_usage_error(a4, "--dim: the checkpoint has 32, the command line says 48");
  result_free(&r1);
  result_free(&r2);
  result_free(&r3);
}
