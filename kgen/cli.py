"""The `kgen` command: build, check and show specs.

    kgen build SPEC... [-o DIR]          write DIR/<name>.py for each spec (DIR: generated/)
    kgen build --check SPEC... [-o DIR]  exit 1 naming the modules that are stale
    kgen show SPEC [--ir | --source]     print the IR or the generated module
    kgen check FILE...                   verify Triton modules (kgen/check.py has the rules)
    kgen tune SPEC... --shapes MxNxK,... [--dtypes ...]   GPU: record the fastest configs
    kgen bench SPEC... --shapes MxNxK,... [--dtypes ...]  GPU: kgen vs cuBLAS, eager, compile
    kgen bench --ops [--row-ops] [--shapes ...] [--dtypes ...]  GPU: each op's cost

Exit status: 0 success, 1 errors in a spec (or stale modules, or check findings), 2 usage.
Errors print as `FILE:LINE:COL: error: message`, the line and a caret; check findings as
`FILE:LINE: rule: message`; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from kgen import __version__
from kgen.build import build, compile_spec, import_file, read_spec
from kgen.check import check_files
from kgen.errors import Diagnostic, EncodingError, SpecError, format_diagnostic, format_error
from kgen.ir import format_kernel

DEFAULT_OUT = Path("generated")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kgen", description="Compile .fuse specs to fused Triton GEMM kernels."
    )
    parser.add_argument("--version", action="version", version=f"kgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = commands.add_parser("build", help="build generated modules from specs")
    b.add_argument("specs", nargs="+", type=Path, metavar="SPEC", help=".fuse files")
    b.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("generated"),
        metavar="DIR",
        help="output directory (default: generated/)",
    )
    b.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a module in DIR differs from what kgen builds",
    )

    s = commands.add_parser("show", help="print a spec's IR or generated source")
    s.add_argument("spec", type=Path, metavar="SPEC")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--ir", action="store_true", help="print the IR")
    what.add_argument("--source", action="store_true", help="print the module (default)")

    for name, help_ in (
        ("tune", "time launch configurations on this GPU; record the best beside the module"),
        ("bench", "time kgen against torch.mm, eager PyTorch and torch.compile on this GPU"),
    ):
        g = commands.add_parser(name, help=help_)
        bench = name == "bench"
        g.add_argument(
            "specs",
            nargs="*" if bench else "+",
            type=Path,
            metavar="SPEC",
            help=".fuse files" + (" (none with --ops)" if bench else ""),
        )
        g.add_argument(
            "--shapes",
            required=not bench,
            metavar="MxNxK,...",
            help="e.g. 2048x8192x8192,128x512x1024" + (" (--ops: 1024x8192x8192)" if bench else ""),
        )
        g.add_argument(
            "--dtypes",
            default=None if bench else "float16",
            metavar="DTYPE,...",
            help="float16, bfloat16, float32 (default: float16"
            + ("; --ops: float16,bfloat16)" if bench else ")"),
        )
        g.add_argument(
            "-o",
            "--out",
            type=Path,
            default=DEFAULT_OUT,
            metavar="DIR",
            help="the modules' directory",
        )
        if name == "bench":
            g.add_argument("--no-compile", action="store_true", help="skip torch.compile")
            g.add_argument(
                "--results",
                type=Path,
                default=None,
                metavar="JSON",
                help="append rows here (default: bench/results/<gpu>.json) and plot beside it; "
                "--ops: JSON lines (default: bench/results/<gpu>-ops.jsonl), table beside it (.md)",
            )
            o = g.add_argument_group("op costs (kgen/opbench.py)")
            o.add_argument(
                "--ops",
                action="store_true",
                help="time each epilogue op of the registry, once and four times after the "
                "GEMM, against the identity epilogue (no SPEC)",
            )
            o.add_argument("--row-ops", action="store_true", help="--ops: the row operations too")
            o.add_argument("--only", metavar="OP,...", help="--ops: these ops only")
            o.add_argument(
                "--workers",
                type=int,
                default=None,
                metavar="N",
                help="--ops: processes compiling in parallel (default: min(16, CPUs); 0: none)",
            )
            o.add_argument(
                "--quick",
                action="store_true",
                help="--ops: a smoke run, 32x64x64 unless --shapes says "
                "otherwise, few timing runs; with TRITON_INTERPRET=1 on the CPU",
            )

    c = commands.add_parser("check", help="statically verify Triton modules")
    c.add_argument("files", nargs="+", type=Path, metavar="FILE", help="Python modules")
    return parser


def _readable(paths: list[Path], parser: argparse.ArgumentParser) -> None:
    for path in paths:
        if path.is_dir():
            parser.error(f"'{path}' is a directory, not a spec")
        if not path.is_file():
            parser.error(f"cannot read spec '{path}': no such file")
        if path.suffix != ".fuse":
            parser.error(f"'{path}' is not a .fuse spec")


def _print_notes(path: Path, text: str, notes: tuple[Diagnostic, ...], stream: TextIO) -> None:
    for note in notes:
        print(
            format_diagnostic(str(path), text, note.span, note.severity, note.message), file=stream
        )


def _build(args: argparse.Namespace) -> int:
    report = build(args.specs, args.out, check=args.check)
    out = "" if args.out == DEFAULT_OUT else f" -o {args.out}"
    for r in report.results:
        if r.error is not None:
            print(format_error(str(r.path), r.text, r.error), file=sys.stderr)
            continue
        if not args.check:
            _print_notes(r.path, r.text, r.notes, sys.stderr)
        if r.clash is not None and r.compiled is not None:
            print(
                f"{r.path}: error: builds {r.compiled.kernel.name}.py, as {r.clash} does; "
                "give one of them another `name:`",
                file=sys.stderr,
            )
        elif r.write_error is not None:
            print(f"{r.path}: error: {r.write_error}", file=sys.stderr)
        elif r.stale:
            print(f"{r.output}: stale: rebuild with `kgen build {r.path}{out}`", file=sys.stderr)
        elif not args.check:
            print(f"{r.path} -> {r.output}")
    return 0 if report.ok else 1


def _show(args: argparse.Namespace) -> int:
    try:
        text = read_spec(args.spec)
        compiled = compile_spec(text, args.spec.name)
    except EncodingError as error:
        print(format_error(str(args.spec), error.text, error), file=sys.stderr)
        return 1
    except SpecError as error:
        print(format_error(str(args.spec), text, error), file=sys.stderr)
        return 1
    _print_notes(args.spec, text, compiled.kernel.notes, sys.stderr)
    sys.stdout.write(format_kernel(compiled.kernel) if args.ir else compiled.source)
    return 0


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for path in args.files:
        if path.is_dir():
            parser.error(f"'{path}' is a directory, not a Python module")
        if not path.exists():
            parser.error(f"cannot read '{path}': no such file")
    findings = check_files(args.files)
    for finding in findings:
        print(finding)
    files = len(args.files)
    checked = f"{files} file{'s' if files != 1 else ''} checked"
    if findings:
        count = f"{len(findings)} finding{'s' if len(findings) != 1 else ''}"
        where = len({f.path for f in findings})
        print(f"{checked}: {count} in {where} of them", file=sys.stderr)
        return 1
    print(f"{checked}, no findings", file=sys.stderr)
    return 0


def _gpu_cases(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> list[tuple[Any, ModuleType, list[Any], list[Any]]]:
    """(kernel, module, shapes, dtypes) per spec, for tune and bench: the modules in DIR
    must be current (what `kgen build` writes), and a CUDA GPU present."""
    import torch

    from kgen.tune import DTYPES

    if not args.specs:
        parser.error("the following arguments are required: SPEC")
    if args.shapes is None:
        parser.error("the following arguments are required: --shapes")
    shapes, dtypes = _shapes_dtypes(args, parser, "float16")
    if not torch.cuda.is_available():
        print(f"kgen {args.command}: needs a CUDA GPU; none is visible", file=sys.stderr)
        raise SystemExit(2)
    report = build(args.specs, args.out, check=True)
    cases = []
    for r in report.results:
        if r.error is not None:
            print(format_error(str(r.path), r.text, r.error), file=sys.stderr)
            raise SystemExit(1)
        if r.stale or r.compiled is None or r.output is None:
            print(f"{r.output}: stale: run `kgen build {r.path}` first", file=sys.stderr)
            raise SystemExit(1)
        module = import_file(r.output)
        cases.append((r.compiled.kernel, module, shapes, [DTYPES[d] for d in dtypes]))
    return cases


def _shapes_dtypes(
    args: argparse.Namespace, parser: argparse.ArgumentParser, dtypes_default: str
) -> tuple[list[Any], list[str]]:
    """--shapes and --dtypes, checked (usage errors exit 2)."""
    from kgen.tune import DTYPES, Shape

    try:
        shapes = [Shape.parse(s) for s in args.shapes.split(",") if s]
    except ValueError as error:
        parser.error(str(error))
    dtypes = [d.strip() for d in (args.dtypes or dtypes_default).split(",") if d.strip()]
    if not shapes:
        parser.error("--shapes names no shape (e.g. 2048x8192x8192)")
    if not dtypes:
        parser.error("--dtypes names no dtype (float16, bfloat16, float32)")
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"unknown dtype {d!r}: choose from {', '.join(DTYPES)}")
    return shapes, dtypes


# What running one case on the GPU can raise for a user's choice of shape (out of
# memory, say): reported as `kgen tune: ...`, exit 1, never a traceback.
_CASE_ERRORS = (RuntimeError, ValueError, OSError, MemoryError)


def _tune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from kgen import tune

    cases = _gpu_cases(args, parser)
    gpu = torch.cuda.get_device_name()
    for kernel, module, shapes, dtypes in cases:
        for dtype in dtypes:
            for shape in shapes:
                try:
                    best, results = tune.tune_case(module, kernel, shape, dtype)
                except _CASE_ERRORS as error:
                    where = f"{kernel.name} {shape} {str(dtype)[6:]}"
                    print(f"kgen tune: {where}: {error}", file=sys.stderr)
                    return 1
                timed = sum(1 for r in results if r.error is None)
                if best is None:
                    print(
                        f"{kernel.name} {shape} {str(dtype)[6:]}: no candidate ran", file=sys.stderr
                    )
                    return 1
                path = tune.tuning_path(args.out, kernel)
                try:
                    tune.record(path, gpu, dtype, shape, best.config)
                except (OSError, ValueError) as error:
                    print(f"kgen tune: cannot record in {path}: {error}", file=sys.stderr)
                    return 1
                print(
                    f"{kernel.name} {shape} {str(dtype)[6:]}: {best.config} "
                    f"{best.ms * 1e3:.1f} us ({timed} of {len(results)} candidates timed) -> {path}"
                )
    return 0


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from kgen import bench

    if args.ops:
        return _bench_ops(args, parser)
    for flag in ("row_ops", "only", "workers", "quick"):
        if getattr(args, flag) not in (None, False):
            parser.error(f"--{flag.replace('_', '-')} goes with --ops")
    cases = _gpu_cases(args, parser)
    gpu = bench.gpu_slug(torch.cuda.get_device_name())
    results = args.results or Path("bench/results") / f"{gpu}.json"
    try:
        bench.read_rows(results)  # before any timing: a results file kgen cannot extend
    except (OSError, ValueError, TypeError) as error:
        print(f"kgen bench: {results}: {error}", file=sys.stderr)
        return 1
    rows = []
    for kernel, module, shapes, dtypes in cases:
        for dtype in dtypes:
            for shape in shapes:
                try:
                    rows.append(bench.bench_case(module, kernel, shape, dtype, not args.no_compile))
                except _CASE_ERRORS as error:
                    where = f"{kernel.name} {shape} {str(dtype)[6:]}"
                    print(f"kgen bench: {where}: {error}", file=sys.stderr)
                    return 1
                print(bench.table(rows[-1:]).splitlines()[-1], flush=True)
    print(bench.table(rows))
    try:
        bench.append_rows(results, rows)
        bench.plot(results, results.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    except OSError as error:
        print(f"kgen bench: cannot write {results}: {error}", file=sys.stderr)
        return 1
    print(f"rows appended to {results}")
    return 0


def _bench_ops(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`kgen bench --ops`: the registry's ops, timed after the GEMM (kgen/opbench.py)."""
    import torch

    from kgen import bench, opbench
    from kgen.runtime import devices

    if args.specs:
        parser.error("--ops times the op registry: give no SPEC")
    if args.no_compile:
        parser.error("--no-compile does not go with --ops (it times no torch.compile)")
    if args.shapes is None:
        args.shapes = str(opbench.QUICK_SHAPE if args.quick else opbench.DEFAULT_SHAPE)
    shapes, dtypes = _shapes_dtypes(args, parser, ",".join(opbench.DEFAULT_DTYPES))
    only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
    known = {c.op for c in opbench.cases(row_ops=True)}
    for o in only or ():
        if o not in known:
            parser.error(
                f"--only: {o!r} is no epilogue op (choose from {', '.join(sorted(known))})"
            )
    if devices.INTERPRET:
        device = "cpu"  # a smoke run in Triton's interpreter
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print(
            "kgen bench --ops: needs a CUDA GPU (or TRITON_INTERPRET=1 for a smoke run on "
            "the CPU); none is visible",
            file=sys.stderr,
        )
        return 2
    if args.results is not None:
        results = args.results
    elif device == "cuda":
        results = (
            Path("bench/results") / f"{bench.gpu_slug(torch.cuda.get_device_name())}-ops.jsonl"
        )
    else:
        results = Path("bench/results/interpreter-ops.jsonl")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        rows = opbench.main(
            shapes, dtypes, device, results, args.row_ops, only, args.workers, args.quick, log
        )
    except (*_CASE_ERRORS, ImportError) as error:
        print(f"kgen bench --ops: {error}", file=sys.stderr)
        return 1
    return 1 if any(r.error for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "check":
        _readable([args.spec] if args.command == "show" else args.specs, parser)
    try:
        if args.command == "check":
            return _check(args, parser)
        if args.command == "tune":
            return _tune(args, parser)
        if args.command == "bench":
            return _bench(args, parser)
        if args.command == "build":
            return _build(args)
        return _show(args)
    except KeyboardInterrupt:
        return 130
