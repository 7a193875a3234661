/* manifest.c - MANIFEST.json of a step: its writer and a strict reader.
 *
 * The manifest is what makes a step real: the shard list (names relative to
 * the step directory, so a copied step still verifies, with sizes and
 * whole-file CRCs), the layer-to-shard map and the configuration text. The
 * reader accepts exactly the shape the writer produces (keys in order,
 * nothing missing or extra, integers only) and no other JSON: it is not a
 * JSON library and a hand-edited manifest is a corrupt one.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/internal.h"
#include "common/json.h"

#define MANIFEST_MAX (256u << 20)

void bt_ckpt_manifest_free(bt_ckpt_manifest_t *m) {
  bt_ckpt_meta_free(&m->meta);
  free(m->shards);
  free(m->layer_shard);
  memset(m, 0, sizeof *m);
  m->lineage.parent_step = -1;
}

int bt_ckpt_manifest_format(const bt_ckpt_manifest_t *m, char **text, size_t *len) {
  bt_json_t j;
  bt_json_init(&j);
  bt_json_obj_begin(&j);
  bt_json_kstr(&j, "format", "baton-checkpoint");
  bt_json_kint(&j, "version", m->version);
  bt_json_kint(&j, "step", m->meta.step);
  bt_json_kint(&j, "stages", m->meta.stages);
  bt_json_kint(&j, "chunks", m->meta.chunks);
  bt_json_kint(&j, "layer_count", m->meta.layer_count);
  bt_json_key(&j, "seed");
  bt_json_uint(&j, m->meta.seed);
  bt_json_kint(&j, "adam_t", m->meta.adam_t);
  bt_json_kstr(&j, "model_config", m->meta.model_config ? m->meta.model_config : "");
  bt_json_kstr(&j, "run_settings", m->meta.run_settings ? m->meta.run_settings : "");
  /* Lineage (lineage.c); a commit without one keeps the older shape. */
  if (m->lineage.job[0] || m->lineage.parent_step >= 0) {
    bt_json_kstr(&j, "job", m->lineage.job);
    bt_json_key(&j, "parent");
    if (m->lineage.parent_step < 0) {
      bt_json_null(&j);
    } else {
      bt_json_obj_begin(&j);
      bt_json_kstr(&j, "job", m->lineage.parent_job);
      bt_json_kint(&j, "step", m->lineage.parent_step);
      bt_json_obj_end(&j);
    }
  }
  bt_json_key(&j, "shards");
  bt_json_arr_begin(&j);
  for (uint32_t i = 0; i < m->nshards; i++) {
    bt_json_obj_begin(&j);
    bt_json_kint(&j, "stage", m->shards[i].stage);
    bt_json_kstr(&j, "file", m->shards[i].file);
    bt_json_key(&j, "size");
    bt_json_uint(&j, m->shards[i].size);
    bt_json_kint(&j, "crc", m->shards[i].crc);
    bt_json_obj_end(&j);
  }
  bt_json_arr_end(&j);
  bt_json_key(&j, "layers");
  bt_json_arr_begin(&j);
  for (uint32_t l = 0; l < m->meta.layer_count; l++) bt_json_int(&j, m->layer_shard[l]);
  bt_json_arr_end(&j);
  bt_json_obj_end(&j);
  int rc = bt_json_error(&j);
  if (rc == 0) {
    /* A final newline, so `cat MANIFEST.json` ends its line. */
    *len = j.len + 1;
    *text = malloc(j.len + 2);
    if (*text) {
      memcpy(*text, bt_json_cstr(&j), j.len);
      memcpy(*text + j.len, "\n", 2);
    } else {
      rc = -ENOMEM;
    }
  }
  bt_json_free(&j);
  return rc;
}

/* ---- the strict reader ---- */

typedef struct {
  const char *base, *p, *end;
  char *err;
  size_t errlen;
  int failed;
} rd_t;

__attribute__((format(printf, 2, 3))) static int fail(rd_t *r, const char *fmt, ...) {
  if (!r->failed && r->err && r->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->errlen, fmt, ap);
    va_end(ap);
  }
  r->failed = 1;
  return BT_EFORMAT;
}

