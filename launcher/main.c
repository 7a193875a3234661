/* main.c - the `baton` executable: dispatches to a subcommand.
 *
 * The only place besides tests that exits. Exit codes of the commands are
 * documented in README.md; bad usage is always 2. Each module declares its
 * own entry in its cmd.h; this file is the one place in launcher/ allowed
 * to include worker/ (for worker/cmd.h alone: cmake/layers.cmake).
 */
#include <stdio.h>
#include <string.h>

#include "checkpoint/cmd.h"
#include "launcher/cmd.h"
#include "schedules/cmd.h"
#include "worker/cmd.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} commands[] = {
    {"run", bt_cmd_run, "train with one worker process per pipeline stage (the main job)"},
    {"train", bt_cmd_train, "train the same model in one process (the reference)"},
    {"schedule", bt_cmd_schedule, "build, validate, simulate and draw a pipeline schedule"},
    {"ckpt", bt_cmd_ckpt, "inspect, verify, diff and hash checkpoints (ls, show, verify, diff, hash)"},
    {"worker", bt_cmd_worker, "one pipeline stage (started by `baton run`, not by people)"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: baton <command> [options]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
  fprintf(f, "\n`baton <command> --help` describes each command.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "baton: unknown command '%s' (try `baton --help`)\n", argv[1]);
  return 2;
}
