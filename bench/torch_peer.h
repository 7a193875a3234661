/* torch_peer.h - the PyTorch side of the benchmarks that compare with it
 * (bench_train on the CPU, bench_gpu on CUDA): where torch_model.py is, and
 * one run of it read back as tokens/s. It installs nothing. */
#ifndef BT_BENCH_TORCH_PEER_H
#define BT_BENCH_TORCH_PEER_H

#include <stddef.h>

/* torch_model.py: $BATON_TORCH_MODEL, else next to the running binary (a
 * packed tree), else next to this source (a build tree). */
void bt_torch_script(char *out, size_t cap);

/* Runs `ENV 'python' 'torch_model.py' ARGS` (env may be "") and returns the
 * tokens/s of its last JSON line; 0 with the reason in why when torch is
 * missing, the script says it skipped, or it failed. With echo, each line
 * it prints is shown behind "  torch: ". */
double bt_torch_run(const char *python, const char *env, const char *args, int echo, char *why, size_t why_len);

#endif
