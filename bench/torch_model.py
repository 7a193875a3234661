#!/usr/bin/env python3
"""torch_model.py - baton's model in PyTorch, for bench_gpu's and bench_train's comparisons.

The same model and step as `baton train` (DESIGN.md §2), float32, on one
GPU (--device cuda, the default) or on the CPU with --threads threads
(--device cpu, one thread by default, as baton's one OpenBLAS thread): K position-specific embedding tables (K, 256, D) summed over the
previous K bytes; L blocks x + W2·gelu(W1·LN(x) + b1) + b2 with exact
(erf) GELU and LayerNorm eps 1e-5; head LN + Wout (256, D) without bias;
softmax cross-entropy; the loss of a step is the mean over all M·T tokens
(each micro-batch's mean scaled by 1/M, gradients accumulated over the M
micro-batches in order); AdamW with baton's defaults (lr 0.003, betas 0.9
and 0.99, eps 1e-8, weight decay 0), linear warm-up then cosine decay to
lr/10 over a fixed horizon. The bytes are random: this measures speed, not
learning, and the data pipeline is not timed in either program (baton
generates its bytes on the host per micro-batch inside the step, so any
cost there counts against baton).

TF32 is off unless --tf32 (baton's --math fp32 is the default).

Prints a short table and, last, one JSON line with tokens_per_s (of the
median step, each step timed to a device sync); without torch (or, for
cuda, without a GPU) it prints {"skipped": "reason"} and exits 0. It
installs nothing.

usage: torch_model.py [--device cuda|cpu] [--threads 1] [--dim 1024]
                      [--layers 8] [--context 4] [--microbatches 4]
                      [--mb-tokens 512] [--steps 20] [--warmup-steps 3] [--tf32]
"""
import argparse
import json
import math
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (--device cpu)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--context", type=int, default=4)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--mb-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--warmup", type=int, default=20, help="learning-rate warm-up steps")
    ap.add_argument("--lr-decay-steps", type=int, default=2000)
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"skipped": "no torch: %s" % e}))
        return 0
    if a.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "torch sees no CUDA device"}))
        return 0

    if a.device == "cpu":
        # OpenBLAS under Debian's torch keeps its own pool: callers that
        # want one thread also set OPENBLAS_NUM_THREADS=1 (bench_train does).
        torch.set_num_threads(a.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    dev = torch.device(a.device)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()
    D, L, K, M, T = a.dim, a.layers, a.context, a.microbatches, a.mb_tokens
    H = 4 * D
    g = torch.Generator(device="cpu").manual_seed(1)

    def param(*shape, scale):
        return torch.nn.Parameter((torch.randn(*shape, generator=g) * scale).to(dev))

    tables = param(K, 256, D, scale=0.02)
    blocks = []
    for _ in range(L):
        blocks.append({
            "ln_w": torch.nn.Parameter(torch.ones(D, device=dev)),
            "ln_b": torch.nn.Parameter(torch.zeros(D, device=dev)),
            "w1": param(H, D, scale=1 / math.sqrt(D)),
            "b1": torch.nn.Parameter(torch.zeros(H, device=dev)),
            "w2": param(D, H, scale=1 / math.sqrt(H)),
            "b2": torch.nn.Parameter(torch.zeros(D, device=dev)),
        })
    head_w = torch.nn.Parameter(torch.ones(D, device=dev))
    head_b = torch.nn.Parameter(torch.zeros(D, device=dev))
    wout = param(256, D, scale=1 / math.sqrt(D))
    params = [tables] + [p for b in blocks for p in b.values()] + [head_w, head_b, wout]

    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)

    def lr_at(step):  # step counts from 0, as baton's
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        p = min(1.0, (step - a.warmup) / max(1, a.lr_decay_steps - a.warmup))
        return a.lr / 10 + (a.lr - a.lr / 10) * 0.5 * (1 + math.cos(math.pi * p))

    kidx = torch.arange(K, device=dev)

    def forward(ctx, targets):
        # ctx: (T + K) bytes; position t sees bytes t+K-1-k for table k.
        pos = torch.arange(T, device=dev)[:, None] + K - 1 - kidx[None, :]  # (T, K)
        x = tables[kidx[None, :], ctx[pos].long()].sum(dim=1)  # (T, D)
        for b in blocks:
            h = F.layer_norm(x, (D,), b["ln_w"], b["ln_b"], 1e-5)
            h = F.gelu(F.linear(h, b["w1"], b["b1"]), approximate="none")
            x = x + F.linear(h, b["w2"], b["b2"])
        x = F.layer_norm(x, (D,), head_w, head_b, 1e-5)
        logits = F.linear(x, wout)
        return F.cross_entropy(logits, targets.long())

    def step(s):
        for group in opt.param_groups:
            group["lr"] = lr_at(s)
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for _ in range(M):
            data = torch.randint(0, 256, (T + K,), device=dev, dtype=torch.uint8)
            ctx, targets = data[:T + K - 1], data[K:]
            ctx = torch.cat([ctx, ctx[-1:]])  # T + K bytes, as baton's ctx
            loss = forward(ctx, targets) / M
            loss.backward()
            total += loss.detach()
        opt.step()
        return total

    for s in range(a.warmup_steps):
        step(s)
    sync()
    # One time per step, each ended by a device sync, and the median of
    # them: bench_gpu compares it with the median step of baton train.
    times = []
    t0 = time.perf_counter()
    for s in range(a.warmup_steps, a.warmup_steps + a.steps):
        ts = time.perf_counter()
        loss = step(s)
        sync()
        times.append(time.perf_counter() - ts)
    dt = time.perf_counter() - t0
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    tps = M * T / med
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else \
        "cpu, %d thread(s)" % torch.get_num_threads()
    print("torch %s, %s, D=%d L=%d K=%d M=%d T=%d, tf32 %s" %
          (torch.__version__, name, D, L, K, M, T, "on" if a.tf32 else "off"))
    print("%d timed steps in %.3f s: %.0f tokens/s at the median step (last loss %.4f)" %
          (a.steps, dt, tps, float(loss)))
    print(json.dumps({"torch": torch.__version__, "gpu": name, "tokens_per_s": tps,
                      "seconds": dt, "steps": a.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
