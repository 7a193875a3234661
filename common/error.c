/* error.c - messages and names for the codes of error.h. */
#include "common/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *bt_strerror(int code) {
  switch (code) {
  case 0: return "success";
#define BT_X_MSG(name, msg) case name: return msg;
  BT_ERROR_TABLE(BT_X_MSG)
#undef BT_X_MSG
  default: break;
  }
  if (code < 0 && code > BT_E_BASE_) return strerror(-code);
  return "unknown error";
}

const char *bt_errname(int code) {
  switch (code) {
  case 0: return "OK";
#define BT_X_NAME(name, msg) case name: return #name;
  BT_ERROR_TABLE(BT_X_NAME)
#undef BT_X_NAME
  default: break;
  }
  if (code < 0 && code > BT_E_BASE_) {
    const char *n = strerrorname_np(-code);
    if (n) return n;
  }
  return "EUNKNOWN";
}

void bt_errf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}
