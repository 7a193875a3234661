/* csv.h - schedules in PyTorch's compute_only CSV format.
 *
 * One row per worker, one action per cell ("0F0,0F1,,0B0"), an empty cell
 * for an idle slot that carries order only: reading drops it. Worker count
 * is the row count; chunks and micro-batches come from the largest virtual
 * stage and micro-batch named; placement is k % p, as everywhere in baton.
 * Communication is never written: comm.h derives it. Reading checks the
 * text and the shape only: bt_sched_validate() judges the schedule.
 */
#ifndef BT_SCHEDULES_CSV_H
#define BT_SCHEDULES_CSV_H
#include <stddef.h>
#include <stdio.h>

#include "schedules/schedule.h"

/* Parses CSV text (len bytes, need not be NUL-terminated). BT_EFORMAT with
 * a one-line message naming line and column for anything malformed. */
int bt_sched_csv_parse(const char *text, size_t len, bt_schedule_t *out, char *err, size_t errlen);
/* The same from a file; -errno when it cannot be read. */
int bt_sched_csv_read(const char *path, bt_schedule_t *out, char *err, size_t errlen);

/* Writes s with each action in the column of its start time in a unit-time
 * run (every action costs 1, no transfer time), empty cells where a worker
 * waits, as PyTorch's generated schedules look; a schedule that does not
 * complete is written without idle cells. 0 or -errno. */
int bt_sched_csv_write(const bt_schedule_t *s, FILE *f);

#endif
