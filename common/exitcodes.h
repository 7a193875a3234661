/* exitcodes.h - the exit codes of `baton worker` and `baton run`: one
 * contract, written once (DESIGN.md §5, §7; docs/fault-tolerance.md).
 *
 * The supervisor decides what to do from a worker's exit code (restart, give
 * up, stop), and schedulers and scripts decide from the supervisor's (resubmit
 * a preempted job, page someone for a breaker). Both sides include this file,
 * so the numbers cannot drift apart. The two lists are distinct namespaces:
 * a worker's 3 ("retryable") is not the supervisor's 3.
 *
 * The numbers never change once released; new codes are appended.
 */
#ifndef BT_COMMON_EXITCODES_H
#define BT_COMMON_EXITCODES_H

/* `baton worker` (and the fake workers the tests spawn). */
enum {
  BT_WEXIT_DONE = 0,      /* trained through the last step */
  BT_WEXIT_ERROR = 1,     /* internal error (out of memory, a bug): retryable */
  BT_WEXIT_USAGE = 2,     /* bad command line: restarting will not help */
  BT_WEXIT_RETRY = 3,     /* retryable: peer lost, deadline passed, transport error */
  BT_WEXIT_FATAL = 4,     /* fatal: bad configuration, no usable checkpoint */
  BT_WEXIT_STOPPED = 5,   /* stopped early on the supervisor's STOP or ABORT */
  BT_WEXIT_ORPHAN = 6,    /* the supervisor was gone (start-up check, control EOF) */
  BT_WEXIT_NONFINITE = 7, /* a non-finite loss or non-finite parameters */
};

/* `baton run`. A job stopped at once by a second signal exits 128 + the
 * signal number (130 SIGINT, 143 SIGTERM), like a shell. */
enum {
  BT_EXIT_OK = 0,          /* every stage trained through the last step (or it already had) */
  BT_EXIT_FAILED = 1,      /* a worker failed and no restart was allowed (fatal code,
                              --max-restarts 0, start-up failure), or the supervisor failed */
  BT_EXIT_USAGE = 2,       /* bad usage or configuration: nothing was started */
  BT_EXIT_PREEMPTED = 75,  /* stopped on SIGTERM/SIGUSR1/SIGINT after committing a
                              checkpoint (or with none to write): run again to resume
                              (75 is EX_TEMPFAIL of sysexits.h: "try again later") */
  BT_EXIT_RESTARTS = 76,   /* --max-restarts spent */
  BT_EXIT_NO_PROGRESS = 77,/* the breaker: restarts in a row made no progress past
                              the last committed step */
  BT_EXIT_NONFINITE = 78,  /* a stage reported non-finite loss or parameters: restarting
                              from the same checkpoint would replay the same bits */
  BT_EXIT_TOO_FEW = 79,    /* retired slots left fewer stages than --min-stages */
  BT_EXIT_UNCOMMITTED = 80,/* finished, but the final checkpoint was not committed (a full
                              disk, a failed save): the trained state of the last step is
                              lost; the closing line names the newest committed step */
  BT_EXIT_COORD_LOST = 81, /* multi-node, on a node agent: the coordinator's node was lost
                              (connection or heartbeats gone); the agent stopped its
                              workers. Rerun the same command on every node to resume */
  BT_EXIT_RENDEZVOUS = 82, /* multi-node: the nodes did not all join within the join
                              deadline (the missing ones are named), or this node could
                              not reach or authenticate with the coordinator */
};

#endif
