"""The names a spec may not use: a spec's names end up in generated code.

Names from a spec end up in generated Python and Triton source, so each is checked
against Python's keywords and the identifiers the generated module uses itself
(`RESERVED`); nothing unchecked is ever pasted into source. Every pass that takes a
name from the spec (a declaration, a binding, an undeclared name, an init argument)
checks it with `check_name`. A leaf of kgen.analyze.
"""

from __future__ import annotations

import keyword
import re

import torch

from kgen.errors import NameClashError
from kgen.syntax import Name

# Identifiers the generated module uses for itself (kernel, launcher, nn.Module).
# A spec may not name anything after them; names starting with "_", ending in
# "_ptr" or starting with "stride_" are reserved too (see `name_problem`).
RESERVED: frozenset[str] = frozenset(
    [
        "acc",
        "x",
        "weight",
        "bias",
        "out",
        "M",
        "N",
        "K",
        "config",
        "self",
        "true",
        "false",
        "tl",
        "triton",
        "torch",
        "nn",
        "super",
        "float",
        "min",
        "range",
        "linear",
        "ModelNew",
        "pid",
        "num_pid_m",
        "num_pid_n",
        "num_pid_in_group",
        "group_id",
        "first_pid_m",
        "group_size_m",
        "pid_m",
        "pid_n",
        "offs_m",
        "offs_n",
        "offs_k",
        "offs_xm",
        "offs_wn",
        "x_ptrs",
        "w_ptrs",
        "x_tile",
        "w_tile",
        "k_step",
        "k_mask",
        "mask_m",
        "mask_n",
        "mask_mn",
        "offs_mn",
        "SAVE",
        "out_ptrs",
        "BLOCK_M",
        "BLOCK_N",
        "BLOCK_K",
        "GROUP_M",
        "UPCAST_DOT",
        "SUBTILES",
        "acc_tile",
        "subtile",
        "acc_halves",
        # the mainloops and their launch (issue 3)
        "TMA",
        "SWAP",
        "FLATTEN",
        "WIDE",
        "TensorDescriptor",
        "x_desc",
        "w_desc",
        "out_desc",
        "save_desc",
        "TMA_STORE",
        "num_tiles",
        "k_steps",
        "tile_id",
        "tma",
        "grid",
        "loop",
        "block_m",
        "block_n",
        "block_k",
        "group_m",
        "num_warps",
        "num_stages",
        # row operations (issue 5)
        "tile_n",
        "seg_n",
        "seg_tiles",
        "num_segs",
        "n0",
        "local_n",
        "row_block",
        "seg_id",
        "chunk",
        "stat_t",
        "SPLIT",
        "BLOCK_T",
        "ROW_BLOCK_MAX",
        "ALIGNED",
        "CHUNKS",
        "num_tiles_n",
        "row_stats",
        "row_split",
        "row_block_n",
        "stage_elements",
        "row_consts",
        "block_t",
        "finish_chunks",
        "wide_index",
        "gcol",
        "col_ok",
        "tile_relative",
        "first_chunk",
        "tile_ids",
        "tile_mask",
        "stat_rows",
        # split-K (kgen/configs.py)
        "SPLIT_K",
        "split_k",
        "split_k_first",
        "split_k_end",
        "split_k_per",
        "split_last",
        "split_tile",
        "split_offs",
        "split_arrived",
        "split_s",
        "split_partials",
        "split_counts",
        "split_partials_ptr",
        "split_counts_ptr",
        # the module's imports (a kernel of that name would replace one)
        "math",
        "os",
        "json",
        "warnings",
    ]
)
# Params become attributes of the generated nn.Module: they must not replace its own.
MODULE_ATTRIBUTES: frozenset[str] = frozenset(
    n for n in [*dir(torch.nn.Module), *vars(torch.nn.Module())] if not n.startswith("_")
)


def name_problem(n: str) -> str | None:
    """Why `n` cannot name anything in a spec (it ends up in generated code), or None."""
    if keyword.iskeyword(n) or keyword.issoftkeyword(n):
        return "is a Python keyword"
    if n.startswith("_"):
        return "starts with '_', which kgen reserves for generated code"
    if n.endswith("_ptr") or n.startswith("stride_"):
        return "has a form ('*_ptr', 'stride_*') that kgen reserves for generated code"
    if n in ("true", "false"):
        return "is a boolean"
    if n in RESERVED or re.fullmatch(r"(N?SEG|BN)_\d+", n):
        return "is used by the generated module"
    if n in MODULE_ATTRIBUTES:
        return "is an attribute of torch.nn.Module, which the generated module is"
    return None


def check_name(name: Name, what: str) -> None:
    """Raise NameClashError if `name` (a `what`: "name", "kernel name", ...) cannot be used."""
    why = name_problem(name.name)
    if why is not None:
        raise NameClashError(name.span, f"the {what} '{name.name}' {why}", "pick another name")
