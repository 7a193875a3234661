/* crc.c - see crc.h. */
#include "common/crc.h"

#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

uint32_t bt_crc32(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  uLong c = crc;
  while (len > 0) {
    uInt n = len > UINT_MAX ? UINT_MAX : (uInt)len;
    c = crc32(c, p, n);
    p += n;
    len -= n;
  }
  return (uint32_t)c;
}

uint32_t bt_crc32_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  /* z_off_t is 64 bits on every LP64 target, where baton builds. */
  _Static_assert(sizeof(z_off_t) >= 8, "zlib's z_off_t must hold a 64-bit length");
  return (uint32_t)crc32_combine(crc_a, crc_b, (z_off_t)len_b);
}

int bt_crc32_file(const char *path, uint32_t *crc, uint64_t *size) {
  /* Through file.c: a FIFO or a device is refused, never read for ever. */
  return bt_file_crc32(path, BT_FILE_SHARD, crc, size);
}
