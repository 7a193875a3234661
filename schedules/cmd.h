/* cmd.h - `baton schedule`: build or read, check, simulate and draw a
 * schedule without running anything. The entry point lives with the module
 * it drives; launcher/main.c includes it with the other modules' cmd.h.
 */
#ifndef BT_SCHEDULES_CMD_H
#define BT_SCHEDULES_CMD_H

/* Takes the arguments after `schedule` (argv[0] is the subcommand) and
 * returns the exit code: 0 done, 2 refused with one line, 1 an output
 * could not be written. */
int bt_cmd_schedule(int argc, char **argv);

#endif
