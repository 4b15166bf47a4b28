"""Spec diagnostics: where they point, and how they print.

Every stage of the pipeline (syntax -> analyze -> emit) reports a user's mistake by
raising a `SpecError` subclass that carries a `Span`; the CLI prints it as

    specs/x.fuse:3:18: error: unknown op 'sigmod' (did you mean 'sigmoid'?)
        3 | epilogue: bias; sigmod
          |                 ^~~~~~

One class per condition, so tests (and callers) can tell them apart without
matching message text.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Span:
    """A region of a spec: 1-based line and column, end column exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(line: int, column: int) -> Span:
        return Span(line, column, line, column + 1)

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """A message about a spec that is not an error: printed, never fatal."""

    span: Span
    message: str
    severity: str = "note"


class SpecError(Exception):
    """A mistake in a spec; `format()` renders it for the user."""

    def __init__(self, span: Span, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.span = span
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.span}: {self.message}"


class FuseSyntaxError(SpecError):
    """The text does not follow the grammar."""


class UnknownOpError(SpecError):
    """A step or call names no built-in op and no `def`."""


class UnknownStatementError(SpecError):
    """A statement keyword, gemm form, type, dtype or precision kgen does not know."""


class ArgumentError(SpecError):
    """Wrong number of arguments, an unknown or repeated keyword argument."""


class KindError(SpecError):
    """A value of the wrong kind (scalar, [M], [N], [M, N]) for where it is used."""


class NameClashError(SpecError):
    """A name declared twice, shadowing another, or reserved by kgen."""


class UndefinedNameError(SpecError):
    """A name that must be declared before it is used this way."""


class EncodingError(SpecError):
    """The spec file is not UTF-8 text; `text` is what can be shown of it."""

    def __init__(self, span: Span, message: str, hint: str | None = None, *, text: str) -> None:
        super().__init__(span, message, hint)
        self.text = text


class NotSupportedError(SpecError):
    """Valid syntax that this version of kgen cannot build yet (e.g. row operations)."""


class LimitError(SpecError):
    """An expression nested deeper than kgen handles, or an epilogue that grows too
    large once its defs are inlined (the limits are in LANGUAGE.md)."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or None."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _printable(text: str) -> str:
    """`text` with each control or other unprintable character escaped, as \\x00."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def format_diagnostic(
    filename: str, text: str, span: Span, severity: str, message: str, hint: str | None = None
) -> str:
    """`FILE:LINE:COL: severity: message`, the source line, a caret under the span, a hint."""
    lines = text.split("\n")
    filename, message = _printable(filename), _printable(message)
    hint = _printable(hint) if hint else hint
    head = f"{filename}:{span.line}:{span.column}: {severity}: {message}"
    if hint and hint.startswith("did you mean"):
        head += f" ({hint})"
        hint = None
    out = [head]
    if 1 <= span.line <= len(lines):
        # one column per character, as the parser counts them; no control characters
        src = "".join(
            c if c.isprintable() else " " if c == "\t" else "?"
            for c in lines[span.line - 1].removesuffix("\r")
        )
        gutter = f"{span.line:>5} | "
        width = span.end_column - span.column if span.end_line == span.line else 1
        width = max(1, min(width, len(src) - span.column + 2))
        out.append(gutter + src)
        out.append(
            " " * (len(gutter) - 2) + "| " + " " * (span.column - 1) + "^" + "~" * (width - 1)
        )
    if hint:
        out.append(f"      = hint: {hint}")
    return "\n".join(out)


def format_error(filename: str, text: str, error: SpecError) -> str:
    return format_diagnostic(filename, text, error.span, "error", error.message, error.hint)
