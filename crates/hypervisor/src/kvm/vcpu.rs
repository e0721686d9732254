//! A KVM vCPU: `KVM_RUN`, exit decoding and the kick signal.

use std::cell::Cell;
use std::ptr;
use std::sync::Once;

use kvm_bindings::{
    KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_MMIO, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::exit::{Data, SystemEvent};
use crate::{os_err, Result, VcpuKicker, VmEntry, VmExit};

/// KVM_EXIT_INTERNAL_ERROR suberror: the in-kernel instruction emulator failed.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

thread_local! {
    /// `immediate_exit` byte of the `kvm_run` page of the vCPU this thread runs.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

/// The real-time signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only touches a thread-local const-initialised cell: async-signal-safe.
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: set by `KvmVcpu::kicker` to the live kvm_run page of this thread's vCPU and
        // cleared before that page is unmapped.
        unsafe { ptr::write_volatile(p, 1) };
    }
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with a handler that is async-signal-safe. No SA_RESTART, so
        // KVM_RUN returns EINTR.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handle_kick as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(kick_signal(), &act, ptr::null_mut());
        }
    });
}

/// Kicks one vCPU thread by signalling it.
struct KvmKicker {
    thread: libc::pthread_t,
}

impl VcpuKicker for KvmKicker {
    fn kick(&self) {
        // SAFETY: the vCPU thread drops its kickers before it ends (vmm::vcpu::Registration),
        // so `thread` is alive whenever this runs.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}

/// The fields of a `KVM_EXIT_IO` exit.
#[derive(Clone, Copy)]
struct IoExit {
    port: u16,
    size: u8,
    count: u32,
    input: bool,
}

pub struct KvmVcpu {
    pub(super) fd: VcpuFd,
    /// Size of the `kvm_run` mapping: what a port I/O exit's data must fit in.
    run_size: usize,
    /// The MSRs a snapshot saves (the VM's list).
    #[cfg(target_arch = "x86_64")]
    pub(super) msr_index: std::sync::Arc<[u32]>,
}

impl KvmVcpu {
    #[cfg(target_arch = "x86_64")]
    pub(super) fn new(fd: VcpuFd, run_size: usize, msr_index: std::sync::Arc<[u32]>) -> Self {
        KvmVcpu {
            fd,
            run_size,
            msr_index,
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn new(fd: VcpuFd, run_size: usize) -> Self {
        KvmVcpu { fd, run_size }
    }

    /// The data area of the current port I/O exit, `size * count` bytes into the `kvm_run`
    /// mapping (KVM puts it in the page after `kvm_run`), or `None` if this is no such exit
    /// or its bounds do not fit the mapping.
    fn io_data(&mut self) -> Option<(IoExit, &mut [u8])> {
        let run_size = self.run_size;
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return None;
        }
        // SAFETY: exit_reason says `io` is the active union member.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = usize::from(io.size).checked_mul(io.count as usize)?;
        let start = usize::try_from(io.data_offset).ok()?;
        start.checked_add(len).filter(|&end| end <= run_size)?;
        let base = run as *mut kvm_bindings::kvm_run as *mut u8;
        // SAFETY: `start..start + len` lies inside the `run_size`-byte kvm_run mapping this vCPU
        // owns (checked above), and the borrow of `self` keeps it mapped and unaliased.
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(start), len) };
        let exit = IoExit {
            port: io.port,
            size: io.size,
            count: io.count,
            input: u32::from(io.direction) == KVM_EXIT_IO_IN,
        };
        Some((exit, data))
    }

    /// A port I/O exit: one element as `IoIn`/`IoOut`, several as the string variants.
    fn io_exit(&mut self) -> VmExit {
        let Some((io, data)) = self.io_data() else {
            return VmExit::InternalError {
                emulation: false,
                description: "KVM port I/O exit with data outside the kvm_run mapping".into(),
            };
        };
        let IoExit {
            port,
            size,
            count,
            input,
        } = io;
        if !matches!(size, 1 | 2 | 4) {
            return VmExit::InternalError {
                emulation: false,
                description: format!("KVM port I/O exit of {size} bytes at port {port:#x}"),
            };
        }
        match (input, count) {
            (true, 1) => VmExit::IoIn { port, size },
            (false, 1) => VmExit::IoOut {
                port,
                data: Data::new(data),
            },
            (true, _) => VmExit::IoInString { port, size, count },
            (false, _) => VmExit::IoOutString { port, size, count },
        }
    }

    /// Writes the answer to the last IN or MMIO read into the `kvm_run` page.
    fn complete(&mut self, entry: VmEntry) {
        let run = self.fd.get_kvm_run();
        match entry {
            VmEntry::None => {}
            VmEntry::IoIn(data) => {
                if run.exit_reason != KVM_EXIT_IO {
                    return;
                }
                if let Some((io, area)) = self.io_data().filter(|(io, _)| io.input) {
                    // One element: string INs are answered in place (`string_io_data`).
                    let len = data.len().min(area.len()).min(usize::from(io.size));
                    area[..len].copy_from_slice(&data.as_slice()[..len]);
                }
            }
            VmEntry::MmioRead(data) => {
                if run.exit_reason != KVM_EXIT_MMIO {
                    return;
                }
                // SAFETY: exit_reason says `mmio` is the active union member.
                let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
                let len = data.len().min(mmio.len as usize).min(mmio.data.len());
                mmio.data[..len].copy_from_slice(&data.as_slice()[..len]);
            }
        }
    }

    fn internal_error(&mut self) -> VmExit {
        let run = self.fd.get_kvm_run();
        // SAFETY: called only for KVM_EXIT_INTERNAL_ERROR, whose member is `internal`.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            2 => "simultaneous exceptions",
            3 => "delivery event failed",
            _ => "internal error",
        };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..n]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        VmExit::InternalError {
            emulation: internal.suberror == KVM_INTERNAL_ERROR_EMULATION,
            description: format!(
                "KVM {what} (suberror {}, data [{}])",
                internal.suberror,
                data.join(", ")
            ),
        }
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        let mine = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        IMMEDIATE_EXIT.with(|c| {
            if c.get() == mine {
                c.set(ptr::null_mut());
            }
        });
    }
}

