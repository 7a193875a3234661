/* pipeline.c - see pipeline.h. */
#include "worker/pipeline.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/crc.h"
#include "common/deadlines.h"
#include "common/error.h"
#include "common/log.h"
#include "common/model.h"
#include "kernels/backend.h"
#include "schedules/comm.h"
#include "schedules/plan.h"
#include "worker/faults.h"
#include "worker/stage.h"
#include "worker/stage_ckpt.h"
#include "worker/transport.h"
#include "worker/transport_nccl.h"

/* HASHES frames stay far below BT_FRAME_MAX_PAYLOAD with this many records
 * each (a record is under 80 bytes on the wire). */
#define HASH_RECS_PER_FRAME 4096
/* How long a worker that lost a peer waits for a STOP that explains it. */
#define STOP_SETTLE_MS 1000
/* The same for TRACE frames (an event is under 50 bytes on the wire). */
#define TRACE_EVS_PER_FRAME 8192

/* ---------- the run ---------- */

typedef struct {
  const bt_config_t *cfg;
  const char *csv_path;
  const bt_control_env_t *env;
  bt_control_t *ctl;
  bt_schedule_t sched;
  bt_backend_t *be;
  bt_stage_t *st;
  bt_tx_t *tx;
  int me, p, v, nv;
  int holds_head;
  size_t nact;
  bt_tx_req_t **reqs;      /* nact * BT_COMM_MAX receive requests of the step */
  bt_trace_ev_t *ev;       /* nact */
  bt_faults_t faults;      /* injected faults of this stage (incarnation 0) */
  int *peers, npeers;      /* the stages this one exchanges messages with */
  /* GPUs: cuda set with the CUDA backend; twins non-NULL when the socket
   * transport carries device tensors through pinned host buffers */
  int cuda, device;
  char gpu[BT_GPU_NAME_MAX];
  uint8_t nccl_id[BT_TX_NCCL_ID_BYTES];
  struct twin { const float *dev; void *host; } *twins;
  size_t ntwins;
  /* checkpoints: NULL writer when the job has no checkpoint directory */
  bt_ckpt_writer_t *writer;
  bt_stage_ckpt_t sc;       /* the stage's tensors and texts (worker/stage_ckpt.h) */
  int64_t ckpt_handled;    /* the last CKPT_AT step acted on (saved or late) */
  char err[512];
} pipe_t;

static int exit_code_of(int rc) {
  switch (rc) {
  case BT_EPEER:
  case BT_ETIMEOUT:
  case BT_ETRANSPORT:
  case BT_ETAG:
    return BT_WEXIT_RETRY;
  case BT_EARG:
  case BT_ECONFIG:
  case BT_ESCHEDULE:
  case BT_EDEADLOCK:
  case BT_EBACKEND:
  case BT_EUNSUPPORTED:
  case BT_ENOTCKPT:
  case BT_ECORRUPT:
  case BT_ECRC:
  case BT_EVERSION:
  case BT_EHDF5:
  case -ENOENT:
    /* only restore meets these on this path: no usable checkpoint */
    return BT_WEXIT_FATAL;
  case BT_ENONFINITE:
    return BT_WEXIT_NONFINITE;
  default:
    return BT_WEXIT_ERROR;
  }
}

/* The buffer a message of this worker lands in or leaves from. An
 * activation from virtual stage k feeds k+1; a gradient from k feeds k-1. */
static float *recv_buf(pipe_t *w, const bt_tag_t *t) {
  int k = t->kind == BT_MSG_ACTIVATION ? t->stage + 1 : t->stage - 1;
  int c = bt_sched_chunk_of(&w->sched, k);
  return t->kind == BT_MSG_ACTIVATION ? bt_stage_act_in(w->st, c, t->mb) : bt_stage_grad_in(w->st, c, t->mb);
}

static float *send_buf(pipe_t *w, const bt_tag_t *t) {
  int c = bt_sched_chunk_of(&w->sched, t->stage);
  return t->kind == BT_MSG_ACTIVATION ? bt_stage_act_out(w->st, c, t->mb) : bt_stage_grad_out(w->st, c, t->mb);
}

/* Consecutive virtual stages on this same worker (p = 1 with chunks, the
 * turn of a V placement on the last stage) pass the tensor in memory: the
 * schedule derives no message for them, so the transport never sees it. */
