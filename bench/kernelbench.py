"""KernelBench level 2: kgen against the problems' own PyTorch models, on a CUDA GPU.

    python bench/kernelbench.py [--problems 9,12,...] [--dtypes float16,bfloat16,float32]
                                [--out DIR] [--tuned] [--workers N] [--rep MS]
    TRITON_INTERPRET=1 python bench/kernelbench.py --device cpu   # a smoke run, tiny sizes

Each problem of KernelBench's level 2 (github.com/ScalingIntelligence/KernelBench, MIT
licence; the files under bench/kernelbench/reference/ are verbatim copies) whose model
is one GEMM followed only by what kgen's language expresses is written as a spec,
bench/kernelbench/<number>_<name>.fuse. For each problem and dtype this script

1. builds the spec into a temporary directory (kgen's own pipeline; generated/ stays
   for specs/), imports it, and -- before any timing -- compiles every module's kernels
   in parallel processes (Triton's on-disk cache is shared, so this process finds them);
2. constructs KernelBench's `Model(*get_init_inputs())` from the problem's own file, in
   eval mode (only problem 66's dropout cares: the identity at inference), in the dtype,
   and a kgen `ModelNew` from the same init arguments, with the Model's weights copied in;
3. checks that the outputs agree on KernelBench's `get_inputs()` (cast to the dtype, as
   KernelBench's harness casts them): kgen's largest error against the same Model in
   float64 (same rounded weights and inputs) must be at most twice eager's own, plus one
   rounding of the output's largest value -- or else pass KernelBench's own check,
   allclose(eager, atol = rtol = 1e-2 for fp16/bf16, 1e-4 for fp32). Both are reported;
4. times, at the problem's own sizes (kgen.tune.median_ms: GPU time, L2 flushed):
   eager (the Model), kgen with its heuristic configuration, with `--tuned` kgen after
   `kgen tune` at this shape, and eager's GEMM alone (F.linear at the same shape and
   dtype, with the Linear's bias when it has one), so the epilogue's share of eager's
   time, (eager - gemm) / eager, is known. The issue's targets: eager/kgen >= 1.0 where
   that share is under 10 %, else >= 1.10; fp32 (kgen's default tf32x3 against PyTorch's
   strict fp32) >= 1.5.

Writes DIR/kernelbench.jsonl (one object per problem and dtype, appended) and
DIR/kernelbench.md (the tables), and prints a summary. Problems left out, and why:
bench/kernelbench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent / "kernelbench"
REFERENCE = HERE / "reference"
DTYPES = ("float16", "bfloat16", "float32")
SHORT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
KERNELBENCH_TOL = {"float16": 1e-2, "bfloat16": 1e-2, "float32": 1e-4}  # its eval.py
# The problems' own parameters whose names differ in the spec (`bias` is the linear's)
RENAME: dict[int, dict[str, str]] = {37: {"bias": "extra_bias"}, 94: {"bias": "extra_bias"}}
# --device cpu: the sizes the problems' files set, made tiny for Triton's interpreter
TINY = {
    "batch_size": 16,
    "in_features": 64,
    "input_size": 64,
    "out_features": 1024,
    "hidden_size": 1024,
    "output_size": 1024,
}


@dataclass(frozen=True)
class Problem:
    number: int
    spec: Path
    source: Path  # KernelBench's file

    @property
    def label(self) -> str:
        return self.source.stem


def problems() -> dict[int, Problem]:
    """Every spec of bench/kernelbench/ with its KernelBench file, by number."""
    found = {}
    for spec in sorted(HERE.glob("*.fuse")):
        number = int(spec.name.split("_")[0])
        (source,) = REFERENCE.glob(f"{number}_*.py")
        found[number] = Problem(number, spec, source)
    return dict(sorted(found.items()))


def load(problem: Problem, tiny: bool = False) -> dict[str, Any]:
    """The problem file's namespace (Model, get_inputs, get_init_inputs, its sizes),
    executed as KernelBench executes it; `tiny`: with the sizes of TINY."""
    text = problem.source.read_text(encoding="utf-8")
    if tiny:
        pattern = r"^(" + "|".join(TINY) + r")(\s*=\s*)\d+"
        text = re.sub(pattern, lambda m: f"{m[1]}{m[2]}{TINY[m[1]]}", text, flags=re.M)
    namespace: dict[str, Any] = {"__name__": f"kernelbench_level2_{problem.number}"}
    exec(compile(text, str(problem.source), "exec"), namespace)
    return namespace


def gemm_shape(namespace: dict[str, Any]) -> tuple[int, int, int]:
    """(M, N, K): every selected problem's first two init arguments are the GEMM's in
    and out sizes, and its inputs' first dimension is `batch_size`."""
    init = namespace["get_init_inputs"]()
    return int(namespace["batch_size"]), int(init[1]), int(init[0])


