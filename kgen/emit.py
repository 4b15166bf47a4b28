"""Stage 3 of the pipeline: IR -> Triton module source (unformatted; `build` runs black).

The module has, in order: a header naming the spec and kgen's version, the spec's
text, the `kgen.tlib` helpers its ops need, one `@triton.jit` kernel, the launch
configurations, the argument checks, the choice of configuration (the tuning file
beside the module, else the heuristic), the launcher, the function named after the
kernel and `class ModelNew(nn.Module)` (LANGUAGE.md, "What a generated module offers").

The kernel loops over output tiles in grouped order (one tile per program, or several
when the launch is persistent) and has three mainloops with an fp32 accumulator,
chosen per launch by constexprs (kgen/configs.py says when each is used): the Triton
tutorial's pointer-based GEMM with contiguity hints, and two over TMA tensor
descriptors (one program per tile, or persistent). Then the epilogue, shared by all
three: one line per IR value, named after its op (or the
name the spec bound it to), each group preceded by the spec line it came from, and
exactly one `tl.store`. Without row operations the epilogue runs once per column
slice of the tile (SUBTILES, `_SUBTILE`: halves of 256-column tiles), its store
included. Values stay in the shape of their kind -- [N] vectors as [1, BLOCK_N],
[M] vectors as [BLOCK_M, 1] -- so each is computed once per row or column and
broadcasts where it meets the tile. Row operations: kgen/rows.py.

Identifiers: the template's own names are `analyze.RESERVED`; user names appear as
float arguments (`scale`), pointers (`scale_ptr`) and strides (`stride_scale_n`),
forms the analyzer keeps free; temporaries come from `_Namer` and avoid all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from kgen import __version__, rows, tlib
from kgen.analyze import RESERVED
from kgen.ir import Gemm, InitArg, Kernel, Kind, Operand, Role
from kgen.ops import OPS, absolute_forms

_TORCH_DTYPES = {
    "float16": "torch.float16",
    "bfloat16": "torch.bfloat16",
    "float32": "torch.float32",
}


class _Namer:
    """Fresh names for temporaries: `{hint}_{n}`, never a name already taken."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)

    def fresh(self, hint: str, number: int) -> str:
        name = f"{hint}_{number}"
        while name in self.taken:
            number += 1000
            name = f"{hint}_{number}"
        self.taken.add(name)
        return name


