/* dpwire.h - the socket data plane's handshake (docs/protocol.md), spoken
 * by hand for the tests that play a misbehaving peer: a raw dialer, a fake
 * acceptor, a relay that records. Written from the document, not from
 * worker/transport_socket.c, so the two are checked against each other.
 *
 * Nothing here asserts: a forked child uses it too, and a Criterion
 * assertion in a child would report into the parent's test.
 */
#ifndef BT_TESTS_SUPPORT_DPWIRE_H
#define BT_TESTS_SUPPORT_DPWIRE_H
#include <stddef.h>
#include <stdint.h>

enum {
  DPW_NONCE = 32,
  DPW_MAC = 32,
  DPW_HELLO = 16 + DPW_NONCE,        /* 'BTHS' u16 version u16 0 u32 from u32 to Nd */
  DPW_CHAL = 4 + DPW_NONCE + DPW_MAC, /* 'BTCH' Na proof_a */
  DPW_RESP = 4 + DPW_MAC,            /* 'BTRS' proof_d */
  DPW_ACK = 8                        /* 'BTAK' u32 rank */
};
#define DPW_MAGIC_HELLO 0x53485442u
#define DPW_MAGIC_CHAL 0x48435442u
#define DPW_MAGIC_RESP 0x53525442u
#define DPW_MAGIC_ACK 0x4b415442u
#define DPW_VERSION 2

void dpw_put32(uint8_t *p, uint32_t v);
uint32_t dpw_get32(const uint8_t *p);

/* HMAC-SHA-256(key, label 0 "rank FROM to rank TO" 0 first second). The
 * acceptor proves with ("baton-dp-accept", Nd, Na), the dialer with
 * ("baton-dp-dial", Na, Nd). */
void dpw_proof(const uint8_t *key, size_t keylen, const char *label, uint32_t from, uint32_t to,
               const uint8_t first[DPW_NONCE], const uint8_t second[DPW_NONCE], uint8_t out[DPW_MAC]);

/* A hello from `from` to `to` with dialer nonce nd. */
void dpw_hello(uint8_t out[DPW_HELLO], uint32_t from, uint32_t to, const uint8_t nd[DPW_NONCE]);

/* Connects to "tcp:127.0.0.1:PORT" or "unix:@NAME" (blocking). fd or -1. */
int dpw_connect(const char *addr);
/* Writes all of buf. 0 or -1. */
int dpw_send(int fd, const void *buf, size_t n);
/* Reads exactly n bytes within ms. n when they came, else how many came
 * before the other end closed (or -1 on timeout). */
long dpw_read(int fd, void *buf, size_t n, int ms);

/* As a dialer on a connected fd: hello (random nonce), the challenge, the
 * response proved with `key`. With check_acceptor, the acceptor's proof is
 * checked with `key` first and nothing is sent when it fails. Returns 0
 * when the response was sent, -1 on an I/O error or timeout, -2 when the
 * acceptor's proof failed. The hello and response go to rec/resp_out when
 * not NULL (a recording, for replays). */
int dpw_dial(int fd, uint32_t from, uint32_t to, const uint8_t *key, size_t keylen, int check_acceptor,
             uint8_t hello_out[DPW_HELLO], uint8_t resp_out[DPW_RESP]);

/* 1 when any `window` consecutive bytes of needle occur in hay. */
int dpw_contains_window(const uint8_t *hay, size_t n, const uint8_t *needle, size_t nlen, size_t window);

#endif
