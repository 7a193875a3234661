/* test_vschedules.c - V placement (zb-v, dualpipev) and PyTorch's CSV as
 * its versions write it: both notations, compound cells, communication
 * files, placement from the rows, FSDP actions. The closed forms of the V
 * schedules are in test_schedules.c's grid. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "schedules/check.h"
#include "schedules/comm.h"
#include "schedules/csv.h"
#include "schedules/render.h"
#include "schedules/schedule.h"
#include "schedules/sim.h"

static void build_ok(const char *name, int p, int v, int m, bt_schedule_t *s) {
  char err[512] = "";
  cr_assert_eq(bt_sched_build(name, p, v, m, s, err, sizeof err), 0, "%s p=%d v=%d m=%d: %s", name, p, v, m, err);
}

static char *csv_text(const bt_schedule_t *s, int notation, int comms) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert_not_null(f);
  bt_csv_opts_t o = {.notation = notation, .comms = comms};
  cr_assert_eq(bt_sched_csv_write_opts(s, &o, f), 0);
  fclose(f);
  return buf;
}

static void assert_same(const bt_schedule_t *s, const bt_schedule_t *t, const char *what) {
  cr_assert_eq(t->p, s->p, "%s", what);
  cr_assert_eq(t->v, s->v, "%s", what);
  cr_assert_eq(t->m, s->m, "%s", what);
  for (int w = 0; w <= s->p; w++) cr_assert_eq(t->off[w], s->off[w], "%s worker %d", what, w);
  for (size_t j = 0; j < s->off[s->p]; j++) {
    char a1[32], a2[32];
    const bt_action_t *x = &s->acts[j], *y = &t->acts[j];
    cr_assert(x->stage == y->stage && x->mb == y->mb && x->type == y->type && x->overlap == y->overlap,
              "%s action %zu: %s%s vs %s%s", what, j, bt_action_format(x, a1, sizeof a1), x->overlap ? "(ov)" : "",
              bt_action_format(y, a2, sizeof a2), y->overlap ? "(ov)" : "");
  }
  for (int k = 0; k < bt_sched_nstages(s); k++) {
    cr_assert_eq(bt_sched_worker_of(t, k), bt_sched_worker_of(s, k), "%s stage %d", what, k);
    cr_assert_eq(bt_sched_chunk_of(t, k), bt_sched_chunk_of(s, k), "%s stage %d", what, k);
  }
}

static int parse(const char *text, bt_csv_opts_t *o, bt_schedule_t *s, char *err, size_t errlen) {
  return bt_sched_csv_parse_opts(text, strlen(text), o, s, err, errlen);
}

static void refused(const char *text, const char *want) {
  bt_schedule_t s;
  char err[512] = "";
  cr_assert_eq(parse(text, NULL, &s, err, sizeof err), BT_EFORMAT, "accepted: %s", text);
  cr_assert(strstr(err, want), "'%s' lacks '%s'", err, want);
  cr_assert_null(strchr(err, '\n'), "message spans lines: %s", err);
}

/* ---- placement and builders --------------------------------------------- */

Test(vplace, v_placement_is_data_and_the_worker_holds_s_and_2p_minus_1_minus_s) {
  for (int p = 1; p <= 6; p++) {
    bt_schedule_t s;
    build_ok("zb-v", p, 2, 3 * p, &s);
    cr_assert(bt_sched_is_v(&s) || p == 1, "p=%d", p); /* p = 1: V is k % p, stored as NULL */
    for (int w = 0; w < p; w++) {
      cr_assert_eq(bt_sched_stage_of(&s, w, 0), w);
      cr_assert_eq(bt_sched_stage_of(&s, w, 1), 2 * p - 1 - w);
      cr_assert_eq(bt_sched_worker_of(&s, 2 * p - 1 - w), w);
      cr_assert_eq(bt_sched_chunk_of(&s, 2 * p - 1 - w), 1);
    }
    bt_sched_free(&s);
  }
}

Test(vplace, builders_refuse_other_chunk_counts_and_dualpipev_refuses_m_below_2p) {
  bt_schedule_t s;
  char err[512] = "";
  cr_assert_eq(bt_sched_build("zb-v", 4, 1, 8, &s, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "chunks must be 2 (got 1); use --chunks 2"), "%s", err);
  cr_assert_eq(bt_sched_build("dualpipev", 4, 3, 8, &s, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "chunks must be 2 (got 3)"), "%s", err);
  cr_assert_eq(bt_sched_build("dualpipev", 4, 2, 7, &s, err, sizeof err), BT_EARG);
  cr_assert(strstr(err, "m >= 2p (got m=7, p=4); try --microbatches 8"), "%s", err);
  cr_assert(strstr(err, "zb-v, which takes any m"), "%s", err);
  /* zb-v takes any m, fewer micro-batches than stages included */
  for (int m = 1; m <= 9; m++) {
    build_ok("zb-v", 4, 2, m, &s);
    cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "m=%d: %s", m, err);
    bt_sched_free(&s);
  }
}

