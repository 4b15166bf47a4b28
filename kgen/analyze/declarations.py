"""Pass 1, declarations: what a spec declares, each name checked where it is declared.

First the single statements (name, gemm, init, output, precision, epilogue), read
into a `Heading`: the kernel's name, the gemm and its sizes, the output dtype and the
precision. Then the params, inputs and defs, which fill a `Scope`. A float param
counts everywhere, a tensor or a def only below the line that declares it
(LANGUAGE.md): `open_scope` declares the float params and notes where each of the
others is declared, for the error messages, and `declare` takes the rest in file
order. The pipeline calls `declare` for the statements above the epilogue, then has
the epilogue elaborated (it sees what is declared so far), then calls it again for
those below; so errors come in file order, as a reader meets them.

A def is checked where it is declared (its parameters, and the ops its body calls,
which `lookup_op` resolves as the elaboration does) and inlined where it is called
(kgen.analyze.elaborate).
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TypeVar

import torch

from kgen import ops
from kgen.analyze.names import check_name, name_problem
from kgen.errors import (
    ArgumentError,
    Diagnostic,
    KindError,
    NameClashError,
    NotSupportedError,
    Span,
    UnknownOpError,
    UnknownStatementError,
    did_you_mean,
)
from kgen.ir import DEFAULT_PRECISION, DTYPES, PRECISIONS, Gemm, Kind, Operand, Role
from kgen.syntax import (
    Argument,
    BinOp,
    Call,
    Compare,
    DefStmt,
    EpilogueStmt,
    Expr,
    GemmStmt,
    InitStmt,
    InputStmt,
    Name,
    NameStmt,
    Neg,
    Number,
    OutputStmt,
    ParamStmt,
    PrecisionStmt,
    SpecTree,
    Statement,
)

# The kernel's name is a global of the generated module: it must not hide a builtin.
_BUILTINS: frozenset[str] = frozenset(dir(builtins))
_VALUE_INITS = ("randn", "zeros", "ones")
_FP32_MAX = float(torch.finfo(torch.float32).max)
_S = TypeVar("_S")


# -- the single statements -------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    """What a spec says once: the kernel, its gemm, its output; checked."""

    filename: str  # the spec's file name, without directories
    name: str
    name_span: Span  # the kernel name's (1:1 when it comes from the file name)
    gemm: Gemm
    in_features: str | int
    out_features: str | int
    has_bias: bool
    gemm_stmt: GemmStmt | None
    output: str | None
    precision: str
    init: InitStmt | None
    epilogue: EpilogueStmt | None

    @property
    def gemm_names(self) -> frozenset[str]:
        """The gemm's size names (constructor arguments), not values of the epilogue."""
        return frozenset(n for n in (self.in_features, self.out_features) if isinstance(n, str))


def read_heading(tree: SpecTree, filename: str) -> Heading:
    """The single statements of `tree`, checked in the order they are listed here."""
    filename = PurePath(filename).name
    singles = _single_statements(tree)
    name_stmt = _single(singles, NameStmt)
    gemm_stmt = _single(singles, GemmStmt)
    output = _single(singles, OutputStmt)
    precision = _single(singles, PrecisionStmt)
    name = _kernel_name(name_stmt, filename)
    gemm, in_f, out_f, has_bias = _gemm(gemm_stmt)
    output_dtype = _choice(output.dtype if output else None, "output dtype", DTYPES, None)
    precision_word = precision.precision if precision else None
    precision_name = _choice(precision_word, "precision", PRECISIONS, DEFAULT_PRECISION)
    assert precision_name is not None
    return Heading(
        filename=filename,
        name=name,
        name_span=name_stmt.name.span if name_stmt else Span.point(1, 1),
        gemm=gemm,
        in_features=in_f,
        out_features=out_f,
        has_bias=has_bias,
        gemm_stmt=gemm_stmt,
        output=output_dtype,
        precision=precision_name,
        init=_single(singles, InitStmt),
        epilogue=_single(singles, EpilogueStmt),
    )


_STATEMENT_WORDS: dict[type, str] = {
    NameStmt: "name",
    GemmStmt: "gemm",
    InitStmt: "init",
    OutputStmt: "output",
    PrecisionStmt: "precision",
    EpilogueStmt: "epilogue",
}


