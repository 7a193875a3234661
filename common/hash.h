/* hash.h - the parameter hash of DESIGN.md §8.
 *
 * Each tensor is hashed alone: XXH3-128 of its raw little-endian float32
 * bytes. The parameter hash is XXH3-128 over one record per tensor, in
 * global layer order and, within a layer, in the layer type's declared
 * tensor order: (layer u32 LE, name length u32 LE, name bytes, tensor hash
 * as 16 canonical bytes). Records may be handed over in any order: they are
 * sorted by (layer, index) before combining, so workers hash their own
 * tensors and the supervisor combines them. Printed as 32 lowercase hex
 * digits, the canonical (big-endian) form of the 128-bit value.
 */
#ifndef BT_COMMON_HASH_H
#define BT_COMMON_HASH_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t hi, lo;
} bt_hash128_t;

#define BT_HASH_NAME_MAX 48

typedef struct {
  uint32_t layer;                  /* global layer index */
  uint32_t index;                  /* position in the layer type's tensor order */
  char name[BT_HASH_NAME_MAX];     /* tensor name within the layer */
  bt_hash128_t h;                  /* bt_hash_tensor() of its data */
} bt_hash_rec_t;

bt_hash128_t bt_hash_tensor(const float *data, size_t n);
/* Sorts recs in place; BT_EARG on a duplicate (layer, index). */
int bt_hash_combine(bt_hash_rec_t *recs, size_t n, bt_hash128_t *out);
/* 32 lowercase hex digits and a NUL. */
void bt_hash_hex(bt_hash128_t h, char out[33]);
/* Parses 32 hex digits; BT_EFORMAT otherwise. */
int bt_hash_parse(const char *hex, bt_hash128_t *out);
/* A fresh random id: 32 lowercase hex digits from getrandom(2) and a NUL
 * (job ids, job tokens). Without an entropy source it is still distinct
 * per process and moment (time and pid), if guessable. */
void bt_random_id(char out[33]);

#endif
