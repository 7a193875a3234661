/* config.c - see config.h. */
#include "common/config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/crc.h"
#include "common/error.h"
#include "common/file.h"
#include "common/frame.h"
#include "common/model.h"
#include "common/parse.h"

#define OFF(f) offsetof(bt_config_t, f)
#define SZ(f) sizeof(((bt_config_t *)0)->f)

/* Ranges are generous; the memory estimate is what refuses a model too big
 * for this machine. Sizes stay below 2^31 elements per tensor so every
 * kernel's int sizes hold. */
static const bt_config_flag_t g_flags[] = {
    {"layers", BT_CONFIG_MODEL, BT_FLAG_INT, OFF(model.layers), 0, "4", 1, 4096, 0, 1,
     "blocks L (the model has L+2 layers: embed, L blocks, head)"},
    {"dim", BT_CONFIG_MODEL, BT_FLAG_INT, OFF(model.dim), 0, "128", 1, 16384, 0, 1,
     "model width D"},
    {"context", BT_CONFIG_MODEL, BT_FLAG_INT, OFF(model.context), 0, "4", 1, 256, 0, 1,
     "K previous bytes summed by the embedding"},
    {"microbatches", BT_CONFIG_MODEL, BT_FLAG_INT, OFF(model.microbatches), 0, "4", 1, 4096, 0,
     1, "micro-batches M per step"},
    {"mb-tokens", BT_CONFIG_MODEL, BT_FLAG_INT, OFF(model.mb_tokens), 0, "128", 1, 1 << 20, 0, 1,
     "tokens T per micro-batch"},
    {"seed", BT_CONFIG_MODEL, BT_FLAG_I64, OFF(model.seed), 0, "1", 0, 9.2e18, 0, 1,
     "seed of initialisation and data"},
    {"data", BT_CONFIG_MODEL, BT_FLAG_STRING, OFF(model.data), SZ(model.data), "synthetic", 0, 0,
     0, 1, "'synthetic' (a stream with a known entropy rate) or a file path"},
    {"data-size", BT_CONFIG_MODEL, BT_FLAG_I64, OFF(model.data_size), 0, "0", 0, 9.2e18, 0, 0,
     "size of the data file (derived)"},
    {"data-crc", BT_CONFIG_MODEL, BT_FLAG_I64, OFF(model.data_crc), 0, "0", 0, 4294967295.0, 0, 0,
     "CRC-32 of the data file (derived)"},
    {"lr", BT_CONFIG_MODEL, BT_FLAG_DOUBLE, OFF(model.lr), 0, "0.003", 0, 10, 1, 1,
     "peak learning rate"},
    {"warmup", BT_CONFIG_MODEL, BT_FLAG_I64, OFF(model.warmup), 0, "20", 0, 1e12, 0, 1,
     "linear warm-up steps"},
    {"lr-decay-steps", BT_CONFIG_MODEL, BT_FLAG_I64, OFF(model.lr_decay_steps), 0, "2000", 1,
     1e12, 0, 1, "cosine decay horizon in steps (fixed; the rate stays at lr/10 after it)"},
    {"beta1", BT_CONFIG_MODEL, BT_FLAG_DOUBLE, OFF(model.beta1), 0, "0.9", 0, 0.999999, 0, 1,
     "AdamW beta1"},
    {"beta2", BT_CONFIG_MODEL, BT_FLAG_DOUBLE, OFF(model.beta2), 0, "0.99", 0, 0.999999, 0, 1,
     "AdamW beta2"},
    {"eps", BT_CONFIG_MODEL, BT_FLAG_DOUBLE, OFF(model.eps), 0, "1e-08", 0, 1, 1, 1,
     "AdamW epsilon"},
    {"weight-decay", BT_CONFIG_MODEL, BT_FLAG_DOUBLE, OFF(model.weight_decay), 0, "0", 0, 10, 0,
     1, "AdamW decoupled weight decay (applied to every parameter)"},
    {"math", BT_CONFIG_MODEL, BT_FLAG_STRING, OFF(model.math), SZ(model.math), "fp32", 0, 0, 0, 1,
     "backend math mode: fp32 (tf32 allowed on cuda)"},
    {"backend", BT_CONFIG_RUN, BT_FLAG_STRING, OFF(run.backend), SZ(run.backend), "cpu", 0, 0, 0,
     1, "compute backend: cpu or cuda"},
    {"steps", BT_CONFIG_RUN, BT_FLAG_I64, OFF(run.steps), 0, "400", 1, 1e12, 0, 1,
     "optimizer steps to run (the total, counting resumed ones)"},
    {"stages", BT_CONFIG_RUN, BT_FLAG_INT, OFF(run.stages), 0, "1", 1, BT_MAX_STAGES, 0, 1,
     "pipeline stages (worker processes)"},
    {"chunks", BT_CONFIG_RUN, BT_FLAG_INT, OFF(run.chunks), 0, "1", 1, 64, 0, 1,
     "chunks (virtual stages) per stage"},
    {"schedule", BT_CONFIG_RUN, BT_FLAG_STRING, OFF(run.schedule), SZ(run.schedule), "1f1b", 0, 0,
     0, 1, "pipeline schedule: gpipe, 1f1b, interleaved, zb-h1"},
    {"layout", BT_CONFIG_RUN, BT_FLAG_STRING, OFF(run.layout), SZ(run.layout), "", 0, 0, 0, 1,
     "layers per virtual stage, e.g. 2,3,1 (default: balanced by cost)"},
};
#define NFLAGS (sizeof g_flags / sizeof g_flags[0])

