"""How a kernel's row operations run for N output columns (kgen/lower/rows.py explains the
two strategies): in one tile, or in two passes, the GEMM kernel storing per-tile
statistics and a finishing kernel combining them.

A module declares its row operations as a table, one `RowOp` each in order (written
by kgen.lower.steps.table); `plan(name, ops, N, block_n)` decides the tiling for one N.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import triton

ROW_BLOCK_MAX = 256  # the widest register tile a row operation's segment may take
FINISH_BLOCK_M = 32  # rows per program of the finishing kernel
FINISH_CHUNKS = 8  # tiles' statistics per program of the finishing kernel (normalisers)


class RowOp(NamedTuple):
    name: str  # the op, for messages
    kind: str  # "normalize", "reduce", "pool" (kgen.ops.RowKind) or "groupnorm"
    size: int  # groups, or the window of a pool
    pool: int  # GEMM columns per column of its input
    trivial: bool  # its input has one value per row
    whole: bool  # its segment is the whole row
    can_split: bool  # may run in two passes


class RowPlan(NamedTuple):
    split: int  # the op that runs in two passes, or -1
    tile_n: int  # GEMM columns per tile
    seg_n: int  # GEMM columns per segment of the split op (N without a split)
    seg_tiles: int  # tiles per segment
    num_segs: int  # segments per row
    block_n: int  # the register tile's columns: next_pow2(tile_n)
    consts: dict[str, int]  # per-op SEG_i/NSEG_i and per-level BN_i constexprs
    block_t: int  # the finishing kernel's tiles per row: next_pow2(seg_tiles)


def plan(name: str, ops: tuple[RowOp, ...], N: int, block_n: int) -> RowPlan:
    """The tiling for N columns and the configuration's BLOCK_N; a `ValueError` naming
    the op where N does not fit the row operations (LANGUAGE.md, "Row operations")."""
    lcm, whole, split = 1, False, -1
    for i, op in enumerate(ops):
        if op.trivial or split >= 0:
            continue
        width = N // op.pool
        if op.kind == "reduce" and width == 0:
            raise ValueError(f"{name}: {op.name} needs at least one column, the row has none")
        if op.kind == "groupnorm" and width % op.size:
            raise ValueError(
                f"{name}: groupnorm({op.size}) needs its {width} columns to split into "
                f"{op.size} equal groups"
            )
        span = None if op.whole else op.pool * (op.size if op.kind == "pool" else width // op.size)
        new_lcm = lcm if span is None else math.lcm(lcm, span)
        new_whole = whole or op.whole
        need = -(-N // new_lcm) * new_lcm if new_whole else new_lcm
        if need <= ROW_BLOCK_MAX:
            lcm, whole = new_lcm, new_whole
        elif not op.can_split:
            raise ValueError(
                f"{name}: with N = {N}, {op.name} needs {need} columns in one tile, more "
                f"than {ROW_BLOCK_MAX}; only a softmax, norm or reduction followed by "
                "elementwise steps can run in two passes (LANGUAGE.md, Row operations)"
            )
        else:
            split = i
            seg = op.pool * (width if op.whole else width // op.size)
            if seg % lcm:
                raise ValueError(
                    f"{name}: with N = {N}, the groups of {op.name} do not line up with "
                    "the row operations before it"
                )
    tile_n = -(-N // lcm) * lcm if whole else lcm * max(1, block_n // lcm)
    if split >= 0:
        op = ops[split]
        width = N // op.pool
        seg_n = op.pool * width if op.whole else op.pool * (width // op.size)
        num_segs = 1 if op.whole else op.size
    else:
        seg_n, num_segs = N, 1
    seg_tiles = -(-seg_n // tile_n)
    block = triton.next_power_of_2(tile_n)
    consts, bn = {}, block
    for i, op in enumerate(ops):
        s = ns = 1
        if not op.trivial and not op.whole and (split < 0 or i < split):
            width = N // op.pool
            s = op.size if op.kind == "pool" else width // op.size
            ns = bn // s if s & (s - 1) == 0 else triton.next_power_of_2(-(-bn // s))
            if op.kind == "pool":
                bn = ns
        consts[f"SEG_{i}"] = s
        consts[f"NSEG_{i}"] = ns
        if op.kind == "pool":
            consts[f"BN_{i}"] = bn
    return RowPlan(
        split, tile_n, seg_n, seg_tiles, num_segs, block, consts, triton.next_power_of_2(seg_tiles)
    )
