//! Interrupt benchmark: how many device interrupts per second a guest takes over virtio-mmio
//! (the used-buffer interrupt on IOAPIC pin 5, the handler reading and acknowledging
//! InterruptStatus) and over virtio-pci (an MSI-X vector per queue, no ISR read), both raised
//! through an irqfd, measured in the same run and reported as a ratio.
//!
//! Each guest submits 10,000 virtio-blk FLUSH requests to a read-only disk (so the device does
//! no host I/O), one at a time, and sleeps in HLT until each one's interrupt arrives: a rate
//! of whole round trips (notify, device thread, interrupt, handler). The tiny guest with the
//! same command line gives the fixed start and exit cost, which is subtracted. Runs alternate
//! between the two transports; medians of 11. Done on KVM's irqchip (the default) and on
//! vibe-vmm's own (`--irqchip userspace`, where there are no irqfds: the device thread latches
//! the vector in our IOAPIC or LAPIC and wakes the vCPU thread).
//!
//! Run with `scripts/bench.sh` or `cargo bench --bench interrupts` (without `--bench` among
//! its arguments the binary does nothing, so `cargo test --benches` only builds it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 11;
/// REQUESTS in `guests/asm/bench_irq_mmio.S` and `bench_irq_pci.S`: one interrupt each.
const INTERRUPTS: f64 = 10_000.0;
const MEMORY: &str = "128M";

struct Transport {
    /// The interrupt path on KVM's irqchip, then on ours.
    names: [&'static str; 2],
    arg: &'static str,
    guest: &'static [u8],
}

const TRANSPORTS: [Transport; 2] = [
    Transport {
        names: [
            "virtio-mmio, IOAPIC pin, irqfd",
            "virtio-mmio, our IOAPIC pin",
        ],
        arg: "mmio",
        guest: test_guests::BENCH_IRQ_MMIO,
    },
    Transport {
        names: [
            "virtio-pci, MSI-X route, irqfd",
            "virtio-pci, MSI-X to our LAPIC",
        ],
        arg: "pci",
        guest: test_guests::BENCH_IRQ_PCI,
    },
];

/// Runs vibe-vmm on `guest` and returns its wall time; panics unless the guest exits 0.
fn run(guest: &Path, transport: &str, irqchip: &str, disk: &Path) -> Duration {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vibe-vmm"));
    cmd.args(["run", "--memory", MEMORY, "--serial", "none"])
        .args(["--transport", transport, "--irqchip", irqchip])
        .arg("--disk")
        .arg(format!("{},readonly", disk.display()))
        .arg("--kernel")
        .arg(guest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let wall = t0.elapsed();
    assert!(
        status.success(),
        "{} on --transport {transport} --irqchip {irqchip} exited with {status}",
        guest.display()
    );
    wall
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Medians per transport: (tiny guest, benchmark guest).
fn bench(
    irqchip: &str,
    tiny: &Path,
    guests: &[std::path::PathBuf],
    disk: &Path,
) -> Vec<(Duration, Duration)> {
    let mut samples = vec![(Vec::new(), Vec::new()); TRANSPORTS.len()];
    // One warm-up run each, not counted (page cache, first-use costs).
    for (t, guest) in TRANSPORTS.iter().zip(guests) {
        run(tiny, t.arg, irqchip, disk);
        run(guest, t.arg, irqchip, disk);
    }
    for _ in 0..RUNS {
        for ((t, guest), (tinies, irqs)) in TRANSPORTS.iter().zip(guests).zip(&mut samples) {
            tinies.push(run(tiny, t.arg, irqchip, disk));
            irqs.push(run(guest, t.arg, irqchip, disk));
        }
    }
    samples
        .into_iter()
        .map(|(tinies, irqs)| (median(tinies), median(irqs)))
        .collect()
}

fn per_sec(tiny: Duration, irqs: Duration) -> f64 {
    INTERRUPTS / irqs.saturating_sub(tiny).as_secs_f64().max(1e-9)
}

fn main() {
    // `cargo bench` passes --bench, even to a harness of our own; `cargo test --benches` and
    // test discovery (--list) do not, and a minute of VM runs is no test.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("SKIPPED: no /dev/kvm");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vibe-vmm-irq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = dir.join("tiny.elf");
    std::fs::write(&tiny, test_guests::BENCH_TINY).unwrap();
    let guests: Vec<_> = TRANSPORTS
        .iter()
        .map(|t| {
            let p = dir.join(format!("irq-{}.elf", t.arg));
            std::fs::write(&p, t.guest).unwrap();
            p
        })
        .collect();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();

    println!(
        "{INTERRUPTS} virtio-blk FLUSH requests (read-only disk: no host I/O), one at a time, \
         each waited for in HLT until its interrupt; {RUNS} runs, medians, minus the tiny \
         guest's start and exit"
    );
    for (i, (irqchip, label)) in [
        ("kernel", "KVM's irqchip"),
        ("userspace", "--irqchip userspace"),
    ]
    .into_iter()
    .enumerate()
    {
        let results = bench(irqchip, &tiny, &guests, &disk);
        println!();
        println!(
            "{:<32} {:>12} {:>12} {:>14}",
            label, "start+exit", "whole run", "interrupts/s"
        );
        let rates: Vec<f64> = TRANSPORTS
            .iter()
            .zip(&results)
            .map(|(t, &(tiny, irqs))| {
                let rate = per_sec(tiny, irqs);
                println!(
                    "{:<32} {:>9.1} ms {:>9.1} ms {:>14.0}",
                    t.names[i],
                    tiny.as_secs_f64() * 1e3,
                    irqs.as_secs_f64() * 1e3,
                    rate
                );
                rate
            })
            .collect();
        println!(
            "interrupts per second, pci/mmio: {:.2}x",
            rates[1] / rates[0]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
