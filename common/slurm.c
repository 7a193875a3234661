/* slurm.c - Slurm host lists and job environment (see slurm.h).
 *
 * The host list is parsed twice by one walker: the first pass only checks
 * and counts (hosts and bytes), so "n[0-999999999]" is refused before any
 * allocation, and the second writes the names into one exact-size block.
 */
#include "common/slurm.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/parse.h"

extern char **environ;

#define MAX_DIGITS 9 /* a range bound fits in a long with room to spare */

typedef struct {
  const char *list;
  char *why;
  size_t whylen;
  /* pass 1 counts, pass 2 (names != NULL) writes */
  size_t n, bytes;
  char **names;
  char *arena;
} walk_t;

static int fail(walk_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(walk_t *w, const char *fmt, ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  size_t len = strlen(w->list);
  bt_errf(w->why, w->whylen, "host list \"%.60s%s\": %s", w->list, len > 60 ? "..." : "", what);
  return BT_EARG;
}

static int name_char(int c) { return isalnum(c) || c == '-' || c == '.' || c == '_'; }

/* Checks the plain text [p, p+n) of a host name (outside the brackets). */
static int check_text(walk_t *w, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (name_char(c)) continue;
    if (c == '[' || c == ']') return fail(w, "more than one bracket group in one host name");
    if (isprint(c)) return fail(w, "unexpected character '%c' at offset %zu", c, (size_t)(p + i - w->list));
    return fail(w, "unexpected byte 0x%02x at offset %zu", c, (size_t)(p + i - w->list));
  }
  return 0;
}

/* Adds one host: prefix, then the number (when num >= 0) zero-padded to
 * width, then suffix. Counts on pass 1, writes on pass 2. */
static int emit(walk_t *w, const char *pre, size_t npre, long num, int width, const char *suf, size_t nsuf) {
  char digits[MAX_DIGITS + 2] = "";
  int nd = num >= 0 ? snprintf(digits, sizeof digits, "%0*ld", width, num) : 0;
  size_t len = npre + (size_t)nd + nsuf;
  if (len > BT_HOSTNAME_MAX) return fail(w, "a host name is longer than %d bytes", BT_HOSTNAME_MAX);
  if (w->n >= BT_SLURM_MAX_HOSTS) return fail(w, "more than %d hosts", BT_SLURM_MAX_HOSTS);
  if (w->names) {
    char *dst = w->arena + w->bytes;
    memcpy(dst, pre, npre);
    memcpy(dst + npre, digits, (size_t)nd);
    memcpy(dst + npre + nd, suf, nsuf);
    dst[len] = 0;
    w->names[w->n] = dst;
  }
  w->n++;
  w->bytes += len + 1;
  return 0;
}

/* A run of 1..MAX_DIGITS digits at *p; advances *p. -1 when there is none. */
static long number(const char **p, const char *end, int *ndigits) {
  const char *s = *p;
  long v = 0;
  while (*p < end && isdigit((unsigned char)**p) && *p - s < MAX_DIGITS + 1) {
    v = v * 10 + (**p - '0');
    (*p)++;
  }
  *ndigits = (int)(*p - s);
  return *ndigits == 0 || *ndigits > MAX_DIGITS ? -1 : v;
}

