//! The KVM backend (Linux), on `kvm-ioctls`.
//!
//! The only place in the project that issues KVM ioctls. A VM gets an in-kernel irqchip and
//! PIT, interrupt lines are irqfds, and a vCPU is kicked out of `KVM_RUN` by a real-time signal
//! whose handler sets `immediate_exit` (so a kick that lands just before entry is not lost).

pub mod ioctls;
mod msi;
#[cfg(target_arch = "x86_64")]
mod snapshot;
mod vcpu;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::{os_err, Error, HypervisorInfo, IrqLine, MsiLine, Result};
use msi::{RoutedMsi, Routes, SignalledMsi};
pub use vcpu::{kick_signal, KvmVcpu};

pub const KVM_PATH: &str = "/dev/kvm";
const KVM_API_VERSION: i32 = 12;

/// Guest-physical range KVM needs for its own use on Intel hosts without unrestricted guest
/// support: a 3-page TSS (at the start) and one identity-map page table page after it.
/// The memory map reserves exactly this range.
pub const KVM_PRIVATE_REGION: (u64, u64) = (0xfffb_c000, 0x4000);

/// `/dev/kvm`.
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens `/dev/kvm`, with an error that says why it could not be used.
    pub fn open() -> Result<Self> {
        let open_err = |source| Error::Open {
            path: KVM_PATH.into(),
            source,
        };
        // Open it ourselves first so the error carries the real errno (ENOENT, EACCES).
        let file = File::options()
            .read(true)
            .write(true)
            .open(KVM_PATH)
            .map_err(open_err)?;
        let fd: RawFd = std::os::fd::IntoRawFd::into_raw_fd(file);
        // SAFETY: `fd` is an open /dev/kvm descriptor whose ownership moves into `Kvm`.
        let kvm = unsafe { kvm_ioctls::Kvm::from_raw_fd(fd) };
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION {
            return Err(Error::ApiVersion {
                path: KVM_PATH.into(),
                found,
                expected: KVM_API_VERSION,
            });
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        Ok(Kvm { kvm })
    }
}

const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    #[cfg(target_arch = "x86_64")]
    (Cap::Pit2, "KVM_CAP_PIT2"),
    #[cfg(target_arch = "x86_64")]
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

const REPORTED_CAPS: &[(Cap, &str)] = &[
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::IrqRouting, "irq-routing"),
    (Cap::SignalMsi, "signal-msi"),
    #[cfg(target_arch = "x86_64")]
    (Cap::SetTssAddr, "set-tss-addr"),
    #[cfg(target_arch = "x86_64")]
    (Cap::TscDeadlineTimer, "tsc-deadline-timer"),
    (Cap::MpState, "mp-state"),
];

impl crate::Hypervisor for Kvm {
    type Vm = KvmVm;

    fn info(&self) -> HypervisorInfo {
        let capabilities = REQUIRED_CAPS
            .iter()
            .chain(REPORTED_CAPS)
            .map(|(cap, name)| {
                let short = name.trim_start_matches("KVM_CAP_");
                (short_name(short), self.kvm.check_extension(*cap))
            })
            .collect();
        HypervisorInfo {
            name: "KVM",
            api_version: self.kvm.get_api_version(),
            max_vcpus: self.max_vcpus(),
            capabilities,
        }
    }

    fn max_vcpus(&self) -> u32 {
        self.kvm.get_max_vcpus() as u32
    }

