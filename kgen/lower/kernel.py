"""Stage 3a: the IR's Triton kernels -- the GEMM kernel (a mainloop, then the epilogue
in registers and one store) and, for two-pass row operations, the finishing kernel --
with the `kgen.tlib` helpers their ops need.

The kernel loops over output tiles in grouped order (one tile per program, or several
when the launch is persistent) and has three mainloops with an fp32 accumulator,
chosen per launch by constexprs (kgen/lower/mainloop.py). Then the epilogue, shared by
all three: one line per IR value (kgen/lower/epilogue.py), named after its op (or the
name the spec bound it to), each group preceded by the spec line it came from, and
exactly one store of the output (a training forward stores the accumulator too;
without row operations, the persistent loop's training forward stores both through
tensor descriptors, TMA_STORE). Without row operations the epilogue runs once per
column slice of the tile (SUBTILES: halves of 256-column tiles), its store included.
Row operations: kgen/lower/rows.py.

Identifiers: the template's own names are `analyze.RESERVED`; user names appear as
float arguments (`scale`), pointers (`scale_ptr`) and strides (`stride_scale_n`),
forms the analyzer keeps free; temporaries come from the namer and avoid all of them.
"""

from __future__ import annotations

from kgen import tlib
from kgen.ir import Kernel, Kind, Operand, Role
from kgen.lower import rows
from kgen.lower.epilogue import Level, Writer
from kgen.lower.mainloop import (
    CONSTEXPRS,
    DOT,
    DOT_BF16X3,
    EPILOGUE_MASKS,
    FP32_DOT,
    MAINLOOP,
    ROW_TILES,
    SPLIT_K_FIXUP,
    SPLIT_K_LOOP,
    SUBTILE,
    W_DESC_LOAD,
)
from kgen.lower.steps import finish_needed, steps
from kgen.lower.text import new_namer
from kgen.ops import OPS, RowKind, absolute_forms


def _pointer_args(kernel: Kernel) -> list[str]:
    args = ["x_ptr", "weight_ptr"]
    if kernel.has_bias:
        args.append("bias_ptr")
    args += ["out_ptr", "save_ptr"]
    if kernel.row_ops:
        args.append("stats_ptr")
    args += [f"{t.name}_ptr" for t in kernel.tensors]
    return args


def _stride_names(operand: Operand) -> list[str]:
    if operand.kind is Kind.TILE:
        return [f"stride_{operand.name}_m", f"stride_{operand.name}_n"]
    if operand.kind is Kind.COL:
        return [f"stride_{operand.name}_n"]
    if operand.kind is Kind.ROW:
        return [f"stride_{operand.name}_m"]
    return []


def _strided(kernel: Kernel) -> list[Operand]:
    """Tensor operands with strides, in kernel-argument order (bias first)."""
    bias = [o for o in kernel.operands if o.role is Role.BIAS]
    return bias + list(kernel.tensors)


def _epilogue(kernel: Kernel) -> list[str]:
    """The GEMM kernel's epilogue: with row operations, the row strategies' plan; else
    one line per IR value after the gemm, then the store of the result."""
    writer = Writer(kernel, new_namer(kernel), {0: "acc"}, indent=8)
    # training: the accumulator, saved for the backward (kgen.derive, kgen/lower/backward.py)
    save = (
        "tl.store(save_ptr + (offs_m[:, None] * N + offs_n[None, :]),"
        " acc.to(save_ptr.dtype.element_ty), mask=mask_mn)"
    )
    if kernel.row_ops:
        writer.line("if SAVE:")
        writer.line(f"    {save}")
        rows.gemm_epilogue(writer, kernel)
        return writer.lines
    # (without row operations, the saving plans of the persistent loop store both
    # tiles through tensor descriptors, TMA_STORE: kgen/configs.py says why)
    writer.line("if SAVE:")
    writer.line("    if TMA_STORE:")
    writer.line(f"        save_desc.store({_SUBTILE_CORNER}, acc.to(save_desc.dtype))")
    writer.line("    else:")
    writer.line(f"        {save}")
    writer.levels[1] = Level("", "offs_n", "mask_n", "BLOCK_N // SUBTILES", tile="mask_mn")
    for instr in kernel.body[1:]:
        writer.value(instr)
    result = kernel.value(kernel.result)
    value = writer.names[result.id]
    if result.kind is not Kind.TILE:
        value = f"({value} + tl.zeros((BLOCK_M, BLOCK_N // SUBTILES), dtype=tl.float32))"
    writer.line("if TMA_STORE:")
    writer.line(f"    out_desc.store({_SUBTILE_CORNER}, {value}.to(out_desc.dtype))")
    writer.line("else:")
    writer.line(
        "    out_ptrs = out_ptr + (offs_m[:, None] * stride_om + offs_n[None, :] * stride_on)"
    )
    writer.line(f"    tl.store(out_ptrs, {value}.to(out_ptr.dtype.element_ty), mask=mask_mn)")
    return writer.lines


# The first row and column of the subtile a descriptor store writes (the descriptor
# clips what lies past M and N, as the pointer stores' masks do).
_SUBTILE_CORNER = "[pid_m * BLOCK_M, pid_n * BLOCK_N + subtile * (BLOCK_N // SUBTILES)]"


