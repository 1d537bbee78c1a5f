// Fused multiply-add over three f32 vectors: out[i] = a[i] * b[i] + c[i].
// Grid-stride over `params.n`, so one dispatch of at most 65535 workgroups
// covers any binding the device accepts.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;

const WORKGROUP_SIZE: u32 = 256u;

@compute @workgroup_size(256)
fn fma_f32(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * WORKGROUP_SIZE;
    var i = gid.x;
    loop {
        if i >= params.n {
            break;
        }
        out[i] = fma(a[i], b[i], c[i]);
        i = i + stride;
    }
}
