/* render.c - the ASCII grid and the SVG timeline of render.h. */
#include "schedules/render.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Earliest start, latest end and shortest positive duration of the boxes. */
static void extent(const bt_box_t *b, size_t n, double *t0, double *t1, double *shortest) {
  *t0 = n ? b[0].start : 0;
  *t1 = n ? b[0].end : 0;
  *shortest = 0;
  for (size_t j = 0; j < n; j++) {
    double d = b[j].end - b[j].start;
    if (b[j].start < *t0) *t0 = b[j].start;
    if (b[j].end > *t1) *t1 = b[j].end;
    if (d > 0 && (*shortest == 0 || d < *shortest)) *shortest = d;
  }
}

int bt_render_grid(FILE *f, const bt_box_t *b, size_t n, const bt_render_opts_t *o, int max_cols) {
  double t0, t1, q;
  extent(b, n, &t0, &t1, &q);
  if (n == 0 || q <= 0) {
    fprintf(f, "(nothing to draw)\n");
    return ferror(f) ? -EIO : 0;
  }
  double slots = (t1 - t0) / q;
  if (slots > max_cols) {
    fprintf(f, "(grid omitted: %.0f time slots is wider than %d; draw it with --svg)\n",
            ceil(slots), max_cols);
    return ferror(f) ? -EIO : 0;
  }
  long cols = lround(ceil(slots - 1e-9));
  char label[32];
  size_t cw = 2;
  for (size_t j = 0; j < n; j++) {
    size_t l = strlen(bt_action_format(&b[j].act, label, sizeof label)) + 1;
    if (l > cw) cw = l;
  }
  size_t width = (size_t)cols * cw;
  char *row = malloc(width + 1);
  if (!row) return -ENOMEM;
  fprintf(f, "one slot = %g%s%s; '-' = still running, '.' = idle\n", q,
          o->unit && *o->unit ? " " : " time units", o->unit ? o->unit : "");
  if (o->vshape)
    fprintf(f,
            "V placement: worker s runs virtual stages s (upper case, down the V) and %d-s (lower case, "
            "back up); '(' before an F: it and the B after it are an overlapped F&B pair\n",
            2 * o->p - 1);
  for (int w = 0; w < o->p; w++) {
    for (long c = 0; c < cols; c++) {
      memset(row + (size_t)c * cw, ' ', cw);
      row[(size_t)c * cw] = '.';
    }
    for (size_t j = 0; j < n; j++) {
      if (b[j].worker != w) continue;
      long c0 = lround((b[j].start - t0) / q), c1 = lround((b[j].end - t0) / q);
      if (c0 >= cols) c0 = cols - 1;
      if (c1 <= c0) c1 = c0 + 1;
      if (c1 > cols) c1 = cols;
      size_t l = strlen(bt_action_format(&b[j].act, label, sizeof label));
      if (o->vshape && b[j].act.stage >= o->p)
        for (size_t i = 0; i < l; i++) label[i] = (char)(label[i] >= 'A' && label[i] <= 'Z' ? label[i] + 32 : label[i]);
      memset(row + (size_t)c0 * cw, ' ', cw);
      memcpy(row + (size_t)c0 * cw, label, l);
      for (long c = c0 + 1; c < c1; c++) {
        memset(row + (size_t)c * cw, '-', cw - 1);
        row[(size_t)c * cw + cw - 1] = ' ';
      }
      if (o->vshape && b[j].act.overlap && c0 > 0 && row[(size_t)c0 * cw - 1] == ' ')
        row[(size_t)c0 * cw - 1] = '(';
    }
    size_t end = width;
    while (end > 0 && row[end - 1] == ' ') end--;
    row[end] = 0;
    fprintf(f, "w%-3d| %s\n", w, row);
  }
  free(row);
  return ferror(f) ? -EIO : 0;
}

/* F blue, B green (as the Megatron figures), I orange, W purple. */
static const int base_rgb[BT_ACT_NTYPES][3] = {
    {31, 95, 168}, {46, 139, 62}, {212, 128, 28}, {123, 79, 176}};
static const char *const type_label[BT_ACT_NTYPES] = {"F forward", "B backward", "I input gradient",
                                                      "W weight gradient"};

