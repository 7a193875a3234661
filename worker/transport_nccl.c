/* transport_nccl.c - worker/transport.h over NCCL (see transport_nccl.h for
 * the channel design, what is checked and what was tested).
 *
 * Everything that touches NCCL or CUDA goes through the table of
 * kernels/cuda/nccl_dev.h, found in libbaton_nccl.so at run time; this
 * file holds the channels, the tag checks, the requests and the deadlines.
 * The staging helpers for the socket fallback and the GPU's name need only
 * the CUDA runtime: they use libbaton_cuda.so, never NCCL.
 */
#include "worker/transport_nccl.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "kernels/cuda/nccl_dev.h"

enum { DIR_SEND = 0, DIR_RECV = 1 };
enum { REQ_QUEUED, REQ_POSTED, REQ_DONE };

/* The header in front of every message: the tag and the size, little
 * endian as every GPU host is. */
typedef struct {
  int64_t step;
  int32_t kind, stage, mb, magic;
  uint64_t bytes;
} hdr_t;
_Static_assert(sizeof(hdr_t) == BT_NCCL_HDR_BYTES, "header size");
#define HDR_MAGIC 0x4e544231 /* "1BTN" */
#define WARMUP_KIND (-1)

typedef struct chan chan_t;

struct bt_tx_req {
  chan_t *ch;
  int dir;
  int state;
  int rc;       /* once REQ_DONE */
  int detached; /* a send nobody waits for alone */
  bt_tag_t tag;
  size_t bytes;
  const void *sbuf;
  void *rbuf;
  bt_nccl_op_t *op;
  struct bt_tx_req *twin; /* loopback: the other half of one NCCL group */
  struct bt_tx_req *next; /* the channel's list, in post order */
};

/* One (peer, kind, direction); a loopback channel carries both directions. */
struct chan {
  int peer, kind, dir, loopback;
  bt_nccl_comm_t *comm;
  int comm_peer; /* the peer's rank inside comm */
  bt_tx_req_t *head, *tail;
};

typedef struct {
  bt_tx_t base;
  const bt_nccl_dev_t *dev;
  int device;
  bt_nccl_comm_t *world;
  chan_t *chans;
  int nchans;
  int broken; /* the code every request fails with once the transport broke */
  int64_t closed_step; /* INT64_MIN until the first end_step */
  int64_t enqueue_ms;
  void *stream; /* the compute stream transfers are ordered with (NULL: none) */
  int splits;   /* communicator splits made at creation */
  bt_tx_stats_t st;
} nccl_tx_t;

static nccl_tx_t *impl(bt_tx_t *tx) { return (nccl_tx_t *)tx; }

/* ---- the library ---- */

static const bt_nccl_dev_t *dev_table(char *why, size_t why_len) {
  char inner[400] = "";
  void *sym = bt_cuda_lib_symbol(BT_NCCL_DEV_SYMBOL, inner, sizeof inner);
  if (!sym) {
    snprintf(why, why_len, "NCCL transport: %s", inner);
    return NULL;
  }
  bt_nccl_dev_get_fn get;
  memcpy(&get, &sym, sizeof get);
  const bt_nccl_dev_t *d = get(BT_NCCL_DEV_VERSION);
  if (!d) snprintf(why, why_len, "NCCL transport: libbaton_nccl.so is of another version");
  return d;
}

int bt_tx_nccl_available(int device, char *why, size_t why_len) {
  char sink[8];
  if (!why || !why_len) why = sink, why_len = sizeof sink;
  why[0] = '\0';
  const bt_nccl_dev_t *d = dev_table(why, why_len);
  if (!d) return BT_EBACKEND;
  char inner[400] = "";
  int rc = d->probe(bt_cuda_resolve_device(device), inner, sizeof inner);
  if (rc < 0) snprintf(why, why_len, "NCCL transport: %s", inner);
  return rc < 0 ? BT_EBACKEND : 0;
}

int bt_tx_nccl_unique_id(uint8_t out[BT_TX_NCCL_ID_BYTES]) {
  char why[512];
  const bt_nccl_dev_t *d = dev_table(why, sizeof why);
  if (!d) {
    bt_error("%s", why);
    return BT_EBACKEND;
  }
  int rc = d->unique_id(out);
  return rc < 0 ? BT_EBACKEND : 0;
}

