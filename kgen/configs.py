"""Launch configurations: the one place that decides tiles, warps, stages and mainloop.

A configuration is (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages, loop,
split_k), where `loop` picks the kernel's mainloop and launch (all share one epilogue and
its one store):

- "pointer": tiles loaded through pointers with contiguity hints, one program per tile.
  Works for every layout and GPU; the choice for small problems.
- "tma": tiles loaded through tensor descriptors (Hopper's TMA copy engine), one program
  per tile. Needs a 16-byte-aligned base and row stride and a contiguous last dimension.
- "persistent": TMA, one program per SM looping over the tiles; the compiler pipelines
  the next tile's loads under this tile's epilogue (`tl.range(flatten=True)`).
- "swap": TMA, one program per tile, the product computed transposed (out^T = W x^T):
  for few rows (decode), the weight's columns fill the tensor cores' 64-wide side and
  the rows the narrow one, as cuBLAS does for skinny GEMMs. On the H200 (fp16, linear +
  bias + gelu, one process, each loop's best; torch.mm in brackets), M = 16: 4096^2
  19.4 against 18.9 us for "pointer" (18.6), 4096x16384 46.1 / 47.1 (44.9), 16384x4096
  44.8 / 45.3 (44.0), 8192^2 45.0 / 45.8 (44.1); M = 1, 4096^2: 19.2 / 19.8 (19.2); at
  32 and 64 rows "pointer" was 2-3 % faster. (A minimal kernel of the same form took
  17.3 us at 16x4096x4096: kgen's loop nest or epilogue costs the rest, unexplained.)
  On an H100 (2026-12-07, same kernel, one process, L2 flushed), 6 stages and no split
  were fastest for 1 and 16 rows: 4096^2 22.5 us against 23.4 for 5 stages split in two
  (the heuristic then; torch.mm 22.6 / 23.6), 8192^2 60.2 for 5 or 6 stages unsplit
  (mm 59.5 / 59.7). With 64 tiles (N = 4096) a split in two fills the SMs yet loses:
  each program's weight stream is what the swap loop pipelines, and halving it leaves
  the pipeline's fill and the partial sums' round trip; so the swap loop splits only
  where its tiles fill a quarter of the SMs or less (e.g. N = 1024 and fewer columns).

and `split_k` > 1 (kernels without row operations; not the persistent loop) splits each
tile's k-steps among that many programs: each writes its fp32 partial sum to a workspace,
and the tile's last program to arrive (an atomic counter) adds the partials in a fixed
order and runs the epilogue. For few output tiles and a long K, where most SMs would
otherwise idle. On the H100 (fp16, seeds 001 and 003, one process, split vs unsplit):
1.73-1.75x faster at 128x1024x4096 (64 k-steps of 64), 2.2x at 256x512x8192, 3.8-3.9x
at 64x256x16384, but only 1.07-1.10x (0.6-0.7 us) at 128x512x1024 (16 k-steps), far
less than the CPU time the workspace and counters add to a call there (10-18 us, same
process): the heuristic splits only loops of 32 k-steps or more (the tuner, timing GPU
work alone, may split any).

Warp specialization (`tl.range(warp_specialize=True)`) is not offered: on the H100 with
Triton 3.6 it gained nothing over "persistent" (2048x8192x8192 fp16, 128x256 tiles:
374 vs 365 us; with epilogue subtiling, seed 003 at 4096^3 fp16 226 vs 242 us) and a
4-warp, 2-stage configuration of it hung the GPU. Also measured on the H100 against the
persistent 128x256x64 loop, one process, bitwise-equal outputs, and not adopted: the
output stored through a tensor descriptor (TMA) frees ~80 registers (251 -> 171) but
was slower (seed 003 4096^3 fp16 226 -> 250 us, 2048x8192x8192 433 -> 457 us); 4
stages instead of 3 moved 0-2.5 %, within noise. A training forward stores two tiles
(the output and the saved accumulator), and there the tensor descriptors won: on an
H100 (2026-12-07, linear_gelu 16384x4096x4096 bf16, 3 stages, one process, the same
bytes) 905 -> 863 us with both stores through descriptors, where inference went
785 -> 823 (a hand-edited copy of the generated kernel, launched with the plan's
arguments). So the persistent loop's training forward stores both tiles through tensor
descriptors (TMA_STORE, kgen/runtime/op.py, where both tensors' rows are 16-byte
aligned) and inference keeps its pointer store.

Rules, from the seed prompts (shared/seeds/): power-of-two blocks, num_warps in {4, 8},
the conservative baseline (4 warps, 2 stages) among the choices. The seeds also keep
num_stages in {2, 3} (register pressure on their consumer GPU); kgen allows 4 and 5
where it measured them faster on Hopper. On the H200 (fp16, one process, median GPU
time, linear + bias + gelu), against the H100-era choices (BLOCK_K 64, 3 stages):
at M <= 256 a 128-deep k step with 4 stages was 1.3-1.9x faster (16x4096x4096: 25.6
-> 18.9 us, torch.mm 19.6; 64x4096x4096 29.5 -> 21.1, mm 17.8; 256x4096x4096 40.4 ->
27.6, mm 24.5; 256x4096x16384 122 -> 68.4, mm 58.7; 128x512x1024 13.1 -> 9.3, mm 7.7),
and at 512x4096x4096 128x128 persistent tiles with 5 stages took 34.0 us against 53.2
for 128x256 ones, half of whose 64 tiles' worth of SMs idled (mm 28.6). At 1024x4096^2
and 4096^3 a fourth stage moved 1-2 %; the large tiles have 4 since a training forward
measured faster with it (`_CONFIGS`). A configuration's stages are cut to what the
GPU's shared memory holds (`_heuristic`).

What a module launches: the measured best for its GPU, dtype and shape bucket, from the
tuning file `kgen tune` writes beside it (`<kernel>.tuning.json`), or else
`_heuristic`'s pick from `_CONFIGS` (kgen.runtime.op.GemmOp.choose, the one place that
reads both). `SPACE` and `candidates` are what `kgen tune` searches.
"""

