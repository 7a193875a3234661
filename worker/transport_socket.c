/* transport_socket.c - the socket transport of transport.h: TCP between
 * workers, on one host or many, or Unix sockets on one host.
 *
 * What it is for: CPU jobs. Each worker listens on an ephemeral port
 * (127.0.0.1 for a single-node job), or with opts.local on a Unix socket
 * in the abstract namespace (bench/bench_transport.c measures it 1.5-2.5x
 * the bandwidth of loopback TCP), reports "tcp:HOST:PORT" or "unix:@NAME"
 * to the supervisor, and connects to the peers it exchanges tensors with: for each
 * pair the lower rank dials, the higher accepts. Every connection opens with
 * a mutual challenge-response keyed by the per-job token: each side proves
 * it holds the token with an HMAC over fresh nonces from both sides, so the
 * token itself never crosses the wire and a recorded proof is worth nothing
 * in another connection. A connection that cannot prove it is closed and
 * logged, and accepting goes on — a port scanner or a stray worker of
 * another job never stops this one; a dialer that reaches a listener which
 * cannot prove it sends it nothing and fails (BT_ETRANSPORT).
 *
 * How it moves bytes: one progress thread per transport waits in epoll on
 * the peer sockets, the listening socket and an eventfd (its wake-up call
 * for stop and failures). It writes queued sends (per peer, in order) and
 * reads whatever arrives: a message whose receive is posted lands straight
 * in that buffer, any other is held in memory until its receive is posted.
 * A send is first tried at once from the caller's thread (small messages
 * then leave without waking the progress thread); whatever the socket does
 * not take is finished in the background. A worker thread waiting for a
 * receive reads that peer's socket itself while nobody else does, so a
 * message reaches it without a hand-over between threads. Sends and
 * receives with one peer share one full-duplex connection, so a pending
 * send never delays a receive.
 *
 * Locking: one mutex guards all state. Socket writes under it are
 * non-blocking and bounded (IO_CHUNK); reads run without it, by the one
 * thread that holds the peer's reader role (peer_t.reader), into memory
 * no other thread touches until the message completes.
 *
 * Wire format (little-endian; docs/protocol.md):
 *   hello      dialer -> acceptor: u32 'BTHS', u16 version (2), u16 0,
 *              u32 from rank, u32 to rank, 32-byte dialer nonce Nd
 *   challenge  acceptor -> dialer: u32 'BTCH', 32-byte acceptor nonce Na,
 *              proof_a = HMAC(token, "baton-dp-accept" 0 ctx 0 Nd Na)
 *   response   dialer -> acceptor (once proof_a checks out): u32 'BTRS',
 *              proof_d = HMAC(token, "baton-dp-dial" 0 ctx 0 Na Nd)
 *   ack        acceptor -> dialer (once proof_d checks out): u32 'BTAK',
 *              u32 acceptor rank
 *   (ctx = "rank FROM to rank TO": a proof is bound to its pair of ranks)
 *   message    u32 'BTDM', i32 kind, i64 step, i32 virtual stage,
 *              i32 micro-batch, u64 payload bytes, then the payload
 * Payloads carry no checksum of their own: TCP's covers the wire, and a
 * CRC over every activation would cost a pass over memory per message.
 *
 * What it does not do: reconnect. A lost peer is BT_EPEER for good; the
 * supervisor re-forms the whole pipeline. Nor does it pick the socket kind:
 * the caller knows whether the job spans hosts (opts.local).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "worker/transport.h"

#define HS_MAGIC 0x53485442u  /* "BTHS" */
#define CH_MAGIC 0x48435442u  /* "BTCH" */
#define RS_MAGIC 0x53525442u  /* "BTRS" */
#define ACK_MAGIC 0x4b415442u /* "BTAK" */
#define MSG_MAGIC 0x4d445442u /* "BTDM" */
/* 1 sent the token itself; 2 proves it (challenge-response). */
#define HS_VERSION 2
enum {
  HELLO_LEN = 16 + BT_NONCE_LEN,                /* 'BTHS' version 0 from to Nd */
  CHAL_LEN = 4 + BT_NONCE_LEN + BT_SHA256_LEN,  /* 'BTCH' Na proof_a */
  RESP_LEN = 4 + BT_SHA256_LEN,                 /* 'BTRS' proof_d */
  ACK_LEN = 8,
  MSG_HDR = 32
};
#define LABEL_ACCEPT "baton-dp-accept"
#define LABEL_DIAL "baton-dp-dial"
/* No tensor of this model comes near it; a larger length is a corrupt
 * stream, and refusing it keeps a bad header from allocating the heap away. */
#define MAX_MESSAGE (1ull << 34)
/* Accepted connections still in their handshake. When every slot is taken
 * the oldest is dropped for the newcomer, and each slot has a short
 * deadline: a flood of silent connections can delay a real peer by a retry,
 * never lock it out (the dialer sends its handshake right after connecting,
 * so it is usually read in the same call as the accept). */
enum { MAX_PENDING = 32 };
/* Why a connection was refused: each reason is logged once, then counted. */
typedef enum {
  R_ERRNO, R_CLOSED, R_NOT_BATON, R_VERSION, R_TOKEN, R_RANK, R_DUP, R_ACK, R_LATE, R_EVICTED, R_UID, R_NREASONS
} refusal_t;
/* Bytes read from one peer per wake-up before the others get their turn. */
#define READ_BUDGET (16u << 20)
/* The most one read or write moves in one system call. */
#define IO_CHUNK ((size_t)1 << 20)
#define ADDR_LEN 128

enum { REQ_SEND = 0, REQ_RECV = 1 };
enum { READER_PROGRESS = 1, READER_WAITER = 2 };

struct bt_tx_req {
  struct bt_tx_req *next;             /* in a peer's send queue or the posted list */
  struct bt_tx_req *all_prev, *all_next; /* every live request, for destroy */
  int kind, peer;
  bt_tag_t tag;
  uint8_t *buf;
  size_t bytes;
  uint8_t hdr[MSG_HDR]; /* sends: the header on the wire */
  size_t sent;          /* sends: header + payload bytes written */
  int done, rc;
  int detached;         /* a send nobody holds a handle for */
};

/* A message that arrived before its receive was posted. */
typedef struct held {
  struct held *next;
  int peer;
  bt_tag_t tag;
  uint8_t *data;
  size_t bytes;
  int complete;         /* all bytes read */
  bt_tx_req_t *waiter;  /* the receive posted while it was still arriving */
} held_t;

typedef struct {
  int fd;       /* -1 until connected */
  int wanted;   /* in this worker's peer list */
  int err;      /* 0, or the code every request with this peer now fails with */
  int closing;  /* err set, fd still open: the progress thread closes it */
  int reader;   /* who reads this peer now: 0 nobody, READER_PROGRESS, or
                   READER_WAITER (a worker thread waiting for a receive) */
  uint32_t interest;  /* epoll events registered for fd */
  int registered;     /* fd is in the epoll set */
  bt_tx_req_t *sq_head, *sq_tail; /* sends in order */
  /* the message being read */
  uint8_t rhdr[MSG_HDR];
  size_t rhdr_got;
  int in_body;
  uint8_t *rdst;
  size_t rgot, rtotal;
  bt_tx_req_t *rreq; /* landing in a posted receive */
  held_t *rheld;     /* or held */
} peer_t;

/* An accepted connection in its handshake: first its hello is read
 * (PS_HELLO), then, once the challenge is sent, its proof (PS_PROOF). */
