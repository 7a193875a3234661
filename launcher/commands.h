/* commands.h - the subcommands of `baton`, one entry point each.
 *
 * Each takes the arguments after its name (argv[0] is the subcommand) and
 * returns the process exit code; none calls exit(). They live with the
 * module they drive: run in launcher/, schedule in schedules/, train and worker in
 * worker/, ckpt in checkpoint/.
 */
#ifndef BT_LAUNCHER_COMMANDS_H
#define BT_LAUNCHER_COMMANDS_H

#include "schedules/cmd.h" /* bt_cmd_schedule */

int bt_cmd_run(int argc, char **argv);
int bt_cmd_train(int argc, char **argv);
int bt_cmd_worker(int argc, char **argv);
int bt_cmd_ckpt(int argc, char **argv);

#endif
