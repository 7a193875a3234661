/* clock.c - see clock.h. */
#include "common/clock.h"

#include <errno.h>
#include <time.h>

uint64_t bt_clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double bt_clock_s(void) { return (double)bt_clock_ns() * 1e-9; }

uint64_t bt_deadline_ms(int64_t ms) {
  if (ms < 0) ms = 0;
  return bt_clock_ns() + (uint64_t)ms * 1000000ull;
}

int64_t bt_ms_left(uint64_t deadline) {
  uint64_t now = bt_clock_ns();
  if (now >= deadline) return 0;
  return (int64_t)((deadline - now + 999999ull) / 1000000ull);
}

void bt_sleep_ms(int64_t ms) {
  if (ms <= 0) return;
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}
