//! `kiln devices` on the machine the tests run on.

use kiln_kernels::testing::required_backends;
use kiln_kernels::{BackendKind, discover};

use crate::common::*;

#[test]
fn lists_every_device_and_every_absence() {
    let out = ok(&["devices", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let devices = doc["devices"].as_array().unwrap();
    let discovery = discover();
    assert_eq!(devices.len(), discovery.devices.len());
    assert!(devices.iter().any(|d| d["backend"] == "cpu"
        && d["type"] == "cpu"
        && d["memory_bytes"].as_u64().unwrap() > 0));
    for backend in [BackendKind::Cuda, BackendKind::Wgpu] {
        let listed = devices.iter().any(|d| d["backend"] == backend.name());
        let absent =
            doc["absent"].as_array().unwrap().iter().any(|a| {
                a["backend"] == backend.name() && !a["reason"].as_str().unwrap().is_empty()
            });
        assert!(
            listed != absent,
            "{backend}: listed={listed} absent={absent}"
        );
    }
    if !kiln_kernels::cuda_backend::driver_present() {
        let table = ok(&["devices"]);
        assert!(
            table.contains("cuda: not available: libcuda not found"),
            "{table}"
        );
    }
    if required_backends().contains(&BackendKind::Wgpu) {
        // In CI: lavapipe shows as a wgpu adapter of type cpu.
        assert!(
            devices.iter().any(|d| d["backend"] == "wgpu"),
            "no wgpu adapter listed: {out}"
        );
    }
}

#[test]
fn a_named_device_must_exist() {
    let r = run(kiln().args(["--device", "wgpu:99", "devices"]));
    assert_one_line_error(&r, &["wgpu"]);
    ok(&["--device", "cpu", "devices"]);
}
