//! The PCI bus and the virtio-pci transport (`VmConfig.transport = Pci`), proven by tiny
//! guests on the real hypervisor, each on both interrupt controllers (KVM's, and vibe-vmm's
//! own): enumeration through CF8/CFC and ECAM, BAR sizing and moves, virtio-blk and
//! virtio-net with MSI-X (masking and pending bits included), INTx with MSI-X off.
//!
//! Needs /dev/kvm: without it each test prints why it is skipped, except under CI=true where a
//! missing /dev/kvm fails the test. The TAP test also needs CAP_NET_ADMIN, as in net.rs.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::tap::{Packet, TapIf, ETHERTYPE, GUEST_MAC};
use common::*;
use vmm::{IrqchipMode, Outcome, VmConfig};

const IRQCHIPS: [IrqchipMode; 2] = [IrqchipMode::Kernel, IrqchipMode::Userspace];
const LIMIT: Duration = Duration::from_secs(60);

/// A test VM config with the virtio devices on PCI.
fn pci_config(guest: &'static [u8], irqchip: IrqchipMode, out: &Capture) -> VmConfig {
    let mut c = config(guest, 1, out);
    c.transport = vmm::Transport::Pci;
    c.irqchip = irqchip;
    c
}

fn disk(path: &std::path::Path) -> vmm::DiskConfig {
    vmm::DiskConfig {
        path: path.to_path_buf(),
        read_only: false,
    }
}

/// What the enumeration guest printed about one function: its first line split into words,
/// and its BAR and capability lines.
struct Function {
    words: Vec<String>,
    more: Vec<String>,
}

impl Function {
    /// The word after `key` on the first line.
    fn word(&self, key: &str) -> &str {
        let at = self.words.iter().position(|w| w == key).unwrap();
        &self.words[at + 1]
    }

    /// The hex number after `key` on the first line.
    fn field(&self, key: &str) -> u32 {
        u32::from_str_radix(self.word(key), 16).unwrap()
    }

    fn has(&self, line: &str) -> bool {
        self.more.iter().any(|l| l.starts_with(line))
    }

    /// The virtio capability line of `cfg_type`.
    fn vcap(&self, cfg_type: u32) -> &str {
        let key = format!("cap 09 type {cfg_type} ");
        self.more
            .iter()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("no virtio capability of type {cfg_type}: {:?}", self.more))
    }
}

/// The functions the enumeration guest found, in bus order.
fn functions(out: &str) -> Vec<Function> {
    let mut found: Vec<Function> = Vec::new();
    for line in out.lines() {
        if line.starts_with("00:") {
            let words = line.split_whitespace().map(String::from).collect();
            found.push(Function {
                words,
                more: vec![],
            });
        } else if let Some(f) = found.last_mut().filter(|_| line.starts_with("    ")) {
            f.more.push(line.trim().to_string());
        }
    }
    found
}

