/* test_common.c - errors, logging, clock, JSON writer, CRC, hash, parsing. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/crc.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/json.h"
#include "common/log.h"
#include "common/parse.h"

Test(error, every_code_has_a_distinct_message_and_name) {
  int codes[] = {
#define X(name, msg) name,
      BT_ERROR_TABLE(X)
#undef X
  };
  size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    cr_assert_lt(codes[i], -4096, "code %d collides with errno space", codes[i]);
    cr_assert_str_neq(bt_strerror(codes[i]), "unknown error");
    for (size_t k = i + 1; k < n; k++) {
      cr_assert_str_neq(bt_strerror(codes[i]), bt_strerror(codes[k]));
      cr_assert_str_neq(bt_errname(codes[i]), bt_errname(codes[k]));
    }
  }
  cr_assert_str_eq(bt_errname(BT_ETIMEOUT), "BT_ETIMEOUT");
}

Test(error, errno_values_pass_through) {
  cr_assert_str_eq(bt_strerror(-ENOENT), strerror(ENOENT));
  cr_assert_str_eq(bt_errname(-ENOENT), "ENOENT");
  cr_assert_str_eq(bt_strerror(0), "success");
  cr_assert_str_eq(bt_strerror(12345), "unknown error");
}

Test(json, nested_document_with_commas) {
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "name", "a\"b\\c\n");
  bt_json_kint(&j, "n", -3);
  bt_json_key(&j, "xs");
  bt_json_arr_begin(&j);
  bt_json_num(&j, 0.1);
  bt_json_num(&j, NAN);
  bt_json_bool(&j, 1);
  bt_json_obj_begin(&j);
  bt_json_obj_end(&j);
  bt_json_arr_end(&j);
  bt_json_kbool(&j, "ok", 0);
  bt_json_obj_end(&j);
  cr_assert_eq(bt_json_error(&j), 0);
  cr_assert_str_eq(bt_json_cstr(&j),
                   "{\"name\":\"a\\\"b\\\\c\\n\",\"n\":-3,\"xs\":[0.10000000000000001,null,true,{}],\"ok\":false}");
  bt_json_free(&j);
}

Test(json, doubles_read_back_exactly) {
  double vs[] = {1.0 / 3.0, 1e-300, 123456789.123456789, -2.5e17, 5e-324};
  for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
    bt_json_t j;
    bt_json_init(&j);
    bt_json_num(&j, vs[i]);
    cr_assert_eq(strtod(bt_json_cstr(&j), NULL), vs[i], "%s", bt_json_cstr(&j));
    bt_json_free(&j);
  }
}

Test(json, unbalanced_is_an_error) {
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  cr_assert_neq(bt_json_error(&j), 0);
  bt_json_obj_end(&j);
  cr_assert_eq(bt_json_error(&j), 0);
  bt_json_obj_end(&j);
  cr_assert_neq(bt_json_error(&j), 0);
  bt_json_free(&j);
}

Test(crc, matches_known_value_and_files) {
  /* The CRC-32 check value of "123456789". */
  cr_assert_eq(bt_crc32(0, "123456789", 9), 0xCBF43926u);
  cr_assert_eq(bt_crc32(bt_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
  char path[] = "/tmp/bt_crc_XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, "123456789", 9), 9);
  close(fd);
  uint32_t c;
  uint64_t size;
  cr_assert_eq(bt_crc32_file(path, &c, &size), 0);
  cr_assert_eq(c, 0xCBF43926u);
  cr_assert_eq(size, 9);
  unlink(path);
  cr_assert_eq(bt_crc32_file(path, &c, &size), -ENOENT);
}

/* Pieces' CRCs combine into the CRC of the whole, at every split point of
 * a buffer with a long piece (over 4 GiB is the same code path: z_off_t is
 * 64 bits), and with empty pieces. */
Test(crc, combine_equals_the_crc_of_the_concatenation) {
  enum { N = 3000 };
  unsigned char *buf = malloc(N);
  cr_assert(buf);
  for (int i = 0; i < N; i++) buf[i] = (unsigned char)(i * 131 + 7);
  uint32_t whole = bt_crc32(0, buf, N);
  for (int cut = 0; cut <= N; cut += cut < 20 ? 1 : 97) {
    uint32_t a = bt_crc32(0, buf, (size_t)cut), b = bt_crc32(0, buf + cut, (size_t)(N - cut));
    cr_assert_eq(bt_crc32_combine(a, b, (uint64_t)(N - cut)), whole, "cut at %d", cut);
  }
  /* Three pieces, combined left to right. */
  uint32_t c = bt_crc32_combine(bt_crc32_combine(bt_crc32(0, buf, 10), bt_crc32(0, buf + 10, 990), 990),
                                bt_crc32(0, buf + 1000, N - 1000), N - 1000);
  cr_assert_eq(c, whole);
  free(buf);
}

Test(hash, combine_is_independent_of_visit_order) {
  float a[] = {1, 2, 3}, b[] = {4, 5}, c[] = {6};
  bt_hash_rec_t r1[3] = {
      {.layer = 0, .index = 0, .name = "tables", .h = bt_hash_tensor(a, 3)},
      {.layer = 1, .index = 0, .name = "w1", .h = bt_hash_tensor(b, 2)},
      {.layer = 1, .index = 1, .name = "b1", .h = bt_hash_tensor(c, 1)},
  };
  bt_hash_rec_t r2[3] = {r1[2], r1[0], r1[1]};
  bt_hash128_t h1, h2;
  cr_assert_eq(bt_hash_combine(r1, 3, &h1), 0);
  cr_assert_eq(bt_hash_combine(r2, 3, &h2), 0);
  cr_assert(h1.hi == h2.hi && h1.lo == h2.lo);
  /* Changing one bit of one tensor changes the result. */
  c[0] = nextafterf(c[0], 7.0f);
  r2[0].h = bt_hash_tensor(c, 1);
  cr_assert_eq(bt_hash_combine(r2, 3, &h2), 0);
  cr_assert(h1.hi != h2.hi || h1.lo != h2.lo);
}

Test(hash, duplicates_rejected_and_hex_round_trips) {
  bt_hash_rec_t r[2] = {{.layer = 3, .index = 1, .name = "x"}, {.layer = 3, .index = 1, .name = "y"}};
  bt_hash128_t h;
  cr_assert_eq(bt_hash_combine(r, 2, &h), BT_EARG);
  h = (bt_hash128_t){.hi = 0x0123456789abcdefull, .lo = 0xfedcba9876543210ull};
  char hex[33];
  bt_hash_hex(h, hex);
  cr_assert_str_eq(hex, "0123456789abcdeffedcba9876543210");
  bt_hash128_t back;
  cr_assert_eq(bt_hash_parse(hex, &back), 0);
  cr_assert(back.hi == h.hi && back.lo == h.lo);
  cr_assert_eq(bt_hash_parse("0123", &back), BT_EFORMAT);
  cr_assert_eq(bt_hash_parse("0123456789ABCDEFfedcba9876543210", &back), BT_EFORMAT);
}

Test(parse, numbers_are_strict) {
  int v;
  double d;
  cr_assert_eq(bt_parse_int("42", 1, 100, &v), 0);
  cr_assert_eq(v, 42);
  cr_assert_eq(bt_parse_int("42x", 1, 100, &v), BT_EARG);
  cr_assert_eq(bt_parse_int("", 1, 100, &v), BT_EARG);
  cr_assert_eq(bt_parse_int("0", 1, 100, &v), BT_EARG);
  cr_assert_eq(bt_parse_int("-5", 1, 100, &v), BT_EARG);
  cr_assert_eq(bt_parse_int("99999999999999999999", 1, 100, &v), BT_EARG);
  cr_assert_eq(bt_parse_double("3e-4", 0, 1, &d), 0);
  cr_assert_eq(d, 3e-4);
  cr_assert_eq(bt_parse_double("nan", 0, 1, &d), BT_EARG);
  cr_assert_eq(bt_parse_double("inf", 0, INFINITY, &d), BT_EARG);
}

Test(parse, lists) {
  double d[8];
  int x[8];
  size_t n;
  cr_assert_eq(bt_parse_doubles("1,2.5,3", d, 8, &n), 0);
  cr_assert_eq(n, 3);
  cr_assert_eq(d[1], 2.5);
  cr_assert_eq(bt_parse_doubles("1,,3", d, 8, &n), BT_EARG);
  cr_assert_eq(bt_parse_ints("1,2,3,4", 0, 9, x, 3, &n), BT_EARG);
  cr_assert_eq(bt_parse_ints("3,0,2", 0, 9, x, 8, &n), 0);
  cr_assert_eq(n, 3);
  cr_assert_eq(x[0] + x[1] + x[2], 5);
}

Test(clock, monotonic_and_deadlines) {
  uint64_t a = bt_clock_ns();
  bt_sleep_ms(20);
  uint64_t b = bt_clock_ns();
  cr_assert_geq(b - a, 20000000ull);
  uint64_t dl = bt_deadline_ms(1000);
  cr_assert(bt_ms_left(dl) > 900 && bt_ms_left(dl) <= 1000);
  cr_assert_eq(bt_ms_left(a), 0);
}

Test(log, levels_filter_lines) {
  int fds[2];
  cr_assert_eq(pipe(fds), 0);
  int saved = dup(2);
  dup2(fds[1], 2);
  bt_log_set_level(BT_LOG_WARN);
  bt_log_set_prefix("stage 3");
  bt_info("hidden %d", 1);
  bt_error("shown %d", 2);
  bt_log_set_prefix(NULL);
  dup2(saved, 2);
  close(fds[1]);
  char buf[256] = {0};
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  cr_assert_gt(n, 0);
  cr_assert_str_eq(buf, "baton[stage 3]: error: shown 2\n");
}

Test(hash, random_ids_are_32_hex_digits_and_differ) {
  char a[33], b[33];
  bt_random_id(a);
  bt_random_id(b);
  cr_assert_eq(strlen(a), 32);
  cr_assert_eq(strspn(a, "0123456789abcdef"), 32);
  cr_assert_str_neq(a, b);
}
