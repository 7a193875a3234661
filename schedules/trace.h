/* trace.h - reading a real run's Chrome trace back as boxes to draw.
 *
 * The worker's --trace writes Chrome trace JSON:
 *   {"traceEvents":[{"name":"2F0","ph":"X","ts":<µs>,"dur":<µs>,"pid":0,
 *                    "tid":<worker>}, ...]}
 * This reader accepts exactly that shape (or the bare event array Chrome
 * also reads): every complete event ("ph":"X") whose name is an action
 * becomes a box on worker tid; other events (metadata "M", counters, or
 * complete events with other names, such as an optimizer step) are
 * skipped. Times stay in microseconds, shifted so the first event starts
 * at 0. It is a strict small parser for this one format, not a general
 * JSON library.
 */
#ifndef BT_SCHEDULES_TRACE_H
#define BT_SCHEDULES_TRACE_H
#include <stddef.h>

#include "schedules/sim.h"

typedef struct {
  bt_box_t *boxes; /* malloc'd, in file order */
  size_t n;
  int p; /* workers: largest tid + 1 */
  int v; /* chunks: largest virtual stage / p + 1 */
  int m; /* micro-batches: largest micro-batch + 1 */
} bt_trace_t;

/* Parses len bytes of trace text. BT_EFORMAT with a one-line message
 * (byte offset and what was expected) for malformed JSON, a complete event
 * missing ts, dur or tid, a negative duration, or no action at all. */
int bt_trace_parse(const char *text, size_t len, bt_trace_t *out, char *err, size_t errlen);
int bt_trace_read(const char *path, bt_trace_t *out, char *err, size_t errlen);
void bt_trace_free(bt_trace_t *t);

#endif
