/* cmd_ckpt.c - placeholder entry point for `baton ckpt` until its module lands. */
#include <stdio.h>

#include "launcher/commands.h"

int bt_cmd_ckpt(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "baton: 'ckpt' is not part of this build yet\n");
  return 2;
}
