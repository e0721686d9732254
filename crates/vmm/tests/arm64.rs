//! The arm64 machine booted on the scripted Hypervisor.framework fake: the scripts stand in
//! for a guest kernel (each step is an exit the real framework would report for the
//! instruction named in its comment), and everything below them is the real VMM: the HVF
//! backend, the device tree and Image loader, the 16550 and a virtio-console on the MMIO bus,
//! interrupts to GIC SPIs from the device thread, PSCI and the vCPU threads.

use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::virtio::mmio::*;
use hypervisor::arm64::psci;
use hypervisor::hvf::arm64::fake::{Event, FakeHvf, Step};
use hypervisor::hvf::arm64::HvfArm64;
use vm_memory::{Bytes, GuestAddress};
use vmm::{KernelImage, Outcome, SerialOutput, Vm, VmConfig};

const RAM: u64 = 0x4000_0000;
const UART: u64 = 0x0900_0000;
const UART_INTID: u32 = 32 + 1;
const VIRTIO: u64 = 0x0a00_0000;
const VIRTIO_INTID: u32 = 32 + 16;
const MEMORY: u64 = 64 << 20;
/// The device tree sits in the last 2 MiB of RAM.
const FDT: u64 = RAM + MEMORY - (2 << 20);
const SECONDARY_ENTRY: u64 = RAM + 0x1000;
/// Where the test puts the virtio-console's transmit queue and its one buffer.
const DESC: u64 = RAM + 0x10_0000;
const AVAIL: u64 = DESC + 0x1000;
const USED: u64 = DESC + 0x2000;
const BUFFER: u64 = DESC + 0x3000;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// An arm64 `Image` header (text_offset 0, 64 KiB) followed by nothing: the scripts play the
/// kernel.
fn image() -> &'static [u8] {
    let mut h = vec![0u8; 0x1_0000];
    h[16..24].copy_from_slice(&0x1_0000u64.to_le_bytes()); // image_size
    h[56..60].copy_from_slice(b"ARM\x64");
    Box::leak(h.into_boxed_slice())
}

fn config(cpus: u32, serial: &Capture, console: &Capture) -> VmConfig {
    let mut c = VmConfig::new(KernelImage::Bytes(image()));
    c.memory = MEMORY;
    c.cpus = cpus;
    c.cmdline = "console=ttyS0".into();
    c.serial = SerialOutput::Writer(Box::new(serial.clone()));
    c.virtio_console = Some(SerialOutput::Writer(Box::new(console.clone())));
    c
}

/// `str w1, [x0]` of each (register offset, value) into the virtio-mmio window.
fn virtio_writes(regs: &[(u64, u64)]) -> Vec<Step> {
    regs.iter()
        .map(|&(reg, v)| Step::mmio_write(VIRTIO + reg, 4, v))
        .collect()
}

/// A driver setting up the console's transmit queue (queue 1) and sending one buffer.
fn console_driver() -> Vec<Step> {
    virtio_writes(&[
        (REG_STATUS, 1),
        (REG_STATUS, 3),
        (REG_DRIVER_FEATURES_SEL, 1),
        (REG_DRIVER_FEATURES, 1), // VIRTIO_F_VERSION_1
        (REG_STATUS, 11),
        (REG_QUEUE_SEL, 1),
        (REG_QUEUE_NUM, 8),
        (REG_QUEUE_DESC_LOW, DESC & 0xffff_ffff),
        (REG_QUEUE_DESC_HIGH, DESC >> 32),
        (REG_QUEUE_DRIVER_LOW, AVAIL & 0xffff_ffff),
        (REG_QUEUE_DRIVER_HIGH, AVAIL >> 32),
        (REG_QUEUE_DEVICE_LOW, USED & 0xffff_ffff),
        (REG_QUEUE_DEVICE_HIGH, USED >> 32),
        (REG_QUEUE_READY, 1),
        (REG_STATUS, 15),
        (REG_QUEUE_NOTIFY, 1),
    ])
}

fn write_queue(mem: &vm_memory::GuestMemoryMmap, text: &[u8]) {
    let mut desc = [0u8; 16];
    desc[..8].copy_from_slice(&BUFFER.to_le_bytes());
    desc[8..12].copy_from_slice(&(text.len() as u32).to_le_bytes());
    mem.write_slice(&desc, GuestAddress(DESC)).unwrap();
    // avail: flags 0, idx 1, ring[0] = descriptor 0.
    mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(AVAIL))
        .unwrap();
    mem.write_slice(text, GuestAddress(BUFFER)).unwrap();
}

