// Top-k selection over a tile of scores, one thread per (query, chunk of
// columns): the algorithm of shaders/topk.wgsl. Each thread scans its chunk
// in column order and keeps the KILN_K best ranking keys in a private sorted
// array; the host merges the few candidates per query.
//
// key = score * scale[col] + shift[col]; higher is closer. A column whose
// shift is -inf has no score and is never kept. Keys at or above the query's
// threshold (its running k-th best) are candidates: the host breaks ties with
// earlier tiles by id. Within the chunk an equal key loses to the earlier
// column, as the scan is in column order.
//
// KILN_K is defined before the source is compiled (one module per K).
#ifndef KILN_K
#define KILN_K 16
#endif

extern "C" __global__ void kiln_topk_select(
    const float* __restrict__ scores,
    const float* __restrict__ scale,
    const float* __restrict__ shift,
    const float* __restrict__ threshold,
    unsigned int* __restrict__ cands,
    unsigned int queries,
    unsigned int cols,
    unsigned int chunk,
    unsigned int chunks)
{
    const unsigned long long index =
        (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= (unsigned long long)queries * chunks) {
        return;
    }
    const unsigned int q = (unsigned int)(index / chunks);
    const unsigned int c = (unsigned int)(index % chunks);
    float keys[KILN_K];
    unsigned int kept_cols[KILN_K];
    unsigned int count = 0;
    float bar = threshold[q];
    const unsigned int start = c * chunk;
    const unsigned int end = min(start + chunk, cols);
    const unsigned long long row = (unsigned long long)q * cols;
    for (unsigned int col = start; col < end; col++) {
        const float sh = shift[col];
        if (sh < -3.0e38f) {
            continue;
        }
        // Multiply, then add, each rounded: as the host computes keys.
        const float key = __fadd_rn(__fmul_rn(scores[row + col], scale[col]), sh);
        if (!(key >= bar)) {
            continue;
        }
        // Insert after every kept key >= key (earlier columns win ties).
        unsigned int pos = count;
        while (pos > 0 && keys[pos - 1] < key) {
            if (pos < KILN_K) {
                keys[pos] = keys[pos - 1];
                kept_cols[pos] = kept_cols[pos - 1];
            }
            pos--;
        }
        if (pos < KILN_K) {
            keys[pos] = key;
            kept_cols[pos] = col;
            if (count < KILN_K) {
                count++;
            }
            if (count == KILN_K) {
                bar = fmaxf(bar, keys[KILN_K - 1]);
            }
        }
    }
    const unsigned long long base = index * KILN_K * 2ull;
    for (unsigned int i = 0; i < KILN_K; i++) {
        if (i < count) {
            cands[base + 2 * i] = __float_as_uint(keys[i]);
            cands[base + 2 * i + 1] = kept_cols[i];
        } else {
            cands[base + 2 * i] = 0u;
            cands[base + 2 * i + 1] = 0xffffffffu;
        }
    }
}
