/* cmd_run.c - `baton run`: parses the command line, spawns the pipeline
 * through the supervisor (launcher/supervisor.h) and turns its result into
 * the exit code.
 *
 * Not here: the process handling (supervisor.c) and the worker itself.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/error.h"
#include "common/log.h"
#include "common/parse.h"
#include "launcher/commands.h"
#include "launcher/plan.h"
#include "launcher/supervisor.h"
#include "schedules/csv.h"

/* The default of a flag of the shared table, as its text. */
static const char *flag_default(const char *name) {
  size_t n;
  const bt_config_flag_t *t = bt_config_flags(&n);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(t[i].name, name)) return t[i].def;
  return "?";
}

static void usage(FILE *f) {
  char flags[8192];
  fprintf(f,
          "usage: baton run --stages P [options] [-- extra worker arguments]\n"
          "\n"
          "Trains with one worker process per pipeline stage, supervised. The result\n"
          "is bit-identical to `baton train` with the same model options.\n"
          "\n"
          "model options (shared with `baton train`; same defaults):\n");
  bt_config_help(BT_CONFIG_MODEL, flags, sizeof flags);
  fputs(flags, f);
  fprintf(f,
          "\npipeline options:\n"
          "  --stages P              worker processes (pipeline stages), 1..%d\n"
          "  --chunks V              virtual stages per worker (default 1)\n"
          "  --schedule S            gpipe, 1f1b, interleaved, zb-h1 or a CSV file\n"
          "                          (default: interleaved when --chunks > 1, else 1f1b)\n"
          "  --layout N,N,...        layers per virtual stage (default: balanced by cost)\n"
          "  --steps N               optimizer steps (default %s)\n"
          "  --backend S             cpu (default; the socket transport moves host memory)\n"
          "\nsupervisor options:\n"
          "  --hash                  print `hash <32 hex>` of the final parameters last\n"
          "  --metrics FILE          JSON lines per step (step, loss, tokens_per_s, ...)\n"
          "  --trace FILE            Chrome trace JSON of every action on every stage\n"
          "  --events FILE           JSON lines: spawns, readiness, failures, stops, the end\n"
          "  --ckpt-dir DIR          checkpoint directory, passed to the workers\n"
          "  --grace S               seconds between STOP and SIGKILL (default 5)\n"
          "  --heartbeat-timeout S   kill a worker silent this long (default 10)\n"
          "  --progress-timeout S    kill a worker that beats but finishes no action\n"
          "                          this long (default 60; 3x until its first step)\n"
          "  --start-timeout S       every stage ready within S (default 120)\n"
          "  --worker-cmd PROG       run PROG (no shell) instead of `baton worker`\n"
          "  --no-progress           no progress lines\n"
          "\n"
          "Exit codes: 0 done, 1 a worker failed (the message names the stage),\n"
          "2 bad usage (nothing started), 128+N stopped by signal N (130 SIGINT,\n"
          "143 SIGTERM, 138 SIGUSR1).\n",
          BT_MAX_STAGES, flag_default("steps"));
}

static int parse_seconds(const char *flag, const char *v, double lo, double *out) {
  if (bt_parse_double(v, lo, 1e7, out) < 0) {
    fprintf(stderr, "baton run: %s: expected seconds in [%g, 1e7], got '%s'\n", flag, lo, v);
    return BT_EARG;
  }
  return 0;
}

/* Everything `baton run` decided: the configuration, the worker command
 * line and the environment of each stage. */
typedef struct {
  bt_config_t cfg;
  bt_sup_opts_t o;
  const char *worker_cmd;
  char **fwd;
  int nfwd;
  int given_schedule, given_stages, given_chunks, given_mb;
  const char *csv_arg;     /* --schedule FILE as given */
  char csv_path[PATH_MAX]; /* its absolute path (the workers' cwd may differ) */
  char csv_env[PATH_MAX + 32];
} run_args_t;

