"""Lowering of row operations (LANGUAGE.md, "Row operations"): softmax, norms,
reductions and pools, fused into the GEMM kernel's epilogue.

A row operation needs a *segment* of its value's columns: the whole row (softmax,
layernorm, logsumexp, row_*), a group (groupnorm) or a window (avgpool, maxpool).
Which strategy runs is decided per launch from N by kgen.runtime.rowplan, from the
table of the kernel's row operations (kgen/lower/steps.py), since N is known only
then. Both are plans the one epilogue writer follows (kgen/lower/epilogue.py):

1. **In-tile.** Each program's tile holds `tile_n` consecutive GEMM columns, a
   multiple of every segment's width (for a whole-row op, one tile spans the row),
   in a register tile of BLOCK_N = next_pow2(tile_n) columns, at most ROW_BLOCK_MAX.
   Segment statistics are reductions in registers: along the row, or per segment
   (a reshape when the width is a power of two; else a masked reduction per segment
   where a tile holds no more segments than a segment has columns, gathers otherwise:
   `_seg_reduce`) and broadcast back (`_seg_bcast`). Triton 3.6 cannot lay out a
   gather of few segments in a tile of few rows (an assertion in
   TritonGPUOptimizeThreadLocality: 2 groups of 100 columns in 16 rows, 4 warps);
   the masked reductions need no gather. After a pool the tile has fewer columns (a
   *level*). Stores: the output, once, as without row operations.

2. **Two-pass**, when a segment is wider than a tile (softmax over N = 8192): the
   first such op, SPLIT, must be a whole-row op or a groupnorm, followed only by
   elementwise steps (and row ops on the one value per row a reduction leaves).
   Tiles never straddle a segment (`seg_n` GEMM columns each, `seg_tiles` tiles of
   `tile_n`). The GEMM kernel computes everything before SPLIT in-tile, then
   - stores its tile's partial statistics of SPLIT's input to `stats`, a
     [NSTATS, M, tiles] fp32 buffer (1-3 floats per row and tile: the only memory
     besides the output), and
   - for a normaliser, stores the input *relative to the tile's statistics* into the
     output (softmax: exp(x - tile max), in [0, 1]; log_softmax: x - tile max;
     norms: x - tile mean), which keeps it well conditioned in the output dtype.
   The finishing kernel `<name>_finish` combines a row's (or group's) statistics
   (online max/sum-exp; Chan's parallel mean/variance), re-reads the stored values,
   normalises them, runs the rest of the epilogue and stores the result over them:
   the output is written twice and read once. Recomputing the GEMM instead would
   double its work, so the re-read is the cheaper pass at every size.

Tried and not built: subtiling the two-pass GEMM epilogue, each half of a 128x256 tile
taken as a 128-column tile of its own (its own statistics; the finishing kernel
unchanged). On the H100 (1024x8192x8192 fp16, one process, interleaved) it removed
gelu+softmax's spills (38 words to 0 with the "tma" loop, 148 to 0 persistent) but
not its time: 233 -> 239 us ("tma") and 263 -> 256 us (persistent); softmax and
logsumexp moved within noise. The epilogue's cost there is its exposed ALU work, not
spills.

Tried and not built: one pass, the tiles of a row block exchanging their statistics in
the GEMM kernel (after storing them, each tile counts itself in with a release atomic
and spins until all `seg_tiles` have; no finishing kernel, one store). That needs every
tile of a row block resident at once, so the tiles go in row-major order (with grouped
order a wave holds a little of every row block, and the spin deadlocks), and then each
wave streams all of W: on the H100 (1024x8192x8192 fp16, one process, interleaved),
softmax went 209 -> 228 us (persistent loop) and 211 -> 228 us (one tile per program,
tile ids from an atomic ticket). The same row-major order without the exchange took
228-231 us: the exchange was nearly free, the order's extra reads of W were not. At
this shape the whole of eager PyTorch (cuBLAS addmm + softmax, 220-222 us) is only
1.19-1.20x `F.linear` alone (184-186 us), so a one-pass softmax would also have to
run its GEMM at cuBLAS's speed to reach 1.2x eager.

The generated code names every temporary through the emitter's namer, and the
reductions, gathers and stores here are the only ones row operations add.
"""

from __future__ import annotations

from kgen.ir import Kernel, Kind
from kgen.lower.epilogue import Level, Writer, tile_spread
from kgen.lower.steps import NSTATS, RowStep, steps
from kgen.ops import RowKind

# ---------------------------------------------------------------------------
# Triton helpers for segments of columns

