"""What a generated module runs on the host, written once as ordinary Python.

A generated module holds what depends on its spec: the Triton kernels and a
declaration of its call (`kgen.runtime.op.GemmOp`: operands, float params, row
operations), which it imports as `import kgen.runtime.op as _runtime`. Everything else
a call does lives in this package, one module per concern, each importing only those
listed before it:

    checks    the argument checks made before any launch (TypeError / ValueError)
    devices   facts about a GPU (SMs, TMA) and the tuning file beside a module
    search    GPU timing and the search over configurations (`kgen tune`'s too)
    rowplan   how row operations run for a given N (in one tile, or two passes)
    launch    plans: one layout's launches, decided once and replayed per call
    autotune  tuning at first use (KGEN_AUTOTUNE=1) and its cache on disk
    op        GemmOp: the call itself, its plan cache, autocast, `[*, K]` inputs and
              the `torch.ops.kgen.<name>` operator for torch.compile and export

The package imports only torch and triton (and kgen.configs; tqdm and filelock when
tuning at first use), so that a generated module needs nothing of kgen's compiler
(lark, black) at run time.
"""
