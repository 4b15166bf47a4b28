"""The IR: what a spec means, independent of how it was written or will be run.

Produced by `analyze` (stage 2), consumed by `reference` (torch oracle) and `emit`
(Triton source). A `Kernel` is the GEMM, the tensors and floats it reads (`Operand`s),
and the epilogue as a list of SSA `Instr`s over the accumulator tile, ending in one
stored value. Every value has a `Kind` -- how it varies over the [M, N] output -- so
a [N] bias is loaded once per column, not once per element.

Instructions are few and uniform:

    gemm              the fp32 accumulator, x @ weight^T (linear) or x @ weight (matmul)
    const  VALUE      a number
    arg    NAME       a float param, passed to the kernel by value
    load   NAME       a tensor operand (bias, vector/scalar param, input)
    OP     ARGS...    a registry op (kgen.ops.OPS), arguments by value id
    ROWOP  ARGS...    a row operation (kgen.ops.ROW_OPS): softmax, groupnorm, maxpool, ...
                      (its `row` field holds its kind, so the IR needs no registry)

Row operations need a whole row, or a group of columns, of their first argument.
A value's columns are the GEMM's (`pool` = 1) or windows of `pool` GEMM columns
after pooling; a reduction leaves one value per row (kind [M]). Every value that
depends on the GEMM belongs to a *segment*: the gemm's, or that of the last row
operation it derives from; an instruction never mixes two segments, so the row
operations form one chain gemm -> R1 -> R2 -> ..., and a lowering can cut the
epilogue at any of them (`segment`).

kgen.verify checks the invariants; `format_kernel` prints it (`kgen show --ir`). This
module imports nothing of kgen's but its errors: it is the leaf the rest builds on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kgen.errors import Diagnostic, Span


class Kind(enum.Enum):
    """How a value varies over the output tile; ordered by how much it varies."""

    SCALAR = "scalar"
    ROW = "[M]"
    COL = "[N]"
    TILE = "[M, N]"

    def join(self, other: Kind) -> Kind:
        """The kind of an elementwise combination (broadcasting)."""
        if self is other or other is Kind.SCALAR:
            return self
        if self is Kind.SCALAR:
            return other
        return Kind.TILE


class Gemm(enum.Enum):
    LINEAR = "linear"  # x[M, K] @ weight[N, K]^T
    MATMUL = "matmul"  # x[M, K] @ weight[K, N]


DTYPES = ("float16", "bfloat16", "float32")
PRECISIONS = ("tf32x3", "bf16x3", "ieee", "tf32")
DEFAULT_PRECISION = "tf32x3"


class Role(enum.Enum):
    """What an operand is, which decides who owns it and how the kernel reads it."""

    BIAS = "bias"  # the linear's bias [N], owned by the module
    VECTOR = "vector"  # `param NAME: vector[N]`, owned by the module
    SCALAR = "scalar"  # `param NAME: scalar`, a learned 0-dim tensor
    INPUT = "input"  # `input NAME: [...]`, passed at call time
    FLOAT = "float"  # `param NAME: float` or an undeclared name: a runtime float

    @property
    def is_tensor(self) -> bool:
        return self is not Role.FLOAT


@dataclass(frozen=True)
class Operand:
    name: str
    role: Role
    kind: Kind
    span: Span
    # FLOAT: the default value (None: required). VECTOR/SCALAR: the initialiser,
    # "randn" | "zeros" | "ones" or a number. Otherwise None.
    default: float | str | None = None
    implicit: bool = False  # an undeclared name that became a required float
    pool: int = 1  # a groupnorm's weight and bias: its value's columns (Instr.pool)


@dataclass(frozen=True)
class Instr:
    id: int
    op: str
    args: tuple[int, ...]
    kind: Kind
    span: Span
    attr: float | str | None = None  # const: the value; arg/load: the operand name
    boolean: bool = False
    hint: str = ""  # a readable name for the emitted temporary
    size: int = 0  # row ops: groupnorm's groups, a pool's window; else 0
    keepdim: bool = True  # reductions: keep the reduced dimension ([M, 1], else [M])
    pool: int = 1  # [M, N] values: GEMM columns per column (after avgpool/maxpool)
    # a row operation's kind (kgen.ops.RowKind's value: "normalize", "reduce", "pool"),
    # "" for every other instruction: what the IR itself needs to know of the registry
    row: str = ""


@dataclass(frozen=True)
class InitArg:
    """One constructor argument of the generated nn.Module."""

    name: str
    target: str  # "in" | "out" (gemm sizes), "param" (float/scalar param), "ignored"
    default: float | str | None = None


@dataclass(frozen=True)
class Kernel:
    name: str
    filename: str  # the spec's file name (no directories), for provenance
    source: str  # the spec text
    gemm: Gemm
    in_features: str | int
    out_features: str | int
    operands: tuple[Operand, ...]
    init: tuple[InitArg, ...]
    body: tuple[Instr, ...]
    result: int
    output_dtype: str | None  # None: x's dtype
    precision: str
    notes: tuple[Diagnostic, ...] = field(default=(), compare=False)

    @property
    def has_bias(self) -> bool:
        return any(op.role is Role.BIAS for op in self.operands)

    def operand(self, name: str) -> Operand:
        for op in self.operands:
            if op.name == name:
                return op
        raise KeyError(name)

    @property
    def tensors(self) -> tuple[Operand, ...]:
        """Tensor operands after x, weight and bias: call order of the generated function."""
        return tuple(o for o in self.operands if o.role.is_tensor and o.role is not Role.BIAS)

    @property
    def floats(self) -> tuple[Operand, ...]:
        return tuple(o for o in self.operands if o.role is Role.FLOAT)

    def value(self, id_: int) -> Instr:
        instr = self.body[id_]
        assert instr.id == id_
        return instr

    def segments(self) -> list[int]:
        """Each value's segment: the id of the last row op it derives from, 0 for
        values of the gemm's segment, -1 for values that do not depend on the gemm."""
        seg: list[int] = []
        for instr in self.body:
            if instr.op == "gemm":
                seg.append(0)
            elif instr.row:
                seg.append(instr.id)
            else:
                seg.append(max((seg[a] for a in instr.args), default=-1))
        return seg

    @property
    def row_ops(self) -> tuple[Instr, ...]:
        """The row operations the result derives from, first to last."""
        return tuple(i for i in self.body if i.row)

    def output_columns(self) -> tuple[str, int]:
        """The stored value's columns: ("N", pool) for [M, N // pool] (pool 1: [M, N]),
        ("1", 0) for [M, 1] and ("", 0) for [M], after a reduction."""
        reduced = [i for i in self.row_ops if i.row == "reduce"]
        result = self.value(self.result)
        if reduced and result.kind is Kind.ROW:
            return ("1", 0) if reduced[-1].keepdim else ("", 0)
        return ("N", result.pool if result.kind is Kind.TILE else 1)