def _single_statements(tree: SpecTree) -> dict[type, Statement]:
    singles: dict[type, Statement] = {}
    for stmt in tree.statements:
        if isinstance(stmt, (ParamStmt, InputStmt, DefStmt)):
            continue
        first = singles.get(type(stmt))
        if first is not None:
            word = _STATEMENT_WORDS[type(stmt)]
            raise NameClashError(
                stmt.span,
                f"a second '{word}' statement (the first is at {first.span})",
                f"a spec has at most one '{word}' line",
            )
        singles[type(stmt)] = stmt
    return singles


def _single(singles: dict[type, Statement], kind: type[_S]) -> _S | None:
    stmt = singles.get(kind)
    assert stmt is None or isinstance(stmt, kind)
    return stmt


def _kernel_name(stmt: NameStmt | None, filename: str) -> str:
    if stmt is not None:
        check_name(stmt.name, "kernel name")
        if stmt.name.name in _BUILTINS:
            raise NameClashError(
                stmt.name.span,
                f"the kernel name '{stmt.name.name}' is a Python builtin, which the "
                "generated module uses",
                "pick another name",
            )
        return stmt.name.name
    stem = PurePath(filename).stem
    why = "is not a Python identifier" if not stem.isidentifier() else name_problem(stem)
    if why is None and stem in _BUILTINS:
        why = "is a Python builtin"
    if why is not None:
        suggestion = "".join(c if c.isalnum() else "_" for c in stem).strip("_") or "kernel"
        if suggestion[0].isdigit() or name_problem(suggestion) or suggestion in _BUILTINS:
            suggestion = f"{suggestion}_kernel" if suggestion[0].isalpha() else f"k_{suggestion}"
        raise NameClashError(
            Span.point(1, 1),
            f"the file name '{stem}' {why}, so it cannot name the kernel",
            f"add a line `name: {suggestion}`",
        )
    return stem


def _gemm(stmt: GemmStmt | None) -> tuple[Gemm, str | int, str | int, bool]:
    if stmt is None:
        return Gemm.LINEAR, "in_features", "out_features", True
    forms = {g.value: g for g in Gemm}
    form = forms.get(stmt.form.name)
    if form is None:
        raise UnknownStatementError(
            stmt.form.span,
            f"unknown gemm '{stmt.form.name}'",
            did_you_mean(stmt.form.name, forms) or "write linear(IN, OUT) or matmul(IN, OUT)",
        )
    positional = [a for a in stmt.args if a.keyword is None]
    keywords = [a for a in stmt.args if a.keyword is not None]
    for i, arg in enumerate(stmt.args):
        if arg.keyword is None and any(a.keyword is not None for a in stmt.args[:i]):
            raise ArgumentError(arg.span, "a positional argument after a keyword argument")
    names = [a.keyword.name for a in keywords if a.keyword is not None]
    for i, arg in enumerate(keywords):
        assert arg.keyword is not None
        if arg.keyword.name in names[:i]:
            raise ArgumentError(arg.keyword.span, f"argument '{arg.keyword.name}' given twice")
    if len(positional) > 2:
        raise ArgumentError(positional[2].span, f"{form.value} takes two sizes, IN and OUT")
    sizes: list[str | int] = ["in_features", "out_features"]
    for i, arg in enumerate(positional):
        sizes[i] = _size(arg)
    return form, sizes[0], sizes[1], _gemm_bias(form, keywords)


def _gemm_bias(form: Gemm, keywords: list[Argument]) -> bool:
    """Whether the gemm adds a bias: a linear's does, unless it says `bias=false`."""
    has_bias = form is Gemm.LINEAR
    for arg in keywords:
        assert arg.keyword is not None
        if arg.keyword.name != "bias" or form is Gemm.MATMUL:
            allowed = "bias=true|false" if form is Gemm.LINEAR else "no keyword arguments"
            raise ArgumentError(
                arg.keyword.span,
                f"{form.value} has no argument '{arg.keyword.name}'",
                f"{form.value} takes {allowed}",
            )
        value = arg.value
        if not (isinstance(value, Name) and value.name in ("true", "false")):
            raise ArgumentError(value.span, "bias= takes true or false")
        has_bias = value.name == "true"
    return has_bias


