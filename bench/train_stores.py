"""A training forward's two stores, through tensor descriptors (TMA_STORE, what kgen's
saving plans of the persistent loop use) against pointer stores, on the GPU.

    python bench/train_stores.py

For each spec and shape (bf16): the saving plan kgen makes, the same plan with
TMA_STORE off (the pointer stores), and the inference plan, each timed twice,
interleaved, with kgen.tune.median_ms in one process; first checks that all three give
the same bytes. Prints microseconds, and cuBLAS's addmm (and addmm + GELU) for scale.
README's "Training" section cites it (bench/results/h100-tma-store.txt).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kgen.build import import_file
from kgen.runtime.launch import Plan
from kgen.tune import median_ms

CASES = [
    ("linear_gelu", (16384, 4096, 4096)),
    ("linear_gelu", (4096, 4096, 4096)),
    ("gemm_sigmoid_residual", (4096, 4096, 4096)),
    ("gemm_scale_hardtanh_gelu", (4096, 4096, 4096)),
]


def pointer_stores(plan: Plan) -> Plan:
    """`plan` (a saving plan with descriptor stores) changed to store through pointers."""
    (launch,) = plan.launches
    names = list(launch.jit.arg_names)
    launch.args[names.index("TMA_STORE")] = False
    launch.args[names.index("out_desc")] = launch.args[names.index("save_desc")] = None
    launch.slots = tuple(
        (i, s) for i, s in launch.slots if names[i] not in ("out_desc", "save_desc")
    )
    plan.stores = None
    return plan


def measure(spec: str, M: int, N: int, K: int) -> str:
    op = import_file(Path(__file__).resolve().parent.parent / "generated" / f"{spec}.py")._OP
    torch.manual_seed(0)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K**-0.5
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    args = [x, w, b] + [float(d) if d is not None else 0.5 for _, d in op.floats]
    mm = median_ms(lambda: torch.addmm(b, x, w.T)) * 1e3
    mm_gelu = median_ms(lambda: F.gelu(torch.addmm(b, x, w.T))) * 1e3
    stores = op.plan(*args, save=True)
    if not stores.launches[0].arguments()["TMA_STORE"]:
        return f"{spec} {M}x{N}x{K}: this plan stores through pointers already"
    pointers = pointer_stores(op.plan(*args, save=True))
    inference = op.plan(*args)
    a, p = stores.run_saving(args), pointers.run_saving(args)
    same = all(torch.equal(u, v) for u, v in zip(a, p, strict=True))
    same = same and torch.equal(inference.run(args), a[0])
    runs = {
        "descriptor stores": lambda: stores.run_saving(args),
        "pointer stores": lambda: pointers.run_saving(args),
        "inference": lambda: inference.run(args),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(2):
        for name, run in runs.items():
            times[name].append(median_ms(run) * 1e3)
    shown = "  ".join(f"{k} {' / '.join(f'{t:.1f}' for t in v)}" for k, v in times.items())
    return (
        f"{spec} {M}x{N}x{K} bf16: same bytes {same}; training forward {shown} us; "
        f"addmm {mm:.1f}, addmm + gelu {mm_gelu:.1f} us"
    )


def main() -> None:
    print(torch.cuda.get_device_name())
    for spec, (M, N, K) in CASES:
        print(measure(spec, M, N, K), flush=True)


if __name__ == "__main__":
    main()
