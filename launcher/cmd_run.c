/* cmd_run.c - `baton run`: parses the command line, takes the checkpoint
 * directory's lock, picks the step to resume from, and runs the job as a
 * series of incarnations through the supervisor (launcher/supervisor.h):
 * after a failure the restart policy (launcher/recovery.h) says whether to
 * respawn, on how many stages, or to give up; the last incarnation's result
 * becomes the exit code (common/exitcodes.h).
 *
 * Not here: the process handling (supervisor.c) and the worker itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/flags.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/error.h"
#include "common/exitcodes.h"
#include "common/fault.h"
#include "common/json.h"
#include "common/log.h"
#include "common/parse.h"
#include "common/workerenv.h"
#include "launcher/cmd.h"
#include "launcher/ending.h"
#include "launcher/plan.h"
#include "launcher/multinode.h"
#include "launcher/recovery.h"
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
          "  --chunks V              virtual stages per worker (default 1; 2, and only 2,\n"
          "                          for zb-v and dualpipev)\n"
          "  --schedule S            gpipe, 1f1b, interleaved, zb-h1, zb-v, dualpipev or a\n"
          "                          CSV file in either PyTorch notation\n"
          "                          (default: interleaved when --chunks > 1, else 1f1b)\n"
          "  --layout N,N,...        layers per virtual stage (default: balanced by cost)\n"
          "  --steps N               optimizer steps (default %s)\n"
          "  --backend S             cpu (default, socket transport) or cuda (NCCL; probed\n"
          "                          with `baton worker --probe cuda` before spawning)\n"
          "\nsupervisor options:\n"
          "  --hash                  print `hash <32 hex>` of the final parameters last\n"
          "  --metrics FILE          JSON lines per step (step, loss, tokens_per_s, ...)\n"
          "  --trace FILE            Chrome trace JSON of every action on every stage\n"
          "  --events FILE           JSON lines: spawns, readiness, failures, stops, the end\n"
          "  --grace S               seconds between STOP and SIGKILL (default 5)\n"
          "  --heartbeat-timeout S   kill a worker silent this long (default 2)\n"
          "  --progress-timeout S    kill a worker that beats but finishes no action\n"
          "                          this long (default 5; 2x until its first step)\n"
          "  --start-timeout S       every stage ready within S (default 120)\n"
          "  --worker-cmd PROG       run PROG (no shell) instead of `baton worker`\n"
          "  --no-progress           no progress lines\n"
          "\ncheckpoints and recovery:\n",
          BT_MAX_STAGES, flag_default("steps"));
  fputs(bt_ckpt_flags_help(), f);
  fprintf(f,
          "                           (`baton run`: PATH is one committed step directory,\n"
          "                           on any stage count; without --ckpt-dir nothing new\n"
          "                           is saved)\n"
          "  --max-restarts N        restarts for the whole job (default 10 with\n"
          "                          --ckpt-dir, else 0: a failure ends the job)\n"
          "  --max-stalled-restarts N  restarts in a row without a new checkpoint\n"
          "                          before giving up (default 3)\n"
          "  --min-stages N          re-form on fewer stages, down to N, when a stage\n"
          "                          fails repeatedly or a node is lost (default:\n"
          "                          --stages, no shrinking; 1 in a multi-node job)\n"
          "  --max-slot-failures N   failures that retire a stage (default 2)\n"
          "  --backoff S             first back-off between restarts (default 0.2,\n"
          "                          doubled each restart, at most 5)\n"
          "  --inject-fault SPEC     KIND@stage=S,step=N[,action=J][,code=X][,ms=M]\n"
          "                          [,at=snapshot|write] (crash, exit, freeze, hang,\n"
          "                          slow, ckpt-die, ckpt-slow);\n"
          "                          repeatable; first incarnation only\n");
  fputs(bt_mn_help(), f);
  fprintf(f,
          "\n"
          "Exit codes: 0 done (or already done), 1 a worker failed and no restart was\n"
          "allowed (the message names the stage), 2 bad usage (nothing started),\n"
          "75 preempted (checkpoint committed: run again to resume), 76 restart\n"
          "budget spent, 77 restarts made no progress, 78 non-finite parameters,\n"
          "79 fewer stages left than --min-stages, 80 finished but the final checkpoint\n"
          "did not commit, 81 (multi-node, a node) lost the coordinator, 82 (multi-node)\n"
          "the rendezvous failed, 128+N killed by a second signal N.\n");
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
#define MAX_MODEL_FLAGS 64

typedef struct {
  bt_config_t cfg;
  bt_sup_opts_t o;
  bt_recovery_opts_t ro;
  bt_ckpt_flags_t ck;        /* --ckpt-dir, --keep, --resume PATH (a committed step directory), ... */
  const char *faults[BT_FAULT_MAX];
  int nfaults;
  char model_flag[MAX_MODEL_FLAGS][64];       /* model flags given, to check against a checkpoint */
  const char *model_value[MAX_MODEL_FLAGS];
  int nmodel_flags;
  const char *worker_cmd;
  char **fwd;
  int nfwd;
  int given_schedule, given_stages, given_chunks, given_mb;
  const char *csv_arg;     /* --schedule FILE as given */
  char csv_path[PATH_MAX]; /* its absolute path (the workers' cwd may differ) */
  char closing[1024];         /* the last line of a job whose final checkpoint did not commit */
  int output_error;           /* a write to --metrics, --events or --trace failed in some incarnation */
  bt_mn_opts_t mn;            /* multi-node flags (launcher/multinode.h) */
  bt_mn_coord_t *coord;       /* rank 0 of a multi-node job: the hub and the placement */
} run_args_t;

