/* bench_run.c - `baton run --stages 2` against `baton train`, and the
 * schedule simulator against the real pipeline.
 *
 * In one run, on one machine, with one model:
 *   1. `baton train` (the single-process baseline): tokens/s.
 *   2. `baton run --stages 2` with each schedule (gpipe, 1f1b, zb-h1, and
 *      with 2 chunks interleaved, zb-v and dualpipev), with --metrics and --trace: tokens/s and
 *      the speedup over train; the measured step time; the measured bubble
 *      fraction (1 - sum of busy / (p * step time), from the workers'
 *      METRICS).
 *   3. For each, the simulator (schedules/sim.h) fed with the costs of each
 *      (virtual stage, action type) measured in that same run's trace:
 *      its predicted makespan against the measured step time, and its
 *      bubble fraction against the measured one.
 * Medians over the steps after the first (the first step pays for page
 * faults and connection set-up). Prints a table, then one JSON line, with
 * the CPU model and the filesystem of the scratch directory.
 *
 * Usage: bench_run [--baton PATH] [--steps N] [--layers L] [--dim D]
 *                  [--mb-tokens T] [--microbatches M]
 *   --baton  the baton binary (default: ../baton next to this program)
 * Not a test: it asserts nothing about speed.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/sysinfo.h"
#include "common/json.h"
#include "common/parse.h"
#include "schedules/schedule.h"
#include "schedules/sim.h"
#include "schedules/trace.h"

#define MAX_STEPS 4096

typedef struct {
  char baton[PATH_MAX];
  int64_t steps;
  int layers, dim, mb_tokens, microbatches;
} opts_t;

/* Runs argv with stdout and stderr into log; returns the exit status. */
static int run(char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execv(argv[0], argv);
    _exit(127);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -errno;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* The values of `key` in every line of a metrics file, steps 2.. only. */
static int metric(const char *path, const char *key, double *out, int max) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[8192], pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  int n = 0, lineno = 0;
  while (fgets(line, sizeof line, f) && n < max) {
    if (++lineno == 1) continue;
    char *p = strstr(line, pat);
    if (p) out[n++] = strtod(p + strlen(pat), NULL);
  }
  fclose(f);
  return n;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double median_metric(const char *path, const char *key) {
  static double v[MAX_STEPS];
  return median(v, metric(path, key, v, MAX_STEPS));
}

typedef struct {
  const char *schedule;
  int chunks;
  double tps, speedup, step_s, sim_s, bubble, bubble_sim;
  int ok;
} result_t;

/* Mean duration of each (virtual stage, type) in the trace, in seconds. */
static int stage_costs(const char *trace, int nv, double *cost) {
  bt_trace_t t;
  char err[256];
  if (bt_trace_read(trace, &t, err, sizeof err) < 0) {
    fprintf(stderr, "bench_run: %s: %s\n", trace, err);
    return -1;
  }
  double *sum = calloc((size_t)nv * BT_ACT_NTYPES, sizeof *sum);
  int *cnt = calloc((size_t)nv * BT_ACT_NTYPES, sizeof *cnt);
  int rc = sum && cnt ? 0 : -1;
  for (size_t i = 0; rc == 0 && i < t.n; i++) {
    const bt_box_t *b = &t.boxes[i];
    if (b->act.stage < 0 || b->act.stage >= nv) continue;
    size_t k = (size_t)b->act.stage * BT_ACT_NTYPES + (size_t)b->act.type;
    sum[k] += (b->end - b->start) * 1e-6;
    cnt[k]++;
  }
  for (int k = 0; rc == 0 && k < nv * BT_ACT_NTYPES; k++) cost[k] = cnt[k] ? sum[k] / cnt[k] : 0;
  free(sum);
  free(cnt);
  bt_trace_free(&t);
  return rc;
}

static void simulate(const opts_t *o, result_t *r, const char *trace) {
  bt_schedule_t s;
  char err[512];
  if (bt_sched_build(r->schedule, 2, r->chunks, o->microbatches, &s, err, sizeof err) < 0) {
    fprintf(stderr, "bench_run: %s\n", err);
    return;
  }
  int nv = 2 * r->chunks;
  double *cost = calloc((size_t)nv * BT_ACT_NTYPES, sizeof *cost);
  bt_sim_costs_t c;
  bt_sim_costs_default(&c);
  bt_sim_result_t res;
  if (cost && stage_costs(trace, nv, cost) == 0) {
    c.stage_cost = cost;
    if (bt_sim_run(&s, &c, &res, err, sizeof err) == 0) {
      r->sim_s = res.makespan;
      r->bubble_sim = res.bubble_fraction;
      bt_sim_result_free(&res);
    } else {
      fprintf(stderr, "bench_run: simulate %s: %s\n", r->schedule, err);
    }
  }
  free(cost);
  bt_sched_free(&s);
}

static int parse_opts(int argc, char **argv, opts_t *o) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n < 0) n = 0;
  self[n] = 0;
  snprintf(o->baton, sizeof o->baton, "%s/../baton", dirname(self));
  o->steps = 12;
  o->layers = 8;
  o->dim = 128;
  o->mb_tokens = 128;
  o->microbatches = 8;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = !v;
    if (!bad && !strcmp(a, "--baton")) snprintf(o->baton, sizeof o->baton, "%s", v);
    else if (!bad && !strcmp(a, "--steps")) bad = bt_parse_i64(v, 2, MAX_STEPS, &o->steps) < 0;
    else if (!bad && !strcmp(a, "--layers")) bad = bt_parse_int(v, 2, 4096, &o->layers) < 0;
    else if (!bad && !strcmp(a, "--dim")) bad = bt_parse_int(v, 1, 16384, &o->dim) < 0;
    else if (!bad && !strcmp(a, "--mb-tokens")) bad = bt_parse_int(v, 1, 1 << 20, &o->mb_tokens) < 0;
    else if (!bad && !strcmp(a, "--microbatches")) bad = bt_parse_int(v, 2, 4096, &o->microbatches) < 0;
    else bad = 1;
    if (bad) {
      fprintf(stderr, "usage: bench_run [--baton PATH] [--steps N>=2] [--layers L] [--dim D] "
                      "[--mb-tokens T] [--microbatches M>=2]\n");
      return -1;
    }
    i++;
  }
  return 0;
}

