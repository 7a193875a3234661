/* flags.h - the checkpoint flags of `baton train` and `baton run`, parsed
 * in one place so both commands accept the same spellings, ranges and
 * defaults and print the same messages and help lines.
 *
 *   --ckpt-dir DIR                  checkpoint here (nothing is written without it)
 *   --ckpt-every K                  also save every K steps (the last step always)
 *   --keep N                        newest committed steps kept (default 2, >= 1)
 *   --keep-every K                  also keep every step divisible by K
 *   --ckpt-compress none|deflate[:LEVEL]   shards with byte shuffle + deflate
 *   --resume auto|never|PATH        where the first step's state comes from
 *   --newer-steps refuse|move-aside with --resume PATH: steps of --ckpt-dir off
 *                                   PATH's lineage (checkpoint/lineage.c)
 *
 * This file only turns text into a struct and checks the flags against each
 * other; it does not open the directory, lock it, or decide what resuming
 * means for a command (that is the caller's, with ckpt.h). It never prints:
 * every error is one line in the caller's buffer, which the caller prefixes
 * with its command name and prints before exiting with 2.
 */
#ifndef BT_CHECKPOINT_FLAGS_H
#define BT_CHECKPOINT_FLAGS_H
#include <stddef.h>
#include <stdint.h>

#include "checkpoint/ckpt.h"

/* What --resume asked for. */
typedef enum {
  BT_CKPT_RESUME_AUTO = 0,  /* the newest committed step of --ckpt-dir, if any */
  BT_CKPT_RESUME_NEVER = 1, /* start fresh; the caller refuses a directory with steps */
  BT_CKPT_RESUME_PATH = 2,  /* a given step directory or checkpoint root */
} bt_ckpt_resume_t;

/* Which flags appeared on the command line (bt_ckpt_flags_t.given). */
enum {
  BT_CKPT_FLAG_DIR = 1 << 0,
  BT_CKPT_FLAG_EVERY = 1 << 1,
  BT_CKPT_FLAG_KEEP = 1 << 2,
  BT_CKPT_FLAG_KEEP_EVERY = 1 << 3,
  BT_CKPT_FLAG_COMPRESS = 1 << 4,
  BT_CKPT_FLAG_RESUME = 1 << 5,
  BT_CKPT_FLAG_NEWER_STEPS = 1 << 6,
};

/* Deflate level of a bare `--ckpt-compress deflate`: level 1 compresses
 * float32 weights nearly as much as 6 (1.172x vs 1.187x, shuffled) at
 * about twice the speed (docs/checkpoints.md, bench_checkpoint). */
#define BT_CKPT_DEFLATE_DEFAULT 1

typedef struct {
  const char *dir;          /* --ckpt-dir; NULL: no checkpoints (borrowed from argv) */
  int64_t every;            /* --ckpt-every; 0: only the last step */
  int keep;                 /* --keep; 2 unless given */
  int64_t keep_every;       /* --keep-every; 0: none */
  bt_ckpt_opts_t opts;      /* --ckpt-compress: deflate level, shuffle with it */
  int resume;               /* bt_ckpt_resume_t */
  const char *resume_path;  /* BT_CKPT_RESUME_PATH: the path (borrowed from argv) */
  int move_aside;           /* --newer-steps move-aside (default refuse) */
  unsigned given;           /* BT_CKPT_FLAG_* seen */
} bt_ckpt_flags_t;

/* Every flag at its default (no directory, keep 2, no compression, auto). */
void bt_ckpt_flags_init(bt_ckpt_flags_t *f);

/* 1 if `name` ("--keep" or "keep"; no "=value") is one of the flags above. */
int bt_ckpt_flags_known(const char *name);

/* Sets one flag from its text. `value` must outlive f (argv does). Returns
 * 0, or BT_EARG with one line in err such as
 * "--keep: expected a whole number >= 1, got '0'" (also for an unknown
 * name). A flag given twice takes the last value, as getopt does. */
int bt_ckpt_flags_parse(bt_ckpt_flags_t *f, const char *name, const char *value, char *err,
                        size_t errlen);

/* After the last flag: BT_EARG with one line in err when a flag that only
 * means something with a directory was given without --ckpt-dir. */
int bt_ckpt_flags_check(const bt_ckpt_flags_t *f, char *err, size_t errlen);

/* The retention policy the flags ask for. */
bt_ckpt_retention_t bt_ckpt_flags_retention(const bt_ckpt_flags_t *f);

/* "none", "deflate:1", … as the user would write it (for logs). */
void bt_ckpt_flags_compress_text(const bt_ckpt_flags_t *f, char *out, size_t len);

/* The help lines of the flags (two leading spaces, 25-column option
 * field, one '\n' each), for a command's usage text. */
const char *bt_ckpt_flags_help(void);

#endif