# ---------------------------------------------------------------------------
# Building and precompiling


@dataclass
class Built:
    problem: Problem
    kernel: Any
    path: Path
    module: ModuleType | None = None


def build(todo: list[Problem], directory: Path) -> dict[int, Built]:
    from kgen.build import compile_spec, read_spec, write_atomic

    built = {}
    for p in todo:
        compiled = compile_spec(read_spec(p.spec), p.spec.name)
        path = directory / f"{compiled.kernel.name}.py"
        write_atomic(path, compiled.source)
        built[p.number] = Built(p, compiled.kernel, path)
    return built


def import_module(path: Path) -> ModuleType:
    from kgen.build import import_file

    return import_file(path, f"kgen_kb_{path.stem}")


def _warm(task: tuple[str, str, str, tuple[int, int, int], str]) -> float:
    """In a worker: call a module's function once at the shape and dtype (heuristic
    configuration), which compiles its kernels into Triton's on-disk cache."""
    from kgen.build import compile_spec, import_file
    from kgen.tune import Shape, inputs

    path, spec_text, dtype_name, mnk, device = task
    begin = time.perf_counter()
    kernel = compile_spec(spec_text, "spec.fuse").kernel
    module = import_file(Path(path), f"kgen_kb_warm_{Path(path).stem}_{dtype_name}")
    args, floats = inputs(kernel, Shape(*mnk), getattr(torch, dtype_name), device)
    getattr(module, kernel.name)(*args, **floats)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def precompile(tasks: list[tuple[str, str, str, tuple[int, int, int], str]], workers: int) -> None:
    if workers <= 1 or not tasks:
        return
    begin = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_warm, t): t for t in tasks}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            try:
                future.result()
            except Exception as error:  # reported again, with context, when it runs here
                name = Path(futures[future][0]).stem
                print(f"  precompile {name} {futures[future][2]}: {error}"[:300], flush=True)
            if done % 20 == 0 or done == len(tasks):
                elapsed = time.perf_counter() - begin
                print(f"  compiled {done}/{len(tasks)} ({elapsed:.0f} s)", flush=True)


# ---------------------------------------------------------------------------
# One problem in one dtype


@dataclass
class Row:
    problem: int
    file: str
    spec: str
    dtype: str
    M: int
    N: int
    K: int
    ok: bool = False
    kb_allclose: bool = False
    err_kgen: float = math.nan  # max |out - float64 Model|
    err_eager: float = math.nan
    eager_ms: float | None = None
    kgen_ms: float | None = None
    kgen_tuned_ms: float | None = None
    gemm_ms: float | None = None
    epilogue_share: float | None = None  # (eager - gemm) / eager
    speedup: float | None = None  # eager / kgen
    speedup_tuned: float | None = None
    target: float | None = None
    met: bool | None = None
    config: list[Any] | None = None
    tuned_config: list[Any] | None = None
    error: str | None = None
    device: str = ""
    run: str = ""
    notes: list[str] = field(default_factory=list)


