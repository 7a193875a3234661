/* cmd_worker.c - `baton worker`: one pipeline stage, started by `baton run`.
 *
 * The supervisor passes the whole configuration as `--key=value` flags (the
 * shared table of common/config.h, the layout already resolved to counts,
 * a CSV schedule as `--schedule=csv` with its absolute path in
 * BATON_SCHEDULE_CSV) and the stage, the control fd and the
 * job token through BATON_* variables (the table of common/workerenv.h). First thing, the
 * worker ties its life to the supervisor's (bt_control_guard); then it
 * parses, opens the control channel and runs worker/pipeline.c.
 *
 * Exit codes are the BT_WEXIT_* contract of common/exitcodes.h: 0 done,
 * 2 bad usage, 3 retryable, 4 fatal, 5 stopped, 6 supervisor gone,
 * 7 non-finite parameters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/error.h"
#include "common/log.h"
#include "kernels/backend.h"
#include "worker/cmd.h"
#include "worker/control.h"
#include "worker/pipeline.h"

static void usage(FILE *f) {
  char contract[8192];
  bt_worker_env_help(contract, sizeof contract);
  fprintf(f,
          "usage: baton worker [model and run options of `baton run`]\n"
          "       baton worker --probe BACKEND\n\n"
          "One pipeline stage. Started by `baton run`, which hands it the variables\n"
          "and START fields below; not meant to be run by hand.\n\n"
          "%s\n"
          "exit codes: 0 done, 1 internal error, 2 bad usage, 3 retryable (peer lost,\n"
          "deadline, transport), 4 fatal (bad configuration, no usable checkpoint),\n"
          "5 stopped by the supervisor, 6 the supervisor is gone, 7 non-finite\n"
          "parameters at a checkpoint\n\n"
          "--probe BACKEND (cpu, cuda): whether this process can create the backend,\n"
          "for `baton run` to ask before spawning (the launcher does not link the\n"
          "backends): exit 0 and `ok`, or one line saying why not and exit 2\n",
          contract);
}

/* `baton worker --probe BACKEND`: creates the backend on device 0 and
 * destroys it. */
static int probe(const char *name) {
  bt_backend_t *be = NULL;
  char why[512] = "";
  int rc = bt_backend_create(name, 0, &be, why, sizeof why);
  if (rc < 0) {
    fprintf(stderr, "baton worker: --backend %s: %s\n", name, why[0] ? why : bt_strerror(rc));
    return BT_WEXIT_USAGE;
  }
  bt_backend_destroy(be);
  printf("ok\n");
  return BT_WEXIT_DONE;
}

/* Parses --key=value / --key value flags of the shared table into cfg. */
static int parse_args(int argc, char **argv, bt_config_t *cfg) {
  char err[512];
  bt_config_defaults(cfg);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strncmp(arg, "--", 2)) {
      fprintf(stderr, "baton worker: unexpected argument '%s'\n", arg);
      return BT_EARG;
    }
    char name[64];
    const char *eq = strchr(arg, '='), *value;
    size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
    if (nl >= sizeof name) nl = sizeof name - 1;
    memcpy(name, arg, nl);
    name[nl] = 0;
    if (eq) value = eq + 1;
    else if (i + 1 < argc) value = argv[++i];
    else {
      fprintf(stderr, "baton worker: %s needs a value\n", name);
      return BT_EARG;
    }
    if (bt_config_flag(cfg, BT_CONFIG_ALL, name, value, err, sizeof err) < 0) {
      fprintf(stderr, "baton worker: %s\n", err);
      return BT_EARG;
    }
  }
  if (bt_config_finish(cfg, err, sizeof err) < 0) {
    fprintf(stderr, "baton worker: %s\n", err);
    return BT_EARG;
  }
  return 0;
}

int bt_cmd_worker(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
  if (argc >= 2 && !strcmp(argv[1], "--probe")) {
    if (argc != 3) {
      fprintf(stderr, "baton worker: --probe needs one backend name (cpu or cuda)\n");
      return BT_WEXIT_USAGE;
    }
    return probe(argv[2]);
  }
  /* The log level is read from BATON_LOG on first use; do it now, before
   * the control, transport and writer threads exist, so that first use is
   * not a write racing their reads (ThreadSanitizer saw it). */
  (void)bt_log_get_level();
  int rc = bt_control_guard();
  if (rc == BT_EPEER) {
    fprintf(stderr, "baton worker: the supervisor is gone; exiting\n");
    return BT_WEXIT_ORPHAN;
  }
  if (rc < 0) {
    fprintf(stderr, "baton worker: started without a supervisor (BATON_SUPERVISOR_PID); use `baton run`\n");
    return BT_WEXIT_USAGE;
  }
  bt_control_env_t env;
  if (bt_control_env(&env) < 0) return BT_WEXIT_USAGE;
  bt_config_t *cfg = calloc(1, sizeof *cfg);
  if (!cfg) return BT_WEXIT_ERROR;
  int code = BT_WEXIT_USAGE;
  bt_control_t *ctl = NULL;
  if (parse_args(argc, argv, cfg) < 0) goto out;
  code = BT_WEXIT_FATAL;
  if ((int)env.nstages != cfg->run.stages || (int)env.chunks != cfg->run.chunks) {
    fprintf(stderr, "baton worker: BATON_STAGES=%u BATON_CHUNKS=%u disagree with --stages %d --chunks %d\n",
            env.nstages, env.chunks, cfg->run.stages, cfg->run.chunks);
    goto out;
  }
  if (bt_control_open(&ctl, &env) < 0) {
    fprintf(stderr, "baton worker: the control channel (fd %d) is unusable\n", env.fd);
    code = BT_WEXIT_ORPHAN;
    goto out;
  }
  code = bt_pipeline_run(cfg, env.schedule_csv[0] ? env.schedule_csv : NULL, &env, ctl);
out:
  bt_control_close(ctl);
  free(cfg);
  return code;
}
