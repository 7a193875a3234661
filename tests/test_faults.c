/* test_faults.c - the fault-injection spec parser (common/fault.h). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/fault.h"

Test(fault_spec, parses_every_kind_with_its_fields) {
  static const char *names[] = {"crash", "exit", "freeze", "hang", "slow", "ckpt-die"};
  for (int k = 0; k < BT_FAULT_NKINDS_; k++) {
    char spec[64];
    snprintf(spec, sizeof spec, "%s@stage=%d,step=%d,action=%d", names[k], k, 10 + k, 2 * k);
    bt_fault_t f;
    char why[256] = "";
    cr_assert_eq(bt_fault_parse(spec, &f, why, sizeof why), 0, "%s: %s", spec, why);
    cr_assert_eq((int)f.kind, k, "%s: kind %d", spec, (int)f.kind);
    cr_assert_eq(f.stage, k);
    cr_assert_eq(f.step, 10 + k);
    cr_assert_eq(f.action, 2 * k);
    cr_assert_str_eq(bt_fault_kind_name(f.kind), names[k]);
  }
}

Test(fault_spec, defaults_and_kind_specific_fields) {
  bt_fault_t f;
  cr_assert_eq(bt_fault_parse("exit@step=3,stage=1,code=42", &f, NULL, 0), 0);
  cr_assert_eq(f.code, 42, "code %d", f.code);
  cr_assert_eq(f.action, 0);
  cr_assert_eq(bt_fault_parse("slow@stage=0,step=1,ms=250", &f, NULL, 0), 0);
  cr_assert_eq(f.ms, 250, "ms %d", f.ms);
  cr_assert_eq(bt_fault_parse("exit@stage=0,step=1", &f, NULL, 0), 0);
  cr_assert_eq(f.code, 1, "default code %d", f.code);
}

Test(fault_spec, rejects_bad_specs_naming_the_problem) {
  struct { const char *spec, *needle; } bad[] = {
    {"explode@stage=0,step=1", "unknown kind 'explode'"},
    {"crash@stage=0,step=1,when=3", "unknown field 'when'"},
    {"crash@step=1", "stage= is required"},
    {"crash@stage=0", "step= is required"},
    {"crash@stage=-1,step=1", "bad value '-1' for stage"},
    {"crash@stage=0,step=0", "bad value '0' for step"},
    {"crash@stage=0,step=1x", "bad value '1x' for step"},
    {"crash@stage=0,step=1,code=3", "code= applies to exit only"},
    {"exit@stage=0,step=1,code=0", "bad value '0' for code"},
    {"crash@stage=0,step=1,ms=3", "ms= applies to slow only"},
    {"crash@stage", "needs a value"},
    {"crash", "expected KIND@"},
    {"", "empty"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bt_fault_t f;
    char why[256] = "";
    cr_assert_eq(bt_fault_parse(bad[i].spec, &f, why, sizeof why), BT_EARG, "'%s' accepted",
                 bad[i].spec);
    cr_assert(strstr(why, bad[i].needle), "'%s': got '%s', want '%s'", bad[i].spec, why,
              bad[i].needle);
    cr_assert_null(strchr(why, '\n'), "multi-line reason '%s'", why);
  }
}

Test(fault_spec, format_round_trips) {
  const char *specs[] = {"crash@stage=2,step=7,action=5", "exit@stage=0,step=1,code=9",
                         "slow@stage=1,step=4,ms=30", "ckpt-die@stage=1,step=10"};
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
    bt_fault_t a, b;
    cr_assert_eq(bt_fault_parse(specs[i], &a, NULL, 0), 0);
    char buf[BT_FAULT_SPEC_MAX];
    int w = bt_fault_format(&a, buf, sizeof buf);
    cr_assert(w > 0 && (size_t)w < sizeof buf, "width %d", w);
    cr_assert_eq(bt_fault_parse(buf, &b, NULL, 0), 0, "'%s' does not parse back", buf);
    /* field by field: the struct has tail padding */
    cr_assert(a.kind == b.kind && a.stage == b.stage && a.step == b.step &&
                  a.action == b.action && a.code == b.code && a.ms == b.ms,
              "'%s' -> '%s' differs", specs[i], buf);
  }
}

Test(fault_spec, list_splits_on_semicolons) {
  bt_fault_t f[BT_FAULT_MAX];
  size_t n = 99;
  cr_assert_eq(bt_fault_parse_list("crash@stage=0,step=2;;hang@stage=1,step=3;", f,
                                   BT_FAULT_MAX, &n, NULL, 0), 0);
  cr_assert_eq(n, 2, "n %zu", n);
  cr_assert_eq(f[0].kind, BT_FAULT_CRASH);
  cr_assert_eq(f[1].kind, BT_FAULT_HANG);
  cr_assert_eq(f[1].stage, 1);
  cr_assert_eq(bt_fault_parse_list("", f, BT_FAULT_MAX, &n, NULL, 0), 0);
  cr_assert_eq(n, 0);
  char why[256] = "";
  cr_assert_eq(bt_fault_parse_list("crash@stage=0,step=1;crash@stage=0,step=2", f, 1, &n,
                                   why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "more than 1"), "why '%s'", why);
  cr_assert_eq(bt_fault_parse_list("crash@stage=0,step=1;bogus@stage=0,step=1", f,
                                   BT_FAULT_MAX, &n, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "bogus"), "why '%s'", why);
}

Test(fault_spec, check_against_the_job_shape) {
  bt_fault_t f;
  char why[256] = "";
  cr_assert_eq(bt_fault_parse("crash@stage=3,step=5", &f, NULL, 0), 0);
  cr_assert_eq(bt_fault_check(&f, 4, 5, why, sizeof why), 0, "%s", why);
  cr_assert_eq(bt_fault_check(&f, 3, 5, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "3 stages"), "why '%s'", why);
  cr_assert_eq(bt_fault_check(&f, 4, 4, why, sizeof why), BT_EARG);
  cr_assert(strstr(why, "last step 4"), "why '%s'", why);
}
