/* config.h - the configuration of a training job: one struct, one flag
 * table, one canonical text form.
 *
 * The struct is split as DESIGN.md §8 says. The MODEL configuration decides
 * the bits a run produces (layers, width, data, optimizer, math mode); it is
 * stored in every checkpoint and must match on resume. The RUN settings
 * (steps, stages, chunks, schedule, layout, checkpoint and timeout flags) may
 * change between runs of one job. Settings that other modules add later and
 * that this table does not know are carried as opaque run "extras", so the
 * text form still round-trips them.
 *
 * The flag table is the single place that names a flag, its default, its
 * range and its help line: `baton train` and `baton run` both parse their
 * model flags through bt_config_flag(), so the same flags mean the same
 * model with the same defaults everywhere. A flag's name (without "--") is
 * also its key in the canonical text.
 *
 * Canonical text: one `key=value` line per setting, sorted by key, numbers
 * written so that they parse back to the same bits. It parses back exactly.
 *
 * Not here: what the layers are (common/model.h) and how data is produced
 * (common/data.h). This file allocates nothing but the caller's struct.
 */
#ifndef BT_COMMON_CONFIG_H
#define BT_COMMON_CONFIG_H
#include <stddef.h>
#include <stdint.h>

#define BT_CONFIG_PATH_MAX 1024
#define BT_CONFIG_NAME_MAX 32
#define BT_CONFIG_EXTRA_MAX 32
#define BT_CONFIG_EXTRA_LEN 256

typedef struct {
  int layers;          /* L blocks; the model has L + 2 layers */
  int dim;             /* D */
  int context;         /* K previous bytes summed by the embedding */
  int microbatches;    /* M per step */
  int mb_tokens;       /* T tokens per micro-batch */
  int64_t seed;
  char data[BT_CONFIG_PATH_MAX]; /* "synthetic" or an absolute file path */
  int64_t data_size;   /* bytes of the data file (0 for synthetic) */
  int64_t data_crc;    /* CRC-32 of the data file (0 for synthetic) */
  double lr;           /* peak learning rate */
  int64_t warmup;      /* linear warm-up steps */
  int64_t lr_decay_steps; /* cosine horizon; lr stays at lr/10 after it */
  double beta1, beta2, eps, weight_decay;
  char math[BT_CONFIG_NAME_MAX]; /* backend math mode: "fp32" (or "tf32" on CUDA) */
} bt_model_config_t;

typedef struct {
  int64_t steps;
  char backend[BT_CONFIG_NAME_MAX];   /* "cpu" or "cuda" */
  int stages;
  int chunks;
  char schedule[BT_CONFIG_NAME_MAX];
  char layout[BT_CONFIG_PATH_MAX];    /* "" = balanced by cost */
  /* Settings added by other modules, as "key=value" strings. */
  int nextra;
  char extra[BT_CONFIG_EXTRA_MAX][BT_CONFIG_EXTRA_LEN];
} bt_run_config_t;

typedef struct {
  bt_model_config_t model;
  bt_run_config_t run;
} bt_config_t;

enum { BT_CONFIG_MODEL = 1, BT_CONFIG_RUN = 2, BT_CONFIG_ALL = 3 };
enum { BT_FLAG_INT, BT_FLAG_I64, BT_FLAG_DOUBLE, BT_FLAG_STRING };

typedef struct {
  const char *name;   /* flag without "--", and the canonical key */
  int part;           /* BT_CONFIG_MODEL or BT_CONFIG_RUN */
  int type;           /* BT_FLAG_* */
  size_t offset;      /* into bt_config_t */
  size_t size;        /* string capacity */
  const char *def;    /* default, as text */
  double lo, hi;      /* inclusive range for numbers */
  int positive;       /* doubles: must also be > 0 */
  int is_flag;        /* 0: a derived key (data-size), not a command-line flag */
  const char *help;
} bt_config_flag_t;

/* The table, in help order. */
const bt_config_flag_t *bt_config_flags(size_t *n);

/* Every setting at its default. */
void bt_config_defaults(bt_config_t *c);

/* Sets one flag of `part` (BT_CONFIG_MODEL, BT_CONFIG_RUN or both) from its
 * command-line text. `flag` may be given with or without "--". Returns 0,
 * or BT_EARG with a one-line reason in err ("--dim: expected a whole number
 * in [1, 65536], got '-3'"). An unknown flag is BT_EARG too. */
