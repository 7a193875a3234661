/* comm.c - the messages of each action; the rule is documented in comm.h. */
#include "schedules/comm.h"

#include <string.h>

#include "common/error.h"

const char *bt_msg_kind_name(int kind) {
  return kind == BT_MSG_ACTIVATION ? "activation" : "gradient";
}

void bt_comm_of_action(const bt_schedule_t *s, const bt_action_t *a, int64_t step, bt_comm_t *out) {
  memset(out, 0, sizeof *out);
  int V = bt_sched_nstages(s), w = bt_sched_worker_of(s, a->stage), k = a->stage;
  if (a->type == BT_ACT_F) {
    if (k > 0 && bt_sched_worker_of(s, k - 1) != w)
      out->recv[out->nrecv++] =
          (bt_msg_t){.peer = bt_sched_worker_of(s, k - 1),
                     .tag = {.step = step, .kind = BT_MSG_ACTIVATION, .stage = k - 1, .mb = a->mb}};
    if (k < V - 1 && bt_sched_worker_of(s, k + 1) != w)
      out->send[out->nsend++] =
          (bt_msg_t){.peer = bt_sched_worker_of(s, k + 1),
                     .tag = {.step = step, .kind = BT_MSG_ACTIVATION, .stage = k, .mb = a->mb}};
  } else if (a->type == BT_ACT_B || a->type == BT_ACT_I) {
    if (k < V - 1 && bt_sched_worker_of(s, k + 1) != w)
      out->recv[out->nrecv++] =
          (bt_msg_t){.peer = bt_sched_worker_of(s, k + 1),
                     .tag = {.step = step, .kind = BT_MSG_GRADIENT, .stage = k + 1, .mb = a->mb}};
    if (k > 0 && bt_sched_worker_of(s, k - 1) != w)
      out->send[out->nsend++] =
          (bt_msg_t){.peer = bt_sched_worker_of(s, k - 1),
                     .tag = {.step = step, .kind = BT_MSG_GRADIENT, .stage = k, .mb = a->mb}};
  }
}

int bt_comm_of(const bt_schedule_t *s, int w, size_t j, int64_t step, bt_comm_t *out) {
  if (w < 0 || w >= s->p || j >= bt_sched_len(s, w)) {
    memset(out, 0, sizeof *out);
    return BT_EARG;
  }
  bt_comm_of_action(s, bt_sched_at(s, w, j), step, out);
  return 0;
}
