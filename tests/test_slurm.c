/* test_slurm.c - host list expansion (as `scontrol show hostnames`) and the
 * job read from recorded Slurm environments. The environments are written
 * out here as the "NAME=value" arrays srun would give each task. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/slurm.h"

/* Expands `list` and compares with the space-separated `want`. */
static void check_expand(const char *list, const char *want) {
  bt_hostlist_t h;
  char why[256] = "";
  int rc = bt_hostlist_expand(list, &h, why, sizeof why);
  cr_assert_eq(rc, 0, "%s: %s", list, why);
  char got[4096] = "";
  for (size_t i = 0; i < h.n; i++) {
    if (i) strcat(got, " ");
    strcat(got, h.names[i]);
  }
  cr_assert_str_eq(got, want, "expanding %s", list);
  bt_hostlist_free(&h);
  cr_assert_null(h.names);
}

Test(hostlist, plain_ranges_and_prefixes) {
  check_expand("login5", "login5");
  check_expand("n[1-3]", "n1 n2 n3");
  check_expand("n[5]", "n5");
  check_expand("a1,b[08-10]", "a1 b08 b09 b10");
  check_expand("node[01-03,07],gpu-a[1-2],login5", "node01 node02 node03 node07 gpu-a1 gpu-a2 login5");
  check_expand("rack1-n[001-002],rack2-n[010]", "rack1-n001 rack1-n002 rack2-n010");
  check_expand("a[1-2],b7,c[10-11]", "a1 a2 b7 c10 c11");
  check_expand("n[3,1,2]", "n3 n1 n2"); /* the order written */
  check_expand("h.example.org,h_2", "h.example.org h_2");
}

Test(hostlist, width_comes_from_the_first_number) {
  check_expand("gpu[008-011]", "gpu008 gpu009 gpu010 gpu011");
  check_expand("n[8-11]", "n8 n9 n10 n11");
  check_expand("n[098-101]", "n098 n099 n100 n101");
  check_expand("n[0]", "n0");
  check_expand("n[00-01,7]", "n00 n01 n7");
}

Test(hostlist, text_after_the_bracket) {
  check_expand("c-[1-2]x", "c-1x c-2x");
  check_expand("[1-2]", "1 2");
  check_expand("[07-08].ib,z", "07.ib 08.ib z");
}

Test(hostlist, many_hosts_up_to_the_cap) {
  bt_hostlist_t h;
  char why[256] = "";
  cr_assert_eq(bt_hostlist_expand("n[00001-65536]", &h, why, sizeof why), 0, "%s", why);
  cr_assert_eq(h.n, 65536);
  cr_assert_str_eq(h.names[0], "n00001");
  cr_assert_str_eq(h.names[65535], "n65536");
  bt_hostlist_free(&h);
  cr_assert_lt(bt_hostlist_expand("n[1-65536],m", &h, why, sizeof why), 0);
  cr_assert_not_null(strstr(why, "65536"), "%s", why);
  cr_assert_null(h.names);
}

/* Each refused list must give BT_EARG, a one-line why containing `hint`,
 * and leave nothing allocated. */
static void check_refused(const char *list, const char *hint) {
  bt_hostlist_t h;
  char why[256] = "";
  int rc = bt_hostlist_expand(list, &h, why, sizeof why);
  cr_assert_eq(rc, BT_EARG, "%s accepted (rc %d)", list ? list : "(null)", rc);
  cr_assert_null(h.names);
  cr_assert_eq(h.n, 0);
  cr_assert_not_null(strstr(why, hint), "%s: why \"%s\" lacks \"%s\"", list ? list : "(null)", why, hint);
  cr_assert_null(strchr(why, '\n'), "not one line: %s", why);
}

Test(hostlist, bad_lists_are_refused) {
  check_refused("", "empty");
  check_refused(NULL, "empty");
  check_refused("a,,b", "empty host name");
  check_refused("a,", "empty host name");
  check_refused(",a", "empty host name");
  check_refused("n[1-3", "'[' without ']'");
  check_refused("n1-3]", "']' without '['");
  check_refused("n[1-[2]]", "nested");
  check_refused("n[]", "empty brackets");
  check_refused("n[3-1]", "reversed range 3-1");
  check_refused("n[1-]", "after '-'");
  check_refused("n[-1]", "expected a number");
  check_refused("n[a-b]", "expected a number");
  check_refused("n[1,]", "empty range");
  check_refused("n[1,,2]", "expected a number");
  check_refused("n[1-2-3]", "unexpected character '-'");
  check_refused("n[1-9999999999]", "longer than 9 digits");
  check_refused("n[0-999999999]", "more than 65536 hosts");
  check_refused("r[1-2]n[1-2]", "more than one bracket group");
  check_refused("a b", "unexpected character ' '");
  check_refused("a\tb", "unexpected byte 0x09");
  check_refused("a/b", "unexpected character '/'");
  char longname[300];
  memset(longname, 'x', 256);
  longname[256] = 0;
  check_refused(longname, "longer than 255");
  memset(longname, 'x', 254);
  strcpy(longname + 254, "[8-10]"); /* x..x8 and x..x9 fit (255), x..x10 does not */
  check_refused(longname, "longer than 255");
}