enum { PS_HELLO = 0, PS_PROOF = 1 };
typedef struct {
  int fd;
  int state;
  uint64_t deadline;             /* for the whole handshake, from accept */
  uint8_t buf[HELLO_LEN];        /* the record being read (RESP_LEN <= HELLO_LEN) */
  size_t got;
  uint32_t from;                 /* PS_PROOF: the rank it claims */
  uint8_t want[BT_SHA256_LEN];   /* PS_PROOF: the proof the dialer owes */
  char who[64];
} pending_t;

typedef struct {
  bt_tx_t base;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* any request completes, a peer connects or fails */
  pthread_t thread;
  int thread_started, stop;
  int listen_fd, wake_fd, epfd;
  char addr[ADDR_LEN];
  uint8_t token[BT_TX_TOKEN_MAX];
  size_t token_len;
  int64_t handshake_ms;
  peer_t *peers; /* nranks entries */
  bt_tx_req_t *posted;
  bt_tx_req_t *all;
  held_t *held;
  pending_t pend[MAX_PENDING];
  int npend;
  uint64_t refusals[R_NREASONS]; /* by reason: the first of each is logged */
  int have_min_step;
  int64_t min_step; /* the open step after bt_tx_end_step() */
  uint64_t sends_pending;
  int send_err;     /* first error of a detached send */
  uint64_t held_bytes;
  bt_tx_stats_t st;
} sock_tx_t;

/* ---- little-endian helpers ---- */

static void st32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void st64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t ld32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t ld64(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }

static void encode_msg_hdr(uint8_t *h, const bt_tag_t *tag, size_t bytes) {
  st32(h, MSG_MAGIC);
  st32(h + 4, (uint32_t)tag->kind);
  st64(h + 8, (uint64_t)tag->step);
  st32(h + 16, (uint32_t)tag->stage);
  st32(h + 20, (uint32_t)tag->mb);
  st64(h + 24, (uint64_t)bytes);
}

static int tag_eq(const bt_tag_t *a, const bt_tag_t *b) {
  return a->step == b->step && a->kind == b->kind && a->stage == b->stage && a->mb == b->mb;
}

/* ---- requests ---- */

static bt_tx_req_t *req_new(sock_tx_t *t, int kind, int peer, bt_tag_t tag, void *buf,
                            size_t bytes) {
  bt_tx_req_t *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->kind = kind;
  r->peer = peer;
  r->tag = tag;
  r->buf = buf;
  r->bytes = bytes;
  r->all_next = t->all;
  if (t->all) t->all->all_prev = r;
  t->all = r;
  return r;
}

static void req_free(sock_tx_t *t, bt_tx_req_t *r) {
  if (r->all_prev) r->all_prev->all_next = r->all_next;
  else t->all = r->all_next;
  if (r->all_next) r->all_next->all_prev = r->all_prev;
  free(r);
}

/* Marks r finished with rc and wakes waiters. r must be in no queue. A
 * detached send is freed here, its error kept for bt_tx_wait_sends(). */
static void req_complete(sock_tx_t *t, bt_tx_req_t *r, int rc) {
  r->done = 1;
  r->rc = rc;
  if (r->kind == REQ_SEND) {
    t->sends_pending--;
    if (rc == 0) {
      t->st.msgs_sent++;
      t->st.bytes_sent += r->bytes;
    }
    if (r->detached) {
      if (rc && !t->send_err) t->send_err = rc;
      req_free(t, r);
    }
  }
  pthread_cond_broadcast(&t->cv);
}

static void wake(sock_tx_t *t) {
  uint64_t one = 1;
  /* EAGAIN means the counter is already non-zero: the thread will wake. */
  while (write(t->wake_fd, &one, sizeof one) < 0 && errno == EINTR) {
  }
}

/* What the progress thread's epoll waits for on peer i, from its state:
 * readable unless another thread is reading it, writable while sends are
 * queued. Called under the lock by whoever changes that state; epoll_ctl
 * takes effect on a thread already sleeping in epoll_wait, so no wake-up is
 * needed. A peer with nothing to wait for leaves the set (epoll reports a
 * hang-up even for an empty mask, which would spin the thread). */
enum { EV_WAKE = 1, EV_LISTEN = 2, EV_PEND = 3, EV_PEER = 4 };
static uint64_t ev_data(int kind, int v) { return (uint64_t)kind << 32 | (uint32_t)v; }

static void update_interest(sock_tx_t *t, int i) {
  peer_t *p = &t->peers[i];
  uint32_t want = 0;
  if (p->fd >= 0 && !p->err) {
    /* Only a waiting worker thread takes the socket out of the progress
     * thread's sight; the progress thread reading it itself leaves the
     * interest as it is (it is the one that would be woken). */
    if (p->reader != READER_WAITER) want |= EPOLLIN;
    if (p->sq_head) want |= EPOLLOUT;
  }
  if (want == p->interest && p->registered == (want != 0)) return;
  if (!want) {
    if (p->registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, p->fd, NULL);
    p->registered = 0;
  } else {
    struct epoll_event ev = {.events = want, .data.u64 = ev_data(EV_PEER, i)};
    if (epoll_ctl(t->epfd, p->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, p->fd, &ev) == 0)
      p->registered = 1;
    else
      bt_warn("transport: epoll_ctl for peer %d: %s", i, strerror(errno));
  }
  p->interest = want;
}

static void held_unlink(sock_tx_t *t, held_t *h) {
  for (held_t **pp = &t->held; *pp; pp = &(*pp)->next)
    if (*pp == h) {
      *pp = h->next;
      break;
    }
  t->held_bytes -= h->bytes;
}

/* Breaks peer i for good: every request with it fails with `code`, except
 * messages it already sent whole, which stay deliverable. Any thread. */
static void fail_peer(sock_tx_t *t, int i, int code, const char *why) {
  peer_t *p = &t->peers[i];
  if (p->err) return;
  p->err = code;
  if (p->fd >= 0) p->closing = 1;
  update_interest(t, i);
  /* A neighbour that finished its last step and closed is no news: only a
   * loss that fails something, or any other error, is worth a warning. */
  int affected = p->sq_head || p->rreq || p->rheld || p->in_body || p->rhdr_got;
  for (bt_tx_req_t *r = t->posted; r && !affected; r = r->next) affected = r->peer == i;
  if (affected || code != BT_EPEER)
    bt_warn("transport: peer %d lost (%s): %s", i, why, bt_strerror(code));
  else
    bt_debug("transport: peer %d closed its connection", i);
  while (p->sq_head) {
    bt_tx_req_t *r = p->sq_head;
    p->sq_head = r->next;
    req_complete(t, r, code);
  }
  p->sq_tail = NULL;
  for (bt_tx_req_t **pp = &t->posted; *pp;) {
    bt_tx_req_t *r = *pp;
    if (r->peer == i) {
      *pp = r->next;
      req_complete(t, r, code);
    } else {
      pp = &r->next;
    }
  }
  /* The message being read (p->rreq, p->rheld) belongs to the peer's
   * reader, who may be reading into it right now without the lock: it is
   * dropped (drop_read) by the next thread to hold the reader role. */
  wake(t);
  pthread_cond_broadcast(&t->cv);
}

/* By the reader of peer i only: after peer i failed, fails the receive its
 * half-read message was landing in, or frees the half-held message. */
static void drop_read(sock_tx_t *t, int i) {
  peer_t *p = &t->peers[i];
  if (p->rreq) req_complete(t, p->rreq, p->err);
  if (p->rheld) {
    held_t *h = p->rheld;
    if (h->waiter) req_complete(t, h->waiter, p->err);
    held_unlink(t, h);
    free(h->data);
    free(h);
  }
  p->rreq = NULL;
  p->rheld = NULL;
  p->in_body = 0;
  p->rhdr_got = 0;
}

/* ---- moving bytes (called with the lock held) ---- */