static int hand_off_locally(pipe_t *w, const bt_action_t *a) {
  size_t bytes = bt_stage_act_bytes(w->st);
  const bt_schedule_t *s = &w->sched;
  int k = a->stage;
  if (bt_log_get_level() >= BT_LOG_DEBUG &&
      ((a->type == BT_ACT_F && k + 1 < w->nv && bt_sched_worker_of(s, k + 1) == w->me) ||
       ((a->type == BT_ACT_B || a->type == BT_ACT_I) && k > 0 && bt_sched_worker_of(s, k - 1) == w->me)))
    bt_debug("%c%d of micro-batch %d: handed to virtual stage %d in memory",
             a->type == BT_ACT_F ? 'F' : 'B', k, a->mb, a->type == BT_ACT_F ? k + 1 : k - 1);
  if (a->type == BT_ACT_F && k + 1 < w->nv && bt_sched_worker_of(s, k + 1) == w->me) {
    float *src = bt_stage_act_out(w->st, bt_sched_chunk_of(s, k), a->mb);
    float *dst = bt_stage_act_in(w->st, bt_sched_chunk_of(s, k + 1), a->mb);
    return w->be->ops->copy(w->be, dst, src, bytes);
  }
  if ((a->type == BT_ACT_B || a->type == BT_ACT_I) && k > 0 && bt_sched_worker_of(s, k - 1) == w->me) {
    float *src = bt_stage_grad_out(w->st, bt_sched_chunk_of(s, k), a->mb);
    float *dst = bt_stage_grad_in(w->st, bt_sched_chunk_of(s, k - 1), a->mb);
    return w->be->ops->copy(w->be, dst, src, bytes);
  }
  return 0;
}

static int compute(pipe_t *w, const bt_action_t *a) {
  int c = bt_sched_chunk_of(&w->sched, a->stage);
  switch (a->type) {
  case BT_ACT_F: return bt_stage_forward(w->st, c, a->mb);
  case BT_ACT_B: return bt_stage_backward(w->st, c, a->mb);
  case BT_ACT_I: return bt_stage_backward_input(w->st, c, a->mb);
  case BT_ACT_W: return bt_stage_backward_weight(w->st, c, a->mb);
  default: return BT_ESCHEDULE;
  }
}

/* What the transport moves for a stage buffer: the buffer itself, or its
 * pinned host twin when sockets carry device tensors. */
static void *wire_buf(pipe_t *w, float *dev) {
  for (size_t i = 0; i < w->ntwins; i++)
    if (w->twins[i].dev == dev) return w->twins[i].host;
  return dev;
}

static uint64_t peer_deadline(pipe_t *w) { return bt_deadline_ms(w->env->peer_timeout_ms); }

