"""The SSA body the elaboration builds, value by value, with its two rules.

`Builder.emit` appends an `Instr` (kgen.ir) and records its segment (the row
operation it derives from, `Kernel.segments`); `Builder.fold` is tried first on every
op. Both rules apply as each value is built, not as passes over the finished body:

- fold (constant folding): `where` on a constant condition is the branch it picks,
  and an op on constants is the constant it gives (evaluated with its torch
  reference, in float64; a result that is not finite stays an op). It must come
  before an op's kind and segment checks, because a `where` whose condition is a
  constant, as in a def with a numeric parameter (`where(s > 0, a, b)`), picks its
  branch before them: the branch not taken may not fit.
- CSE (value numbering): an instruction equal to one already built (same op,
  arguments and attributes) is that one; the first keeps its position and hint.
  Segments belong to instructions, and the segment checks run as values are built,
  so sharing must happen then too: in `g = acc; softmax; h = acc; acc = g; softmax;
  acc = acc + h` the two softmaxes are one value and `acc + h` is legal, which it
  would not be were they two until a later pass merged them.

The `Budget` counts the work (MAX_OPERATIONS, set by kgen.analyze): every value the
elaboration evaluates and every one it emits, shared ones included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kgen import ops
from kgen.errors import LimitError, Span
from kgen.ir import Instr, Kind

# what makes two instructions one value (CSE): all but their kind, which follows
# from the op and the arguments, and their position and hint, the first one's
_Key = tuple[str, tuple[int, ...], float | str | None, bool, int, bool, int]


@dataclass
class Budget:
    """The work one spec may take to analyze: each call of a def repeats its body, so a
    few lines of defs calling defs could otherwise ask for billions of operations."""

    limit: int
    work: int = 0
    step: Span | None = None  # the epilogue step being built: where going over is reported
    defs: bool = False  # whether the epilogue can call defs (then the hint says what to do)

    def tick(self, span: Span) -> None:
        self.work += 1
        if self.work > self.limit:
            inlined = " once its defs are inlined" if self.defs else ""
            raise LimitError(
                self.step or span,
                f"the epilogue is too large: more than {self.limit} operations{inlined}",
                (
                    "each call of a def repeats its body: bind a value used more than once to a "
                    "name (`z = f(acc)`) and use the name"
                    if self.defs
                    else None
                ),
            )


class Builder:
    """The body under construction: instructions numbered in the order they are built."""

    def __init__(self, limit: int) -> None:
        self.body: list[Instr] = []
        self.budget = Budget(limit)
        self.segments: dict[int, int] = {}  # value id -> its segment (ir.Kernel.segments)
        self._numbers: dict[_Key, int] = {}  # an instruction's key -> its id (CSE)

    def emit(
        self,
        op: str,
        args: tuple[int, ...],
        kind: Kind,
        span: Span,
        attr: float | str | None = None,
        boolean: bool = False,
        hint: str = "",
        size: int = 0,
        keepdim: bool = True,
        pool: int = 1,
    ) -> Instr:
        """The value `op` of `args`: a new instruction, or the equal one built before."""
        self.budget.tick(span)
        key = (op, args, attr, boolean, size, keepdim, pool)
        if key in self._numbers:  # CSE
            return self.body[self._numbers[key]]
        row = ops.ROW_OPS[op].kind.value if op in ops.ROW_OPS else ""
        instr = Instr(
            len(self.body),
            op,
            args,
            kind,
            span,
            attr,
            boolean,
            hint or op,
            size,
            keepdim,
            pool,
            row,
        )
        self.body.append(instr)
        self._numbers[key] = instr.id
        self.segments[instr.id] = self._segment(instr)
        return instr

    def _segment(self, instr: Instr) -> int:
        """0: the gemm's; a row operation's id: its own and its dependents'; -1: none."""
        if instr.op == "gemm":
            return 0
        if instr.op in ops.ROW_OPS:
            return instr.id
        return max((self.segments[a] for a in instr.args), default=-1)

    def gemm(self) -> Instr:
        """The accumulator, value 0."""
        return self.emit("gemm", (), Kind.TILE, Span.point(1, 1), hint="acc")

    def const(self, value: float, span: Span, boolean: bool = False) -> Instr:
        return self.emit("const", (), Kind.SCALAR, span, float(value), boolean, hint="const")

    def fold(self, opdef: ops.OpDef, args: Sequence[Instr], span: Span) -> Instr | None:
        """`opdef` of `args` folded to a branch or a constant, or None if it does not fold."""
        if opdef.name == "where" and args[0].op == "const":
            return args[1] if args[0].attr else args[2]
        if all(a.op == "const" for a in args):
            value = _evaluate(opdef, [float(a.attr) for a in args])  # type: ignore[arg-type]
            if value is not None:
                return self.const(value, span, boolean=opdef.boolean)
        return None


def _evaluate(opdef: ops.OpDef, values: list[float]) -> float | None:
    """An op on constants with its torch reference (float64), or None if not finite."""
    tensors = [torch.tensor(v, dtype=torch.float64) for v in values]
    args: list[object] = []
    for t, type_ in zip(tensors, opdef.arg_types, strict=False):
        args.append(float(t) if type_ is ops.ArgType.SCALAR else t)
    result = float(opdef.reference(*args))
    if opdef.boolean:
        return 1.0 if result else 0.0
    return result if math.isfinite(result) else None