SEGMENT_HELPERS = """
@triton.jit
def _seg_reduce(v, S: tl.constexpr, NS: tl.constexpr, OP: tl.constexpr):
    # [BM, BN] -> [BM, NS]: OP ("sum", "max" or "min") over each run of S columns
    BM: tl.constexpr = v.shape[0]
    BN: tl.constexpr = v.shape[1]
    if (S & (S - 1)) == 0:
        # a power of two: the runs are a reshape
        t = tl.reshape(v, [BM, BN // S, S])
        if OP == "sum":
            r = tl.sum(t, axis=2)
        elif OP == "max":
            r = tl.max(t, axis=2)
        else:
            r = tl.min(t, axis=2)
    elif NS <= S:
        # few runs: one masked reduction along the row per run
        run = tl.arange(0, BN) // S
        lane = tl.arange(0, NS)[None, :]
        r = tl.zeros([BM, NS], dtype=v.dtype)
        for j in tl.static_range(NS):
            inside = (run == j)[None, :]
            if OP == "sum":
                part = tl.sum(tl.where(inside, v, 0.0), axis=1)
            elif OP == "max":
                part = tl.max(tl.where(inside, v, float("-inf")), axis=1)
            else:
                part = tl.min(tl.where(inside, v, float("inf")), axis=1)
            r = tl.where(lane == j, part[:, None], r)
    else:
        # else S gathers, one column of every run each (runs past BN are padding)
        first = tl.arange(0, NS) * S
        zeros = tl.zeros([BM, NS], dtype=tl.int32)
        r = tl.gather(v, tl.minimum(first, BN - 1)[None, :] + zeros, 1)
        for i in tl.static_range(1, S):
            g = tl.gather(v, tl.minimum(first + i, BN - 1)[None, :] + zeros, 1)
            if OP == "sum":
                r = r + g
            elif OP == "max":
                r = tl.maximum(r, g)
            else:
                r = tl.minimum(r, g)
    return r


@triton.jit
def _seg_bcast(stat, S: tl.constexpr, BN: tl.constexpr):
    # [BM, NS] -> [BM, BN]: each run of S columns gets its segment's value
    BM: tl.constexpr = stat.shape[0]
    NS: tl.constexpr = stat.shape[1]
    if (S & (S - 1)) == 0:
        r = tl.reshape(tl.broadcast_to(stat[:, :, None], [BM, NS, S]), [BM, BN])
    elif NS <= S:
        # few runs: each run's value picked out of its lane and spread over its columns
        run = tl.arange(0, BN) // S
        lane = tl.arange(0, NS)[None, :]
        r = tl.zeros([BM, BN], dtype=stat.dtype)
        for j in tl.static_range(NS):
            value = tl.sum(tl.where(lane == j, stat, 0.0), axis=1)
            r = tl.where((run == j)[None, :], value[:, None], r)
    else:
        index = tl.minimum(tl.arange(0, BN) // S, NS - 1)
        r = tl.gather(stat, index[None, :] + tl.zeros([BM, BN], dtype=tl.int32), 1)
    return r
"""


# ---------------------------------------------------------------------------
# The GEMM kernel's epilogue


def level_preamble(writer: Writer, kernel: Kernel, row_steps: list[RowStep]) -> None:
    """Name each level's columns: level 1 is the GEMM's (offs_n, mask_n)."""
    writer.levels[1] = Level("local_n", "offs_n", "mask_n", "BLOCK_N")
    for step in row_steps:
        if step.rowdef.kind is not RowKind.POOL or step.trivial:
            continue
        pool = step.pool * step.instr.size
        if pool in writer.levels:
            continue
        width = f"BN_{step.index}"
        cols = writer.assign(f"cols_{pool}", f"tl.arange(0, {width})")
        gcol = writer.assign(f"gcol_{pool}", f"n0 // {pool} + {cols}")
        ok = writer.assign(
            f"ok_{pool}",
            f"({cols} < tile_n // {pool}) & ((chunk * tile_n) // {pool} + {cols} < seg_n // {pool})"
            f" & ({gcol} < N // {pool})",
        )
        writer.levels[pool] = Level(cols, gcol, ok, width)


def gemm_epilogue(writer: Writer, kernel: Kernel) -> None:
    """The GEMM kernel's epilogue: in-tile throughout, or up to SPLIT."""
    row_steps = steps(kernel)
    by_id = {s.instr.id: s for s in row_steps}
    level_preamble(writer, kernel, row_steps)
    stats_t = writer.assign("stat_t", "stats_ptr + offs_m * num_tiles_n + pid_n")
    _gemm_rest(writer, kernel, by_id, 1, stats_t)


