/* cmd_ckpt.c - `baton ckpt`: list, show, verify, diff and hash checkpoints.
 *
 * For people (and scripts) looking at checkpoints with no training code:
 * everything comes from the files. A path is classified by content
 * (DESIGN.md §6): a directory with MANIFEST.json is a step, a directory
 * holding `latest` or step-* directories is a checkpoint root (commands act
 * on its newest committed step), a file is one shard. Exit codes: 0 sound,
 * 1 a problem inside a checkpoint, 2 bad arguments or a path that is not a
 * checkpoint at all. It never repairs or deletes anything.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/cmd.h"
#include "checkpoint/internal.h"
#include "common/clock.h"
#include "common/file.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/parse.h"

enum { EXIT_SOUND = 0, EXIT_PROBLEM = 1, EXIT_USAGE = 2 };
enum { P_STEP, P_ROOT, P_SHARD };

static const char *kind_str(int kind) {
  return kind == BT_CKPT_PARAM ? "param" : kind == BT_CKPT_ADAM_M ? "adam_m" : "adam_v";
}

/* ---- classifying a path ---- */

static int has_entry(const char *dir, const char *name) {
  char p[PATH_MAX];
  if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return 0;
  return access(p, F_OK) == 0;
}

static int has_steps(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d))) {
    int64_t s;
    int tmp;
    found = bt_parse_step_name(e->d_name, &s, &tmp);
  }
  closedir(d);
  return found;
}

/* Sets *kind, or prints the one-line reason and returns EXIT_USAGE. */
static int classify(const char *path, int *kind) {
  struct stat st;
  if (stat(path, &st) < 0) {
    fprintf(stderr, "baton ckpt: %s: %s\n", path, strerror(errno));
    return EXIT_USAGE;
  }
  if (S_ISDIR(st.st_mode)) {
    if (has_entry(path, BT_CKPT_MANIFEST)) *kind = P_STEP;
    else if (has_entry(path, "latest") || has_steps(path)) *kind = P_ROOT;
    else {
      fprintf(stderr, "baton ckpt: %s: not a checkpoint (a directory with neither %s nor step-* directories)\n",
              path, BT_CKPT_MANIFEST);
      return EXIT_USAGE;
    }
    return 0;
  }
  if (S_ISREG(st.st_mode)) {
    *kind = P_SHARD;
    return 0;
  }
  fprintf(stderr, "baton ckpt: %s: not a checkpoint (neither a directory nor a file)\n", path);
  return EXIT_USAGE;
}

/* The newest committed step of a root into out; EXIT_PROBLEM when none. */
static int newest_step(const char *root, char *out, size_t len) {
  int64_t *steps = NULL;
  size_t n = 0;
  int rc = bt_ckpt_list_steps(root, &steps, &n);
  if (rc < 0) {
    fprintf(stderr, "baton ckpt: %s: %s\n", root, bt_strerror(rc));
    return EXIT_USAGE;
  }
  if (n == 0) {
    printf("%s: no committed step (no step-* directory holds a %s)\n", root, BT_CKPT_MANIFEST);
    free(steps);
    return EXIT_PROBLEM;
  }
  bt_ckpt_step_path(root, steps[0], 0, out, len);
  free(steps);
  return 0;
}

/* ---- sources: the shards a path stands for ---- */

typedef struct {
  char step_dir[PATH_MAX];  /* empty for a lone shard */
  int nfiles;
  char (*files)[PATH_MAX];
  bt_ckpt_step_t st;
  int have_step;
} source_t;

static void source_free(source_t *s) {
  free(s->files);
  if (s->have_step) bt_ckpt_step_close(&s->st);
  memset(s, 0, sizeof *s);
}

/* Problem lines, held back until we know the exit code: a checkpoint of
 * another format version is one stderr line (exit 2), not a list. */
typedef struct {
  char *text;
  size_t len;
} lines_t;

static void keep_problem(void *arg, const char *line) {
  lines_t *l = arg;
  size_t n = strlen(line);
  char *t = realloc(l->text, l->len + n + 2);
  if (!t) return;
  memcpy(t + l->len, line, n);
  t[l->len + n] = '\n';
  t[l->len + n + 1] = 0;
  l->text = t;
  l->len += n + 1;
}

/* Problems with a lone shard: 2 when it is not one at all, 1 when damaged. */
static int shard_open_exit(const char *path, int rc) {
  if (rc == BT_ENOTCKPT) {
    fprintf(stderr, "baton ckpt: %s: not a baton checkpoint shard (not HDF5, or not written by baton)\n", path);
    return EXIT_USAGE;
  }
  if (rc == BT_EVERSION) {
    fprintf(stderr, "baton ckpt: %s: a shard of another format version (this baton reads %d)\n", path,
            BT_CKPT_FORMAT_VERSION);
    return EXIT_USAGE;
  }
  if (rc == -ENOENT) {
    printf("%s: missing\n", path);
    return EXIT_PROBLEM;
  }
  printf("%s: damaged shard: %s\n", path, bt_strerror(rc));
  return EXIT_PROBLEM;
}

