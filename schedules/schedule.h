/* schedule.h - pipeline schedules as data: actions, builders, validation.
 *
 * A schedule is, for each of the p workers, its ordered list of compute
 * actions (virtual stage, type, micro-batch), written as PyTorch's
 * torch.distributed.pipelining writes them ("2F0", "5I3", "5W3").
 * Placement is data (DESIGN.md §3): by default virtual stage k = c·p + s
 * is chunk c of worker s (worker_of(k) = k % p, the Megatron interleaved
 * placement); a schedule may carry its own map instead, such as the V
 * placement of zb-v and dualpipev (worker s holds s and 2p − 1 − s) or
 * whatever rows a CSV puts its stages in. A worker's chunks are its
 * virtual stages in increasing order.
 *
 * This file builds schedules (gpipe, 1f1b, interleaved, zb-h1, zb-v,
 * dualpipev); check.h checks them; communication is derived from the compute actions in comm.h, the
 * timing model is sim.h, CSV in/out is csv.h, drawing is render.h. It does
 * not run anything: the worker walks these lists, the launcher and
 * `baton schedule` build and check them.
 */
#ifndef BT_SCHEDULES_SCHEDULE_H
#define BT_SCHEDULES_SCHEDULE_H
#include <stddef.h>
#include <stdint.h>

typedef enum {
  BT_ACT_F = 0, /* forward */
  BT_ACT_B = 1, /* full backward: input gradient then weight gradient */
  BT_ACT_I = 2, /* input gradient only */
  BT_ACT_W = 3, /* weight gradient only */
} bt_act_type_t;

#define BT_ACT_NTYPES 4

typedef struct {
  int32_t stage; /* virtual stage k */
  int32_t mb;    /* micro-batch */
  int32_t type;  /* bt_act_type_t */
  /* 1 on an F whose next action on the same worker is the B it overlaps
   * with: DualPipeV's OVERLAP_F_B pair, written "(aF x;bB y)OVERLAP_F_B".
   * The worker runs the pair as F then B; on one CPU thread or one GPU
   * stream the overlap is an order, not concurrency. 0 everywhere else. */
  int32_t overlap;
} bt_action_t;

/* Limits that keep every index product inside 32 bits. */
#define BT_SCHED_MAX_STAGES 1024
#define BT_SCHED_MAX_CHUNKS 64
#define BT_SCHED_MAX_MICROBATCHES (1 << 20)
#define BT_SCHED_MAX_ACTIONS ((size_t)1 << 28)

typedef struct {
  char name[32];     /* a builder's name, or "csv" */
  int p;             /* workers (pipeline stages) */
  int v;             /* chunks per worker */
  int m;             /* micro-batches */
  bt_action_t *acts; /* every worker's actions, worker 0's first */
  size_t *off;       /* p + 1 offsets: worker w owns acts[off[w] .. off[w+1]) */
  /* NULL for the k % p placement, else p·v entries each: the worker of
   * virtual stage k, its chunk on that worker, and (stage_at) the virtual
   * stage of chunk c of worker w at w·v + c. Set by bt_sched_set_placement. */
  int32_t *place, *chunk, *stage_at;
} bt_schedule_t;

static inline int bt_sched_worker_of(const bt_schedule_t *s, int k) {
  return s->place ? s->place[k] : k % s->p;
}
static inline int bt_sched_chunk_of(const bt_schedule_t *s, int k) {
  return s->place ? s->chunk[k] : k / s->p;
}
/* The virtual stage of chunk c on worker w. */
static inline int bt_sched_stage_of(const bt_schedule_t *s, int w, int c) {
  return s->place ? s->stage_at[w * s->v + c] : c * s->p + w;
}
static inline int bt_sched_nstages(const bt_schedule_t *s) { return s->p * s->v; }
static inline size_t bt_sched_len(const bt_schedule_t *s, int w) {
  return s->off[w + 1] - s->off[w];
}
static inline const bt_action_t *bt_sched_at(const bt_schedule_t *s, int w, size_t j) {
  return &s->acts[s->off[w] + j];
}

/* The letter of a type ('F', 'B', 'I', 'W'), or '?' for anything else. */
char bt_act_letter(int type);
/* "2F0" into buf (at least 32 bytes); returns buf. */
char *bt_action_format(const bt_action_t *a, char *buf, size_t len);
/* Parses exactly "<stage><F|B|I|W><mb>" (decimal, no sign, no spaces);
 * 0 or BT_EFORMAT. */
int bt_action_parse(const char *s, bt_action_t *out);

/* Gives s the placement place[k] (p·v entries, each worker holding exactly
 * v stages); a placement equal to k % p is stored as NULL. BT_ESCHEDULE
 * with a one-line reason, -ENOMEM. */
int bt_sched_set_placement(bt_schedule_t *s, const int32_t *place, char *err, size_t errlen);
/* The V placement of p workers: worker s holds s and 2p − 1 − s. place has
 * 2p entries. */
void bt_sched_v_placement(int p, int32_t *place);
/* 1 when s uses the V placement (and v = 2). */
int bt_sched_is_v(const bt_schedule_t *s);

/* The schedule names bt_sched_build knows, NULL-terminated. */
extern const char *const bt_sched_names[];

/* Builds schedule `name` for p workers, v chunks, m micro-batches. Bad
 * parameters give BT_EARG and a one-line message in err naming the rule and
 * a value that works. *out is zeroed first and owned by the caller.
 * zb-v and dualpipev take v = 2 in the V placement; zb-v any m >= 1,
 * dualpipev m >= 2p (PyTorch's rule). */
int bt_sched_build(const char *name, int p, int v, int m, bt_schedule_t *out, char *err,
                   size_t errlen);
/* An empty schedule with room for `total` actions, off[] all zero; used by
 * the builders and the CSV reader. */
int bt_sched_alloc(bt_schedule_t *s, const char *name, int p, int v, int m, size_t total);
void bt_sched_free(bt_schedule_t *s);

/* Interleaving's micro-batch group size: the smallest N >= p with
 * m mod N == 0 or m mod N >= p. */
int bt_sched_group_size(int p, int m);

/* A lookup from bt_sched_key() to the action's index in acts (UINT32_MAX
 * where absent). BT_ESCHEDULE, with a message, for an action out of range,
 * on the wrong worker, or present twice. The caller frees *out. */
int bt_sched_index(const bt_schedule_t *s, uint32_t **out, char *err, size_t errlen);

/* Index of action (stage, type, mb) in a lookup table of V·m·4 entries. */
static inline size_t bt_sched_key(const bt_schedule_t *s, int stage, int type, int mb) {
  /* Micro-batch major: an action's inputs, (k-1, i) and (k+1, i), share its
   * cache line, and a pipeline works on a window of micro-batches at a time,
   * so the simulator's lookups stay in cache. */
  return ((size_t)mb * (size_t)bt_sched_nstages(s) + (size_t)stage) * BT_ACT_NTYPES +
         (size_t)type;
}

#endif
