"""Facts about the GPU a call runs on, and the tuning file beside a module (read, and
written atomically).

`kgen tune` writes `<kernel>.tuning.json` beside a generated module: for each GPU name,
dtype and shape bucket, the configuration it measured best (kgen/configs.py). A module
reads its file at import; a missing file is an empty table, and so is a broken one
(with a warning: the module still works, with the heuristic's choices).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton

from kgen.configs import SMEM_HOPPER

# Under TRITON_INTERPRET=1 kernels run on CPU tensors in Triton's interpreter (read
# when the kernels are defined, so before a generated module is imported).
INTERPRET = bool(triton.knobs.runtime.interpret)


@dataclass(frozen=True)
class Device:
    name: str  # the tuning file's key: the GPU's name, or "interpreter"
    num_sms: int
    tma: bool  # tensor descriptors (Hopper's TMA), with room for their stages
    smem: int = SMEM_HOPPER  # shared memory per block, in bytes


_DEVICES: dict[torch.device, Device] = {}


def device(where: torch.device) -> Device:
    facts = _DEVICES.get(where)
    if facts is None:
        if INTERPRET:
            # 3 "SMs", so persistent programs loop over several tiles in tests
            facts = Device("interpreter", 3, True)
        else:
            props = torch.cuda.get_device_properties(where)
            # TMA: Hopper or newer, with room for the TMA configurations' stages (an H100
            # has 227 KB per block; some sm_12x cards about 99 KB)
            smem = getattr(props, "shared_memory_per_block_optin", SMEM_HOPPER)
            tma = props.major >= 9 and smem >= 200 * 1024
            facts = Device(props.name, props.multi_processor_count, tma, smem)
        _DEVICES[where] = facts
    return facts


def load_tuning(path: str) -> dict[str, Any]:
    """A tuning file's table (GPU name -> dtype -> bucket -> configuration)."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        warnings.warn(f"{path}: ignored, not a kgen tuning file ({error})", stacklevel=2)
        return {}
    if not isinstance(table, dict):
        warnings.warn(f"{path}: ignored, not a kgen tuning file", stacklevel=2)
        return {}
    return table


def record_tuning(
    path: Path, gpu: str, dtype: torch.dtype, bucket: str, config: tuple[Any, ...]
) -> None:
    """Add one entry to a tuning file (GPU -> dtype -> bucket), keeping the others;
    written atomically. ValueError if the file holds something else."""
    table: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if not isinstance(table, dict):
        raise ValueError("not a kgen tuning file (expected a JSON object)")
    table.setdefault(gpu, {}).setdefault(str(dtype)[6:], {})[bucket] = list(config)
    # sorted keys, one configuration per line: stable diffs when a file is re-tuned
    text = json.dumps(table, indent=1, sort_keys=True)
    text = re.sub(
        r"\[\s+([^\[\]]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text
    )
    write_atomic(path, text + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a module is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tma_ready(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Can tensor descriptors (TMA) address both 2-D operands: a GPU with TMA, a
    contiguous last dimension, 16-byte-aligned base and row stride, rows that do not
    overlap?"""
    size = x.element_size()
    return (
        device(x.device).tma
        and x.stride(1) == 1
        and weight.stride(1) == 1
        and x.stride(0) * size % 16 == 0
        and weight.stride(0) * size % 16 == 0
        and x.data_ptr() % 16 == 0
        and weight.data_ptr() % 16 == 0
        and x.shape[1] > 0
        # rows that do not overlap (an expanded or overlapping view goes by pointers)
        and x.stride(0) >= x.shape[1]
        and weight.stride(0) >= weight.shape[1]
    )


def wide(*tensors: torch.Tensor) -> bool:
    """Can an element offset in any of these pass 2^31 - 1 (int32 indexing)?"""
    for t in tensors:
        if sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) >= 2**31 - 1:
            return True
    return False