/// A disk, a net (on a socket) and the virtio-console: the bus must show the host bridge and
/// the three in config order, the same through CF8/CFC and ECAM, with the header, BARs and
/// capabilities the transport promises.
fn enumerate(irqchip: IrqchipMode) {
    let Some(kvm) = kvm() else { return };
    let tag = format!("enum-{irqchip:?}");
    let image = disk_image(&format!("{tag}.img"), 8 * 512);
    let dir = std::env::temp_dir();
    let peer_path = dir.join(format!("vibe-pci-peer-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&peer_path);
    let _peer = UnixDatagram::bind(&peer_path).unwrap();
    let out = Capture::default();
    let mut c = pci_config(test_guests::PCI_ENUM, irqchip, &out);
    c.disks = vec![disk(&image)];
    c.nets = vec![vmm::NetConfig {
        backend: vmm::NetBackendConfig::Socket {
            path: peer_path.clone(),
            local: None,
        },
        mac: None,
    }];
    c.virtio_console = Some(vmm::SerialOutput::Writer(Box::new(Capture::default())));
    let outcome = run_with_limit(build(&kvm, c), LIMIT);
    let _ = std::fs::remove_file(image);
    let _ = std::fs::remove_file(peer_path);
    let text = out.text();
    assert_eq!(
        outcome,
        Outcome::DebugExit(0),
        "{irqchip:?}: failed check is the status; output:\n{text}"
    );
    assert!(text.contains("enumerated 4 functions\r\n"), "{text}");
    let found = functions(&text);
    let ids: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f.words[0].as_str(), f.words[1].as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("00:00.0", "8086:0d57"),
            ("00:01.0", "1af4:1042"),
            ("00:02.0", "1af4:1041"),
            ("00:03.0", "1af4:1043"),
        ],
        "{text}"
    );

    let bridge = &found[0];
    assert_eq!(bridge.field("class"), 0x060000, "{text}");
    assert_eq!(bridge.field("hdr"), 0, "{text}");
    assert!(
        bridge.has("bar0 00000000 bar1 00000000 bar2 00000000 bar3 00000000 bar4 00000000"),
        "the host bridge has no BARs: {text}"
    );

    // (device number, its virtio queues)
    for (dev, queues) in [(1u32, 1u32), (2, 2), (3, 2)] {
        let f = &found[dev as usize];
        assert_eq!(f.field("rev"), 1, "00:0{dev}.0: {text}");
        assert_eq!(f.field("hdr"), 0, "00:0{dev}.0: {text}");
        assert!(
            f.word("subsys").starts_with("1af4:"),
            "subsystem vendor: {text}"
        );
        assert_eq!(
            f.field("cmd") & 0b110,
            0b110,
            "memory space and bus master on"
        );
        assert_ne!(f.field("status") & 0x10, 0, "capability list");
        assert_eq!(f.field("pin"), 1, "INTA");
        assert_eq!(f.field("line"), 20 + (dev % 4), "00:0{dev}.0's GSI");
        // 64-bit BARs of 0x8000 in the window, in device order.
        let bar0 = 0xc000_0004 + (dev - 1) * 0x8000;
        let bars = format!("bar0 {bar0:08x} bar1 00000000 bar2 00000000 bar3 00000000");
        assert!(f.has(&bars), "00:0{dev}.0: want {bars:?} in {text}");

        for (cfg_type, offset) in [(1, 0x0000), (3, 0x1000), (4, 0x2000), (2, 0x3000)] {
            let want = format!("cap 09 type {cfg_type} bar 0 offset {offset:08x} length ");
            assert!(f.vcap(cfg_type).starts_with(&want), "00:0{dev}.0: {want:?}");
        }
        let common_len = f.vcap(1).rsplit(' ').next().unwrap();
        assert!(
            u32::from_str_radix(common_len, 16).unwrap() >= 0x38,
            "the common config is 0x38 bytes: {text}"
        );
        assert!(
            f.vcap(2).ends_with(" multiplier 00000004"),
            "00:0{dev}.0 notify multiplier: {text}"
        );
        // MSI-X: queues + 1 vectors, disabled and unmasked at reset; table and PBA in BAR0.
        let msix = format!(
            "cap 11 msix control {:04x} table 00004000 pba 00005000",
            queues
        );
        assert!(f.has(&msix), "00:0{dev}.0: want {msix:?} in {text}");
    }
}

#[test]
fn enumeration_through_cf8_and_ecam_agrees_and_shows_the_bridge_and_devices_in_order() {
    for irqchip in IRQCHIPS {
        enumerate(irqchip);
    }
}