from __future__ import annotations

import itertools

import torch
import triton

Config = tuple[int, int, int, int, int, int, str, int]

NUM_WARPS = (4, 8)
NUM_STAGES = (2, 3, 4, 5, 6)
SPLIT_K = (1, 2, 4, 8)
_LOOPS = ("pointer", "tma", "persistent", "swap")
LOOPS = _LOOPS

# The heuristic's choices; the name says when `_heuristic` picks each.
_CONFIGS: dict[str, Config] = {
    # a full wave of 128x256 tiles or more, 16-bit operands, TMA possible: persistent,
    # 4 stages (3 until 2026-12-07: on an H100, linear_gelu at 16384x4096x4096 bf16,
    # one process, 4 stages took the training forward, which also stores the
    # accumulator, from 906 to 876 us and inference from 785 to 782; `kgen tune` at
    # first use chose 4 for the MLP's 4096 and 16384 rows too; on the H200 a fourth
    # stage moved 4096^3 by 1-2 %)
    "large_tma": (128, 256, 64, 8, 8, 4, "persistent", 1),
    # a full wave of 128x128 tiles, but half a wave of 128x256 ones or less
    "mid_tma": (128, 128, 64, 8, 8, 5, "persistent", 1),
    # many output tiles, fp32 operands (half the elements per byte of shared memory)
    "large_tma_fp32": (128, 128, 32, 8, 8, 3, "persistent", 1),
    # many output tiles, no TMA (odd strides or alignment, pre-Hopper GPU)
    "large": (128, 128, 64, 8, 8, 3, "pointer", 1),
    # fewer tiles: 64-row tiles, a deep k step and pipeline (the weight streams by)
    "medium_wide": (64, 128, 128, 8, 4, 4, "pointer", 1),
    "medium": (64, 64, 128, 8, 4, 4, "pointer", 1),
    # few rows: M <= 32, and M <= 16 (decode); the weight's read decides
    "few_rows": (32, 64, 128, 8, 4, 4, "pointer", 1),
    "decode": (16, 64, 128, 8, 4, 4, "pointer", 1),
    "decode_tma": (16, 64, 128, 8, 4, 6, "swap", 1),
    # the seeds' conservative baseline (4 warps, 2 stages): K fits in one or two steps,
    # so deeper pipelining buys nothing
    "baseline": (64, 64, 32, 8, 4, 2, "pointer", 1),
}
CONFIGS = _CONFIGS
# Shared memory per block on Hopper (H100, H200: 227 KB), and what the pipeline leaves
# for the epilogue's layout conversions and reductions.
SMEM_HOPPER = 232448
EPILOGUE_SMEM = 32 * 1024
# A training forward's descriptor stores (TMA_STORE) stage one subtile of the output
# (then of the accumulator) in shared memory beside the pipeline's stages: the plan
# takes them only where that fits. Compiled for sm90 with Triton 3.6 (bf16, persistent
# loop), the kernel's shared memory was the stages plus one staging tile plus 32-40
# bytes: 128x256x64 with 4 stages 229408 bytes (inference 200736), 128x128x64 with 5
# 196648, fp32 128x128x32 with 3 163872; so this much is left for the rest.
STORE_SMEM_SLACK = 1024


