/* cmd_run.c - `baton run`: parses the command line, spawns the pipeline
 * through the supervisor (launcher/supervisor.h) and turns its result into
 * the exit code.
 *
 * Not here: the process handling (supervisor.c) and the worker itself.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "common/parse.h"
#include "launcher/commands.h"
#include "launcher/supervisor.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: baton run --stages P [options] [-- worker arguments]\n"
          "\n"
          "Trains with one worker process per pipeline stage, supervised.\n"
          "\n"
          "  --stages P              worker processes (pipeline stages), 1..%d\n"
          "  --chunks V              virtual stages per worker (default 1)\n"
          "  --steps N               train steps 1..N (default 1)\n"
          "  --hash                  print `hash <32 hex>` of the final parameters last\n"
          "  --metrics FILE          JSON lines per step (step, loss, tokens_per_s, ...)\n"
          "  --trace FILE            Chrome trace JSON of every action on every stage\n"
          "  --ckpt-dir DIR          checkpoint directory, passed to the workers\n"
          "  --grace S               seconds between STOP and SIGKILL (default 5)\n"
          "  --heartbeat-timeout S   kill a worker silent this long (default 10)\n"
          "  --progress-timeout S    kill a worker that beats but finishes no action\n"
          "                          this long (default 60; 3x for the first step)\n"
          "  --start-timeout S       every stage ready within S (default 120)\n"
          "  --worker-cmd PROG       run PROG (no shell) instead of `baton worker`\n"
          "  --no-progress           no progress lines\n"
          "\n"
          "Exit codes: 0 done, 1 a worker failed (the message names the stage),\n"
          "2 bad usage, 128+N stopped by signal N (130 SIGINT, 143 SIGTERM).\n",
          BT_MAX_STAGES);
}

/* Reads the value of a flag; one-line error and BT_EARG when missing. */
static int need_value(int argc, char **argv, int *i, const char **out) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "baton run: %s needs a value\n", argv[*i]);
    return BT_EARG;
  }
  *out = argv[++*i];
  return 0;
}

static int parse_seconds(const char *flag, const char *v, double lo, double *out) {
  if (bt_parse_double(v, lo, 1e7, out) < 0) {
    fprintf(stderr, "baton run: %s: expected seconds in [%g, 1e7], got '%s'\n", flag, lo, v);
    return BT_EARG;
  }
  return 0;
}

int bt_cmd_run(int argc, char **argv) {
  bt_sup_opts_t o;
  bt_sup_opts_default(&o);
  const char *worker_cmd = NULL;
  int64_t steps = 1;
  int stages = 0, chunks = 1;
  int nfwd = 0;
  char **fwd = NULL;
  char **wargv = NULL;
  char exe[4096];
  int rc = BT_SUP_EXIT_USAGE;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--")) {
      fwd = argv + i + 1;
      nfwd = argc - i - 1;
      break;
    } else if (!strcmp(a, "--hash")) {
      o.want_hash = 1;
    } else if (!strcmp(a, "--no-progress")) {
      o.progress = 0;
    } else if (!strcmp(a, "--stages")) {
      if (need_value(argc, argv, &i, &v) < 0) return 2;
      if (bt_parse_int(v, 1, BT_MAX_STAGES, &stages) < 0) {
        fprintf(stderr, "baton run: --stages: expected a whole number in [1, %d], got '%s'\n", BT_MAX_STAGES, v);
        return 2;
      }
    } else if (!strcmp(a, "--chunks")) {
      if (need_value(argc, argv, &i, &v) < 0) return 2;
      if (bt_parse_int(v, 1, 64, &chunks) < 0) {
        fprintf(stderr, "baton run: --chunks: expected a whole number in [1, 64], got '%s'\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--steps")) {
      if (need_value(argc, argv, &i, &v) < 0) return 2;
      if (bt_parse_i64(v, 1, INT64_C(1) << 40, &steps) < 0) {
        fprintf(stderr, "baton run: --steps: expected a whole number >= 1, got '%s'\n", v);
        return 2;
      }
    } else if (!strcmp(a, "--metrics")) {
      if (need_value(argc, argv, &i, &o.metrics_path) < 0) return 2;
    } else if (!strcmp(a, "--trace")) {
      if (need_value(argc, argv, &i, &o.trace_path) < 0) return 2;
    } else if (!strcmp(a, "--ckpt-dir")) {
      if (need_value(argc, argv, &i, &o.ckpt_dir) < 0) return 2;
    } else if (!strcmp(a, "--worker-cmd")) {
      if (need_value(argc, argv, &i, &worker_cmd) < 0) return 2;
    } else if (!strcmp(a, "--grace")) {
      if (need_value(argc, argv, &i, &v) < 0 || parse_seconds(a, v, 0, &o.grace_s) < 0) return 2;
    } else if (!strcmp(a, "--heartbeat-timeout")) {
      if (need_value(argc, argv, &i, &v) < 0 || parse_seconds(a, v, 0.05, &o.heartbeat_timeout_s) < 0) return 2;
    } else if (!strcmp(a, "--progress-timeout")) {
      if (need_value(argc, argv, &i, &v) < 0 || parse_seconds(a, v, 0.05, &o.progress_timeout_s) < 0) return 2;
    } else if (!strcmp(a, "--start-timeout")) {
      if (need_value(argc, argv, &i, &v) < 0 || parse_seconds(a, v, 0.05, &o.start_timeout_s) < 0) return 2;
    } else {
      fprintf(stderr, "baton run: unknown option '%s' (try `baton run --help`)\n", a);
      return 2;
    }
  }
  if (stages == 0) {
    fprintf(stderr, "baton run: --stages is required (try `baton run --help`)\n");
    return 2;
  }
  o.nstages = (uint32_t)stages;
  o.chunks = (uint32_t)chunks;
  o.first_step = 1;
  o.last_step = steps;

  /* The worker command line: PROG [worker] forwarded-args. */
  wargv = calloc((size_t)nfwd + 3, sizeof *wargv);
  if (!wargv) {
    fprintf(stderr, "baton run: out of memory\n");
    rc = BT_SUP_EXIT_FAILED;
    goto out;
  }
  int k = 0;
  if (worker_cmd) {
    wargv[k++] = (char *)worker_cmd;
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
  for (int i = 0; i < nfwd; i++) wargv[k++] = fwd[i];
  wargv[k] = NULL;
  o.worker_argv = wargv;

  /* A closed stdout must not kill the supervisor mid-job with children
   * left behind; write errors are ignored instead. */
  signal(SIGPIPE, SIG_IGN);
  bt_sup_result_t res;
  int src = bt_supervisor_run(&o, &res);
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
  free(wargv);
  return rc;
}