    fn create_vm(&self) -> Result<KvmVm> {
        let vm = retry_on_eintr(|| self.kvm.create_vm()).map_err(os_err("KVM_CREATE_VM"))?;
        #[cfg(target_arch = "x86_64")]
        {
            let (base, _) = KVM_PRIVATE_REGION;
            vm.set_identity_map_address(base)
                .map_err(os_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
            vm.set_tss_address(base as usize + 0x1000)
                .map_err(os_err("KVM_SET_TSS_ADDR"))?;
        }
        let run_size = self
            .kvm
            .get_vcpu_mmap_size()
            .map_err(os_err("KVM_GET_VCPU_MMAP_SIZE"))?;
        Ok(KvmVm {
            vm: ManuallyDrop::new(Arc::new(vm)),
            run_size,
            routes: OnceLock::new(),
            device_slots: Mutex::new(BTreeSet::new()),
            #[cfg(target_arch = "x86_64")]
            msr_index: snapshot::msr_index_list(&self.kvm)?.into(),
            #[cfg(target_arch = "x86_64")]
            cpuid: self
                .kvm
                .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .map_err(os_err("KVM_GET_SUPPORTED_CPUID"))?,
        })
    }
}

/// Lower-case, dash-separated capability names for `vibe-vmm info`.
fn short_name(name: &'static str) -> &'static str {
    match name {
        "USER_MEMORY" => "user-memory",
        "IRQCHIP" => "irqchip",
        "IRQFD" => "irqfd",
        "IMMEDIATE_EXIT" => "immediate-exit",
        "PIT2" => "pit2",
        "EXT_CPUID" => "ext-cpuid",
        other => other,
    }
}

/// A KVM virtual machine.
pub struct KvmVm {
    /// The only strong reference: interrupt lines hold weak ones, so the VM descriptor closes
    /// when this is dropped, before the caller unmaps guest memory (see `Drop`).
    vm: ManuallyDrop<Arc<VmFd>>,
    /// Size of each vCPU's `kvm_run` mapping.
    run_size: usize,
    /// The GSI routing table, set by `create_irqchip`: `Some` once the in-kernel irqchip
    /// exists, with `None` inside where KVM cannot route (no KVM_CAP_IRQ_ROUTING). Shared with
    /// the MSI lines, which change it; it holds no descriptor.
    routes: OnceLock<Option<Arc<Mutex<Routes>>>>,
    /// Slots of device memory mapped while the VM runs ([`crate::Vm::map_device_memory`]).
    device_slots: Mutex<BTreeSet<u32>>,
    #[cfg(target_arch = "x86_64")]
    cpuid: kvm_bindings::CpuId,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST), shared with every vCPU.
    #[cfg(target_arch = "x86_64")]
    msr_index: Arc<[u32]>,
}

impl KvmVm {
    /// Whether `create_irqchip` made the in-kernel interrupt controllers.
    #[cfg(target_arch = "x86_64")]
    fn has_irqchip(&self) -> bool {
        self.routes.get().is_some()
    }
}

/// Device memory slots are numbered from here up, far above guest RAM's few slots and below
/// the 509 user slots the oldest kernels this VMM runs on give x86 (KVM_CAP_NR_MEMSLOTS).
const FIRST_DEVICE_SLOT: u32 = 256;
const MAX_DEVICE_SLOTS: u32 = 200;

/// An irqfd: writing the eventfd pulses the GSI in the in-kernel irqchip.
struct KvmIrqLine(EventFd);

impl IrqLine for KvmIrqLine {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Closes the VM descriptor now, not whenever the last interrupt line goes: `map_memory`'s
/// contract is that guest memory stays mapped while the VM exists, and the owner unmaps it
/// right after this. A line may hold a strong reference for the length of one trigger; wait
/// that out rather than let the VM outlive its memory.
impl Drop for KvmVm {
    fn drop(&mut self) {
        // SAFETY: `self.vm` is taken once, here, and never used again.
        let mut vm = unsafe { ManuallyDrop::take(&mut self.vm) };
        loop {
            match Arc::try_unwrap(vm) {
                Ok(fd) => {
                    drop(fd);
                    return;
                }
                Err(shared) => {
                    vm = shared;
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A GSI pulsed with KVM_IRQ_LINE (raise, then lower: an edge). Holds the VM weakly: a device
/// that outlives the VM (a console thread holding the serial port) must not keep the VM
/// descriptor, and with it the guest memory slots, alive.
struct KvmIrqPulse {
    vm: Weak<VmFd>,
    gsi: u32,
}

impl IrqLine for KvmIrqPulse {
    fn trigger(&self) -> io::Result<()> {
        // The VM is gone: like a line into a machine that was switched off.
        let Some(vm) = self.vm.upgrade() else {
            return Ok(());
        };
        vm.set_irq_line(self.gsi, true)?;
        vm.set_irq_line(self.gsi, false)?;
        Ok(())
    }
}

impl crate::Vm for KvmVm {
    type Vcpu = KvmVcpu;

    unsafe fn map_memory(&self, slot: u32, gpa: u64, size: u64, hva: u64) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| Error::MapMemory {
            gpa,
            size,
            hva,
            source: e.into(),
        })
    }

    fn create_irqchip(&self, legacy_timer: bool) -> Result<()> {
        self.vm
            .create_irq_chip()
            .map_err(os_err("KVM_CREATE_IRQCHIP"))?;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = legacy_timer; // the PIT is an x86 device
        #[cfg(target_arch = "x86_64")]
        if legacy_timer {
            let pit = kvm_bindings::kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            self.vm
                .create_pit2(pit)
                .map_err(os_err("KVM_CREATE_PIT2"))?;
        }
        // KVM installed its default routes; MSI lines add theirs to a copy of that table.
        #[cfg(target_arch = "x86_64")]
        {
            let max = self.vm.check_extension_int(Cap::IrqRouting);
            let routes = (max > 0).then(|| Arc::new(Mutex::new(Routes::x86_default(max as u32))));
            let _ = self.routes.set(routes);
        }
        Ok(())
    }

    fn irq_line(&self, gsi: u32, eventfd: bool) -> Result<Box<dyn IrqLine>> {
        if !eventfd {
            return Ok(Box::new(KvmIrqPulse {
                vm: Arc::downgrade(&self.vm),
                gsi,
            }));
        }
        let evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(os_err("eventfd"))?;
        self.vm
            .register_irqfd(&evt, gsi)
            .map_err(os_err("KVM_IRQFD"))?;
        Ok(Box::new(KvmIrqLine(evt)))
    }

    fn register_mmio_notify(&self, evt: &crate::Event, addr: u64, value: u32) -> Result<()> {
        self.vm
            .register_ioevent(evt.eventfd(), &IoEventAddress::Mmio(addr), value)
            .map_err(os_err("KVM_IOEVENTFD"))
    }

    /// Needs the in-kernel irqchip (x86 only so far); [`Error::Unsupported`] without, since
    /// the VMM's own irqchip delivers MSIs then.
    fn msi_line(&self, eventfd: bool) -> Result<Box<dyn MsiLine>> {
        let Some(routes) = self.routes.get() else {
            return Err(Error::Unsupported);
        };
        if !eventfd {
            if !self.vm.check_extension(Cap::SignalMsi) {
                return Err(Error::MissingCapability("KVM_CAP_SIGNAL_MSI"));
            }
            return Ok(Box::new(SignalledMsi::new(&self.vm)));
        }
        let routes = routes
            .as_ref()
            .ok_or(Error::MissingCapability("KVM_CAP_IRQ_ROUTING"))?;
        Ok(Box::new(RoutedMsi::new(&self.vm, routes)?))
    }

    fn register_mmio_notify_any(&self, evt: &crate::Event, addr: u64) -> Result<()> {
        self.vm
            .register_ioevent(evt.eventfd(), &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(os_err("KVM_IOEVENTFD"))
    }

    fn unregister_mmio_notify_any(&self, evt: &crate::Event, addr: u64) -> Result<()> {
        self.vm
            .unregister_ioevent(evt.eventfd(), &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(os_err("KVM_IOEVENTFD (deassign)"))
    }

    unsafe fn map_device_memory(&self, gpa: u64, size: u64, hva: u64) -> Result<u32> {
        let mut slots = self.device_slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = (FIRST_DEVICE_SLOT..FIRST_DEVICE_SLOT + MAX_DEVICE_SLOTS)
            .find(|s| !slots.contains(s))
            .ok_or(Error::MissingCapability(
                "a free KVM memory slot for device memory",
            ))?;
        // SAFETY: the caller keeps the host range mapped until the slot goes.
        unsafe { self.map_memory(slot, gpa, size, hva) }?;
        slots.insert(slot);
        Ok(slot)
    }

    fn unmap_device_memory(&self, slot: u32) -> Result<()> {
        let mut slots = self.device_slots.lock().unwrap_or_else(|e| e.into_inner());
        if !slots.remove(&slot) {
            return Ok(());
        }
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a size of 0 deletes the slot; no host memory is named.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(os_err("KVM_SET_USER_MEMORY_REGION (delete a device slot)"))
    }

    fn level_irqfd(&self, gsi: u32, trigger: &crate::Event, resample: &crate::Event) -> Result<()> {
        self.vm
            .register_irqfd_with_resample(trigger.eventfd(), resample.eventfd(), gsi)
            .map_err(os_err("KVM_IRQFD (resample)"))
    }

    fn create_vcpu(&self, id: u32) -> Result<KvmVcpu> {
        let fd = self
            .vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::CreateVcpu {
                id,
                source: e.into(),
            })?;
        #[cfg(target_arch = "x86_64")]
        return Ok(KvmVcpu::new(fd, self.run_size, self.msr_index.clone()));
        #[cfg(not(target_arch = "x86_64"))]
        Ok(KvmVcpu::new(fd, self.run_size))
    }
}

/// Runs `op` again while it fails with EINTR (at most 100 times). KVM_CREATE_VM registers an
/// MMU notifier, and the kernel gives that up with EINTR whenever the calling thread has
/// something pending that counts as a signal. Seen here about once in 2,000 creations, only
/// while VMs with (io_uring) disks came and went in the same process, with no signal sent to
/// the creating thread; QEMU retries KVM_CREATE_VM on EINTR too.
fn retry_on_eintr<T>(
    mut op: impl FnMut() -> std::result::Result<T, kvm_ioctls::Error>,
) -> std::result::Result<T, kvm_ioctls::Error> {
    let mut tries = 0;
    loop {
        match op() {
            Err(e) if e.errno() == libc::EINTR && tries < 100 => tries += 1,
            r => return r,
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl crate::x86_64::X86Vm for KvmVm {
    fn supported_cpuid(&self) -> Result<Vec<crate::x86_64::CpuidEntry>> {
        Ok(self
            .cpuid
            .as_slice()
            .iter()
            .map(x86_64::cpuid_from_kvm)
            .collect())
    }

    fn vm_state(&self) -> Result<crate::x86_64::VmState> {
        snapshot::vm_state(self)
    }

    fn set_vm_state(&self, state: &crate::x86_64::VmState) -> Result<()> {
        snapshot::set_vm_state(self, state)
    }

    fn check_vcpu_state(&self, state: &crate::x86_64::VcpuState) -> Result<()> {
        snapshot::check_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::retry_on_eintr;
    use kvm_ioctls::Error;

    #[test]
    fn eintr_is_retried_other_errors_and_success_are_not() {
        let mut calls = 0;
        let r = retry_on_eintr(|| {
            calls += 1;
            if calls < 3 {
                Err(Error::new(libc::EINTR))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);
        let mut calls = 0;
        let r: Result<(), Error> = retry_on_eintr(|| {
            calls += 1;
            Err(Error::new(libc::ENOMEM))
        });
        assert_eq!(r.unwrap_err().errno(), libc::ENOMEM);
        assert_eq!(calls, 1, "only EINTR is retried");
        let mut calls = 0;
        let r: Result<(), Error> = retry_on_eintr(|| {
            calls += 1;
            Err(Error::new(libc::EINTR))
        });
        assert_eq!(r.unwrap_err().errno(), libc::EINTR, "not for ever");
        assert_eq!(calls, 101);
    }
}
