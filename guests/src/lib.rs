//! Tiny x86_64 guests, assembled from `asm/` at build time. Each proves one thing and reports
//! through the serial port and the debug-exit port (0xf4); see `asm/common.S` for the
//! conventions they share.

macro_rules! guest {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        pub const $name: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/", $file));
    };
}

guest!(
    /// The built-in demo: greets, reports memory, vCPUs, hypervisor and command line, exits 0.
    DEMO, "demo.elf");
guest!(
    /// Prints `ready`, waits for one byte of serial input, echoes `got <byte>`, exits 0.
    SERIAL_ECHO, "serial_echo.elf");
guest!(
    /// Port and MMIO round trips (1, 2, 4, 8 bytes) to the test device; exits 0 or the number
    /// of the failed check.
    IO, "io.elf");
guest!(
    /// Takes a local APIC timer interrupt in its IDT handler; exits 0 once it arrived.
    IRQ, "irq.elf");
guest!(
    /// Starts vCPU 1 with INIT/SIPI and waits for it to check in; exits 0 when it did.
    SMP, "smp.elf");
guest!(
    /// Prints the CPUID feature words it sees (leaf 1 ECX and EDX, leaf 7 EBX) in hex.
    CPUID, "cpuid.elf");
guest!(
    /// Drives virtio-blk disk 0 (write sector 5, flush, read back, get id) and checks that
    /// disk 1, if present, refuses writes; exits 0 or the failed check's number.
    VIRTIO_BLK, "virtio_blk.elf");
guest!(
    /// Greets through virtio-console, then echoes one input buffer as `got: <input>`.
    VIRTIO_CONSOLE, "virtio_console.elf");
guest!(
    /// Greets through the MMIO console, then echoes one input byte as `got <byte>`.
    MMIO_CONSOLE, "mmio_console.elf");
guest!(
    /// Sends a broadcast frame (ethertype 0x88b5) through virtio-net, then prints the payload
    /// of the first 0x88b5 frame it receives as `received: <payload>`.
    VIRTIO_NET, "virtio_net.elf");
guest!(
    /// Submits a virtio-blk flush and sleeps until the device's interrupt reaches its IDT
    /// handler through the IOAPIC; prints the InterruptStatus it acknowledged.
    VIRTIO_IRQ, "virtio_irq.elf");
guest!(
    /// Resets the machine through the i8042 controller.
    RESET, "reset.elf");
guest!(
    /// Powers off through ACPI as Linux does: FADT sleep control register and the DSDT's
    /// `_S5_` value; exits 1 if the machine stays on, 2 and up if a table is missing.
    ACPI_POWEROFF, "acpi_poweroff.elf");
guest!(
    /// Routes the ACPI GED's interrupt (IOAPIC pin 3) to its handler and waits in HLT; the
    /// handler reads the GED's event status and, for a power-button press, powers off with
    /// S5 on the sleep control register. Exits 1 if the machine stays on.
    POWER_BUTTON, "power_button.elf");
guest!(
    /// Faults with no IDT: a triple fault.
    TRIPLE_FAULT, "triple_fault.elf");
guest!(
    /// Benchmark guest with a PVH entry (QEMU boots it too): prints a line, exits 0.
    BENCH_TINY, "bench_tiny.elf");
guest!(
    /// Benchmark guest with a PVH entry: 20,000 `out`s to port 0x80, then exits 0.
    BENCH_PIO, "bench_pio.elf");
guest!(
    /// Benchmark guest: 10,000 virtio-blk FLUSH requests to disk 0 over virtio-mmio, one at a
    /// time, each waited for in HLT until its interrupt (IOAPIC pin 5) arrives; exits 0.
    BENCH_IRQ_MMIO, "bench_irq_mmio.elf");
guest!(
    /// [`BENCH_IRQ_MMIO`] over virtio-pci (`--transport pci`), each completion an MSI-X
    /// message; exits 0.
    BENCH_IRQ_PCI, "bench_irq_pci.elf");
guest!(
    /// The demo guest entered through its PVH note (32-bit protected mode).
    PVH_HELLO, "pvh_hello.elf");