/* Writes what the socket takes of peer i's queue. */
static void do_write(sock_tx_t *t, int i) {
  peer_t *p = &t->peers[i];
  while (p->sq_head && !p->err) {
    bt_tx_req_t *r = p->sq_head;
    struct iovec iov[2];
    int n = 0;
    if (r->sent < MSG_HDR) iov[n++] = (struct iovec){r->hdr + r->sent, MSG_HDR - r->sent};
    size_t body = r->sent > MSG_HDR ? r->sent - MSG_HDR : 0;
    /* A bounded write keeps the lock's hold short: the other thread may be
     * waiting to post a receive. */
    if (r->bytes > body)
      iov[n++] = (struct iovec){r->buf + body, r->bytes - body < IO_CHUNK ? r->bytes - body : IO_CHUNK};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
    ssize_t w = n ? sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) : 0;
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      fail_peer(t, i, BT_EPEER, strerror(errno));
      return;
    }
    r->sent += (size_t)w;
    if (r->sent == MSG_HDR + r->bytes) {
      p->sq_head = r->next;
      if (!p->sq_head) p->sq_tail = NULL;
      req_complete(t, r, 0);
    }
  }
  update_interest(t, i);
}

static bt_tx_req_t *take_posted(sock_tx_t *t, int peer, const bt_tag_t *tag) {
  for (bt_tx_req_t **pp = &t->posted; *pp; pp = &(*pp)->next) {
    bt_tx_req_t *r = *pp;
    if (r->peer == peer && tag_eq(&r->tag, tag)) {
      *pp = r->next;
      r->next = NULL;
      return r;
    }
  }
  return NULL;
}

static held_t *find_held(sock_tx_t *t, int peer, const bt_tag_t *tag) {
  for (held_t *h = t->held; h; h = h->next)
    if (h->peer == peer && tag_eq(&h->tag, tag)) return h;
  return NULL;
}

/* Whether a receive with this tag is pending: posted, or being filled. */
static int tag_posted(sock_tx_t *t, int peer, const bt_tag_t *tag) {
  for (bt_tx_req_t *r = t->posted; r; r = r->next)
    if (r->peer == peer && tag_eq(&r->tag, tag)) return 1;
  bt_tx_req_t *cur = t->peers[peer].rreq;
  return cur && tag_eq(&cur->tag, tag);
}

static void body_done(sock_tx_t *t, peer_t *p) {
  t->st.msgs_recv++;
  t->st.bytes_recv += p->rtotal;
  if (p->rreq) {
    bt_tx_req_t *r = p->rreq;
    p->rreq = NULL;
    req_complete(t, r, 0);
  } else if (p->rheld) {
    held_t *h = p->rheld;
    p->rheld = NULL;
    h->complete = 1;
    if (h->waiter) {
      if (h->bytes) memcpy(h->waiter->buf, h->data, h->bytes);
      req_complete(t, h->waiter, 0);
      held_unlink(t, h);
      free(h->data);
      free(h);
    }
  }
  p->in_body = 0;
  p->rhdr_got = 0;
}

/* A whole message header arrived from peer i: decide where its bytes go.
 * Returns 0, or -1 when the peer was failed. */
static int on_header(sock_tx_t *t, int i) {
  peer_t *p = &t->peers[i];
  const uint8_t *h = p->rhdr;
  uint32_t kind = ld32(h + 4);
  uint64_t bytes = ld64(h + 24);
  if (ld32(h) != MSG_MAGIC || kind > BT_MSG_GRADIENT || bytes > MAX_MESSAGE) {
    fail_peer(t, i, BT_ETRANSPORT, "corrupt message header");
    return -1;
  }
  bt_tag_t tag = {.step = (int64_t)ld64(h + 8), .kind = (int32_t)kind,
                  .stage = (int32_t)ld32(h + 16), .mb = (int32_t)ld32(h + 20)};
  char ts[128];
  if (t->have_min_step && (tag.step < t->min_step || tag.step > t->min_step + 1)) {
    bt_tag_str(&tag, ts, sizeof ts);
    bt_error("transport: peer %d sent %s, but step %lld is open", i, ts, (long long)t->min_step);
    fail_peer(t, i, BT_ETAG, "message outside the open steps");
    return -1;
  }
  bt_tx_req_t *r = take_posted(t, i, &tag);
  if (r && r->bytes != bytes) {
    bt_tag_str(&tag, ts, sizeof ts);
    bt_error("transport: peer %d sent %llu bytes for %s, the receive expects %zu", i,
             (unsigned long long)bytes, ts, r->bytes);
    req_complete(t, r, BT_ETAG);
    fail_peer(t, i, BT_ETAG, "message size differs from its receive");
    return -1;
  }
  p->rtotal = (size_t)bytes;
  p->rgot = 0;
  p->in_body = 1;
  if (r) {
    p->rreq = r;
    p->rdst = r->buf;
  } else {
    if (find_held(t, i, &tag)) {
      bt_tag_str(&tag, ts, sizeof ts);
      bt_error("transport: peer %d sent %s twice", i, ts);
      fail_peer(t, i, BT_ETAG, "duplicate tag");
      return -1;
    }
    held_t *hd = calloc(1, sizeof *hd);
    uint8_t *data = malloc(bytes ? (size_t)bytes : 1);
    if (!hd || !data) {
      free(hd);
      free(data);
      fail_peer(t, i, -ENOMEM, "no memory to hold an early message");
      return -1;
    }
    hd->peer = i;
    hd->tag = tag;
    hd->data = data;
    hd->bytes = (size_t)bytes;
    hd->next = t->held;
    t->held = hd;
    t->held_bytes += hd->bytes;
    t->st.held++;
    if (t->held_bytes > t->st.held_bytes_peak) t->st.held_bytes_peak = t->held_bytes;
    p->rheld = hd;
    p->rdst = data;
  }
  if (bytes == 0) body_done(t, p);
  return 0;
}

/* Reads what peer i has sent, up to READ_BUDGET bytes, or until `until`
 * completes. Only by the thread that holds p->reader. The read itself runs
 * without the lock: its destination (the header buffer, a posted receive's
 * buffer or a held message) is touched by no other thread until the message
 * completes, and holding the lock through megabytes of copying would keep
 * the worker from posting receives, so that every message would end up held
 * and copied twice. */
static void do_read(sock_tx_t *t, int i, const bt_tx_req_t *until) {
  peer_t *p = &t->peers[i];
  size_t budget = READ_BUDGET;
  while (!p->err && budget > 0 && !(until && until->done)) {
    uint8_t *dst;
    size_t want;
    if (!p->in_body) {
      dst = p->rhdr + p->rhdr_got;
      want = MSG_HDR - p->rhdr_got;
    } else {
      dst = p->rdst + p->rgot;
      want = p->rtotal - p->rgot;
      if (want > IO_CHUNK) want = IO_CHUNK;
    }
    int fd = p->fd; /* not closed while someone holds the reader role */
    pthread_mutex_unlock(&t->mu);
    ssize_t n = read(fd, dst, want);
    int e = errno;
    pthread_mutex_lock(&t->mu);
    if (p->err) return; /* failed meanwhile by a send: the reader drops the message */
    if (n < 0) {
      if (e == EINTR) continue;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      fail_peer(t, i, BT_EPEER, strerror(e));
      return;
    }
    if (n == 0) {
      fail_peer(t, i, BT_EPEER, p->in_body || p->rhdr_got ? "connection closed mid-message"
                                                          : "connection closed");
      return;
    }
    budget -= (size_t)n < budget ? (size_t)n : budget;
    if (!p->in_body) {
      p->rhdr_got += (size_t)n;
      if (p->rhdr_got == MSG_HDR && on_header(t, i) < 0) return;
    } else {
      p->rgot += (size_t)n;
      if (p->rgot == p->rtotal) body_done(t, p);
    }
  }
}

