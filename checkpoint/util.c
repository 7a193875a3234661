/* util.c - HDF5 error plumbing, durable-file helpers and the crash-test hook
 * of the checkpoint module (see internal.h). Not for use outside checkpoint/.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/file.h"
#include "common/log.h"

static __thread int t_h5_ready;
static pthread_once_t h5_once = PTHREAD_ONCE_INIT;
static atomic_int h5_broken; /* a file HDF5 could not create or close */

/* At exit, HDF5 closes its library only when nothing it could not release
 * is left: HDF5 1.10.8 keeps the internals of a file whose H5Fcreate or
 * H5Fclose failed on a full disk, and its own exit handler then prints
 * "infinite loop closing library" and a line of FL,FL,... for nothing (the
 * process is ending and the kernel frees everything). */
static void h5_at_exit(void) {
  if (!atomic_load(&h5_broken)) H5close();
}

static void h5_process_init(void) {
  H5dont_atexit();
  atexit(h5_at_exit);
}

void bt_h5_note_broken(void) { atomic_store(&h5_broken, 1); }
static __thread int t_h5_quiet;
static __thread char t_h5_last[768];

void bt_h5_thread_init(void) {
  if (t_h5_ready) return;
  pthread_once(&h5_once, h5_process_init);
  /* HDF5's automatic printing is per thread: without this every expected
   * failure (probing a damaged file) dumps a stack trace on stderr. */
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  t_h5_ready = 1;
}

void bt_h5_thread_done(void) { H5Eclear2(H5E_DEFAULT); }

void bt_h5_set_quiet(int quiet) { t_h5_quiet = quiet; }

const char *bt_h5_last_error(void) { return t_h5_last; }

/* Keeps the innermost message (walking upward it comes first): the one
 * that names the cause, e.g. the errno of a failed write. */
static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *arg) {
  if (n == 0 && e->desc) snprintf(arg, 512, "%s", e->desc);
  return 0;
}

int bt_h5_fail(const char *file, int line, const char *what) {
  char msg[512] = "";
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, msg);
  H5Eclear2(H5E_DEFAULT);
  for (char *c = msg; *c; c++)
    if (*c == '\n' || *c == '\r') *c = ' '; /* one log line per failure */
  snprintf(t_h5_last, sizeof t_h5_last, "%s: %s", what, msg[0] ? msg : "failed");
  const char *base = strrchr(file, '/');
  bt_log(t_h5_quiet ? BT_LOG_DEBUG : BT_LOG_ERROR, "HDF5 at %s:%d: %s", base ? base + 1 : file,
         line, t_h5_last);
  return BT_EHDF5;
}

int bt_fsync_path(const char *path) {
  int fd;
  do fd = open(path, O_RDONLY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  int rc = 0;
  if (fsync(fd) < 0) rc = -errno;
  close(fd);
  return rc;
}

int bt_fsync_dir(const char *dir) { return bt_fsync_path(dir); }

int bt_mkdir_p1(const char *dir) {
  if (mkdir(dir, 0755) == 0) return 0;
  if (errno != EEXIST) return -errno;
  struct stat st;
  if (stat(dir, &st) < 0) return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int bt_write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static int dir_of(const char *path, char *out, size_t size) {
  const char *slash = strrchr(path, '/');
  if (!slash) return snprintf(out, size, ".") >= (int)size ? -ENAMETOOLONG : 0;
  size_t n = (size_t)(slash - path);
  if (n == 0) n = 1;
  if (n >= size) return -ENAMETOOLONG;
  memcpy(out, path, n);
  out[n] = 0;
  return 0;
}

int bt_write_file_durable(const char *path, const void *data, size_t len) {
  char tmp[PATH_MAX], dir[PATH_MAX];
  int fd = -1, rc;
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return -ENAMETOOLONG;
  if ((rc = dir_of(path, dir, sizeof dir)) < 0) return rc;
  do fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  if ((rc = bt_write_all(fd, data, len)) < 0) goto out;
  if (fsync(fd) < 0) {
    rc = -errno;
    goto out;
  }
  if (close(fd) < 0) {
    fd = -1;
    rc = -errno;
    goto out;
  }
  fd = -1;
  if (rename(tmp, path) < 0) {
    rc = -errno;
    goto out;
  }
  rc = bt_fsync_dir(dir);
out:
  if (fd >= 0) close(fd);
  if (rc < 0) unlink(tmp);
  return rc;
}


static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  int r = (flag == FTW_DP) ? rmdir(path) : unlink(path);
  return (r < 0 && errno != ENOENT) ? -1 : 0;
}

int bt_rm_rf(const char *path) {
  struct stat st;
  if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : -errno;
  if (!S_ISDIR(st.st_mode)) return unlink(path) < 0 ? -errno : 0;
  if (nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS) < 0) return errno ? -errno : -EIO;
  return 0;
}