guest!(
    /// MMIO with many instruction forms, each bracketed by `out 0xe0`/`out 0xe1`, first in
    /// 32-bit protected mode (entered at `_start + 16` by the emulator test, ends with
    /// `out 0xe2`), then in 64-bit mode (`_start`, ends with status 0 on the debug-exit port).
    EMULATE, "emulate.elf");
guest!(
    /// String port I/O: `rep ins` then `rep outs` of 1, 2, 4 and 16 bytes, 3 words, 4 dwords,
    /// 600 dwords across a page and 5000 bytes, at port 0x520; exits 0.
    STRING_IO, "string_io.elf");
guest!(
    /// A periodic LAPIC timer with a 1 ns period as written; counts its interrupts forever and
    /// prints `100 timer interrupts` once it has them.
    TIMER_STORM, "timer_storm.elf");
guest!(
    /// The timer storm from the PIT: channel 0 in mode 2 with a count of 1, through IOAPIC
    /// pin 0 (needs `--no-acpi`); prints `100 timer interrupts` after the first 100.
    TIMER_STORM_PIT, "timer_storm_pit.elf");
guest!(
    /// Routes the serial line (IOAPIC pin 4) to APIC 0, enables the received-data interrupt,
    /// exits 0.
    SERIAL_IRQ, "serial_irq.elf");
guest!(
    /// Writes to COM1 for ever, with and without waiting for LSR.THRE.
    SERIAL_FLOOD, "serial_flood.elf");
guest!(
    /// A hostile virtio driver: runs the virtqueue-abuse scenarios named by the letters of its
    /// command line against disk 0 (and the virtio-console), then checks that disk 1 and
    /// disk 0 (reset) still complete requests; exits 0 or the failed check's number (see
    /// `asm/virtq_abuse.S`).
    VIRTQ_ABUSE, "virtq_abuse.elf");
guest!(
    /// Pseudo-random reads and writes over every device window (KVM's irqchip), then proves
    /// the 16550, virtio-blk disk 0, the virtio-console and the MMIO console still work;
    /// exits 42 (see `asm/window_chaos.S`).
    WINDOW_CHAOS, "window_chaos.elf");
guest!(
    /// [`WINDOW_CHAOS`] that also hammers vibe-vmm's own IOAPIC and local APIC
    /// (`--irqchip userspace`).
    WINDOW_CHAOS_USERSPACE, "window_chaos_userspace.elf");
guest!(
    /// Enumerates PCI bus 0 through ports 0xcf8/0xcfc and ECAM, checks both show the same
    /// config space (dwords, words, bytes) and that absent functions and bus 1 read all-ones;
    /// prints each function's IDs, registers, BARs and capabilities (see `asm/pci_enum.S`).
    PCI_ENUM, "pci_enum.elf");
guest!(
    /// Sizes, moves and disables BAR0 of PCI device 00:01.0 (a virtio-blk disk), checks where
    /// the device answers and that a request notified at the moved BAR completes; exits 0 or
    /// the failed check's number.
    PCI_BAR, "pci_bar.elf");
guest!(
    /// virtio-blk over virtio-pci with MSI-X: write, flush, read back, each completion waited
    /// for in HLT; then entry and function masking with the pending bits.
    PCI_VIRTIO_BLK, "pci_virtio_blk.elf");
/// Set before [`PCI_VIRTIO_BLK`] starts, it waits between its flush and its read
/// ([`SNAPSHOT_SMP_PHASE`] = 1) until [`SNAPSHOT_SMP_GATE`] >= 1.
pub const PCI_VIRTIO_BLK_ARMED: u64 = 0x1f0018;
guest!(
    /// virtio-net over virtio-pci with MSI-X: a frame each way, as [`VIRTIO_NET`] does.
    PCI_VIRTIO_NET, "pci_virtio_net.elf");
guest!(
    /// A virtio-blk flush over virtio-pci completing through INTx and the IOAPIC, MSI-X off.
    PCI_INTX, "pci_intx.elf");
guest!(
    /// A hostile PCI driver against two virtio-blk functions: overlapping BARs, BARs over
    /// the LAPIC, IOAPIC, ECAM and RAM, garbage MSI-X messages, every common-configuration
    /// field and notify offset at every width, NEEDS_RESET over and over, MSI-X toggling; the
    /// scenarios are the letters of its command line (see `asm/pci_hostile.S`).
    PCI_HOSTILE, "pci_hostile.elf");
