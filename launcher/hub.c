/* hub.c - the coordinator's network face: rendezvous, authentication,
 * heartbeats and message relay for the node agents (hub.h says what and
 * why). Everything below runs on the hub's own thread and loop, except the
 * public functions marked "any thread", which touch only what the mutex
 * guards and wake the loop with uv_async_send. */
#include "launcher/hub.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"

enum { C_HELLO, C_AUTH, C_JOIN, C_LIVE };
enum { R_GARBAGE, R_JOB, R_RANK, R_SECRET, R_SILENT, R_FLOOD, R_DUP, R_PROBE, R_COUNT };
static const char *const refusal_names[R_COUNT] = {
    "garbage", "wrong job id", "bad node rank", "wrong secret", "silent", "flood", "rank already joined",
    "checkpoint directory not shared"};

typedef struct conn {
  uv_tcp_t tcp;
  struct bt_hub *hub;
  struct conn *next;
  int state, closing, counted_pending;
  uint32_t node;
  uint64_t deadline_ms;
  uint8_t cnonce[BT_NONCE_LEN], snonce[BT_NONCE_LEN];
  char probe_name[80], probe_content[40];
  uint8_t *buf;
  size_t len, cap;
} conn_t;

typedef struct {
  int alive;
  uint32_t slots, generation;
  char data_host[BT_HUB_HOST_MAX], hostname[BT_HUB_HOST_MAX];
  conn_t *c;
  uint64_t last_rx_ms;
  int64_t last_rx_ns;  /* the same on CLOCK_MONOTONIC, for other threads (atomic) */
  bt_buf_t out; /* encoded, not yet handed to libuv (mutex) */
} node_t;

struct bt_hub {
  bt_hub_opts_t o;
  char bind_host[BT_HUB_HOST_MAX], job_id[128], ckpt_dir[4096];
  pthread_t th;
  int th_started;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t wake;
  uv_timer_t tick, beat, stop_timer;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  node_t *nodes;
  conn_t *conns;
  uint32_t pending;
  int port;
  /* events for the supervisor (mutex) */
  bt_hub_event_t *ev;
  size_t nev, evhead, evcap;
  uv_async_t *notify;
  /* stopping (mutex) */
  int stopping, shut;
  int64_t writes_in_flight;
  /* stats (mutex) */
  uint64_t beats, lost, refused[R_COUNT];
  unsigned refused_logged;
  double *samples;
  size_t nsamples, capsamples;
  double start_s;
  char fatal[1000]; /* a refusal that waiting cannot fix */
  uint64_t beat_seq;
};

static uint64_t now_ms(bt_hub_t *h) { return uv_now(&h->loop); }

/* CLOCK_MONOTONIC (common/clock.h): the clock the senders of stamped
 * heartbeats use too. */
static int64_t mono_ns(void) { return (int64_t)bt_clock_ns(); }

void bt_hub_opts_default(bt_hub_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->beat_ms = 1000;
  o->node_timeout_ms = 10000;
  o->handshake_ms = 5000;
  o->max_pending = 64;
  o->coalesce_us = 2000;
}

const char *bt_hub_refusal_name(int reason) {
  return reason >= 0 && reason < R_COUNT ? refusal_names[reason] : "?";
}

/* ---- events (mutex held by the caller) ---- */

static void push_event_locked(bt_hub_t *h, bt_hub_event_t *e) {
  if (h->nev == h->evcap) {
    /* compact, then grow */
    if (h->evhead) {
      memmove(h->ev, h->ev + h->evhead, (h->nev - h->evhead) * sizeof *h->ev);
      h->nev -= h->evhead;
      h->evhead = 0;
    }
    if (h->nev == h->evcap) {
      size_t cap = h->evcap ? h->evcap * 2 : 64;
      bt_hub_event_t *n = realloc(h->ev, cap * sizeof *n);
      if (!n) {
        free(e->data);
        return; /* out of memory: the event is lost, the node's heartbeats still decide */
      }
      h->ev = n;
      h->evcap = cap;
    }
  }
  h->ev[h->nev++] = *e;
  if (h->notify) uv_async_send(h->notify);
}

static void push_lost_locked(bt_hub_t *h, uint32_t node, const char *why) {
  bt_hub_event_t e;
  memset(&e, 0, sizeof e);
  e.kind = BT_HUB_EV_LOST;
  e.node = node;
  snprintf(e.why, sizeof e.why, "%s", why);
  push_event_locked(h, &e);
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *hd) {
  conn_t *c = hd->data;
  free(c->buf);
  free(c);
}

