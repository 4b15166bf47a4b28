"""Loading generated modules, and calling them the way users do."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from types import ModuleType

import pytest

from kgen import build
from kgen.build import Compiled, compile_spec, read_spec, write_atomic
from kgen.ir import Kernel

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.fuse"))
GENERATED = ROOT / "generated"

# Tests that run in both tiers: the "cuda" case only in the GPU tier (`pytest -m gpu`).
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]

_counter = itertools.count()


def import_file(path: Path) -> ModuleType:
    """Import a module from a real file, under a name of its own for each import."""
    return build.import_file(path, f"kgen_test_module_{path.stem}_{next(_counter)}")


@functools.cache
def committed(name: str) -> tuple[Compiled, ModuleType]:
    """A spec of specs/ compiled in memory, with its committed module from generated/."""
    path = ROOT / "specs" / f"{name}.fuse"
    compiled = compile_spec(read_spec(path), path.name)
    return compiled, import_file(GENERATED / f"{compiled.kernel.name}.py")


def run(module: ModuleType, kernel: Kernel, config: tuple[int, ...] | None, args, floats):
    """Call the generated function (config None: the module picks its configuration) or
    launch with a given configuration, the way a user's call would."""
    if config is None:
        return getattr(module, kernel.name)(*args, **floats)
    values = [float(floats.get(f.name, f.default)) for f in kernel.floats]
    return module._OP.launch(config, *args, *values)


def build_and_import(
    text: str, directory: Path, filename: str = "spec.fuse"
) -> tuple[Compiled, ModuleType]:
    """Compile spec text, write the module under `directory`, import it."""
    compiled = compile_spec(text, filename)
    path = directory / f"{compiled.kernel.name}_{next(_counter)}.py"
    write_atomic(path, compiled.source)
    return compiled, import_file(path)


# Compiling for a Hopper GPU on a machine without one: Triton's passes and ptxas run on
# the CPU, so a kernel that Triton cannot compile for sm90 (a layout pass's assertion,
# say) fails in CI, not first on a GPU. In a process of its own: without the
# interpreter, and an assertion there aborts only that process.
_COMPILE_FOR_HOPPER = """
import json, sys
from pathlib import Path
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kgen.build import import_file

module = import_file(Path(sys.argv[1]))
for launch in json.loads(sys.argv[2]):
    fn = getattr(module, launch["kernel"])
    values = launch["args"]
    assert set(values) == set(fn.arg_names), sorted(set(values) ^ set(fn.arg_names))
    signature, constexprs = {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = values[name]
        if param.is_constexpr or value is None:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, dict) and "desc" in value:  # a host tensor descriptor
            signature[name] = value["desc"]
        elif isinstance(value, dict):  # a tensor: its element type
            signature[name] = "*" + value["ptr"]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    kernel = compile(
        ASTSource(fn, signature, constexprs),
        target=GPUTarget("cuda", 90, 32),
        options=launch["options"],
    )
    assert kernel.asm["cubin"], launch["kernel"]
"""

_TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32"}


def compile_for_hopper(module: ModuleType, launches: list[dict], tmp_path: Path) -> None:
    """Compile each launch ({"kernel": name in `module`, "args": by name, tensors as
    torch dtypes, host tensor descriptors as {"desc": dtype, "block": shape},
    "options": num_warps and such}) for sm90, in a subprocess."""
    import json
    import os
    import subprocess
    import sys

    import torch

    def encode(value: object) -> object:
        if isinstance(value, torch.dtype):
            return {"ptr": _TRITON_TYPES[str(value).removeprefix("torch.")]}
        if isinstance(value, dict) and "desc" in value:  # a host tensor descriptor
            dtype = _TRITON_TYPES[str(value["desc"]).removeprefix("torch.")]
            return {"desc": f"tensordesc<{dtype}{list(value['block'])}>"}
        return value

    plain = [
        {**launch, "args": {k: encode(v) for k, v in launch["args"].items()}} for launch in launches
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_HOPPER, str(module.__file__), json.dumps(plain)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
