/* test_schedules.c - the schedules module: actions, builders, validation,
 * derived communication, simulator closed forms, CSV, rendering, traces. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "schedules/comm.h"
#include "schedules/csv.h"
#include "schedules/render.h"
#include "schedules/check.h"
#include "schedules/schedule.h"
#include "schedules/sim.h"
#include "schedules/trace.h"

/* The grid of DESIGN §3's closed forms: p 1..16, v 1..4 (v > 1 only for
 * interleaved, 2 for the V schedules), m from the least each schedule
 * takes (p; 1 for zb-v, 2p for dualpipev) to 8p. `stride` thins m for the
 * costlier checks. */
typedef void (*grid_fn)(const char *name, int p, int v, int m, void *ctx);

static int is_v(const char *name) { return !strcmp(name, "zb-v") || !strcmp(name, "dualpipev"); }

static int least_m(const char *name, int p) {
  return !strcmp(name, "zb-v") ? 1 : !strcmp(name, "dualpipev") ? 2 * p : p;
}

static void for_grid(const char *name, int stride, grid_fn fn, void *ctx) {
  int il = !strcmp(name, "interleaved"), vs = is_v(name);
  for (int p = 1; p <= 16; p++)
    for (int v = il || vs ? 2 : 1; v <= (il ? 4 : vs ? 2 : 1); v++)
      for (int m = least_m(name, p); m <= 8 * p; m += (m % p == 0 ? 1 : stride)) fn(name, p, v, m, ctx);
}

static void build_ok(const char *name, int p, int v, int m, bt_schedule_t *s) {
  char err[512] = "";
  int rc = bt_sched_build(name, p, v, m, s, err, sizeof err);
  cr_assert_eq(rc, 0, "%s p=%d v=%d m=%d: %s", name, p, v, m, err);
}

static void sim_unit(const bt_schedule_t *s, bt_sim_result_t *r) {
  bt_sim_costs_t c;
  bt_sim_costs_default(&c);
  char err[512] = "";
  int rc = bt_sim_run(s, &c, r, err, sizeof err);
  cr_assert_eq(rc, 0, "%s p=%d v=%d m=%d: %s", s->name, s->p, s->v, s->m, err);
}

/* ---- actions ------------------------------------------------------------ */

Test(action, format_and_parse_round_trip) {
  const char *ok[] = {"0F0", "2F0", "5I3", "5W3", "1B0", "127B1023", "999999999W999999999"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    bt_action_t a;
    char buf[32];
    cr_assert_eq(bt_action_parse(ok[i], &a), 0, "%s", ok[i]);
    cr_assert_str_eq(bt_action_format(&a, buf, sizeof buf), ok[i]);
  }
  bt_action_t a;
  cr_assert_eq(bt_action_parse("5I3", &a), 0);
  cr_assert_eq(a.stage, 5);
  cr_assert_eq(a.type, BT_ACT_I);
  cr_assert_eq(a.mb, 3);
}

Test(action, parse_rejects_malformed) {
  const char *bad[] = {"",    "F0",   "2F",           "2X0",  "-1F0",    "2F0 ", " 2F0",
                       "2f0", "2F-1", "1234567890F0", "2FF0", "2F0;3B1", "+2F0"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_action_t a;
    cr_assert_eq(bt_action_parse(bad[i], &a), BT_EFORMAT, "'%s' accepted", bad[i]);
  }
}

/* ---- builders: parameters ---------------------------------------------- */

static void expect_rejected(const char *name, int p, int v, int m, const char *rule,
                            const char *fix) {
  bt_schedule_t s;
  char err[512] = "";
  cr_assert_eq(bt_sched_build(name, p, v, m, &s, err, sizeof err), BT_EARG,
               "%s p=%d v=%d m=%d accepted", name, p, v, m);
  cr_assert(strstr(err, rule), "message '%s' lacks '%s'", err, rule);
  cr_assert(strstr(err, fix), "message '%s' lacks '%s'", err, fix);
  cr_assert_null(strchr(err, '\n'), "message spans lines: %s", err);
}

Test(build, impossible_parameters_name_the_rule_and_a_fix) {
  expect_rejected("1f1b", 4, 1, 2, "m >= p", "--microbatches 4");
  expect_rejected("interleaved", 8, 2, 7, "m >= p", "--microbatches 8");
  expect_rejected("gpipe", 0, 1, 4, "stages must be between 1", "--stages 4");
  expect_rejected("gpipe", 2, 1, 0, "micro-batches must be between 1", "--microbatches");
  expect_rejected("pipedream", 2, 1, 4, "unknown schedule", "interleaved");
  expect_rejected("1f1b", 2, 2, 4, "chunks must be 1", "--schedule interleaved");
  expect_rejected("zb-h1", 2, 3, 4, "chunks must be 1", "--schedule interleaved");
  expect_rejected("interleaved", 2, 1, 4, "between 2 and", "--chunks 2");
}

