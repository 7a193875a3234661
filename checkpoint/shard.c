/* shard.c - one HDF5 shard file: durable write, open, list and read.
 *
 * A shard is self-describing (ckpt.h has the layout) so `baton ckpt` and
 * h5py read it with no model knowledge. Writing goes to "<file>.tmp", is
 * flushed, its size re-checked, fsync'ed and renamed; the caller's step
 * protocol (writer.c, commit.c) decides when the shard counts. Not here: the
 * manifest, the step directory, and any decision about which layers a stage
 * holds.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/crc.h"
#include "common/log.h"

#define FORMAT_NAME "baton-checkpoint"
/* Chunks of about 1 MiB: HDF5's default chunk cache is 1 MiB, and a chunk
 * may not exceed 4 GiB. Only used when a filter needs a chunked layout. */
#define CHUNK_BYTES (1u << 20)

struct bt_ckpt_shard {
  hid_t file;
  bt_ckpt_meta_t meta;
  uint32_t *layers;
  size_t nlayers;
};

/* HDF5's own file locks fail on some NFS and Lustre mounts (its docs say
 * to set HDF5_USE_FILE_LOCKING=FALSE there). A shard is written once under
 * a temporary name and never modified after its rename, and the checkpoint
 * directory has its own LOCK, so HDF5's locks protect nothing here. */
static herr_t no_file_locking(hid_t fapl) {
#if H5_VERSION_GE(1, 10, 7)
  return H5Pset_file_locking(fapl, 0, 1);
#else
  (void)fapl;
  return 0;
#endif
}

/* ---- attributes ---- */

static int attr_write(hid_t obj, const char *name, hid_t ftype, hid_t mtype, int rank,
                      hsize_t len, const void *val) {
  int rc = 0;
  hid_t sp = -1, a = -1;
  H5_TRY_ID(sp, rank ? H5Screate_simple(1, &len, NULL) : H5Screate(H5S_SCALAR));
  H5_TRY_ID(a, H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT));
  H5_TRY(H5Awrite(a, mtype, val));
out:
  if (a >= 0) H5Aclose(a);
  if (sp >= 0) H5Sclose(sp);
  return rc;
}

static int attr_u32(hid_t obj, const char *name, uint32_t v) {
  return attr_write(obj, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, 0, &v);
}
static int attr_i64(hid_t obj, const char *name, int64_t v) {
  return attr_write(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 0, &v);
}
static int attr_u64(hid_t obj, const char *name, uint64_t v) {
  return attr_write(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, 0, &v);
}

/* Fixed-length, NUL-terminated: what h5py and h5dump show as plain text. */
static int attr_str(hid_t obj, const char *name, const char *s) {
  int rc = 0;
  hid_t t = -1;
  H5_TRY_ID(t, H5Tcopy(H5T_C_S1));
  H5_TRY(H5Tset_size(t, strlen(s) + 1));
  H5_TRY(H5Tset_strpad(t, H5T_STR_NULLTERM));
  rc = attr_write(obj, name, t, t, 0, 0, s);
out:
  if (t >= 0) H5Tclose(t);
  return rc;
}

/* Reads a numeric scalar attribute converted to `mtype`; BT_ECORRUPT when
 * it is missing or not a scalar number. */
static int attr_read_num(hid_t obj, const char *name, hid_t mtype, void *val) {
  int rc = 0;
  hid_t a = -1, sp = -1, ft = -1;
  htri_t ex = H5Aexists(obj, name);
  if (ex <= 0) return BT_ECORRUPT;
  H5_TRY_ID(a, H5Aopen(obj, name, H5P_DEFAULT));
  H5_TRY_ID(sp, H5Aget_space(a));
  H5_TRY_ID(ft, H5Aget_type(a));
  if (H5Sget_simple_extent_npoints(sp) != 1 || H5Tget_class(ft) != H5T_INTEGER) {
    rc = BT_ECORRUPT;
    goto out;
  }
  H5_TRY(H5Aread(a, mtype, val));
out:
  if (ft >= 0) H5Tclose(ft);
  if (sp >= 0) H5Sclose(sp);
  if (a >= 0) H5Aclose(a);
  return rc;
}

static int attr_read_str(hid_t obj, const char *name, char **out) {
  int rc = 0;
  hid_t a = -1, ft = -1, sp = -1;
  char *buf = NULL;
  if (H5Aexists(obj, name) <= 0) return BT_ECORRUPT;
  H5_TRY_ID(a, H5Aopen(obj, name, H5P_DEFAULT));
  H5_TRY_ID(ft, H5Aget_type(a));
  H5_TRY_ID(sp, H5Aget_space(a));
  if (H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) != 0 ||
      H5Sget_simple_extent_npoints(sp) != 1) {
    rc = BT_ECORRUPT;
    goto out;
  }
  size_t len = H5Tget_size(ft);
  if (len == 0 || len > (64u << 20)) {
    rc = BT_ECORRUPT;
    goto out;
  }
  buf = calloc(1, len + 1);
  if (!buf) {
    rc = -ENOMEM;
    goto out;
  }
  H5_TRY(H5Aread(a, ft, buf));
  *out = buf;
  buf = NULL;
out:
  free(buf);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
  if (a >= 0) H5Aclose(a);
  return rc;
}

