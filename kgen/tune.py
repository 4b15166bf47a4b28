"""`kgen tune`: measure launch configurations on this GPU and record the best.

For each spec, dtype and shape:

1. `configs.candidates` prunes the search space by shape and the seeds' rules;
2. every candidate is compiled, in parallel (`triton.AsyncCompileMode`), and pruned by
   what the compiler reports: `OutOfResources` (shared memory), and spills beyond
   `MAX_SPILLS` words (a few dozen spilled words can still be fastest: shared/notes).
   The module's own heuristic choice is always a candidate and always timed, spills or
   not: a tuned shape must never run slower than an untuned one would;
3. the survivors are timed with `median_ms` (`triton.testing.do_bench`'s method: median,
   L2 flushed, with a head start, see there) on fresh `torch.randn` inputs; the best few
   are timed again, longer, to pick the winner;
4. the winner goes into `<kernel>.tuning.json` beside the generated module, under the
   GPU's name, the dtype and the shape's bucket (`configs.bucket`), which the module
   reads at import.

Candidates run through the module's own call (`_OP`, kgen.runtime.GemmOp: a plan per
configuration, launched as a user's call launches it), so what is tuned is exactly
what a user's call runs.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import triton

from kgen import configs
from kgen.ir import Gemm, Kernel, Kind
from kgen.runtime import devices

MAX_SPILLS = 64  # words of local memory a candidate may spill and still be timed
FINALISTS = 3

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


class _Capture:
    """Stands in for the module's kernel while a launch is planned and run: compiles
    without launching and keeps the compiled kernel, so its resources can be read."""

    def __init__(self, jit: Any) -> None:
        self.jit = jit
        self.arg_names = jit.arg_names
        self.compiled: Any = None

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.compiled = self.jit.warmup(*args, grid=grid, **kwargs)
            return self.compiled

        return call


HEAD_START_MAX_S = 0.005


def _event() -> Any:
    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


def _spin(cycles: int) -> None:
    """Keep the GPU busy for `cycles` clock cycles (a kernel that spins)."""
    torch.cuda._sleep(cycles)  # type: ignore[no-untyped-call]


_SPIN_RATE: dict[int, float] = {}  # device -> spin cycles per second


def _spin_rate() -> float:
    """Cycles per second of `_spin` on the current device: the difference of a 3M- and
    a 1M-cycle spin, so the CPU's launch latency (the first launch loads the kernel)
    cancels out."""
    device = torch.cuda.current_device()
    if device not in _SPIN_RATE:
        _spin(1000)
        elapsed = []
        for cycles in (1_000_000, 3_000_000):
            start, end = _event(), _event()
            start.record()
            _spin(cycles)
            end.record()
            end.synchronize()
            elapsed.append(start.elapsed_time(end) / 1e3)
        _SPIN_RATE[device] = 2_000_000 / max(elapsed[1] - elapsed[0], 1e-6)
    return _SPIN_RATE[device]


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


def median_ms(fn: Callable[[], Any], warmup: int = 25, rep: int = 100) -> float:
    """The median GPU time of `fn()` in milliseconds, measured as
    `triton.testing.do_bench` measures it (L2 flushed before every run, CUDA events
    around the run, `warmup` and `rep` in milliseconds), with a head start: before each
    run the GPU spins (`torch.cuda._sleep`) for twice the CPU time a call takes, so that
    `fn`'s launches are all queued when the start event fires.

    Without it, a call whose CPU cost exceeds the flush's GPU time (82 us on an H100)
    leaves the GPU idle between the events, and the figure is partly the CPU's: at
    128x512x1024 fp16 on the H100, do_bench gave 53-89 us for seed 001's call, whose
    kernel the profiler timed at 6.1 us (L2 flushed); this gave 9.1 us. The CPU cost of
    a call is measured on its own (bench/call_cost.py)."""
    cache = triton.runtime.driver.active.get_empty_cache_for_benchmark()
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    head_start_s = min(HEAD_START_MAX_S, 2 * (time.perf_counter() - t0) / 5)
    cycles = int(head_start_s * _spin_rate())
    start, end = _event(), _event()
    start.record()
    for _ in range(5):
        cache.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup / estimate_ms))):
        fn()
    events = [(_event(), _event()) for _ in range(max(1, int(rep / estimate_ms)))]
    for s, e in events:
        cache.zero_()
        _spin(cycles)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in events)
    return float(times[len(times) // 2])


@dataclass
class Candidate:
    config: configs.Config
    regs: int = -1
    spills: int = -1
    shared: int = -1
    error: str | None = None
    ms: float = math.inf


def compile_all(
    module: ModuleType,
    kernel: Kernel,
    cands: Sequence[configs.Config],
    args: list[torch.Tensor],
    values: list[float],
    tma: bool,
    workers: int = 8,
) -> list[Candidate]:
    """Compile every candidate in parallel; read registers, spills and shared memory."""
    op = module._OP
    jit = op.kernel
    results = [Candidate(c) for c in cands]
    captures: list[_Capture | None] = []
    with (
        concurrent.futures.ThreadPoolExecutor(workers) as pool,
        triton.AsyncCompileMode(pool, ignore_errors=True),
    ):
        for result in results:
            capture: _Capture | None = _Capture(jit)
            op.kernel = capture
            try:
                op.launch(result.config, *args, *values, tma=tma)
                captures.append(capture)
            except Exception as err:  # a candidate that cannot build
                result.error = f"{type(err).__name__}: {err}"[:200]
                captures.append(None)
            finally:
                op.kernel = jit
    for result, capture in zip(results, captures, strict=True):
        if capture is None or result.error:
            continue
        try:
            compiled = (
                capture.compiled.result()
                if hasattr(capture.compiled, "result")
                else capture.compiled
            )
            if compiled is None:
                raise RuntimeError("compilation failed")
            compiled._init_handles()
            result.regs, result.spills = compiled.n_regs, compiled.n_spills
            result.shared = compiled.metadata.shared
        except Exception as err:  # OutOfResources and compiler errors
            result.error = f"{type(err).__name__}: {err}"[:200]
    return results


def tune_case(
    module: ModuleType,
    kernel: Kernel,
    shape: Shape,
    dtype: torch.dtype,
) -> tuple[Candidate | None, list[Candidate]]:
    """The best configuration for one (shape, dtype), and every candidate's record."""
    from tqdm import tqdm

    args, floats = inputs(kernel, shape, dtype)
    values = float_values(kernel, floats)
    tma = devices.tma_ready(args[0], args[1])
    facts = devices.device(args[0].device)
    num_sms = facts.num_sms  # what a persistent launch uses
    cands = configs.candidates(shape.M, shape.N, shape.K, dtype, tma, num_sms)
    default = configs._heuristic(shape.M, shape.N, shape.K, dtype, tma, num_sms, facts.smem)
    if kernel.row_ops:  # row kernels do not split K (kgen/configs.py)
        cands = [c for c in cands if c[7] == 1]
        default = (*default[:7], 1)
    if default not in cands:
        cands = [*cands, default]
    results = compile_all(module, kernel, cands, args, values, tma)

    def measure(config: configs.Config, rep: int) -> float:
        call = (*args, *values)
        plan = module._OP.plan(*call, config=config, tma=tma)
        return median_ms(lambda: plan.run(call), warmup=5, rep=rep)

    def spills(r: Candidate) -> bool:
        return r.spills > MAX_SPILLS and r.config != default

    alive = [r for r in results if r.error is None and not spills(r)]
    for r in results:
        if r.error is None and spills(r):
            r.error = f"{r.spills} spilled words"
    desc = f"{kernel.name} {shape} {str(dtype)[6:]}"
    for r in tqdm(alive, desc=desc, unit="config", leave=False):
        try:
            r.ms = measure(r.config, rep=20)
        except Exception as err:  # a launch failure prunes the candidate
            r.error = f"{type(err).__name__}: {err}"[:200]
    finalists = sorted((r for r in alive if r.error is None), key=lambda r: r.ms)[:FINALISTS]
    for r in finalists:
        r.ms = measure(r.config, rep=100)
    best = min(finalists, key=lambda r: r.ms, default=None)
    return best, results


def tuning_path(generated: Path, kernel: Kernel) -> Path:
    return generated / f"{kernel.name}.tuning.json"


def record(path: Path, gpu: str, dtype: torch.dtype, shape: Shape, config: configs.Config) -> None:
    """Add one entry to a tuning file, keeping the others; written atomically."""
    from kgen.build import write_atomic

    table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if not isinstance(table, dict):
        raise ValueError("not a kgen tuning file (expected a JSON object)")
    by_dtype = table.setdefault(gpu, {}).setdefault(str(dtype)[6:], {})
    by_dtype[configs.bucket(shape.M, shape.N, shape.K)] = list(config)
    # sorted keys, one configuration per line: stable diffs when a file is re-tuned
    text = json.dumps(table, indent=1, sort_keys=True)
    text = re.sub(
        r"\[\s+([^\[\]]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text
    )
    write_atomic(path, text + "\n")
