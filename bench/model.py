"""kgen modules inside a real model, against the same model in PyTorch, on a CUDA GPU.

    python bench/model.py [--models mlp,ffn] [--ms 1,16,256,4096] [--dtypes float16,bfloat16]
                          [--modes eager,default,max-autotune-no-cudagraphs,reduce-overhead]
                          [--hidden 4096] [--json PATH] [--budget-s 540]

Two models, hidden size 4096, inference (`torch.no_grad()`):

- mlp: 8 layers of `nn.Linear(h, h)` + `nn.GELU()` (`nn.Sequential`); with kgen, 8
  `linear_gelu` modules (specs/linear_gelu.fuse);
- ffn: a transformer feed-forward block, `x + fc2(gelu(fc1(x)))`, fc1 h -> 4h, fc2
  4h -> h; with kgen, `linear_gelu` then `linear_residual` (the residual fused into the
  second GEMM's epilogue).

Each is timed as written (`eager`) and under `torch.compile` in each mode (static
shapes, one compilation per M): wall time per forward in a loop synchronised at the
end (median of 5 runs, each ~20 ms or more), what an inference loop feels; and, for
the eager forms, the GPU time per forward (kgen.tune.median_ms). The kgen and PyTorch
models share their weights; their outputs are checked against each other first.
Each result is printed as it comes (`--json` appends it as a line), so a run cut short
by `--budget-s` keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kgen.build import import_file
from kgen.tune import median_ms, wall_us

GENERATED = Path(__file__).resolve().parent.parent / "generated"
LAYERS = 8


@functools.cache
def _kgen(name: str) -> Any:
    return import_file(GENERATED / f"{name}.py", f"kgen_bench_{name}")


class PlainMLP(nn.Sequential):
    def __init__(self, h: int) -> None:
        super().__init__(*(m for _ in range(LAYERS) for m in (nn.Linear(h, h), nn.GELU())))


class KgenMLP(nn.Sequential):
    def __init__(self, plain: PlainMLP) -> None:
        layers = []
        for linear in list(plain)[::2]:
            layer = _kgen("linear_gelu").ModelNew(linear.in_features, linear.out_features)
            layer.weight, layer.bias = linear.weight, linear.bias
            layers.append(layer)
        super().__init__(*layers)


class PlainFFN(nn.Module):
    def __init__(self, h: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(h, 4 * h), nn.GELU(), nn.Linear(4 * h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class KgenFFN(nn.Module):
    def __init__(self, plain: PlainFFN) -> None:
        super().__init__()
        self.up = _kgen("linear_gelu").ModelNew(plain.fc1.in_features, plain.fc1.out_features)
        self.down = _kgen("linear_residual").ModelNew(plain.fc2.in_features, plain.fc2.out_features)
        self.up.weight, self.up.bias = plain.fc1.weight, plain.fc1.bias
        self.down.weight, self.down.bias = plain.fc2.weight, plain.fc2.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(x), x)


MODELS: dict[str, tuple[type[nn.Module], Callable[[Any], nn.Module]]] = {
    "mlp": (PlainMLP, KgenMLP),
    "ffn": (PlainFFN, KgenFFN),
}


def _agree(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """The two models compute the same function: a difference within the 16-bit
    rounding of 8 layers (relative to the output's scale), and no NaN."""
    error = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item()
    if not error <= 0.05 * max(scale, 1e-3):
        raise AssertionError(f"{what}: max |kgen - PyTorch| = {error:.3g} at scale {scale:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,ffn")
    parser.add_argument("--ms", default="1,16,256,4096")
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument(
        "--modes", default="eager,default,max-autotune-no-cudagraphs,reduce-overhead"
    )
    parser.add_argument("--kgen-modes", default="eager,default,reduce-overhead")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--json", help="append each result here, a JSON object per line")
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop starting cases after")
    parser.add_argument("--run", default="", help="a label for this run's rows")
    parser.add_argument(
        "--plot", nargs=2, metavar=("JSONL", "PNG"), help="only plot a results file's last run"
    )
    args = parser.parse_args()
    if args.plot:
        plot(Path(args.plot[0]), Path(args.plot[1]))
        return
    began = time.perf_counter()
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for model_name in args.models.split(","):
            plain_cls, kgen_cls = MODELS[model_name]
            plain = plain_cls(args.hidden).cuda().to(dtype)
            ours = kgen_cls(plain)
            for M in (int(m) for m in args.ms.split(",")):
                x = torch.randn(M, args.hidden, device="cuda", dtype=dtype)
                with torch.no_grad():
                    want, got = plain(x), ours(x)
                    _agree(got, want, f"{model_name} {dtype_name} M={M}")
                for who, model, modes in (
                    ("pytorch", plain, args.modes),
                    ("kgen", ours, args.kgen_modes),
                ):
                    for mode in modes.split(","):
                        if time.perf_counter() - began > args.budget_s:
                            print(f"budget spent: stopping before {who} {mode}", flush=True)
                            return
                        _case(args, gpu, model_name, dtype_name, M, who, mode, model, x, want)
                torch._dynamo.reset()


def _case(
    args: argparse.Namespace,
    gpu: str,
    model_name: str,
    dtype_name: str,
    M: int,
    who: str,
    mode: str,
    model: nn.Module,
    x: torch.Tensor,
    want: torch.Tensor,
) -> None:
    compile_s = 0.0
    with torch.no_grad():
        if mode == "eager":
            fn: Callable[[], Any] = lambda: model(x)  # noqa: E731
        else:
            compiled = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
            start = time.perf_counter()
            for _ in range(3):  # compile; reduce-overhead records its graph on a later call
                out = compiled(x)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            _agree(out, want, f"{who} {mode}")
            fn = lambda: compiled(x)  # noqa: E731
        us = wall_us(fn)
        gpu_us = median_ms(fn) * 1e3 if mode == "eager" else None
    row = {
        "gpu": gpu,
        "model": model_name,
        "dtype": dtype_name,
        "M": M,
        "who": who,
        "mode": mode,
        "wall_us": round(us, 1),
        "gpu_us": None if gpu_us is None else round(gpu_us, 1),
        "compile_s": round(compile_s, 1),
        "run": args.run,
    }
    print(json.dumps(row), flush=True)
    if args.json:
        with Path(args.json).open("a") as f:
            f.write(json.dumps(row) + "\n")


def plot(path: Path, png: Path) -> None:
    """Wall time per forward against M, one panel per model and dtype, a line per
    model form and mode; where a case was measured in several runs, the last run's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[(row["model"], row["dtype"], row["M"], row["who"], row["mode"])] = row
    panels = sorted({(k[0], k[1]) for k in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (model_name, dtype) in zip(axes[0], panels, strict=True):
        lines = sorted({(k[3], k[4]) for k in rows if k[:2] == (model_name, dtype)})
        for who, mode in lines:
            points = sorted(
                (k[2], r["wall_us"])
                for k, r in rows.items()
                if k[:2] == (model_name, dtype) and k[3:] == (who, mode)
            )
            style = "-" if who == "kgen" else "--"
            ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{who} {mode}")
        ax.set(xscale="log", yscale="log", xlabel="M (rows)", ylabel="us per forward")
        ax.set_title(f"{model_name}, {dtype}, hidden 4096")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
