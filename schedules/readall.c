/* readall.c - see readall.h. */
#include "schedules/readall.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int bt_sched_read_file(const char *path, char **out, size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  int rc = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return -errno;
  for (;;) {
    if (len + 65536 + 1 > cap) {
      cap = cap ? cap * 2 : 65536 * 2;
      char *nb = realloc(buf, cap);
      if (!nb) {
        rc = -ENOMEM;
        goto done;
      }
      buf = nb;
    }
    size_t got = fread(buf + len, 1, cap - len - 1, f);
    len += got;
    if (got == 0) break;
  }
  if (ferror(f)) {
    rc = -EIO;
    goto done;
  }
  buf[len] = 0;
  *out = buf;
  *outlen = len;
  buf = NULL;
done:
  fclose(f);
  free(buf);
  return rc;
}
