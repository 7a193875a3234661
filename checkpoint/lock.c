/* lock.c - the LOCK file: one job per checkpoint directory.
 *
 * Two jobs writing the same directory would commit each other's shards and
 * delete each other's steps. The lock is an flock(2) on ROOT/LOCK, whose
 * text names the holder (pid, host, start time) for the error message. The
 * kernel drops an flock when its process dies, so a lock left by a dead
 * process is simply taken over. Where the filesystem has no flock
 * (ENOLCK/EOPNOTSUPP, some network filesystems) the text decides: a holder
 * on this host whose pid no longer runs is taken over; anything else is
 * refused. Not a lock between threads of one process.
 *
 * LOCK is a file anyone may delete, and an flock on a deleted file guards
 * nothing: a second job would create a new LOCK and lock that. So the
 * directory itself is flocked too, through a descriptor held for the job's
 * life; the kernel drops it on death, and no unlink can break it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint/internal.h"
#include "common/log.h"

typedef struct {
  long pid;
  char host[256];
  char since[64];
} holder_t;

static int read_holder(int fd, holder_t *h) {
  char buf[512];
  ssize_t r;
  memset(h, 0, sizeof *h);
  do r = pread(fd, buf, sizeof buf - 1, 0);
  while (r < 0 && errno == EINTR);
  if (r <= 0) return 0;
  buf[r] = 0;
  return sscanf(buf, "pid=%ld host=%255s since=%63s", &h->pid, h->host, h->since) == 3;
}

static void describe(const holder_t *h, int known, char *out, size_t len) {
  if (!out || !len) return;
  if (known)
    snprintf(out, len, "pid %ld on host %s since %s", h->pid, h->host, h->since);
  else
    snprintf(out, len, "an unknown process (LOCK holds no holder line)");
}

/* 1 when the holder is certainly gone: on this host, and its pid is free. */
static int holder_dead(const holder_t *h) {
  char me[256] = "";
  gethostname(me, sizeof me - 1);
  if (strcmp(h->host, me) != 0 || h->pid <= 0) return 0;
  return kill((pid_t)h->pid, 0) < 0 && errno == ESRCH;
}

static int write_holder(int fd) {
  char host[256] = "", since[64], line[400];
  gethostname(host, sizeof host - 1);
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
  int n = snprintf(line, sizeof line, "pid=%ld host=%s since=%s\n", (long)getpid(), host, since);
  if (ftruncate(fd, 0) < 0) return -errno;
  ssize_t w;
  do w = pwrite(fd, line, (size_t)n, 0);
  while (w < 0 && errno == EINTR);
  if (w != n) return w < 0 ? -errno : -EIO;
  return fsync(fd) < 0 ? -errno : 0;
}

/* The flock on the directory: 0, BT_ELOCKED (holder described from LOCK),
 * or -errno; a filesystem without flock leaves the LOCK file to decide. */
