/* error.h - baton's error codes and their messages.
 *
 * Every function that can fail returns 0 on success and a negative code on
 * failure: either -errno (from the system call that failed) or one of the
 * BT_E... codes below, which live far below any errno value. bt_strerror()
 * turns either kind into a one-line message. This file deliberately holds no
 * logging and no exit paths: only main() and tests exit.
 */
#ifndef BT_COMMON_ERROR_H
#define BT_COMMON_ERROR_H
#include <stddef.h>

/* X(name, message). The numbering is stable: append only. */
#define BT_ERROR_TABLE(X)                                                   \
  X(BT_EARG,        "invalid argument")                                     \
  X(BT_EFORMAT,     "malformed input")                                      \
  X(BT_ECONFIG,     "configuration mismatch")                               \
  X(BT_ETIMEOUT,    "deadline passed")                                      \
  X(BT_EPEER,       "peer lost")                                            \
  X(BT_ETRANSPORT,  "transport error")                                      \
  X(BT_ETAG,        "unexpected message tag")                               \
  X(BT_ECRC,        "checksum mismatch")                                    \
  X(BT_ENOTCKPT,    "not a checkpoint")                                     \
  X(BT_ECORRUPT,    "checkpoint is corrupt")                                \
  X(BT_EHDF5,       "HDF5 error")                                           \
  X(BT_ESCHEDULE,   "invalid schedule")                                     \
  X(BT_EDEADLOCK,   "schedule deadlocks")                                   \
  X(BT_ENONFINITE,  "non-finite value")                                     \
  X(BT_ELOCKED,     "checkpoint directory is locked by another job")        \
  X(BT_EBACKEND,    "compute backend unavailable")                          \
  X(BT_ECUDA,       "CUDA error")                                           \
  X(BT_ENCCL,       "NCCL error")                                           \
  X(BT_EUNSUPPORTED,"not supported")                                        \
  X(BT_ESTOPPED,    "stopped on request")                                   \
  X(BT_EABORT,      "aborted")                                              \
  X(BT_EVERSION,    "unsupported format version")                           \
  X(BT_ENOTREG,     "not a regular file")

enum {
  BT_E_BASE_ = -10000,
#define BT_X_ENUM(name, msg) name,
  BT_ERROR_TABLE(BT_X_ENUM)
#undef BT_X_ENUM
  BT_E_END_
};

/* A one-line message for a code from this table or a -errno value. */
const char *bt_strerror(int code);

/* The symbolic name ("BT_ETIMEOUT", "ENOENT") of a code, for logs and JSON. */
const char *bt_errname(int code);

/* Formats a one-line reason into err (errlen bytes) for a caller that prints
 * it; nothing when err is NULL or errlen is 0. */
void bt_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
