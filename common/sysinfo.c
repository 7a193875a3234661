/* sysinfo.c - see sysinfo.h. */
#include "common/sysinfo.h"

#include <stdio.h>
#include <string.h>
#include <sys/vfs.h>

void bt_sys_cpu_model(char *out, size_t len) {
  snprintf(out, len, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10)) continue;
    char *c = strchr(line, ':');
    if (!c) break;
    c++;
    while (*c == ' ') c++;
    c[strcspn(c, "\n")] = '\0';
    snprintf(out, len, "%s", c);
    break;
  }
  fclose(f);
}

const char *bt_sys_fs_name(const char *path) {
  struct statfs s;
  if (statfs(path, &s) != 0) return "unknown";
  switch ((unsigned long)s.f_type) {
  case 0xEF53: return "ext4";
  case 0x58465342: return "xfs";
  case 0x9123683E: return "btrfs";
  case 0x794C7630: return "overlayfs";
  case 0x01021994: return "tmpfs";
  case 0x6969: return "nfs";
  case 0x0BD00BD0: return "lustre";
  case 0x65735546: return "fuse";
  default: return "other";
  }
}
