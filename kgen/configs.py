"""Launch configurations: the one place that decides tiles, warps and stages.

The candidate configurations (`_CONFIGS`) and `choose_config` are copied verbatim into
every generated module (as `_CONFIGS` and `_config`), so kgen, its tests and the
modules share one definition. They follow the rules of the seed prompts
(shared/seeds/): power-of-two blocks, num_warps in {4, 8}, num_stages in {2, 3}, a few
configurations with the conservative baseline (4 warps, 2 stages) among them. Tuning
per shape (issue 3) will replace the heuristic with measured choices; the tuple
layout stays.

A configuration is (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
"""

from __future__ import annotations

import inspect

import torch
import triton

Config = tuple[int, int, int, int, int, int]

NUM_WARPS = (4, 8)
NUM_STAGES = (2, 3)

# Every configuration a module may launch (BLOCK_K is capped at 32 for fp32 operands,
# to keep the stages within shared memory, and at K for short problems). The name
# says when `choose_config` picks it. Emitted into each module as this same literal.
_CONFIGS: dict[str, Config] = {
    # enough 128x128 tiles to fill an H100's 132 SMs
    "large": (128, 128, 64, 8, 8, 3),
    "medium": (64, 64, 64, 8, 4, 3),
    # few rows (M <= 32): a 32-row tile wastes less of its height
    "few_rows": (32, 64, 64, 8, 4, 3),
    # the seeds' conservative baseline (4 warps, 2 stages): K fits in one or two steps,
    # so deeper pipelining buys nothing
    "baseline": (64, 64, 32, 8, 4, 2),
}
CONFIGS = _CONFIGS


def choose_config(M: int, N: int, K: int, dtype: torch.dtype) -> Config:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) for this problem:
    one of _CONFIGS, with BLOCK_K capped for fp32 and short K (tl.dot needs >= 16)."""
    if K <= 64:
        name = "baseline"
    elif triton.cdiv(M, 128) * triton.cdiv(N, 128) >= 128:
        name = "large"
    elif M <= 32:
        name = "few_rows"
    else:
        name = "medium"
    block_m, block_n, block_k, group_m, num_warps, num_stages = _CONFIGS[name]
    if dtype == torch.float32:
        block_k = min(block_k, 32)
    block_k = min(block_k, max(16, triton.next_power_of_2(K)))
    return (block_m, block_n, block_k, group_m, num_warps, num_stages)


def source() -> str:
    """`_CONFIGS` and `choose_config` (renamed `_config`) for the generated module."""
    head, body = inspect.getsource(choose_config).split("\n", 1)
    assert head.startswith("def choose_config(") and head.endswith(":"), head
    table = "\n".join(f"    {name!r}: {config!r}," for name, config in _CONFIGS.items())
    configs = "# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); see kgen/configs.py\n"
    return f"{configs}_CONFIGS = {{\n{table}\n}}\n\n\ndef _config(M, N, K, dtype):\n{body}"


def is_valid(config: Config) -> bool:
    """Does a configuration follow the rules above?"""
    block_m, block_n, block_k, group_m, num_warps, num_stages = config

    def pow2(v: int) -> bool:
        return v >= 16 and v & (v - 1) == 0

    return (
        all(pow2(v) for v in (block_m, block_n, block_k))
        and group_m >= 1
        and num_warps in NUM_WARPS
        and num_stages in NUM_STAGES
    )
