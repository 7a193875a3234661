/* test_gpu_check.c - scripts/gpu-check.sh, the one check run on a GPU node.
 *
 * The verdicts: the script's --report mode judges the logs a run leaves
 * (NAME.log, NAME.rc, NAME.skip and the hash and metrics files), so these
 * tests feed it recorded outputs — Criterion logs of the GPU tests, `hash`
 * lines, metrics, compute-sanitizer summaries, bench_gpu's JSON line — and
 * check what it calls PASS, FAIL and SKIP: a skip by design on a GPU node
 * is no failure, any other skip there is; differing hashes, a timeout, a
 * loss curve outside the tolerance and sanitizer errors fail; an NCCL that
 * refuses two ranks on one GPU and a node without compute-sanitizer skip.
 *
 * The pack: --pack makes an archive under 30 MB from this build, and the
 * `baton` in it runs `baton train` from a clean folder with only the
 * pack's libraries (every non-glibc library resolves into its lib/), giving
 * the build's own hash.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *source_dir(void) {
  const char *s = getenv("BATON_SOURCE_DIR");
  cr_assert(s && *s, "BATON_SOURCE_DIR is not set (run through ctest)");
  return s;
}

static void put(const char *dir, const char *name, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  cr_assert(f, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

#define HASH_A "0123456789abcdef0123456789abcdef"
#define HASH_B "fedcba9876543210fedcba9876543210"

static const char *KERNELS_LOG =
    "[----] Criterion v2.4.1\n"
    "[====] Running 11 tests from cuda:\n"
    "[RUN ] cuda::adamw_matches_cpu\n"
    "[PASS] cuda::adamw_matches_cpu: (0.21s)\n"
    "[RUN ] cuda::cpu_backend_works_after_cuda_fails\n"
    "[SKIP] cuda::cpu_backend_works_after_cuda_fails: a CUDA device is present (by design on a "
    "GPU node)\n"
    "[RUN ] cuda::matmul_matches_cpu\n"
    "[PASS] cuda::matmul_matches_cpu: (0.40s)\n"
    "[RUN ] cuda::no_gpu_gives_one_line_naming_what_is_missing\n"
    "[SKIP] cuda::no_gpu_gives_one_line_naming_what_is_missing: a CUDA device is present, so the "
    "no-GPU message cannot be seen here (by design on a GPU node)\n"
    "[====] Synthesis: Tested: 9 | Passing: 9 | Failing: 0 | Crashing: 0 \n";

static const char *NCCL_LOG =
    "[----] Criterion v2.4.1\n"
    "[RUN ] nccl::loopback_moves_exact_bytes\n"
    "[PASS] nccl::loopback_moves_exact_bytes: (1.02s)\n"
    "[RUN ] nccl::no_gpu_gives_one_line_naming_what_is_missing\n"
    "[SKIP] nccl::no_gpu_gives_one_line_naming_what_is_missing: NCCL is usable here: the no-GPU "
    "message cannot be seen (by design on a GPU node)\n"
    "[====] Synthesis: Tested: 20 | Passing: 20 | Failing: 0 | Crashing: 0 \n";

static const char *SANITIZER_OK =
    "========= COMPUTE-SANITIZER\n"
    "========= ERROR SUMMARY: 0 errors\n"
    "========= COMPUTE-SANITIZER\n"
    "========= ERROR SUMMARY: 0 errors\n"
    "========= ERROR SUMMARY: 0 errors\n";

static const char *BENCH_LOG =
    "bench_gpu: GPU NVIDIA H200; CPU x; filesystem ext4 (/tmp)\n"
    "train         812346      1.000  baton train --backend cuda (median step)\n"
    "{\"bench\":\"gpu\",\"gpu\":\"NVIDIA H200\",\"dim\":128,\"layers\":4,"
    "\"train_tokens_per_s\":812345.5,\"torch_tokens_per_s\":400000,\"baton_over_torch\":2.03086}\n";

static const char *BENCH1024_LOG =
    "{\"bench\":\"gpu\",\"gpu\":\"NVIDIA H200\",\"dim\":1024,\"layers\":8,"
    "\"train_tokens_per_s\":250000,\"torch_tokens_per_s\":312500,\"baton_over_torch\":0.8}\n";

static const char *LOSSES =
    "{\"step\":1,\"loss\":5.549100,\"tokens_per_s\":1}\n"
    "{\"step\":2,\"loss\":5.548200,\"tokens_per_s\":1}\n"
    "{\"step\":3,\"loss\":5.401000,\"tokens_per_s\":1}\n";

/* The recorded logs of a run that should pass on one H200, where two ranks
 * cannot share the GPU under NCCL. */
