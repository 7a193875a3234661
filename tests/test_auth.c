/* test_auth.c - SHA-256 and HMAC-SHA-256 against the published vectors
 * (FIPS 180-4 examples / NIST CAVS, RFC 4231), the job secret's sources
 * and refusals, and the proofs and derived keys built on them. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/error.h"

static void hex_of(const uint8_t *b, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

static void check_sha(const void *msg, size_t n, const char *want) {
  uint8_t d[BT_SHA256_LEN];
  char got[2 * BT_SHA256_LEN + 1];
  bt_sha256(msg, n, d);
  hex_of(d, sizeof d, got);
  cr_assert_str_eq(got, want, "sha256 of %zu bytes", n);
}

Test(auth, sha256_nist_short_vectors) {
  check_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  check_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  cr_assert_eq(strlen(m448) * 8, 448);
  check_sha(m448, strlen(m448), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const char *m896 =
      "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
  cr_assert_eq(strlen(m896) * 8, 896);
  check_sha(m896, strlen(m896), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

/* One million 'a' in pieces of 1, 2, 3, ... 127 bytes, so every offset
 * within the 64-byte block is both a start and an end of an update. */
Test(auth, sha256_million_a_in_odd_pieces) {
  static char a[1000000];
  memset(a, 'a', sizeof a);
  bt_sha256_t c;
  bt_sha256_init(&c);
  size_t off = 0, piece = 1;
  while (off < sizeof a) {
    size_t n = piece < sizeof a - off ? piece : sizeof a - off;
    bt_sha256_update(&c, a + off, n);
    off += n;
    piece = piece % 127 + 1;
  }
  bt_sha256_update(&c, a, 0); /* an empty update changes nothing */
  uint8_t d[BT_SHA256_LEN];
  char got[2 * BT_SHA256_LEN + 1];
  bt_sha256_final(&c, d);
  hex_of(d, sizeof d, got);
  cr_assert_str_eq(got, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  check_sha(a, sizeof a, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Lengths around the padding boundary (55, 56, 63, 64, 65 bytes) hashed
 * whole and byte by byte must agree. */
Test(auth, sha256_piecewise_equals_whole_near_block_edges) {
  uint8_t msg[130];
  for (size_t i = 0; i < sizeof msg; i++) msg[i] = (uint8_t)(i * 37 + 1);
  size_t lens[] = {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 130};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    uint8_t whole[BT_SHA256_LEN], bytes[BT_SHA256_LEN];
    bt_sha256(msg, lens[k], whole);
    bt_sha256_t c;
    bt_sha256_init(&c);
    for (size_t i = 0; i < lens[k]; i++) bt_sha256_update(&c, msg + i, 1);
    bt_sha256_final(&c, bytes);
    cr_assert_arr_eq(whole, bytes, BT_SHA256_LEN, "length %zu", lens[k]);
  }
}

static void fill(uint8_t *b, uint8_t v, size_t n) { memset(b, v, n); }

static void check_hmac(const uint8_t *key, size_t klen, const void *data, size_t dlen, const char *want,
                       size_t want_bytes) {
  uint8_t mac[BT_SHA256_LEN];
  char got[2 * BT_SHA256_LEN + 1];
  bt_bytes_t part = {data, dlen};
  bt_hmac_sha256(key, klen, &part, 1, mac);
  hex_of(mac, want_bytes, got);
  cr_assert_str_eq(got, want, "key %zu bytes, data %zu bytes", klen, dlen);
}

Test(auth, hmac_sha256_rfc4231_cases_1_to_7) {
  uint8_t key[131], data[50];
  fill(key, 0x0b, 20);
  check_hmac(key, 20, "Hi There", 8, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 32);
  check_hmac((const uint8_t *)"Jefe", 4, "what do ya want for nothing?", 28,
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 32);
  fill(key, 0xaa, 20);
  fill(data, 0xdd, 50);
  check_hmac(key, 20, data, 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe", 32);
  for (int i = 0; i < 25; i++) key[i] = (uint8_t)(i + 1);
  fill(data, 0xcd, 50);
  check_hmac(key, 25, data, 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b", 32);
  /* Case 5 publishes only the first 128 bits. */
  fill(key, 0x0c, 20);
  check_hmac(key, 20, "Test With Truncation", 20, "a3b6167473100ee06e0c796c2955552b", 16);
  fill(key, 0xaa, 131);
  const char *d6 = "Test Using Larger Than Block-Size Key - Hash Key First";
  check_hmac(key, 131, d6, strlen(d6), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", 32);
  const char *d7 = "This is a test using a larger than block-size key and a larger than block-size data. The key "
                   "needs to be hashed before being used by the HMAC algorithm.";
  check_hmac(key, 131, d7, strlen(d7), "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2", 32);
}

Test(auth, hmac_parts_are_concatenated) {
  const char *d7 = "This is a test using a larger than block-size key and a larger than block-size data. The key "
                   "needs to be hashed before being used by the HMAC algorithm.";
  uint8_t key[131];
  fill(key, 0xaa, 131);
  bt_bytes_t parts[] = {{d7, 5}, {NULL, 0}, {d7 + 5, 70}, {d7 + 75, strlen(d7) - 75}};
  uint8_t mac[BT_SHA256_LEN];
  char got[2 * BT_SHA256_LEN + 1];
  bt_hmac_sha256(key, 131, parts, 4, mac);
  hex_of(mac, sizeof mac, got);
  cr_assert_str_eq(got, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

Test(auth, ct_equal) {
  uint8_t a[40], b[40];
  for (int i = 0; i < 40; i++) a[i] = b[i] = (uint8_t)i;
  cr_assert_eq(bt_ct_equal(a, b, 40), 1);
  cr_assert_eq(bt_ct_equal(a, b, 0), 1);
  for (int i = 0; i < 40; i += 13) {
    b[i] ^= 0x80;
    cr_assert_eq(bt_ct_equal(a, b, 40), 0, "differs at %d", i);
    b[i] ^= 0x80;
  }
  b[39] ^= 1;
  cr_assert_eq(bt_ct_equal(a, b, 39), 1, "the byte past n is not compared");
}

Test(auth, random_bytes_fill_and_differ) {
  uint8_t a[BT_NONCE_LEN], b[BT_NONCE_LEN];
  cr_assert_eq(bt_random_bytes(a, sizeof a), 0);
  cr_assert_eq(bt_random_bytes(b, sizeof b), 0);
  cr_assert_eq(bt_ct_equal(a, b, sizeof a), 0, "two 32-byte nonces are equal");
  static uint8_t big[1 << 20];
  cr_assert_eq(bt_random_bytes(big, sizeof big), 0);
  size_t zeros = 0;
  for (size_t i = 0; i < sizeof big; i++) zeros += big[i] == 0;
  /* Expected 4096; a buffer left unfilled would be all zeros. */
  cr_assert_lt(zeros, 6000, "%zu zero bytes in 1 MiB", zeros);
}

/* ---- the secret ---- */

static void clear_env(void) {
  unsetenv("BATON_SECRET_FILE");
  unsetenv("BATON_SECRET");
}

/* A temporary file with `content` and `mode`; the path goes to `path`. */
static void write_secret_file(char path[64], const char *content, size_t n, mode_t mode) {
  strcpy(path, "/tmp/bt_test_secret_XXXXXX");
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
  cr_assert_eq(write(fd, content, n), (ssize_t)n);
  cr_assert_eq(fchmod(fd, mode), 0);
  close(fd);
}

Test(secret, from_env) {
  clear_env();
  setenv("BATON_SECRET", "correct horse battery staple", 1);
  bt_secret_t s;
  char why[256] = "";
  cr_assert_eq(bt_secret_load(NULL, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.len, strlen("correct horse battery staple"));
  cr_assert_eq(memcmp(s.key, "correct horse battery staple", s.len), 0);
  cr_assert_str_eq(s.source, "BATON_SECRET");
  clear_env();
}

Test(secret, from_env_file_drops_one_trailing_newline) {
  clear_env();
  char path[64];
  write_secret_file(path, "0123456789abcdef-xyz\n", 21, 0600);
  setenv("BATON_SECRET_FILE", path, 1);
  setenv("BATON_SECRET", "a different secret, ignored", 1);
  bt_secret_t s;
  char why[256] = "", src[80];
  cr_assert_eq(bt_secret_load(NULL, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.len, 20);
  cr_assert_eq(memcmp(s.key, "0123456789abcdef-xyz", 20), 0);
  snprintf(src, sizeof src, "file %s", path);
  cr_assert_str_eq(s.source, src);
  unlink(path);
  clear_env();
}

Test(secret, explicit_file_wins_and_crlf_is_dropped_once) {
  clear_env();
  char path[64], other[64];
  write_secret_file(path, "0123456789abcdef\n\r\n", 19, 0400);
  write_secret_file(other, "from the environment file", 25, 0600);
  setenv("BATON_SECRET_FILE", other, 1);
  bt_secret_t s;
  char why[256] = "";
  cr_assert_eq(bt_secret_load(path, &s, why, sizeof why), 0, "%s", why);
  /* Only the last line ending goes: the "\n" before it is secret. */
  cr_assert_eq(s.len, 17);
  cr_assert_eq(memcmp(s.key, "0123456789abcdef\n", 17), 0);
  unlink(path);
  unlink(other);
  clear_env();
}

Test(secret, file_without_newline_is_kept_whole) {
  clear_env();
  char path[64];
  write_secret_file(path, "0123456789abcdef ", 17, 0600);
  bt_secret_t s;
  char why[256] = "";
  cr_assert_eq(bt_secret_load(path, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.len, 17);
  unlink(path);
}

Test(secret, group_or_other_readable_file_is_refused) {
  clear_env();
  const char *secret = "0123456789abcdef-do-not-print";
  mode_t modes[] = {0644, 0640, 0604, 0660, 0601};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    char path[64];
    write_secret_file(path, secret, strlen(secret), modes[i]);
    bt_secret_t s;
    char why[256] = "";
    int rc = bt_secret_load(path, &s, why, sizeof why);
    cr_assert_lt(rc, 0, "mode %o accepted", (unsigned)modes[i]);
    cr_assert_neq(rc, -ENOENT);
    cr_assert_not_null(strstr(why, path), "%s", why);
    cr_assert_not_null(strstr(why, "chmod 600"), "%s", why);
    cr_assert_null(strstr(why, "0123456789abcdef"), "the secret leaked into: %s", why);
    cr_assert_null(strchr(why, '\n'), "not one line: %s", why);
    cr_assert_eq(s.len, 0);
    unlink(path);
  }
}

Test(secret, too_short_and_too_long_are_refused) {
  clear_env();
  bt_secret_t s;
  char why[256] = "";
  setenv("BATON_SECRET", "fifteen-bytes!!", 1);
  cr_assert_eq(strlen("fifteen-bytes!!"), BT_SECRET_MIN - 1);
  cr_assert_lt(bt_secret_load(NULL, &s, why, sizeof why), 0);
  cr_assert_not_null(strstr(why, "BATON_SECRET"), "%s", why);
  cr_assert_null(strstr(why, "fifteen"), "the secret leaked into: %s", why);
  setenv("BATON_SECRET", "sixteen-bytes!!!", 1);
  cr_assert_eq(bt_secret_load(NULL, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.len, BT_SECRET_MIN);
  clear_env();

  /* A 15-byte secret plus its newline is still 15 bytes. */
  char path[64];
  write_secret_file(path, "fifteen-bytes!!\n", 16, 0600);
  cr_assert_lt(bt_secret_load(path, &s, why, sizeof why), 0);
  cr_assert_not_null(strstr(why, path), "%s", why);
  cr_assert_null(strstr(why, "fifteen"), "the secret leaked into: %s", why);
  unlink(path);

  static char big[BT_SECRET_MAX + 2];
  memset(big, 'k', sizeof big);
  write_secret_file(path, big, BT_SECRET_MAX + 1, 0600);
  cr_assert_lt(bt_secret_load(path, &s, why, sizeof why), 0);
  unlink(path);
  /* Exactly BT_SECRET_MAX plus "\r\n" is accepted. */
  big[BT_SECRET_MAX] = '\r';
  big[BT_SECRET_MAX + 1] = '\n';
  write_secret_file(path, big, BT_SECRET_MAX + 2, 0600);
  cr_assert_eq(bt_secret_load(path, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.len, BT_SECRET_MAX);
  unlink(path);
}

Test(secret, nothing_set_is_enoent_but_a_missing_file_is_not) {
  clear_env();
  bt_secret_t s;
  char why[256] = "";
  cr_assert_eq(bt_secret_load(NULL, &s, why, sizeof why), -ENOENT);
  /* A named file that is missing must not read as "no secret configured". */
  int rc = bt_secret_load("/nonexistent/baton/secret", &s, why, sizeof why);
  cr_assert_lt(rc, 0);
  cr_assert_neq(rc, -ENOENT);
  cr_assert_not_null(strstr(why, "/nonexistent/baton/secret"), "%s", why);
  setenv("BATON_SECRET_FILE", "/nonexistent/baton/secret", 1);
  rc = bt_secret_load(NULL, &s, why, sizeof why);
  cr_assert_lt(rc, 0);
  cr_assert_neq(rc, -ENOENT);
  setenv("BATON_SECRET_FILE", "", 1);
  rc = bt_secret_load(NULL, &s, why, sizeof why);
  cr_assert_lt(rc, 0);
  cr_assert_neq(rc, -ENOENT);
  clear_env();
}

/* Opening a FIFO without O_NONBLOCK would block until a writer came. */
Test(secret, fifo_is_refused_without_waiting, .timeout = 10) {
  clear_env();
  char dir[] = "/tmp/bt_test_secretfifo_XXXXXX", path[64];
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/fifo", dir);
  cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo: %s", strerror(errno));
  bt_secret_t s;
  char why[256] = "";
  int rc = bt_secret_load(path, &s, why, sizeof why);
  unlink(path);
  rmdir(dir);
  cr_assert_lt(rc, 0);
  cr_assert_not_null(strstr(why, "not a regular file"), "%s", why);
}

Test(secret, directory_is_refused) {
  clear_env();
  char dir[] = "/tmp/bt_test_secretdir_XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  bt_secret_t s;
  char why[256] = "";
  cr_assert_lt(bt_secret_load(dir, &s, why, sizeof why), 0);
  cr_assert_not_null(strstr(why, dir), "%s", why);
  rmdir(dir);
}

/* ---- proofs ---- */

static void secret_of(bt_secret_t *s, const char *key) {
  memset(s, 0, sizeof *s);
  s->len = strlen(key);
  memcpy(s->key, key, s->len);
}

Test(auth, proof_matches_the_documented_message) {
  bt_secret_t s;
  secret_of(&s, "0123456789abcdef-test-secret");
  uint8_t a[BT_NONCE_LEN], b[BT_NONCE_LEN], p[BT_SHA256_LEN];
  for (int i = 0; i < BT_NONCE_LEN; i++) a[i] = (uint8_t)i, b[i] = (uint8_t)(100 + i);
  bt_auth_proof(&s, "baton-coord", "job 7 rank 1", a, b, p);
  char got[2 * BT_SHA256_LEN + 1];
  hex_of(p, sizeof p, got);
  /* HMAC(key, "baton-coord\0job 7 rank 1\0" a b), computed with Python's hmac. */
  cr_assert_str_eq(got, "1aa59e91308190dbc8343539e4d5aafad671e367abda79e78bbcbeb636c9176d");
}

Test(auth, proofs_differ_by_label_context_nonce_order_and_secret) {
  bt_secret_t s, t;
  secret_of(&s, "0123456789abcdef-test-secret");
  secret_of(&t, "0123456789abcdef-test-secreT");
  uint8_t a[BT_NONCE_LEN], b[BT_NONCE_LEN];
  cr_assert_eq(bt_random_bytes(a, sizeof a), 0);
  cr_assert_eq(bt_random_bytes(b, sizeof b), 0);
  uint8_t p[7][BT_SHA256_LEN];
  bt_auth_proof(&s, "baton-coord", "job 7", a, b, p[0]);
  bt_auth_proof(&s, "baton-node", "job 7", a, b, p[1]);
  bt_auth_proof(&s, "baton-coord", "job 8", a, b, p[2]);
  bt_auth_proof(&s, "baton-coord", "job 7", b, a, p[3]);
  bt_auth_proof(&t, "baton-coord", "job 7", a, b, p[4]);
  /* The separators keep the label/context boundary in the message. */
  bt_auth_proof(&s, "baton-coordj", "ob 7", a, b, p[5]);
  bt_auth_proof(&s, "baton-coord", "job 7", a, b, p[6]);
  for (int i = 0; i < 6; i++)
    for (int k = i + 1; k < 6; k++) cr_assert_eq(bt_ct_equal(p[i], p[k], BT_SHA256_LEN), 0, "%d == %d", i, k);
  cr_assert_eq(bt_ct_equal(p[0], p[6], BT_SHA256_LEN), 1, "the same inputs give a different proof");
}

Test(auth, derive_is_deterministic_and_differs_by_label) {
  bt_secret_t s;
  secret_of(&s, "0123456789abcdef-test-secret");
  char x[2 * BT_SHA256_LEN + 1], y[2 * BT_SHA256_LEN + 1], z[2 * BT_SHA256_LEN + 1];
  bt_auth_derive_hex(&s, "data-plane 42 00ff", x);
  bt_auth_derive_hex(&s, "data-plane 42 00ff", y);
  bt_auth_derive_hex(&s, "data-plane 42 0100", z);
  cr_assert_str_eq(x, y);
  cr_assert_str_neq(x, z);
  cr_assert_eq(strlen(x), 64);
  /* HMAC(key, "baton-derive\0data-plane 42 00ff"), computed with Python's hmac. */
  cr_assert_str_eq(x, "3d62e62dedbf8f115d4e5d98c34434d7056287066c983b57aab4f40385918d06");
}
