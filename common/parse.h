/* parse.h - strict parsing of command-line numbers and lists.
 *
 * Every subcommand parses its flags with these, so "--steps 10x", "--dim -3"
 * and "--lr nan" are rejected the same way everywhere. They return 0 or
 * BT_EARG and never print: the caller names the flag in its one-line error.
 */
#ifndef BT_COMMON_PARSE_H
#define BT_COMMON_PARSE_H
#include <stddef.h>
#include <stdint.h>

/* A whole decimal number in [lo, hi]. */
int bt_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int bt_parse_int(const char *s, int lo, int hi, int *out);
/* A finite number in [lo, hi]. */
int bt_parse_double(const char *s, double lo, double hi, double *out);
/* Comma-separated finite numbers, at most `max` of them; *n gets the count. */
int bt_parse_doubles(const char *s, double *out, size_t max, size_t *n);
/* Comma-separated whole numbers in [lo, hi], at most `max`. */
int bt_parse_ints(const char *s, int lo, int hi, int *out, size_t max, size_t *n);

#endif
