"""Plans: what a call launches for one layout of its arguments, decided once and
replayed on every later call with that layout.

A call's *layout* (`layout_key`) is what Triton and kgen decide a launch from: each
tensor argument's type, shape, strides, dtype, device and address modulo 16. For a
new layout the call is checked, its configuration chosen and its launches built into
a `Plan` (kgen.runtime.op): each kernel's arguments in the kernel's order, with the
per-call values -- the tensors' addresses, the output and scratch buffers, tensor
descriptors and float params -- left as slots.

The first run launches through Triton's `kernel[grid](...)`, which compiles if it
must, and keeps the compiled kernel. Later runs launch that kernel through its
launcher directly (`Launch.direct`), with the tensors' addresses as integers. That is
safe because Triton specializes a kernel only on its arguments' dtypes, on `== 1` and
16-byte divisibility of its integer and pointer arguments, and on its constexprs: a
plan's integer arguments and constexprs are functions of the layout, and the key
holds every input's dtype and alignment (the output's and scratch buffers' are
checked per call). Whatever the direct launch cannot take -- the interpreter, launch
hooks (profilers), scratch memory, a launcher of another shape -- goes through
`kernel[grid](...)` every time.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton
from triton.compiler import CompiledKernel
from triton.tools.tensor_descriptor import TensorDescriptor

from kgen.runtime.devices import INTERPRET

_RUNTIME_KNOBS = triton.knobs.runtime

# The current device and stream, as Triton's own launch reads them.
_current_device: Callable[[], int] = getattr(
    torch._C, "_cuda_getDevice", lambda: torch.cuda.current_device()
)
_current_stream: Callable[[int], int] = getattr(
    torch._C,
    "_cuda_getCurrentRawStream",
    lambda index: torch.cuda.current_stream(index).cuda_stream,
)


def _layout(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() & 15, type(t))


def layout_key(tensors: Sequence[Any]) -> tuple[Any, ...]:
    """The layout of a call's tensor arguments; AttributeError or TypeError for an
    argument that is no tensor."""
    return tuple(map(_layout, tensors))


def _hooks_idle() -> bool:
    """No launch hooks (a profiler's) are installed: Triton 3.6 keeps them in chains."""
    for hook in (_RUNTIME_KNOBS.launch_enter_hook, _RUNTIME_KNOBS.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return False
    return True


class Launch:
    """One kernel launch of a plan: its grid, options and arguments in the kernel's
    order, `slots` naming the positions filled per call (from the run's values)."""

    __slots__ = ("args", "compiled", "direct", "grid", "jit", "options", "slots")

    def __init__(
        self,
        jit: Any,
        grid: tuple[int, int, int],
        values: dict[str, Any],
        slots: dict[str, int],
        options: dict[str, Any],
    ) -> None:
        self.jit = jit
        self.grid = grid
        self.options = options
        names = list(jit.arg_names)
        missing = [n for n in names if n not in values and n not in slots]
        assert not missing, f"no value for the kernel arguments {missing}"
        self.args = [values.get(n) for n in names]
        self.slots = tuple((i, slots[n]) for i, n in enumerate(names) if n in slots)
        self.compiled: Any = None
        # (the launcher's function, its arguments between the stream and the kernel's)
        self.direct: tuple[Callable[..., Any], tuple[Any, ...]] | None = None

    def arguments(self) -> dict[str, Any]:
        """The kernel's arguments by name, per-call ones None (for tests and tools)."""
        return dict(zip(self.jit.arg_names, self.args, strict=True))

    def fill(self, run_values: Sequence[Any]) -> list[Any]:
        args = self.args.copy()
        for position, source in self.slots:
            args[position] = run_values[source]
        return args

    def through_triton(self, run_values: Sequence[Any]) -> Any:
        """Launch with `kernel[grid](...)`, which compiles if it must, and keep the
        compiled kernel it ran; returns what `kernel[grid](...)` returned."""
        compiled = self.jit[self.grid](*self.fill(run_values), **self.options)
        if self.compiled is None and isinstance(compiled, CompiledKernel):
            self.compiled = compiled
            self.direct = _direct(compiled, self.jit)
        return compiled

    def through_launcher(self, run_values: Sequence[Any], stream: int) -> None:
        """Launch the kept compiled kernel through its launcher, on `stream` (what
        `kernel[grid](...)` ends in, without its binding, specialization and cache
        lookup: 4.7 against 20.6 us on the H200, bench/call_cost.py)."""
        launch, head = self.direct  # type: ignore[misc]
        args = self.args.copy()  # (self.fill, inline: the hot path)
        for position, source in self.slots:
            args[position] = run_values[source]
        launch(*self.grid, stream, *head, *args)


def _direct(compiled: Any, jit: Any) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    """How to launch `compiled` without Triton's Python wrappers, if that is safe: a
    CUDA launcher that needs no scratch memory, for a kernel that reads no globals
    Triton would check, on a Triton whose launcher takes the arguments we give it."""
    if not triton.__version__.startswith("3.6."):
        return None  # the launcher's argument list is Triton's own business: checked on 3.6
    if getattr(jit, "pre_run_hooks", None) or getattr(jit, "used_global_vals", None):
        return None
    try:
        run = compiled.run  # loads the binary on the current device
    except Exception:
        return None
    if type(run).__name__ != "CudaLauncher":
        return None
    if getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
        return None
    launch = getattr(run, "launch", None)
    if launch is None:
        return None
    # Triton's launcher takes (grid x, y, z, stream, function, cooperative, pdl, global
    # scratch, profile scratch, packed metadata, launch metadata, enter hook, exit hook,
    # *the kernel's arguments), as CompiledKernel.run passes them on
    cooperative, pdl = bool(run.launch_cooperative_grid), bool(run.launch_pdl)
    head = (compiled.function, cooperative, pdl, None, None, compiled.packed_metadata)
    return launch, (*head, None, None, None)


# Allocation without the dispatcher, as Inductor's generated code allocates: (shape,
# strides, dtype) on the current device; torch.empty where torch has no such helper.
_empty_cuda: Callable[..., torch.Tensor] | None = getattr(
    getattr(torch._C, "_dynamo", None) and torch._C._dynamo.guards, "_empty_strided_cuda", None
)


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def template(
    base: torch.Tensor, shape: list[int], strides: list[int], block: list[int]
) -> TensorDescriptor:
    """A tensor descriptor's layout, checked on `base` and kept without it: a plan keeps
    its templates for every later call, and must not keep the first call's tensors alive
    (a training step's activations, say)."""
    desc = TensorDescriptor(base, shape, strides, block)
    desc.base = None
    return desc


def descriptor(template: TensorDescriptor, base: torch.Tensor) -> TensorDescriptor:
    """`template` over another tensor of the same layout (its checks were made once,
    for the template)."""
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(template.__dict__)
    desc.base = base
    return desc


# Where a plan's per-call values stand among a run's values, after the call's n tensors
# (then come its float params): run_values[n + OUT] is the output, and so on.
OUT, SCRATCH, COUNTS, DESC0, DESC1, SAVE, OUT_DESC, SAVE_DESC = range(8)
FLOATS = 8
_UNUSED = (None,) * (FLOATS - OUT - 1)  # a simple plan's slots after the output


class Plan:
    """What a call with one layout runs: the buffers it allocates and its launches.

    `run(args)` takes the call's arguments as the call got them -- its `n` tensors,
    then its float params -- and returns the output. The launches' slots index the run
    values: the tensors, then the output, the scratch buffer, the split-K counters, the
    two operands' tensor descriptors (None where unused), the saved accumulator, the
    output's and the accumulator's descriptors (None unless `stores`), then the floats.
    A plan with `save` (training) runs by `run_saving`, which also returns the
    accumulator the kernel saved for the backward; `stores`: the descriptor template of
    the output (as [M, W]) and of the accumulator, where the kernel stores through them."""

    __slots__ = (
        "copies",
        "counts",
        "descs",
        "device",
        "direct",
        "index",
        "launches",
        "n",
        "out_2d",
        "out_dtype",
        "out_shape",
        "out_strides",
        "save",
        "scratch",
        "scratch_strides",
        "simple",
        "stores",
        "views",
    )

    def __init__(
        self,
        device: torch.device,
        views: Sequence[tuple[int, ...] | None],
        copies: Sequence[int],
        out_shape: tuple[int, ...],
        out_2d: tuple[int, int],
        out_dtype: torch.dtype,
        scratch: tuple[tuple[int, ...], torch.dtype] | None = None,
        counts: int = 0,
        descs: Sequence[tuple[int, TensorDescriptor]] = (),
        launches: Sequence[Launch] = (),
        save: tuple[tuple[int, ...], torch.dtype] | None = None,
        stores: TensorDescriptor | None = None,
    ) -> None:
        self.device = device
        self.index = device.index if device.type == "cuda" else -1
        self.n = len(views)
        # the shape the kernel sees each tensor in (2-D, or 1-D for [M]), where it
        # differs; `copies`: those whose strides allow no view, copied per call
        self.views = tuple(views)
        self.copies = tuple(copies)
        self.out_shape = out_shape
        self.out_strides = _contiguous(out_shape)
        self.out_2d = out_2d
        self.out_dtype = out_dtype
        self.scratch = scratch  # (shape, dtype) of a per-call fp32 workspace
        self.scratch_strides = _contiguous(scratch[0]) if scratch is not None else ()
        self.counts = counts  # split-K arrival counters, one per tile
        self.descs = tuple(descs)  # (which tensor, its descriptor's template)
        self.launches = tuple(launches)
        self.save = save  # (shape, dtype) of the accumulator a training forward saves
        self.stores = stores
        self.direct = False  # every launch can go through its launcher
        # one launch and nothing per call but the output: the commonest plan, run by a
        # shorter path
        self.simple = len(self.launches) == 1 and not (copies or scratch or counts or descs or save)

    def run(self, args: Sequence[Any]) -> torch.Tensor:
        """Run the plan on a call's arguments, on the plan's device."""
        index = self.index
        if index >= 0 and _current_device() != index:
            with torch.cuda.device(index):
                return self._run(args)
        return self._run(args)

    def _run(self, args: Sequence[Any]) -> torch.Tensor:
        if self.direct and _hooks_idle():
            return self._run_direct(args)
        return self._run_triton(args)

    def _empty(
        self, shape: tuple[int, ...], strides: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        """A contiguous buffer on the plan's device (the current one, for CUDA)."""
        if _empty_cuda is not None and self.index >= 0:
            return _empty_cuda(shape, strides, dtype)
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _out(self) -> torch.Tensor:
        return self._empty(self.out_shape, self.out_strides, self.out_dtype)

    def _buffers(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        scratch = counts = None
        if self.scratch is not None:
            shape, dtype = self.scratch
            scratch = self._empty(shape, self.scratch_strides, dtype)
        if self.counts:
            counts = split_counts(self.device, self.counts)
        return scratch, counts

    def _run_triton(self, args: Sequence[Any], saved: torch.Tensor | None = None) -> torch.Tensor:
        values, out = self.triton_values(args, saved)
        for launch in self.launches:
            launch.through_triton(values)
        # (a CPU plan never: one with no launches, an empty problem, would pass `all`)
        self.direct = self.index >= 0 and all(launch.direct is not None for launch in self.launches)
        return out

    def run_saving(self, args: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a training plan: the output, and the accumulator it saved (an empty
        tensor where the backward needs none); launched as `run` launches."""
        index = self.index
        if index >= 0 and _current_device() != index:
            with torch.cuda.device(index):
                return self._run_saving(args)
        return self._run_saving(args)

    def _run_saving(self, args: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.save is None:
            saved = torch.empty(0, device=self.device, dtype=self.out_dtype)
        else:
            shape, dtype = self.save
            saved = self._empty(shape, _contiguous(shape), dtype)
        if self.direct and _hooks_idle():
            prepared = self.direct_values(args, saved)
            if prepared is not None:
                values, out, _ = prepared
                stream = _current_stream(self.index)
                for launch in self.launches:
                    launch.through_launcher(values, stream)
                return out, saved
        return self._run_triton(args, saved), saved

    def triton_values(
        self, args: Sequence[Any], saved: torch.Tensor | None = None
    ) -> tuple[list[Any], torch.Tensor]:
        """The run values for `kernel[grid](...)` (tensors, as the interpreter needs
        them), and the output."""
        out = self._out()
        n = self.n
        tensors = [
            t if view is None else t.reshape(view)
            for t, view in zip(args[:n], self.views, strict=True)
        ]
        scratch, counts = self._buffers()
        descs: list[Any] = [descriptor(template, tensors[i]) for i, template in self.descs]
        descs += [None] * (2 - len(descs))
        out_2d = out.view(self.out_2d)
        stores: list[Any] = [None, None]
        if self.stores is not None and saved is not None:
            stores = [descriptor(self.stores, out_2d), descriptor(self.stores, saved)]
        values = [*tensors, out_2d, scratch, counts, *descs, saved, *stores, *args[n:]]
        return values, out

    def _run_direct(self, args: Sequence[Any]) -> torch.Tensor:
        if self.simple:
            out = self._out()
            out_ptr = out.data_ptr()
            if out_ptr & 15:  # an output the kernel was not specialized for
                return self._run_triton(args)
            (launch,) = self.launches
            n = self.n
            values = [t.data_ptr() for t in args[:n]]
            values.append(out_ptr)
            values += _UNUSED
            values += args[n:]
            launch.through_launcher(values, _current_stream(self.index))
            return out
        prepared = self.direct_values(args)
        if prepared is None:  # a buffer the kernel was not specialized for
            return self._run_triton(args)
        values, out, _ = prepared
        stream = _current_stream(self.index)
        for launch in self.launches:
            launch.through_launcher(values, stream)
        return out

    def direct_values(
        self, args: Sequence[Any], saved: torch.Tensor | None = None
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor]] | None:
        """The run values for the launcher (addresses as ints), the output and the
        buffers the launch must keep alive; None if a new buffer is not 16-byte
        aligned, as the compiled kernel assumes. `saved`: a training plan's buffer for
        the accumulator (its caller keeps it)."""
        n = self.n
        out = self._out()
        tensors: Sequence[Any] = args[:n]
        if self.copies:
            tensors = list(tensors)
            for i in self.copies:
                tensors[i] = tensors[i].reshape(self.views[i])
        values: list[Any] = [t.data_ptr() for t in tensors]
        aligned = out.data_ptr()
        values.append(aligned)
        scratch, counts = self._buffers()
        keep = [out]
        for buffer in (scratch, counts):
            if buffer is None:
                values.append(None)
            else:
                values.append(buffer.data_ptr())
                aligned |= values[-1]
                keep.append(buffer)
        for i, template in self.descs:
            values.append(descriptor(template, tensors[i]))
        values += [None] * (2 - len(self.descs))
        if saved is None:
            values += (None, None, None)
        else:  # a training plan (run_saving)
            values.append(saved.data_ptr())
            aligned |= values[-1]
            if self.stores is None:
                values += (None, None)
            else:
                values.append(descriptor(self.stores, out.view(self.out_2d)))
                values.append(descriptor(self.stores, saved))
        values += args[n:]
        if aligned & 15:
            return None
        if self.copies:
            keep += [tensors[i] for i in self.copies]
        return values, out, keep


_SPLIT_COUNTS: dict[tuple[torch.device, int | None], torch.Tensor] = {}


_capturing: Callable[[], bool] = getattr(
    torch._C, "_cuda_isCurrentStreamCapturing", lambda: torch.cuda.is_current_stream_capturing()
)


def split_counts(device: torch.device, tiles: int) -> torch.Tensor:
    """Split-K arrival counters, one per tile, zero between launches. Launches on one
    stream run in order and each tile's last program resets its counter, so one
    zeroed buffer kept per stream serves them all. A stream being captured into a CUDA
    graph gets fresh zeros (the graph owns that memory)."""
    key: tuple[torch.device, int | None] = (device, None)
    if not INTERPRET:
        if _capturing():
            return torch.zeros(tiles, device=device, dtype=torch.int32)
        key = (device, _current_stream(device.index))
    counts = _SPLIT_COUNTS.get(key)
    if counts is None or counts.numel() < tiles:
        counts = _kept_zeros(max(tiles, 1024), device)
        _SPLIT_COUNTS[key] = counts
    return counts


_HELPER: concurrent.futures.ThreadPoolExecutor | None = None


def _kept_zeros(n: int, device: torch.device) -> torch.Tensor:
    """Zeroed int32 counters from the ordinary memory pool, to keep beyond this call.
    torch.compile's CUDA graphs warm up with every allocation of this thread going
    into the graphs' private pool, where a buffer that outlives the call is an error:
    a helper thread, which no pool claims, allocates them (and waits for the zeros)."""
    if INTERPRET:
        return torch.zeros(n, device=device, dtype=torch.int32)

    def make() -> torch.Tensor:
        with torch.cuda.device(device):
            counts = torch.zeros(n, device=device, dtype=torch.int32)
            torch.cuda.current_stream(device).synchronize()
        return counts

    global _HELPER
    if _HELPER is None:
        _HELPER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kgen")
    return _HELPER.submit(make).result()
