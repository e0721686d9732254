//! Assembles and links every guest in `asm/` with the host's GNU toolchain (`cc`, which drives
//! `as` and `ld`). Guests are freestanding ELF images linked at 1 MiB.
//!
//! Only an x86_64 Linux host has that toolchain by default (macOS's `cc` links Mach-O and
//! knows no GNU linker scripts): elsewhere `VIBE_GUEST_CC` names one (for example
//! `x86_64-elf-gcc`), or the guests are left empty and `vibe-vmm run` needs `--kernel`.

use std::path::PathBuf;
use std::process::Command;

/// (output name, source, extra flags)
const GUESTS: &[(&str, &str, &[&str])] = &[
    ("demo", "demo.S", &[]),
    ("serial_echo", "serial_echo.S", &[]),
    ("serial_flood", "serial_flood.S", &[]),
    ("io", "io.S", &[]),
    ("irq", "irq.S", &[]),
    ("smp", "smp.S", &[]),
    ("reset", "reset.S", &[]),
    ("cpuid", "cpuid.S", &[]),
    ("virtio_blk", "virtio_blk.S", &[]),
    ("virtio_console", "virtio_console.S", &[]),
    ("mmio_console", "mmio_console.S", &[]),
    ("virtio_net", "virtio_net.S", &[]),
    ("virtio_irq", "virtio_irq.S", &[]),
    ("triple_fault", "triple_fault.S", &[]),
    ("bench_tiny", "bench_tiny.S", &["-DPVH"]),
    ("bench_pio", "bench_pio.S", &["-DPVH"]),
    ("bench_irq_mmio", "bench_irq_mmio.S", &[]),
    ("bench_irq_pci", "bench_irq_pci.S", &[]),
    ("pvh_hello", "demo.S", &["-DPVH"]),
    ("emulate", "emulate.S", &[]),
    ("string_io", "string_io.S", &[]),
    ("timer_storm", "timer_storm.S", &[]),
    ("timer_storm_pit", "timer_storm.S", &["-DPIT"]),
    ("serial_irq", "serial_irq.S", &[]),
    ("virtq_abuse", "virtq_abuse.S", &[]),
    ("window_chaos", "window_chaos.S", &[]),
    (
        "window_chaos_userspace",
        "window_chaos.S",
        &["-DUSERSPACE_IRQCHIP"],
    ),
    ("acpi_poweroff", "acpi_poweroff.S", &[]),
    ("power_button", "power_button.S", &[]),
    ("pci_enum", "pci_enum.S", &[]),
    ("pci_bar", "pci_bar.S", &[]),
    ("pci_virtio_blk", "pci_virtio_blk.S", &[]),
    ("pci_virtio_net", "pci_virtio_net.S", &[]),
    ("pci_intx", "pci_intx.S", &[]),
    ("pci_hostile", "pci_hostile.S", &[]),
    ("vfio", "vfio.S", &[]),
    ("vfio_irq", "vfio_irq.S", &[]),
    ("counter", "counter.S", &[]),
    ("trace", "trace.S", &[]),
    ("pit", "pit.S", &[]),
    ("snapshot", "snapshot.S", &[]),
    ("snapshot_smp", "snapshot_smp.S", &[]),
    ("snapshot_blk", "snapshot_blk.S", &[]),
    ("snapshot_net", "snapshot_net.S", &[]),
];

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("asm");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=asm");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=VIBE_GUEST_CC");
    let target = |key| std::env::var(key).unwrap_or_default();
    let native =
        target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ARCH") == "x86_64";
    let cc = match std::env::var("VIBE_GUEST_CC") {
        Ok(cc) => cc,
        Err(_) if native => std::env::var("CC").unwrap_or_else(|_| "cc".into()),
        Err(_) => {
            println!("cargo:warning=no x86_64 ELF toolchain on this host (set VIBE_GUEST_CC): building without the demo and test guests");
            for (name, _, _) in GUESTS {
                std::fs::write(out.join(format!("{name}.elf")), []).expect("OUT_DIR is writable");
            }
            return;
        }
    };
    for (name, src, flags) in GUESTS {
        let elf = out.join(format!("{name}.elf"));
        let status = Command::new(&cc)
            .args(["-nostdlib", "-static", "-no-pie", "-ffreestanding"])
            .args([
                "-Wl,--build-id=none",
                "-Wl,-n",
                "-Wl,--no-warn-rwx-segments",
            ])
            .arg(format!("-Wl,-T,{}", dir.join("guest.ld").display()))
            .arg(format!("-I{}", dir.display()))
            .args(*flags)
            .arg(dir.join(src))
            .arg("-o")
            .arg(&elf)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {cc} to build guest {name}: {e} (install gcc/binutils)")
            });
        assert!(
            status.success(),
            "building guest {name} from asm/{src} failed"
        );
    }
}
