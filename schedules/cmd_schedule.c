/* cmd_schedule.c - `baton schedule`: build, validate, simulate and draw a
 * pipeline schedule without running anything, or draw a real run's trace.
 *
 * Three sources: a named builder (--schedule), a PyTorch-style CSV
 * (--csv-in), or a Chrome trace written by a worker (--from-trace). The
 * first two are validated and simulated with the worker's communication
 * rule; a trace is measured as it ran. Output: a grid and a summary, or
 * with --json exactly one JSON object on stdout. Bad input of any kind is
 * one line on stderr and exit code 2.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/json.h"
#include "common/parse.h"
#include "schedules/cmd.h"
#include "schedules/csv.h"
#include "schedules/render.h"
#include "schedules/check.h"
#include "schedules/schedule.h"
#include "schedules/sim.h"
#include "schedules/trace.h"

#define GRID_MAX_COLS 160
#define MAX_STAGE_COSTS 64

static void usage(FILE *f) {
  fprintf(f,
          "usage: baton schedule --schedule NAME --stages P [--chunks V] --microbatches M\n"
          "                      [--costs F,B,I,W[,T]] [--stage-cost K:F,B,I,W]...\n"
          "                      [--csv-out FILE [--csv-notation N] [--comms]] [--svg FILE] [--json]\n"
          "       baton schedule --csv-in FILE [--skip-unsupported] [--stages P] [--chunks V]\n"
          "                      [--microbatches M] [--costs F,B,I,W[,T]] [--stage-cost K:F,B,I,W]...\n"
          "                      [--csv-out FILE [--csv-notation N] [--comms]] [--svg FILE] [--json]\n"
          "       baton schedule --from-trace FILE [--svg FILE] [--json]\n"
          "\n"
          "Builds (or reads) a pipeline schedule, checks it, simulates it with the\n"
          "workers' communication rule and prints a grid and a summary.\n"
          "\n"
          "  --schedule NAME      gpipe, 1f1b, interleaved (interleaved 1F1B), zb-h1, zb-v\n"
          "                       or dualpipev (the last two in a V placement)\n"
          "  --stages P           pipeline stages (workers), >= 1\n"
          "  --chunks V           chunks per stage: 1, or >= 2 for interleaved, 2 for zb-v\n"
          "                       and dualpipev (default 1, 2 for those three)\n"
          "  --microbatches M     micro-batches per step: >= P; zb-v any, dualpipev >= 2P\n"
          "  --costs F,B,I,W[,T]  time of one action of each type (per chunk) and of one\n"
          "                       transfer between workers (default 1,2,1,1,0)\n"
          "  --stage-cost K:F,B,I,W  the costs of virtual stage K alone (K a number or\n"
          "                       'last'), e.g. a heavy embedding or loss; repeatable\n"
          "  --csv-in FILE        read the schedule from PyTorch's compute_only CSV (one\n"
          "                       row per worker, empty cell = idle slot); stages, chunks\n"
          "                       and micro-batches are inferred and must match if given\n"
          "  --csv-out FILE       write the schedule as such a CSV\n"
          "  --csv-notation N     current (F I W B, the default) or earlier (F, B = input\n"
          "                       half, W, BW = full backward) for --csv-out; --csv-in\n"
          "                       detects the notation and refuses a file mixing both\n"
          "  --comms              --csv-out also writes SEND_F/RECV_F/SEND_B/RECV_B cells\n"
          "                       (PyTorch's _comms files; --csv-in checks them if present)\n"
          "  --skip-unsupported   --csv-in drops UNSHARD, RESHARD and REDUCE_GRAD cells\n"
          "                       with a warning instead of refusing the file\n"
          "  --from-trace FILE    draw and measure a real run's Chrome trace (--trace of\n"
          "                       `baton run`): complete events named like 2F0, tid = worker\n"
          "  --svg FILE           draw the timeline as SVG\n"
          "  --json               print one JSON object instead of the grid and summary\n"
          "  --help               this text\n"
          "\n"
          "exit codes: 0 done, 2 bad arguments or a schedule that is malformed,\n"
          "invalid or deadlocks (the reason is one line on stderr), 1 an output file\n"
          "could not be written.\n");
}

typedef struct {
  const char *name, *csv_in, *csv_out, *svg, *trace;
  int p, v, m;
  int has_costs, json;
  int comms, notation, given_notation, skip_unsupported; /* CSV options */
  bt_sim_costs_t costs;
  int nstage; /* --stage-cost overrides */
  struct {
    int k; /* virtual stage, -1 for the last */
    double c[BT_ACT_NTYPES];
  } stage[MAX_STAGE_COSTS];
  double *stage_table; /* V·4 costs once the schedule is known, or NULL */
} opts_t;

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "baton schedule: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 2;
}

