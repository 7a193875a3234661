/* crc.h - CRC-32 (zlib's polynomial) over memory and over whole files.
 * Used by control frames, checkpoint datasets and manifests. */
#ifndef BT_COMMON_CRC_H
#define BT_COMMON_CRC_H
#include <stddef.h>
#include <stdint.h>

/* Continue `crc` (start with 0) over `len` bytes; any length, no uInt limit. */
uint32_t bt_crc32(uint32_t crc, const void *buf, size_t len);
/* The CRC of A followed by B from crc(A), crc(B) and B's length (zlib's
 * crc32_combine: a few hundred operations, whatever the length), so a
 * file's CRC can be put together from CRCs of its pieces. */
uint32_t bt_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
/* CRC and size of a whole file. Returns 0 or -errno. */
int bt_crc32_file(const char *path, uint32_t *crc, uint64_t *size);

#endif