int main(int argc, char **argv) {
  opts_t o;
  if (parse_opts(argc, argv, &o) < 0) return 2;
  if (access(o.baton, X_OK) < 0) {
    fprintf(stderr, "bench_run: %s: %s (use --baton PATH)\n", o.baton, strerror(errno));
    return 2;
  }
  char dir[] = "/tmp/bench_run_XXXXXX";
  if (!mkdtemp(dir)) {
    fprintf(stderr, "bench_run: mkdtemp: %s\n", strerror(errno));
    return 1;
  }
  char cpu[256], steps[32], layers[16], dim[16], tokens[16], mbs[16], log[PATH_MAX], metrics[PATH_MAX],
      trace[PATH_MAX];
  bt_sys_cpu_model(cpu, sizeof cpu);
  snprintf(steps, sizeof steps, "%lld", (long long)o.steps);
  snprintf(layers, sizeof layers, "%d", o.layers);
  snprintf(dim, sizeof dim, "%d", o.dim);
  snprintf(tokens, sizeof tokens, "%d", o.mb_tokens);
  snprintf(mbs, sizeof mbs, "%d", o.microbatches);
  snprintf(log, sizeof log, "%s/log", dir);
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
  snprintf(trace, sizeof trace, "%s/trace.json", dir);

  char *train[] = {o.baton, "train", "--layers", layers, "--dim", dim, "--mb-tokens", tokens, "--microbatches", mbs,
                   "--steps", steps, "--metrics", metrics, NULL};
  int rc = run(train, log);
  if (rc != 0) {
    fprintf(stderr, "bench_run: baton train exited %d (log %s)\n", rc, log);
    return 1;
  }
  double train_tps = median_metric(metrics, "tokens_per_s");

  result_t res[] = {{.schedule = "gpipe", .chunks = 1}, {.schedule = "1f1b", .chunks = 1},
                    {.schedule = "zb-h1", .chunks = 1}, {.schedule = "interleaved", .chunks = 2},
                    {.schedule = "zb-v", .chunks = 2},  {.schedule = "dualpipev", .chunks = 2}};
  int nres = (int)(sizeof res / sizeof res[0]);
  for (int i = 0; i < nres; i++) {
    result_t *r = &res[i];
    char chunks[8];
    snprintf(chunks, sizeof chunks, "%d", r->chunks);
    char *runv[] = {o.baton, "run", "--no-progress", "--stages", "2", "--chunks", chunks, "--schedule",
                    (char *)r->schedule, "--layers", layers, "--dim", dim, "--mb-tokens", tokens,
                    "--microbatches", mbs, "--steps", steps, "--metrics", metrics, "--trace", trace, NULL};
    rc = run(runv, log);
    if (rc != 0) {
      fprintf(stderr, "bench_run: baton run --schedule %s exited %d (log %s)\n", r->schedule, rc, log);
      continue;
    }
    r->ok = 1;
    r->tps = median_metric(metrics, "tokens_per_s");
    r->speedup = train_tps > 0 ? r->tps / train_tps : 0;
    r->step_s = median_metric(metrics, "step_s");
    r->bubble = median_metric(metrics, "bubble_fraction");
    simulate(&o, r, trace);
  }

  printf("bench_run: baton run --stages 2 vs baton train; L=%d D=%d T=%d M=%d, %lld steps (medians of steps 2..)\n",
         o.layers, o.dim, o.mb_tokens, o.microbatches, (long long)o.steps);
  printf("cpu: %s; %ld cores online; scratch filesystem: %s\n", cpu, sysconf(_SC_NPROCESSORS_ONLN), bt_sys_fs_name(dir));
  printf("baton train: %.0f tokens/s\n\n", train_tps);
  printf("%-12s %3s %12s %8s %10s %10s %9s %8s %8s\n", "schedule", "V", "tokens/s", "speedup", "step s",
         "sim s", "step/sim", "bubble", "sim");
  for (int i = 0; i < nres; i++) {
    const result_t *r = &res[i];
    if (!r->ok) {
      printf("%-12s %3d %12s\n", r->schedule, r->chunks, "failed");
      continue;
    }
    printf("%-12s %3d %12.0f %8.3f %10.4f %10.4f %9.3f %7.1f%% %7.1f%%\n", r->schedule, r->chunks, r->tps,
           r->speedup, r->step_s, r->sim_s, r->sim_s > 0 ? r->step_s / r->sim_s : 0, 100 * r->bubble,
           100 * r->bubble_sim);
  }
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "run");
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kint(&j, "cores", sysconf(_SC_NPROCESSORS_ONLN));
  bt_json_kstr(&j, "fs", bt_sys_fs_name(dir));
  bt_json_knum(&j, "train_tokens_per_s", train_tps);
  bt_json_key(&j, "runs");
  bt_json_arr_begin(&j);
  for (int i = 0; i < nres; i++) {
    const result_t *r = &res[i];
    if (!r->ok) continue;
    bt_json_obj_begin(&j);
    bt_json_kstr(&j, "schedule", r->schedule);
    bt_json_kint(&j, "chunks", r->chunks);
    bt_json_knum(&j, "tokens_per_s", r->tps);
    bt_json_knum(&j, "speedup_vs_train", r->speedup);
    bt_json_knum(&j, "step_s", r->step_s);
    bt_json_knum(&j, "sim_makespan_s", r->sim_s);
    bt_json_knum(&j, "step_over_sim", r->sim_s > 0 ? r->step_s / r->sim_s : 0);
    bt_json_knum(&j, "bubble_fraction", r->bubble);
    bt_json_knum(&j, "bubble_fraction_sim", r->bubble_sim);
    bt_json_obj_end(&j);
  }
  bt_json_arr_end(&j);
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_cstr(&j));
  bt_json_free(&j);
  unlink(log);
  unlink(metrics);
  unlink(trace);
  rmdir(dir);
  return 0;
}