static void conn_close(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  bt_hub_t *h = c->hub;
  for (conn_t **p = &h->conns; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  if (c->counted_pending) {
    c->counted_pending = 0;
    h->pending--;
  }
  if (c->probe_name[0] && h->ckpt_dir[0]) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", h->ckpt_dir, c->probe_name);
    unlink(path);
    c->probe_name[0] = 0;
  }
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

typedef struct {
  uv_write_t req;
  bt_hub_t *h;
  conn_t *close_after;
} wreq_t;

static void on_written(uv_write_t *req, int status) {
  (void)status;
  wreq_t *w = (wreq_t *)req;
  bt_hub_t *h = w->h;
  if (w->close_after) conn_close(w->close_after);
  free(w);
  pthread_mutex_lock(&h->mu);
  h->writes_in_flight--;
  int done = h->stopping && h->writes_in_flight == 0 && !h->shut;
  pthread_mutex_unlock(&h->mu);
  if (done) uv_async_send(&h->wake);
}

/* Hands bytes to libuv (hub thread). */
static void conn_write(conn_t *c, const uint8_t *p, size_t n, int close_after) {
  bt_hub_t *h = c->hub;
  if (c->closing) return;
  wreq_t *w = malloc(sizeof *w + n);
  if (!w) {
    conn_close(c);
    return;
  }
  memcpy(w + 1, p, n);
  w->h = h;
  w->close_after = close_after ? c : NULL;
  uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
  pthread_mutex_lock(&h->mu);
  h->writes_in_flight++;
  pthread_mutex_unlock(&h->mu);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
    pthread_mutex_lock(&h->mu);
    h->writes_in_flight--;
    pthread_mutex_unlock(&h->mu);
    free(w);
    conn_close(c);
  }
}

static void conn_send(conn_t *c, uint16_t type, const bt_node_msg_t *m, int close_after) {
  bt_buf_t b;
  bt_buf_init(&b);
  bt_node_encode(&b, type, m);
  if (!b.err) conn_write(c, b.data, b.len, close_after);
  else conn_close(c);
  bt_buf_free(&b);
}

/* Refuses a connection that is not (yet) a node: logged once per reason,
 * counted always. `tell` sends a line first (to a peer that spoke the
 * protocol and deserves to know why). */
static void refuse(conn_t *c, int reason, const char *tell, const char *detail) {
  bt_hub_t *h = c->hub;
  pthread_mutex_lock(&h->mu);
  h->refused[reason]++;
  int first = !(h->refused_logged & (1u << reason));
  h->refused_logged |= 1u << reason;
  pthread_mutex_unlock(&h->mu);
  if (first)
    bt_warn("rendezvous: refused a connection: %s%s%s (further refusals for this reason are counted, not logged)",
            refusal_names[reason], detail ? ": " : "", detail ? detail : "");
  if (tell && c->state != C_LIVE) {
    bt_node_msg_t m;
    memset(&m, 0, sizeof m);
    snprintf(m.text, sizeof m.text, "%s", tell);
    conn_send(c, BT_NODE_REFUSE, &m, 1);
  } else
    conn_close(c);
}

static void node_lost(bt_hub_t *h, uint32_t node, const char *why) {
  node_t *n = &h->nodes[node];
  pthread_mutex_lock(&h->mu);
  if (!n->alive) {
    pthread_mutex_unlock(&h->mu);
    return;
  }
  n->alive = 0;
  bt_buf_reset(&n->out);
  h->lost++;
  conn_t *c = n->c;
  n->c = NULL;
  if (!h->stopping) push_lost_locked(h, node, why);
  int stopping = h->stopping;
  pthread_mutex_unlock(&h->mu);
  if (!stopping) bt_warn("node %u (%s) lost: %s", node, n->hostname, why);
  if (c) conn_close(c);
}