static int parse_args(int argc, char **argv, run_args_t *a) {
  char err[512];
  bt_config_defaults(&a->cfg);
  bt_sup_opts_default(&a->o);
  bt_recovery_opts_default(&a->ro);
  a->ro.max_restarts = -1; /* not given: decided once --ckpt-dir is known */
  bt_ckpt_flags_init(&a->ck);
  bt_mn_defaults(&a->mn);
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
    if (!strncmp(arg, "--hash=", 7) || !strncmp(arg, "--no-progress=", 14)) {
      fprintf(stderr, "baton run: %.*s takes no value\n", (int)(strchr(arg, '=') - arg), arg);
      return 2;
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
    int known = bt_config_has_flag(BT_CONFIG_ALL, name) || bt_ckpt_flags_known(name) ||
                !strcmp(name, "--metrics") || !strcmp(name, "--trace") || !strcmp(name, "--events") ||
                !strcmp(name, "--worker-cmd") ||
                !strcmp(name, "--grace") || !strcmp(name, "--heartbeat-timeout") ||
                !strcmp(name, "--progress-timeout") || !strcmp(name, "--start-timeout") ||
                !strcmp(name, "--max-restarts") || !strcmp(name, "--max-stalled-restarts") ||
                !strcmp(name, "--min-stages") || !strcmp(name, "--max-slot-failures") ||
                !strcmp(name, "--backoff") || !strcmp(name, "--inject-fault") || bt_mn_flag_known(name);
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
    if (!strcmp(name, "--layout") && !v[0]) {
      /* "" is the default's spelling inside; given, it is a mistake. */
      fprintf(stderr, "baton run: --layout: empty (give layers per stage, e.g. 3,3, or leave it out)\n");
      return 2;
    }
    if (bt_mn_flag_known(name)) {
      if (bt_mn_flag_parse(&a->mn, name, v)) return 2;
    } else if (!strcmp(name, "--metrics")) a->o.metrics_path = v;
    else if (!strcmp(name, "--events")) a->o.events_path = v;
    else if (!strcmp(name, "--trace")) a->o.trace_path = v;
    else if (!strcmp(name, "--worker-cmd")) a->worker_cmd = v;
    else if (!strcmp(name, "--grace")) {
      if (parse_seconds(name, v, 0, &a->o.grace_s) < 0) return 2;
    } else if (!strcmp(name, "--heartbeat-timeout")) {
      if (parse_seconds(name, v, 0.05, &a->o.heartbeat_timeout_s) < 0) return 2;
    } else if (!strcmp(name, "--progress-timeout")) {
      if (parse_seconds(name, v, 0.05, &a->o.progress_timeout_s) < 0) return 2;
    } else if (!strcmp(name, "--start-timeout")) {
      if (parse_seconds(name, v, 0.05, &a->o.start_timeout_s) < 0) return 2;
    } else if (!strcmp(name, "--backoff")) {
      if (parse_seconds(name, v, 0, &a->ro.backoff_s) < 0) return 2;
    } else if (bt_ckpt_flags_known(name)) {
      if (bt_ckpt_flags_parse(&a->ck, name, v, err, sizeof err)) {
        fprintf(stderr, "baton run: %s\n", err);
        return 2;
      }
    } else if (!strcmp(name, "--max-restarts") || !strcmp(name, "--max-stalled-restarts") ||
               !strcmp(name, "--min-stages") || !strcmp(name, "--max-slot-failures")) {
      int lo = !strcmp(name, "--max-restarts") ? 0 : 1;
      int hi = !strcmp(name, "--min-stages") ? BT_MAX_STAGES : 1000000;
      int *dst = !strcmp(name, "--max-restarts")           ? &a->ro.max_restarts
                 : !strcmp(name, "--max-stalled-restarts") ? &a->ro.max_stalled
                 : !strcmp(name, "--min-stages")           ? &a->ro.min_stages
                                                           : &a->ro.max_slot_failures;
      if (bt_parse_int(v, lo, hi, dst)) {
        fprintf(stderr, "baton run: %s: expected a whole number in [%d, %d], got '%s'\n", name, lo, hi, v);
        return 2;
      }
    } else if (!strcmp(name, "--inject-fault")) {
      bt_fault_t f;
      char why[256] = "";
      if (bt_fault_parse(v, &f, why, sizeof why) < 0) {
        fprintf(stderr, "baton run: --inject-fault %s: %s\n", v, why);
        return 2;
      }
      if (a->nfaults == BT_FAULT_MAX) {
        fprintf(stderr, "baton run: --inject-fault: at most %d faults\n", BT_FAULT_MAX);
        return 2;
      }
      a->faults[a->nfaults++] = v;
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
      if (bt_config_has_flag(BT_CONFIG_MODEL, name) && a->nmodel_flags < MAX_MODEL_FLAGS) {
        snprintf(a->model_flag[a->nmodel_flags], sizeof a->model_flag[0], "%s", name);
        a->model_value[a->nmodel_flags] = v;
        a->nmodel_flags++;
      }
      a->given_schedule |= !strcmp(name, "--schedule");
      a->given_stages |= !strcmp(name, "--stages");
      a->given_chunks |= !strcmp(name, "--chunks");
      a->given_mb |= !strcmp(name, "--microbatches");
    }
  }
  a->o.ckpt_dir = a->ck.dir;
  /* The supervisor sets BATON_DATA_BIND for its workers (and drops an
   * inherited one); on one node it takes the value from its own
   * environment, until the multi-node rendezvous assigns one per node. */
  const char *bind = getenv("BATON_DATA_BIND");
  if (bind && bind[0]) {
    bt_worker_env_t fit;
    if (strlen(bind) >= sizeof fit.data_bind || strpbrk(bind, " \t\n")) {
      fprintf(stderr, "baton run: BATON_DATA_BIND: not a host name or address: '%.64s'\n", bind);
      return 2;
    }
    a->o.data_bind = bind;
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

/* `baton worker --probe BACKEND` in a child, within 60 s: 0 when a worker
 * could create the backend (CUDA: a device and the library), else exit
 * code 2 with the child's one-line reason. The launcher may not link the
 * backends itself (DESIGN.md §1), and a refusal must come before any
 * worker starts. */
static int probe_backend(const char *backend) {
  char exe[PATH_MAX], line[512] = "";
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n < 0) {
    fprintf(stderr, "baton run: cannot find the baton executable: %s\n", strerror(errno));
    return BT_SUP_EXIT_FAILED;
  }
  exe[n] = 0;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return BT_SUP_EXIT_FAILED;
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return BT_SUP_EXIT_FAILED;
  }
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
    }
    dup2(fds[1], 2);
    execl(exe, exe, "worker", "--probe", backend, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  size_t got = 0;
  uint64_t deadline = bt_clock_ns() + 60ull * 1000000000ull;
  int status = 0, timed_out = 0;
  for (;;) {
    uint64_t now = bt_clock_ns();
    if (now >= deadline) {
      timed_out = 1;
      break;
    }
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    int pr = poll(&pfd, 1, (int)((deadline - now) / 1000000 + 1));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t r = read(fds[0], line + got, sizeof line - 1 - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break; /* EOF: the probe is exiting */
    got += (size_t)r;
    if (got == sizeof line - 1) break;
  }
  close(fds[0]);
  if (timed_out) kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  line[got] = 0;
  char *nl = strchr(line, '\n');
  if (nl) *nl = 0;
  if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
  if (timed_out)
    fprintf(stderr, "baton run: --backend %s: the probe did not answer within 60 s\n", backend);
  else if (line[0])
    fprintf(stderr, "baton run: %s\n", line);
  else
    fprintf(stderr, "baton run: --backend %s: not available here\n", backend);
  return BT_SUP_EXIT_USAGE;
}

/* One formation of the job: the plan for cfg->run.stages workers. */
typedef struct {
  int p, v;
  int *first, *last;
  char **flags;
  int nflags;
  char **wargv;
  bt_schedule_t sched;
  char exe[PATH_MAX];
} formation_t;

static void formation_free(formation_t *f) {
  for (int i = 0; f->flags && i < f->nflags; i++) free(f->flags[i]);
  free(f->flags);
  free(f->wargv);
  free(f->first);
  free(f->last);
  bt_sched_free(&f->sched);
  memset(f, 0, sizeof *f);
}

/* Plans cfg->run.stages workers: layout, schedule and the worker command
 * line. Returns 0 or an exit code (2: refused, with one
 * line on stderr). */
static int formation_plan(run_args_t *a, formation_t *f) {
  bt_config_t *cfg = &a->cfg;
  char err[1024];
  memset(f, 0, sizeof *f);
  int p = cfg->run.stages, v = cfg->run.chunks, nv = p * v;
  f->p = p;
  f->v = v;
  f->first = calloc((size_t)nv, sizeof *f->first);
  f->last = calloc((size_t)nv, sizeof *f->last);
  if (!f->first || !f->last) return out_of_memory();
  if (bt_plan_layout(cfg, f->first, f->last, err, sizeof err) < 0) {
    fprintf(stderr, "baton run: %s\n", err);
    return BT_SUP_EXIT_USAGE;
  }
  if (bt_plan_schedule(cfg, a->csv_arg ? a->csv_path : NULL, &f->sched, err, sizeof err) < 0) {
    fprintf(stderr, "baton run: %s\n", err);
    return BT_SUP_EXIT_USAGE;
  }
  /* The resolved layout travels as explicit counts: the worker then needs
   * no cost model to agree with ours. */
  size_t at = 0;
  for (int k = 0; k < nv && at < sizeof cfg->run.layout; k++)
    at += (size_t)snprintf(cfg->run.layout + at, sizeof cfg->run.layout - at, "%s%d", k ? "," : "",
                           f->last[k] - f->first[k] + 1);
  if (at >= sizeof cfg->run.layout) {
    fprintf(stderr, "baton run: %d virtual stages: the layout does not fit the configuration's %zu bytes\n", nv,
            sizeof cfg->run.layout);
    return BT_SUP_EXIT_USAGE;
  }
  if (!(f->flags = worker_flags(cfg, &f->nflags))) return out_of_memory();
  f->wargv = calloc((size_t)(f->nflags + a->nfwd) + 3, sizeof *f->wargv);
  if (!f->wargv) return out_of_memory();
  int k = 0;
  if (a->worker_cmd) {
    f->wargv[k++] = (char *)a->worker_cmd;
  } else {
    ssize_t n = readlink("/proc/self/exe", f->exe, sizeof f->exe - 1);
    if (n < 0) {
      fprintf(stderr, "baton run: cannot find the baton executable: %s\n", strerror(errno));
      return BT_SUP_EXIT_FAILED;
    }
    f->exe[n] = 0;
    f->wargv[k++] = f->exe;
    f->wargv[k++] = "worker";
  }
  for (int i = 0; i < f->nflags; i++) f->wargv[k++] = f->flags[i];
  for (int i = 0; i < a->nfwd; i++) f->wargv[k++] = a->fwd[i];
  f->wargv[k] = NULL;
  return 0;
}

/* The checkpoint's model against the command line: the checkpoint's
 * configuration is adopted, and a model flag given with another value is
 * refused naming both values. Returns 0 or an exit code. */
static int adopt_model(run_args_t *a, const char *text, const char *where) {
  char err[2048] = "";
  const char *names[MAX_MODEL_FLAGS];
  for (int i = 0; i < a->nmodel_flags; i++) names[i] = a->model_flag[i];
  int rc = bt_config_match_checkpoint(&a->cfg, text, names, a->model_value, a->nmodel_flags, err, sizeof err);
  if (rc == BT_ECONFIG) fprintf(stderr, "baton run: %s holds another model: %s\n", where, err);
  else if (rc == BT_EFORMAT) fprintf(stderr, "baton run: %s: %s\n", where, err);
  else if (rc) fprintf(stderr, "baton run: %s\n", err);
  return rc == 0 ? 0 : rc == BT_EFORMAT ? BT_SUP_EXIT_FAILED : BT_SUP_EXIT_USAGE;
}

/* Where the job starts and who it is: the step directory its first
 * incarnation restores ("" for step 0) and the lineage its commits record
 * (checkpoint/lineage.c). Restarts fall back to this start while the job
 * has committed nothing of its own. */
typedef struct {
  char dir[PATH_MAX];
  int64_t step;
  bt_ckpt_lineage_t lin;
} start_t;

typedef struct {
  char *why;
  size_t len;
} first_problem_t;

/* Keeps the first problem, without the step's base name in front of it (the
 * caller names the path as the user gave it). */
static void keep_problem(void *arg, const char *line) {
  first_problem_t *fp = arg;
  if (!fp->why || !fp->len || fp->why[0]) return;
  const char *colon = strstr(line, ": ");
  snprintf(fp->why, fp->len, "%s", colon ? colon + 2 : line);
}

/* --resume PATH with a --ckpt-dir: steps of the directory off PATH's
 * lineage are refused or moved aside (bt_ckpt_resume_settle). Returns an
 * exit code. */
static int settle_conflicts(run_args_t *a, const bt_ckpt_step_t *from) {
  char msg[1024] = "";
  int rc = bt_ckpt_resume_settle(a->o.ckpt_dir, from, a->ck.resume_path, a->ck.move_aside, msg, sizeof msg);
  if (msg[0]) fprintf(stderr, "baton run: %s\n", msg);
  return rc == 0 ? 0 : rc == 1 ? BT_SUP_EXIT_USAGE : BT_SUP_EXIT_FAILED;
}

/* Decides where the job starts (--resume PATH, else the newest committed
 * step of --ckpt-dir that verifies, else step 0) and which job it is: a
 * job continuing its directory keeps its id, `--resume PATH` and a fresh
 * start make a new one. The model comes from the checkpoint (adopt_model).
 * Called with the directory locked. Returns an exit code. */
static int pick_start(run_args_t *a, start_t *s) {
  bt_ckpt_step_t st;
  memset(&st, 0, sizeof st);
  memset(s, 0, sizeof *s);
  s->lin.parent_step = -1;
  int rc = 0, opened = 0;
  const char *where = a->ck.resume_path;
  if (a->ck.resume_path) {
    char why[512] = "";
    first_problem_t fp = {why, sizeof why};
    int orc = bt_ckpt_step_open(a->ck.resume_path, BT_CKPT_CHECK_CRC, &st, keep_problem, &fp);
    if (orc) {
      fprintf(stderr, "baton run: --resume %s: not a committed checkpoint step that verifies: %s\n",
              a->ck.resume_path, why[0] ? why : bt_strerror(orc));
      return BT_SUP_EXIT_USAGE;
    }
    opened = 1;
  } else if (a->o.ckpt_dir) {
    where = a->o.ckpt_dir;
    int prc = bt_ckpt_open_latest(a->o.ckpt_dir, BT_CKPT_CHECK_CRC, &st);
    if (prc && prc != -ENOENT) {
      fprintf(stderr, "baton run: --ckpt-dir %s: %s\n", a->o.ckpt_dir, bt_strerror(prc));
      return BT_SUP_EXIT_FAILED;
    }
    opened = prc == 0;
    if (opened && a->ck.resume == BT_CKPT_RESUME_NEVER) {
      fprintf(stderr, "baton run: --ckpt-dir %s holds step %lld and --resume never was given\n", a->o.ckpt_dir,
              (long long)st.step);
      rc = BT_SUP_EXIT_USAGE;
      goto out;
    }
  }
  if (!opened) {
    bt_ckpt_job_new(s->lin.job);
    return 0;
  }
  /* The model first: a refusal must come before any step is moved. */
  if ((rc = adopt_model(a, st.man.meta.model_config ? st.man.meta.model_config : "", where))) goto out;
  if (a->ck.resume_path && a->o.ckpt_dir && (rc = settle_conflicts(a, &st))) goto out;
  if (!a->ck.resume_path && bt_ckpt_job_valid(st.man.lineage.job))
    snprintf(s->lin.job, sizeof s->lin.job, "%s", st.man.lineage.job); /* the same job goes on */
  else
    bt_ckpt_job_new(s->lin.job);
  snprintf(s->lin.parent_job, sizeof s->lin.parent_job, "%s", st.man.lineage.job);
  s->lin.parent_step = st.step;
  s->step = st.step;
  snprintf(s->dir, sizeof s->dir, "%s", st.dir);
out:
  bt_ckpt_step_close(&st);
  return rc;
}

/* What one failure cost, for the event log and the summary. */
typedef struct {
  int stage, pid, restart;
  char reason[256];
  char tail[4096];
  double detect_s, detect_latency_s, stopped_s, ready_s, resumed_s;
  int64_t lost;
  int respawned;               /* the next incarnation started workers */
} failure_t;

static void job_event_failure(run_args_t *a, const char *name, const failure_t *f, int64_t restore,
                              const bt_recovery_decision_t *d, uint32_t stages) {
  FILE *ev = a->o.events_file; /* the supervisor writes into the same handle */
  if (!ev) return;
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "event", name);
  bt_json_knum(&j, "time_s", f->stopped_s);
  bt_json_kint(&j, "restart", f->restart);
  bt_json_kint(&j, "stage", f->stage);
  bt_json_kint(&j, "pid", f->pid);
  bt_json_kstr(&j, "cause", f->reason);
  bt_json_knum(&j, "detect_s", f->detect_latency_s);
  bt_json_knum(&j, "stop_s", f->stopped_s - f->detect_s);
  bt_json_kint(&j, "restore_step", restore);
  bt_json_kint(&j, "steps_lost", f->lost);
  bt_json_kint(&j, "stages", stages);
  if (d && d->action == BT_RECOVERY_REFORM) bt_json_kint(&j, "retired_stage", d->retire);
  if (d && d->action != BT_RECOVERY_GIVE_UP) bt_json_knum(&j, "backoff_s", d->backoff_s);
  if (d && d->action == BT_RECOVERY_GIVE_UP) {
    bt_json_kint(&j, "exit_code", d->exit_code);
    bt_json_kstr(&j, "why", d->why);
  }
  bt_json_obj_end(&j);
  if (!bt_json_error(&j)) {
    fprintf(ev, "%s\n", bt_json_cstr(&j));
    fflush(ev);
  }
  bt_json_free(&j);
}