const bt_config_flag_t *bt_config_flags(size_t *n) {
  *n = NFLAGS;
  return g_flags;
}

static const bt_config_flag_t *find_flag(const char *name) {
  if (name[0] == '-' && name[1] == '-') name += 2;
  for (size_t i = 0; i < NFLAGS; i++)
    if (!strcmp(g_flags[i].name, name)) return &g_flags[i];
  return NULL;
}

/* Stores `value` into the field of f; BT_EARG with a reason on bad text. */
static int set_field(bt_config_t *c, const bt_config_flag_t *f, const char *value, char *err,
                     size_t errlen) {
  char *p = (char *)c + f->offset;
  int rc = 0;
  switch (f->type) {
  case BT_FLAG_INT:
    rc = bt_parse_int(value, (int)f->lo, (int)f->hi, (int *)p);
    if (rc)
      bt_errf(err, errlen, "--%s: expected a whole number in [%d, %d], got '%s'", f->name,
              (int)f->lo, (int)f->hi, value);
    break;
  case BT_FLAG_I64:
    rc = bt_parse_i64(value, (int64_t)f->lo, (int64_t)f->hi, (int64_t *)p);
    if (rc)
      bt_errf(err, errlen, "--%s: expected a whole number in [%lld, %lld], got '%s'", f->name,
              (long long)f->lo, (long long)f->hi, value);
    break;
  case BT_FLAG_DOUBLE: {
    double v;
    rc = bt_parse_double(value, f->lo, f->hi, &v);
    if (!rc && f->positive && !(v > 0)) rc = BT_EARG;
    if (rc)
      bt_errf(err, errlen, "--%s: expected a number in %s%g, %g], got '%s'", f->name,
              f->positive ? "(" : "[", f->lo, f->hi, value);
    else
      *(double *)p = v;
    break;
  }
  case BT_FLAG_STRING:
    /* A newline would break the line-per-key text form. */
    if (strlen(value) >= f->size || strchr(value, '\n')) {
      bt_errf(err, errlen, "--%s: value too long or not one line", f->name);
      rc = BT_EARG;
    } else {
      snprintf(p, f->size, "%s", value);
    }
    break;
  default:
    rc = BT_EARG;
  }
  return rc;
}

void bt_config_defaults(bt_config_t *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < NFLAGS; i++) set_field(c, &g_flags[i], g_flags[i].def, NULL, 0);
}

int bt_config_has_flag(int part, const char *flag) {
  const bt_config_flag_t *f = find_flag(flag);
  return f && f->is_flag && (f->part & part);
}

int bt_config_flag(bt_config_t *c, int part, const char *flag, const char *value, char *err,
                   size_t errlen) {
  const bt_config_flag_t *f = find_flag(flag);
  if (!f || !f->is_flag || !(f->part & part)) {
    bt_errf(err, errlen, "unknown option '%s'", flag);
    return BT_EARG;
  }
  if (!value) {
    bt_errf(err, errlen, "--%s needs a value", f->name);
    return BT_EARG;
  }
  return set_field(c, f, value, err, errlen);
}