static int parse_args(int argc, char **argv, run_args_t *a) {
  char err[512];
  bt_config_defaults(&a->cfg);
  bt_sup_opts_default(&a->o);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i], *v = NULL;
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
    if (!strcmp(arg, "--")) {
      a->fwd = argv + i + 1;
      a->nfwd = argc - i - 1;
      break;
    }
    if (!strcmp(arg, "--hash")) {
      a->o.want_hash = 1;
      continue;
    }
    if (!strcmp(arg, "--no-progress")) {
      a->o.progress = 0;
      continue;
    }
    if (strncmp(arg, "--", 2)) {
      fprintf(stderr, "baton run: unexpected argument '%s' (try `baton run --help`)\n", arg);
      return 2;
    }
    /* --flag=value or --flag value */
    char name[64];
    const char *eq = strchr(arg, '=');
    size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
    if (nl >= sizeof name) nl = sizeof name - 1;
    memcpy(name, arg, nl);
    name[nl] = 0;
    int known = bt_config_has_flag(BT_CONFIG_ALL, name) || !strcmp(name, "--metrics") ||
                !strcmp(name, "--trace") || !strcmp(name, "--events") || !strcmp(name, "--ckpt-dir") || !strcmp(name, "--worker-cmd") ||
                !strcmp(name, "--grace") || !strcmp(name, "--heartbeat-timeout") ||
                !strcmp(name, "--progress-timeout") || !strcmp(name, "--start-timeout");
    if (!known) {
      fprintf(stderr, "baton run: unknown option '%s' (try `baton run --help`)\n", name);
      return 2;
    }
    if (eq) v = eq + 1;
    else if (i + 1 < argc) v = argv[++i];
    else {
      fprintf(stderr, "baton run: %s needs a value\n", name);
      return 2;
    }
    if (!strcmp(name, "--metrics")) a->o.metrics_path = v;
    else if (!strcmp(name, "--events")) a->o.events_path = v;
    else if (!strcmp(name, "--trace")) a->o.trace_path = v;
    else if (!strcmp(name, "--ckpt-dir")) a->o.ckpt_dir = v;
    else if (!strcmp(name, "--worker-cmd")) a->worker_cmd = v;
    else if (!strcmp(name, "--grace")) {
      if (parse_seconds(name, v, 0, &a->o.grace_s) < 0) return 2;
    } else if (!strcmp(name, "--heartbeat-timeout")) {
      if (parse_seconds(name, v, 0.05, &a->o.heartbeat_timeout_s) < 0) return 2;
    } else if (!strcmp(name, "--progress-timeout")) {
      if (parse_seconds(name, v, 0.05, &a->o.progress_timeout_s) < 0) return 2;
    } else if (!strcmp(name, "--start-timeout")) {
      if (parse_seconds(name, v, 0.05, &a->o.start_timeout_s) < 0) return 2;
    } else if (!strcmp(name, "--schedule") && !bt_plan_is_builder(v)) {
      /* A CSV path does not fit the configuration's schedule name: the
       * configuration says "csv", the path travels on its own. */
      a->csv_arg = v;
      a->given_schedule = 1;
      snprintf(a->cfg.run.schedule, sizeof a->cfg.run.schedule, "csv");
    } else {
      if (bt_config_flag(&a->cfg, BT_CONFIG_ALL, name, v, err, sizeof err) < 0) {
        fprintf(stderr, "baton run: %s\n", err);
        return 2;
      }
      a->given_schedule |= !strcmp(name, "--schedule");
      a->given_stages |= !strcmp(name, "--stages");
      a->given_chunks |= !strcmp(name, "--chunks");
      a->given_mb |= !strcmp(name, "--microbatches");
    }
  }
  return 0;
}

/* A CSV schedule names its own worker, chunk and micro-batch counts: they
 * fill what the command line left out and must agree with what it gave. */
static int adopt_csv_counts(run_args_t *a) {
  bt_run_config_t *r = &a->cfg.run;
  char why[512] = "";
  bt_schedule_t s;
  if (!realpath(a->csv_arg, a->csv_path)) {
    fprintf(stderr, "baton run: --schedule %s: not a schedule name (%s) nor a readable CSV file: %s\n",
            a->csv_arg, "gpipe, 1f1b, interleaved, zb-h1", strerror(errno));
    return 2;
  }
  if (bt_sched_csv_read(a->csv_path, &s, why, sizeof why) < 0) {
    fprintf(stderr, "baton run: --schedule %s: %s\n", a->csv_arg, why);
    return 2;
  }
  int rc = 0;
  if ((a->given_stages && s.p != r->stages) || (a->given_chunks && s.v != r->chunks) ||
      (a->given_mb && s.m != a->cfg.model.microbatches)) {
    fprintf(stderr,
            "baton run: --schedule %s has %d workers, %d chunks and %d micro-batches; the command line "
            "says %d, %d, %d\n",
            a->csv_arg, s.p, s.v, s.m, r->stages, r->chunks, a->cfg.model.microbatches);
    rc = 2;
  } else {
    r->stages = s.p;
    r->chunks = s.v;
    a->cfg.model.microbatches = s.m;
    snprintf(a->csv_env, sizeof a->csv_env, "BATON_SCHEDULE_CSV=%s", a->csv_path);
  }
  bt_sched_free(&s);
  return rc;
}