static void ws(rd_t *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) r->p++;
}

static int expect(rd_t *r, char c) {
  ws(r);
  if (r->p >= r->end || *r->p != c) return fail(r, "expected '%c' at byte %td", c, r->p - r->base);
  r->p++;
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A JSON string into a malloc'ed buffer. */
static int str(rd_t *r, char **out) {
  ws(r);
  if (r->p >= r->end || *r->p != '"') return fail(r, "expected a string");
  r->p++;
  size_t cap = 64, n = 0;
  char *b = malloc(cap);
  if (!b) return -ENOMEM;
  for (;;) {
    if (r->p >= r->end) {
      free(b);
      return fail(r, "unterminated string");
    }
    unsigned char c = (unsigned char)*r->p++;
    if (c == '"') break;
    char tmp[4];
    size_t k = 1;
    if (c < 0x20) {
      free(b);
      return fail(r, "control character in a string");
    }
    if (c != '\\') {
      tmp[0] = (char)c;
    } else {
      if (r->p >= r->end) {
        free(b);
        return fail(r, "unterminated escape");
      }
      char e = *r->p++;
      switch (e) {
      case '"': tmp[0] = '"'; break;
      case '\\': tmp[0] = '\\'; break;
      case '/': tmp[0] = '/'; break;
      case 'n': tmp[0] = '\n'; break;
      case 'r': tmp[0] = '\r'; break;
      case 't': tmp[0] = '\t'; break;
      case 'b': tmp[0] = '\b'; break;
      case 'f': tmp[0] = '\f'; break;
      case 'u': {
        unsigned v = 0;
        for (int i = 0; i < 4; i++) {
          int h = r->p < r->end ? hexval(*r->p++) : -1;
          if (h < 0) {
            free(b);
            return fail(r, "bad \\u escape");
          }
          v = v * 16 + (unsigned)h;
        }
        if (v == 0 || (v >= 0xd800 && v <= 0xdfff)) {
          free(b);
          return fail(r, "unsupported \\u escape");
        }
        if (v < 0x80) {
          tmp[0] = (char)v;
        } else if (v < 0x800) {
          tmp[0] = (char)(0xc0 | (v >> 6));
          tmp[1] = (char)(0x80 | (v & 0x3f));
          k = 2;
        } else {
          tmp[0] = (char)(0xe0 | (v >> 12));
          tmp[1] = (char)(0x80 | ((v >> 6) & 0x3f));
          tmp[2] = (char)(0x80 | (v & 0x3f));
          k = 3;
        }
        break;
      }
      default:
        free(b);
        return fail(r, "bad escape '\\%c'", e);
      }
    }
    if (n + k + 1 > cap) {
      cap *= 2;
      char *nb = realloc(b, cap);
      if (!nb) {
        free(b);
        return -ENOMEM;
      }
      b = nb;
    }
    memcpy(b + n, tmp, k);
    n += k;
  }
  b[n] = 0;
  *out = b;
  return 0;
}

static int key(rd_t *r, const char *name) {
  char *k = NULL;
  int rc = str(r, &k);
  if (rc < 0) return rc;
  if (strcmp(k, name) != 0) {
    rc = fail(r, "expected key \"%s\", found \"%.40s\"", name, k);
    free(k);
    return rc;
  }
  free(k);
  return expect(r, ':');
}

/* An integer in [lo, hi], written as JSON writes integers (no leading
 * zeros, no fraction or exponent). */
static int num(rd_t *r, const char *what, int64_t lo, uint64_t hi, int64_t *sv, uint64_t *uv) {
  ws(r);
  int neg = 0;
  if (r->p < r->end && *r->p == '-') {
    neg = 1;
    r->p++;
  }
  if (r->p >= r->end || *r->p < '0' || *r->p > '9') return fail(r, "%s: expected an integer", what);
  if (*r->p == '0' && r->p + 1 < r->end && r->p[1] >= '0' && r->p[1] <= '9')
    return fail(r, "%s: leading zero", what);
  uint64_t v = 0;
  while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
    unsigned d = (unsigned)(*r->p++ - '0');
    if (v > (UINT64_MAX - d) / 10) return fail(r, "%s: out of range", what);
    v = v * 10 + d;
  }
  if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E'))
    return fail(r, "%s: not an integer", what);
  if (neg) {
    if (lo >= 0 || v > (uint64_t)INT64_MAX + 1 || -(int64_t)(v - 1) - 1 < lo)
      return fail(r, "%s: out of range", what);
    if (sv) *sv = -(int64_t)(v - 1) - 1;
    if (uv) return fail(r, "%s: out of range", what);
    return 0;
  }
  if (v > hi) return fail(r, "%s: out of range", what);
  if (sv) *sv = (int64_t)v;
  if (uv) *uv = v;
  return 0;
}

