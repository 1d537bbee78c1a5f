//! Helpers for running one test body on every device of the machine.
//!
//! `KILN_TEST_REQUIRE` (comma-separated backends, e.g. `wgpu` in CI) turns a
//! missing backend from a skip into a test failure, so CI cannot go green by
//! silently running on the CPU alone.

use crate::backend::Device;
use crate::backend::discover;
use crate::device::{BackendKind, DeviceRequest};

/// The backends `KILN_TEST_REQUIRE` names.
pub fn required_backends() -> Vec<BackendKind> {
    std::env::var("KILN_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.parse::<DeviceRequest>() {
            Ok(DeviceRequest::Backend(b, _)) => b,
            _ => panic!("KILN_TEST_REQUIRE: unknown backend '{s}'"),
        })
        .collect()
}

/// One open device per backend present: the CPU always, the first wgpu
/// adapter (software ones included: lavapipe is how CI tests WGSL) and the
/// first CUDA GPU. Panics, failing the test, when a required backend is
/// missing; prints a line for each backend skipped.
pub fn devices_under_test() -> Vec<Device> {
    let discovery = discover();
    let required = required_backends();
    let mut devices = Vec::new();
    for backend in [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda] {
        match DeviceRequest::Backend(backend, None).resolve(&discovery) {
            Ok(info) => match Device::open_info(info) {
                Ok(device) => devices.push(device),
                Err(e) if required.contains(&backend) => {
                    panic!("KILN_TEST_REQUIRE names {backend}, but it failed to open: {e}")
                }
                Err(e) => eprintln!("skipping {backend}: {e}"),
            },
            Err(e) if required.contains(&backend) => {
                panic!("KILN_TEST_REQUIRE names {backend}, but it is missing: {e}")
            }
            Err(e) => eprintln!("skipping {backend}: {e}"),
        }
    }
    devices
}