/* One step: post every receive, walk the actions, optimizer, close the step. */
static int run_step(pipe_t *w, int64_t step, double *busy_s) {
  size_t bytes = bt_stage_act_bytes(w->st);
  int rc = bt_stage_begin_step(w->st, step - 1);
  if (rc < 0) return rc;
  for (size_t j = 0; j < w->nact; j++) {
    bt_comm_t cm;
    if ((rc = bt_comm_of(&w->sched, w->me, j, step, &cm)) < 0) return rc;
    for (int r = 0; r < cm.nrecv; r++) {
      void *buf = wire_buf(w, recv_buf(w, &cm.recv[r].tag));
      rc = bt_tx_irecv(w->tx, buf, bytes, cm.recv[r].peer, cm.recv[r].tag, &w->reqs[j * BT_COMM_MAX + r]);
      if (rc < 0) return rc;
    }
  }
  double busy = 0;
  for (size_t j = 0; j < w->nact; j++) {
    const bt_action_t *a = bt_sched_at(&w->sched, w->me, j);
    bt_comm_t cm;
    bt_comm_of(&w->sched, w->me, j, step, &cm);
    bt_control_progress(w->ctl, step, (int64_t)j, BT_PHASE_WAIT);
    bt_faults_action(&w->faults, step, (int64_t)j);
    for (int r = 0; r < cm.nrecv; r++) {
      bt_tx_req_t **req = &w->reqs[j * BT_COMM_MAX + r];
      if (bt_log_get_level() >= BT_LOG_DEBUG) {
        char tag[96], an[32];
        bt_tag_str(&cm.recv[r].tag, tag, sizeof tag);
        bt_debug("step %lld: %s waits for %s from stage %d", (long long)step, bt_action_format(a, an, sizeof an),
                 tag, cm.recv[r].peer);
      }
      rc = bt_tx_wait(w->tx, *req, peer_deadline(w));
      if (rc == 0) {
        *req = NULL;
        if (w->twins) {
          float *dev = recv_buf(w, &cm.recv[r].tag);
          rc = bt_tx_stage_in(w->be, dev, wire_buf(w, dev), bytes);
        }
      }
      if (rc < 0) {
        char tag[96];
        bt_tag_str(&cm.recv[r].tag, tag, sizeof tag);
        bt_errf(w->err, sizeof w->err, "step %lld: receiving %s from stage %d: %s", (long long)step, tag,
             cm.recv[r].peer, bt_strerror(rc));
        return rc;
      }
    }
    bt_control_progress(w->ctl, step, (int64_t)j, BT_PHASE_COMPUTE);
    double t0 = bt_clock_s();
    rc = compute(w, a);
    if (rc == 0) rc = hand_off_locally(w, a);
    double t1 = bt_clock_s();
    if (rc < 0) {
      char an[32];
      bt_errf(w->err, sizeof w->err, "step %lld: action %s: %s", (long long)step,
           bt_action_format(a, an, sizeof an), bt_strerror(rc));
      return rc;
    }
    busy += t1 - t0;
    for (int s = 0; s < cm.nsend; s++) {
      if ((rc = bt_faults_before_send(&w->faults)) < 0) {
        bt_errf(w->err, sizeof w->err, "step %lld: injected hang before sending to stage %d ended", (long long)step,
             cm.send[s].peer);
        return rc;
      }
      float *dev = send_buf(w, &cm.send[s].tag);
      void *buf = wire_buf(w, dev);
      /* the host twin of (chunk, mb) stays untouched until the step ends */
      rc = w->twins ? bt_tx_stage_out(w->be, buf, dev, bytes) : 0;
      if (rc == 0 && bt_log_get_level() >= BT_LOG_DEBUG) {
        char tag[96], an[32];
        bt_tag_str(&cm.send[s].tag, tag, sizeof tag);
        bt_debug("step %lld: %s sends %s to stage %d", (long long)step, bt_action_format(a, an, sizeof an), tag,
                 cm.send[s].peer);
      }
      if (rc == 0) rc = bt_tx_isend(w->tx, buf, bytes, cm.send[s].peer, cm.send[s].tag, NULL);
      if (rc < 0) {
        bt_errf(w->err, sizeof w->err, "step %lld: sending to stage %d: %s", (long long)step, cm.send[s].peer,
             bt_strerror(rc));
        return rc;
      }
    }
    bt_trace_ev_t *e = &w->ev[j];
    e->worker = (uint32_t)w->me;
    bt_action_format(a, e->action, sizeof e->action);
    e->start_s = t0;
    e->end_s = t1;
    bt_control_action_done(w->ctl);
  }
  bt_control_progress(w->ctl, step, (int64_t)w->nact, BT_PHASE_COMPUTE);
  bt_faults_action(&w->faults, step, BT_FAULTS_END_OF_STEP);
  /* A hang armed after this stage's last send of the step still stops it
   * here, before the step's sends are finished. */
  if ((rc = bt_faults_before_send(&w->faults)) < 0) {
    bt_errf(w->err, sizeof w->err, "step %lld: injected hang at the end of the step ended", (long long)step);
    return rc;
  }
  double t0 = bt_clock_s();
  rc = bt_stage_optimizer_step(w->st);
  busy += bt_clock_s() - t0;
  if (rc < 0) {
    bt_errf(w->err, sizeof w->err, "step %lld: optimizer: %s", (long long)step, bt_strerror(rc));
    return rc;
  }
  bt_control_progress(w->ctl, step, (int64_t)w->nact, BT_PHASE_WAIT);
  if ((rc = bt_tx_end_step(w->tx, step, peer_deadline(w))) < 0) {
    bt_errf(w->err, sizeof w->err, "step %lld: finishing the sends: %s", (long long)step, bt_strerror(rc));
    return rc;
  }
  *busy_s = busy;
  return 0;
}

static int send_hashes(pipe_t *w, int64_t step) {
  bt_hash_rec_t *recs = NULL;
  size_t got = 0;
  int rc = bt_stage_ckpt_hash(w->st, &recs, &got);
  for (size_t off = 0; rc == 0 && off < got; off += HASH_RECS_PER_FRAME) {
    size_t k = got - off < HASH_RECS_PER_FRAME ? got - off : HASH_RECS_PER_FRAME;
    bt_msg_hashes_t h = {.stage = (uint32_t)w->me, .step = step, .n = (uint32_t)k, .recs = recs + off};
    rc = bt_control_send_hashes(w->ctl, &h);
  }
  free(recs);
  return rc;
}

/* The peers this worker exchanges messages with, from its own actions. */
static int find_peers(pipe_t *w, int *peers, int *npeers) {
  int *seen = calloc((size_t)w->p, sizeof *seen);
  if (!seen) return -ENOMEM;
  for (size_t j = 0; j < w->nact; j++) {
    bt_comm_t cm;
    bt_comm_of(&w->sched, w->me, j, 1, &cm);
    for (int r = 0; r < cm.nrecv; r++) seen[cm.recv[r].peer] = 1;
    for (int s = 0; s < cm.nsend; s++) seen[cm.send[s].peer] = 1;
  }
  *npeers = 0;
  for (int i = 0; i < w->p; i++)
    if (seen[i]) peers[(*npeers)++] = i;
  free(seen);
  return 0;
}

/* The CUDA device of this stage: the node-local rank modulo the devices
 * present, so a node with fewer GPUs than stages shares them (and the job
 * then falls back to sockets, NCCL refusing two ranks on one device). */
