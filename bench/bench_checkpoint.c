/* bench_checkpoint.c - what checkpoints cost, against the raw disk.
 *
 * Same run, same directory: (1) saving a checkpoint of 4 shards + commit
 * against writing the same bytes as one plain file with fsync; (2) loading
 * it (with and without restore's whole-file CRC verification) against
 * reading the plain file, both with the page cache dropped for the files
 * (posix_fadvise DONTNEED after fsync); (3) the time the caller waits per
 * asynchronous save against a bare memcpy of the same bytes; (4) deflate
 * level 1 and 6 (with shuffle) on one shard: compression ratio and
 * throughput against the same shard uncompressed. Prints a table, then one
 * JSON line of ratios. Not a test: nothing is asserted.
 *
 *   bench_checkpoint [--mb N (default 256)] [--dir DIR (default .)] [--reps R (default 3)]
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/parse.h"
#include "common/sysinfo.h"

#define STAGES 4
#define TENSOR_FLOATS (1u << 20) /* 4 MiB tensors */

typedef struct {
  bt_ckpt_tensor_t *t;
  size_t n;
  float *buf;
  size_t floats;
} set_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Weight-like values: roughly normal, scale 0.02, full float mantissas (what
 * makes trained weights hard to compress). */
static float weight(void) {
  double s = 0;
  for (int i = 0; i < 4; i++) s += (double)(rng() >> 11) * (1.0 / 9007199254740992.0);
  return (float)((s - 2.0) * 0.035);
}

/* `layers` layers of one 4 MiB tensor each (param, m, v interleaved by kind). */
static int make_set(set_t *s, uint32_t first_layer, uint32_t layers) {
  s->n = (size_t)layers * 3;
  s->floats = s->n * TENSOR_FLOATS;
  s->t = calloc(s->n, sizeof *s->t);
  s->buf = malloc(s->floats * sizeof(float));
  if (!s->t || !s->buf) return -ENOMEM;
  for (size_t i = 0; i < s->floats; i++) s->buf[i] = weight();
  for (size_t i = 0; i < s->n; i++) {
    bt_ckpt_tensor_t *t = &s->t[i];
    t->layer = first_layer + (uint32_t)(i / 3);
    t->kind = (int)(i % 3);
    t->index = 0;
    snprintf(t->name, sizeof t->name, "W");
    t->ndim = 2;
    t->dims[0] = 1024;
    t->dims[1] = TENSOR_FLOATS / 1024;
    t->data = s->buf + i * TENSOR_FLOATS;
  }
  /* Adam's v is never negative. */
  for (size_t i = 2; i < s->n; i += 3)
    for (size_t k = 0; k < TENSOR_FLOATS; k++) s->t[i].data[k] = fabsf(s->t[i].data[k]) * 1e-3f;
  return 0;
}

static void free_set(set_t *s) {
  free(s->t);
  free(s->buf);
}

static const char *fs_name(long type) {
  switch ((unsigned long)type) {
  case 0xEF53: return "ext2/3/4";
  case 0x01021994: return "tmpfs";
  case 0x58465342: return "xfs";
  case 0x9123683E: return "btrfs";
  case 0x794c7630: return "overlayfs";
  case 0x6969: return "nfs";
  case 0x2fc12fc1: return "zfs";
  case 0x0bd00bd0: return "lustre";
  default: return "other";
  }
}

/* 1 when the whole page cache can be dropped (root: /proc/sys/vm/drop_caches
 * is writable), so "cache dropped" reads come from the disk (or from what
 * the VM's host caches); else only the file's pages are advised away. */
static int can_drop_all = -1;

static void drop_cache(const char *path) {
  if (can_drop_all < 0) can_drop_all = access("/proc/sys/vm/drop_caches", W_OK) == 0;
  if (can_drop_all) {
    sync();
    FILE *f = fopen("/proc/sys/vm/drop_caches", "w");
    if (f && fputs("1\n", f) >= 0 && fclose(f) == 0) return;
    if (f) fclose(f);
    can_drop_all = 0;
  }
  int fd = open(path, O_RDONLY);
  if (fd < 0) return;
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

static void drop_step_cache(const char *root, int64_t step) {
  char p[PATH_MAX], name[64], dir[PATH_MAX];
  bt_ckpt_step_path(root, step, 0, dir, sizeof dir);
  for (uint32_t s = 0; s < STAGES; s++) {
    bt_ckpt_shard_name(s, STAGES, name, sizeof name);
    snprintf(p, sizeof p, "%.3000s/%s", dir, name);
    drop_cache(p);
  }
}

static int plain_write(const char *path, const void *buf, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return -errno;
  const char *p = buf;
  while (len) {
    ssize_t w = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      close(fd);
      return -errno;
    }
    p += w;
    len -= (size_t)w;
  }
  int rc = fsync(fd) < 0 ? -errno : 0;
  close(fd);
  return rc;
}

