//! Exit statistics, always on: per vCPU, how many exits of each kind and how long the VMM
//! spent handling them, and which device on the port and MMIO buses answered.
//!
//! Each vCPU thread is the only writer of its own [`VcpuStats`], so a count is a plain load
//! and store of an atomic (no locked instruction, no lock): other threads (the API, the
//! `--stats` report) only read, and may see a count one exit behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why a vCPU left the guest, as the statistics and the exit trace group it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    PioIn,
    PioOut,
    /// `rep ins` / `rep outs`: one exit for many elements.
    PioString,
    MmioRead,
    MmioWrite,
    /// An MMIO access the VMM decoded itself (hypervisors that do not decode instructions).
    MmioEmulated,
    Halt,
    InterruptWindow,
    /// Kicked out of the guest (stop, pause, an interrupt for the userspace irqchip).
    Interrupted,
    /// An instruction the hypervisor could not emulate, finished by the VMM (`int3`, `clac`...).
    EmulationFallback,
    /// Power off, reset or crash reported by the hypervisor.
    SystemEvent,
    /// Triple fault.
    Shutdown,
    /// Internal error, failed entry, unhandled exit: the VM stops.
    Error,
}

impl ExitKind {
    pub const ALL: [ExitKind; 13] = [
        ExitKind::PioIn,
        ExitKind::PioOut,
        ExitKind::PioString,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::MmioEmulated,
        ExitKind::Halt,
        ExitKind::InterruptWindow,
        ExitKind::Interrupted,
        ExitKind::EmulationFallback,
        ExitKind::SystemEvent,
        ExitKind::Shutdown,
        ExitKind::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExitKind::PioIn => "pio_in",
            ExitKind::PioOut => "pio_out",
            ExitKind::PioString => "pio_string",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::MmioEmulated => "mmio_emulated",
            ExitKind::Halt => "hlt",
            ExitKind::InterruptWindow => "irq_window",
            ExitKind::Interrupted => "interrupted",
            ExitKind::EmulationFallback => "emulation_fallback",
            ExitKind::SystemEvent => "system_event",
            ExitKind::Shutdown => "shutdown",
            ExitKind::Error => "error",
        }
    }

    /// The kind named `name` (as [`ExitKind::name`] spells it).
    pub fn from_name(name: &str) -> Option<ExitKind> {
        ExitKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A counter with a single writer: increments are a load and a store, not a locked add.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where on a bus an access went: a device's index ([`devices::Bus::devices`]), the
/// accessing vCPU's own local APIC, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Device(usize),
    LocalApic,
    Unclaimed,
}

/// One vCPU's counters, written only by its thread.
pub struct VcpuStats {
    exits: [Counter; ExitKind::ALL.len()],
    nanos: [Counter; ExitKind::ALL.len()],
    /// One per port-bus device, then unclaimed.
    pio: Box<[Counter]>,
    /// One per MMIO-bus device, then the local APIC, then unclaimed.
    mmio: Box<[Counter]>,
}

impl VcpuStats {
    pub(crate) fn new(pio_devices: usize, mmio_devices: usize) -> Self {
        let counters = |n: usize| (0..n).map(|_| Counter::default()).collect();
        VcpuStats {
            exits: Default::default(),
            nanos: Default::default(),
            pio: counters(pio_devices + 1),
            mmio: counters(mmio_devices + 2),
        }
    }

    /// Counts one exit of `kind` that took `spent` to handle.
    #[inline]
    pub(crate) fn exit(&self, kind: ExitKind, spent: Duration) {
        self.exits[kind as usize].add(1);
        self.nanos[kind as usize].add(spent.as_nanos() as u64);
    }

    #[inline]
    pub(crate) fn pio(&self, target: Target) {
        let i = match target {
            Target::Device(i) => i,
            _ => self.pio.len() - 1,
        };
        if let Some(c) = self.pio.get(i) {
            c.add(1);
        }
    }

    #[inline]
    pub(crate) fn mmio(&self, target: Target) {
        let n = self.mmio.len();
        let i = match target {
            Target::Device(i) => i,
            Target::LocalApic => n - 2,
            Target::Unclaimed => n - 1,
        };
        if let Some(c) = self.mmio.get(i) {
            c.add(1);
        }
    }

    fn reasons(&self) -> Vec<ReasonCount> {
        ExitKind::ALL
            .iter()
            .map(|&k| ReasonCount {
                reason: k.name().into(),
                count: self.exits[k as usize].get(),
                time_ns: self.nanos[k as usize].get(),
            })
            .collect()
    }
}

/// Exits of one reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
    /// Time the VMM spent handling them (from the exit to the next entry), in nanoseconds.
    pub time_ns: u64,
}

/// Accesses that reached one device (or the local APIC, or nothing).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceCount {
    pub device: String,
    /// The device's first port or address; absent for the local APIC and unclaimed accesses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    pub count: u64,
}

/// One vCPU's exits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuExits {
    pub vcpu: u32,
    pub exits: u64,
    pub reasons: Vec<ReasonCount>,
}

/// A copy of every counter at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// All vCPUs together.
    pub total: VcpuExits,
    pub vcpus: Vec<VcpuExits>,
    /// Port I/O exits by the device that answered (with `rep` string I/O as one access).
    pub pio: Vec<DeviceCount>,
    /// MMIO exits by the device that answered.
    pub mmio: Vec<DeviceCount>,
}