static int pick_device(pipe_t *w) {
  char why[512] = "";
  int count = 0;
  /* The CUDA runtime alone: NCCL is loaded only if the job uses it. */
  if (bt_backend_cuda_devices(&count, why, sizeof why) < 0 || count == 0) {
    bt_errf(w->err, sizeof w->err, "--backend cuda: %s", why[0] ? why : "no CUDA device");
    return BT_EBACKEND;
  }
  w->cuda = 1;
  w->device = bt_cuda_resolve_device(-1) % count;
  bt_debug("stage %d on CUDA device %d of %d", w->me, w->device, count);
  return 0;
}

/* READY's GPU name ("HOST/PCI-BUS-ID", unique in the job) and, on stage 0,
 * NCCL's unique id. A host name too long for the field is replaced by its
 * CRC: the name only has to tell GPUs apart. */
static int gpu_identity(pipe_t *w) {
  char name[512];
  int rc = bt_tx_nccl_gpu_name(w->device, name, sizeof name);
  if (rc < 0) {
    bt_errf(w->err, sizeof w->err, "the GPU's PCI bus id: %s", bt_strerror(rc));
    return rc;
  }
  if (strlen(name) >= sizeof w->gpu) {
    const char *bus = strrchr(name, '/');
    size_t hl = bus ? (size_t)(bus - name) : strlen(name);
    snprintf(w->gpu, sizeof w->gpu, "%08x%s", (unsigned)bt_crc32(0, name, hl), bus ? bus : "");
  } else {
    snprintf(w->gpu, sizeof w->gpu, "%s", name);
  }
  /* Stage 0 hosts NCCL's bootstrap. Where NCCL cannot load here, the id
   * stays all zero, which tells every worker to use sockets. */
  if (w->me == 0) {
    char why[512] = "";
    if (bt_tx_nccl_available(w->device, why, sizeof why) == 0 &&
        (rc = bt_tx_nccl_unique_id(w->nccl_id)) < 0) {
      bt_errf(w->err, sizeof w->err, "NCCL unique id: %s", bt_strerror(rc));
      return rc;
    }
    if (why[0]) bt_warn("%s", why);
  }
  return 0;
}

/* BATON_NCCL_SETUP_MS: how long creating the NCCL communicators may take
 * (default 120 s); the supervisor allows a stage in BT_PHASE_SETUP as
 * long. */
static int nccl_setup_ms(pipe_t *w, int64_t *ms) {
  const char *e = getenv("BATON_NCCL_SETUP_MS");
  *ms = 120000;
  if (!e || !*e) return 0;
  char *end;
  long long v = strtoll(e, &end, 10);
  if (*end || v <= 0) {
    bt_errf(w->err, sizeof w->err, "BATON_NCCL_SETUP_MS=%s is not a positive number of milliseconds", e);
    return BT_EARG;
  }
  *ms = v;
  return 0;
}

static int setup(pipe_t *w, int *first, int *last) {
  const bt_config_t *cfg = w->cfg;
  int rc;
  if ((rc = bt_plan_schedule(cfg, w->csv_path, &w->sched, w->err, sizeof w->err)) < 0) return rc;
  if ((rc = bt_plan_layout(cfg, first, last, w->err, sizeof w->err)) < 0) return rc;
  w->nact = bt_sched_len(&w->sched, w->me);
  w->reqs = calloc(w->nact * BT_COMM_MAX + 1, sizeof *w->reqs);
  w->ev = calloc(w->nact + 1, sizeof *w->ev);
  if (!w->reqs || !w->ev) return -ENOMEM;
  char why[512] = "";
  w->device = -1;
  if (!strcmp(cfg->run.backend, "cuda") && (rc = pick_device(w)) < 0) return rc;
  if ((rc = bt_backend_create(cfg->run.backend, w->device, &w->be, why, sizeof why)) < 0) {
    bt_errf(w->err, sizeof w->err, "--backend %s: %s", cfg->run.backend, why[0] ? why : bt_strerror(rc));
    return rc;
  }
  bt_layer_range_t ranges[BT_SCHED_MAX_CHUNKS];
  for (int c = 0; c < w->v; c++) {
    int k = bt_sched_stage_of(&w->sched, w->me, c);
    ranges[c].first = first[k];
    ranges[c].last = last[k];
    if (ranges[c].last >= bt_model_layer_count(&cfg->model) - 1) w->holds_head = 1;
  }
  if ((rc = bt_stage_create(w->be, &cfg->model, ranges, w->v, &w->st, why, sizeof why)) < 0) {
    bt_errf(w->err, sizeof w->err, "creating the stage: %s", why[0] ? why : bt_strerror(rc));
    return rc;
  }
  uint8_t token[BT_TX_TOKEN_MAX];
  size_t token_len = 0;
  if ((rc = bt_tx_token_parse(w->env->token, token, &token_len)) < 0) {
    bt_errf(w->err, sizeof w->err, "BATON_JOB_TOKEN is missing or malformed");
    return rc;
  }
  w->peers = calloc((size_t)w->p, sizeof *w->peers);
  if (!w->peers) return -ENOMEM;
  if ((rc = find_peers(w, w->peers, &w->npeers)) < 0) return rc;
  /* Sockets listen from the start, whatever START decides: READY carries
   * their address, and they are the fallback when NCCL cannot be used.
   * BATON_DATA_BIND names the one address to listen on, and the one peers
   * dial (the transport advertises it, or this host's name for a wildcard):
   * peers on other nodes need TCP there, so it overrides BATON_DATA_PLANE. */
  const char *bind = w->env->data_bind[0] ? w->env->data_bind : NULL;
  bt_tx_socket_opts_t to = {.rank = w->me, .nranks = w->p, .peers = w->peers, .npeers = w->npeers,
                            .token = token, .token_len = token_len,
                            .local = !bind && !w->env->data_plane_tcp, .bind_host = bind};
  rc = bt_tx_socket_create(&to, &w->tx);
  if (rc < 0) bt_errf(w->err, sizeof w->err, "data plane: %s", bt_strerror(rc));
  if (rc == 0 && w->cuda) rc = gpu_identity(w);
  return rc;
}

