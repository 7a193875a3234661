/* plan.h - what `baton run` decides before spawning anything: the schedule
 * (built or read from CSV, validated, micro-batch order checked) and the
 * layer range of every virtual stage.
 *
 * Every check that can refuse a run happens here, so bad combinations
 * (more virtual stages than layers, a layout that does not cover the
 * layers, a schedule that cannot use the counts, a CSV that accumulates
 * gradients out of micro-batch order) end with one line and exit code 2
 * before a single process starts. The worker rebuilds the same schedule
 * from the same configuration (worker/pipeline.c), since the supervisor
 * may not include worker code (DESIGN.md §1).
 */
#ifndef BT_LAUNCHER_PLAN_H
#define BT_LAUNCHER_PLAN_H
#include <stddef.h>

#include "common/config.h"
#include "schedules/schedule.h"

/* 1 when `name` is a schedule builder ("gpipe", "1f1b", ...), 0 for a path. */
int bt_plan_is_builder(const char *name);

/* Builds cfg->run.schedule, or reads csv_path when the schedule is "csv",
 * for cfg's stages, chunks and micro-batches; validates it and checks
 * micro-batch order. BT_EARG or BT_ESCHEDULE with a one-line reason in
 * err. */
int bt_plan_schedule(const bt_config_t *cfg, const char *csv_path, bt_schedule_t *out, char *err, size_t errlen);

/* first[k], last[k]: the global layers of virtual stage k (p·v entries),
 * from cfg->run.layout or the balanced split. BT_EARG with the reason. */
int bt_plan_layout(const bt_config_t *cfg, int *first, int *last, char *err, size_t errlen);

#endif
