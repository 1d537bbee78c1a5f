// The encoder's activations, in place, chosen by `p.mode`:
//   0: GELU as BERT defines it, 0.5·x·(1 + erf(x/√2)). WGSL has no erf:
//      Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), as Kiln's
//      CPU kernel computes it;
//   1: GELU's tanh approximation (gelu_new, gelu_pytorch_tanh);
//   2: ReLU.
// Grid-stride over `p.n`.

struct Params {
    n: u32,
    mode: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

const WG: u32 = 256u;

fn erf_approx(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    let y = 1.0 - poly * exp(-z * z);
    return select(y, -y, v < 0.0);
}

@compute @workgroup_size(256)
fn gelu(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let stride = groups.x * WG;
    for (var i = gid.x; i < p.n; i += stride) {
        let v = x[i];
        if (p.mode == 0u) {
            x[i] = 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
        } else if (p.mode == 1u) {
            x[i] = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
        } else {
            x[i] = max(v, 0.0);
        }
    }
}
