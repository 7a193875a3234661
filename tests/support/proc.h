/* proc.h - process handling for end-to-end tests (supervisor and workers).
 *
 * The supervisor starts every worker in its own session, so Criterion's
 * cleanup (which kills only the test process) would leave them running
 * when a test fails half-way. These helpers start the process under test in
 * its own process group, make the test process a child subreaper (workers
 * orphaned by a killed supervisor are reparented to the test, where they
 * can be found and reaped), record every process group a test learns of,
 * and kill them all in teardown. A process counts as gone when it no longer
 * runs: absent, or a zombie waiting for its reaper (DESIGN.md §10).
 *
 * Used by every end-to-end suite, mostly through e2e.h (bt_e2e_run); not a
 * general process library.
 */
#ifndef BT_TESTS_SUPPORT_PROC_H
#define BT_TESTS_SUPPORT_PROC_H
#include <sys/types.h>

#define BT_PROC_MAX_TRACKED 256

/* Makes this process a child subreaper; call at the start of a test. */
void bt_proc_init(void);
/* Starts argv[0] (PATH search) in a new process group with stdin from
 * /dev/null and stdout/stderr appended to the given files (NULL: inherit),
 * optional extra "K=V" environment entries (NULL-terminated, may be NULL).
 * Tracks the group. Returns the pid or -errno. */
pid_t bt_proc_spawn(char *const argv[], char *const extra_env[], const char *out_path, const char *err_path);
/* Records a process group to SIGKILL in bt_proc_cleanup(). */
void bt_proc_track(pid_t pgid);
/* Waits for child `pid` to exit for at most timeout_ms. Returns 0 with its
 * wait status in *status, or -ETIMEDOUT. */
int bt_proc_wait(pid_t pid, int timeout_ms, int *status);
/* 1 when `pid` no longer runs (no such process, or a zombie). */
int bt_proc_gone(pid_t pid);
/* Polls bt_proc_gone until it holds or timeout_ms passes; 1 or 0. Reaps
 * zombie children of ours on the way. */
int bt_proc_wait_gone(pid_t pid, int timeout_ms);
/* Processes that are still running and whose parent is this process
 * (through the subreaper, every orphaned descendant); writes up to max pids.
 * Returns the count. */
int bt_proc_running_children(pid_t *out, int max);
/* Reads the worker pids the supervisor logs ("started stage S (pid P)")
 * from a file into pids[stage]; returns how many were found and tracks
 * each as a process group. */
int bt_proc_worker_pids(const char *log_path, pid_t *pids, int max);
/* The whole file as a NUL-terminated string (caller frees), or NULL. */
char *bt_proc_slurp(const char *path);
/* Waits until `path` contains `needle`, at most timeout_ms; 1 or 0. */
int bt_proc_wait_for_text(const char *path, const char *needle, int timeout_ms);
/* SIGKILLs every tracked group and reaps every child; call in teardown. */
void bt_proc_cleanup(void);

#endif