/* The account at the end of a job that had failures. */
static void print_summary(const failure_t *f, int n, double end_s) {
  if (n == 0) return;
  double lost_s = 0;
  int64_t steps = 0, dropped = 0;
  int restarts = 0;
  for (int i = 0; i < n; i++) {
    lost_s += (f[i].resumed_s > 0 ? f[i].resumed_s : end_s) - f[i].detect_s + f[i].detect_latency_s;
    /* A restart is a respawn: one stopped during its back-off never ran,
     * and the steps past its checkpoint were dropped, not replayed. */
    restarts += f[i].respawned;
    if (f[i].respawned)
      steps += f[i].lost;
    else
      dropped += f[i].lost;
  }
  char extra[96] = "";
  if (dropped > 0)
    snprintf(extra, sizeof extra, ", %lld step%s past the last commit not kept", (long long)dropped,
             dropped == 1 ? "" : "s");
  fprintf(stderr, "baton: summary: %d failure%s, %d restart%s, %lld step%s replayed%s, %.1f s lost\n", n,
          n == 1 ? "" : "s", restarts, restarts == 1 ? "" : "s", (long long)steps, steps == 1 ? "" : "s", extra,
          lost_s);
  for (int i = 0; i < n; i++)
    fprintf(stderr, "baton:   %d. stage %d (pid %d): %s; detected in %.2f s, stopped in %.2f s%s\n", i + 1,
            f[i].stage, f[i].pid, f[i].reason, f[i].detect_latency_s, f[i].stopped_s - f[i].detect_s,
            f[i].resumed_s > 0 ? "" : "; not resumed");
  fprintf(stderr, "baton: first failure (root cause): stage %d, pid %d: %s\n", f[0].stage, f[0].pid, f[0].reason);
  if (f[0].tail[0]) {
    fprintf(stderr, "baton: its last stderr lines:\n");
    for (const char *l = f[0].tail, *nl; *l; l = nl + 1) {
      if (!(nl = strchr(l, '\n'))) nl = l + strlen(l) - 1;
      fprintf(stderr, "  [stage %d] %.*s\n", f[0].stage, (int)(nl - l + (*nl != '\n')), l);
    }
  }
}

