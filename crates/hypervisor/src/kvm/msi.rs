//! MSI on KVM: the VM's GSI routing table and the lines that program it.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, the in-kernel PIC and IOAPIC routes of GSIs
//! 0-23 included, so each VM has exactly one [`Routes`], behind a mutex, through which every
//! change goes: it starts as KVM's own default table and adds one MSI entry per line whose
//! message is set. A pure value (a list of [`Route`]s), so the table logic is tested without
//! KVM; [`to_kvm`] turns it into the ioctl's entries.
//!
//! Two kinds of line: [`RoutedMsi`] owns a GSI from 24 up, with an irqfd on it (a trigger is a
//! write to an eventfd, no system call into the VM); [`SignalledMsi`] needs no GSI and sends
//! its message with KVM_SIGNAL_MSI on each trigger. Both hold the VM weakly, like
//! [`super::KvmIrqPulse`]: a device that outlives the VM must not keep guest memory mapped
//! into it.
//!
//! x86 only so far: arm64 Linux creates no in-kernel irqchip yet, so its VMs have no table.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, MsiLine, MsiMessage};

/// `KVM_IRQCHIP_PIC_MASTER`, `_PIC_SLAVE` and `_IOAPIC` (x86 only in the kernel headers; the
/// table logic compiles everywhere).
pub(crate) const PIC_MASTER: u32 = 0;
pub(crate) const PIC_SLAVE: u32 = 1;
pub(crate) const IOAPIC: u32 = 2;

/// IOAPIC pins, and so the GSIs the default table routes; MSI lines get GSIs from here up.
pub(crate) const IOAPIC_PINS: u32 = 24;

/// Where a GSI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Pin `pin` of in-kernel interrupt controller `chip` ([`PIC_MASTER`], ...).
    Irqchip { gsi: u32, chip: u32, pin: u32 },
    /// A message-signalled interrupt.
    Msi { gsi: u32, message: MsiMessage },
}

/// A VM's GSI routing table.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    /// The interrupt controllers' pins: never change.
    fixed: Vec<Route>,
    /// The MSI lines by GSI, with their message (`None`: disabled, no entry in the table).
    msi: BTreeMap<u32, Option<MsiMessage>>,
    /// GSIs are below this, and the table has at most this many entries (KVM_CAP_IRQ_ROUTING,
    /// capped at what the ioctl's wrapper takes).
    max: u32,
}

impl Routes {
    /// KVM's default x86 table (`default_routing` in the kernel's irq code, which
    /// KVM_CREATE_IRQCHIP installs): GSIs 0-15 to both the IOAPIC pin and the PIC pin of the
    /// same number (master 0-7, slave 8-15; GSI 2 too, the cascade pin, as the kernel does),
    /// 16-23 to the IOAPIC only. Whether the PIT exists does not change it.
    pub(crate) fn x86_default(max: u32) -> Self {
        let mut fixed = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            fixed.push(Route::Irqchip {
                gsi,
                chip: IOAPIC,
                pin: gsi,
            });
            if gsi < 16 {
                let chip = if gsi < 8 { PIC_MASTER } else { PIC_SLAVE };
                fixed.push(Route::Irqchip {
                    gsi,
                    chip,
                    pin: gsi % 8,
                });
            }
        }
        Routes {
            fixed,
            msi: BTreeMap::new(),
            max: max.min(kvm_bindings::KVM_MAX_IRQ_ROUTES as u32),
        }
    }

    /// A free GSI for a new MSI line, from [`IOAPIC_PINS`] up; the line has no entry until
    /// [`Routes::set`] gives it a message.
    pub(crate) fn allocate(&mut self) -> Result<u32, Error> {
        let in_use = (self.fixed.len() + self.msi.len()) as u32;
        let exhausted = Error::GsisExhausted {
            max: self.max,
            in_use,
        };
        // Room for this line's entry when every line has one.
        if in_use >= self.max {
            return Err(exhausted);
        }
        let gsi = (IOAPIC_PINS..self.max)
            .find(|g| !self.msi.contains_key(g))
            .ok_or(exhausted)?;
        self.msi.insert(gsi, None);
        Ok(gsi)
    }

    /// Sets the message of the line on `gsi` (`None`: removes its entry); returns the previous
    /// one, so that a caller whose ioctl failed can put it back. Unknown GSIs are ignored.
    pub(crate) fn set(&mut self, gsi: u32, message: Option<MsiMessage>) -> Option<MsiMessage> {
        match self.msi.get_mut(&gsi) {
            Some(m) => std::mem::replace(m, message),
            None => None,
        }
    }

    /// Frees the line's GSI; returns whether the table lost an entry (and must be re-issued).
    pub(crate) fn release(&mut self, gsi: u32) -> bool {
        self.msi.remove(&gsi).flatten().is_some()
    }

    /// The whole table, as KVM_SET_GSI_ROUTING takes it.
    pub(crate) fn entries(&self) -> Vec<Route> {
        let msi = self
            .msi
            .iter()
            .filter_map(|(&gsi, m)| m.map(|message| Route::Msi { gsi, message }));
        self.fixed.iter().copied().chain(msi).collect()
    }

    /// Issues the table.
    fn apply(&self, vm: &VmFd) -> io::Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = self.entries().iter().map(to_kvm).collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("{} routing entries: {e:?}", entries.len())))?;
        vm.set_gsi_routing(&table).map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("KVM_SET_GSI_ROUTING failed: {e}"))
        })
    }
}

