/* test_e2e_schedule.c - `baton schedule` as users run it: JSON that parses
 * and matches the closed forms, SVG that parses with one box per action,
 * CSV round trips, traces, and one-line errors with exit code 2. Output is
 * checked with /usr/bin/python3 (json, xml.etree), not by this file's own
 * reading of it. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/support/e2e.h"

static bt_e2e_dirs_t e2e;
static char *const dir = e2e.dir;

static void make_dir(void) { bt_e2e_setup(&e2e, "schedule"); }
static void remove_dir(void) { bt_e2e_teardown(&e2e); }

TestSuite(schedule_cli, .init = make_dir, .fini = remove_dir);

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "cannot open %s", path);
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  int c;
  while ((c = fgetc(f)) != EOF) fputc(c, m);
  fclose(f);
  fclose(m);
  return buf;
}

static void spit(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  cr_assert_eq(fclose(f), 0);
}

/* Runs `baton schedule ARGS` (ARGS is shell text, run in dir); stdout and
 * stderr land in dir/out and dir/err. Returns the exit code. */
static int run(const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "cd '%s' && exec '%s' schedule %s", dir, bt_e2e_env("BATON_BIN"), args);
  int code = bt_e2e_sh(&e2e, cmd, 60000);
  cr_assert_lt(code, 128, "baton died of signal %d: %s", code - 128, args);
  return code;
}

/* Runs a Python check with dir as the working directory; 0 when it passed. */
static int python(const char *code) {
  char path[300], cmd[700];
  snprintf(path, sizeof path, "%s/check.py", dir);
  spit(path, code);
  snprintf(cmd, sizeof cmd, "cd '%s' && exec /usr/bin/python3 check.py", dir);
  /* not into dir/out: the check reads the output of the run before it */
  char *argv[] = {"/bin/sh", "-c", cmd, NULL};
  const char *py = bt_e2e_path(&e2e, "pyout");
  return bt_e2e_run(&e2e, argv, py, py, 60000);
}

static char *file_in_dir(const char *name) {
  char path[300];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return slurp(path);
}

static void expect_python(const char *code) {
  int rc = python(code);
  char *out = file_in_dir("pyout");
  cr_assert_eq(rc, 0, "python check failed: %s", out);
  free(out);
}

Test(schedule_cli, help_exits_0) {
  cr_assert_eq(run("--help"), 0);
  char *out = file_in_dir("out");
  cr_assert(strstr(out, "usage: baton schedule") && strstr(out, "--from-trace"), "%s", out);
  free(out);
}

Test(schedule_cli, json_parses_and_bubble_equals_the_closed_form) {
  struct {
    const char *name;
    int p, v, m;
  } cases[] = {{"gpipe", 4, 1, 8},       {"1f1b", 8, 1, 32},       {"zb-h1", 8, 1, 32},
               {"interleaved", 4, 2, 8}, {"interleaved", 2, 3, 5}, {"interleaved", 8, 2, 36},
               {"1f1b", 1, 1, 3}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char args[256], code[1500];
    snprintf(args, sizeof args, "--schedule %s --stages %d --chunks %d --microbatches %d --json",
             cases[i].name, cases[i].p, cases[i].v, cases[i].m);
    cr_assert_eq(run(args), 0, "%s", args);
    snprintf(code, sizeof code,
             "import json\n"
             "d = json.load(open('out'))\n" /* fails on anything besides one object */
             "p, v, m = %d, %d, %d\n"
             "zb = '%s' == 'zb-h1'\n"
             "want = (p - 1) / (3 * m + p - 1) if zb else (p - 1) / (v * m + p - 1)\n"
             "assert d['bubble_fraction'] == want, (d['bubble_fraction'], want)\n"
             "assert d['closed_form_bubble_fraction'] == want\n"
             "assert (d['schedule'], d['stages'], d['chunks'], d['microbatches']) == "
             "('%s', p, v, m), d\n"
             "for k in ('busy', 'idle', 'peak_activations'):\n"
             "    assert len(d[k]) == p, k\n"
             "assert all(type(x) is int for x in d['peak_activations'])\n"
             "assert abs(sum(d['idle']) / (p * d['makespan']) - want) < 1e-15\n"
             "assert d['microbatch_order'] is True and d['channel_order'] is True\n",
             cases[i].p, cases[i].v, cases[i].m, cases[i].name, cases[i].name);
    expect_python(code);
    char *err = file_in_dir("err");
    cr_assert_str_empty(err, "stderr: %s", err);
    free(err);
  }
}

