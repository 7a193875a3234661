/* file.c - see file.h. */
#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/crc.h"
#include "common/error.h"

uint64_t bt_file_limit(bt_file_kind_t kind) {
  switch (kind) {
  case BT_FILE_DATA: return (uint64_t)1 << 40;      /* the memory check bounds it further */
  case BT_FILE_SCHEDULE: return (uint64_t)64 << 20; /* 4096 ranks x thousands of actions */
  case BT_FILE_TRACE: return (uint64_t)1 << 30;
  case BT_FILE_MANIFEST: return (uint64_t)16 << 20;
  case BT_FILE_SHARD: return (uint64_t)1 << 44;
  }
  return 0;
}

int bt_file_open(const char *path, uint64_t max, int *fd_out, uint64_t *size) {
  *fd_out = -1;
  *size = 0;
  int fd;
  /* O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer. */
  do fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  struct stat sb;
  int rc = 0;
  if (fstat(fd, &sb) < 0) {
    rc = -errno;
  } else if (S_ISDIR(sb.st_mode)) {
    rc = -EISDIR;
  } else if (!S_ISREG(sb.st_mode)) {
    rc = BT_ENOTREG;
  } else if ((uint64_t)sb.st_size > max) {
    rc = -EFBIG;
  } else {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) rc = -errno;
  }
  if (rc < 0) {
    close(fd);
    return rc;
  }
  *fd_out = fd;
  *size = (uint64_t)sb.st_size;
  return 0;
}

int bt_file_read(const char *path, bt_file_kind_t kind, char **out, size_t *len) {
  return bt_file_read_max(path, bt_file_limit(kind), out, len);
}

int bt_file_read_max(const char *path, uint64_t max, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  uint64_t size;
  int fd, rc = bt_file_open(path, max, &fd, &size);
  if (rc < 0) return rc;
  /* st_size is a hint (a /proc file says 0): grow as needed, up to one
   * byte past max, so that a file of exactly max bytes reads whole and
   * one that grew past it is told apart. */
  size_t limit = max < SIZE_MAX - 1 ? (size_t)max + 1 : SIZE_MAX - 1;
  size_t cap = size > 0 ? (size_t)size + 1 : 4096, n = 0;
  if (cap > limit) cap = limit;
  char *buf = malloc(cap + 1);
  if (!buf) {
    rc = -ENOMEM;
    goto out;
  }
  for (;;) {
    if (n == cap) {
      if (cap >= limit) {
        rc = -EFBIG;
        goto out;
      }
      size_t ncap = cap > limit / 2 ? limit : cap * 2;
      char *nb = realloc(buf, ncap + 1);
      if (!nb) {
        rc = -ENOMEM;
        goto out;
      }
      buf = nb;
      cap = ncap;
    }
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      rc = -errno;
      goto out;
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  buf = NULL;
out:
  free(buf);
  close(fd);
  return rc;
}

int bt_file_crc32(const char *path, bt_file_kind_t kind, uint32_t *crc, uint64_t *size) {
  uint64_t max = bt_file_limit(kind), st_size;
  int fd, rc = bt_file_open(path, max, &fd, &st_size);
  if (rc < 0) return rc;
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  uint32_t c = 0;
  uint64_t total = 0;
  if (!buf) {
    rc = -ENOMEM;
    goto out;
  }
  for (;;) {
    ssize_t n = read(fd, buf, CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      rc = -errno;
      goto out;
    }
    if (n == 0) break;
    c = bt_crc32(c, buf, (size_t)n);
    total += (uint64_t)n;
    if (total > max) {
      rc = -EFBIG;
      goto out;
    }
  }
  *crc = c;
  *size = total;
out:
  free(buf);
  close(fd);
  return rc;
}