void bt_tx_nccl_versions(char *out, size_t cap) {
  char why[512];
  const bt_nccl_dev_t *d = dev_table(why, sizeof why);
  if (d)
    d->versions(out, cap);
  else
    snprintf(out, cap, "%s", why);
}

/* ---- breaking ---- */

/* Stops every communicator: every NCCL kernel of this transport ends and
 * every request fails with `code` from now on. Every communicator is
 * revoked before any is aborted: ncclCommAbort frees memory, which
 * synchronises the device, which would wait for the kernels of the
 * communicators not yet stopped — spinning for peers that never come.
 * Aborting does NOT tell the peer processes (NCCL promises nothing of the
 * kind): a neighbour's operations fail at its own deadline, or when the
 * supervisor, told of our failure, stops it. */
static void break_all(nccl_tx_t *t, int code) {
  if (t->broken) return;
  t->broken = code;
  for (int i = 0; i < t->nchans; i++) t->dev->comm_revoke(t->chans[i].comm);
  if (t->world) t->dev->comm_revoke(t->world);
  for (int i = 0; i < t->nchans; i++) t->dev->comm_abort(t->chans[i].comm);
  t->dev->comm_abort(t->world);
}

/* ---- requests ---- */

static void unlink_req(chan_t *ch, bt_tx_req_t *r) {
  bt_tx_req_t **pp = &ch->head, *prev = NULL;
  while (*pp && *pp != r) prev = *pp, pp = &(*pp)->next;
  if (!*pp) return;
  *pp = r->next;
  if (ch->tail == r) ch->tail = prev;
}

static void release(nccl_tx_t *t, bt_tx_req_t *r) {
  if (r->twin) r->twin->twin = NULL;
  unlink_req(r->ch, r);
  t->dev->op_free(r->op);
  free(r);
}

static void append(chan_t *ch, bt_tx_req_t *r) {
  if (ch->tail)
    ch->tail->next = r;
  else
    ch->head = r;
  ch->tail = r;
}

static void hdr_of(hdr_t *h, const bt_tag_t *tag, size_t bytes) {
  memset(h, 0, sizeof *h);
  h->step = tag->step;
  h->kind = tag->kind;
  h->stage = tag->stage;
  h->mb = tag->mb;
  h->magic = HDR_MAGIC;
  h->bytes = bytes;
}

static int tag_eq(const bt_tag_t *a, const bt_tag_t *b) {
  return a->step == b->step && a->kind == b->kind && a->stage == b->stage && a->mb == b->mb;
}

/* Compares what arrived with what the receive expected. */
static int check_header(nccl_tx_t *t, bt_tx_req_t *r, const hdr_t *got) {
  bt_tag_t g = {got->step, got->kind, got->stage, got->mb};
  if (got->magic == HDR_MAGIC && tag_eq(&g, &r->tag) && got->bytes == r->bytes) return 0;
  char want_s[128], got_s[128];
  bt_tag_str(&r->tag, want_s, sizeof want_s);
  bt_tag_str(&g, got_s, sizeof got_s);
  bt_error("NCCL transport: from rank %d expected the %s (%zu bytes) but received the %s "
           "(%llu bytes)%s: the schedules of the two workers disagree",
           r->ch->peer, want_s, r->bytes, got_s, (unsigned long long)got->bytes,
           got->magic == HDR_MAGIC ? "" : " with a corrupt header");
  (void)t;
  return BT_ETAG;
}

/* Marks r done with rc, counting what moved. */
static void finish(nccl_tx_t *t, bt_tx_req_t *r, int rc) {
  r->state = REQ_DONE;
  r->rc = rc;
  if (rc == 0 && r->dir == DIR_SEND) {
    t->st.msgs_sent++;
    t->st.bytes_sent += r->bytes;
  } else if (rc == 0) {
    t->st.msgs_recv++;
    t->st.bytes_recv += r->bytes;
  }
}

/* Loopback: the oldest queued send and the oldest queued receive go out
 * together in one group once both exist (a rank's send to itself needs its
 * receive in the same group). Their tags are compared here, before NCCL
 * moves anything. */