Test(schedule_cli, svg_is_well_formed_with_one_box_per_action) {
  cr_assert_eq(run("--schedule interleaved --stages 4 --chunks 2 --microbatches 8 --svg t.svg "
                   "--json"),
               0);
  expect_python(
      "import json, xml.etree.ElementTree as ET\n"
      "d = json.load(open('out'))\n"
      "root = ET.parse('t.svg').getroot()\n"
      "ns = '{http://www.w3.org/2000/svg}'\n"
      "assert root.tag == ns + 'svg', root.tag\n"
      "acts = [r for r in root.iter(ns + 'rect') "
      "if r.get('class', '').split()[:1] == ['act']]\n"
      "assert len(acts) == d['actions'] == 4 * 2 * 8 * 2, (len(acts), d['actions'])\n"
      "kinds = {r.get('class').split()[1] for r in acts}\n"
      "assert kinds == {'F', 'B'}, kinds\n"
      "assert len({r.get('fill') for r in acts}) == 4  # 2 types x 2 chunk shades\n"
      "labels = [t.text for t in root.iter(ns + 'text')]\n"
      "assert 'worker 3' in labels and 'time' in labels\n");
}

Test(schedule_cli, text_output_has_grid_and_summary) {
  cr_assert_eq(run("--schedule 1f1b --stages 2 --microbatches 2"), 0);
  char *out = file_in_dir("out");
  cr_assert(strstr(out, "w0  | 0F0 0F1 .   .   0B0 --- .   0B1 ---"), "%s", out);
  cr_assert(strstr(out, "makespan 9, bubble fraction 0.333333 (closed form 0.333333)"), "%s", out);
  cr_assert(strstr(out, "gradient accumulation in micro-batch order: yes"), "%s", out);
  free(out);
}

Test(schedule_cli, stage_costs_and_transfer_time_change_the_simulation) {
  /* 1F1B, p = 2, m = 4, the last stage twice as slow: worker 0 ends with
   * 0B3 over [25, 27] (worked by hand in docs/schedules.md). */
  cr_assert_eq(run("--schedule 1f1b --stages 2 --microbatches 4 --stage-cost last:2,4,2,2 "
                   "--json"),
               0);
  expect_python(
      "import json\n"
      "d = json.load(open('out'))\n"
      "assert d['makespan'] == 27 and d['busy'] == [12, 24], d\n"
      "assert d['closed_form_bubble_fraction'] is None\n");
  /* GPipe, p = m = 2, one time unit per hop: 1F0 [2,3], 1F1 [3,4], 1B0
   * [4,6], 1B1 [6,8], then 0B0 [7,9] and 0B1 [9,11]. */
  cr_assert_eq(run("--schedule gpipe --stages 2 --microbatches 2 --costs 1,2,1,1,1 --json"), 0);
  expect_python(
      "import json\n"
      "d = json.load(open('out'))\n"
      "assert d['makespan'] == 11 and d['costs']['transfer'] == 1, d\n");
}