/* ---- recorded environments ---- */

static int parse(const char *const *env, bt_slurm_t *s, char *why, size_t whylen) {
  return bt_slurm_parse_envp(env, s, why, whylen);
}

Test(slurm, no_job_is_not_present_and_not_an_error) {
  const char *env[] = {"HOME=/root", "PATH=/usr/bin", "SLURM_NODEID=0", NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.present, 0);
  cr_assert_null(s.rdzv_host);
  bt_slurm_free(&s);
}

/* `srun -N1 baton run ...`, as salloc -N1 sets it up. */
Test(slurm, one_node_job) {
  const char *env[] = {
      "SLURM_JOB_ID=4242",         "SLURM_JOBID=4242",         "SLURM_NNODES=1",
      "SLURM_JOB_NUM_NODES=1",     "SLURM_NODEID=0",           "SLURM_JOB_NODELIST=cn17",
      "SLURM_NODELIST=cn17",       "SLURM_STEP_NODELIST=cn17", "SLURM_STEP_NUM_NODES=1",
      "SLURM_STEP_NUM_TASKS=1",    "SLURM_PROCID=0",           "SLURM_LOCALID=0",
      "SLURMD_NODENAME=cn17",      NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.present, 1);
  cr_assert_str_eq(s.job_id, "4242");
  cr_assert_eq(s.nnodes, 1);
  cr_assert_eq(s.node_rank, 0);
  cr_assert_eq(s.hosts.n, 1);
  cr_assert_str_eq(s.rdzv_host, "cn17");
  bt_slurm_free(&s);
  cr_assert_eq(s.present, 0);
  cr_assert_null(s.hosts.names);
}

/* The task on the third node of `srun -N4 --ntasks-per-node=1`. */
Test(slurm, four_node_job_third_node) {
  const char *env[] = {"SLURM_JOB_ID=981",       "SLURM_NNODES=4",          "SLURM_JOB_NUM_NODES=4",
                       "SLURM_NODEID=2",         "SLURM_PROCID=2",          "SLURM_JOB_NODELIST=node[01-04]",
                       "SLURM_NODELIST=node[01-04]", "SLURM_STEP_NODELIST=node[01-04]",
                       "SLURM_STEP_NUM_NODES=4", "SLURM_STEP_NUM_TASKS=4", NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.nnodes, 4);
  cr_assert_eq(s.node_rank, 2);
  cr_assert_str_eq(s.hosts.names[2], "node03");
  cr_assert_str_eq(s.rdzv_host, "node01");
  bt_slurm_free(&s);
}

/* Only the job's variables (no step ones, as in an older Slurm). */
Test(slurm, several_prefixes_from_job_variables) {
  const char *env[] = {"SLURM_JOB_ID=7", "SLURM_JOB_NUM_NODES=5", "SLURM_NODEID=4",
                       "SLURM_JOB_NODELIST=a[1-2],b7,c[10-11]", NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.nnodes, 5);
  cr_assert_eq(s.node_rank, 4);
  cr_assert_str_eq(s.rdzv_host, "a1");
  cr_assert_str_eq(s.hosts.names[2], "b7");
  cr_assert_str_eq(s.hosts.names[4], "c11");
  bt_slurm_free(&s);
}

