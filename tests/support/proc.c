/* proc.c - see proc.h. */
#include "tests/support/proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"

extern char **environ;

static pid_t tracked[BT_PROC_MAX_TRACKED];
static int ntracked;

void bt_proc_init(void) { prctl(PR_SET_CHILD_SUBREAPER, 1); }

void bt_proc_track(pid_t pgid) {
  if (pgid <= 0) return;
  for (int i = 0; i < ntracked; i++)
    if (tracked[i] == pgid) return;
  if (ntracked < BT_PROC_MAX_TRACKED) tracked[ntracked++] = pgid;
}

static int redirect(const char *path, int fd) {
  if (!path) return 0;
  int f = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (f < 0) return -1;
  if (dup2(f, fd) < 0) return -1;
  close(f);
  return 0;
}

pid_t bt_proc_spawn(char *const argv[], char *const extra_env[], const char *out_path, const char *err_path) {
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) {
    setpgid(0, 0);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    if (redirect(out_path, 1) < 0 || redirect(err_path, 2) < 0) _exit(127);
    for (size_t i = 0; extra_env && extra_env[i]; i++) putenv(extra_env[i]);
    execvp(argv[0], argv);
    _exit(127);
  }
  /* Both sides set the group, so a kill right after fork finds it. */
  setpgid(pid, pid);
  bt_proc_track(pid);
  return pid;
}

int bt_proc_wait(pid_t pid, int timeout_ms, int *status) {
  uint64_t deadline = bt_deadline_ms(timeout_ms);
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) return 0;
    if (r < 0 && errno != EINTR) return -errno;
    if (bt_ms_left(deadline) == 0) return -ETIMEDOUT;
    bt_sleep_ms(10);
  }
}

/* The state letter of /proc/PID/stat, or 0 when the process is absent. */
static char proc_state(pid_t pid, pid_t *ppid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  /* The command name may hold spaces and parentheses: parse after the last ')'. */
  char *p = strrchr(buf, ')');
  if (!p || p[1] != ' ') return 0;
  char st = p[2];
  if (ppid) *ppid = (pid_t)atoi(p + 4);
  return st;
}

static void reap_zombies(void) {
  int st;
  while (waitpid(-1, &st, WNOHANG) > 0) {
  }
}

int bt_proc_gone(pid_t pid) {
  char st = proc_state(pid, NULL);
  return st == 0 || st == 'Z' || st == 'X';
}

int bt_proc_wait_gone(pid_t pid, int timeout_ms) {
  uint64_t deadline = bt_deadline_ms(timeout_ms);
  for (;;) {
    if (bt_proc_gone(pid)) return 1;
    if (bt_ms_left(deadline) == 0) return 0;
    bt_sleep_ms(10);
  }
}

int bt_proc_running_children(pid_t *out, int max) {
  DIR *d = opendir("/proc");
  if (!d) return 0;
  int n = 0;
  pid_t self = getpid();
  struct dirent *e;
  while ((e = readdir(d))) {
    pid_t pid = (pid_t)atoi(e->d_name);
    if (pid <= 0) continue;
    pid_t ppid = 0;
    char st = proc_state(pid, &ppid);
    if (ppid != self || st == 0 || st == 'Z' || st == 'X') continue;
    if (n < max) out[n] = pid;
    n++;
  }
  closedir(d);
  return n < max ? n : max;
}

char *bt_proc_slurp(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (cap - len < 2048) {
      char *p = realloc(buf, cap * 2);
      if (!p) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = p;
      cap *= 2;
    }
    size_t r = fread(buf + len, 1, cap - len - 1, f);
    len += r;
    if (r == 0) break;
  }
  fclose(f);
  if (buf) buf[len] = 0;
  return buf;
}

int bt_proc_wait_for_text(const char *path, const char *needle, int timeout_ms) {
  uint64_t deadline = bt_deadline_ms(timeout_ms);
  for (;;) {
    char *s = bt_proc_slurp(path);
    int found = s && strstr(s, needle);
    free(s);
    if (found) return 1;
    if (bt_ms_left(deadline) == 0) return 0;
    bt_sleep_ms(20);
  }
}

int bt_proc_worker_pids(const char *log_path, pid_t *pids, int max) {
  char *s = bt_proc_slurp(log_path);
  if (!s) return 0;
  int found = 0;
  for (char *p = strstr(s, "started stage "); p; p = strstr(p + 1, "started stage ")) {
    int stage, pid;
    if (sscanf(p, "started stage %d (pid %d)", &stage, &pid) != 2) continue;
    if (stage < 0 || stage >= max) continue;
    pids[stage] = pid;
    bt_proc_track(pid);
    found++;
  }
  free(s);
  return found;
}

void bt_proc_cleanup(void) {
  for (int i = 0; i < ntracked; i++) kill(-tracked[i], SIGKILL);
  /* Orphans reparented to us through the subreaper are ours to end too. */
  pid_t left[256];
  int n = bt_proc_running_children(left, 256);
  for (int i = 0; i < n; i++) kill(left[i], SIGKILL);
  uint64_t deadline = bt_deadline_ms(2000);
  while (bt_ms_left(deadline) > 0) {
    reap_zombies();
    if (bt_proc_running_children(left, 256) == 0) break;
    bt_sleep_ms(10);
  }
  reap_zombies();
  ntracked = 0;
}