Test(schedule_cli, csv_out_then_in_gives_the_same_simulation) {
  cr_assert_eq(run("--schedule interleaved --stages 2 --chunks 2 --microbatches 5 --csv-out "
                   "s.csv --json"),
               0);
  char path[300];
  snprintf(path, sizeof path, "%s/out", dir);
  char *first = slurp(path);
  spit(path, "");
  snprintf(path, sizeof path, "%s/first.json", dir);
  spit(path, first);
  free(first);
  cr_assert_eq(run("--csv-in s.csv --stages 2 --microbatches 5 --costs 1,2,1,1,0 --json"), 0);
  expect_python(
      "import json\n"
      "a = json.load(open('first.json'))\n"
      "b = json.load(open('out'))\n"
      "assert b['schedule'] == 'csv'\n"
      "for k in ('stages', 'chunks', 'microbatches', 'actions', 'makespan', "
      "'bubble_fraction', 'busy', 'idle', 'peak_activations'):\n"
      "    assert a[k] == b[k], (k, a[k], b[k])\n"
      "rows = open('s.csv').read().splitlines()\n"
      "assert len(rows) == 2 and '' in rows[1].split(',')\n");
}

Test(schedule_cli, hand_written_csv_loads_and_simulates) {
  char path[300];
  snprintf(path, sizeof path, "%s/hand.csv", dir);
  spit(path, "0F0,0F1,,0B0,0F2,0B1,0F3,0B2,,0B3\n,1F0,1B0,1F1,1B1,1F2,1B2,1F3,1B3\n");
  cr_assert_eq(run("--csv-in hand.csv --json"), 0);
  expect_python(
      "import json\n"
      "d = json.load(open('out'))\n"
      "assert (d['stages'], d['chunks'], d['microbatches']) == (2, 1, 4), d\n"
      "assert d['bubble_fraction'] == 1 / 5, d['bubble_fraction']\n"
      "assert d['closed_form_bubble_fraction'] is None\n");
}

/* Exit code 2, nothing on stdout, exactly one line on stderr. */
static void expect_bad(const char *args, const char *want) {
  cr_assert_eq(run(args), 2, "exit code of: %s", args);
  char *out = file_in_dir("out"), *err = file_in_dir("err");
  cr_assert_str_empty(out, "stdout of %s: %s", args, out);
  size_t len = strlen(err);
  cr_assert(len > 0 && err[len - 1] == '\n' && strchr(err, '\n') == err + len - 1,
            "stderr of %s is not one line: '%s'", args, err);
  cr_assert(strstr(err, want), "stderr of %s: '%s' lacks '%s'", args, err, want);
  free(out);
  free(err);
}

Test(schedule_cli, bad_input_gives_exit_2_and_one_line) {
  char path[300];
  const struct {
    const char *file, *text;
  } files[] = {
      {"malformed.csv", "0F0,0Q0\n1F0\n"},
      {"uneven.csv", "0F0,2F0,2B0,0B0\n1F0,1B0\n"},
      {"nobackward.csv", "0F0,0F1,0B0,0B1\n1F0,1B0,1F1\n"},
      {"deadlock.csv", "0F0,0B0,0F1,0B1\n1F1,1F0,1B0,1B1\n"},
      {"bad.json", "{\"traceEvents\":[{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":0}]}"},
  };
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i].file);
    spit(path, files[i].text);
  }
  expect_bad("--schedule pipedream --stages 2 --microbatches 4", "unknown schedule");
  expect_bad("--schedule 1f1b --stages 0 --microbatches 4", "--stages");
  expect_bad("--schedule 1f1b --stages 2 --microbatches -1", "--microbatches");
  expect_bad("--schedule 1f1b --stages 4 --microbatches 2", "m >= p");
  expect_bad("--schedule gpipe --stages 4x --microbatches 8", "--stages");
  expect_bad("--schedule interleaved --stages 2 --chunks 1 --microbatches 4", "--chunks 2");
  expect_bad("--schedule 1f1b --stages 2 --chunks 2 --microbatches 4", "chunks must be 1");
  expect_bad("--schedule 1f1b --stages 2 --microbatches 4 --costs 1,2", "--costs");
  expect_bad("--schedule 1f1b --stages 2 --microbatches 4 --colour", "unknown option");
  expect_bad("--schedule 1f1b --stages 2 --microbatches 4 --stage-cost 2:1,1,1,1", "stage 2");
  expect_bad("--schedule 1f1b --stages 2 --microbatches 4 --stage-cost 1:1,1", "K:F,B,I,W");
  expect_bad("--schedule 1f1b --stages 2", "--microbatches");
  expect_bad("--json", "give --schedule");
  expect_bad("--csv-in malformed.csv", "line 1 column 2");
  expect_bad("--csv-in uneven.csv", "multiple of the worker count");
  expect_bad("--csv-in nobackward.csv", "worker 1 position 2: 1F1 has no backward");
  expect_bad("--csv-in deadlock.csv", "deadlocks");
  expect_bad("--csv-in nobackward.csv --stages 3", "--stages 3");
  expect_bad("--csv-in missing.csv", "missing.csv");
  expect_bad("--from-trace bad.json", "lacks \"dur\"");
  expect_bad("--from-trace bad.json --stages 2", "--from-trace takes only");
}