/* The end of a job that is done, preempted or killed: the hash or the
 * reason, and the exit code. The last step is always saved: when it did
 * not commit, the job is done but its final state is lost, and scripts
 * must be able to tell (BT_EXIT_UNCOMMITTED, said last). */
static int job_over(run_args_t *a, const bt_sup_result_t *res, int rc, int64_t restore) {
  if (res->end == BT_SUP_END_DONE && rc == BT_SUP_EXIT_OK && res->have_hash) {
    char hex[33];
    bt_hash_hex(res->hash, hex);
    printf("hash %s\n", hex);
    fflush(stdout);
  } else if (res->end != BT_SUP_END_DONE && res->failed_stage < 0 && res->reason[0])
    fprintf(stderr, "baton run: %s\n", res->reason);
  if (res->end != BT_SUP_END_DONE) return rc;
  if (rc == BT_SUP_EXIT_OK && a->output_error) rc = BT_SUP_EXIT_FAILED; /* said when it happened */
  int64_t newest = res->committed_step > restore ? res->committed_step : restore;
  if (rc == BT_SUP_EXIT_OK && a->o.ckpt_dir && newest < a->cfg.run.steps) {
    snprintf(a->closing, sizeof a->closing,
             "baton run: finished step %lld, but its checkpoint was not committed: the newest committed "
             "step is %lld (%s)\n",
             (long long)a->cfg.run.steps, (long long)newest, res->ckpt_error[0] ? res->ckpt_error : "no save reported");
    rc = BT_EXIT_UNCOMMITTED;
  }
  return rc;
}