static int loopback_pair(nccl_tx_t *t, chan_t *ch) {
  for (;;) {
    bt_tx_req_t *s = NULL, *rv = NULL;
    for (bt_tx_req_t *r = ch->head; r; r = r->next) {
      if (r->state != REQ_QUEUED) continue;
      if (r->dir == DIR_SEND && !s) s = r;
      if (r->dir == DIR_RECV && !rv) rv = r;
    }
    if (!s || !rv) return 0;
    if (!tag_eq(&s->tag, &rv->tag) || s->bytes != rv->bytes) {
      char a[128], b[128];
      bt_tag_str(&s->tag, a, sizeof a);
      bt_tag_str(&rv->tag, b, sizeof b);
      bt_error("NCCL transport: loopback sends the %s (%zu bytes) where the %s (%zu bytes) is "
               "expected", a, s->bytes, b, rv->bytes);
      return BT_ETAG;
    }
    hdr_t h;
    hdr_of(&h, &s->tag, s->bytes);
    bt_nccl_op_t *op = NULL;
    int rc = t->dev->post(ch->comm, &h, s->sbuf, rv->rbuf, s->bytes, ch->comm_peer, t->stream,
                          bt_deadline_ms(t->enqueue_ms), &op);
    if (rc < 0) return rc;
    /* One op completes both: the receive owns it, the send follows it. */
    rv->op = op;
    rv->state = REQ_POSTED;
    s->state = REQ_POSTED;
    s->twin = rv;
    rv->twin = s;
  }
}

/* Advances r without blocking: 1 done (r->rc set), 0 pending. */
static int progress(nccl_tx_t *t, bt_tx_req_t *r) {
  if (r->state == REQ_DONE) return 1;
  if (t->broken) {
    finish(t, r, t->broken);
    return 1;
  }
  if (r->state == REQ_QUEUED) return 0; /* a loopback half waiting for its twin */
  if (!r->op) {
    /* A loopback send: done when the receive it went out with is. */
    bt_tx_req_t *rv = r->twin;
    if (rv && !progress(t, rv)) return 0;
    finish(t, r, rv ? rv->rc : 0);
    return 1;
  }
  int rc = t->dev->op_test(r->ch->comm, r->op);
  if (rc == 0) return 0;
  if (rc < 0) {
    break_all(t, rc == BT_ECUDA ? BT_ECUDA : BT_ENCCL);
    finish(t, r, t->broken);
    return 1;
  }
  if (r->dir == DIR_RECV) {
    hdr_t got;
    memcpy(&got, t->dev->op_header(r->op), sizeof got);
    rc = check_header(t, r, &got);
    if (rc < 0) {
      /* Nothing more on this transport can be trusted. */
      break_all(t, BT_ETAG);
      finish(t, r, BT_ETAG);
      return 1;
    }
    /* The kernels that read the buffer are queued after this on the
     * compute stream: order them after the transfer on the device. */
    if ((rc = t->dev->op_join(r->op, t->stream)) < 0) {
      break_all(t, BT_ECUDA);
      finish(t, r, t->broken);
      return 1;
    }
  }
  finish(t, r, 0);
  return 1;
}

/* ---- the vtable ---- */

static chan_t *find_chan(nccl_tx_t *t, int peer, int kind, int dir) {
  for (int i = 0; i < t->nchans; i++) {
    chan_t *c = &t->chans[i];
    if (c->peer == peer && c->kind == kind && (c->loopback || c->dir == dir)) return c;
  }
  return NULL;
}

/* The step window of transport.h: closed steps and steps too far ahead. */
static int step_ok(nccl_tx_t *t, const bt_tag_t *tag) {
  if (t->closed_step == INT64_MIN) return 1;
  return tag->step > t->closed_step && tag->step <= t->closed_step + 2;
}

