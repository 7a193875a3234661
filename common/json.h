/* json.h - a small JSON writer into a growing buffer.
 *
 * For --json output, metrics and event lines, manifests and traces. Commas
 * and nesting are tracked for the caller; doubles are written with 17
 * significant digits so they read back exactly; NaN and Inf become null.
 * Errors (out of memory, nesting too deep) are sticky: check bt_json_error()
 * once at the end. It does not parse JSON: common/jsonread.h does, for the
 * readers of each format.
 */
#ifndef BT_COMMON_JSON_H
#define BT_COMMON_JSON_H
#include <stddef.h>
#include <stdint.h>

#define BT_JSON_MAX_DEPTH 32

typedef struct {
  char *buf;
  size_t len, cap;
  int depth;
  int err;                                  /* 0 or a negative code */
  unsigned char count[BT_JSON_MAX_DEPTH];   /* 0: no element yet at this depth */
  unsigned char after_key;
} bt_json_t;

void bt_json_init(bt_json_t *j);
void bt_json_free(bt_json_t *j);
void bt_json_reset(bt_json_t *j);          /* empty, keep the buffer */

void bt_json_obj_begin(bt_json_t *j);
void bt_json_obj_end(bt_json_t *j);
void bt_json_arr_begin(bt_json_t *j);
void bt_json_arr_end(bt_json_t *j);
void bt_json_key(bt_json_t *j, const char *key);
void bt_json_str(bt_json_t *j, const char *s);
void bt_json_num(bt_json_t *j, double v);
void bt_json_int(bt_json_t *j, int64_t v);
void bt_json_uint(bt_json_t *j, uint64_t v);
void bt_json_bool(bt_json_t *j, int v);
void bt_json_null(bt_json_t *j);
/* Pre-formatted JSON text inserted as one value. */
void bt_json_raw(bt_json_t *j, const char *text);

/* key + value shorthands */
void bt_json_kstr(bt_json_t *j, const char *k, const char *s);
void bt_json_knum(bt_json_t *j, const char *k, double v);
void bt_json_kint(bt_json_t *j, const char *k, int64_t v);
void bt_json_kbool(bt_json_t *j, const char *k, int v);

const char *bt_json_cstr(const bt_json_t *j);  /* NUL-terminated text ("" if empty) */
int bt_json_error(const bt_json_t *j);

#endif
