/* cmd_train.c - placeholder entry point for `baton train` until its module lands. */
#include <stdio.h>

#include "launcher/commands.h"

int bt_cmd_train(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "baton: 'train' is not part of this build yet\n");
  return 2;
}