/* Opens what a path stands for at `level`; problems printed one per line. */
static int source_open(const char *path, int level, source_t *s) {
  int kind, ex;
  memset(s, 0, sizeof *s);
  if ((ex = classify(path, &kind))) return ex;
  if (kind == P_SHARD) {
    bt_ckpt_shard_t *sh;
    int rc = bt_ckpt_shard_open(path, &sh);
    if (rc < 0) return shard_open_exit(path, rc);
    bt_ckpt_shard_close(sh);
    s->files = malloc(sizeof *s->files);
    if (!s->files) return EXIT_PROBLEM;
    snprintf(s->files[0], sizeof s->files[0], "%s", path);
    s->nfiles = 1;
    return 0;
  }
  if (kind == P_ROOT) {
    if ((ex = newest_step(path, s->step_dir, sizeof s->step_dir))) return ex;
  } else {
    snprintf(s->step_dir, sizeof s->step_dir, "%s", path);
  }
  lines_t problems = {0};
  int rc = bt_ckpt_step_open(s->step_dir, level, &s->st, keep_problem, &problems);
  if (rc < 0) {
    if (rc == BT_EVERSION) {
      fprintf(stderr, "baton ckpt: %s: a checkpoint of another format version (this baton reads %d)\n",
              s->step_dir, BT_CKPT_FORMAT_VERSION);
    } else {
      fputs(problems.text ? problems.text : "", stdout);
    }
    free(problems.text);
    return rc == BT_EVERSION ? EXIT_USAGE : EXIT_PROBLEM;
  }
  free(problems.text);
  s->have_step = 1;
  s->nfiles = (int)s->st.man.nshards;
  s->files = calloc((size_t)s->nfiles, sizeof *s->files);
  if (!s->files) return EXIT_PROBLEM;
  for (int i = 0; i < s->nfiles; i++)
    snprintf(s->files[i], sizeof s->files[i], "%.2000s/%.1000s", s->step_dir,
             s->st.man.shards[i].file);
  return 0;
}

/* ---- tensors, listed up front and read one at a time ---- */

/* Memory stays at the largest tensor (two for diff), whatever the size of
 * the checkpoint: loading a whole checkpoint to look at it is the memory
 * spike users complain about. */
typedef struct {
  bt_ckpt_tensor_t t; /* data NULL */
  int file;
} item_t;

typedef struct {
  const source_t *src;
  bt_ckpt_shard_t **sh; /* [nfiles], NULL where it did not open */
  item_t *v;
  size_t n;
  int problems;
  float *buf;
  size_t cap;
} items_t;

static void items_free(items_t *it) {
  for (int f = 0; it->sh && f < it->src->nfiles; f++) bt_ckpt_shard_close(it->sh[f]);
  free(it->sh);
  free(it->v);
  free(it->buf);
  memset(it, 0, sizeof *it);
}