Test(build, group_size_follows_the_rule) {
  /* N is the smallest value >= p with m mod N == 0 or m mod N >= p. */
  for (int p = 1; p <= 16; p++)
    for (int m = p; m <= 8 * p; m++) {
      int n = bt_sched_group_size(p, m);
      cr_assert_geq(n, p);
      cr_assert(m % n == 0 || m % n >= p, "p=%d m=%d N=%d", p, m, n);
      for (int k = p; k < n; k++) cr_assert(!(m % k == 0 || m % k >= p), "p=%d m=%d", p, m);
    }
  cr_assert_eq(bt_sched_group_size(2, 3), 3);
  cr_assert_eq(bt_sched_group_size(4, 8), 4);
  cr_assert_eq(bt_sched_group_size(4, 10), 5);
}

/* ---- closed forms ------------------------------------------------------- */

static void check_closed_form(const char *name, int p, int v, int m, void *ctx) {
  (void)ctx;
  bt_schedule_t s;
  bt_sim_result_t r;
  build_ok(name, p, v, m, &s);
  sim_unit(&s, &r);
  /* Unit costs F = I = W = 1, B = 2 per action (per chunk for interleaved). */
  double F = 1, B = 2, I = 1, W = 1, idle, bubble;
  if (!strcmp(name, "zb-h1")) {
    idle = (p - 1) * (F + I - W);
    bubble = (double)(p - 1) / (3.0 * m + p - 1);
  } else if (is_v(name)) {
    /* docs/schedules.md: every worker busy 6m (F, I, W or F, B on two
     * chunks), idle p - 1 once the V is full, m >= 2p - 1 for zb-v; fewer
     * micro-batches leave 2 slots per missing one. */
    double ramp = (p - 1) * F, fill = 2.0 * (2 * p - 1 - m) * F;
    idle = !strcmp(name, "zb-v") && fill > ramp ? fill : ramp;
    bubble = idle / (6.0 * m + idle);
  } else {
    idle = (p - 1) * (F + B);
    bubble = (double)(p - 1) / ((double)v * m + p - 1);
  }
  for (int w = 0; w < p; w++)
    cr_assert_eq(r.idle[w], idle, "%s p=%d v=%d m=%d worker %d idle %.17g, closed form %.17g", name,
                 p, v, m, w, r.idle[w], idle);
  cr_assert_eq(r.bubble_fraction, bubble, "%s p=%d v=%d m=%d bubble %.17g, closed form %.17g", name,
               p, v, m, r.bubble_fraction, bubble);
  if (!strcmp(name, "gpipe"))
    cr_assert_eq(r.peak[0], m, "gpipe p=%d m=%d peak %d", p, m, r.peak[0]);
  else if (is_v(name))
    /* In chunks, half a stage each: zb-v holds p stages' worth like 1f1b
     * and zb-h1, dualpipev half a stage more. */
    for (int w = 0; w < p; w++)
      cr_assert_eq(r.peak[w], m >= 2 * p ? 2 * p + !strcmp(name, "dualpipev") : r.peak[w],
                   "%s p=%d m=%d worker %d peak %d", name, p, m, w, r.peak[w]);
  else if (strcmp(name, "interleaved"))
    cr_assert_eq(r.peak[0], p, "%s p=%d m=%d peak %d", name, p, m, r.peak[0]);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
}

Test(closed_form, gpipe_and_1f1b) {
  for_grid("gpipe", 1, check_closed_form, NULL);
  for_grid("1f1b", 1, check_closed_form, NULL);
}

Test(closed_form, zb_h1) { for_grid("zb-h1", 1, check_closed_form, NULL); }

Test(closed_form, zb_v_every_m_from_1) { for_grid("zb-v", 1, check_closed_form, NULL); }

Test(closed_form, dualpipev_from_m_2p) { for_grid("dualpipev", 1, check_closed_form, NULL); }

Test(closed_form, v_peaks_against_1f1b_and_zb_h1) {
  /* Stage-equivalents (a V chunk is half a stage): zb-v = 1f1b = zb-h1 = p
   * on the first worker; dualpipev p + 1/2. */
  for (int p = 2; p <= 8; p++) {
    int m = 4 * p, peak[4];
    const char *names[] = {"1f1b", "zb-h1", "zb-v", "dualpipev"};
    for (int i = 0; i < 4; i++) {
      bt_schedule_t s;
      bt_sim_result_t r;
      build_ok(names[i], p, is_v(names[i]) ? 2 : 1, m, &s);
      sim_unit(&s, &r);
      peak[i] = r.peak[0];
      bt_sim_result_free(&r);
      bt_sched_free(&s);
    }
    cr_assert_eq(peak[0], p);
    cr_assert_eq(peak[1], p);
    cr_assert_eq(peak[2], 2 * peak[0], "p=%d zb-v %d chunks vs 1f1b %d stages", p, peak[2], peak[0]);
    cr_assert_eq(peak[3], 2 * peak[0] + 1, "p=%d dualpipev %d", p, peak[3]);
  }
}