def _bucket(M: int, N: int, K: int) -> str:
    """The tuning file's shape key: each size rounded up to a power of two."""
    return f"{triton.next_power_of_2(M)}x{triton.next_power_of_2(N)}x{triton.next_power_of_2(K)}"


def _heuristic(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    tma: bool,
    num_sms: int,
    smem: int = SMEM_HOPPER,
) -> tuple[int, int, int, int, int, int, str, int]:
    """A configuration for a shape nobody tuned: one of _CONFIGS by the rows and the
    number of tiles, with BLOCK_K capped for fp32 operands and for short K (tl.dot needs
    >= 16), the stages cut to what `smem` bytes of shared memory hold, and, for 32
    k-steps or more, K split while the split programs still fit in one wave and every
    split keeps 4 or more k-steps (a shorter loop gains too little: see split_k above)."""
    wave = num_sms // 2  # tiles enough to keep the SMs busy (two programs fit per SM)
    if K <= 64:
        name = "baseline"
    elif M <= 16:
        name = "decode_tma" if tma else "decode"
    elif M <= 32:
        # whatever N is: a 128-row tile would leave 3/4 or more of its rows empty (at
        # 16x16384x4096 fp16 on the H200 the 128x256 persistent tile took 67 us)
        name = "few_rows"
    elif M >= 128 and triton.cdiv(M, 128) * triton.cdiv(N, 128) >= wave:
        name = "large"
        if tma and dtype == torch.float32:
            name = "large_tma_fp32"
        elif tma:  # 128x256 tiles once they too fill half a wave
            wide = triton.cdiv(M, 128) * triton.cdiv(N, 256) >= wave
            name = "large_tma" if wide else "mid_tma"
    elif triton.cdiv(M, 64) * triton.cdiv(N, 128) >= wave:
        name = "medium_wide"
    else:
        name = "medium"
    block_m, block_n, block_k, group_m, num_warps, num_stages, loop, split_k = _CONFIGS[name]
    if dtype == torch.float32:
        block_k = min(block_k, 32)
    block_k = min(block_k, max(16, triton.next_power_of_2(K)))
    # a stage holds an x tile and a weight tile; the epilogue needs room too
    stage = (block_m + block_n) * block_k * dtype.itemsize
    num_stages = max(2, min(num_stages, (smem - EPILOGUE_SMEM) // stage))
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)
    k_steps = triton.cdiv(K, block_k)
    # (a persistent loop does not split: few tiles of 128x256 with many of 128x128,
    # e.g. 385x3969x1985, would otherwise ask it to; the "swap" loop splits only where
    # its tiles fill a quarter of the SMs or less: see split_k above)
    per_sm = 4 if loop == "swap" else 2
    while (
        loop != "persistent"
        and split_k < 8
        and tiles * split_k * per_sm <= num_sms
        and k_steps >= max(32, 8 * split_k)
    ):
        split_k *= 2
    return (block_m, block_n, block_k, group_m, num_warps, num_stages, loop, split_k)


def _tuned(
    table: object, dtype: torch.dtype, bucket: str, tma: bool
) -> tuple[int, int, int, int, int, int, str, int] | None:
    """The tuning file's configuration for this dtype and shape bucket (`table` is the
    file's entry for this GPU), if it is a usable one: a module must work whatever the
    file holds, a TMA configuration is no use where TMA cannot run, and a persistent
    loop does not split K."""
    by_dtype = table.get(str(dtype)[6:]) if isinstance(table, dict) else None
    config = by_dtype.get(bucket) if isinstance(by_dtype, dict) else None
    if (
        not isinstance(config, list)
        or len(config) != 8
        or not all(isinstance(v, int) and v > 0 for v in (*config[:6], config[7]))
        or config[6] not in _LOOPS
        or (config[6] != "pointer" and not tma)
        or (config[6] == "persistent" and config[7] != 1)
    ):
        return None
    return tuple(config)


def choose_config(
    M: int, N: int, K: int, dtype: torch.dtype, tma: bool = False, num_sms: int = 132
) -> Config:
    """The untuned choice (what `_heuristic` in a generated module returns; 132: an
    H100's SMs)."""
    return _heuristic(M, N, K, dtype, tma, num_sms)


def bucket(M: int, N: int, K: int) -> str:
    return _bucket(M, N, K)


def is_valid(config: Config) -> bool:
    """Does a configuration follow the rules above?"""
    block_m, block_n, block_k, group_m, num_warps, num_stages, loop, split_k = config

    def pow2(v: int) -> bool:
        return v >= 16 and v & (v - 1) == 0

    return (
        all(pow2(v) for v in (block_m, block_n, block_k))
        and group_m >= 1
        and num_warps in NUM_WARPS
        and num_stages in NUM_STAGES
        and loop in LOOPS
        and split_k in SPLIT_K
        and (split_k == 1 or loop != "persistent")
    )


# ---------------------------------------------------------------------------
# What `kgen tune` searches

SPACE: dict[str, tuple[int, ...] | tuple[str, ...]] = {
    "block_m": (16, 32, 64, 128, 256),
    "block_n": (32, 64, 128, 256),
    "block_k": (32, 64, 128),
    "group_m": (8,),
    "num_warps": NUM_WARPS,
    "num_stages": NUM_STAGES,
    "loop": LOOPS,
    "split_k": SPLIT_K,
}


def candidates(M: int, N: int, K: int, dtype: torch.dtype, tma: bool, num_sms: int) -> list[Config]:
    """SPACE pruned by shape and by the rules above, before any compile (the compiled
    kernels' registers, spills and shared memory prune further: kgen.tune).

    - blocks no larger than the problem rounded up to a power of two (a 128-row tile
      for 16 rows wastes 7/8 of its work); fp32 operands: BLOCK_K <= 32 (a stage of fp32
      tiles takes twice the shared memory);
    - at most 128 fp32 accumulator values per thread (the seeds: "regs > 128 -> fewer
      warps"; 128x256 tiles with 4 warps spill heavily: shared/notes);
    - TMA loops wherever descriptors can address the operands and there are not few
      tiles, persistent ones only when there are more tiles than SMs; else the pointer
      loop (with few tiles on the H200 it was as fast or faster: 128x512x1024 fp16
      9.3 against 10.5 us, 16x4096x4096 18.9 against 19.5), and for 32 rows or fewer
      the "swap" loop too, its narrow side as wide as the rows (16 or 32), 4 warps,
      at most 128 columns and 4 splits;
    - BLOCK_K at its cap, or 64 with K split in 3 stages where the cap is 128 (the
      H100's tuned choice at 128x1024x4096 and 256x512x8192); 2 or 3 stages where K
      fits in two k-steps, else 3 to 5 (5 only for stages of 32 KB or less), 4 or 6
      in the "swap" loop;
    - few tiles (fewer 64x64 tiles than SMs): tiles of at most 64x64 (16 rows only for
      16 rows or fewer), 4 warps and 3 or 4 stages, so more SMs get work (the seeds'
      small-M rule), and the longest k step K and the dtype allow (the weight streams
      by: fewer, longer k-steps);
    - many tiles (two waves of 128x128 or more): 128-row tiles at least 128 wide (fewer
      re-reads of the operands; the H100 measurements in shared/notes); BLOCK_K = 64
      (32 for fp32);
    - between the two: tiles from 64x64 to 128x128 and the longest k step;
    - K split (split_k > 1) only for few tiles, in the "pointer" and "swap" loops (on
      the H100 the "tma" loop split as well, not better), with at most one program per
      SM and 4 or more k-steps per split.
    """
    fp32 = dtype == torch.float32
    few = triton.cdiv(M, 64) * triton.cdiv(N, 64) < num_sms
    many = triton.cdiv(M, 128) * triton.cdiv(N, 128) >= 2 * num_sms
    k_pow2 = max(32, triton.next_power_of_2(K))
    k_cap = 32 if fp32 else min(64 if many else 128, k_pow2)
    out: list[Config] = []
    for values in itertools.product(*SPACE.values()):
        bm, bn, bk, gm, warps, stages = (int(str(v)) for v in values[:6])
        loop, split_k = str(values[6]), int(str(values[7]))
        if bm > max(16, triton.next_power_of_2(M)) or bn > max(32, triton.next_power_of_2(N)):
            continue
        if bk != k_cap and not (bk == 64 and k_cap == 128 and stages == 3 and split_k > 1):
            continue
        stage_bytes = (bm + bn) * bk * dtype.itemsize
        short = triton.cdiv(K, bk) <= 2  # K in one or two k-steps
        if stages > 3 if short else (stages < 3 or (stages >= 5 and stage_bytes > 32768)):
            continue
        if stages == 6 and loop != "swap":
            continue
        if bm * bn // (32 * warps) > 128:
            continue
        if loop != "pointer" and not tma:
            continue
        if loop == "swap":
            # few rows only (M <= 32): as many as the rows, 4 warps, a deep pipeline
            if not (tma and M <= 32 and bm == max(16, triton.next_power_of_2(M))):
                continue
            if bn > 128 or warps != 4 or stages not in (4, 6) or bk != k_cap or split_k > 4:
                continue
        elif (loop == "pointer") != (few or not tma):
            continue
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
        if loop == "persistent" and (few or tiles <= num_sms):
            continue
        if split_k > 1 and (
            not few
            or loop not in ("pointer", "swap")
            or stages < 3
            or tiles * split_k > num_sms
            or triton.cdiv(K, bk) < 4 * split_k
        ):
            continue
        if few and loop != "swap" and (bm > 64 or bn > 64 or warps != 4 or stages > 4):
            continue
        if few and bm < min(32, triton.next_power_of_2(M)):
            continue
        m_big = min(128, max(16, triton.next_power_of_2(M)))
        n_big = min(128, max(32, triton.next_power_of_2(N)))
        if many and (bm != m_big or bn < n_big):
            continue
        if not few and not many:
            m_cap = min(64, max(16, triton.next_power_of_2(M)))
            n_cap = min(64, max(32, triton.next_power_of_2(N)))
            if bm < m_cap or bn < n_cap or max(bm, bn) > 128:
                continue
            if bm * bn >= 64 * 64 and bm * bn // (32 * warps) < 32:
                continue
        out.append((bm, bn, bk, gm, warps, stages, loop, split_k))
    return out
