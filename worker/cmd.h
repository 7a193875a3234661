/* cmd.h - the worker module's two subcommands: `baton train` (the model in
 * one process, the reference every pipeline run must match bit for bit)
 * and `baton worker` (one pipeline stage, started by `baton run`). The
 * entry points live with the module they drive; only launcher/main.c
 * includes this header from outside worker/ (DESIGN.md §1: the supervisor
 * never includes worker).
 */
#ifndef BT_WORKER_CMD_H
#define BT_WORKER_CMD_H

/* Takes the arguments after `train` (argv[0] is the subcommand) and returns
 * the exit code: 0 done, 1 a failure while training, 2 bad input, 3
 * non-finite loss or parameters. */
int bt_cmd_train(int argc, char **argv);

/* Takes the arguments after `worker` and returns one of the BT_WEXIT_*
 * codes of common/exitcodes.h. */
int bt_cmd_worker(int argc, char **argv);

#endif
