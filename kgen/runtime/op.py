"""`GemmOp`: a generated kernel's call, as the generated function and `ModelNew` make
it (LANGUAGE.md, "What a generated module offers").

A call takes `x` and `weight`, the spec's tensor operands and its float params, in
that order (`GemmOp.__call__(*args)`), and goes one of three ways:

1. **The lean path** (eager, the common case): the layout of the tensors
   (kgen.runtime.launch.layout_key) finds the plan an earlier call made, and the plan
   launches the compiled kernels directly. A call costs a dict lookup, an allocation
   and a launch (under autocast, and x's and weight's casts: on a 2-core CI-class
   CPU 16 us with the kernel stubbed out, against 25 us through path 2).
2. **A first call** with a layout (or any call the lean path does not take): autocast,
   the argument checks (TypeError / ValueError before any launch), the configuration
   (the tuning file, else kgen.configs' heuristic) and the plan, launched through
   Triton's `kernel[grid](...)` and kept for the next call.
3. **The operator** `torch.ops.kgen.<name>`, whenever PyTorch must see the call:
   under torch.compile or torch.export (Dynamo traces it as one node, with a fake
   implementation for shapes), under a torch function or dispatch mode, a functorch
   transform, or with tensor subclasses. Its implementation is path 1 or 2. The
   dispatcher costs more than a whole lean call on the CPU, so eager calls skip it.

Inputs are `[*, K]` as for `nn.Linear`: the leading dimensions flatten to M (a view
wherever the strides allow) and lead the output and every per-row operand. Under
`torch.autocast`, `x` and `weight` are cast to the autocast dtype as `nn.Linear` casts
them, so the GEMM and the output take that dtype; the other operands are read in their
own dtypes, in fp32, as always.

**Gradients.** Where grad mode is on and a tensor argument requires grad, a call goes
through `torch.ops.kgen.<name>_train`, whose autograd formula is registered with
torch.library: its forward also saves the accumulator (the GEMM's result before the
epilogue, in x's dtype, or nothing where the derivative needs none), and its backward
(`torch.ops.kgen.<name>_backward`) runs the generated backward kernel (dz and the
operands' gradients, kgen/lower/backward.py) and the two GEMMs dx = dz W, dW = dz^T x
(cuBLAS, through torch). A spec with an op that has no derivative rule yet runs
forward as usual and raises at backward, naming the op.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import triton

from kgen import configs
from kgen.runtime import autotune, checks, devices, launch, rowplan
from kgen.runtime.launch import (
    COUNTS,
    DESC0,
    DESC1,
    FLOATS,
    OUT,
    OUT_DESC,
    SAVE,
    SAVE_DESC,
    SCRATCH,
    Launch,
    Plan,
    _current_device,
    _current_stream,
    _hooks_idle,
    _layout,
)
from kgen.runtime.rowplan import RowOp

_PLAIN = (torch.Tensor, torch.nn.Parameter)  # tensor types the lean path takes
_PLANS_MAX = 4096  # plans kept per op; more layouts than this start afresh

_C = torch._C
_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
_any_autocast: Any = getattr(_C, "_is_any_autocast_enabled", None)
_functorch_active: Any = getattr(_C, "_are_functorch_transforms_active", lambda: False)


def _untraced() -> bool:
    """No torch.compile, torch function or dispatch mode or functorch transform is
    active: PyTorch need not see the call. (Dynamo folds `is_compiling()` to True and
    stops there.)"""
    return not (
        _is_compiling()
        or _C._is_torch_function_mode_enabled()
        or _C._len_torch_dispatch_stack()
        or _functorch_active()
    )


__all__ = ["Backward", "GemmOp", "RowOp", "Rows"]


class Rows(NamedTuple):
    """A kernel's row operations (kgen/lower/rows.py): their table, the fp32 statistics per
    row and tile of the two-pass strategy, the finishing kernel, which ops reduce, and
    the output's columns ("N": N // pool of them, "1": [M, 1], "": [M])."""

    ops: tuple[RowOp, ...]
    stats: int
    finish: Any
    reduces: tuple[bool, ...]
    columns: str
    pool: int


class Backward(NamedTuple):
    """A kernel's backward (kgen/lower/backward.py): its kernel, the tensor operands that
    get a gradient from it (the others' is zero), whether it reads the accumulator the
    forward saves, whether it needs whole rows, and, per row operation, the groups of
    columns it works on (0: the whole row)."""

    kernel: Any
    grads: tuple[str, ...]
    saves: bool
    rows: bool
    segments: tuple[int, ...] = ()  # per row op: its groups of columns, or 0
    windows: tuple[int, ...] = ()  # the pools' windows, in order (segments: their slots)


_BACKWARD_ELEMENTS = 4096  # a backward program's tile: BLOCK_M * BLOCK_N elements at most
_BACKWARD_BLOCK = (32, 128)  # (BLOCK_M, BLOCK_N) without row operations


