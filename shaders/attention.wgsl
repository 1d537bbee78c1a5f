// Multi-head self-attention over a ragged batch: sequences laid end to end,
// no padding. One invocation per (token, head): scores against every key of
// its sequence, a numerically stable softmax, and the weighted sum of the
// values, kept in a private array (head_dim ≤ 128).

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
// Per token: the start and end (exclusive) of its sequence.
@group(0) @binding(3) var<storage, read> bounds: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64)
fn attention(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let index = gid.x + gid.y * nwg.x * 64u;
    if (index >= p.tokens * p.heads) {
        return;
    }
    let token = index / p.heads;
    let head = index % p.heads;
    let hidden = p.heads * p.head_dim;
    let col = head * p.head_dim;
    let qi = token * hidden + col;
    let start = bounds[2u * token];
    let end = bounds[2u * token + 1u];
    var best = -3.4e38;
    for (var j = start; j < end; j++) {
        var s = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            s += q[qi + d] * k[j * hidden + col + d];
        }
        best = max(best, s * p.scale);
    }
    var acc: array<f32, 128>;
    for (var d = 0u; d < p.head_dim; d++) {
        acc[d] = 0.0;
    }
    var sum = 0.0;
    for (var j = start; j < end; j++) {
        var s = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            s += q[qi + d] * k[j * hidden + col + d];
        }
        let w = exp(s * p.scale - best);
        sum += w;
        for (var d = 0u; d < p.head_dim; d++) {
            acc[d] += w * v[j * hidden + col + d];
        }
    }
    let inv = 1.0 / sum;
    for (var d = 0u; d < p.head_dim; d++) {
        out[qi + d] = acc[d] * inv;
    }
}
