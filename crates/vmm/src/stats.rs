//! Statistics, always on: per vCPU, how many exits of each kind and how long the VMM spent
//! handling them, and which device on the port and MMIO buses answered; per virtio queue,
//! the requests, bytes and errors its device counted; per interrupt line, the interrupts the
//! VMM raised on it ([`crate::irq_counts`]).
//!
//! Each vCPU thread is the only writer of its own [`VcpuStats`], so a count is a plain load
//! and store of an atomic (no locked instruction, no lock): other threads (the API, the
//! `--stats` report) only read, and may see a count one exit behind. The device counters work
//! the same way ([`devices::virtio::counters`]); a snapshot reads them without any device's
//! lock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use devices::counter::Counter;
use devices::virtio::counters::queue_name;

use crate::device_manager::DeviceCounts;

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

/// What one virtio queue's device did with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    pub queue: u32,
    /// What the queue carries ("requests", "rx", "tx").
    pub name: String,
    /// Chains the device returned to the driver.
    pub requests: u64,
    /// Data bytes moved between guest memory and the back end (disk data; frames with their
    /// virtio-net header; console bytes).
    pub bytes: u64,
    /// Chains answered with an error or dropped as malformed (counted in `requests` too).
    pub errors: u64,
}

/// One virtio device's queues and the interrupts it raised.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VirtioStats {
    /// "virtio-blk0": the type and a number per type, in command-line order.
    pub device: String,
    /// "mmio" or "pci".
    pub transport: String,
    pub queues: Vec<QueueStats>,
    /// Used-buffer interrupts the device raised (a masked MSI-X vector holds one pending;
    /// `interrupts` shows what its lines delivered).
    pub used_interrupts: u64,
    /// Configuration-change interrupts (a device that needs a reset raises one).
    pub config_interrupts: u64,
}

/// Interrupts the VMM raised on one line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterruptCount {
    /// "gsi 5" (an interrupt line: an IOAPIC pin on x86, a GIC SPI on arm64) or "msi-x 1".
    pub line: String,
    /// The device the line belongs to ("serial", "virtio-blk0", "vfio0").
    pub device: String,
    pub count: u64,
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
    /// The virtio devices, in command-line order.
    #[serde(default)]
    pub virtio: Vec<VirtioStats>,
    /// Every interrupt line and MSI-X vector the VMM handed a device.
    #[serde(default)]
    pub interrupts: Vec<InterruptCount>,
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

    /// The virtio device named `name` ("virtio-blk0").
    pub fn virtio_device(&self, name: &str) -> Option<&VirtioStats> {
        self.virtio.iter().find(|d| d.device == name)
    }

    /// Interrupts raised on all the lines of the device named `name`.
    pub fn interrupts_of(&self, name: &str) -> u64 {
        self.interrupts
            .iter()
            .filter(|i| i.device == name)
            .map(|i| i.count)
            .sum()
    }

    /// A table for people: reasons with their counts and mean handling time, then devices,
    /// virtio queues and interrupt lines.
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
        if !self.virtio.is_empty() {
            let _ = writeln!(s, "virtio queues:");
            let _ = writeln!(
                s,
                "  {:<20} {:<12} {:>12} {:>14} {:>8}",
                "device", "queue", "requests", "bytes", "errors"
            );
            for d in &self.virtio {
                for q in &d.queues {
                    let _ = writeln!(
                        s,
                        "  {:<20} {:<12} {:>12} {:>14} {:>8}",
                        d.device,
                        format!("{} {}", q.queue, q.name),
                        q.requests,
                        q.bytes,
                        q.errors
                    );
                }
                let _ = writeln!(
                    s,
                    "  {:<20} interrupts raised: {} used, {} config ({})",
                    d.device, d.used_interrupts, d.config_interrupts, d.transport
                );
            }
        }
        if self.interrupts.iter().any(|i| i.count > 0) {
            let _ = writeln!(s, "interrupts by line:");
            for i in self.interrupts.iter().filter(|i| i.count > 0) {
                let _ = writeln!(s, "  {:<20} {:<24} {:>12}", i.device, i.line, i.count);
            }
        }
        s
    }
}