/* One host item [p, end): "name", or "prefix[ranges]suffix". */
static int item(walk_t *w, const char *p, const char *end) {
  if (p == end) return fail(w, "empty host name at offset %zu", (size_t)(p - w->list));
  const char *lb = memchr(p, '[', (size_t)(end - p));
  if (!lb) {
    int rc = check_text(w, p, (size_t)(end - p));
    return rc ? rc : emit(w, p, (size_t)(end - p), -1, 0, "", 0);
  }
  /* The top-level split guarantees one ']' closes this '[' before `end`. */
  const char *rb = memchr(lb, ']', (size_t)(end - lb));
  const char *suf = rb + 1;
  int rc = check_text(w, p, (size_t)(lb - p));
  if (!rc) rc = check_text(w, suf, (size_t)(end - suf));
  if (rc) return rc;
  if (rb == lb + 1) return fail(w, "empty brackets at offset %zu", (size_t)(lb - w->list));
  const char *q = lb + 1;
  while (q < rb) {
    int nlo, nhi;
    const char *at = q;
    long lo = number(&q, rb, &nlo), hi = lo;
    if (lo < 0) {
      if (nlo > MAX_DIGITS) return fail(w, "a number longer than %d digits at offset %zu", MAX_DIGITS,
                                        (size_t)(at - w->list));
      return fail(w, "expected a number at offset %zu", (size_t)(q - w->list));
    }
    if (q < rb && *q == '-') {
      q++;
      const char *at_hi = q;
      hi = number(&q, rb, &nhi);
      if (hi < 0) {
        if (nhi > MAX_DIGITS) return fail(w, "a number longer than %d digits at offset %zu", MAX_DIGITS,
                                          (size_t)(at_hi - w->list));
        return fail(w, "expected a number after '-' at offset %zu", (size_t)(q - w->list));
      }
      if (hi < lo) return fail(w, "reversed range %.*s", (int)(q - at), at);
    }
    if (q < rb && *q != ',') return fail(w, "unexpected character '%c' in brackets at offset %zu", *q,
                                         (size_t)(q - w->list));
    if (q < rb && q + 1 == rb) return fail(w, "empty range before ']' at offset %zu", (size_t)(rb - w->list));
    if (q < rb) q++;
    /* Check the count before expanding, so a huge range costs nothing. */
    if ((uint64_t)w->n + (uint64_t)(hi - lo) + 1 > BT_SLURM_MAX_HOSTS)
      return fail(w, "more than %d hosts", BT_SLURM_MAX_HOSTS);
    for (long v = lo; v <= hi; v++) {
      rc = emit(w, p, (size_t)(lb - p), v, nlo, suf, (size_t)(end - suf));
      if (rc) return rc;
    }
  }
  return 0;
}

/* Splits on commas outside brackets; checks bracket balance. */
static int walk(walk_t *w) {
  const char *s = w->list, *start = s;
  int depth = 0;
  for (const char *p = s;; p++) {
    if (*p == '[') {
      if (depth) return fail(w, "nested '[' at offset %zu", (size_t)(p - s));
      depth = 1;
    } else if (*p == ']') {
      if (!depth) return fail(w, "']' without '[' at offset %zu", (size_t)(p - s));
      depth = 0;
    } else if (*p == 0 || (*p == ',' && !depth)) {
      if (*p == 0 && depth) return fail(w, "'[' without ']'");
      int rc = item(w, start, p);
      if (rc) return rc;
      if (*p == 0) return 0;
      start = p + 1;
    }
  }
}

int bt_hostlist_expand(const char *list, bt_hostlist_t *out, char *why, size_t whylen) {
  out->n = 0;
  out->names = NULL;
  walk_t w = {.list = list ? list : "", .why = why, .whylen = whylen};
  if (!*w.list) return fail(&w, "empty");
  int rc = walk(&w);
  if (rc) return rc;
  size_t n = w.n, bytes = w.bytes;
  char **block = malloc(n * sizeof(char *) + bytes);
  if (!block) {
    bt_errf(why, whylen, "host list: out of memory for %zu hosts", n);
    return -ENOMEM;
  }
  w.names = block;
  w.arena = (char *)(block + n);
  w.n = w.bytes = 0;
  rc = walk(&w);
  if (rc || w.n != n || w.bytes != bytes) {
    /* The same walker over the same string cannot change its mind; this
     * guards the arithmetic above, not the input. */
    free(block);
    if (!rc) bt_errf(why, whylen, "host list: internal count mismatch");
    return rc ? rc : BT_EARG;
  }
  out->n = n;
  out->names = block;
  return 0;
}

void bt_hostlist_free(bt_hostlist_t *h) {
  free(h->names);
  h->names = NULL;
  h->n = 0;
}

/* ---- the job environment ---- */

/* The first of `names` (NULL-terminated) that is set; *which its name. */
static const char *first_set(bt_env_get_fn get, void *ctx, const char *const *names, const char **which) {
  for (; *names; names++) {
    const char *v = get(ctx, *names);
    if (v) {
      *which = *names;
      return v;
    }
  }
  *which = NULL;
  return NULL;
}

