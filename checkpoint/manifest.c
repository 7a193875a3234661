/* manifest.c - MANIFEST.json of a step: its writer and a strict reader.
 *
 * The manifest is what makes a step real: the shard list (names relative to
 * the step directory, so a copied step still verifies, with sizes and
 * whole-file CRCs), the layer-to-shard map and the configuration text. The
 * reader (on the shared strict reader, common/jsonread.h) accepts exactly
 * the shape the writer produces (keys in order, nothing missing or extra,
 * integers only) and no other JSON: a hand-edited manifest is a corrupt one.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/internal.h"
#include "common/file.h"
#include "common/json.h"
#include "common/jsonread.h"

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

/* ---- the strict reader (on common/jsonread.h) ---- */

static int comma(bt_jr_t *r) { return bt_jr_expect(r, ','); }

static int knum_i(bt_jr_t *r, const char *k, int64_t lo, int64_t hi, int64_t *out) {
  int rc = bt_jr_key(r, k);
  return rc < 0 ? rc : bt_jr_int(r, k, lo, hi, out);
}

static int knum_u(bt_jr_t *r, const char *k, uint64_t *out) {
  int rc = bt_jr_key(r, k);
  return rc < 0 ? rc : bt_jr_u64(r, k, UINT64_MAX, out);
}

static int kstr(bt_jr_t *r, const char *k, char **out) {
  int rc = bt_jr_key(r, k);
  return rc < 0 ? rc : bt_jr_str_dup(r, out);
}

/* A job id ("" or 32 lowercase hex digits) into out. */
static int job_id(bt_jr_t *r, const char *what, char out[BT_CKPT_JOB_LEN + 1]) {
  char s[BT_CKPT_JOB_LEN + 2];
  int fits;
  int rc = bt_jr_str(r, s, sizeof s, &fits);
  if (rc < 0) return rc;
  if (!fits || (s[0] && !bt_ckpt_job_valid(s))) return bt_jr_fail(r, "%s: not a job id", what);
  memcpy(out, s, strlen(s) + 1); /* fits: at most BT_CKPT_JOB_LEN + 1 bytes */
  return 0;
}

/* "job":"…","parent":null|{"job":"…","step":N} — absent in manifests
 * written before lineage existed (then job "" and no parent). */
static int lineage(bt_jr_t *r, bt_ckpt_lineage_t *l) {
  int rc;
  if (!bt_jr_next_key_is(r, "job")) return 0;
  if ((rc = bt_jr_key(r, "job")) < 0 || (rc = job_id(r, "job", l->job)) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = bt_jr_key(r, "parent")) < 0) return rc;
  if (bt_jr_peek(r) == 'n') return bt_jr_literal(r, "null") < 0 ? BT_EFORMAT : comma(r);
  if ((rc = bt_jr_expect(r, '{')) < 0 || (rc = bt_jr_key(r, "job")) < 0 ||
      (rc = job_id(r, "parent job", l->parent_job)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "step", 0, INT64_MAX, &l->parent_step)) < 0) return rc;
  if ((rc = bt_jr_expect(r, '}')) < 0) return rc;
  return comma(r);
}