/* 0, or the exit code 2 after a one-line message. -1 means --help. */
static int parse_args(int argc, char **argv, opts_t *o) {
  memset(o, 0, sizeof *o);
  o->p = o->v = o->m = -1;
  bt_sim_costs_default(&o->costs);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *val = NULL;
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return -1;
    if (!strcmp(arg, "--json")) {
      o->json = 1;
      continue;
    }
    if (!strcmp(arg, "--comms")) {
      o->comms = 1;
      continue;
    }
    if (!strcmp(arg, "--skip-unsupported")) {
      o->skip_unsupported = 1;
      continue;
    }
    static const char *const with_value[] = {
        "--schedule", "--stages",  "--chunks", "--microbatches", "--costs", "--stage-cost",
        "--csv-in",   "--csv-out", "--svg",    "--from-trace",   "--csv-notation", NULL};
    size_t flen = strcspn(arg, "=");
    int known = 0;
    for (int k = 0; with_value[k]; k++)
      if (strlen(with_value[k]) == flen && !strncmp(arg, with_value[k], flen)) known = 1;
    if (!known) return bad("unknown option '%s' (see --help)", arg);
    char flag[32];
    snprintf(flag, sizeof flag, "%.*s", (int)flen, arg);
    if (arg[flen] == '=')
      val = arg + flen + 1;
    else if (i + 1 < argc)
      val = argv[++i];
    else
      return bad("%s needs a value", flag);
    if (!strcmp(flag, "--schedule")) {
      o->name = val;
    } else if (!strcmp(flag, "--csv-in")) {
      o->csv_in = val;
    } else if (!strcmp(flag, "--csv-out")) {
      o->csv_out = val;
    } else if (!strcmp(flag, "--csv-notation")) {
      if (!strcmp(val, "current"))
        o->notation = BT_CSV_CURRENT;
      else if (!strcmp(val, "earlier"))
        o->notation = BT_CSV_EARLIER;
      else
        return bad("--csv-notation is current or earlier (got '%s')", val);
      o->given_notation = 1;
    } else if (!strcmp(flag, "--svg")) {
      o->svg = val;
    } else if (!strcmp(flag, "--from-trace")) {
      o->trace = val;
    } else if (!strcmp(flag, "--stage-cost")) {
      const char *colon = strchr(val, ':');
      double c[BT_ACT_NTYPES + 1];
      size_t n = 0;
      int k = -1;
      if (o->nstage == MAX_STAGE_COSTS)
        return bad("at most %d --stage-cost options", MAX_STAGE_COSTS);
      char ks[32];
      snprintf(ks, sizeof ks, "%.*s", colon ? (int)(colon - val) : 0, val);
      if (!colon || (strcmp(ks, "last") && bt_parse_int(ks, 0, INT32_MAX, &k)) ||
          bt_parse_doubles(colon + 1, c, BT_ACT_NTYPES + 1, &n) || n != BT_ACT_NTYPES)
        return bad(
            "--stage-cost wants K:F,B,I,W with K a virtual stage or 'last' (got '%s'); "
            "e.g. --stage-cost last:2,4,2,2",
            val);
      for (int t = 0; t < BT_ACT_NTYPES; t++) {
        if (c[t] <= 0) return bad("--stage-cost costs must be positive: got '%s'", val);
        o->stage[o->nstage].c[t] = c[t];
      }
      o->stage[o->nstage++].k = k;
    } else if (!strcmp(flag, "--costs")) {
      double c[5];
      size_t n = 0;
      if (bt_parse_doubles(val, c, 5, &n) || n < 4)
        return bad(
            "--costs wants F,B,I,W or F,B,I,W,T, finite numbers (got '%s'); e.g. "
            "--costs 1,2,1,1,0",
            val);
      for (size_t k = 0; k < n; k++)
        if (c[k] < 0 || (k < 4 && c[k] <= 0))
          return bad("--costs must be positive (transfer may be 0): got '%s'", val);
      for (int k = 0; k < 4; k++) o->costs.cost[k] = c[k];
      o->costs.transfer = n == 5 ? c[4] : 0;
      o->has_costs = 1;
    } else {
      int *dst = !strcmp(flag, "--stages") ? &o->p : !strcmp(flag, "--chunks") ? &o->v : &o->m;
      int hi = dst == &o->p   ? BT_SCHED_MAX_STAGES
               : dst == &o->v ? BT_SCHED_MAX_CHUNKS
                              : BT_SCHED_MAX_MICROBATCHES;
      if (bt_parse_int(val, 1, hi, dst))
        return bad("%s must be a whole number from 1 to %d (got '%s')", flag, hi, val);
    }
  }
  int sources = !!o->name + !!o->csv_in + !!o->trace;
  if (sources == 0) return bad("give --schedule NAME, --csv-in FILE or --from-trace FILE");
  if (sources > 1) return bad("--schedule, --csv-in and --from-trace are alternatives: give one");
  if (o->trace && (o->p > 0 || o->v > 0 || o->m > 0 || o->has_costs || o->nstage || o->csv_out))
    return bad("--from-trace takes only --svg and --json: the trace has the real times");
  if (o->name) {
    if (o->p < 0) return bad("--schedule needs --stages P");
    if (o->m < 0) return bad("--schedule needs --microbatches M");
    if (o->v < 0)
      o->v = !strcmp(o->name, "interleaved") || !strcmp(o->name, "zb-v") || !strcmp(o->name, "dualpipev") ? 2 : 1;
  }
  if ((o->comms || o->given_notation) && !o->csv_out) return bad("--comms and --csv-notation go with --csv-out FILE");
  if (o->skip_unsupported && !o->csv_in) return bad("--skip-unsupported goes with --csv-in FILE");
  return 0;
}

