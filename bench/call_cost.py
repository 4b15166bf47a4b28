"""CPU cost of one call of a generated module, and where it goes, on a CUDA GPU.

    python bench/call_cost.py [SPEC_NAME...] [--shape 128x1024x512]

For each committed spec (default: the two seeds), in a tight loop synchronised at the
end (median of 5 runs of 2000 calls), at fp16: `torch.mm`, `F.linear`, the generated
function, its `_launch` alone, its checks and configuration lookup alone, `torch.empty`
of the output, Triton's `kernel[grid](...)` alone with the launcher's arguments, and a
replay of the call captured in a CUDA graph (after checking that the replay computes
what a call computes). Then a cProfile of 3000 calls (`--profile`).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kgen import tune
from kgen.build import compile_spec, import_file, read_spec


def per_call_us(fn: Callable[[], Any], n: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return sorted(runs)[2]


def measure(name: str, shape: tune.Shape, profile: bool) -> None:
    spec = Path("specs") / f"{name}.fuse"
    kernel = compile_spec(read_spec(spec), spec.name).kernel
    module = import_file(Path("generated") / f"{kernel.name}.py")
    call_args, floats = tune.inputs(kernel, shape, torch.float16, seed=1)
    values = tune.float_values(kernel, floats)
    fn = getattr(module, kernel.name)
    x, w = call_args[0], call_args[1]
    wt = w.T if kernel.gemm.value == "linear" else w
    tma = module._tma_ready(x, w)
    config = module._choose(shape.M, shape.N, shape.K, x, tma)
    linear = kernel.gemm.value == "linear"

    def checks() -> None:
        M, N, K = module._check_gemm(x, w, linear=linear)
        module._choose(M, N, K, x, module._tma_ready(x, w))

    jit = getattr(module, f"{kernel.name}_kernel")
    seen: dict[str, Any] = {}

    class Capture:  # records the launcher's own launch arguments
        def __getitem__(self, grid: Any) -> Callable[..., Any]:
            def launch(*a: Any, **kw: Any) -> Any:
                seen.update(grid=grid, a=a, kw=kw)
                return jit[grid](*a, **kw)

            return launch

    setattr(module, f"{kernel.name}_kernel", Capture())
    module._launch(config, tma, *call_args, *values)
    setattr(module, f"{kernel.name}_kernel", jit)

    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(*call_args, **floats)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*call_args, **floats)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, fn(*call_args, **floats)), "replay differs from a call"

    out_shape = tuple(fn(*call_args, **floats).shape)
    times = {
        "torch.mm": per_call_us(lambda: torch.mm(x, wt)),
        "F.linear": per_call_us(lambda: torch.nn.functional.linear(x, w)),
        "kgen call": per_call_us(lambda: fn(*call_args, **floats)),
        "_launch only": per_call_us(lambda: module._launch(config, tma, *call_args, *values)),
        "checks + choose": per_call_us(checks),
        "torch.empty (out)": per_call_us(
            lambda: torch.empty(out_shape, device=x.device, dtype=x.dtype)
        ),
        "kernel[grid](...) only": per_call_us(lambda: jit[seen["grid"]](*seen["a"], **seen["kw"])),
        "CUDA graph replay": per_call_us(graph.replay),
    }
    print(f"{name} {shape} float16, config {config}: CPU µs per call")
    for what, us in times.items():
        print(f"  {what:24s} {us:6.1f}")
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3000):
            fn(*call_args, **floats)
        profiler.disable()
        torch.cuda.synchronize()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "specs", nargs="*", default=["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu"]
    )
    parser.add_argument("--shape", default="128x1024x512", help="MxNxK")
    parser.add_argument("--profile", action="store_true", help="cProfile 3000 calls")
    args = parser.parse_args()
    shape = tune.Shape.parse(args.shape)
    for name in args.specs:
        measure(name, shape, args.profile)


if __name__ == "__main__":
    main()
