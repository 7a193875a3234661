/* readall.h - reading a whole (small) input file, for the CSV and trace
 * readers of this module; not a general file API. */
#ifndef BT_SCHEDULES_READALL_H
#define BT_SCHEDULES_READALL_H
#include <stddef.h>

/* The file's bytes in a malloc'd buffer (NUL-terminated, the NUL not
 * counted in *len). 0, -errno, or -ENOMEM. */
int bt_sched_read_file(const char *path, char **buf, size_t *len);

#endif
