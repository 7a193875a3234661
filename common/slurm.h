/* slurm.h - what `baton run` learns from Slurm's environment under srun.
 *
 * Under `srun baton run ...` each node's baton reads its place in the job
 * from the environment srun sets, so no --nnodes/--node-rank/--rdzv flags
 * are needed. This file only parses; it never reads files, resolves names
 * or talks to slurmctld, and it never prints: every refusal is a negative
 * code (BT_EARG, or -ENOMEM) with one line in `why` for the caller.
 *
 * Host lists are expanded the way `scontrol show hostnames` does, for the
 * forms Slurm writes into SLURM_*_NODELIST:
 *   "node[01-03,07],gpu-a[1-2],login5" -> node01 node02 node03 node07
 *                                          gpu-a1 gpu-a2 login5
 *   "c-[1-2]x"                          -> c-1x c-2x (text after the bracket)
 * A range keeps the width of its first number ("[008-011]" -> 008 ... 011,
 * "[8-11]" -> 8 ... 11). Hosts come out in the order written. Refused: an
 * empty list or host, an unbalanced or empty bracket, a reversed range, a
 * non-digit inside a bracket, more than one bracket group in one host name
 * ("r[1-2]n[1-2]": Slurm's multi-dimensional form, not expanded here),
 * whitespace, a host name longer than 255 bytes, more than
 * BT_SLURM_MAX_HOSTS hosts (checked before anything is allocated).
 *
 * The job (bt_slurm_parse), all taken from the given environment:
 *   present   SLURM_JOB_ID is set (digits only); when it is not, the parse
 *             returns 0 with present = 0 and nothing else filled in.
 *   nnodes    SLURM_STEP_NUM_NODES, else SLURM_NNODES, else
 *             SLURM_JOB_NUM_NODES.
 *   node_rank SLURM_NODEID (srun's node index within the step).
 *   hosts     SLURM_STEP_NODELIST, else SLURM_JOB_NODELIST, else
 *             SLURM_NODELIST, expanded.
 *   rdzv_host the first host of that list (the node of rank 0).
 * The step's variables come first because srun sets SLURM_NODEID relative
 * to the step: `srun -N2` inside a 4-node allocation is a 2-node job, and
 * SLURM_JOB_NODELIST would name all 4. Checks, each a one-line error naming
 * the variables: every number parses, 1 <= nnodes <= BT_SLURM_MAX_HOSTS,
 * 0 <= node_rank < nnodes, the expanded list has exactly nnodes hosts,
 * and, when SLURM_STEP_NUM_TASKS is set, it equals nnodes (baton wants one
 * task per node: `srun --ntasks-per-node=1`).
 */
#ifndef BT_COMMON_SLURM_H
#define BT_COMMON_SLURM_H
#include <stddef.h>

#define BT_SLURM_MAX_HOSTS 65536
#define BT_HOSTNAME_MAX 255

/* An expanded host list: n names, each NUL-terminated, in one allocation. */
typedef struct {
  size_t n;
  char **names;
} bt_hostlist_t;

/* Expands `list` into `out` (freed with bt_hostlist_free, also after a
 * failure). 0, or BT_EARG / -ENOMEM with one line in `why`. */
int bt_hostlist_expand(const char *list, bt_hostlist_t *out, char *why, size_t whylen);
void bt_hostlist_free(bt_hostlist_t *h);

typedef struct {
  int present;           /* SLURM_JOB_ID set */
  char job_id[32];
  int nnodes;
  int node_rank;
  bt_hostlist_t hosts;
  const char *rdzv_host; /* hosts.names[0]; NULL when not present */
} bt_slurm_t;

/* Looks a variable up: its value, or NULL when unset. */
typedef const char *(*bt_env_get_fn)(void *ctx, const char *name);

/* Fills `s` from the variables `get` returns (see the top of this file).
 * 0 (check s->present), or a negative code with one line in `why`. Free
 * with bt_slurm_free whatever the result. */
int bt_slurm_parse(bt_env_get_fn get, void *ctx, bt_slurm_t *s, char *why, size_t whylen);
/* The same from a NULL-terminated array of "NAME=value" strings (a
 * recorded environment); the first entry for a name wins, like getenv. */
int bt_slurm_parse_envp(const char *const *envp, bt_slurm_t *s, char *why, size_t whylen);
/* The same from this process's environment. */
int bt_slurm_from_environ(bt_slurm_t *s, char *why, size_t whylen);
void bt_slurm_free(bt_slurm_t *s);

#endif
