"""`kgen bench --ops`: what each epilogue op costs, measured on this GPU.

For every public op that can be an epilogue step (`kgen.ops.OPS`, `step` and `public`),
three kernels are built from spec text into a temporary directory:

    identity:  epilogue: bias
    once:      epilogue: bias; OP
    four:      epilogue: bias; OP; OP; OP; OP

and timed with ONE launch configuration, the one kgen's heuristic picks for the identity
kernel at the shape, so only the epilogue differs. An op's cost per application, in % of
the identity kernel's time t0, is (t4 - t0) / 4 / t0 (and, from one application,
(t1 - t0) / t0). Ops with arguments take their defaults; required ones take a float
param (0.5; `clamp` takes -0.5 and 0.5) and `residual` an [M, N] input. With
`row_ops`, each row operation (`kgen.ops.ROW_OPS`, `groups` and `k` set to 256 and 16)
is timed once after the bias, in a section of its own.

Triton's compile time dominates (about 70 kernels per dtype), so the kernels are
compiled first, in parallel processes: each imports a generated module and runs it once
with the benchmark's configuration, which fills Triton's on-disk cache; the timing in
this process then finds every kernel there. Timing is `kgen.tune.median_ms` (GPU time,
L2 flushed). The identity kernel is timed again after every few cases, and t0 is the
median of those runs (their spread says how noisy the machine is).

Under TRITON_INTERPRET=1 the same runs on the CPU in Triton's interpreter: every case
is built and run, the times are wall-clock and mean nothing (a smoke test).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kgen import configs, ops
from kgen.tune import Shape

DEFAULT_SHAPE = Shape(1024, 8192, 8192)
QUICK_SHAPE = Shape(32, 64, 64)
DEFAULT_DTYPES = ("float16", "bfloat16")
REPEATS = (1, 4)
IDENTITY_EVERY = 4  # time the identity kernel again after this many ops

# required arguments' values (a float param each; `residual` takes an [M, N] input)
_VALUES: dict[tuple[str, str], float] = {("clamp", "lo"): -0.5, ("clamp", "hi"): 0.5}
GROUP = 32  # groupnorm's columns per group (N // 32 groups: 256 at N = 8192)
WINDOW = 16  # the pools' window


def _row_step(name: str, N: int) -> str:
    if name == "groupnorm":
        return f"groupnorm({max(1, N // GROUP)})"
    if name in ("avgpool", "maxpool"):
        return f"{name}({WINDOW})"
    return name


@dataclass(frozen=True)
class Case:
    op: str  # the op's name; "identity" for `epilogue: bias`
    section: str  # "identity", "elementwise" or "row"
    repeats: int  # how many times the step is applied (0: identity)
    step: str  # the step as written
    text: str  # the spec

    @property
    def name(self) -> str:
        return f"opbench_{self.op}_{self.repeats}"


def _step(opdef: ops.OpDef) -> tuple[str, list[str]]:
    """An op's step, with the declarations its required arguments need."""
    decls, args = [], []
    for p in opdef.params:
        if p.default is not None:
            continue
        if p.type is ops.ArgType.TILE:
            decls.append(f"input {p.name}: [M, N]")
        else:
            value = _VALUES.get((opdef.name, p.name), 0.5)
            decls.append(f"param {p.name}: float = {value}")
        args.append(p.name)
    return (f"{opdef.name}({', '.join(args)})" if args else opdef.name), decls


def _spec(step: str, decls: Sequence[str], repeats: int) -> str:
    body = "; ".join(["bias", *[step] * repeats])
    return (
        "\n".join(["gemm: linear(in_features, out_features)", *decls, f"epilogue: {body}"]) + "\n"
    )