def _row_constexprs(kernel: Kernel) -> list[str]:
    names = ["SPLIT", "ALIGNED"]
    for step in steps(kernel):
        names += [f"SEG_{step.index}", f"NSEG_{step.index}"]
        if step.rowdef.kind is RowKind.POOL:
            names.append(f"BN_{step.index}")
    return names


def gemm_kernels(kernel: Kernel) -> str:
    strides = ["stride_xm", "stride_xk", "stride_wk", "stride_wn", "stride_om", "stride_on"]
    for operand in _strided(kernel):
        strides += _stride_names(operand)
    sizes = ["M", "N", "K"] + (
        ["tile_n", "seg_n", "seg_tiles", "num_segs"] if kernel.row_ops else []
    )
    scratch = [] if kernel.row_ops else ["split_partials_ptr", "split_counts_ptr"]
    descs = ["x_desc", "w_desc"] + ([] if kernel.row_ops else ["out_desc", "save_desc"])
    params = [*_pointer_args(kernel), *scratch, *descs, *sizes, *strides]
    params += [f.name for f in kernel.floats]
    params += [f"{c}: tl.constexpr" for c in CONSTEXPRS]
    if kernel.row_ops:
        params += [f"{c}: tl.constexpr" for c in _row_constexprs(kernel)]
    else:
        params += ["SUBTILES: tl.constexpr", "SPLIT_K: tl.constexpr", "TMA_STORE: tl.constexpr"]
    head = [
        "@triton.jit",
        f"def {kernel.name}_kernel(",
        *(f"    {p}," for p in params),
        "):",
        f'    """One [BLOCK_M, BLOCK_N] tile of {kernel.name}: GEMM, then the epilogue in registers."""',
    ]
    # adding an int64 zero turns a stride (an int32, or a constexpr 1) into an int64
    wide = [f"        {s} = {s} + tl.zeros([], dtype=tl.int64)" for s in strides]
    body = MAINLOOP.replace("{wide_strides}", "\n".join(wide)).replace(
        "{w_desc_load}", W_DESC_LOAD[kernel.gemm]
    )
    epilogue = _epilogue(kernel)
    if kernel.row_ops:
        for old, new in ROW_TILES:
            assert body.count(old) <= 1, old  # one of the descriptor loads is there
            body = body.replace(old, new)
    else:
        for old, new in SPLIT_K_LOOP:
            assert body.count(old) == 1, old
            body = body.replace(old, new)
        head_of_epilogue = (
            "        # -- epilogue: fp32, in registers\n        mask_m = offs_m < M\n"
        )
        assert body.endswith(head_of_epilogue + EPILOGUE_MASKS)
        body = body[: -len(head_of_epilogue + EPILOGUE_MASKS)] + SPLIT_K_FIXUP
        inside = [f"    {line}" for line in epilogue]  # inside the subtile loop
        epilogue = ["        mask_m = (offs_m < M) & split_last", *SUBTILE.splitlines(), *inside]
    text = "\n".join([*head, body.strip("\n"), *epilogue]) + "\n"
    if finish_needed(kernel):
        text += "\n\n" + _finish_kernel(kernel)
    return text


def _finish_kernel(kernel: Kernel) -> str:
    """The second pass of the two-pass strategy (kgen/lower/rows.py)."""
    strides = ["stride_om", "stride_on"]
    for operand in _strided(kernel):
        strides += _stride_names(operand)
    pointers = ["out_ptr", "stats_ptr"] + [
        p
        for p in _pointer_args(kernel)
        if p not in ("x_ptr", "weight_ptr", "out_ptr", "save_ptr", "stats_ptr")
    ]
    params = [*pointers, "M", "N", *strides, "tile_n", "seg_n", "seg_tiles", "num_segs"]
    params += [f.name for f in kernel.floats]
    constexprs = ["SPLIT", "BLOCK_M", "BLOCK_N", "BLOCK_T", "CHUNKS", "WIDE"]
    params += [f"{c}: tl.constexpr" for c in constexprs]
    head = [
        "@triton.jit",
        f"def {kernel.name}_finish(",
        *(f"    {p}," for p in params),
        "):",
        f'    """Two-pass row operations of {kernel.name}: combine the tiles\' statistics, '
        'finish BLOCK_M rows of one segment."""',
        "    if WIDE:",
        *(f"        {s} = {s} + tl.zeros([], dtype=tl.int64)" for s in strides),
    ]
    writer = Writer(kernel, new_namer(kernel), {}, indent=4)
    rows.finish_body(writer, kernel)
    return "\n".join([*head, *writer.lines]) + "\n"


def helpers(kernel: Kernel, *others: Kernel) -> str:
    """The module's helpers: those the ops of `kernel` and of `others` (its backward)
    need, then the dot products `kernel`'s mainloop calls."""
    needed: set[str] = set()
    for k in (kernel, *others):
        absolute = absolute_forms(k)
        needed |= {
            h
            for instr in k.body
            if instr.op in OPS
            for h in OPS[instr.op].helpers_for(instr.id in absolute)
        }
    parts = [h.source.strip("\n") for h in tlib.closure(needed)]
    if kernel.row_ops:
        parts.append(rows.SEGMENT_HELPERS.strip("\n"))
    if kernel.precision == "bf16x3":
        parts.append(DOT_BF16X3.strip("\n"))
    parts.append(DOT.replace("{fp32_dot}", FP32_DOT[kernel.precision]).strip("\n"))
    return "\n\n\n".join(parts)
