/* flags.c - see flags.h. */
#include "checkpoint/flags.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/parse.h"

#define KEEP_MAX 1000000

static const struct {
  const char *name;
  unsigned bit;
} flags[] = {
    {"ckpt-dir", BT_CKPT_FLAG_DIR},         {"ckpt-every", BT_CKPT_FLAG_EVERY},
    {"keep", BT_CKPT_FLAG_KEEP},            {"keep-every", BT_CKPT_FLAG_KEEP_EVERY},
    {"ckpt-compress", BT_CKPT_FLAG_COMPRESS}, {"resume", BT_CKPT_FLAG_RESUME},
    {"newer-steps", BT_CKPT_FLAG_NEWER_STEPS},
};

static int fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return BT_EARG;
}

/* The flag's bit, or 0 when `name` is not a checkpoint flag. */
static unsigned flag_bit(const char *name) {
  if (!name) return 0;
  if (!strncmp(name, "--", 2)) name += 2;
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (!strcmp(name, flags[i].name)) return flags[i].bit;
  return 0;
}

void bt_ckpt_flags_init(bt_ckpt_flags_t *f) {
  memset(f, 0, sizeof *f);
  f->keep = 2;
  f->resume = BT_CKPT_RESUME_AUTO;
}

int bt_ckpt_flags_known(const char *name) { return flag_bit(name) != 0; }

/* none | deflate | deflate:LEVEL (1..9) | a bare level 0..9, the spelling
 * `baton run --ckpt-compress N` had first (0 is none). */
static int parse_compress(bt_ckpt_opts_t *o, const char *v, char *err, size_t errlen) {
  int level = -1;
  if (!strcmp(v, "none")) level = 0;
  else if (!strcmp(v, "deflate")) level = BT_CKPT_DEFLATE_DEFAULT;
  else if (!strncmp(v, "deflate:", 8)) {
    if (bt_parse_int(v + 8, 1, 9, &level))
      return fail(err, errlen, "--ckpt-compress: the deflate level must be 1..9, got '%s'", v + 8);
  } else if (bt_parse_int(v, 0, 9, &level)) {
    return fail(err, errlen, "--ckpt-compress: expected none, deflate or deflate:LEVEL (1..9), got '%s'",
                v);
  }
  memset(o, 0, sizeof *o);
  o->deflate = level;
  /* Shuffling the bytes of float32 values doubles what deflate saves on
   * weights (about 7% alone, 14-15% shuffled) for little time. */
  o->shuffle = level > 0;
  return 0;
}

int bt_ckpt_flags_parse(bt_ckpt_flags_t *f, const char *name, const char *value, char *err,
                        size_t errlen) {
  unsigned bit = flag_bit(name);
  const char *flag = name && !strncmp(name, "--", 2) ? name + 2 : name;
  if (!bit) return fail(err, errlen, "unknown option '--%s'", flag ? flag : "");
  if (!value) return fail(err, errlen, "--%s needs a value", flag);
  int rc = 0;
  switch (bit) {
  case BT_CKPT_FLAG_DIR:
    if (!*value) return fail(err, errlen, "--ckpt-dir: empty path");
    f->dir = value;
    break;
  case BT_CKPT_FLAG_EVERY:
  case BT_CKPT_FLAG_KEEP_EVERY:
    if (bt_parse_i64(value, 1, INT64_MAX, bit == BT_CKPT_FLAG_EVERY ? &f->every : &f->keep_every))
      return fail(err, errlen, "--%s: expected a whole number >= 1, got '%s'", flag, value);
    break;
  case BT_CKPT_FLAG_KEEP:
    if (bt_parse_int(value, 1, KEEP_MAX, &f->keep))
      return fail(err, errlen, "--keep: expected a whole number in [1, %d], got '%s'", KEEP_MAX,
                  value);
    break;
  case BT_CKPT_FLAG_COMPRESS:
    if ((rc = parse_compress(&f->opts, value, err, errlen))) return rc;
    break;
  case BT_CKPT_FLAG_RESUME:
    if (!*value)
      return fail(err, errlen, "--resume: expected auto, never or a checkpoint path, got ''");
    f->resume_path = NULL;
    if (!strcmp(value, "auto")) f->resume = BT_CKPT_RESUME_AUTO;
    else if (!strcmp(value, "never")) f->resume = BT_CKPT_RESUME_NEVER;
    else {
      /* A directory literally named "auto" is reached as ./auto. */
      f->resume = BT_CKPT_RESUME_PATH;
      f->resume_path = value;
    }
    break;
  case BT_CKPT_FLAG_NEWER_STEPS:
    if (!strcmp(value, "refuse")) f->move_aside = 0;
    else if (!strcmp(value, "move-aside")) f->move_aside = 1;
    else return fail(err, errlen, "--newer-steps: expected refuse or move-aside, got '%s'", value);
    break;
  }
  f->given |= bit;
  return 0;
}

int bt_ckpt_flags_check(const bt_ckpt_flags_t *f, char *err, size_t errlen) {
  if (f->move_aside && f->resume != BT_CKPT_RESUME_PATH)
    return fail(err, errlen, "--newer-steps move-aside means something only with --resume PATH");
  if (f->dir) return 0;
  /* Naming every offender lets the user fix the line in one go. */
  char list[256] = "";
  size_t len = 0;
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    if (flags[i].bit == BT_CKPT_FLAG_DIR || !(f->given & flags[i].bit)) continue;
    int w = snprintf(list + len, sizeof list - len, "%s--%s", len ? ", " : "", flags[i].name);
    if (w > 0 && (size_t)w < sizeof list - len) len += (size_t)w;
  }
  if (!len) return 0;
  return fail(err, errlen, "%s %s only with --ckpt-dir", list,
              strchr(list, ',') ? "mean something" : "means something");
}

bt_ckpt_retention_t bt_ckpt_flags_retention(const bt_ckpt_flags_t *f) {
  return (bt_ckpt_retention_t){.keep_last = f->keep, .keep_every = f->keep_every};
}

void bt_ckpt_flags_compress_text(const bt_ckpt_flags_t *f, char *out, size_t len) {
  if (f->opts.deflate > 0) snprintf(out, len, "deflate:%d", f->opts.deflate);
  else snprintf(out, len, "none");
}

const char *bt_ckpt_flags_help(void) {
  return "  --ckpt-dir DIR           checkpoint here (locked: one job at a time); without it\n"
         "                           nothing is saved\n"
         "  --ckpt-every K           also save every K steps (the last step is always saved)\n"
         "  --keep N                 newest committed steps kept (default 2, at least 1)\n"
         "  --keep-every K           also keep every step divisible by K (default none)\n"
         "  --ckpt-compress C        none (default), deflate (level 1) or deflate:LEVEL\n"
         "                           (1..9), with byte shuffle\n"
         "  --resume R               auto (default): continue from the newest committed step\n"
         "                           of --ckpt-dir if it has one; never: start fresh (refused\n"
         "                           when --ckpt-dir already holds steps); PATH: start from\n"
         "                           that step directory or checkpoint root\n"
         "  --newer-steps S          with --resume PATH, what to do with committed steps of\n"
         "                           --ckpt-dir that are newer than PATH or of another\n"
         "                           lineage: refuse (default: exit 2 naming them) or\n"
         "                           move-aside (into CKPT_DIR/aside-<UTC time>/; nothing\n"
         "                           is deleted)\n";
}
