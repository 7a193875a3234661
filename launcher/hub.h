/* hub.h - the coordinator's network face (multi-node `baton run`, node
 * rank 0): a thread with its own libuv loop that accepts the node agents
 * (launcher/agent.c), authenticates them, keeps their heartbeats, and
 * carries the supervisor's messages to the stages placed on them.
 *
 * Why a thread: the agents' links and heartbeats outlive every incarnation
 * of the job (bt_supervisor_run runs one loop per incarnation), and a node
 * must never be declared lost because the coordinator was busy between two
 * incarnations (choosing and verifying a checkpoint, planning a re-form).
 *
 * Rendezvous (docs/multinode.md): an agent connects and sends HELLO (its
 * rank, the job id, a nonce); the hub answers CHALLENGE (its nonce and its
 * proof that it holds the job secret); the agent answers AUTH (its proof);
 * the hub sends WELCOME (heartbeat period, node timeout, the name of a
 * probe file it just wrote into the checkpoint directory); the agent
 * answers JOIN (its slots, its data-plane host, the probe file's content).
 * A connection that sends garbage, a wrong job id or rank, a wrong proof,
 * or nothing within the handshake deadline is closed, and each reason is
 * logged once (then counted); unauthenticated connections beyond
 * `max_pending` are closed on accept, so a flood cannot starve the job.
 *
 * Liveness: every node and the hub send BEAT every `beat_ms`; a node whose
 * link drops, that is silent for `node_timeout_ms`, or that leaves more
 * than BT_HUB_MAX_QUEUED bytes unread is lost. A lost node
 * (or a replacement with the same rank) may join again; it is used from
 * the next incarnation on.
 *
 * Threads: the hub's state is guarded by one mutex. The supervisor's loop
 * gets the agents' messages through bt_hub_next() after the hub wakes it
 * (the uv_async_t given to bt_hub_notify); bt_hub_send() may be called
 * from any thread.
 */
#ifndef BT_LAUNCHER_HUB_H
#define BT_LAUNCHER_HUB_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/auth.h"
#include "common/frame.h"

#define BT_HUB_MAX_NODES 4096
#define BT_HUB_HOST_MAX 256
#define BT_HUB_MAX_QUEUED (64u << 20) /* bytes a node may leave unread: then it is lost */

typedef struct bt_hub bt_hub_t;

typedef struct {
  const char *bind_host;       /* the address to listen on (told, never guessed) */
  int port;                    /* 0: any (bt_hub_port says which) */
  uint32_t nnodes;             /* nodes of the job, the coordinator (rank 0) included */
  const bt_secret_t *secret;
  const char *job_id;
  const char *ckpt_dir;        /* write a probe file here that every node must read back (NULL: none) */
  int64_t beat_ms;             /* heartbeat period, both ways (default 1000) */
  int64_t node_timeout_ms;     /* silent this long: lost (default 10000) */
  int64_t handshake_ms;        /* each rendezvous step (default 5000) */
  uint32_t max_pending;        /* unauthenticated connections at once (default 64) */
  int64_t coalesce_us;         /* nap after each round of events, so a busy hub reads many
                                  nodes per wake-up (default 2000; 0: none) */
} bt_hub_opts_t;

void bt_hub_opts_default(bt_hub_opts_t *o);

/* Binds, listens and starts the thread. 0 or a negative code with one line
 * in why. */
int bt_hub_start(const bt_hub_opts_t *o, bt_hub_t **out, char *why, size_t whylen);
int bt_hub_port(const bt_hub_t *h);

/* Blocks until every node 1..nnodes-1 has joined, or `timeout_s` passed
 * (why names the missing ranks), or a node was refused for a reason that
 * waiting cannot fix (why says it). 0 or a negative code. */
int bt_hub_wait_joined(bt_hub_t *h, double timeout_s, char *why, size_t whylen);

/* A snapshot of one node. Rank 0 is the coordinator: always alive. */
typedef struct {
  int alive;
  uint32_t slots;
  char data_host[BT_HUB_HOST_MAX];
  char hostname[BT_HUB_HOST_MAX];
  uint32_t generation;         /* joins so far: a rejoin is a new generation */
  double silent_s;             /* since its last message (0 for rank 0 and lost nodes) */
} bt_hub_node_t;
int bt_hub_node(bt_hub_t *h, uint32_t node, bt_hub_node_t *out);

/* Sends one message to a node. BT_EPEER when the node is not alive (the
 * caller treats its stages as lost). Any thread. */
int bt_hub_send(bt_hub_t *h, uint32_t node, uint16_t type, const bt_node_msg_t *m);

/* What the agents said, for the supervisor's loop. */
typedef enum { BT_HUB_EV_MSG = 1, BT_HUB_EV_LOST, BT_HUB_EV_JOINED } bt_hub_ev_kind_t;
typedef struct {
  bt_hub_ev_kind_t kind;
  uint32_t node;
  uint16_t type;               /* MSG: the BT_NODE_* type */
  bt_node_msg_t m;             /* MSG: m.data points to `data` */
  uint8_t *data;
  char why[256];               /* LOST: why */
} bt_hub_event_t;

/* The uv_async_t to wake when an event is queued (NULL: none). Events queue
 * up either way. */
void bt_hub_notify(bt_hub_t *h, uv_async_t *a);
/* Pops the oldest event into *ev (free with bt_hub_event_free). 1, or 0
 * when there is none. */
int bt_hub_next(bt_hub_t *h, bt_hub_event_t *ev);
void bt_hub_event_free(bt_hub_event_t *ev);
/* Drops every queued event (a new incarnation starts clean). */
void bt_hub_drain(bt_hub_t *h);

typedef struct {
  double cpu_s;                /* the hub thread's CPU time since start */
  double wall_s;
  uint64_t beats;              /* heartbeats handled */
  double beat_p50_ms, beat_p99_ms, beat_max_ms; /* stamped heartbeats: send -> handled (same host) */
  uint64_t refused[8];         /* by reason, see bt_hub_refusal_name */
  uint64_t lost;               /* nodes lost so far */
} bt_hub_stats_t;
void bt_hub_stats(bt_hub_t *h, bt_hub_stats_t *st);
const char *bt_hub_refusal_name(int reason);

/* Says BYE (the job's exit code and a line) to every live node, waits up
 * to `flush_s` for it to leave, stops the thread and frees the hub. */
void bt_hub_stop(bt_hub_t *h, int exit_code, const char *text, double flush_s);

#endif
