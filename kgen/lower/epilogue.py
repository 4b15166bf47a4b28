"""The epilogue writer: an IR value, or a row step, as lines of Triton code.

Values stay in the shape of their kind -- [N] vectors as [1, BLOCK_N], [M] vectors as
[BLOCK_M, 1] -- so each is computed once per row or column and broadcasts where it
meets the tile; the names of a level's columns and masks (`Level`) say where the
code's columns are. Each group of lines is preceded by the spec line it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

from kgen.ir import Instr, Kernel, Kind, Operand
from kgen.lower.steps import RowStep
from kgen.lower.text import Namer, comment, literal
from kgen.ops import ALL_ROW_OPS, OPS, RowKind, RowOpDef, absolute_forms

_FLT_MAX = "3.4028234663852886e38"


def load(
    operand: Operand, cols: str = "offs_n", ok: str = "mask_n", tile_mask: str = "mask_mn"
) -> str:
    """An operand's fp32 load, in the shape of its kind. `cols`/`ok` name the output
    columns and their mask, `tile_mask` the [BLOCK_M, BLOCK_N] mask (row operations
    load at other column levels: kgen/lower/rows.py)."""
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


@dataclass
class Level:
    """Columns of one level (a pool factor) in the code: names of the local column
    index, the global column index, the valid-column mask and the register width, and
    the name of the [BLOCK_M, width] mask if the code has one."""

    cols: str
    gcol: str
    ok: str
    width: str
    tile: str = ""
    # where the code holds each of the level's columns in several register columns
    # (the backward's pools: kgen/lower/backward.py), the mask of one of each, which
    # reductions over the level take
    rep: str = ""


class Writer:
    """The one epilogue writer: lines of Triton code at an indentation, one per IR
    value, per-element values and row steps alike, named through the kernel's namer.
    The GEMM kernel's epilogue, the row strategies' finishing kernel and (to come) the
    backward kernels are written with it; what differs between them is the plan they
    follow (kgen/lower/rows.py), never the lowering of a value."""

    def __init__(self, kernel: Kernel, namer: Namer, names: dict[int, str], indent: int):
        self.kernel = kernel
        self.namer = namer
        self.names = names
        self.indent = indent
        self.lines: list[str] = []
        self.levels: dict[int, Level] = {}
        self.last_line = 0
        self.absolute = absolute_forms(kernel)  # values in their op's cheaper form
        # the columns in a group of a groupwise row op, where not SEG_i (the backward's)
        self.group_columns: str | None = None
        # a pool's result stays in the register columns of its windows, each window's
        # value in all of them (the backward's), instead of one column a window
        self.pools_in_place = False

    def fresh(self, hint: str) -> str:
        return self.namer.fresh(hint, 0)

    def line(self, text: str) -> None:
        self.lines.append(" " * self.indent + text)

    def provenance(self, instr: Instr) -> None:
        lines = self.kernel.source.split("\n")
        if instr.span.line != self.last_line and 1 <= instr.span.line <= len(lines):
            self.last_line = instr.span.line
            where = f"{self.kernel.filename}:{self.last_line}"
            text = comment(lines[self.last_line - 1].strip())
            self.line(f"# src[{where}]: {text}")

    def load(self, operand: Operand) -> str:
        """`load` at the operand's column level (its pool)."""
        if operand.kind in (Kind.SCALAR, Kind.ROW):  # no columns
            return load(operand)
        level = self.levels[operand.pool]
        tile_mask = level.tile or f"mask_m[:, None] & {level.ok}[None, :]"
        return load(operand, level.gcol, level.ok, tile_mask)

    def value(self, instr: Instr) -> None:
        """An elementwise IR value (const, arg, load or registry op)."""
        if instr.op == "const":
            self.names[instr.id] = literal(float(instr.attr))  # type: ignore[arg-type]
            return
        self.provenance(instr)
        name = self.namer.fresh(instr.hint, instr.id)
        if instr.op == "load":
            expr = self.load(self.kernel.operand(str(instr.attr)))
        elif instr.op == "arg":
            # an fp32 scalar: the interpreter would otherwise do Python float math on it;
            # the backward's column count of a pooled level is N // pool
            value = f"{instr.attr} // {instr.pool}" if instr.pool > 1 else instr.attr
            expr = f"tl.full([], {value}, tl.float32)"
        else:
            args = [self.names[a] for a in instr.args]
            opdef = OPS[instr.op]
            absolute = instr.id in self.absolute
            if self.kernel.value(instr.args[0]).op == "const" and (
                opdef.helpers_for(absolute) or "tl." in opdef.triton
            ):
                # helpers apply tl functions to x; give them a tensor, not a constexpr
                args[0] = f"tl.full([], {args[0]}, tl.float32)"
            expr = opdef.lower(args, absolute)
        self.names[instr.id] = name
        self.line(f"{name} = {expr}")

    def assign(self, hint: str, expr: str) -> str:
        name = self.fresh(hint)
        self.line(f"{name} = {expr}")
        return name

    # -- a row op in registers ----------------------------------------------

    def row_in_tile(self, step: RowStep) -> None:
        instr, rowdef = step.instr, step.rowdef
        self.provenance(instr)
        v = self.names[instr.args[0]]
        if step.trivial:
            self.names[instr.id] = self.assign(instr.op, _trivial(rowdef, v))
            return
        level = self.levels[step.pool]
        if rowdef.family == "unpool":  # in place already: the remainder zeroed
            self.names[instr.id] = self.assign(instr.op, f"tl.where({level.ok}[None, :], {v}, 0.0)")
            return
        if rowdef.family == "position":
            position = f"({level.gcol} % {instr.size}).to(tl.float32)[None, :]"
            self.names[instr.id] = self.assign(instr.op, f"tl.zeros_like({v}) + {position}")
            return
        i = step.index
        ok = f"{level.rep or level.ok}[None, :]"
        in_place = self.pools_in_place and rowdef.kind is RowKind.POOL
        if step.whole:

            def red(expr: str, op: str) -> str:
                return f"tl.{op}({expr}, axis=1)[:, None]"

            def bc(stat: str) -> str:
                return stat

            count = f"(N // {step.pool})"
        else:

            def red(expr: str, op: str) -> str:
                return f'_seg_reduce({expr}, SEG_{i}, NSEG_{i}, "{op}")'

            def bc(stat: str) -> str:
                return f"_seg_bcast({stat}, SEG_{i}, {level.width})"

            count = str(instr.size) if in_place else (self.group_columns or f"SEG_{i}")
        stats = self._statistics(rowdef, v, ok, red, bc, count, instr)
        if in_place:
            expr = rowdef.apply.format(
                **{k: s if k == "count" else bc(s) for k, s in stats.items()}
            )
        elif rowdef.kind is RowKind.NORMALIZE:
            fields = {k: s if k == "count" else bc(s) for k, s in stats.items()}
            fields.update(self._affine(instr))
            expr = rowdef.apply.format(x=v, **fields)
        else:
            expr = rowdef.apply.format(**stats)
        self.names[instr.id] = self.assign(instr.op, expr)

    def _affine(self, instr: Instr) -> dict[str, str]:
        if not ALL_ROW_OPS[instr.op].affine:
            return {}
        return {"weight": self.names[instr.args[2]], "bias": self.names[instr.args[3]]}

    def _statistics(self, rowdef, v, ok, red, bc, count, instr) -> dict[str, str]:  # type: ignore[no-untyped-def]
        family = rowdef.family
        if family == "exp":
            mx = self.assign("row_max", red(f"tl.where({ok}, {v}, float('-inf'))", "max"))
            m = self.assign("shift", rowdef.shift.format(max=mx))
            e = f"tl.where({ok}, tl.exp({v} - {bc(m)}), 0.0)"
            s = self.assign("sum_exp", red(e, "sum"))
            return {"m": m, "s": s}
        if family == "moments":
            eps = self.names[instr.args[1]]
            mean = self.assign("mean", f"{red(f'tl.where({ok}, {v}, 0.0)', 'sum')} / {count}")
            d = self.assign("centred", f"tl.where({ok}, {v} - {bc(mean)}, 0.0)")
            var = self.assign("var", f"{red(f'{d} * {d}', 'sum')} / {count}")
            rstd = self.assign("rstd", f"1.0 / tl.sqrt_rn({var} + {eps})")
            return {"mean": mean, "rstd": rstd}
        if family == "sum":
            s = self.assign("row_sum", red(f"tl.where({ok}, {v}, 0.0)", "sum"))
            return {"sum": s, "count": count}
        identity = "float('-inf')" if family == "max" else "float('inf')"
        extreme = self.assign(f"row_{family}", red(f"tl.where({ok}, {v}, {identity})", family))
        nans = red(f"tl.where({ok} & ({v} != {v}), 1.0, 0.0)", "sum")
        return {
            family: self.assign(f"row_{family}", f"tl.where({nans} > 0, float('nan'), {extreme})")
        }

    # -- the two-pass cut: partial statistics and the relative value --------

    def row_partial(self, step: RowStep, stats_t: str) -> None:
        """Store this tile's statistics of SPLIT's input (and, for a normaliser, the
        input relative to them, into the output)."""
        instr, rowdef = step.instr, step.rowdef
        self.provenance(instr)
        v = self.names[instr.args[0]]
        level = self.levels[step.pool]
        ok = f"{level.ok}[None, :]"
        family = rowdef.family
        parts: list[str]
        fields: dict[str, str] = {}
        if family == "exp":
            mx = self.assign("tile_max", f"tl.max(tl.where({ok}, {v}, float('-inf')), axis=1)")
            m = self.assign("tile_shift", _partial_shift(rowdef, mx))
            s = self.assign(
                "tile_sum_exp",
                f"tl.sum(tl.where({ok}, tl.exp({v} - {m}[:, None]), 0.0), axis=1)",
            )
            parts, fields = [m, s], {"m_t": f"{m}[:, None]"}
        elif family == "moments":
            count = self.assign("tile_count", f"tl.sum(tl.where({level.ok}, 1.0, 0.0), axis=0)")
            mean = self.assign(
                "tile_mean",
                f"tl.sum(tl.where({ok}, {v}, 0.0), axis=1) / tl.maximum({count}, 1.0)",
            )
            d = self.assign("tile_centred", f"tl.where({ok}, {v} - {mean}[:, None], 0.0)")
            m2 = self.assign("tile_m2", f"tl.sum({d} * {d}, axis=1)")
            parts = [f"{count} + tl.zeros([BLOCK_M], dtype=tl.float32)", mean, m2]
            spread = self.assign("tile_spread", tile_spread(m2, count))
            fields = {"mean_t": f"{mean}[:, None]", "scale_t": f"(1.0 / {spread})[:, None]"}
        elif family == "sum":
            parts = [f"tl.sum(tl.where({ok}, {v}, 0.0), axis=1)"]
        else:
            identity = "float('-inf')" if family == "max" else "float('inf')"
            extreme = f"tl.{family}(tl.where({ok}, {v}, {identity}), axis=1)"
            nans = f"tl.sum(tl.where({ok} & ({v} != {v}), 1.0, 0.0), axis=1)"
            parts = [f"tl.where({nans} > 0, float('nan'), {extreme})"]
        names = [self.assign(f"tile_stat{j}", part) for j, part in enumerate(parts)]
        # one store of the statistics (a loop over them: the kernel's second output)
        j_name, stat = self.fresh("stat_j"), self.fresh("stat")
        self.line(f"for {j_name} in tl.static_range({len(names)}):")
        for j, name in enumerate(names):
            keyword = "if" if j == 0 else ("elif" if j < len(names) - 1 else "else")
            test = f" {j_name} == {j}" if keyword != "else" else ""
            self.line(f"    {keyword}{test}:")
            self.line(f"        {stat} = {name}")
        self.line(f"    tl.store({stats_t} + {j_name} * M * num_tiles_n, {stat}, mask=mask_m)")
        if rowdef.kind is RowKind.NORMALIZE:
            u = rowdef.partial.format(x=v, **fields)
            self.line(
                f"tl.store(out_ptr + (offs_m[:, None] * stride_om + {level.gcol}[None, :] "
                f"* stride_on), ({u}).to(out_ptr.dtype.element_ty), "
                f"mask=mask_m[:, None] & {ok})"
            )


