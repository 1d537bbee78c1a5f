//! The fused multiply-add kernel end to end (upload, launch, download) on
//! every device present.

use kiln_kernels::backend::BackendDevice;
use kiln_kernels::ops::activation::Activation;
use kiln_kernels::testing::devices_under_test;
use kiln_kernels::{BackendKind, Device, KernelError};

use crate::common::values;

fn run_fma(device: &Device, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let (da, db, dc) = (
        device.upload(a).unwrap(),
        device.upload(b).unwrap(),
        device.upload(c).unwrap(),
    );
    let out = device.fma(&da, &db, &dc).unwrap();
    assert_eq!(out.len(), a.len());
    device.download(&out).unwrap()
}

#[test]
fn fma_matches_host_on_every_device() {
    let devices = devices_under_test();
    assert!(devices.iter().any(|d| d.backend() == BackendKind::Cpu));
    // Lengths around the workgroup size, and one past a grid-stride wrap.
    for n in [0usize, 1, 255, 256, 257, 100_003, 65_535 * 256 + 17] {
        let (a, b, c) = (values(n, 1), values(n, 2), values(n, 3));
        let expected: Vec<f32> = (0..n).map(|i| a[i].mul_add(b[i], c[i])).collect();
        for device in &devices {
            let got = run_fma(device, &a, &b, &c);
            assert_eq!(got.len(), n, "{device:?} n={n}");
            for i in 0..n {
                // WGSL lets fma() round the product before the add (lavapipe
                // does), so allow the error of one extra rounding, no more.
                let bound = 2.0 * f32::EPSILON * ((a[i] * b[i]).abs() + c[i].abs());
                assert!(
                    (got[i] - expected[i]).abs() <= bound,
                    "{device:?} n={n} i={i}: {} vs {}",
                    got[i],
                    expected[i]
                );
            }
        }
    }
}

#[test]
fn upload_download_round_trips_special_values() {
    let data = [
        0.0f32,
        -0.0,
        1.5,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NAN,
    ];
    for device in devices_under_test() {
        let back = device.download(&device.upload(&data).unwrap()).unwrap();
        let bits: Vec<u32> = back.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = data.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, want, "{device:?}");
    }
}

#[test]
fn fma_rejects_mismatched_lengths() {
    for device in devices_under_test() {
        let a = device.upload(&[1.0, 2.0]).unwrap();
        let b = device.upload(&[1.0]).unwrap();
        let err = device.fma(&a, &b, &a).unwrap_err();
        assert!(
            matches!(err, KernelError::LengthMismatch { .. }),
            "{device:?}: {err}"
        );
    }
}

#[test]
fn buffers_do_not_cross_devices() {
    let devices = devices_under_test();
    let cpu = Device::cpu().unwrap();
    for device in devices.iter().filter(|d| d.backend() != BackendKind::Cpu) {
        let foreign = cpu.upload(&[1.0]).unwrap();
        let own = device.upload(&[1.0]).unwrap();
        let err = device.fma(&own, &foreign, &own).unwrap_err();
        assert!(
            err.to_string().contains("buffer lives on cpu"),
            "{device:?}: {err}"
        );
    }
}

#[test]
fn wgpu_matmul_matches_the_cpu_dense_layer() {
    let Some(Device::Wgpu(gpu)) = devices_under_test()
        .into_iter()
        .find(|d| d.backend() == BackendKind::Wgpu)
    else {
        return; // devices_under_test already failed if wgpu is required
    };
    // Edges around the 64×64 output tile and the 16-deep k panel; the
    // encoder's shapes (hidden 384, intermediate 1536).
    for (m, k, n, with_bias) in [
        (1, 1, 1, false),
        (65, 17, 63, true),
        (130, 384, 1536, true),
        (3, 1536, 384, false),
    ] {
        let (a, b, bias) = (values(m * k, 5), values(n * k, 6), values(n, 7));
        let want =
            kiln_kernels::ops::linear::linear(&a, m, k, &b, n, with_bias.then_some(&bias[..]));
        let ga = gpu.upload(&a).unwrap();
        let gb = gpu.upload(&b).unwrap();
        let gbias = gpu.upload(&bias).unwrap();
        let out = gpu
            .matmul_nt(&ga, [m, k, n], &gb, with_bias.then_some(&gbias))
            .unwrap();
        let got = gpu.download(&out).unwrap();
        assert_eq!(got.len(), m * n);
        // Values in [-8, 8): products up to 64, sums over k terms; f32
        // rounding in two summation orders differs by a few ulps of k·64.
        let tol = 1e-5 * 64.0 * k as f32;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= tol, "{m}x{k}x{n} [{i}]: {g} vs {w}");
        }
    }
    let a = gpu.upload(&[1.0; 6]).unwrap();
    let err = gpu.matmul_nt(&a, [2, 3, 3], &a, None).unwrap_err();
    assert!(matches!(err, KernelError::LengthMismatch { .. }), "{err}");
}

