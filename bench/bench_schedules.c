/* bench_schedules.c - how fast and how big building, validating and
 * simulating a large schedule is, and how the simulated bubble compares with
 * the closed forms of DESIGN §3.
 *
 * Baselines measured in the same run: the same work at a quarter of the
 * micro-batches (a linear simulator takes ~4x longer at 4x the actions, a
 * quadratic one ~16x), and the closed-form bubble (the ratio should be 1).
 * The V schedules (zb-v, dualpipev) are built and simulated at p = 64,
 * m = 1024 as well. Prints a table, then one JSON line. Usage:
 * bench_schedules [P V M].
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <time.h>

#include "common/sysinfo.h"
#include "common/json.h"
#include "schedules/check.h"
#include "schedules/schedule.h"
#include "schedules/sim.h"

static void fs_type(char *out, size_t len) {
  struct statfs st;
  if (statfs(".", &st)) {
    snprintf(out, len, "unknown");
    return;
  }
  static const struct {
    unsigned long magic;
    const char *name;
  } known[] = {{0xEF53, "ext4"},          {0x58465342, "xfs"},   {0x01021994, "tmpfs"},
               {0x794c7630, "overlayfs"}, {0x9123683E, "btrfs"}, {0x6969, "nfs"},
               {0x2FC12FC1, "zfs"},       {0x65735546, "fuse"}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if ((unsigned long)st.f_type == known[i].magic) {
      snprintf(out, len, "%s", known[i].name);
      return;
    }
  snprintf(out, len, "0x%lx", (unsigned long)st.f_type);
}

/* CPU time of this thread: on 2 cores shared with other builds, wall time
 * mostly measures the wait for a core. */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long maxrss_kb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

typedef struct {
  double build, validate, simulate;
  size_t actions;
  double bubble;
} timing_t;

/* Best of `reps` runs of build + validate + simulate. */
static int time_one(const char *name, int p, int v, int m, int reps, timing_t *t) {
  char err[512];
  memset(t, 0, sizeof *t);
  for (int r = 0; r < reps; r++) {
    bt_schedule_t s;
    bt_sim_result_t res;
    bt_sim_costs_t c;
    bt_sim_costs_default(&c);
    double t0 = cpu_s();
    if (bt_sched_build(name, p, v, m, &s, err, sizeof err)) {
      fprintf(stderr, "bench_schedules: %s\n", err);
      return 1;
    }
    double t1 = cpu_s();
    if (bt_sched_validate(&s, err, sizeof err)) {
      fprintf(stderr, "bench_schedules: %s\n", err);
      bt_sched_free(&s);
      return 1;
    }
    double t2 = cpu_s();
    if (bt_sim_run(&s, &c, &res, err, sizeof err)) {
      fprintf(stderr, "bench_schedules: %s\n", err);
      bt_sched_free(&s);
      return 1;
    }
    double t3 = cpu_s();
    if (r == 0 || t1 - t0 < t->build) t->build = t1 - t0;
    if (r == 0 || t2 - t1 < t->validate) t->validate = t2 - t1;
    if (r == 0 || t3 - t2 < t->simulate) t->simulate = t3 - t2;
    t->actions = s.off[s.p];
    t->bubble = res.bubble_fraction;
    bt_sim_result_free(&res);
    bt_sched_free(&s);
  }
  return 0;
}

/* DESIGN §3 and docs/schedules.md, unit costs. */
static double closed_form(const char *name, double p, double v, double m) {
  if (!strcmp(name, "zb-h1")) return (p - 1) / (3 * m + p - 1);
  if (!strcmp(name, "zb-v") || !strcmp(name, "dualpipev")) {
    double idle = p - 1, fill = 2 * (2 * p - 1 - m);
    if (!strcmp(name, "zb-v") && fill > idle) idle = fill;
    return idle / (6 * m + idle);
  }
  return (p - 1) / (v * m + p - 1);
}

