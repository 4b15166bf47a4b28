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

from kgen.derive import ACC, DOUT, Backward
from kgen.ir import Kind, Operand
from kgen.lower.epilogue import Level, Writer
from kgen.lower.steps import RowStep
from kgen.lower.text import new_namer
from kgen.ops import ALL_ROW_OPS

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


def segment_sizes(backward: Backward) -> tuple[int, ...]:
    """Per row operation of the backward IR, in order: its groups where it works on
    groups of columns (groupnorm, group_mean; the kernel takes SEG_i and NSEG_i for
    it), else 0 (the whole row, or one value per row). All groupwise ones have the same
    groups (kgen.derive refuses others), as the kernel's slots need."""
    bk = backward.kernel
    return tuple(
        i.size if i.size > 1 and bk.value(i.args[0]).kind is Kind.TILE else 0
        for i in bk.body
        if i.row
    )


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
    params += [
        f"{c}_{i}: tl.constexpr" for i, size in enumerate(segments) if size for c in ("SEG", "NSEG")
    ]
    grouped = any(segments)
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
        *_slots(segments),
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
    if backward.saves_acc:
        writer.line("acc = tl.load(_saved_ptr + offs_mn, mask=mask_mn, other=0.0).to(tl.float32)")
    index = 0
    for instr in bk.body[1:]:
        if instr.row:
            x = bk.value(instr.args[0])
            trivial = x.kind is not Kind.TILE
            # one group is the whole row; else a program's row holds instr.size groups
            whole = trivial or instr.size <= 1
            step = RowStep(index, instr, ALL_ROW_OPS[instr.op], 1, trivial, whole, False)
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
        held = bk.value(i).kind
        ptr = grad_pointer(name)
        if operand.kind is Kind.TILE:
            writer.line(f"tl.store({ptr} + offs_mn, {tile(i)}, mask=mask_mn)")
            continue
        # a gradient the same in every column, for an operand without columns, counts
        # once per row: column 0's
        once = held not in _HAS_COLUMNS and operand.kind not in _HAS_COLUMNS
        cols = "mask_mn & (offs_n[None, :] == 0)" if once else "mask_mn"
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