# ---------------------------------------------------------------------------
# Printing


def _value(instr: Instr) -> str:
    if instr.op == "const":
        return repr(instr.attr)
    return f"%{instr.id}"


def format_instr(instr: Instr, body: tuple[Instr, ...] | None = None) -> str:
    kind = "bool" if instr.boolean else instr.kind.value
    if instr.op == "gemm":
        rhs = "gemm x, weight"
    elif instr.op == "const":
        rhs = f"const {instr.attr!r}"
    elif instr.op in ("arg", "load"):
        rhs = f"{instr.op} {instr.attr}"
    else:
        shown = [_value(body[a]) if body else f"%{a}" for a in instr.args]
        rhs = f"{instr.op} " + ", ".join(shown) if shown else instr.op
        if instr.size:
            rhs += f" [{instr.size}]"
        if not instr.keepdim:
            rhs += " keepdim=false"
    if instr.pool > 1:
        kind += f"/{instr.pool}"
    return f"%{instr.id:<3} {kind:<8} = {rhs}"


def format_kernel(kernel: Kernel) -> str:
    """A readable listing of the IR (stable: tests and `kgen show --ir` use it)."""
    lines = [f"kernel {kernel.name}  # from {kernel.filename}"]
    bias = ", bias" if kernel.has_bias else ""
    if kernel.gemm is Gemm.LINEAR:
        shape = (
            f"x[M, {kernel.in_features}] @ weight[{kernel.out_features}, {kernel.in_features}]^T"
        )
    else:
        shape = f"x[M, {kernel.in_features}] @ weight[{kernel.in_features}, {kernel.out_features}]"
    lines.append(f"  gemm {kernel.gemm.value}: {shape}{bias}")
    lines.append(f"  precision {kernel.precision}; output {kernel.output_dtype or 'dtype of x'}")
    for op in kernel.operands:
        extra = ""
        if op.role is Role.FLOAT:
            extra = " (required)" if op.default is None else f" = {op.default!r}"
            if op.implicit:
                extra += ", undeclared"
        elif op.default is not None:
            extra = f" = {op.default}"
        lines.append(f"  {op.role.value:<6} {op.name}: {op.kind.value}{extra}")
    lines.append("  init(" + ", ".join(a.name for a in kernel.init) + ")")
    for instr in kernel.body:
        if instr.op == "const":
            continue
        where = f"{instr.span.line}:{instr.span.column}"
        lines.append(f"  {format_instr(instr, kernel.body):<52} # {where}")
    lines.append(f"  store {_value(kernel.body[kernel.result])}")
    return "\n".join(lines) + "\n"
