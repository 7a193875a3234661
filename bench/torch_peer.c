/* torch_peer.c - see torch_peer.h. */
#include "bench/torch_peer.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void bt_torch_script(char *out, size_t cap) {
  const char *env = getenv("BATON_TORCH_MODEL");
  if (env && *env) {
    snprintf(out, cap, "%s", env);
    return;
  }
  char dir[PATH_MAX - 64]; /* leaves room for the file name in out */
  ssize_t k = readlink("/proc/self/exe", dir, sizeof dir - 1);
  dir[k < 0 ? 0 : k] = '\0';
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  snprintf(out, cap, "%s/torch_model.py", dir); /* a packed tree keeps it here */
  if (access(out, R_OK) == 0) return;
  snprintf(out, cap, "%s", __FILE__); /* a build tree: next to this source */
  slash = strrchr(out, '/');
  if (slash) snprintf(slash + 1, cap - (size_t)(slash + 1 - out), "torch_model.py");
}

double bt_torch_run(const char *python, const char *env, const char *args, int echo, char *why, size_t why_len) {
  char script[PATH_MAX], cmd[3 * PATH_MAX];
  bt_torch_script(script, sizeof script);
  if (access(script, R_OK) != 0) {
    snprintf(why, why_len, "%.400s not found", script);
    return 0;
  }
  snprintf(cmd, sizeof cmd, "%s '%s' '%s' %s 2>&1", env, python, script, args);
  FILE *p = popen(cmd, "r");
  if (!p) {
    snprintf(why, why_len, "cannot run %s", python);
    return 0;
  }
  char line[1024], last[1024] = "";
  while (fgets(line, sizeof line, p)) {
    if (echo) {
      fputs("  torch: ", stdout);
      fputs(line, stdout);
    }
    if (line[0] == '{') snprintf(last, sizeof last, "%s", line);
  }
  int st = pclose(p);
  char *t = strstr(last, "\"tokens_per_s\":");
  if (t) return strtod(t + 15, NULL);
  char *s = strstr(last, "\"skipped\":");
  if (s) {
    s += 10;
    s += strspn(s, " \"");
    snprintf(why, why_len, "%.*s", (int)strcspn(s, "\""), s);
  } else {
    snprintf(why, why_len, "%.300s exited with status %d", script, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  }
  return 0;
}
