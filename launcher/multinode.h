/* multinode.h - what `baton run` does when a job spans nodes
 * (docs/multinode.md): the flags (or Slurm's environment), the node agent
 * on ranks > 0 (launcher/agent.h), and on rank 0 the coordinator's side:
 * the hub (launcher/hub.h), the join, and the placement of stages on the
 * nodes alive before each incarnation.
 */
#ifndef BT_LAUNCHER_MULTINODE_H
#define BT_LAUNCHER_MULTINODE_H
#include <stdint.h>

#include "common/auth.h"
#include "common/frame.h"
#include "launcher/hub.h"

typedef struct {
  uint32_t nnodes, node_rank;  /* 1, 0: a single-node job */
  char rdzv_host[256];
  int rdzv_port;
  char job_id[128];
  const char *secret_file;
  int stages_per_node;         /* 0: the default (devices, or one per two cores) */
  const char *data_host;       /* where this node's workers bind; NULL: see docs */
  double join_timeout_s;       /* default 300 */
  double node_timeout_s;       /* default 10 */
  double beat_s;               /* default 1 */
  int given;                   /* a multi-node flag was given */
  int given_rdzv, given_nnodes, given_rank;
  int from_slurm;
} bt_mn_opts_t;

void bt_mn_defaults(bt_mn_opts_t *m);
int bt_mn_flag_known(const char *name);
/* 0, or 2 with one line printed. */
int bt_mn_flag_parse(bt_mn_opts_t *m, const char *name, const char *v);
const char *bt_mn_help(void);

/* Fills what the flags left out from Slurm's environment, checks the whole
 * and loads nothing yet. 0 (m->nnodes > 1: multi-node), or 2 with one line
 * printed. */
int bt_mn_resolve(bt_mn_opts_t *m, const char *backend);

/* A node of rank > 0: joins and serves the coordinator until it says BYE.
 * Returns the exit code. */
int bt_mn_run_agent(const bt_mn_opts_t *m, const char *ckpt_dir);

/* The coordinator. */
typedef struct {
  bt_mn_opts_t o;
  bt_secret_t *secret;
  bt_hub_t *hub;
  uint32_t own_slots;
  uint32_t stage_node[BT_MAX_STAGES], stage_local[BT_MAX_STAGES], node_stages[BT_MAX_STAGES];
  const char *stage_bind[BT_MAX_STAGES];
  char (*hosts)[BT_HUB_HOST_MAX]; /* data host of each node */
  char token[2 * BT_SHA256_LEN + 1];
  char token_label[160];
  uint32_t nodes_used;
} bt_mn_coord_t;

/* Loads the secret, listens, waits for every node to join. 0 or an exit
 * code with one line printed; *slots is every node's slots together. */
int bt_mn_coord_start(bt_mn_coord_t *c, const bt_mn_opts_t *m, const char *ckpt_dir, uint32_t *slots);
/* Slots of the nodes alive now. */
uint32_t bt_mn_capacity(bt_mn_coord_t *c);
/* Places `stages` (<= capacity) on the nodes alive now, in rank order, and
 * makes this incarnation's data-plane token. 0 or a negative code. */
int bt_mn_place(bt_mn_coord_t *c, uint32_t stages, uint32_t inc);
/* Says BYE with the job's exit code, stops the hub. */
void bt_mn_coord_stop(bt_mn_coord_t *c, int exit_code);

#endif