int bt_parse_step_name(const char *name, int64_t *step, int *tmp) {
  if (strncmp(name, "step-", 5) != 0) return 0;
  const char *p = name + 5;
  int64_t v = 0;
  int digits = 0;
  while (*p >= '0' && *p <= '9') {
    if (v > (INT64_MAX - 9) / 10) return 0;
    v = v * 10 + (*p - '0');
    p++;
    digits++;
  }
  if (digits < 8) return 0;
  int is_tmp = 0;
  if (!strcmp(p, ".tmp"))
    is_tmp = 1;
  else if (*p)
    return 0;
  *step = v;
  *tmp = is_tmp;
  return 1;
}

void bt_ckpt_test_stop(const char *phase, int stage) {
  const char *want = getenv("BATON_CKPT_TEST_STOP");
  if (!want || !*want) return;
  size_t plen = strlen(phase);
  if (strncmp(want, phase, plen) != 0) return;
  if (want[plen] == ':') {
    if (stage < 0 || atoi(want + plen + 1) != stage) return;
  } else if (want[plen]) {
    return;
  }
  bt_warn("test hook: stopping at %s", phase);
  raise(SIGSTOP);
}

size_t bt_ckpt_numel(const bt_ckpt_tensor_t *t) {
  size_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= (size_t)t->dims[d];
  return n;
}

void bt_ckpt_shard_name(uint32_t stage, uint32_t stages, char *out, size_t size) {
  snprintf(out, size, "stage-%03u-of-%03u.h5", stage, stages);
}

int bt_ckpt_step_path(const char *root, int64_t step, int tmp, char *out, size_t size) {
  int n = snprintf(out, size, "%s/step-%08lld%s", root, (long long)step, tmp ? ".tmp" : "");
  return (n < 0 || (size_t)n >= size) ? -ENAMETOOLONG : 0;
}

int bt_ckpt_name_ok(const char *name) {
  size_t n = strnlen(name, BT_CKPT_NAME_MAX);
  if (n == 0 || n == BT_CKPT_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '.' || c == '-'))
      return 0;
  }
  /* "." and ".." are not dataset names HDF5 can address. */
  return strcmp(name, ".") && strcmp(name, "..");
}

int bt_ckpt_dataset_path(const bt_ckpt_tensor_t *t, char *out, size_t size) {
  int n;
  if (t->kind == BT_CKPT_PARAM)
    n = snprintf(out, size, "/layers/%06u/%s", t->layer, t->name);
  else if (t->kind == BT_CKPT_ADAM_M || t->kind == BT_CKPT_ADAM_V)
    n = snprintf(out, size, "/optim/%06u/%s/%s", t->layer, t->kind == BT_CKPT_ADAM_M ? "m" : "v",
                 t->name);
  else
    return BT_EARG;
  return (n < 0 || (size_t)n >= size) ? BT_EARG : 0;
}

void bt_ckpt_meta_free(bt_ckpt_meta_t *m) {
  free(m->model_config);
  free(m->run_settings);
  m->model_config = m->run_settings = NULL;
}