int bt_config_model_flag(bt_config_t *c, const char *flag, const char *value, char *err,
                         size_t errlen) {
  return bt_config_flag(c, BT_CONFIG_MODEL, flag, value, err, errlen);
}

void bt_config_help(int part, char *out, size_t outlen) {
  size_t len = 0;
  if (!outlen) return;
  out[0] = 0;
  for (size_t i = 0; i < NFLAGS; i++) {
    const bt_config_flag_t *f = &g_flags[i];
    if (!f->is_flag || !(f->part & part)) continue;
    char opt[64];
    snprintf(opt, sizeof opt, "--%s %s", f->name, f->type == BT_FLAG_STRING ? "S" : "N");
    int n = snprintf(out + len, outlen - len, "  %-22s %s (default %s)\n", opt, f->help,
                     f->def[0] ? f->def : "none");
    if (n < 0 || (size_t)n >= outlen - len) return;
    len += (size_t)n;
  }
}

/* ---- memory ---- */

uint64_t bt_config_physical_bytes(void) {
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || size <= 0) return UINT64_MAX;
  return (uint64_t)pages * (uint64_t)size;
}

uint64_t bt_config_memory_bytes(const bt_model_config_t *m) {
  /* In double: a silly --dim must give a huge estimate, not a wrapped one. */
  double params = (double)bt_model_param_count(m);
  double act = (double)bt_model_activation_floats(m, 0, m->layers + 1) * m->microbatches;
  /* A data file is read into memory whole (common/data.c). */
  double bytes = 4.0 * (4.0 * params + act) + (double)m->data_size;
  return bytes >= 1.8e19 ? UINT64_MAX : (uint64_t)bytes;
}

int bt_config_validate(const bt_config_t *c, char *err, size_t errlen) {
  const bt_model_config_t *m = &c->model;
  /* Re-check every number: a config read from text bypassed the flags. */
  for (size_t i = 0; i < NFLAGS; i++) {
    const bt_config_flag_t *f = &g_flags[i];
    const char *p = (const char *)c + f->offset;
    double v;
    if (f->type == BT_FLAG_INT) v = *(const int *)p;
    else if (f->type == BT_FLAG_I64) v = (double)*(const int64_t *)p;
    else if (f->type == BT_FLAG_DOUBLE) v = *(const double *)p;
    else continue;
    if (!(v >= f->lo && v <= f->hi) || (f->positive && !(v > 0))) {
      bt_errf(err, errlen, "--%s: %g is out of range [%g, %g]", f->name, v, f->lo, f->hi);
      return BT_EARG;
    }
  }
  if (!m->data[0]) {
    bt_errf(err, errlen, "--data: empty path");
    return BT_EARG;
  }
  if (strcmp(m->math, "fp32") && strcmp(m->math, "tf32")) {
    bt_errf(err, errlen, "--math: expected fp32 or tf32, got '%s'", m->math);
    return BT_EARG;
  }
  if (!strcmp(m->math, "tf32") && strcmp(c->run.backend, "cuda")) {
    bt_errf(err, errlen, "--math tf32 needs --backend cuda");
    return BT_EARG;
  }
  if (strcmp(c->run.backend, "cpu") && strcmp(c->run.backend, "cuda")) {
    bt_errf(err, errlen, "--backend: expected cpu or cuda, got '%s'", c->run.backend);
    return BT_EARG;
  }
  /* Kernel sizes are ints: the largest per-micro-batch tensor must fit. */
  double biggest = (double)m->mb_tokens * 4.0 * m->dim;
  if ((double)m->mb_tokens * 256.0 > biggest) biggest = (double)m->mb_tokens * 256.0;
  if ((double)m->context * 256.0 * m->dim > biggest) biggest = (double)m->context * 256.0 * m->dim;
  if (biggest > (double)INT_MAX) {
    bt_errf(err, errlen, "--dim/--mb-tokens/--context: a tensor of %.0f elements is too large",
            biggest);
    return BT_EARG;
  }
  return 0;
}

