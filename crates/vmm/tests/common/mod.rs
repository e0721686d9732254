//! Helpers shared by the guest-booting tests.
#![allow(dead_code)]

#[cfg(target_os = "linux")]
pub mod tap;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arch::x86_64::layout;
use devices::BusDevice;
use hypervisor::kvm::{Kvm, KvmVm};
use vmm::{IrqchipMode, KernelImage, Outcome, SerialOutput, Vm, VmConfig};

/// Opens KVM, or explains why the test cannot run.
pub fn kvm() -> Option<Kvm> {
    match Kvm::open() {
        Ok(k) => Some(k),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but KVM is unusable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: this test boots a guest on KVM, which is unusable here: {e}");
            None
        }
    }
}

/// Serial output captured for assertions.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Answers every read with the bitwise NOT of what was last written at that offset, so a
/// round trip proves the access really went through the device.
pub struct NotDevice(pub Vec<u8>);

impl BusDevice for NotDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = !self.0.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.0.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
}

pub const TEST_PORT: u16 = 0x510;
pub const TEST_MMIO: u64 = layout::platform_mmio_window(1);

pub fn config(guest: &'static [u8], cpus: u32, out: &Capture) -> VmConfig {
    let mut c = VmConfig::new(KernelImage::Bytes(guest));
    c.memory = 32 << 20;
    c.cpus = cpus;
    c.cmdline = "test cmdline=ok".into();
    c.serial = SerialOutput::Writer(Box::new(out.clone()));
    c
}

/// Builds a VM with the test devices attached.
pub fn build(kvm: &Kvm, c: VmConfig) -> Vm<KvmVm> {
    let mut vm = Vm::new(kvm, c).expect("create VM");
    vm.add_pio_device(Arc::new(Mutex::new(NotDevice(vec![0; 4]))), TEST_PORT, 4)
        .unwrap();
    vm.add_mmio_device(
        Arc::new(Mutex::new(NotDevice(vec![0; 4096]))),
        TEST_MMIO,
        4096,
    )
    .unwrap();
    vm
}

/// Runs a VM to its end, stopping it after `limit` so a broken guest cannot hang the suite.
pub fn run_with_limit(mut vm: Vm<KvmVm>, limit: Duration) -> Outcome {
    vm.start().expect("start VM");
    let stop = vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    vm.wait()
}

/// [`run_with_limit`], also returning the statistics at the end.
pub fn run_with_stats(mut vm: Vm<KvmVm>, limit: Duration) -> (Outcome, vmm::stats::Stats) {
    vm.start().expect("start VM");
    let controller = vm.controller().expect("a started VM has a controller");
    let stop = vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        stop.stop(Outcome::Stopped("test time limit".into()));
    });
    let outcome = vm.wait();
    (outcome, controller.stats())
}

pub fn boot(guest: &'static [u8], cpus: u32) -> Option<(Outcome, String)> {
    boot_on(IrqchipMode::Kernel, guest, cpus)
}

/// Boots `guest` with the given interrupt controller; returns how it ended and its output.
pub fn boot_on(irqchip: IrqchipMode, guest: &'static [u8], cpus: u32) -> Option<(Outcome, String)> {
    let kvm = kvm()?;
    let out = Capture::default();
    let mut c = config(guest, cpus, &out);
    c.irqchip = irqchip;
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    Some((outcome, out.text()))
}

/// The LAPIC timer guest: its interrupt reaches the IDT handler.
pub fn timer_interrupt(irqchip: IrqchipMode) {
    let Some((outcome, out)) = boot_on(irqchip, test_guests::IRQ, 1) else {
        return;
    };
    assert_eq!(outcome, Outcome::DebugExit(0), "{out}");
    assert!(out.contains("timer interrupt delivered"));
}

/// The PIT guest on a machine without ACPI: 10 ticks of channel 0 at 100 Hz through IOAPIC
/// pin 0 (so at least 90 ms), channel 2 through port B, the 8259s found and masked.
pub fn pit_ticks(irqchip: IrqchipMode) {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::PIT, 1, &out);
    c.irqchip = irqchip;
    c.acpi = false;
    let t = std::time::Instant::now();
    let outcome = run_with_limit(build(&kvm, c), Duration::from_secs(60));
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    assert!(out.text().contains("PIT ticks: 10"), "{}", out.text());
    assert!(
        t.elapsed() >= Duration::from_millis(90),
        "{:?}",
        t.elapsed()
    );
}

/// The SMP guest: INIT and STARTUP IPIs start vCPU 1.
pub fn second_vcpu_starts(irqchip: IrqchipMode) {
    let Some((outcome, out)) = boot_on(irqchip, test_guests::SMP, 2) else {
        return;
    };
    assert_eq!(outcome, Outcome::DebugExit(0), "{out}");
    assert!(out.contains("vCPU 1 is up"));
}

/// An empty disk image of `bytes` in the temp directory.
pub fn disk_image(name: &str, bytes: usize) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vibe-guests-{}-{name}", std::process::id()));
    std::fs::write(&p, vec![0u8; bytes]).unwrap();
    p
}

