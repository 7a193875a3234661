/* sup_remote.c - stages on other nodes (multi-node `baton run`). The
 * supervisor drives them exactly like its own children, through their node
 * agent (launcher/agent.c) and the hub (launcher/hub.h): SPAWN carries the
 * command line and the worker environment (the table of
 * common/workerenv.h; the agent adds its own environment, its pid and the
 * data-plane token it derives itself), CTL carries control-channel bytes
 * both ways, KILL kills, EXITED is the exit callback (sent after every
 * control byte), and a lost node is the loss of every stage on it. Part of
 * the supervisor (sup_internal.h). */
#include "launcher/sup_internal.h"

static void send_or_lose(worker_t *w, uint16_t type, bt_node_msg_t *m) {
  sup_t *s = w->sup;
  m->node = w->node;
  m->inc = s->o->restart_count;
  m->stage = w->stage;
  int rc = bt_hub_send(s->o->hub, w->node, type, m);
  if (rc == BT_EPEER) {
    char why[128];
    snprintf(why, sizeof why, "node %u lost", w->node);
    sup_worker_lost(w, why);
  } else if (rc < 0)
    bt_warn("stage %u on node %u: cannot send %s: %s", w->stage, w->node, bt_msg_type_name(type), bt_strerror(rc));
}

int sup_remote_spawn(sup_t *s, worker_t *w) {
  char **env = sup_build_env(s, w->stage, 0);
  if (!env) return -ENOMEM;
  size_t argc = 0, envc = 0, len = 0;
  while (s->o->worker_argv[argc]) len += strlen(s->o->worker_argv[argc++]) + 1;
  while (env[envc]) len += strlen(env[envc++]) + 1;
  uint8_t *data = malloc(len);
  if (!data) {
    sup_free_env(env);
    return -ENOMEM;
  }
  size_t at = 0, sent_env = 0;
  for (size_t i = 0; i < argc; i++) {
    size_t n = strlen(s->o->worker_argv[i]) + 1;
    memcpy(data + at, s->o->worker_argv[i], n);
    at += n;
  }
  for (size_t i = 0; i < envc; i++) {
    /* The token is derived on the node from the secret, never sent. */
    if (!strncmp(env[i], "BATON_JOB_TOKEN=", 16)) continue;
    size_t n = strlen(env[i]) + 1;
    memcpy(data + at, env[i], n);
    at += n;
    sent_env++;
  }
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.num[0] = (int64_t)argc;
  m.num[1] = (int64_t)sent_env;
  snprintf(m.text2, sizeof m.text2, "%s", s->o->token_label ? s->o->token_label : "");
  m.data = data;
  m.dlen = (uint32_t)at;
  w->state = W_SPAWNED;
  w->pid = 0;
  bt_info("starting stage %u on node %u", w->stage, w->node);
  send_or_lose(w, BT_NODE_SPAWN, &m);
  free(data);
  sup_free_env(env);
  return 0;
}

int sup_remote_silent(worker_t *w) {
  if (!w->remote) return 0;
  bt_hub_node_t n;
  if (bt_hub_node(w->sup->o->hub, w->node, &n) < 0 || !n.alive) return 0;
  return n.silent_s * 1000.0 > (double)w->sup->dl.heartbeat_timeout_ms / 2;
}

void sup_remote_kill(worker_t *w) {
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  send_or_lose(w, BT_NODE_KILL, &m);
}

void sup_remote_ctl(worker_t *w, const bt_buf_t *b) {
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.data = b->data;
  m.dlen = (uint32_t)b->len;
  send_or_lose(w, BT_NODE_CTL, &m);
}

/* The stderr tail an agent sent, into the worker's ring. */
static void take_tail(worker_t *w, const char *text) {
  while (*text) {
    const char *nl = strchr(text, '\n');
    size_t n = nl ? (size_t)(nl - text) : strlen(text);
    bt_tail_keep(&w->tail, text, n);
    text += n + (nl != NULL);
  }
}

static void on_msg(sup_t *s, const bt_hub_event_t *e) {
  const bt_node_msg_t *m = &e->m;
  if (m->inc != s->o->restart_count || m->stage >= s->n) return; /* an earlier incarnation's */
  worker_t *w = &s->w[m->stage];
  if (!w->remote || w->node != e->node || w->state == W_EXITED) return;
  switch (e->type) {
  case BT_NODE_SPAWNED: {
    w->pid = (int)m->num[0];
    bt_info("started stage %u on node %u (pid %d)", w->stage, w->node, w->pid);
    bt_json_t j;
    if (sup_event_begin(s, &j, "spawn")) {
      bt_json_kint(&j, "stage", w->stage);
      bt_json_kint(&j, "pid", w->pid);
      bt_json_kint(&j, "node", w->node);
      sup_event_end(s, &j);
    }
    break;
  }
  case BT_NODE_CTL: {
    if (w->ccap - w->clen < m->dlen) {
      size_t cap = w->ccap ? w->ccap : 131072;
      while (cap - w->clen < m->dlen) cap *= 2;
      uint8_t *p = realloc(w->cbuf, cap);
      if (!p) {
        sup_remote_kill(w);
        sup_worker_lost(w, "out of memory for its control messages");
        return;
      }
      w->cbuf = p;
      w->ccap = cap;
    }
    memcpy(w->cbuf + w->clen, m->data, m->dlen);
    w->clen += m->dlen;
    sup_ctl_bytes(w);
    break;
  }
  case BT_NODE_EXITED:
    take_tail(w, m->text);
    if (m->num[2]) {
      char why[300];
      snprintf(why, sizeof why, "could not be started on node %u: %.200s", w->node, m->text);
      w->fail = F_NONE;
      sup_worker_lost(w, why);
    } else
      sup_worker_exited(w, m->num[0], (int)m->num[1]);
    break;
  default:
    break;
  }
}

void sup_on_hub(uv_async_t *a) {
  sup_t *s = a->data;
  bt_hub_event_t e;
  while (s->state != JOB_DONE && bt_hub_next(s->o->hub, &e)) {
    if (e.kind == BT_HUB_EV_MSG) on_msg(s, &e);
    else if (e.kind == BT_HUB_EV_LOST) {
      char why[400];
      snprintf(why, sizeof why, "node %u lost: %s", e.node, e.why);
      for (uint32_t i = 0; i < s->n; i++)
        if (s->w[i].remote && s->w[i].node == e.node) sup_worker_lost(&s->w[i], why);
    }
    bt_hub_event_free(&e);
  }
}