/// One route as the kernel takes it.
pub(crate) fn to_kvm(route: &Route) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry::default();
    match *route {
        Route::Irqchip { gsi, chip, pin } => {
            e.gsi = gsi;
            e.type_ = kvm_bindings::KVM_IRQ_ROUTING_IRQCHIP;
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
        }
        Route::Msi { gsi, message } => {
            e.gsi = gsi;
            e.type_ = kvm_bindings::KVM_IRQ_ROUTING_MSI;
            e.u.msi.address_lo = message.address as u32;
            e.u.msi.address_hi = (message.address >> 32) as u32;
            e.u.msi.data = message.data;
        }
    }
    e
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An MSI line with a GSI of its own: an MSI entry in the routing table while it has a
/// message, and an irqfd that KVM turns into that message.
pub(crate) struct RoutedMsi {
    vm: Weak<VmFd>,
    routes: Arc<Mutex<Routes>>,
    gsi: u32,
    evt: EventFd,
    /// Whether the line has a message (a trigger without one does nothing, not even a write).
    enabled: AtomicBool,
}

impl RoutedMsi {
    /// Allocates a GSI in `routes` and binds a new eventfd to it.
    pub(crate) fn new(vm: &Arc<VmFd>, routes: &Arc<Mutex<Routes>>) -> crate::Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(crate::os_err("eventfd"))?;
        let mut table = lock(routes);
        let gsi = table.allocate()?;
        // No route yet: a write before the first message goes nowhere.
        if let Err(e) = vm.register_irqfd(&evt, gsi) {
            table.release(gsi);
            return Err(crate::os_err("KVM_IRQFD")(e));
        }
        drop(table);
        Ok(RoutedMsi {
            vm: Arc::downgrade(vm),
            routes: routes.clone(),
            gsi,
            evt,
            enabled: AtomicBool::new(false),
        })
    }
}

impl MsiLine for RoutedMsi {
    fn set_message(&self, message: Option<MsiMessage>) -> io::Result<()> {
        let mut routes = lock(&self.routes);
        let old = routes.set(self.gsi, message);
        if old != message {
            // The VM is gone: nothing to program.
            if let Some(vm) = self.vm.upgrade() {
                if let Err(e) = routes.apply(&vm) {
                    routes.set(self.gsi, old);
                    return Err(e);
                }
            }
        }
        self.enabled.store(message.is_some(), Ordering::Release);
        Ok(())
    }

    fn trigger(&self) -> io::Result<()> {
        if !self.enabled.load(Ordering::Acquire) {
            return Ok(());
        }
        self.evt.write(1)
    }

    fn irqfd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.evt.as_raw_fd())
    }
}

impl Drop for RoutedMsi {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        let had_entry = routes.release(self.gsi);
        let Some(vm) = self.vm.upgrade() else {
            return;
        };
        // Best effort: the descriptor closes with the VM anyway. The entry goes too, so that
        // the next line to get this GSI starts with no message.
        let _ = vm.unregister_irqfd(&self.evt, self.gsi);
        if had_entry {
            let _ = routes.apply(&vm);
        }
    }
}

/// An MSI line without a GSI: each trigger sends the message with KVM_SIGNAL_MSI.
pub(crate) struct SignalledMsi {
    vm: Weak<VmFd>,
    message: Mutex<Option<MsiMessage>>,
}

impl SignalledMsi {
    pub(crate) fn new(vm: &Arc<VmFd>) -> Self {
        SignalledMsi {
            vm: Arc::downgrade(vm),
            message: Mutex::new(None),
        }
    }
}

impl MsiLine for SignalledMsi {
    fn set_message(&self, message: Option<MsiMessage>) -> io::Result<()> {
        *lock(&self.message) = message;
        Ok(())
    }

