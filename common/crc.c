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

int bt_crc32_file(const char *path, uint32_t *crc, uint64_t *size) {
  /* Through file.c: a FIFO or a device is refused, never read for ever. */
  return bt_file_crc32(path, BT_FILE_SHARD, crc, size);
}
