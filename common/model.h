/* model.h - the model DESCRIPTION of DESIGN.md §2: which layers exist, their
 * tensors (names, shapes, declared order, initial values), cost estimates,
 * and how layers are split into virtual stages (§3 layouts).
 *
 * This is pure description: no BLAS, no backend, no kernels/ include, so the
 * supervisor, the schedule tools and the checkpoint code can use it. The
 * compute that goes with each layer type is in kernels/model.h.
 *
 * Layers, global index 0..L+1:
 *   0       embed  tables (K, 256, D)
 *   1..L    block  ln_w (D), ln_b (D), w1 (4D, D), b1 (4D), w2 (D, 4D), b2 (D)
 *   L+1     head   ln_w (D), ln_b (D), wout (256, D)
 * The tensor order above is the declared order: it is the order of the hash
 * records, of the parameter memory of a layer, and of checkpoint datasets.
 *
 * Initial values are a pure function of (seed, global layer, tensor index,
 * element): layernorm gains 1, biases 0, weights normal(0, 0.02), with the
 * residual projection w2 scaled by 1/sqrt(2L) as GPT-2 does.
 */
#ifndef BT_COMMON_MODEL_H
#define BT_COMMON_MODEL_H
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

#define BT_MODEL_VOCAB 256
#define BT_LAYER_TENSORS_MAX 8

typedef enum { BT_LAYER_EMBED = 0, BT_LAYER_BLOCK = 1, BT_LAYER_HEAD = 2 } bt_layer_type_t;
typedef enum { BT_INIT_ZEROS = 0, BT_INIT_ONES = 1, BT_INIT_NORMAL = 2 } bt_init_kind_t;

typedef struct {
  const char *name;  /* within the layer, e.g. "w1" */
  int ndim;
  int64_t shape[3];
  size_t count;      /* product of shape */
  int init;          /* bt_init_kind_t */
  double init_std;   /* for BT_INIT_NORMAL */
} bt_tensor_desc_t;

typedef struct {
  int index;               /* global layer index */
  bt_layer_type_t type;
  const char *type_name;   /* "embed", "block", "head" */
  int ntensors;
  bt_tensor_desc_t tensors[BT_LAYER_TENSORS_MAX];
  size_t params;           /* sum of counts */
  /* Estimated flops of one micro-batch: forward, input gradient (I),
   * weight gradient (W). B = I + W. */
  double flops_f, flops_i, flops_w;
} bt_layer_desc_t;

/* L + 2. */
int bt_model_layer_count(const bt_model_config_t *m);
/* Describes global layer `layer`; BT_EARG when out of range. */
int bt_model_layer(const bt_model_config_t *m, int layer, bt_layer_desc_t *out);
/* Total parameters of all layers. */
uint64_t bt_model_param_count(const bt_model_config_t *m);
/* Floats of per-micro-batch activation and gradient memory that layers
 * first..last keep for one micro-batch (what kernels/model.c allocates). */
uint64_t bt_model_activation_floats(const bt_model_config_t *m, int first, int last);
/* Flops of one micro-batch through all layers (F + I + W). */
double bt_model_flops(const bt_model_config_t *m);

/* Initial value of element `i` of tensor `tensor` of layer `layer`: writes
 * the d->count values into out (host memory). */
void bt_model_init_tensor(const bt_model_config_t *m, int layer, int tensor,
                          const bt_tensor_desc_t *d, float *out);

/* Parses --layout "2,3,1": layer counts per virtual stage, each >= 1,
 * covering all L+2 layers, exactly `nstages` of them when nstages > 0 (0:
 * any count, returned in *n). counts has room for `max`. BT_EARG with a
 * one-line reason in err otherwise. */
int bt_model_layout_parse(const bt_model_config_t *m, const char *text, int nstages, int *counts,
                          int max, int *n, char *err, size_t errlen);
/* Splits the L+2 layers into `nstages` contiguous runs of >= 1 layer that
 * minimise the largest estimated cost (F + I + W); deterministic. BT_EARG
 * when nstages is < 1 or more than L+2. */
int bt_model_layout_balanced(const bt_model_config_t *m, int nstages, int *counts);
/* Estimated cost (F + I + W flops) of layers first..last. */
double bt_model_range_cost(const bt_model_config_t *m, int first, int last);

#endif
