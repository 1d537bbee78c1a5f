// Fused multiply-add over three f32 vectors: out[i] = a[i] * b[i] + c[i].
// The smallest real kernel of each backend; it proves upload, launch and
// download end to end. Grid-stride loop, so any grid covers any length.

extern "C" __global__ void fma_f32(const float *__restrict__ a,
                                   const float *__restrict__ b,
                                   const float *__restrict__ c,
                                   float *__restrict__ out,
                                   const unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
         i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        out[i] = fmaf(a[i], b[i], c[i]);
    }
}
