//! Device discovery on the machine the tests run on.

use kiln_kernels::testing::required_backends;
use kiln_kernels::{BackendKind, DeviceRequest, DeviceType, discover};

#[test]
fn discovery_always_lists_the_cpu_and_explains_absences() {
    let d = discover();
    let cpu: Vec<_> = d.of(BackendKind::Cpu).collect();
    assert_eq!(cpu.len(), 1);
    assert_eq!(cpu[0].device_type, DeviceType::Cpu);
    assert!(!cpu[0].name.is_empty());
    for backend in [BackendKind::Cuda, BackendKind::Wgpu] {
        let found = d.of(backend).count();
        match d.absence(backend) {
            Some(reason) => {
                assert_eq!(found, 0, "{backend} both found and absent");
                assert!(!reason.is_empty());
            }
            None => assert!(found > 0, "{backend}: neither found nor explained"),
        }
    }
}

#[test]
fn required_backends_are_discovered() {
    let d = discover();
    for backend in required_backends() {
        assert!(
            d.of(backend).next().is_some(),
            "KILN_TEST_REQUIRE names {backend}, but discovery says: {:?}",
            d.absence(backend)
        );
    }
}

#[test]
fn without_libcuda_cuda_is_absent_not_a_panic() {
    if kiln_kernels::cuda_backend::driver_present() {
        return; // a machine with a GPU driver: nothing to check here
    }
    let d = discover();
    let reason = d.absence(BackendKind::Cuda).expect("cuda must be absent");
    assert!(reason.contains("libcuda"), "{reason}");
    let err = DeviceRequest::Backend(BackendKind::Cuda, None)
        .resolve(&d)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cuda device not available: libcuda not found"),
        "{err}"
    );
}

#[test]
fn auto_never_resolves_to_a_software_adapter() {
    let d = discover();
    let picked = DeviceRequest::Auto.resolve(&d).unwrap();
    assert!(
        !(picked.backend == BackendKind::Wgpu && picked.device_type == DeviceType::Cpu),
        "auto picked {picked:?}"
    );
}
