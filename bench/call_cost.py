"""What one call of a generated module costs, and where the time goes, on a CUDA GPU.

    python bench/call_cost.py [SPEC_NAME...] [--shapes 128x1024x512,16x4096x4096]

For each committed spec (default: the two seeds) and shape (MxNxK), fp16: the wall
time per call in a tight loop synchronised at the end (kgen.tune.wall_us;
at these sizes the CPU side decides) of

- `torch.mm`, `F.linear`, and eager PyTorch (F.linear, then the epilogue's torch ops,
  from the spec's reference: kgen.bench's eager form);
- kgen's generated function and `ModelNew` (the lean path: a plan lookup and a launch);
- the parts of a kgen call: the layout key, the plan lookup (key included), the
  plan's run (allocations, arguments and launch), the output's allocation, the
  launch through Triton's launcher alone, the same launch through Triton's
  `kernel[grid](...)`;
- the same call through the dispatcher (`torch.ops.kgen.<name>`, what compiled code
  calls), and replayed from a CUDA graph.

Every kgen form is checked to give the function's bytes first. `--json PATH` writes
the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kgen import bench, tune
from kgen.build import compile_spec, import_file, read_spec
from kgen.ir import Role
from kgen.runtime import launch
from kgen.tune import wall_us


def measure(name: str, shape: tune.Shape) -> dict[str, float]:
    spec = Path("specs") / f"{name}.fuse"
    kernel = compile_spec(read_spec(spec), spec.name).kernel
    module = import_file(Path("generated") / f"{kernel.name}.py")
    op = module._OP
    tensors, floats = tune.inputs(kernel, shape, torch.float16, seed=1)
    values = tune.float_values(kernel, floats)
    call = (*tensors, *values)
    fn = getattr(module, kernel.name)
    x, w = tensors[0], tensors[1]
    wt = w.T if kernel.gemm.value == "linear" else w
    model = module.ModelNew(shape.K, shape.N).cuda().half()
    given = tensors[2 + kernel.has_bias :]
    model_args = [x] + [
        t for t, o in zip(given, kernel.tensors, strict=True) if o.role is Role.INPUT
    ]
    eager = bench.eager_function(kernel)

    with torch.no_grad():
        want = fn(*tensors, **floats)
        plan = op.plans[launch.layout_key(tensors)]
        assert plan.direct, "the plan launches through Triton's launcher"
        assert torch.equal(op(*call), want)
        assert torch.equal(op.operator(*call), want)
        assert torch.equal(op.plan(*call).run(call), want)  # fresh: through kernel[grid]

        # the launch alone, with the run values a call would build
        gemm, *rest = plan.launches
        prepared = plan.direct_values(call)
        assert prepared is not None
        run_values, _, _ = prepared
        stream = launch._current_stream(torch.cuda.current_device())
        jit_args = gemm.fill(plan.triton_values(call)[0])

        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*tensors, **floats)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(*tensors, **floats)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, want), "replay differs from a call"

        times = {
            "torch.mm": wall_us(lambda: torch.mm(x, wt)),
            "F.linear": wall_us(lambda: torch.nn.functional.linear(x, w)),
            "eager PyTorch": wall_us(lambda: eager(*tensors, **floats)),
            "kgen function": wall_us(lambda: fn(*tensors, **floats)),
            "kgen ModelNew": wall_us(lambda: model(*model_args)),
            "  layout key": wall_us(lambda: launch.layout_key(tensors)),
            "  plan lookup": wall_us(lambda: op.plans[launch.layout_key(tensors)]),
            "  plan.run": wall_us(lambda: plan.run(call)),
            "  output allocation": wall_us(plan._out),
            "  launcher alone": wall_us(lambda: gemm.through_launcher(run_values, stream)),
            "  kernel[grid](...) alone": wall_us(
                lambda: gemm.jit[gemm.grid](*jit_args, **gemm.options)
            ),
            "through the dispatcher": wall_us(lambda: op.operator(*call)),
            "CUDA graph replay": wall_us(graph.replay),
        }
    if rest:
        times["  (plus a finishing kernel)"] = float("nan")
    print(f"\n{name} {shape} float16: wall time per call in a loop, us")
    for what, us in times.items():
        print(f"  {what:28s} {us:7.1f}")
    f_linear, kgen = times["F.linear"], times["kgen function"]
    print(
        f"  kgen / F.linear {kgen / f_linear:.2f}   kgen / eager {kgen / times['eager PyTorch']:.2f}"
        f"   ModelNew / function {times['kgen ModelNew'] / kgen:.2f}"
    )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "specs", nargs="*", default=["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu"]
    )
    parser.add_argument("--shapes", default="128x1024x512,16x4096x4096", help="MxNxK,...")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    results = {}
    for shape in (tune.Shape.parse(s) for s in args.shapes.split(",")):
        for name in args.specs:
            results[f"{name} {shape}"] = measure(name, shape)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
