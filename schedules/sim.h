/* sim.h - the schedule simulator: time, bubbles and memory of a schedule.
 *
 * It runs each worker's action list under the worker's own communication
 * rule (DESIGN.md §4): a worker runs its actions in order; an action starts
 * when the worker is free and every input it needs has arrived (the end of
 * the producing action, plus the transfer time when the hop crosses
 * workers); sends never block the sender. A schedule whose simulation
 * finishes therefore cannot deadlock on the socket transport, and one that
 * does not is reported with the stuck workers and what each waits for.
 *
 * Costs are per action, i.e. per chunk: an interleaved schedule with v
 * chunks whose stage forward takes T has chunk forwards of T/v. With
 * F = I = W = 1, B = 2 and no transfer time the closed forms of DESIGN §3
 * come out exactly (integer arithmetic in doubles).
 *
 * The walk is linear in the number of actions: every completed action wakes
 * at most one other worker, and a worker checks only its next action. It
 * does not model memory bandwidth, overlap of compute and communication, or
 * link contention.
 */
#ifndef BT_SCHEDULES_SIM_H
#define BT_SCHEDULES_SIM_H
#include <stddef.h>
#include <stdint.h>

#include "schedules/schedule.h"

typedef struct {
  double cost[BT_ACT_NTYPES]; /* per action type: F, B, I, W */
  const double *stage_cost;   /* NULL, or V·4 entries (virtual stage, type), overriding cost[] */
  double transfer;            /* time of one message between two workers */
} bt_sim_costs_t;

/* F = I = W = 1, B = 2, transfer 0. */
void bt_sim_costs_default(bt_sim_costs_t *c);

/* One timed action on one worker: what the renderer draws, whether it comes
 * from the simulator or from a real run's trace. */
typedef struct {
  int worker;
  bt_action_t act;
  double start, end;
} bt_box_t;

typedef struct {
  int p;
  size_t n;               /* actions */
  double makespan;        /* end of the last action (the first starts at 0) */
  double bubble_fraction; /* sum of idle / (p · makespan) */
  double *busy;           /* p: time spent computing */
  double *idle;           /* p: makespan - busy */
  int *peak;              /* p: peak live activations (stashed (stage, mb) pairs) */
  double *start, *end;    /* n, indexed like the schedule's acts; NULL from bt_sim_measure */
} bt_sim_result_t;

/* Simulates s (validated or not: missing or duplicated actions give
 * BT_ESCHEDULE, a cycle BT_EDEADLOCK, each with a one-line message).
 * *r is owned by the caller (bt_sim_result_free) on success. */
int bt_sim_run(const bt_schedule_t *s, const bt_sim_costs_t *c, bt_sim_result_t *r, char *err,
               size_t errlen);
void bt_sim_result_free(bt_sim_result_t *r);

/* The walk itself, given bt_sched_index()'s lookup; r may be NULL to only
 * check that the schedule completes. Used by bt_sched_validate. */
int bt_sim_walk(const bt_schedule_t *s, const uint32_t *idx, const bt_sim_costs_t *c,
                bt_sim_result_t *r, char *err, size_t errlen);

/* The simulated actions as boxes, worker by worker; *out is malloc'd. */
int bt_sim_boxes(const bt_schedule_t *s, const bt_sim_result_t *r, bt_box_t **out, size_t *n);

/* Makespan, busy, idle, bubble and peak activations of measured boxes (a
 * real run): p workers, time measured from the earliest start. Boxes of a
 * worker are taken in start order; an activation is live from its F to its
 * B, or to its W when the backward is split. start/end stay NULL. */
int bt_sim_measure(const bt_box_t *boxes, size_t n, int p, bt_sim_result_t *r);

#endif