/* The closed form of DESIGN §3 where it applies: a built schedule with the
 * default unit costs; -1 otherwise. */
static double closed_form(const opts_t *o, const bt_schedule_t *s) {
  bt_sim_costs_t unit;
  bt_sim_costs_default(&unit);
  if (!o->name || o->nstage || memcmp(unit.cost, o->costs.cost, sizeof unit.cost) ||
      o->costs.transfer != 0)
    return -1;
  double p = s->p, m = s->m, v = s->v;
  if (!strcmp(s->name, "zb-h1")) return (p - 1) / (3 * m + p - 1);
  if (!strcmp(s->name, "zb-v") || !strcmp(s->name, "dualpipev")) {
    /* docs/schedules.md: idle p - 1 per worker (zb-v: 2(2p - 1 - m) when
     * more), busy 6m. */
    double idle = p - 1, fill = 2 * (2 * p - 1 - m);
    if (!strcmp(s->name, "zb-v") && fill > idle) idle = fill;
    return idle / (6 * m + idle);
  }
  return (p - 1) / (v * m + p - 1);
}

/* The per-stage cost table: --costs for every virtual stage, then the
 * --stage-cost overrides, which must name a stage the schedule has. */
static int apply_stage_costs(opts_t *o, const bt_schedule_t *s, char *err, size_t errlen) {
  if (!o->nstage) return 0;
  int V = bt_sched_nstages(s);
  o->stage_table = malloc((size_t)V * BT_ACT_NTYPES * sizeof *o->stage_table);
  if (!o->stage_table) return -ENOMEM;
  for (int k = 0; k < V; k++)
    memcpy(o->stage_table + (size_t)k * BT_ACT_NTYPES, o->costs.cost, sizeof o->costs.cost);
  for (int i = 0; i < o->nstage; i++) {
    int k = o->stage[i].k < 0 ? V - 1 : o->stage[i].k;
    if (k >= V) {
      snprintf(err, errlen,
               "--stage-cost names virtual stage %d, but the schedule has %d "
               "(0..%d)",
               k, V, V - 1);
      return BT_EARG;
    }
    memcpy(o->stage_table + (size_t)k * BT_ACT_NTYPES, o->stage[i].c, sizeof o->stage[i].c);
  }
  o->costs.stage_cost = o->stage_table;
  return 0;
}