fn runs(log: &[Event], cpu: u64) -> Vec<(u64, u64, Box<[u64; 31]>)> {
    log.iter()
        .filter_map(|e| match e {
            Event::Run {
                cpu: c,
                pc,
                cpsr,
                x,
            } if *c == cpu => Some((*pc, *cpsr, x.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn scripted_boot_reaches_devices_psci_gic_and_power_off() {
    let hv = HvfArm64::new(FakeHvf::new(true));
    let mut boot = vec![
        Step::mmio_write(UART + 1, 1, 0x02), // str w1, [x0, #1]: IER = THR empty
        Step::mmio_write(UART, 1, u64::from(b'H')),
        Step::mmio_write(UART, 1, u64::from(b'i')),
        // hvc #0: PSCI CPU_ON of vCPU 1.
        Step::hvc([psci::CPU_ON_64 as u64, 1, SECONDARY_ENTRY, 0xc0ffee]),
        Step::WaitFor("secondary up"),
        Step::mmio_read(VIRTIO + REG_MAGIC, 4, 2), // ldr w2, [x0]
    ];
    boot.extend(console_driver());
    boot.extend([
        Step::WaitForSpi(VIRTIO_INTID),
        Step::mmio_read(VIRTIO + REG_INTERRUPT_STATUS, 4, 3), // ldr w3, [x0, #0x60]
        Step::mmio_write(VIRTIO + REG_INTERRUPT_ACK, 4, 1),
        Step::vtimer(),
        Step::hvc([psci::SYSTEM_OFF as u64, 0, 0, 0]),
    ]);
    hv.api().script(0, boot);
    hv.api().script(
        1,
        vec![
            Step::mmio_write(UART, 1, u64::from(b'!')),
            Step::Signal("secondary up"),
        ],
    );

    let (serial, console) = (Capture::default(), Capture::default());
    let vm: Vm<_> = vmm::aarch64::create(&hv, config(2, &serial, &console)).unwrap();
    write_queue(vm.memory(), b"virtio!");
    let mut magic = [0u8; 4];
    vm.memory()
        .read_slice(&mut magic, GuestAddress(FDT))
        .unwrap();
    assert_eq!(
        u32::from_be_bytes(magic),
        0xd00d_feed,
        "device tree at {FDT:#x}"
    );
    assert_eq!(vm.run().unwrap(), Outcome::PowerOff);

    let fake = hv.api();
    assert_eq!(fake.gic(), Some((0x0800_0000, 0x080a_0000)));
    assert_eq!(fake.maps(), vec![(RAM, MEMORY)]);
    assert_eq!(serial.text(), "Hi!", "both vCPUs' UART writes, in order");
    assert_eq!(
        console.text(),
        "virtio!",
        "the virtio-console's transmit queue"
    );

    let log = fake.log();
    let boot_runs = runs(&log, 0);
    // The boot protocol: PC at the Image, X0 = device tree, EL1h with DAIF masked.
    assert_eq!(
        (boot_runs[0].0, boot_runs[0].1, boot_runs[0].2[0]),
        (RAM, 0x3c5, FDT)
    );
    let secondary = runs(&log, 1);
    assert_eq!(
        (secondary[0].0, secondary[0].1, secondary[0].2[0]),
        (SECONDARY_ENTRY, 0x3c5, 0xc0ffee),
        "CPU_ON's entry point and context id"
    );
    // MMIO reads completed into the named registers on the next entry.
    assert!(
        boot_runs.iter().any(|r| r.2[2] == 0x7472_6976),
        "magic 'virt' in X2"
    );
    assert!(
        boot_runs.iter().any(|r| r.2[3] == 1),
        "used-buffer interrupt status in X3"
    );
    // Interrupts: the UART's from a vCPU thread, the virtio device's from the device thread.
    assert!(log
        .iter()
        .any(|e| matches!(e, Event::Spi { intid, level: true, .. } if *intid == UART_INTID)));
    assert!(
        log.iter().any(|e| matches!(e, Event::Spi { intid, level: true, thread } if *intid == VIRTIO_INTID && thread == "devices")),
        "{log:?}"
    );
    assert!(log.contains(&Event::PpiPending { cpu: 0, intid: 27 }));
}

#[test]
fn an_access_the_backend_cannot_decode_stops_the_vm_with_the_pc() {
    let hv = HvfArm64::new(FakeHvf::new(true));
    // ldp x1, x2, [x0] on the UART: a data abort without a valid syndrome (ISV = 0).
    hv.api().script(
        0,
        vec![Step::exception((0x24 << 26) | (1 << 25) | (3 << 22), UART)],
    );
    let (serial, console) = (Capture::default(), Capture::default());
    let vm = vmm::aarch64::create(&hv, config(1, &serial, &console)).unwrap();
    match vm.run().unwrap() {
        Outcome::Crash { vcpu: 0, reason } => {
            assert!(
                reason.contains("ISV = 0") && reason.contains(", at PC 0x40000000"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn macos_without_the_in_kernel_gic_is_told_what_is_missing() {
    let hv = HvfArm64::new(FakeHvf::new(false));
    let (serial, console) = (Capture::default(), Capture::default());
    let e = vmm::aarch64::create(&hv, config(1, &serial, &console))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("hv_gic_create needs macOS 15"), "{e}");
}
