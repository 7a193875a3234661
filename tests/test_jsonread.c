/* test_jsonread.c - the shared strict JSON reader (common/jsonread.h) that
 * the manifest and trace readers are built on. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/jsonread.h"

static char err[256];

static bt_jr_t reader(const char *text) {
  bt_jr_t r;
  cr_assert_eq(bt_jr_init(&r, "test", text, strlen(text), 1 << 20, err, sizeof err), 0, "%s", err);
  return r;
}

Test(jsonread, reads_an_object_token_by_token) {
  bt_jr_t r = reader(" {\"a\" : -12, \"b\":\"x\\n\\u00e9\\ud83d\\ude00\\/\", \"c\":[1,{\"d\":null},true],"
                     " \"e\":2.5e-1, \"f\":18446744073709551615}\n");
  int64_t a;
  char *b = NULL;
  double e;
  uint64_t f;
  cr_assert_eq(bt_jr_expect(&r, '{'), 0);
  cr_assert(bt_jr_next_key_is(&r, "a"));
  cr_assert_not(bt_jr_next_key_is(&r, "ab"));
  cr_assert_eq(bt_jr_key(&r, "a"), 0);
  cr_assert_eq(bt_jr_int(&r, "a", -100, 100, &a), 0, "%s", err);
  cr_assert_eq(a, -12);
  cr_assert(bt_jr_accept(&r, ','));
  cr_assert_eq(bt_jr_key(&r, "b"), 0);
  cr_assert_eq(bt_jr_str_dup(&r, &b), 0, "%s", err);
  cr_assert_str_eq(b, "x\n\xc3\xa9\xf0\x9f\x98\x80/");
  free(b);
  cr_assert(bt_jr_accept(&r, ','));
  cr_assert_eq(bt_jr_key(&r, "c"), 0);
  cr_assert_eq(bt_jr_skip(&r), 0, "%s", err);
  cr_assert(bt_jr_accept(&r, ','));
  cr_assert_eq(bt_jr_key(&r, "e"), 0);
  cr_assert_eq(bt_jr_num(&r, &e), 0, "%s", err);
  cr_assert_eq(e, 0.25);
  cr_assert(bt_jr_accept(&r, ','));
  cr_assert_eq(bt_jr_key(&r, "f"), 0);
  cr_assert_eq(bt_jr_u64(&r, "f", UINT64_MAX, &f), 0, "%s", err);
  cr_assert_eq(f, UINT64_MAX);
  cr_assert_eq(bt_jr_expect(&r, '}'), 0);
  cr_assert_eq(bt_jr_end(&r), 0, "%s", err);
  cr_assert_eq(err[0], 0, "a message without a failure: %s", err);
}

/* Each case: the text, what to read, and the message (with the byte). */
enum { STR, INT, U64, NUM, SKIP, KEY, END };

static int read_one(bt_jr_t *r, int op) {
  char buf[64];
  int fits;
  int64_t i;
  uint64_t u;
  double d;
  switch (op) {
  case STR: return bt_jr_str(r, buf, sizeof buf, &fits);
  case INT: return bt_jr_int(r, "n", -5, 5, &i);
  case U64: return bt_jr_u64(r, "n", 1000, &u);
  case NUM: return bt_jr_num(r, &d);
  case SKIP: return bt_jr_skip(r);
  case KEY: return bt_jr_key(r, "k");
  default: return bt_jr_skip(r) ? BT_EFORMAT : bt_jr_end(r);
  }
}