def backward_tiling(backward: Backward, N: int) -> tuple[int, int, dict[str, int]]:
    """A backward program's tile, BLOCK_M x BLOCK_N, for rows of N columns, and the
    constexprs of its groups of columns: with a groupwise row op (groupnorm), COLS
    columns a group, each group in a slot of SEG_i (a power of two) register columns,
    NSEG_i slots a tile; with pools, their windows in nested slots, SEG_i register
    columns a window of pool i (kgen/lower/backward.py)."""
    if backward.windows:
        # each window of k columns in a slot of next_pow2(k) register columns, nested
        # window by window; SEG_i: the register columns of one window of pool i
        slots = math.prod(triton.next_power_of_2(k) for k in backward.windows)
        top = max(-(-N // math.prod(backward.windows)), 1)
        block_n = triton.next_power_of_2(top) * slots
        block_m = max(1, min(_BACKWARD_BLOCK[0], _BACKWARD_ELEMENTS // block_n))
        layout: dict[str, int] = {}
        for i, span in enumerate(backward.segments):
            if span:
                layout[f"SEG_{i}"], layout[f"NSEG_{i}"] = span, block_n // span
        return block_m, block_n, layout
    groups = max(backward.segments, default=0)
    if not backward.rows:
        assert not groups
        return *_BACKWARD_BLOCK, {}
    if not N:  # an empty problem: nothing launches
        groups = 0
    slot = triton.next_power_of_2(N // groups) if groups else 0
    block_n = triton.next_power_of_2(max(groups * slot if groups else N, 1))
    block_m = max(1, min(_BACKWARD_BLOCK[0], _BACKWARD_ELEMENTS // block_n))
    layout = {}
    if groups:
        layout["COLS"] = N // groups
        for i, size in enumerate(backward.segments):
            if size:
                layout[f"SEG_{i}"], layout[f"NSEG_{i}"] = slot, block_n // slot
    return block_m, block_n, layout


class BackwardPlan(NamedTuple):
    """What a backward with one layout launches (GemmOp._backward_plan): the kernel's
    launch (None: an empty problem) and the partial sums of its operands' gradients.
    As a forward plan runs (kgen/runtime/launch.py), the launch goes through Triton's
    launcher once `kernel[grid](...)` has compiled it, unless a launch hook is set or
    a buffer allocated for the call is not 16-byte aligned as the compiled kernel
    assumes (the plan's key covers the alignment of the call's own tensors)."""

    launch: Launch | None
    partials: tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
    device: int  # the CUDA device's index, -1 on the CPU (the interpreter)
    fresh: tuple[int, ...]  # where the buffers allocated per call stand in the values

    def run(self, values: list[Any]) -> None:
        device = self.device
        if device >= 0 and _current_device() != device:
            with torch.cuda.device(device):
                self._run(values)
        else:
            self._run(values)

    def _run(self, values: list[Any]) -> None:
        run = self.launch
        assert run is not None
        if run.direct is not None and _hooks_idle():
            pointers = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in values]
            aligned = 0
            for i in self.fresh:
                aligned |= pointers[i]
            if not aligned & 15:
                run.through_launcher(pointers, _current_stream(self.device))
                return
        run.through_triton(values)


# The operators, defined with torch.library's low-level API: through the dispatcher, a
# call of one cost 5.8 us more than its implementation alone on a 2-core CI-class CPU,
# against 19.4 us for the same operator made with `torch.library.custom_op`, whose
# Python layers (an autograd wrapper, device dispatch, an aliasing check) run on every
# call (bench/call_cost.py measures the dispatcher on the GPU machine). The first module
# with a kernel name gets `kgen::<name>`; another module of that name in the same
# process (a rebuilt spec, a test) gets `kgen::<name>_<n>`.
_LIBRARY = torch.library.Library("kgen", "FRAGMENT")  # type: ignore[no-untyped-call]
_OPERATORS: set[str] = set()


def _opname(name: str) -> str:
    """A name for a module's operators: `name` (or `name_<n>`) such that it and its
    `_train` and `_backward` variants are all free."""
    opname, n = name, 1
    while any(
        o in _OPERATORS or hasattr(torch.ops.kgen, o)
        for o in (opname, f"{opname}_train", f"{opname}_backward")
    ):
        n += 1
        opname = f"{name}_{n}"
    return opname


def _no_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    pass


def _no_double_backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
    """The backward of a kgen backward (`create_graph=True`, then a second backward):
    not derived yet; an error rather than a silently wrong gradient."""
    raise NotImplementedError(
        "kgen: the gradient of a kgen gradient (double backward, e.g. a gradient "
        "penalty) is not computed yet"
    )


class _Train(torch.autograd.Function):
    """A training call in eager code: the same forward (GemmOp.train) and backward
    (GemmOp.gradients) as the `_train` operator's registered autograd, called directly.
    torch.compile, torch.export and function modes see the operators instead; eager
    code skips the dispatcher and torch.library's autograd wrappers (on the H100 a
    seed layer's step at 4096^3 took 1461 us of CPU time against 689 for PyTorch's,
    for 799 us of GPU work; the profile put 290 us of it in torch.library's autograd
    node and 330 us in the backward operator's call)."""

    @staticmethod
    def forward(ctx: Any, op: GemmOp, *args: Any) -> torch.Tensor:
        out, saved = op.train(*args)
        op._autograd_setup(ctx, args, (out, saved))
        ctx.op = op
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor | None) -> tuple[Any, ...]:
        op: GemmOp = ctx.op
        # create_graph=True: through the operator, whose own backward refuses a
        # second backward (_no_double_backward) when one comes
        gradients = op.backward_operator if torch.is_grad_enabled() else op.gradients
        return (None, *op._autograd_backward(ctx, dout, None, gradients, 1))


# _Train.apply without torch.autograd.Function.apply's Python layer, for untraced calls
# (no functorch transform, so that layer's only work is unwrapping dead functorch
# wrappers, done here by `_unwrap_if_dead`): the C++ apply it ends in. On a 2-core
# CI-class CPU, launches stubbed, 40 runs of 500 calls: median 62.6 against 71.5 us a
# call (min 38.4 against 43.4; the forward alone, GemmOp.train, 33.7).
_function_apply: Any = getattr(_C, "_FunctionBase", object).__dict__.get("apply")
_unwrap_if_dead: Any = getattr(getattr(_C, "_functorch", None), "unwrap_if_dead", None)
if _function_apply is not None and _unwrap_if_dead is not None:
    _train_apply: Any = _function_apply.__get__(None, _Train)
else:  # another PyTorch: the public path
    _unwrap_if_dead = lambda t: t  # noqa: E731
    _train_apply = _Train.apply


def _register(opname: str, schema: str, impl: Any, fake: Any) -> Any:
    _OPERATORS.add(opname)
    _LIBRARY.define(opname + schema)  # type: ignore[no-untyped-call]
    _LIBRARY.impl(opname, impl, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
    torch.library.register_fake(f"kgen::{opname}", fake, lib=_LIBRARY)
    return getattr(torch.ops.kgen, opname).default


class GemmOp:
    """The call of one generated kernel. `tensors`: the spec's tensor operands after
    x, weight and bias, as (name, kind, pool) with kind "tile" ([M, N]), "col" ([N],
    or [N // pool] after a pool), "row" ([M]) or "scalar"; `floats`: the float params
    as (name, default or None)."""

    def __init__(
        self,
        name: str,
        kernel: Any,
        *,
        linear: bool,
        bias: bool,
        tensors: tuple[tuple[str, str, int], ...] = (),
        floats: tuple[tuple[str, float | None], ...] = (),
        out_dtype: torch.dtype | None = None,
        rows: Rows | None = None,
        backward: Backward | None = None,
        no_backward: str = "",
        tuning_file: str | None = None,
    ) -> None:
        self.name = name
        self.kernel = kernel
        self.linear = linear
        self.rows = rows
        self.out_dtype = out_dtype
        operands = [("x", "tile", 1), ("weight", "tile", 1)]
        operands += [("bias", "col", 1)] if bias else []
        self.operands = (*operands, *tensors)
        self.n = len(self.operands)
        self.floats = floats
        self.tuning: dict[str, Any] = devices.load_tuning(tuning_file) if tuning_file else {}
        self.plans: dict[tuple[Any, ...], Plan] = {}
        self.train_plans: dict[tuple[Any, ...], Plan] = {}
        self.backward_plans: dict[tuple[Any, ...], BackwardPlan] = {}
        self.backward = backward
        self.no_backward = no_backward  # why there is none: the op without a rule
        args = [f"Tensor {o[0]}" for o in self.operands] + [f"float {f[0]}" for f in floats]
        opname = _opname(name)
        self.operator = _register(opname, f"({', '.join(args)}) -> Tensor", self.eager, self.fake)
        self.train_operator = _register(
            f"{opname}_train",
            f"({', '.join(args)}) -> (Tensor, Tensor)",
            self.train,
            self.train_fake,
        )
        self.backward_operator = _register(
            f"{opname}_backward",
            f"(Tensor dout, Tensor saved, {', '.join(args)}, bool[] needs) -> Tensor[]",
            self.gradients,
            self.gradients_fake,
        )
        torch.library.register_autograd(
            f"kgen::{opname}_train",
            self._autograd_backward,
            setup_context=self._autograd_setup,
            lib=_LIBRARY,
        )
        torch.library.register_autograd(
            f"kgen::{opname}_backward",
            _no_double_backward,
            setup_context=_no_context,
            lib=_LIBRARY,
        )

    # -- the call ---------------------------------------------------------------

    def __call__(self, *args: Any) -> torch.Tensor:
        """x, weight, the tensor operands, then the float params."""
        # the lean path: untraced (_untraced(), inline: this is the hot path); under
        # autocast, x and weight cast first
        if not (
            _is_compiling()
            or _C._is_torch_function_mode_enabled()
            or _C._len_torch_dispatch_stack()
            or _functorch_active()
            or _any_autocast is None
        ):
            if _any_autocast():
                cast = _autocast_pair(args)
                if cast is None:
                    return self.call(*args)
                args = cast
            n = self.n
            if _grad_enabled():
                for t in args[:n]:
                    if getattr(t, "requires_grad", False):
                        return self._train_untraced(args)
            try:
                plan = self.plans[tuple(map(_layout, args[:n]))]  # launch.layout_key
            except Exception:  # a new layout, or an argument that is no tensor
                pass
            else:
                for v in args[n:]:
                    if type(v) is not float:
                        break
                else:
                    return plan.run(args)
        return self.call(*args)

    def _train_untraced(self, args: tuple[Any, ...]) -> torch.Tensor:
        """A training call from the lean path (untraced, no autocast): plain tensors
        and Python floats straight to _Train's C++ apply; anything else by `call`."""
        n = self.n
        for t in args[:n]:
            if type(t) not in _PLAIN:
                return self.call(*args)
        for v in args[n:]:
            if type(v) is not float:
                return self.call(*args)
        if len(args) != n + len(self.floats):
            return self.call(*args)  # (which says what is missing)
        return _train_apply(self, *map(_unwrap_if_dead, args[:n]), *args[n:])  # type: ignore[no-any-return]

    def call(self, *args: Any) -> torch.Tensor:
        """The general path: autocast, then the operator where PyTorch must see the
        call, else the eager implementation (checks, plan, launch)."""
        n = self.n
        tensors = list(args[:n])
        floats = [checks.check_float(f[0], v) for f, v in zip(self.floats, args[n:], strict=True)]
        x, weight = tensors[0], tensors[1]
        if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor):
            tensors[0], tensors[1] = _autocast_operands(x, weight)
            if all(isinstance(t, torch.Tensor) for t in tensors):
                plain = _untraced() and all(type(t) in _PLAIN for t in tensors)
                if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
                    if plain:  # eager autograd without the dispatcher's layers
                        tensors = [_unwrap_if_dead(t) for t in tensors]
                        return _train_apply(self, *tensors, *floats)  # type: ignore[no-any-return]
                    out, _ = self.train_operator(*tensors, *floats)
                    return out  # type: ignore[no-any-return]
                if not plain:
                    return self.operator(*tensors, *floats)  # type: ignore[no-any-return]
        return self.eager(*tensors, *floats)

    def eager(self, *args: Any) -> torch.Tensor:
        """A call's plan (made and kept if new), run."""
        return self._kept(self.plans, args, save=False).run(args)

    def _kept(self, plans: dict[tuple[Any, ...], Plan], args: tuple[Any, ...], save: bool) -> Plan:
        """The plan kept in `plans` for the layout of `args`, made and kept if new."""
        try:
            key: tuple[Any, ...] | None = launch.layout_key(args[: self.n])
        except Exception:  # an argument that is no tensor: plan() says what is wrong
            key = None
        plan = None if key is None else plans.get(key)
        if plan is None:
            plan = self.plan(*args, save=save)
            if key is not None:
                if len(plans) >= _PLANS_MAX:
                    plans.clear()
                plans[key] = plan
        return plan

    def fake(self, *args: Any) -> torch.Tensor:
        """The operator's fake implementation: the checks, and an output of the shape,
        dtype and device a call would return."""
        lead, N = self._check(args)
        x: torch.Tensor = args[0]
        return x.new_empty(self._out_shape(lead, N), dtype=self.out_dtype or x.dtype)

    # -- training -----------------------------------------------------------------

    def train(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The `_train` operator: the output, and what the backward needs saved (the
        accumulator, or an empty tensor)."""
        return self._kept(self.train_plans, args, save=True).run_saving(args)

    def train_fake(self, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fake(*args)
        x, weight = args[0], args[1]
        if self.backward is None or not self.backward.saves:
            return out, x.new_empty(0, dtype=out.dtype)
        M = math.prod(x.shape[:-1])
        N = weight.shape[0] if self.linear else weight.shape[1]
        return out, x.new_empty((M, N))

    def _autograd_setup(self, ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        n = self.n
        ctx.save_for_backward(*inputs[:n], output[1])
        ctx.floats = inputs[n:]
        # the saved accumulator is an output nobody differentiates: without this,
        # autograd would fill an M x N tensor of zeros as its gradient every backward
        ctx.set_materialize_grads(False)

    def _autograd_backward(
        self,
        ctx: Any,
        dout: torch.Tensor | None,
        _: Any,
        gradients: Any = None,
        first: int = 0,
    ) -> tuple[Any, ...]:
        """The gradients of a training call's inputs, through `gradients` (default:
        the `_backward` operator); `first`: where the call's inputs start among the
        autograd node's (1 for _Train, after the op)."""
        *tensors, saved = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[first : first + self.n])
        if self.backward is None:
            raise NotImplementedError(
                f"kgen: {self.name} has no gradient: {self.no_backward} (kgen.derive; "
                "call the module under torch.no_grad() where no gradient is wanted)"
            )
        if dout is None:  # the output took no part in the loss
            return tuple(None for _ in range(self.n + len(ctx.floats)))
        gradients = self.backward_operator if gradients is None else gradients
        grads = gradients(dout, saved, *tensors, *ctx.floats, needs)
        return (
            *(g if need else None for g, need in zip(grads, needs, strict=True)),
            *(None for _ in ctx.floats),
        )

    def gradients(self, dout: torch.Tensor, saved: torch.Tensor, *args: Any) -> list[torch.Tensor]:
        """The `_backward` operator: the gradients of the call's tensors (x, weight,
        then the operands; an empty tensor for those `needs` leaves out)."""
        n = self.n
        tensors, floats, needs = list(args[:n]), args[n:-1], args[-1]
        x, weight = tensors[0], tensors[1]
        lead = tuple(x.shape[:-1])
        N = weight.shape[0] if self.linear else weight.shape[1]
        M = math.prod(lead)
        views = self._views(tuple(tensors), lead, N)
        # (each reshape skipped where the tensor has its shape already: a dispatcher
        # call less on the CPU's side of a training step)
        if self.rows is not None and self.rows.columns != "N":
            g = dout if dout.dim() == 1 else dout.reshape(M)
        else:
            g = dout if dout.dim() == 2 else dout.reshape(M, dout.shape[-1])
        key = (launch.layout_key(tensors), _layout(g), _layout(saved))
        plan = self.backward_plans.get(key)
        if plan is None:
            plan = self._backward_plan(g, saved, views, M, N)
            if len(self.backward_plans) >= _PLANS_MAX:
                self.backward_plans.clear()
            self.backward_plans[key] = plan
        dz = x.new_empty((M, N))
        partials = {name: x.new_empty(shape, dtype=dtype) for name, shape, dtype in plan.partials}
        if plan.launch is None:  # an empty problem
            dz.zero_()
        else:
            values = [g, saved if saved.numel() else dz, dz, *views[2:], *partials.values()]
            values += floats
            plan.run(values)
        # what the fake implementation (gradients_fake) promises: each gradient
        # contiguous in its tensor's shape and dtype, an empty tensor of that dtype
        # where `needs` leaves it out
        grads: list[torch.Tensor] = []
        if needs[0]:
            dx = dz @ weight if self.linear else dz @ weight.T
            grads.append(dx if x.dim() == 2 else dx.reshape(x.shape))
        else:
            grads.append(x.new_empty(0))
        if needs[1]:
            x2 = x if x.dim() == 2 else x.reshape(M, x.shape[-1])
            grads.append(dz.T @ x2 if self.linear else x2.T @ dz)
        else:
            grads.append(weight.new_empty(0))
        for i, ((name, kind, _), t) in enumerate(zip(self.operands[2:], tensors[2:], strict=True)):
            if not needs[2 + i]:
                grads.append(t.new_empty(0))
            elif name not in partials:  # the output does not depend on it
                grads.append(torch.zeros(t.shape, dtype=t.dtype, device=t.device))
            else:
                part = partials[name]
                total = part if kind == "tile" else part.sum(0)
                if total.dim() != t.dim():
                    total = total.reshape(t.shape)
                grads.append(total if total.dtype == t.dtype else total.to(t.dtype))
        return grads

    def _backward_plan(
        self, g: torch.Tensor, saved: torch.Tensor, views: list[torch.Tensor], M: int, N: int
    ) -> BackwardPlan:
        """What a backward with this layout launches: the tile, the grid, the gradients'
        partial sums and the kernel's arguments, per-call ones in slots (the run values:
        dout, saved, dz, the operands' views, the partials, then the floats)."""
        backward = self.backward
        assert backward is not None
        block_m, block_n, layout = backward_tiling(backward, N)
        grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n), 1)
        values: dict[str, Any] = {"M": M, "N": N, "BLOCK_M": block_m, "BLOCK_N": block_n}
        if g.dim() == 1:  # one value per row
            values["stride__dout_m"] = g.stride(0)
        else:
            values["stride__dout_m"], values["stride__dout_n"] = g.stride()
        values.update(self._operand_strides(views))
        values["WIDE"] = devices.wide(*views, g) or M * N >= 2**31 - 1
        values.update(layout)
        slots = {"_dout_ptr": 0, "_saved_ptr": 1, "_dz_ptr": 2}
        partials: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        for i, ((name, kind, _), t) in enumerate(zip(self.operands[2:], views[2:], strict=True)):
            slots[f"{name}_ptr"] = 3 + i
            if name in backward.grads:
                shape = {
                    "tile": (M, N),
                    "col": (grid[0], N),
                    "row": (grid[1], M),
                    "scalar": (grid[0] * grid[1],),
                }[kind]
                # an [M, N] operand's gradient is stored once, in its own dtype; the
                # others are fp32 partial sums, one per tile, reduced after
                partials.append((name, shape, t.dtype if kind == "tile" else torch.float32))
        first = 3 + len(views) - 2
        for j, (name, _, _) in enumerate(partials):
            slots[f"_grad_{name}_ptr"] = first + j
        for j, (name, _) in enumerate(self.floats):
            slots[name] = first + len(partials) + j
        # no FMA contraction: the derivatives subtract values from their own row and
        # group means (g w - mean(g w)), which a contracted product would leave at
        # the product's rounding error (times rstd) instead of exactly zero
        options = {"enable_fp_fusion": False}
        run = Launch(backward.kernel, grid, values, slots, options) if M * N else None
        fresh = (1, 2, *range(first, first + len(partials)))  # saved (or dz), dz, partials
        return BackwardPlan(run, tuple(partials), g.device.index if g.is_cuda else -1, fresh)

    def gradients_fake(
        self, dout: torch.Tensor, saved: torch.Tensor, *args: Any
    ) -> list[torch.Tensor]:
        needs = args[-1]
        return [
            t.new_empty(t.shape) if need else t.new_empty(0)
            for t, need in zip(args[: self.n], needs, strict=True)
        ]

    # -- plans ------------------------------------------------------------------

    def _check(self, args: tuple[Any, ...]) -> tuple[tuple[int, ...], int]:
        """Every check a call makes before it launches; (leading shape, N)."""
        n = self.n
        x, weight = args[0], args[1]
        lead, _, N, _ = checks.check_gemm(x, weight, self.linear, devices.INTERPRET)
        for (name, kind, pool), t in zip(self.operands[2:], args[2:n], strict=True):
            checks.check_tensor(name, t, checks.operand_shape(kind, pool, lead, N), x)
        for (name, _), v in zip(self.floats, args[n:], strict=True):
            checks.check_float(name, v)
        return lead, N

    def _out_shape(self, lead: tuple[int, ...], N: int) -> tuple[int, ...]:
        rows = self.rows
        if rows is None:
            return (*lead, N)
        if rows.columns == "N":
            return (*lead, N // rows.pool)
        return (*lead, 1) if rows.columns == "1" else lead

    def plan(
        self,
        *args: Any,
        config: configs.Config | None = None,
        tma: bool = True,
        save: bool = False,
    ) -> Plan:
        """Check a call's arguments and plan its launches, with `config` or else the
        configuration chosen for its shape (the tuning file, else the heuristic);
        `tma=False` keeps to the pointer mainloop; `save`: a training forward, which
        saves the accumulator (where the backward reads it)."""
        lead, N = self._check(args)
        views = self._views(args, lead, N)
        x, weight = views[0], views[1]
        M, K = x.shape
        tma = tma and devices.tma_ready(x, weight)
        if config is None:
            config = self.choose(M, N, K, x.dtype, tma, x.device, args)
        save = save and self.backward is not None and self.backward.saves
        return self._plan(config, tma, args, views, lead, N, save)

    def _operand_strides(self, views: list[torch.Tensor]) -> dict[str, int]:
        """The kernels' stride arguments of the operands after x and the weight (the
        forward's and the backward's name them alike)."""
        strides = {}
        for (name, kind, _), t in zip(self.operands[2:], views[2:], strict=True):
            if kind == "tile":
                strides[f"stride_{name}_m"], strides[f"stride_{name}_n"] = t.stride()
            elif kind == "col":
                strides[f"stride_{name}_n"] = t.stride(0)
            elif kind == "row":
                strides[f"stride_{name}_m"] = t.stride(0)
        return strides

    def _views(self, args: tuple[Any, ...], lead: tuple[int, ...], N: int) -> list[torch.Tensor]:
        """The tensors as the kernel sees them: x [M, K], [M, N] operands [M, N], [M]
        operands [M]."""
        M = 1
        for d in lead:
            M *= d
        views = []
        for (_, kind, _), t in zip(self.operands, args[: self.n], strict=True):
            if kind == "tile" and t.dim() != 2:
                t = t.reshape(M, t.shape[-1])
            elif kind == "row" and t.dim() != 1:
                t = t.reshape(M)
            views.append(t)
        return views

    def choose(
        self,
        M: int,
        N: int,
        K: int,
        dtype: torch.dtype,
        tma: bool,
        where: torch.device,
        call: tuple[Any, ...] | None = None,
    ) -> configs.Config:
        """The configuration for a shape: the tuning file's, else (with KGEN_AUTOTUNE=1)
        the one tuned at first use on the arguments `call` (kgen/runtime/autotune.py),
        else the heuristic's."""
        facts = devices.device(where)
        config = configs._tuned(
            self.tuning.get(facts.name, {}), dtype, configs.bucket(M, N, K), tma
        )
        if config is None and call is not None and autotune.enabled():
            config = autotune.first_use(self, call, M, N, K, dtype, tma, facts)
        if config is None:
            config = configs._heuristic(M, N, K, dtype, tma, facts.num_sms, facts.smem)
        return config

    def _plan(
        self,
        config: configs.Config,
        tma: bool,
        args: tuple[Any, ...],
        views: list[torch.Tensor],
        lead: tuple[int, ...],
        N: int,
        save: bool = False,
    ) -> Plan:
        n = self.n
        x, weight = views[0], views[1]
        M, K = x.shape
        where = x.device
        out_shape = self._out_shape(lead, N)
        W = N if self.rows is None else out_shape[-1] if self.rows.columns == "N" else 1
        reshaped = [None if v is t else v for v, t in zip(views, args[:n], strict=True)]
        kernel_shapes = [None if v is None else tuple(v.shape) for v in reshaped]
        copies = [i for i, v in enumerate(reshaped) if v is not None and not _shares(v, args[i])]
        common = {
            "device": where,
            "views": kernel_shapes,
            "copies": copies,
            "out_shape": out_shape,
            "out_2d": (M, W),
            "out_dtype": self.out_dtype or x.dtype,
            "save": ((M, N), x.dtype) if save else None,
        }
        if M * W == 0 or (self.rows is None and N == 0):
            return Plan(**common)  # type: ignore[arg-type]

        # the values of the kernels' arguments, by name; per-call ones as slots
        slots = {f"{name}_ptr": i for i, (name, _, _) in enumerate(self.operands)}
        slots.update({name: n + FLOATS + j for j, (name, _) in enumerate(self.floats)})
        slots["out_ptr"] = n + OUT
        slots["save_ptr"] = n + SAVE if save else n + OUT  # (unused unless SAVE)
        values: dict[str, Any] = {"M": M, "N": N, "K": K}
        values["stride_xm"], values["stride_xk"] = x.stride(0), x.stride(1)
        values["stride_wk"], values["stride_wn"] = (
            (weight.stride(1), weight.stride(0)) if self.linear else weight.stride()
        )
        values["stride_om"], values["stride_on"] = W, 1
        values.update(self._operand_strides(views))
        scratch: tuple[tuple[int, ...], torch.dtype] | None
        wide = devices.wide(*views) or M * (N if save else W) - 1 >= 2**31 - 1

        block_m, block_n, block_k, group_m, num_warps, num_stages, loop, split_k = config
        facts = devices.device(where)
        row_plan = None
        if self.rows is not None:
            row_plan = rowplan.plan(self.name, self.rows.ops, N, block_n)
            if row_plan.block_n > block_n:
                # a whole row in one tile: fewer rows, as many accumulator registers, and a
                # shorter k step so that a pipeline stage's shared memory does not grow
                stage_elements = (block_m + block_n) * block_k
                block_m = max(16, block_m * block_n // row_plan.block_n)
                while block_k > 16 and (block_m + row_plan.block_n) * block_k > stage_elements:
                    block_k //= 2
            block_n = row_plan.block_n
            grid = triton.cdiv(M, block_m) * max(1, row_plan.num_segs * row_plan.seg_tiles)
        else:
            grid = triton.cdiv(M, block_m) * triton.cdiv(N, block_n)

        # the mainloop: tensor descriptors where TMA can run and the configuration asks
        # for them (the persistent loop: a program per SM), else pointers
        descs = []
        values["x_desc"] = values["w_desc"] = None
        if loop == "pointer" or not tma:
            loop = "pointer"
        else:
            w_shape = [N, K] if self.linear else [K, N]
            w_block = [block_n, block_k] if self.linear else [block_k, block_n]
            descs = [
                (0, launch.template(x, [M, K], [x.stride(0), 1], [block_m, block_k])),
                (1, launch.template(weight, w_shape, [weight.stride(0), 1], w_block)),
            ]
            slots["x_desc"], slots["w_desc"] = n + DESC0, n + DESC1
            if loop == "persistent":
                grid = min(grid, facts.num_sms)
        values.update(
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            GROUP_M=group_m,
            TMA=loop != "pointer",
            SWAP=loop == "swap",
            FLATTEN=loop == "persistent",
            WIDE=wide,
            UPCAST_DOT=devices.INTERPRET,
            SAVE=save,
        )
        options = {"num_warps": num_warps, "num_stages": num_stages}
        if row_plan is None:
            if loop == "persistent" or grid * split_k * block_m * block_n >= 2**31:
                split_k = 1  # (a tuning file's entry may ask; int32 workspace offsets)
            scratch = None
            # without split-K the workspace and counters are unused: the output stands in
            slots["split_partials_ptr"] = slots["split_counts_ptr"] = n + OUT
            if split_k > 1:
                scratch = ((grid * split_k * block_m * block_n,), torch.float32)
                slots["split_partials_ptr"], slots["split_counts_ptr"] = n + SCRATCH, n + COUNTS
            subtiles = 2 if block_n >= 256 else 1
            stores = None
            values["out_desc"] = values["save_desc"] = None
            out_size = common["out_dtype"].itemsize  # type: ignore[attr-defined]
            size = x.element_size()
            # the store's staging tile, beside the pipeline's stages in shared memory
            staged = block_m * (block_n // subtiles) * max(out_size, size)
            pipeline = num_stages * (block_m + block_n) * block_k * size
            if (
                save
                and loop == "persistent"
                and N * out_size % 16 == 0
                and N * size % 16 == 0
                and pipeline + staged + configs.STORE_SMEM_SLACK <= facts.smem
            ):
                # a training forward's two tiles through tensor descriptors (TMA):
                # kgen/configs.py has the measurement
                block = [block_m, block_n // subtiles]
                # (checked on x: the output and the accumulator are its bases per call)
                stores = launch.template(x, [M, N], [N, 1], block)
                slots["out_desc"], slots["save_desc"] = n + OUT_DESC, n + SAVE_DESC
            values.update(SUBTILES=subtiles, SPLIT_K=split_k, TMA_STORE=stores is not None)
            gemm = Launch(self.kernel, (grid, split_k, 1), values, slots, options)
            return Plan(
                **common,  # type: ignore[arg-type]
                scratch=scratch,
                counts=grid if split_k > 1 else 0,
                descs=descs,
                launches=[gemm],
                stores=stores,
            )

        rows = self.rows
        assert rows is not None
        tiles = row_plan.num_segs * row_plan.seg_tiles
        values.update(
            tile_n=row_plan.tile_n,
            seg_n=row_plan.seg_n,
            seg_tiles=row_plan.seg_tiles,
            num_segs=row_plan.num_segs,
            SPLIT=row_plan.split,
            ALIGNED=row_plan.tile_n == block_n
            and (row_plan.num_segs == 1 or row_plan.seg_n % block_n == 0),
            **row_plan.consts,
        )
        scratch = None
        slots["stats_ptr"] = n + OUT  # (unused without a split)
        if row_plan.split >= 0:
            scratch = ((rows.stats, M, tiles), torch.float32)
            slots["stats_ptr"] = n + SCRATCH
        launches = [Launch(self.kernel, (grid, 1, 1), values, slots, options)]
        if rows.finish is not None and row_plan.split >= 0:
            chunks = row_plan.seg_tiles if rows.reduces[row_plan.split] else rowplan.FINISH_CHUNKS
            finish_grid = (
                triton.cdiv(M, rowplan.FINISH_BLOCK_M),
                max(1, row_plan.num_segs),
                triton.cdiv(row_plan.seg_tiles, chunks),
            )
            finish_values = {
                **values,
                "BLOCK_M": rowplan.FINISH_BLOCK_M,
                "BLOCK_T": row_plan.block_t,
                "CHUNKS": chunks,
            }
            launches.append(
                Launch(rows.finish, finish_grid, finish_values, slots, {"num_warps": 4})
            )
        return Plan(**common, scratch=scratch, descs=descs, launches=launches)  # type: ignore[arg-type]

    # -- for kgen tune, tests and benchmarks ---------------------------------------

    def launch(self, config: configs.Config, *args: Any, tma: bool = True) -> torch.Tensor:
        """Run with a given configuration (a fresh plan, launched through
        `kernel[grid](...)`); `args` as `__call__` takes them."""
        return self.plan(*args, config=config, tma=tma).run(args)

    def forget(self) -> None:
        """Drop the plans (after the tuning table changed)."""
        self.plans.clear()


def _autocast_pair(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A call's arguments with x and weight as autocast casts them (for the lean path:
    plain tensors only; None sends the call to the general path)."""
    if len(args) < 2:
        return None
    x, weight = args[0], args[1]
    if type(x) not in _PLAIN or type(weight) not in _PLAIN:
        return None
    return (*_autocast_operands(x, weight), *args[2:])


def _autocast_operands(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and weight as autocast for x's device casts nn.Linear's (unchanged where it is
    off there: autocast for another device only)."""
    where = x.device.type
    if not torch.is_autocast_enabled(where):
        return x, weight
    dtype = torch.get_autocast_dtype(where)
    return _autocast(x, dtype), _autocast(weight, dtype)


def _autocast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What autocast does to an input of nn.Linear: floating tensors other than fp64
    take the autocast dtype."""
    if t.is_floating_point() and t.dtype != torch.float64:
        return t.to(dtype)
    return t


def _shares(view: torch.Tensor, t: torch.Tensor) -> bool:
    """Is `view` (a reshape of t) a view of t's memory, not a copy?"""
    return view.data_ptr() == t.data_ptr() and (
        view.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    )