/// Every vCPU's counters and the names of the devices they count, and the devices' own
/// counters.
pub(crate) struct StatsRegistry {
    pub vcpus: Vec<std::sync::Arc<VcpuStats>>,
    pub pio_devices: Vec<(u64, u64, String)>,
    pub mmio_devices: Vec<(u64, u64, String)>,
    pub devices: DeviceCounts,
}

impl StatsRegistry {
    pub(crate) fn new(
        cpus: u32,
        pio_devices: Vec<(u64, u64, String)>,
        mmio_devices: Vec<(u64, u64, String)>,
        devices: DeviceCounts,
    ) -> Self {
        StatsRegistry {
            vcpus: (0..cpus)
                .map(|_| std::sync::Arc::new(VcpuStats::new(pio_devices.len(), mmio_devices.len())))
                .collect(),
            pio_devices,
            mmio_devices,
            devices,
        }
    }

    fn virtio(&self) -> Vec<VirtioStats> {
        self.devices
            .virtio
            .iter()
            .map(|(name, transport, c)| VirtioStats {
                device: name.clone(),
                transport: (*transport).into(),
                queues: c
                    .queues()
                    .iter()
                    .enumerate()
                    .map(|(i, q)| QueueStats {
                        queue: i as u32,
                        name: queue_name(c.device_type(), i).into(),
                        requests: q.requests.get(),
                        bytes: q.bytes.get(),
                        errors: q.errors.get(),
                    })
                    .collect(),
                used_interrupts: c.used_interrupts.get(),
                config_interrupts: c.config_interrupts.get(),
            })
            .collect()
    }

    fn interrupts(&self) -> Vec<InterruptCount> {
        self.devices
            .lines
            .iter()
            .map(|l| InterruptCount {
                line: l.line.clone(),
                device: l.device.clone(),
                count: l.count.load(Ordering::Relaxed),
            })
            .collect()
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
            virtio: self.virtio(),
            interrupts: self.interrupts(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_vcpu_and_in_total() {
        let reg = StatsRegistry::new(
            2,
            vec![(0x80, 1, "post".into())],
            vec![],
            DeviceCounts::default(),
        );
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

    #[test]
    fn virtio_queues_and_interrupt_lines_are_in_the_snapshot() {
        use devices::virtio::counters::DeviceCounters;
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        let blk = Arc::new(DeviceCounters::new(devices::virtio::TYPE_BLOCK, 1));
        let line = Arc::new(AtomicU64::new(0));
        let devices = DeviceCounts {
            virtio: vec![("virtio-blk0".into(), "mmio", blk.clone())],
            lines: vec![crate::irq_counts::LineCount {
                line: "gsi 5".into(),
                device: "virtio-blk0".into(),
                count: line.clone(),
            }],
        };
        let reg = StatsRegistry::new(1, vec![], vec![], devices);
        let q = &blk.queues()[0];
        q.requests.add(4);
        q.bytes.add(1044);
        q.errors.add(1);
        blk.used_interrupts.add(4);
        line.fetch_add(4, Ordering::Relaxed);
        let s = reg.snapshot();
        let d = s.virtio_device("virtio-blk0").unwrap();
        assert_eq!(d.transport, "mmio");
        let want = QueueStats {
            queue: 0,
            name: "requests".into(),
            requests: 4,
            bytes: 1044,
            errors: 1,
        };
        assert_eq!(d.queues, [want]);
        assert_eq!((d.used_interrupts, d.config_interrupts), (4, 0));
        assert_eq!(s.interrupts_of("virtio-blk0"), 4);
        let text = s.render();
        assert!(text.contains("0 requests"), "{text}");
        assert!(text.contains("1044"), "{text}");
        assert!(text.contains("4 used, 0 config (mmio)"), "{text}");
        assert!(text.contains("gsi 5"), "{text}");
        // Statistics from a VMM without these fields still parse.
        let mut old = serde_json::to_value(&s).unwrap();
        let map = old.as_object_mut().unwrap();
        map.remove("virtio");
        map.remove("interrupts");
        let parsed: Stats = serde_json::from_value(old).unwrap();
        assert!(parsed.virtio.is_empty() && parsed.interrupts.is_empty());
    }
}