static int resolve_data(bt_model_config_t *m, char *err, size_t errlen) {
  if (!strcmp(m->data, "synthetic")) {
    m->data_size = 0;
    m->data_crc = 0;
    return 0;
  }
  char abs[PATH_MAX];
  if (!realpath(m->data, abs)) {
    bt_errf(err, errlen, "--data %s: %s", m->data, strerror(errno));
    return BT_EARG;
  }
  uint32_t crc;
  uint64_t size;
  int rc = bt_file_crc32(abs, BT_FILE_DATA, &crc, &size);
  if (rc) {
    bt_errf(err, errlen, "--data %s: %s", m->data, bt_strerror(rc));
    return BT_EARG;
  }
  uint64_t need = (uint64_t)m->context + (uint64_t)m->mb_tokens + 1;
  if (size < need) {
    bt_errf(err, errlen, "--data %s: %llu bytes, need at least %llu (context + mb-tokens + 1)",
            m->data, (unsigned long long)size, (unsigned long long)need);
    return BT_EARG;
  }
  if (strlen(abs) >= sizeof m->data) {
    bt_errf(err, errlen, "--data: path too long");
    return BT_EARG;
  }
  snprintf(m->data, sizeof m->data, "%s", abs);
  m->data_size = (int64_t)size;
  m->data_crc = crc;
  return 0;
}

int bt_config_finish(bt_config_t *c, char *err, size_t errlen) {
  int rc = bt_config_validate(c, err, errlen);
  if (rc) return rc;
  /* The data file first: its size is part of the memory estimate. */
  if ((rc = resolve_data(&c->model, err, errlen))) return rc;
  uint64_t need = bt_config_memory_bytes(&c->model), have = bt_config_physical_bytes();
  if (need > have) {
    bt_errf(err, errlen,
            "the model needs about %.3g GiB (parameters, gradients, AdamW state, activations) "
            "but this machine has %.3g GiB",
            (double)need / 1073741824.0, (double)have / 1073741824.0);
    return BT_EARG;
  }
  return 0;
}

/* ---- canonical text ---- */

/* The shortest %.Ng that reads back to the same double. */
static void fmt_double(double v, char *out, size_t len) {
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(out, len, "%.*g", prec, v);
    if (strtod(out, NULL) == v) return;
  }
}

static void fmt_value(const bt_config_t *c, const bt_config_flag_t *f, char *out, size_t len) {
  const char *p = (const char *)c + f->offset;
  switch (f->type) {
  case BT_FLAG_INT: snprintf(out, len, "%d", *(const int *)p); break;
  case BT_FLAG_I64: snprintf(out, len, "%lld", (long long)*(const int64_t *)p); break;
  case BT_FLAG_DOUBLE: fmt_double(*(const double *)p, out, len); break;
  default: snprintf(out, len, "%s", p); break;
  }
}

/* Orders "key=value" lines by key: comparing whole lines would put
 * "data-size=" before "data=" ('-' sorts before '='). */
static int cmp_key(const void *a, const void *b) {
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  size_t xl = strcspn(x, "="), yl = strcspn(y, "=");
  int c = strncmp(x, y, xl < yl ? xl : yl);
  if (c) return c;
  return xl < yl ? -1 : xl > yl;
}

size_t bt_config_to_text(const bt_config_t *c, int part, char *out, size_t outlen) {
  /* Lines are built first, then sorted: the table is in help order. */
  char lines[NFLAGS + BT_CONFIG_EXTRA_MAX][BT_CONFIG_PATH_MAX + 64];
  const char *sorted[NFLAGS + BT_CONFIG_EXTRA_MAX];
  size_t n = 0;
  for (size_t i = 0; i < NFLAGS; i++) {
    if (!(g_flags[i].part & part)) continue;
    char v[BT_CONFIG_PATH_MAX];
    fmt_value(c, &g_flags[i], v, sizeof v);
    snprintf(lines[n], sizeof lines[n], "%s=%s", g_flags[i].name, v);
    sorted[n] = lines[n];
    n++;
  }
  if (part & BT_CONFIG_RUN)
    for (int i = 0; i < c->run.nextra && i < BT_CONFIG_EXTRA_MAX; i++) {
      snprintf(lines[n], sizeof lines[n], "%s", c->run.extra[i]);
      sorted[n] = lines[n];
      n++;
    }
  qsort(sorted, n, sizeof sorted[0], cmp_key);
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(sorted[i]);
    if (out && len + l + 1 < outlen) {
      memcpy(out + len, sorted[i], l);
      out[len + l] = '\n';
    }
    len += l + 1;
  }
  if (out && outlen) out[len < outlen ? len : outlen - 1] = 0;
  return len;
}