/// BAR0 of 00:01.0: sized, moved (the device answers there only, and a request notified at
/// the new address completes, through an ioeventfd or not), silenced by COMMAND and outside
/// the window, put back.
#[test]
fn bar0_sizes_moves_within_the_window_and_decodes_only_with_memory_space_on() {
    for irqchip in IRQCHIPS {
        for ioeventfd in [true, false] {
            let Some(kvm) = kvm() else { return };
            let image = disk_image(&format!("bar-{irqchip:?}-{ioeventfd}.img"), 8 * 512);
            let out = Capture::default();
            let mut c = pci_config(test_guests::PCI_BAR, irqchip, &out);
            c.ioeventfd = ioeventfd;
            c.disks = vec![disk(&image)];
            let outcome = run_with_limit(build(&kvm, c), LIMIT);
            let _ = std::fs::remove_file(image);
            let text = out.text();
            let what = format!("{irqchip:?}, ioeventfd {ioeventfd}");
            assert_eq!(
                outcome,
                Outcome::DebugExit(0),
                "{what}: failed check is the status; output:\n{text}"
            );
            assert!(text.contains("bar0 assigned 00000000c0000004"), "{text}");
            assert!(text.contains("bar0/bar1 sized ffff8004 ffffffff"), "{text}");
            let request = "a request notified at the new address completes";
            assert!(text.contains(request), "{what}: {text}");
            assert!(text.contains("pci bar ok"), "{text}");
        }
    }
}

/// The MSI-X virtio-blk guest: sector 5 written, flushed and read back, each completion an
/// interrupt; masked completions only set their pending bit until unmasked.
fn virtio_blk_msix(irqchip: IrqchipMode, ioeventfd: bool) {
    let Some(kvm) = kvm() else { return };
    let image = disk_image(&format!("blk-{irqchip:?}-{ioeventfd}.img"), 64 * 512);
    let out = Capture::default();
    let mut c = pci_config(test_guests::PCI_VIRTIO_BLK, irqchip, &out);
    c.ioeventfd = ioeventfd;
    c.disks = vec![disk(&image)];
    let (outcome, stats) = run_with_stats(build(&kvm, c), LIMIT);
    let text = out.text();
    let file = std::fs::read(&image).unwrap();
    let _ = std::fs::remove_file(image);
    let what = format!("{irqchip:?}, ioeventfd {ioeventfd}");
    assert_eq!(
        outcome,
        Outcome::DebugExit(0),
        "{what}: failed check is the status; output:\n{text}"
    );
    assert!(
        text.contains("write, flush, read back: ok"),
        "{what}: {text}"
    );
    assert!(
        text.contains("entry mask: pending bit set"),
        "{what}: {text}"
    );
    assert!(
        text.contains("function mask: pending bit set"),
        "{what}: {text}"
    );
    // Three requests plus the two masked ones, each one interrupt; no config interrupt.
    assert!(
        text.contains("msi-x interrupts: queue 5, config 0"),
        "{what}: {text}"
    );
    let want: Vec<u8> = (0..512u32).map(|i| (i * 3 + 1) as u8).collect();
    assert_eq!(&file[5 * 512..6 * 512], &want[..], "{what}: sector 5");
    // The same five requests (512 bytes each way) and interrupts in the statistics: raised
    // by the device, and sent on queue 0's vector (the masked ones once unmasked).
    let blk = stats.virtio_device("virtio-blk0").expect("virtio-blk0");
    let q = &blk.queues[0];
    let table = stats.render();
    assert_eq!(
        (q.requests, q.bytes, q.errors),
        (5, 1024, 0),
        "{what}: {table}"
    );
    assert_eq!(
        (blk.used_interrupts, blk.config_interrupts),
        (5, 0),
        "{what}"
    );
    assert_eq!(blk.transport, "pci");
    let line = |name: &str| {
        let l = stats
            .interrupts
            .iter()
            .find(|l| l.device == "virtio-blk0" && l.line == name);
        l.map(|l| l.count)
    };
    assert_eq!(line("msi-x 1"), Some(5), "{what}: {table}");
    assert_eq!(line("msi-x 0"), Some(0), "{what}: {table}");
}

#[test]
fn virtio_blk_over_pci_completes_through_msix_and_honours_masks_on_kvms_irqchip() {
    virtio_blk_msix(IrqchipMode::Kernel, true);
    virtio_blk_msix(IrqchipMode::Kernel, false);
}

#[test]
fn virtio_blk_over_pci_completes_through_msix_and_honours_masks_on_our_irqchip() {
    virtio_blk_msix(IrqchipMode::Userspace, true);
    virtio_blk_msix(IrqchipMode::Userspace, false);
}

