"""The GEMM kernel's Triton source around the epilogue: the mainloops (pointers, TMA
tensor descriptors, TMA with the product transposed, persistent TMA; kgen/configs.py says when each runs), split-K's
hand-off, the tiles of kernels with row operations, and the fp32 dot products. Text
templates of *kernel* code, which kgen/lower/kernel.py assembles; nothing here runs on
the host."""

from __future__ import annotations

from kgen.ir import Gemm

MAINLOOP = """
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
            if SWAP:
                # Few rows: the product transposed, out^T = W x^T, so the weight's
                # columns take the tensor cores' 64-wide side and the few rows the
                # narrow one (as cuBLAS does for skinny GEMMs); back for the epilogue.
                acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for k_step in range(k_steps):
                x_tile = x_desc.load([pid_m * BLOCK_M, k_step * BLOCK_K])
                w_tile = {w_desc_load}
                if SWAP:
                    acc = _dot(w_tile.T, x_tile.T, acc, UPCAST_DOT)
                else:
                    acc = _dot(x_tile, w_tile, acc, UPCAST_DOT)
            if SWAP:
                acc = acc.T
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

# The kernel's compile-time parameters, set by the runtime's plan from the configuration
# (see kgen/configs.py) and from the operands.
CONSTEXPRS = (
    "BLOCK_M",
    "BLOCK_N",
    "BLOCK_K",
    "GROUP_M",
    "TMA",  # tiles through tensor descriptors (else through pointers)
    "SWAP",  # with TMA: the product computed transposed (the "swap" loop)
    "FLATTEN",  # persistent launch: let the compiler pipeline across tiles
    "WIDE",  # int64 offsets
    "UPCAST_DOT",  # the interpreter's bf16 tl.dot workaround
    "SAVE",  # training: store the accumulator (save_ptr) before the epilogue
)

# Without row operations, the epilogue runs on SUBTILES column slices of the tile in
# turn: 1, or 2 halves for 256-column tiles. On the H100 (same process, interleaved,
# bitwise-equal outputs) halves took seed 003's exact GELU from 234 to 222 us (fp16) and
# 236 to 216 us (bf16) at 4096^3, 461 to 429 and 428 to 426 us at 2048x8192x8192, and
# left seed 001's sigmoid within -1..+3 %. Registers stay ~253 per thread: the gain is
# in scheduling, not spills.
SUBTILE = (
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
EPILOGUE_MASKS = (
    "        mask_n = offs_n < N\n        mask_mn = mask_m[:, None] & mask_n[None, :]\n"
)

# Split-K (kgen/configs.py; kernels without row operations): program (t, s) of the
# (tiles, SPLIT_K) grid sums k-steps [s * per, (s + 1) * per) of tile t. With SPLIT_K = 1
# the branches fold away at compile time and the loops are the plain ones.
SPLIT_K_LOOP = [
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
SPLIT_K_FIXUP = """
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

W_DESC_LOAD = {
    # linear: weight is [N, K], its descriptor's blocks [BLOCK_N, BLOCK_K]
    Gemm.LINEAR: "w_desc.load([pid_n * BLOCK_N, k_step * BLOCK_K]).T",
    # matmul: weight is [K, N], blocks [BLOCK_K, BLOCK_N]
    Gemm.MATMUL: "w_desc.load([k_step * BLOCK_K, pid_n * BLOCK_N])",
}

# acc + x_tile @ w_tile with an fp32 accumulator, for the spec's fp32 precision.
FP32_DOT = {
    "tf32x3": 'acc = tl.dot(x_tile, w_tile, acc, input_precision="tf32x3")',
    "tf32": 'acc = tl.dot(x_tile, w_tile, acc, input_precision="tf32")',
    "ieee": 'acc = tl.dot(x_tile, w_tile, acc, input_precision="ieee")',
    "bf16x3": "acc = _dot_bf16x3(x_tile, w_tile, acc, UPCAST_DOT)",
}

DOT = """
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

DOT_BF16X3 = """
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


# The mainloop of a kernel with row operations: tiles of `tile_n` columns that never
# straddle a segment of `seg_n` columns (kgen/lower/rows.py), at any column offset n0.
ROW_TILES = [
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