/* ---- connections ---- */

static void tune_socket(int fd) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX) {
    /* A Unix socket's default buffer (about 200 KB) splits a tensor of
     * megabytes into many writes, each a wake-up of the other side; 4 MB
     * lets one model-sized message go in one. */
    int buf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* A host that vanishes sends no FIN: keep-alive probes and a bound on
   * unacknowledged data turn it into an error within about 30 s, well
   * inside the default transport deadline. */
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  int idle = 10, intvl = 5, cnt = 3;
  unsigned int user_timeout_ms = 30000;
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

/* Counts a refusal; only the first of its reason is logged (a flood of
 * hundreds would otherwise drown the job's log), the rest at destroy. */
static void note_refusal(sock_tx_t *t, refusal_t r, const char *who, const char *why) {
  if (t->refusals[r]++ == 0)
    bt_warn("transport: refused a connection from %s: %s (further refusals for this reason are counted)", who,
            why);
  t->st.refused++;
}

static void refuse(sock_tx_t *t, int k, refusal_t r, const char *why) {
  pending_t *pc = &t->pend[k];
  note_refusal(t, r, pc->who, why);
  epoll_ctl(t->epfd, EPOLL_CTL_DEL, pc->fd, NULL);
  close(pc->fd);
  t->pend[k] = t->pend[--t->npend];
}

static int do_handshake(sock_tx_t *t, int k);

/* On a Unix socket the kernel says who connected: only this user's
 * processes (the job's workers run as its user) get to send a byte. */
static int peer_uid_ok(int fd, char *why, size_t len) {
  struct ucred cred;
  socklen_t cl = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
    snprintf(why, len, "SO_PEERCRED: %s", strerror(errno));
    return 0;
  }
  if (cred.uid == geteuid()) return 1;
  snprintf(why, len, "pid %d of uid %u is not this job's user", (int)cred.pid, (unsigned)cred.uid);
  return 0;
}

static void do_accept(sock_tx_t *t) {
  for (;;) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept4(t->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      /* EAGAIN: all taken. EMFILE and the like: try again on the next wake. */
      if (errno != EAGAIN && errno != EWOULDBLOCK) bt_warn("transport: accept: %s", strerror(errno));
      return;
    }
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
      port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
      port = ntohs(a->sin6_port);
    } else if (ss.ss_family == AF_UNIX) {
      snprintf(host, sizeof host, "local");
      char why[96];
      if (!peer_uid_ok(fd, why, sizeof why)) {
        note_refusal(t, R_UID, "local", why);
        close(fd);
        continue;
      }
    }
    if (t->npend == MAX_PENDING) {
      int oldest = 0;
      for (int k = 1; k < t->npend; k++)
        if (t->pend[k].deadline < t->pend[oldest].deadline) oldest = k;
      refuse(t, oldest, R_EVICTED, "every handshake slot taken: the oldest silent connection dropped");
    }
    pending_t *pc = &t->pend[t->npend++];
    memset(pc, 0, sizeof *pc);
    pc->fd = fd;
    pc->deadline = bt_deadline_ms(t->handshake_ms);
    snprintf(pc->who, sizeof pc->who, "%s:%d", host, port);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ev_data(EV_PEND, fd)};
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
      refuse(t, t->npend - 1, R_ERRNO, strerror(errno));
      continue;
    }
    /* Whatever the dialer sent already is read now (non-blocking). */
    do_handshake(t, t->npend - 1);
  }
}

/* The proof one side of a handshake sends: HMAC-SHA-256 keyed by the job
 * token over label || 0 || ctx || 0 || first || second, where ctx names the
 * pair of ranks. The label and the order of the nonces differ per
 * direction, so neither side's proof can be reflected back as the other's,
 * and every proof covers a nonce its checker just drew, so a recorded one
 * is refused in any later connection. */
static void hs_proof(const sock_tx_t *t, const char *label, uint32_t from, uint32_t to,
                     const uint8_t first[BT_NONCE_LEN], const uint8_t second[BT_NONCE_LEN],
                     uint8_t out[BT_SHA256_LEN]) {
  char ctx[64];
  int n = snprintf(ctx, sizeof ctx, "rank %u to rank %u", (unsigned)from, (unsigned)to);
  bt_bytes_t parts[4] = {{label, strlen(label) + 1},
                         {ctx, (size_t)n + 1},
                         {first, BT_NONCE_LEN},
                         {second, BT_NONCE_LEN}};
  bt_hmac_sha256(t->token, t->token_len, parts, 4, out);
}

/* Sends a short record on a fresh non-blocking socket in one call: its
 * buffer always takes a few dozen bytes, so a short write is a connection
 * already broken. 1 sent, 0 not. */
static int send_small(int fd, const uint8_t *buf, size_t len) {
  ssize_t w;
  do w = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (w < 0 && errno == EINTR);
  return w == (ssize_t)len;
}

/* Whether `from` may dial this rank now: a peer of lower rank, in our
 * list, not connected yet. Refuses entry k and returns 0 otherwise. */
static int rank_may_dial(sock_tx_t *t, int k, uint32_t from, uint32_t to) {
  if (to != (uint32_t)t->base.rank || from >= (uint32_t)t->base.nranks || (int)from >= t->base.rank ||
      !t->peers[from].wanted) {
    char why[96];
    snprintf(why, sizeof why, "rank %u dialed rank %u, not a peer that dials rank %d", from, to, t->base.rank);
    refuse(t, k, R_RANK, why);
    return 0;
  }
  if (t->peers[from].fd >= 0 || t->peers[from].err) {
    refuse(t, k, R_DUP, "that rank is already connected");
    return 0;
  }
  return 1;
}

/* The hello of entry k is in: check it, answer with the challenge (our
 * nonce and our proof), and wait for the dialer's proof. 1 when entry k was
 * removed, 0 when it waits. */
static int on_hello(sock_tx_t *t, int k) {
  pending_t *pc = &t->pend[k];
  const uint8_t *nd = pc->buf + 16;
  uint32_t from = ld32(pc->buf + 8), to = ld32(pc->buf + 12);
  if (pc->buf[6] | pc->buf[7]) {
    refuse(t, k, R_NOT_BATON, "not a baton handshake (reserved field set)");
    return 1;
  }
  if (!rank_may_dial(t, k, from, to)) return 1;
  uint8_t ch[CHAL_LEN], na[BT_NONCE_LEN];
  int rc = bt_random_bytes(na, sizeof na);
  if (rc < 0) {
    refuse(t, k, R_ERRNO, bt_strerror(rc));
    return 1;
  }
  st32(ch, CH_MAGIC);
  memcpy(ch + 4, na, BT_NONCE_LEN);
  hs_proof(t, LABEL_ACCEPT, from, to, nd, na, ch + 4 + BT_NONCE_LEN);
  hs_proof(t, LABEL_DIAL, from, to, na, nd, pc->want);
  if (!send_small(pc->fd, ch, sizeof ch)) {
    refuse(t, k, R_ACK, "could not send the challenge");
    return 1;
  }
  pc->state = PS_PROOF;
  pc->from = from;
  pc->got = 0;
  return 0;
}

/* The dialer's proof of entry k is in: check it (in constant time), then
 * acknowledge and promote the connection to peer `from`. Always removes
 * entry k; returns 1. */
