"""kgen: a compiler from a tiny epilogue language (.fuse) to fused Triton GEMM kernels.

The pipeline, one module per stage (see `kgen.build.compile_spec`):

    syntax   text -> syntax tree (Lark grammar, positions kept)
    analyze  syntax tree -> IR (names, kinds, op signatures; `kgen.ir`)
    emit     IR -> Triton module source
    build    black formatting, atomic writes, `--check`

`kgen.ops` is the op registry every stage reads; `kgen.reference` evaluates the IR
with torch and is the oracle the tests compare generated kernels against.
"""

__version__ = "0.1.0"