Test(slurm, zero_padded_and_suffix_lists_with_the_nodelist_fallback) {
  const char *env[] = {"SLURM_JOB_ID=12", "SLURM_NNODES=4", "SLURM_NODEID=1", "SLURM_NODELIST=gpu[008-011]", NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_str_eq(s.rdzv_host, "gpu008");
  cr_assert_str_eq(s.hosts.names[3], "gpu011");
  bt_slurm_free(&s);
  const char *env2[] = {"SLURM_JOB_ID=13", "SLURM_NNODES=2", "SLURM_NODEID=1", "SLURM_JOB_NODELIST=c-[1-2]x", NULL};
  cr_assert_eq(parse(env2, &s, why, sizeof why), 0, "%s", why);
  cr_assert_str_eq(s.rdzv_host, "c-1x");
  cr_assert_str_eq(s.hosts.names[1], "c-2x");
  bt_slurm_free(&s);
}

/* `srun -N2` inside a 4-node allocation: the step is the job baton sees. */
Test(slurm, step_variables_win_over_the_allocation) {
  const char *env[] = {"SLURM_JOB_ID=55",          "SLURM_JOB_NUM_NODES=4",       "SLURM_JOB_NODELIST=n[1-4]",
                       "SLURM_NNODES=2",           "SLURM_NODELIST=n[3-4]",       "SLURM_STEP_NUM_NODES=2",
                       "SLURM_STEP_NODELIST=n[3-4]", "SLURM_STEP_NUM_TASKS=2",   "SLURM_NODEID=1",
                       NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.nnodes, 2);
  cr_assert_eq(s.hosts.n, 2);
  cr_assert_str_eq(s.rdzv_host, "n3");
  bt_slurm_free(&s);
}

/* A refused environment: BT_EARG, a one-line why naming `hint`, s cleared. */
static void check_env_refused(const char *const *env, const char *hint) {
  bt_slurm_t s;
  char why[256] = "";
  int rc = parse(env, &s, why, sizeof why);
  cr_assert_eq(rc, BT_EARG, "accepted (rc %d); wanted a refusal about %s", rc, hint);
  cr_assert_not_null(strstr(why, hint), "why \"%s\" lacks \"%s\"", why, hint);
  cr_assert_null(strchr(why, '\n'), "not one line: %s", why);
  cr_assert_eq(s.present, 0);
  cr_assert_null(s.hosts.names);
  cr_assert_null(s.rdzv_host);
}

Test(slurm, mismatched_count_is_refused) {
  const char *env[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=3", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=node[01-04]", NULL};
  check_env_refused(env, "SLURM_JOB_NODELIST names 4 hosts but SLURM_NNODES=3");
}

Test(slurm, bad_node_lists_are_refused) {
  const char *unbalanced[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n[1-2", NULL};
  check_env_refused(unbalanced, "SLURM_JOB_NODELIST: host list \"n[1-2\": '[' without ']'");
  const char *reversed[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n[2-1]", NULL};
  check_env_refused(reversed, "reversed range");
  const char *empty[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=", NULL};
  check_env_refused(empty, "empty");
}

Test(slurm, missing_variables_are_refused) {
  const char *no_rank[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_JOB_NODELIST=n[1-2]", NULL};
  check_env_refused(no_rank, "SLURM_NODEID");
  const char *no_count[] = {"SLURM_JOB_ID=8", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n[1-2]", NULL};
  check_env_refused(no_count, "SLURM_NNODES");
  const char *no_list[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_NODEID=0", NULL};
  check_env_refused(no_list, "SLURM_JOB_NODELIST");
}

Test(slurm, numbers_must_parse_and_rank_must_be_below_count) {
  const char *rank_eq[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_NODEID=2", "SLURM_JOB_NODELIST=n[1-2]", NULL};
  check_env_refused(rank_eq, "SLURM_NODEID=2 is not below SLURM_NNODES=2");
  const char *rank_neg[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2", "SLURM_NODEID=-1", "SLURM_JOB_NODELIST=n[1-2]", NULL};
  check_env_refused(rank_neg, "SLURM_NODEID");
  const char *count_x[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=2x", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n[1-2]", NULL};
  check_env_refused(count_x, "SLURM_NNODES=\"2x\"");
  const char *count_0[] = {"SLURM_JOB_ID=8", "SLURM_NNODES=0", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n1", NULL};
  check_env_refused(count_0, "SLURM_NNODES");
  const char *job_x[] = {"SLURM_JOB_ID=12ab", "SLURM_NNODES=1", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n1", NULL};
  check_env_refused(job_x, "SLURM_JOB_ID");
  const char *job_empty[] = {"SLURM_JOB_ID=", "SLURM_NNODES=1", "SLURM_NODEID=0", "SLURM_JOB_NODELIST=n1", NULL};
  check_env_refused(job_empty, "SLURM_JOB_ID");
}

Test(slurm, several_tasks_per_node_are_refused) {
  const char *env[] = {"SLURM_JOB_ID=8",         "SLURM_NNODES=2",          "SLURM_NODEID=0",
                       "SLURM_JOB_NODELIST=n[1-2]", "SLURM_STEP_NUM_NODES=2", "SLURM_STEP_NUM_TASKS=16",
                       NULL};
  check_env_refused(env, "--ntasks-per-node=1");
}

Test(slurm, first_entry_wins_and_prefix_names_do_not_match) {
  const char *env[] = {"SLURM_JOB_ID_X=1",     "SLURM_JOB_ID=31",         "SLURM_JOB_ID=32",
                       "SLURM_NNODES=1",       "SLURM_NODEID=0",          "SLURM_JOB_NODELIST=solo",
                       NULL};
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(parse(env, &s, why, sizeof why), 0, "%s", why);
  cr_assert_str_eq(s.job_id, "31");
  bt_slurm_free(&s);
}

Test(slurm, from_the_process_environment) {
  setenv("SLURM_JOB_ID", "77", 1);
  setenv("SLURM_NNODES", "3", 1);
  setenv("SLURM_NODEID", "2", 1);
  setenv("SLURM_JOB_NODELIST", "x[7-9]", 1);
  unsetenv("SLURM_STEP_NODELIST");
  unsetenv("SLURM_STEP_NUM_NODES");
  unsetenv("SLURM_STEP_NUM_TASKS");
  bt_slurm_t s;
  char why[256] = "";
  cr_assert_eq(bt_slurm_from_environ(&s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.present, 1);
  cr_assert_str_eq(s.rdzv_host, "x7");
  cr_assert_eq(s.node_rank, 2);
  bt_slurm_free(&s);
  unsetenv("SLURM_JOB_ID");
  cr_assert_eq(bt_slurm_from_environ(&s, why, sizeof why), 0, "%s", why);
  cr_assert_eq(s.present, 0);
  bt_slurm_free(&s);
}