static int lock_dir(const char *root, bt_ckpt_lock_t *lk, char *holder, size_t holderlen) {
  int fd;
  do fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  int r;
  do r = flock(fd, LOCK_EX | LOCK_NB);
  while (r < 0 && errno == EINTR);
  if (r == 0) {
    lk->dir_fd = fd;
    return 0;
  }
  int err = errno;
  if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {
    close(fd);
    return 0;
  }
  if (err == EWOULDBLOCK) {
    holder_t h;
    int lfd, known = 0;
    do lfd = open(lk->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    while (lfd < 0 && errno == EINTR);
    if (lfd >= 0) {
      known = read_holder(lfd, &h);
      close(lfd);
    }
    if (known)
      describe(&h, 1, holder, holderlen);
    else if (holder && holderlen)
      snprintf(holder, holderlen, "a process that holds the directory (its LOCK file was removed)");
    close(fd);
    return BT_ELOCKED;
  }
  close(fd);
  return -err;
}

int bt_ckpt_lock_acquire(const char *root, bt_ckpt_lock_t *lk, char *holder, size_t holderlen) {
  int rc, fd = -1;
  holder_t h;
  lk->fd = -1;
  lk->dir_fd = -1;
  if (holder && holderlen) holder[0] = 0;
  if ((rc = bt_mkdir_p1(root)) < 0) return rc;
  if (snprintf(lk->path, sizeof lk->path, "%s/LOCK", root) >= (int)sizeof lk->path)
    return -ENAMETOOLONG;
  if ((rc = lock_dir(root, lk, holder, holderlen)) < 0) return rc;
  for (int attempt = 0; attempt < 8; attempt++) {
    do fd = open(lk->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      /* The directory exists (mkdir said so) but takes no file: /proc/self,
       * a read-only mount. strerror alone ("No such file or directory")
       * would send the user looking for a missing path. */
      rc = -errno;
      if (holder && holderlen)
        snprintf(holder, holderlen, "cannot create a file in it (%s): a checkpoint directory must be writable",
                 strerror(errno));
      if (lk->dir_fd >= 0) close(lk->dir_fd);
      lk->dir_fd = -1;
      return rc;
    }
    int known = read_holder(fd, &h);
    int r;
    do r = flock(fd, LOCK_EX | LOCK_NB);
    while (r < 0 && errno == EINTR);
    if (r < 0 && errno == EWOULDBLOCK) {
      describe(&h, read_holder(fd, &h), holder, holderlen);
      rc = BT_ELOCKED;
      goto out;
    }
    if (r < 0 && errno != ENOLCK && errno != EOPNOTSUPP && errno != ENOSYS) {
      rc = -errno;
      goto out;
    }
    if (r < 0 && known && h.pid != getpid() && !holder_dead(&h)) {
      describe(&h, known, holder, holderlen);
      rc = BT_ELOCKED;
      goto out;
    }
    /* The holder may have unlinked LOCK between our open and our flock: an
     * flock on the unlinked inode would lock nothing. */
    struct stat a, b;
    if (fstat(fd, &a) < 0) {
      rc = -errno;
      goto out;
    }
    if (stat(lk->path, &b) < 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
      close(fd);
      fd = -1;
      continue;
    }
    if (known && h.pid != getpid())
      bt_warn("checkpoint: taking over %s left by pid %ld on host %s (no longer running)",
              lk->path, h.pid, h.host);
    if ((rc = write_holder(fd)) < 0) goto out;
    lk->fd = fd;
    return 0;
  }
  rc = BT_ELOCKED;
  describe(&h, 0, holder, holderlen);
out:
  if (fd >= 0) close(fd);
  if (lk->dir_fd >= 0) close(lk->dir_fd);
  lk->dir_fd = -1;
  return rc;
}

void bt_ckpt_lock_release(bt_ckpt_lock_t *lk) {
  if (lk->fd < 0) return;
  /* Unlink while still holding it, so nobody takes a lock on a file that is
   * about to vanish (the inode check in acquire covers the other order). */
  unlink(lk->path);
  close(lk->fd);
  lk->fd = -1;
  if (lk->dir_fd >= 0) close(lk->dir_fd);
  lk->dir_fd = -1;
}

int bt_ckpt_lock_check(bt_ckpt_lock_t *lk) {
  if (!lk || lk->fd < 0) return 0;
  struct stat a, b;
  if (fstat(lk->fd, &a) == 0 && stat(lk->path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
    return 0;
  /* Whoever made a new LOCK may hold an flock on it without holding the
   * directory (an older baton): take it if we can, and write our line. */
  int fd;
  do fd = open(lk->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  int r;
  do r = flock(fd, LOCK_EX | LOCK_NB);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno != ENOLCK && errno != EOPNOTSUPP && errno != ENOSYS) {
    int rc = errno == EWOULDBLOCK ? BT_ELOCKED : -errno;
    close(fd);
    return rc;
  }
  int rc = write_holder(fd);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  close(lk->fd);
  lk->fd = fd;
  return 1;
}
