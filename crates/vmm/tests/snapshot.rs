//! Snapshots on real KVM: a guest paused mid-run, saved, and resumed in a fresh VM goes on
//! from where it stopped and ends with the result of a run left alone; a snapshot of an
//! unpaused VM, of an old format, of another host or with corrupt state is a clear error.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::tap::{ETHERTYPE, GUEST_MAC};
use common::{config, kvm, run_with_limit, Capture};
use hypervisor::kvm::KvmVm;
use vm_memory::{Bytes, GuestAddress};
use vmm::snapshot::{MemoryMode, RestoreConfig, SnapshotError};
use vmm::{Outcome, SerialOutput, Vm};

fn snapshot_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vibe-snapshot-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn counter(vm: &Vm<KvmVm>) -> u64 {
    vm.memory()
        .read_obj::<u64>(GuestAddress(test_guests::SNAPSHOT_COUNTER))
        .unwrap()
}

/// The `result <hash>` line of a run's output.
fn result(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.starts_with("result "))
        .map(|l| l.trim().to_string())
}

/// Boots the snapshot guest, lets it get past `progress` loop iterations, pauses it and
/// writes a snapshot to `dir`; returns the output so far and the counter when paused.
fn take(
    kvm: &hypervisor::kvm::Kvm,
    dir: &std::path::Path,
    progress: u64,
    irqchip: vmm::IrqchipMode,
) -> (String, u64) {
    let out = Capture::default();
    let mut c = config(test_guests::SNAPSHOT, 1, &out);
    c.irqchip = irqchip;
    let mut vm = Vm::new(kvm, c).unwrap();
    vm.start().unwrap();
    let t0 = Instant::now();
    while counter(&vm) < progress {
        assert!(t0.elapsed() < Duration::from_secs(60), "guest stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = vm.controller().unwrap();
    c.pause().unwrap();
    let at = counter(&vm);
    c.snapshot(dir).unwrap();
    assert_eq!(counter(&vm), at, "the guest ran while being saved");
    c.stop(Outcome::Stopped("snapshot taken".into())).unwrap();
    vm.wait();
    (out.text(), at)
}

fn restore(
    kvm: &hypervisor::kvm::Kvm,
    dir: &std::path::Path,
    mode: MemoryMode,
) -> (Outcome, String) {
    let out = Capture::default();
    let mut rc = RestoreConfig::new(dir);
    rc.serial = SerialOutput::Writer(Box::new(out.clone()));
    rc.memory = mode;
    let vm = Vm::restore(kvm, rc).unwrap();
    (run_with_limit(vm, Duration::from_secs(60)), out.text())
}

#[test]
fn a_restored_guest_goes_on_and_ends_as_an_uninterrupted_one() {
    goes_on(vmm::IrqchipMode::Kernel);
}

#[test]
fn a_restored_guest_goes_on_with_the_userspace_irqchip() {
    goes_on(vmm::IrqchipMode::Userspace);
}

/// The counting guest, its LAPIC timer ticking, snapshotted mid-loop and restored twice (one
/// memory mode each), ends with an uninterrupted run's result.
fn goes_on(irqchip: vmm::IrqchipMode) {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::SNAPSHOT, 1, &out);
    c.irqchip = irqchip;
    let whole = run_with_limit(Vm::new(&kvm, c).unwrap(), Duration::from_secs(60));
    assert_eq!(whole, Outcome::DebugExit(0), "{}", out.text());
    let expected = result(&out.text()).expect("uninterrupted run printed a result");

    let dir = snapshot_dir(&format!("continue-{irqchip:?}"));
    let (before, at) = take(&kvm, &dir, 50_000, irqchip);
    assert!(
        before.contains("started") && result(&before).is_none(),
        "{before}"
    );
    assert!(dir.join("state.json").is_file() && dir.join("memory").is_file());

    for mode in [MemoryMode::Private, MemoryMode::Copy] {
        let t0 = Instant::now();
        let (outcome, after) = restore(&kvm, &dir, mode);
        assert_eq!(outcome, Outcome::DebugExit(0), "{mode:?}: {after}");
        // It went on: no second start, and the same result as the run left alone.
        assert!(!after.contains("started"), "{mode:?} restarted: {after}");
        assert_eq!(
            result(&after).as_deref(),
            Some(expected.as_str()),
            "{mode:?}"
        );
        eprintln!(
            "{mode:?}: restored at iteration {at} and ran to the end in {:?}",
            t0.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn snapshot_needs_a_paused_vm_and_a_fresh_directory() {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut vm = Vm::new(&kvm, config(test_guests::SNAPSHOT, 1, &out)).unwrap();
    vm.start().unwrap();
    let dir = snapshot_dir("refused");
    let c = vm.controller().unwrap();
    assert!(matches!(c.snapshot(&dir), Err(SnapshotError::NotPaused)));
    assert!(!dir.exists(), "a refused snapshot left a directory");
    c.pause().unwrap();
    c.snapshot(&dir).unwrap();
    let again = c.snapshot(&dir).unwrap_err();
    assert!(matches!(again, SnapshotError::Exists { .. }), "{again}");
    c.stop(Outcome::Stopped("done".into())).unwrap();
    vm.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// A destination someone else prepared, with links where the snapshot's files go: the
/// files they point to are left alone, and the snapshot is whole.
#[test]
fn links_planted_in_the_destination_are_not_written_through() {
    let Some(kvm) = kvm() else { return };
    let dir = snapshot_dir("planted");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.with_extension("victim");
    std::fs::write(&victim, b"precious").unwrap();
    for name in ["memory", ".state.json.tmp"] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    let out = Capture::default();
    let mut vm = Vm::new(&kvm, config(test_guests::SNAPSHOT, 1, &out)).unwrap();
    vm.start().unwrap();
    let c = vm.controller().unwrap();
    c.pause().unwrap();
    c.snapshot(&dir).unwrap();
    c.stop(Outcome::Stopped("done".into())).unwrap();
    vm.wait();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    vmm::snapshot::load(&dir).unwrap();
    assert!(!dir.join("memory").symlink_metadata().unwrap().is_symlink());
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(victim);
}

/// Edits a JSON document in place.
fn json(s: &mut Vec<u8>, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(s).unwrap();
    f(&mut v);
    *s = serde_json::to_vec(&v).unwrap();
}

/// Rewrites `state.json` in a copy of a snapshot with `edit` and returns the restore error.
fn restore_error(
    kvm: &hypervisor::kvm::Kvm,
    src: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> String {
    let dir = snapshot_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = std::fs::read(src.join("state.json")).unwrap();
    edit(&mut state);
    std::fs::write(dir.join("state.json"), state).unwrap();
    std::fs::copy(src.join("memory"), dir.join("memory")).unwrap();
    let mut rc = RestoreConfig::new(&dir);
    rc.serial = SerialOutput::None;
    let e = match Vm::restore(kvm, rc) {
        Ok(_) => panic!("{name}: restored"),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_dir_all(dir);
    e
}

#[test]
fn bad_snapshots_are_clear_errors() {
    let Some(kvm) = kvm() else { return };
    let src = snapshot_dir("bad-src");
    take(&kvm, &src, 1, vmm::IrqchipMode::Kernel);
    let cases: Vec<(&str, String)> = vec![
        (
            "version",
            restore_error(&kvm, &src, "version", |s| {
                json(s, |v| v["version"] = 99.into())
            }),
        ),
        (
            "host",
            restore_error(&kvm, &src, "host", |s| {
                json(s, |v| v["host"]["cpu_vendor"] = "SomeOtherCPU".into())
            }),
        ),
        (
            "truncated",
            restore_error(&kvm, &src, "truncated", |s| s.truncate(s.len() / 2)),
        ),
        (
            "not json",
            restore_error(&kvm, &src, "garbage", |s| *s = b"\x00\xffgarbage".to_vec()),
        ),
        (
            "foreign",
            restore_error(&kvm, &src, "foreign", |s| *s = b"{\"a\": 1}".to_vec()),
        ),
        (
            "vcpus",
            restore_error(&kvm, &src, "vcpus", |s| {
                json(s, |v| v["machine"]["cpus"] = 2.into())
            }),
        ),
        (
            // Consistent, but more RAM than this host has: refused as `run --memory` is,
            // before the (short) memory file is mapped.
            "memory",
            restore_error(&kvm, &src, "memory", |s| {
                json(s, |v| {
                    let size = 1u64 << 50;
                    v["machine"]["memory"] = size.into();
                    let mut offset = 0;
                    let regions: Vec<serde_json::Value> = arch::x86_64::layout::ram_ranges(size)
                        .into_iter()
                        .map(|(gpa, size)| {
                            let r = serde_json::json!({"gpa": gpa, "size": size, "offset": offset});
                            offset += size;
                            r
                        })
                        .collect();
                    v["memory"] = regions.into();
                })
            }),
        ),
        (
            "xsave",
            restore_error(&kvm, &src, "xsave", |s| {
                json(s, |v| {
                    v["arch"]["x86_64"]["vcpus"][0]["xsave"] = "00".into()
                })
            }),
        ),
    ];
    let expect = [
        (
            "version",
            "format version 99; this vibe-vmm reads versions 1 to 3",
        ),
        ("host", "another kind of host"),
        ("truncated", "corrupt"),
        ("not json", "corrupt"),
        ("foreign", "not a vibe-vmm snapshot"),
        ("vcpus", "2 vCPUs in the machine, 1 saved"),
        ("memory", "more than this host has"),
        ("xsave", "XSAVE area"),
    ];
    for ((name, got), (_, want)) in cases.iter().zip(expect) {
        assert!(got.contains(want), "{name}: {got:?} does not say {want:?}");
    }
    // A memory file shorter than the regions.
    let dir = snapshot_dir("short-memory");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("state.json"), dir.join("state.json")).unwrap();
    std::fs::write(dir.join("memory"), [1u8; 4096]).unwrap();
    let e = Vm::restore(&kvm, RestoreConfig::new(&dir))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("the regions need"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(src);
}

/// Restore time (snapshot read, memory mapped, machine built, vCPUs started) for 128 MiB and
/// 2 GiB guests, against building the same guest cold. Run by hand: it writes a 2 GiB
/// (sparse) file. `cargo test -p vmm --test snapshot -- --ignored --nocapture`
#[test]
#[ignore]
fn restore_time_does_not_grow_with_ram() {
    let Some(kvm) = kvm() else { return };
    let mut times = Vec::new();
    for mib in [128u64, 2048] {
        let dir = snapshot_dir(&format!("bench-{mib}"));
        let out = Capture::default();
        let mut c = config(test_guests::SNAPSHOT, 1, &out);
        c.memory = mib << 20;
        let t0 = Instant::now();
        let mut vm = Vm::new(&kvm, c).unwrap();
        vm.start().unwrap();
        let cold = t0.elapsed();
        while counter(&vm) < 1000 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let ctl = vm.controller().unwrap();
        ctl.pause().unwrap();
        let t0 = Instant::now();
        ctl.snapshot(&dir).unwrap();
        let save = t0.elapsed();
        ctl.stop(Outcome::Stopped("saved".into())).unwrap();
        vm.wait();
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let mut rc = RestoreConfig::new(&dir);
            rc.serial = SerialOutput::None;
            let t0 = Instant::now();
            let mut vm = Vm::restore(&kvm, rc).unwrap();
            vm.start().unwrap();
            best = best.min(t0.elapsed());
            vm.stop_handle().stop(Outcome::Stopped("measured".into()));
            vm.wait();
        }
        eprintln!(
            "{mib} MiB: cold create+start {cold:?}, snapshot {save:?}, restore+start {best:?} \
             (ratio restore/cold {:.2})",
            best.as_secs_f64() / cold.as_secs_f64()
        );
        times.push(best);
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        times[1] < times[0] * 4 + Duration::from_millis(20),
        "restore grew with RAM: {times:?}"
    );
}

fn read_u64(vm: &Vm<KvmVm>, addr: u64) -> u64 {
    vm.memory().read_obj::<u64>(GuestAddress(addr)).unwrap()
}

/// Waits (at most 60 s) until the 2-vCPU guest stops at gate `phase`.
fn wait_phase(vm: &Vm<KvmVm>, phase: u64, out: &Capture) {
    let t0 = Instant::now();
    while read_u64(vm, test_guests::SNAPSHOT_SMP_PHASE) < phase {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "guest never reached gate {phase}: {}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn open_gate(vm: &Vm<KvmVm>, gate: u64) {
    vm.memory()
        .write_obj(gate, GuestAddress(test_guests::SNAPSHOT_SMP_GATE))
        .unwrap();
}

/// Runs a built (or restored) gated guest through its gates (1 to `last`) from `gate` on and
/// returns how it ended.
fn finish_gated(mut vm: Vm<KvmVm>, gate: u64, last: u64, out: &Capture) -> Outcome {
    if gate <= 1 {
        open_gate(&vm, 1);
    }
    vm.start().unwrap();
    if gate <= 2 && last >= 2 {
        wait_phase(&vm, 2, out);
        open_gate(&vm, 2);
    }
    let stop = vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    vm.wait()
}

/// Two snapshots of a 2-vCPU guest, one with vCPU 1 waiting for its STARTUP IPI and one with
/// it halted after its work, each restored in a fresh VM, end with an uninterrupted run's
/// result.
fn two_vcpus(irqchip: vmm::IrqchipMode) {
    let Some(kvm) = kvm() else { return };
    let smp = |out: &Capture| {
        let mut c = config(test_guests::SNAPSHOT_SMP, 2, out);
        c.irqchip = irqchip;
        c
    };
    let out = Capture::default();
    let whole = finish_gated(Vm::new(&kvm, smp(&out)).unwrap(), 0, 2, &out);
    assert_eq!(whole, Outcome::DebugExit(0), "{}", out.text());
    let expected = result(&out.text()).expect("uninterrupted run printed a result");

    let (at_sipi, halted) = (
        snapshot_dir(&format!("smp-sipi-{irqchip:?}")),
        snapshot_dir(&format!("smp-halted-{irqchip:?}")),
    );
    let out = Capture::default();
    let mut vm = Vm::new(&kvm, smp(&out)).unwrap();
    vm.start().unwrap();
    let c = vm.controller().unwrap();
    wait_phase(&vm, 1, &out);
    c.pause().unwrap();
    c.snapshot(&at_sipi).unwrap();
    c.resume().unwrap();
    open_gate(&vm, 1);
    wait_phase(&vm, 2, &out);
    c.pause().unwrap();
    c.snapshot(&halted).unwrap();
    c.stop(Outcome::Stopped("snapshots taken".into())).unwrap();
    vm.wait();

    for (dir, gate) in [(&at_sipi, 1), (&halted, 2)] {
        let out = Capture::default();
        let mut rc = RestoreConfig::new(dir);
        rc.serial = SerialOutput::Writer(Box::new(out.clone()));
        let vm = Vm::restore(&kvm, rc).unwrap();
        let outcome = finish_gated(vm, gate, 2, &out);
        assert_eq!(
            outcome,
            Outcome::DebugExit(0),
            "gate {gate}: {}",
            out.text()
        );
        assert!(!out.text().contains("started"), "restarted: {}", out.text());
        assert_eq!(
            result(&out.text()).as_deref(),
            Some(expected.as_str()),
            "gate {gate}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn two_vcpus_waiting_for_startup_and_halted_go_on() {
    two_vcpus(vmm::IrqchipMode::Kernel);
}

#[test]
fn two_vcpus_go_on_with_the_userspace_irqchip() {
    two_vcpus(vmm::IrqchipMode::Userspace);
}

/// The PIT guest (the userspace irqchip's PIT, no ACPI) snapshotted between its ticks: the
/// restored PIT goes on ticking, and the guest counts its 10 and ends as a run left alone.
#[test]
fn the_userspace_pit_ticks_on_after_restore() {
    let Some(kvm) = kvm() else { return };
    let pit = |out: &Capture| {
        let mut c = config(test_guests::PIT, 1, out);
        c.irqchip = vmm::IrqchipMode::Userspace;
        c.acpi = false;
        c
    };
    let ticks = |vm: &Vm<KvmVm>| {
        vm.memory()
            .read_obj::<u32>(GuestAddress(test_guests::PIT_TICKS))
            .unwrap()
    };
    let dir = snapshot_dir("pit");
    let out = Capture::default();
    let mut vm = Vm::new(&kvm, pit(&out)).unwrap();
    vm.start().unwrap();
    let t0 = Instant::now();
    while ticks(&vm) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no PIT ticks");
        std::thread::sleep(Duration::from_millis(1));
    }
    let c = vm.controller().unwrap();
    c.pause().unwrap();
    let at = ticks(&vm);
    c.snapshot(&dir).unwrap();
    c.stop(Outcome::Stopped("snapshot taken".into())).unwrap();
    vm.wait();
    assert!(at < 10, "snapshot after the guest's last tick ({at})");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let saved_pit = &state["arch"]["x86_64"]["irqchip"]["pit"];
    assert_eq!(saved_pit["channels"][0]["mode"], 2, "{saved_pit}");

    let (outcome, after) = restore(&kvm, &dir, MemoryMode::Private);
    assert_eq!(outcome, Outcome::DebugExit(0), "{after}");
    assert!(after.contains("PIT ticks: 10"), "{after}");
    assert!(!out.text().contains("PIT ticks"), "{}", out.text());
    let _ = std::fs::remove_dir_all(dir);
}

/// A virtio-blk guest (with an idle virtio-console beside it) snapshotted between two
/// requests on the same queue, and restored on a copy of its disk: the queue goes on where
/// it stood, the request after the restore reaches the copy, and the result equals an
/// uninterrupted run's.
#[test]
fn virtio_blk_goes_on_after_restore_on_a_new_disk_path() {
    let Some(kvm) = kvm() else { return };
    let dir = snapshot_dir("blk");
    std::fs::create_dir_all(&dir).unwrap();
    let blk = |out: &Capture, disk: &std::path::Path| {
        let disk_image = vec![0u8; 4096];
        std::fs::write(disk, disk_image).unwrap();
        let mut c = config(test_guests::SNAPSHOT_BLK, 1, out);
        c.disks = vec![vmm::DiskConfig {
            path: disk.into(),
            read_only: false,
        }];
        c.virtio_console = Some(SerialOutput::None);
        c
    };
    let out = Capture::default();
    let whole = finish_gated(
        Vm::new(&kvm, blk(&out, &dir.join("whole.img"))).unwrap(),
        0,
        1,
        &out,
    );
    assert_eq!(whole, Outcome::DebugExit(0), "{}", out.text());
    let expected = result(&out.text()).expect("uninterrupted run printed a result");

    let disk = dir.join("disk.img");
    let snap = dir.join("snap");
    let out = Capture::default();
    let mut vm = Vm::new(&kvm, blk(&out, &disk)).unwrap();
    vm.start().unwrap();
    let c = vm.controller().unwrap();
    wait_phase(&vm, 1, &out);
    c.pause().unwrap();
    c.snapshot(&snap).unwrap();
    c.stop(Outcome::Stopped("snapshot taken".into())).unwrap();
    vm.wait();
    // The queue is saved with the one request it served, the console idle beside it.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("state.json")).unwrap()).unwrap();
    let virtio = &state["devices"]["virtio"];
    let q = &virtio[0]["mmio"]["device"]["queues"][0];
    assert_eq!(
        (q["next_avail"].as_u64(), q["next_used"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(virtio[1]["mmio"]["device"]["device_type"], 3);
    // The disk as it was at the snapshot goes with it, under a new name.
    let copy = dir.join("copy.img");
    std::fs::copy(&disk, &copy).unwrap();

    let out = Capture::default();
    let mut rc = RestoreConfig::new(&snap);
    rc.serial = SerialOutput::Writer(Box::new(out.clone()));
    rc.virtio_console = SerialOutput::None;
    rc.disks = vec![copy.clone()];
    let vm = Vm::restore(&kvm, rc).unwrap();
    let outcome = finish_gated(vm, 1, 1, &out);
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    assert_eq!(result(&out.text()).as_deref(), Some(expected.as_str()));
    let sector6 = |p: &std::path::Path| std::fs::read(p).unwrap()[6 * 512..7 * 512].to_vec();
    assert_eq!(
        sector6(&copy)[1],
        7,
        "the restored VM wrote to the new path"
    );
    assert_eq!(sector6(&disk)[1], 0, "and not to the old one");

    // A disk of another size is refused with both sizes named.
    std::fs::write(&copy, vec![0u8; 8192]).unwrap();
    let mut rc = RestoreConfig::new(&snap);
    rc.serial = SerialOutput::None;
    rc.virtio_console = SerialOutput::None;
    rc.disks = vec![copy];
    let e = Vm::restore(&kvm, rc).err().unwrap().to_string();
    assert!(e.contains("was 8 sectors, it is now 16"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// virtio-blk on virtio-pci with MSI-X, snapshotted between its flush and its read (queue,
/// MSI-X table and vectors programmed, the BAR placed): the restored function answers at its
/// BAR, the read completes with its MSI-X interrupt, and the output equals a run left alone.
#[test]
fn virtio_blk_over_pci_goes_on_after_restore() {
    let Some(kvm) = kvm() else { return };
    for irqchip in [vmm::IrqchipMode::Kernel, vmm::IrqchipMode::Userspace] {
        let dir = snapshot_dir(&format!("pci-blk-{irqchip:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let blk = |out: &Capture, disk: &std::path::Path| {
            std::fs::write(disk, vec![0u8; 64 * 512]).unwrap();
            let mut c = config(test_guests::PCI_VIRTIO_BLK, 1, out);
            c.transport = vmm::Transport::Pci;
            c.irqchip = irqchip;
            c.disks = vec![vmm::DiskConfig {
                path: disk.into(),
                read_only: false,
            }];
            c
        };
        let arm = |vm: &Vm<KvmVm>| {
            vm.memory()
                .write_obj(1u64, GuestAddress(test_guests::PCI_VIRTIO_BLK_ARMED))
                .unwrap()
        };
        let out = Capture::default();
        let vm = Vm::new(&kvm, blk(&out, &dir.join("whole.img"))).unwrap();
        arm(&vm);
        let whole = finish_gated(vm, 0, 1, &out);
        assert_eq!(whole, Outcome::DebugExit(0), "{}", out.text());
        let expected = out.text();
        assert!(expected.contains("msi-x interrupts"), "{expected}");

        let snap = dir.join("snap");
        let out = Capture::default();
        let mut vm = Vm::new(&kvm, blk(&out, &dir.join("disk.img"))).unwrap();
        arm(&vm);
        vm.start().unwrap();
        let c = vm.controller().unwrap();
        wait_phase(&vm, 1, &out);
        c.pause().unwrap();
        c.snapshot(&snap).unwrap();
        c.stop(Outcome::Stopped("snapshot taken".into())).unwrap();
        vm.wait();
        let before = out.text();
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(snap.join("state.json")).unwrap()).unwrap();
        let pci = &state["devices"]["virtio"][0]["pci"];
        assert_eq!(pci["queue_vectors"][0], 1, "{irqchip:?}: {pci}");

        let out = Capture::default();
        let mut rc = RestoreConfig::new(&snap);
        rc.serial = SerialOutput::Writer(Box::new(out.clone()));
        let vm = Vm::restore(&kvm, rc).unwrap();
        let outcome = finish_gated(vm, 1, 1, &out);
        assert_eq!(
            outcome,
            Outcome::DebugExit(0),
            "{irqchip:?}: {}",
            out.text()
        );
        assert_eq!(
            format!("{before}{}", out.text()),
            expected,
            "{irqchip:?}: the two halves print what the whole run did"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The test's end of a guest's socket-backed link (`--net socket=PATH`): a Unix datagram
/// socket bound at `path`, and where vibe-vmm binds its own end.
struct NetPeer {
    socket: UnixDatagram,
    path: PathBuf,
    vmm_end: PathBuf,
}

impl NetPeer {
    fn bind(dir: &std::path::Path, name: &str) -> NetPeer {
        let path = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        NetPeer {
            socket: UnixDatagram::bind(&path).unwrap(),
            vmm_end: dir.join(format!("{name}-vmm.sock")),
            path,
        }
    }

    fn config(&self) -> vmm::NetConfig {
        vmm::NetConfig {
            backend: vmm::NetBackendConfig::Socket {
                path: self.path.clone(),
                local: Some(self.vmm_end.clone()),
            },
            mac: None,
        }
    }

    /// The next frame the guest sent, within 30 s.
    fn recv(&self) -> Vec<u8> {
        self.socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let n = self.socket.recv(&mut buf).expect("no frame from the guest");
        buf.truncate(n);
        buf
    }

    /// Fails if a frame is waiting.
    fn assert_quiet(&self, when: &str) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let got = self.socket.recv(&mut buf);
        self.socket.set_nonblocking(false).unwrap();
        assert!(
            got.is_err(),
            "{when}: an extra frame {:?}",
            got.map(|n| &buf[..n])
        );
    }

    /// One exchange of [`test_guests::SNAPSHOT_NET`]: its `guest frame <round>` arrives (a
    /// whole Ethernet frame, the virtio-net header taken off), `host frame <round>` goes back
    /// and the guest prints it.
    fn exchange(&self, round: u8, out: &Capture) {
        self.expect_frame(round);
        self.reply(round, out);
    }

    /// `guest frame <round>` arrives: a whole Ethernet frame, the virtio-net header taken off.
    fn expect_frame(&self, round: u8) {
        let frame = self.recv();
        assert_eq!(frame.len(), 60, "round {round}: {frame:?}");
        assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
        assert_eq!(&frame[6..12], &GUEST_MAC, "the default MAC");
        assert_eq!(&frame[12..14], &ETHERTYPE.to_be_bytes());
        let payload = format!("guest frame {round}");
        assert_eq!(&frame[14..14 + payload.len()], payload.as_bytes());
        assert!(frame[14 + payload.len()..].iter().all(|&b| b == 0));
    }

    /// Sends `host frame <round>` and waits until the guest printed it.
    fn reply(&self, round: u8, out: &Capture) {
        let text = format!("host frame {round}");
        let mut reply = vec![0u8; 60];
        reply[..6].copy_from_slice(&GUEST_MAC);
        reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        reply[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        reply[14..14 + text.len()].copy_from_slice(text.as_bytes());
        self.socket.send_to(&reply, &self.vmm_end).unwrap();
        let want = format!("received: {text}\r\n");
        let t0 = Instant::now();
        while !out.text().contains(&want) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: the guest never printed its frame: {}",
                out.text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits (at most 60 s) for a started VM's end.
fn wait_with_limit(vm: Vm<KvmVm>) -> Outcome {
    let stop = vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    vm.wait()
}

/// A virtio-net guest on the socket back end, snapshotted between two exchanges of a frame
/// each way (both queues idle, their indices at 1): restored once on the saved socket paths
/// and once on new ones (`RestoreConfig::nets`), each time the second exchange reaches the
/// right peer with the right frame, nothing else crosses, and the two halves print what an
/// uninterrupted run does. On both irqchips (the guest polls: they only have to come back).
#[test]
fn virtio_net_goes_on_after_restore_on_its_socket() {
    let Some(kvm) = kvm() else { return };
    for irqchip in [vmm::IrqchipMode::Kernel, vmm::IrqchipMode::Userspace] {
        let dir = snapshot_dir(&format!("net-{irqchip:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        let net = |out: &Capture, peer: &NetPeer| {
            let mut c = config(test_guests::SNAPSHOT_NET, 1, out);
            c.irqchip = irqchip;
            c.nets = vec![peer.config()];
            c
        };

        // Uninterrupted.
        let peer = NetPeer::bind(&dir, "whole");
        let out = Capture::default();
        let mut vm = Vm::new(&kvm, net(&out, &peer)).unwrap();
        vm.start().unwrap();
        peer.exchange(1, &out);
        wait_phase(&vm, 1, &out);
        open_gate(&vm, 1);
        peer.exchange(2, &out);
        assert_eq!(wait_with_limit(vm), Outcome::DebugExit(0), "{}", out.text());
        peer.assert_quiet("uninterrupted");
        let expected = out.text();
        assert!(expected.ends_with("result rx 2 tx 2\r\n"), "{expected}");

        // Split by a snapshot after the first exchange (both queues idle), and by a second
        // one after the guest's second frame went out, its receive buffer posted and the guest
        // waiting for the host's answer.
        let peer = NetPeer::bind(&dir, "peer");
        let (idle, waiting) = (dir.join("idle"), dir.join("waiting"));
        let out = Capture::default();
        let mut vm = Vm::new(&kvm, net(&out, &peer)).unwrap();
        vm.start().unwrap();
        peer.exchange(1, &out);
        wait_phase(&vm, 1, &out);
        let c = vm.controller().unwrap();
        c.pause().unwrap();
        c.snapshot(&idle).unwrap();
        let at_idle = out.text();
        c.resume().unwrap();
        open_gate(&vm, 1);
        peer.expect_frame(2);
        c.pause().unwrap();
        c.snapshot(&waiting).unwrap();
        c.stop(Outcome::Stopped("snapshots taken".into())).unwrap();
        vm.wait();
        drop(c); // the last hold on the devices: the socket's end goes with it
        let at_waiting = out.text();
        for before in [&at_idle, &at_waiting] {
            assert!(
                before.contains("received: host frame 1\r\n") && !before.contains("result"),
                "{before}"
            );
        }
        peer.assert_quiet("at the snapshots");
        assert!(!peer.vmm_end.exists(), "the stopped VM removed its end");
        let queues = |snap: &std::path::Path| {
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(snap.join("state.json")).unwrap()).unwrap();
            assert_eq!(
                state["machine"]["nets"][0]["socket"],
                peer.path.to_str().unwrap()
            );
            let dev = &state["devices"]["virtio"][0]["mmio"]["device"];
            assert_eq!(dev["device_type"], 1, "{dev}");
            (0..2)
                .map(|q| {
                    let q = &dev["queues"][q];
                    (
                        q["next_avail"].as_u64().unwrap(),
                        q["next_used"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        // (rx, tx) as (next_avail, next_used): the posted receive buffer is not taken yet.
        assert_eq!(queues(&idle), [(1, 1), (1, 1)]);
        assert_eq!(queues(&waiting), [(1, 1), (2, 2)]);

        // Each restored on the saved paths (the peer still bound there), then on new ones.
        let moved = NetPeer::bind(&dir, "moved");
        for (snap, before) in [(&idle, &at_idle), (&waiting, &at_waiting)] {
            for (to, other) in [(&peer, &moved), (&moved, &peer)] {
                let out = Capture::default();
                let mut rc = RestoreConfig::new(snap);
                rc.serial = SerialOutput::Writer(Box::new(out.clone()));
                if std::ptr::eq(to, &moved) {
                    rc.nets = vec![moved.config()];
                }
                let mut vm = Vm::restore(&kvm, rc).unwrap();
                open_gate(&vm, 1);
                vm.start().unwrap();
                if snap == &idle {
                    to.expect_frame(2);
                }
                to.reply(2, &out);
                let outcome = wait_with_limit(vm);
                let what = format!("{irqchip:?}, {}, {}", snap.display(), to.path.display());
                assert_eq!(outcome, Outcome::DebugExit(0), "{what}: {}", out.text());
                to.assert_quiet(&what);
                other.assert_quiet(&what);
                assert!(
                    !to.vmm_end.exists(),
                    "{what}: the restored VM removed its end"
                );
                assert_eq!(
                    format!("{before}{}", out.text()),
                    expected,
                    "{what}: the two halves print what the whole run did"
                );
            }
        }
        drop((peer, moved));
        let _ = std::fs::remove_dir_all(dir);
    }
}