/* How far chunk c is blended towards white: 0 for chunk 0, 0.6 for the last. */
static double shade_of(int chunk, int v) { return v > 1 ? 0.6 * chunk / (v - 1) : 0; }

static void colour(char *out, size_t len, int type, double shade) {
  int rgb[3];
  for (int i = 0; i < 3; i++)
    rgb[i] = (int)lround(base_rgb[type][i] + (255 - base_rgb[type][i]) * shade);
  snprintf(out, len, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

static void xml_text(FILE *f, const char *s) {
  for (; *s; s++) switch (*s) {
      case '&': fputs("&amp;", f); break;
      case '<': fputs("&lt;", f); break;
      case '>': fputs("&gt;", f); break;
      case '"': fputs("&quot;", f); break;
      default: fputc(*s, f);
    }
}

/* A round tick step (1, 2 or 5 times a power of ten) giving about 10 ticks. */
static double tick_step(double span) {
  double raw = span / 10, p10 = pow(10, floor(log10(raw)));
  double steps[] = {1, 2, 5, 10};
  for (int i = 0; i < 4; i++)
    if (steps[i] * p10 >= raw) return steps[i] * p10;
  return 10 * p10;
}

int bt_render_svg(FILE *f, const bt_box_t *b, size_t n, const bt_render_opts_t *o) {
  double t0, t1, q;
  extent(b, n, &t0, &t1, &q);
  double span = t1 - t0 > 0 ? t1 - t0 : 1;
  /* About 1000 px wide, but wide enough that the shortest box holds its
   * number, and never absurdly wide for huge schedules. */
  double scale = 1000 / span;
  if (q > 0 && q * scale < 18) scale = 18 / q;
  if (span * scale > 60000) scale = 60000 / span;
  const double left = 86, top = 70, lane_h = 26, gap = 6;
  double plot_w = span * scale;
  double width = left + plot_w + 30, height = top + o->p * (lane_h + gap) + 48;
  int present[BT_ACT_NTYPES] = {0};
  for (size_t j = 0; j < n; j++)
    if (b[j].act.type >= 0 && b[j].act.type < BT_ACT_NTYPES) present[b[j].act.type] = 1;

  fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
          "viewBox=\"0 0 %.0f %.0f\" font-family=\"Helvetica, Arial, sans-serif\">\n",
          ceil(width), ceil(height), ceil(width), ceil(height));
  fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
  if (o->title) {
    fprintf(f, "<text x=\"%g\" y=\"22\" font-size=\"15\" font-weight=\"bold\">", left);
    xml_text(f, o->title);
    fprintf(f, "</text>\n");
  }
  /* Legend: one swatch per type present, then the chunk shades. */
  double lx = left;
  char fill[16];
  fprintf(f, "<g id=\"legend\" font-size=\"12\">\n");
  for (int t = 0; t < BT_ACT_NTYPES; t++) {
    if (!present[t]) continue;
    colour(fill, sizeof fill, t, 0);
    fprintf(f,
            "<rect class=\"legend\" x=\"%g\" y=\"34\" width=\"14\" height=\"14\" "
            "fill=\"%s\"/><text x=\"%g\" y=\"45\">%s</text>\n",
            lx, fill, lx + 18, type_label[t]);
    lx += 30 + 7.0 * strlen(type_label[t]);
  }
  if (o->vshape)
    fprintf(f,
            "<text class=\"vshape\" x=\"%g\" y=\"62\">V placement: worker s holds virtual stages s (chunk 0, "
            "the way down) and %d-s (chunk 1, the way back up); outlined: an overlapped F&amp;B pair</text>\n",
            left, 2 * o->p - 1);
  if (o->v > 1) {
    fprintf(f, "<text x=\"%g\" y=\"45\">chunks:</text>\n", lx);
    lx += 52;
    for (int c = 0; c < o->v; c++) {
      colour(fill, sizeof fill, BT_ACT_F, shade_of(c, o->v));
      fprintf(f,
              "<rect class=\"legend\" x=\"%g\" y=\"34\" width=\"14\" height=\"14\" "
              "fill=\"%s\"/><text x=\"%g\" y=\"45\">%d</text>\n",
              lx, fill, lx + 17, c);
      lx += 34;
    }
  }
  fprintf(f,
          "<rect class=\"legend\" x=\"%g\" y=\"34\" width=\"14\" height=\"14\" fill=\"#e6e6e6\" "
          "stroke=\"#bbbbbb\"/><text x=\"%g\" y=\"45\">idle</text>\n</g>\n",
          lx + 10, lx + 28);

  /* Lanes: the grey that shows through where a worker idles. */
  fprintf(f, "<g id=\"lanes\" font-size=\"12\">\n");
  for (int w = 0; w < o->p; w++) {
    double y = top + w * (lane_h + gap);
    fprintf(f,
            "<rect class=\"lane\" x=\"%g\" y=\"%g\" width=\"%.2f\" height=\"%g\" "
            "fill=\"#e6e6e6\"/><text x=\"%g\" y=\"%g\" text-anchor=\"end\">worker %d</text>\n",
            left, y, plot_w, lane_h, left - 8, y + lane_h / 2 + 4, w);
  }
  fprintf(f, "</g>\n<g id=\"actions\" font-size=\"11\" text-anchor=\"middle\">\n");
  char name[32];
  for (size_t j = 0; j < n; j++) {
    const bt_box_t *x = &b[j];
    int t = x->act.type >= 0 && x->act.type < BT_ACT_NTYPES ? x->act.type : 0;
    int v = o->v > 0 ? o->v : 1;
    int chunk = o->p > 0 ? x->act.stage / o->p : 0; /* also right for the V: stage s < p is chunk 0 */
    double sh = shade_of(chunk < v ? chunk : v - 1, v);
    colour(fill, sizeof fill, t, sh);
    double bx = left + (x->start - t0) * scale, bw = (x->end - x->start) * scale;
    double y = top + x->worker * (lane_h + gap);
    bt_action_format(&x->act, name, sizeof name);
    /* An overlapped pair: outline the F and the B that follows it. */
    int paired = x->act.overlap || (j > 0 && b[j - 1].act.overlap && b[j - 1].worker == x->worker);
    fprintf(f,
            "<rect class=\"act %c%s\" data-action=\"%s\" x=\"%.2f\" y=\"%g\" width=\"%.2f\" "
            "height=\"%g\" fill=\"%s\" stroke=\"%s\" stroke-width=\"%s\"><title>%s on worker "
            "%d: %.6g to %.6g%s%s</title></rect>\n",
            bt_act_letter(t), paired ? " overlap" : "", name, bx, y + 1, bw, lane_h - 2, fill,
            paired ? "#000000" : "#ffffff", paired ? "1.5" : "1", name, x->worker, x->start - t0,
            x->end - t0, o->unit && *o->unit ? " " : "", o->unit ? o->unit : "");
    if (bw >= 10)
      fprintf(f, "<text x=\"%.2f\" y=\"%g\" fill=\"%s\">%d</text>\n", bx + bw / 2,
              y + lane_h / 2 + 4, sh < 0.4 ? "#ffffff" : "#1a1a1a", (int)x->act.mb);
  }
  /* Time axis under the lanes. */
  double ay = top + o->p * (lane_h + gap) + 4, step = tick_step(span);
  fprintf(f, "</g>\n<g id=\"axis\" font-size=\"11\" text-anchor=\"middle\">\n");
  fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%.2f\" y2=\"%g\" stroke=\"#333333\"/>\n", left, ay,
          left + plot_w, ay);
  for (double t = 0; t <= span * (1 + 1e-12); t += step) {
    double x = left + t * scale;
    fprintf(f,
            "<line x1=\"%.2f\" y1=\"%g\" x2=\"%.2f\" y2=\"%g\" stroke=\"#333333\"/>"
            "<text x=\"%.2f\" y=\"%g\">%g</text>\n",
            x, ay, x, ay + 5, x, ay + 17, t);
  }
  fprintf(f, "<text x=\"%.2f\" y=\"%g\">time%s%s%s</text>\n</g>\n</svg>\n", left + plot_w / 2,
          ay + 34, o->unit && *o->unit ? " (" : "", o->unit ? o->unit : "",
          o->unit && *o->unit ? ")" : "");
  return ferror(f) ? -EIO : 0;
}
