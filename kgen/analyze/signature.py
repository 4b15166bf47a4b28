"""The generated module's signature, decided once the epilogue is built.

Its operands in order (`operands`): the linear's bias, the params and inputs as they
are written, then the undeclared names as they are first used. The nn.Module
constructor's arguments (`constructor`): the gemm's size names and the float and
scalar params, or the `init` statement's list, checked against them. And the notes
on what the signature holds that nothing uses (`note_unused`): a bias never applied,
a param or input never read.
"""

from __future__ import annotations

from kgen.analyze.declarations import Heading, Scope
from kgen.analyze.names import check_name
from kgen.errors import Diagnostic, KindError, NameClashError, Span, UndefinedNameError
from kgen.ir import InitArg, Operand, Role


def operands(scope: Scope) -> tuple[Operand, ...]:
    """The linear's bias, then params and inputs as written, then undeclared names as used."""
    return tuple(
        sorted(scope.operands.values(), key=lambda o: (o.role is not Role.BIAS, o.implicit, o.span))
    )


def constructor(heading: Heading, scope: Scope) -> tuple[InitArg, ...]:
    """ModelNew's arguments: from `init` if the spec has one, else the sizes and params."""
    in_f, out_f = heading.in_features, heading.out_features
    # declared float and scalar params in the order they are written, then the
    # undeclared names in the order they are first used
    params = sorted(
        (o for o in scope.operands.values() if o.role in (Role.FLOAT, Role.SCALAR)),
        key=lambda o: (o.implicit, o.span),
    )
    # one constructor argument per size name: linear(d, d) takes d once
    sizes = [(n, t) for n, t in ((in_f, "in"), (out_f, "out")) if isinstance(n, str)]
    sizes = [s for i, s in enumerate(sizes) if s[0] not in [n for n, _ in sizes[:i]]]
    stmt = heading.init
    if stmt is None:
        args = [InitArg(n, t) for n, t in sizes]
        args += [InitArg(p.name, "param", p.default) for p in params]
        return tuple(args)
    result: list[InitArg] = []
    seen: set[str] = set()
    for name in stmt.names:
        n = name.name
        if n in seen:
            raise NameClashError(name.span, f"'{n}' appears twice in init")
        seen.add(n)
        if n in scope.gemm_names:
            result.append(InitArg(n, "in" if n == in_f else "out"))
        elif n in scope.operands:
            operand = scope.operands[n]
            if operand.role not in (Role.FLOAT, Role.SCALAR):
                raise KindError(
                    name.span,
                    f"'{n}' is a {operand.role.value}; only float and scalar params take their value from init",
                )
            result.append(InitArg(n, "param", operand.default))
        else:
            check_name(name, "init argument")
            scope.notes.append(
                Diagnostic(
                    name.span,
                    f"init argument '{n}' is used nowhere; ModelNew accepts and ignores it",
                )
            )
            result.append(InitArg(n, "ignored"))
    for n, _ in sizes:
        if n not in seen:
            raise UndefinedNameError(stmt.span, f"init must include the gemm size '{n}'")
    for p in params:
        if p.role is Role.FLOAT and p.default is None and p.name not in seen:
            raise UndefinedNameError(
                stmt.span,
                f"the float param '{p.name}' has no default and is not in init",
                "give it a default or add it to init",
            )
    return tuple(result)


def note_unused(heading: Heading, scope: Scope) -> None:
    """Notes on a bias never applied and on params and inputs never used."""
    if scope.has_bias and not scope.bias_applied:
        if heading.gemm_stmt is not None:
            span = heading.gemm_stmt.span
        else:
            span = heading.epilogue.span if heading.epilogue is not None else Span.point(1, 1)
        scope.notes.append(
            Diagnostic(
                span,
                "the linear's bias is never applied; add the step 'bias' or write bias=false",
            )
        )
    for operand in scope.operands.values():
        if operand.role is not Role.BIAS and operand.name not in scope.used_operands:
            scope.notes.append(
                Diagnostic(operand.span, f"{operand.role.value} '{operand.name}' is never used")
            )