/* After START, with the CUDA backend: NCCL when every stage has a GPU of
 * its own (the table in START.gpus, the same on every worker, so all
 * choose alike), else the socket transport through pinned host twins of
 * every message buffer. */
static int choose_transport(pipe_t *w, const bt_msg_start_t *start, int *use_sockets) {
  *use_sockets = 1;
  if (!w->cuda) return 0;
  const char *names[BT_MAX_STAGES];
  for (int i = 0; i < w->p; i++) names[i] = start->gpus[i];
  char why[512] = "";
  int rc;
  static const uint8_t no_id[BT_TX_NCCL_ID_BYTES];
  int have_id = memcmp(start->nccl_id, no_id, sizeof no_id) != 0;
  if (!have_id) snprintf(why, sizeof why, "stage 0 cannot load NCCL");
  if (have_id && bt_tx_nccl_choose(names, w->p, why, sizeof why) == 1) {
    int64_t setup_ms;
    if ((rc = nccl_setup_ms(w, &setup_ms)) < 0) return rc;
    bt_tx_destroy(w->tx);
    w->tx = NULL;
    bt_control_progress(w->ctl, start->first_step - 1, 0, BT_PHASE_SETUP);
    bt_tx_nccl_opts_t no = {.rank = w->me, .nranks = w->p, .device = w->device, .id = start->nccl_id,
                            .peers = w->peers, .npeers = w->npeers, .init_ms = setup_ms,
                            .stream = w->be->ops->stream ? w->be->ops->stream(w->be) : NULL};
    if ((rc = bt_tx_nccl_create(&no, &w->tx, why, sizeof why)) < 0)
      bt_errf(w->err, sizeof w->err, "NCCL transport: %s", why[0] ? why : bt_strerror(rc));
    bt_control_progress(w->ctl, start->first_step - 1, 0, BT_PHASE_INIT);
    *use_sockets = 0;
    return rc;
  }
  if (w->me == 0) bt_warn("%s: using the socket transport through pinned host buffers", why);
  int m = w->cfg->model.microbatches;
  size_t bytes = bt_stage_act_bytes(w->st);
  w->twins = calloc((size_t)w->v * (size_t)m * 4 + 1, sizeof *w->twins);
  if (!w->twins) return -ENOMEM;
  for (int c = 0; c < w->v; c++)
    for (int mb = 0; mb < m; mb++) {
      float *bufs[4] = {bt_stage_act_in(w->st, c, mb), bt_stage_act_out(w->st, c, mb),
                        bt_stage_grad_in(w->st, c, mb), bt_stage_grad_out(w->st, c, mb)};
      for (int k = 0; k < 4; k++) {
        if (!bufs[k]) continue;
        void *host = NULL;
        if ((rc = bt_tx_stage_alloc(w->be, bytes, &host)) < 0) {
          bt_errf(w->err, sizeof w->err, "pinned host buffers: %s", bt_strerror(rc));
          return rc;
        }
        w->twins[w->ntwins++] = (struct twin){.dev = bufs[k], .host = host};
      }
    }
  return 0;
}

/* ---------- checkpoints ---------- */

/* Runs on the writer's thread when a save ends: SHARD_DURABLE, or ERROR
 * for a failed save (not fatal: that step just never commits). The control
 * sends take the frame lock, so this may race the main thread's sends. */
static void ckpt_done(void *arg, const bt_ckpt_result_t *r) {
  pipe_t *w = arg;
  if (r->rc == 0) {
    bt_msg_shard_t m = r->shard;
    m.stage = (uint32_t)w->me;
    bt_debug("shard of step %lld durable (%.3f s)", (long long)r->step, r->write_s);
    if (bt_control_send_shard(w->ctl, &m) < 0) bt_warn("could not report the shard of step %lld", (long long)r->step);
    return;
  }
  char text[256];
  snprintf(text, sizeof text, "checkpoint of step %lld failed: %s", (long long)r->step, bt_strerror(r->rc));
  bt_warn("%s", text);
  /* exit_code -1: the worker is not exiting over it */
  bt_control_send_error(w->ctl, r->rc, -1, text);
}

