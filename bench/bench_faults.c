/* bench_faults.c - what each injected fault costs a `baton run`, and what
 * checkpointing costs a step.
 *
 * In one run, on one machine, with one model:
 *   1. Per fault kind (crash, exit, freeze, hang, ckpt-die; slow has no
 *      recovery and is timed as a whole run against a clean one), --runs
 *      runs of `baton run --stages P --chunks 2 --ckpt-every 5
 *      --inject-fault KIND@stage=1,...` with --events, and the median over
 *      the runs of the figures the supervisor writes in its `recovered` event:
 *      time to detect, to stop, to restore, to the first step after, and
 *      steps lost. A run that does not end with exit 0 and a restart event
 *      is reported as failed, not averaged.
 *   2. The cost of checkpointing: the median step time (--metrics, steps
 *      after the first) with --ckpt-every 2 against the same run without a
 *      checkpoint directory; the ratio is the figure.
 * Prints a table, then one JSON line, with the CPU model and the
 * filesystem of the scratch directory.
 *
 * Usage: bench_faults [--baton PATH] [--runs N] [--steps N] [--stages P]
 *                     [--layers L] [--dim D] [--mb-tokens T] [--dir DIR]
 *   --baton  the baton binary (default: ../baton next to this program)
 *   --dir    scratch directory (default: a new one under /tmp)
 * Not a test: it asserts nothing about speed.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/json.h"
#include "common/parse.h"
#include "common/sysinfo.h"

#define MAX_RUNS 1000
#define MAX_STEPS 100000

typedef struct {
  char baton[PATH_MAX];
  char dir[PATH_MAX];
  int runs;
  int64_t steps;
  int stages, layers, dim, mb_tokens;
} opts_t;

/* Runs argv with stdout and stderr into log; returns the exit status, or
 * 128 + the signal. */
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

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  if (n <= 0) return NAN;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The number after "key": in line, or NAN. */
static double field(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* The figures of a recovery, from the first `recovered` event. */
typedef struct {
  double detect_s, stop_s, restore_s, first_step_s, steps_lost;
} recovery_t;

static const char *const figure_keys[] = {"detect_s", "stop_s", "restore_s", "first_step_s", "steps_lost"};
#define NFIG 5

static int read_recovery(const char *events, recovery_t *r) {
  FILE *f = fopen(events, "r");
  if (!f) return -errno;
  char line[16384];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    if (!strstr(line, "\"event\":\"recovered\"")) continue;
    double *out = &r->detect_s;
    for (int k = 0; k < NFIG; k++) out[k] = field(line, figure_keys[k]);
    found = 1;
  }
  fclose(f);
  return found ? 0 : -ENOENT;
}

/* Median step_s of a metrics file, steps 2.. (the first pays for page
 * faults and connection set-up). */
static double median_step(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return NAN;
  static double v[MAX_STEPS];
  char line[16384];
  int n = 0, lineno = 0;
  while (fgets(line, sizeof line, f) && n < MAX_STEPS) {
    if (++lineno == 1) continue;
    double x = field(line, "step_s");
    if (!isnan(x)) v[n++] = x;
  }
  fclose(f);
  return median(v, n);
}

/* Builds `baton run` for the options into argv (strings in store). */
typedef struct {
  char *argv[64];
  char store[16][PATH_MAX];
  int argc, nstore;
} cmd_t;

static void add(cmd_t *c, const char *s) { c->argv[c->argc++] = (char *)s; }

static void addf(cmd_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(cmd_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->store[c->nstore], PATH_MAX, fmt, ap);
  va_end(ap);
  add(c, c->store[c->nstore++]);
}

static void base_cmd(cmd_t *c, const opts_t *o) {
  memset(c, 0, sizeof *c);
  add(c, o->baton);
  add(c, "run");
  add(c, "--stages");
  addf(c, "%d", o->stages);
  add(c, "--chunks");
  add(c, "2");
  add(c, "--layers");
  addf(c, "%d", o->layers);
  add(c, "--dim");
  addf(c, "%d", o->dim);
  add(c, "--mb-tokens");
  addf(c, "%d", o->mb_tokens);
  add(c, "--steps");
  addf(c, "%lld", (long long)o->steps);
  add(c, "--no-progress");
}

static int rm_rf(const char *path) {
  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  return system(cmd) == 0 ? 0 : -EIO;
}