def _size(arg: Argument) -> str | int:
    value = arg.value
    if isinstance(value, Name):
        check_name(value, "gemm size")
        return value.name
    if isinstance(value, Number) and value.value.is_integer() and value.value >= 1:
        return int(value.value)
    raise ArgumentError(
        value.span, "a gemm size is a name (a constructor argument) or a positive integer"
    )


def _choice(
    word: Name | None, what: str, choices: Sequence[str], default: str | None
) -> str | None:
    if word is None:
        return default
    if word.name not in choices:
        raise UnknownStatementError(
            word.span,
            f"unknown {what} '{word.name}'",
            did_you_mean(word.name, choices) or f"choose one of {', '.join(choices)}",
        )
    return word.name


# -- the scope: params, inputs, defs ---------------------------------------------


@dataclass
class DefInfo:
    stmt: DefStmt
    index: int  # defs declared before it; it may call only those
    used: bool = False


@dataclass
class Scope:
    """The names of a spec, as the passes read it: what is declared so far, what is
    declared further down, and what the elaboration has used."""

    gemm: Gemm
    gemm_names: frozenset[str]
    has_bias: bool
    operands: dict[str, Operand] = field(default_factory=dict)
    defs: dict[str, DefInfo] = field(default_factory=dict)
    later: dict[str, Span] = field(default_factory=dict)  # tensors declared below
    later_defs: dict[str, Span] = field(default_factory=dict)  # defs declared below
    used_operands: set[str] = field(default_factory=set)
    bias_applied: bool = False
    notes: list[Diagnostic] = field(default_factory=list)

    def add(self, operand: Operand) -> None:
        self.operands[operand.name] = operand


def open_scope(tree: SpecTree, heading: Heading) -> Scope:
    """The scope before the first line: the linear's bias and the float params, which
    count everywhere; the tensors and defs, which count below their line, as `later`."""
    scope = Scope(heading.gemm, heading.gemm_names, heading.has_bias)
    if heading.has_bias:
        scope.add(Operand("bias", Role.BIAS, Kind.COL, Span.point(1, 1)))
    for stmt in tree.statements:
        if _is_float_param(stmt):
            assert isinstance(stmt, ParamStmt)
            _param(scope, stmt)
    for stmt in tree.statements:
        if isinstance(stmt, (ParamStmt, InputStmt)) and not _is_float_param(stmt):
            scope.later.setdefault(stmt.name.name, stmt.name.span)
        elif isinstance(stmt, DefStmt):
            scope.later_defs.setdefault(stmt.name.name, stmt.name.span)
    return scope


def around_epilogue(
    tree: SpecTree,
) -> tuple[Sequence[Statement], EpilogueStmt | None, Sequence[Statement]]:
    """The statements above the epilogue, the epilogue (None: all are above), those below."""
    statements = tree.statements
    for i, stmt in enumerate(statements):
        if isinstance(stmt, EpilogueStmt):
            return statements[:i], stmt, statements[i + 1 :]
    return statements, None, ()


def declare(scope: Scope, statements: Sequence[Statement]) -> None:
    """Declare the tensor params, inputs and defs among `statements`, in order (the
    float params are declared already, the single statements read)."""
    for stmt in statements:
        if isinstance(stmt, ParamStmt) and not _is_float_param(stmt):
            scope.later.pop(stmt.name.name, None)
            _param(scope, stmt)
        elif isinstance(stmt, InputStmt):
            scope.later.pop(stmt.name.name, None)
            _input(scope, stmt)
        elif isinstance(stmt, DefStmt):
            scope.later_defs.pop(stmt.name.name, None)
            _define(scope, stmt)


def _is_float_param(stmt: Statement) -> bool:
    return isinstance(stmt, ParamStmt) and stmt.type.name == "float"


def literal(number: Number) -> float:
    """A literal's value, which the kernel will use as an fp32 constant."""
    if not abs(number.value) <= _FP32_MAX:
        raise ArgumentError(
            number.span,
            f"the number {number.text} is too large for fp32 (largest: 3.4028235e38)",
        )
    return number.value


