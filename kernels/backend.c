/* backend.c - picks a compute backend by name and loads the GPU library.
 *
 * "cpu" is linked in (kernels/cpu/). "cuda" lives in libbaton_cuda.so, which
 * is loaded here on first use, so one `baton` binary runs on GPU nodes and
 * on machines with no CUDA at all (DESIGN.md §1). The library is dlopen'ed
 * once and never dlclose'd: unloading CUDA's runtime trips LeakSanitizer and
 * nothing is gained by it. A failed load is not remembered, so a caller may
 * try again after fixing BATON_CUDA_LIB. The same handle serves the NCCL
 * transport's device side: bt_cuda_lib_symbol() (kernels/cuda/nccl_dev.h)
 * looks any of the library's exported names up in it.
 *
 * Where the library is looked for: BATON_CUDA_LIB if set (a file, or a
 * directory holding libbaton_cuda.so), else the directory of the running
 * executable (/proc/self/exe), where the build puts it next to `baton`.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cuda/nccl_dev.h"

#define CUDA_LIB_NAME "libbaton_cuda.so"

typedef int (*cuda_create_fn)(int device, bt_backend_t **out, char *why, size_t why_len);

/* The library's handle, once loaded: the CUDA backend and the NCCL
 * transport's device side (kernels/cuda/nccl_dev.h) share it. */
static pthread_mutex_t cuda_lock = PTHREAD_MUTEX_INITIALIZER;
static void *cuda_handle;

static void say(char *why, size_t why_len, const char *fmt, const char *arg) {
  if (why && why_len) snprintf(why, why_len, fmt, arg);
}

/* The library's path: BATON_CUDA_LIB (file or directory), else next to the
 * executable. Returns 0 or a negative code. */
static int cuda_lib_path(char *path, size_t len) {
  const char *env = getenv("BATON_CUDA_LIB");
  int n;
  if (env && *env) {
    struct stat sb;
    if (stat(env, &sb) == 0 && S_ISDIR(sb.st_mode))
      n = snprintf(path, len, "%s/%s", env, CUDA_LIB_NAME);
    else
      n = snprintf(path, len, "%s", env);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
  }
  char exe[PATH_MAX];
  ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (k < 0) return -errno;
  exe[k] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash) *slash = '\0';
  n = snprintf(path, len, "%s/%s", slash ? exe : ".", CUDA_LIB_NAME);
  return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Loads libbaton_cuda.so once per process; returns its handle or NULL with
 * one line in why. */
static void *cuda_lib(char *why, size_t why_len) {
  pthread_mutex_lock(&cuda_lock);
  void *h = cuda_handle;
  if (h) goto done;
  char path[PATH_MAX + 32];
  int rc = cuda_lib_path(path, sizeof path);
  if (rc < 0) {
    say(why, why_len, "cannot locate the CUDA library: %s", bt_strerror(rc));
    goto done;
  }
  if (access(path, F_OK) != 0) {
    say(why, why_len, "CUDA library %s not found next to baton (built without CUDA?)",
        CUDA_LIB_NAME);
    goto done;
  }
  /* RTLD_LOCAL: CUDA's and cuBLAS's symbols stay out of the global scope. */
  h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    /* dlerror() names the missing dependency (libcudart.so.13, ...). */
    say(why, why_len, "cannot load the CUDA library: %s", dlerror());
    goto done;
  }
  cuda_handle = h;
done:
  pthread_mutex_unlock(&cuda_lock);
  return h;
}

void *bt_cuda_lib_symbol(const char *name, char *why, size_t why_len) {
  if (why && why_len) why[0] = '\0';
  void *h = cuda_lib(why, why_len);
  if (!h) return NULL;
  void *sym = dlsym(h, name);
  if (!sym && why && why_len)
    snprintf(why, why_len, "%s has no %s (a stale build?)", CUDA_LIB_NAME, name);
  return sym;
}

/* The backend's entry point in the library. */
static int cuda_load(cuda_create_fn *out, char *why, size_t why_len) {
  void *sym = bt_cuda_lib_symbol("bt_backend_cuda_create", why, why_len);
  if (!sym) return BT_EBACKEND;
  /* POSIX guarantees dlsym's object pointer converts to a function pointer. */
  memcpy(out, &sym, sizeof *out);
  return 0;
}

/* device -1: the node-local rank the launcher gave us, else device 0. A
 * scheduler that hands each task one GPU (CUDA_VISIBLE_DEVICES naming one
 * device) leaves that GPU as device 0 whatever the local rank. */
int bt_cuda_resolve_device(int device) {
  if (device >= 0) return device;
  const char *vis = getenv("CUDA_VISIBLE_DEVICES");
  if (vis && *vis && !strchr(vis, ',')) return 0;
  const char *lr = getenv("LOCAL_RANK");
  if (!lr || !*lr) return 0;
  char *end;
  long v = strtol(lr, &end, 10);
  return (*end == '\0' && v >= 0 && v < 1 << 20) ? (int)v : 0;
}

int bt_backend_create(const char *name, int device, bt_backend_t **out, char *why,
                      size_t why_len) {
  if (why && why_len) why[0] = '\0';
  if (!name || !out) return BT_EARG;
  if (!strcmp(name, "cpu")) {
    int rc = bt_backend_cpu_create(out);
    if (rc < 0) say(why, why_len, "cannot create the CPU backend: %s", bt_strerror(rc));
    return rc;
  }
  if (!strcmp(name, "cuda")) {
    cuda_create_fn create;
    int rc = cuda_load(&create, why, why_len);
    if (rc < 0) return rc;
    rc = create(bt_cuda_resolve_device(device), out, why, why_len);
    if (rc < 0 && why && why_len && !why[0])
      say(why, why_len, "cannot create the CUDA backend: %s", bt_strerror(rc));
    return rc;
  }
  say(why, why_len, "unknown backend '%s' (cpu or cuda)", name);
  return BT_EARG;
}

void bt_backend_destroy(bt_backend_t *be) {
  if (be && be->ops && be->ops->destroy) be->ops->destroy(be);
}
