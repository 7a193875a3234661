/* crc.h - CRC-32 (zlib's polynomial) over memory and over whole files.
 * Used by control frames, checkpoint datasets and manifests. */
#ifndef BT_COMMON_CRC_H
#define BT_COMMON_CRC_H
#include <stddef.h>
#include <stdint.h>

/* Continue `crc` (start with 0) over `len` bytes; any length, no uInt limit. */
uint32_t bt_crc32(uint32_t crc, const void *buf, size_t len);
/* CRC and size of a whole file. Returns 0 or -errno. */
int bt_crc32_file(const char *path, uint32_t *crc, uint64_t *size);

#endif
