"""`kgen tune`: measure launch configurations on this GPU and record the best.

For each spec, dtype and shape, on fresh `torch.randn` inputs, kgen.runtime.search
finds the fastest candidate (pruned by shape, compiled in parallel, pruned by the
compiler's resources, timed; see there), and the winner goes into
`<kernel>.tuning.json` beside the generated module, under the GPU's name, the dtype and
the shape's bucket (`configs.bucket`), which the module reads at import. The timing
(`median_ms`) and the search are the runtime's, shared with tuning at first use
(`KGEN_AUTOTUNE=1`, kgen/runtime/autotune.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from kgen import configs
from kgen.ir import Gemm, Kernel, Kind
from kgen.runtime import devices
from kgen.runtime.search import FINALISTS as FINALISTS
from kgen.runtime.search import MAX_SPILLS as MAX_SPILLS
from kgen.runtime.search import Candidate as Candidate
from kgen.runtime.search import compile_all as compile_all
from kgen.runtime.search import median_ms as median_ms
from kgen.runtime.search import search

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Shape:
    M: int
    N: int
    K: int

    @staticmethod
    def parse(text: str) -> Shape:
        """'MxNxK', e.g. '2048x8192x8192'."""
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"shape {text!r} is not MxNxK (e.g. 2048x8192x8192)")
        M, N, K = (int(p) for p in parts)
        return Shape(M, N, K)

    def __str__(self) -> str:
        return f"{self.M}x{self.N}x{self.K}"


def inputs(
    kernel: Kernel, shape: Shape, dtype: torch.dtype, device: str = "cuda", seed: int = 0
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Fresh random arguments (`torch.randn`, never zeros) for the generated function:
    x [M, K] and the weight in the spec's layout, scaled so the GEMM stays O(1)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(size, generator=gen, device=device) * scale).to(dtype)

    M, N, K = shape.M, shape.N, shape.K
    w_scale = 1.0 / math.sqrt(max(K, 1))
    weight = (
        randn(N, K, scale=w_scale) if kernel.gemm is Gemm.LINEAR else randn(K, N, scale=w_scale)
    )
    args = [randn(M, K), weight]
    if kernel.has_bias:
        args.append(randn(N))
    sizes = {Kind.TILE: (M, N), Kind.COL: (N,), Kind.ROW: (M,), Kind.SCALAR: ()}
    args += [randn(*sizes[t.kind]) for t in kernel.tensors]
    floats = {f.name: float(f.default) if f.default is not None else 0.5 for f in kernel.floats}
    return args, floats


def float_values(kernel: Kernel, floats: dict[str, float]) -> list[float]:
    return [floats[f.name] for f in kernel.floats]


def wall_us(fn: Callable[[], Any], calls: int | None = None) -> float:
    """The wall time per call of `fn` in microseconds, in a tight loop synchronised at
    the end (median of 5 runs of `calls` calls, or of enough for ~20 ms): what a loop
    of calls feels, CPU and GPU together. At small sizes the CPU side decides it, which
    `median_ms` leaves out by design."""
    fn()
    torch.cuda.synchronize()
    if calls is None:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        calls = max(5, min(2000, int(0.02 / max(time.perf_counter() - start, 1e-6))))
    for _ in range(min(calls, 50)):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return sorted(runs)[2]


def tune_case(
    module: ModuleType,
    kernel: Kernel,
    shape: Shape,
    dtype: torch.dtype,
) -> tuple[Candidate | None, list[Candidate]]:
    """The best configuration for one (shape, dtype) on fresh random inputs, and every
    candidate's record."""
    args, floats = inputs(kernel, shape, dtype)
    call = (*args, *float_values(kernel, floats))
    tma = devices.tma_ready(args[0], args[1])
    facts = devices.device(args[0].device)
    desc = f"{kernel.name} {shape} {str(dtype)[6:]}"
    return search(module._OP, call, shape.M, shape.N, shape.K, dtype, tma, facts, desc)


def tuning_path(generated: Path, kernel: Kernel) -> Path:
    return generated / f"{kernel.name}.tuning.json"


def record(path: Path, gpu: str, dtype: torch.dtype, shape: Shape, config: configs.Config) -> None:
    """Add one entry to a tuning file, keeping the others; written atomically."""
    devices.record_tuning(path, gpu, dtype, configs.bucket(shape.M, shape.N, shape.K), config)