static int parse_args(int argc, char **argv, opts_t *o) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  self[n > 0 ? n : 0] = 0;
  snprintf(o->baton, sizeof o->baton, "%s/../baton", dirname(self));
  o->runs = 3;
  o->steps = 30;
  o->stages = 2;
  o->layers = 4;
  o->dim = 64;
  o->mb_tokens = 64;
  /* every option takes a value: two arguments at a time */
  for (int i = 1; i < argc; i += 2) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (!strcmp(a, "--help")) {
      printf("usage: bench_faults [--baton PATH] [--runs N] [--steps N] [--stages P] [--layers L]\n"
             "                    [--dim D] [--mb-tokens T] [--dir DIR]\n");
      return 1;
    }
    if (!v) bad = 1;
    else if (!strcmp(a, "--baton")) snprintf(o->baton, sizeof o->baton, "%s", v);
    else if (!strcmp(a, "--dir")) snprintf(o->dir, sizeof o->dir, "%s", v);
    else if (!strcmp(a, "--runs")) bad = bt_parse_int(v, 1, MAX_RUNS, &o->runs);
    else if (!strcmp(a, "--steps")) bad = bt_parse_i64(v, 12, MAX_STEPS, &o->steps);
    else if (!strcmp(a, "--stages")) bad = bt_parse_int(v, 2, 16, &o->stages);
    else if (!strcmp(a, "--layers")) bad = bt_parse_int(v, 2, 1000, &o->layers);
    else if (!strcmp(a, "--dim")) bad = bt_parse_int(v, 1, 1 << 16, &o->dim);
    else if (!strcmp(a, "--mb-tokens")) bad = bt_parse_int(v, 1, 1 << 20, &o->mb_tokens);
    else bad = 1;
    if (bad) {
      fprintf(stderr, "bench_faults: bad option '%s'%s%s (try --help)\n", a, v ? " " : "", v ? v : "");
      return 2;
    }
  }
  return 0;
}

typedef struct {
  const char *kind;
  int ok, failed;
  double med[NFIG];
  double wall_s;       /* slow: the whole run */
} row_t;