static void write_probe(bt_hub_t *h, conn_t *c) {
  c->probe_name[0] = 0;
  if (!h->ckpt_dir[0]) return;
  uint8_t r[16];
  if (bt_random_bytes(r, sizeof r) < 0) return;
  char hex[33];
  for (int i = 0; i < 16; i++) snprintf(hex + 2 * i, 3, "%02x", r[i]);
  snprintf(c->probe_content, sizeof c->probe_content, "%s", hex);
  snprintf(c->probe_name, sizeof c->probe_name, ".baton-probe-%u-%.8s", c->node, hex + 16);
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", h->ckpt_dir, c->probe_name);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    bt_warn("rendezvous: cannot write the probe file %s: %s", path, strerror(errno));
    c->probe_name[0] = 0;
    return;
  }
  ssize_t w = write(fd, hex, 32);
  close(fd);
  if (w != 32) {
    unlink(path);
    c->probe_name[0] = 0;
  }
}

static void ctx_of(bt_hub_t *h, uint32_t node, char *ctx, size_t n) { snprintf(ctx, n, "%s %u", h->job_id, node); }

static void push_msg(bt_hub_t *h, uint32_t node, uint16_t type, const bt_node_msg_t *m) {
  bt_hub_event_t e;
  memset(&e, 0, sizeof e);
  e.kind = BT_HUB_EV_MSG;
  e.node = node;
  e.type = type;
  e.m = *m;
  if (m->dlen) {
    if (!(e.data = malloc(m->dlen))) return;
    memcpy(e.data, m->data, m->dlen);
  }
  e.m.data = e.data;
  pthread_mutex_lock(&h->mu);
  push_event_locked(h, &e);
  pthread_mutex_unlock(&h->mu);
}

/* One frame from a connection. Returns 0, or -1 when the connection is
 * gone. */
