/* clock.h - the monotonic clock every deadline in baton is measured on.
 * Never wall time: a clock step (NTP) must not fire or stall a timeout. */
#ifndef BT_COMMON_CLOCK_H
#define BT_COMMON_CLOCK_H
#include <stdint.h>

uint64_t bt_clock_ns(void);  /* CLOCK_MONOTONIC, nanoseconds */
double bt_clock_s(void);     /* the same, in seconds */
/* A deadline `ms` milliseconds from now, in bt_clock_ns() units. */
uint64_t bt_deadline_ms(int64_t ms);
/* Milliseconds left until `deadline` (0 when passed). */
int64_t bt_ms_left(uint64_t deadline);
/* Sleep for `ms` milliseconds, resuming after signals. */
void bt_sleep_ms(int64_t ms);

#endif
