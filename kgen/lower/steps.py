"""The row operations of a kernel as a plan (LANGUAGE.md, "Row operations"; the two
strategies: kgen/lower/rows.py): one `RowStep` per row operation in order -- which
segment it needs, whether it may run in two passes -- and the statistics each keeps.
Data only: the epilogue writer follows it (kgen/lower/epilogue.py), the row strategies
arrange it (kgen/lower/rows.py), the runtime plans launches from its `table`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from kgen.ir import Instr, Kernel, Kind
from kgen.ops import ROW_OPS, RowKind, RowOpDef
from kgen.runtime import rowplan
from kgen.runtime.rowplan import RowOp, RowPlan

# fp32 statistics per row and tile that a two-pass op of each family keeps
NSTATS = {"exp": 2, "moments": 3, "sum": 1, "max": 1, "min": 1}


@dataclass(frozen=True)
class RowStep:
    """A row operation as the plan and the lowering see it."""

    index: int  # its number among the kernel's row ops: SPLIT == index cuts there
    instr: Instr
    rowdef: RowOpDef
    pool: int  # GEMM columns per column of its input
    trivial: bool  # its input is one value per row: it is elementwise
    whole: bool  # its segment is the whole row
    can_split: bool  # may run in two passes: not a pool, only trivial row ops after it


def steps(kernel: Kernel) -> list[RowStep]:
    result = []
    row_ops = kernel.row_ops
    trivial = [kernel.value(i.args[0]).kind is not Kind.TILE for i in row_ops]
    for index, instr in enumerate(row_ops):
        rowdef = ROW_OPS[instr.op]
        x = kernel.value(instr.args[0])
        whole = not rowdef.size
        can_split = (
            not trivial[index] and rowdef.kind is not RowKind.POOL and all(trivial[index + 1 :])
        )
        result.append(RowStep(index, instr, rowdef, x.pool, trivial[index], whole, can_split))
    return result


def table(kernel: Kernel) -> tuple[RowOp, ...]:
    """The row operations as the runtime's plan reads them, in order."""
    return tuple(
        RowOp(
            s.instr.op,
            s.instr.op if s.instr.op == "groupnorm" else s.rowdef.kind.value,
            s.instr.size,
            s.pool,
            s.trivial,
            s.whole,
            s.can_split,
        )
        for s in steps(kernel)
    )


def plan_function(kernel: Kernel) -> Callable[[int, int], RowPlan]:
    """`plan(N, block_n)` for this kernel: what the generated module's runtime runs."""
    return functools.partial(rowplan.plan, kernel.name, table(kernel))


def stat_count(kernel: Kernel) -> int:
    """Floats per row and tile of the stats buffer: the most any split op needs."""
    return max((NSTATS[s.rowdef.family] for s in steps(kernel) if s.can_split), default=1)


def finish_needed(kernel: Kernel) -> bool:
    return any(s.can_split for s in steps(kernel))