def cases(
    row_ops: bool = False, only: Sequence[str] | None = None, N: int = DEFAULT_SHAPE.N
) -> list[Case]:
    """The identity case, then each op once and four times (and each row op once, for
    N columns)."""
    out = [Case("identity", "identity", 0, "bias", _spec("", [], 0))]
    for opdef in ops.OPS.values():
        if not (opdef.step and opdef.public) or opdef.name == "bias":
            continue
        if only and opdef.name not in only:
            continue
        step, decls = _step(opdef)
        for n in REPEATS:
            out.append(Case(opdef.name, "elementwise", n, step, _spec(step, decls, n)))
    if row_ops:
        for name in ops.ROW_OPS:
            if only and name not in only:
                continue
            step = _row_step(name, N)
            out.append(Case(name, "row", 1, step, _spec(step, [], 1)))
    return out


@dataclass
class Built:
    case: Case
    path: Path | None = None
    error: str | None = None
    instrs: int = 0  # IR instructions of the epilogue (after the gemm)


def build_cases(todo: Sequence[Case], directory: Path) -> list[Built]:
    """Compile each case's spec and write its module under `directory`; a case that
    does not build keeps its error (the rest still run)."""
    from kgen.build import compile_spec, write_atomic
    from kgen.errors import SpecError

    built = []
    for case in todo:
        try:
            compiled = compile_spec(case.text, f"{case.name}.fuse")
        except SpecError as error:
            built.append(Built(case, error=f"does not build: {error}"))
            continue
        path = directory / f"{case.name}.py"
        write_atomic(path, compiled.source)
        built.append(Built(case, path, instrs=len(compiled.kernel.body) - 1))
    return built


# ---------------------------------------------------------------------------
# Running a module


def _operands(
    module: Any, shape: Shape, dtype: torch.dtype, device: str, base: dict[str, torch.Tensor]
) -> tuple[list[Any], Callable[..., Any]]:
    """The call of a module's kernel on the shared inputs `base` (x, weight, bias, and an
    [M, N] tensor for every [M, N] operand): (values, plan maker)."""
    op = module._OP
    M, N = shape.M, shape.N
    sizes = {"tile": (M, N), "col": (N,), "row": (M,), "scalar": ()}
    tensors = [base["x"], base["weight"], base["bias"]]
    for name, kind, _ in op.operands[3:]:
        if kind == "tile":
            tensors.append(base["tile"])
        elif name.endswith("_weight"):
            tensors.append(torch.ones(sizes[kind], device=device, dtype=dtype))
        else:
            tensors.append(torch.full(sizes[kind], 0.5, device=device, dtype=dtype))
    floats = [float(d) if d is not None else 0.5 for _, d in op.floats]
    return [*tensors, *floats], op.plan


