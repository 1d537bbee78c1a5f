// out = LayerNorm(x + residual) · gamma + beta over rows of `cols`, BERT's
// post-attention and post-FFN normalization. One workgroup per row: two
// passes (mean, then variance) reduced in workgroup memory, then the
// normalized row. Rows are spread over x and y so any row count fits the
// 65535-workgroups-per-dimension limit.

struct Params {
    rows: u32,
    cols: u32,
    has_residual: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> residual: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;

fn value(i: u32) -> f32 {
    var v = x[i];
    if (p.has_residual != 0u) {
        v += residual[i];
    }
    return v;
}

// Sums `partial` into partial[0]; every invocation of the workgroup calls it.
fn reduce(lid: u32) {
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w = w / 2u) {
        if (lid < w) {
            partial[lid] += partial[lid + w];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn add_layer_norm(
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let lid = local.x;
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += value(base + c);
    }
    partial[lid] = s;
    reduce(lid);
    let mean = partial[0] / f32(p.cols);
    workgroupBarrier();
    var v = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = value(base + c) - mean;
        v += d * d;
    }
    partial[lid] = v;
    reduce(lid);
    let inv = inverseSqrt(partial[0] / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = (value(base + c) - mean) * inv * gamma[c] + beta[c];
    }
}