int main(int argc, char **argv) {
  opts_t o;
  memset(&o, 0, sizeof o);
  int prc = parse_args(argc, argv, &o);
  if (prc) return prc == 1 ? 0 : 2;
  if (access(o.baton, X_OK) < 0) {
    fprintf(stderr, "bench_faults: %s is not executable (use --baton)\n", o.baton);
    return 2;
  }
  if (!o.dir[0]) {
    snprintf(o.dir, sizeof o.dir, "/tmp/bench_faults_XXXXXX");
    if (!mkdtemp(o.dir)) {
      fprintf(stderr, "bench_faults: mkdtemp: %s\n", strerror(errno));
      return 1;
    }
  }
  char ck[PATH_MAX + 8], ev[PATH_MAX + 16], log[PATH_MAX + 8], met[PATH_MAX + 16];
  snprintf(ck, sizeof ck, "%s/ck", o.dir);
  snprintf(ev, sizeof ev, "%s/events.jsonl", o.dir);
  snprintf(log, sizeof log, "%s/log", o.dir);
  snprintf(met, sizeof met, "%s/metrics.jsonl", o.dir);

  /* The faults fire on stage 1 just past the middle, three steps after a
   * checkpoint (every 5): a restart replays those steps. */
  int64_t at = (o.steps / 2 / 5) * 5 + 3;
  char specs[6][96];
  const char *kinds[] = {"crash", "exit", "freeze", "hang", "ckpt-die", "slow"};
  snprintf(specs[0], sizeof specs[0], "crash@stage=1,step=%lld,action=3", (long long)at);
  snprintf(specs[1], sizeof specs[1], "exit@stage=1,step=%lld,action=3,code=1", (long long)at);
  snprintf(specs[2], sizeof specs[2], "freeze@stage=1,step=%lld,action=3", (long long)at);
  snprintf(specs[3], sizeof specs[3], "hang@stage=1,step=%lld,action=3", (long long)at);
  snprintf(specs[4], sizeof specs[4], "ckpt-die@stage=1,step=%lld", (long long)at);
  snprintf(specs[5], sizeof specs[5], "slow@stage=1,step=%lld,ms=2", (long long)at);

  row_t rows[6];
  memset(rows, 0, sizeof rows);
  double clean_wall[MAX_RUNS];
  int nclean = 0;
  static double fig[NFIG][MAX_RUNS];
  static double walls[MAX_RUNS];
  for (int k = 0; k < 6; k++) {
    row_t *r = &rows[k];
    r->kind = kinds[k];
    int n = 0, nw = 0;
    for (int run_i = 0; run_i < o.runs; run_i++) {
      if (rm_rf(ck) < 0) return 1;
      unlink(ev);
      cmd_t c;
      base_cmd(&c, &o);
      const char *tail[] = {"--ckpt-dir", ck, "--ckpt-every", "5", "--heartbeat-timeout", "1",
                            "--progress-timeout", "2", "--grace", "1", "--events", ev, "--inject-fault",
                            specs[k], NULL};
      for (int i = 0; tail[i]; i++) add(&c, tail[i]);
      double t0 = bt_clock_s();
      int code = run(c.argv, log);
      double wall = bt_clock_s() - t0;
      recovery_t rec;
      if (k == 5) {
        if (code == 0) walls[nw++] = wall;
        else r->failed++;
        /* the clean baseline of the same command, interleaved with it */
        if (rm_rf(ck) < 0) return 1;
        cmd_t cc;
        base_cmd(&cc, &o);
        const char *ctail[] = {"--ckpt-dir", ck, "--ckpt-every", "5", NULL};
        for (int i = 0; ctail[i]; i++) add(&cc, ctail[i]);
        t0 = bt_clock_s();
        if (run(cc.argv, log) == 0) clean_wall[nclean++] = bt_clock_s() - t0;
        continue;
      }
      if (code != 0 || read_recovery(ev, &rec) < 0) {
        fprintf(stderr, "bench_faults: %s run %d: exit %d%s (log %s)\n", specs[k], run_i + 1, code,
                code == 0 ? ", no recovered event" : "", log);
        r->failed++;
        continue;
      }
      double *v = &rec.detect_s;
      for (int f = 0; f < NFIG; f++) fig[f][n] = v[f];
      n++;
    }
    r->ok = k == 5 ? nw : n;
    for (int f = 0; f < NFIG; f++) r->med[f] = k == 5 ? NAN : median(fig[f], n);
    r->wall_s = k == 5 ? median(walls, nw) : NAN;
  }
  double clean_s = median(clean_wall, nclean);

  /* Checkpoint cost: --ckpt-every 2 against no checkpoint directory. */
  double with_s[MAX_RUNS], without_s[MAX_RUNS];
  int nwith = 0, nwithout = 0;
  for (int run_i = 0; run_i < o.runs; run_i++) {
    cmd_t c;
    base_cmd(&c, &o);
    add(&c, "--metrics");
    add(&c, met);
    unlink(met);
    if (run(c.argv, log) == 0) without_s[nwithout++] = median_step(met);
    if (rm_rf(ck) < 0) return 1;
    base_cmd(&c, &o);
    const char *tail[] = {"--metrics", met, "--ckpt-dir", ck, "--ckpt-every", "2", NULL};
    for (int i = 0; tail[i]; i++) add(&c, tail[i]);
    unlink(met);
    if (run(c.argv, log) == 0) with_s[nwith++] = median_step(met);
  }
  double step_without = median(without_s, nwithout), step_with = median(with_s, nwith);
  double ratio = step_with / step_without;

  char cpu[256];
  bt_sys_cpu_model(cpu, sizeof cpu);
  const char *fs = bt_sys_fs_name(o.dir);
  printf("bench_faults: --stages %d --chunks 2 --layers %d --dim %d --mb-tokens %d --steps %lld, %d runs each\n",
         o.stages, o.layers, o.dim, o.mb_tokens, (long long)o.steps, o.runs);
  printf("cpu: %s; scratch %s (%s)\n\n", cpu, o.dir, fs);
  printf("%-9s %4s %6s %9s %9s %10s %13s %10s\n", "fault", "ok", "failed", "detect_s", "stop_s", "restore_s",
         "first_step_s", "steps_lost");
  for (int k = 0; k < 5; k++) {
    row_t *r = &rows[k];
    printf("%-9s %4d %6d %9.3f %9.3f %10.3f %13.3f %10.1f\n", r->kind, r->ok, r->failed, r->med[0], r->med[1],
           r->med[2], r->med[3], r->med[4]);
  }
  printf("%-9s %4d %6d  whole run %.3f s against %.3f s clean (x%.2f)\n", "slow", rows[5].ok, rows[5].failed,
         rows[5].wall_s, clean_s, rows[5].wall_s / clean_s);
  printf("\ncheckpoint cost: median step %.6f s with --ckpt-every 2, %.6f s without: ratio %.3f\n", step_with,
         step_without, ratio);

  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "faults");
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kstr(&j, "fs", fs);
  bt_json_kint(&j, "stages", o.stages);
  bt_json_kint(&j, "runs", o.runs);
  bt_json_kint(&j, "steps", o.steps);
  for (int k = 0; k < 5; k++) {
    char key[64];
    for (int f = 0; f < NFIG; f++) {
      snprintf(key, sizeof key, "%s_%s", rows[k].kind, figure_keys[f]);
      bt_json_knum(&j, key, rows[k].med[f]);
    }
    snprintf(key, sizeof key, "%s_failed", rows[k].kind);
    bt_json_kint(&j, key, rows[k].failed);
  }
  bt_json_knum(&j, "slow_wall_ratio", rows[5].wall_s / clean_s);
  bt_json_knum(&j, "step_s_ckpt_every_2", step_with);
  bt_json_knum(&j, "step_s_no_ckpt", step_without);
  bt_json_knum(&j, "ckpt_step_ratio", ratio);
  bt_json_obj_end(&j);
  printf("%s\n", bt_json_error(&j) ? "{}" : bt_json_cstr(&j));
  bt_json_free(&j);
  return 0;
}
