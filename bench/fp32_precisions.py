"""fp32 precisions on the seed specs: accuracy against PyTorch and speed, in one run.

    python bench/fp32_precisions.py [--shape 1024x8192x8192] [--no-time]

For each seed spec and each `precision` (tf32x3, bf16x3, tf32, ieee), builds the spec
with that precision into a temporary directory (generated/ holds only the spec's own
precision), tunes nothing (untuned shapes get the module's heuristic choice, so this
measures what a user gets without `kgen tune`), and reports:

- max |kgen - PyTorch fp32| and whether allclose(1e-4, 1e-4) holds (PyTorch fp32 with
  TF32 off, its default, as KernelBench-style harnesses check);
- kgen's time, eager fp32's (TF32 off), and `torch.mm`'s with TF32 on (what `tf32` is
  measured against), all with `triton.testing.do_bench` (median, L2 flushed).

`--no-time` skips the timing (a smoke run on the CPU under TRITON_INTERPRET=1 with a
small --shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from kgen import bench, tune
from kgen.build import compile_spec, import_file, read_spec, render

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ["gemm_sigmoid_residual", "gemm_scale_hardtanh_gelu"]
PRECISIONS = ["tf32x3", "bf16x3", "tf32", "ieee"]


def variant(name: str, precision: str, directory: Path):  # type: ignore[no-untyped-def]
    """The seed spec's kernel with another precision, and its module, built under directory."""
    kernel = compile_spec(read_spec(ROOT / "specs" / f"{name}.fuse"), f"{name}.fuse").kernel
    kernel = dataclasses.replace(kernel, precision=precision)
    folder = directory / precision
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(render(kernel))
    return kernel, import_file(path)


def row(name: str, precision: str, directory: Path, shape: tune.Shape, timed: bool) -> str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kernel, module = variant(name, precision, directory)
    args, floats = tune.inputs(kernel, shape, torch.float32, device=device)
    function = getattr(module, kernel.name)
    out = function(*args, **floats)
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default: strict fp32
    eager = bench.eager_function(kernel)
    expected = eager(*args, **floats)
    diff = (out.double() - expected.double()).abs().max().item()
    close = torch.allclose(out, expected, rtol=1e-4, atol=1e-4)
    times = ["–", "–", "–"]
    if timed:
        x, w = args[0], args[1]
        times[0] = f"{tune.median_ms(lambda: function(*args, **floats)) * 1e3:.1f}"
        times[1] = f"{tune.median_ms(lambda: eager(*args, **floats)) * 1e3:.1f}"
        torch.backends.cuda.matmul.allow_tf32 = True
        times[2] = f"{tune.median_ms(lambda: torch.mm(x, w.T)) * 1e3:.1f}"
        torch.backends.cuda.matmul.allow_tf32 = False
    return f"| {name} | {precision} | {diff:.3g} | {close} | {' | '.join(times)} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1024x8192x8192", help="MxNxK")
    parser.add_argument("--no-time", action="store_true")
    args = parser.parse_args()
    shape = tune.Shape.parse(args.shape)
    print(
        "| spec | precision | max abs diff vs PyTorch fp32 | allclose 1e-4 | kgen µs "
        "| eager fp32 µs | TF32 mm µs |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in SEEDS:
            for precision in PRECISIONS:
                print(row(name, precision, Path(tmp), shape, not args.no_time), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
