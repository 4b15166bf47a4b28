"""The oracle: a spec's IR evaluated with torch ops, sharing nothing with the Triton
lowering but each op's registry entry (its `reference`).

    evaluate(kernel, x, weight, [bias], *tensors, dtype=torch.float64, **floats)

takes the same arguments as the generated function and returns the [M, N] result
in `dtype` (float64 by default: the exact answer to compare kernels against; the
input dtype gives "PyTorch computed in the same dtype"). `epilogue` runs the
epilogue alone on a given accumulator, which `kgen.testing` uses to see how an
error in the GEMM propagates through the epilogue.

Semantics shared with the kernel: float params and numeric constants are fp32 values
(the kernel receives and computes in fp32), tensors are read in their own dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from kgen.ir import Gemm, Instr, Kernel, Kind, Role
from kgen.ops import ALL_ROW_OPS, OPS, ArgType, RowKind


def _fp32(value: float) -> float:
    """A Python float as the kernel sees it: rounded to fp32 (1e39 becomes inf)."""
    return float(torch.tensor(value, dtype=torch.float32))


def bind(kernel: Kernel, args: Sequence[Any], floats: Mapping[str, Any]) -> dict[str, Any]:
    """Name every operand of a call `f(x, weight, [bias], *tensors, **floats)`."""
    names = (
        ["x", "weight"] + (["bias"] if kernel.has_bias else []) + [t.name for t in kernel.tensors]
    )
    if len(args) != len(names):
        raise TypeError(
            f"{kernel.name} takes {len(names)} tensors ({', '.join(names)}), got {len(args)}"
        )
    values: dict[str, Any] = dict(zip(names, args, strict=False))
    unknown = set(floats) - {f.name for f in kernel.floats}
    if unknown:
        raise TypeError(f"{kernel.name} has no float param {sorted(unknown)}")
    for f in kernel.floats:
        value = floats.get(f.name, f.default)
        if value is None:
            raise TypeError(f"{kernel.name} needs the float param '{f.name}'")
        values[f.name] = float(value)
    return values


def gemm(kernel: Kernel, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    w = weight.to(dtype)
    return x.to(dtype) @ (w.T if kernel.gemm is Gemm.LINEAR else w)


def _shaped(kernel: Kernel, name: str, value: Any, dtype: torch.dtype) -> Any:
    operand = kernel.operand(name)
    if operand.role is Role.FLOAT:
        return _fp32(value)
    t = value.to(dtype)
    if t.dim() == 2:  # given already broadcast to [M, N] (kgen.testing's gradient sizes)
        return t
    if operand.kind is Kind.COL:
        return t.reshape(1, -1)
    if operand.kind is Kind.ROW:
        return t.reshape(-1, 1)
    return t


Hook = Callable[[torch.Tensor, Instr], torch.Tensor]  # (value, the instruction giving it)


def epilogue(
    kernel: Kernel,
    acc: torch.Tensor,
    operands: Mapping[str, Any],
    hook: Hook | None = None,
    skip: tuple[int, ...] = (),
    constants: dict[Any, torch.Tensor] | None = None,
) -> torch.Tensor:
    values = trace(kernel, acc, operands, hook, skip, constants)
    result = values[kernel.result]
    dtype = acc.dtype
    if not isinstance(result, torch.Tensor):
        result = torch.tensor(result, dtype=dtype, device=acc.device)
    shape = output_shape(kernel, *acc.shape)
    if len(shape) == 1:
        return result.to(dtype).reshape(-1).expand(shape).contiguous()
    return result.to(dtype).expand(shape).contiguous()


def trace(
    kernel: Kernel,
    acc: torch.Tensor,
    operands: Mapping[str, Any],
    hook: Hook | None = None,
    skip: tuple[int, ...] = (),
    constants: dict[Any, torch.Tensor] | None = None,
    override: tuple[int, torch.Tensor] | None = None,
    stop: int | None = None,
) -> list[Any]:
    """Every value of the epilogue on the accumulator `acc` ([M, N]), in acc's dtype
    (`epilogue` returns the stored one). `override` replaces one instruction's value,
    and `hook` then sees only the values after it; `stop` ends the evaluation at that
    instruction.

    `hook`, if given, sees (and may replace) every numeric value after the
    accumulator -- operands, constants, op results: `kgen.testing` uses it to attach
    an error term to each and bound how rounding in the epilogue moves the result.
    `skip` names instructions that pass their first argument through (the benchmark's
    eager form adds the bias inside cuBLAS's GEMM instead). `constants`, if given,
    keeps the tensors made of Python numbers from one call to the next (a benchmark's
    eager form must not copy them to the GPU, and wait for the copy, on every call).
    """
    dtype = acc.dtype
    values: list[Any] = []
    for instr in kernel.body:
        if override is not None and instr.id == override[0]:
            value: Any = override[1]
        elif instr.op == "gemm":
            value = acc
        elif instr.id in skip:
            value = values[instr.args[0]]
        elif instr.op == "const":
            value = _fp32(float(instr.attr))  # type: ignore[arg-type]
        elif instr.op in ("arg", "load"):
            value = _shaped(kernel, str(instr.attr), operands[str(instr.attr)], dtype)
            if instr.op == "arg" and instr.pool > 1:  # the columns of a pooled level
                value = _fp32(float(value) // instr.pool)
        elif instr.op in ALL_ROW_OPS:
            value = _row_op(kernel, instr, values, acc)
        else:
            opdef = OPS[instr.op]
            args = []
            for type_, a in zip(opdef.arg_types, instr.args, strict=False):
                v = values[a]
                if type_ is ArgType.SCALAR:
                    v = float(v.reshape(-1)[0]) if isinstance(v, torch.Tensor) else float(v)
                elif not isinstance(v, torch.Tensor):
                    key = (repr(v), dtype, acc.device)  # repr: -0.0 is not 0.0
                    made = None if constants is None else constants.get(key)
                    if made is None:
                        made = torch.tensor(v, dtype=dtype, device=acc.device)
                        if constants is not None:
                            constants[key] = made
                    v = made
                args.append(v)
            value = opdef.reference(*args)
            if isinstance(value, torch.Tensor) and not instr.boolean:
                value = value.to(dtype)
        after = override is None or instr.id > override[0]
        if hook is not None and instr.op != "gemm" and not instr.boolean and after:
            value = hook(torch.as_tensor(value, dtype=dtype, device=acc.device), instr)
        values.append(value)
        if stop is not None and instr.id == stop:
            break
    return values


def output_shape(kernel: Kernel, M: int, N: int) -> tuple[int, ...]:
    """The shape of the stored result for an [M, N] GEMM."""
    columns, pool = kernel.output_columns()
    if columns == "N":
        return (M, N // pool)
    return (M, 1) if columns == "1" else (M,)


def _row_op(kernel: Kernel, instr: Any, values: list[Any], acc: torch.Tensor) -> torch.Tensor:
    """A row operation on a value held as [M, W] ([M, 1] for one value per row)."""
    rowdef = ALL_ROW_OPS[instr.op]
    x = values[instr.args[0]]
    M = acc.shape[0]
    x = x.expand(M, x.shape[1]) if x.dim() == 2 else x.reshape(M, -1)
    rest = [values[a] for a in instr.args[1:]]
    eps = 0.0
    if rowdef.eps:
        e = rest.pop(0)
        eps = float(e.reshape(-1)[0]) if isinstance(e, torch.Tensor) else float(e)
    weight = bias = None
    if rowdef.affine:
        # [N] as [1, N], or per element as [M, N] (kgen.testing's gradient leaves)
        weight, bias = (t.reshape(-1) if t.dim() < 2 or t.shape[0] == 1 else t for t in rest)
    result = rowdef.reference(x, instr.size, eps, weight, bias)
    if rowdef.kind is RowKind.UNPOOL:  # the remainder columns no window covers: 0
        width = acc.shape[1] // instr.pool
        result = torch.nn.functional.pad(result, (0, width - result.shape[1]))
    return result.to(acc.dtype)


def evaluate(
    kernel: Kernel, *args: Any, dtype: torch.dtype = torch.float64, **floats: Any
) -> torch.Tensor:
    """The spec's result for the arguments of its generated function, computed in `dtype`."""
    operands = bind(kernel, args, floats)
    acc = gemm(kernel, operands["x"], operands["weight"], dtype)
    return epilogue(kernel, acc, operands)
