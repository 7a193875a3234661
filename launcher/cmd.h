/* cmd.h - `baton run`: the supervisor's job, one worker process per
 * pipeline stage. Each module declares its own subcommand entry in its own
 * cmd.h (schedules/, checkpoint/, worker/, here); launcher/main.c includes
 * them all and dispatches.
 */
#ifndef BT_LAUNCHER_CMD_H
#define BT_LAUNCHER_CMD_H

/* Takes the arguments after `run` (argv[0] is the subcommand) and returns
 * the job's exit code (common/exitcodes.h). */
int bt_cmd_run(int argc, char **argv);

#endif