Test(vplace, dualpipev_pairs_are_an_f_followed_by_its_backward) {
  bt_schedule_t s;
  build_ok("dualpipev", 4, 2, 12, &s);
  int pairs = 0;
  for (int w = 0; w < s.p; w++)
    for (size_t j = 0; j < bt_sched_len(&s, w); j++) {
      const bt_action_t *a = bt_sched_at(&s, w, j);
      if (!a->overlap) continue;
      pairs++;
      cr_assert_eq(a->type, BT_ACT_F);
      cr_assert_lt(j + 1, bt_sched_len(&s, w));
      const bt_action_t *b = a + 1;
      cr_assert_eq(b->type, BT_ACT_B, "worker %d position %zu", w, j);
      /* the pair spans both chunks: one goes down the V, the other up */
      cr_assert_neq(bt_sched_chunk_of(&s, a->stage), bt_sched_chunk_of(&s, b->stage));
    }
  cr_assert_gt(pairs, 0);
  /* a marked F with no backward after it is refused */
  s.acts[s.off[1] - 1].overlap = 1;
  s.acts[s.off[1] - 1].type = BT_ACT_F;
  char err[512] = "";
  cr_assert_neq(bt_sched_validate(&s, err, sizeof err), 0);
  bt_sched_free(&s);
}

/* ---- local handoff ------------------------------------------------------ */

Test(vplace, the_turn_of_the_v_is_a_local_handoff_and_tags_stay_unique) {
  for (int p = 2; p <= 5; p++) {
    const char *names[] = {"zb-v", "dualpipev"};
    for (int i = 0; i < 2; i++) {
      bt_schedule_t s;
      int m = 2 * p + 1, V = 2 * p;
      build_ok(names[i], p, 2, m, &s);
      size_t sends = 0, recvs = 0;
      unsigned char *seen = calloc((size_t)V * m * 2, 1);
      for (int w = 0; w < p; w++)
        for (size_t j = 0; j < bt_sched_len(&s, w); j++) {
          const bt_action_t *a = bt_sched_at(&s, w, j);
          bt_comm_t c;
          cr_assert_eq(bt_comm_of(&s, w, j, 7, &c), 0);
          /* the last worker turns from stage p-1 to p in memory */
          if (a->stage == p - 1 && a->type == BT_ACT_F) cr_assert_eq(c.nsend, 0, "%s p=%d", names[i], p);
          if (a->stage == p && a->type == BT_ACT_F) cr_assert_eq(c.nrecv, 0, "%s p=%d", names[i], p);
          if (a->stage == p && a->type != BT_ACT_F && a->type != BT_ACT_W) cr_assert_eq(c.nsend, 0);
          if (a->stage == p - 1 && a->type != BT_ACT_F && a->type != BT_ACT_W) cr_assert_eq(c.nrecv, 0);
          for (int q = 0; q < c.nsend; q++) {
            const bt_tag_t *t = &c.send[q].tag;
            cr_assert_neq(c.send[q].peer, w);
            size_t key = ((size_t)t->mb * V + t->stage) * 2 + t->kind;
            cr_assert_eq(seen[key], 0, "%s p=%d: tag sent twice", names[i], p);
            seen[key] = 1;
            sends++;
          }
          recvs += (size_t)c.nrecv;
        }
      /* 2p - 1 hops between consecutive stages, one of them local */
      cr_assert_eq(sends, (size_t)2 * (2 * p - 2) * m, "%s p=%d sends %zu", names[i], p, sends);
      cr_assert_eq(recvs, sends);
      char err[512] = "";
      cr_assert(bt_sched_check_channel_order(&s, err, sizeof err), "%s p=%d: %s", names[i], p, err);
      free(seen);
      bt_sched_free(&s);
    }
  }
}

/* ---- CSV: notations, placements, compound cells -------------------------- */

