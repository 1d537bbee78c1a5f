// The BERT encoder's kernels on CUDA, around cuBLAS's dense layers (see
// cuda_backend/encoder.rs): activations to half precision for the tensor
// cores, bias + activation after a GEMM, LayerNorm with the residual, and
// ragged multi-head attention. The same algorithms as the WGSL shaders
// (shaders/layer_norm.wgsl, attention.wgsl, gelu.wgsl).
//
// No headers: NVRTC is used without the CUDA toolkit's include directory, so
// half values are 16-bit words converted with PTX's cvt.

// x (f32) to IEEE half (round to nearest even), grid-stride.
extern "C" __global__ void kiln_to_half(const float* __restrict__ x,
                                        unsigned short* __restrict__ y, unsigned long long n) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x[i]));
        y[i] = h;
    }
}

// erf as the CPU and WGSL kernels compute it (Abramowitz & Stegun 7.1.26).
__device__ __forceinline__ float kiln_erf(float v) {
    const float z = fabsf(v);
    const float t = 1.0f / (1.0f + 0.3275911f * z);
    const float poly =
        ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
         0.254829592f) * t;
    const float y = 1.0f - poly * expf(-z * z);
    return v < 0.0f ? -y : y;
}

// y[r][c] += bias[c], then the activation `mode`: 0 none, 1 GELU (erf),
// 2 GELU (tanh), 3 ReLU. Grid-stride over rows × cols.
extern "C" __global__ void kiln_bias_act(float* __restrict__ y, const float* __restrict__ bias,
                                         unsigned long long n, unsigned int cols,
                                         unsigned int mode) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float v = y[i] + bias[i % cols];
        if (mode == 1u) {
            v = 0.5f * v * (1.0f + kiln_erf(v * 0.70710678118654752f));
        } else if (mode == 2u) {
            v = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
        } else if (mode == 3u) {
            v = fmaxf(v, 0.0f);
        }
        y[i] = v;
    }
}

#define KILN_LN_BLOCK 256

// Sums `partial` into partial[0]; every thread of the block calls it.
__device__ __forceinline__ void kiln_block_sum(float* partial) {
    __syncthreads();
    for (unsigned int w = KILN_LN_BLOCK / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            partial[threadIdx.x] += partial[threadIdx.x + w];
        }
        __syncthreads();
    }
}

// out = LayerNorm(x + residual) * gamma + beta, one block per row
// (residual may be null). Mean, then variance, reduced in shared memory.
extern "C" __global__ void kiln_add_layer_norm(const float* __restrict__ x,
                                               const float* __restrict__ residual,
                                               const float* __restrict__ gamma,
                                               const float* __restrict__ beta,
                                               float* __restrict__ out, unsigned int rows,
                                               unsigned int cols, float eps) {
    __shared__ float partial[KILN_LN_BLOCK];
    const unsigned int row = blockIdx.x + blockIdx.y * gridDim.x;
    if (row >= rows) {
        return;
    }
    const unsigned long long base = (unsigned long long)row * cols;
    const unsigned int lid = threadIdx.x;
    float s = 0.0f;
    for (unsigned int c = lid; c < cols; c += KILN_LN_BLOCK) {
        s += x[base + c] + (residual ? residual[base + c] : 0.0f);
    }
    partial[lid] = s;
    kiln_block_sum(partial);
    const float mean = partial[0] / (float)cols;
    __syncthreads();
    float v = 0.0f;
    for (unsigned int c = lid; c < cols; c += KILN_LN_BLOCK) {
        const float d = x[base + c] + (residual ? residual[base + c] : 0.0f) - mean;
        v += d * d;
    }
    partial[lid] = v;
    kiln_block_sum(partial);
    const float inv = rsqrtf(partial[0] / (float)cols + eps);
    for (unsigned int c = lid; c < cols; c += KILN_LN_BLOCK) {
        const float value = x[base + c] + (residual ? residual[base + c] : 0.0f);
        out[base + c] = (value - mean) * inv * gamma[c] + beta[c];
    }
}

#define KILN_MAX_HEAD_DIM 128

// Multi-head self-attention over a ragged batch, one thread per (token,
// head): scores against every key of its sequence (bounds[2t], bounds[2t+1]),
// a numerically stable softmax, and the weighted sum of the values.
extern "C" __global__ void kiln_attention(const float* __restrict__ q,
                                          const float* __restrict__ k,
                                          const float* __restrict__ v,
                                          const unsigned int* __restrict__ bounds,
                                          float* __restrict__ out, unsigned int tokens,
                                          unsigned int heads, unsigned int head_dim,
                                          float scale) {
    const unsigned long long index = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= (unsigned long long)tokens * heads) {
        return;
    }
    const unsigned int token = (unsigned int)(index / heads);
    const unsigned int head = (unsigned int)(index % heads);
    const unsigned long long hidden = (unsigned long long)heads * head_dim;
    const unsigned long long col = (unsigned long long)head * head_dim;
    const unsigned long long qi = token * hidden + col;
    const unsigned int start = bounds[2 * token];
    const unsigned int end = bounds[2 * token + 1];
    float best = -3.4e38f;
    for (unsigned int j = start; j < end; j++) {
        float s = 0.0f;
        for (unsigned int d = 0; d < head_dim; d++) {
            s += q[qi + d] * k[j * hidden + col + d];
        }
        best = fmaxf(best, s * scale);
    }
    float acc[KILN_MAX_HEAD_DIM];
    for (unsigned int d = 0; d < head_dim; d++) {
        acc[d] = 0.0f;
    }
    float sum = 0.0f;
    for (unsigned int j = start; j < end; j++) {
        float s = 0.0f;
        for (unsigned int d = 0; d < head_dim; d++) {
            s += q[qi + d] * k[j * hidden + col + d];
        }
        const float w = expf(s * scale - best);
        sum += w;
        for (unsigned int d = 0; d < head_dim; d++) {
            acc[d] += w * v[j * hidden + col + d];
        }
    }
    const float inv = 1.0f / sum;
    for (unsigned int d = 0; d < head_dim; d++) {
        out[qi + d] = acc[d] * inv;
    }
}
