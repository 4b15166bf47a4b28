"""Pass 2, elaboration: the epilogue's steps and expressions -> SSA values.

Step by step, each name is resolved (acc, a def's parameter, a bound name, an operand;
an undeclared name becomes a required float param, with a note), each call is matched
to its op's signature and its arguments' kinds are checked (kgen.analyze.kinds), each
call of a def is inlined -- its body built again over the call's arguments -- and a row
operation is a step on acc, given its own weight and bias when it has them. Values
are built by the Builder (kgen.analyze.builder), which folds constants and shares
repeated values as it goes; the Scope (kgen.analyze.declarations) says what is
declared above the epilogue and records what the epilogue uses.

Bounded: an expression nests at most MAX_DEPTH operations, defs inlined included, and
the Builder's budget caps the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kgen import ops
from kgen.analyze.builder import Builder
from kgen.analyze.declarations import DefInfo, Scope, literal, lookup_op
from kgen.analyze.kinds import (
    bind_args,
    boolean,
    check_argument,
    check_row_operand,
    check_row_size,
    check_scalar,
    columns,
    not_comparison,
    positive_int,
)
from kgen.analyze.names import RESERVED, check_name
from kgen.errors import (
    Diagnostic,
    KindError,
    NameClashError,
    Span,
    UndefinedNameError,
    UnknownOpError,
)
from kgen.ir import Gemm, Instr, Kind, Operand, Role
from kgen.syntax import (
    MAX_DEPTH,
    Argument,
    BinOp,
    Call,
    Compare,
    EpilogueStmt,
    Expr,
    Name,
    Neg,
    Number,
    OpStep,
    depth_error,
)


def elaborate(stmt: EpilogueStmt, acc: Instr, scope: Scope, values: Builder, text: str) -> Instr:
    """The epilogue's result, its values built into `values` (`text`: the spec's, for hints)."""
    return _Elaborator(scope, values, text).epilogue(stmt, acc)


@dataclass
class _Env:
    """What names mean while building one expression."""

    acc: Instr
    bound: dict[str, tuple[Instr, Span]]  # epilogue bindings (not visible inside defs)
    def_args: dict[str, Instr] = field(default_factory=dict)
    visible_defs: int = 0  # defs[:visible_defs] may be called


class _Elaborator:
    """One epilogue being built, and how deep in it the expression being built is."""

    def __init__(self, scope: Scope, values: Builder, text: str) -> None:
        self.scope = scope
        self.values = values
        self.text = text
        self.depth = 0  # operators and calls enclosing the expression being built
        self.inlining: list[Span] = []  # the def calls whose bodies are being built

    # -- steps -----------------------------------------------------------------

    def epilogue(self, stmt: EpilogueStmt, acc: Instr) -> Instr:
        env = _Env(acc=acc, bound={}, visible_defs=len(self.scope.defs))
        self.values.budget.defs = bool(self.scope.defs)
        for step in stmt.steps:
            self.values.budget.step = step.span
            if isinstance(step, OpStep):
                env.acc = self._op_step(step, env)
                continue
            target = step.target
            value = self._expr(step.value, env)
            not_comparison(value, step.value.span)
            if target.name == "acc":
                env.acc = value
                continue
            self._check_binding(target, env)
            env.bound[target.name] = (value, target.span)
        return env.acc

    def _check_binding(self, target: Name, env: _Env) -> None:
        n = target.name
        if n in env.bound:
            raise NameClashError(
                target.span,
                f"'{n}' is already bound at {env.bound[n][1]}",
                "bind each name once; use a new name for the new value",
            )
        if n in self.scope.operands:
            operand = self.scope.operands[n]
            what = (
                "an undeclared float, first used"
                if operand.implicit
                else f"a {operand.role.value}, declared"
            )
            raise NameClashError(target.span, f"'{n}' is already {what} at {operand.span}")
        if n in ("x", "weight", "bias") or n in self.scope.gemm_names:
            raise NameClashError(target.span, f"'{n}' cannot be rebound")
        check_name(target, "name")

    def _op_step(self, step: OpStep, env: _Env) -> Instr:
        name = step.op.name
        if name in self.scope.defs and self.scope.defs[name].index < env.visible_defs:
            return self._call_def(self.scope.defs[name], step.args, env.acc, step.span, env)
        if name in ops.ROW_OPS:
            return self._row_step(ops.ROW_OPS[name], step, env)
        opdef = lookup_op(self.scope, step.op, env.visible_defs, env.bound)
        if not opdef.step:
            raise UnknownOpError(
                step.op.span,
                f"'{name}' is an expression, not a step",
                f"write `acc = {name}(...)`",
            )
        return self._call_op(opdef, step.op, step.args, env.acc, step.span, env)

    def _row_step(self, rowdef: ops.RowOpDef, step: OpStep, env: _Env) -> Instr:
        """A row operation on acc (LANGUAGE.md, "Row operations")."""
        name = step.op.name
        x = env.acc
        check_row_operand(name, x, step.op.span)
        exprs = bind_args(name, rowdef.params, step.args, step.span)
        size, keepdim, args = 0, True, [x]
        for (pname, _), expr in zip(rowdef.params, exprs, strict=True):
            if pname in ("groups", "k"):
                size = positive_int(expr, name, pname, step.span)
            elif pname == "keepdim":
                keepdim = boolean(expr, name, step.span)
            elif isinstance(expr, float):
                args.append(self.values.const(expr, step.span))
            else:
                value = self._value(expr, env)
                check_scalar(name, pname, value, expr.span)
                args.append(value)
        check_row_size(rowdef, name, x, size, step.op.span)
        if rowdef.affine:
            args += [self._affine(name, part, x, step.op.span) for part in ("weight", "bias")]
        kind, pool = rowdef.result(x, size)
        return self.values.emit(
            name,
            tuple(a.id for a in args),
            kind,
            step.span,
            hint=name,
            size=size,
            keepdim=keepdim,
            pool=pool,
        )

    def _affine(self, name: str, part: str, x: Instr, span: Span) -> Instr:
        """A normalization's own weight or bias: a new vector param, named after it."""
        init = "ones" if part == "weight" else "zeros"
        operand_name, n = f"{name}_{part}", 1
        while operand_name in self.scope.operands or operand_name in RESERVED:
            n += 1
            operand_name = f"{name}{n}_{part}"
        self.scope.add(Operand(operand_name, Role.VECTOR, Kind.COL, span, init, pool=x.pool))
        self.scope.used_operands.add(operand_name)
        return self.values.emit(
            "load", (), Kind.COL, span, attr=operand_name, hint=part, pool=x.pool
        )

    # -- calls -----------------------------------------------------------------

    def _call_op(
        self,
        opdef: ops.OpDef,
        name: Name,
        args: tuple[Argument, ...],
        x: Instr | None,
        span: Span,
        env: _Env,
    ) -> Instr:
        """Apply a built-in op; `x` is acc for a step, None when called as a function."""
        params: list[tuple[str, float | None]] = [(p.name, p.default) for p in opdef.params]
        if x is None:
            params.insert(0, (opdef.x_name, None))
        exprs = bind_args(name.name, params, args, span)
        types = [p.type for p in opdef.params]
        if x is None:
            types.insert(0, opdef.x_type)
        values: list[Instr] = [] if x is None else [x]
        for (pname, _), expr, type_ in zip(params, exprs, types, strict=False):
            if isinstance(expr, float):
                values.append(self.values.const(expr, span))
                continue
            value = self._expr(expr, env, allow_compare=type_ is ops.ArgType.BOOL)
            check_argument(opdef, pname, type_, value, expr.span)
            values.append(value)
        if x is not None:
            check_argument(opdef, "x", opdef.x_type, x, span)
        implicit = [self._implicit(n, name.span) for n in opdef.implicit]
        return self._apply(opdef, [values[0], *implicit, *values[1:]], span)

    def _implicit(self, operand: str, span: Span) -> Instr:
        """An op's implicit argument: the linear's bias (the step `bias`)."""
        assert operand == "bias"
        if not self.scope.has_bias:
            if self.scope.gemm is Gemm.MATMUL:
                hint = "matmul has no bias; declare `param b: vector[N] = zeros` and use add(b)"
            else:
                hint = "remove 'bias', or drop bias=false from the gemm"
            raise UndefinedNameError(span, "this gemm has no bias", hint)
        self.scope.bias_applied = True
        return self._operand_value("bias", span)

    def _call_def(
        self, info: DefInfo, args: tuple[Argument, ...], x: Instr | None, span: Span, env: _Env
    ) -> Instr:
        """A def inlined: its body built over the call's arguments (acc: `x` for a step)."""
        stmt = info.stmt
        info.used = True
        params: list[tuple[str, float | None]] = [
            (p.name.name, literal(p.default) if p.default is not None else None)
            for p in stmt.params
        ]
        if x is None:
            params.insert(0, ("acc", None))
        exprs = bind_args(stmt.name.name, params, args, span)
        values: list[Instr] = [] if x is None else [x]
        for expr in exprs:
            if isinstance(expr, float):
                values.append(self.values.const(expr, span))
            else:
                value = self._expr(expr, env)
                not_comparison(value, expr.span)
                values.append(value)
        names = ["acc", *(p.name.name for p in stmt.params)]
        inner = _Env(
            acc=values[0],
            bound={},
            def_args=dict(zip(names, values, strict=False)),
            visible_defs=info.index,
        )
        self.inlining.append(span)
        try:
            return self._expr(stmt.body, inner)
        finally:
            self.inlining.pop()

    def _apply(self, opdef: ops.OpDef, args: list[Instr], span: Span) -> Instr:
        """`opdef` on `args` (already checked): folded if it can be, else a new value."""
        folded = self.values.fold(opdef, args, span)
        if folded is not None:
            return folded
        kind = opdef.result_kind(args)
        pool = columns(self.values, args, kind, span)
        return self.values.emit(
            opdef.name, tuple(a.id for a in args), kind, span, boolean=opdef.boolean, pool=pool
        )

    # -- expressions -----------------------------------------------------------

    def _expr(self, e: Expr, env: _Env, allow_compare: bool = False) -> Instr:
        self.values.budget.tick(e.span)
        if isinstance(e, Number):
            return self.values.const(literal(e), e.span)
        if isinstance(e, Name):
            return self._name(e, env)
        # The parser bounds how deeply an expression is written; defs inlined into
        # one another could still nest without bound (and recurse: a few frames a level).
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise depth_error(
                    self.inlining[0] if self.inlining else e.span, inlined=bool(self.inlining)
                )
            return self._operation(e, env, allow_compare)
        finally:
            self.depth -= 1

    def _operation(self, e: Expr, env: _Env, allow_compare: bool) -> Instr:
        if isinstance(e, Neg):
            return self._apply(ops.OPS["neg"], [self._value(e.operand, env)], e.span)
        if isinstance(e, BinOp):
            left, right = self._value(e.left, env), self._value(e.right, env)
            return self._apply(ops.OPS[ops.BINARY_OPERATORS[e.op]], [left, right], e.span)
        if isinstance(e, Compare):
            if not allow_compare:
                raise KindError(
                    e.span,
                    "a comparison can only be where's first argument",
                    f"write where({_text(self.text, e.span)}, a, b)",
                )
            left, right = self._value(e.left, env), self._value(e.right, env)
            return self._apply(ops.OPS[ops.COMPARISONS[e.op]], [left, right], e.span)
        assert isinstance(e, Call)
        return self._call(e, env)

    def _value(self, e: Expr, env: _Env) -> Instr:
        value = self._expr(e, env)
        not_comparison(value, e.span)
        return value

    def _call(self, call: Call, env: _Env) -> Instr:
        name = call.func.name
        if name in self.scope.defs and self.scope.defs[name].index < env.visible_defs:
            return self._call_def(self.scope.defs[name], call.args, None, call.span, env)
        opdef = lookup_op(self.scope, call.func, env.visible_defs, env.bound)
        return self._call_op(opdef, call.func, call.args, None, call.span, env)

    def _name(self, name: Name, env: _Env) -> Instr:
        n = name.name
        if n == "acc":
            return env.acc
        if n in env.def_args:
            return env.def_args[n]
        if n in env.bound:
            return env.bound[n][0]
        if n in self.scope.operands:
            return self._operand_value(n, name.span)
        if n in ("x", "weight"):
            raise UndefinedNameError(
                name.span,
                f"'{n}' is a GEMM operand; the epilogue sees only the product, acc",
            )
        if n in self.scope.later:
            raise UndefinedNameError(
                name.span,
                f"'{n}' is used here but declared below, at {self.scope.later[n]}",
                "declare vectors, scalars and inputs above the line that uses them",
            )
        if n == "bias":  # (with a bias, it is an operand and found above)
            raise UndefinedNameError(name.span, "this gemm has no bias")
        if n in self.scope.gemm_names:
            raise UndefinedNameError(
                name.span, f"'{n}' is a gemm size, not a value in the epilogue"
            )
        # An undeclared name becomes a required float param (LANGUAGE.md), with a note.
        check_name(name, "name")
        self.scope.notes.append(
            Diagnostic(name.span, f"'{n}' is not declared; it becomes a required float argument")
        )
        self.scope.add(Operand(n, Role.FLOAT, Kind.SCALAR, name.span, None, implicit=True))
        return self._operand_value(n, name.span)

    def _operand_value(self, name: str, span: Span) -> Instr:
        operand = self.scope.operands[name]
        self.scope.used_operands.add(name)
        if operand.role is Role.BIAS:
            self.scope.bias_applied = True
        op = "arg" if operand.role is Role.FLOAT else "load"
        return self.values.emit(op, (), operand.kind, span, attr=name, hint=name)


def _text(text: str, span: Span) -> str:
    """The source text under a one-line span, each run of blanks one space."""
    lines = text.split("\n")
    if span.line != span.end_line or span.line > len(lines):
        return "..."
    return " ".join(lines[span.line - 1][span.column - 1 : span.end_column - 1].split())