Test(closed_form, interleaved_including_m_not_a_multiple_of_p) {
  for_grid("interleaved", 1, check_closed_form, NULL);
}

Test(closed_form, zb_h1_keeps_at_most_p_pending_weight_gradients) {
  /* Stage s delays W by s micro-batches: every worker peaks at exactly p. */
  for (int p = 1; p <= 8; p++)
    for (int m = p; m <= 4 * p; m++) {
      bt_schedule_t s;
      bt_sim_result_t r;
      build_ok("zb-h1", p, 1, m, &s);
      sim_unit(&s, &r);
      for (int w = 0; w < p; w++) cr_assert_eq(r.peak[w], p, "p=%d m=%d worker %d", p, m, w);
      bt_sim_result_free(&r);
      bt_sched_free(&s);
    }
}

/* ---- structural checks over the grid ------------------------------------ */

static void check_valid(const char *name, int p, int v, int m, void *ctx) {
  (void)ctx;
  bt_schedule_t s;
  char err[512] = "";
  build_ok(name, p, v, m, &s);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s p=%d v=%d m=%d: %s", name, p, v, m,
               err);
  cr_assert(bt_sched_check_microbatch_order(&s, err, sizeof err), "%s p=%d v=%d m=%d: %s", name, p,
            v, m, err);
  /* What we found true for every builder, including interleaving with
   * p = 2 and m odd: the group size N keeps send and receive orders equal. */
  cr_assert(bt_sched_check_channel_order(&s, err, sizeof err), "%s p=%d v=%d m=%d: %s", name, p, v,
            m, err);
  size_t per = (size_t)v * m * (strcmp(name, "zb-h1") && strcmp(name, "zb-v") ? 2 : 3);
  if (strcmp(name, "dualpipev")) /* mixes B and I, W */
    for (int w = 0; w < p; w++) cr_assert_eq(bt_sched_len(&s, w), per);
  bt_sched_free(&s);
}

Test(validate, every_builder_over_the_grid) {
  for (int i = 0; bt_sched_names[i]; i++) for_grid(bt_sched_names[i], 1, check_valid, NULL);
}

/* A schedule from rows of action strings, for hand-made cases. */
static void from_rows(bt_schedule_t *s, int p, int v, int m, const char *const *rows) {
  size_t total = 0;
  for (int w = 0; w < p; w++) total += strlen(rows[w]);
  cr_assert_eq(bt_sched_alloc(s, "test", p, v, m, total), 0);
  size_t n = 0;
  for (int w = 0; w < p; w++) {
    s->off[w] = n;
    char *copy = strdup(rows[w]), *save = NULL;
    for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
      cr_assert_eq(bt_action_parse(tok, &s->acts[n++]), 0, "%s", tok);
    free(copy);
  }
  s->off[p] = n;
}

Test(validate, missing_backward_names_worker_and_action) {
  const char *rows[] = {"0F0 0F1 0B0 0B1", "1F0 1B0 1F1"};
  bt_schedule_t s;
  char err[512] = "";
  from_rows(&s, 2, 1, 2, rows);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), BT_ESCHEDULE);
  cr_assert(strstr(err, "worker 1") && strstr(err, "1F1") && strstr(err, "no backward"), "%s", err);
  bt_sched_free(&s);
}

Test(validate, other_structural_errors) {
  struct {
    const char *rows[2];
    const char *want;
  } cases[] = {
      {{"0F0 0F0 0B0", "1F0 1B0"}, "appears twice"},
      {{"0F0 1F0 0B0", "1B0"}, "belongs on worker 1"},
      {{"0F0 0I0", "1F0 1B0"}, "no matching 0W0"},
      {{"0F0 0W0 0I0", "1F0 1B0"}, "comes before its 0I0"},
      {{"0F0 0B0 0I0 0W0", "1F0 1B0"}, "duplicates the backward"},
      {{"0B0", "1F0 1B0"}, "no forward"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bt_schedule_t s;
    char err[512] = "";
    from_rows(&s, 2, 1, 1, cases[i].rows);
    cr_assert_eq(bt_sched_validate(&s, err, sizeof err), BT_ESCHEDULE, "case %zu", i);
    cr_assert(strstr(err, cases[i].want), "case %zu: '%s' lacks '%s'", i, err, cases[i].want);
    bt_sched_free(&s);
  }
}

Test(validate, deadlock_names_the_stuck_workers_and_what_they_wait_for) {
  /* Worker 1 wants micro-batch 1 first, worker 0 sends it only after the
   * gradient of micro-batch 0 that worker 1 has not produced: a cycle. */
  const char *rows[] = {"0F0 0B0 0F1 0B1", "1F1 1F0 1B0 1B1"};
  bt_schedule_t s;
  char err[1024] = "";
  from_rows(&s, 2, 1, 2, rows);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), BT_EDEADLOCK);
  cr_assert(strstr(err,
                   "worker 0 at position 1 (0B0) waits for the gradient of 1B0 from "
                   "worker 1"),
            "%s", err);
  cr_assert(strstr(err,
                   "worker 1 at position 0 (1F1) waits for the activation of 0F1 from "
                   "worker 0"),
            "%s", err);
  bt_sched_free(&s);
}

