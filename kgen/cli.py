"""The `kgen` command: build, check and show specs.

    kgen build SPEC... [-o DIR]          write DIR/<name>.py for each spec (DIR: generated/)
    kgen build --check SPEC... [-o DIR]  exit 1 naming the modules that are stale
    kgen show SPEC [--ir | --source]     print the IR or the generated module

Exit status: 0 success, 1 errors in a spec (or stale modules), 2 usage. Errors print
as `FILE:LINE:COL: error: message`, the line and a caret; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from kgen import __version__
from kgen.build import build, compile_spec, read_spec
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _readable(args.specs if args.command == "build" else [args.spec], parser)
    try:
        if args.command == "build":
            return _build(args)
        return _show(args)
    except KeyboardInterrupt:
        return 130
