/* render.h - drawing timed actions: an ASCII grid and an SVG timeline.
 *
 * Both take a list of boxes (worker, action, start, end), so the same code
 * draws a simulated schedule (bt_sim_boxes) and a real run read from its
 * trace (trace.h). The SVG follows the papers' figures: one lane per
 * worker, F blue, B green, I orange, W purple, later chunks in lighter
 * shades of the same colour (as the interleaved-1F1B figure of Narayanan
 * et al., SC21), the micro-batch number on each box, idle time as the grey
 * lane showing through, a time axis and a legend. Not a plotting library:
 * no zoom, no interactivity beyond a <title> tooltip per box.
 */
#ifndef BT_SCHEDULES_RENDER_H
#define BT_SCHEDULES_RENDER_H
#include <stddef.h>
#include <stdio.h>

#include "schedules/sim.h"

typedef struct {
  int p;             /* workers (lanes) */
  int v;             /* chunks per worker, for shading: chunk = stage / p */
  const char *title; /* first line of the SVG; NULL for none */
  const char *unit;  /* time unit for the axis ("" for simulated units) */
  int vshape;        /* V placement (zb-v, dualpipev): the grid writes the
                        second chunk's actions in lower case and both
                        drawings say which stages each worker holds, so the
                        forwards read down the V and back up, as in the
                        papers' figures; overlapped F&B pairs are outlined */
} bt_render_opts_t;

/* Workers × time slots, one slot the shortest box's duration, each action's
 * name in its first slot, '-' while it runs, '.' where the worker idles.
 * A grid wider than max_cols slots is replaced by one line saying so.
 * With vshape, "7f0 7i0" are the actions of the second chunk.
 * 0 or -EIO. */
int bt_render_grid(FILE *f, const bt_box_t *b, size_t n, const bt_render_opts_t *o, int max_cols);

/* A standalone SVG document; every action is one <rect class="act ..."> in
 * the "actions" group. 0 or -EIO. */
int bt_render_svg(FILE *f, const bt_box_t *b, size_t n, const bt_render_opts_t *o);

#endif
