use super::*;

fn minimal() -> Snapshot {
    Snapshot {
        format: FORMAT.into(),
        version: VERSION,
        vmm_version: "test".into(),
        host: Host::this(),
        machine: Machine {
            cpus: 1,
            memory: 16 << 20,
            kernel: "k".into(),
            cmdline: String::new(),
            acpi: true,
            irqchip: "kernel".into(),
            mmio_console: false,
            transport: "mmio".into(),
            disks: Vec::new(),
            nets: Vec::new(),
            virtio_console: false,
        },
        memory: vec![MemoryRegion {
            gpa: 0,
            size: 16 << 20,
            offset: 0,
        }],
        arch: ArchState::X86_64 {
            vm: Default::default(),
            vcpus: vec![Default::default()],
        },
        devices: Default::default(),
    }
}

#[test]
fn a_written_state_parses_back() {
    let s = minimal();
    let bytes = serde_json::to_vec(&s).unwrap();
    let back = parse(&bytes).unwrap();
    assert_eq!(back.machine, s.machine);
    assert_eq!(back.memory, s.memory);
    assert_eq!(back.arch, s.arch);
}

#[test]
fn parts_that_disagree_are_corrupt() {
    let mut s = minimal();
    s.memory[0].size = 8 << 20;
    let e = parse(&serde_json::to_vec(&s).unwrap()).unwrap_err();
    assert!(e.to_string().contains("memory regions hold"), "{e}");
    let mut s = minimal();
    s.memory[0].offset = 4096;
    assert!(parse(&serde_json::to_vec(&s).unwrap()).is_err());
    let mut s = minimal();
    s.memory[0].size = u64::MAX - 4095;
    s.memory[0].offset = 0;
    assert!(parse(&serde_json::to_vec(&s).unwrap()).is_err());
    let mut s = minimal();
    s.machine.irqchip = "elsewhere".into();
    assert!(parse(&serde_json::to_vec(&s).unwrap()).is_err());
    let mut s = minimal();
    s.machine.virtio_console = true;
    let e = parse(&serde_json::to_vec(&s).unwrap()).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 virtio devices in the machine, 0 saved"),
        "{e}"
    );
}

#[test]
fn a_version_1_state_without_the_virtio_fields_still_parses() {
    let mut v = serde_json::to_value(minimal()).unwrap();
    v["version"] = 1.into();
    for f in ["transport", "disks", "nets", "virtio_console"] {
        v["machine"].as_object_mut().unwrap().remove(f);
    }
    v["devices"].as_object_mut().unwrap().remove("virtio");
    let s = parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(s.machine.transport, "mmio");
    assert!(s.devices.virtio.is_empty());
}

#[test]
fn unknown_fields_and_versions_are_refused() {
    let mut v = serde_json::to_value(minimal()).unwrap();
    v["extra"] = 1.into();
    let e = parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    v["version"] = 0.into();
    let e = parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, SnapshotError::Version { found: 0 }), "{e}");
    for bad in [&b""[..], b"[]", b"null", b"{\"format\": 3}", b"\xff"] {
        assert!(parse(bad).is_err());
    }
}
