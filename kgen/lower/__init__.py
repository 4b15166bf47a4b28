"""Stage 3 of the pipeline, lowering: the IR to a generated module's source.

One module per concern, each importing only those above it in this list:

    text       fresh names, comments, fp32 constants (a leaf)
    steps      the row operations as a plan: data the others follow
    epilogue   the one epilogue writer: an IR value or a row step as Triton lines
    rows       the row strategies: in-tile, or two passes with a finishing kernel
    mainloop   the kernels' Triton text around the epilogue (templates)
    kernel     the GEMM kernel (and finishing kernel) assembled
    backward   the backward kernel: dz and the operands' gradients from kgen.derive
    module     the whole module: kernels, the runtime declaration, function, ModelNew

kgen.build calls `module.emit_module(kernel)`.
"""