static int plain_read(const char *path, void *buf, size_t len) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -errno;
  char *p = buf;
  while (len) {
    ssize_t r = read(fd, p, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      close(fd);
      return r < 0 ? -errno : -EIO;
    }
    p += r;
    len -= (size_t)r;
  }
  close(fd);
  return 0;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Saves all stages of `step` and commits; seconds. */
static double save_all(const char *root, int64_t step, set_t *sets, const bt_ckpt_opts_t *opts,
                       uint32_t layer_count, int nstages) {
  bt_msg_shard_t rep[STAGES];
  double t0 = bt_clock_s();
  for (int s = 0; s < nstages; s++) {
    bt_ckpt_meta_t m = {.step = step, .stage = (uint32_t)s, .stages = (uint32_t)nstages,
                        .chunks = 1, .layer_count = layer_count, .seed = 1, .adam_t = step,
                        .model_config = "bench", .run_settings = "bench"};
    int rc = bt_ckpt_save(root, &m, sets[s].t, sets[s].n, opts, &rep[s]);
    if (rc < 0) {
      fprintf(stderr, "bench_checkpoint: save failed: %s\n", bt_strerror(rc));
      return NAN;
    }
  }
  int rc = bt_ckpt_commit(root, step, rep, (size_t)nstages);
  if (rc < 0) {
    fprintf(stderr, "bench_checkpoint: commit failed: %s\n", bt_strerror(rc));
    return NAN;
  }
  return bt_clock_s() - t0;
}