static int write_svg(const char *path, const bt_box_t *b, size_t n, const bt_render_opts_t *ro) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "baton schedule: cannot write %s: %s\n", path, strerror(errno));
    return 1;
  }
  int rc = bt_render_svg(f, b, n, ro);
  if (fclose(f) != 0 && !rc) rc = -errno;
  if (rc) {
    fprintf(stderr, "baton schedule: cannot write %s: %s\n", path, bt_strerror(rc));
    return 1;
  }
  return 0;
}

static void print_summary(const bt_sim_result_t *r, double closed, const char *unit) {
  printf("makespan %.6g%s%s, bubble fraction %.6g", r->makespan, *unit ? " " : "", unit,
         r->bubble_fraction);
  if (closed >= 0) printf(" (closed form %.6g)", closed);
  printf("\n%-6s %12s %12s %6s\n", "worker", "busy", "idle", "peak activations");
  for (int w = 0; w < r->p; w++)
    printf("%-6d %12.6g %12.6g %6d\n", w, r->busy[w], r->idle[w], r->peak[w]);
}

static void json_common(bt_json_t *j, const char *name, int p, int v, int m, size_t n,
                        const bt_sim_result_t *r) {
  bt_json_kstr(j, "schedule", name);
  bt_json_kint(j, "stages", p);
  bt_json_kint(j, "chunks", v);
  bt_json_kint(j, "microbatches", m);
  bt_json_kint(j, "actions", (int64_t)n);
  bt_json_knum(j, "makespan", r->makespan);
  bt_json_knum(j, "bubble_fraction", r->bubble_fraction);
  bt_json_key(j, "busy");
  bt_json_arr_begin(j);
  for (int w = 0; w < p; w++) bt_json_num(j, r->busy[w]);
  bt_json_arr_end(j);
  bt_json_key(j, "idle");
  bt_json_arr_begin(j);
  for (int w = 0; w < p; w++) bt_json_num(j, r->idle[w]);
  bt_json_arr_end(j);
  bt_json_key(j, "peak_activations");
  bt_json_arr_begin(j);
  for (int w = 0; w < p; w++) bt_json_int(j, r->peak[w]);
  bt_json_arr_end(j);
}

static int emit_json(bt_json_t *j) {
  if (bt_json_error(j)) {
    fprintf(stderr, "baton schedule: JSON output: %s\n", bt_strerror(bt_json_error(j)));
    return 1;
  }
  printf("%s\n", bt_json_cstr(j));
  return 0;
}