int bt_config_flag(bt_config_t *c, int part, const char *flag, const char *value, char *err,
                   size_t errlen);
/* bt_config_flag restricted to the model flags (the shared table of §8). */
int bt_config_model_flag(bt_config_t *c, const char *flag, const char *value, char *err,
                         size_t errlen);
/* 1 if `flag` (with or without "--") is in the table for `part`. */
int bt_config_has_flag(int part, const char *flag);

/* Appends one help line per flag of `part` to out (truncated to outlen). */
void bt_config_help(int part, char *out, size_t outlen);

/* Resolves the data source (absolute path, size, CRC of a file; zeros for
 * synthetic) and checks every value and the memory estimate against this
 * machine. Call once after parsing flags, before allocating anything. */
int bt_config_finish(bt_config_t *c, char *err, size_t errlen);
/* Range and consistency checks only (no file access, no memory check). */
int bt_config_validate(const bt_config_t *c, char *err, size_t errlen);

/* Bytes a single process holding the whole model needs: parameters,
 * gradients, AdamW m and v, the per-micro-batch activations of all M
 * micro-batches (what bt_stage allocates) and the data file (read whole). */
uint64_t bt_config_memory_bytes(const bt_model_config_t *m);
/* Physical memory of this machine (sysconf), in bytes. */
uint64_t bt_config_physical_bytes(void);

/* Canonical text of `part`: sorted key=value lines, each ending in '\n'.
 * Returns the length it needs (like snprintf); out may be NULL. */
size_t bt_config_to_text(const bt_config_t *c, int part, char *out, size_t outlen);
/* Parses canonical text over the defaults (keys absent keep them). Unknown
 * keys become run extras; a malformed line or value is BT_EFORMAT with the
 * reason in err. */
int bt_config_from_text(bt_config_t *c, const char *text, char *err, size_t errlen);

/* Compares two model configurations. Returns how many keys differ and
 * writes each as "key: A vs B", joined by "; ", into out (may be NULL). */
int bt_config_model_diff(const bt_model_config_t *a, const bt_model_config_t *b, char *out,
                         size_t outlen);

/* Whether a checkpoint's model (`ckpt`) is the model `now` describes: the
 * one rule for `baton train`, `baton run` before spawning, and the worker.
 * Every model key must agree except the data path: a data file is
 * identified by its size and content CRC (data-size, data-crc), not by how
 * its path is spelled, so a relative --data, another working directory or a
 * copy elsewhere resumes; synthetic data must stay synthetic. Returns the
 * number of disagreements; each is written to out (may be NULL) as one
 * clause naming both values — "--dim: the checkpoint has 32, the command
 * line says 48" for a flag in `given` (names with or without "--", NULL:
 * none given), "KEY: the checkpoint has A, now B" otherwise — joined by
 * "; ". */
int bt_config_model_match(const bt_model_config_t *ckpt, const bt_model_config_t *now,
                          const char *const *given, int ngiven, char *out, size_t outlen);

/* The model of a job resuming from a checkpoint whose model configuration
 * is the canonical text `ckpt_text`: the checkpoint's model, with the model
 * flags the user gave (names and values, in order) applied over it,
 * resolved with bt_config_finish (cfg's run part counts: backend, math),
 * then checked with bt_config_model_match. On success cfg->model is that
 * model (the data file at the path that reads now). Returns 0; BT_EFORMAT
 * for unreadable text; BT_EARG for a bad flag or an unreadable data file;
 * BT_ECONFIG when the checkpoint holds another model. err gets one line
 * without a command prefix. Nothing is spawned or allocated before it, so
 * every refusal is an exit 2 before anything starts. */
int bt_config_match_checkpoint(bt_config_t *cfg, const char *ckpt_text, const char *const *given_names,
                               const char *const *given_values, int ngiven, char *err, size_t errlen);

/* Run extras: settings owned by other modules. Set replaces an existing key. */
int bt_config_extra_set(bt_config_t *c, const char *key, const char *value);
/* The value of an extra, or NULL. */
const char *bt_config_extra_get(const bt_config_t *c, const char *key);

#endif