int main(int argc, char **argv) {
  int64_t mb = 256;
  int reps = 3;
  const char *base = ".";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--mb") && i + 1 < argc) {
      if (bt_parse_i64(argv[++i], 48, 1 << 20, &mb) < 0) {
        fprintf(stderr, "bench_checkpoint: --mb wants a whole number of MB >= 48\n");
        return 2;
      }
    } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      if (bt_parse_int(argv[++i], 1, 100, &reps) < 0) {
        fprintf(stderr, "bench_checkpoint: --reps wants 1..100\n");
        return 2;
      }
    } else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
      base = argv[++i];
    } else if (!strcmp(argv[i], "--help")) {
      printf("usage: bench_checkpoint [--mb N] [--dir DIR] [--reps R]\n");
      return 0;
    } else {
      fprintf(stderr, "bench_checkpoint: unknown argument '%s' (try --help)\n", argv[i]);
      return 2;
    }
  }
  bt_log_set_level(BT_LOG_WARN);
  char root[PATH_MAX], plain[PATH_MAX], cpu[256];
  snprintf(root, sizeof root, "%s/bench-ckpt-XXXXXX", base);
  if (!mkdtemp(root)) {
    fprintf(stderr, "bench_checkpoint: cannot make a directory in %s: %s\n", base, strerror(errno));
    return 2;
  }
  if (snprintf(plain, sizeof plain, "%.4000s/plain.bin", root) >= (int)sizeof plain) return 2;
  struct statfs sf;
  statfs(root, &sf);
  bt_sys_cpu_model(cpu, sizeof cpu);

  /* 4 shards, layers split unevenly (1:2:2:3 when divisible). */
  uint32_t layers_total = (uint32_t)(mb / 12); /* 3 tensors of 4 MiB per layer */
  if (layers_total < STAGES) layers_total = STAGES;
  uint32_t split[STAGES + 1] = {0, layers_total / 8, layers_total * 3 / 8, layers_total * 5 / 8,
                                layers_total};
  for (int s = 1; s <= STAGES; s++)
    if (split[s] <= split[s - 1]) split[s] = split[s - 1] + 1;
  layers_total = split[STAGES];
  set_t sets[STAGES];
  size_t bytes = 0;
  for (int s = 0; s < STAGES; s++) {
    if (make_set(&sets[s], split[s], split[s + 1] - split[s]) < 0) {
      fprintf(stderr, "bench_checkpoint: out of memory\n");
      return 1;
    }
    bytes += sets[s].floats * sizeof(float);
  }
  /* The plain baseline writes one contiguous buffer of the same bytes. */
  char *all = malloc(bytes), *back = malloc(bytes);
  if (!all || !back) {
    fprintf(stderr, "bench_checkpoint: out of memory\n");
    return 1;
  }
  size_t off = 0;
  for (int s = 0; s < STAGES; s++) {
    memcpy(all + off, sets[s].buf, sets[s].floats * sizeof(float));
    off += sets[s].floats * sizeof(float);
  }
  double MB = (double)bytes / 1e6;
  double w_plain[100], w_ckpt[100], r_plain[100], r_load[100], r_restore[100];
  int64_t step = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = bt_clock_s();
    if (plain_write(plain, all, bytes) < 0) return 1;
    w_plain[r] = bt_clock_s() - t0;
    w_ckpt[r] = save_all(root, ++step, sets, NULL, layers_total, STAGES);
    if (isnan(w_ckpt[r])) return 1;

    drop_cache(plain);
    t0 = bt_clock_s();
    if (plain_read(plain, back, bytes) < 0) return 1;
    r_plain[r] = bt_clock_s() - t0;

    /* Load every tensor into the same buffer layout (reshard-style, by
     * layer through the manifest). */
    bt_ckpt_tensor_t *want = malloc(sizeof *want * (layers_total * 3));
    size_t nw = 0;
    float *dst = (float *)back;
    for (int s = 0; s < STAGES; s++)
      for (size_t i = 0; i < sets[s].n; i++) {
        want[nw] = sets[s].t[i];
        want[nw].data = dst;
        dst += TENSOR_FLOATS;
        nw++;
      }
    bt_ckpt_step_t st;
    drop_step_cache(root, step);
    char sdir[PATH_MAX];
    bt_ckpt_step_path(root, step, 0, sdir, sizeof sdir);
    t0 = bt_clock_s();
    if (bt_ckpt_step_open(sdir, BT_CKPT_CHECK_CHEAP, &st, NULL, NULL) < 0 ||
        bt_ckpt_step_load(&st, want, nw) < 0)
      return 1;
    r_load[r] = bt_clock_s() - t0;
    bt_ckpt_step_close(&st);
    if (memcmp(back, all, bytes) != 0) {
      fprintf(stderr, "bench_checkpoint: loaded bytes differ from the saved ones\n");
      return 1;
    }
    drop_step_cache(root, step);
    t0 = bt_clock_s();
    if (bt_ckpt_restore(root, want, nw, &st) < 0) return 1;
    r_restore[r] = bt_clock_s() - t0;
    bt_ckpt_step_close(&st);
    free(want);
    bt_ckpt_retain(root, &(bt_ckpt_retention_t){.keep_last = 1}, -1, NULL);
  }

  /* Asynchronous save: what the caller waits for, against memcpy. */
  double a_wait[100], a_copy[100], a_write[100];
  bt_ckpt_writer_t *w;
  if (bt_ckpt_writer_create(&w, root, NULL, NULL, NULL) < 0) return 1;
  {
    /* As a trainer would at start: the first save then waits a memcpy. */
    bt_ckpt_tensor_t *ts = malloc(sizeof *ts * layers_total * 3);
    size_t nt = 0;
    for (int s = 0; s < STAGES; s++)
      for (size_t i = 0; i < sets[s].n; i++) ts[nt++] = sets[s].t[i];
    if (bt_ckpt_writer_reserve(w, ts, nt, 600000) < 0) return 1;
    free(ts);
  }
  for (int r = 0; r < reps; r++) {
    bt_ckpt_result_t res;
    double t0 = bt_clock_s();
    memcpy(back, all, bytes);
    a_copy[r] = bt_clock_s() - t0;
    /* One stage's save holds all the tensors: a stage's whole snapshot. */
    bt_ckpt_tensor_t *ts = malloc(sizeof *ts * layers_total * 3);
    size_t nt = 0;
    for (int s = 0; s < STAGES; s++)
      for (size_t i = 0; i < sets[s].n; i++) ts[nt++] = sets[s].t[i];
    step++;
    bt_ckpt_meta_t m = {.step = step, .stage = 0, .stages = 1, .chunks = 1,
                        .layer_count = layers_total, .seed = 1, .adam_t = step,
                        .model_config = "bench", .run_settings = "bench"};
    t0 = bt_clock_s();
    if (bt_ckpt_save_async(w, &m, ts, nt, 600000) < 0) return 1;
    a_wait[r] = bt_clock_s() - t0;
    if (bt_ckpt_writer_wait(w, 600000, &res) < 0 || res.rc < 0) return 1;
    a_write[r] = res.write_s;
    free(ts);
    if (bt_ckpt_commit(root, step, &res.shard, 1) < 0) return 1;
    bt_ckpt_retain(root, &(bt_ckpt_retention_t){.keep_last = 1}, -1, NULL);
  }
  bt_ckpt_writer_destroy(w);

  /* Deflate on one shard (stage 2), against the same shard uncompressed. */
  set_t *one = &sets[2];
  size_t one_bytes = one->floats * sizeof(float);
  double d_time[3], d_ratio[3];
  const int levels[3] = {0, 1, 6};
  for (int k = 0; k < 3; k++) {
    bt_ckpt_opts_t o = {.deflate = levels[k], .shuffle = levels[k] > 0};
    step++;
    bt_ckpt_meta_t m = {.step = step, .stage = 0, .stages = 1, .chunks = 1,
                        .layer_count = layers_total, .seed = 1, .adam_t = step,
                        .model_config = "bench", .run_settings = "bench"};
    bt_msg_shard_t rep;
    double t0 = bt_clock_s();
    if (bt_ckpt_save(root, &m, one->t, one->n, &o, &rep) < 0) return 1;
    d_time[k] = bt_clock_s() - t0;
    d_ratio[k] = (double)one_bytes / (double)rep.size;
  }

  double wp = median(w_plain, reps), wc = median(w_ckpt, reps), rp = median(r_plain, reps),
         rl = median(r_load, reps), rr = median(r_restore, reps), aw = median(a_wait, reps),
         ac = median(a_copy, reps), awr = median(a_write, reps);
  printf("bench_checkpoint: %.0f MB in %d shards (%u layers x 3 tensors of 4 MiB), median of %d\n",
         MB, STAGES, layers_total, reps);
  printf("page cache before cold reads: %s\n",
         can_drop_all > 0 ? "dropped (/proc/sys/vm/drop_caches = 1)"
                          : "only the files' pages advised away (posix_fadvise; not root)");
  printf("cpu: %s\nfilesystem: %s (statfs type 0x%lx) at %s\n\n", cpu, fs_name((long)sf.f_type),
         (unsigned long)sf.f_type, base);
  printf("%-44s %10s %10s %8s\n", "operation", "seconds", "MB/s", "ratio");
  printf("%-44s %10.3f %10.1f %8s\n", "plain file write + fsync (baseline)", wp, MB / wp, "1.000");
  printf("%-44s %10.3f %10.1f %8.3f\n", "checkpoint save, 4 shards + commit", wc, MB / wc, wp / wc);
  printf("%-44s %10.3f %10.1f %8s\n", "plain file read, cache dropped (baseline)", rp, MB / rp,
         "1.000");
  printf("%-44s %10.3f %10.1f %8.3f\n", "checkpoint load, cache dropped", rl, MB / rl, rp / rl);
  printf("%-44s %10.3f %10.1f %8.3f\n", "restore: CRC verify + load, cache dropped", rr, MB / rr,
         rp / rr);
  printf("%-44s %10.3f %10.1f %8s\n", "memcpy of the snapshot bytes (baseline)", ac, MB / ac,
         "1.000");
  printf("%-44s %10.3f %10.1f %8.3f\n", "async save: caller waits", aw, MB / aw, aw / ac);
  printf("%-44s %10.3f %10.1f %8s\n", "async save: writer thread, in background", awr, MB / awr,
         "");
  double oneMB = (double)one_bytes / 1e6;
  for (int k = 0; k < 3; k++) {
    char label[64];
    snprintf(label, sizeof label, "one shard (%.0f MB), deflate %d%s", oneMB, levels[k],
             levels[k] ? " + shuffle" : " (baseline)");
    printf("%-44s %10.3f %10.1f %8.3f  compression %.3fx\n", label, d_time[k], oneMB / d_time[k],
           d_time[0] / d_time[k], d_ratio[k]);
  }
  printf("\nratios: save and load are baseline time / checkpoint time (1 = disk speed);\n"
         "async is caller wait / memcpy time; deflate is uncompressed time / deflate time.\n");
  printf("{\"bench\":\"checkpoint\",\"mb\":%.0f,\"shards\":%d,\"reps\":%d,\"cpu\":\"%s\","
         "\"fs\":\"%s\",\"save_vs_plain\":%.4f,\"load_vs_plain\":%.4f,"
         "\"restore_vs_plain\":%.4f,\"async_wait_vs_memcpy\":%.4f,"
         "\"deflate1_speed_vs_none\":%.4f,\"deflate6_speed_vs_none\":%.4f,"
         "\"deflate1_compression\":%.4f,\"deflate6_compression\":%.4f,"
         "\"save_MBps\":%.1f,\"plain_write_MBps\":%.1f}\n",
         MB, STAGES, reps, cpu, fs_name((long)sf.f_type), wp / wc, rp / rl, rp / rr, aw / ac,
         d_time[0] / d_time[1], d_time[0] / d_time[2], d_ratio[1], d_ratio[2], MB / wc, MB / wp);

  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (system(cmd) != 0) fprintf(stderr, "bench_checkpoint: could not remove %s\n", root);
  for (int s = 0; s < STAGES; s++) free_set(&sets[s]);
  free(all);
  free(back);
  return 0;
}
