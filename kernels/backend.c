/* backend.c - picks a compute backend by name and loads the GPU library.
 *
 * "cpu" is linked in (kernels/cpu/). "cuda" lives in libbaton_cuda.so, which
 * is loaded here on first use, so one `baton` binary runs on GPU nodes and
 * on machines with no CUDA at all (DESIGN.md §1). The library is dlopen'ed
 * once and never dlclose'd: unloading CUDA's runtime trips LeakSanitizer and
 * nothing is gained by it. A failed load is not remembered, so a caller may
 * try again after fixing BATON_CUDA_LIB. The NCCL transport's device side
 * is a library of its own, libbaton_nccl.so, loaded the same way but only
 * when a run uses NCCL (bt_cuda_lib_symbol, kernels/cuda/nccl_dev.h), so
 * the compute backend works where NCCL is missing or cannot load.
 *
 * Where the libraries are looked for: BATON_CUDA_LIB if set (a directory
 * holding them, or the file libbaton_cuda.so, whose directory then holds
 * libbaton_nccl.so too), else the directory of the running executable
 * (/proc/self/exe), where the build puts them next to `baton`.
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
#define NCCL_LIB_NAME "libbaton_nccl.so"

typedef int (*cuda_create_fn)(int device, bt_backend_t **out, char *why, size_t why_len);

/* The libraries' handles, once loaded. */
static pthread_mutex_t cuda_lock = PTHREAD_MUTEX_INITIALIZER;
static void *cuda_handle, *nccl_handle;

static void say(char *why, size_t why_len, const char *fmt, const char *arg) {
  if (why && why_len) snprintf(why, why_len, fmt, arg);
}

/* The path of library `name`: BATON_CUDA_LIB (the directory, or the
 * backend's file and its directory for the other), else next to the
 * executable. Returns 0 or a negative code. */
static int cuda_lib_path(const char *name, char *path, size_t len) {
  const char *env = getenv("BATON_CUDA_LIB");
  int n;
  if (env && *env) {
    struct stat sb;
    if (stat(env, &sb) == 0 && S_ISDIR(sb.st_mode)) {
      n = snprintf(path, len, "%s/%s", env, name);
    } else if (!strcmp(name, CUDA_LIB_NAME)) {
      n = snprintf(path, len, "%s", env);
    } else {
      const char *slash = strrchr(env, '/');
      n = slash ? snprintf(path, len, "%.*s/%s", (int)(slash - env), env, name)
                : snprintf(path, len, "%s", name);
    }
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
  }
  char exe[PATH_MAX];
  ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (k < 0) return -errno;
  exe[k] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash) *slash = '\0';
  n = snprintf(path, len, "%s/%s", slash ? exe : ".", name);
  return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Loads library `name` once per process into *slot; returns its handle or
 * NULL with one line in why. */
static void *load_lib(const char *name, void **slot, char *why, size_t why_len) {
  pthread_mutex_lock(&cuda_lock);
  void *h = *slot;
  if (h) goto done;
  char path[PATH_MAX + 32];
  int rc = cuda_lib_path(name, path, sizeof path);
  if (rc < 0) {
    say(why, why_len, "cannot locate the GPU library: %s", bt_strerror(rc));
    goto done;
  }
  if (access(path, F_OK) != 0) {
    if (why && why_len)
      snprintf(why, why_len, "%s library %s not found next to baton (built without CUDA?)",
               strcmp(name, CUDA_LIB_NAME) ? "NCCL" : "CUDA", name);
    goto done;
  }
  /* RTLD_LOCAL: CUDA's, cuBLAS's and NCCL's symbols stay out of the
   * global scope. */
  h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    /* dlerror() names the missing dependency (libcudart.so.13,
     * libnccl.so.2, ...). */
    say(why, why_len, "cannot load the GPU library: %s", dlerror());
    goto done;
  }
  *slot = h;
done:
  pthread_mutex_unlock(&cuda_lock);
  return h;
}

static void *lib_symbol(const char *lib, void **slot, const char *name, char *why,
                        size_t why_len) {
  if (why && why_len) why[0] = '\0';
  void *h = load_lib(lib, slot, why, why_len);
  if (!h) return NULL;
  void *sym = dlsym(h, name);
  if (!sym && why && why_len) snprintf(why, why_len, "%s has no %s (a stale build?)", lib, name);
  return sym;
}

/* The NCCL transport's names (bt_nccl_dev_get) live in libbaton_nccl.so,
 * everything else in libbaton_cuda.so. */
void *bt_cuda_lib_symbol(const char *name, char *why, size_t why_len) {
  if (!strncmp(name, "bt_nccl_", 8))
    return lib_symbol(NCCL_LIB_NAME, &nccl_handle, name, why, why_len);
  return lib_symbol(CUDA_LIB_NAME, &cuda_handle, name, why, why_len);
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

int bt_backend_cuda_devices(int *count, char *why, size_t why_len) {
  *count = 0;
  void *sym = bt_cuda_lib_symbol("bt_cuda_device_count", why, why_len);
  if (!sym) return BT_EBACKEND;
  int (*fn)(int *);
  memcpy(&fn, &sym, sizeof fn);
  if (fn(count) < 0) {
    say(why, why_len, "%s", "no usable CUDA driver (libcuda.so.1 missing or too old)");
    return BT_EBACKEND;
  }
  return 0;
}

void bt_backend_destroy(bt_backend_t *be) {
  if (be && be->ops && be->ops->destroy) be->ops->destroy(be);
}
