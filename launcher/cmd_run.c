/* cmd_run.c - placeholder entry point for `baton run` until its module lands. */
#include <stdio.h>

#include "launcher/commands.h"

int bt_cmd_run(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "baton: 'run' is not part of this build yet\n");
  return 2;
}