impl Stats {
    /// Exits of `kind` on every vCPU.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.total
            .reasons
            .iter()
            .find(|r| r.reason == kind.name())
            .map_or(0, |r| r.count)
    }

    /// Port I/O exits that reached the device named `name`.
    pub fn pio_count(&self, name: &str) -> u64 {
        self.pio
            .iter()
            .filter(|d| d.device == name)
            .map(|d| d.count)
            .sum()
    }

    /// A table for people: reasons with their counts and mean handling time, then devices.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "exits: {} in total", self.total.exits);
        let _ = writeln!(
            s,
            "  {:<20} {:>12} {:>12} {:>10}",
            "reason", "count", "time (ms)", "mean (us)"
        );
        for r in self.total.reasons.iter().filter(|r| r.count > 0) {
            // Integer arithmetic: float formatting would cost the binary (and so every
            // vibe-vmm process's resident set) tens of KiB.
            let us = r.time_ns / 1000;
            let mean_ns = r.time_ns / r.count;
            let _ = writeln!(
                s,
                "  {:<20} {:>12} {:>8}.{:03} {:>7}.{:02}",
                r.reason,
                r.count,
                us / 1000,
                us % 1000,
                mean_ns / 1000,
                mean_ns % 1000 / 10
            );
        }
        if self.vcpus.len() > 1 {
            for v in &self.vcpus {
                let _ = writeln!(s, "  vcpu{}: {} exits", v.vcpu, v.exits);
            }
        }
        for (bus, devices) in [("port I/O", &self.pio), ("MMIO", &self.mmio)] {
            if devices.iter().all(|d| d.count == 0) {
                continue;
            }
            let _ = writeln!(s, "{bus} exits by device:");
            for d in devices.iter().filter(|d| d.count > 0) {
                let at = match (d.base, d.len) {
                    (Some(b), Some(l)) => format!("{b:#x}-{:#x}", b + l - 1),
                    _ => String::new(),
                };
                let _ = writeln!(s, "  {:<20} {:<24} {:>12}", d.device, at, d.count);
            }
        }
        s
    }
}

/// Every vCPU's counters and the names of the devices they count.
pub(crate) struct StatsRegistry {
    pub vcpus: Vec<std::sync::Arc<VcpuStats>>,
    pub pio_devices: Vec<(u64, u64, String)>,
    pub mmio_devices: Vec<(u64, u64, String)>,
}

impl StatsRegistry {
    pub(crate) fn new(
        cpus: u32,
        pio_devices: Vec<(u64, u64, String)>,
        mmio_devices: Vec<(u64, u64, String)>,
    ) -> Self {
        StatsRegistry {
            vcpus: (0..cpus)
                .map(|_| std::sync::Arc::new(VcpuStats::new(pio_devices.len(), mmio_devices.len())))
                .collect(),
            pio_devices,
            mmio_devices,
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let vcpus: Vec<VcpuExits> = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let reasons = v.reasons();
                VcpuExits {
                    vcpu: i as u32,
                    exits: reasons.iter().map(|r| r.count).sum(),
                    reasons,
                }
            })
            .collect();
        let mut total = VcpuExits {
            vcpu: 0,
            exits: vcpus.iter().map(|v| v.exits).sum(),
            reasons: ExitKind::ALL
                .iter()
                .map(|k| ReasonCount {
                    reason: k.name().into(),
                    count: 0,
                    time_ns: 0,
                })
                .collect(),
        };
        for v in &vcpus {
            for (t, r) in total.reasons.iter_mut().zip(&v.reasons) {
                t.count += r.count;
                t.time_ns += r.time_ns;
            }
        }
        let sum = |counters: fn(&VcpuStats) -> &[Counter], i: usize| -> u64 {
            self.vcpus.iter().map(|v| counters(v)[i].get()).sum()
        };
        let named = |devices: &[(u64, u64, String)], counters: fn(&VcpuStats) -> &[Counter]| {
            devices
                .iter()
                .enumerate()
                .map(|(i, (base, len, name))| DeviceCount {
                    device: name.clone(),
                    base: Some(*base),
                    len: Some(*len),
                    count: sum(counters, i),
                })
                .collect::<Vec<_>>()
        };
        let extra = |device: &str, count| DeviceCount {
            device: device.into(),
            base: None,
            len: None,
            count,
        };
        let mut pio = named(&self.pio_devices, |v| &v.pio);
        pio.push(extra("unclaimed", sum(|v| &v.pio, self.pio_devices.len())));
        let n = self.mmio_devices.len();
        let mut mmio = named(&self.mmio_devices, |v| &v.mmio);
        mmio.push(extra("local-apic", sum(|v| &v.mmio, n)));
        mmio.push(extra("unclaimed", sum(|v| &v.mmio, n + 1)));
        Stats {
            total,
            vcpus,
            pio,
            mmio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_vcpu_and_in_total() {
        let reg = StatsRegistry::new(2, vec![(0x80, 1, "post".into())], vec![]);
        for _ in 0..3 {
            reg.vcpus[0].exit(ExitKind::PioOut, Duration::from_nanos(10));
            reg.vcpus[0].pio(Target::Device(0));
        }
        reg.vcpus[1].exit(ExitKind::MmioRead, Duration::from_nanos(5));
        reg.vcpus[1].mmio(Target::Unclaimed);
        reg.vcpus[1].pio(Target::Unclaimed);
        let s = reg.snapshot();
        assert_eq!(s.total.exits, 4);
        assert_eq!(s.count(ExitKind::PioOut), 3);
        assert_eq!(s.vcpus[1].exits, 1);
        assert_eq!(s.pio_count("post"), 3);
        assert_eq!(s.pio_count("unclaimed"), 1);
        assert_eq!(s.mmio.last().unwrap().count, 1);
        let pio = s.total.reasons.iter().find(|r| r.reason == "pio_out");
        assert_eq!(pio.unwrap().time_ns, 30);
        assert!(s.render().contains("pio_out"));
        assert_eq!(ExitKind::from_name("hlt"), Some(ExitKind::Halt));
    }
}