impl crate::Vcpu for KvmVcpu {
    fn run(&mut self, entry: VmEntry) -> Result<VmExit> {
        self.complete(entry);
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                return Ok(VmExit::Interrupted);
            }
            Err(e) => return Err(os_err("KVM_RUN")(e)),
        };
        Ok(match exit {
            // Size and count come from kvm_run itself: the slice alone cannot tell four
            // one-byte `ins` from one four-byte `in`.
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => self.io_exit(),
            VcpuExit::MmioRead(addr, data) => VmExit::MmioRead {
                addr,
                size: data.len() as u8,
            },
            VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite {
                addr,
                data: Data::new(data),
            },
            VcpuExit::Hlt => VmExit::Halt,
            VcpuExit::Shutdown => VmExit::Shutdown,
            VcpuExit::Intr => VmExit::Interrupted,
            VcpuExit::IrqWindowOpen => VmExit::InterruptWindow,
            VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::Shutdown,
                KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                _ => SystemEvent::Crash,
            }),
            VcpuExit::FailEntry(reason, _) => VmExit::FailEntry { reason },
            VcpuExit::InternalError => self.internal_error(),
            _ => VmExit::Unhandled {
                reason: self.fd.get_kvm_run().exit_reason,
            },
        })
    }

    fn kicker(&mut self) -> Result<Box<dyn VcpuKicker>> {
        install_kick_handler();
        let p = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
        IMMEDIATE_EXIT.with(|c| c.set(p));
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Box::new(KvmKicker { thread }))
    }

    #[cfg(target_arch = "x86_64")]
    fn translate_gva(&self, gva: u64) -> Result<Option<u64>> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(os_err("KVM_TRANSLATE"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }

    /// KVM_TRANSLATE exists on x86 only.
    #[cfg(not(target_arch = "x86_64"))]
    fn translate_gva(&self, _gva: u64) -> Result<Option<u64>> {
        Err(crate::Error::Unsupported)
    }

    /// KVM leaves string I/O's elements in its data page: an IN is answered in place.
    fn string_io_data(&mut self) -> &mut [u8] {
        match self.io_data() {
            Some((io, data)) if io.count > 1 => data,
            _ => &mut [],
        }
    }

    /// KVM_RUN with `immediate_exit` set: KVM completes the pending IN or MMIO read, then
    /// returns EINTR before entering the guest (the KVM API's way to make state consistent).
    fn finish_exit(&mut self, entry: VmEntry) -> Result<()> {
        self.fd.set_kvm_immediate_exit(1);
        let exit = self.run(entry);
        self.fd.set_kvm_immediate_exit(0);
        match exit? {
            VmExit::Interrupted => Ok(()),
            other => Err(crate::Error::BadState {
                what: "vCPU",
                detail: format!(
                    "finishing its last exit needed another ({other:?}); resume and try again"
                ),
            }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl crate::x86_64::X86Vcpu for KvmVcpu {
    fn set_regs(&self, regs: &crate::x86_64::Regs) -> Result<()> {
        super::x86_64::set_regs(self, regs)
    }
    fn regs(&self) -> Result<crate::x86_64::Regs> {
        super::x86_64::regs(self)
    }
    fn set_special_regs(&self, sregs: &crate::x86_64::SpecialRegs) -> Result<()> {
        super::x86_64::set_special_regs(self, sregs)
    }
    fn special_regs(&self) -> Result<crate::x86_64::SpecialRegs> {
        super::x86_64::special_regs(self)
    }
    fn set_cpuid(&self, entries: &[crate::x86_64::CpuidEntry]) -> Result<()> {
        super::x86_64::set_cpuid(self, entries)
    }
    fn set_msrs(&self, msrs: &[crate::x86_64::MsrEntry]) -> Result<()> {
        super::x86_64::set_msrs(self, msrs)
    }
    fn reset_fpu(&self) -> Result<()> {
        super::x86_64::reset_fpu(self)
    }
    fn setup_lapic_lints(&self) -> Result<()> {
        super::x86_64::setup_lapic_lints(self)
    }

    fn inject_exception(&self, e: &crate::x86_64::Exception) -> Result<()> {
        super::x86_64::inject_exception(self, e)
    }

    fn interrupt_window_open(&mut self) -> bool {
        let run = self.fd.get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<()> {
        super::x86_64::inject_interrupt(self, vector)
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.fd.get_kvm_run().request_interrupt_window = u8::from(on);
    }

    fn state(&self) -> Result<crate::x86_64::VcpuState> {
        super::snapshot::state(self)
    }

    fn set_state(&self, state: &crate::x86_64::VcpuState) -> Result<()> {
        super::snapshot::set_state(self, state)
    }
}