static int fill_tensor(void *arg, size_t i, float *dst) {
  pipe_t *w = arg;
  bt_faults_fill(&w->faults, i, w->sc.n);
  return bt_stage_tensor_get(w->st, i, dst);
}

/* Describes the stage's tensors for the checkpoint module (to save or to
 * restore) and makes the writer when there is a checkpoint directory. */
static int ckpt_setup(pipe_t *w) {
  if (!w->env->ckpt_dir[0] && !w->env->restore_dir[0]) return 0;
  int rc = bt_stage_ckpt_init(&w->sc, w->st, w->cfg, (uint32_t)w->me, (uint32_t)w->p, (uint32_t)w->v);
  if (rc < 0) return rc;
  /* byte shuffle helps deflate on float data; with no deflate it is moot */
  bt_ckpt_opts_t opts = {.deflate = w->env->ckpt_compress, .shuffle = w->env->ckpt_compress > 0};
  if (!w->env->ckpt_dir[0]) return 0;
  rc = bt_ckpt_writer_create(&w->writer, w->env->ckpt_dir, &opts, ckpt_done, w);
  if (rc < 0) {
    bt_errf(w->err, sizeof w->err, "checkpoint writer for %s: %s", w->env->ckpt_dir, bt_strerror(rc));
    return rc;
  }
  bt_ckpt_writer_set_hook(w->writer, bt_faults_write, &w->faults);
  /* Fault in the snapshot now, so the first save costs training a memcpy. */
  if ((rc = bt_ckpt_writer_reserve(w->writer, w->sc.desc, w->sc.n, w->env->ckpt_timeout_ms)) < 0)
    bt_errf(w->err, sizeof w->err, "checkpoint snapshot buffer: %s", bt_strerror(rc));
  return rc;
}

/* Loads this stage's layers (any split: the checkpoint module reads them
 * from whichever shards hold them), the AdamW state and the step counter
 * from the step directory BATON_RESTORE_DIR, the one restore source. The
 * supervisor chose it on the job's lineage after verifying it; START's
 * restore_step must be its step. */
static int ckpt_restore(pipe_t *w, int64_t step) {
  char dir[4096];
  bt_ckpt_step_t cs;
  memset(&cs, 0, sizeof cs);
  bt_config_t *theirs = calloc(1, sizeof *theirs);
  int rc, opened = 0;
  if (!theirs) return -ENOMEM;
  if (!w->env->restore_dir[0]) {
    bt_errf(w->err, sizeof w->err, "START names step %lld to restore but BATON_RESTORE_DIR is not set",
            (long long)step);
    rc = BT_EARG;
    goto out;
  }
  snprintf(dir, sizeof dir, "%s", w->env->restore_dir);
  if ((rc = bt_ckpt_step_open(dir, BT_CKPT_CHECK_CHEAP, &cs, NULL, NULL)) < 0) {
    bt_errf(w->err, sizeof w->err, "no usable checkpoint %s: %s", dir, bt_strerror(rc));
    goto out;
  }
  opened = 1;
  /* The model first: another model must be named by the setting that
   * differs, not fail later on a tensor shape. */
  char why[1024] = "";
  if (bt_config_from_text(theirs, cs.man.meta.model_config ? cs.man.meta.model_config : "", why, sizeof why)) {
    bt_errf(w->err, sizeof w->err, "%s: unreadable model configuration: %s", dir, why);
    rc = BT_ECORRUPT;
    goto out;
  }
  /* The rule `baton run` applied before spawning (common/config.c): the
   * data by its content, whatever its path. */
  if (bt_config_model_match(&theirs->model, &w->cfg->model, NULL, 0, why, sizeof why)) {
    bt_errf(w->err, sizeof w->err, "%s holds another model: %s", dir, why);
    rc = BT_ECONFIG;
    goto out;
  }
  if (cs.man.meta.step != step || cs.man.meta.adam_t != step) {
    bt_errf(w->err, sizeof w->err, "%s: step %lld, optimizer step %lld, expected %lld", dir,
         (long long)cs.man.meta.step, (long long)cs.man.meta.adam_t, (long long)step);
    rc = BT_ECORRUPT;
    goto out;
  }
  if ((rc = bt_stage_ckpt_load(&w->sc, w->st, &cs)) < 0) {
    bt_errf(w->err, sizeof w->err, "loading %s: %s", dir, bt_strerror(rc));
    goto out;
  }
  bt_info("restored step %lld from %s", (long long)step, dir);
out:
  if (opened) bt_ckpt_step_close(&cs);
  free(theirs);
  return rc;
}

/* Queues the shard of `step`; training waits for the snapshot copy only.
 * Non-finite parameters are fatal (a restart would replay the same bits);
 * any other failure is reported with ERROR and training goes on. */
