/* agent.h - the node agent: what `baton run --nnodes N --node-rank R>0`
 * runs on every node but the coordinating one (DESIGN.md §5, §7).
 *
 * It joins the coordinator (launcher/hub.c) over one TCP connection with
 * the challenge-response of common/auth.h (the secret never crosses the
 * wire), then spawns, feeds and reports the workers the coordinator places
 * on this node: it is the local half of a supervisor, with every decision
 * (placement, restarts, checkpoints, the exit code) taken by the
 * coordinator. The protocol is the BT_NODE_* messages of common/frame.h.
 *
 * When the coordinator is lost (its connection breaks, a malformed frame
 * comes, or it stays silent for the node timeout of its WELCOME) the agent
 * SIGKILLs its workers, waits for them, and exits BT_EXIT_COORD_LOST (81);
 * failing to reach or authenticate with it is BT_EXIT_RENDEZVOUS (82).
 */
#ifndef BT_LAUNCHER_AGENT_H
#define BT_LAUNCHER_AGENT_H
#include <stdint.h>

#include "common/auth.h"

typedef struct {
  const char *rdzv_host;
  int rdzv_port;
  uint32_t node_rank;
  const char *job_id;
  const bt_secret_t *secret;
  uint32_t slots;          /* workers this node can run */
  const char *data_host;   /* address this node's workers bind+advertise; NULL: the local
                              address of the connection to the coordinator (getsockname) */
  const char *ckpt_dir;    /* to read the join probe file; NULL: none */
  double join_timeout_s;   /* keep trying to reach and join the coordinator this long */
  double handshake_s;      /* each handshake step's deadline (<= 0: 10 s) */
  const char *worker_exe;  /* the program SPAWN's argv[0] is replaced by; NULL: this
                              executable (/proc/self/exe). Tests point it at a helper */
} bt_agent_opts_t;

/* Runs the agent until the coordinator says BYE (its code is returned), the
 * coordinator is lost (81), joining fails (82) or a second SIGTERM/SIGINT
 * stops this node (128 + signal). Prints one line on each way out but BYE
 * (which prints the coordinator's text, if any). */
int bt_agent_run(const bt_agent_opts_t *o);

#endif
