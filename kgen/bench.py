"""`kgen bench`: kgen against cuBLAS, eager PyTorch and torch.compile, on this GPU.

Per case (spec, shape, dtype), medians of GPU time (`kgen.tune.median_ms`:
`triton.testing.do_bench`'s method, L2 flushed between runs, with a head start so that a
call's CPU cost does not leak into its GPU time) on fresh `torch.randn` inputs, all timed
in one process, one after the other:

- kgen:    the generated function, called as a user calls it (checks, config lookup);
- eager:   the spec's epilogue as PyTorch ops in the input dtype, after `F.linear` with
           the bias (cuBLAS's addmm) or `torch.mm`: what a PyTorch user writes;
- compile: `torch.compile(mode="max-autotune-no-cudagraphs")` of that eager function;
- mm:      `torch.mm` alone, no bias, no epilogue: the floor kgen aims for.

fp32 cases follow the spec's precision: TF32 is enabled for the baselines only when the
spec asks for `tf32` (strict fp32 eager is what `tf32x3`/`bf16x3`/`ieee` replace).
Rows are appended to `bench/results/<gpu>.json`; `plot` draws them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from kgen import reference
from kgen.ir import Gemm, Kernel
from kgen.tune import Shape, inputs, median_ms


@dataclass
class Row:
    spec: str
    M: int
    N: int
    K: int
    dtype: str
    precision: str
    kgen_ms: float
    eager_ms: float
    compile_ms: float | None
    mm_ms: float
    gpu: str = ""

    def tflops(self, ms: float) -> float:
        return 2.0 * self.M * self.N * self.K / (ms * 1e-3) / 1e12


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'."""
    model = re.search(r"\b([A-Z]+\d{2,4}[A-Z]?)\b", name)
    return (model.group(1) if model else re.sub(r"[^A-Za-z0-9]+", "-", name)).lower()


def eager_function(kernel: Kernel) -> Callable[..., torch.Tensor]:
    """The spec as PyTorch ops in the input dtype; a bias added straight to the GEMM
    goes into cuBLAS's addmm, as `nn.Linear` does."""
    body = kernel.body
    fused_bias = (
        kernel.has_bias
        and kernel.gemm is Gemm.LINEAR
        and len(body) > 2
        and body[2].op == "bias"
        and body[2].args[0] == 0
        and all(0 not in i.args for i in body[3:])  # nothing else reads the bare GEMM
    )

    constants: dict[Any, torch.Tensor] = {}  # made on the GPU once, not per call

    def eager(*args: torch.Tensor, **floats: float) -> torch.Tensor:
        operands = reference.bind(kernel, args, floats)
        x, weight = operands["x"], operands["weight"]
        if fused_bias:
            acc = F.linear(x, weight, operands["bias"])
            return reference.epilogue(kernel, acc, operands, skip=(2,), constants=constants)
        acc = x @ (weight.T if kernel.gemm is Gemm.LINEAR else weight)
        return reference.epilogue(kernel, acc, operands, constants=constants)

    return eager


def bench_case(
    module: ModuleType,
    kernel: Kernel,
    shape: Shape,
    dtype: torch.dtype,
    with_compile: bool = True,
) -> Row:
    args, floats = inputs(kernel, shape, dtype, seed=1)
    function = getattr(module, kernel.name)
    eager = eager_function(kernel)
    x, weight = args[0], args[1]
    w = weight.T if kernel.gemm is Gemm.LINEAR else weight
    tf32 = dtype == torch.float32 and kernel.precision == "tf32"
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        kgen_ms = median_ms(lambda: function(*args, **floats))
        eager_ms = median_ms(lambda: eager(*args, **floats))
        mm_ms = median_ms(lambda: torch.mm(x, w))
        compile_ms = None
        if with_compile:
            compiled = torch.compile(eager, mode="max-autotune-no-cudagraphs", dynamic=False)
            compiled(*args, **floats)
            compile_ms = median_ms(lambda: compiled(*args, **floats))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return Row(
        spec=kernel.name,
        M=shape.M,
        N=shape.N,
        K=shape.K,
        dtype=str(dtype)[6:],
        precision=kernel.precision if dtype == torch.float32 else "-",
        kgen_ms=kgen_ms,
        eager_ms=eager_ms,
        compile_ms=compile_ms,
        mm_ms=mm_ms,
        gpu=torch.cuda.get_device_name(x.device),
    )


def table(rows: list[Row]) -> str:
    """A Markdown table: times in microseconds, kgen's TFLOP/s, and ratios (> 1: kgen
    is faster; for mm, < 1 means kgen with its epilogue is slower than the bare GEMM)."""
    head = (
        "| spec | M×N×K | dtype | prec | kgen µs | TFLOP/s | eager µs | compile µs | mm µs "
        "| eager/kgen | compile/kgen | mm/kgen |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        comp = f"{r.compile_ms * 1e3:.1f}" if r.compile_ms else "–"
        comp_ratio = f"{r.compile_ms / r.kgen_ms:.2f}" if r.compile_ms else "–"
        lines.append(
            f"| {r.spec} | {r.M}×{r.N}×{r.K} | {r.dtype} | {r.precision} "
            f"| {r.kgen_ms * 1e3:.1f} | {r.tflops(r.kgen_ms):.0f} | {r.eager_ms * 1e3:.1f} "
            f"| {comp} | {r.mm_ms * 1e3:.1f} | {r.eager_ms / r.kgen_ms:.2f} | {comp_ratio} "
            f"| {r.mm_ms / r.kgen_ms:.2f} |"
        )
    return "\n".join(lines)


def read_rows(path: Path) -> list[Row]:
    """The rows of a results file (none if it does not exist yet). Raises ValueError or
    TypeError for a file that is not one, OSError for one that cannot be read."""
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError("not a list of benchmark rows")
    return [Row(**r) for r in data]


def append_rows(path: Path, rows: list[Row]) -> None:
    from kgen.build import write_atomic

    old = [asdict(r) for r in read_rows(path)]
    write_atomic(path, json.dumps(old + [asdict(r) for r in rows], indent=1) + "\n")


def plot(path: Path, png: Path) -> None:
    """kgen's time against the others, per case, as ratios to torch.mm (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(path)
    latest: dict[tuple[Any, ...], Row] = {}
    for r in rows:  # the newest row per case
        latest[(r.spec, r.M, r.N, r.K, r.dtype, r.precision)] = r
    cases = list(latest.values())
    labels = [
        f"{r.spec}\n{r.M}×{r.N}×{r.K} {r.dtype}" + (f" {r.precision}" if r.precision != "-" else "")
        for r in cases
    ]
    series = {
        "kgen (fused)": [r.kgen_ms for r in cases],
        "eager PyTorch": [r.eager_ms for r in cases],
        "torch.compile max-autotune": [r.compile_ms or math.nan for r in cases],
    }
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cases)), 5))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ratios = [v / r.mm_ms for v, r in zip(values, cases, strict=True)]
        ax.bar([j + i * width for j in range(len(cases))], ratios, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="torch.mm alone (cuBLAS)")
    ax.set_xticks(
        [j + width for j in range(len(cases))], labels, fontsize=7, rotation=30, ha="right"
    )
    ax.set_yscale("log")
    ax.set_ylabel("time / torch.mm time (log scale; lower is better)")
    ax.set_title(f"kgen on {cases[0].gpu if cases else ''}: GEMM + epilogue vs the GEMM alone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