static int run_trace(const opts_t *o) {
  bt_trace_t t;
  bt_sim_result_t r;
  bt_json_t j;
  char err[512];
  int code = 0;
  memset(&r, 0, sizeof r);
  bt_json_init(&j);
  if (bt_trace_read(o->trace, &t, err, sizeof err)) {
    fprintf(stderr, "baton schedule: %s: %s\n", o->trace, err);
    code = 2;
    goto done;
  }
  int rc = bt_sim_measure(t.boxes, t.n, t.p, &r);
  if (rc) {
    fprintf(stderr, "baton schedule: %s: %s\n", o->trace, bt_strerror(rc));
    code = 2;
    goto done;
  }
  char title[256];
  snprintf(title, sizeof title, "trace %s: %d workers, %zu actions, bubble fraction %.4f", o->trace,
           t.p, t.n, r.bubble_fraction);
  /* A trace of a V run (every action on the worker the V gives its stage)
   * is drawn as one. */
  int vshape = t.v == 2 && t.p > 1;
  for (size_t i = 0; vshape && i < t.n; i++) {
    int k = t.boxes[i].act.stage;
    vshape = t.boxes[i].worker == (k < t.p ? k : 2 * t.p - 1 - k);
  }
  bt_render_opts_t ro = {.p = t.p, .v = t.v, .title = title, .unit = "us", .vshape = vshape};
  if (o->svg && (code = write_svg(o->svg, t.boxes, t.n, &ro))) goto done;
  if (o->json) {
    bt_json_obj_begin(&j);
    json_common(&j, "trace", t.p, t.v, t.m, t.n, &r);
    bt_json_kstr(&j, "time_unit", "us");
    bt_json_obj_end(&j);
    code = emit_json(&j);
  } else {
    printf("trace %s: %d workers, %d chunks, %d micro-batches, %zu actions\n", o->trace, t.p, t.v,
           t.m, t.n);
    bt_render_grid(stdout, t.boxes, t.n, &ro, GRID_MAX_COLS);
    print_summary(&r, -1, "us");
  }
done:
  bt_json_free(&j);
  bt_sim_result_free(&r);
  bt_trace_free(&t);
  return code;
}

