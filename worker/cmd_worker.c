/* cmd_worker.c - placeholder entry point for `baton worker` until its module lands. */
#include <stdio.h>

#include "launcher/commands.h"

int bt_cmd_worker(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "baton: 'worker' is not part of this build yet\n");
  return 2;
}