static int attr_read_u32s(hid_t obj, const char *name, uint32_t **out, size_t *n) {
  int rc = 0;
  hid_t a = -1, sp = -1;
  uint32_t *v = NULL;
  if (H5Aexists(obj, name) <= 0) return BT_ECORRUPT;
  H5_TRY_ID(a, H5Aopen(obj, name, H5P_DEFAULT));
  H5_TRY_ID(sp, H5Aget_space(a));
  hssize_t np = H5Sget_simple_extent_npoints(sp);
  if (np < 1 || np > BT_CKPT_MAX_LAYERS) {
    rc = BT_ECORRUPT;
    goto out;
  }
  v = malloc((size_t)np * sizeof *v);
  if (!v) {
    rc = -ENOMEM;
    goto out;
  }
  H5_TRY(H5Aread(a, H5T_NATIVE_UINT32, v));
  *out = v;
  *n = (size_t)np;
  v = NULL;
out:
  free(v);
  if (sp >= 0) H5Sclose(sp);
  if (a >= 0) H5Aclose(a);
  return rc;
}

/* ---- writing ---- */

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* The sorted distinct layers of the tensors; BT_EARG when none. */
static int layers_of(const bt_ckpt_tensor_t *t, size_t n, uint32_t **out, size_t *nout) {
  uint32_t *v = malloc((n ? n : 1) * sizeof *v);
  if (!v) return -ENOMEM;
  for (size_t i = 0; i < n; i++) v[i] = t[i].layer;
  qsort(v, n, sizeof *v, cmp_u32);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (k == 0 || v[k - 1] != v[i]) v[k++] = v[i];
  if (k == 0) {
    free(v);
    return BT_EARG;
  }
  *out = v;
  *nout = k;
  return 0;
}