static int parse(bt_jr_t *r, bt_ckpt_manifest_t *m) {
  int rc;
  int64_t v;
  char *s = NULL;
  if ((rc = bt_jr_expect(r, '{')) < 0) return rc;
  if ((rc = kstr(r, "format", &s)) < 0) return rc;
  if (strcmp(s, "baton-checkpoint") != 0) {
    free(s);
    return bt_jr_fail(r, "format is not baton-checkpoint");
  }
  free(s);
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "version", 0, INT32_MAX, &v)) < 0) return rc;
  m->version = (int)v;
  if (v != BT_CKPT_FORMAT_VERSION) {
    bt_jr_fail(r, "format version %lld, this baton reads %d", (long long)v, BT_CKPT_FORMAT_VERSION);
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
  if ((rc = comma(r)) < 0 || (rc = knum_u(r, "seed", &m->meta.seed)) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = knum_i(r, "adam_t", INT64_MIN, INT64_MAX, &m->meta.adam_t)) < 0)
    return rc;
  if ((rc = comma(r)) < 0 || (rc = kstr(r, "model_config", &m->meta.model_config)) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = kstr(r, "run_settings", &m->meta.run_settings)) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = lineage(r, &m->lineage)) < 0) return rc;
  if ((rc = bt_jr_key(r, "shards")) < 0 || (rc = bt_jr_expect(r, '[')) < 0) return rc;
  m->shards = calloc(m->meta.stages, sizeof *m->shards);
  if (!m->shards) return -ENOMEM;
  for (uint32_t i = 0; i < m->meta.stages; i++) {
    bt_ckpt_shard_info_t *sh = &m->shards[i];
    if (i > 0 && (rc = comma(r)) < 0) return rc;
    if ((rc = bt_jr_expect(r, '{')) < 0) return rc;
    if ((rc = knum_i(r, "stage", 0, (int64_t)m->meta.stages - 1, &v)) < 0) return rc;
    sh->stage = (uint32_t)v;
    if ((rc = comma(r)) < 0 || (rc = kstr(r, "file", &s)) < 0) return rc;
    /* Names are relative to the step directory: never a path elsewhere. */
    if (!s[0] || strchr(s, '/') || !strcmp(s, ".") || !strcmp(s, "..") ||
        strlen(s) >= sizeof sh->file) {
      free(s);
      return bt_jr_fail(r, "shard %u: bad file name", i);
    }
    snprintf(sh->file, sizeof sh->file, "%s", s);
    free(s);
    if ((rc = comma(r)) < 0 || (rc = knum_u(r, "size", &sh->size)) < 0) return rc;
    if ((rc = comma(r)) < 0 || (rc = knum_i(r, "crc", 0, UINT32_MAX, &v)) < 0) return rc;
    sh->crc = (uint32_t)v;
    if ((rc = bt_jr_expect(r, '}')) < 0) return rc;
    for (uint32_t k = 0; k < i; k++)
      if (m->shards[k].stage == sh->stage || !strcmp(m->shards[k].file, sh->file))
        return bt_jr_fail(r, "shard %u: stage or file listed twice", i);
  }
  m->nshards = m->meta.stages;
  if ((rc = bt_jr_expect(r, ']')) < 0) return rc;
  if ((rc = comma(r)) < 0 || (rc = bt_jr_key(r, "layers")) < 0 || (rc = bt_jr_expect(r, '[')) < 0)
    return rc;
  m->layer_shard = calloc(m->meta.layer_count, sizeof *m->layer_shard);
  if (!m->layer_shard) return -ENOMEM;
  for (uint32_t l = 0; l < m->meta.layer_count; l++) {
    if (l > 0 && (rc = comma(r)) < 0) return rc;
    if ((rc = bt_jr_int(r, "layers", 0, (int64_t)m->nshards - 1, &v)) < 0) return rc;
    m->layer_shard[l] = (uint32_t)v;
  }
  if ((rc = bt_jr_expect(r, ']')) < 0 || (rc = bt_jr_expect(r, '}')) < 0) return rc;
  return bt_jr_end(r);
}

int bt_ckpt_manifest_read(const char *path, bt_ckpt_manifest_t *m, char *err, size_t errlen) {
  char *text = NULL;
  size_t len = 0;
  memset(m, 0, sizeof *m);
  m->lineage.parent_step = -1;
  if (err && errlen) err[0] = 0;
  int rc = bt_file_read_max(path, MANIFEST_MAX, &text, &len);
  if (rc < 0) {
    if (err) snprintf(err, errlen, "%s", bt_strerror(rc));
    return rc;
  }
  bt_jr_t r;
  rc = bt_jr_init(&r, "manifest", text, len, MANIFEST_MAX, err, errlen);
  if (rc == 0) rc = parse(&r, m);
  if (rc < 0) bt_ckpt_manifest_free(m);
  free(text);
  return rc;
}
