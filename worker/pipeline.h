/* pipeline.h - one pipeline stage of `baton run`: the worker's training loop
 * (DESIGN.md §4).
 *
 * The worker builds its own copy of the global schedule from the
 * configuration with schedules/plan.h, the code the supervisor checked it
 * with (every worker computes the same schedule, so nobody ships it
 * around), creates its stage (worker/stage.h) with the layer ranges of
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

/* Runs the stage env->stage to the end. Returns a worker exit code
 * (BT_WEXIT_*), after sending ERROR with the reason when it fails. */
int bt_pipeline_run(const bt_config_t *cfg, const char *csv_path, const bt_control_env_t *env,
                    bt_control_t *ctl);

#endif