static int cmp_item(const void *a, const void *b) {
  const bt_ckpt_tensor_t *x = &((const item_t *)a)->t, *y = &((const item_t *)b)->t;
  if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
  if (x->kind != y->kind) return x->kind < y->kind ? -1 : 1;
  if (x->index != y->index) return x->index < y->index ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Opens every shard and lists its datasets (all, or parameters only),
 * sorted by (layer, kind, index); problems are printed and counted. */
static int list_all(const source_t *s, int params_only, items_t *it) {
  memset(it, 0, sizeof *it);
  it->src = s;
  it->sh = calloc((size_t)s->nfiles, sizeof *it->sh);
  if (!it->sh) return -ENOMEM;
  for (int f = 0; f < s->nfiles; f++) {
    bt_ckpt_tensor_t *ts = NULL;
    size_t nt = 0;
    int rc = bt_ckpt_shard_open(s->files[f], &it->sh[f]);
    if (rc < 0) {
      printf("%s: cannot be read as a shard: %s\n", s->files[f], bt_strerror(rc));
      it->problems++;
      it->sh[f] = NULL;
      continue;
    }
    if ((rc = bt_ckpt_shard_list(it->sh[f], &ts, &nt)) < 0) {
      printf("%s: cannot list its datasets: %s\n", s->files[f], bt_strerror(rc));
      it->problems++;
      continue;
    }
    item_t *nv = realloc(it->v, (it->n + nt + 1) * sizeof *nv);
    if (!nv) {
      free(ts);
      return -ENOMEM;
    }
    it->v = nv;
    for (size_t i = 0; i < nt; i++) {
      if (params_only && ts[i].kind != BT_CKPT_PARAM) continue;
      it->v[it->n].t = ts[i];
      it->v[it->n].file = f;
      it->n++;
    }
    free(ts);
  }
  if (it->n) qsort(it->v, it->n, sizeof *it->v, cmp_item);
  return 0;
}

/* Reads item i into the listing's buffer (checking its CRC); *data points
 * there until the next read. A failure is printed and counted. */
static int read_item(items_t *it, size_t i, float **data, uint64_t *stored) {
  item_t *x = &it->v[i];
  size_t n = bt_ckpt_numel(&x->t);
  if (n > it->cap) {
    float *nb = realloc(it->buf, n * sizeof *nb);
    if (!nb) return -ENOMEM;
    it->buf = nb;
    it->cap = n;
  }
  bt_ckpt_tensor_t t = x->t;
  t.data = it->buf;
  int rc = bt_ckpt_shard_read(it->sh[x->file], &t, stored);
  if (rc < 0) {
    printf("%s: tensor '%s' (%s) of layer %u: %s\n", it->src->files[x->file], t.name,
           kind_str(t.kind), t.layer, rc == BT_ECRC ? "fails its CRC" : bt_strerror(rc));
    it->problems++;
    return rc;
  }
  *data = it->buf;
  return 0;
}

/* ---- usage ---- */

static const char *usage_text =
    "usage: baton ckpt <command> [--help] PATH...\n"
    "\n"
    "Inspect and check checkpoints. PATH is a checkpoint root (the --ckpt-dir of a\n"
    "run: commands act on its newest committed step), a step directory (holding\n"
    "MANIFEST.json) or one shard file (.h5).\n"
    "\n"
    "commands:\n"
    "  ls DIR        every step with its state, stage count, size and age\n"
    "  show PATH     root attributes and, per tensor, shape, bytes, compression\n"
    "                ratio, min, max, mean, std, NaN and Inf counts\n"
    "  verify PATH   every check restore makes, reading every byte\n"
    "  diff A B      per tensor, the largest absolute difference\n"
    "  hash PATH     the parameter hash (independent of the sharding)\n"
    "\n"
    "On a step, every shard is first checked against the manifest's size and CRC;\n"
    "a damaged shard is reported, not parsed.\n"
    "\n"
    "exit codes: 0 sound, 1 a problem inside a checkpoint, 2 bad arguments or a\n"
    "path that is not a checkpoint\n"
    "\n"
    "environment: BATON_CKPT_TIMEOUT_S gives up on a read after this many seconds\n"
    "(default 120 plus 1 per 20 MB of input): HDF5 can loop on a damaged file.\n";

static const struct {
  const char *name, *args, *help;
  int npos;
} subs[] = {
    {"ls", "DIR",
     "List every step-* directory of a checkpoint root (or the one step given)\n"
     "with its state: committed (manifest present, every shard present with the\n"
     "size the manifest says), incomplete (in flight or torn: .tmp or no manifest),\n"
     "corrupt (manifest unreadable, a shard missing or of the wrong size). Cheap\n"
     "checks only; `verify` reads every byte. Exit 0 whenever it could list.\n",
     1},
    {"show", "PATH",
     "Print the root attributes (format version, step, stages, chunks, layers,\n"
     "seed, optimizer step, configuration text) and one line per tensor: layer,\n"
     "kind (param, adam_m, adam_v), name, shape, stored and raw bytes, compression\n"
     "ratio, min, max, mean, std, NaN and Inf counts. Exit 1 when a tensor\n"
     "cannot be read or fails its CRC.\n",
     1},
    {"verify", "PATH",
     "Check a step (or a root's newest committed step, or one shard): manifest,\n"
     "every shard present with the right size and whole-file CRC, root attributes\n"
     "agreeing with the manifest, every global layer in exactly one shard, and\n"
     "every dataset read back against its CRC. Exit 0 when sound, 1 with one line\n"
     "per problem.\n",
     1},
    {"diff", "A B",
     "Compare two checkpoints tensor by tensor, matched by global layer, kind and\n"
     "name whatever their sharding; print the largest absolute difference of each.\n"
     "Exit 0 when every tensor is bitwise identical, 1 when one differs or exists\n"
     "on one side only.\n",
     2},
    {"hash", "PATH",
     "Print `hash <32 hex digits>`: XXH3-128 of each parameter tensor combined in\n"
     "(global layer, declared index) order (DESIGN.md §8), the same hash training\n"
     "prints; Adam moments are not included. Independent of the stage count.\n",
     1},
};

/* Checks options and the positional count; returns -1 to go on, else the
 * exit code (0 after --help). */
static int parse_args(int sub, int argc, char **argv, const char **pos) {
  int np = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      printf("usage: baton ckpt %s %s\n\n%s", subs[sub].name, subs[sub].args, subs[sub].help);
      return EXIT_SOUND;
    }
  }
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "baton ckpt %s: unknown option '%s' (try --help)\n", subs[sub].name, argv[i]);
      return EXIT_USAGE;
    }
    if (np == subs[sub].npos) {
      fprintf(stderr, "baton ckpt %s: too many arguments (expected %s)\n", subs[sub].name,
              subs[sub].args);
      return EXIT_USAGE;
    }
    pos[np++] = argv[i];
  }
  if (np != subs[sub].npos) {
    fprintf(stderr, "baton ckpt %s: expected %s (try --help)\n", subs[sub].name, subs[sub].args);
    return EXIT_USAGE;
  }
  return -1;
}