static int run_schedule(opts_t *o) {
  bt_schedule_t s;
  bt_sim_result_t r;
  bt_box_t *boxes = NULL;
  size_t nb = 0;
  bt_json_t j;
  char err[1024];
  int code = 0, rc;
  memset(&s, 0, sizeof s);
  memset(&r, 0, sizeof r);
  bt_json_init(&j);
  const char *src = o->csv_in ? o->csv_in : o->name;
  if (o->csv_in) {
    bt_csv_opts_t co = {.skip_unsupported = o->skip_unsupported};
    rc = bt_sched_csv_read_opts(o->csv_in, &co, &s, err, sizeof err);
    if (!rc && co.skipped)
      fprintf(stderr, "baton schedule: warning: %s: dropped %d UNSHARD/RESHARD/REDUCE_GRAD cell%s (first at %s)\n",
              o->csv_in, co.skipped, co.skipped == 1 ? "" : "s", co.first_skipped);
    if (!rc) {
      const char *what = NULL;
      int given = 0, got = 0;
      if (o->p > 0 && o->p != s.p)
        what = "stages", given = o->p, got = s.p;
      else if (o->v > 0 && o->v != s.v)
        what = "chunks", given = o->v, got = s.v;
      else if (o->m > 0 && o->m != s.m)
        what = "microbatches", given = o->m, got = s.m;
      if (what) {
        fprintf(stderr, "baton schedule: %s has %d %s but --%s %d was given\n", o->csv_in, got,
                what, what, given);
        code = 2;
        goto done;
      }
    }
  } else {
    rc = bt_sched_build(o->name, o->p, o->v, o->m, &s, err, sizeof err);
  }
  if (!rc) rc = bt_sched_validate(&s, err, sizeof err);
  if (!rc) rc = apply_stage_costs(o, &s, err, sizeof err);
  if (!rc) rc = bt_sim_run(&s, &o->costs, &r, err, sizeof err);
  if (!rc) rc = bt_sim_boxes(&s, &r, &boxes, &nb);
  if (rc) {
    fprintf(stderr, "baton schedule: %s: %s\n", src,
            err[0] && rc != -ENOMEM ? err : bt_strerror(rc));
    code = rc == -ENOMEM ? 1 : 2;
    goto done;
  }
  char mb_err[512], ch_err[512];
  int mb_ok = bt_sched_check_microbatch_order(&s, mb_err, sizeof mb_err);
  int ch_ok = bt_sched_check_channel_order(&s, ch_err, sizeof ch_err);
  double closed = closed_form(o, &s);
  if (o->csv_out) {
    FILE *f = fopen(o->csv_out, "w");
    bt_csv_opts_t wo = {.notation = o->notation, .comms = o->comms};
    int wrc = f ? bt_sched_csv_write_opts(&s, &wo, f) : -errno;
    if (f && fclose(f) != 0 && !wrc) wrc = -errno;
    if (wrc) {
      fprintf(stderr, "baton schedule: cannot write %s: %s\n", o->csv_out, bt_strerror(wrc));
      code = 1;
      goto done;
    }
  }
  char title[256];
  snprintf(title, sizeof title, "%s: %d stages, %d chunk%s, %d micro-batches; bubble fraction %.4f",
           s.name, s.p, s.v, s.v == 1 ? "" : "s", s.m, r.bubble_fraction);
  bt_render_opts_t ro = {.p = s.p, .v = s.v, .title = title, .unit = "", .vshape = bt_sched_is_v(&s)};
  if (o->svg && (code = write_svg(o->svg, boxes, nb, &ro))) goto done;
  if (o->json) {
    bt_json_obj_begin(&j);
    json_common(&j, s.name, s.p, s.v, s.m, nb, &r);
    bt_json_key(&j, "closed_form_bubble_fraction");
    if (closed >= 0)
      bt_json_num(&j, closed);
    else
      bt_json_null(&j);
    bt_json_key(&j, "costs");
    bt_json_obj_begin(&j);
    bt_json_knum(&j, "F", o->costs.cost[BT_ACT_F]);
    bt_json_knum(&j, "B", o->costs.cost[BT_ACT_B]);
    bt_json_knum(&j, "I", o->costs.cost[BT_ACT_I]);
    bt_json_knum(&j, "W", o->costs.cost[BT_ACT_W]);
    bt_json_knum(&j, "transfer", o->costs.transfer);
    bt_json_obj_end(&j);
    bt_json_kbool(&j, "microbatch_order", mb_ok);
    bt_json_kbool(&j, "channel_order", ch_ok);
    bt_json_obj_end(&j);
    code = emit_json(&j);
  } else {
    printf("%s: %d stages x %d chunk%s, %d micro-batches, %zu actions; valid\n", s.name, s.p, s.v,
           s.v == 1 ? "" : "s", s.m, nb);
    bt_render_grid(stdout, boxes, nb, &ro, GRID_MAX_COLS);
    print_summary(&r, closed, "");
    printf("gradient accumulation in micro-batch order: %s\n", mb_ok ? "yes" : "NO");
    if (!mb_ok) printf("  %s (baton run refuses this schedule)\n", mb_err);
    printf("every channel received in send order (needed by NCCL): %s\n", ch_ok ? "yes" : "no");
    if (!ch_ok) printf("  %s\n", ch_err);
  }
done:
  bt_json_free(&j);
  free(boxes);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
  return code;
}

int bt_cmd_schedule(int argc, char **argv) {
  opts_t o;
  int rc = parse_args(argc, argv, &o);
  if (rc < 0) {
    usage(stdout);
    return 0;
  }
  if (rc) return rc;
  rc = o.trace ? run_trace(&o) : run_schedule(&o);
  free(o.stage_table);
  return rc;
}
