/* comm.h - the messages a schedule implies, derived from compute actions.
 *
 * Nobody writes communication by hand: the worker (worker/pipeline.c), the
 * supervisor's hang report, the schedule checks (check.c) and the CSV
 * reader call bt_comm_of() so they agree on who sends what to whom; the simulator
 * (sim.c) applies the same rule to an action's inputs itself.
 * The rule (DESIGN.md §3, §4):
 *   F(k,i), k > 0      needs the activation of (k-1,i) from worker_of(k-1)
 *   F(k,i), k < last   then sends its activation to worker_of(k+1)
 *   B/I(k,i), k < last needs the gradient of (k+1,i) from worker_of(k+1)
 *   B/I(k,i), k > 0    then sends its input gradient to worker_of(k-1)
 *   W                  neither sends nor receives.
 * When both ends sit on the same worker (p = 1, or consecutive chunks that
 * share a worker) the tensor stays in memory and no message exists.
 *
 * A tag names the tensor by its producer: an activation tag carries the
 * virtual stage whose forward produced it, a gradient tag the virtual stage
 * whose backward produced it. This file does not move bytes: the worker's
 * transports do.
 */
#ifndef BT_SCHEDULES_COMM_H
#define BT_SCHEDULES_COMM_H
#include <stdint.h>

#include "schedules/schedule.h"

typedef enum { BT_MSG_ACTIVATION = 0, BT_MSG_GRADIENT = 1 } bt_msg_kind_t;

typedef struct {
  int64_t step;
  int32_t kind;  /* bt_msg_kind_t */
  int32_t stage; /* virtual stage that produced the tensor */
  int32_t mb;    /* micro-batch */
} bt_tag_t;

typedef struct {
  int peer; /* the worker on the other end */
  bt_tag_t tag;
} bt_msg_t;

/* At most one receive and one send per action today; room for compound
 * actions later. */
#define BT_COMM_MAX 2

typedef struct {
  int nrecv;
  int nsend;
  bt_msg_t recv[BT_COMM_MAX]; /* needed before the action may start */
  bt_msg_t send[BT_COMM_MAX]; /* produced when the action ends */
} bt_comm_t;

/* The receives action j of worker w needs and the sends it produces, with
 * tags for `step`. Cross-worker messages only. 0 or BT_EARG for an index
 * out of range. */
int bt_comm_of(const bt_schedule_t *s, int w, size_t j, int64_t step, bt_comm_t *out);

/* The same, for an action by value (it must sit on its own worker). */
void bt_comm_of_action(const bt_schedule_t *s, const bt_action_t *a, int64_t step, bt_comm_t *out);

/* "activation" or "gradient". */
const char *bt_msg_kind_name(int kind);

#endif