Test(schedule_cli, from_trace_draws_and_measures_a_real_run) {
  /* Two workers, one micro-batch, with a gap for the transfer: busy 30 µs
   * each over a 64 µs span, so the bubble is 68/128. */
  char path[300];
  snprintf(path, sizeof path, "%s/run.json", dir);
  spit(path,
       "{\"traceEvents\":[\n"
       "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"args\":{\"name\":\"baton\"}},\n"
       "{\"name\":\"0F0\",\"ph\":\"X\",\"ts\":5000,\"dur\":10,\"pid\":0,\"tid\":0},\n"
       "{\"name\":\"1F0\",\"ph\":\"X\",\"ts\":5012,\"dur\":10,\"pid\":0,\"tid\":1},\n"
       "{\"name\":\"1B0\",\"ph\":\"X\",\"ts\":5022,\"dur\":20,\"pid\":0,\"tid\":1},\n"
       "{\"name\":\"0B0\",\"ph\":\"X\",\"ts\":5044,\"dur\":20,\"pid\":0,\"tid\":0}]}\n");
  cr_assert_eq(run("--from-trace run.json --svg run.svg --json"), 0);
  expect_python(
      "import json, xml.etree.ElementTree as ET\n"
      "d = json.load(open('out'))\n"
      "assert d['schedule'] == 'trace' and d['stages'] == 2, d\n"
      "assert d['makespan'] == 64 and d['busy'] == [30, 30], d\n"
      "assert d['bubble_fraction'] == 68 / 128, d['bubble_fraction']\n"
      "ns = '{http://www.w3.org/2000/svg}'\n"
      "root = ET.parse('run.svg').getroot()\n"
      "acts = [r for r in root.iter(ns + 'rect') "
      "if r.get('class', '').startswith('act ')]\n"
      "assert sorted(r.get('data-action') for r in acts) == "
      "['0B0', '0F0', '1B0', '1F0']\n");
  cr_assert_eq(run("--from-trace run.json"), 0);
  char *out = file_in_dir("out");
  cr_assert(strstr(out, "bubble fraction 0.53125"), "%s", out);
  free(out);
}

Test(schedule_cli, unwritable_output_gives_exit_1) {
  cr_assert_eq(run("--schedule 1f1b --stages 2 --microbatches 2 --svg no/such/dir/x.svg"), 1);
  char *err = file_in_dir("err");
  cr_assert(
      strstr(err, "cannot write no/such/dir/x.svg") && strchr(err, '\n') == strrchr(err, '\n'),
      "%s", err);
  free(err);
  cr_assert_eq(run("--schedule 1f1b --stages 2 --microbatches 2 --csv-out no/such/dir/x.csv"), 1);
}

