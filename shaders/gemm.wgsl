// Tiled GEMM: c[m×n] = a[m×k] · b[n×k]ᵀ (+ bias[n]), all row-major f32.
//
// A 16×16 workgroup computes a 64×64 block of c, each thread a 4×4 set of
// outputs strided by 16 (so neighbouring threads read neighbouring workgroup
// memory). Panels of 64×16 of a and b are staged in workgroup memory, loaded
// cooperatively with bounds checks, so any m, n, k work.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // bit 0: add bias[col]
    flags: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const TILE: u32 = 64u;
const TK: u32 = 16u;

// Stored k-major: panel[kk * TILE + r].
var<workgroup> sa: array<f32, 1024>;
var<workgroup> sb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn gemm_nt(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let r = e / TK;
            let kk = e % TK;
            let gk = k0 + kk;
            let ga = row0 + r;
            var va = 0.0;
            if (ga < p.m && gk < p.k) {
                va = a[ga * p.k + gk];
            }
            sa[kk * TILE + r] = va;
            let gb = col0 + r;
            var vb = 0.0;
            if (gb < p.n && gk < p.k) {
                vb = b[gb * p.k + gk];
            }
            sb[kk * TILE + r] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = sa[kk * TILE + lid.y + 16u * i];
                bv[i] = sb[kk * TILE + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(av[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y + 16u * i;
        if (row >= p.m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (col >= p.n) {
                continue;
            }
            var v = acc[i * 4u + j];
            if ((p.flags & 1u) != 0u) {
                v += bias[col];
            }
            c[row * p.n + col] = v;
        }
    }
}