Test(csvv, every_builder_round_trips_in_both_notations_and_with_comms) {
  const char *names[] = {"1f1b", "zb-h1", "interleaved", "zb-v", "dualpipev"};
  int vs[] = {1, 1, 2, 2, 2};
  for (int i = 0; i < 5; i++)
    for (int p = 1; p <= 4; p++)
      for (int notation = 0; notation < 2; notation++)
        for (int comms = 0; comms < 2; comms++) {
          bt_schedule_t s, t;
          int m = 2 * p + 1;
          build_ok(names[i], p, vs[i], m, &s);
          char *text = csv_text(&s, notation, comms), err[512] = "", what[96];
          snprintf(what, sizeof what, "%s p=%d notation %d comms %d", names[i], p, notation, comms);
          bt_csv_opts_t o = {0};
          cr_assert_eq(parse(text, &o, &t, err, sizeof err), 0, "%s: %s\n%s", what, err, text);
          assert_same(&s, &t, what);
          cr_assert_eq(o.comms, comms && p > 1, "%s", what);
          int has_split = strcmp(names[i], "1f1b") && strcmp(names[i], "interleaved");
          int has_full = strcmp(names[i], "zb-h1") && strcmp(names[i], "zb-v");
          /* files showing neither marker read the same both ways */
          if (has_split || (notation == BT_CSV_EARLIER && has_full)) cr_assert_eq(o.notation, notation, "%s", what);
          free(text);
          bt_sched_free(&t);
          bt_sched_free(&s);
        }
}