#[test]
fn wgpu_layer_norm_and_gelu_match_the_cpu() {
    let Some(Device::Wgpu(gpu)) = devices_under_test()
        .into_iter()
        .find(|d| d.backend() == BackendKind::Wgpu)
    else {
        return; // devices_under_test already failed if wgpu is required
    };
    // Row widths below, at and above the workgroup size (BERT: 384 and 768).
    for (rows, cols, with_residual) in [
        (1, 1, false),
        (7, 384, true),
        (3, 300, false),
        (2, 768, true),
    ] {
        let x = values(rows * cols, 11);
        let residual = values(rows * cols, 12);
        let gamma = values(cols, 13);
        let beta = values(cols, 14);
        let mut want = x.clone();
        kiln_kernels::ops::norm::add_layer_norm_inplace(
            &mut want,
            with_residual.then_some(&residual[..]),
            cols,
            &gamma,
            &beta,
            1e-12,
        );
        let out = gpu
            .add_layer_norm(
                &gpu.upload(&x).unwrap(),
                with_residual
                    .then(|| gpu.upload(&residual).unwrap())
                    .as_ref(),
                cols,
                &gpu.upload(&gamma).unwrap(),
                &gpu.upload(&beta).unwrap(),
                1e-12,
            )
            .unwrap();
        let got = gpu.download(&out).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Normalized values times gamma in [-8, 8): f32 statistics on the
            // device against f64 on the CPU.
            assert!((g - w).abs() <= 1e-4, "{rows}x{cols} [{i}]: {g} vs {w}");
        }
    }
    let xs: Vec<f32> = (-9_000..9_000).map(|i| i as f32 * 1e-3).collect();
    let mut want = xs.clone();
    kiln_kernels::ops::activation::gelu_inplace(&mut want);
    let buf = gpu.upload(&xs).unwrap();
    gpu.activation_inplace(&buf, Activation::Gelu).unwrap();
    let got = gpu.download(&buf).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-6 * w.abs().max(1.0),
            "gelu({}) {g} vs {w}",
            xs[i]
        );
    }
    let mut want = xs.clone();
    kiln_kernels::ops::activation::gelu_tanh_inplace(&mut want);
    let buf = gpu.upload(&xs).unwrap();
    gpu.activation_inplace(&buf, Activation::GeluTanh).unwrap();
    let got = gpu.download(&buf).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-6 * w.abs().max(1.0),
            "gelu_tanh({}) {g} vs {w}",
            xs[i]
        );
    }
    let buf = gpu.upload(&xs).unwrap();
    gpu.activation_inplace(&buf, Activation::Relu).unwrap();
    let got = gpu.download(&buf).unwrap();
    assert!(got.iter().zip(&xs).all(|(g, x)| *g == x.max(0.0)));
    let bad = gpu.upload(&[1.0; 5]).unwrap();
    assert!(
        gpu.add_layer_norm(&bad, None, 2, &bad, &bad, 1e-12)
            .is_err()
    );
}

#[test]
fn wgpu_attention_matches_the_cpu() {
    let Some(Device::Wgpu(gpu)) = devices_under_test()
        .into_iter()
        .find(|d| d.backend() == BackendKind::Wgpu)
    else {
        return; // devices_under_test already failed if wgpu is required
    };
    // Ragged sequences of 1, 5 and 40 tokens; MiniLM's 12 heads of 32.
    for (offsets, heads, head_dim) in [(vec![0, 1, 6, 46], 12, 32), (vec![0, 3], 2, 64)] {
        let t = *offsets.last().unwrap();
        let n = t * heads * head_dim;
        let (q, k, v) = (values(n, 21), values(n, 22), values(n, 23));
        // Scale the inputs like real activations so the softmax is not one-hot.
        let q: Vec<f32> = q.iter().map(|x| x * 0.1).collect();
        let want =
            kiln_kernels::ops::attention::attention_ragged(&q, &k, &v, &offsets, heads, head_dim);
        let out = gpu
            .attention_ragged(
                &gpu.upload(&q).unwrap(),
                &gpu.upload(&k).unwrap(),
                &gpu.upload(&v).unwrap(),
                &offsets,
                heads,
                head_dim,
            )
            .unwrap();
        let got = gpu.download(&out).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-4, "[{i}]: {g} vs {w}");
        }
    }
}
