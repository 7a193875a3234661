/* internal.h - helpers shared by the checkpoint module's files; not part of
 * its API (callers include checkpoint/ckpt.h only).
 *
 * H5_TRY wraps every HDF5 call: a negative result logs file, line, the call
 * and HDF5's innermost message, sets rc = BT_EHDF5 and jumps to the
 * function's one cleanup label `out`.
 */
#ifndef BT_CHECKPOINT_INTERNAL_H
#define BT_CHECKPOINT_INTERNAL_H
#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint/ckpt.h"
#include "common/error.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shards store little-endian float32 and CRC their in-memory bytes"
#endif

/* Silences HDF5's automatic error printing for the calling thread (the
 * setting is per thread) once; every public entry point calls it. */
void bt_h5_thread_init(void);
/* A file HDF5 could not create or close (a full disk): its internals stay
 * behind, so the library is not closed at exit (util.c says why). */
void bt_h5_note_broken(void);
/* Clears the calling thread's HDF5 error stack: a writer thread must do so
 * before it ends (HDF5 1.10.8 otherwise leaks and reports an "infinite loop
 * closing library"). */
void bt_h5_thread_done(void);
/* While quiet (per thread), H5_TRY failures log at debug level: the
 * inspection tool reports problems as its own one-line messages. */
void bt_h5_set_quiet(int quiet);
/* Logs an HDF5 failure; returns BT_EHDF5. */
int bt_h5_fail(const char *file, int line, const char *what);
/* The last HDF5 failure of this thread, "call: message". */
const char *bt_h5_last_error(void);

#define H5_TRY(expr)                                        \
  do {                                                      \
    if ((expr) < 0) {                                       \
      rc = bt_h5_fail(__FILE__, __LINE__, #expr);           \
      goto out;                                             \
    }                                                       \
  } while (0)

/* For calls returning an hid_t to keep. */
#define H5_TRY_ID(var, expr)                                \
  do {                                                      \
    if (((var) = (expr)) < 0) {                             \
      rc = bt_h5_fail(__FILE__, __LINE__, #expr);           \
      goto out;                                             \
    }                                                       \
  } while (0)

/* ---- durable files ---- */

/* open(2) a directory and fsync it, so a rename inside it survives a crash. */
int bt_fsync_dir(const char *dir);
int bt_fsync_path(const char *path);
/* mkdir that accepts an existing directory. */
int bt_mkdir_p1(const char *dir);
/* write(2) until all `len` bytes are written (EINTR retried); 0 or -errno. */
int bt_write_all(int fd, const void *data, size_t len);
/* Writes `len` bytes to path (temp, fsync, rename, fsync of the directory). */
int bt_write_file_durable(const char *path, const void *data, size_t len);
/* rm -r; ENOENT is success. */
int bt_rm_rf(const char *path);
/* Parses "step-NNNNNNNN" (exactly 8+ digits) with an optional ".tmp";
 * returns 1 and fills *step and *tmp on a match, 0 otherwise. */
int bt_parse_step_name(const char *name, int64_t *step, int *tmp);

/* ---- test hook ---- */

/* BATON_CKPT_TEST_STOP=<phase>[:<stage>] stops this process with SIGSTOP
 * when it reaches that point of the protocol (for crash tests). Phases:
 * shard-tmp (shard written, before its rename), shard-renamed (after it,
 * before the report), manifest-partial (half the manifest temp written),
 * manifest-renamed (before the directory rename), dir-renamed (before
 * `latest` moves), tool (`baton ckpt`'s worker process, before it reads
 * anything). `stage` filters shard phases by stage. */
void bt_ckpt_test_stop(const char *phase, int stage);

/* ---- shard internals ---- */

/* The dataset path of a tensor: /layers/000012/W1 or /optim/000012/m/W1. */
int bt_ckpt_dataset_path(const bt_ckpt_tensor_t *t, char *out, size_t size);
int bt_ckpt_name_ok(const char *name);

/* bt_ckpt_save with a hook called after each dataset is written (the
 * writer thread's; NULL: none). */
int bt_ckpt_save_hooked(const char *root, const bt_ckpt_meta_t *meta, const bt_ckpt_tensor_t *t,
                        size_t n, const bt_ckpt_opts_t *opts, bt_ckpt_write_hook_fn hook,
                        void *hook_arg, bt_msg_shard_t *report);

/* The manifest's JSON text (manifest.c). */
int bt_ckpt_manifest_format(const bt_ckpt_manifest_t *m, char **text, size_t *len);

/* bt_ckpt_shard_read, with the dataset CRC check optional (restore skips
 * it on a shard whose whole-file CRC it has just verified). */
int bt_ckpt_shard_read_checked(bt_ckpt_shard_t *s, bt_ckpt_tensor_t *t, uint64_t *stored,
                               int check_crc);

#endif
