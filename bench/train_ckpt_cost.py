#!/usr/bin/env python3
"""train_ckpt_cost.py - what `--ckpt-dir DIR --ckpt-every N` costs `baton train`.

Interleaved pairs (the order alternates) of `baton train` without and with
checkpoints, same model and steps, fresh checkpoint directory each time.
Per run: the mean step time from --metrics (elapsed at the last step / steps,
so the wait for the final commit after the last step is not in it), the
process's wall time and CPU time (user + sys), and, from the line baton
train prints at the end, the training loop's wait per save, the wait for
the final commit and the writer thread's CPU per save. Prints each pair and
the medians of the with/without ratios. Standard library only; not a test.

usage: train_ckpt_cost.py BATON PAIRS STEPS EVERY [model flags...]
  e.g. bench/train_ckpt_cost.py build/baton 8 100 10
       bench/train_ckpt_cost.py build/baton 8 200 10 --layers 4 --dim 64
"""
import json, os, re, shutil, statistics, subprocess, sys, tempfile, time

def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__.split("\n\n")[-1])
    baton, pairs, steps, every = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    extra = sys.argv[5:]
    scratch = tempfile.mkdtemp(prefix="ckcost.", dir=os.environ.get("TMPDIR", "/tmp"))
    info = []

    def run(ck):
        d, met, err = (os.path.join(scratch, x) for x in ("ck", "m.jsonl", "err.txt"))
        shutil.rmtree(d, ignore_errors=True)
        args = [baton, "train", "--steps", steps, "--hash", "--metrics", met] + extra
        if ck:
            args += ["--ckpt-dir", d, "--ckpt-every", every]
        t0 = time.monotonic()
        with open(err, "w") as ef:
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=ef)
            out = p.stdout.read().decode()
            _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        if status != 0:
            sys.exit(f"train_ckpt_cost: {' '.join(args)} failed:\n{open(err).read()}")
        lines = [json.loads(l) for l in open(met)]
        step_ms = 1e3 * lines[-1]["elapsed_s"] / len(lines)
        m = re.search(r"waited ([0-9.]+) ms per save, then ([0-9.]+) ms .* used ([0-9.]+) ms of CPU",
                      open(err).read())
        if ck and m:
            info.append(tuple(float(x) for x in m.groups()))
        return step_ms, wall, ru.ru_utime + ru.ru_stime, out.strip().split("\n")[-1]

    ratios = [[], [], []]
    plain = []
    for i in range(pairs):
        r = {}
        for ck in ((0, 1) if i % 2 == 0 else (1, 0)):
            r[ck] = run(ck)
        if r[0][3] != r[1][3]:
            sys.exit(f"train_ckpt_cost: the hashes differ: {r[0][3]} vs {r[1][3]}")
        for j in range(3):
            ratios[j].append(r[1][j] / r[0][j])
        plain.append(r[0])
        print(f"pair {i} (load {os.getloadavg()[0]:.1f}): without: {r[0][0]:.1f} ms/step, wall {r[0][1]:.2f} s, "
              f"cpu {r[0][2]:.2f} s | with: {r[1][0]:.1f} ms/step, wall {r[1][1]:.2f} s, cpu {r[1][2]:.2f} s",
              flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    f = lambda v: f"{statistics.median(v):.3f} (range {min(v):.3f}-{max(v):.3f})"
    print(f"with / without checkpoints, medians of {pairs} pairs:")
    for j, name in enumerate(("step time", "wall time", "CPU time")):
        print(f"  {name}: {f(ratios[j])}")
    print(f"  without: {statistics.median(p[0] for p in plain):.1f} ms/step, "
          f"{1e3 * statistics.median(p[2] for p in plain) / int(steps):.1f} ms of CPU per step")
    if info:
        for j, name in enumerate(("training loop wait per save (ms)", "wait for the final commit (ms)",
                                  "writer thread CPU per save (ms)")):
            print(f"  {name}: {f([x[j] for x in info])}")
    print(plain[0][3])

main()