/* ---- ls ---- */

static void human_bytes(uint64_t b, char *out, size_t len) {
  const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int k = 0;
  while (v >= 1024 && k < 4) {
    v /= 1024;
    k++;
  }
  snprintf(out, len, k ? "%.1f %s" : "%.0f %s", v, u[k]);
}

static void human_age(double s, char *out, size_t len) {
  if (s < 120) snprintf(out, len, "%.0fs", s);
  else if (s < 7200) snprintf(out, len, "%.0fm", s / 60);
  else if (s < 172800) snprintf(out, len, "%.1fh", s / 3600);
  else snprintf(out, len, "%.1fd", s / 86400);
}

/* Bytes of the regular files in a directory, and how many end in .h5. */
static uint64_t dir_bytes(const char *dir, int *h5) {
  DIR *d = opendir(dir);
  uint64_t total = 0;
  *h5 = 0;
  if (!d) return 0;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d))) {
    struct stat st;
    if (snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= (int)sizeof p) continue;
    if (stat(p, &st) < 0 || !S_ISREG(st.st_mode)) continue;
    total += (uint64_t)st.st_size;
    size_t n = strlen(e->d_name);
    if (n > 3 && !strcmp(e->d_name + n - 3, ".h5")) ++*h5;
  }
  closedir(d);
  return total;
}

typedef struct {
  int64_t step;
  char name[64];
} lsent_t;

static int cmp_lsent(const void *a, const void *b) {
  const lsent_t *x = a, *y = b;
  if (x->step != y->step) return x->step < y->step ? -1 : 1;
  return strcmp(x->name, y->name);
}

/* Keeps the first problem the check finds, without the step's name. */
static void first_problem(void *arg, const char *line) {
  char *first = arg;
  if (first[0]) return;
  const char *colon = strstr(line, ": ");
  snprintf(first, 200, "%s", colon ? colon + 2 : line);
}

static void ls_one(const char *dir, const char *name, int tmp, const char *latest) {
  char p[PATH_MAX], size[32], age[32], why[256] = "";
  int h5 = 0;
  uint64_t bytes = dir_bytes(dir, &h5);
  struct stat st;
  snprintf(p, sizeof p, "%.4000s/%s", dir, BT_CKPT_MANIFEST);
  int has_manifest = stat(p, &st) == 0;
  if (!has_manifest && stat(dir, &st) < 0) memset(&st, 0, sizeof st);
  const char *state = "incomplete";
  long stages = h5;
  if (has_manifest && !tmp) {
    bt_ckpt_step_t s;
    char first[200] = "";
    int rc = bt_ckpt_step_open(dir, BT_CKPT_CHECK_CHEAP, &s, first_problem, first);
    if (rc == 0) {
      state = "committed";
      stages = s.man.meta.stages;
      bt_ckpt_step_close(&s);
    } else {
      state = "corrupt";
      bt_ckpt_manifest_t m;
      char err[200];
      if (bt_ckpt_manifest_read(p, &m, err, sizeof err) == 0) {
        stages = m.meta.stages;
        /* The check's own words: a missing shard, a wrong size, or a
         * manifest whose step is not its directory's. */
        snprintf(why, sizeof why, "  (%s)", first[0] ? first : "a shard is missing or of the wrong size");
        bt_ckpt_manifest_free(&m);
      } else {
        snprintf(why, sizeof why, "  (manifest: %s)", err);
      }
    }
  } else if (tmp) {
    snprintf(why, sizeof why, "  (in flight or torn)");
  } else {
    snprintf(why, sizeof why, "  (no manifest)");
  }
  human_bytes(bytes, size, sizeof size);
  human_age(difftime(time(NULL), st.st_mtime), age, sizeof age);
  printf("%-22s %-10s %6ld %11s %8s%s%s\n", name, state, stages, size, age,
         latest && !strcmp(latest, name) ? "  <- latest" : "", why);
}

