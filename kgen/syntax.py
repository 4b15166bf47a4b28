"""Stage 1 of the pipeline: spec text -> syntax tree.

`parse(text)` runs the Lark grammar (grammar/fuse.lark, shipped inside the package as
kgen/fuse.lark) and turns Lark's tree into the frozen dataclasses below. Every node
keeps its `Span`, so later stages can point at the exact place of a mistake. Lark's
own errors are translated into `FuseSyntaxError`s that speak the user's terms
("expected ')' or ','") instead of terminal names ("RPAR, COMMA"), or, for a name
where a statement starts, an `UnknownStatementError` with the closest keyword. An
expression nested deeper than `MAX_DEPTH` is a `LimitError`; nothing here recurses
on the depth of the text, so no text can exhaust Python's stack.

Nothing here knows what an op or a param means: that is `analyze`'s job.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.lark import PostLex

from kgen.errors import (
    FuseSyntaxError,
    LimitError,
    Span,
    SpecError,
    UnknownStatementError,
    did_you_mean,
)

# How deeply an expression may nest (LANGUAGE.md): each call, binary operator,
# comparison and unary minus is a level; parentheses and unary plus are not. Later
# stages walk expressions recursively, a few Python frames per level, so the limit
# keeps them far from Python's recursion limit whatever the spec.
MAX_DEPTH = 100

# ---------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class Name:
    name: str
    span: Span


@dataclass(frozen=True)
class Number:
    value: float
    text: str
    span: Span


@dataclass(frozen=True)
class Argument:
    keyword: Name | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: Name
    args: tuple[Argument, ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # "+", "-", "*", "/"
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Compare:
    op: str  # "<", "<=", ">", ">="
    left: Expr
    right: Expr
    span: Span


Expr = Name | Number | Call | BinOp | Neg | Compare


@dataclass(frozen=True)
class NameStmt:
    name: Name
    span: Span


@dataclass(frozen=True)
class GemmStmt:
    form: Name
    args: tuple[Argument, ...]
    span: Span


@dataclass(frozen=True)
class ParamStmt:
    name: Name
    type: Name
    size: Name | None  # the N of vector[N]
    default: Number | Name | None
    span: Span


@dataclass(frozen=True)
class InputStmt:
    name: Name
    dims: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class InitStmt:
    names: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class OutputStmt:
    dtype: Name
    span: Span


@dataclass(frozen=True)
class PrecisionStmt:
    precision: Name
    span: Span


@dataclass(frozen=True)
class DefParam:
    name: Name
    default: Number | None
    span: Span


@dataclass(frozen=True)
class DefStmt:
    name: Name
    params: tuple[DefParam, ...]
    body: Expr
    span: Span


@dataclass(frozen=True)
class OpStep:
    op: Name
    args: tuple[Argument, ...]
    span: Span


@dataclass(frozen=True)
class BindStep:
    target: Name
    value: Expr
    span: Span


Step = OpStep | BindStep


@dataclass(frozen=True)
class EpilogueStmt:
    steps: tuple[Step, ...]
    span: Span


Statement = (
    NameStmt
    | GemmStmt
    | ParamStmt
    | InputStmt
    | InitStmt
    | OutputStmt
    | PrecisionStmt
    | DefStmt
    | EpilogueStmt
)


@dataclass(frozen=True)
class SpecTree:
    statements: tuple[Statement, ...]


# ---------------------------------------------------------------------------
# Lark tree -> dataclasses


def _span(meta: Any) -> Span:
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token) -> Span:
    assert token.line is not None and token.column is not None
    assert token.end_line is not None and token.end_column is not None
    return Span(token.line, token.column, token.end_line, token.end_column)


def _name(token: Token) -> Name:
    return Name(str(token), _token_span(token))


def _args(node: tuple[Argument, ...] | None) -> tuple[Argument, ...]:
    return node if node is not None else ()


def _as_argument(item: Argument | Expr) -> Argument:
    return item if isinstance(item, Argument) else Argument(None, item, item.span)


@v_args(meta=True)
class _ToTree(Transformer_NonRecursive[Token, SpecTree]):
    def start(self, meta: Any, children: list[Statement]) -> SpecTree:
        return SpecTree(tuple(children))

    # statements
    def name_stmt(self, meta: Any, c: list[Token]) -> NameStmt:
        return NameStmt(_name(c[0]), _span(meta))

    def gemm_stmt(self, meta: Any, c: list[Any]) -> GemmStmt:
        return GemmStmt(_name(c[0]), _args(c[1]), _span(meta))

    def param_stmt(self, meta: Any, c: list[Any]) -> ParamStmt:
        name, type_, size, default = c
        if isinstance(default, Token):
            default = _name(default)
        return ParamStmt(
            _name(name),
            _name(type_),
            _name(size) if size is not None else None,
            default,
            _span(meta),
        )

    def input_stmt(self, meta: Any, c: list[Token]) -> InputStmt:
        return InputStmt(_name(c[0]), tuple(_name(t) for t in c[1:]), _span(meta))

    def init_stmt(self, meta: Any, c: list[Token]) -> InitStmt:
        return InitStmt(tuple(_name(t) for t in c), _span(meta))

    def output_stmt(self, meta: Any, c: list[Token]) -> OutputStmt:
        return OutputStmt(_name(c[0]), _span(meta))

    def precision_stmt(self, meta: Any, c: list[Token]) -> PrecisionStmt:
        return PrecisionStmt(_name(c[0]), _span(meta))

    def def_stmt(self, meta: Any, c: list[Any]) -> DefStmt:
        params = tuple(p for p in c[1:-1] if p is not None)
        return DefStmt(_name(c[0]), params, c[-1], _span(meta))

    def def_param(self, meta: Any, c: list[Any]) -> DefParam:
        return DefParam(_name(c[0]), c[1], _span(meta))

    def epilogue_stmt(self, meta: Any, c: list[Step | None]) -> EpilogueStmt:
        return EpilogueStmt(tuple(s for s in c if s is not None), _span(meta))

    # steps and arguments
    def bind_step(self, meta: Any, c: list[Any]) -> BindStep:
        return BindStep(_name(c[0]), c[1], _span(meta))

    def op_step(self, meta: Any, c: list[Any]) -> OpStep:
        return OpStep(_name(c[0]), _args(c[1]), _span(meta))

    def arguments(self, meta: Any, c: list[Argument | Expr]) -> tuple[Argument, ...]:
        return tuple(_as_argument(a) for a in c)

    def keyword_argument(self, meta: Any, c: list[Any]) -> Argument:
        return Argument(_name(c[0]), c[1], _span(meta))

    # expressions
    def number(self, meta: Any, c: list[Token]) -> Number:
        return Number(float(c[0]), str(c[0]), _span(meta))

    def negative_number(self, meta: Any, c: list[Token]) -> Number:
        return Number(-float(c[0]), "-" + str(c[0]), _span(meta))

    def name(self, meta: Any, c: list[Token]) -> Name:
        return _name(c[0])

    def call(self, meta: Any, c: list[Any]) -> Call:
        return Call(_name(c[0]), _args(c[1]), _span(meta))

    def _binop(self, op: str, meta: Any, c: list[Any]) -> BinOp:
        return BinOp(op, c[0], c[1], _span(meta))

    def add(self, meta: Any, c: list[Any]) -> BinOp:
        return self._binop("+", meta, c)

    def sub(self, meta: Any, c: list[Any]) -> BinOp:
        return self._binop("-", meta, c)

    def mul(self, meta: Any, c: list[Any]) -> BinOp:
        return self._binop("*", meta, c)

    def div(self, meta: Any, c: list[Any]) -> BinOp:
        return self._binop("/", meta, c)

    def neg(self, meta: Any, c: list[Any]) -> Neg:
        return Neg(c[0], _span(meta))

    def compare(self, meta: Any, c: list[Any]) -> Compare:
        return Compare(str(c[1]), c[0], c[2], _span(meta))


# ---------------------------------------------------------------------------
# The parser and its errors

GRAMMAR_FILE = "fuse.lark"


def grammar_text() -> str:
    """The grammar, from the installed package or, in a source checkout, from grammar/."""
    packaged = resources.files("kgen").joinpath(GRAMMAR_FILE)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "grammar" / GRAMMAR_FILE).read_text(
        encoding="utf-8"
    )


class _WholeWords(PostLex):
    """Makes a statement keyword a whole word: `input_x` or `define` is a name, not the
    keyword `input` or `def` followed by `_x` or `ine`.

    The contextual lexer only tries the terminals the parser can take next; where a
    statement starts that is the keywords, and a keyword then matches the start of a
    longer name. With NAME accepted everywhere too, Lark lexes the whole name and makes
    it the keyword only when it is exactly one (its usual keyword-versus-name rule)."""

    always_accept = ("NAME",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return stream


@functools.cache
def _parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=_WholeWords(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


# The keywords that start a statement (the grammar's; kgen suggests the closest).
STATEMENT_WORDS = (
    "name",
    "gemm",
    "param",
    "input",
    "init",
    "output",
    "precision",
    "def",
    "epilogue",
)


# What the user typed, for each terminal Lark may say it expected.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "COMPARE": "a comparison",
    "_NL": "end of line",
    "$END": "end of file",
}


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    for term in _parser().terminals:
        if term.name == terminal and term.pattern.type == "str":
            return f"'{term.pattern.value}'"
    return terminal.lower()


def _expected(names: set[str]) -> str:
    if "_NL" in names:
        names = names - {"$END"}  # a statement that may end the line may end the file
    words = sorted({_describe(n) for n in names}, key=lambda w: (not w.startswith("'"), w))
    if len(words) > 6:
        words = [*words[:6], "..."]
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _shown(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    return f"'{token}'"


def _accepted(exc: lark.exceptions.UnexpectedToken) -> set[str]:
    """The terminals the parser could take where it failed. (`exc.expected` is what the
    lexer tried there when the token came from the lexer's fallback: NAME, which
    `_WholeWords` lets it lex everywhere, is in it even where no name may stand.)"""
    state = exc.state
    table = getattr(
        getattr(getattr(state, "parse_conf", None), "parse_table", None), "states", None
    )
    if table is not None and state.position in table:
        return {s for s in table[state.position] if s.isupper()}
    return set(exc.expected)


def _syntax_error(text: str, exc: lark.exceptions.UnexpectedInput) -> SpecError:
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        shown = repr(char) if not char.isprintable() or char in "'\"" else f"'{char}'"
        return FuseSyntaxError(
            Span.point(exc.line, exc.column),
            f"unexpected character {shown}",
            "names are letters, digits and '_'; numbers look like 2, -0.5 or 1e-5",
        )
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            lines = text.split("\n")
            span = Span.point(len(lines), len(lines[-1]) + 1)
        else:
            span = _token_span(token)
        start = token.start_pos if token.start_pos is not None else 0
        if token.type == "COMPARE":
            return FuseSyntaxError(
                span,
                f"unexpected comparison '{token}'",
                "a comparison appears once, as where's first argument: where(acc > 0, acc, 0)",
            )
        if (
            token.type == "NAME"
            and str(token)[0] in "eE"
            and start
            and text[start - 1] in "0123456789."
        ):
            number_start = start
            while number_start > 0 and text[number_start - 1] in "0123456789.":
                number_start -= 1
            return FuseSyntaxError(
                span,
                f"malformed number '{text[number_start:start]}{token}'",
                "an exponent needs digits, as in 1e-5 or 2.5e3",
            )
        accepted = _accepted(exc)
        if token.type == "NAME" and "EPILOGUE" in accepted:  # where a statement starts
            return UnknownStatementError(
                span,
                f"unknown statement '{token}'",
                did_you_mean(str(token).lower(), STATEMENT_WORDS)
                or "a statement starts with "
                + ", ".join(STATEMENT_WORDS[:-1])
                + " or epilogue; ops are steps of the epilogue line, as in `epilogue: bias; relu`",
            )
        expected = _expected(accepted)
        hint = None
        if token.type == "_NL" and "')'" in expected:
            hint = "a statement must fit on one line; close the parenthesis"
        return FuseSyntaxError(span, f"expected {expected}, got {_shown(token)}", hint)
    # UnexpectedEOF (not raised by LALR in practice, kept for completeness)
    lines = text.split("\n")
    return FuseSyntaxError(Span.point(len(lines), len(lines[-1]) + 1), "unexpected end of file")


# The Lark rules that make an expression one level deeper.
_LEVELS = frozenset(["call", "add", "sub", "mul", "div", "neg", "compare"])


def depth_error(span: Span, inlined: bool = False) -> LimitError:
    """The error for an expression nested deeper than MAX_DEPTH, at `span`."""
    where = " once its defs are inlined" if inlined else ""
    return LimitError(
        span,
        f"expression nested too deeply{where}: kgen handles at most {MAX_DEPTH} levels "
        "(each call, operator and unary minus is one)",
        "bind parts of it to names in earlier steps: `z = ...; acc = f(z)`",
    )


def _check_depth(tree: Tree[Token]) -> None:
    """Raise LimitError at the first expression deeper than MAX_DEPTH (no recursion)."""
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _LEVELS:
            depth += 1
            if depth > MAX_DEPTH:
                raise depth_error(_span(node.meta))
        stack.extend((c, depth) for c in reversed(node.children) if isinstance(c, Tree))


def parse(text: str) -> SpecTree:
    """Parse spec text into a syntax tree, or raise a SpecError: FuseSyntaxError,
    UnknownStatementError, or LimitError for an expression nested too deeply."""
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    _check_depth(tree)
    result: SpecTree = _ToTree().transform(tree)
    return result