static int post(nccl_tx_t *t, int dir, const void *sbuf, void *rbuf, size_t bytes, int peer,
                bt_tag_t tag, bt_tx_req_t **out) {
  if (t->broken) return t->broken;
  chan_t *ch = find_chan(t, peer, tag.kind, dir);
  if (!ch) {
    bt_error("NCCL transport: rank %d is not a peer of rank %d", peer, t->base.rank);
    return BT_EARG;
  }
  if (!step_ok(t, &tag)) {
    char s[128];
    bt_tag_str(&tag, s, sizeof s);
    bt_error("NCCL transport: the %s is outside the open steps (closed through %lld)", s,
             (long long)t->closed_step);
    return BT_ETAG;
  }
  if (dir == DIR_RECV)
    for (bt_tx_req_t *q = ch->head; q; q = q->next)
      if (q->dir == DIR_RECV && q->state != REQ_DONE && tag_eq(&q->tag, &tag)) {
        char s[128];
        bt_tag_str(&tag, s, sizeof s);
        bt_error("NCCL transport: a receive of the %s is already posted", s);
        return BT_ETAG;
      }
  bt_tx_req_t *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  r->ch = ch;
  r->dir = dir;
  r->tag = tag;
  r->bytes = bytes;
  r->sbuf = sbuf;
  r->rbuf = rbuf;
  r->detached = out == NULL;
  r->state = REQ_QUEUED;
  int rc = 0;
  if (ch->loopback) {
    append(ch, r);
    rc = loopback_pair(t, ch);
    if (rc < 0) {
      unlink_req(ch, r);
      free(r);
      break_all(t, rc == BT_ETAG ? BT_ETAG : BT_ENCCL);
      return rc;
    }
  } else {
    hdr_t h;
    hdr_of(&h, &tag, bytes);
    rc = t->dev->post(ch->comm, dir == DIR_SEND ? &h : NULL, sbuf, rbuf, bytes, ch->comm_peer,
                      t->stream, bt_deadline_ms(t->enqueue_ms), &r->op);
    if (rc < 0) {
      free(r);
      break_all(t, rc == BT_ETIMEOUT ? BT_ETIMEOUT : BT_ENCCL);
      return t->broken;
    }
    r->state = REQ_POSTED;
    append(ch, r);
  }
  if (out) *out = r;
  return 0;
}

static int nccl_isend(bt_tx_t *tx, const void *buf, size_t bytes, int peer, bt_tag_t tag,
                      bt_tx_req_t **req) {
  return post(impl(tx), DIR_SEND, buf, NULL, bytes, peer, tag, req);
}

static int nccl_irecv(bt_tx_t *tx, void *buf, size_t bytes, int peer, bt_tag_t tag,
                      bt_tx_req_t **req) {
  return post(impl(tx), DIR_RECV, NULL, buf, bytes, peer, tag, req);
}

/* A request its owner collects: its code, and it is released. A loopback
 * receive whose send is not yet done is kept (detached) until it is: the
 * send learns its completion through it. */
static int collect(nccl_tx_t *t, bt_tx_req_t *r) {
  int rc = r->rc;
  if (r->dir == DIR_RECV && r->twin && r->twin->state != REQ_DONE)
    r->detached = 1;
  else
    release(t, r);
  return rc;
}

static int nccl_test(bt_tx_t *tx, bt_tx_req_t *req) {
  nccl_tx_t *t = impl(tx);
  if (!progress(t, req)) return 0;
  int rc = collect(t, req);
  return rc < 0 ? rc : 1;
}

/* Polls with a short back-off: a GPU message of a few hundred microseconds
 * should not wait a millisecond for its poll. */
static void backoff(long *ns) {
  struct timespec ts = {0, *ns}, rem;
  while (nanosleep(&ts, &rem) != 0 && errno == EINTR) ts = rem;
  *ns = *ns < 200000 ? *ns * 2 : 200000;
}

static int nccl_wait(bt_tx_t *tx, bt_tx_req_t *req, uint64_t deadline) {
  nccl_tx_t *t = impl(tx);
  long ns = 1000;
  while (!progress(t, req)) {
    if (bt_clock_ns() > deadline) {
      char s[128];
      bt_tag_str(&req->tag, s, sizeof s);
      bt_error("NCCL transport: %s the %s with rank %d passed its deadline: aborting",
               req->dir == DIR_SEND ? "sending" : "receiving", s, req->ch->peer);
      break_all(t, BT_ETIMEOUT);
      return BT_ETIMEOUT; /* req stays allocated: the next wait releases it */
    }
    backoff(&ns);
  }
  return collect(t, req);
}

/* Releases detached requests that are done, except a loopback receive
 * whose send still follows it. */