def _comment(text: str) -> str:
    """Text safe inside a `#` comment: no line breaks or other control characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _spec_lines(kernel: Kernel) -> list[str]:
    return kernel.source.split("\n")


def _literal(value: float) -> str:
    """A Triton fp32 constant. Triton turns a constant equal to 0 into +0.0, so a
    negative zero (which decides the sign of a division by it) is made at run time."""
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return "(tl.full([], 0.0, tl.float32) * -1.0)"
    return repr(float(value))


# ---------------------------------------------------------------------------
# Kernel


def _pointer_args(kernel: Kernel) -> list[str]:
    args = ["x_ptr", "weight_ptr"]
    if kernel.has_bias:
        args.append("bias_ptr")
    args.append("out_ptr")
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


def _load(
    operand: Operand, cols: str = "offs_n", ok: str = "mask_n", tile_mask: str = "mask_mn"
) -> str:
    """An operand's fp32 load, in the shape of its kind. `cols`/`ok` name the output
    columns and their mask, `tile_mask` the [BLOCK_M, BLOCK_N] mask (row operations
    load at other column levels: kgen/rows.py)."""
    ptr = f"{operand.name}_ptr"
    if operand.kind is Kind.SCALAR:
        return f"tl.load({ptr}).to(tl.float32)"
    if operand.kind is Kind.COL:
        return (
            f"tl.load({ptr} + {cols} * stride_{operand.name}_n, mask={ok}, other=0.0)"
            ".to(tl.float32)[None, :]"
        )
    if operand.kind is Kind.ROW:
        return (
            f"tl.load({ptr} + offs_m * stride_{operand.name}_m, mask=mask_m, other=0.0)"
            ".to(tl.float32)[:, None]"
        )
    return (
        f"tl.load({ptr} + (offs_m[:, None] * stride_{operand.name}_m"
        f" + {cols}[None, :] * stride_{operand.name}_n), mask={tile_mask}, other=0.0)"
        ".to(tl.float32)"
    )


_MAINLOOP = """
    # -- tiles: program p computes tiles p, p + P, p + 2P, ... of the P launched (one
    # tile each unless the launch is persistent), in grouped order along M for L2 reuse
    # (Triton tutorials 03 and 09)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    k_steps = tl.cdiv(K, BLOCK_K)
    offs_k = tl.arange(0, BLOCK_K)
    if WIDE:
        # some offset can pass 2^31 - 1: index arithmetic in int64
        offs_k = offs_k.to(tl.int64)
{wide_strides}
    for tile_id in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
        group_id = tile_id // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
        pid_n = (tile_id % num_pid_in_group) // group_size_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if WIDE:
            offs_m = offs_m.to(tl.int64)
            offs_n = offs_n.to(tl.int64)

        # -- GEMM mainloop, fp32 accumulator
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if TMA:
            # Tensor descriptors (Hopper's TMA copy engine): tiles arrive in shared
            # memory, with rows, columns and k past the edges filled with zeros.
            for k_step in range(k_steps):
                x_tile = x_desc.load([pid_m * BLOCK_M, k_step * BLOCK_K])
                w_tile = {w_desc_load}
                acc = _dot(x_tile, w_tile, acc, UPCAST_DOT)
        else:
            # Pointers. Rows and columns past the edge wrap onto valid ones, so the
            # tile loads need no M/N mask; their results are masked at the store. The
            # hints keep the loads vectorized.
            offs_xm = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M)
            offs_wn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)
            x_ptrs = x_ptr + (offs_xm[:, None] * stride_xm + offs_k[None, :] * stride_xk)
            w_ptrs = weight_ptr + (offs_k[:, None] * stride_wk + offs_wn[None, :] * stride_wn)
            for k_step in range(k_steps):
                k_mask = offs_k < K - k_step * BLOCK_K
                x_tile = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
                w_tile = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
                acc = _dot(x_tile, w_tile, acc, UPCAST_DOT)
                x_ptrs += BLOCK_K * stride_xk
                w_ptrs += BLOCK_K * stride_wk

        # -- epilogue: fp32, in registers
        mask_m = offs_m < M
        mask_n = offs_n < N
        mask_mn = mask_m[:, None] & mask_n[None, :]