static int on_proof(sock_tx_t *t, int k) {
  pending_t *pc = &t->pend[k];
  if (!bt_ct_equal(pc->buf + 4, pc->want, BT_SHA256_LEN)) {
    refuse(t, k, R_TOKEN, "wrong job token (its proof does not match)");
    return 1;
  }
  uint32_t from = pc->from;
  /* Checked again: another connection of the same rank may have finished
   * its handshake while this one was answering. */
  if (!rank_may_dial(t, k, from, (uint32_t)t->base.rank)) return 1;
  uint8_t ack[ACK_LEN];
  st32(ack, ACK_MAGIC);
  st32(ack + 4, (uint32_t)t->base.rank);
  if (!send_small(pc->fd, ack, sizeof ack)) {
    refuse(t, k, R_ACK, "could not acknowledge");
    return 1;
  }
  tune_socket(pc->fd);
  /* From handshake to peer: out of the set, back in under the peer's key. */
  epoll_ctl(t->epfd, EPOLL_CTL_DEL, pc->fd, NULL);
  peer_t *p = &t->peers[from];
  p->fd = pc->fd;
  update_interest(t, (int)from);
  bt_debug("transport: rank %u connected from %s", from, pc->who);
  t->pend[k] = t->pend[--t->npend];
  pthread_cond_broadcast(&t->cv);
  return 1;
}

/* Advances the handshake of pending connection k with what it has sent.
 * Returns 1 when entry k was removed (refused or promoted), 0 when it
 * waits for more bytes. A stranger is refused at its first wrong byte
 * group: the magic after 4 bytes, the version after 6. */
static int do_handshake(sock_tx_t *t, int k) {
  for (;;) {
    pending_t *pc = &t->pend[k];
    size_t need = pc->state == PS_HELLO ? HELLO_LEN : RESP_LEN;
    uint32_t magic = pc->state == PS_HELLO ? HS_MAGIC : RS_MAGIC;
    while (pc->got < need) {
      ssize_t n = read(pc->fd, pc->buf + pc->got, need - pc->got);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        refuse(t, k, R_ERRNO, strerror(errno));
        return 1;
      }
      if (n == 0) {
        refuse(t, k, R_CLOSED,
               pc->state == PS_HELLO ? "closed before its handshake" : "closed before proving the job token");
        return 1;
      }
      size_t before = pc->got;
      pc->got += (size_t)n;
      if (before < 4 && pc->got >= 4 && ld32(pc->buf) != magic) {
        refuse(t, k, R_NOT_BATON, "not a baton handshake");
        return 1;
      }
      if (pc->state == PS_HELLO && before < 6 && pc->got >= 6 && (pc->buf[4] | pc->buf[5] << 8) != HS_VERSION) {
        refuse(t, k, R_VERSION, "unknown handshake version");
        return 1;
      }
    }
    if (pc->state == PS_PROOF) return on_proof(t, k);
    if (on_hello(t, k)) return 1;
    /* The proof comes only after our challenge: usually not yet here. */
  }
}

/* ---- the progress thread ---- */

/* Takes the reader role of peer i and reads. The caller holds the lock and
 * has checked that nobody else reads. */
static void read_as_reader(sock_tx_t *t, int i, const bt_tx_req_t *until) {
  peer_t *p = &t->peers[i];
  p->reader = READER_PROGRESS;
  if (!p->err) do_read(t, i, until);
  if (p->err && (p->rreq || p->rheld)) drop_read(t, i);
  p->reader = 0;
  update_interest(t, i);
}

enum { MAX_EVENTS = 64 };