static void sweep(nccl_tx_t *t) {
  for (int i = 0; i < t->nchans; i++) {
    bt_tx_req_t *r = t->chans[i].head;
    while (r) {
      bt_tx_req_t *next = r->next;
      int followed = r->dir == DIR_RECV && r->twin && r->twin->state != REQ_DONE;
      if (r->detached && r->state == REQ_DONE && !followed) release(t, r);
      r = next;
    }
  }
}

static int nccl_wait_sends(bt_tx_t *tx, uint64_t deadline) {
  nccl_tx_t *t = impl(tx);
  int first = 0;
  long ns = 1000;
  for (;;) {
    int pending = 0;
    for (int i = 0; i < t->nchans; i++)
      for (bt_tx_req_t *r = t->chans[i].head; r; r = r->next) {
        if (r->dir != DIR_SEND) continue;
        if (!progress(t, r)) {
          pending = 1;
          continue;
        }
        if (r->detached && r->rc < 0 && !first) first = r->rc;
      }
    sweep(t);
    if (!pending) break;
    if (bt_clock_ns() > deadline) {
      bt_error("NCCL transport: sends still pending at the deadline: aborting");
      break_all(t, BT_ETIMEOUT);
      return BT_ETIMEOUT;
    }
    backoff(&ns);
  }
  return first ? first : t->broken;
}

static int nccl_end_step(bt_tx_t *tx, int64_t step, uint64_t deadline) {
  nccl_tx_t *t = impl(tx);
  int rc = nccl_wait_sends(tx, deadline);
  if (rc < 0) return rc;
  /* NCCL holds nothing early (data lands only in posted buffers), so what
   * "held" means for the socket transport is here a receive of a closed
   * step still posted: its message will never be sent. */
  for (int i = 0; i < t->nchans; i++)
    for (bt_tx_req_t *r = t->chans[i].head; r; r = r->next)
      if (r->dir == DIR_RECV && r->state != REQ_DONE && r->tag.step <= step) {
        char s[128];
        bt_tag_str(&r->tag, s, sizeof s);
        bt_error("NCCL transport: step %lld closed with a receive of the %s still posted",
                 (long long)step, s);
        return BT_ETAG;
      }
  t->closed_step = step;
  return 0;
}

static void nccl_stats(bt_tx_t *tx, bt_tx_stats_t *out) { *out = impl(tx)->st; }

static void nccl_destroy(bt_tx_t *tx) {
  nccl_tx_t *t = impl(tx);
  int pending = 0;
  for (int i = 0; i < t->nchans; i++)
    for (bt_tx_req_t *r = t->chans[i].head; r; r = r->next)
      if (!progress(t, r)) pending = 1;
  /* Finalizing waits for outstanding operations, which a peer that is gone
   * never completes: abort instead whenever anything is still pending. */
  if (pending) break_all(t, BT_EABORT);
  uint64_t deadline = bt_deadline_ms(10000);
  for (int i = 0; i < t->nchans; i++) {
    chan_t *ch = &t->chans[i];
    while (ch->head) release(t, ch->head);
    t->dev->comm_destroy(ch->comm, deadline);
  }
  t->dev->comm_destroy(t->world, deadline);
  free(t->chans);
  free(t);
}

static const bt_tx_ops_t nccl_ops = {
    .name = "nccl",
    .isend = nccl_isend,
    .irecv = nccl_irecv,
    .test = nccl_test,
    .wait = nccl_wait,
    .wait_sends = nccl_wait_sends,
    .end_step = nccl_end_step,
    .stats = nccl_stats,
    .destroy = nccl_destroy,
};

/* ---- creation ---- */

/* The ring's edges e_i = (i, i+1 mod p) and their colouring into rounds
 * in which no rank is on two edges (so one split makes the channels of a
 * whole round): even edges, odd edges, and for odd p > 2 the edge that
 * closes the ring alone. */
int bt_tx_nccl_ring_edges(int p) { return p > 2 ? p : p == 2 ? 1 : 0; }

int bt_tx_nccl_ring_rounds(int p) { return p > 2 ? (p % 2 ? 3 : 2) : p == 2 ? 1 : 0; }

int bt_tx_nccl_edge_round(int i, int p) { return (p > 2 && p % 2 && i == p - 1) ? 2 : i % 2; }

