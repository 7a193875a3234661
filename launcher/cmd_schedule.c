/* cmd_schedule.c - placeholder entry point for `baton schedule` until its module lands. */
#include <stdio.h>

#include "launcher/commands.h"

int bt_cmd_schedule(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "baton: 'schedule' is not part of this build yet\n");
  return 2;
}