static void *progress_main(void *arg) {
  sock_tx_t *t = arg;
  int nr = t->base.nranks;
  struct epoll_event evs[MAX_EVENTS];
  pthread_mutex_lock(&t->mu);
  while (!t->stop) {
    for (int i = 0; i < nr; i++) {
      peer_t *p = &t->peers[i];
      if (p->reader) continue; /* a waiting worker thread reads it: it cleans up */
      if (p->err && (p->rreq || p->rheld)) drop_read(t, i);
      if (p->closing) {
        if (p->registered) epoll_ctl(t->epfd, EPOLL_CTL_DEL, p->fd, NULL);
        p->registered = 0;
        close(p->fd);
        p->fd = -1;
        p->closing = 0;
      }
    }
    uint64_t next = UINT64_MAX;
    for (int k = 0; k < t->npend; k++)
      if (t->pend[k].deadline < next) next = t->pend[k].deadline;
    int timeout = next == UINT64_MAX ? -1 : (int)bt_ms_left(next);
    pthread_mutex_unlock(&t->mu);
    int n = epoll_wait(t->epfd, evs, MAX_EVENTS, timeout);
    int wait_errno = errno;
    pthread_mutex_lock(&t->mu);
    if (n < 0 && wait_errno != EINTR) {
      bt_error("transport: epoll_wait: %s", strerror(wait_errno));
      for (int i = 0; i < nr; i++)
        if (t->peers[i].wanted) fail_peer(t, i, BT_ETRANSPORT, "epoll_wait failed");
      break;
    }
    for (int e = 0; e < n; e++) {
      int kind = (int)(evs[e].data.u64 >> 32), v = (int)(uint32_t)evs[e].data.u64;
      uint32_t got = evs[e].events;
      if (kind == EV_WAKE) {
        uint64_t x;
        while (read(t->wake_fd, &x, sizeof x) < 0 && errno == EINTR) {
        }
      } else if (kind == EV_LISTEN) {
        do_accept(t);
      } else if (kind == EV_PEND) {
        /* The entry may have moved (removals swap in the last one), or be
         * gone: look it up by its fd. */
        for (int k = 0; k < t->npend; k++)
          if (t->pend[k].fd == v) {
            do_handshake(t, k);
            break;
          }
      } else if (kind == EV_PEER && v >= 0 && v < nr) {
        peer_t *p = &t->peers[v];
        if (p->fd < 0 || p->err) continue;
        if ((got & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !p->reader) read_as_reader(t, v, NULL);
        if (!p->err && (got & EPOLLERR) && !p->reader) fail_peer(t, v, BT_EPEER, "socket error");
        if (!p->err && (got & EPOLLOUT)) do_write(t, v);
      }
    }
    uint64_t now = bt_clock_ns();
    for (int k = 0; k < t->npend;) {
      if (t->pend[k].deadline <= now) {
        char why[64];
        snprintf(why, sizeof why, "no proof of the job token within %lld ms", (long long)t->handshake_ms);
        refuse(t, k, R_LATE, why);
      } else {
        k++;
      }
    }
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/* ---- the vtable ---- */

static int sock_isend(bt_tx_t *tx, const void *buf, size_t bytes, int peer, bt_tag_t tag,
                      bt_tx_req_t **reqp) {
  sock_tx_t *t = (sock_tx_t *)tx;
  int rc = 0;
  pthread_mutex_lock(&t->mu);
  peer_t *p = &t->peers[peer];
  if (!p->wanted) {
    rc = BT_EARG;
    goto out;
  }
  if (p->err) {
    rc = p->err;
    goto out;
  }
  /* The buffer is only read; the cast lets one request type serve both. */
  bt_tx_req_t *r = req_new(t, REQ_SEND, peer, tag, (void *)(uintptr_t)buf, bytes);
  if (!r) {
    rc = -ENOMEM;
    goto out;
  }
  encode_msg_hdr(r->hdr, &tag, bytes);
  r->detached = reqp == NULL;
  if (reqp) *reqp = r;
  t->sends_pending++;
  if (p->sq_tail) p->sq_tail->next = r;
  else p->sq_head = r;
  p->sq_tail = r;
  /* r may be freed by do_write (a detached send that completed): from here
   * on only the queue is looked at. */
  if (p->fd >= 0 && p->sq_head == r) do_write(t, peer);
  else update_interest(t, peer);
out:
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int sock_irecv(bt_tx_t *tx, void *buf, size_t bytes, int peer, bt_tag_t tag,
                      bt_tx_req_t **reqp) {
  sock_tx_t *t = (sock_tx_t *)tx;
  int rc = 0;
  char ts[128];
  pthread_mutex_lock(&t->mu);
  peer_t *p = &t->peers[peer];
  if (!p->wanted) {
    rc = BT_EARG;
    goto out;
  }
  held_t *h = find_held(t, peer, &tag);
  if (tag_posted(t, peer, &tag) || (h && h->waiter)) {
    bt_tag_str(&tag, ts, sizeof ts);
    bt_error("transport: a receive of %s from peer %d is already posted", ts, peer);
    rc = BT_ETAG;
    goto out;
  }
  if (h) {
    if (h->bytes != bytes) {
      bt_tag_str(&tag, ts, sizeof ts);
      bt_error("transport: peer %d sent %zu bytes for %s, the receive expects %zu", peer,
               h->bytes, ts, bytes);
      rc = BT_ETAG;
      goto out;
    }
    bt_tx_req_t *r = req_new(t, REQ_RECV, peer, tag, buf, bytes);
    if (!r) {
      rc = -ENOMEM;
      goto out;
    }
    *reqp = r;
    if (h->complete) {
      if (bytes) memcpy(buf, h->data, bytes);
      held_unlink(t, h);
      free(h->data);
      free(h);
      req_complete(t, r, 0);
    } else {
      h->waiter = r;
    }
    goto out;
  }
  if (p->err) {
    rc = p->err;
    goto out;
  }
  bt_tx_req_t *r = req_new(t, REQ_RECV, peer, tag, buf, bytes);
  if (!r) {
    rc = -ENOMEM;
    goto out;
  }
  r->next = t->posted;
  t->posted = r;
  *reqp = r;
out:
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int sock_test(bt_tx_t *tx, bt_tx_req_t *r) {
  sock_tx_t *t = (sock_tx_t *)tx;
  pthread_mutex_lock(&t->mu);
  int rc = 0;
  if (r->done) {
    rc = r->rc ? r->rc : 1;
    req_free(t, r);
  }
  pthread_mutex_unlock(&t->mu);
  return rc;
}

/* Waits on the condition variable until *flag-like predicate holds or the
 * deadline passes; the caller holds the lock. Returns 0 or BT_ETIMEOUT. */
static int cv_wait_until(sock_tx_t *t, uint64_t deadline) {
  if (bt_clock_ns() >= deadline) return BT_ETIMEOUT;
  struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull),
                        .tv_nsec = (long)(deadline % 1000000000ull)};
  int e = pthread_cond_timedwait(&t->cv, &t->mu, &ts);
  return e == ETIMEDOUT ? BT_ETIMEOUT : 0;
}

/* The longest a waiting thread sits in poll() on its peer's socket before
 * it looks at its request again: another thread may have failed it. */
#define READER_SLICE_MS 50

/* A wait for a receive reads the peer's socket itself when nobody else is
 * reading it: the bytes then go from the socket to the buffer and the
 * worker goes on, without a hand-over from the progress thread (one
 * wake-up instead of two per message). The progress thread stops watching
 * that socket meanwhile (update_interest) and takes over again after. */
static void wait_reading(sock_tx_t *t, bt_tx_req_t *r, uint64_t deadline) {
  peer_t *p = &t->peers[r->peer];
  int i = r->peer;
  p->reader = READER_WAITER;
  update_interest(t, i);
  int64_t ms = bt_ms_left(deadline);
  struct pollfd pf = {.fd = p->fd, .events = POLLIN};
  pthread_mutex_unlock(&t->mu);
  int n = poll(&pf, 1, ms < READER_SLICE_MS ? (int)ms : READER_SLICE_MS);
  pthread_mutex_lock(&t->mu);
  if (n > 0 && !p->err) do_read(t, i, r);
  if (p->err && (p->rreq || p->rheld)) drop_read(t, i);
  p->reader = 0;
  update_interest(t, i);
  /* A failed peer's socket is closed by the progress thread. */
  if (p->err && p->closing) wake(t);
}

static int sock_wait(bt_tx_t *tx, bt_tx_req_t *r, uint64_t deadline) {
  sock_tx_t *t = (sock_tx_t *)tx;
  pthread_mutex_lock(&t->mu);
  while (!r->done) {
    peer_t *p = &t->peers[r->peer];
    if (bt_clock_ns() >= deadline) break;
    if (r->kind == REQ_RECV && p->fd >= 0 && !p->err && !p->reader) {
      wait_reading(t, r, deadline);
    } else if (cv_wait_until(t, deadline) == BT_ETIMEOUT) {
      break;
    }
  }
  int rc = BT_ETIMEOUT;
  if (r->done) {
    rc = r->rc;
    req_free(t, r);
  }
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int wait_sends_locked(sock_tx_t *t, uint64_t deadline) {
  while (t->sends_pending && cv_wait_until(t, deadline) == 0) {
  }
  if (t->sends_pending) return BT_ETIMEOUT;
  int rc = t->send_err;
  t->send_err = 0;
  return rc;
}

static int sock_wait_sends(bt_tx_t *tx, uint64_t deadline) {
  sock_tx_t *t = (sock_tx_t *)tx;
  pthread_mutex_lock(&t->mu);
  int rc = wait_sends_locked(t, deadline);
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int sock_end_step(bt_tx_t *tx, int64_t step, uint64_t deadline) {
  sock_tx_t *t = (sock_tx_t *)tx;
  pthread_mutex_lock(&t->mu);
  int rc = wait_sends_locked(t, deadline);
  for (held_t *h = t->held; h; h = h->next) {
    if (h->tag.step > step) continue;
    char ts[128];
    bt_tag_str(&h->tag, ts, sizeof ts);
    bt_error("transport: peer %d sent %s, which no receive of step %lld asked for", h->peer, ts,
             (long long)step);
    if (!rc) rc = BT_ETAG;
  }
  t->have_min_step = 1;
  t->min_step = step + 1;
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static void sock_stats(bt_tx_t *tx, bt_tx_stats_t *out) {
  sock_tx_t *t = (sock_tx_t *)tx;
  pthread_mutex_lock(&t->mu);
  *out = t->st;
  pthread_mutex_unlock(&t->mu);
}

static void sock_destroy(bt_tx_t *tx) {
  sock_tx_t *t = (sock_tx_t *)tx;
  if (t->thread_started) {
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_mutex_unlock(&t->mu);
    wake(t);
    pthread_join(t->thread, NULL);
  }
  for (int i = 0; t->peers && i < t->base.nranks; i++) {
    peer_t *p = &t->peers[i];
    if (p->fd < 0) continue;
    /* FIN first: the peer reads everything we sent, then sees the end. */
    shutdown(p->fd, SHUT_WR);
    close(p->fd);
  }
  for (int k = 0; k < t->npend; k++) close(t->pend[k].fd);
  static const char *const names[R_NREASONS] = {
      "socket errors", "closed early", "not baton", "wrong version", "wrong token", "wrong rank",
      "duplicate rank", "no reply", "no proof in time", "dropped for newer", "other users"};
  char sum[512] = "";
  size_t used = 0;
  uint64_t total = 0;
  for (int r = 0; r < R_NREASONS; r++) {
    total += t->refusals[r];
    if (t->refusals[r] && used < sizeof sum)
      used += (size_t)snprintf(sum + used, sizeof sum - used, "%s%s %llu", used ? ", " : "", names[r],
                               (unsigned long long)t->refusals[r]);
  }
  if (total > 1) bt_warn("transport: refused %llu connections in all (%s)", (unsigned long long)total, sum);
  if (t->listen_fd >= 0) close(t->listen_fd);
  if (t->wake_fd >= 0) close(t->wake_fd);
  if (t->epfd >= 0) close(t->epfd);
  while (t->all) req_free(t, t->all);
  for (held_t *h = t->held, *next; h; h = next) {
    next = h->next;
    free(h->data);
    free(h);
  }
  free(t->peers);
  memset(t->token, 0, sizeof t->token);
  pthread_cond_destroy(&t->cv);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

static const bt_tx_ops_t sock_ops = {
    .name = "socket",
    .isend = sock_isend,
    .irecv = sock_irecv,
    .test = sock_test,
    .wait = sock_wait,
    .wait_sends = sock_wait_sends,
    .end_step = sock_end_step,
    .stats = sock_stats,
    .destroy = sock_destroy,
};

/* ---- set-up ---- */

/* Binds a listening socket on host, port 0; fills the port. */
static int listen_on(const char *host, int *fd_out, int *port_out) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  struct addrinfo *ai = NULL;
  int e = getaddrinfo(host, "0", &hints, &ai);
  if (e) {
    bt_error("transport: cannot resolve bind host '%s': %s", host, gai_strerror(e));
    return BT_EARG;
  }
  int rc = -EADDRNOTAVAIL, fd = -1;
  for (struct addrinfo *a = ai; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      rc = -errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 64) == 0) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      getsockname(fd, (struct sockaddr *)&ss, &sl);
      *port_out = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                           : ntohs(((struct sockaddr_in *)&ss)->sin_port);
      *fd_out = fd;
      rc = 0;
      break;
    }
    rc = -errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(ai);
  if (rc) bt_error("transport: cannot listen on %s: %s", host, bt_strerror(rc));
  return rc;
}

/* Listens on a Unix socket with a name the kernel picks in the abstract
 * namespace (autobind: the Unix twin of port 0; no file to clean up, gone
 * with the socket). Writes "unix:@NAME". */
static int listen_local(int *fd_out, char *addr, size_t cap) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  socklen_t sl = sizeof sa;
  int rc = 0;
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa_family_t)) < 0 || listen(fd, 64) < 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
    rc = -errno;
  } else {
    size_t n = sl - offsetof(struct sockaddr_un, sun_path);
    if (n < 2 || sa.sun_path[0] != '\0' || (size_t)snprintf(addr, cap, "unix:@%.*s", (int)(n - 1), sa.sun_path + 1) >= cap)
      rc = BT_ETRANSPORT;
  }
  if (rc) {
    close(fd);
    bt_error("transport: cannot listen on a local socket: %s", bt_strerror(rc));
    return rc;
  }
  *fd_out = fd;
  return 0;
}