Test(jsonread, malformed_input_is_rejected_with_its_position) {
  struct {
    const char *text;
    int op;
    const char *want;
  } cases[] = {
      {"\"abc", STR, "test byte 4: unterminated string"},
      {"  \"a\x01\"", STR, "test byte 5: control character"},
      {"\"\\q\"", STR, "test byte 3: bad escape '\\q'"},
      {"\"\\u12g4\"", STR, "test byte 5: bad \\u escape"},
      {"\"\\u0000\"", STR, "\\u0000"},
      {"\"\\ud800x\"", STR, "lone surrogate"},
      {"\"\\udc00\"", STR, "lone surrogate"},
      {"abc", STR, "test byte 0: expected '\"'"},
      {"012", INT, "test byte 0: expected a number without leading zeros"},
      {"1.5", INT, "test byte 3: n: not an integer"},
      {"6", INT, "n: out of range"},
      {"-6", INT, "n: out of range"},
      {"99999999999999999999", INT, "n: out of range"},
      {"-1", U64, "n: out of range"},
      {"1001", U64, "n: out of range"},
      {"-", NUM, "test byte 1: expected a number"},
      {"1.", NUM, "test byte 2: expected digits after '.'"},
      {"1e", NUM, "test byte 2: expected an exponent"},
      {"1e999", NUM, "number out of range"},
      {"NaN", SKIP, "test byte 0: expected a value"},
      {"[1,]", SKIP, "test byte 3: expected a value"},
      {"[1 2]", SKIP, "test byte 3: expected ']'"},
      {"{\"a\" 1}", SKIP, "test byte 5: expected ':'"},
      {"{1:2}", SKIP, "test byte 1: expected '\"'"},
      {"tru", SKIP, "expected true"},
      {"\"j\":1", KEY, "test byte 0: expected key \"k\", found \"j\""},
      {"{} x", END, "test byte 3: trailing bytes after the test"},
      {"[[[", END, "test byte 3: expected a value"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bt_jr_t r = reader(cases[i].text);
    cr_assert_eq(read_one(&r, cases[i].op), BT_EFORMAT, "case %zu (%s) accepted", i, cases[i].text);
    cr_assert(strstr(err, cases[i].want), "case %zu (%s): '%s' lacks '%s'", i, cases[i].text, err,
              cases[i].want);
    cr_assert_null(strchr(err, '\n'), "case %zu: multi-line message '%s'", i, err);
  }
}

Test(jsonread, the_first_failure_is_the_one_reported) {
  bt_jr_t r = reader("x y");
  cr_assert_eq(bt_jr_expect(&r, '{'), BT_EFORMAT);
  r.i = 2;
  cr_assert_eq(bt_jr_fail(&r, "later"), BT_EFORMAT);
  cr_assert(strstr(err, "test byte 0: expected '{'"), "%s", err);
}

Test(jsonread, size_depth_and_buffers_are_bounded) {
  bt_jr_t r;
  const char *text = "[1,2,3]";
  cr_assert_eq(bt_jr_init(&r, "test", text, 7, 6, err, sizeof err), BT_EFORMAT);
  cr_assert(strstr(err, "7 bytes, more than the 6 allowed"), "%s", err);
  cr_assert_eq(bt_jr_init(&r, "test", "[1,\0]", 5, 100, err, sizeof err), BT_EFORMAT);
  cr_assert(strstr(err, "test byte 3: NUL byte"), "%s", err);

  /* Nesting: BT_JR_MAX_DEPTH levels read, one more refused. */
  static char deep[2 * BT_JR_MAX_DEPTH + 8];
  for (int extra = 0; extra <= 1; extra++) {
    int d = BT_JR_MAX_DEPTH + extra;
    memset(deep, '[', (size_t)d);
    memset(deep + d, ']', (size_t)d);
    deep[2 * d] = 0;
    r = reader(deep);
    int rc = bt_jr_skip(&r);
    if (extra) {
      cr_assert_eq(rc, BT_EFORMAT, "%d levels accepted", d);
      cr_assert(strstr(err, "nested more than"), "%s", err);
    } else {
      cr_assert_eq(rc, 0, "%d levels: %s", d, err);
    }
  }

  /* A fixed buffer keeps what fits, says so, and consumes the rest. */
  char small[4];
  int fits = 1;
  r = reader("\"abcdef\",1");
  cr_assert_eq(bt_jr_str(&r, small, sizeof small, &fits), 0);
  cr_assert_eq(fits, 0);
  cr_assert_str_eq(small, "abc");
  cr_assert(bt_jr_accept(&r, ','));

  /* Numbers are at most 63 characters. */
  char big[80];
  memset(big, '1', 70);
  big[70] = 0;
  r = reader(big);
  double d;
  cr_assert_eq(bt_jr_num(&r, &d), BT_EFORMAT);
  cr_assert(strstr(err, "number too long"), "%s", err);
}