/* Multi-node: the stages of the next incarnation on the nodes alive now,
 * re-formed on fewer stages when a node was lost (down to --min-stages)
 * or on more again when one came back (up to what the restart policy
 * allows). Returns 0 or an exit code. */
static int place_on_nodes(run_args_t *a, formation_t *form, bt_recovery_t *rec, int *given_layout, uint32_t inc) {
  bt_config_t *cfg = &a->cfg;
  uint32_t cap = bt_mn_capacity(a->coord), want = cap < rec->stages ? cap : rec->stages;
  int floor = a->ro.min_stages > 0 ? a->ro.min_stages : 1;
  if (want != (uint32_t)form->p) {
    if ((int)want < floor) {
      fprintf(stderr, "baton run: the nodes alive offer %u stage%s, fewer than --min-stages %d\n", want,
              want == 1 ? "" : "s", floor);
      return BT_EXIT_TOO_FEW;
    }
    fprintf(stderr, "baton run: re-forming on %u stages over the nodes alive now\n", want);
    if (*given_layout) {
      fprintf(stderr, "baton run: --layout does not fit %u stages: using the balanced split\n", want);
      *given_layout = 0;
    }
    formation_free(form);
    cfg->run.stages = (int)want;
    cfg->run.layout[0] = 0;
    int rc = formation_plan(a, form);
    if (rc) return rc;
  }
  if (bt_mn_place(a->coord, (uint32_t)form->p, inc) < 0) {
    fprintf(stderr, "baton run: cannot place %d stages on the nodes alive\n", form->p);
    return BT_EXIT_FAILED;
  }
  bt_sup_opts_t *o = &a->o;
  o->hub = a->coord->hub;
  o->stage_node = a->coord->stage_node;
  o->stage_bind = a->coord->stage_bind;
  o->stage_local = a->coord->stage_local;
  o->node_stages = a->coord->node_stages;
  o->token = a->coord->token;
  o->token_label = a->coord->token_label;
  o->master_addr = a->mn.rdzv_host;
  o->master_port = a->mn.rdzv_port;
  return 0;
}