static int lists(const bt_tx_nccl_opts_t *o, int peer) {
  for (int i = 0; i < o->npeers; i++)
    if (o->peers[i] == peer) return 1;
  return 0;
}

/* One channel's header exchange right after its split, so NCCL sets up
 * the connection now, in creation order, not lazily during training. */
static int warm_up(nccl_tx_t *t, chan_t *ch, uint64_t deadline) {
  hdr_t h;
  bt_tag_t tag = {-1, WARMUP_KIND, 0, 0};
  hdr_of(&h, &tag, 0);
  int sends = ch->loopback || ch->dir == DIR_SEND, recvs = ch->loopback || ch->dir == DIR_RECV;
  /* The receive needs a buffer only for a payload; a header-only message
   * passes a non-NULL dummy to say "receive". */
  static uint8_t none;
  bt_nccl_op_t *op = NULL;
  int rc = t->dev->post(ch->comm, sends ? &h : NULL, NULL, recvs ? (void *)&none : NULL, 0,
                        ch->comm_peer, t->stream, deadline, &op);
  if (rc < 0) return rc;
  long ns = 1000;
  while ((rc = t->dev->op_test(ch->comm, op)) == 0) {
    if (bt_clock_ns() > deadline) {
      rc = BT_ETIMEOUT;
      break;
    }
    backoff(&ns);
  }
  if (rc == 1 && recvs) {
    hdr_t got;
    memcpy(&got, t->dev->op_header(op), sizeof got);
    if (got.magic != HDR_MAGIC || got.kind != WARMUP_KIND) {
      bt_error("NCCL transport: channel with rank %d: garbage during set-up", ch->peer);
      rc = BT_ETRANSPORT;
    }
  }
  t->dev->op_free(op);
  return rc < 0 ? rc : 0;
}

/* One split of the world that every rank calls: the ends of ring edge
 * `edge` (sender a, receiver b; edge < 0: this rank is on no edge of the
 * round) take the edge's index as colour and get their channel, every
 * other rank takes no colour. */
static int add_chan(nccl_tx_t *t, const bt_tx_nccl_opts_t *o, int edge, int a, int b, int kind,
                    uint64_t deadline, char *why, size_t why_len) {
  int me = o->rank;
  int member = edge >= 0 && ((me == a && lists(o, b)) || (me == b && lists(o, a)));
  bt_nccl_comm_t *c = NULL;
  t->splits++;
  int rc = t->dev->comm_split(t->world, member ? edge : -1, me, deadline, &c);
  if (rc < 0) {
    snprintf(why, why_len, "NCCL transport: ncclCommSplit %d (ring edge %d): %s", t->splits, edge,
             bt_strerror(rc));
    return rc;
  }
  if (!member) return 0;
  int size = 0, crank = 0;
  if ((rc = t->dev->comm_size(c, &size, &crank)) < 0 || size != 2) {
    t->dev->comm_destroy(c, deadline);
    if (rc < 0) {
      snprintf(why, why_len, "NCCL transport: channel with rank %d: %s", me == a ? b : a,
               bt_strerror(rc));
      return rc;
    }
    snprintf(why, why_len, "NCCL transport: ranks %d and %d do not both list each other as "
             "peers", a, b);
    return BT_EARG;
  }
  chan_t *ch = &t->chans[t->nchans++];
  ch->peer = me == a ? b : a;
  ch->kind = kind;
  ch->loopback = 0;
  ch->dir = me == a ? DIR_SEND : DIR_RECV;
  ch->comm = c;
  ch->comm_peer = 1 - crank;
  rc = warm_up(t, ch, deadline);
  if (rc < 0)
    snprintf(why, why_len, "NCCL transport: connecting to rank %d: %s", ch->peer,
             bt_strerror(rc));
  return rc;
}

int bt_tx_nccl_create(const bt_tx_nccl_opts_t *o, bt_tx_t **out, char *why, size_t why_len) {
  return bt_tx_nccl_create_with(NULL, o, out, why, why_len);
}