int bt_config_extra_set(bt_config_t *c, const char *key, const char *value) {
  size_t kl = strlen(key);
  if (!kl || strchr(key, '=') || strchr(key, '\n') || strchr(value, '\n') || find_flag(key) ||
      kl + strlen(value) + 2 > BT_CONFIG_EXTRA_LEN)
    return BT_EARG;
  int slot = c->run.nextra;
  for (int i = 0; i < c->run.nextra; i++)
    if (!strncmp(c->run.extra[i], key, kl) && c->run.extra[i][kl] == '=') slot = i;
  if (slot == BT_CONFIG_EXTRA_MAX) return BT_EARG;
  char *dst = c->run.extra[slot];
  memcpy(dst, key, kl);
  dst[kl] = '=';
  memcpy(dst + kl + 1, value, strlen(value) + 1); /* fits: checked above */
  if (slot == c->run.nextra) c->run.nextra++;
  return 0;
}

const char *bt_config_extra_get(const bt_config_t *c, const char *key) {
  size_t kl = strlen(key);
  for (int i = 0; i < c->run.nextra; i++)
    if (!strncmp(c->run.extra[i], key, kl) && c->run.extra[i][kl] == '=')
      return c->run.extra[i] + kl + 1;
  return NULL;
}

int bt_config_from_text(bt_config_t *c, const char *text, char *err, size_t errlen) {
  bt_config_defaults(c);
  int lineno = 0;
  const char *p = text;
  while (*p) {
    const char *nl = strchr(p, '\n');
    size_t len = nl ? (size_t)(nl - p) : strlen(p);
    lineno++;
    char line[BT_CONFIG_PATH_MAX + 64];
    if (len >= sizeof line) {
      bt_errf(err, errlen, "config line %d: too long", lineno);
      return BT_EFORMAT;
    }
    memcpy(line, p, len);
    line[len] = 0;
    p += len + (nl ? 1 : 0);
    if (!len) continue;
    char *eq = strchr(line, '=');
    if (!eq || eq == line) {
      bt_errf(err, errlen, "config line %d: expected key=value, got '%s'", lineno, line);
      return BT_EFORMAT;
    }
    *eq = 0;
    const bt_config_flag_t *f = find_flag(line);
    if (f) {
      char why[256];
      if (set_field(c, f, eq + 1, why, sizeof why)) {
        bt_errf(err, errlen, "config line %d: %s", lineno, why);
        return BT_EFORMAT;
      }
    } else if (bt_config_extra_set(c, line, eq + 1)) {
      bt_errf(err, errlen, "config line %d: cannot keep setting '%s'", lineno, line);
      return BT_EFORMAT;
    }
  }
  return 0;
}

int bt_config_model_diff(const bt_model_config_t *a, const bt_model_config_t *b, char *out,
                         size_t outlen) {
  bt_config_t ca, cb;
  memset(&ca, 0, sizeof ca);
  memset(&cb, 0, sizeof cb);
  ca.model = *a;
  cb.model = *b;
  int ndiff = 0;
  size_t len = 0;
  if (out && outlen) out[0] = 0;
  for (size_t i = 0; i < NFLAGS; i++) {
    const bt_config_flag_t *f = &g_flags[i];
    if (f->part != BT_CONFIG_MODEL) continue;
    char va[BT_CONFIG_PATH_MAX], vb[BT_CONFIG_PATH_MAX];
    fmt_value(&ca, f, va, sizeof va);
    fmt_value(&cb, f, vb, sizeof vb);
    if (!strcmp(va, vb)) continue;
    ndiff++;
    if (out && len < outlen) {
      int n = snprintf(out + len, outlen - len, "%s%s: %s vs %s", ndiff > 1 ? "; " : "", f->name,
                       va, vb);
      if (n > 0) len += (size_t)n;
    }
  }
  return ndiff;
}

/* ---- does a checkpoint belong to this model and data ---- */

