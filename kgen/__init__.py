"""kgen: a compiler from a tiny epilogue language (.fuse) to fused Triton GEMM kernels.

The pipeline, one module per stage (see `kgen.build.compile_spec`):

    syntax   text -> syntax tree (Lark grammar, positions kept)
    analyze  syntax tree -> verified IR, as passes (declarations, elaboration with
             kinds and defs, fold and CSE as values are built, prune; `kgen.ir`)
    lower    IR -> Triton module source (epilogue, rows, mainloop, kernel, backward,
             module)
    derive   forward IR -> backward IR (reverse mode from each op's derivative rule)
    build    black formatting, atomic writes, `--check`

`kgen.runtime` is what a generated module imports to be called (checks, plans,
launches, the torch.library operator); it needs nothing of the compiler.

`kgen.ops` is the op registry every stage reads; `kgen.reference` evaluates the IR
with torch and is the oracle the tests compare generated kernels against.
"""

__version__ = "0.1.0"