static int ckpt_save(pipe_t *w, int64_t step) {
  /* Phase CKPT: the supervisor counts a worker copying its snapshot (or
   * waiting for the previous save) as alive though no action moves. */
  bt_control_progress(w->ctl, step, (int64_t)w->nact, BT_PHASE_CKPT);
  size_t bad = 0;
  int rc = bt_stage_ckpt_save(&w->sc, w->st, w->writer, step, fill_tensor, w, w->env->ckpt_timeout_ms, &bad);
  if (rc == BT_ENONFINITE) {
    bt_errf(w->err, sizeof w->err, "step %lld: %zu non-finite parameters; not saving", (long long)step, bad);
    return rc;
  }
  if (rc < 0) {
    char text[256];
    snprintf(text, sizeof text, "checkpoint of step %lld not started: %s", (long long)step, bt_strerror(rc));
    bt_warn("%s", text);
    bt_control_send_error(w->ctl, rc, -1, text);
  }
  return 0;
}

/* After step `step`: the regular cadence, the last step, and CKPT_AT. A
 * CKPT_AT for a step already behind us is answered with CKPT_LATE so the
 * supervisor can name a later one. */
static int ckpt_after_step(pipe_t *w, const bt_msg_start_t *start, int64_t step) {
  if (!w->writer) return 0;
  int save = (start->ckpt_every > 0 && step % start->ckpt_every == 0) ||
             (start->ckpt_last && step == start->last_step);
  int due = bt_control_ckpt_due(w->ctl, step, &w->ckpt_handled);
  if (due < 0) return due;
  return save || due ? ckpt_save(w, step) : 0;
}

/* A worker never exits before its last save is durable (and reported). */
static int ckpt_drain(pipe_t *w) {
  if (!w->writer) return 0;
  bt_control_progress(w->ctl, bt_stage_opt_step(w->st), (int64_t)w->nact, BT_PHASE_CKPT);
  bt_ckpt_result_t last;
  /* BATON_CKPT_TIMEOUT_MS (common/deadlines.c): shorter than the
   * supervisor's allowance, so this line, not a kill, says what happened. */
  int rc = bt_ckpt_writer_wait(w->writer, w->env->ckpt_timeout_ms, &last);
  if (rc == BT_ETIMEOUT) {
    bt_errf(w->err, sizeof w->err, "the last checkpoint save did not finish in %.1f s",
            (double)w->env->ckpt_timeout_ms / 1000.0);
    return rc;
  }
  return 0;
}