/* Runs incarnations until the job is done, preempted or given up: after
 * each failure the restart policy decides, and the next incarnation
 * restores the newest committed step (or --resume PATH while nothing newer
 * is committed). Prints the account of the failures at the end. Returns
 * the exit code. */
static int run_incarnations(run_args_t *a, formation_t *form, const start_t *start, int given_layout,
                            const char *faults) {
  bt_config_t *cfg = &a->cfg;
  char restore_dir[PATH_MAX];
  int64_t restore = start->step;
  snprintf(restore_dir, sizeof restore_dir, "%s", start->dir);
  a->o.lineage = start->lin;
  failure_t *fails = NULL;
  int nfail = 0, rc = BT_SUP_EXIT_FAILED;
  bt_recovery_t rec;
  bt_recovery_init(&rec, &a->ro, (uint32_t)cfg->run.stages, restore);
  double epoch = bt_clock_s(), backoff = 0;
  uint32_t inc = 0;
  for (;;) {
    bt_sup_opts_t *o = &a->o;
    if (a->coord && (rc = place_on_nodes(a, form, &rec, &given_layout, inc))) break;
    o->nstages = (uint32_t)form->p;
    o->chunks = (uint32_t)form->v;
    o->worker_argv = form->wargv;
    o->sched = &form->sched;
    o->restore_dir = restore_dir[0] ? restore_dir : NULL;
    o->faults = inc == 0 ? faults : NULL; /* each fault fires once per job */
    o->first_step = restore + 1;
    o->last_step = cfg->run.steps;
    o->restore_step = restore;
    o->ckpt_every = a->ck.every;
    o->keep_last = a->ck.keep;
    o->keep_every = a->ck.keep_every;
    o->restart_count = inc;
    o->spawn_delay_s = backoff;
    o->epoch_s = epoch;
    o->events_append = inc > 0;
    if (nfail > 0 && fails[nfail - 1].resumed_s == 0) {
      const failure_t *pf = &fails[nfail - 1];
      o->recovering = pf->restart;
      o->rec_detect_s = pf->detect_latency_s;
      o->rec_stop_s = pf->stopped_s - pf->detect_s;
      o->rec_stopped_at_s = pf->stopped_s;
      o->rec_steps_lost = pf->lost;
    } else
      o->recovering = 0;
    bt_sup_result_t res;
    int src = bt_supervisor_run(o, &res);
    if (src < 0) {
      fprintf(stderr, "baton run: %s\n", bt_strerror(src));
      rc = src == BT_EARG ? BT_SUP_EXIT_USAGE : BT_SUP_EXIT_FAILED;
      break;
    }
    if (nfail > 0 && !fails[nfail - 1].respawned) fails[nfail - 1].respawned = res.spawned;
    a->output_error |= res.output_error;
    if (res.events_failed) {
      /* Said by the supervisor; no more lines go there (the job exits 1). */
      fclose(a->o.events_file);
      a->o.events_file = NULL;
      a->o.events_path = NULL;
    }
    if (nfail > 0 && fails[nfail - 1].resumed_s == 0) {
      fails[nfail - 1].ready_s = res.ready_s;
      fails[nfail - 1].resumed_s = res.first_step_s;
    }
    /* Done, preempted or killed: the job is over whatever the restart
     * policy says (launcher/ending.c decides both). */
    bt_recovery_decision_t d;
    if (res.end == BT_SUP_END_DONE || res.end == BT_SUP_END_PREEMPTED || res.end == BT_SUP_END_KILLED) {
      bt_job_next(&rec, &res, res.steps_done, &d);
      rc = job_over(a, &res, d.exit_code, restore);
      break;
    }
    /* A failure: account for it, then ask the policy. */
    failure_t *nf = realloc(fails, (size_t)(nfail + 1) * sizeof *nf);
    if (!nf) {
      rc = out_of_memory();
      break;
    }
    fails = nf;
    failure_t *f = &fails[nfail++];
    memset(f, 0, sizeof *f);
    f->stage = res.failed_stage;
    f->pid = res.root_pid;
    f->restart = (int)inc + 1;
    snprintf(f->reason, sizeof f->reason, "%s", res.reason[0] ? res.reason : "failed");
    snprintf(f->tail, sizeof f->tail, "%s", res.root_tail);
    f->detect_s = res.detect_s;
    f->detect_latency_s = res.detect_latency_s;
    f->stopped_s = bt_clock_s() - epoch;
    /* The restart restores this job's newest commit, or the step the job
     * started from while it has none: never a step of another lineage
     * that happens to be newer in the directory. */
    int64_t progress = res.steps_done, next = 0;
    int prc3 = bt_recovery_restore_point(a->o.ckpt_dir, start->lin.job, start->dir, start->step, restore_dir,
                                         sizeof restore_dir, &next);
    if (prc3) {
      fprintf(stderr, "baton run: --ckpt-dir %s: %s\n", a->o.ckpt_dir, bt_strerror(prc3));
      rc = BT_SUP_EXIT_FAILED;
      break;
    }
    if (a->o.ckpt_dir || next > progress) progress = next;
    f->lost = res.steps_done > next ? res.steps_done - next : 0;
    bt_job_next(&rec, &res, progress, &d);
    if (d.action == BT_RECOVERY_GIVE_UP) {
      job_event_failure(a, "give_up", f, next, &d, (uint32_t)form->p);
      /* With no restarts at all the supervisor's failure report says it all. */
      if (a->ro.max_restarts > 0 || res.end != BT_SUP_END_RETRYABLE) fprintf(stderr, "baton run: %s\n", d.why);
      rc = d.exit_code;
      break;
    }
    if (d.action == BT_RECOVERY_REFORM) {
      fprintf(stderr, "baton run: stage %d failed %d times: re-forming on %u stages\n", d.retire,
              a->ro.max_slot_failures, rec.stages);
      if (given_layout) {
        fprintf(stderr, "baton run: --layout does not fit %u stages: using the balanced split\n", rec.stages);
        given_layout = 0;
      }
      formation_free(form);
      cfg->run.stages = (int)rec.stages;
      cfg->run.layout[0] = 0;
      if ((rc = formation_plan(a, form))) break;
    }
    job_event_failure(a, d.action == BT_RECOVERY_REFORM ? "reform" : "restart", f, next, &d, rec.stages);
    if (next > 0)
      fprintf(stderr, "baton run: restart %d of at most %d in %.2f s, from checkpoint step %lld\n", rec.restarts,
              a->ro.max_restarts, d.backoff_s, (long long)next);
    else
      fprintf(stderr, "baton run: restart %d of at most %d in %.2f s, from step 0 (no checkpoint yet)\n",
              rec.restarts, a->ro.max_restarts, d.backoff_s);
    restore = next;
    if (strcmp(restore_dir, start->dir)) {
      /* from one of this job's own commits */
      snprintf(a->o.lineage.parent_job, sizeof a->o.lineage.parent_job, "%s", start->lin.job);
      a->o.lineage.parent_step = next;
    } else
      a->o.lineage = start->lin;
    backoff = d.backoff_s;
    inc++;
  }
  if (rec.restarts > 0) print_summary(fails, nfail, bt_clock_s() - epoch);
  free(fails);
  return rc;
}