"""

# The kernel's compile-time parameters, set by the launcher from the configuration
# (see kgen/configs.py) and from the operands.
_CONSTEXPRS = (
    "BLOCK_M",
    "BLOCK_N",
    "BLOCK_K",
    "GROUP_M",
    "TMA",  # tiles through tensor descriptors (else through pointers)
    "FLATTEN",  # persistent launch: let the compiler pipeline across tiles
    "WIDE",  # int64 offsets
    "UPCAST_DOT",  # the interpreter's bf16 tl.dot workaround
)

# Without row operations, the epilogue runs on SUBTILES column slices of the tile in
# turn: 1, or 2 halves for 256-column tiles. On the H100 (same process, interleaved,
# bitwise-equal outputs) halves took seed 003's exact GELU from 234 to 222 us (fp16) and
# 236 to 216 us (bf16) at 4096^3, 461 to 429 and 428 to 426 us at 2048x8192x8192, and
# left seed 001's sigmoid within -1..+3 %. Registers stay ~253 per thread: the gain is
# in scheduling, not spills.
_SUBTILE = (
    "        acc_tile = acc\n"
    "        for subtile in tl.static_range(SUBTILES):\n"
    "            if SUBTILES == 1:\n"
    "                acc = acc_tile\n"
    "            else:  # Triton tutorial 09's epilogue subtiling\n"
    "                acc_halves = tl.permute(tl.reshape(acc_tile, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))\n"
    "                acc = tl.split(acc_halves)[subtile]\n"
    "            offs_n = pid_n * BLOCK_N + subtile * (BLOCK_N // SUBTILES) + tl.arange(0, BLOCK_N // SUBTILES)\n"
    "            if WIDE:\n"
    "                offs_n = offs_n.to(tl.int64)\n"
    "            mask_n = offs_n < N\n"
    "            mask_mn = mask_m[:, None] & mask_n[None, :]\n"
)
_EPILOGUE_MASKS = (
    "        mask_n = offs_n < N\n        mask_mn = mask_m[:, None] & mask_n[None, :]\n"
)

# Split-K (kgen/configs.py; kernels without row operations): program (t, s) of the
# (tiles, SPLIT_K) grid sums k-steps [s * per, (s + 1) * per) of tile t. With SPLIT_K = 1
# the branches fold away at compile time and the loops are the plain ones.
_SPLIT_K_LOOP = [
    (
        "    k_steps = tl.cdiv(K, BLOCK_K)\n",
        "    k_steps = tl.cdiv(K, BLOCK_K)\n"
        "    split_k_first = 0\n"
        "    split_k_end = k_steps\n"
        "    if SPLIT_K > 1:\n"
        "        split_k_per = tl.cdiv(k_steps, SPLIT_K)\n"
        "        split_k_first = tl.program_id(1) * split_k_per\n"
        "        split_k_end = tl.minimum(k_steps, split_k_first + split_k_per)\n",
    ),
    (
        "            for k_step in range(k_steps):\n                x_tile = x_desc",
        "            for k_step in range(split_k_first, split_k_end):\n                x_tile = x_desc",
    ),
    (
        "            for k_step in range(k_steps):\n                k_mask",
        "            if SPLIT_K > 1:\n"
        "                x_ptrs += split_k_first * BLOCK_K * stride_xk\n"
        "                w_ptrs += split_k_first * BLOCK_K * stride_wk\n"
        "            for k_step in range(split_k_first, split_k_end):\n                k_mask",
    ),
]
# The hand-off: every program stores its fp32 partial sum to the workspace (scratch,
# never read after the launch) and counts itself in on the tile's counter (release:
# after the barrier, the whole block's stores are visible first); the program that
# arrives last (acquire) adds the partials in split order, so the sum does not depend on
# who came last, resets the counter for the next launch, and alone stores the result:
# the others' stores are masked off. (Not `if split_last:` around the epilogue: the
# subtiles redefine offs_n and acc with other shapes, which a run-time `if` cannot do.)
# Partials are read through L2 (.cg), never a stale L1 line.
_SPLIT_K_FIXUP = """
        # -- split-K: the tile's last program to arrive adds the partial sums
        split_last = True
        if SPLIT_K > 1:
            split_tile = split_partials_ptr + tile_id * (SPLIT_K * BLOCK_M * BLOCK_N)
            split_offs = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            tl.store(split_tile + tl.program_id(1) * (BLOCK_M * BLOCK_N) + split_offs, acc)
            tl.debug_barrier()
            split_arrived = tl.atomic_add(split_counts_ptr + tile_id, 1, sem="acq_rel")
            split_last = split_arrived == SPLIT_K - 1
            if split_last:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for split_s in tl.static_range(SPLIT_K):
                    acc += tl.load(split_tile + split_s * (BLOCK_M * BLOCK_N) + split_offs, cache_modifier=".cg")
                tl.atomic_xchg(split_counts_ptr + tile_id, 0)

        # -- epilogue: fp32, in registers
