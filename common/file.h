/* file.h - opening the files baton reads, safely.
 *
 * Every file named on a command line or in a checkpoint is opened here: the
 * descriptor is opened non-blocking (a FIFO must not block the open), checked
 * with fstat on that same descriptor (no stat-then-open race: a path swapped
 * for a FIFO or a link to /dev/zero between the two is still refused), and
 * read with a size bound suited to its kind, so a hostile path is one error
 * instead of a hang or gigabytes of memory. Not for files baton writes.
 */
#ifndef BT_COMMON_FILE_H
#define BT_COMMON_FILE_H
#include <stddef.h>
#include <stdint.h>

/* The kinds of file baton reads, each with its own size bound. */
typedef enum {
  BT_FILE_DATA,     /* --data: a training text (held in memory whole) */
  BT_FILE_SCHEDULE, /* --schedule: a schedule CSV */
  BT_FILE_TRACE,    /* --from-trace: a Chrome trace JSON */
  BT_FILE_MANIFEST, /* a checkpoint's MANIFEST.json, or a short text file in it */
  BT_FILE_SHARD,    /* a checkpoint shard (HDF5) */
} bt_file_kind_t;

/* The most bytes a file of this kind may hold. */
uint64_t bt_file_limit(bt_file_kind_t kind);

/* Opens `path` read-only and checks the open descriptor: a directory is
 * -EISDIR, anything else that is not a regular file BT_ENOTREG, a file over
 * `max` bytes -EFBIG. On success *fd is a blocking descriptor (caller closes)
 * and *size the file's size. Other failures are -errno. */
int bt_file_open(const char *path, uint64_t max, int *fd, uint64_t *size);

/* The whole file, NUL-terminated (caller frees *out), through bt_file_open
 * with the bound of `kind`; a file that grows past the bound while it is read
 * is -EFBIG. */
int bt_file_read(const char *path, bt_file_kind_t kind, char **out, size_t *len);

/* The same with an explicit bound of `max` bytes (a file of exactly max
 * bytes reads whole). */
int bt_file_read_max(const char *path, uint64_t max, char **out, size_t *len);

/* The CRC-32 and size of a regular file through bt_file_open with the bound
 * of `kind` (reads at most the bound, so a file that grows cannot spin it). */
int bt_file_crc32(const char *path, bt_file_kind_t kind, uint32_t *crc, uint64_t *size);

#endif