/* The worker's flags: every setting of the shared table as --key=value, so
 * the worker parses the very configuration we validated. */
static char **worker_flags(const bt_config_t *cfg, int *n) {
  size_t len = bt_config_to_text(cfg, BT_CONFIG_ALL, NULL, 0);
  char *text = malloc(len + 1);
  char **out = NULL;
  int k = 0, lines = 0;
  if (!text) return NULL;
  bt_config_to_text(cfg, BT_CONFIG_ALL, text, len + 1);
  for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
  out = calloc((size_t)lines + 1, sizeof *out);
  for (char *line = text, *nl; out && (nl = strchr(line, '\n')); line = nl + 1) {
    *nl = 0;
    char *eq = strchr(line, '=');
    if (!eq) continue;
    *eq = 0;
    int is_flag = bt_config_has_flag(BT_CONFIG_ALL, line);
    *eq = '=';
    if (is_flag && asprintf(&out[k], "--%s", line) >= 0) k++;
  }
  free(text);
  *n = k;
  return out;
}

static int out_of_memory(void) {
  fprintf(stderr, "baton run: out of memory\n");
  return BT_SUP_EXIT_FAILED;
}

int bt_cmd_run(int argc, char **argv) {
  run_args_t *a = calloc(1, sizeof *a);
  if (!a) {
    fprintf(stderr, "baton run: out of memory\n");
    return BT_SUP_EXIT_FAILED;
  }
  int rc = BT_SUP_EXIT_USAGE, nflags = 0, *first = NULL, *last = NULL;
  char **flags = NULL, **wargv = NULL, **layers = NULL;
  char err[1024], exe[PATH_MAX];
  bt_schedule_t sched;
  memset(&sched, 0, sizeof sched);
  int prc = parse_args(argc, argv, a);
  if (prc == 1) {
    usage(stdout);
    rc = 0;
    goto out;
  }
  if (prc) goto out;
  bt_config_t *cfg = &a->cfg;
  if (a->csv_arg) {
    if (adopt_csv_counts(a)) goto out;
  } else if (!a->given_stages) {
    fprintf(stderr, "baton run: --stages is required (try `baton run --help`)\n");
    goto out;
  }
  if (!a->given_schedule)
    snprintf(cfg->run.schedule, sizeof cfg->run.schedule, "%s", cfg->run.chunks > 1 ? "interleaved" : "1f1b");
  if (cfg->run.stages > BT_MAX_STAGES) {
    fprintf(stderr, "baton run: --stages %d: at most %d\n", cfg->run.stages, BT_MAX_STAGES);
    goto out;
  }
  if (bt_config_finish(cfg, err, sizeof err) < 0) {
    fprintf(stderr, "baton run: %s\n", err);
    goto out;
  }
  /* Output files are checked now: a typo must not cost a whole run. */
  const char *outputs[][2] = {
      {"--metrics", a->o.metrics_path}, {"--trace", a->o.trace_path}, {"--events", a->o.events_path}};
  for (size_t i = 0; i < 3; i++) {
    if (!outputs[i][1]) continue;
    FILE *f = fopen(outputs[i][1], "w");
    if (!f) {
      fprintf(stderr, "baton run: %s %s: %s\n", outputs[i][0], outputs[i][1], strerror(errno));
      goto out;
    }
    fclose(f);
  }
  if (strcmp(cfg->run.backend, "cpu")) {
    /* The only transport is the socket one, which carries host memory. */
    fprintf(stderr, "baton run: --backend %s: pipelines run on the cpu backend only (socket transport)\n",
            cfg->run.backend);
    goto out;
  }
  int p = cfg->run.stages, v = cfg->run.chunks, nv = p * v;
  first = calloc((size_t)nv, sizeof *first);
  last = calloc((size_t)nv, sizeof *last);
  layers = calloc((size_t)p, sizeof *layers);
  if (!first || !last || !layers) {
    rc = out_of_memory();
    goto out;
  }
  if (bt_plan_layout(cfg, first, last, err, sizeof err) < 0) {
    fprintf(stderr, "baton run: %s\n", err);
    goto out;
  }
  if (bt_plan_schedule(cfg, a->csv_arg ? a->csv_path : NULL, &sched, err, sizeof err) < 0) {
    fprintf(stderr, "baton run: %s\n", err);
    goto out;
  }
  /* The resolved layout travels as explicit counts: the worker then needs
   * no cost model to agree with ours. */
  size_t at = 0;
  for (int k = 0; k < nv && at < sizeof cfg->run.layout; k++)
    at += (size_t)snprintf(cfg->run.layout + at, sizeof cfg->run.layout - at, "%s%d", k ? "," : "",
                           last[k] - first[k] + 1);
  if (at >= sizeof cfg->run.layout) {
    fprintf(stderr, "baton run: %d virtual stages: the layout does not fit the configuration's %zu bytes\n", nv,
            sizeof cfg->run.layout);
    goto out;
  }
  for (int s = 0; s < p; s++) {
    char buf[1024];
    size_t n = 0;
    for (int c = 0; c < v && n < sizeof buf; c++)
      n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%d-%d", c ? "," : "", first[c * p + s], last[c * p + s]);
    if (!(layers[s] = strdup(buf))) {
      rc = out_of_memory();
      goto out;
    }
  }
  if (!(flags = worker_flags(cfg, &nflags))) {
    rc = out_of_memory();
    goto out;
  }
  wargv = calloc((size_t)(nflags + a->nfwd) + 3, sizeof *wargv);
  if (!wargv) {
    rc = out_of_memory();
    goto out;
  }
  int k = 0;
  if (a->worker_cmd) {
    wargv[k++] = (char *)a->worker_cmd;
  } else {
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) {
      fprintf(stderr, "baton run: cannot find the baton executable: %s\n", strerror(errno));
      rc = BT_SUP_EXIT_FAILED;
      goto out;
    }
    exe[n] = 0;
    wargv[k++] = exe;
    wargv[k++] = "worker";
  }
  for (int i = 0; i < nflags; i++) wargv[k++] = flags[i];
  for (int i = 0; i < a->nfwd; i++) wargv[k++] = a->fwd[i];
  wargv[k] = NULL;

  bt_sup_opts_t *o = &a->o;
  o->nstages = (uint32_t)p;
  o->chunks = (uint32_t)v;
  o->worker_argv = wargv;
  o->stage_layers = (const char *const *)layers;
  const char *extra_env[] = {a->csv_env, NULL};
  if (a->csv_arg) o->extra_env = extra_env;
  o->first_step = 1;
  o->last_step = cfg->run.steps;
  /* A closed stdout must not kill the supervisor mid-job with children
   * left behind; write errors are ignored instead. */
  signal(SIGPIPE, SIG_IGN);
  bt_sup_result_t res;
  int src = bt_supervisor_run(o, &res);
  if (src < 0) {
    fprintf(stderr, "baton run: %s\n", bt_strerror(src));
    rc = src == BT_EARG ? BT_SUP_EXIT_USAGE : BT_SUP_EXIT_FAILED;
    goto out;
  }
  rc = res.exit_code;
  /* A failed stage was already reported with its stderr tail; a stop or a
   * supervisor error gets its one line here. */
  if (rc != BT_SUP_EXIT_OK && res.failed_stage < 0 && res.reason[0])
    fprintf(stderr, "baton run: %s\n", res.reason);
  if (rc == BT_SUP_EXIT_OK && res.have_hash) {
    char hex[33];
    bt_hash_hex(res.hash, hex);
    printf("hash %s\n", hex);
    fflush(stdout);
  }
out:
  for (int i = 0; flags && i < nflags; i++) free(flags[i]);
  free(flags);
  for (int i = 0; layers && i < a->cfg.run.stages; i++) free(layers[i]);
  free(layers);
  free(wargv);
  free(first);
  free(last);
  bt_sched_free(&sched);
  free(a);
  return rc;
}
