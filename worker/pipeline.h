/* pipeline.h - one pipeline stage of `baton run`: the worker's training loop
 * (DESIGN.md §4).
 *
 * The worker builds its own copy of the global schedule from the
 * configuration (every worker computes the same schedule, so nobody ships
 * it around), creates its stage (worker/stage.h) with the layer ranges of
 * its chunks (virtual stage k = c·p + s), listens on the socket transport,
 * sends READY with its address, waits for START, connects to its peers,
 * and then for each step walks its action list under the communication
 * rule: every receive of the step is posted when the step starts (each
 * (chunk, micro-batch) owns its buffers, so nothing stops them being posted
 * that early), an action blocks only on the receives it needs, sends start
 * when their action ends and complete in the background, and all sends are
 * waited for at the end of the step. Then the optimizer step, METRICS,
 * TRACE; HASHES and DONE after the last step.
 *
 * Not here: parsing flags and the environment (worker/cmd_worker.c), the
 * control channel (worker/control.h), the math (worker/stage.h).
 */
#ifndef BT_WORKER_PIPELINE_H
#define BT_WORKER_PIPELINE_H
#include <stddef.h>

#include "common/config.h"
#include "schedules/schedule.h"
#include "worker/control.h"

/* The schedule of cfg->run: a builder name ("gpipe", "1f1b", "interleaved",
 * "zb-h1"), or "csv" for the file csv_path (BATON_SCHEDULE_CSV: a path does
 * not fit the configuration's schedule name), for run.stages workers,
 * run.chunks chunks and model.microbatches micro-batches. The CSV's own
 * counts must agree with them. Validated, and checked for micro-batch order
 * of the weight gradients (bit-identical training needs it). BT_EARG or
 * BT_ESCHEDULE with a one-line reason in err. */
int bt_pipeline_schedule(const bt_config_t *cfg, const char *csv_path, bt_schedule_t *out, char *err,
                         size_t errlen);

/* The layer range of every virtual stage (p·v entries of first/last global
 * layer) from run.layout (explicit counts) or the balanced split. BT_EARG
 * with a one-line reason when it cannot cover the layers. */
int bt_pipeline_layout(const bt_config_t *cfg, int *first, int *last, char *err, size_t errlen);

/* Runs the stage env->stage to the end. Returns a worker exit code
 * (BT_WEXIT_*), after sending ERROR with the reason when it fails. */
int bt_pipeline_run(const bt_config_t *cfg, const char *csv_path, const bt_control_env_t *env,
                    bt_control_t *ctl);

#endif