int bt_tx_socket_create(const bt_tx_socket_opts_t *o, bt_tx_t **out) {
  *out = NULL;
  if (!o || o->nranks < 1 || o->rank < 0 || o->rank >= o->nranks || o->npeers < 0 ||
      (o->npeers && !o->peers) || !o->token || o->token_len < 16 || o->token_len > BT_TX_TOKEN_MAX)
    return BT_EARG;
  for (int k = 0; k < o->npeers; k++)
    if (o->peers[k] < 0 || o->peers[k] >= o->nranks || o->peers[k] == o->rank) return BT_EARG;
  int rc = 0;
  sock_tx_t *t = calloc(1, sizeof *t);
  if (!t) return -ENOMEM;
  t->base.ops = &sock_ops;
  t->base.rank = o->rank;
  t->base.nranks = o->nranks;
  t->listen_fd = -1;
  t->wake_fd = -1;
  t->epfd = -1;
  memcpy(t->token, o->token, o->token_len);
  t->token_len = o->token_len;
  t->handshake_ms = o->handshake_ms > 0 ? o->handshake_ms : 2000;
  pthread_mutex_init(&t->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* deadlines are bt_clock_ns() */
  pthread_cond_init(&t->cv, &ca);
  pthread_condattr_destroy(&ca);
  t->peers = calloc((size_t)o->nranks, sizeof *t->peers);
  if (!t->peers) {
    rc = -ENOMEM;
    goto fail;
  }
  for (int i = 0; i < o->nranks; i++) t->peers[i].fd = -1;
  for (int k = 0; k < o->npeers; k++) t->peers[o->peers[k]].wanted = 1;

  const char *bind_host = o->bind_host ? o->bind_host : "127.0.0.1";
  int port = 0;
  char hostname[256];
  const char *adv = o->advertise_host;
  if (o->local) {
    rc = listen_local(&t->listen_fd, t->addr, sizeof t->addr);
    if (rc) goto fail;
  } else {
    rc = listen_on(bind_host, &t->listen_fd, &port);
    if (rc) goto fail;
  }
  if (!o->local && !adv) {
    adv = bind_host;
    if (!strcmp(bind_host, "0.0.0.0") || !strcmp(bind_host, "::")) {
      if (gethostname(hostname, sizeof hostname) < 0) {
        rc = -errno;
        goto fail;
      }
      hostname[sizeof hostname - 1] = '\0';
      adv = hostname;
    }
  }
  if (!o->local && snprintf(t->addr, sizeof t->addr, "tcp:%s:%d", adv, port) >= (int)sizeof t->addr) {
    rc = BT_EARG;
    goto fail;
  }
  t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  t->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (t->wake_fd < 0 || t->epfd < 0) {
    rc = -errno;
    goto fail;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ev_data(EV_WAKE, 0)};
  struct epoll_event lev = {.events = EPOLLIN, .data.u64 = ev_data(EV_LISTEN, 0)};
  if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->wake_fd, &ev) < 0 ||
      epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->listen_fd, &lev) < 0) {
    rc = -errno;
    goto fail;
  }
  int e = pthread_create(&t->thread, NULL, progress_main, t);
  if (e) {
    rc = -e;
    goto fail;
  }
  t->thread_started = 1;
  *out = &t->base;
  return 0;
fail:
  sock_destroy(&t->base);
  return rc;
}

const char *bt_tx_socket_address(bt_tx_t *tx) {
  if (!tx || tx->ops != &sock_ops) return NULL;
  return ((sock_tx_t *)tx)->addr;
}

/* A peer's address: "tcp:HOST:PORT" (HOST may hold colons: IPv6, with or
 * without brackets), "unix:@NAME" (abstract) or "unix:/PATH". */
typedef struct {
  int local;
  char host[ADDR_LEN]; /* or the Unix path, '@' first for abstract */
  char port[16];
} peer_addr_t;

static int parse_addr(const char *addr, peer_addr_t *a) {
  memset(a, 0, sizeof *a);
  if (addr && !strncmp(addr, "unix:", 5)) {
    size_t n = strlen(addr + 5);
    /* sun_path holds 108 bytes: an abstract name uses them all (its '@'
     * becomes the leading NUL), a path needs one for its NUL. */
    if (n < 2 || n > sizeof(((struct sockaddr_un *)0)->sun_path) ||
        (addr[5] != '@' && (addr[5] != '/' || n == sizeof(((struct sockaddr_un *)0)->sun_path))))
      return BT_EARG;
    a->local = 1;
    memcpy(a->host, addr + 5, n + 1);
    return 0;
  }
  if (!addr || strncmp(addr, "tcp:", 4) != 0) return BT_EARG;
  const char *h = addr + 4, *c = strrchr(h, ':');
  if (!c || c == h || !c[1]) return BT_EARG;
  size_t hl = (size_t)(c - h);
  if (hl >= sizeof a->host || strlen(c + 1) >= sizeof a->port) return BT_EARG;
  memcpy(a->host, h, hl);
  a->host[hl] = '\0';
  if (a->host[0] == '[' && hl >= 2 && a->host[hl - 1] == ']') {
    memmove(a->host, a->host + 1, hl - 2);
    a->host[hl - 2] = '\0';
  }
  strcpy(a->port, c + 1);
  for (const char *q = a->port; *q; q++)
    if (*q < '0' || *q > '9') return BT_EARG;
  return 0;
}