int bt_pipeline_run(const bt_config_t *cfg, const char *csv_path, const bt_control_env_t *env,
                    bt_control_t *ctl) {
  pipe_t w;
  memset(&w, 0, sizeof w);
  w.cfg = cfg;
  w.csv_path = csv_path;
  w.env = env;
  w.ctl = ctl;
  w.me = (int)env->stage;
  w.p = cfg->run.stages;
  w.v = cfg->run.chunks;
  w.nv = w.p * w.v;
  int code = BT_WEXIT_ERROR, rc;
  int *first = calloc((size_t)w.nv, sizeof *first), *last = calloc((size_t)w.nv, sizeof *last);
  bt_msg_start_t *start = calloc(1, sizeof *start);
  if (!first || !last || !start) {
    rc = -ENOMEM;
    bt_errf(w.err, sizeof w.err, "out of memory");
    goto done;
  }
  char why[256] = "";
  /* An injected hang outlasts the transport deadline but still ends. */
  if ((rc = bt_faults_init(&w.faults, env->faults, w.me, bt_deadlines_fault_hang_ms(env->peer_timeout_ms), why,
                           sizeof why)) < 0) {
    bt_errf(w.err, sizeof w.err, "BATON_INJECT_FAULTS: %s", why);
    goto done;
  }
  if ((rc = setup(&w, first, last)) < 0) goto done;
  if ((rc = ckpt_setup(&w)) < 0) goto done;
  /* Set-up ends here: no step allocates (or, on CUDA, frees) memory. */
  if ((rc = bt_stage_seal(w.st)) < 0) {
    bt_errf(w.err, sizeof w.err, "sizing the backend's scratch memory: %s", bt_strerror(rc));
    goto done;
  }
  if ((rc = bt_control_send_ready_gpu(ctl, bt_tx_socket_address(w.tx), w.gpu, w.cuda && w.me == 0 ? w.nccl_id : NULL)) < 0)
    goto done;
  /* The supervisor's start-up timeout and our death signal bound this; the
   * deadline only keeps a wait from being endless by construction. */
  if ((rc = bt_control_wait_start(ctl, start, bt_deadline_ms(24 * 3600 * 1000))) < 0) {
    bt_errf(w.err, sizeof w.err, "no START from the supervisor: %s", bt_strerror(rc));
    goto done;
  }
  /* The contract's bounds and relations (common/workerenv.h). */
  if ((rc = bt_worker_start_check(start, env, w.err, sizeof w.err)) < 0) goto done;
  if (start->restore_step > 0) {
    bt_control_progress(ctl, start->restore_step, 0, BT_PHASE_INIT);
    if ((rc = ckpt_restore(&w, start->restore_step)) < 0) goto done;
  }
  int use_sockets = 1;
  if ((rc = choose_transport(&w, start, &use_sockets)) < 0) goto done;
  const char *addrs[BT_MAX_STAGES];
  for (int i = 0; i < w.p; i++) addrs[i] = start->addrs[i];
  if (use_sockets) bt_control_progress(ctl, start->restore_step, 0, BT_PHASE_CONNECT);
  if (use_sockets && (rc = bt_tx_socket_connect(w.tx, addrs, peer_deadline(&w))) < 0) {
    bt_errf(w.err, sizeof w.err, "connecting to the peers: %s", bt_strerror(rc));
    goto done;
  }
  const double tokens = (double)cfg->model.microbatches * (double)cfg->model.mb_tokens;
  for (int64_t step = start->first_step; step <= start->last_step; step++) {
    double t0 = bt_clock_s(), busy = 0;
    if ((rc = run_step(&w, step, &busy)) < 0) {
      /* A neighbour that stopped a step earlier (its STOP named a step we
       * had already started) is the end of a stop, not a failure. Our own
       * STOP, sent at the same moment, may still be on its way: give it a
       * moment before calling the peer lost. */
      int64_t stop = bt_control_stop_step(ctl);
      for (uint64_t until = bt_deadline_ms(STOP_SETTLE_MS); rc == BT_EPEER && stop < 0 && bt_ms_left(until) > 0;
           stop = bt_control_stop_step(ctl))
        bt_sleep_ms(10);
      if (rc == BT_EPEER && stop >= 0 && step > stop) {
        bt_info("stopping in step %lld: a peer already stopped after step %lld", (long long)step, (long long)stop);
        code = BT_WEXIT_STOPPED;
        rc = 0;
        goto done;
      }
      goto done;
    }
    double dt = bt_clock_s() - t0;
    bt_msg_metrics_t m = {.stage = (uint32_t)w.me, .step = step, .loss = NAN, .busy_s = busy,
                          .idle_s = dt > busy ? dt - busy : 0, .step_s = dt, .tokens = (int64_t)tokens};
    if (w.holds_head && (rc = bt_stage_loss(w.st, &m.loss)) < 0) {
      bt_errf(w.err, sizeof w.err, "step %lld: loss: %s", (long long)step, bt_strerror(rc));
      goto done;
    }
    if ((rc = bt_control_send_metrics(ctl, &m)) < 0) goto done;
    for (size_t off = 0; off < w.nact; off += TRACE_EVS_PER_FRAME) {
      size_t k = w.nact - off < TRACE_EVS_PER_FRAME ? w.nact - off : TRACE_EVS_PER_FRAME;
      bt_msg_trace_t tr = {.stage = (uint32_t)w.me, .step = step, .n = (uint32_t)k, .ev = w.ev + off};
      if ((rc = bt_control_send_trace(ctl, &tr)) < 0) goto done;
    }
    if ((rc = ckpt_after_step(&w, start, step)) < 0) goto done;
    int64_t stop = bt_control_stop_step(ctl);
    if (stop >= 0 && step >= stop && step < start->last_step) {
      bt_info("stopping after step %lld on the supervisor's request", (long long)step);
      if ((rc = ckpt_drain(&w)) < 0) goto done;
      code = BT_WEXIT_STOPPED;
      goto done;
    }
  }
  /* SHARD_DURABLE of the last step goes before DONE. */
  if ((rc = ckpt_drain(&w)) < 0) goto done;
  if ((rc = send_hashes(&w, start->last_step)) < 0 || (rc = bt_control_send_done(ctl, start->last_step)) < 0)
    goto done;
  code = BT_WEXIT_DONE;
done:
  if (rc < 0) {
    code = exit_code_of(rc);
    if (!w.err[0]) bt_errf(w.err, sizeof w.err, "%s", bt_strerror(rc));
    bt_error("%s", w.err);
    bt_control_send_error(ctl, rc, code, w.err);
  }
  /* Receives still posted point into the stage's buffers: the transport
   * goes first. */
  bt_tx_destroy(w.tx);
  /* The writer's in-flight save reads the snapshot, not the stage; its done
   * callback still uses the control channel, which outlives this call. */
  bt_ckpt_writer_destroy(w.writer);
  for (size_t i = 0; i < w.ntwins; i++) bt_tx_stage_free(w.be, w.twins[i].host);
  free(w.twins);
  free(w.peers);
  bt_stage_ckpt_free(&w.sc);
  bt_stage_destroy(w.st);
  if (w.be) bt_backend_destroy(w.be);
  bt_sched_free(&w.sched);
  free(w.reqs);
  free(w.ev);
  free(start);
  free(first);
  free(last);
  return code;
}
