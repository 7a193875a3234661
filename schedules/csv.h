/* csv.h - schedules in PyTorch's CSV formats, both notations.
 *
 * One row per worker, one action per cell ("0F0,0F1,,0I0"), an empty cell
 * for an idle slot that carries order only: reading drops it. Worker count
 * is the row count; micro-batches come from the largest micro-batch named;
 * the placement is read from the rows (the worker of virtual stage k is the
 * row k appears in: k % p, a V, or anything that gives every worker the
 * same number of stages), and the chunk count is stages / workers.
 *
 * Notations. PyTorch has written actions two ways:
 *   current   F forward, I input half, W weight half, B full backward
 *   earlier   F forward, B input half when a W of the same stage and
 *             micro-batch exists, else full; BW full backward
 * A file is read in the notation its cells show (an I says current; a BW,
 * or a B whose W exists, says earlier; a file with neither reads the same
 * both ways) and a file that shows both is refused naming the first cell
 * that conflicts. Writing uses the current notation unless asked.
 *
 * Compound cells "(0F7;7B3)OVERLAP_F_B" (DualPipeV's overlapped pairs) are
 * read as the F, marked overlap, followed by the backward; written back the
 * same way.
 *
 * Communication ("_comms" files): SEND_F, RECV_F, SEND_B, RECV_B cells
 * between the compute actions, named by the stage that sends or receives
 * ("1RECV_F0": stage 1 receives micro-batch 0's activation). baton derives
 * communication itself (comm.h), so reading checks them against it: every
 * derived message has its cell and no other exists, each RECV comes before
 * the action that needs it and each SEND after the action that produces
 * it (the worker's communication rule); the first offending cell is named.
 * Writing them is optional.
 *
 * UNSHARD, RESHARD and REDUCE_GRAD (FSDP actions) are refused with one line
 * naming the cell, or dropped when skip_unsupported is set (the count and
 * the first one come back for a warning).
 */
#ifndef BT_SCHEDULES_CSV_H
#define BT_SCHEDULES_CSV_H
#include <stddef.h>
#include <stdio.h>

#include "schedules/schedule.h"

typedef enum { BT_CSV_CURRENT = 0, BT_CSV_EARLIER = 1 } bt_csv_notation_t;

typedef struct {
  int notation;         /* write: the notation to use; read: the one detected */
  int comms;            /* write: add SEND/RECV cells; read: 1 when the file had them */
  int skip_unsupported; /* read: drop UNSHARD/RESHARD/REDUCE_GRAD instead of refusing */
  int skipped;          /* read: how many cells were dropped */
  char first_skipped[64]; /* read: "line L column C: 0UNSHARD", for the warning */
} bt_csv_opts_t;

/* Parses CSV text (len bytes, need not be NUL-terminated). BT_EFORMAT with
 * a one-line message naming line and column for anything malformed,
 * mixed, misplaced or (comms) disagreeing with the derived messages.
 * opts may be NULL (refuse unsupported actions, detection result unused). */
int bt_sched_csv_parse_opts(const char *text, size_t len, bt_csv_opts_t *opts, bt_schedule_t *out,
                            char *err, size_t errlen);
int bt_sched_csv_parse(const char *text, size_t len, bt_schedule_t *out, char *err, size_t errlen);
/* The same from a file; -errno when it cannot be read. */
int bt_sched_csv_read_opts(const char *path, bt_csv_opts_t *opts, bt_schedule_t *out, char *err,
                           size_t errlen);
int bt_sched_csv_read(const char *path, bt_schedule_t *out, char *err, size_t errlen);

/* Writes s with each action in the column of its start time in a unit-time
 * run (every action costs 1, no transfer time), empty cells where a worker
 * waits, as PyTorch's generated schedules look; a schedule that does not
 * complete, or a file with communication cells, is written without idle
 * cells. opts may be NULL (current notation, compute only). 0 or -errno. */
int bt_sched_csv_write_opts(const bt_schedule_t *s, const bt_csv_opts_t *opts, FILE *f);
int bt_sched_csv_write(const bt_schedule_t *s, FILE *f);

#endif