"""

_W_DESC_LOAD = {
    # linear: weight is [N, K], its descriptor's blocks [BLOCK_N, BLOCK_K]
    Gemm.LINEAR: "w_desc.load([pid_n * BLOCK_N, k_step * BLOCK_K]).T",
    # matmul: weight is [K, N], blocks [BLOCK_K, BLOCK_N]
    Gemm.MATMUL: "w_desc.load([k_step * BLOCK_K, pid_n * BLOCK_N])",
}

# acc + x_tile @ w_tile with an fp32 accumulator, for the spec's fp32 precision.
_FP32_DOT = {
    "tf32x3": 'acc = tl.dot(x_tile, w_tile, acc, input_precision="tf32x3")',
    "tf32": 'acc = tl.dot(x_tile, w_tile, acc, input_precision="tf32")',
    "ieee": 'acc = tl.dot(x_tile, w_tile, acc, input_precision="ieee")',
    "bf16x3": "acc = _dot_bf16x3(x_tile, w_tile, acc, UPCAST_DOT)",
}

_DOT = """
@triton.jit
def _dot(x_tile, w_tile, acc, UPCAST_DOT: tl.constexpr):
    # acc + x_tile @ w_tile, accumulated in fp32; fp32 operands at the spec's precision
    if x_tile.dtype == tl.float32:
        {fp32_dot}
    elif UPCAST_DOT:
        # The interpreter's tl.dot is wrong for bf16 (triton#11584); products of
        # 16-bit values are exact in fp32, so the upcast changes nothing else.
        acc = tl.dot(x_tile.to(tl.float32), w_tile.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(x_tile, w_tile, acc)
    return acc
"""

_DOT_BF16X3 = """
@triton.jit
def _dot_bf16x3(a, b, acc, UPCAST_DOT: tl.constexpr):
    # fp32 operands as hi + lo bf16 pairs; three bf16 products (lo * lo dropped,
    # about 2^-16 relative), the small ones first. An Inf operand makes lo NaN (see
    # LANGUAGE.md, Dtypes): making the split Inf-safe doubled this loop's time on the
    # H100 (1676 vs 882 us at 1024x8192x8192), so it is not.
    a_hi = a.to(tl.bfloat16)
    a_lo = (a - a_hi.to(tl.float32)).to(tl.bfloat16)
    b_hi = b.to(tl.bfloat16)
    b_lo = (b - b_hi.to(tl.float32)).to(tl.bfloat16)
    if UPCAST_DOT:
        acc = tl.dot(a_lo.to(tl.float32), b_hi.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(a_hi.to(tl.float32), b_lo.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(a_hi.to(tl.float32), b_hi.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a_lo, b_hi, acc)
        acc = tl.dot(a_hi, b_lo, acc)
        acc = tl.dot(a_hi, b_hi, acc)
    return acc
"""


def _new_namer(kernel: Kernel) -> _Namer:
    taken = set(RESERVED) | {o.name for o in kernel.operands}
    taken |= {f"{o.name}_ptr" for o in kernel.operands}
    return _Namer(taken)


def _epilogue(kernel: Kernel) -> Iterator[str]:
    """One line per IR value after the gemm, with the spec line each group came from."""
    namer = _new_namer(kernel)
    names: dict[int, str] = {0: "acc"}
    if kernel.row_ops:
        writer = rows.Writer(kernel, namer, names, indent=8)
        rows.gemm_epilogue(writer, kernel)
        yield from writer.lines
        return
    lines = _spec_lines(kernel)
    last_line = 0
    for instr in kernel.body[1:]:
        if instr.op == "const":
            names[instr.id] = _literal(float(instr.attr))  # type: ignore[arg-type]
            continue
        if instr.span.line != last_line and 1 <= instr.span.line <= len(lines):
            last_line = instr.span.line
            where = f"{kernel.filename}:{last_line}"
            yield f"        # src[{where}]: {_comment(lines[last_line - 1].strip())}"
        name = namer.fresh(instr.hint, instr.id)
        if instr.op == "load":
            expr = _load(kernel.operand(str(instr.attr)))
        elif instr.op == "arg":
            # an fp32 scalar: the interpreter would otherwise do Python float math on it
            expr = f"tl.full([], {instr.attr}, tl.float32)"
        else:
            args = [names[a] for a in instr.args]
            opdef = OPS[instr.op]
            if kernel.value(instr.args[0]).op == "const" and (
                opdef.helpers or "tl." in opdef.triton
            ):
                # helpers apply tl functions to x; give them a tensor, not a constexpr
                args[0] = f"tl.full([], {args[0]}, tl.float32)"
            expr = opdef.lower(args)
        names[instr.id] = name
        yield f"        {name} = {expr}"
    result = kernel.value(kernel.result)
    value = names[result.id]
    if result.kind is not Kind.TILE:
        value = f"({value} + tl.zeros((BLOCK_M, BLOCK_N // SUBTILES), dtype=tl.float32))"
    yield "        out_ptrs = out_ptr + (offs_m[:, None] * stride_om + offs_n[None, :] * stride_on)"
    yield f"        tl.store(out_ptrs, {value}.to(out_ptr.dtype.element_ty), mask=mask_mn)"


def _row_constexprs(kernel: Kernel) -> list[str]:
    names = ["SPLIT", "ALIGNED"]
    for step in rows.steps(kernel):
        names += [f"SEG_{step.index}", f"NSEG_{step.index}"]
        if step.rowdef.kind is rows.RowKind.POOL:
            names.append(f"BN_{step.index}")
    return names


# The mainloop of a kernel with row operations: tiles of `tile_n` columns that never
# straddle a segment of `seg_n` columns (kgen/rows.py), at any column offset n0.
_ROW_TILES = [
    (
        "    num_pid_n = tl.cdiv(N, BLOCK_N)\n",
        "    num_pid_n = num_segs * seg_tiles\n    num_tiles_n = num_pid_n\n",
    ),
    (
        "        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)\n",
        "        seg_id = pid_n // seg_tiles\n"
        "        chunk = pid_n % seg_tiles\n"
        "        n0 = seg_id * seg_n + chunk * tile_n\n"
        "        local_n = tl.arange(0, BLOCK_N)\n"
        "        offs_n = n0 + local_n\n",
    ),
    ("pid_n * BLOCK_N, k_step", "n0, k_step"),
    ("k_step * BLOCK_K, pid_n * BLOCK_N", "k_step * BLOCK_K, n0"),
    (
        "            offs_wn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)\n",
        "            if ALIGNED:  # tiles start at multiples of BLOCK_N\n"
        "                offs_wn = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N)\n"
        "            else:\n"
        "                offs_wn = offs_n % N\n",
    ),
    (
        "        mask_n = offs_n < N\n",
        "        mask_n = (local_n < tile_n) & (chunk * tile_n + local_n < seg_n) & (offs_n < N)\n",
    ),
]


def _kernel(kernel: Kernel) -> str:
    strides = ["stride_xm", "stride_xk", "stride_wk", "stride_wn", "stride_om", "stride_on"]
    for operand in _strided(kernel):
        strides += _stride_names(operand)
    sizes = ["M", "N", "K"] + (
        ["tile_n", "seg_n", "seg_tiles", "num_segs"] if kernel.row_ops else []
    )
    scratch = [] if kernel.row_ops else ["split_partials_ptr", "split_counts_ptr"]
    params = [*_pointer_args(kernel), *scratch, "x_desc", "w_desc", *sizes, *strides]
    params += [f.name for f in kernel.floats]
    params += [f"{c}: tl.constexpr" for c in _CONSTEXPRS]
    if kernel.row_ops:
        params += [f"{c}: tl.constexpr" for c in _row_constexprs(kernel)]
    else:
        params += ["SUBTILES: tl.constexpr", "SPLIT_K: tl.constexpr"]
    head = [
        "@triton.jit",
        f"def {kernel.name}_kernel(",
        *(f"    {p}," for p in params),
        "):",
        f'    """One [BLOCK_M, BLOCK_N] tile of {kernel.name}: GEMM, then the epilogue in registers."""',
    ]
    # adding an int64 zero turns a stride (an int32, or a constexpr 1) into an int64
    wide = [f"        {s} = {s} + tl.zeros([], dtype=tl.int64)" for s in strides]
    body = _MAINLOOP.replace("{wide_strides}", "\n".join(wide)).replace(
        "{w_desc_load}", _W_DESC_LOAD[kernel.gemm]
    )
    epilogue = list(_epilogue(kernel))
    if kernel.row_ops:
        for old, new in _ROW_TILES:
            assert body.count(old) <= 1, old  # one of the descriptor loads is there
            body = body.replace(old, new)
    else:
        for old, new in _SPLIT_K_LOOP:
            assert body.count(old) == 1, old
            body = body.replace(old, new)
        head_of_epilogue = (
            "        # -- epilogue: fp32, in registers\n        mask_m = offs_m < M\n"
        )
        assert body.endswith(head_of_epilogue + _EPILOGUE_MASKS)
        body = body[: -len(head_of_epilogue + _EPILOGUE_MASKS)] + _SPLIT_K_FIXUP
        inside = [f"    {line}" for line in epilogue]  # inside the subtile loop
        epilogue = ["        mask_m = (offs_m < M) & split_last", *_SUBTILE.splitlines(), *inside]
    text = "\n".join([*head, body.strip("\n"), *epilogue]) + "\n"
    if rows.finish_needed(kernel):
        text += "\n\n" + _finish_kernel(kernel)
    return text


def _finish_kernel(kernel: Kernel) -> str:
    """The second pass of the two-pass strategy (kgen/rows.py)."""
    strides = ["stride_om", "stride_on"]
    for operand in _strided(kernel):
        strides += _stride_names(operand)
    pointers = ["out_ptr", "stats_ptr"] + [
        p for p in _pointer_args(kernel) if p not in ("x_ptr", "weight_ptr", "out_ptr", "stats_ptr")
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
    writer = rows.Writer(kernel, _new_namer(kernel), {}, indent=4)
    rows.finish_body(writer, kernel)
    return "\n".join([*head, *writer.lines]) + "\n"


def _helpers(kernel: Kernel) -> str:
    absolute = absolute_forms(kernel)
    needed = {
        h
        for instr in kernel.body
        if instr.op in OPS
        for h in OPS[instr.op].helpers_for(instr.id in absolute)
    }
    parts = [h.source.strip("\n") for h in tlib.closure(needed)]
    if kernel.row_ops:
        parts.append(rows.SEGMENT_HELPERS.strip("\n"))
    if kernel.precision == "bf16x3":
        parts.append(_DOT_BF16X3.strip("\n"))
    parts.append(_DOT.replace("{fp32_dot}", _FP32_DOT[kernel.precision]).strip("\n"))
    return "\n\n\n".join(parts)


# ---------------------------------------------------------------------------
# Python side: the call's declaration, the function, nn.Module. Everything a call does
# that the spec does not decide is kgen.runtime's (GemmOp), imported by the module.

_KINDS = {Kind.TILE: "tile", Kind.COL: "col", Kind.ROW: "row", Kind.SCALAR: "scalar"}


def _signature_args(kernel: Kernel) -> tuple[list[str], list[str]]:
    """(positional tensor names, keyword float params with defaults) of the function."""
    positional = (
        ["x", "weight"] + (["bias"] if kernel.has_bias else []) + [t.name for t in kernel.tensors]
    )
    keywords = []
    for f in kernel.floats:
        keywords.append(f.name if f.default is None else f"{f.name}={_literal(float(f.default))}")
    return positional, keywords


def _declaration(kernel: Kernel) -> str:
    """`_OP`, the module's kgen.runtime.GemmOp: what the runtime needs to know of the
    spec to check, plan and launch a call."""
    name = kernel.name
    lines = [
        "_OP = _runtime.GemmOp(",
        f"    {name!r},",
        f"    {name}_kernel,",
        f"    linear={kernel.gemm is Gemm.LINEAR},",
        f"    bias={kernel.has_bias},",
    ]
    if kernel.tensors:
        lines.append("    tensors=(")
        lines += [f"        ({t.name!r}, {_KINDS[t.kind]!r}, {t.pool})," for t in kernel.tensors]
        lines.append("    ),")
    if kernel.floats:
        lines.append("    floats=(")
        for f in kernel.floats:
            default = None if f.default is None else _literal(float(f.default))
            lines.append(f"        ({f.name!r}, {default}),")
        lines.append("    ),")
    if kernel.output_dtype:
        lines.append(f"    out_dtype={_TORCH_DTYPES[kernel.output_dtype]},")
    if kernel.row_ops:
        columns, pool = kernel.output_columns()
        reduces = tuple(s.rowdef.reduces for s in rows.steps(kernel))
        lines += [
            "    rows=_runtime.Rows(",
            "        ops=(",
            *(f"            _runtime.RowOp{tuple(op)!r}," for op in rows.table(kernel)),
            "        ),",
            f"        stats={rows.stat_count(kernel)},",
            f"        finish={name + '_finish' if rows.finish_needed(kernel) else None},",
            f"        reduces={reduces!r},",
            f"        columns={columns!r},",
            f"        pool={pool},",
            "    ),",
        ]
    lines += [
        f'    tuning_file=os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}.tuning.json"),',
        ")",
    ]
    return "\n".join(lines) + "\n"


def _function(kernel: Kernel) -> str:
    positional, keywords = _signature_args(kernel)
    sig = positional + (["*", *keywords] if keywords else [])
    call = ", ".join(positional + [f.name for f in kernel.floats])
    lines = [
        f"def {kernel.name}({', '.join(sig)}):",
        *_launcher_doc(kernel),
        f"    return _OP({call})",
    ]
    return "\n".join(lines) + "\n"


def _epilogue_text(kernel: Kernel) -> str:
    for line in _spec_lines(kernel):
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("epilogue"):
            return _comment(stripped.split(":", 1)[1].strip())
    return "(none)"


def _launcher_doc(kernel: Kernel) -> list[str]:
    in_f, out_f = kernel.in_features, kernel.out_features
    if kernel.gemm is Gemm.LINEAR:
        gemm = f"x[*, {in_f}] @ weight[{out_f}, {in_f}]^T"
    else:
        gemm = f"x[*, {in_f}] @ weight[{in_f}, {out_f}]"
    columns, pool = kernel.output_columns() if kernel.row_ops else ("N", 1)
    shape = {
        "N": f"[*, {out_f}]" if pool == 1 else f"[*, {out_f} // {pool}]",
        "1": "[*, 1]",
        "": "[*]",
    }[columns]
    out = kernel.output_dtype or "x's dtype"
    return [
        '    """' + f"{gemm} in fp32, then the epilogue `{_epilogue_text(kernel)}`.",
        "",
        f"    Returns a new {shape} tensor in {out} (`*`: x's leading dimensions). Built by kgen",
        f"    from {kernel.filename}.",
        '    """',
    ]


def _init_default(arg: InitArg, kernel: Kernel) -> str | None:
    if arg.target in ("in", "out"):
        return None
    if arg.target == "ignored":
        return "None"
    operand = kernel.operand(arg.name)
    if operand.role is Role.FLOAT:
        return None if operand.default is None else _literal(float(operand.default))
    return _literal(float(operand.default)) if isinstance(operand.default, float) else "None"


def _module_class(kernel: Kernel) -> str:
    args = list(kernel.init)
    defaults = [_init_default(a, kernel) for a in args]
    # Python needs defaults to be a suffix: drop any default before a required argument.
    required_seen = False
    for i in reversed(range(len(args))):
        if defaults[i] is None:
            required_seen = True
        elif required_seen:
            defaults[i] = None
    sig = ["self"] + [
        a.name if d is None else f"{a.name}={d}" for a, d in zip(args, defaults, strict=False)
    ]
    in_args = {a.name for a in args}
    in_f, out_f = str(kernel.in_features), str(kernel.out_features)
    body = ["        super().__init__()"]
    if kernel.gemm is Gemm.LINEAR:
        body += [
            f"        linear = nn.Linear({in_f}, {out_f}, bias={kernel.has_bias})",
            "        self.weight = linear.weight",
        ]
        if kernel.has_bias:
            body.append("        self.bias = linear.bias")
    else:
        body.append(f"        self.weight = nn.Parameter(torch.randn({in_f}, {out_f}))")
    for operand in kernel.operands:
        name = operand.name
        if operand.role is Role.VECTOR:
            init = operand.default
            size = out_f if operand.pool == 1 else f"{out_f} // {operand.pool}"
            if isinstance(init, str):
                body.append(f"        self.{name} = nn.Parameter(torch.{init}({size}))")
            else:
                value = _literal(float(init))  # type: ignore[arg-type]
                body.append(f"        self.{name} = nn.Parameter(torch.full(({size},), {value}))")
        elif operand.role is Role.SCALAR:
            init = operand.default
            fallback = (
                f"torch.{init}(())"
                if isinstance(init, str)
                else f"torch.tensor({_literal(float(init))})"  # type: ignore[arg-type]
            )
            if name in in_args and isinstance(init, str):
                value = f"{fallback} if {name} is None else torch.tensor(float({name}))"
            elif name in in_args:
                value = f"torch.tensor(float({name}))"
            else:
                value = fallback
            body.append(f"        self.{name} = nn.Parameter({value})")
        elif operand.role is Role.FLOAT:
            value = name if name in in_args else _literal(float(operand.default))  # type: ignore[arg-type]
            body.append(f"        self.{name} = {value}")
    inputs = [t.name for t in kernel.tensors if t.role is Role.INPUT]
    call = ["x", "self.weight"] + (["self.bias"] if kernel.has_bias else [])
    call += [t.name if t.role is Role.INPUT else f"self.{t.name}" for t in kernel.tensors]
    call += [f"self.{f.name}" for f in kernel.floats]
    lines = [
        "class ModelNew(nn.Module):",
        f'    """The {kernel.name} kernel as a module: seeded construction gives the same parameters',
        "    as the equivalent PyTorch module (nn.Linear first, then the spec's params in order).",
        '    """',
        "",
        f"    def __init__({', '.join(sig)}):",
        *body,
        "",
        f"    def forward({', '.join(['self', 'x', *inputs])}):",
        f"        return _OP({', '.join(call)})",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The module


def _uses_torch(kernel: Kernel) -> bool:
    """Does the module name `torch` (an output dtype, or parameters ModelNew makes)?"""
    return bool(
        kernel.output_dtype
        or kernel.gemm is Gemm.MATMUL
        or any(o.role in (Role.VECTOR, Role.SCALAR) for o in kernel.operands)
    )


def emit_module(kernel: Kernel) -> str:
    """The generated module's source, before formatting."""
    spec = [f"# {kernel.filename}:"]
    spec += [
        f"# {i:>4} | {_comment(line)}".rstrip() for i, line in enumerate(_spec_lines(kernel), 1)
    ]
    if len(spec) > 1 and spec[-1].endswith("|"):
        spec.pop()  # the empty line after a final newline
    parts = [
        f"# Generated by kgen {__version__} from {kernel.filename}. Do not edit: change the spec",
        "# and run `kgen build`.",
        "#",
        *spec,
        f'"""{kernel.name}: a fused GEMM + epilogue kernel generated by kgen."""',
        "",
        "import os",
        "",
        *(["import torch"] if _uses_torch(kernel) else []),
        "import triton",
        "import triton.language as tl",
        "from torch import nn",
        "",
        "import kgen.runtime.op as _runtime",
        "",
        "",
    ]
    sections = [
        _helpers(kernel),
        _kernel(kernel),
        _declaration(kernel),
        _function(kernel),
        _module_class(kernel),
    ]
    return "\n".join(parts) + "\n\n\n".join(s for s in sections if s) + "\n"
