"""Stage 4 of the pipeline: the whole of it, from a spec file to a written module.

    compile_spec(text, filename)  -> Compiled(kernel, source)   parse, analyze, emit, black
    build(paths, out_dir, check)  -> Report                     every spec; write or compare

Building never writes a partial module: each file is written to a temporary file
beside it and renamed into place, and a spec with an error writes nothing. Every
spec is compiled even when an earlier one fails, so one run reports every error.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import black

from kgen.analyze import analyze
from kgen.errors import Diagnostic, EncodingError, Span, SpecError
from kgen.ir import Kernel
from kgen.lower.module import emit_module
from kgen.runtime.devices import write_atomic as write_atomic
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
    return Compiled(kernel, render(kernel))


def render(kernel: Kernel) -> str:
    """A kernel's module source, formatted."""
    return black.format_str(emit_module(kernel), mode=_BLACK_MODE)


def read_spec(path: Path) -> str:
    """A spec's text, line endings normalised (CRLF and CR files build what LF files
    do) and a UTF-8 byte-order mark dropped. Raises EncodingError for other bytes."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = _normalise(data.decode("utf-8", errors="replace"))
        # the position in `shown`: count what comes before the bad byte as it is shown,
        # CR and CRLF line endings made LF and a byte-order mark dropped
        before = _normalise(data[: exc.start].decode("utf-8"))
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise EncodingError(
            Span.point(line, column),
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot start a character here",
            "save the spec as UTF-8",
            text=shown,
        ) from None
    return _normalise(text)


def _normalise(text: str) -> str:
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def import_file(path: Path, name: str | None = None) -> ModuleType:
    """Import a generated module from its file, as `name` (default: after the file);
    kernels must come from a real file, which the GPU compiler reads the source of.
    The module is registered in `sys.modules`, as an import would (torch.compile looks
    a function's module up there)."""
    name = name or f"kgen_generated_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@dataclass
class SpecResult:
    path: Path
    text: str = ""
    compiled: Compiled | None = None
    error: SpecError | None = None
    output: Path | None = None
    clash: Path | None = None  # another spec that builds the same module
    write_error: str | None = None
    stale: bool = False  # --check: the file on disk differs from what kgen builds

    @property
    def notes(self) -> tuple[Diagnostic, ...]:
        return self.compiled.kernel.notes if self.compiled else ()

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.clash is None
            and self.write_error is None
            and not self.stale
        )


@dataclass
class Report:
    results: list[SpecResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def build(paths: list[Path], out_dir: Path, check: bool = False) -> Report:
    """Compile every spec; write its module to out_dir (or, with check, compare).

    A bad spec, or one whose module name another spec already took, writes nothing;
    every other spec is built regardless.
    """
    report = Report()
    owners: dict[str, Path] = {}
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            continue  # the same file named twice, e.g. by overlapping globs
        seen.add(path.resolve())
        result = SpecResult(path)
        report.results.append(result)
        try:
            result.text = read_spec(path)
            result.compiled = compile_spec(result.text, path.name)
        except EncodingError as error:
            result.text, result.error = error.text, error
            continue
        except SpecError as error:
            result.error = error
            continue
        name = result.compiled.kernel.name
        if name in owners:
            result.clash = owners[name]
            continue
        owners[name] = path
        result.output = out_dir / f"{name}.py"
        try:
            if out_dir.exists() and not out_dir.is_dir():
                raise NotADirectoryError(20, f"{out_dir} is not a directory")
            if check:
                current = result.output.read_text("utf-8") if result.output.exists() else None
                result.stale = current != result.compiled.source
            else:
                write_atomic(result.output, result.compiled.source)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            result.write_error = f"cannot {'read' if check else 'write'} {result.output}: {reason}"
    return report
