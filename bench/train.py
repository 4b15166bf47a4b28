"""One training step (forward + backward) with kgen modules, against the same model in
PyTorch, eager and under `torch.compile`, on a CUDA GPU.

    python bench/train.py [--cases seed001,seed003,mlp,ffn] [--ms 4096,16384]
                          [--precisions autocast-bf16,float16,bfloat16]
                          [--modes eager,default] [--hidden 4096] [--json PATH]
                          [--budget-s 540]

Cases (hidden size h = 4096):

- seed001 / seed003: the two seed specs as one layer, M x h x h (`gemm_sigmoid_residual`,
  `gemm_scale_hardtanh_gelu`), against nn.Linear and the seed's epilogue in PyTorch;
- mlp, ffn: the models of bench/model.py (8 x Linear + GELU; x + fc2(gelu(fc1(x))),
  h -> 4h -> h), with kgen's `linear_gelu` and `linear_residual`.

A step: parameter gradients set to None, the forward, then `out.backward(dout)` with a
fixed random `dout` (so no loss kernels are timed); `x` requires grad, as a layer inside
a network would see it, so dx is computed too. Precisions: `autocast-bf16` (fp32
parameters, the forward under `torch.autocast("cuda", torch.bfloat16)`), or plain
float16 / bfloat16 parameters and inputs. Reported per step: the GPU time
(kgen.tune.median_ms), the wall time in a loop (kgen.tune.wall_us), and the peak
memory the step allocates above what exists before it (parameters, x and dout), from
`torch.cuda.max_memory_allocated`. The kgen and PyTorch models share their weights;
their outputs and gradients are checked against each other first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from model import MODELS, _kgen
from torch import nn

from kgen.tune import median_ms, wall_us


class PlainSeed001(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.gemm = nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gemm(x)
        return z + 2.0 * torch.sigmoid(z)


class PlainSeed003(PlainSeed001):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.hardtanh(self.gemm(x) * 0.5, -2.0, 2.0))


def _seed(name: str) -> Callable[[nn.Module], nn.Module]:
    def make(plain: nn.Module) -> nn.Module:
        linear = plain.gemm  # type: ignore[union-attr]
        layer = _kgen(name).ModelNew(linear.in_features, linear.out_features)
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    return make


CASES: dict[str, tuple[Callable[[int], nn.Module], Callable[[Any], nn.Module]]] = {
    "seed001": (PlainSeed001, _seed("gemm_sigmoid_residual")),
    "seed003": (PlainSeed003, _seed("gemm_scale_hardtanh_gelu")),
    **MODELS,
}


@contextlib.contextmanager
def _precision(precision: str) -> Iterator[None]:
    if precision.startswith("autocast-"):
        dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision[9:]])
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


def _step(model: nn.Module, x: torch.Tensor, dout: torch.Tensor, precision: str) -> Callable:
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with _precision(precision):
            out = model(x)
        out.backward(dout)

    return step


def _grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [x.grad, *(p.grad for p in model.parameters())]  # type: ignore[list-item]


def _agree(got: list[torch.Tensor], want: list[torch.Tensor], what: str) -> None:
    """The same gradients within 16-bit rounding through the model (relative to each
    tensor's scale), and no NaN."""
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        error = (g.float() - w.float()).abs().max().item()
        scale = w.float().abs().max().item()
        if not error <= 0.05 * max(scale, 1e-6):
            raise AssertionError(
                f"{what}: gradient {i}: max |kgen - PyTorch| = {error:.3g} at {scale:.3g}"
            )


def _peak_mib(step: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="seed001,seed003,mlp,ffn")
    parser.add_argument("--ms", default="4096,16384")
    parser.add_argument("--seed-ms", default="4096", help="M for the seed cases")
    parser.add_argument("--precisions", default="autocast-bf16,float16,bfloat16")
    parser.add_argument("--modes", default="eager,default")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--json", help="append each result here, a JSON object per line")
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop starting cases after")
    parser.add_argument("--run", default="", help="a label for this run's rows")
    parser.add_argument("--table", metavar="JSONL", help="only print a results file's table")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.table), args.run))
        return
    began = time.perf_counter()
    gpu = torch.cuda.get_device_name()
    h = args.hidden
    for precision in args.precisions.split(","):
        dtype = torch.float32 if precision.startswith("autocast") else getattr(torch, precision)
        for case in args.cases.split(","):
            plain_cls, kgen_cls = CASES[case]
            ms = args.seed_ms if case.startswith("seed") else args.ms
            torch.manual_seed(0)
            plain = plain_cls(h).cuda().to(dtype)
            ours = kgen_cls(plain)
            for M in (int(m) for m in ms.split(",")):
                if time.perf_counter() - began > args.budget_s:
                    print(f"budget spent: stopping before {case} {precision} M={M}", flush=True)
                    return
                x = torch.randn(M, h, device="cuda", dtype=dtype, requires_grad=True)
                dout = torch.randn(M, h, device="cuda", dtype=dtype)
                if precision.startswith("autocast"):
                    dout = dout.to(torch.bfloat16 if precision.endswith("bf16") else torch.half)
                _step(plain, x, dout, precision)()
                want = [g.clone() for g in _grads(plain, x)]
                _step(ours, x, dout, precision)()
                _agree(_grads(ours, x), want, f"{case} {precision} M={M}")
                del want
                for who, model in (("pytorch", plain), ("kgen", ours)):
                    for mode in args.modes.split(","):
                        _case(args, gpu, case, precision, M, who, mode, model, x, dout)
                torch._dynamo.reset()
                del x, dout
            del plain, ours
            torch.cuda.empty_cache()