def tile_spread(m2: str, count: str) -> str:
    """A tile's standard deviation from its sum of squared deviations and count, 1
    where the variance is 0 (a subnormal m2 over the count underflows to it) or not
    finite: the two-pass moments' scale (the GEMM kernel and the finishing kernel
    compute it alike, from the same fp32 statistics)."""
    var = f"({m2} / tl.maximum({count}, 1.0))"
    return f"tl.where(({var} > 0.0) & ({var} < float('inf')), tl.sqrt_rn({var}), 1.0)"


def _partial_shift(rowdef: RowOpDef, mx: str) -> str:
    # An all -inf tile shifts by -FLT_MAX (exp gives 0, and exp(shift - row shift)
    # stays finite); logsumexp shifts a +inf tile by 0, as torch does for a row.
    if rowdef.name == "logsumexp":
        return rowdef.shift.format(max=mx)
    return f"tl.where({mx} == float('-inf'), -{_FLT_MAX}, {mx})"


def _trivial(rowdef: RowOpDef, v: str) -> str:
    """A row operation on one value per row: softmax is 1 (NaN for Inf/NaN), log_softmax
    and layernorm 0 (or NaN), the rest the value itself."""
    if rowdef.name == "softmax":
        return f"({v} - {v}) + 1.0"
    if rowdef.name in ("log_softmax", "layernorm"):
        return f"{v} - {v}"
    return v