/// With MSI-X off, a virtio-blk flush interrupts through INTA, the IOAPIC pin the interrupt
/// line names, and the ISR read acknowledges it.
#[test]
fn intx_without_msix_reaches_the_ioapic_pin_of_the_interrupt_line() {
    for irqchip in IRQCHIPS {
        let Some(kvm) = kvm() else { return };
        let image = disk_image(&format!("intx-{irqchip:?}.img"), 8 * 512);
        let out = Capture::default();
        let mut c = pci_config(test_guests::PCI_INTX, irqchip, &out);
        c.disks = vec![disk(&image)];
        let outcome = run_with_limit(build(&kvm, c), LIMIT);
        let _ = std::fs::remove_file(image);
        let text = out.text();
        assert_eq!(
            outcome,
            Outcome::DebugExit(0),
            "{irqchip:?}: failed check is the status; output:\n{text}"
        );
        assert!(text.contains("intx: GSI 21, ISR 01"), "{irqchip:?}: {text}");
    }
}

/// The MSI-X virtio-net guest on a TAP: its broadcast reaches the TAP, our reply reaches it.
fn virtio_net_msix(irqchip: IrqchipMode, tag: &str) {
    let Some(kvm) = kvm() else { return };
    let tap = match TapIf::create(tag) {
        Ok(t) => t,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but cannot create a TAP: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot create a TAP interface (needs CAP_NET_ADMIN): {e}");
            return;
        }
    };
    let sock = Packet::bind(&tap.0);
    let out = Capture::default();
    let mut c = pci_config(test_guests::PCI_VIRTIO_NET, irqchip, &out);
    c.nets = vec![vmm::NetConfig {
        backend: vmm::NetBackendConfig::Tap(tap.0.clone()),
        mac: None,
    }];
    let mut vm = build(&kvm, c);
    vm.start().unwrap();
    let stop = vm.stop_handle();
    std::thread::spawn(move || {
        std::thread::sleep(LIMIT);
        stop.stop(Outcome::Stopped("test time limit".into()));
    });

    let frame = sock.recv_ours(Duration::from_secs(30));
    let frame =
        frame.unwrap_or_else(|| panic!("{irqchip:?}: no frame from the guest: {}", out.text()));
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    assert_eq!(
        &frame[6..12],
        &GUEST_MAC,
        "the default MAC from the config space"
    );
    assert_eq!(&frame[14..34], b"hello from the guest");

    let mut reply = vec![0u8; 60];
    reply[..6].copy_from_slice(&GUEST_MAC);
    reply[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    reply[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    reply[14..33].copy_from_slice(b"hello from the host");
    // Sent again until the guest has it: the TAP's qdisc starts only once the kernel's link
    // watch has seen the carrier come up (when the VMM attached), asynchronously; until then
    // the kernel drops what we send (counted as TX dropped on the TAP).
    let t = Instant::now();
    let mut sent: Option<Instant> = None;
    while !out.text().contains("received: ") && t.elapsed() < Duration::from_secs(20) {
        if sent.is_none_or(|s| s.elapsed() > Duration::from_millis(300)) {
            sock.send(&reply);
            sent = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let outcome = vm.wait();
    let text = out.text();
    assert_eq!(
        outcome,
        Outcome::DebugExit(0),
        "{irqchip:?}: failed check is the status; output:\n{text}"
    );
    assert!(
        text.contains("received: hello from the host\r\n"),
        "{irqchip:?}: {text}"
    );
    assert!(
        text.contains(", tx 1\r\n"),
        "one transmit interrupt: {text}"
    );
}

#[test]
fn virtio_net_over_pci_moves_frames_through_a_tap_with_msix_on_kvms_irqchip() {
    virtio_net_msix(IrqchipMode::Kernel, "k");
}

#[test]
fn virtio_net_over_pci_moves_frames_through_a_tap_with_msix_on_our_irqchip() {
    virtio_net_msix(IrqchipMode::Userspace, "u");
}