static int ensure_group(hid_t file, const char *path) {
  int rc = 0;
  hid_t g = -1;
  htri_t ex = H5Lexists(file, path, H5P_DEFAULT);
  H5_TRY(ex);
  if (ex > 0) return 0;
  H5_TRY_ID(g, H5Gcreate2(file, path, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
out:
  if (g >= 0) H5Gclose(g);
  return rc;
}

static int ensure_parents(hid_t file, const bt_ckpt_tensor_t *t) {
  char p[64];
  int rc;
  snprintf(p, sizeof p, "/%s/%06u", t->kind == BT_CKPT_PARAM ? "layers" : "optim", t->layer);
  if ((rc = ensure_group(file, p)) < 0) return rc;
  if (t->kind == BT_CKPT_PARAM) return 0;
  size_t n = strlen(p);
  snprintf(p + n, sizeof p - n, "/%s", t->kind == BT_CKPT_ADAM_M ? "m" : "v");
  return ensure_group(file, p);
}

/* After a failed write (a full disk), HDF5 still holds dirty chunks and
 * metadata that it writes when the dataset and the file close; if those
 * writes fail too, HDF5 1.10.8 keeps the file half-open and crashes in
 * H5F__close_cb when the library shuts down at exit. Truncating our own
 * temporary file first frees its blocks, so the closing writes fit and
 * every handle really closes; the file is unlinked afterwards anyway. */
static void release_space(const char *tmp) {
  if (truncate(tmp, 0) < 0) bt_debug("checkpoint: truncate %s: %s", tmp, strerror(errno));
}

/* Where a dataset's raw bytes lie in the file, and their CRC: the file's
 * CRC is put together from these and the bytes between them (HDF5's own
 * metadata), so the tensors are never read back. off is HADDR_UNDEF when
 * the bytes are not one contiguous copy of the tensor (a filter). */
typedef struct {
  haddr_t off;
  uint64_t len;
  uint32_t crc;
} extent_t;

static int write_dataset(hid_t file, const char *tmp, const bt_ckpt_tensor_t *t,
                         const bt_ckpt_opts_t *opts, extent_t *ext) {
  int rc = 0;
  hid_t sp = -1, dcpl = -1, ds = -1;
  char path[128];
  hsize_t dims[BT_CKPT_MAX_DIMS], chunk[BT_CKPT_MAX_DIMS];
  if ((rc = bt_ckpt_dataset_path(t, path, sizeof path)) < 0) return rc;
  if ((rc = ensure_parents(file, t)) < 0) return rc;
  for (int d = 0; d < t->ndim; d++) dims[d] = chunk[d] = t->dims[d];
  H5_TRY_ID(sp, H5Screate_simple(t->ndim, dims, NULL));
  H5_TRY_ID(dcpl, H5Pcreate(H5P_DATASET_CREATE));
  if (opts && (opts->deflate > 0 || opts->shuffle || opts->fletcher32)) {
    /* Split along the first dimension until a chunk is about 1 MiB. */
    size_t row = sizeof(float);
    for (int d = 1; d < t->ndim; d++) row *= (size_t)dims[d];
    hsize_t rows = row >= CHUNK_BYTES ? 1 : CHUNK_BYTES / row;
    if (rows < chunk[0]) chunk[0] = rows;
    for (int d = 1; d < t->ndim && row > CHUNK_BYTES; d++) {
      /* A single row over 1 MiB: shrink inner dimensions too. */
      row /= (size_t)dims[d];
      hsize_t keep = row >= CHUNK_BYTES ? 1 : CHUNK_BYTES / row;
      if (keep < chunk[d]) chunk[d] = keep;
    }
    H5_TRY(H5Pset_chunk(dcpl, t->ndim, chunk));
    if (opts->shuffle) H5_TRY(H5Pset_shuffle(dcpl));
    if (opts->deflate > 0) H5_TRY(H5Pset_deflate(dcpl, (unsigned)opts->deflate));
    if (opts->fletcher32) H5_TRY(H5Pset_fletcher32(dcpl));
  }
  H5_TRY_ID(ds, H5Dcreate2(file, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  /* On a full disk this is where the failure shows: H5Fclose later reports
   * success even though the data never reached the file. */
  H5_TRY(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data));
  ext->len = bt_ckpt_numel(t) * sizeof(float);
  ext->crc = bt_crc32(0, t->data, ext->len);
  /* The file type is IEEE little-endian float, the host's own (x86-64,
   * aarch64): without a filter the file holds exactly these bytes. */
  ext->off = H5Pget_layout(dcpl) == H5D_CONTIGUOUS ? H5Dget_offset(ds) : HADDR_UNDEF;
  if ((rc = attr_u32(ds, "crc", ext->crc)) < 0) goto out;
  if ((rc = attr_u32(ds, "index", t->index)) < 0) goto out;
  /* With filters, chunks sit in the chunk cache until the dataset closes:
   * this close is a write that can fail on a full disk. */
  herr_t closed = H5Dclose(ds);
  ds = -1;
  H5_TRY(closed);
out:
  if (ds >= 0) {
    release_space(tmp);
    H5Dclose(ds);
  }
  if (dcpl >= 0) H5Pclose(dcpl);
  if (sp >= 0) H5Sclose(sp);
  return rc;
}

static int write_root_attrs(hid_t file, const bt_ckpt_meta_t *m, const uint32_t *layers,
                            size_t nl) {
  int rc;
  if ((rc = attr_str(file, "format", FORMAT_NAME)) < 0) return rc;
  if ((rc = attr_u32(file, "format_version", BT_CKPT_FORMAT_VERSION)) < 0) return rc;
  if ((rc = attr_i64(file, "step", m->step)) < 0) return rc;
  if ((rc = attr_u32(file, "stage", m->stage)) < 0) return rc;
  if ((rc = attr_u32(file, "stages", m->stages)) < 0) return rc;
  if ((rc = attr_u32(file, "chunks", m->chunks)) < 0) return rc;
  if ((rc = attr_u32(file, "layer_count", m->layer_count)) < 0) return rc;
  if ((rc = attr_u64(file, "seed", m->seed)) < 0) return rc;
  if ((rc = attr_i64(file, "adam_t", m->adam_t)) < 0) return rc;
  if ((rc = attr_str(file, "model_config", m->model_config ? m->model_config : "")) < 0) return rc;
  if ((rc = attr_str(file, "run_settings", m->run_settings ? m->run_settings : "")) < 0) return rc;
  return attr_write(file, "layers", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, nl, layers);
}

typedef struct {
  bt_ckpt_write_hook_fn fn;
  void *arg;
} hook_t;

/* errno named in HDF5's innermost message ("errno = 28, ..."), or 0. */
static int h5_errno(void) {
  const char *p = strstr(bt_h5_last_error(), "errno = ");
  return p ? atoi(p + 8) : 0;
}

/* Writes the HDF5 file at `tmp` and closes it; on a write failure, an
 * errno HDF5 names (ENOSPC, EIO, EDQUOT) is returned as -errno. */
static int write_h5(const char *tmp, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                    size_t n, const bt_ckpt_opts_t *opts, const uint32_t *layers, size_t nl,
                    const hook_t *hook, hsize_t *h5size, extent_t *ext) {
  int rc = 0;
  hid_t fapl = -1, file = -1, g = -1;
  H5_TRY_ID(fapl, H5Pcreate(H5P_FILE_ACCESS));
  /* Strong close: on an error path H5Fclose also closes whatever is open. */
  H5_TRY(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG));
  H5_TRY(no_file_locking(fapl));
  H5_TRY_ID(file, H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
  if ((rc = write_root_attrs(file, meta, layers, nl)) < 0) goto out;
  H5_TRY_ID(g, H5Gcreate2(file, "/layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  H5Gclose(g);
  H5_TRY_ID(g, H5Gcreate2(file, "/optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  H5Gclose(g);
  g = -1;
  for (size_t i = 0; i < n; i++) {
    if ((rc = write_dataset(file, tmp, &t[i], opts, &ext[i])) < 0) goto out;
    if (hook->fn) hook->fn(hook->arg, meta->step, i, n);
  }
  H5_TRY(H5Fflush(file, H5F_SCOPE_GLOBAL));
  H5_TRY(H5Fget_filesize(file, h5size));
out:
  if (file >= 0) {
    if (rc < 0) release_space(tmp);
    herr_t c = H5Fclose(file);
    if (c < 0 && rc == 0) {
      /* The close itself failed to write: free the space and close again. */
      rc = bt_h5_fail(__FILE__, __LINE__, "H5Fclose(file)");
      release_space(tmp);
      if (H5Iis_valid(file) > 0) H5Fclose(file);
    }
  }
  if (fapl >= 0) H5Pclose(fapl);
  if (rc == BT_EHDF5) bt_h5_note_broken();
  if (rc == BT_EHDF5) {
    int e = h5_errno();
    if (e == ENOSPC || e == EDQUOT || e == EIO || e == EROFS || e == EACCES) rc = -e;
  }
  return rc;
}

static int check_tensors(const bt_ckpt_tensor_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!bt_ckpt_name_ok(t[i].name) || t[i].ndim < 1 || t[i].ndim > BT_CKPT_MAX_DIMS ||
        t[i].layer >= BT_CKPT_MAX_LAYERS || !t[i].data ||
        (t[i].kind != BT_CKPT_PARAM && t[i].kind != BT_CKPT_ADAM_M && t[i].kind != BT_CKPT_ADAM_V)) {
      bt_error("checkpoint: tensor %zu (layer %u, '%.*s') has a bad description", i, t[i].layer,
               BT_CKPT_NAME_MAX, t[i].name);
      return BT_EARG;
    }
    for (int d = 0; d < t[i].ndim; d++)
      if (t[i].dims[d] == 0) {
        bt_error("checkpoint: tensor layer %u '%s' has an empty dimension", t[i].layer, t[i].name);
        return BT_EARG;
      }
    for (size_t k = 0; k < i; k++)
      if (t[k].layer == t[i].layer && t[k].kind == t[i].kind && !strcmp(t[k].name, t[i].name)) {
        bt_error("checkpoint: tensor layer %u '%s' given twice", t[i].layer, t[i].name);
        return BT_EARG;
      }
  }
  return 0;
}

static const char *kind_name(int kind) {
  return kind == BT_CKPT_PARAM ? "param" : kind == BT_CKPT_ADAM_M ? "adam m" : "adam v";
}

/* Whether any of x[0..n) is NaN or Inf (all exponent bits set). A loop
 * without an early exit, on the bits, so that the compiler vectorizes it:
 * the per-element isfinite() loop with a branch cost about as much as the
 * CRC of the file. */
static int any_nonfinite(const float *x, size_t n) {
  enum { BLOCK = 4096 }; /* a constant trip count: -O2 vectorizes only that */
  const uint32_t exp = 0x7f800000u;
  size_t k = 0;
  for (; k + BLOCK <= n; k += BLOCK) {
    uint32_t bad = 0;
    for (size_t j = 0; j < BLOCK; j++) {
      uint32_t b;
      memcpy(&b, &x[k + j], sizeof b);
      bad |= (uint32_t)((b & exp) == exp);
    }
    if (bad) return 1;
  }
  for (; k < n; k++)
    if (!isfinite(x[k])) return 1;
  return 0;
}

/* A checkpoint that holds NaN or Inf must never be committed: resuming from
 * it would poison every later step. Checks every tensor (m and v too). */
static int check_finite(const bt_ckpt_tensor_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    size_t m = bt_ckpt_numel(&t[i]);
    if (!any_nonfinite(t[i].data, m)) continue;
    for (size_t k = 0; k < m; k++)
      if (!isfinite(t[i].data[k])) {
        bt_error("checkpoint refused: %s tensor '%s' of layer %u holds %s at element %zu",
                 kind_name(t[i].kind), t[i].name, t[i].layer,
                 isnan(t[i].data[k]) ? "NaN" : "Inf", k);
        return BT_ENONFINITE;
      }
  }
  return 0;
}

static int cmp_extent(const void *a, const void *b) {
  haddr_t x = ((const extent_t *)a)->off, y = ((const extent_t *)b)->off;
  return x < y ? -1 : x > y;
}

/* The CRC of the `size`-byte file at path, from the tensors' extents and
 * CRCs plus the bytes between them (read back: HDF5's metadata, a few KiB
 * per tensor at most). Falls back to reading the whole file when an extent
 * is unknown (filters) or does not fit the file. Sorts ext. */
static int file_crc(const char *path, extent_t *ext, size_t n, uint64_t size, uint32_t *crc) {
  qsort(ext, n, sizeof *ext, cmp_extent);
  uint64_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    if (ext[i].off == HADDR_UNDEF || ext[i].off < pos || ext[i].len > size - ext[i].off ||
        ext[i].off > size) {
      uint64_t got;
      int rc = bt_crc32_file(path, crc, &got);
      return rc < 0 ? rc : got == size ? 0 : -EIO;
    }
    pos = ext[i].off + ext[i].len;
  }
  int fd;
  do fd = open(path, O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  enum { BUF = 1 << 16 };
  unsigned char *buf = malloc(BUF);
  uint32_t c = 0;
  int rc = buf ? 0 : -ENOMEM;
  pos = 0;
  for (size_t i = 0; i <= n && rc == 0; i++) {
    uint64_t end = i < n ? ext[i].off : size;
    while (pos < end && rc == 0) {
      size_t want = end - pos < BUF ? (size_t)(end - pos) : BUF;
      ssize_t got = pread(fd, buf, want, (off_t)pos);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        rc = got < 0 ? -errno : -EIO; /* a file shorter than it was a moment ago */
        break;
      }
      c = bt_crc32(c, buf, (size_t)got);
      pos += (uint64_t)got;
    }
    if (i < n) {
      c = bt_crc32_combine(c, ext[i].crc, ext[i].len);
      pos += ext[i].len;
    }
  }
  free(buf);
  close(fd);
  if (rc == 0) *crc = c;
  return rc;
}

/* Refuses a shard that cannot fit before HDF5 starts writing: a write
 * that fails half-way leaves HDF5 with handles it cannot close (1.10.8
 * then reports "infinite loop closing library" at exit). The estimate is
 * the raw bytes plus HDF5's metadata; compression only makes it smaller. */
static int enough_space(const char *dir, const bt_ckpt_tensor_t *t, size_t n) {
  struct statvfs vfs;
  if (statvfs(dir, &vfs) < 0) return 0; /* cannot tell: let the write decide */
  uint64_t need = 64 * 1024;
  for (size_t i = 0; i < n; i++) need += (uint64_t)bt_ckpt_numel(&t[i]) * sizeof(float) + 2048;
  uint64_t have = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
  if (have >= need) return 0;
  bt_error("checkpoint: %s has %llu bytes free, the shard needs about %llu", dir,
           (unsigned long long)have, (unsigned long long)need);
  return -ENOSPC;
}

/* Writes the shard durably at `path` (via path.tmp); *size and *crc get
 * the final file's. The CRC is computed once: each tensor's while it is
 * written, combined with the metadata's after the fsync. */
static int shard_write(const char *path, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                       size_t n, const bt_ckpt_opts_t *opts, const hook_t *hook, uint64_t *size,
                       uint32_t *crc) {
  char tmp[PATH_MAX], dir[PATH_MAX];
  uint32_t *layers = NULL;
  size_t nl = 0;
  hsize_t h5size = 0;
  struct stat st;
  extent_t *ext = NULL;
  int rc;
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp ||
      snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
    return -ENAMETOOLONG;
  char *slash = strrchr(dir, '/');
  if (slash)
    *slash = 0;
  else
    snprintf(dir, sizeof dir, ".");
  if (!(ext = calloc(n ? n : 1, sizeof *ext))) return -ENOMEM;
  if ((rc = layers_of(t, n, &layers, &nl)) < 0) goto out;
  if ((rc = enough_space(dir, t, n)) < 0) goto out;
  if ((rc = write_h5(tmp, meta, t, n, opts, layers, nl, hook, &h5size, ext)) < 0) goto out;
  /* Re-check the size: a write HDF5 thought succeeded must have landed. */
  if (stat(tmp, &st) < 0) {
    rc = -errno;
    goto out;
  }
  if ((uint64_t)st.st_size < (uint64_t)h5size) {
    bt_error("checkpoint: %s is %lld bytes, HDF5 wrote %llu", tmp, (long long)st.st_size,
             (unsigned long long)h5size);
    rc = -EIO;
    goto out;
  }
  /* HDF5's flush and close never fsync. */
  if ((rc = bt_fsync_path(tmp)) < 0) goto out;
  *size = (uint64_t)st.st_size;
  if ((rc = file_crc(tmp, ext, n, *size, crc)) < 0) goto out;
  bt_ckpt_test_stop("shard-tmp", (int)meta->stage);
  if (rename(tmp, path) < 0) {
    rc = -errno;
    goto out;
  }
  rc = bt_fsync_dir(dir);
out:
  if (rc < 0) unlink(tmp);
  free(layers);
  free(ext);
  return rc;
}

int bt_ckpt_save(const char *root, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                 size_t n, const bt_ckpt_opts_t *opts, bt_msg_shard_t *report) {
  return bt_ckpt_save_hooked(root, meta, t, n, opts, NULL, NULL, report);
}

int bt_ckpt_save_hooked(const char *root, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                        size_t n, const bt_ckpt_opts_t *opts, bt_ckpt_write_hook_fn hook_fn,
                        void *hook_arg, bt_msg_shard_t *report) {
  const hook_t hook = {hook_fn, hook_arg};
  char dir[PATH_MAX], path[PATH_MAX], name[64];
  int rc;
  bt_h5_thread_init();
  if (!root || !meta || !t || n == 0 || meta->stages == 0 || meta->stage >= meta->stages ||
      meta->stages > BT_MAX_STAGES || meta->step < 0 || meta->layer_count == 0 ||
      meta->layer_count > BT_CKPT_MAX_LAYERS || (opts && (opts->deflate < 0 || opts->deflate > 9)))
    return BT_EARG;
  if ((rc = check_tensors(t, n)) < 0) return rc;
  for (size_t i = 0; i < n; i++)
    if (t[i].layer >= meta->layer_count) {
      bt_error("checkpoint: tensor '%s' of layer %u is past the model's %u layers", t[i].name,
               t[i].layer, meta->layer_count);
      return BT_EARG;
    }
  if ((rc = check_finite(t, n)) < 0) return rc;
  if ((rc = bt_mkdir_p1(root)) < 0) return rc;
  if ((rc = bt_ckpt_step_path(root, meta->step, 1, dir, sizeof dir)) < 0) return rc;
  if ((rc = bt_mkdir_p1(dir)) < 0) return rc;
  /* Make the new step directory's entry durable before shards go in. */
  if ((rc = bt_fsync_dir(root)) < 0) return rc;
  bt_ckpt_shard_name(meta->stage, meta->stages, name, sizeof name);
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return -ENAMETOOLONG;
  memset(report, 0, sizeof *report);
  if ((rc = shard_write(path, meta, t, n, opts, &hook, &report->size, &report->crc)) < 0) {
    bt_error("checkpoint: saving %s failed: %s", path, bt_strerror(rc));
    return rc;
  }
  report->stage = meta->stage;
  report->step = meta->step;
  snprintf(report->file, sizeof report->file, "%s", name);
  bt_ckpt_test_stop("shard-renamed", (int)meta->stage);
  return 0;
}

/* ---- reading ---- */

int bt_ckpt_shard_open(const char *path, bt_ckpt_shard_t **out) {
  int rc = 0;
  bt_ckpt_shard_t *s = NULL;
  char *fmt = NULL;
  hid_t fapl = -1;
  struct stat st;
  bt_h5_thread_init();
  if (stat(path, &st) < 0) return -errno;
  if (!S_ISREG(st.st_mode)) return BT_ENOTCKPT;
  htri_t is = H5Fis_hdf5(path);
  if (is <= 0) return BT_ENOTCKPT;
  s = calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->file = -1;
  H5_TRY_ID(fapl, H5Pcreate(H5P_FILE_ACCESS));
  H5_TRY(H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG));
  H5_TRY(no_file_locking(fapl));
  s->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  if (s->file < 0) {
    /* The HDF5 signature is there but the file does not open: torn. */
    bt_h5_fail(__FILE__, __LINE__, "H5Fopen(path)");
    rc = BT_ECORRUPT;
    goto out;
  }
  /* No "format" attribute: some other HDF5 file (2 for the tool). One
   * that exists but cannot be read: a damaged shard (1). */
  htri_t has_fmt = H5Aexists(s->file, "format");
  if (has_fmt <= 0) {
    rc = has_fmt == 0 ? BT_ENOTCKPT : BT_ECORRUPT;
    goto out;
  }
  if (attr_read_str(s->file, "format", &fmt) < 0) {
    rc = BT_ECORRUPT;
    goto out;
  }
  if (strcmp(fmt, FORMAT_NAME) != 0) {
    rc = BT_ENOTCKPT;
    goto out;
  }
  uint32_t ver = 0;
  if ((rc = attr_read_num(s->file, "format_version", H5T_NATIVE_UINT32, &ver)) < 0) goto out;
  if (ver != BT_CKPT_FORMAT_VERSION) {
    rc = BT_EVERSION;
    goto out;
  }
  bt_ckpt_meta_t *m = &s->meta;
  if ((rc = attr_read_num(s->file, "step", H5T_NATIVE_INT64, &m->step)) < 0 ||
      (rc = attr_read_num(s->file, "stage", H5T_NATIVE_UINT32, &m->stage)) < 0 ||
      (rc = attr_read_num(s->file, "stages", H5T_NATIVE_UINT32, &m->stages)) < 0 ||
      (rc = attr_read_num(s->file, "chunks", H5T_NATIVE_UINT32, &m->chunks)) < 0 ||
      (rc = attr_read_num(s->file, "layer_count", H5T_NATIVE_UINT32, &m->layer_count)) < 0 ||
      (rc = attr_read_num(s->file, "seed", H5T_NATIVE_UINT64, &m->seed)) < 0 ||
      (rc = attr_read_num(s->file, "adam_t", H5T_NATIVE_INT64, &m->adam_t)) < 0 ||
      (rc = attr_read_str(s->file, "model_config", &m->model_config)) < 0 ||
      (rc = attr_read_str(s->file, "run_settings", &m->run_settings)) < 0 ||
      (rc = attr_read_u32s(s->file, "layers", &s->layers, &s->nlayers)) < 0) {
    if (rc == BT_EHDF5) rc = BT_ECORRUPT;
    goto out;
  }
  if (m->stages == 0 || m->stage >= m->stages || m->layer_count == 0 ||
      m->layer_count > BT_CKPT_MAX_LAYERS) {
    rc = BT_ECORRUPT;
    goto out;
  }
  for (size_t i = 0; i < s->nlayers; i++)
    if (s->layers[i] >= m->layer_count || (i > 0 && s->layers[i] <= s->layers[i - 1])) {
      rc = BT_ECORRUPT;
      goto out;
    }
  *out = s;
  s = NULL;
out:
  free(fmt);
  if (fapl >= 0) H5Pclose(fapl);
  if (s) bt_ckpt_shard_close(s);
  return rc;
}

void bt_ckpt_shard_close(bt_ckpt_shard_t *s) {
  if (!s) return;
  if (s->file >= 0) H5Fclose(s->file);
  bt_ckpt_meta_free(&s->meta);
  free(s->layers);
  free(s);
}

const bt_ckpt_meta_t *bt_ckpt_shard_meta(const bt_ckpt_shard_t *s) { return &s->meta; }

const uint32_t *bt_ckpt_shard_layers(const bt_ckpt_shard_t *s, size_t *n) {
  *n = s->nlayers;
  return s->layers;
}

/* Names of a group's links, collected so that we never depend on the
 * order HDF5 lists them in (alphabetical): callers sort what they build. */
typedef struct {
  char **v;
  size_t n, cap;
  int err;
} names_t;

static herr_t collect_cb(hid_t g, const char *name, const H5L_info_t *info, void *arg) {
  (void)g;
  (void)info;
  names_t *ns = arg;
  if (ns->n == ns->cap) {
    size_t cap = ns->cap ? ns->cap * 2 : 16;
    char **v = realloc(ns->v, cap * sizeof *v);
    if (!v) {
      ns->err = -ENOMEM;
      return -1;
    }
    ns->v = v;
    ns->cap = cap;
  }
  if (!(ns->v[ns->n] = strdup(name))) {
    ns->err = -ENOMEM;
    return -1;
  }
  ns->n++;
  return 0;
}

static void names_free(names_t *ns) {
  for (size_t i = 0; i < ns->n; i++) free(ns->v[i]);
  free(ns->v);
  memset(ns, 0, sizeof *ns);
}

static int list_names(hid_t file, const char *group, names_t *ns) {
  int rc = 0;
  hid_t g = -1;
  memset(ns, 0, sizeof *ns);
  if (H5Lexists(file, group, H5P_DEFAULT) <= 0) return BT_ECORRUPT;
  H5_TRY_ID(g, H5Gopen2(file, group, H5P_DEFAULT));
  if (H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, collect_cb, ns) < 0) {
    rc = ns->err ? ns->err : bt_h5_fail(__FILE__, __LINE__, "H5Literate");
    goto out;
  }
out:
  if (g >= 0) H5Gclose(g);
  if (rc < 0) names_free(ns);
  return rc;
}

/* Six digits exactly: the layer index as written. */
static int parse_layer(const char *s, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 6; i++) {
    if (s[i] < '0' || s[i] > '9') return BT_ECORRUPT;
    v = v * 10 + (uint32_t)(s[i] - '0');
  }
  if (s[6]) return BT_ECORRUPT;
  *out = v;
  return 0;
}