static int knum_i(rd_t *r, const char *k, int64_t lo, int64_t hi, int64_t *out) {
  int rc = key(r, k);
  if (rc < 0) return rc;
  if ((rc = num(r, k, lo, (uint64_t)hi, out, NULL)) < 0) return rc;
  return 0;
}

static int comma(rd_t *r) { return expect(r, ','); }

/* 1 when the next key is `name` (nothing consumed). */
static int next_key_is(rd_t *r, const char *name) {
  ws(r);
  size_t n = strlen(name);
  return r->end - r->p > (ptrdiff_t)(n + 1) && r->p[0] == '"' && !memcmp(r->p + 1, name, n) &&
         r->p[n + 1] == '"';
}

/* A job id ("" or 32 lowercase hex digits) into out. */
static int job_id(rd_t *r, const char *what, char out[BT_CKPT_JOB_LEN + 1]) {
  char *s = NULL;
  int rc = str(r, &s);
  if (rc < 0) return rc;
  if (s[0] && !bt_ckpt_job_valid(s)) {
    free(s);
    return fail(r, "%s: not a job id", what);
  }
  snprintf(out, BT_CKPT_JOB_LEN + 1, "%s", s);
  free(s);
  return 0;
}

/* "job":"…","parent":null|{"job":"…","step":N} — absent in manifests
 * written before lineage existed (then job "" and no parent). */
static int lineage(rd_t *r, bt_ckpt_lineage_t *l) {
  int rc;
  if (!next_key_is(r, "job")) return 0;
  if ((rc = key(r, "job")) < 0 || (rc = job_id(r, "job", l->job)) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = key(r, "parent")) < 0) return rc;
  ws(r);
  if (r->end - r->p >= 4 && !memcmp(r->p, "null", 4)) {
    r->p += 4;
    return comma(r);
  }
  if ((rc = expect(r, '{')) < 0 || (rc = key(r, "job")) < 0 ||
      (rc = job_id(r, "parent job", l->parent_job)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "step", 0, INT64_MAX, &l->parent_step)) < 0) return rc;
  if ((rc = expect(r, '}')) < 0) return rc;
  return comma(r);
}

