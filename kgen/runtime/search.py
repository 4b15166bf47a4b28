"""Choosing a configuration by measurement: GPU timing, and the search over candidates
that `kgen tune` and tuning at first use (kgen/runtime/autotune.py) share.

`search` takes a GemmOp and a call's arguments:

1. `configs.candidates` prunes the search space by shape and the seeds' rules;
2. every candidate is compiled, in parallel (`triton.AsyncCompileMode`), and pruned by
   what the compiler reports: `OutOfResources` (shared memory), and spills beyond
   `MAX_SPILLS` words (a few dozen spilled words can still be fastest: shared/notes).
   The heuristic's choice is always a candidate and always timed, spills or not: a
   tuned shape must never run slower than an untuned one would;
3. the survivors are timed with `median_ms` (`triton.testing.do_bench`'s method:
   median, L2 flushed, with a head start, see there); the best few are timed again,
   longer, to pick the winner.

Candidates run through the op's own plans, launched as a user's call launches them, so
what is tuned is exactly what a call runs.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton

from kgen import configs
from kgen.runtime import devices

MAX_SPILLS = 64  # words of local memory a candidate may spill and still be timed
FINALISTS = 3


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
    op: Any,
    cands: Sequence[configs.Config],
    call: Sequence[Any],
    tma: bool,
    workers: int = 8,
) -> list[Candidate]:
    """Compile every candidate of `op` (a kgen.runtime.GemmOp) for the arguments `call`
    (as `op(*call)` takes them), in parallel; read registers, spills and shared memory."""
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
                op.launch(result.config, *call, tma=tma)
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


def untuned(
    op: Any, M: int, N: int, K: int, dtype: torch.dtype, tma: bool, facts: devices.Device
) -> configs.Config:
    """What `op` launches for this shape without tuning: the heuristic's choice (kernels
    with row operations do not split K)."""
    default = configs._heuristic(M, N, K, dtype, tma, facts.num_sms, facts.smem)
    return default if op.rows is None else (*default[:7], 1)


def search(
    op: Any,
    call: Sequence[Any],
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    tma: bool,
    facts: devices.Device,
    desc: str = "",
) -> tuple[Candidate | None, list[Candidate]]:
    """The best configuration of `op` (a kgen.runtime.GemmOp) for the arguments `call`
    (as `op(*call)` takes them; M, N, K: their GEMM's sizes), and every candidate's
    record.
    Kernels with row operations do not split K (kgen/configs.py)."""
    from tqdm import tqdm

    cands = configs.candidates(M, N, K, dtype, tma, facts.num_sms)
    default = untuned(op, M, N, K, dtype, tma, facts)
    if op.rows is not None:
        cands = [c for c in cands if c[7] == 1]
    if default not in cands:
        cands = [*cands, default]
    results = compile_all(op, cands, call, tma)

    def measure(config: configs.Config, rep: int) -> float:
        plan = op.plan(*call, config=config, tma=tma)
        return median_ms(lambda: plan.run(call), warmup=5, rep=rep)

    def spills(r: Candidate) -> bool:
        return r.spills > MAX_SPILLS and r.config != default

    alive = [r for r in results if r.error is None and not spills(r)]
    for r in results:
        if r.error is None and spills(r):
            r.error = f"{r.spills} spilled words"
    for r in tqdm(alive, desc=desc or f"{op.name} {M}x{N}x{K}", unit="config", leave=False):
        try:
            r.ms = measure(r.config, rep=20)
        except Exception as err:  # a launch failure prunes the candidate
            r.error = f"{type(err).__name__}: {err}"[:200]
    finalists = sorted((r for r in alive if r.error is None), key=lambda r: r.ms)[:FINALISTS]
    for r in finalists:
        r.ms = measure(r.config, rep=100)
    best = min(finalists, key=lambda r: r.ms, default=None)
    return best, results