Test(validate, sparse_schedule_is_refused_before_its_tables_are_built) {
  const char *text = "0F999999,0B999999\n65535F0\n";
  bt_schedule_t s;
  char err[512] = "";
  cr_assert_eq(bt_sched_csv_parse(text, strlen(text), &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), BT_ESCHEDULE);
  cr_assert(strstr(err, "holds only 3 actions"), "%s", err);
  bt_sched_free(&s);
}

Test(validate, backward_before_own_forward_deadlocks) {
  const char *rows[] = {"0B0 0F0"};
  bt_schedule_t s;
  char err[512] = "";
  from_rows(&s, 1, 1, 1, rows);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), BT_EDEADLOCK);
  cr_assert(strstr(err, "0B0") && strstr(err, "later in its own order"), "%s", err);
  bt_sched_free(&s);
}

Test(validate, microbatch_order_violation_is_reported) {
  /* Valid and deadlock-free, but stage 0 accumulates micro-batch 1 first. */
  const char *rows[] = {"0F0 0F1 0B1 0B0", "1F0 1F1 1B1 1B0"};
  bt_schedule_t s;
  char err[512] = "";
  from_rows(&s, 2, 1, 2, rows);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  cr_assert_not(bt_sched_check_microbatch_order(&s, err, sizeof err));
  cr_assert(strstr(err, "worker 0 position 2: 0B1") && strstr(err, "before micro-batch 0"), "%s",
            err);
  bt_sched_free(&s);
  /* With a split backward the W passes are what counts. */
  const char *split[] = {"0F0 0F1 0I0 0I1 0W1 0W0", "1F0 1I0 1W0 1F1 1I1 1W1"};
  from_rows(&s, 2, 1, 2, split);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  cr_assert_not(bt_sched_check_microbatch_order(&s, err, sizeof err));
  cr_assert(strstr(err, "0W1"), "%s", err);
  bt_sched_free(&s);
}

Test(validate, swapped_receive_pair_breaks_channel_order) {
  /* Worker 1 receives micro-batch 1 before 0: deadlock-free on tagged
   * sockets, wrong on an untagged channel. */
  const char *rows[] = {"0F0 0F1 0B0 0B1", "1F1 1F0 1B0 1B1"};
  bt_schedule_t s;
  char err[512] = "";
  from_rows(&s, 2, 1, 2, rows);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  cr_assert(bt_sched_check_microbatch_order(&s, err, sizeof err), "%s", err);
  cr_assert_not(bt_sched_check_channel_order(&s, err, sizeof err));
  cr_assert(strstr(err, "worker 1 position 0: 1F1") && strstr(err, "activation"), "%s", err);
  bt_sched_free(&s);
}

/* ---- derived communication ---------------------------------------------- */

typedef struct {
  int from, to, kind, stage, mb;
} msg_t;

static int msg_cmp(const void *x, const void *y) {
  const msg_t *a = x, *b = y;
  const int ka[] = {a->from, a->to, a->kind, a->stage, a->mb};
  const int kb[] = {b->from, b->to, b->kind, b->stage, b->mb};
  for (int i = 0; i < 5; i++)
    if (ka[i] != kb[i]) return ka[i] < kb[i] ? -1 : 1;
  return 0;
}

/* Every send has exactly one receive with the same tag between the same
 * pair of workers, and every receive exactly one send. */