static char *good_run(void) {
  char tmpl[] = "/tmp/bt_gpu_check_XXXXXX";
  char *d = mkdtemp(tmpl);
  cr_assert(d);
  d = strdup(d);
  put(d, "env.txt", "GPU: NVIDIA H200, 570.00, 143771 MiB\nlibrary libnccl: /x python-package\n");
  put(d, "kernels.log", KERNELS_LOG);
  put(d, "kernels.rc", "0\n");
  put(d, "nccl1.log", NCCL_LOG);
  put(d, "nccl1.rc", "0\n");
  put(d, "determinism.1.out", "final loss 5.1\nhash " HASH_A "\n");
  put(d, "determinism.2.out", "final loss 5.1\nhash " HASH_A "\n");
  put(d, "determinism.log", "");
  put(d, "determinism.rc", "0\n");
  put(d, "parity.gpu.jsonl", LOSSES);
  put(d, "parity.cpu.jsonl",
      "{\"step\":1,\"loss\":5.549101,\"tokens_per_s\":1}\n"
      "{\"step\":2,\"loss\":5.548200,\"tokens_per_s\":1}\n"
      "{\"step\":3,\"loss\":5.401300,\"tokens_per_s\":1}\n");
  put(d, "parity.log", "");
  put(d, "parity.rc", "0\n");
  put(d, "pipeline.out", "hash " HASH_A "\n");
  put(d, "pipeline.log", "");
  put(d, "pipeline.rc", "0\n");
  put(d, "nccl2.out", "");
  put(d, "nccl2.log",
      "host:1234:1234 [0] NCCL WARN Duplicate GPU detected : rank 0 and rank 1 both on CUDA "
      "device 1d000\nbaton run: stage 1 failed\n");
  put(d, "nccl2.rc", "1\n");
  put(d, "racecheck.log", SANITIZER_OK);
  put(d, "racecheck.rc", "0\n");
  put(d, "synccheck.log", SANITIZER_OK);
  put(d, "synccheck.rc", "0\n");
  put(d, "bench.log", BENCH_LOG);
  put(d, "bench.rc", "0\n");
  put(d, "bench1024.log", BENCH1024_LOG);
  put(d, "bench1024.rc", "0\n");
  return d;
}