def copy_weights(model: nn.Module, ours: nn.Module, number: int) -> None:
    """The KernelBench Model's parameters into kgen's ModelNew: the Linear's weight and
    bias (or the Model's own `weight`), GroupNorms' affine parameters in order, and the
    Model's own parameters by name (RENAME). Every parameter of ours must be set once."""
    targets = dict(ours.named_parameters())
    done: set[str] = set()

    def put(name: str, value: torch.Tensor) -> None:
        if name not in targets:
            raise KeyError(f"kgen's module has no parameter {name!r}")
        if name in done:
            raise KeyError(f"parameter {name!r} set twice")
        with torch.no_grad():
            targets[name].copy_(value.reshape(targets[name].shape))
        done.add(name)

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) > 1:
        raise ValueError("more than one Linear")
    if linears:
        put("weight", linears[0].weight)
        if linears[0].bias is not None:
            put("bias", linears[0].bias)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    for i, norm in enumerate(norms):
        prefix = "groupnorm" if i == 0 else f"groupnorm{i + 1}"
        put(f"{prefix}_weight", norm.weight)
        put(f"{prefix}_bias", norm.bias)
    for name, value in model._parameters.items():
        if value is not None:
            put(RENAME.get(number, {}).get(name, name), value)
    missing = set(targets) - done
    if missing:
        raise KeyError(f"kgen's parameters {sorted(missing)} have no counterpart in Model")