/* Waits for fd to be ready for `events` until the deadline. 0 or BT_ETIMEOUT
 * or -errno. */
static int poll_one(int fd, short events, uint64_t deadline) {
  for (;;) {
    int64_t ms = bt_ms_left(deadline);
    if (ms <= 0) return BT_ETIMEOUT;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, ms > 1000 ? 1000 : (int)ms);
    if (r < 0 && errno != EINTR) return -errno;
    if (r > 0) return 0;
  }
}

/* Writes all of buf on a non-blocking fd before the deadline. */
static int write_all(int fd, const uint8_t *buf, size_t len, uint64_t deadline) {
  while (len) {
    ssize_t w = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
      int rc = poll_one(fd, POLLOUT, deadline);
      if (rc) return rc;
      continue;
    }
    buf += w;
    len -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, uint8_t *buf, size_t len, uint64_t deadline) {
  while (len) {
    ssize_t n = read(fd, buf, len);
    if (n == 0) return -ECONNRESET;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
      int rc = poll_one(fd, POLLIN, deadline);
      if (rc) return rc;
      continue;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* A non-blocking connect bounded by the deadline: the fd, or a negative
 * code. (A Unix socket whose backlog is full answers EAGAIN at once: that
 * is a retry, like a refused TCP connection.) */
static int connect_bounded(int family, const struct sockaddr *sa, socklen_t len, uint64_t deadline) {
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int r = connect(fd, sa, len);
  if (r < 0 && errno == EINPROGRESS) {
    r = poll_one(fd, POLLOUT, deadline);
    if (r == 0) {
      int err = 0;
      socklen_t el = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
      r = err ? -err : 0;
    }
  } else if (r < 0) {
    r = -errno;
  }
  if (r) {
    close(fd);
    return r;
  }
  return fd;
}

static int connect_addr(const peer_addr_t *pa, uint64_t deadline) {
  if (pa->local) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(pa->host);
    memcpy(sa.sun_path, pa->host, n);
    if (pa->host[0] == '@') sa.sun_path[0] = '\0';
    else n++; /* a path's NUL */
    return connect_bounded(AF_UNIX, (struct sockaddr *)&sa,
                           (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n), deadline);
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *ai = NULL;
  int e = getaddrinfo(pa->host, pa->port, &hints, &ai);
  if (e) return e == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
  int fd = -ECONNREFUSED;
  for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next)
    fd = connect_bounded(a->ai_family, a->ai_addr, a->ai_addrlen, deadline);
  freeaddrinfo(ai);
  return fd;
}

/* One attempt to dial `peer` and pass the handshake. Returns the connected
 * fd, or a negative code: worth a retry before the deadline, unless *fatal
 * is set — the listener answered but did not prove the job token (or did
 * not speak the protocol), and nothing beyond our hello was sent to it;
 * `why` says which. */
static int dial_once(sock_tx_t *t, int peer, const peer_addr_t *pa, uint64_t deadline, int *fatal,
                     const char **why) {
  *fatal = 0;
  int rc, fd = connect_addr(pa, deadline);
  if (fd < 0) return fd;
  uint32_t me = (uint32_t)t->base.rank, to = (uint32_t)peer;
  uint8_t hello[HELLO_LEN], ch[CHAL_LEN], resp[RESP_LEN], proof[BT_SHA256_LEN], ack[ACK_LEN];
  const uint8_t *nd = hello + 16, *na = ch + 4;
  st32(hello, HS_MAGIC);
  hello[4] = HS_VERSION & 0xff;
  hello[5] = HS_VERSION >> 8;
  hello[6] = hello[7] = 0;
  st32(hello + 8, me);
  st32(hello + 12, to);
  rc = bt_random_bytes(hello + 16, BT_NONCE_LEN);
  if (!rc) rc = write_all(fd, hello, sizeof hello, deadline);
  if (!rc) rc = read_all(fd, ch, sizeof ch, deadline);
  if (!rc && ld32(ch) != CH_MAGIC) {
    *fatal = 1;
    *why = "it answered with something that is not a baton challenge";
    rc = BT_ETRANSPORT;
  }
  if (!rc) {
    hs_proof(t, LABEL_ACCEPT, me, to, nd, na, proof);
    if (!bt_ct_equal(proof, ch + 4 + BT_NONCE_LEN, BT_SHA256_LEN)) {
      *fatal = 1;
      *why = "it does not hold this job's token (a stranger on that address, or a worker of another job)";
      rc = BT_ETRANSPORT;
    }
  }
  if (!rc) {
    st32(resp, RS_MAGIC);
    hs_proof(t, LABEL_DIAL, me, to, na, nd, resp + 4);
    rc = write_all(fd, resp, sizeof resp, deadline);
  }
  if (!rc) rc = read_all(fd, ack, sizeof ack, deadline);
  if (!rc && (ld32(ack) != ACK_MAGIC || ld32(ack + 4) != to)) rc = BT_ETRANSPORT;
  if (rc) {
    close(fd);
    return rc;
  }
  tune_socket(fd);
  return fd;
}

int bt_tx_socket_connect(bt_tx_t *tx, const char *const *addrs, uint64_t deadline) {
  if (!tx || tx->ops != &sock_ops || !addrs) return BT_EARG;
  sock_tx_t *t = (sock_tx_t *)tx;
  int me = tx->rank, rc = 0;
  for (int q = me + 1; q < tx->nranks; q++) {
    if (!t->peers[q].wanted) continue;
    peer_addr_t pa;
    if (parse_addr(addrs[q], &pa)) {
      bt_error("transport: bad address for rank %d: '%s' (want tcp:HOST:PORT or unix:@NAME)", q,
               addrs[q] ? addrs[q] : "(null)");
      return BT_EARG;
    }
    int64_t backoff = 20;
    int fd, fatal = 0;
    const char *why = "";
    /* Peers start at different times, and a peer's listener may not be up
     * yet: retry with a growing pause until the deadline. A listener that
     * answers without proving the token is not retried: the address came
     * from START, so whoever holds it is not our peer, and waiting would
     * only turn a clear error into a timeout. */
    while ((fd = dial_once(t, q, &pa, deadline, &fatal, &why)) < 0) {
      if (fatal) {
        bt_error("transport: refusing rank %d's listener at %s: %s; nothing was sent to it", q, addrs[q], why);
        return BT_ETRANSPORT;
      }
      if (bt_ms_left(deadline) <= 0) {
        bt_error("transport: could not connect to rank %d at %s: %s", q, addrs[q], bt_strerror(fd));
        return BT_ETIMEOUT;
      }
      bt_debug("transport: dialing rank %d at %s: %s; retrying", q, addrs[q], bt_strerror(fd));
      int64_t left = bt_ms_left(deadline);
      bt_sleep_ms(backoff < left ? backoff : left);
      if (backoff < 1000) backoff *= 2;
    }
    pthread_mutex_lock(&t->mu);
    t->peers[q].fd = fd;
    update_interest(t, q);
    pthread_mutex_unlock(&t->mu);
  }
  pthread_mutex_lock(&t->mu);
  for (;;) {
    int missing = -1;
    for (int q = 0; q < me && missing < 0; q++)
      if (t->peers[q].wanted && t->peers[q].fd < 0 && !t->peers[q].err) missing = q;
    if (missing < 0) break;
    if (cv_wait_until(t, deadline) == BT_ETIMEOUT) {
      bt_error("transport: rank %d never connected (deadline passed)", missing);
      rc = BT_ETIMEOUT;
      break;
    }
  }
  pthread_mutex_unlock(&t->mu);
  return rc;
}