/* Runs `gpu-check.sh ARGS`; its stdout+stderr into out, its exit status. */
static int script(const char *args, char *out, size_t cap) {
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "bash '%s/scripts/gpu-check.sh' %s 2>&1", source_dir(), args);
  FILE *p = popen(cmd, "r");
  cr_assert(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int report(const char *dir, char *out, size_t cap) {
  char args[1100];
  snprintf(args, sizeof args, "--report '%s'", dir);
  return script(args, out, cap);
}

/* The line of the report for check `name`. */
static const char *line_of(const char *out, const char *name, char *line, size_t cap) {
  char key[64];
  snprintf(key, sizeof key, "\n  %s ", name);
  const char *p = strstr(out, key);
  cr_assert(p, "no line for %s in:\n%s", name, out);
  p += 3;
  size_t n = strcspn(p, "\n");
  snprintf(line, cap, "%.*s", (int)n, p);
  return line;
}

static void cleanup(char *dir) {
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
  free(dir);
}

Test(gpu_check, a_run_whose_only_skips_are_by_design_passes) {
  char *d = good_run(), out[16384], l[512];
  int rc = report(d, out, sizeof out);
  cr_assert_eq(rc, 0, "exit %d:\n%s", rc, out);
  cr_assert(strstr(out, "verdict: PASS"), "%s", out);
  cr_assert(strstr(line_of(out, "kernels", l, sizeof l), "PASS") &&
                strstr(l, "2 skipped by design"), "%s", l);
  cr_assert(strstr(line_of(out, "nccl1", l, sizeof l), "PASS") && strstr(l, "1 skipped by design"),
            "%s", l);
  cr_assert(strstr(line_of(out, "determinism", l, sizeof l), "PASS") && strstr(l, HASH_A), "%s", l);
  cr_assert(strstr(line_of(out, "parity", l, sizeof l), "PASS"), "%s", l);
  cr_assert(strstr(line_of(out, "pipeline", l, sizeof l), "PASS"), "%s", l);
  /* NCCL 2.28 refuses two ranks on one GPU: a skip with the reason. */
  cr_assert(strstr(line_of(out, "nccl2", l, sizeof l), "SKIP") && strstr(l, "Duplicate GPU"),
            "%s", l);
  cr_assert(strstr(line_of(out, "racecheck", l, sizeof l), "PASS") && strstr(l, "3 processes"),
            "%s", l);
  /* The figures: medians and the ratio, at both sizes. */
  cr_assert(strstr(line_of(out, "bench", l, sizeof l), "baton 812346 tokens/s") && strstr(l, "baton/torch 2.031"),
            "%s", l);
  cr_assert(strstr(line_of(out, "bench1024", l, sizeof l), "D=1024") &&
                strstr(l, "baton/torch 0.800"),
            "%s", l);
  cr_assert(strstr(out, "python-package"), "the report does not say where NCCL came from:\n%s", out);
  cleanup(d);
}

Test(gpu_check, a_skip_that_is_not_by_design_fails) {
  char *d = good_run(), out[16384], l[512], log[4096];
  snprintf(log, sizeof log, "%s%s", KERNELS_LOG,
           "[SKIP] cuda::embed_matches_cpu: no usable CUDA backend: no CUDA driver\n");
  put(d, "kernels.log", log);
  int rc = report(d, out, sizeof out);
  cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
  cr_assert(strstr(line_of(out, "kernels", l, sizeof l), "FAIL") &&
                strstr(l, "1 skipped on a GPU node") && strstr(l, "embed_matches_cpu"),
            "%s", l);
  cr_assert(strstr(out, "verdict: FAIL (1 check(s) failed)"), "%s", out);
  cleanup(d);
}

Test(gpu_check, differing_hashes_a_failed_test_and_a_timeout_fail) {
  char *d = good_run(), out[16384], l[512], log[4096];
  put(d, "determinism.2.out", "hash " HASH_B "\n");
  put(d, "pipeline.out", "hash " HASH_B "\n");
  put(d, "nccl1.rc", "124\n");
  snprintf(log, sizeof log, "%s%s", KERNELS_LOG,
           "[----] tests/test_cuda.c:200: Assertion Failed\n[FAIL] cuda::gelu: (0.1s)\n");
  put(d, "kernels.log", log);
  put(d, "kernels.rc", "1\n");
  int rc = report(d, out, sizeof out);
  cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
  cr_assert(strstr(line_of(out, "determinism", l, sizeof l), "FAIL") && strstr(l, HASH_B), "%s", l);
  /* The pipeline is compared with train's hash (the first run's). */
  cr_assert(strstr(line_of(out, "pipeline", l, sizeof l), "FAIL"), "%s", l);
  cr_assert(strstr(line_of(out, "nccl1", l, sizeof l), "FAIL") && strstr(l, "timed out"), "%s", l);
  cr_assert(strstr(line_of(out, "kernels", l, sizeof l), "FAIL") && strstr(l, "exit 1"), "%s", l);
  cr_assert(strstr(out, "verdict: FAIL (4 check(s) failed)"), "%s", out);
  cleanup(d);
}

Test(gpu_check, a_loss_curve_outside_the_tolerance_fails) {
  char *d = good_run(), out[16384], l[512];
  put(d, "parity.cpu.jsonl",
      "{\"step\":1,\"loss\":5.549100}\n{\"step\":2,\"loss\":5.548200}\n{\"step\":3,\"loss\":5.46}\n");
  int rc = report(d, out, sizeof out);
  cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
  cr_assert(strstr(line_of(out, "parity", l, sizeof l), "FAIL") && strstr(l, "0.0108"), "%s", l);
  cleanup(d);
}

Test(gpu_check, sanitizer_errors_fail_and_a_node_without_the_sanitizer_skips) {
  char *d = good_run(), out[16384], l[512];
  put(d, "racecheck.log",
      "========= COMPUTE-SANITIZER\n========= Error: Race reported between Write access at "
      "add_kernel\n========= ERROR SUMMARY: 2 errors\n========= ERROR SUMMARY: 0 errors\n");
  put(d, "racecheck.rc", "3\n");
  char path[1100];
  snprintf(path, sizeof path, "%s/synccheck.log", d);
  unlink(path);
  snprintf(path, sizeof path, "%s/synccheck.rc", d);
  unlink(path);
  put(d, "synccheck.skip", "compute-sanitizer not found on this node\n");
  int rc = report(d, out, sizeof out);
  cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
  cr_assert(strstr(line_of(out, "racecheck", l, sizeof l), "FAIL") && strstr(l, "2 errors"), "%s",
            l);
  cr_assert(strstr(line_of(out, "synccheck", l, sizeof l), "SKIP") &&
                strstr(l, "compute-sanitizer not found"),
            "%s", l);
  cr_assert(strstr(out, "verdict: FAIL (1 check(s) failed)"), "%s", out);
  cleanup(d);
}

Test(gpu_check, bad_arguments_are_one_line_and_exit_2) {
  char out[4096];
  cr_assert_eq(script("--frobnicate", out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "unknown argument '--frobnicate'"), "%s", out);
  cr_assert_eq(script("--report /nonexistent-baton-dir", out, sizeof out), 2, "%s", out);
}

/* Runs a shell command, returns its exit status and first line of output. */
static int sh(const char *cmd, char *out, size_t cap) {
  FILE *p = popen(cmd, "r");
  cr_assert(p);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(gpu_check, the_pack_is_small_and_runs_baton_train_from_a_clean_folder, .timeout = 300) {
  const char *build = getenv("BATON_BUILD_DIR");
  cr_assert(build && *build);
  char lib[1024];
  snprintf(lib, sizeof lib, "%s/libbaton_cuda.so", build);
  if (access(lib, F_OK) != 0) cr_skip_test("this build has no CUDA libraries to pack");
  char tmpl[] = "/tmp/bt_gpu_pack_XXXXXX";
  char *d = mkdtemp(tmpl);
  cr_assert(d);
  char args[2048], out[16384];
  snprintf(args, sizeof args, "--pack --build '%s' --out '%s/out'", build, d);
  int rc = script(args, out, sizeof out);
  cr_assert_eq(rc, 0, "--pack: exit %d:\n%s", rc, out);
  char archive[1100];
  snprintf(archive, sizeof archive, "%s/out/baton-gpu.tar.gz", d);
  struct stat sb;
  cr_assert_eq(stat(archive, &sb), 0, "no archive at %s:\n%s", archive, out);
  cr_assert_lt(sb.st_size, 30L * 1024 * 1024, "the pack is %lld bytes", (long long)sb.st_size);
  /* A clean folder: only what the archive holds. */
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "mkdir '%s/clean' && tar -C '%s/clean' -xzf '%s' 2>&1", d, d, archive);
  cr_assert_eq(sh(cmd, out, sizeof out), 0, "%s", out);
  /* Every library of baton that is not glibc's resolves into the pack. */
  snprintf(cmd, sizeof cmd,
           "LD_LIBRARY_PATH='%s/clean/baton-gpu/lib' ldd '%s/clean/baton-gpu/baton' | "
           "awk '$2 == \"=>\" {print $1, $3}' | "
           "grep -v -E '^(libc|libm|libpthread|libdl|librt|libresolv|libutil)\\.so|/clean/baton-gpu/lib/'",
           d, d);
  rc = sh(cmd, out, sizeof out);
  cr_assert_eq(out[0], '\0', "libraries from outside the pack:\n%s", out);
  /* baton train from the clean folder (no BATON_*, no build tree) gives
   * the build's own hash. */
  const char *train = "train --steps 2 --layers 1 --dim 32 --mb-tokens 32 --hash";
  char packed[256] = "", built[256] = "";
  snprintf(cmd, sizeof cmd,
           "cd '%s/clean' && env -u BATON_CUDA_LIB -u BATON_BUILD_DIR -u BATON_BIN "
           "LD_LIBRARY_PATH='%s/clean/baton-gpu/lib' ./baton-gpu/baton %s | tail -n1",
           d, d, train);
  cr_assert_eq(sh(cmd, packed, sizeof packed), 0, "packed baton: %s", packed);
  snprintf(cmd, sizeof cmd, "'%s/baton' %s | tail -n1", build, train);
  cr_assert_eq(sh(cmd, built, sizeof built), 0, "built baton: %s", built);
  cr_assert(strncmp(packed, "hash ", 5) == 0, "packed baton printed '%s'", packed);
  cr_assert_str_eq(packed, built);
  /* The check script rides along, and the GPU tests and benchmark. */
  const char *inside[] = {"gpu-check.sh", "libbaton_cuda.so", "libbaton_nccl.so", "tests/test_cuda",
                          "tests/test_nccl", "bench/bench_gpu", "bench/torch_model.py"};
  for (size_t i = 0; i < sizeof inside / sizeof inside[0]; i++) {
    char p[1100];
    snprintf(p, sizeof p, "%s/clean/baton-gpu/%s", d, inside[i]);
    cr_assert_eq(access(p, F_OK), 0, "%s is not in the pack", inside[i]);
  }
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  cr_assert_eq(system(cmd), 0);
}
