"""Launch configurations: the one place that decides tiles, warps and stages.

`choose_config` is copied verbatim into every generated module (as `_config`), so
kgen, its tests and the modules share one definition. It follows the rules of the
seed prompts (shared/seeds/): power-of-two blocks, num_warps in {4, 8}, num_stages
in {2, 3}, with `BASELINE` the conservative fallback. Tuning per shape (issue 3)
will replace the heuristic with measured choices; the tuple layout stays.

A configuration is (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
"""

from __future__ import annotations

import inspect

import torch
import triton

Config = tuple[int, int, int, int, int, int]

BASELINE: Config = (64, 64, 32, 8, 4, 2)
NUM_WARPS = (4, 8)
NUM_STAGES = (2, 3)


def choose_config(M: int, N: int, K: int, dtype: torch.dtype) -> Config:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) for this problem.

    128x128 tiles with 8 warps once there are enough of them to fill an H100's 132
    SMs; 64x64 (or 32x64 for a few rows) with 4 warps for small problems. fp32 tiles
    take BLOCK_K = 32 to keep three pipeline stages within shared memory. tl.dot
    needs every block dimension >= 16.
    """
    block_k = 32 if dtype == torch.float32 else 64
    block_k = min(block_k, max(16, triton.next_power_of_2(K)))
    if triton.cdiv(M, 128) * triton.cdiv(N, 128) >= 128:
        return (128, 128, block_k, 8, 8, 3)
    if M <= 32:
        return (32, 64, block_k, 8, 4, 3)
    return (64, 64, block_k, 8, 4, 3)


def source() -> str:
    """`choose_config`'s source, renamed `_config`, for the generated module."""
    head, body = inspect.getsource(choose_config).split("\n", 1)
    assert head.startswith("def choose_config(") and head.endswith(":"), head
    return "def _config(M, N, K, dtype):\n" + body


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
