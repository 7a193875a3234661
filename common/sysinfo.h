/* sysinfo.h - where a benchmark ran: the CPU model and a path's filesystem.
 * Every benchmark prints both (tests never need them). */
#ifndef BT_COMMON_SYSINFO_H
#define BT_COMMON_SYSINFO_H
#include <stddef.h>

/* The "model name" of /proc/cpuinfo, or "unknown". */
void bt_sys_cpu_model(char *out, size_t len);
/* The filesystem holding `path` by its statfs magic ("ext4", "tmpfs", ...,
 * "other", or "unknown" when statfs fails). */
const char *bt_sys_fs_name(const char *path);

#endif
