"""One module per kernel family; importing this package registers every kernel builder
(`@kernel_builder`) and every tunable kind (`register_kind`), in this order.

Where the kernel of an op is (module -> ops; its template in codegen/templates/):

    elementwise     every elementwise op, FusedElementwise       elementwise.cl.j2
    epilogue        what a MatMul / Conv runs in its store (bias, activation, residual)
    views           Identity (an alias: no kernel)
    movement        Reshape, Transpose, Slice, Expand, Tile, DepthToSpace, SpaceToDepth,
                    Concat, Split, Pad                            movement.cl.j2, pad.cl.j2
    gather          Gather, GatherElements, GatherND, OneHot, Trilu  gather / gather_nd /
                                                                  onehot / trilu
    resize          Resize                                        resize.cl.j2
    reduce          Reduce*                                       reduce.cl.j2
    axis_ops        ArgMax, ArgMin, CumSum, CumProd               argreduce / cumsum
    topk            TopK                                          topk.cl.j2
    matmul          MatMul; the GPU tiled GEMM, tunable kind "gemm"     tiled_gemm / matmul
    gemm_cpu        the CPU register-tiled GEMM (MatMul, Conv), kind "gemm_cpu"  gemm_cpu.cl.j2
    gemv_cpu        the CPU GEMV (one row of A), kind "gemv_cpu"  gemv_cpu.cl.j2
    conv            Conv, ConvTranspose (strategy choice; GPU implicit GEMM)  conv / conv_transpose
    conv_depthwise  the CPU depthwise conv, kind "depthwise"      conv_depthwise / conv_direct
    conv_rows       the CPU direct conv for few input channels, kind "conv_rows"  conv_rows
    linalg          BatchNormalization                            batchnorm.cl.j2
    rows            RowParams, kind "rows" (work-items per row of softmax and the norms)
    norm            Softmax, LogSoftmax, LayerNormalization, InstanceNormalization,
                    GroupNormalization, RMSNormalization, LRN   softmax / norm / lrn
    pool            MaxPool, AveragePool, GlobalMaxPool, GlobalAveragePool  pool / global_pool
    attention       Attention (fused), kind "attention"           attention.cl.j2
    rotary          RotaryEmbedding                               rotary.cl.j2
    igemm_cpu       the CPU integer GEMM (pairs of int16), kind "igemm_cpu"  igemm_cpu.cl.j2
    igemm           MatMulInteger, ConvInteger (strategy choice; GPU: the tiled GEMM)
    qgemv_cpu       BlockQuantMatMul's row loop (4/8-bit weights in blocks), kinds "qgemv"
                    and "qgemm"                                   qgemv_cpu.cl.j2
    qgemm_cpu       BlockQuantMatMul (its builder; prefill on CPUs: a GEMM dequantizing
                    its B panels in private memory), kind "qgemm_cpu"  qgemm_cpu.cl.j2
    recurrent       LSTMRecurrence, GRURecurrence, RNNRecurrence (one launch over the
                    steps, a work-group per direction)               recurrent.cl.j2
    vision          GridSample (GroupNormalization is norm's)      grid_sample.cl.j2
"""

from ember.codegen.kernels import (  # noqa: F401  (registration happens on import)
    elementwise,
    epilogue,
    views,
    movement,
    gather,
    resize,
    reduce,
    axis_ops,
    topk,
    matmul,
    gemm_cpu,
    gemv_cpu,
    conv,
    conv_depthwise,
    conv_rows,
    linalg,
    rows,
    norm,
    pool,
    attention,
    rotary,
    igemm_cpu,
    igemm,
    qgemv_cpu,
    qgemm_cpu,
    recurrent,
    vision,
)
