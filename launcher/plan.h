/* plan.h - what `baton run` decides before spawning anything: the schedule
 * and the layer range of every virtual stage, refused with one line and
 * exit code 2 before a single process starts when they cannot run.
 *
 * The supervisor and the worker share one implementation, in
 * schedules/plan.h (the launcher may not include worker code nor the worker
 * launcher code, DESIGN.md §1); this header names it for the launcher.
 */
#ifndef BT_LAUNCHER_PLAN_H
#define BT_LAUNCHER_PLAN_H
#include "schedules/plan.h"

#endif