/// A virtio-blk flush whose completion interrupt must reach the guest's IDT handler.
pub fn virtio_interrupt(irqchip: IrqchipMode, ioeventfd: bool, irqfd: bool) {
    let Some(kvm) = kvm() else { return };
    let name = format!("irq-{irqchip:?}-{ioeventfd}-{irqfd}.img");
    let disk = disk_image(&name, 8 * 512);
    let out = Capture::default();
    let mut c = config(test_guests::VIRTIO_IRQ, 1, &out);
    c.irqchip = irqchip;
    c.ioeventfd = ioeventfd;
    c.irqfd = irqfd;
    c.disks = vec![vmm::DiskConfig {
        path: disk.clone(),
        read_only: false,
    }];
    let (outcome, stats) = run_with_stats(build(&kvm, c), Duration::from_secs(60));
    let _ = std::fs::remove_file(disk);
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    assert!(
        out.text()
            .contains("virtio interrupt delivered, InterruptStatus 00000001"),
        "{}",
        out.text()
    );
    // One flush, one interrupt raised by the device and counted on its line, whichever
    // irqchip and path (irqfd, KVM_IRQ_LINE, our IOAPIC) delivered it.
    let blk = stats.virtio_device("virtio-blk0").expect("virtio-blk0");
    assert_eq!(blk.queues[0].requests, 1, "{}", stats.render());
    assert_eq!(blk.used_interrupts, 1, "{}", stats.render());
    assert_eq!(stats.interrupts_of("virtio-blk0"), 1, "{}", stats.render());
}

/// Pauses, resumes and stops a VM whose boot vCPU spins waiting for input while the other
/// waits for its start-up IPI; the stop must be prompt.
pub fn stop_pause_and_resume(irqchip: IrqchipMode) {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::SERIAL_ECHO, 2, &out);
    c.irqchip = irqchip;
    let mut vm = build(&kvm, c);
    vm.start().unwrap();
    let t0 = Instant::now();
    while !out.text().contains("ready") {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(5));
    }
    vm.pause();
    vm.resume();
    vm.pause();
    let stop = vm.stop_handle();
    let t = Instant::now();
    stop.stop(Outcome::Stopped("asked by the test".into()));
    assert_eq!(vm.wait(), Outcome::Stopped("asked by the test".into()));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        t.elapsed()
    );
    // The guest never got its byte.
    assert!(!out.text().contains("got"));
}

/// Every access a [`LogPort`] saw: (is a write, the bytes).
pub type AccessLog = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

/// A port device that logs every access; each byte a read returns is the next value of a byte
/// counter, so the log shows how many accesses of which size arrived.
pub struct LogPort {
    next: u8,
    pub log: AccessLog,
}

impl BusDevice for LogPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        for b in data.iter_mut() {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        self.log.lock().unwrap().push((false, data.to_vec()));
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.log.lock().unwrap().push((true, data.to_vec()));
    }
}

pub const STRING_IO_PORT: u16 = 0x520;

/// The string I/O guest: every element of a `rep ins`/`rep outs` is one access of its size,
/// reads fill each element with what the device returned, writes send each element back.
pub fn string_io(irqchip: IrqchipMode) {
    let Some(kvm) = kvm() else { return };
    let out = Capture::default();
    let mut c = config(test_guests::STRING_IO, 1, &out);
    c.irqchip = irqchip;
    let mut vm = build(&kvm, c);
    let log = AccessLog::default();
    let port = LogPort {
        next: 0,
        log: log.clone(),
    };
    vm.add_pio_device(Arc::new(Mutex::new(port)), STRING_IO_PORT, 4)
        .unwrap();
    let outcome = run_with_limit(vm, Duration::from_secs(60));
    assert_eq!(outcome, Outcome::DebugExit(0), "{}", out.text());
    // rep insb/outsb x1, x2, x4, x16; insw/outsw x3; insd/outsd x4; insd/outsd x600 across
    // a page of guest memory; insb/outsb x5000, more than one exit's data page.
    let sizes: Vec<usize> = [(1, 1 + 2 + 4 + 16), (2, 3), (4, 4 + 600), (1, 5000)]
        .iter()
        .flat_map(|&(size, n)| std::iter::repeat_n(size, n))
        .collect();
    let log = log.lock().unwrap();
    let (writes, reads): (Vec<_>, Vec<_>) = log.iter().partition(|(w, _)| *w);
    let read_sizes: Vec<usize> = reads.iter().map(|(_, d)| d.len()).collect();
    let write_sizes: Vec<usize> = writes.iter().map(|(_, d)| d.len()).collect();
    assert_eq!(read_sizes, sizes, "one read access per element");
    assert_eq!(write_sizes, sizes, "one write access per element");
    let read: Vec<u8> = reads.iter().flat_map(|(_, d)| d.clone()).collect();
    let written: Vec<u8> = writes.iter().flat_map(|(_, d)| d.clone()).collect();
    let expected: Vec<u8> = (0..read.len()).map(|i| i as u8).collect();
    assert_eq!(read, expected);
    assert_eq!(written, read, "each element written back as it was read");
    assert!(log.iter().take(reads.len()).all(|(w, _)| !w), "reads first");
}