def _gemm_rest(
    writer: Writer, kernel: Kernel, by_id: dict[int, RowStep], start: int, stats_t: str
) -> None:
    for instr in kernel.body[start:]:
        step = by_id.get(instr.id)
        if step is None:
            writer.value(instr)
            continue
        if step.can_split:
            writer.line(f"if SPLIT == {step.index}:")
            writer.indent += 4
            writer.row_partial(step, stats_t)
            writer.indent -= 4
            writer.line("else:")
            writer.indent += 4
            writer.row_in_tile(step)
            _gemm_rest(writer, kernel, by_id, instr.id + 1, stats_t)
            writer.indent -= 4
            return
        writer.row_in_tile(step)
    _final_store(writer, kernel)


def _final_store(writer: Writer, kernel: Kernel) -> None:
    result = kernel.value(kernel.result)
    value = writer.names[result.id]
    columns, pool = kernel.output_columns()
    if columns != "N":
        writer.line(
            f"tl.store(out_ptr + offs_m[:, None] * stride_om, "
            f"({value} + tl.zeros((BLOCK_M, 1), dtype=tl.float32)).to(out_ptr.dtype.element_ty), "
            "mask=mask_m[:, None])"
        )
        return
    level = writer.levels[pool]
    if result.kind is not Kind.TILE:
        value = f"({value} + tl.zeros((BLOCK_M, {level.width}), dtype=tl.float32))"
    writer.line(
        f"tl.store(out_ptr + (offs_m[:, None] * stride_om + {level.gcol}[None, :] * stride_on), "
        f"{value}.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & {level.ok}[None, :])"
    )


# ---------------------------------------------------------------------------
# The finishing kernel (two-pass)


def finish_body(writer: Writer, kernel: Kernel) -> None:
    """One program: BLOCK_M rows of one segment, chunks first_chunk to first_chunk +
    CHUNKS - 1."""
    row_steps = steps(kernel)
    segments = kernel.segments()
    w = writer
    w.line("num_tiles_n = num_segs * seg_tiles")
    w.line("offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)")
    w.line("if WIDE:")
    w.line("    offs_m = offs_m.to(tl.int64)")
    w.line("mask_m = offs_m < M")
    w.line("seg_id = tl.program_id(1)")
    w.line("first_chunk = tl.program_id(2) * CHUNKS")
    w.line("tile_ids = tl.arange(0, BLOCK_T)")
    w.line("tile_mask = mask_m[:, None] & (tile_ids < seg_tiles)[None, :]")
    w.line("stat_rows = stats_ptr + offs_m * num_tiles_n + seg_id * seg_tiles")
    keyword = "if"
    for step in row_steps:
        if not step.can_split:
            continue
        # each branch computes its own values (none is defined in another branch)
        names, levels = dict(w.names), dict(w.levels)
        w.line(f"{keyword} SPLIT == {step.index}:")
        keyword = "elif"
        w.indent += 4
        _finish_split(w, kernel, step, segments)
        w.indent -= 4
        w.names, w.levels = names, levels


