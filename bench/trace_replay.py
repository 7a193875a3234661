#!/usr/bin/env python3
"""trace_replay.py - where a `baton run` step loses time against its own actions.

Reads the Chrome trace that `baton run --trace FILE` writes (one "X" event
per action, named like "1F3": virtual stage 1, forward, micro-batch 3) and
replays each step after the first with the durations measured in that step
and ZERO time between an action's data dependency finishing on the other
worker and the action starting (no transfer, no wake-up). The measured span
against the replayed one is the time lost to moving tensors and waking the
waiting worker; the replayed bubble is what the schedule itself costs with
the real, varying action durations (the simulator in bench_run uses one
median cost per action type instead).

usage: trace_replay.py TRACE STEPS
Standard library only; not a test.
"""
import json, re, statistics, sys

def parse(name):
    m = re.match(r"(\d+)([FBIW])(\d+)$", name)
    if not m:
        sys.exit(f"trace_replay: unexpected action name {name!r}")
    return int(m.group(1)), m.group(2), int(m.group(3))

def deps(a, nv):
    v, k, mb = a
    if k == "F":
        return [(v - 1, "F", mb)] if v > 0 else []
    if k in "BI":
        return [(v + 1, "B", mb), (v + 1, "I", mb)] if v < nv - 1 else [(v, "F", mb)]
    return [(v, "I", mb)]  # W after its own I

def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[-2])
    trace, steps = sys.argv[1], int(sys.argv[2])
    ev = [e for e in json.load(open(trace))["traceEvents"] if e.get("ph") == "X"]
    by = {}
    for e in ev:
        by.setdefault(e["tid"], []).append(e)
    for k in by:
        by[k].sort(key=lambda e: e["ts"])
        if len(by[k]) % steps:
            sys.exit(f"trace_replay: worker {k} has {len(by[k])} actions, not a multiple of {steps} steps")
    nv = 1 + max(parse(e["name"])[0] for e in ev)
    out = []
    for st in range(1, steps):
        seq = {t: by[t][st * (len(by[t]) // steps):(st + 1) * (len(by[t]) // steps)] for t in by}
        present = {parse(e["name"]) for t in seq for e in seq[t]}
        t0 = min(s[0]["ts"] for s in seq.values())
        t1 = max(s[-1]["ts"] + s[-1]["dur"] for s in seq.values())
        busy = sum(e["dur"] for s in seq.values() for e in s)
        done, ptr, clock = {}, {t: 0 for t in seq}, {t: 0.0 for t in seq}
        moved = True
        while moved:
            moved = False
            for t in seq:
                while ptr[t] < len(seq[t]):
                    e = seq[t][ptr[t]]
                    a = parse(e["name"])
                    need = [d for d in deps(a, nv) if d in present]
                    if any(d not in done for d in need):
                        break
                    clock[t] = max([clock[t]] + [done[d] for d in need]) + e["dur"]
                    done[a] = clock[t]
                    ptr[t] += 1
                    moved = True
        if any(ptr[t] < len(seq[t]) for t in seq):
            sys.exit("trace_replay: the actions of a step do not form a schedule (deadlock in the replay)")
        span = max(clock.values())
        p = len(seq)
        out.append(((t1 - t0) / 1e3, span / 1e3, 1 - busy / (p * (t1 - t0)), 1 - busy / (p * span)))
    med = lambda j: statistics.median(r[j] for r in out)
    print(f"{trace}: action span {med(0):.1f} ms measured, {med(1):.1f} ms replayed with zero latency "
          f"(x{med(0) / med(1):.3f}); bubble of the span {100 * med(2):.1f} % measured, "
          f"{100 * med(3):.1f} % replayed (medians of steps 2..{steps})")

main()