Test(schedule_cli, v_schedules_default_to_two_chunks_and_match_their_closed_form) {
  const struct {
    const char *name;
    int p, m;
  } cases[] = {{"zb-v", 4, 3}, {"zb-v", 4, 9}, {"dualpipev", 3, 7}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char args[256], code[1200];
    snprintf(args, sizeof args, "--schedule %s --stages %d --microbatches %d --json", cases[i].name, cases[i].p,
             cases[i].m);
    cr_assert_eq(run(args), 0, "%s", args);
    snprintf(code, sizeof code,
             "import json\n"
             "d = json.load(open('out'))\n"
             "p, m = %d, %d\n"
             "idle = max(p - 1, 2 * (2 * p - 1 - m)) if '%s' == 'zb-v' else p - 1\n"
             "assert d['chunks'] == 2, d\n"
             "assert d['idle'] == [idle] * p, (d['idle'], idle)\n"
             "assert d['closed_form_bubble_fraction'] == idle / (6 * m + idle), d\n"
             "assert d['microbatch_order'] is True and d['channel_order'] is True\n",
             cases[i].p, cases[i].m, cases[i].name);
    expect_python(code);
  }
  cr_assert_eq(run("--schedule zb-v --stages 2 --microbatches 3"), 0);
  char *out = file_in_dir("out");
  cr_assert(strstr(out, "V placement: worker s runs virtual stages s (upper case"), "%s", out);
  cr_assert(strstr(out, "w0  | 0F0 0F1 0F2 3f0 3i0 3w0"), "%s", out);
  free(out);
}

Test(schedule_cli, csv_notations_comms_and_unsupported_actions) {
  /* earlier notation out, back in, current notation out: the same file as
   * writing the current notation directly */
  cr_assert_eq(run("--schedule zb-v --stages 3 --microbatches 5 --csv-out e.csv --csv-notation earlier"), 0);
  cr_assert_eq(run("--csv-in e.csv --csv-out c.csv"), 0);
  cr_assert_eq(run("--schedule zb-v --stages 3 --microbatches 5 --csv-out d.csv"), 0);
  expect_python(
      "e, c, d = (open(f).read() for f in ('e.csv', 'c.csv', 'd.csv'))\n"
      "assert c == d, (c, d)\n"
      "assert 'I' not in e and 'B' in e and 'I' in c\n");
  /* a comms file written, read back and checked */
  cr_assert_eq(run("--schedule dualpipev --stages 2 --microbatches 4 --csv-out m.csv --comms"), 0);
  cr_assert_eq(run("--csv-in m.csv --json"), 0);
  expect_python(
      "m = open('m.csv').read()\n"
      "assert 'RECV_F' in m and 'SEND_B' in m and 'OVERLAP_F_B' in m, m\n");
  /* FSDP actions: refused, or dropped with one warning line */
  char path[300];
  snprintf(path, sizeof path, "%s/fsdp.csv", dir);
  spit(path, "0UNSHARD,0F0,0B0,0RESHARD\n");
  expect_bad("--csv-in fsdp.csv", "0UNSHARD is an FSDP action");
  cr_assert_eq(run("--csv-in fsdp.csv --skip-unsupported"), 0);
  char *err = file_in_dir("err");
  cr_assert(strstr(err, "warning: fsdp.csv: dropped 2 UNSHARD/RESHARD/REDUCE_GRAD cells (first at line 1 column 1: "
                        "0UNSHARD)\n"),
            "%s", err);
  free(err);
  expect_bad("--schedule 1f1b --stages 2 --microbatches 2 --comms", "--comms and --csv-notation go with --csv-out");
  expect_bad("--schedule 1f1b --stages 2 --microbatches 2 --csv-out x.csv --csv-notation old", "current or earlier");
  expect_bad("--schedule 1f1b --stages 2 --microbatches 2 --skip-unsupported", "goes with --csv-in");
  expect_bad("--schedule zb-v --stages 2 --chunks 3 --microbatches 2", "use --chunks 2");
  expect_bad("--schedule dualpipev --stages 2 --microbatches 3", "m >= 2p");
}
