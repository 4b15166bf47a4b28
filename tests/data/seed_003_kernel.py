# The [CURRENT CODE] block of the seed prompt shared/seeds/003_0d532297874388ac.txt, copied verbatim
# (CI cannot see shared/): a model-written Triton module that tests/test_check.py
# runs `kgen check` on. Not imported or run; kept byte for byte, so it is
# excluded from ruff and black:
# ruff: noqa
# fmt: off
import torch
import torch.nn as nn
import triton
import triton.language as tl
import math


@triton.autotune(
    configs=[
        triton.Config({'BLOCK_M': 64, 'BLOCK_N': 256, 'BLOCK_K': 32}, num_stages=3, num_warps=8),
        triton.Config({'BLOCK_M': 128, 'BLOCK_N': 128, 'BLOCK_K': 32}, num_stages=3, num_warps=8),
        triton.Config({'BLOCK_M': 256, 'BLOCK_N': 64, 'BLOCK_K': 32}, num_stages=3, num_warps=8),
    ],
    key=['M', 'N', 'K']
)
@triton.jit
def fused_gemm_scale_hardtanh_gelu_kernel(
    a_ptr, b_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_out_m, stride_out_n,
    scaling_factor, hardtanh_min, hardtanh_max,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # 2D launch grid
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    
    # Offsets for the M and N dimensions
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    
    # Pointers for loading A and B tiles
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    
    # Accumulator
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    
    # Main matmul loop
    for k in range(0, K, BLOCK_K):
        # Load tiles with masking
        k_remaining = tl.minimum(BLOCK_K, K - k)
        mask_a = (offs_m[:, None] < M) & (offs_k[None, :] < k_remaining)
        mask_b = (offs_k[:, None] < k_remaining) & (offs_n[None, :] < N)
        
        a = tl.load(a_ptrs, mask=mask_a, other=0.0)
        b = tl.load(b_ptrs, mask=mask_b, other=0.0)
        
        acc += tl.dot(a, b, allow_tf32=True)
        
        # Advance pointers
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    
    # Add bias
    bias_ptrs = bias_ptr + offs_n[None, :]
    bias = tl.load(bias_ptrs, mask=(offs_n[None, :] < N), other=0.0)
    acc += bias
    
    # Apply scaling
    acc = acc * scaling_factor
    
    # Hardtanh
    acc = tl.maximum(acc, hardtanh_min)
    acc = tl.minimum(acc, hardtanh_max)
    
    # GELU (tanh approximation)
    sqrt_2_over_pi = 0.7978845608
    gelu_coeff = 0.044715
    
    x = acc
    x_cubed = x * x * x
    inner = sqrt_2_over_pi * (x + gelu_coeff * x_cubed)
    tanh_inner = (tl.exp(2 * inner) - 1) / (tl.exp(2 * inner) + 1)
    acc = 0.5 * x * (1 + tanh_inner)
    
    # Store output with masking
    out_ptrs = out_ptr + offs_m[:, None] * stride_out_m + offs_n[None, :] * stride_out_n
    mask_out = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, acc, mask=mask_out)


def fused_gemm_scale_hardtanh_gelu(x, weight, bias, scaling_factor, hardtanh_min, hardtanh_max):
    # Ensure inputs are contiguous
    x = x.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous()
    
    # Get dimensions
    M, K = x.shape
    N = weight.shape[0]
    
    # Transpose weight for column-major access
    weight_t = weight.t()
    
    # Output tensor
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    
    # Define kernel grid
    def grid(META):
        return (
            triton.cdiv(M, META['BLOCK_M']),
            triton.cdiv(N, META['BLOCK_N']),
        )
    
    # Launch kernel
    fused_gemm_scale_hardtanh_gelu_kernel[grid](
        x, weight_t, bias, out,
        M, N, K,
        x.stride(0), x.stride(1),
        weight_t.stride(0), weight_t.stride(1),
        out.stride(0), out.stride(1),
        scaling_factor, hardtanh_min, hardtanh_max,
    )
    
    return out


class ModelNew(nn.Module):
    def __init__(self, in_features, out_features, scaling_factor, hardtanh_min, hardtanh_max):
        super(ModelNew, self).__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scaling_factor = scaling_factor
        self.hardtanh_min = hardtanh_min
        self.hardtanh_max = hardtanh_max
    
    def forward(self, x):
        return fused_gemm_scale_hardtanh_gelu(
            x, self.weight, self.bias, 
            self.scaling_factor, self.hardtanh_min, self.hardtanh_max
        )