/* A job whose checkpoint already holds the last step: its hash. */
static int print_finished(run_args_t *a, const start_t *start) {
  bt_hash128_t h;
  const char *where = a->ck.resume_path ? start->dir : a->o.ckpt_dir;
  int hrc = bt_ckpt_step_hash(start->dir, &h);
  if (hrc) {
    fprintf(stderr, "baton run: %s: cannot hash step %lld: %s\n", start->dir, (long long)start->step,
            bt_strerror(hrc));
    return BT_SUP_EXIT_FAILED;
  }
  char hex[33];
  bt_hash_hex(h, hex);
  fprintf(stderr, "baton run: %s already holds step %lld%s: nothing to train\n", where,
          (long long)start->step, start->step > a->cfg.run.steps ? " (past --steps)" : "");
  printf("hash %s\n", hex);
  fflush(stdout);
  return BT_SUP_EXIT_OK;
}

int bt_cmd_run(int argc, char **argv) {
  run_args_t *a = calloc(1, sizeof *a);
  if (!a) {
    fprintf(stderr, "baton run: out of memory\n");
    return BT_SUP_EXIT_FAILED;
  }
  int rc = BT_SUP_EXIT_USAGE, locked = 0;
  char err[1024], holder[512] = "", *fault_env = NULL;
  start_t start;
  formation_t form;
  memset(&form, 0, sizeof form);
  bt_ckpt_lock_t lock;
  int prc = parse_args(argc, argv, a);
  if (prc == 1) {
    usage(stdout);
    rc = 0;
    goto out;
  }
  if (prc) goto out;
  bt_config_t *cfg = &a->cfg;
  if ((rc = bt_mn_resolve(&a->mn, cfg->run.backend))) goto out;
  rc = BT_SUP_EXIT_USAGE;
  if (a->mn.nnodes > 1 && a->mn.node_rank > 0) {
    /* A node agent: the coordinator decides everything else. */
    rc = bt_mn_run_agent(&a->mn, a->o.ckpt_dir);
    goto out;
  }
  if (a->mn.nnodes > 1) {
    uint32_t slots = 0;
    if (!(a->coord = calloc(1, sizeof *a->coord))) {
      rc = out_of_memory();
      goto out;
    }
    if ((rc = bt_mn_coord_start(a->coord, &a->mn, a->o.ckpt_dir, &slots))) goto out;
    rc = BT_SUP_EXIT_USAGE;
    if (a->given_stages && (uint32_t)cfg->run.stages != slots) {
      fprintf(stderr, "baton run: --stages %d: the %u nodes offer %u stages (--stages-per-node on each)\n",
              cfg->run.stages, a->mn.nnodes, slots);
      goto out;
    }
    cfg->run.stages = (int)slots;
    a->given_stages = 1;
    /* Losing a node must not end the job by default: re-form on what is
     * left (a CSV schedule is for one stage count only). */
    if (!a->ro.min_stages) a->ro.min_stages = a->csv_arg ? (int)slots : 1;
  }
  if (a->csv_arg) {
    if (adopt_csv_counts(a)) goto out;
  } else if (!a->given_stages) {
    fprintf(stderr, "baton run: --stages is required (try `baton run --help`)\n");
    goto out;
  }
  if (!a->given_schedule)
    snprintf(cfg->run.schedule, sizeof cfg->run.schedule, "%s", cfg->run.chunks > 1 ? "interleaved" : "1f1b");
  /* The V schedules imply two chunks; a --chunks other than 2 is refused by the builder. */
  if (!a->given_chunks && (!strcmp(cfg->run.schedule, "zb-v") || !strcmp(cfg->run.schedule, "dualpipev")))
    cfg->run.chunks = 2;
  if (cfg->run.stages > BT_MAX_STAGES) {
    fprintf(stderr, "baton run: --stages %d: at most %d\n", cfg->run.stages, BT_MAX_STAGES);
    goto out;
  }
  /* Unlike `baton train`, `baton run --resume PATH` needs no --ckpt-dir:
   * the job starts from PATH and then saves nothing new. */
  bt_ckpt_flags_t ck = a->ck;
  if (ck.resume == BT_CKPT_RESUME_PATH) ck.given &= ~(unsigned)BT_CKPT_FLAG_RESUME;
  if (bt_ckpt_flags_check(&ck, err, sizeof err)) {
    fprintf(stderr, "baton run: %s\n", err);
    goto out;
  }
  if (a->ro.min_stages > cfg->run.stages) {
    fprintf(stderr, "baton run: --min-stages %d: more than --stages %d\n", a->ro.min_stages, cfg->run.stages);
    goto out;
  }
  if (a->ro.min_stages && a->ro.min_stages < cfg->run.stages && a->csv_arg) {
    fprintf(stderr, "baton run: --min-stages: a CSV schedule is for %d stages only\n", cfg->run.stages);
    goto out;
  }
  /* Without a checkpoint directory a restart starts over from step 0, which
   * is rarely what anyone wants by default: then a failure ends the job
   * unless --max-restarts asks otherwise. */
  if (a->ro.max_restarts < 0) a->ro.max_restarts = a->o.ckpt_dir ? 10 : 0;
  if (a->o.ckpt_dir) {
    /* One job per directory, for the whole job: every incarnation writes
     * into it. A lock left by a killed supervisor is taken over. */
    int lrc = bt_ckpt_lock_acquire(a->o.ckpt_dir, &lock, holder, sizeof holder);
    if (lrc) {
      if (lrc != BT_ELOCKED && holder[0]) /* the reason says it all */
        fprintf(stderr, "baton run: --ckpt-dir %s: %s\n", a->o.ckpt_dir, holder);
      else
        fprintf(stderr, "baton run: --ckpt-dir %s: %s%s%s\n", a->o.ckpt_dir, bt_strerror(lrc),
                holder[0] ? ": " : "", holder);
      goto out;
    }
    locked = 1;
    a->o.lock = &lock;
  }
  if ((rc = pick_start(a, &start))) goto out;
  rc = BT_SUP_EXIT_USAGE;
  if (bt_config_finish(cfg, err, sizeof err) < 0) {
    fprintf(stderr, "baton run: %s\n", err);
    goto out;
  }
  for (int i = 0; i < a->nfaults; i++) {
    bt_fault_t f;
    char why[256] = "";
    bt_fault_parse(a->faults[i], &f, NULL, 0);
    if (bt_fault_check(&f, cfg->run.stages, cfg->run.steps, why, sizeof why) < 0) {
      fprintf(stderr, "baton run: --inject-fault %s: %s\n", a->faults[i], why);
      goto out;
    }
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
  /* One writer of the events for the whole job: this handle, which every
   * incarnation's supervisor and the restart account share. */
  if (a->o.events_path && !(a->o.events_file = fopen(a->o.events_path, "w"))) {
    fprintf(stderr, "baton run: --events %s: %s\n", a->o.events_path, strerror(errno));
    goto out;
  }
  if (strcmp(cfg->run.backend, "cpu") && (rc = probe_backend(cfg->run.backend))) goto out;
  rc = BT_SUP_EXIT_USAGE;
  int given_layout = cfg->run.layout[0] != 0;
  if ((rc = formation_plan(a, &form))) goto out;
  if (start.dir[0] && start.step >= cfg->run.steps) {
    rc = print_finished(a, &start);
    goto out;
  }
  if (start.dir[0])
    fprintf(stderr, "baton run: resuming from %s step %lld\n", a->ck.resume_path ? start.dir : a->o.ckpt_dir,
            (long long)start.step);
  if (a->nfaults) {
    size_t len = 1;
    for (int i = 0; i < a->nfaults; i++) len += strlen(a->faults[i]) + 1;
    if (!(fault_env = malloc(len))) {
      rc = out_of_memory();
      goto out;
    }
    fault_env[0] = 0;
    for (int i = 0; i < a->nfaults; i++) {
      if (i) strcat(fault_env, ";");
      strcat(fault_env, a->faults[i]);
    }
  }
  a->o.ckpt_compress = a->ck.opts.deflate;
  a->o.schedule_csv = a->csv_arg ? a->csv_path : NULL;
  /* A closed stdout must not kill the supervisor mid-job with children
   * left behind; write errors are ignored instead. */
  signal(SIGPIPE, SIG_IGN);
  rc = run_incarnations(a, &form, &start, given_layout, fault_env);
  if (locked) {
    /* Every worker is gone and we hold the lock: a step directory without
     * a manifest now can never be completed. */
    int removed = 0, drc = bt_ckpt_remove_debris(a->o.ckpt_dir, &removed);
    if (drc < 0) bt_warn("--ckpt-dir %s: %s", a->o.ckpt_dir, bt_strerror(drc));
    if (removed > 0)
      bt_info("checkpoint: removed %d step director%s that never committed", removed, removed == 1 ? "y" : "ies");
  }
  if (a->closing[0]) fputs(a->closing, stderr);
out:
  formation_free(&form);
  if (a->coord) {
    bt_mn_coord_stop(a->coord, rc);
    free(a->coord);
  }
  if (locked) bt_ckpt_lock_release(&lock);
  if (a->o.events_file) fclose(a->o.events_file);
  free(fault_env);
  free(a);
  return rc;
}
