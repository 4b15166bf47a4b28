"""Tuning at first use, opt in: `KGEN_AUTOTUNE=1`.

A module launches the configuration its tuning file (`kgen tune`, committed beside the
module) names for the GPU, dtype and shape bucket, else kgen.configs' heuristic. With
`KGEN_AUTOTUNE=1` in the environment, the first call of a shape bucket that the tuning
file does not cover searches the configurations on this GPU, as `kgen tune` does
(kgen.runtime.search: the same candidates, compiled in parallel and timed on the call's own
arguments), prints what it is doing on stderr, and records the winner in a cache on disk,
so that later calls and later processes launch it without searching:

    $KGEN_CACHE_DIR/tuning/<kernel>-<hash>.json     (default ~/.cache/kgen, or
                                                     $XDG_CACHE_HOME/kgen)

The file has the tuning file's format (GPU name -> dtype -> bucket -> configuration);
its name's hash covers the generated module's text (its kernels and helpers), Triton's
version and kgen's, so a rebuilt or changed kernel never reads another's entries. Copy an
entry into the tuning file beside the module to commit it. Without the switch nothing is
read or written: a module behaves exactly as its committed files say.

A search takes seconds to a minute (dozens of kernels to compile and time) and runs once per
kernel, GPU, dtype and shape bucket. It does not run where nothing can be timed, or
where timing would break the caller: under Triton's interpreter, and while a CUDA graph
is being captured (the heuristic's configuration is used there, and not recorded).
Processes that search at the same time each record their result under a file lock.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
import triton

from kgen import __version__, configs
from kgen.runtime import devices

ENV = "KGEN_AUTOTUNE"
CACHE_ENV = "KGEN_CACHE_DIR"
_OFF = ("", "0", "false", "no", "off")

# cache file -> its table, as read (or written) by this process
_TABLES: dict[Path, dict[str, Any]] = {}
# op -> the hash in its cache file's name (the module's text is read once)
_DIGESTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def enabled() -> bool:
    """Is tuning at first use switched on (`KGEN_AUTOTUNE` set, and not to 0/false/no/off)?"""
    return os.environ.get(ENV, "").strip().lower() not in _OFF


def cache_dir() -> Path:
    """Where the tuning cache lives: $KGEN_CACHE_DIR, else $XDG_CACHE_HOME/kgen, else
    ~/.cache/kgen."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kgen"


def cache_path(op: Any) -> Path:
    """The cache file of `op` (a GemmOp): named by its kernel and a hash of its generated
    module's text, Triton's version and kgen's (hashed once per op)."""
    digest = _DIGESTS.get(op)
    if digest is None:
        text = f"{_identity(op)}|{triton.__version__}|{__version__}"
        digest = _DIGESTS[op] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return cache_dir() / "tuning" / f"{op.name}-{digest}.json"


def _identity(op: Any) -> str:
    """What the cache's entries are valid for: the text of the generated module that
    defines the op's kernel (its kernels, helpers and constants), else the kernel's
    Triton cache key."""
    kernel = op.kernel
    module = sys.modules.get(getattr(getattr(kernel, "fn", None), "__module__", ""))
    path = getattr(module, "__file__", None)
    if path:
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            pass
    return str(getattr(kernel, "cache_key", op.name))


def cached(op: Any, gpu: str, dtype: torch.dtype, bucket: str, tma: bool) -> configs.Config | None:
    """The cache's configuration for this GPU, dtype and bucket, if it holds a usable one."""
    path = cache_path(op)
    table = _TABLES.get(path)
    if table is None:
        table = _TABLES[path] = devices.load_tuning(str(path))
    return configs._tuned(table.get(gpu, {}), dtype, bucket, tma)


def _record(path: Path, gpu: str, dtype: torch.dtype, bucket: str, config: configs.Config) -> None:
    """Add the entry to the cache file under a lock (read, update, write atomically)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        try:
            devices.record_tuning(path, gpu, dtype, bucket, config)
        except ValueError:  # a broken cache file (reading it warned): start afresh
            path.unlink()
            devices.record_tuning(path, gpu, dtype, bucket, config)
        _TABLES[path] = devices.load_tuning(str(path))


def _timeable() -> bool:
    """Can kernels be timed here (a CUDA GPU, not Triton's interpreter)?"""
    return not devices.INTERPRET and torch.cuda.is_available()


def first_use(
    op: Any,
    call: tuple[Any, ...],
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    tma: bool,
    facts: devices.Device,
) -> configs.Config | None:
    """With the switch on: the cached configuration for this call's shape bucket, or
    else one searched now on the call's arguments (`call`, as `op(*call)` takes them)
    and recorded; None where there is nothing to search with (the heuristic decides)."""
    bucket = configs.bucket(M, N, K)
    config = cached(op, facts.name, dtype, bucket, tma)
    if config is not None or not _timeable() or torch.cuda.is_current_stream_capturing():
        return config
    from kgen.runtime import search

    path = cache_path(op)
    what = f"{op.name} {M}x{N}x{K} {str(dtype)[6:]} on {facts.name}"
    print(
        f"kgen: tuning {what} (first use of shape bucket {bucket}; {ENV}=1), cached in {path}",
        file=sys.stderr,
        flush=True,
    )
    try:
        with torch.no_grad():
            best, results = search.search(op, call, M, N, K, dtype, tma, facts, f"kgen: {what}")
    except Exception as error:  # a failed search must not fail the call
        warnings.warn(f"kgen: tuning {what} failed ({error}); untuned", stacklevel=3)
        return None
    if best is None:
        warnings.warn(f"kgen: tuning {what}: no candidate ran; untuned", stacklevel=3)
        return None
    default = search.untuned(op, M, N, K, dtype, tma, facts)
    untuned = next((r.ms for r in results if r.config == default), float("nan"))
    try:
        _record(path, facts.name, dtype, bucket, best.config)
    except (OSError, ValueError, TimeoutError) as error:  # an unwritable cache: tuned anyway
        warnings.warn(f"kgen: cannot record in {path}: {error}", stacklevel=3)
    timed = sum(1 for r in results if r.error is None)
    print(
        f"kgen: {what}: {list(best.config)}, {best.ms * 1e3:.1f} us "
        f"(untuned {untuned * 1e3:.1f} us; {timed} of {len(results)} candidates timed)",
        file=sys.stderr,
        flush=True,
    )
    return best.config


def forget() -> None:
    """Drop the tables read from the cache (tests; after the cache was edited)."""
    _TABLES.clear()


__all__ = ["CACHE_ENV", "ENV", "cache_dir", "cache_path", "cached", "enabled", "first_use"]