def _param(scope: Scope, stmt: ParamStmt) -> None:
    _check_operand_name(scope, stmt.name)
    type_ = stmt.type.name
    if type_ == "float":
        _float_param(scope, stmt)
    elif type_ in ("vector", "scalar"):
        _tensor_param(scope, stmt)
    else:
        raise UnknownStatementError(
            stmt.type.span,
            f"unknown param type '{type_}'",
            did_you_mean(type_, ("float", "vector", "scalar")) or "use float, vector[N] or scalar",
        )


def _float_param(scope: Scope, stmt: ParamStmt) -> None:
    """`param NAME: float [= NUMBER]`: a runtime float, required without a default."""
    default = stmt.default
    if stmt.size is not None:
        raise KindError(
            stmt.size.span, "a float param has no size", "write `param NAME: float = 1.0`"
        )
    if isinstance(default, Name):
        raise ArgumentError(default.span, "a float param's default is a number")
    value = literal(default) if isinstance(default, Number) else None
    scope.add(Operand(stmt.name.name, Role.FLOAT, Kind.SCALAR, stmt.name.span, value))


def _tensor_param(scope: Scope, stmt: ParamStmt) -> None:
    """`param NAME: vector[N]` or `scalar`, with an initialiser: the module's own."""
    type_, default = stmt.type.name, stmt.default
    if type_ == "vector":
        if stmt.size is None:
            raise KindError(stmt.type.span, "a vector param needs its size", "write `vector[N]`")
        if stmt.size.name != "N":
            raise KindError(
                stmt.size.span,
                f"a vector param has one value per output column: vector[N], not vector[{stmt.size.name}]",
                "for per-row values, declare `input NAME: [M]`",
            )
    elif stmt.size is not None:
        raise KindError(stmt.size.span, "a scalar param has no size")
    init: float | str
    if default is None:
        init = "randn" if type_ == "vector" else 1.0
    elif isinstance(default, Number):
        init = literal(default)
    elif default.name in _VALUE_INITS:
        init = default.name
    else:
        raise ArgumentError(
            default.span,
            f"unknown initialiser '{default.name}'",
            did_you_mean(default.name, _VALUE_INITS) or "use randn, zeros, ones or a number",
        )
    role, kind = (Role.VECTOR, Kind.COL) if type_ == "vector" else (Role.SCALAR, Kind.SCALAR)
    scope.add(Operand(stmt.name.name, role, kind, stmt.name.span, init))


def _input(scope: Scope, stmt: InputStmt) -> None:
    _check_operand_name(scope, stmt.name)
    dims = tuple(d.name for d in stmt.dims)
    kinds = {("M", "N"): Kind.TILE, ("N",): Kind.COL, ("M",): Kind.ROW}
    kind = kinds.get(dims)
    if kind is None:
        bad = (
            stmt.dims[0]
            if len(stmt.dims) > 2
            else next((d for d in stmt.dims if d.name not in ("M", "N")), stmt.dims[-1])
        )
        raise KindError(
            bad.span,
            f"an input is [M, N], [N] or [M], not [{', '.join(dims)}]",
            "M is the batch dimension of x, N the output columns",
        )
    scope.add(Operand(stmt.name.name, Role.INPUT, kind, stmt.name.span))


def _check_operand_name(scope: Scope, name: Name) -> None:
    n = name.name
    if n in ("acc", "x", "weight"):
        raise NameClashError(name.span, f"'{n}' is a name of the language and cannot be declared")
    if n == "bias" and scope.has_bias:
        raise NameClashError(
            name.span,
            "'bias' is the linear's own bias",
            "pick another name, or write `gemm: linear(IN, OUT, bias=false)`",
        )
    if n in scope.operands:
        raise NameClashError(name.span, f"'{n}' is already declared at {scope.operands[n].span}")
    if n in scope.gemm_names:
        raise NameClashError(name.span, f"'{n}' is the name of a gemm size")
    if n != "bias":
        check_name(name, "name")