def _finish_split(w: Writer, kernel: Kernel, step: RowStep, segments: list[int]) -> None:
    rowdef, instr, pool = step.rowdef, step.instr, step.pool
    family = rowdef.family
    n = NSTATS[family]
    loaded = []
    for j in range(n):
        other = "float('-inf')" if (family in ("exp", "max") and j == 0) else "0.0"
        if family == "min":
            other = "float('inf')"
        loaded.append(
            w.assign(
                f"tile_stat{j}",
                f"tl.load(stat_rows[:, None] + {j} * M * num_tiles_n + tile_ids[None, :], "
                f"mask=tile_mask, other={other})",
            )
        )
    stats: dict[str, str] = {}
    if family == "exp":
        m_t, s_t = loaded
        m = w.assign("row_shift", f"tl.max({m_t}, axis=1)")
        part = f"tl.where({s_t} == 0.0, 0.0, {s_t} * tl.exp({m_t} - {m}[:, None]))"
        s = w.assign("row_sum_exp", f"tl.sum(tl.where(tile_mask, {part}, 0.0), axis=1)")
        stats = {"m": m, "s": s}
    elif family == "moments":
        c_t, mean_t, m2_t = loaded
        count = w.assign("row_count", f"tl.sum({c_t}, axis=1)")
        mean = w.assign("row_mean", f"tl.sum({c_t} * {mean_t}, axis=1) / {count}")
        dev = f"{mean_t} - {mean}[:, None]"
        m2 = w.assign("row_m2", f"tl.sum({m2_t} + {c_t} * ({dev}) * ({dev}), axis=1)")
        eps = w.names.get(instr.args[1], None)
        if eps is None:
            _recompute(w, kernel, [instr.args[1]], segments)
            eps = w.names[instr.args[1]]
        rstd = w.assign("row_rstd", f"1.0 / tl.sqrt_rn({m2} / {count} + {eps})")
        stats = {"mean": mean, "rstd": rstd}
    elif family == "sum":
        stats = {
            "sum": w.assign("row_total", f"tl.sum({loaded[0]}, axis=1)"),
            "count": f"(N // {pool})",
        }
    else:
        t = loaded[0]
        nans = f"tl.sum(tl.where({t} != {t}, 1.0, 0.0), axis=1)"
        stats = {
            family: w.assign(
                f"row_{family}", f"tl.where({nans} > 0, float('nan'), tl.{family}({t}, axis=1))"
            )
        }
    later = _later(kernel, instr.id, segments)
    if rowdef.kind is RowKind.REDUCE:
        w.names[instr.id] = w.assign(instr.op, f"({rowdef.apply.format(**stats)})[:, None]")
        w.levels = {1: Level("local_n", "offs_n", "mask_n", "BLOCK_N")}
        _recompute(w, kernel, later, segments)
        _final_store(w, kernel)
        return
    # a normaliser: finish each chunk of the segment in turn
    w.line("for chunk in range(first_chunk, tl.minimum(first_chunk + CHUNKS, seg_tiles)):")
    w.indent += 4
    w.line("n0 = seg_id * seg_n + chunk * tile_n")
    width = "BLOCK_N"
    w.line(f"local_n = tl.arange(0, {width})")
    w.line(f"gcol = n0 // {pool} + local_n")
    w.line("if WIDE:")
    w.line("    gcol = gcol.to(tl.int64)")
    w.line(
        f"col_ok = (local_n < tile_n // {pool}) & ((chunk * tile_n) // {pool} + local_n < seg_n // {pool})"
        f" & (gcol < N // {pool})"
    )
    w.line("offs_n = gcol")
    w.line("mask_n = col_ok")
    w.line("mask_mn = mask_m[:, None] & col_ok[None, :]")
    level = Level("local_n", "gcol", "col_ok", width)
    w.levels = {1: level, pool: level}
    w.line(
        "tile_relative = tl.load(out_ptr + (offs_m[:, None] * stride_om + gcol[None, :] * stride_on), "
        "mask=mask_mn, other=0.0).to(tl.float32)"
    )
    fields = dict(stats)
    for k in list(stats):
        fields[k] = f"{stats[k]}[:, None]"
    if family == "exp":
        fields["m_t"] = w.assign(
            "chunk_shift", "tl.load(stat_rows + chunk, mask=mask_m, other=0.0)[:, None]"
        )
    else:
        fields["mean_t"] = w.assign(
            "chunk_mean",
            "tl.load(stat_rows + M * num_tiles_n + chunk, mask=mask_m, other=0.0)[:, None]",
        )
        c_t, m2_t = (
            w.assign(
                f"chunk_{what}",
                f"tl.load(stat_rows + {j} * M * num_tiles_n + chunk, mask=mask_m, other=0.0)",
            )
            for j, what in ((0, "count"), (2, "m2"))
        )
        fields["spread_t"] = w.assign("chunk_spread", tile_spread(m2_t, c_t)) + "[:, None]"
    if rowdef.affine:
        _recompute(w, kernel, [instr.args[2], instr.args[3]], segments)
        fields.update(w._affine(instr))
    w.names[instr.id] = w.assign(instr.op, rowdef.finish.format(u="tile_relative", **fields))
    _recompute(w, kernel, later, segments)
    _final_store(w, kernel)
    w.indent -= 4


def _later(kernel: Kernel, split_id: int, segments: list[int]) -> list[int]:
    """The values after the cut: those of the split op's segment and later ones."""
    return [i.id for i in kernel.body if i.id > split_id and segments[i.id] >= split_id]


def _recompute(w: Writer, kernel: Kernel, ids: list[int], segments: list[int]) -> None:
    """Emit `ids` and the values (not depending on the GEMM) they need, in order."""
    needed: set[int] = set()
    stack = list(ids)
    while stack:
        i = stack.pop()
        if i in needed or i in w.names:
            continue
        needed.add(i)
        stack.extend(kernel.value(i).args)
    row_ids = {s.instr.id: s for s in steps(kernel)}
    for i in sorted(needed):
        instr = kernel.value(i)
        if i in row_ids:
            w.row_in_tile(row_ids[i])
        else:
            w.value(instr)
