/* cmd.h - `baton ckpt`: list, show, verify, diff and hash checkpoints from
 * the files alone. The entry point lives with the module it drives;
 * launcher/main.c includes this header with the other modules' cmd.h.
 */
#ifndef BT_CHECKPOINT_CMD_H
#define BT_CHECKPOINT_CMD_H

/* Takes the arguments after `ckpt` (argv[0] is the subcommand) and returns
 * the exit code: 0 sound, 1 a problem inside a checkpoint, 2 bad arguments
 * or a path that is not a checkpoint. */
int bt_cmd_ckpt(int argc, char **argv);

#endif
