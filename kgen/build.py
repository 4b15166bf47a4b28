"""Stage 4 of the pipeline: the whole of it, from a spec file to a written module.

    compile_spec(text, filename)  -> Compiled(kernel, source)   parse, analyze, emit, black
    build(paths, out_dir, check)  -> Report                     every spec; write or compare

Building never writes a partial module: each file is written to a temporary file
beside it and renamed into place, and a spec with an error writes nothing. Every
spec is compiled even when an earlier one fails, so one run reports every error.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import black

from kgen.analyze import analyze
from kgen.emit import emit_module
from kgen.errors import Diagnostic, SpecError
from kgen.ir import Kernel
from kgen.syntax import parse

_BLACK_MODE = black.Mode(line_length=100)


@dataclass(frozen=True)
class Compiled:
    kernel: Kernel
    source: str  # the formatted module


def compile_spec(text: str, filename: str) -> Compiled:
    """Spec text -> formatted module source. Raises SpecError for a bad spec."""
    tree = parse(text)
    kernel = analyze(tree, filename, text)
    source = black.format_str(emit_module(kernel), mode=_BLACK_MODE)
    return Compiled(kernel, source)


def read_spec(path: Path) -> str:
    """A spec's text, newlines normalised (so CRLF files build the same module)."""
    return path.read_bytes().decode("utf-8").replace("\r\n", "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class SpecResult:
    path: Path
    text: str
    compiled: Compiled | None = None
    error: SpecError | None = None
    output: Path | None = None
    stale: bool = False  # --check: the file on disk differs from what kgen builds

    @property
    def notes(self) -> tuple[Diagnostic, ...]:
        return self.compiled.kernel.notes if self.compiled else ()


@dataclass
class Report:
    results: list[SpecResult] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)  # two specs, one module name

    @property
    def ok(self) -> bool:
        return not self.clashes and all(r.error is None and not r.stale for r in self.results)


def build(paths: list[Path], out_dir: Path, check: bool = False) -> Report:
    """Compile every spec; write its module to out_dir (or, with check, compare)."""
    report = Report()
    owners: dict[str, Path] = {}
    for path in paths:
        text = read_spec(path)
        result = SpecResult(path, text)
        report.results.append(result)
        try:
            result.compiled = compile_spec(text, path.name)
        except SpecError as error:
            result.error = error
            continue
        name = result.compiled.kernel.name
        if name in owners:
            report.clashes.append(f"{path}: builds '{name}.py', as {owners[name]} does")
            continue
        owners[name] = path
        result.output = out_dir / f"{name}.py"
    for result in report.results:
        if result.compiled is None or result.output is None:
            continue
        if check:
            current = result.output.read_text("utf-8") if result.output.exists() else None
            result.stale = current != result.compiled.source
        elif not report.clashes:
            write_atomic(result.output, result.compiled.source)
    return report
