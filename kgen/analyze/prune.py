"""Pass 3, pruning: the values the result does not depend on are dropped.

The elaboration builds every value a step or a binding asks for; those nothing
stored depends on (a value bound and never used, a branch a folded `where` left
behind, an argument folded away) go here, and the rest are numbered again from 0.
The gemm always stays: it is the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kgen.ir import Instr


def prune(body: Sequence[Instr], result: int) -> tuple[tuple[Instr, ...], int]:
    """Drop values the result does not depend on (the gemm always stays); renumber."""
    live = {0, result}
    for instr in reversed(body):
        if instr.id in live:
            live.update(instr.args)
    ids = {old: new for new, old in enumerate(i.id for i in body if i.id in live)}
    pruned = tuple(
        replace(i, id=ids[i.id], args=tuple(ids[a] for a in i.args)) for i in body if i.id in live
    )
    return pruned, ids[result]
