// Top-k selection over a tile of scores, one thread per (query, chunk of
// columns): each thread scans its chunk in column order and keeps the K best
// ranking keys in a private sorted array. The host merges the few candidates
// per query. K is substituted into this source before compilation (the
// pipeline is cached per K).
//
// key = score * scale[col] + shift[col]; higher is closer. A column whose
// shift is -inf has no score and is never kept. Keys at or above the query's
// threshold (its running k-th best) are candidates: the host breaks ties with
// earlier tiles by id. Within the chunk an equal key loses to the earlier
// column, as the scan is in column order.

struct Params {
    queries: u32,
    cols: u32,
    chunk: u32,
    chunks: u32,
}

@group(0) @binding(0) var<storage, read> scores: array<f32>;
@group(0) @binding(1) var<storage, read> scale: array<f32>;
@group(0) @binding(2) var<storage, read> shift: array<f32>;
@group(0) @binding(3) var<storage, read> threshold: array<f32>;
// Per (query, chunk): K pairs of (bitcast key, column); column 0xffffffff = empty.
@group(0) @binding(4) var<storage, read_write> cands: array<u32>;
@group(0) @binding(5) var<uniform> p: Params;

const K: u32 = __K__u;
const EMPTY: u32 = 0xffffffffu;

@compute @workgroup_size(64)
fn topk_select(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let index = gid.x + gid.y * nwg.x * 64u;
    if (index >= p.queries * p.chunks) {
        return;
    }
    let q = index / p.chunks;
    let chunk = index % p.chunks;
    var keys: array<f32, K>;
    var cols: array<u32, K>;
    var count = 0u;
    var bar = threshold[q];
    let start = chunk * p.chunk;
    let end = min(start + p.chunk, p.cols);
    let row = q * p.cols;
    for (var col = start; col < end; col++) {
        let sh = shift[col];
        if (sh < -3.0e38) {
            continue;
        }
        let key = scores[row + col] * scale[col] + sh;
        if (!(key >= bar)) {
            continue;
        }
        // Insert after every kept key >= key (earlier columns win ties).
        var pos = count;
        while (pos > 0u && keys[pos - 1u] < key) {
            if (pos < K) {
                keys[pos] = keys[pos - 1u];
                cols[pos] = cols[pos - 1u];
            }
            pos--;
        }
        if (pos < K) {
            keys[pos] = key;
            cols[pos] = col;
            if (count < K) {
                count++;
            }
            if (count == K) {
                bar = max(bar, keys[K - 1u]);
            }
        }
    }
    let base = index * K * 2u;
    for (var i = 0u; i < K; i++) {
        if (i < count) {
            cands[base + 2u * i] = bitcast<u32>(keys[i]);
            cands[base + 2u * i + 1u] = cols[i];
        } else {
            cands[base + 2u * i] = 0u;
            cands[base + 2u * i + 1u] = EMPTY;
        }
    }
}
