/* jsonread.h - a strict, bounded JSON reader for baton's own formats.
 *
 * A cursor over text held in memory that a format's parser drives token by
 * token: checkpoint/manifest.c (MANIFEST.json, exact shape) and
 * schedules/trace.c (Chrome traces, unknown fields skipped) both read
 * through it. It builds no tree: each format's parser says what comes
 * next. Strict JSON only (RFC 8259: no comments, trailing commas, leading
 * zeros, NaN); every failure is BT_EFORMAT with one line "<what> byte N:
 * <what was expected>" in the caller's buffer, the first failure kept.
 * Bounded: the text (init's max), nesting (BT_JR_MAX_DEPTH), numbers (63
 * characters) and fixed-buffer strings. \u escapes decode to UTF-8
 * (surrogate pairs joined); \u0000 and lone surrogates are refused, so a
 * decoded string is always a C string. Not here: writing (json.h).
 */
#ifndef BT_COMMON_JSONREAD_H
#define BT_COMMON_JSONREAD_H
#include <stddef.h>
#include <stdint.h>

#define BT_JR_MAX_DEPTH 64

typedef struct {
  const char *s;
  size_t len, i;      /* text and the cursor (a byte offset) */
  const char *what;   /* names the text in messages: "manifest", "trace" */
  char *err;          /* may be NULL */
  size_t errlen;
  int failed;
} bt_jr_t;

/* Starts reading len bytes of text. BT_EFORMAT (with the message) when the
 * text is longer than max or holds a NUL byte. */
int bt_jr_init(bt_jr_t *r, const char *what, const char *text, size_t len, size_t max, char *err,
               size_t errlen);
/* Records "<what> byte <cursor>: <message>" unless a failure is recorded
 * already; returns BT_EFORMAT. */
int bt_jr_fail(bt_jr_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The next byte after whitespace (not consumed), or -1 at the end. */
int bt_jr_peek(bt_jr_t *r);
/* Consumes c and returns 1 when it comes next; 0 otherwise. */
int bt_jr_accept(bt_jr_t *r, char c);
/* Consumes c, or fails with "expected 'c'". */
int bt_jr_expect(bt_jr_t *r, char c);
/* Consumes the bare word (true, false, null) or fails. */
int bt_jr_literal(bt_jr_t *r, const char *word);

/* A string into buf (cap bytes, NUL-terminated); *fits is 0 when it was
 * cut to cap - 1 bytes (the rest is still consumed). */
int bt_jr_str(bt_jr_t *r, char *buf, size_t cap, int *fits);
/* A string into a malloc'ed buffer (-ENOMEM possible). */
int bt_jr_str_dup(bt_jr_t *r, char **out);
/* The string `name` and the ':' after it, or fails naming both keys. */
int bt_jr_key(bt_jr_t *r, const char *name);
/* 1 when the next token is the string `name` (nothing consumed). */
int bt_jr_next_key_is(bt_jr_t *r, const char *name);

/* A number in JSON's grammar, finite. */
int bt_jr_num(bt_jr_t *r, double *out);
/* An integer as JSON writes one (no fraction or exponent) in [lo, hi];
 * `what` names it in messages. */
int bt_jr_int(bt_jr_t *r, const char *what, int64_t lo, int64_t hi, int64_t *out);
/* The same for an unsigned value in [0, hi]. */
int bt_jr_u64(bt_jr_t *r, const char *what, uint64_t hi, uint64_t *out);

/* Skips one value of any kind (nesting bounded). */
int bt_jr_skip(bt_jr_t *r);
/* Fails with "trailing bytes" unless only whitespace is left. */
int bt_jr_end(bt_jr_t *r);

#endif
