"""Stage 3a, backward: the kernel that turns the gradient of a kernel's output into the
gradient of its accumulator (dz) and of its tensor operands, from the backward IR
(kgen.derive) and the accumulator the forward saved.

One program per [BLOCK_M, BLOCK_N] tile of the output: it loads the saved accumulator
and the incoming gradient, recomputes the forward values the derivative needs and
computes the gradients with the epilogue writer (one line per IR value, as in the
forward), then stores dz (in the GEMM's dtype) and each operand's gradient in fp32:
an [M, N] operand's per element, the others as one partial sum per tile (an [N]
operand's over the tile's rows, an [M] operand's over its columns, a scalar's over
both), which the runtime adds up. With row operations a program holds whole rows
(BLOCK_N >= N), as the derivative's row sums need; one on groups of columns (groupnorm)
reduces each group of the row in registers (SEG_i columns a group, NSEG_i groups a
tile, as the forward's in-tile row operations do).
"""

from __future__ import annotations

import triton

from kgen.derive import ACC, DOUT, Backward
from kgen.ir import Kind, Operand
from kgen.lower.epilogue import Level, Writer
from kgen.lower.steps import RowStep
from kgen.lower.text import new_namer
from kgen.ops import ALL_ROW_OPS, RowKind

_HAS_COLUMNS = (Kind.TILE, Kind.COL)


def _strides(operand: Operand) -> list[str]:
    if operand.kind is Kind.TILE:
        return [f"stride_{operand.name}_m", f"stride_{operand.name}_n"]
    if operand.kind is Kind.COL:
        return [f"stride_{operand.name}_n"]
    if operand.kind is Kind.ROW:
        return [f"stride_{operand.name}_m"]
    return []


def grad_pointer(name: str) -> str:
    """The kernel argument a gradient is stored through (a name no spec can take:
    spec names never start with `_`)."""
    return f"_grad_{name}_ptr"


def windows(backward: Backward) -> tuple[int, ...]:
    """The windows of the forward's pools, in order (kgen.derive), where the backward
    holds any value after a pool (its column levels are 1, k0, k0 k1, ...); else
    none."""
    bk = backward.kernel
    if any(i.pool > 1 and i.kind is Kind.TILE for i in bk.body):
        return backward.windows
    return ()


def _levels(chain: list[int] | tuple[int, ...]) -> list[int]:
    levels = [1]
    for k in chain:
        levels.append(levels[-1] * k)
    return levels


def _span(chain: tuple[int, ...], level: int) -> int:
    """Register columns per column of `level` (the product of its windows' slots)."""
    span = 1
    for p, k in zip(_levels(chain), chain, strict=False):
        if p >= level:
            break
        span *= triton.next_power_of_2(k)
    return span


def segment_sizes(backward: Backward) -> tuple[int, ...]:
    """Per row operation of the backward IR, in order: its groups where it works on
    groups of columns (groupnorm, group_mean; the kernel takes SEG_i and NSEG_i for
    it); for a pool, the register columns of one of its windows (SEG_i; `windows`);
    else 0 (the whole row, or one value per row, or no reduction). All groupwise ones
    have the same groups (kgen.derive refuses others), as the kernel's slots need."""
    bk = backward.kernel
    chain = windows(backward)
    sizes = []
    for i in bk.body:
        if not i.row:
            continue
        x = bk.value(i.args[0])
        kind = ALL_ROW_OPS[i.op].kind
        if x.kind is not Kind.TILE or i.size <= 1 or kind is RowKind.UNPOOL:
            sizes.append(0)  # (unpool and window_position reduce nothing)
        elif kind is RowKind.POOL:
            sizes.append(_span(chain, x.pool * i.size))
        else:
            sizes.append(0 if ALL_ROW_OPS[i.op].family == "position" else i.size)
    return tuple(sizes)


def _slots(segments: tuple[int, ...]) -> list[str]:
    """With groups of columns, a group of COLS columns sits in a power-of-two slot of
    SEG_i register columns (the padding masked off), so that every group reduction is a
    reshape: no gathers (Triton 3.6 cannot lay out some of them: an assertion in
    TritonGPUOptimizeThreadLocality for small or one-row tiles), whatever COLS is."""
    if not any(segments):
        return []
    seg = f"SEG_{next(i for i, size in enumerate(segments) if size)}"
    return [
        f"    if COLS != {seg}:",
        f"        slot = offs_n % {seg}",
        f"        offs_n = offs_n // {seg} * COLS + tl.where(slot < COLS, slot, N)",
    ]


def _window_slots(chain: tuple[int, ...]) -> list[str]:
    """With pools, each window of k columns sits in a power-of-two slot of
    nexttriton.next_power_of_2(k) register columns, nested level by level (the padding masked off), and
    a pooled value stays in its window's register columns: every window reduction is
    a reshape, and no value changes width."""
    if not chain:
        return []
    lines = ["    slot_n = tl.arange(0, BLOCK_N)  # (one program spans the row)"]
    width = 1
    for j, k in enumerate(chain):
        s = triton.next_power_of_2(k)
        lines.append(f"    digit_n = slot_n % {s}")
        if j == 0:
            lines.append(f"    valid_n = digit_n < {k}")
            lines.append("    col_n = digit_n")
        else:
            if s != k:
                lines.append(f"    valid_n = valid_n & (digit_n < {k})")
            lines.append(f"    col_n = col_n + digit_n * {width}")
        lines.append(f"    slot_n = slot_n // {s}")
        width *= k
    lines.append(f"    offs_n = tl.where(valid_n, col_n + slot_n * {width}, N)")
    return lines


