/* auth.h - the per-job secret and the challenge-response built on it
 * (multi-node rendezvous and the socket data plane).
 *
 * The secret comes from a file (--secret-file PATH, or BATON_SECRET_FILE)
 * or from the environment (BATON_SECRET), never from the command line. It
 * never crosses the wire: both ends prove they hold it by an HMAC-SHA-256
 * over fresh random nonces from both sides, a label naming the direction
 * ("baton-coord", "baton-node", ...) and the context (job id, ranks), so a
 * recorded answer is worth nothing in another exchange or the other way.
 *
 * SHA-256 and HMAC are implemented here (FIPS 180-4, RFC 2104), checked
 * against the published test vectors (tests/test_auth.c): the project has
 * no crypto library dependency.
 */
#ifndef BT_COMMON_AUTH_H
#define BT_COMMON_AUTH_H
#include <stddef.h>
#include <stdint.h>

#define BT_SHA256_LEN 32
#define BT_NONCE_LEN 32
#define BT_SECRET_MIN 16   /* bytes: a shorter secret is refused */
#define BT_SECRET_MAX 4096

typedef struct {
  uint32_t h[8];
  uint64_t bytes;
  uint8_t buf[64];
  size_t fill;
} bt_sha256_t;

void bt_sha256_init(bt_sha256_t *c);
void bt_sha256_update(bt_sha256_t *c, const void *data, size_t n);
void bt_sha256_final(bt_sha256_t *c, uint8_t out[BT_SHA256_LEN]);
void bt_sha256(const void *data, size_t n, uint8_t out[BT_SHA256_LEN]);

/* HMAC-SHA-256 over the concatenation of `nparts` byte strings. */
typedef struct {
  const void *p;
  size_t n;
} bt_bytes_t;
void bt_hmac_sha256(const uint8_t *key, size_t keylen, const bt_bytes_t *parts, size_t nparts,
                    uint8_t out[BT_SHA256_LEN]);

/* Compares in time independent of where the bytes differ: 1 equal, 0 not. */
int bt_ct_equal(const void *a, const void *b, size_t n);

/* Fills n bytes from the kernel's random source (getrandom). 0 or -errno. */
int bt_random_bytes(void *out, size_t n);

/* The job secret. */
typedef struct {
  uint8_t key[BT_SECRET_MAX];
  size_t len;
  char source[256];        /* "BATON_SECRET", "file /path": for messages, never the secret */
} bt_secret_t;

/* Loads the secret: from `file` when not NULL, else BATON_SECRET_FILE, else
 * BATON_SECRET. A file's trailing newline (one "\n" or "\r\n") is dropped;
 * a file readable by group or others is refused (like ssh's keys), as is a
 * secret shorter than BT_SECRET_MIN bytes or longer than BT_SECRET_MAX.
 * Returns 0, -ENOENT when no source is set at all, or another negative code
 * with one line (no secret bytes in it) in `why`. */
int bt_secret_load(const char *file, bt_secret_t *s, char *why, size_t whylen);

/* The proof one side sends: HMAC(secret, label || 0 || context || 0 ||
 * nonce_a || nonce_b). `context` is a NUL-terminated string (job id, ranks). */
void bt_auth_proof(const bt_secret_t *s, const char *label, const char *context, const uint8_t a[BT_NONCE_LEN],
                   const uint8_t b[BT_NONCE_LEN], uint8_t out[BT_SHA256_LEN]);

/* A key derived for one purpose: HMAC(secret, "baton-derive" || 0 || label),
 * hex-encoded (64 chars + NUL). The data plane's per-incarnation token is
 * bt_auth_derive_hex(secret, "data-plane <job> <incarnation nonce hex>"):
 * every node computes it, none sends it. */
void bt_auth_derive_hex(const bt_secret_t *s, const char *label, char out[2 * BT_SHA256_LEN + 1]);

#endif