def eager_gemm(model: nn.Module, x: torch.Tensor) -> Any:
    """Eager's GEMM alone at the problem's shape: F.linear with the Linear's bias (the
    addmm nn.Linear runs), or x @ W^T for a Model that holds the weight itself."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weight = linears[0].weight if linears else model.weight
    bias = linears[0].bias if linears else None
    return lambda: F.linear(x, weight, bias)


def _max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().nan_to_num(math.inf).max().item())


def run_case(
    built: Built,
    namespace: dict[str, Any],
    dtype_name: str,
    device: str,
    timer: Any,
    tuned: bool,
    label: str,
) -> Row:
    from kgen import tune
    from kgen.runtime import devices

    problem, kernel = built.problem, built.kernel
    assert built.module is not None
    M, N, K = gemm_shape(namespace)
    dtype = getattr(torch, dtype_name)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "interpreter"
    row = Row(problem.number, problem.source.name, problem.spec.name, dtype_name, M, N, K)
    row.device, row.run = gpu, label
    init = namespace["get_init_inputs"]()
    torch.manual_seed(0)
    with torch.device(device):  # made where they run (a 32768^2 Linear is slow on a CPU)
        model = namespace["Model"](*init)
        ours = built.module.ModelNew(*init)
    model = model.eval().to(device=device, dtype=dtype)
    ours = ours.to(device=device, dtype=dtype)
    copy_weights(model, ours, problem.number)
    torch.manual_seed(1)
    inputs = [
        t.to(device=device, dtype=dtype) if isinstance(t, torch.Tensor) else t
        for t in namespace["get_inputs"]()
    ]
    with torch.no_grad():
        want = model(*inputs)
        got = ours(*inputs)
        reference = copy.deepcopy(model).double()
        ref = reference(*[t.double() if isinstance(t, torch.Tensor) else t for t in inputs])
        del reference
    if got.shape != want.shape:
        row.error = f"shape {tuple(got.shape)}, KernelBench's {tuple(want.shape)}"
        return row
    tol = KERNELBENCH_TOL[dtype_name]
    row.kb_allclose = bool(torch.allclose(got, want, atol=tol, rtol=tol))
    row.err_kgen, row.err_eager = _max_err(got, ref), _max_err(want, ref)
    floor = torch.finfo(dtype).eps * float(ref.abs().nan_to_num(0).max().item())
    row.ok = row.kb_allclose or row.err_kgen <= 2 * row.err_eager + floor
    x = inputs[0]
    tma = devices.tma_ready(x.reshape(-1, x.shape[-1]), ours.weight)
    row.config = list(ours_op(built).choose(M, N, K, dtype, tma, x.device))
    if dtype_name == "float32":
        row.notes.append(f"eager allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
        row.notes.append(f"kgen precision {kernel.precision}")
    if timer is None:
        return row
    with torch.no_grad():
        row.eager_ms = timer(lambda: model(*inputs))
        row.kgen_ms = timer(lambda: ours(*inputs))
        row.gemm_ms = timer(eager_gemm(model, x))
        if tuned:
            shape = tune.Shape(M, N, K)
            best, _ = tune.tune_case(built.module, kernel, shape, dtype)
            if best is not None:
                path = tune.tuning_path(built.path.parent, kernel)
                tune.record(path, torch.cuda.get_device_name(), dtype, shape, best.config)
                ours_op(built).tuning = devices.load_tuning(str(path))
                ours_op(built).forget()
                row.tuned_config = list(best.config)
                row.kgen_tuned_ms = timer(lambda: ours(*inputs))
    row.epilogue_share = (row.eager_ms - row.gemm_ms) / row.eager_ms
    row.speedup = row.eager_ms / row.kgen_ms
    if row.kgen_tuned_ms:
        row.speedup_tuned = row.eager_ms / row.kgen_tuned_ms
    if dtype_name == "float32":
        row.target = 1.5
    else:
        row.target = 1.0 if row.epilogue_share < 0.10 else 1.10
    row.met = max(row.speedup, row.speedup_tuned or 0.0) >= row.target
    return row


def ours_op(built: Built) -> Any:
    assert built.module is not None
    return built.module._OP


# ---------------------------------------------------------------------------
# Reporting


def _f(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def tables(rows: list[Row]) -> str:
    where = rows[0].device if rows else ""
    lines = [
        f"KernelBench level 2 on {where} (run {rows[0].run if rows else ''}): GPU medians "
        "(kgen.tune.median_ms), eager = the problem's Model; epilogue share = (eager - "
        "GEMM) / eager, GEMM = F.linear alone; target: 1.0 (share < 10 %), else 1.10; "
        "fp32 1.5. check: kgen's max error against the float64 Model at most 2x eager's "
        "(+ one output rounding), or KernelBench's allclose.",
        "",
        "| # | problem | dtype | M×N×K | eager µs | kgen µs | eager/kgen | tuned | GEMM µs "
        "| epilogue share | target | met | check (err kgen / eager) |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.problem} | {r.file[:-3]} | {SHORT[r.dtype]} | error: {r.error} |")
            continue
        check = ("ok" if r.ok else "FAIL") + f" ({r.err_kgen:.2g} / {r.err_eager:.2g})"
        met = "–" if r.met is None else ("yes" if r.met else "no")
        share = "–" if r.epilogue_share is None else f"{100 * r.epilogue_share:.0f} %"
        lines.append(
            f"| {r.problem} | {r.file[:-3]} | {SHORT[r.dtype]} | {r.M}×{r.N}×{r.K} "
            f"| {_f(r.eager_ms and r.eager_ms * 1e3, '.1f')} "
            f"| {_f(r.kgen_ms and r.kgen_ms * 1e3, '.1f')} | {_f(r.speedup, '.2f')} "
            f"| {_f(r.speedup_tuned, '.2f')} | {_f(r.gemm_ms and r.gemm_ms * 1e3, '.1f')} "
            f"| {share} | {_f(r.target, '.2f')} | {met} | {check} |"
        )
    dtypes = list(dict.fromkeys(r.dtype for r in rows))
    by = {(r.problem, r.dtype): r for r in rows}
    head = " | ".join(f"{SHORT[d]} eager/kgen (share)" for d in dtypes)
    lines += ["", f"| # | problem | {head} |", "|" + "---|" * (2 + len(dtypes))]
    for number in dict.fromkeys(r.problem for r in rows):
        cells = []
        for d in dtypes:
            r = by.get((number, d))
            if r is None or r.speedup is None or r.epilogue_share is None:
                cells.append("error" if r is not None and r.error else "–")
                continue
            mark = "" if r.met else " ✗"
            cells.append(f"{r.speedup:.2f}{mark} ({100 * r.epilogue_share:.0f} %)")
        name = next(r.file[:-3] for r in rows if r.problem == number)
        lines.append(f"| {number} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    lines = []
    for d in dict.fromkeys(r.dtype for r in rows):
        mine = [r for r in rows if r.dtype == d]
        timed = [r for r in mine if r.speedup]
        checked = sum(r.ok for r in mine)
        line = f"{SHORT[d]}: {checked}/{len(mine)} agree with KernelBench's Model"
        if timed:
            geo = math.exp(statistics.fmean(math.log(r.speedup or 1.0) for r in timed))
            met = sum(bool(r.met) for r in timed)
            line += f"; eager/kgen geomean {geo:.2f}, target met {met}/{len(timed)}"
            worst = sorted(timed, key=lambda r: r.speedup or 0.0)[:3]
            line += "; lowest " + ", ".join(f"#{r.problem} {r.speedup:.2f}" for r in worst)
        lines.append(line)
    for r in rows:
        if r.error or not r.ok:
            why = r.error or f"err kgen {r.err_kgen:.3g} vs eager {r.err_eager:.3g}"
            lines.append(f"problem {r.problem} {r.dtype}: {why}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", help="numbers, e.g. 12,53,99 (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--out", type=Path, default=Path("bench/results"), metavar="DIR")
    parser.add_argument("--tuned", action="store_true", help="also time after `kgen tune`")
    parser.add_argument("--workers", type=int, default=None, help="precompile processes")
    parser.add_argument("--rep", type=float, default=100.0, help="median_ms's rep (ms)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--full", action="store_true", help="--device cpu: the real sizes")
    parser.add_argument(
        "--budget-s", type=float, default=1e9, help="start no problem after this many seconds"
    )
    args = parser.parse_args()
    every = problems()
    todo = list(every.values())
    if args.problems:
        numbers = [int(n) for n in args.problems.split(",") if n.strip()]
        unknown = [n for n in numbers if n not in every]
        if unknown:
            parser.error(f"no spec for problem(s) {unknown}: choose from {sorted(every)}")
        todo = [every[n] for n in numbers]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"unknown dtype {d!r}: choose from {', '.join(DTYPES)}")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--device cpu runs in Triton's interpreter: set TRITON_INTERPRET=1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device (a smoke run: TRITON_INTERPRET=1 ... --device cpu)")
    tiny = args.device == "cpu" and not args.full
    workers = args.workers
    if workers is None:
        workers = min(16, os.cpu_count() or 1) if args.device == "cuda" else 0
    timer = None
    if args.device == "cuda":
        from kgen.tune import median_ms

        def timer(fn: Any) -> float:
            return median_ms(fn, warmup=max(5.0, args.rep / 4), rep=args.rep)

    label = time.strftime("%Y-%m-%dT%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl, md = args.out / "kernelbench.jsonl", args.out / "kernelbench.md"
    rows: list[Row] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kgen-kernelbench-") as tmp:
        built = build(todo, Path(tmp))
        spaces = {p.number: load(p, tiny) for p in todo}
        print(f"built {len(built)} specs ({time.perf_counter() - began:.0f} s)", flush=True)
        if workers > 1:
            tasks = [
                (str(b.path), b.problem.spec.read_text(), d, gemm_shape(spaces[n]), args.device)
                for n, b in built.items()
                for d in dtypes
            ]
            precompile(tasks, workers)
            print(f"precompiled ({time.perf_counter() - began:.0f} s)", flush=True)
        for n, b in built.items():
            if time.perf_counter() - began > args.budget_s:
                print(f"budget spent: stopping before problem {n}", flush=True)
                break
            b.module = import_module(b.path)
            for d in dtypes:
                try:
                    row = run_case(b, spaces[n], d, args.device, timer, args.tuned, label)
                except Exception as error:  # one problem's failure does not stop the run
                    M, N, K = gemm_shape(spaces[n])
                    row = Row(n, b.problem.source.name, b.problem.spec.name, d, M, N, K)
                    row.error = f"{type(error).__name__}: {error}"[:300]
                    traceback.print_exc()
                rows.append(row)
                with jsonl.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(row)) + "\n")
                speed = f"eager/kgen {row.speedup:.2f}" if row.speedup else ""
                state = row.error or ("ok" if row.ok else "MISMATCH")
                print(f"#{n} {SHORT[d]}: {state} {speed}", flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
    md.write_text(tables(rows) + "\n", encoding="utf-8")
    print(tables(rows))
    print(summary(rows))
    print(f"{len(rows)} rows appended to {jsonl}; tables in {md}")
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0 if all(r.ok and not r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
