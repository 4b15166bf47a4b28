"""The CPU cost of a training step, kernels stubbed out: what kgen's Python and
PyTorch's autograd around its calls cost, apart from the GPU (on any machine, no GPU).

    TRITON_INTERPRET=1 python bench/train_cpu_cost.py [--h 16] [--m 4] [--steps 200] [--autocast]

Runs the seed001 layer (`gemm_sigmoid_residual`) of bench/train.py forward and backward
on tiny CPU tensors with every Triton launch replaced by a no-op (so the kgen numbers
are its Python and PyTorch's autograd machinery alone, and PyTorch's include its tiny
CPU GEMMs), and prints microseconds per step for kgen and for the PyTorch layer, then
a cProfile of kgen's step. `--autocast`: the forward under
`torch.autocast("cpu", dtype=torch.bfloat16)`, as bench/train.py's autocast-bf16 runs
it on the GPU. Compare runs of one session: CPUs differ.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import torch
import triton.runtime.interpreter as interpreter

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--h", type=int, default=16, help="in and out features")
    parser.add_argument("--m", type=int, default=4, help="rows")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--autocast", action="store_true", help="the forward under bf16 autocast")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (the launches stubbed are the interpreter's)")
    # every launch a no-op: kernel[grid](...) under the interpreter
    interpreter.InterpretedFunction.__getitem__ = lambda self, grid: (lambda *a, **k: None)
    from train import CASES

    torch.manual_seed(0)
    plain_cls, make = CASES["seed001"]
    plain = plain_cls(args.h)
    ours = make(plain)
    x = torch.randn(args.m, args.h, requires_grad=True)
    dout = torch.randn(args.m, args.h, dtype=torch.bfloat16 if args.autocast else torch.float32)

    def step(model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.grad = None
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            out = model(x)
        out.backward(dout)

    for name, model in (("kgen", ours), ("pytorch", plain)):
        for _ in range(20):
            step(model)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(model)
        print(f"{name}: {(time.perf_counter() - start) / args.steps * 1e6:.1f} us per step")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        step(ours)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