def _case(
    args: argparse.Namespace,
    gpu: str,
    case: str,
    precision: str,
    M: int,
    who: str,
    mode: str,
    model: nn.Module,
    x: torch.Tensor,
    dout: torch.Tensor,
) -> None:
    compile_s = 0.0
    if mode == "eager":
        run = model
    else:
        run = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
    step = _step(run, x, dout, precision)
    start = time.perf_counter()
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    peak = _peak_mib(step)
    gpu_us = median_ms(step) * 1e3
    us = wall_us(step)
    row = {
        "gpu": gpu,
        "case": case,
        "precision": precision,
        "M": M,
        "who": who,
        "mode": mode,
        "gpu_us": round(gpu_us, 1),
        "wall_us": round(us, 1),
        "peak_mib": round(peak, 1),
        "compile_s": round(compile_s, 1) if mode != "eager" else None,
        "run": args.run,
    }
    print(json.dumps(row), flush=True)
    if args.json:
        with Path(args.json).open("a") as f:
            f.write(json.dumps(row) + "\n")


def table(path: Path, run: str) -> str:
    """A Markdown table of one run (the last, unless `run` names one): per case, GPU
    time and peak memory of a step, PyTorch / kgen ratios (above 1: kgen is better)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    run = run or rows[-1]["run"]
    cases: dict[tuple[Any, ...], dict[tuple[str, str], Any]] = {}
    for r in rows:
        if r["run"] == run:
            cases.setdefault((r["case"], r["precision"], r["M"]), {})[(r["who"], r["mode"])] = r
    lines = [
        f"{rows[-1]['gpu']}, run {run!r}: one training step, GPU µs (peak MiB above the "
        "step's inputs); ratios PyTorch / kgen of GPU time, of the wall time of a step in "
        "a loop, of peak memory",
        "",
        "| case | precision | M | eager PyTorch | kgen | ratio | wall-time ratio | memory ratio "
        "| compiled PyTorch | compiled kgen | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, precision, M), got in cases.items():
        pe, ke = got.get(("pytorch", "eager")), got.get(("kgen", "eager"))
        pc, kc = got.get(("pytorch", "default")), got.get(("kgen", "default"))
        if pe is None or ke is None:
            continue

        def cell(r: Any) -> str:
            return "–" if r is None else f"{r['gpu_us']:.0f} ({r['peak_mib']:.0f})"

        def ratio(a: Any, b: Any, key: str) -> str:
            return "–" if a is None or b is None else f"{a[key] / b[key]:.2f}"

        lines.append(
            f"| {case} | {precision} | {M} | {cell(pe)} | {cell(ke)} | "
            f"**{ratio(pe, ke, 'gpu_us')}** | {ratio(pe, ke, 'wall_us')} | "
            f"{ratio(pe, ke, 'peak_mib')} | {cell(pc)} | "
            f"{cell(kc)} | {ratio(pc, kc, 'gpu_us')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
