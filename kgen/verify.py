"""The IR's invariants, checked after analysis (the validator pass of the pipeline:
kgen.analyze builds the IR, `verify` checks it before anything lowers it).

A broken invariant is a bug in kgen, never a user's mistake: `IRError`.
"""

from __future__ import annotations

from kgen.ir import Kernel, Kind, Role, format_instr
from kgen.ops import OPS, ROW_OPS


class IRError(AssertionError):
    """An IR invariant broken: a bug in kgen, never a user's mistake."""


def verify(kernel: Kernel) -> Kernel:
    """Check the IR's invariants; return it unchanged, or raise IRError."""
    names = [o.name for o in kernel.operands]
    if len(set(names)) != len(names):
        raise IRError(f"duplicate operand names: {names}")
    operands = {o.name: o for o in kernel.operands}
    gemms = 0
    for index, instr in enumerate(kernel.body):
        if instr.id != index:
            raise IRError(f"value %{instr.id} at position {index}")
        if any(a >= index or a < 0 for a in instr.args):
            raise IRError(f"%{instr.id} uses a later value: {instr.args}")
        args = [kernel.body[a] for a in instr.args]
        if instr.op == "gemm":
            gemms += 1
            ok = instr.kind is Kind.TILE and not args
        elif instr.op == "const":
            ok = instr.kind is Kind.SCALAR and isinstance(instr.attr, float) and not args
        elif instr.op in ("arg", "load"):
            operand = operands.get(str(instr.attr))
            ok = (
                operand is not None
                and not args
                and operand.kind is instr.kind
                and (operand.role is Role.FLOAT) == (instr.op == "arg")
            )
        elif instr.op in ROW_OPS:
            ok = (
                ROW_OPS[instr.op].check_args(args, instr)
                and instr.row == ROW_OPS[instr.op].kind.value
            )
        else:
            opdef = OPS.get(instr.op)
            if opdef is None:
                raise IRError(f"%{instr.id}: unknown op {instr.op!r}")
            ok = opdef.check_args(args, instr.kind, instr.boolean) and not instr.row
        if not ok:
            raise IRError(f"ill-formed instruction {format_instr(instr)}")
    if gemms != 1 or kernel.body[0].op != "gemm":
        raise IRError("the body must start with the one gemm")
    segments = kernel.segments()
    for instr in kernel.body:
        used = {segments[a] for a in instr.args} - {-1}
        if len(used) > 1:
            raise IRError(f"%{instr.id} mixes the segments of {sorted(used)}")
    result = kernel.body[kernel.result]
    if result.boolean:
        raise IRError("the stored value is a comparison")
    return kernel
