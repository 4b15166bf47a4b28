"""The checks of the elaboration: signatures, kinds, segments and columns.

A call's arguments are matched to its op's (or def's) parameters (`bind_args`); each
value's kind (scalar, [M], [N], [M, N]; a comparison) is checked against what the op
accepts (`check_argument`, `check_scalar`, `not_comparison`, the row-operation
checks); and an elementwise op's arguments must come from one segment -- not from
both sides of a row operation -- and have the same columns (`columns`), reading the
segments the Builder records. Each check raises the SpecError that says what is
wrong; none builds anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from kgen import ops
from kgen.analyze.builder import Builder
from kgen.errors import ArgumentError, KindError, NotSupportedError, Span, did_you_mean
from kgen.ir import Instr, Kind
from kgen.syntax import Argument, Expr, Name, Number


def bind_args(
    what: str,
    params: Sequence[tuple[str, float | None]],
    args: tuple[Argument, ...],
    span: Span,
) -> list[Expr | float]:
    """Match call arguments to parameters: an expression or a default for each."""
    bound: dict[str, Expr] = {}
    seen_keyword = False
    names = [p for p, _ in params]
    for i, arg in enumerate(args):
        if arg.keyword is None:
            if seen_keyword:
                raise ArgumentError(arg.span, "a positional argument after a keyword argument")
            if i >= len(params):
                takes = (
                    "takes no arguments"
                    if not params
                    else f"takes at most {len(params)} argument{'s' if len(params) > 1 else ''} ({', '.join(names)})"
                )
                raise ArgumentError(arg.span, f"'{what}' {takes}")
            bound[names[i]] = arg.value
        else:
            seen_keyword = True
            key = arg.keyword.name
            if key not in names:
                raise ArgumentError(
                    arg.keyword.span,
                    f"'{what}' has no argument '{key}'",
                    did_you_mean(key, names)
                    or (f"its arguments: {', '.join(names)}" if names else "it takes none"),
                )
            if key in bound:
                raise ArgumentError(arg.keyword.span, f"argument '{key}' given twice")
            bound[key] = arg.value
    result: list[Expr | float] = []
    for pname, default in params:
        if pname in bound:
            result.append(bound[pname])
        elif default is not None:
            result.append(default)
        else:
            raise ArgumentError(span, f"'{what}' needs argument '{pname}'")
    return result


def not_comparison(value: Instr, span: Span) -> None:
    """A comparison is where's first argument and nothing else."""
    if value.boolean:
        raise KindError(span, "a comparison can only be where's first argument")


def check_argument(
    opdef: ops.OpDef, pname: str, type_: ops.ArgType, value: Instr, span: Span
) -> None:
    """`value`, the argument `pname` of `opdef`, is of a kind `type_` accepts."""
    if type_.accepts(value):
        return
    not_comparison(value, span)
    if type_ is ops.ArgType.BOOL:
        raise KindError(span, f"{opdef.name}'s first argument must be a comparison, like acc > 0")
    got = "a scalar" if value.kind is Kind.SCALAR else f"a {value.kind.value} value"
    raise KindError(span, f"{opdef.name}'s argument '{pname}' must be {type_.value}, got {got}")


def check_scalar(op: str, pname: str, value: Instr, span: Span) -> None:
    """`value`, the argument `pname` of the row operation `op`, is a scalar."""
    if value.kind is not Kind.SCALAR or value.boolean:
        got = "a comparison" if value.boolean else f"a {value.kind.value} value"
        raise KindError(span, f"{op}'s argument '{pname}' must be a scalar, got {got}")


def positive_int(expr: Expr | float, op: str, pname: str, span: Span) -> int:
    """A row operation's size (groups, a window): a whole number, fixed at build time."""
    where = span if isinstance(expr, float) else expr.span
    # (the range first: int() of a literal too large for a float, inf, would raise)
    if isinstance(expr, Number) and 1 <= expr.value <= 2**20 and expr.value == int(expr.value):
        return int(expr.value)
    raise ArgumentError(
        where,
        f"{op}'s '{pname}' must be a whole number from 1 to {2**20}",
        "it decides the kernel's layout, so it is fixed when the kernel is built",
    )


def boolean(expr: Expr | float, op: str, span: Span) -> bool:
    """A reduction's keepdim: true or false."""
    if isinstance(expr, float):
        return bool(expr)
    if isinstance(expr, Name) and expr.name in ("true", "false"):
        return expr.name == "true"
    raise ArgumentError(expr.span, f"{op}'s 'keepdim' must be true or false")


def check_row_operand(name: str, x: Instr, span: Span) -> None:
    """A row operation works on the rows of an [M, N] value (or a reduction's [M])."""
    if x.kind not in (Kind.TILE, Kind.ROW):
        got = "a number" if x.kind is Kind.SCALAR else f"a {x.kind.value} value"
        raise KindError(
            span,
            f"'{name}' works on the rows of an [M, N] value; acc here is {got}",
            "apply row operations to a value that depends on the GEMM",
        )


def check_row_size(rowdef: ops.RowOpDef, name: str, x: Instr, size: int, span: Span) -> None:
    """What a reduction's one value per row leaves a row operation of `size` to do."""
    if rowdef.size == "k" and x.kind is Kind.ROW and size != 1:
        raise KindError(
            span,
            f"{name}({size}) of one column per row leaves no column",
            "a reduction before it left one value per row",
        )
    if rowdef.affine and x.kind is Kind.ROW:
        raise NotSupportedError(
            span,
            f"'{name}' of the one value per row a reduction leaves is not supported",
            "apply it before the reduction",
        )


def columns(values: Builder, args: Sequence[Instr], kind: Kind, span: Span) -> int:
    """The pool of an elementwise result (ir.Instr.pool), after checking that its
    arguments come from one segment and have the same columns."""
    segments = {values.segments[a.id] for a in args} - {-1}
    if len(segments) > 1:
        later = values.body[max(segments)]
        raise NotSupportedError(
            span,
            f"this combines a value from before the row operation '{later.op}' (at "
            f"{later.span}) with one from after it",
            "a value bound before a row operation cannot be used after it; "
            "recompute it, or apply it before the row operation",
        )
    segment = segments.pop() if segments else -1
    root = values.body[segment] if segment > 0 else None
    if kind is Kind.TILE and root is not None and ops.ROW_OPS[root.op].reduces:
        raise KindError(
            span,
            f"after '{root.op}' (at {root.span}) the value has one column per row; "
            "this would spread it over N columns",
            "combine it with numbers, floats, scalars and [M] vectors only",
        )
    pools = {a.pool for a in args if a.kind in (Kind.TILE, Kind.COL)}
    if len(pools) > 1:
        raise KindError(
            span,
            "this combines values with different numbers of columns: "
            + " and ".join("N" if p == 1 else f"N/{p}" for p in sorted(pools)),
            "after avgpool/maxpool(k) the value has N/k columns; [N] vectors and "
            "[M, N] inputs no longer fit it",
        )
    return pools.pop() if pools and kind is Kind.TILE else 1