static int cmd_ls(const char *path) {
  int kind, ex;
  if ((ex = classify(path, &kind))) return ex;
  if (kind == P_SHARD) {
    fprintf(stderr, "baton ckpt ls: %s is a file; ls takes a checkpoint root or step directory\n",
            path);
    return EXIT_USAGE;
  }
  printf("%-22s %-10s %6s %11s %8s\n", "STEP", "STATE", "STAGES", "SIZE", "AGE");
  if (kind == P_STEP) {
    const char *b = strrchr(path, '/');
    ls_one(path, b && b[1] ? b + 1 : path, 0, NULL);
    return EXIT_SOUND;
  }
  char latest[64] = "", p[PATH_MAX];
  char *text = NULL;
  size_t len = 0;
  snprintf(p, sizeof p, "%.4000s/latest", path);
  if (bt_file_read_max(p, 4096, &text, &len) == 0) {
    snprintf(latest, sizeof latest, "%.*s", (int)strcspn(text, "\n"), text);
    free(text);
  }
  DIR *d = opendir(path);
  if (!d) {
    fprintf(stderr, "baton ckpt ls: %s: %s\n", path, strerror(errno));
    return EXIT_USAGE;
  }
  lsent_t *v = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    int64_t s;
    int tmp;
    if (!bt_parse_step_name(e->d_name, &s, &tmp) || strlen(e->d_name) >= sizeof v->name) continue;
    lsent_t *nv = realloc(v, (n + 1) * sizeof *nv);
    if (!nv) break;
    v = nv;
    v[n].step = s;
    snprintf(v[n].name, sizeof v[n].name, "%s", e->d_name);
    n++;
  }
  closedir(d);
  if (n) qsort(v, n, sizeof *v, cmp_lsent);
  for (size_t i = 0; i < n; i++) {
    int64_t s;
    int tmp = 0;
    bt_parse_step_name(v[i].name, &s, &tmp);
    snprintf(p, sizeof p, "%.4000s/%s", path, v[i].name);
    ls_one(p, v[i].name, tmp, latest);
  }
  if (n == 0) printf("(no steps)\n");
  free(v);
  return EXIT_SOUND;
}

/* ---- show ---- */

static void print_meta(const bt_ckpt_meta_t *m, int version, int shard) {
  printf("format_version  %d\n", version);
  printf("step            %lld\n", (long long)m->step);
  if (shard) printf("stage           %u\n", m->stage);
  printf("stages          %u\n", m->stages);
  printf("chunks          %u\n", m->chunks);
  printf("layer_count     %u\n", m->layer_count);
  printf("seed            %llu\n", (unsigned long long)m->seed);
  printf("adam_t          %lld\n", (long long)m->adam_t);
  const char *names[] = {"model_config", "run_settings"};
  const char *texts[] = {m->model_config, m->run_settings};
  for (int k = 0; k < 2; k++) {
    printf("%-15s", names[k]);
    const char *t = texts[k] ? texts[k] : "";
    if (!*t) printf(" (empty)");
    /* Indented line by line so a multi-line configuration stays readable. */
    for (int first = 1; *t; first = 0) {
      size_t n = strcspn(t, "\n");
      printf("%s%.*s\n", first ? " " : "                ", (int)n, t);
      t += n + (t[n] == '\n');
    }
    if (!*(texts[k] ? texts[k] : "")) printf("\n");
  }
}

static void shape_str(const bt_ckpt_tensor_t *t, char *out, size_t len) {
  size_t k = (size_t)snprintf(out, len, "(");
  for (int d = 0; d < t->ndim && k < len; d++)
    k += (size_t)snprintf(out + k, len - k, "%s%llu", d ? "," : "", (unsigned long long)t->dims[d]);
  if (k < len) snprintf(out + k, len - k, ")");
}