int bt_tx_nccl_create_with(const bt_nccl_dev_t *d, const bt_tx_nccl_opts_t *o, bt_tx_t **out,
                           char *why, size_t why_len) {
  char sink[8];
  if (!why || !why_len) why = sink, why_len = sizeof sink;
  why[0] = '\0';
  if (!o || !out || !o->id || o->nranks < 1 || o->rank < 0 || o->rank >= o->nranks ||
      o->npeers < 0 || (o->npeers && !o->peers)) {
    snprintf(why, why_len, "NCCL transport: bad options");
    return BT_EARG;
  }
  for (int i = 0; i < o->npeers; i++) {
    int q = o->peers[i], n = o->nranks;
    if (q < 0 || q >= n) {
      snprintf(why, why_len, "NCCL transport: peer %d is not a rank of %d", q, n);
      return BT_EARG;
    }
    if (q != o->rank && q != (o->rank + 1) % n && q != (o->rank + n - 1) % n) {
      snprintf(why, why_len, "NCCL transport: peer %d is not a ring neighbour of rank %d "
               "(channels exist between ring neighbours only)", q, o->rank);
      return BT_EARG;
    }
  }
  *out = NULL;
  if (!d && !(d = dev_table(why, why_len))) return BT_EBACKEND;
  int device = bt_cuda_resolve_device(o->device);
  char inner[400] = "";
  if (d->probe(device, inner, sizeof inner) < 0) {
    snprintf(why, why_len, "NCCL transport: %s", inner);
    return BT_EBACKEND;
  }
  nccl_tx_t *t = calloc(1, sizeof *t);
  /* At most two channels (one per direction) per peer and kind. */
  chan_t *chans = calloc((size_t)(o->npeers ? o->npeers : 1) * 4, sizeof *chans);
  int rc = 0;
  if (!t || !chans) {
    free(t);
    free(chans);
    snprintf(why, why_len, "NCCL transport: out of memory");
    return -ENOMEM;
  }
  t->base.ops = &nccl_ops;
  t->base.rank = o->rank;
  t->base.nranks = o->nranks;
  t->dev = d;
  t->device = device;
  t->chans = chans;
  t->closed_step = INT64_MIN;
  t->enqueue_ms = o->enqueue_ms > 0 ? o->enqueue_ms : 60000;
  t->stream = o->stream;
  uint64_t t0 = bt_clock_ns();
  uint64_t deadline = bt_deadline_ms(o->init_ms > 0 ? o->init_ms : 120000);

  rc = d->comm_init(device, o->nranks, o->id, o->rank, deadline, &t->world);
  if (rc < 0) {
    snprintf(why, why_len, "NCCL transport: creating the communicator of %d ranks: %s",
             o->nranks, bt_strerror(rc));
    goto fail;
  }
  /* The fixed order every rank follows (a Megatron deadlock came from pair
   * communicators created lazily in different orders): for each round of
   * the ring's edge colouring, each kind, each direction, one split that
   * makes the channels of every edge of that round at once. */
  int p = o->nranks, nedges = bt_tx_nccl_ring_edges(p), rounds = bt_tx_nccl_ring_rounds(p);
  for (int round = 0; round < rounds; round++)
    for (int kind = BT_MSG_ACTIVATION; kind <= BT_MSG_GRADIENT; kind++)
      for (int dir = 0; dir < 2; dir++) {
        int edge = -1;
        for (int i = 0; i < nedges && edge < 0; i++)
          if (bt_tx_nccl_edge_round(i, p) == round && (i == o->rank || (i + 1) % p == o->rank))
            edge = i;
        int a = edge < 0 ? -1 : edge, b = edge < 0 ? -1 : (edge + 1) % p;
        int from = dir ? b : a, to = dir ? a : b;
        if ((rc = add_chan(t, o, edge, from, to, kind, deadline, why, why_len)) < 0) goto fail;
      }
  /* Loopback channels: one split per kind, each rank its own colour. */
  for (int kind = BT_MSG_ACTIVATION; kind <= BT_MSG_GRADIENT; kind++) {
    bt_nccl_comm_t *c = NULL;
    int member = lists(o, o->rank);
    t->splits++;
    rc = d->comm_split(t->world, member ? o->rank : -1, 0, deadline, &c);
    if (rc < 0) {
      snprintf(why, why_len, "NCCL transport: loopback channel: %s", bt_strerror(rc));
      goto fail;
    }
    if (!member) continue;
    chan_t *ch = &t->chans[t->nchans++];
    ch->peer = o->rank;
    ch->kind = kind;
    ch->loopback = 1;
    ch->comm = c;
    ch->comm_peer = 0;
    if ((rc = warm_up(t, ch, deadline)) < 0) {
      snprintf(why, why_len, "NCCL transport: loopback channel: %s", bt_strerror(rc));
      goto fail;
    }
  }
  bt_info("NCCL transport: rank %d of %d, %d channels from %d communicator splits, set up "
          "in %.2f s", o->rank, p, t->nchans, t->splits, (double)(bt_clock_ns() - t0) * 1e-9);
  *out = &t->base;
  return 0;
fail:
  break_all(t, rc);
  nccl_destroy(&t->base);
  return rc;
}

