"""What a generated module runs on the host, written once as ordinary Python.

A generated module holds what depends on its spec: the Triton kernels and a
declaration of its call (`GemmOp`: operands, float params, row operations). Everything
else a call does lives here, imported by every module:

    checks    the argument checks made before any launch (TypeError / ValueError)
    devices   facts about a GPU (SMs, TMA) and the tuning file beside a module
    rowplan   how row operations run for a given N (in one tile, or two passes)
    launch    plans: one layout's launches, decided once and replayed per call
    op        GemmOp: the call itself, its plan cache, autocast, `[*, K]` inputs and
              the `torch.ops.kgen.<name>` operator for torch.compile and export

This package imports only torch and triton, so that a generated module needs nothing
else of kgen at run time.
"""

from kgen.runtime.op import GemmOp, Rows
from kgen.runtime.rowplan import RowOp

__all__ = ["GemmOp", "RowOp", "Rows"]
