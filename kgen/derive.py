"""The derivative as an IR pass: reverse mode over a kernel's epilogue.

    derive(kernel) -> Backward

The backward of `y = epilogue(acc)` is another epilogue, over the same IR: it
recomputes the forward values the derivative needs from the saved accumulator (the
GEMM's result before the epilogue, `acc`), reads the gradient reaching the output
(the operand `_dout`), and ends in one value per gradient: the accumulator's (`dz`,
from which the GEMMs' gradients follow: dx = dz W, dW = dz^T x) and each tensor
operand's. Every op's derivative is its registry entry's rule (`OpDef.grad`,
`RowOpDef.grad`), written in registry ops through the builder `Rules`: a new op is
differentiable by adding one rule, and the backward lowers with the same writer as
the forward (kgen/lower/backward.py), the oracle evaluates it with the same
references (kgen.reference), and nothing here knows Triton or torch.

Gradients are kept *unreduced*: the gradient of a value of kind [N] (a bias, or a
value made from one) is carried at the kind of what it reached, [M, N], and summed
over rows only where the kernel stores it (`Backward.grads`; the kernel keeps one
partial sum per tile). Every rule is linear in g, so summing at the end is the same
as summing at each step, and a tile kernel needs no communication until its store.
So a gradient G held for a value v means: G summed over the dimensions (rows,
columns) that G has and v has not, broadcast over those v has and G has not. Every
gradient varies over the rows (the output's gradient does, and each rule multiplies
by g); one that does not vary over the columns, reaching through an op that does a
value that does not, is N times the sum (the one place `derive` scales).
A row operation's rule may reduce a gradient over the row (softmax's sum of g y):
the backward kernel then holds whole rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from kgen.errors import Span
from kgen.ir import Instr, Kernel, Kind, Operand, Role
from kgen.ops import ALL_ROW_OPS, OPS, ROW_OPS, RowKind

DOUT = "_dout"  # the gradient of the output: a tensor operand of the backward
COUNT = "N"  # the number of columns of a row, as an fp32 argument of the backward
ACC = "acc"  # the accumulator's gradient, in Backward.grads


# Does a value of this kind vary over the columns?
_COLUMNS = {Kind.SCALAR: False, Kind.ROW: False, Kind.COL: True, Kind.TILE: True}


class NotDifferentiable(Exception):
    """The kernel uses an op that has no derivative rule yet."""

    def __init__(self, op: str, span: Span) -> None:
        super().__init__(f"{op} has no derivative rule yet")
        self.op = op
        self.span = span


@dataclass(frozen=True)
class Backward:
    """The backward of a kernel: `kernel` is its IR (the forward values it recomputes,
    then the gradients; operands: the forward's, `_dout` and the float `N`), `grads`
    names the value each gradient is (None: zero): ("acc", id) first, then each tensor
    operand of the forward (bias first) with the kind it is summed to. `saves_acc`:
    the backward reads the accumulator, so the forward must save it."""

    kernel: Kernel
    grads: tuple[tuple[str, int | None], ...]
    saves_acc: bool
    # the windows of the forward's pools (of more than one column), in order: each
    # pools the previous one's result (the levels 1, k0, k0 k1, ... of its values)
    windows: tuple[int, ...] = ()

    @property
    def rows(self) -> bool:
        """Does the backward need whole rows (a row operation, forward or backward)?"""
        return any(i.row for i in self.kernel.body)


def _fp32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


class Value:
    """An IR value while the rules build: arithmetic and comparisons make new ones."""

    __slots__ = ("id", "rules")

    def __init__(self, rules: Rules, id_: int) -> None:
        self.rules = rules
        self.id = id_

    @property
    def kind(self) -> Kind:
        return self.rules.body[self.id].kind

    @property
    def pool(self) -> int:
        return self.rules.body[self.id].pool

    def _op(self, name: str, *args: Any) -> Value:
        return self.rules.op(name, *args)

    def __add__(self, other: Any) -> Value:
        return self._op("add", self, other)

    def __radd__(self, other: Any) -> Value:
        return self._op("add", other, self)

    def __sub__(self, other: Any) -> Value:
        return self._op("sub", self, other)

    def __rsub__(self, other: Any) -> Value:
        return self._op("sub", other, self)

    def __mul__(self, other: Any) -> Value:
        return self._op("mul", self, other)

    def __rmul__(self, other: Any) -> Value:
        return self._op("mul", other, self)

    def __truediv__(self, other: Any) -> Value:
        return self._op("div", self, other)

    def __rtruediv__(self, other: Any) -> Value:
        return self._op("div", other, self)

    def __neg__(self) -> Value:
        return self._op("neg", self)

    def __lt__(self, other: Any) -> Value:
        return self._op("lt", self, other)

    def __le__(self, other: Any) -> Value:
        return self._op("le", self, other)

    def __gt__(self, other: Any) -> Value:
        return self._op("gt", self, other)

    def __ge__(self, other: Any) -> Value:
        return self._op("ge", self, other)


class Rules:
    """The builder the derivative rules write through: `d.sigmoid(x)`, `d.where(c,
    a, b)`, `d.row_sum(v)`, `d.count()`, Python numbers as constants, operators on
    values. It appends to the body with value numbering (an op on the same arguments
    is one value, forward values included) and folds `v * 1`, `v + 0` and constants.
    `span` and `hint` are those of the op whose rule is running."""

    def __init__(self, body: list[Instr]) -> None:
        self.body = body
        self.numbers: dict[tuple[Any, ...], int] = {}
        for instr in body:
            self.numbers.setdefault(self._key(instr), instr.id)
        self.span = body[0].span
        self.hint = "d"
        self.size = 0  # the running op's groups (a row op's segments), for group_mean
        self.level = 1  # the columns of the input of the op whose rule is running

    @staticmethod
    def _key(instr: Instr) -> tuple[Any, ...]:
        attr = repr(instr.attr) if instr.op == "const" else instr.attr
        return (instr.op, instr.args, attr, instr.size, instr.keepdim, instr.pool)

    def emit(self, op: str, args: tuple[int, ...], kind: Kind, **fields: Any) -> Value:
        instr = Instr(len(self.body), op, args, kind, self.span, hint=self.hint, **fields)
        key = self._key(instr)
        found = self.numbers.get(key)
        if found is not None:
            return Value(self, found)
        self.body.append(instr)
        self.numbers[key] = instr.id
        return Value(self, instr.id)

    def value(self, v: Any) -> Value:
        if isinstance(v, Value):
            return v
        return self.emit("const", (), Kind.SCALAR, attr=_fp32(float(v)))

    def const(self, v: Value) -> float | None:
        instr = self.body[v.id]
        return float(instr.attr) if instr.op == "const" else None  # type: ignore[arg-type]

    def op(self, name: str, *args: Any) -> Value:
        values = [self.value(a) for a in args]
        folded = self._fold(name, values)
        if folded is not None:
            return folded
        opdef = OPS[name]
        kind = Kind.SCALAR
        for v in values:
            kind = kind.join(v.kind)
        # (after a pool: the columns of its values, which the rules never mix)
        pools = {v.pool for v in values if v.kind in (Kind.TILE, Kind.COL)}
        assert len(pools) <= 1, f"{name} of values of different columns {sorted(pools)}"
        pool = pools.pop() if pools and kind is Kind.TILE else 1
        return self.emit(name, tuple(v.id for v in values), kind, boolean=opdef.boolean, pool=pool)

    def _fold(self, name: str, values: list[Value]) -> Value | None:
        consts = [self.const(v) for v in values]
        if name in ("add", "sub", "mul", "div", "neg") and all(c is not None for c in consts):
            a = consts[0]
            b = consts[1] if len(consts) > 1 else 0.0
            assert a is not None and b is not None
            if name == "div" and b == 0.0:
                return None
            result = {"add": a + b, "sub": a - b, "mul": a * b, "div": a / (b or 1.0)}.get(name, -a)
            return self.value(result)
        if name == "mul" and consts[0] == 1.0:
            return values[1]
        if name in ("mul", "div") and consts[1:] == [1.0]:
            return values[0]
        if name == "add" and consts[0] == 0.0:
            return values[1]
        if name in ("add", "sub") and consts[1:] == [0.0]:
            return values[0]
        return None

    def __getattr__(self, name: str) -> Any:
        if name in OPS:
            return lambda *args: self.op(name, *args)
        if name in ALL_ROW_OPS:
            return lambda v: self.row(name, v)
        raise AttributeError(name)

    def row(self, name: str, arg: Any) -> Value:
        """A whole-row operation on v. A gradient carried as one value per row stands
        for that value in every column: its row sum is N times it, its mean itself."""
        v = self.value(arg)
        rowdef = ALL_ROW_OPS[name]
        if v.kind is not Kind.TILE:
            if name == "row_sum":
                return v * self.count()
            if name in ("row_mean", "group_mean"):
                return v
            raise NotDifferentiable(name, self.span)
        if rowdef.kind is RowKind.REDUCE:
            return self.emit(name, (v.id,), Kind.ROW, row=rowdef.kind.value)
        # a segment op (group_mean, a pool's window ops) takes the segments of the op
        # whose rule is running
        size = self.size if rowdef.size else 0
        kind, pool = rowdef.result(self.body[v.id], size)
        return self.emit(name, (v.id,), kind, row=rowdef.kind.value, size=size, pool=pool)

    def spread(self, v: Any, like: Value) -> Value:
        """v (a gradient without columns, say) as a value of `like`'s columns: what
        unpool takes, which zeroes the columns no window covers."""
        value = self.value(v)
        if value.kind is like.kind and value.pool == like.pool:
            return value
        return self.op("where", self.op("ge", like, like), value, value)

    def count(self, pool: int | None = None) -> Value:
        """The number of columns in a row: the GEMM's N, or N // pool after pools (the
        float argument N, divided by the kernel's lowering and the reference); by
        default that of the running rule's input."""
        pool = self.level if pool is None else pool
        return self.emit("arg", (), Kind.SCALAR, attr=COUNT, pool=pool)


def derive(kernel: Kernel) -> Backward:
    """The backward IR of `kernel`: NotDifferentiable if an op it needs has no rule."""
    body = list(kernel.body)
    rules = Rules(body)
    result = kernel.value(kernel.result)
    rules.hint = "dout"
    pool = result.pool if result.kind is Kind.TILE else 1
    dout = rules.emit("load", (), result.kind, attr=DOUT, pool=pool)

    # which forward values a gradient can reach: those that depend on the GEMM or on a
    # tensor operand
    tensors = {o.name for o in kernel.operands if o.role.is_tensor}
    active = [False] * len(kernel.body)
    for instr in kernel.body:
        active[instr.id] = (
            instr.op == "gemm"
            or (instr.op == "load" and instr.attr in tensors)
            or any(active[a] for a in instr.args)
        ) and not instr.boolean

    for instr in kernel.body:  # the first op without a rule, in the spec's order
        if active[instr.id] and instr.op not in ("gemm", "load"):
            missing = ROW_OPS[instr.op].grad if instr.row else OPS[instr.op].grad
            if missing is None and kernel.value(instr.args[0]).kind is Kind.TILE:
                raise NotDifferentiable(instr.op, instr.span)
    # the backward kernel lays a row out in slots of one group width (kgen/lower/backward.py)
    segmented = [
        i for i in kernel.row_ops if i.size > 1 and kernel.value(i.args[0]).kind is Kind.TILE
    ]
    groupwise = [i for i in segmented if ROW_OPS[i.op].size == "groups" and active[i.id]]
    norms = [
        i
        for i in kernel.row_ops
        if ROW_OPS[i.op].affine and kernel.value(i.args[0]).kind is Kind.TILE
    ]
    for instr in groupwise[1:]:
        if instr.size != groupwise[0].size:  # the first of other groups than the first's
            raise NotDifferentiable(f"{instr.op} after one of other groups", instr.span)
    # ... and windows of pools in slots of their own: one kind of slots or the other
    all_pools = [i for i in segmented if ROW_OPS[i.op].kind is RowKind.POOL]
    pools = [i for i in all_pools if active[i.id]]
    if norms and pools:  # (a groupnorm(1) after a pool: its weight has N // k columns)
        norm, pooling = norms[0], pools[0]
        if pooling.id > norm.id:
            raise NotDifferentiable(f"{pooling.op} after a groupnorm", pooling.span)
        raise NotDifferentiable(f"groupnorm after a {pooling.op}", norm.span)

    grads: dict[int, Value] = {kernel.result: dout}
    for instr in reversed(kernel.body):
        g = grads.get(instr.id)
        if g is None or instr.op in ("gemm", "load") or not active[instr.id]:
            continue
        rules.span, rules.hint = instr.span, f"d_{instr.hint or instr.op}"
        rules.size = instr.size
        rules.level = kernel.value(instr.args[0]).pool
        y = Value(rules, instr.id)
        args = [Value(rules, a) for a in instr.args]
        if instr.row:
            rowdef = ROW_OPS[instr.op]
            if kernel.value(instr.args[0]).kind is not Kind.TILE:
                contributions = _trivial_rule(instr.op, g, args)
            elif rowdef.kind is RowKind.POOL and instr.size == 1:  # the identity
                contributions = (g,)
            elif rowdef.grad is None:
                raise NotDifferentiable(instr.op, instr.span)
            else:
                contributions = rowdef.grad(rules, g, y, *args)
        else:
            rule = OPS[instr.op].grad
            if rule is None:
                raise NotDifferentiable(instr.op, instr.span)
            contributions = rule(rules, g, y, *args)
        trivial = instr.row and kernel.value(instr.args[0]).kind is not Kind.TILE
        for i, (a, c) in enumerate(zip(instr.args, contributions, strict=True)):
            if c is None and active[a] and i > 0 and not trivial:
                # a learned tensor (a `scalar` param, say) where the rule treats the
                # argument as a constant (leaky_relu's slope, elu's alpha, eps)
                raise NotDifferentiable(f"{instr.op} with a learned {_arg(instr, i)}", instr.span)
            if c is None or not active[a]:
                continue
            rules.hint = f"d_{kernel.value(a).hint or kernel.value(a).op}"
            if _COLUMNS[instr.kind] and not (_COLUMNS[c.kind] or _COLUMNS[kernel.value(a).kind]):
                # a contribution the same in every column, to a value without columns:
                # the sum over the op's columns is N times it
                c = c * rules.count(instr.pool)
            grads[a] = _sum(rules, kernel.value(a).kind, grads[a], c) if a in grads else c

    # the gradients to store: the accumulator's, then each tensor operand's (the sum
    # over its loads)
    outputs: list[tuple[str, int | None]] = [(ACC, grads[0].id if 0 in grads else None)]
    for operand in kernel.operands:
        if not operand.role.is_tensor:
            continue
        total: Value | None = None
        for instr in kernel.body:
            if instr.op == "load" and instr.attr == operand.name and instr.id in grads:
                g = grads[instr.id]
                total = g if total is None else _sum(rules, operand.kind, total, g)
        outputs.append((operand.name, None if total is None else total.id))
    return _pruned(kernel, body, outputs, tuple(i.size for i in all_pools))


def _arg(instr: Instr, i: int) -> str:
    """The name of an op's argument i (0 is x), for messages."""
    if instr.row:
        rowdef = ROW_OPS[instr.op]
        names = [n for n, _ in rowdef.params if n not in (rowdef.size, "keepdim")]
    else:
        names = [p.name for p in OPS[instr.op].params]
    return names[i - 1] if 0 < i <= len(names) else f"argument {i}"


def _sum(rules: Rules, kind: Kind, a: Value, b: Value) -> Value:
    """Two unreduced gradients of one value of `kind`. Where that value has no columns
    and only one of the two has, the kernel will sum the total over the columns, which
    would count the other (the same in every column) N times: it enters as 1/N of
    itself per column."""
    if not _COLUMNS[kind] and _COLUMNS[a.kind] and _COLUMNS[b.kind] and a.pool != b.pool:
        # held at two column levels (before and after a pool): each summed over its
        # own level's columns first
        a, b = rules.row("row_sum", a), rules.row("row_sum", b)
    if not _COLUMNS[kind] and _COLUMNS[a.kind] != _COLUMNS[b.kind]:
        if _COLUMNS[a.kind]:
            b = b / rules.count(a.pool)
        else:
            a = a / rules.count(b.pool)
    return a + b


def _trivial_rule(op: str, g: Value, args: list[Value]) -> tuple[Any, ...]:
    """A row operation on one value per row is elementwise (kgen/lower/epilogue.py's
    `_trivial`): softmax gives 1, log_softmax and layernorm 0 (constants: no gradient),
    the rest the value itself."""
    rest = (None,) * (len(args) - 1)
    if op in ("softmax", "log_softmax", "layernorm"):
        return (None, *rest)
    return (g, *rest)


def _pruned(
    kernel: Kernel,
    body: list[Instr],
    outputs: list[tuple[str, int | None]],
    windows: tuple[int, ...],
) -> Backward:
    """The backward with only the values its gradients need, renumbered in order."""
    live: set[int] = set()
    stack = [i for _, i in outputs if i is not None]
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack.extend(body[i].args)
    renumber: dict[int, int] = {}
    kept: list[Instr] = []
    for instr in body:
        if instr.id in live:
            renumber[instr.id] = len(kept)
            args = tuple(renumber[a] for a in instr.args)
            kept.append(dataclasses.replace(instr, id=len(kept), args=args))
    if not kept or kept[0].op != "gemm":  # the accumulator stays value 0 (unread)
        kept = [dataclasses.replace(kernel.body[0], id=0)] + [
            dataclasses.replace(i, id=i.id + 1, args=tuple(a + 1 for a in i.args)) for i in kept
        ]
        renumber = {old: new + 1 for old, new in renumber.items()}
        saves_acc = False
    else:
        saves_acc = any(0 in i.args for i in kept)
    result = kernel.value(kernel.result)
    extra = (
        Operand(DOUT, Role.INPUT, result.kind, result.span, pool=result.pool),
        Operand(COUNT, Role.FLOAT, Kind.SCALAR, result.span),
    )
    grads = tuple((name, None if i is None else renumber[i]) for name, i in outputs)
    first = next((i for _, i in grads if i is not None), 0)
    backward = dataclasses.replace(
        kernel,
        name=f"{kernel.name}_backward",
        operands=kernel.operands + extra,
        body=tuple(kept),
        result=first,
        notes=(),
    )
    return Backward(backward, grads, saves_acc, windows)