static int cmd_show(const char *path) {
  source_t s;
  int ex = source_open(path, BT_CKPT_CHECK_CRC, &s);
  if (ex) {
    source_free(&s);
    return ex;
  }
  if (s.have_step) {
    printf("step directory  %s\nshards          %u\n", s.step_dir, s.st.man.nshards);
    print_meta(&s.st.man.meta, s.st.man.version, 0);
  } else {
    bt_ckpt_shard_t *sh;
    if (bt_ckpt_shard_open(s.files[0], &sh) == 0) {
      printf("shard           %s\n", s.files[0]);
      print_meta(bt_ckpt_shard_meta(sh), BT_CKPT_FORMAT_VERSION, 1);
      bt_ckpt_shard_close(sh);
    }
  }
  items_t it;
  if (list_all(&s, 0, &it) < 0) {
    fprintf(stderr, "baton ckpt show: out of memory\n");
    items_free(&it);
    source_free(&s);
    return EXIT_PROBLEM;
  }
  printf("\n%5s %-6s %-10s %-14s %12s %12s %6s %12s %12s %12s %12s %5s %5s\n", "LAYER", "KIND",
         "NAME", "SHAPE", "STORED", "RAW", "RATIO", "MIN", "MAX", "MEAN", "STD", "NAN", "INF");
  uint64_t tot_stored = 0, tot_raw = 0;
  for (size_t i = 0; i < it.n; i++) {
    const bt_ckpt_tensor_t *t = &it.v[i].t;
    float *data;
    uint64_t stored = 0;
    if (read_item(&it, i, &data, &stored) < 0) continue;
    size_t n = bt_ckpt_numel(t);
    double mn = INFINITY, mx = -INFINITY, sum = 0, sq = 0;
    size_t nan = 0, inf = 0, fin = 0;
    for (size_t k = 0; k < n; k++) {
      float x = data[k];
      if (isnan(x)) {
        nan++;
        continue;
      }
      if (isinf(x)) inf++;
      if (x < mn) mn = x;
      if (x > mx) mx = x;
      if (!isinf(x)) {
        sum += x;
        fin++;
      }
    }
    /* Two passes in double: mean, then the spread around it. */
    double mean = fin ? sum / (double)fin : NAN;
    for (size_t k = 0; k < n; k++)
      if (isfinite(data[k])) sq += ((double)data[k] - mean) * ((double)data[k] - mean);
    double sd = fin ? sqrt(sq / (double)fin) : NAN;
    uint64_t raw = (uint64_t)n * sizeof(float);
    char shape[64];
    shape_str(t, shape, sizeof shape);
    printf("%5u %-6s %-10s %-14s %12llu %12llu %6.3f %12.5g %12.5g %12.5g %12.5g %5zu %5zu\n",
           t->layer, kind_str(t->kind), t->name, shape, (unsigned long long)stored,
           (unsigned long long)raw, stored ? (double)raw / (double)stored : 0.0, mn, mx, mean, sd,
           nan, inf);
    tot_stored += stored;
    tot_raw += raw;
  }
  printf("%zu tensors, %llu bytes stored, %llu raw (ratio %.3f)\n", it.n,
         (unsigned long long)tot_stored, (unsigned long long)tot_raw,
         tot_stored ? (double)tot_raw / (double)tot_stored : 0.0);
  ex = it.problems ? EXIT_PROBLEM : EXIT_SOUND;
  items_free(&it);
  source_free(&s);
  return ex;
}

/* ---- verify ---- */

/* A lone shard: its attributes and every dataset. */
static int verify_shard(const char *path) {
  bt_ckpt_shard_t *sh;
  int rc = bt_ckpt_shard_open(path, &sh);
  if (rc < 0) return shard_open_exit(path, rc);
  bt_ckpt_shard_close(sh);
  source_t s = {.nfiles = 1};
  items_t it;
  int problems = 0;
  s.files = malloc(sizeof *s.files);
  if (!s.files) return EXIT_PROBLEM;
  snprintf(s.files[0], sizeof s.files[0], "%s", path);
  if (list_all(&s, 0, &it) < 0) problems++;
  size_t nl = 0;
  const uint32_t *held = it.sh && it.sh[0] ? bt_ckpt_shard_layers(it.sh[0], &nl) : NULL;
  for (size_t i = 0; i < it.n; i++) {
    float *data;
    read_item(&it, i, &data, NULL);
    int ok = 0;
    for (size_t k = 0; k < nl && !ok; k++) ok = held[k] == it.v[i].t.layer;
    if (!ok) {
      printf("%s: tensor '%s' of layer %u is outside the shard's layers\n", path, it.v[i].t.name,
             it.v[i].t.layer);
      problems++;
    }
  }
  for (size_t k = 0; k < nl; k++) {
    int any = 0;
    for (size_t i = 0; i < it.n && !any; i++) any = it.v[i].t.layer == held[k];
    if (!any) {
      printf("%s: layer %u has no tensors\n", path, held[k]);
      problems++;
    }
  }
  problems += it.problems;
  if (!problems) printf("ok: shard %s, %zu layers, %zu tensors\n", path, nl, it.n);
  items_free(&it);
  source_free(&s);
  return problems ? EXIT_PROBLEM : EXIT_SOUND;
}

