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
            irqchip: None,
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
    // The userspace irqchip's state comes with that mode, and only with it.
    let mut s = minimal();
    s.machine.irqchip = "userspace".into();
    let e = parse(&serde_json::to_vec(&s).unwrap()).unwrap_err();
    assert!(e.to_string().contains("userspace irqchip without"), "{e}");
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

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vibe-snapshot-unit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; creates a FIFO.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs `f` on another thread; fails the test instead of hanging it.
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(5))
        .expect("blocked on a FIFO in the snapshot directory")
}

#[test]
fn fifos_in_a_snapshot_directory_are_refused_not_waited_on() {
    let dir = temp_dir("fifo");
    mkfifo(&dir.join(STATE_FILE));
    let d = dir.clone();
    let e = within_seconds(move || load(&d).unwrap_err().to_string());
    assert!(e.contains("not a plain file"), "{e}");
    let memory = dir.join(MEMORY_FILE);
    mkfifo(&memory);
    let regions = minimal().memory;
    let e = within_seconds(move || {
        memory::map(&memory, &regions, MemoryMode::Copy)
            .err()
            .unwrap()
            .to_string()
    });
    assert!(e.contains("not a plain file"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_link_planted_as_the_memory_file_is_replaced_not_written_through() {
    let dir = temp_dir("link");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let path = dir.join(MEMORY_FILE);
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 8192)]).unwrap();
    vm_memory::Bytes::write_slice(&mem, &[7; 16], vm_memory::GuestAddress(0)).unwrap();
    memory::write(&mem, &path).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!path.symlink_metadata().unwrap().is_symlink());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
    // A hard link likewise.
    std::fs::remove_file(&path).unwrap();
    std::fs::hard_link(&victim, &path).unwrap();
    memory::write(&mem, &path).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let _ = std::fs::remove_dir_all(dir);
}
