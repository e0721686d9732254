//! Interrupt counts: each interrupt line (GSI) and MSI vector the device manager hands a
//! device is wrapped so that every trigger is counted, whoever then delivers it: KVM (an
//! irqfd or `KVM_IRQ_LINE`, an MSI route) or, with `--irqchip userspace`, the VMM's own IOAPIC
//! and local APICs. A trigger that a passed-through device raises in the host kernel, through
//! the line's irqfd, never reaches the VMM and is not counted.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hypervisor::{IrqLine, MsiLine, MsiMessage};

use crate::device_manager::{IrqSource, MsiSource};
use crate::Result;

/// One counted line: which it is ("gsi 5", "msi-x 1"), the device it belongs to, and the
/// count its triggers add to.
#[derive(Clone)]
pub(crate) struct LineCount {
    pub line: String,
    pub device: String,
    pub count: Arc<AtomicU64>,
}

/// Adds one to a line's count. A locked add, unlike the exit counters: a line may be
/// triggered from more than one thread, and a trigger is a system call anyway.
fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct CountedIrq {
    line: Box<dyn IrqLine>,
    count: Arc<AtomicU64>,
}

impl IrqLine for CountedIrq {
    fn trigger(&self) -> io::Result<()> {
        count(&self.count);
        self.line.trigger()
    }
}

struct CountedMsi {
    line: Box<dyn MsiLine>,
    count: Arc<AtomicU64>,
}

impl MsiLine for CountedMsi {
    fn set_message(&self, message: Option<MsiMessage>) -> io::Result<()> {
        self.line.set_message(message)
    }

    fn trigger(&self) -> io::Result<()> {
        count(&self.count);
        self.line.trigger()
    }

    fn irqfd(&self) -> Option<RawFd> {
        self.line.irqfd()
    }
}

/// The lines handed out while the devices are built.
#[derive(Default)]
pub(crate) struct InterruptLines(RefCell<Vec<LineCount>>);

impl InterruptLines {
    fn add(&self, line: String, device: &str) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        self.0.borrow_mut().push(LineCount {
            line,
            device: device.into(),
            count: count.clone(),
        });
        count
    }

    /// Counts `line`, the interrupt line `gsi` of `device`.
    pub fn irq(&self, device: &str, gsi: u32, line: Box<dyn IrqLine>) -> Box<dyn IrqLine> {
        let count = self.add(format!("gsi {gsi}"), device);
        Box::new(CountedIrq { line, count })
    }

    /// `source`, with every line it gives counted as one of `device`'s.
    pub fn irq_source<'a>(
        &'a self,
        device: &'a str,
        source: &'a IrqSource<'a>,
    ) -> impl Fn(u32) -> Result<Box<dyn IrqLine>> + 'a {
        move |gsi| Ok(self.irq(device, gsi, source(gsi)?))
    }

    /// `source`, with every vector it gives counted as `device`'s next MSI-X vector.
    pub fn msi_source<'a>(
        &'a self,
        device: &'a str,
        source: &'a MsiSource<'a>,
    ) -> impl Fn() -> Result<Box<dyn MsiLine>> + 'a {
        move || {
            let line = source()?;
            let vector = self
                .0
                .borrow()
                .iter()
                .filter(|l| l.device == device && l.line.starts_with("msi"))
                .count();
            let count = self.add(format!("msi-x {vector}"), device);
            Ok(Box::new(CountedMsi { line, count }) as Box<dyn MsiLine>)
        }
    }

    pub fn into_counts(self) -> Vec<LineCount> {
        self.0.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl IrqLine for Nop {
        fn trigger(&self) -> io::Result<()> {
            Ok(())
        }
    }
    impl MsiLine for Nop {
        fn set_message(&self, _: Option<MsiMessage>) -> io::Result<()> {
            Ok(())
        }
        fn trigger(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_trigger_is_counted_on_its_own_line() {
        let lines = InterruptLines::default();
        let irq_source = |_gsi| Ok(Box::new(Nop) as Box<dyn IrqLine>);
        let msi_source = || Ok(Box::new(Nop) as Box<dyn MsiLine>);
        let irq = lines.irq_source("serial", &irq_source);
        let com1 = irq(4).unwrap();
        let msi = lines.msi_source("virtio-blk0", &msi_source);
        let (v0, v1) = (msi().unwrap(), msi().unwrap());
        for _ in 0..3 {
            com1.trigger().unwrap();
        }
        v1.trigger().unwrap();
        drop((irq, msi));
        let counts: Vec<(String, String, u64)> = lines
            .into_counts()
            .into_iter()
            .map(|l| (l.line, l.device, l.count.load(Ordering::Relaxed)))
            .collect();
        let want = [
            ("gsi 4", "serial", 3),
            ("msi-x 0", "virtio-blk0", 0),
            ("msi-x 1", "virtio-blk0", 1),
        ]
        .map(|(l, d, n)| (l.to_string(), d.to_string(), n));
        assert_eq!(counts, want);
        drop(v0);
    }
}