guest!(
    /// Drives the fake VFIO device (1b36:0100) through vibe-vmm's passthrough layer: finds
    /// it, sizes its BARs and moves BAR 2, registers through BAR 0, fills BAR 2, a DMA into
    /// RAM completed by MSI-X vector 0; exits 0 or the failed check's number.
    VFIO, "vfio.elf");
guest!(
    /// The fake VFIO device's interrupts, each kind it offers in turn: INTx twice (the
    /// second needs the first's EOI to unmask the line), then MSI vector 1, then MSI-X
    /// vector 0; exits 0 or the failed check's number.
    VFIO_IRQ, "vfio_irq.elf");
guest!(
    /// 1000 `out`s to port 0x80, then a 64-bit progress counter at [`COUNTER_ADDR`] that goes
    /// up for ever (the API tests pause it and watch).
    COUNTER, "counter.elf");
/// Where [`COUNTER`] keeps its progress counter.
pub const COUNTER_ADDR: u64 = 0x1f_0000;
/// How many port writes [`COUNTER`] makes before it counts.
pub const COUNTER_WRITES: u64 = 1000;
guest!(
    /// A known sequence of exits for the exit-trace test: `out` to port 0x80, `out` and `in`
    /// of 4 bytes at the test device's port 0x510, an MMIO write and read in its page at
    /// 0xd1001000, then exit 0.
    TRACE, "trace.elf");
guest!(
    /// Masks the 8259s found by their mask register, takes 10 PIT ticks through IOAPIC pin 0
    /// (counted at [`PIT_TICKS`]), reads channel 0's latched count and times channel 2
    /// through port B; prints
    /// `PIT ticks: 10` and exits 0, or the failed check's number. Needs `--no-acpi`.
    PIT, "pit.elf");
/// Where [`PIT`] counts its ticks.
pub const PIT_TICKS: u64 = 0x1f0000;
guest!(
    /// Hashes 0..500,000 while its LAPIC timer ticks (the loop index at [`SNAPSHOT_COUNTER`]),
    /// waits for 10 more ticks, prints `result <hash>`, exits 0: snapshotted mid-run by the
    /// snapshot tests.
    SNAPSHOT, "snapshot.elf");

/// Where the snapshot guest keeps its loop index.
pub const SNAPSHOT_COUNTER: u64 = 0x1f0000;
guest!(
    /// Two vCPUs for the snapshot tests: vCPU 0 ticks and hashes, stops at gate 1
    /// ([`SNAPSHOT_SMP_PHASE`] = 1, vCPU 1 still waiting for its STARTUP IPI) until
    /// [`SNAPSHOT_SMP_GATE`] >= 1, starts vCPU 1 (which hashes in real mode and halts), stops at
    /// gate 2 (phase 2) until the gate is >= 2, prints `result <hash0> <hash1>`, exits 0.
    SNAPSHOT_SMP, "snapshot_smp.elf");
/// Where [`SNAPSHOT_SMP`] says which gate it waits at.
pub const SNAPSHOT_SMP_PHASE: u64 = 0x1f0010;
/// What the test writes to open [`SNAPSHOT_SMP`]'s gates.
pub const SNAPSHOT_SMP_GATE: u64 = 0x1f0008;
guest!(
    /// virtio-blk across a snapshot: writes sector 5 of disk 0, waits at gate 1
    /// ([`SNAPSHOT_SMP_PHASE`] = 1) until [`SNAPSHOT_SMP_GATE`] >= 1, then reads sector 5 back
    /// and writes and reads sector 6 through the same queue; prints `result <byte sum>`,
    /// exits 0.
    SNAPSHOT_BLK, "snapshot_blk.elf");
guest!(
    /// virtio-net across a snapshot (polling, no interrupts): sends `guest frame 1` and
    /// prints the frame of ethertype 0x88b5 it gets back (`received: <payload>`), waits at
    /// gate 1 ([`SNAPSHOT_SMP_PHASE`] = 1) until [`SNAPSHOT_SMP_GATE`] >= 1, then does the same
    /// with `guest frame 2` through the same queues; prints `result rx <n> tx <n>` (the used
    /// indices), exits 0.
    SNAPSHOT_NET, "snapshot_net.elf");