static void check_messages_match(const bt_schedule_t *s) {
  size_t n = s->off[s->p], ns = 0, nr = 0;
  msg_t *sends = malloc((n + 1) * BT_COMM_MAX * sizeof *sends);
  msg_t *recvs = malloc((n + 1) * BT_COMM_MAX * sizeof *recvs);
  cr_assert(sends && recvs);
  for (int w = 0; w < s->p; w++)
    for (size_t j = 0; j < bt_sched_len(s, w); j++) {
      bt_comm_t c;
      cr_assert_eq(bt_comm_of(s, w, j, 7, &c), 0);
      for (int q = 0; q < c.nsend; q++) {
        cr_assert_eq(c.send[q].tag.step, 7);
        cr_assert_neq(c.send[q].peer, w, "a message to oneself");
        sends[ns++] =
            (msg_t){w, c.send[q].peer, c.send[q].tag.kind, c.send[q].tag.stage, c.send[q].tag.mb};
      }
      for (int q = 0; q < c.nrecv; q++) {
        cr_assert_neq(c.recv[q].peer, w, "a message from oneself");
        recvs[nr++] =
            (msg_t){c.recv[q].peer, w, c.recv[q].tag.kind, c.recv[q].tag.stage, c.recv[q].tag.mb};
      }
    }
  qsort(sends, ns, sizeof *sends, msg_cmp);
  qsort(recvs, nr, sizeof *recvs, msg_cmp);
  cr_assert_eq(ns, nr, "%s p=%d v=%d m=%d: %zu sends, %zu receives", s->name, s->p, s->v, s->m, ns,
               nr);
  for (size_t i = 0; i < ns; i++) {
    cr_assert_eq(msg_cmp(&sends[i], &recvs[i]), 0,
                 "%s p=%d v=%d m=%d: send %d->%d kind %d stage %d mb %d unmatched", s->name, s->p,
                 s->v, s->m, sends[i].from, sends[i].to, sends[i].kind, sends[i].stage,
                 sends[i].mb);
    if (i > 0) cr_assert_neq(msg_cmp(&sends[i], &sends[i - 1]), 0, "duplicate tag");
  }
  free(sends);
  free(recvs);
}

static void check_comm(const char *name, int p, int v, int m, void *ctx) {
  (void)ctx;
  bt_schedule_t s;
  build_ok(name, p, v, m, &s);
  check_messages_match(&s);
  bt_sched_free(&s);
}

Test(comm, messages_match_by_tag_for_every_builder) {
  for (int i = 0; bt_sched_names[i]; i++) for_grid(bt_sched_names[i], 2, check_comm, NULL);
  /* Interleaving with p = 2 and m not a multiple of p, every m up to 17. */
  for (int v = 2; v <= 4; v++)
    for (int m = 2; m <= 17; m++) check_comm("interleaved", 2, v, m, NULL);
}

Test(comm, matching_holds_where_send_and_receive_orders_differ) {
  const char *rows[] = {"0F0 0F1 0B0 0B1", "1F1 1F0 1B0 1B1"};
  bt_schedule_t s;
  from_rows(&s, 2, 1, 2, rows);
  check_messages_match(&s);
  bt_sched_free(&s);
}

Test(comm, rule_for_each_action_type) {
  bt_schedule_t s;
  build_ok("interleaved", 2, 2, 2, &s);
  bt_comm_t c;
  /* Virtual stage 2 is chunk 1 of worker 0: it needs stage 1's activation
   * from worker 1 and sends its own to worker 1 (stage 3). */
  bt_comm_of_action(&s, &(bt_action_t){.stage = 2, .mb = 1, .type = BT_ACT_F}, 3, &c);
  cr_assert_eq(c.nrecv, 1);
  cr_assert_eq(c.recv[0].peer, 1);
  cr_assert_eq(c.recv[0].tag.kind, BT_MSG_ACTIVATION);
  cr_assert_eq(c.recv[0].tag.stage, 1);
  cr_assert_eq(c.recv[0].tag.mb, 1);
  cr_assert_eq(c.recv[0].tag.step, 3);
  cr_assert_eq(c.nsend, 1);
  cr_assert_eq(c.send[0].peer, 1);
  cr_assert_eq(c.send[0].tag.stage, 2);
  /* The last stage's backward receives nothing and sends its gradient back. */
  bt_comm_of_action(&s, &(bt_action_t){.stage = 3, .mb = 0, .type = BT_ACT_B}, 0, &c);
  cr_assert_eq(c.nrecv, 0);
  cr_assert_eq(c.nsend, 1);
  cr_assert_eq(c.send[0].peer, 0);
  cr_assert_eq(c.send[0].tag.kind, BT_MSG_GRADIENT);
  cr_assert_eq(c.send[0].tag.stage, 3);
  /* W moves nothing; the first stage's forward receives nothing. */
  bt_comm_of_action(&s, &(bt_action_t){.stage = 1, .mb = 0, .type = BT_ACT_W}, 0, &c);
  cr_assert_eq(c.nrecv + c.nsend, 0);
  bt_comm_of_action(&s, &(bt_action_t){.stage = 0, .mb = 0, .type = BT_ACT_F}, 0, &c);
  cr_assert_eq(c.nrecv, 0);
  cr_assert_eq(bt_comm_of(&s, 2, 0, 0, &c), BT_EARG);
  bt_sched_free(&s);
  /* One worker: every hop is local, so no message at all. */
  build_ok("interleaved", 1, 3, 2, &s);
  for (size_t j = 0; j < bt_sched_len(&s, 0); j++) {
    bt_comm_of(&s, 0, j, 0, &c);
    cr_assert_eq(c.nrecv + c.nsend, 0);
  }
  bt_sched_free(&s);
}

