/* checkpoint_synth.h - synthetic checkpoints for the checkpoint tests.
 *
 * A stand-in model with no model code: layer 0 "embed" (tables (2,16,8)),
 * layers 1..L-2 "block" (W1 (32,8), b1 (32), W2 (8,32), b2 (8), ln_g (8),
 * ln_b (8)), layer L-1 "head" (ln_g, ln_b, Wout (16,8)), each with Adam m
 * and v. Values are a pure function of (seed, step, layer, tensor, element),
 * so any split into stages regenerates the same tensors.
 */
#ifndef BT_TESTS_CHECKPOINT_SYNTH_H
#define BT_TESTS_CHECKPOINT_SYNTH_H
#include <stddef.h>
#include <stdint.h>

#include "checkpoint/ckpt.h"

typedef struct {
  bt_ckpt_tensor_t *t;
  size_t n;
  float *buf;
} ckpt_synth_t;

/* Tensors of layers [lo, hi) of a model of layer_count layers, at `step`;
 * with_optim adds m and v. Returns 0 or -ENOMEM. */
int ckpt_synth_make(ckpt_synth_t *s, uint32_t lo, uint32_t hi, uint32_t layer_count,
                    uint64_t seed, int64_t step, int with_optim);
/* Same tensors with zeroed data buffers, for loading into. */
int ckpt_synth_empty(ckpt_synth_t *s, uint32_t lo, uint32_t hi, uint32_t layer_count,
                     int with_optim);
void ckpt_synth_free(ckpt_synth_t *s);

/* The meta of stage `stage` of `stages`. Strings are static. */
bt_ckpt_meta_t ckpt_synth_meta(int64_t step, uint32_t stage, uint32_t stages,
                               uint32_t layer_count, uint64_t seed);

/* Saves step `step` as `stages` shards split at bounds[0..stages] (bounds[0]
 * = 0, bounds[stages] = layer_count) and commits it. */
int ckpt_synth_save_step(const char *root, int64_t step, uint32_t layer_count,
                         const uint32_t *bounds, uint32_t stages, uint64_t seed,
                         const bt_ckpt_opts_t *opts);

/* A fresh directory under /tmp (mkdtemp), name into out. */
void ckpt_synth_tmpdir(char *out, size_t len);

#endif