static int cmd_verify(const char *path) {
  int kind, ex;
  if ((ex = classify(path, &kind))) return ex;
  if (kind == P_SHARD) return verify_shard(path);
  source_t s;
  ex = source_open(path, BT_CKPT_CHECK_DEEP, &s);
  if (!ex) {
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < s.st.man.nshards; i++) bytes += s.st.man.shards[i].size;
    printf("ok: %s, step %lld, %u shards, %u layers, %llu bytes verified\n", s.step_dir,
           (long long)s.st.step, s.st.man.nshards, s.st.man.meta.layer_count,
           (unsigned long long)bytes);
  }
  source_free(&s);
  return ex;
}

/* ---- diff ---- */

static int cmp_key(const bt_ckpt_tensor_t *a, const bt_ckpt_tensor_t *b) {
  if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
  if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
  return strcmp(a->name, b->name);
}

static int cmp_item_key(const void *a, const void *b) {
  return cmp_key(&((const item_t *)a)->t, &((const item_t *)b)->t);
}

static int cmd_diff(const char *a, const char *b) {
  source_t sa, sb;
  items_t ia = {0}, ib = {0};
  int ex = source_open(a, BT_CKPT_CHECK_CRC, &sa);
  if (ex) {
    source_free(&sa);
    return ex;
  }
  if ((ex = source_open(b, BT_CKPT_CHECK_CRC, &sb))) {
    source_free(&sa);
    source_free(&sb);
    return ex;
  }
  if (list_all(&sa, 0, &ia) < 0 || list_all(&sb, 0, &ib) < 0) {
    fprintf(stderr, "baton ckpt diff: out of memory\n");
    ex = EXIT_PROBLEM;
    goto out;
  }
  /* Matched by (layer, kind, name); shape and declared index must agree. */
  if (ia.n) qsort(ia.v, ia.n, sizeof *ia.v, cmp_item_key);
  if (ib.n) qsort(ib.v, ib.n, sizeof *ib.v, cmp_item_key);
  size_t i = 0, k = 0, differ = 0, same = 0;
  printf("%5s %-6s %-10s %s\n", "LAYER", "KIND", "NAME", "MAX |A-B|");
  while (i < ia.n || k < ib.n) {
    const bt_ckpt_tensor_t *x = i < ia.n ? &ia.v[i].t : NULL, *y = k < ib.n ? &ib.v[k].t : NULL;
    int c = !x ? 1 : !y ? -1 : cmp_key(x, y);
    if (c != 0) {
      const bt_ckpt_tensor_t *t = c < 0 ? x : y;
      printf("%5u %-6s %-10s only in %s\n", t->layer, kind_str(t->kind), t->name, c < 0 ? a : b);
      differ++;
      if (c < 0) i++;
      else k++;
      continue;
    }
    int shape = x->ndim == y->ndim && x->index == y->index;
    for (int d = 0; shape && d < x->ndim; d++) shape = x->dims[d] == y->dims[d];
    float *da, *db;
    if (!shape) {
      printf("%5u %-6s %-10s shape or index differs\n", x->layer, kind_str(x->kind), x->name);
      differ++;
    } else if (read_item(&ia, i, &da, NULL) < 0 || read_item(&ib, k, &db, NULL) < 0) {
      differ++;
    } else {
      size_t n = bt_ckpt_numel(x);
      if (!memcmp(da, db, n * sizeof(float))) {
        printf("%5u %-6s %-10s 0 (identical)\n", x->layer, kind_str(x->kind), x->name);
        same++;
      } else {
        double mx = 0;
        for (size_t e = 0; e < n && !isnan(mx); e++) {
          double d = fabs((double)da[e] - (double)db[e]);
          if (isnan(d) || d > mx) mx = d;
        }
        printf("%5u %-6s %-10s %.9g\n", x->layer, kind_str(x->kind), x->name, mx);
        differ++;
      }
    }
    i++;
    k++;
  }
  printf("%zu identical, %zu different or unmatched\n", same, differ);
  ex = (differ || ia.problems || ib.problems) ? EXIT_PROBLEM : EXIT_SOUND;
out:
  items_free(&ia);
  items_free(&ib);
  source_free(&sa);
  source_free(&sb);
  return ex;
}

/* ---- hash ---- */

static void print_line(void *arg, const char *line) {
  (void)arg;
  printf("%s\n", line);
}

static int cmd_hash(const char *path) {
  source_t s;
  const char **files = NULL;
  bt_hash128_t h;
  int ex = source_open(path, BT_CKPT_CHECK_CRC, &s);
  if (ex) goto out;
  if (!(files = calloc((size_t)s.nfiles, sizeof *files))) {
    ex = EXIT_PROBLEM;
    goto out;
  }
  for (int f = 0; f < s.nfiles; f++) files[f] = s.files[f];
  if (bt_ckpt_hash_files(files, (size_t)s.nfiles, &h, print_line, NULL) < 0) {
    ex = EXIT_PROBLEM;
    goto out;
  }
  char hex[33];
  bt_hash_hex(h, hex);
  printf("hash %s\n", hex);
out:
  free(files);
  source_free(&s);
  return ex;
}