    fn trigger(&self) -> io::Result<()> {
        let Some(message) = *lock(&self.message) else {
            return Ok(());
        };
        let Some(vm) = self.vm.upgrade() else {
            return Ok(());
        };
        let msi = kvm_msi {
            address_lo: message.address as u32,
            address_hi: (message.address >> 32) as u32,
            data: message.data,
            ..Default::default()
        };
        // 0: the target APICs refused it (software-disabled, say); EPERM: no APIC has the
        // destination the guest programmed. Both are the guest's business: on hardware the
        // message is dropped too, and the device cannot tell.
        match vm.signal_msi(msi) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == libc::EPERM => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(vector: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data: vector,
        }
    }

    #[test]
    fn the_default_table_is_the_kernels() {
        let t = Routes::x86_default(4096);
        let e = t.entries();
        assert_eq!(e.len(), 24 + 16);
        let pins = |gsi: u32| -> Vec<(u32, u32)> {
            e.iter()
                .filter_map(|r| match *r {
                    Route::Irqchip { gsi: g, chip, pin } if g == gsi => Some((chip, pin)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(pins(0), [(IOAPIC, 0), (PIC_MASTER, 0)]);
        assert_eq!(pins(2), [(IOAPIC, 2), (PIC_MASTER, 2)]);
        assert_eq!(pins(7), [(IOAPIC, 7), (PIC_MASTER, 7)]);
        assert_eq!(pins(8), [(IOAPIC, 8), (PIC_SLAVE, 0)]);
        assert_eq!(pins(15), [(IOAPIC, 15), (PIC_SLAVE, 7)]);
        assert_eq!(pins(16), [(IOAPIC, 16)]);
        assert_eq!(pins(23), [(IOAPIC, 23)]);
        assert_eq!(pins(24), []);
    }

    #[test]
    fn msi_lines_get_entries_only_with_a_message() {
        let mut t = Routes::x86_default(4096);
        let base = t.entries();
        let a = t.allocate().unwrap();
        let b = t.allocate().unwrap();
        assert_eq!((a, b), (24, 25));
        assert_eq!(t.entries(), base, "no message, no entry");
        assert_eq!(t.set(b, Some(msg(0x41))), None);
        assert_eq!(t.set(a, Some(msg(0x40))), None);
        let e = t.entries();
        assert_eq!(&e[..base.len()], &base[..]);
        assert_eq!(
            &e[base.len()..],
            [
                Route::Msi {
                    gsi: 24,
                    message: msg(0x40)
                },
                Route::Msi {
                    gsi: 25,
                    message: msg(0x41)
                }
            ]
        );
        // Reprogrammed, then disabled.
        assert_eq!(t.set(a, Some(msg(0x50))), Some(msg(0x40)));
        assert_eq!(t.set(a, None), Some(msg(0x50)));
        assert_eq!(t.entries().len(), base.len() + 1);
        // Unknown GSIs change nothing.
        assert_eq!(t.set(99, Some(msg(0x60))), None);
        assert_eq!(t.set(3, Some(msg(0x60))), None);
        assert_eq!(t.entries().len(), base.len() + 1);
        // Released GSIs are reused; releasing says whether an entry went.
        assert!(!t.release(a));
        assert!(t.release(b));
        assert!(!t.release(b));
        assert_eq!(t.entries(), base);
        assert_eq!(t.allocate().unwrap(), 24);
    }

    #[test]
    fn gsis_run_out_with_a_clear_error() {
        // The table's length is the tighter limit: 40 fixed entries + 2 lines.
        let mut t = Routes::x86_default(42);
        assert_eq!(t.allocate().unwrap(), 24);
        assert_eq!(t.allocate().unwrap(), 25);
        let e = t.allocate().unwrap_err();
        assert!(matches!(
            e,
            Error::GsisExhausted {
                max: 42,
                in_use: 42
            }
        ));
        assert!(e.to_string().contains("42"), "{e}");
        // A released GSI is there again.
        t.release(24);
        assert_eq!(t.allocate().unwrap(), 24);
        // Without routing (the capability says 0), none at all; KVM's own ceiling holds.
        assert!(Routes::x86_default(0).allocate().is_err());
        assert_eq!(Routes::x86_default(u32::MAX).max, 4096);
    }

    #[test]
    fn kvm_entries_carry_the_message() {
        let e = to_kvm(&Route::Msi {
            gsi: 30,
            message: MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4031,
            },
        });
        assert_eq!((e.gsi, e.type_), (30, kvm_bindings::KVM_IRQ_ROUTING_MSI));
        // SAFETY: the MSI member is the one written.
        let m = unsafe { e.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4031)
        );
        let e = to_kvm(&Route::Irqchip {
            gsi: 9,
            chip: PIC_SLAVE,
            pin: 1,
        });
        assert_eq!((e.gsi, e.type_), (9, kvm_bindings::KVM_IRQ_ROUTING_IRQCHIP));
        // SAFETY: the irqchip member is the one written.
        let c = unsafe { e.u.irqchip };
        assert_eq!((c.irqchip, c.pin), (PIC_SLAVE, 1));
    }
}