static int on_frame(conn_t *c, const bt_frame_t *f) {
  bt_hub_t *h = c->hub;
  bt_node_msg_t m;
  if (bt_node_decode(f, &m) < 0) {
    if (c->state == C_LIVE) node_lost(h, c->node, "sent a malformed message");
    else refuse(c, R_GARBAGE, NULL, "a malformed message");
    return -1;
  }
  char ctx[300];
  switch (c->state) {
  case C_HELLO: {
    if (f->type != BT_NODE_HELLO) {
      refuse(c, R_GARBAGE, NULL, "not a HELLO");
      return -1;
    }
    if (strcmp(m.text, h->job_id)) {
      refuse(c, R_JOB, "wrong job id", m.text);
      return -1;
    }
    if (m.node == 0 || m.node >= h->o.nnodes) {
      char d[64];
      snprintf(d, sizeof d, "rank %u of %u nodes", m.node, h->o.nnodes);
      refuse(c, R_RANK, "node rank out of range for this job", d);
      return -1;
    }
    c->node = m.node;
    memcpy(c->cnonce, m.nonce, BT_NONCE_LEN);
    bt_node_msg_t r;
    memset(&r, 0, sizeof r);
    if (bt_random_bytes(c->snonce, BT_NONCE_LEN) < 0) {
      conn_close(c);
      return -1;
    }
    memcpy(r.nonce, c->snonce, BT_NONCE_LEN);
    ctx_of(h, c->node, ctx, sizeof ctx);
    bt_auth_proof(h->o.secret, "baton-coord", ctx, c->cnonce, c->snonce, r.proof);
    c->state = C_AUTH;
    conn_send(c, BT_NODE_CHALLENGE, &r, 0);
    return 0;
  }
  case C_AUTH: {
    uint8_t want[BT_SHA256_LEN];
    ctx_of(h, c->node, ctx, sizeof ctx);
    bt_auth_proof(h->o.secret, "baton-node", ctx, c->snonce, c->cnonce, want);
    if (f->type != BT_NODE_AUTH || !bt_ct_equal(want, m.proof, BT_SHA256_LEN)) {
      refuse(c, R_SECRET, "authentication failed", NULL);
      return -1;
    }
    pthread_mutex_lock(&h->mu);
    int dup = h->nodes[c->node].alive;
    pthread_mutex_unlock(&h->mu);
    if (dup) {
      char d[64];
      snprintf(d, sizeof d, "node %u", c->node);
      refuse(c, R_DUP, "this node rank has already joined", d);
      return -1;
    }
    write_probe(h, c);
    bt_node_msg_t r;
    memset(&r, 0, sizeof r);
    r.num[0] = h->o.beat_ms;
    r.num[1] = h->o.node_timeout_ms;
    snprintf(r.text, sizeof r.text, "%s", c->probe_name);
    c->state = C_JOIN;
    conn_send(c, BT_NODE_WELCOME, &r, 0);
    return 0;
  }
  case C_JOIN: {
    if (f->type != BT_NODE_JOIN || m.num[0] < 1 || m.num[0] > 256 || !m.text[0]) {
      refuse(c, R_GARBAGE, "a JOIN needs 1..256 slots and a data-plane host", "bad JOIN");
      return -1;
    }
    char host[BT_HUB_HOST_MAX] = "";
    if (m.dlen) snprintf(host, sizeof host, "%.*s", (int)(m.dlen < sizeof host - 1 ? m.dlen : sizeof host - 1),
                         (const char *)m.data);
    if (c->probe_name[0] && strcmp(m.text2, c->probe_content)) {
      char tell[1000];
      snprintf(tell, sizeof tell,
               "node %u (%.100s) cannot read the checkpoint directory %.600s: every node must reach it at the same "
               "path (a shared file system: NFS, Lustre)",
               c->node, host, h->ckpt_dir);
      pthread_mutex_lock(&h->mu);
      snprintf(h->fatal, sizeof h->fatal, "%.*s", (int)sizeof h->fatal - 1, tell);
      pthread_cond_broadcast(&h->cv);
      pthread_mutex_unlock(&h->mu);
      refuse(c, R_PROBE, tell, host);
      return -1;
    }
    if (c->probe_name[0]) {
      char path[4200];
      snprintf(path, sizeof path, "%s/%s", h->ckpt_dir, c->probe_name);
      unlink(path);
      c->probe_name[0] = 0;
    }
    node_t *n = &h->nodes[c->node];
    pthread_mutex_lock(&h->mu);
    n->alive = 1;
    n->generation++;
    n->slots = (uint32_t)m.num[0];
    snprintf(n->data_host, sizeof n->data_host, "%.*s", (int)sizeof n->data_host - 1, m.text);
    snprintf(n->hostname, sizeof n->hostname, "%s", host);
    n->c = c;
    n->last_rx_ms = now_ms(h);
    __atomic_store_n(&n->last_rx_ns, mono_ns(), __ATOMIC_RELAXED);
    bt_buf_reset(&n->out);
    if (c->counted_pending) {
      c->counted_pending = 0;
      h->pending--;
    }
    c->state = C_LIVE;
    bt_hub_event_t e;
    memset(&e, 0, sizeof e);
    e.kind = BT_HUB_EV_JOINED;
    e.node = c->node;
    push_event_locked(h, &e);
    pthread_cond_broadcast(&h->cv);
    uint32_t gen = n->generation;
    pthread_mutex_unlock(&h->mu);
    bt_info("node %u joined: %s, %u slot%s, data plane on %s%s", c->node, host[0] ? host : "?", n->slots,
            n->slots == 1 ? "" : "s", n->data_host, gen > 1 ? " (again: used from the next restart)" : "");
    return 0;
  }
  default: /* C_LIVE */
    h->nodes[c->node].last_rx_ms = now_ms(h);
    __atomic_store_n(&h->nodes[c->node].last_rx_ns, mono_ns(), __ATOMIC_RELAXED);
    if (f->type == BT_NODE_BEAT) {
      double d = m.num[1] > 0 ? (double)(mono_ns() - m.num[1]) / 1e6 : -1;
      pthread_mutex_lock(&h->mu);
      h->beats++;
      if (d >= 0) {
        if (h->nsamples == h->capsamples) {
          size_t cap = h->capsamples ? h->capsamples * 2 : 4096;
          double *p = cap <= (1u << 22) ? realloc(h->samples, cap * sizeof *p) : NULL;
          if (p) {
            h->samples = p;
            h->capsamples = cap;
          }
        }
        if (h->nsamples < h->capsamples) h->samples[h->nsamples++] = d;
      }
      pthread_mutex_unlock(&h->mu);
      return 0;
    }
    if (f->type == BT_NODE_SPAWNED || f->type == BT_NODE_CTL || f->type == BT_NODE_EXITED) {
      push_msg(h, c->node, f->type, &m);
      return 0;
    }
    node_lost(h, c->node, "sent a message a node may not send");
    return -1;
  }
}