/* A shape whose bytes overflow, or exceed what the file could hold even
 * deflated (about 1032:1 at best), is a damaged dataspace: trusting it
 * would allocate or copy without end. */
static int size_ok(hid_t file, const bt_ckpt_tensor_t *t) {
  hsize_t fsize = 0;
  if (H5Fget_filesize(file, &fsize) < 0) return BT_ECORRUPT;
  uint64_t bytes = sizeof(float);
  for (int d = 0; d < t->ndim; d++) {
    if (t->dims[d] == 0 || bytes > UINT64_MAX / t->dims[d]) return BT_ECORRUPT;
    bytes *= t->dims[d];
  }
  if (bytes > (uint64_t)SIZE_MAX / 2 || bytes / 1100 > (uint64_t)fsize) return BT_ECORRUPT;
  return 0;
}

/* Shape and index of one dataset into t (layer, kind, name already set). */
static int describe(hid_t file, bt_ckpt_tensor_t *t) {
  int rc = 0;
  hid_t ds = -1, sp = -1, ty = -1;
  char path[128];
  hsize_t dims[BT_CKPT_MAX_DIMS];
  if (!bt_ckpt_name_ok(t->name) || bt_ckpt_dataset_path(t, path, sizeof path) < 0)
    return BT_ECORRUPT;
  H5_TRY_ID(ds, H5Dopen2(file, path, H5P_DEFAULT));
  H5_TRY_ID(sp, H5Dget_space(ds));
  H5_TRY_ID(ty, H5Dget_type(ds));
  int nd = H5Sget_simple_extent_ndims(sp);
  if (nd < 1 || nd > BT_CKPT_MAX_DIMS || H5Tget_class(ty) != H5T_FLOAT || H5Tget_size(ty) != 4) {
    rc = BT_ECORRUPT;
    goto out;
  }
  H5_TRY(H5Sget_simple_extent_dims(sp, dims, NULL));
  t->ndim = nd;
  for (int d = 0; d < nd; d++) t->dims[d] = dims[d];
  if ((rc = size_ok(file, t)) < 0) goto out;
  if ((rc = attr_read_num(ds, "index", H5T_NATIVE_UINT32, &t->index)) < 0) goto out;
out:
  if (ty >= 0) H5Tclose(ty);
  if (sp >= 0) H5Sclose(sp);
  if (ds >= 0) H5Dclose(ds);
  return rc == BT_EHDF5 ? BT_ECORRUPT : rc;
}