/* ---- simulator ---------------------------------------------------------- */

Test(sim, transfer_time_and_per_stage_costs) {
  bt_schedule_t s;
  bt_sim_result_t r;
  build_ok("gpipe", 2, 1, 2, &s);
  bt_sim_costs_t c;
  bt_sim_costs_default(&c);
  c.transfer = 0.5;
  cr_assert_eq(bt_sim_run(&s, &c, &r, NULL, 0), 0);
  /* 0F0 [0,1] 0F1 [1,2]; 1F0 [1.5,2.5] 1F1 [2.5,3.5] 1B0 [3.5,5.5] 1B1 [5.5,7.5];
   * 0B0 [6,8] 0B1 [8,10]. */
  cr_assert_eq(r.makespan, 10);
  cr_assert_eq(r.busy[0], 6);
  cr_assert_eq(r.idle[1], 4);
  cr_assert_eq(r.start[s.off[1] + 0], 1.5);
  cr_assert_eq(r.end[s.off[0] + 3], 10);
  bt_sim_result_free(&r);
  /* A heavy last stage: stage 1 forwards cost 3. */
  double per[2 * BT_ACT_NTYPES] = {1, 2, 1, 1, 3, 2, 1, 1};
  bt_sim_costs_default(&c);
  c.stage_cost = per;
  cr_assert_eq(bt_sim_run(&s, &c, &r, NULL, 0), 0);
  /* 1F0 [1,4] 1F1 [4,7] 1B0 [7,9] 1B1 [9,11]; 0B0 [9,11] 0B1 [11,13]. */
  cr_assert_eq(r.makespan, 13);
  cr_assert_eq(r.busy[1], 10);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
}

Test(sim, boxes_and_measure_agree_with_the_simulation) {
  bt_schedule_t s;
  bt_sim_result_t r, q;
  build_ok("zb-h1", 4, 1, 8, &s);
  sim_unit(&s, &r);
  bt_box_t *b;
  size_t n;
  cr_assert_eq(bt_sim_boxes(&s, &r, &b, &n), 0);
  cr_assert_eq(n, s.off[s.p]);
  cr_assert_eq(bt_sim_measure(b, n, s.p, &q), 0);
  cr_assert_eq(q.makespan, r.makespan);
  cr_assert_eq(q.bubble_fraction, r.bubble_fraction);
  for (int w = 0; w < s.p; w++) {
    cr_assert_eq(q.busy[w], r.busy[w]);
    cr_assert_eq(q.peak[w], r.peak[w]);
  }
  free(b);
  bt_sim_result_free(&q);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
}

/* ---- CSV ---------------------------------------------------------------- */

static char *csv_text(const bt_schedule_t *s) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert_not_null(f);
  cr_assert_eq(bt_sched_csv_write(s, f), 0);
  fclose(f);
  return buf;
}

Test(csv, round_trip_of_every_builder) {
  int sizes[][3] = {{1, 1, 1}, {2, 1, 3}, {4, 1, 8}, {3, 1, 7}};
  for (int i = 0; bt_sched_names[i]; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      int il = !strcmp(bt_sched_names[i], "interleaved");
      if (sizes[k][2] < least_m(bt_sched_names[i], sizes[k][0])) continue;
      bt_schedule_t s, t;
      build_ok(bt_sched_names[i], sizes[k][0], il ? 3 : is_v(bt_sched_names[i]) ? 2 : 1, sizes[k][2], &s);
      char *text = csv_text(&s), err[512] = "";
      cr_assert_eq(bt_sched_csv_parse(text, strlen(text), &t, err, sizeof err), 0, "%s", err);
      cr_assert_eq(t.p, s.p);
      cr_assert_eq(t.v, s.v);
      cr_assert_eq(t.m, s.m);
      cr_assert_eq(t.off[t.p], s.off[s.p]);
      for (int w = 0; w < s.p; w++) cr_assert_eq(t.off[w], s.off[w]);
      cr_assert_eq(memcmp(t.acts, s.acts, s.off[s.p] * sizeof *s.acts), 0);
      for (int k = 0; k < bt_sched_nstages(&s); k++) {
        cr_assert_eq(bt_sched_worker_of(&t, k), bt_sched_worker_of(&s, k), "%s stage %d", s.name, k);
        cr_assert_eq(bt_sched_chunk_of(&t, k), bt_sched_chunk_of(&s, k), "%s stage %d", s.name, k);
      }
      free(text);
      bt_sched_free(&t);
      bt_sched_free(&s);
    }
}