static void on_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf) {
  (void)hint;
  conn_t *c = hd->data;
  if (c->cap - c->len < 65536) {
    size_t cap = c->cap ? c->cap * 2 : 131072;
    /* A peer that is not a node yet gets no more than one frame's worth. */
    size_t limit = c->state == C_LIVE ? (size_t)BT_FRAME_MAX_PAYLOAD * 4 : 65536 + 4096;
    if (cap > limit) cap = limit;
    uint8_t *p = cap > c->cap ? realloc(c->buf, cap) : NULL;
    if (p) {
      c->buf = p;
      c->cap = cap;
    }
  }
  *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  conn_t *c = st->data;
  bt_hub_t *h = c->hub;
  if (nread == 0) return;
  if (nread < 0 || c->closing) {
    if (c->closing) return;
    if (c->state == C_LIVE) node_lost(h, c->node, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
    else if (nread == UV_ENOBUFS) refuse(c, R_GARBAGE, NULL, "too much data before joining");
    else refuse(c, R_SILENT, NULL, "closed during the rendezvous");
    return;
  }
  c->len += (size_t)nread;
  size_t off = 0;
  while (off < c->len && !c->closing) {
    bt_frame_t f;
    long n = bt_frame_parse(c->buf + off, c->len - off, &f);
    if (n == 0) break;
    if (n < 0 || f.type < BT_NODE_HELLO) {
      if (c->state == C_LIVE) node_lost(h, c->node, "sent a malformed frame");
      else refuse(c, R_GARBAGE, NULL, "not a baton frame");
      return;
    }
    if (on_frame(c, &f) < 0) return;
    off += (size_t)n;
  }
  if (c->closing) return;
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
}

static void on_connection(uv_stream_t *server, int status) {
  bt_hub_t *h = server->data;
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (!c) return;
  c->hub = h;
  uv_tcp_init(&h->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    return;
  }
  c->next = h->conns;
  h->conns = c;
  if (h->pending >= h->o.max_pending || h->stopping) {
    refuse(c, R_FLOOD, NULL, "too many connections still in the rendezvous");
    return;
  }
  h->pending++;
  c->counted_pending = 1;
  c->state = C_HELLO;
  c->deadline_ms = now_ms(h) + (uint64_t)h->o.handshake_ms;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- timers and the wake-up ---- */

static void flush_nodes(bt_hub_t *h) {
  for (uint32_t i = 1; i < h->o.nnodes; i++) {
    node_t *n = &h->nodes[i];
    pthread_mutex_lock(&h->mu);
    if (!n->alive || !n->c || !n->out.len) {
      pthread_mutex_unlock(&h->mu);
      continue;
    }
    size_t len = n->out.len;
    uint8_t *copy = malloc(len);
    if (copy) memcpy(copy, n->out.data, len);
    bt_buf_reset(&n->out);
    conn_t *c = n->c;
    pthread_mutex_unlock(&h->mu);
    /* A node that stays connected but stops reading must not grow our
     * memory without bound: what it has not taken is far beyond anything
     * a live node leaves (its messages are spawns and control frames). */
    size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (queued + len > BT_HUB_MAX_QUEUED) {
      char why[128];
      snprintf(why, sizeof why, "not reading what it is sent (%zu MiB queued)", (queued + len) >> 20);
      free(copy);
      node_lost(h, i, why);
      continue;
    }
    if (copy) conn_write(c, copy, len, 0);
    free(copy);
  }
}

static void on_tick(uv_timer_t *t) {
  bt_hub_t *h = t->data;
  uint64_t now = now_ms(h);
  for (conn_t *c = h->conns, *next; c; c = next) {
    next = c->next;
    if (c->state != C_LIVE && now >= c->deadline_ms) refuse(c, R_SILENT, NULL, "no answer within the deadline");
  }
  for (uint32_t i = 1; i < h->o.nnodes; i++) {
    node_t *n = &h->nodes[i];
    if (n->alive && now - n->last_rx_ms > (uint64_t)h->o.node_timeout_ms) {
      char why[128];
      snprintf(why, sizeof why, "no heartbeat for %.1f s", (double)(now - n->last_rx_ms) / 1000.0);
      node_lost(h, i, why);
    }
  }
}

static void on_beat(uv_timer_t *t) {
  bt_hub_t *h = t->data;
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.num[0] = (int64_t)++h->beat_seq;
  pthread_mutex_lock(&h->mu);
  for (uint32_t i = 1; i < h->o.nnodes; i++)
    if (h->nodes[i].alive) bt_node_encode(&h->nodes[i].out, BT_NODE_BEAT, &m);
  pthread_mutex_unlock(&h->mu);
  flush_nodes(h);
}

static void close_if(uv_handle_t *hd) {
  if (!uv_is_closing(hd)) uv_close(hd, NULL);
}

static void shut_down(bt_hub_t *h) {
  if (h->shut) return;
  h->shut = 1;
  for (conn_t *c = h->conns, *next; c; c = next) {
    next = c->next;
    conn_close(c);
  }
  close_if((uv_handle_t *)&h->listener);
  close_if((uv_handle_t *)&h->tick);
  close_if((uv_handle_t *)&h->beat);
  close_if((uv_handle_t *)&h->stop_timer);
  close_if((uv_handle_t *)&h->wake);
}

static void on_stop_timer(uv_timer_t *t) { shut_down(t->data); }

static void on_wake(uv_async_t *a) {
  bt_hub_t *h = a->data;
  flush_nodes(h);
  pthread_mutex_lock(&h->mu);
  int stopping = h->stopping, idle = h->writes_in_flight == 0;
  pthread_mutex_unlock(&h->mu);
  if (stopping && !h->shut) {
    if (idle) shut_down(h);
    else if (!uv_is_active((uv_handle_t *)&h->stop_timer))
      uv_timer_start(&h->stop_timer, on_stop_timer, (uint64_t)h->stopping, 0);
  }
}

/* The loop, with interrupt coalescing: after each round of events the
 * thread naps `coalesce_us`, so the heartbeats of many nodes that arrive
 * meanwhile are read in one round instead of one wake-up each (the kernel's
 * wake-up, not our handling, is most of a busy hub's cost). An idle hub
 * still sleeps in epoll; a heartbeat waits at most one nap longer. */
static void *hub_main(void *arg) {
  bt_hub_t *h = arg;
  struct timespec nap = {.tv_sec = 0, .tv_nsec = (long)h->o.coalesce_us * 1000};
  while (uv_run(&h->loop, UV_RUN_ONCE))
    if (nap.tv_nsec > 0 && !h->shut) nanosleep(&nap, NULL);
  return NULL;
}

/* ---- public ---- */

int bt_hub_start(const bt_hub_opts_t *o, bt_hub_t **out, char *why, size_t whylen) {
  *out = NULL;
  if (!o->secret || !o->job_id || !o->bind_host || o->nnodes < 2 || o->nnodes > BT_HUB_MAX_NODES) {
    snprintf(why, whylen, "bad rendezvous options");
    return BT_EARG;
  }
  bt_hub_t *h = calloc(1, sizeof *h);
  if (!h) {
    snprintf(why, whylen, "out of memory");
    return -ENOMEM;
  }
  h->o = *o;
  bt_hub_opts_t d;
  bt_hub_opts_default(&d);
  if (h->o.beat_ms <= 0) h->o.beat_ms = d.beat_ms;
  if (h->o.node_timeout_ms <= 0) h->o.node_timeout_ms = d.node_timeout_ms;
  if (h->o.handshake_ms <= 0) h->o.handshake_ms = d.handshake_ms;
  if (!h->o.max_pending) h->o.max_pending = d.max_pending;
  if (h->o.coalesce_us < 0 || h->o.coalesce_us > 100000) h->o.coalesce_us = d.coalesce_us;
  snprintf(h->bind_host, sizeof h->bind_host, "%s", o->bind_host);
  snprintf(h->job_id, sizeof h->job_id, "%s", o->job_id);
  snprintf(h->ckpt_dir, sizeof h->ckpt_dir, "%s", o->ckpt_dir ? o->ckpt_dir : "");
  h->o.bind_host = h->bind_host;
  h->o.job_id = h->job_id;
  h->o.ckpt_dir = h->ckpt_dir[0] ? h->ckpt_dir : NULL;
  h->nodes = calloc(o->nnodes, sizeof *h->nodes);
  if (!h->nodes) {
    free(h);
    snprintf(why, whylen, "out of memory");
    return -ENOMEM;
  }
  for (uint32_t i = 0; i < o->nnodes; i++) bt_buf_init(&h->nodes[i].out);
  h->nodes[0].alive = 1;
  pthread_mutex_init(&h->mu, NULL);
  pthread_cond_init(&h->cv, NULL);
  h->start_s = (double)mono_ns() / 1e9;
  int rc = uv_loop_init(&h->loop);
  if (rc < 0) {
    snprintf(why, whylen, "libuv: %s", uv_strerror(rc));
    free(h->nodes);
    free(h);
    return rc;
  }
  uv_tcp_init(&h->loop, &h->listener);
  h->listener.data = h;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
  char port[16];
  snprintf(port, sizeof port, "%d", o->port);
  int e = getaddrinfo(h->bind_host, port, &hints, &ai);
  if (e) {
    snprintf(why, whylen, "cannot resolve %s: %s", h->bind_host, gai_strerror(e));
    rc = BT_EARG;
  } else {
    rc = uv_tcp_bind(&h->listener, ai->ai_addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&h->listener, 128, on_connection);
    if (rc < 0) snprintf(why, whylen, "cannot listen on %s:%d: %s", h->bind_host, o->port, uv_strerror(rc));
    freeaddrinfo(ai);
  }
  if (rc == 0) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_getsockname(&h->listener, (struct sockaddr *)&ss, &len);
    h->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    uv_async_init(&h->loop, &h->wake, on_wake);
    h->wake.data = h;
    uv_timer_init(&h->loop, &h->tick);
    h->tick.data = h;
    uv_timer_init(&h->loop, &h->beat);
    h->beat.data = h;
    uv_timer_init(&h->loop, &h->stop_timer);
    h->stop_timer.data = h;
    uv_timer_start(&h->tick, on_tick, 100, 100);
    uv_timer_start(&h->beat, on_beat, (uint64_t)h->o.beat_ms, (uint64_t)h->o.beat_ms);
    if (pthread_create(&h->th, NULL, hub_main, h)) {
      snprintf(why, whylen, "cannot start the rendezvous thread");
      rc = -EAGAIN;
    } else
      h->th_started = 1;
  }
  if (rc < 0) {
    uv_close((uv_handle_t *)&h->listener, NULL);
    if (h->wake.loop) uv_close((uv_handle_t *)&h->wake, NULL);
    if (h->tick.loop) uv_close((uv_handle_t *)&h->tick, NULL);
    if (h->beat.loop) uv_close((uv_handle_t *)&h->beat, NULL);
    if (h->stop_timer.loop) uv_close((uv_handle_t *)&h->stop_timer, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    uv_loop_close(&h->loop);
    free(h->nodes);
    free(h);
    return rc;
  }
  *out = h;
  return 0;
}

int bt_hub_port(const bt_hub_t *h) { return h->port; }

int bt_hub_wait_joined(bt_hub_t *h, double timeout_s, char *why, size_t whylen) {
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  double end = (double)dl.tv_sec + (double)dl.tv_nsec / 1e9 + timeout_s;
  dl.tv_sec = (time_t)end;
  dl.tv_nsec = (long)((end - (double)dl.tv_sec) * 1e9);
  pthread_mutex_lock(&h->mu);
  int rc = 0;
  for (;;) {
    if (h->fatal[0]) {
      snprintf(why, whylen, "%s", h->fatal);
      rc = BT_ECONFIG;
      break;
    }
    uint32_t missing = 0;
    for (uint32_t i = 1; i < h->o.nnodes; i++) missing += !h->nodes[i].alive;
    if (!missing) break;
    if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT) {
      size_t at = (size_t)snprintf(why, whylen, "%u of %u nodes did not join within %.0f s: missing node%s", missing,
                                   h->o.nnodes - 1, timeout_s, missing == 1 ? "" : "s");
      for (uint32_t i = 1, k = 0; i < h->o.nnodes && at < whylen; i++)
        if (!h->nodes[i].alive) at += (size_t)snprintf(why + at, whylen - at, "%s%u", k++ ? ", " : " ", i);
      rc = BT_ETIMEOUT;
      break;
    }
  }
  pthread_mutex_unlock(&h->mu);
  return rc;
}

int bt_hub_node(bt_hub_t *h, uint32_t node, bt_hub_node_t *out) {
  if (node >= h->o.nnodes) return BT_EARG;
  pthread_mutex_lock(&h->mu);
  node_t *n = &h->nodes[node];
  out->alive = n->alive;
  out->slots = n->slots;
  out->generation = n->generation;
  out->silent_s = n->alive && node ? (double)(mono_ns() - __atomic_load_n(&n->last_rx_ns, __ATOMIC_RELAXED)) / 1e9 : 0;
  snprintf(out->data_host, sizeof out->data_host, "%s", n->data_host);
  snprintf(out->hostname, sizeof out->hostname, "%s", n->hostname);
  pthread_mutex_unlock(&h->mu);
  return 0;
}

int bt_hub_send(bt_hub_t *h, uint32_t node, uint16_t type, const bt_node_msg_t *m) {
  if (node == 0 || node >= h->o.nnodes) return BT_EARG;
  pthread_mutex_lock(&h->mu);
  node_t *n = &h->nodes[node];
  int rc = 0;
  if (!n->alive || h->stopping) rc = BT_EPEER;
  else {
    bt_node_encode(&n->out, type, m);
    if (n->out.err) {
      rc = n->out.err;
      n->out.err = 0;
    }
  }
  pthread_mutex_unlock(&h->mu);
  if (rc == 0) uv_async_send(&h->wake);
  return rc;
}

void bt_hub_notify(bt_hub_t *h, uv_async_t *a) {
  pthread_mutex_lock(&h->mu);
  h->notify = a;
  int any = h->nev > h->evhead;
  pthread_mutex_unlock(&h->mu);
  if (a && any) uv_async_send(a);
}

int bt_hub_next(bt_hub_t *h, bt_hub_event_t *ev) {
  pthread_mutex_lock(&h->mu);
  int got = h->evhead < h->nev;
  if (got) {
    *ev = h->ev[h->evhead++];
    if (h->evhead == h->nev) h->evhead = h->nev = 0;
  }
  pthread_mutex_unlock(&h->mu);
  return got;
}

void bt_hub_event_free(bt_hub_event_t *ev) {
  free(ev->data);
  ev->data = NULL;
}

void bt_hub_drain(bt_hub_t *h) {
  bt_hub_event_t e;
  while (bt_hub_next(h, &e)) bt_hub_event_free(&e);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

void bt_hub_stats(bt_hub_t *h, bt_hub_stats_t *st) {
  memset(st, 0, sizeof *st);
  clockid_t cid;
  struct timespec ts;
  if (h->th_started && pthread_getcpuclockid(h->th, &cid) == 0 && clock_gettime(cid, &ts) == 0)
    st->cpu_s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  st->wall_s = (double)mono_ns() / 1e9 - h->start_s;
  pthread_mutex_lock(&h->mu);
  st->beats = h->beats;
  st->lost = h->lost;
  for (int i = 0; i < R_COUNT && i < 8; i++) st->refused[i] = h->refused[i];
  double *s = h->nsamples ? malloc(h->nsamples * sizeof *s) : NULL;
  size_t n = s ? h->nsamples : 0;
  if (s) memcpy(s, h->samples, n * sizeof *s);
  pthread_mutex_unlock(&h->mu);
  if (n) {
    qsort(s, n, sizeof *s, cmp_double);
    st->beat_p50_ms = s[n / 2];
    st->beat_p99_ms = s[(size_t)((double)(n - 1) * 0.99)];
    st->beat_max_ms = s[n - 1];
  }
  free(s);
}

void bt_hub_stop(bt_hub_t *h, int exit_code, const char *text, double flush_s) {
  if (!h) return;
  bt_node_msg_t m;
  memset(&m, 0, sizeof m);
  m.num[0] = exit_code;
  snprintf(m.text, sizeof m.text, "%s", text ? text : "");
  pthread_mutex_lock(&h->mu);
  for (uint32_t i = 1; i < h->o.nnodes; i++)
    if (h->nodes[i].alive) bt_node_encode(&h->nodes[i].out, BT_NODE_BYE, &m);
  int ms = (int)(flush_s * 1000);
  h->stopping = ms > 0 ? ms : 1;
  pthread_mutex_unlock(&h->mu);
  if (h->th_started) {
    uv_async_send(&h->wake);
    pthread_join(h->th, NULL);
  }
  uv_loop_close(&h->loop);
  for (conn_t *c = h->conns, *next; c; c = next) { /* none: shut_down closed them */
    next = c->next;
    free(c->buf);
    free(c);
  }
  for (uint32_t i = 0; i < h->o.nnodes; i++) bt_buf_free(&h->nodes[i].out);
  while (h->evhead < h->nev) bt_hub_event_free(&h->ev[h->evhead++]);
  free(h->ev);
  free(h->samples);
  free(h->nodes);
  pthread_mutex_destroy(&h->mu);
  pthread_cond_destroy(&h->cv);
  free(h);
}
