/* plan.h - the plan of a run: its schedule (built or read from CSV,
 * validated, micro-batch order checked) and the layer range of every
 * virtual stage.
 *
 * The one implementation that both sides of `baton run` call: the
 * supervisor (launcher/cmd_run.c) to refuse a bad combination with one line
 * and exit code 2 before a single process starts, and every worker
 * (worker/pipeline.c) to rebuild the same schedule from the same
 * configuration, so nobody ships it around. It lives here because the
 * launcher may not include worker code nor the worker launcher code, while
 * both may include schedules/ (DESIGN.md §1).
 *
 * Not here: flag parsing, what a worker does with its share of the plan.
 */
#ifndef BT_SCHEDULES_PLAN_H
#define BT_SCHEDULES_PLAN_H
#include <stddef.h>

#include "common/config.h"
#include "schedules/schedule.h"

/* 1 when `name` is a schedule builder ("gpipe", "1f1b", ...), 0 for
 * anything else (a CSV path). */
int bt_plan_is_builder(const char *name);

/* The schedule of cfg->run: a builder name ("gpipe", "1f1b", "interleaved",
 * "zb-h1"), or "csv" for the file csv_path (the supervisor's --schedule
 * path, the worker's BATON_SCHEDULE_CSV: a path does not fit the
 * configuration's schedule name), for run.stages workers, run.chunks chunks
 * and model.microbatches micro-batches. The CSV's own counts must agree
 * with them. Validated, and checked for micro-batch order of the weight
 * gradients (bit-identical training needs it). BT_EARG or BT_ESCHEDULE (or
 * the builder's code) with a one-line reason in err; out is freed on
 * failure and owned by the caller (bt_sched_free) on success. */
int bt_plan_schedule(const bt_config_t *cfg, const char *csv_path, bt_schedule_t *out, char *err, size_t errlen);

/* first[k], last[k]: the first and last global layer of virtual stage k
 * (p·v entries), from run.layout (explicit counts) or the balanced split.
 * BT_EARG with a one-line reason when it cannot cover the layers, -ENOMEM. */
int bt_plan_layout(const bt_config_t *cfg, int *first, int *last, char *err, size_t errlen);

#endif
