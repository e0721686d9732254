//! The device tree an arm64 kernel boots with, built with `vm-fdt`: memory, CPUs started
//! through PSCI, a GICv3, the architected timer, the UART, one `virtio,mmio` node per device,
//! and `/chosen` (command line, console, initrd).

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::layout::*;

const GIC_PHANDLE: u32 = 1;
/// Interrupt specifier cells: type, number, flags.
const IRQ_TYPE_SPI: u32 = 0;
const IRQ_TYPE_PPI: u32 = 1;
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
const UART_CLOCK_HZ: u32 = 1_843_200;

/// What the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtConfig {
    pub cpus: u32,
    pub ram_size: u64,
    pub cmdline: String,
    /// (address, size)
    pub initrd: Option<(u64, u64)>,
    /// How many virtio-mmio devices, in window order.
    pub virtio_devices: u32,
}

fn reg(start: u64, size: u64) -> [u64; 2] {
    [start, size]
}

/// Builds the flattened device tree.
pub fn build(c: &FdtConfig) -> FdtWriterResult<Vec<u8>> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_string("model", "vibe-vmm")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &c.cmdline)?;
    f.property_string("stdout-path", &format!("/uart@{UART_START:x}"))?;
    if let Some((start, size)) = c.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", start + size)?;
    }
    f.end_node(chosen)?;

    let memory = f.begin_node(&format!("memory@{RAM_START:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &reg(RAM_START, c.ram_size))?;
    f.end_node(memory)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    for id in 0..c.cpus {
        let cpu = f.begin_node(&format!("cpu@{id:x}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_string("compatible", "arm,arm-v8")?;
        f.property_string("enable-method", "psci")?;
        // MPIDR affinity: Aff0 = the vCPU index (16 per cluster would need Aff1; kept flat).
        f.property_u32("reg", id)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    f.property_string("method", "hvc")?;
    f.end_node(psci)?;

    let gic = f.begin_node(&format!("intc@{GIC_DIST_START:x}"))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_null("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_array_u64(
        "reg",
        &[
            GIC_DIST_START,
            GIC_DIST_SIZE,
            GIC_REDIST_START,
            gic_redist_size(c.cpus),
        ],
    )?;
    f.property_u32("phandle", GIC_PHANDLE)?;
    f.end_node(gic)?;

    let timer = f.begin_node("timer")?;
    f.property_string("compatible", "arm,armv8-timer")?;
    let mut irqs = Vec::new();
    for ppi in [
        TIMER_PPI_SECURE,
        TIMER_PPI_NONSECURE,
        TIMER_PPI_VIRTUAL,
        TIMER_PPI_HYP,
    ] {
        irqs.extend([IRQ_TYPE_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    f.property_array_u32("interrupts", &irqs)?;
    f.property_null("always-on")?;
    f.end_node(timer)?;

    let uart = f.begin_node(&format!("uart@{UART_START:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &reg(UART_START, UART_SIZE))?;
    f.property_array_u32("interrupts", &[IRQ_TYPE_SPI, UART_SPI, IRQ_EDGE_RISING])?;
    f.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    f.end_node(uart)?;

    for n in 0..c.virtio_devices {
        let base = virtio_mmio_window(u64::from(n));
        let node = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &reg(base, MMIO_WINDOW_SIZE))?;
        f.property_array_u32(
            "interrupts",
            &[IRQ_TYPE_SPI, VIRTIO_SPI_START + n, IRQ_EDGE_RISING],
        )?;
        f.property_null("dma-coherent")?;
        f.end_node(node)?;
    }

    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn config() -> FdtConfig {
        FdtConfig {
            cpus: 4,
            ram_size: 512 << 20,
            cmdline: "console=ttyS0 earlycon".into(),
            initrd: Some((0x5000_0000, 0x10_0000)),
            virtio_devices: 2,
        }
    }

    #[test]
    fn builds_a_blob() {
        let blob = build(&config()).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
    }

    /// Decompiles with `dtc` (Debian `device-tree-compiler`, installed by scripts/test.sh),
    /// asserts on nodes and properties, and requires dtc's own checks to pass silently.
    #[test]
    fn dtc_accepts_it_without_warnings() {
        if Command::new("dtc").arg("--version").output().is_err() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true but no dtc"
            );
            eprintln!("SKIPPED: dtc not installed (apt-get install device-tree-compiler)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vibe-fdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dtb = dir.join("vm.dtb");
        std::fs::write(&dtb, build(&config()).unwrap()).unwrap();
        let dts = dtc(&["-I", "dtb", "-O", "dts"], &dtb);
        for want in [
            "compatible = \"linux,dummy-virt\";",
            "bootargs = \"console=ttyS0 earlycon\";",
            "stdout-path = \"/uart@9000000\";",
            "linux,initrd-start = <0x00 0x50000000>;",
            "linux,initrd-end = <0x00 0x50100000>;",
            "memory@40000000 {",
            "reg = <0x00 0x40000000 0x00 0x20000000>;",
            "cpu@3 {",
            "enable-method = \"psci\";",
            "compatible = \"arm,psci-1.0\\0arm,psci-0.2\";",
            "method = \"hvc\";",
            "compatible = \"arm,gic-v3\";",
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x80000>;",
            "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;",
            "compatible = \"ns16550a\";",
            "virtio_mmio@a001000 {",
            "interrupts = <0x00 0x11 0x01>;",
        ] {
            assert!(dts.contains(want), "no {want:?} in:\n{dts}");
        }
        assert_eq!(dts.matches("device_type = \"cpu\";").count(), 4);
        // And back: the decompiled source compiles with every check on and no warnings.
        let dts_path = dir.join("vm.dts");
        std::fs::write(&dts_path, dts.as_bytes()).unwrap();
        let again = dir.join("again.dtb");
        dtc(
            &["-I", "dts", "-O", "dtb", "-o", again.to_str().unwrap()],
            &dts_path,
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Runs dtc on `input`; it must succeed without a word on stderr. Returns its stdout.
    fn dtc(args: &[&str], input: &std::path::Path) -> String {
        let out = Command::new("dtc").args(args).arg(input).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "dtc said: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