Test(csvv, earlier_notation_written_by_hand_loads) {
  /* PyTorch's earlier notation for 2-rank interleaved zero bubble: B is the
   * input half because a W follows; the current reader refused "0W0
   * duplicates the backward 0B0". */
  const char *text =
      "0F0,2F0,0F1,2F1,,2B0,2W0,0B0,0W0,2B1,2W1,0B1,0W1\n"
      ",1F0,3F0,1F1,3F1,3B0,3W0,1B0,3B1,1W0,3W1,1B1,1W1\n";
  bt_schedule_t s;
  bt_csv_opts_t o = {0};
  char err[512] = "";
  cr_assert_eq(parse(text, &o, &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(o.notation, BT_CSV_EARLIER);
  cr_assert_eq(s.v, 2);
  cr_assert_eq(s.acts[4].type, BT_ACT_I); /* 2B0: the empty cell is dropped */
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  cr_assert(bt_sched_check_microbatch_order(&s, err, sizeof err), "%s", err);
  bt_sched_free(&s);
  /* BW is the earlier full backward */
  const char *bw = "0F0,0F1,0BW0,0BW1\n";
  cr_assert_eq(parse(bw, &o, &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(o.notation, BT_CSV_EARLIER);
  cr_assert_eq(s.acts[2].type, BT_ACT_B);
  bt_sched_free(&s);
}

Test(csvv, a_file_mixing_notations_is_refused_naming_the_first_conflicting_cell) {
  refused("0F0,0I0,0W0,0F1,0BW1\n", "line 1 column 5: 0BW1 mixes PyTorch's two notations");
  refused("0F0,0I0,0W0,0F1,0BW1\n", "line 1 column 2, 0I0, says otherwise");
  refused("0F0,0F1,0B0,0W0\n1F0,1I0,1W0\n", "line 2 column 2: 1I0 mixes");
}

Test(csvv, placement_comes_from_the_rows) {
  /* a V on 2 workers, hand-written: worker 0 holds 0 and 3 */
  const char *v = "0F0,3F0,3B0,0B0\n1F0,2F0,2B0,1B0\n";
  bt_schedule_t s;
  char err[512] = "";
  cr_assert_eq(parse(v, NULL, &s, err, sizeof err), 0, "%s", err);
  cr_assert(bt_sched_is_v(&s));
  cr_assert_eq(bt_sched_validate(&s, err, sizeof err), 0, "%s", err);
  bt_sched_free(&s);
  /* the k % p rows keep the plain placement */
  const char *il = "0F0,2F0,2B0,0B0\n1F0,3F0,3B0,1B0\n";
  cr_assert_eq(parse(il, NULL, &s, err, sizeof err), 0, "%s", err);
  cr_assert_null(s.place);
  bt_sched_free(&s);
  refused("0F0,3F0,3B0,0B0\n1F0,2F0,2B0,1B0,0W0\n",
          "line 2 column 5: 0W0 puts virtual stage 0 on worker 1, but line 1 column 1 (0F0) puts it on worker 0");
}

Test(csvv, compound_cells_read_and_malformed_ones_refused) {
  const char *text = "0F0,0F1,(3F0;0B0)OVERLAP_F_B,3B1,0B1\n1F0,2F0,1F1,2F1,2B0,(2F1;1B0)OVERLAP_F_B\n";
  bt_schedule_t s;
  char err[512] = "";
  cr_assert_eq(parse(text, NULL, &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(s.acts[2].stage, 3);
  cr_assert_eq(s.acts[2].type, BT_ACT_F);
  cr_assert_eq(s.acts[2].overlap, 1);
  cr_assert_eq(s.acts[3].stage, 0);
  cr_assert_eq(s.acts[3].type, BT_ACT_B);
  cr_assert_eq(s.acts[3].overlap, 0);
  bt_sched_free(&s);
  refused("(0F0;0W0)OVERLAP_F_B\n", "line 1 column 1");
  refused("(0F0;0B0)OVERLAP\n", "is not an action");
  refused("(0F0,0B0)OVERLAP_F_B\n", "is not an action");
  refused("(0B0;0F0)OVERLAP_F_B\n", "is not an action");
}

Test(csvv, fsdp_actions_are_refused_or_skipped_with_a_count) {
  const char *text = "0UNSHARD,0F0,0B0,0REDUCE_GRAD,0RESHARD\n";
  refused(text, "line 1 column 1: 0UNSHARD is an FSDP action baton does not run");
  refused(text, "--skip-unsupported");
  bt_schedule_t s;
  bt_csv_opts_t o = {.skip_unsupported = 1};
  char err[512] = "";
  cr_assert_eq(parse(text, &o, &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(o.skipped, 3);
  cr_assert_str_eq(o.first_skipped, "line 1 column 1: 0UNSHARD");
  cr_assert_eq(s.off[1], 2);
  bt_sched_free(&s);
}

/* ---- CSV: communication files -------------------------------------------- */

Test(csvv, comms_files_are_checked_against_the_derived_messages) {
  /* 1F1B on 2 workers, 1 micro-batch, with its messages */
  const char *good = "0F0,0SEND_F0,0RECV_B0,0B0\n1RECV_F0,1F0,1B0,1SEND_B0\n";
  bt_schedule_t s;
  bt_csv_opts_t o = {0};
  char err[512] = "";
  cr_assert_eq(parse(good, &o, &s, err, sizeof err), 0, "%s", err);
  cr_assert_eq(o.comms, 1);
  cr_assert_eq(s.off[2], 4);
  bt_sched_free(&s);
  refused("0F0,0SEND_F0,0B0,0RECV_B0\n1RECV_F0,1F0,1B0,1SEND_B0\n",
          "line 1 column 4: 0RECV_B0 comes after 0B0, which needs it");
  refused("0SEND_F0,0F0,0RECV_B0,0B0\n1RECV_F0,1F0,1B0,1SEND_B0\n",
          "line 1 column 1: 0SEND_F0 comes before 0F0, which produces it");
  refused("0F0,0SEND_F0,0RECV_B0,0B0\n1RECV_F0,1F0,1B0\n", "1B0 sends the gradient of micro-batch 0, but no 1SEND_B0");
  refused("0F0,0SEND_F0,0SEND_F0,0RECV_B0,0B0\n1RECV_F0,1F0,1B0,1SEND_B0\n", "column 3: 0SEND_F0 appears twice");
  /* a V turns on the last worker without a message */
  refused("0F0,1SEND_F0,1F0,1B0,0B0\n", "1SEND_F0 is not a message baton derives");
  refused("0F0,0SEND_F0,0RECV_B0,0B0\n1RECV_F0,1F0,1B0,1SEND_B0,1RECV_F0\n", "1RECV_F0");
}

/* ---- drawing ------------------------------------------------------------ */

Test(vplace, drawings_show_the_v) {
  bt_schedule_t s;
  bt_sim_result_t r;
  bt_sim_costs_t c;
  char err[512] = "";
  build_ok("dualpipev", 2, 2, 4, &s);
  bt_sim_costs_default(&c);
  cr_assert_eq(bt_sim_run(&s, &c, &r, err, sizeof err), 0, "%s", err);
  bt_box_t *b;
  size_t n;
  cr_assert_eq(bt_sim_boxes(&s, &r, &b, &n), 0);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  bt_render_opts_t o = {.p = 2, .v = 2, .title = NULL, .unit = "", .vshape = 1};
  cr_assert_eq(bt_render_grid(f, b, n, &o, 200), 0);
  fclose(f);
  /* worker 0: chunk 0 forwards in upper case, then stage 3 in lower case */
  cr_assert(strstr(buf, "w0  | 0F0 0F1 0F2 3f0 3i0 3w0 3f1(0F3 3b1 ---"), "%s", buf);
  cr_assert(strstr(buf, "V placement: worker s runs virtual stages s"), "%s", buf);
  free(buf);
  buf = NULL;
  f = open_memstream(&buf, &len);
  cr_assert_eq(bt_render_svg(f, b, n, &o), 0);
  fclose(f);
  cr_assert(strstr(buf, "class=\"vshape\""), "no V legend");
  cr_assert(strstr(buf, "class=\"act F overlap\" data-action=\"0F3\""), "pair not outlined");
  free(buf);
  free(b);
  bt_sim_result_free(&r);
  bt_sched_free(&s);
}
