/* plan.c - see plan.h. */
#include "schedules/plan.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/model.h"
#include "schedules/check.h"
#include "schedules/csv.h"

int bt_plan_is_builder(const char *name) {
  for (int i = 0; bt_sched_names[i]; i++)
    if (!strcmp(bt_sched_names[i], name)) return 1;
  return 0;
}

int bt_plan_schedule(const bt_config_t *cfg, const char *csv_path, bt_schedule_t *out, char *err,
                     size_t errlen) {
  const bt_run_config_t *r = &cfg->run;
  int m = cfg->model.microbatches;
  char why[512] = "";
  int rc;
  memset(out, 0, sizeof *out);
  if (bt_plan_is_builder(r->schedule)) {
    rc = bt_sched_build(r->schedule, r->stages, r->chunks, m, out, why, sizeof why);
    if (rc < 0) {
      bt_errf(err, errlen, "--schedule %s: %s", r->schedule, why);
      return rc;
    }
  } else if (!strcmp(r->schedule, "csv") && csv_path) {
    rc = bt_sched_csv_read(csv_path, out, why, sizeof why);
    if (rc < 0) {
      bt_errf(err, errlen, "--schedule %s: %s", csv_path, why[0] ? why : bt_strerror(rc));
      return BT_EARG;
    }
    if (out->p != r->stages || out->v != r->chunks || out->m != m) {
      bt_errf(err, errlen, "--schedule %s: the CSV has %d workers, %d chunks, %d micro-batches but the run has %d, %d, %d",
           csv_path, out->p, out->v, out->m, r->stages, r->chunks, m);
      bt_sched_free(out);
      return BT_EARG;
    }
  } else {
    bt_errf(err, errlen, "--schedule %s: not a schedule name (gpipe, 1f1b, interleaved, zb-h1, zb-v, dualpipev) nor a CSV file",
         r->schedule);
    return BT_EARG;
  }
  const char *what = csv_path && !strcmp(r->schedule, "csv") ? csv_path : r->schedule;
  if ((rc = bt_sched_validate(out, why, sizeof why)) < 0) {
    bt_errf(err, errlen, "--schedule %s: %s", what, why);
    bt_sched_free(out);
    return rc;
  }
  if (!bt_sched_check_microbatch_order(out, why, sizeof why)) {
    bt_errf(err, errlen,
         "--schedule %s: refused: weight gradients must accumulate in micro-batch order on every "
         "virtual stage for bit-identical training (%s)",
         what, why);
    bt_sched_free(out);
    return BT_ESCHEDULE;
  }
  return 0;
}

int bt_plan_layout(const bt_config_t *cfg, int *first, int *last, char *err, size_t errlen) {
  const bt_model_config_t *m = &cfg->model;
  int nv = cfg->run.stages * cfg->run.chunks;
  int nl = bt_model_layer_count(m);
  if (nv > nl) {
    bt_errf(err, errlen,
         "--stages %d x --chunks %d = %d virtual stages, but the model has only %d layers "
         "(--layers %d, plus embed and head)",
         cfg->run.stages, cfg->run.chunks, nv, nl, m->layers);
    return BT_EARG;
  }
  int *counts = calloc((size_t)nv, sizeof *counts);
  if (!counts) return -ENOMEM;
  int rc, n = nv;
  char why[512] = "";
  if (cfg->run.layout[0]) {
    rc = bt_model_layout_parse(m, cfg->run.layout, nv, counts, nv, &n, why, sizeof why);
    if (rc < 0) bt_errf(err, errlen, "--layout %s: %s", cfg->run.layout, why);
  } else {
    rc = bt_model_layout_balanced(m, nv, counts);
    if (rc < 0) bt_errf(err, errlen, "cannot split %d layers into %d virtual stages", nl, nv);
  }
  if (rc == 0) {
    int at = 0;
    for (int k = 0; k < nv; k++) {
      first[k] = at;
      at += counts[k];
      last[k] = at - 1;
    }
  }
  free(counts);
  return rc;
}