static int was_given(const char *key, const char *const *given, int ngiven) {
  for (int i = 0; given && i < ngiven; i++) {
    const char *n = given[i];
    if (n[0] == '-' && n[1] == '-') n += 2;
    if (!strcmp(n, key)) return 1;
  }
  return 0;
}

/* Appends "; "-joined clauses to out. */
static void clause(char *out, size_t outlen, size_t *len, int n, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void clause(char *out, size_t outlen, size_t *len, int n, const char *fmt, ...) {
  if (!out || *len >= outlen) return;
  int w = n > 1 ? snprintf(out + *len, outlen - *len, "; ") : 0;
  if (w > 0) *len += (size_t)w;
  if (*len >= outlen) return;
  va_list ap;
  va_start(ap, fmt);
  w = vsnprintf(out + *len, outlen - *len, fmt, ap);
  va_end(ap);
  if (w > 0) *len += (size_t)w;
}

int bt_config_model_match(const bt_model_config_t *ckpt, const bt_model_config_t *now,
                          const char *const *given, int ngiven, char *out, size_t outlen) {
  bt_config_t ca, cb;
  memset(&ca, 0, sizeof ca);
  memset(&cb, 0, sizeof cb);
  ca.model = *ckpt;
  cb.model = *now;
  int n = 0;
  size_t len = 0;
  if (out && outlen) out[0] = 0;
  for (size_t i = 0; i < NFLAGS; i++) {
    const bt_config_flag_t *f = &g_flags[i];
    if (f->part != BT_CONFIG_MODEL || !strcmp(f->name, "data") || !strcmp(f->name, "data-size") ||
        !strcmp(f->name, "data-crc"))
      continue;
    char va[BT_CONFIG_PATH_MAX], vb[BT_CONFIG_PATH_MAX];
    fmt_value(&ca, f, va, sizeof va);
    fmt_value(&cb, f, vb, sizeof vb);
    if (!strcmp(va, vb)) continue;
    n++;
    if (was_given(f->name, given, ngiven))
      clause(out, outlen, &len, n, "--%s: the checkpoint has %s, the command line says %s", f->name, va, vb);
    else
      clause(out, outlen, &len, n, "%s: the checkpoint has %s, now %s", f->name, va, vb);
  }
  /* The data: by content. A path is only how the file is reached today. */
  int syn_a = !strcmp(ckpt->data, "synthetic"), syn_b = !strcmp(now->data, "synthetic");
  if (syn_a != syn_b) {
    n++;
    clause(out, outlen, &len, n, "--data: the checkpoint has %s, %s %s", ckpt->data,
           was_given("data", given, ngiven) ? "the command line says" : "now", now->data);
  } else if (!syn_a && (ckpt->data_size != now->data_size || ckpt->data_crc != now->data_crc)) {
    n++;
    clause(out, outlen, &len, n,
           "--data: the checkpoint was trained on %lld bytes with CRC-32 %08llx (%s); %s now holds %lld bytes "
           "with CRC-32 %08llx",
           (long long)ckpt->data_size, (unsigned long long)ckpt->data_crc, ckpt->data, now->data,
           (long long)now->data_size, (unsigned long long)now->data_crc);
  }
  return n;
}

int bt_config_match_checkpoint(bt_config_t *cfg, const char *ckpt_text, const char *const *given_names,
                               const char *const *given_values, int ngiven, char *err, size_t errlen) {
  bt_config_t theirs, mine;
  char why[1024] = "";
  if (bt_config_from_text(&theirs, ckpt_text ? ckpt_text : "", why, sizeof why)) {
    bt_errf(err, errlen, "unreadable model configuration: %s", why);
    return BT_EFORMAT;
  }
  mine = *cfg;
  mine.model = theirs.model;
  for (int i = 0; i < ngiven; i++)
    if (bt_config_model_flag(&mine, given_names[i], given_values[i], err, errlen)) return BT_EARG;
  /* Resolves the data file again: its size and CRC tell whether it is
   * still the file the checkpoint was trained on. */
  if (bt_config_finish(&mine, err, errlen)) return BT_EARG;
  char diff[2048];
  if (bt_config_model_match(&theirs.model, &mine.model, given_names, ngiven, diff, sizeof diff)) {
    bt_errf(err, errlen, "%s", diff);
    return BT_ECONFIG;
  }
  cfg->model = mine.model;
  return 0;
}