Test(csv, written_with_idle_cells_in_unit_time_columns) {
  bt_schedule_t s;
  build_ok("1f1b", 2, 1, 2, &s);
  char *text = csv_text(&s);
  /* Unit time: worker 1 waits one slot for its first activation. */
  cr_assert_str_eq(text, "0F0,0F1,,0B0,,0B1\n,1F0,1B0,1F1,1B1\n");
  free(text);
  bt_sched_free(&s);
}

Test(csv, hand_written_pytorch_style_loads_and_simulates) {
  /* 1F1B for 2 ranks and 4 micro-batches as PyTorch writes it: one row per
   * rank, empty cells for idle slots, spaces and CRLF tolerated. */
  const char *text =
      "0F0,0F1,,0B0,0F2,0B1,0F3,0B2,,0B3\r\n"
      ", 1F0 ,1B0,1F1,1B1,1F2,1B2,1F3,1B3\r\n\r\n";
  bt_schedule_t s;
  bt_sim_result_t r;
  char err[512] = "";
  cr_assert_eq(bt_sched_csv_parse(text, strlen(text), &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(s.p, 2);
  cr_assert_eq(s.v, 1);
  cr_assert_eq(s.m, 4);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  sim_unit(&s, &r);
  cr_assert_eq(r.bubble_fraction, 1.0 / 5.0, "bubble %.17g", r.bubble_fraction);
  cr_assert_eq(r.peak[0], 2);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
  /* Interleaved placement is inferred: 4 virtual stages on 2 rows. */
  const char *il = "0F0,2F0,2B0,0B0\n1F0,3F0,3B0,1B0\n";
  cr_assert_eq(bt_sched_csv_parse(il, strlen(il), &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(s.p, 2);
  cr_assert_eq(s.v, 2);
  cr_assert_eq(s.m, 1);
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  bt_sched_free(&s);
}

Test(csv, malformed_is_rejected_with_line_and_column) {
  struct {
    const char *text;
    const char *want;
  } cases[] = {
      {"", "no rows"},
      {"\n\n", "no rows"},
      {",,\n,\n", "no actions"},
      {"0F0,0X1\n1F0\n", "line 1 column 2: '0X1'"},
      {"0F0,0B0\n1F0,1B0;1F1\n", "line 2 column 2"},
      {"0F0,1F0\n1B0\n", "line 2 column 1: 1B0 puts virtual stage 1 on worker 1, but line 1 column 2 (1F0) puts it on worker 0"},
      {"0F0,2F0\n1F0\n", "multiple of the worker count"},
      {"0F0,2F0\n1F0\n3F0\n", "multiple of the worker count"},
      {"0F0,1F0,2F0\n3F0\n", "worker 0 holds 3 virtual stages"},
      {"0F0,\"1F0\"\n", "line 1 column 2"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bt_schedule_t s;
    char err[512] = "";
    cr_assert_eq(bt_sched_csv_parse(cases[i].text, strlen(cases[i].text), &s, err, sizeof err),
                 BT_EFORMAT, "case %zu accepted", i);
    cr_assert(strstr(err, cases[i].want), "case %zu: '%s' lacks '%s'", i, err, cases[i].want);
  }
}

/* ---- rendering ---------------------------------------------------------- */

static size_t count(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
  return n;
}

Test(render, svg_has_one_box_per_action_and_shades_chunks) {
  bt_schedule_t s;
  bt_sim_result_t r;
  build_ok("interleaved", 4, 2, 8, &s);
  sim_unit(&s, &r);
  bt_box_t *b;
  size_t n;
  cr_assert_eq(bt_sim_boxes(&s, &r, &b, &n), 0);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  bt_render_opts_t o = {.p = 4, .v = 2, .title = "a <test> & more", .unit = ""};
  cr_assert_eq(bt_render_svg(f, b, n, &o), 0);
  fclose(f);
  cr_assert_eq(count(buf, "<rect class=\"act "), n);
  cr_assert_eq(count(buf, "class=\"act F\""), n / 2);
  cr_assert_eq(count(buf, "class=\"act B\""), n / 2);
  cr_assert_eq(count(buf, "class=\"lane\""), 4);
  cr_assert(strstr(buf, "a &lt;test&gt; &amp; more"));
  cr_assert(strstr(buf, "</svg>"));
  /* Chunk 0 and chunk 1 forwards are drawn in different shades. */
  cr_assert(strstr(buf, "data-action=\"0F0\"") && strstr(buf, "data-action=\"4F0\""));
  const char *c0 = strstr(strstr(buf, "data-action=\"0F0\""), "fill=\"");
  const char *c1 = strstr(strstr(buf, "data-action=\"4F0\""), "fill=\"");
  cr_assert_neq(strncmp(c0, c1, 13), 0, "chunks share a colour");
  free(buf);
  free(b);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
}

Test(render, grid_shows_every_action_and_idle_slots) {
  bt_schedule_t s;
  bt_sim_result_t r;
  build_ok("1f1b", 2, 1, 2, &s);
  sim_unit(&s, &r);
  bt_box_t *b;
  size_t n;
  cr_assert_eq(bt_sim_boxes(&s, &r, &b, &n), 0);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  bt_render_opts_t o = {.p = 2, .v = 1, .title = NULL, .unit = ""};
  cr_assert_eq(bt_render_grid(f, b, n, &o, 100), 0);
  fclose(f);
  cr_assert(strstr(buf, "w0  | 0F0 0F1 .   .   0B0 --- .   0B1 ---\n"), "%s", buf);
  cr_assert(strstr(buf, "w1  | .   1F0 1B0 --- 1F1 1B1 --- .   .\n"), "%s", buf);
  free(buf);
  f = open_memstream(&buf, &len);
  cr_assert_eq(bt_render_grid(f, b, n, &o, 4), 0);
  fclose(f);
  cr_assert(strstr(buf, "grid omitted"), "%s", buf);
  free(buf);
  free(b);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
}

/* ---- traces ------------------------------------------------------------- */

Test(trace, reads_complete_events_and_measures_the_bubble) {
  const char *text =
      "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
      "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":0,\"args\":{\"name\":\"w0\"}},\n"
      "{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":1000,\"dur\":10,\"pid\":0,\"tid\":0},\n"
      "{\"name\":\"1F0\",\"ph\":\"X\",\"ts\":1012,\"dur\":10,\"pid\":0,\"tid\":1},\n"
      "{\"name\":\"1B0\",\"ph\":\"X\",\"ts\":1022,\"dur\":20,\"pid\":0,\"tid\":1,"
      "\"args\":{\"step\":[1,2.5e0,null,true]}},\n"
      "{\"name\":\"optimizer\",\"ph\":\"X\",\"ts\":1042,\"dur\":5,\"pid\":0,\"tid\":1},\n"
      "{\"name\":\"0B0\",\"ph\":\"X\",\"ts\":1044,\"dur\":20,\"pid\":0,\"tid\":0}]}\n";
  bt_trace_t t;
  bt_sim_result_t r;
  char err[512] = "";
  cr_assert_eq(bt_trace_parse(text, strlen(text), &t, err, sizeof err), 0, "%s", err);
  cr_assert_eq(t.n, 4);
  cr_assert_eq(t.p, 2);
  cr_assert_eq(t.v, 1);
  cr_assert_eq(t.m, 1);
  cr_assert_eq(t.boxes[0].start, 0);
  cr_assert_eq(t.boxes[2].worker, 1);
  cr_assert_eq(t.boxes[2].act.type, BT_ACT_B);
  cr_assert_eq(t.boxes[2].start, 22);
  cr_assert_eq(bt_sim_measure(t.boxes, t.n, t.p, &r), 0);
  /* Makespan 64 µs, busy 30 each: idle 34 + 34 over 2 · 64. */
  cr_assert_eq(r.makespan, 64);
  cr_assert_eq(r.busy[0], 30);
  cr_assert_eq(r.bubble_fraction, 68.0 / 128.0);
  cr_assert_eq(r.peak[0], 1);
  bt_sim_result_free(&r);
  bt_trace_free(&t);
  const char *array = "[{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":0,\"dur\":1,\"tid\":0}]";
  cr_assert_eq(bt_trace_parse(array, strlen(array), &t, err, sizeof err), 0, "%s", err);
  cr_assert_eq(t.n, 1);
  bt_trace_free(&t);
}

Test(trace, malformed_is_rejected) {
  struct {
    const char *text;
    const char *want;
  } cases[] = {
      {"", "expected '{'"},
      {"{\"traceEvents\":[", "expected '{'"},
      {"{\"traceEvents\":[]}", "no complete"},
      {"{\"other\":1}", "no \"traceEvents\""},
      {"{\"traceEvents\":[{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":0,\"tid\":0}]}", "lacks \"dur\""},
      {"{\"traceEvents\":[{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":0,\"dur\":-1,\"tid\":0}]}",
       "negative duration"},
      {"{\"traceEvents\":[{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":0,\"dur\":1,\"tid\":1.5}]}",
       "tid 1.5"},
      {"{\"traceEvents\":[{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":01,\"dur\":1,\"tid\":0}]}",
       "expected"},
      {"{\"traceEvents\":[]} x", "text after the trace"},
      {"{\"traceEvents\":[{\"name\":\"0F0\" \"ph\":\"X\"}]}", "expected '}'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bt_trace_t t;
    char err[512] = "";
    cr_assert_eq(bt_trace_parse(cases[i].text, strlen(cases[i].text), &t, err, sizeof err),
                 BT_EFORMAT, "case %zu accepted", i);
    cr_assert(strstr(err, cases[i].want), "case %zu: '%s' lacks '%s'", i, err, cases[i].want);
  }
}