int main(int argc, char **argv) {
  int p = 64, v = 4, m = 1024;
  if (argc == 4) {
    p = atoi(argv[1]);
    v = atoi(argv[2]);
    m = atoi(argv[3]);
  } else if (argc != 1) {
    fprintf(stderr, "usage: bench_schedules [P V M]\n");
    return 2;
  }
  char cpu[256], fs[64];
  bt_sys_cpu_model(cpu, sizeof cpu);
  fs_type(fs, sizeof fs);
  printf("bench_schedules: cpu %s, filesystem %s (cwd)\n\n", cpu, fs);

  /* Memory first, on a fresh heap: the high-water mark of one full run. */
  long rss0 = maxrss_kb();
  timing_t big, quarter;
  if (time_one("interleaved", p, v, m, 1, &big)) return 1;
  long rss_delta = maxrss_kb() - rss0;
  if (time_one("interleaved", p, v, m, 5, &big)) return 1;
  int mq = m / 4 >= p ? m / 4 : p;
  if (time_one("interleaved", p, v, mq, 5, &quarter)) return 1;
  double tb = big.build + big.validate + big.simulate;
  double tq = quarter.build + quarter.validate + quarter.simulate;
  double scaling = tq > 0 ? tb / tq : 0;
  double want_scaling = (double)big.actions / (double)quarter.actions;

  printf("interleaved p=%d v=%d: best of 5, thread CPU time\n", p, v);
  printf("%6s %10s %10s %10s %10s %10s %12s\n", "m", "actions", "build s", "validate s",
         "simulate s", "total s", "ns/action");
  printf("%6d %10zu %10.4f %10.4f %10.4f %10.4f %12.1f\n", mq, quarter.actions, quarter.build,
         quarter.validate, quarter.simulate, tq, 1e9 * tq / (double)quarter.actions);
  printf("%6d %10zu %10.4f %10.4f %10.4f %10.4f %12.1f\n", m, big.actions, big.build, big.validate,
         big.simulate, tb, 1e9 * tb / (double)big.actions);
  printf(
      "time ratio %.2f for %.2fx the actions (linear: %.2f, quadratic: %.2f); "
      "peak RSS growth %ld KiB (%.1f bytes/action)\n\n",
      scaling, want_scaling, want_scaling, want_scaling * want_scaling, rss_delta,
      1024.0 * (double)rss_delta / (double)big.actions);

  /* Simulated bubble against the closed form, unit costs. */
  static const struct {
    const char *name;
    int p, v, m;
  } sizes[] = {
      {"gpipe", 4, 1, 8},          {"gpipe", 16, 1, 64},      {"1f1b", 4, 1, 8},
      {"1f1b", 8, 1, 32},          {"1f1b", 32, 1, 128},      {"zb-h1", 4, 1, 8},
      {"zb-h1", 8, 1, 32},         {"zb-h1", 32, 1, 128},     {"interleaved", 4, 2, 8},
      {"interleaved", 8, 2, 32},   {"interleaved", 8, 4, 36}, {"interleaved", 2, 3, 5},
      {"interleaved", 32, 4, 128}, {"zb-v", 4, 2, 8},         {"zb-v", 8, 2, 5},
      {"zb-v", 32, 2, 128},        {"dualpipev", 4, 2, 8},    {"dualpipev", 8, 2, 17},
      {"dualpipev", 32, 2, 128},
  };
  double rmin = 0, rmax = 0;
  printf("%-12s %4s %3s %5s %14s %14s %10s\n", "schedule", "p", "v", "m", "simulated",
         "closed form", "ratio");
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    timing_t t;
    if (time_one(sizes[i].name, sizes[i].p, sizes[i].v, sizes[i].m, 1, &t)) return 1;
    double pp = sizes[i].p, vv = sizes[i].v, mm = sizes[i].m;
    double closed = closed_form(sizes[i].name, pp, vv, mm);
    double ratio = t.bubble / closed;
    if (i == 0 || ratio < rmin) rmin = ratio;
    if (i == 0 || ratio > rmax) rmax = ratio;
    printf("%-12s %4d %3d %5d %14.10f %14.10f %10.6f\n", sizes[i].name, sizes[i].p, sizes[i].v,
           sizes[i].m, t.bubble, closed, ratio);
  }

  /* The V schedules at p = 64, m = 1024 (the default size), 2 chunks. */
  const char *vnames[] = {"zb-v", "dualpipev"};
  timing_t vt[2];
  printf("\n%-10s %4s %5s %10s %10s %10s %10s %10s %12s %12s\n", "V", "p", "m", "actions", "build s",
         "validate s", "simulate s", "ns/action", "bubble", "closed form");
  for (int i = 0; i < 2; i++) {
    if (time_one(vnames[i], p, 2, m, 3, &vt[i])) return 1;
    double tt = vt[i].build + vt[i].validate + vt[i].simulate;
    printf("%-10s %4d %5d %10zu %10.4f %10.4f %10.4f %10.1f %12.10f %12.10f\n", vnames[i], p, m, vt[i].actions,
           vt[i].build, vt[i].validate, vt[i].simulate, 1e9 * tt / (double)vt[i].actions, vt[i].bubble,
           closed_form(vnames[i], p, 2, m));
  }

  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "bench", "schedules");
  bt_json_kstr(&j, "cpu", cpu);
  bt_json_kstr(&j, "filesystem", fs);
  bt_json_kint(&j, "p", p);
  bt_json_kint(&j, "v", v);
  bt_json_kint(&j, "m", m);
  bt_json_kint(&j, "actions", (int64_t)big.actions);
  bt_json_knum(&j, "build_s", big.build);
  bt_json_knum(&j, "validate_s", big.validate);
  bt_json_knum(&j, "simulate_s", big.simulate);
  bt_json_kint(&j, "maxrss_delta_kib", rss_delta);
  bt_json_knum(&j, "ns_per_action", 1e9 * tb / (double)big.actions);
  bt_json_knum(&j, "ns_per_action_quarter_m", 1e9 * tq / (double)quarter.actions);
  bt_json_knum(&j, "time_ratio_vs_quarter_m", scaling);
  bt_json_knum(&j, "action_ratio_vs_quarter_m", want_scaling);
  bt_json_knum(&j, "bubble_ratio_min", rmin);
  bt_json_knum(&j, "bubble_ratio_max", rmax);
  for (int i = 0; i < 2; i++) {
    bt_json_key(&j, vnames[i]);
    bt_json_obj_begin(&j);
    bt_json_kint(&j, "actions", (int64_t)vt[i].actions);
    bt_json_knum(&j, "build_s", vt[i].build);
    bt_json_knum(&j, "validate_s", vt[i].validate);
    bt_json_knum(&j, "simulate_s", vt[i].simulate);
    bt_json_knum(&j, "bubble_fraction", vt[i].bubble);
    bt_json_knum(&j, "closed_form", closed_form(vnames[i], p, 2, m));
    bt_json_obj_end(&j);
  }
  bt_json_obj_end(&j);
  printf("\n%s\n", bt_json_cstr(&j));
  bt_json_free(&j);
  return 0;
}