/* ---- the socket fallback ---- */

int bt_tx_nccl_choose(const char *const *gpu_of_rank, int nranks, char *why, size_t why_len) {
  char sink[8];
  if (!why || !why_len) why = sink, why_len = sizeof sink;
  why[0] = '\0';
  for (int a = 0; a < nranks; a++)
    for (int b = a + 1; b < nranks; b++)
      if (gpu_of_rank[a] && gpu_of_rank[b] && !strcmp(gpu_of_rank[a], gpu_of_rank[b])) {
        /* BATON_NCCL_SHARED_GPU=1 tries NCCL anyway, for an NCCL that lets
         * two ranks share a device (scripts/gpu-check.sh tests whether the
         * node's does; NCCL 2.28 says "Duplicate GPU detected"). */
        const char *force = getenv("BATON_NCCL_SHARED_GPU");
        if (force && !strcmp(force, "1")) continue;
        snprintf(why, why_len, "ranks %d and %d share GPU %s (NCCL refuses two ranks on one "
                 "device)", a, b, gpu_of_rank[a]);
        return 0;
      }
  return 1;
}

/* A function of libbaton_cuda.so (the CUDA runtime only, never NCCL). */
static void *cuda_fn(const char *name) {
  char why[512];
  void *sym = bt_cuda_lib_symbol(name, why, sizeof why);
  if (!sym) bt_error("%s", why);
  return sym;
}

int bt_tx_nccl_gpu_name(int device, char *out, size_t cap) {
  void *sym = cuda_fn("bt_cuda_device_bus_id");
  if (!sym) return BT_EBACKEND;
  int (*bus_id)(int, char *, size_t);
  memcpy(&bus_id, &sym, sizeof bus_id);
  char host[256], bus[64];
  if (gethostname(host, sizeof host) != 0) return -errno;
  host[sizeof host - 1] = '\0';
  int rc = bus_id(bt_cuda_resolve_device(device), bus, sizeof bus);
  if (rc < 0) return rc;
  int n = snprintf(out, cap, "%s/%s", host, bus);
  return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static int is_cuda(bt_backend_t *be) { return be && !strcmp(be->ops->name, "cuda"); }

int bt_tx_stage_alloc(bt_backend_t *be, size_t bytes, void **host) {
  *host = NULL;
  if (!be) return BT_EARG;
  if (!is_cuda(be)) {
    *host = malloc(bytes ? bytes : 1);
    return *host ? 0 : -ENOMEM;
  }
  void *sym = cuda_fn("bt_cuda_host_alloc");
  if (!sym) return BT_EBACKEND;
  int (*host_alloc)(void **, size_t);
  memcpy(&host_alloc, &sym, sizeof host_alloc);
  return host_alloc(host, bytes);
}

void bt_tx_stage_free(bt_backend_t *be, void *host) {
  if (!host) return;
  if (!is_cuda(be)) {
    free(host);
    return;
  }
  /* The library was loaded to allocate, so it is there to free. */
  void *sym = cuda_fn("bt_cuda_host_free");
  if (!sym) return;
  void (*host_free)(void *);
  memcpy(&host_free, &sym, sizeof host_free);
  host_free(host);
}

int bt_tx_stage_out(bt_backend_t *be, void *host, const void *dev, size_t bytes) {
  if (!be || (bytes && (!host || !dev))) return BT_EARG;
  return be->ops->to_host(be, host, dev, bytes);
}

int bt_tx_stage_in(bt_backend_t *be, void *dev, const void *host, size_t bytes) {
  if (!be || (bytes && (!host || !dev))) return BT_EARG;
  return be->ops->to_device(be, dev, host, bytes);
}