def base_inputs(shape: Shape, dtype: torch.dtype, device: str, seed: int = 1) -> dict[str, Any]:
    """x, weight, bias and an [M, N] operand: `torch.randn`, the GEMM kept O(1)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(size, generator=gen, device=device) * scale).to(dtype)

    M, N, K = shape.M, shape.N, shape.K
    return {
        "x": randn(M, K),
        "weight": randn(N, K, scale=1.0 / math.sqrt(max(K, 1))),
        "bias": randn(N),
        "tile": randn(M, N),
    }


def _plan(
    path: Path, shape: Shape, dtype: torch.dtype, device: str, config: configs.Config, base: Any
) -> tuple[Any, list[Any]]:
    from kgen.build import import_file

    module = import_file(path, f"kgen_opbench_{path.stem}_{os.getpid()}_{id(base)}")
    call, plan = _operands(module, shape, dtype, device, base)
    return plan(*call, config=config), call


def identity_config(
    path: Path, shape: Shape, dtype: torch.dtype, device: str, base: Any
) -> configs.Config:
    """The configuration a call of the identity kernel gets at this shape (its module
    has no tuning file: the heuristic's)."""
    from kgen.build import import_file
    from kgen.runtime import devices

    module = import_file(path, f"kgen_opbench_{path.stem}_config")
    x, w = base["x"], base["weight"]
    tma = devices.tma_ready(x, w)
    config: configs.Config = module._OP.choose(shape.M, shape.N, shape.K, dtype, tma, x.device)
    return config


def _warm(task: tuple[str, str, tuple[int, int, int], configs.Config, str]) -> tuple[str, float]:
    """In a worker: import a module and run it once with the configuration (compiles
    its kernels into Triton's on-disk cache). Returns (path, seconds) or raises."""
    path, dtype_name, mnk, config, device = task
    dtype = getattr(torch, dtype_name)
    shape = Shape(*mnk)
    begin = time.perf_counter()
    base = _warm_base(shape, dtype, device)
    plan, call = _plan(Path(path), shape, dtype, device, config, base)
    plan.run(call)
    if device == "cuda":
        torch.cuda.synchronize()
    return path, time.perf_counter() - begin


_BASES: dict[tuple[Shape, torch.dtype, str], dict[str, Any]] = {}


def _warm_base(shape: Shape, dtype: torch.dtype, device: str) -> dict[str, Any]:
    key = (shape, dtype, device)
    if key not in _BASES:
        _BASES.clear()  # one shape and dtype's inputs at a time
        _BASES[key] = base_inputs(shape, dtype, device)
    return _BASES[key]


def precompile(
    tasks: Sequence[tuple[str, str, tuple[int, int, int], configs.Config, str]],
    workers: int,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Compile the tasks' kernels in `workers` spawned processes (Triton's on-disk cache
    is shared); {path: error} for the tasks that failed there (they fail again, with the
    error, when timed)."""
    if workers <= 1 or not tasks:
        return {}
    errors: dict[str, str] = {}
    begin = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_warm, t): t[0] for t in tasks}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            try:
                future.result()
            except Exception as error:  # a kernel that does not compile or run
                errors[futures[future]] = f"{type(error).__name__}: {error}"[:300]
            if done % 20 == 0 or done == len(tasks):
                log(f"  compiled {done}/{len(tasks)} ({time.perf_counter() - begin:.0f} s)")
    return errors


# ---------------------------------------------------------------------------
# Timing


@dataclass
class Row:
    op: str
    section: str
    repeats: int
    step: str
    dtype: str
    M: int
    N: int
    K: int
    config: list[Any]
    ms: float | None  # this kernel's median time
    t0_ms: float  # the identity kernel's (median of its runs)
    cost_pct: float | None  # per application, in % of t0
    instrs: int = 0
    error: str | None = None
    device: str = ""
    run: str = ""


def _timer(device: str, quick: bool) -> Callable[[Callable[[], Any]], float]:
    if device == "cuda":
        from kgen.tune import median_ms

        if quick:
            return lambda fn: median_ms(fn, warmup=2, rep=5)
        return lambda fn: median_ms(fn, warmup=25, rep=100)

    def wall_ms(fn: Callable[[], Any]) -> float:  # the interpreter: a smoke test
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3

    return wall_ms


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    identity_ms: dict[str, list[float]] = field(default_factory=dict)  # dtype -> runs


def run(
    built: Sequence[Built],
    shape: Shape,
    dtypes: Sequence[str],
    device: str,
    workers: int = 0,
    quick: bool = False,
    log: Callable[[str], None] = print,
    run_label: str = "",
) -> Result:
    """Time every built case at `shape` in each dtype (see the module's docstring)."""
    result = Result()
    timer = _timer(device, quick)
    identity = next(b for b in built if b.case.section == "identity")
    if identity.path is None:
        raise RuntimeError(f"the identity kernel does not build: {identity.error}")
    gpu = torch.cuda.get_device_name() if device == "cuda" else "interpreter"
    mnk = (shape.M, shape.N, shape.K)
    configs_by_dtype: dict[str, configs.Config] = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        base = base_inputs(shape, dtype, device)
        configs_by_dtype[name] = identity_config(identity.path, shape, dtype, device, base)
        log(f"{name} {shape}: configuration {configs_by_dtype[name]} (identity's heuristic)")
    tasks = [
        (str(b.path), name, mnk, _for(b.case, configs_by_dtype[name]), device)
        for name in dtypes
        for b in built
        if b.path is not None
    ]
    begin = time.perf_counter()
    warm_errors = precompile(tasks, workers, log)
    if workers > 1:
        log(f"precompiled {len(tasks)} kernels in {time.perf_counter() - begin:.0f} s")
    for name in dtypes:
        config = configs_by_dtype[name]
        t0_runs, times = _time_dtype(
            built, identity, shape, getattr(torch, name), device, config, timer, warm_errors
        )
        result.identity_ms[name] = t0_runs
        t0 = statistics.median(t0_runs)
        result.rows.append(
            Row("identity", "identity", 0, "bias", name, *mnk, list(config), t0, t0, 0.0,
                identity.instrs, device=gpu, run=run_label)
        )  # fmt: skip
        for b, ms, error in times:
            n = b.case.repeats
            cost = None if ms is None else 100.0 * (ms - t0) / n / t0
            result.rows.append(
                Row(b.case.op, b.case.section, n, b.case.step, name, *mnk,
                    list(_for(b.case, config)), ms, t0, cost, b.instrs, error, gpu, run_label)
            )  # fmt: skip
        spread = (max(t0_runs) - min(t0_runs)) / t0 * 100
        log(
            f"{name}: identity {t0 * 1e3:.1f} us (median of {len(t0_runs)} runs, "
            f"spread {spread:.1f} %)"
        )
    return result


def _time_dtype(
    built: Sequence[Built],
    identity: Built,
    shape: Shape,
    dtype: torch.dtype,
    device: str,
    config: configs.Config,
    timer: Callable[[Callable[[], Any]], float],
    warm_errors: dict[str, str],
) -> tuple[list[float], list[tuple[Built, float | None, str | None]]]:
    """One dtype's timings: the identity kernel's runs, and (case, ms, error) per case."""
    base = base_inputs(shape, dtype, device)

    def time_case(b: Built) -> float:
        assert b.path is not None
        plan, call = _plan(b.path, shape, dtype, device, _for(b.case, config), base)
        return timer(lambda: plan.run(call))

    assert identity.path is not None
    plan0, call0 = _plan(identity.path, shape, dtype, device, config, base)
    t0_runs = [timer(lambda: plan0.run(call0))]
    times: list[tuple[Built, float | None, str | None]] = []
    ops_seen = 0
    for b in built:
        if b.case.section == "identity":
            continue
        error = b.error or (warm_errors.get(str(b.path)) if b.path else None)
        ms = None
        if error is None:
            try:
                ms = time_case(b)
            except Exception as exc:  # one op's failure does not stop the run
                error = f"{type(exc).__name__}: {exc}"[:300]
        times.append((b, ms, error))
        if b.case.repeats == REPEATS[-1] or b.case.section == "row":
            ops_seen += 1
            if ops_seen % IDENTITY_EVERY == 0:
                t0_runs.append(timer(lambda: plan0.run(call0)))
    t0_runs.append(timer(lambda: plan0.run(call0)))
    return t0_runs, times


def _for(case: Case, config: configs.Config) -> configs.Config:
    """Row operations do not split K (kgen/configs.py): the same tiles, split_k 1."""
    return (*config[:7], 1) if case.section == "row" else config


# ---------------------------------------------------------------------------
# Reporting


def _cell(row: Row | None) -> str:
    if row is None:
        return "–"
    if row.error:
        return "error"
    return "–" if row.cost_pct is None else f"{row.cost_pct:+.1f}"


def table(rows: Sequence[Row]) -> str:
    """Markdown: per op, its cost per application in % of the identity kernel, from four
    applications (×4) and from one (×1), per dtype; row ops (once) in a section after."""
    dtypes = list(dict.fromkeys(r.dtype for r in rows))
    short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    by = {(r.op, r.section, r.repeats, r.dtype): r for r in rows}
    ident = {d: by.get(("identity", "identity", 0, d)) for d in dtypes}
    first = rows[0] if rows else None
    lines = []
    if first is not None:
        t0s = ", ".join(
            f"{short.get(d, d)} {r.t0_ms * 1e3:.1f} µs" for d, r in ident.items() if r is not None
        )
        lines.append(
            f"{first.M}×{first.N}×{first.K} on {first.device}, configuration "
            f"{tuple(first.config)}; identity kernel (`bias`): {t0s}."
        )
        lines.append("")
    head = ["op", "step"]
    for d in dtypes:
        head += [f"{short.get(d, d)} % ×4", f"{short.get(d, d)} % ×1"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ops_ = list(dict.fromkeys(r.op for r in rows if r.section == "elementwise"))
    for op in ops_:
        cells = [op, f"`{by_step(rows, op)}`"]
        for d in dtypes:
            for n in (4, 1):
                r = by.get((op, "elementwise", n, d))
                cells.append(_cell(r))
        lines.append("| " + " | ".join(cells) + " |")
    row_ops = list(dict.fromkeys(r.op for r in rows if r.section == "row"))
    if row_ops:
        lines += ["", "| row op | step | " + " | ".join(f"{short.get(d, d)} %" for d in dtypes)]
        lines[-1] += " |"
        lines.append("|" + "---|" * (2 + len(dtypes)))
        for op in row_ops:
            cells = [op, f"`{by_step(rows, op)}`"]
            for d in dtypes:
                r = by.get((op, "row", 1, d))
                cells.append(_cell(r))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_step(rows: Sequence[Row], op: str) -> str:
    return next(r.step for r in rows if r.op == op)


def summary(rows: Sequence[Row]) -> str:
    """A few lines: the costliest ops per dtype, and any errors."""
    lines = []
    for d in dict.fromkeys(r.dtype for r in rows):
        timed = [r for r in rows if r.dtype == d and r.section == "elementwise" and r.repeats == 4]
        ok = sorted((r for r in timed if r.cost_pct is not None), key=lambda r: -(r.cost_pct or 0))
        top = ", ".join(f"{r.op} {r.cost_pct:+.1f}%" for r in ok[:6])
        lines.append(f"{d}: {len(ok)}/{len(timed)} ops timed; costliest per application: {top}")
    for r in rows:
        if r.error:
            lines.append(f"error: {r.op} ×{r.repeats} {r.dtype}: {r.error}")
    return "\n".join(lines)


def write(rows: Sequence[Row], jsonl: Path) -> Path:
    """Append the rows to `jsonl` (one JSON object per line) and write the table
    beside it (`.md`); returns the table's path."""
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    with jsonl.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(asdict(r)) + "\n")
    md = jsonl.with_suffix(".md")
    md.write_text(table(rows) + "\n", encoding="utf-8")
    return md


def main(
    shapes: Sequence[Shape],
    dtypes: Sequence[str],
    device: str,
    results: Path,
    row_ops: bool = False,
    only: Sequence[str] | None = None,
    workers: int | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Build the cases into a temporary directory, time them for each shape, write the
    results; returns the rows."""
    if workers is None:
        workers = min(16, os.cpu_count() or 1) if device == "cuda" else 0
    label = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kgen-opbench-") as tmp:
        for i, shape in enumerate(shapes):
            begin = time.perf_counter()
            directory = Path(tmp) / str(i)
            directory.mkdir()
            built = build_cases(cases(row_ops, only, shape.N), directory)
            log(f"built {len(built)} modules in {time.perf_counter() - begin:.0f} s")
            result = run(built, shape, dtypes, device, workers, quick, log, label)
            rows += result.rows
    md = write(rows, results)
    print(table(rows))
    print(summary(rows))
    log(f"rows appended to {results}; table in {md}")
    return rows