static int run_sub(size_t s, const char **pos) {
  switch (s) {
  case 0: return cmd_ls(pos[0]);
  case 1: return cmd_show(pos[0]);
  case 2: return cmd_verify(pos[0]);
  case 3: return cmd_diff(pos[0], pos[1]);
  default: return cmd_hash(pos[0]);
  }
}

/* Bytes of the regular files at path, one or two directory levels down
 * (a shard, a step, or a root's steps): what the command may have to read. */
static uint64_t input_bytes(const char *path, int depth) {
  struct stat st;
  if (stat(path, &st) < 0) return 0;
  if (S_ISREG(st.st_mode)) return (uint64_t)st.st_size;
  if (!S_ISDIR(st.st_mode) || depth == 0) return 0;
  DIR *d = opendir(path);
  if (!d) return 0;
  uint64_t total = 0;
  struct dirent *e;
  char p[PATH_MAX];
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (snprintf(p, sizeof p, "%s/%s", path, e->d_name) >= (int)sizeof p) continue;
    total += input_bytes(p, depth - 1);
  }
  closedir(d);
  return total;
}

/* HDF5 is not hardened against damaged files: a flipped bit in an object
 * header of a lone shard (which has no manifest CRC to check first) can
 * make it copy past a buffer and crash, or loop. The command therefore
 * runs in a child process: a child killed by a signal is reported as what
 * it is, a file too damaged to read (exit 1), never as a crash of ours;
 * one still running past a generous deadline (2 minutes plus 20 MB/s of
 * input, far below any disk; BATON_CKPT_TIMEOUT_S overrides it) is killed
 * and reported the same way. */
static int run_isolated(size_t s, const char **pos) {
  uint64_t bytes = input_bytes(pos[0], 2) + (pos[1] ? input_bytes(pos[1], 2) : 0);
  int64_t limit_ms = 120000 + (int64_t)(bytes / 20000);
  const char *env = getenv("BATON_CKPT_TIMEOUT_S");
  int64_t secs;
  if (env && bt_parse_i64(env, 1, INT64_MAX / 1000, &secs) == 0) limit_ms = secs * 1000;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return run_sub(s, pos); /* no process to spare: run here */
  if (pid == 0) {
    bt_ckpt_test_stop("tool", -1); /* stands in for a read that never ends */
    int code = run_sub(s, pos);
    fflush(stdout);
    fflush(stderr);
    /* _exit: the parent owns the process's exit; HDF5's atexit cleanup
     * has nothing left to do in a child about to vanish. */
    _exit(code);
  }
  uint64_t deadline = bt_deadline_ms(limit_ms);
  int status = 0, waited_ms = 1;
  pid_t r;
  for (;;) {
    do r = waitpid(pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r != 0) break;
    if (bt_ms_left(deadline) == 0) {
      kill(pid, SIGKILL);
      do r = waitpid(pid, &status, 0);
      while (r < 0 && errno == EINTR);
      printf("%s%s%s: gave up after %lld s: the HDF5 library made no end of reading it\n",
             pos[0], pos[1] ? " or " : "", pos[1] ? pos[1] : "", (long long)(limit_ms / 1000));
      return EXIT_PROBLEM;
    }
    bt_sleep_ms(waited_ms);
    if (waited_ms < 50) waited_ms *= 2; /* quick commands answer quickly */
  }
  if (r < 0) return EXIT_PROBLEM;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  printf("%s%s%s: too damaged to read: the HDF5 library crashed on it (signal %d)\n", pos[0],
         pos[1] ? " or " : "", pos[1] ? pos[1] : "", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return EXIT_PROBLEM;
}

int bt_cmd_ckpt(int argc, char **argv) {
  /* Damaged files are expected input here: HDF5's own messages go to the
   * debug log, problems are reported as our one-line messages. */
  bt_h5_thread_init();
  bt_h5_set_quiet(1);
  if (argc < 2) {
    fputs(usage_text, stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    fputs(usage_text, stdout);
    return EXIT_SOUND;
  }
  for (size_t s = 0; s < sizeof subs / sizeof subs[0]; s++) {
    if (strcmp(argv[1], subs[s].name)) continue;
    const char *pos[2] = {NULL, NULL};
    int ex = parse_args((int)s, argc - 1, argv + 1, pos);
    if (ex >= 0) return ex;
    return run_isolated(s, pos);
  }
  fprintf(stderr, "baton ckpt: unknown command '%s' (try `baton ckpt --help`)\n", argv[1]);
  return EXIT_USAGE;
}