def _window_levels(writer: Writer, chain: tuple[int, ...]) -> None:
    """Each pooled level's columns: the level's column of every register column, the
    valid ones, and one register column of each (what reductions over it take)."""
    for p in _levels(chain)[1:]:
        gcol = writer.assign(f"gcol_{p}", f"offs_n // {p}")
        ok = writer.assign(f"ok_{p}", f"offs_n < (N // {p}) * {p}")
        rep = writer.assign(f"rep_{p}", f"{ok} & (offs_n % {p} == 0)")
        writer.levels[p] = Level("", gcol, ok, "BLOCK_N", rep=rep)


def backward_kernel(backward: Backward) -> str:
    bk = backward.kernel
    tensors = [o for o in bk.operands if o.role.is_tensor and o.name != DOUT]
    dout = bk.operand(DOUT)
    grads = [(name, i) for name, i in backward.grads[1:] if i is not None]
    pointers = [f"{DOUT}_ptr", "_saved_ptr", "_dz_ptr", *(f"{o.name}_ptr" for o in tensors)]
    pointers += [grad_pointer(name) for name, _ in grads]
    strides = _strides(dout) + [s for o in tensors for s in _strides(o)]
    floats = [o.name for o in bk.floats if o.name != "N"]
    params = [*pointers, "M", "N", *strides, *floats]
    params += ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "WIDE: tl.constexpr"]
    segments = segment_sizes(backward)
    chain = windows(backward)
    params += [
        f"{c}_{i}: tl.constexpr" for i, size in enumerate(segments) if size for c in ("SEG", "NSEG")
    ]
    grouped = any(segments) and not chain
    if grouped:
        params.append("COLS: tl.constexpr")
    lines = [
        "@triton.jit",
        f"def {bk.name}(",
        *(f"    {p}," for p in params),
        "):",
        f'    """The gradients of a [BLOCK_M, BLOCK_N] tile of {bk.name[: -len("_backward")]}\'s'
        ' output: its accumulator\'s (dz) and its operands\'."""',
        "    pid_m = tl.program_id(0)",
        "    pid_n = tl.program_id(1)",
        "    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)",
        "    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)",
        *_slots(segments if not chain else ()),
        *_window_slots(chain),
        "    if WIDE:",
        "        offs_m = offs_m.to(tl.int64)",
        "        offs_n = offs_n.to(tl.int64)",
        *(f"        {s} = {s} + tl.zeros([], dtype=tl.int64)" for s in strides),
        "    mask_m = offs_m < M",
        "    mask_n = offs_n < N",
        "    mask_mn = mask_m[:, None] & mask_n[None, :]",
        "    offs_mn = offs_m[:, None] * N + offs_n[None, :]",
    ]
    writer = Writer(bk, new_namer(bk), {0: "acc"}, indent=4)
    if grouped:
        writer.group_columns = "COLS"
    writer.levels[1] = Level("", "offs_n", "mask_n", "BLOCK_N", tile="mask_mn")
    _window_levels(writer, chain)
    writer.pools_in_place = True
    if backward.saves_acc:
        writer.line("acc = tl.load(_saved_ptr + offs_mn, mask=mask_mn, other=0.0).to(tl.float32)")
    index = 0
    for instr in bk.body[1:]:
        if instr.row:
            x = bk.value(instr.args[0])
            rowdef = ALL_ROW_OPS[instr.op]
            # (a pool of one column is the identity, as a row op on one value per row)
            trivial = x.kind is not Kind.TILE or (rowdef.kind is RowKind.POOL and instr.size == 1)
            # one group is the whole row; else a program's row holds instr.size groups
            whole = trivial or instr.size <= 1
            step = RowStep(index, instr, rowdef, x.pool, trivial, whole, False)
            writer.row_in_tile(step)
            index += 1
        else:
            writer.value(instr)

    def tile(i: int | None) -> str:
        if i is None:
            return "tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)"
        name = writer.names[i]
        if bk.value(i).kind is Kind.TILE:
            return name
        return f"({name} + tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))"

    dz = dict(backward.grads)[ACC]
    writer.line("# -- the gradients")
    writer.line(
        f"tl.store(_dz_ptr + offs_mn, {tile(dz)}.to(_dz_ptr.dtype.element_ty), mask=mask_mn)"
    )
    for name, i in grads:
        operand = bk.operand(name)
        assert operand.pool == 1  # (after a pool only a groupnorm's affine, refused)
        value = bk.value(i)
        ptr = grad_pointer(name)
        if operand.kind is Kind.TILE:
            writer.line(f"tl.store({ptr} + offs_mn, {tile(i)}, mask=mask_mn)")
            continue
        # the columns a gradient is summed over: one register column of each column of
        # the level it is held at
        level = writer.levels[value.pool if value.kind in _HAS_COLUMNS else 1]
        cols = "mask_mn" if not level.rep else f"mask_m[:, None] & {level.rep}[None, :]"
        # a gradient the same in every column, for an operand without columns, counts
        # once per row: column 0's
        if value.kind not in _HAS_COLUMNS and operand.kind not in _HAS_COLUMNS:
            cols = "mask_mn & (offs_n[None, :] == 0)"
        masked = writer.assign(f"grad_{name}", f"tl.where({cols}, {tile(i)}, 0.0)")
        if operand.kind is Kind.COL:
            writer.line(
                f"tl.store({ptr} + pid_m * N + offs_n, tl.sum({masked}, axis=0), mask=mask_n)"
            )
        elif operand.kind is Kind.ROW:
            writer.line(
                f"tl.store({ptr} + pid_n * M + offs_m, tl.sum({masked}, axis=1), mask=mask_m)"
            )
        else:
            writer.line(
                f"tl.store({ptr} + pid_m * tl.num_programs(1) + pid_n, tl.sum(tl.sum({masked},"
                " axis=1), axis=0))"
            )
    return "\n".join([*lines, *writer.lines]) + "\n"