typedef struct {
  bt_ckpt_tensor_t *v;
  size_t n, cap;
} tlist_t;

static int tlist_add(tlist_t *l, uint32_t layer, int kind, const char *name) {
  if (strlen(name) >= BT_CKPT_NAME_MAX) return BT_ECORRUPT;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 32;
    bt_ckpt_tensor_t *v = realloc(l->v, cap * sizeof *v);
    if (!v) return -ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  bt_ckpt_tensor_t *t = &l->v[l->n++];
  memset(t, 0, sizeof *t);
  t->layer = layer;
  t->kind = kind;
  snprintf(t->name, sizeof t->name, "%s", name);
  return 0;
}

static int cmp_tensor(const void *a, const void *b) {
  const bt_ckpt_tensor_t *x = a, *y = b;
  if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
  if (x->kind != y->kind) return x->kind < y->kind ? -1 : 1;
  if (x->index != y->index) return x->index < y->index ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Datasets under one layer group (prefix "/layers/000003" or
 * "/optim/000003/m"). */
static int list_group(bt_ckpt_shard_t *s, const char *group, uint32_t layer, int kind,
                      tlist_t *l) {
  names_t ns;
  int rc = list_names(s->file, group, &ns);
  if (rc < 0) return rc;
  for (size_t i = 0; i < ns.n && rc == 0; i++) rc = tlist_add(l, layer, kind, ns.v[i]);
  names_free(&ns);
  return rc;
}

int bt_ckpt_shard_list(bt_ckpt_shard_t *s, bt_ckpt_tensor_t **out, size_t *n) {
  names_t layers = {0}, optim = {0};
  tlist_t l = {0};
  char g[64];
  int rc;
  bt_h5_thread_init();
  if ((rc = list_names(s->file, "/layers", &layers)) < 0) goto out;
  if ((rc = list_names(s->file, "/optim", &optim)) < 0) goto out;
  for (size_t i = 0; i < layers.n; i++) {
    uint32_t layer;
    if ((rc = parse_layer(layers.v[i], &layer)) < 0) goto out;
    snprintf(g, sizeof g, "/layers/%06u", layer);
    if ((rc = list_group(s, g, layer, BT_CKPT_PARAM, &l)) < 0) goto out;
  }
  for (size_t i = 0; i < optim.n; i++) {
    uint32_t layer;
    if ((rc = parse_layer(optim.v[i], &layer)) < 0) goto out;
    for (int k = BT_CKPT_ADAM_M; k <= BT_CKPT_ADAM_V; k++) {
      snprintf(g, sizeof g, "/optim/%06u/%s", layer, k == BT_CKPT_ADAM_M ? "m" : "v");
      if (H5Lexists(s->file, g, H5P_DEFAULT) <= 0) continue;
      if ((rc = list_group(s, g, layer, k, &l)) < 0) goto out;
    }
  }
  for (size_t i = 0; i < l.n; i++)
    if ((rc = describe(s->file, &l.v[i])) < 0) goto out;
  if (l.n) qsort(l.v, l.n, sizeof *l.v, cmp_tensor);
  *out = l.v;
  *n = l.n;
  l.v = NULL;
out:
  free(l.v);
  names_free(&layers);
  names_free(&optim);
  return rc;
}

/* HDF5 trusts a dataset's layout message: a flipped bit there can make
 * H5Dread copy far past the file or loop for minutes. A contiguous dataset
 * must hold exactly its elements inside the file; a chunked one may not
 * claim more storage than the file has. BT_ECORRUPT otherwise. */
static int plausible(hid_t file, hid_t ds, const bt_ckpt_tensor_t *t) {
  int rc = size_ok(file, t);
  hid_t dcpl = -1;
  hsize_t fsize = 0;
  if (rc < 0) return rc;
  uint64_t raw = (uint64_t)bt_ckpt_numel(t) * sizeof(float);
  H5_TRY(H5Fget_filesize(file, &fsize));
  H5_TRY_ID(dcpl, H5Dget_create_plist(ds));
  H5D_layout_t lay = H5Pget_layout(dcpl);
  hsize_t storage = H5Dget_storage_size(ds);
  if (lay == H5D_CONTIGUOUS) {
    haddr_t off = H5Dget_offset(ds);
    if (off == HADDR_UNDEF || storage != raw || off > fsize || storage > fsize - off) rc = BT_ECORRUPT;
  } else if (lay == H5D_CHUNKED) {
    /* deflate cannot shrink data more than about 1032:1 */
    if (storage > fsize || raw / 1100 > fsize) rc = BT_ECORRUPT;
  } else {
    rc = BT_ECORRUPT; /* baton writes no compact or virtual datasets */
  }
out:
  if (dcpl >= 0) H5Pclose(dcpl);
  return rc;
}

int bt_ckpt_shard_read(bt_ckpt_shard_t *s, bt_ckpt_tensor_t *t, uint64_t *stored) {
  return bt_ckpt_shard_read_checked(s, t, stored, 1);
}

int bt_ckpt_shard_read_checked(bt_ckpt_shard_t *s, bt_ckpt_tensor_t *t, uint64_t *stored,
                               int check_crc) {
  int rc = 0;
  hid_t ds = -1, sp = -1;
  char path[128];
  hsize_t dims[BT_CKPT_MAX_DIMS];
  uint32_t want_crc = 0, index = 0;
  bt_h5_thread_init();
  if (bt_ckpt_dataset_path(t, path, sizeof path) < 0) return BT_EARG;
  htri_t ex = H5Lexists(s->file, t->kind == BT_CKPT_PARAM ? "/layers" : "/optim", H5P_DEFAULT);
  if (ex > 0) {
    /* H5Lexists needs every intermediate group to exist. */
    char sub[128];
    snprintf(sub, sizeof sub, "%s", path);
    for (char *p = strchr(sub + 1, '/'); p && ex > 0; p = strchr(p + 1, '/')) {
      *p = 0;
      ex = H5Lexists(s->file, sub, H5P_DEFAULT);
      *p = '/';
    }
    if (ex > 0) ex = H5Lexists(s->file, path, H5P_DEFAULT);
  }
  if (ex <= 0) return BT_ECONFIG;
  H5_TRY_ID(ds, H5Dopen2(s->file, path, H5P_DEFAULT));
  H5_TRY_ID(sp, H5Dget_space(ds));
  int nd = H5Sget_simple_extent_ndims(sp);
  if (nd != t->ndim || nd < 1 || nd > BT_CKPT_MAX_DIMS) {
    rc = BT_ECONFIG;
    goto out;
  }
  H5_TRY(H5Sget_simple_extent_dims(sp, dims, NULL));
  for (int d = 0; d < nd; d++)
    if (dims[d] != t->dims[d]) {
      rc = BT_ECONFIG;
      goto out;
    }
  if ((rc = attr_read_num(ds, "index", H5T_NATIVE_UINT32, &index)) < 0) goto out;
  if (index != t->index) {
    rc = BT_ECONFIG;
    goto out;
  }
  if ((rc = attr_read_num(ds, "crc", H5T_NATIVE_UINT32, &want_crc)) < 0) goto out;
  if ((rc = plausible(s->file, ds, t)) < 0) goto out;
  H5_TRY(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data));
  if (check_crc && bt_crc32(0, t->data, bt_ckpt_numel(t) * sizeof(float)) != want_crc) {
    rc = BT_ECRC;
    goto out;
  }
  if (stored) *stored = H5Dget_storage_size(ds);
out:
  if (sp >= 0) H5Sclose(sp);
  if (ds >= 0) H5Dclose(ds);
  return rc;
}