static int parse(rd_t *r, bt_ckpt_manifest_t *m) {
  int rc;
  int64_t v;
  char *s = NULL;
  if ((rc = expect(r, '{')) < 0) return rc;
  if ((rc = key(r, "format")) < 0 || (rc = str(r, &s)) < 0) return rc;
  if (strcmp(s, "baton-checkpoint") != 0) {
    free(s);
    return fail(r, "format is not baton-checkpoint");
  }
  free(s);
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "version", 0, INT32_MAX, &v)) < 0) return rc;
  m->version = (int)v;
  if (v != BT_CKPT_FORMAT_VERSION) {
    fail(r, "format version %lld, this baton reads %d", (long long)v, BT_CKPT_FORMAT_VERSION);
    return BT_EVERSION;
  }
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "step", 0, INT64_MAX, &m->meta.step)) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "stages", 1, BT_MAX_STAGES, &v)) < 0) return rc;
  m->meta.stages = (uint32_t)v;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "chunks", 0, UINT32_MAX, &v)) < 0) return rc;
  m->meta.chunks = (uint32_t)v;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "layer_count", 1, BT_CKPT_MAX_LAYERS, &v)) < 0)
    return rc;
  m->meta.layer_count = (uint32_t)v;
  if ((rc = comma(r)) < 0 || (rc = key(r, "seed")) < 0 ||
      (rc = num(r, "seed", 0, UINT64_MAX, NULL, &m->meta.seed)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "adam_t", INT64_MIN, INT64_MAX, &m->meta.adam_t)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = key(r, "model_config")) < 0 ||
      (rc = str(r, &m->meta.model_config)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = key(r, "run_settings")) < 0 ||
      (rc = str(r, &m->meta.run_settings)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = lineage(r, &m->lineage)) < 0) return rc;
  if ((rc = key(r, "shards")) < 0 || (rc = expect(r, '[')) < 0) return rc;
  m->shards = calloc(m->meta.stages, sizeof *m->shards);
  if (!m->shards) return -ENOMEM;
  for (uint32_t i = 0; i < m->meta.stages; i++) {
    bt_ckpt_shard_info_t *sh = &m->shards[i];
    if (i > 0 && (rc = comma(r)) < 0) return rc;
    if ((rc = expect(r, '{')) < 0) return rc;
    if ((rc = knum_i(r, "stage", 0, (int64_t)m->meta.stages - 1, &v)) < 0) return rc;
    sh->stage = (uint32_t)v;
    if ((rc = comma(r)) < 0 || (rc = key(r, "file")) < 0 || (rc = str(r, &s)) < 0) return rc;
    /* Names are relative to the step directory: never a path elsewhere. */
    if (!s[0] || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..") ||
        strlen(s) >= sizeof sh->file) {
      free(s);
      return fail(r, "shard %u: bad file name", i);
    }
    snprintf(sh->file, sizeof sh->file, "%s", s);
    free(s);
    if ((rc = comma(r)) < 0 || (rc = key(r, "size")) < 0 ||
        (rc = num(r, "size", 0, UINT64_MAX, NULL, &sh->size)) < 0)
      return rc;
    if ((rc = comma(r)) < 0 || (rc = knum_i(r, "crc", 0, UINT32_MAX, &v)) < 0) return rc;
    sh->crc = (uint32_t)v;
    if ((rc = expect(r, '}')) < 0) return rc;
    for (uint32_t k = 0; k < i; k++)
      if (m->shards[k].stage == sh->stage || !strcmp(m->shards[k].file, sh->file))
        return fail(r, "shard %u: stage or file listed twice", i);
  }
  m->nshards = m->meta.stages;
  if ((rc = expect(r, ']')) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = key(r, "layers")) < 0 || (rc = expect(r, '[')) < 0) return rc;
  m->layer_shard = calloc(m->meta.layer_count, sizeof *m->layer_shard);
  if (!m->layer_shard) return -ENOMEM;
  for (uint32_t l = 0; l < m->meta.layer_count; l++) {
    if (l > 0 && (rc = comma(r)) < 0) return rc;
    if ((rc = num(r, "layers", 0, m->nshards - 1, &v, NULL)) < 0) return rc;
    m->layer_shard[l] = (uint32_t)v;
  }
  if ((rc = expect(r, ']')) < 0 || (rc = expect(r, '}')) < 0) return rc;
  ws(r);
  if (r->p != r->end) return fail(r, "trailing bytes after the manifest");
  return 0;
}

int bt_ckpt_manifest_read(const char *path, bt_ckpt_manifest_t *m, char *err, size_t errlen) {
  char *text = NULL;
  size_t len = 0;
  memset(m, 0, sizeof *m);
  m->lineage.parent_step = -1;
  if (err && errlen) err[0] = 0;
  int rc = bt_read_file(path, MANIFEST_MAX, &text, &len);
  if (rc < 0) {
    if (err) snprintf(err, errlen, "%s", bt_strerror(rc));
    return rc;
  }
  rd_t r = {.base = text, .p = text, .end = text + len, .err = err, .errlen = errlen};
  if (memchr(text, 0, len)) rc = fail(&r, "NUL byte in the manifest");
  if (rc == 0) rc = parse(&r, m);
  if (rc < 0) bt_ckpt_manifest_free(m);
  free(text);
  return rc;
}