def _define(scope: Scope, stmt: DefStmt) -> None:
    name = stmt.name
    if ops.lookup(name.name) is not None or name.name in ops.ROW_OPS:
        raise NameClashError(
            name.span, f"def '{name.name}' would hide the built-in op", "pick another name"
        )
    if name.name in scope.defs:
        first = scope.defs[name.name].stmt.name.span
        raise NameClashError(name.span, f"op '{name.name}' is already defined at {first}")
    seen: dict[str, Span] = {}
    for param in stmt.params:
        pname = param.name
        if pname.name in seen:
            raise NameClashError(pname.span, f"parameter '{pname.name}' appears twice")
        if pname.name == "acc":
            raise NameClashError(
                pname.span, "'acc' is the value the op applies to; it cannot be a parameter"
            )
        if pname.name in scope.operands:
            raise NameClashError(
                pname.span,
                f"parameter '{pname.name}' shadows the {scope.operands[pname.name].role.value} declared at {scope.operands[pname.name].span}",
                "rename the parameter",
            )
        seen[pname.name] = pname.span
    with_default = None
    for param in stmt.params:
        if param.default is not None:
            with_default = param
        elif with_default is not None:
            raise ArgumentError(
                param.span,
                f"'{param.name.name}' needs a default: it follows '{with_default.name.name}', which has one",
            )
    _check_def_body(scope, stmt.body, len(scope.defs))
    scope.defs[name.name] = DefInfo(stmt, len(scope.defs))


def _check_def_body(scope: Scope, e: Expr, visible_defs: int) -> None:
    """Catch unknown ops in a def's body where it is written, even if it is never used."""
    if isinstance(e, Call):
        n = e.func.name
        if not (n in scope.defs and scope.defs[n].index < visible_defs):
            lookup_op(scope, e.func, visible_defs)
        for arg in e.args:
            _check_def_body(scope, arg.value, visible_defs)
    elif isinstance(e, (BinOp, Compare)):
        _check_def_body(scope, e.left, visible_defs)
        _check_def_body(scope, e.right, visible_defs)
    elif isinstance(e, Neg):
        _check_def_body(scope, e.operand, visible_defs)


def lookup_op(
    scope: Scope, name: Name, visible_defs: int, bound: Collection[str] = ()
) -> ops.OpDef:
    """The built-in op `name` calls (a call of a def is resolved before), or the error
    that says why there is none; `bound` are the epilogue's bound names, for the hint."""
    n = name.name
    opdef = ops.lookup(n)
    if opdef is not None:
        return opdef
    if n in ops.ROW_OPS:
        raise NotSupportedError(
            name.span,
            f"row operation '{n}' is a step of the epilogue, not a function",
            f"apply it to acc as a step: `epilogue: ...; {n}`",
        )
    if n in scope.defs or n in scope.later_defs:
        where = scope.defs[n].stmt.name.span if n in scope.defs else scope.later_defs[n]
        raise UnknownOpError(
            name.span,
            f"op '{n}' is used before its def at {where}",
            "declare a def above the lines that use it",
        )
    hint = did_you_mean(n, [*ops.public_names(), *list(scope.defs)[:visible_defs]])
    if hint is None and (n in scope.operands or n in bound or n == "acc"):
        hint = f"'{n}' is a value, not an op; to multiply by it write mul({n})"
    raise UnknownOpError(name.span, f"unknown op '{n}'", hint)


# -- after the epilogue ----------------------------------------------------------


def note_unused_defs(scope: Scope) -> None:
    for info in scope.defs.values():
        if not info.used:
            scope.notes.append(
                Diagnostic(info.stmt.name.span, f"def '{info.stmt.name.name}' is never used")
            )


def check_kernel_name(heading: Heading, scope: Scope) -> None:
    """The kernel's name (and its kernels') must not be a value's: checked last, when
    every value, undeclared names included, is known."""
    name = heading.name
    if {name, f"{name}_kernel", f"{name}_finish"} & (set(scope.operands) | scope.gemm_names):
        raise NameClashError(
            heading.name_span,
            f"the kernel's name '{name}' is also the name of a value",
            "rename the kernel with `name: ...` or the value",
        )