int bt_slurm_parse(bt_env_get_fn get, void *ctx, bt_slurm_t *s, char *why, size_t whylen) {
  memset(s, 0, sizeof *s);
  const char *job = get(ctx, "SLURM_JOB_ID");
  if (!job) return 0;
  size_t jl = strlen(job), digits = strspn(job, "0123456789");
  if (jl == 0 || digits != jl || jl >= sizeof s->job_id) {
    bt_errf(why, whylen, "SLURM_JOB_ID=\"%.40s\" is not a job number", job);
    return BT_EARG;
  }
  memcpy(s->job_id, job, jl + 1);

  static const char *const count_vars[] = {"SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES", NULL};
  static const char *const list_vars[] = {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST", NULL};
  const char *count_var, *list_var;
  const char *count = first_set(get, ctx, count_vars, &count_var);
  const char *rank = get(ctx, "SLURM_NODEID");
  const char *list = first_set(get, ctx, list_vars, &list_var);
  int rc = BT_EARG;
  if (!count) {
    bt_errf(why, whylen, "SLURM_JOB_ID is set but not SLURM_NNODES or SLURM_JOB_NUM_NODES");
    goto fail;
  }
  if (!rank) {
    bt_errf(why, whylen, "SLURM_JOB_ID is set but not SLURM_NODEID: start baton with srun, one task per node");
    goto fail;
  }
  if (!list) {
    bt_errf(why, whylen, "SLURM_JOB_ID is set but not SLURM_JOB_NODELIST or SLURM_NODELIST");
    goto fail;
  }
  if (bt_parse_int(count, 1, BT_SLURM_MAX_HOSTS, &s->nnodes)) {
    bt_errf(why, whylen, "%s=\"%.40s\" is not a node count in [1, %d]", count_var, count, BT_SLURM_MAX_HOSTS);
    goto fail;
  }
  if (bt_parse_int(rank, 0, BT_SLURM_MAX_HOSTS, &s->node_rank)) {
    bt_errf(why, whylen, "SLURM_NODEID=\"%.40s\" is not a node index", rank);
    goto fail;
  }
  if (s->node_rank >= s->nnodes) {
    bt_errf(why, whylen, "SLURM_NODEID=%d is not below %s=%d", s->node_rank, count_var, s->nnodes);
    goto fail;
  }
  char lwhy[256];
  rc = bt_hostlist_expand(list, &s->hosts, lwhy, sizeof lwhy);
  if (rc) {
    bt_errf(why, whylen, "%s: %s", list_var, lwhy);
    goto fail;
  }
  rc = BT_EARG;
  if (s->hosts.n != (size_t)s->nnodes) {
    bt_errf(why, whylen, "%s names %zu hosts but %s=%d", list_var, s->hosts.n, count_var, s->nnodes);
    goto fail;
  }
  const char *tasks = get(ctx, "SLURM_STEP_NUM_TASKS");
  int ntasks;
  if (tasks && (bt_parse_int(tasks, 1, INT32_MAX, &ntasks) || ntasks != s->nnodes)) {
    bt_errf(why, whylen, "SLURM_STEP_NUM_TASKS=%.20s but %s=%d: baton runs one task per node "
            "(srun --ntasks-per-node=1)", tasks, count_var, s->nnodes);
    goto fail;
  }
  s->present = 1;
  s->rdzv_host = s->hosts.names[0];
  return 0;
fail:
  bt_slurm_free(s);
  return rc;
}

static const char *envp_get(void *ctx, const char *name) {
  size_t n = strlen(name);
  for (const char *const *e = ctx; *e; e++)
    if (!strncmp(*e, name, n) && (*e)[n] == '=') return *e + n + 1;
  return NULL;
}

int bt_slurm_parse_envp(const char *const *envp, bt_slurm_t *s, char *why, size_t whylen) {
  return bt_slurm_parse(envp_get, (void *)envp, s, why, whylen);
}

int bt_slurm_from_environ(bt_slurm_t *s, char *why, size_t whylen) {
  static const char *const none[] = {NULL};
  /* environ is NULL after clearenv(). */
  return bt_slurm_parse_envp(environ ? (const char *const *)environ : none, s, why, whylen);
}

void bt_slurm_free(bt_slurm_t *s) {
  bt_hostlist_free(&s->hosts);
  memset(s, 0, sizeof *s);
}
