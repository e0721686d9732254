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
fn kick_signal() -> libc::c_int {
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
        // SAFETY: the thread is joined only after its kickers are dropped (see vmm::vcpu).
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}

pub struct KvmVcpu {
    pub(super) fd: VcpuFd,
}

impl KvmVcpu {
    pub(super) fn new(fd: VcpuFd) -> Self {
        KvmVcpu { fd }
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
                // SAFETY: exit_reason says `io` is the active union member.
                let io = unsafe { run.__bindgen_anon_1.io };
                if u32::from(io.direction) != KVM_EXIT_IO_IN {
                    return;
                }
                let len = data.len().min(usize::from(io.size) * io.count as usize);
                let base = run as *mut kvm_bindings::kvm_run as *mut u8;
                // SAFETY: the kernel places the data `data_offset` bytes into the kvm_run
                // mapping, with room for size * count bytes; `len` is no larger.
                unsafe {
                    ptr::copy_nonoverlapping(
                        data.as_slice().as_ptr(),
                        base.add(io.data_offset as usize),
                        len,
                    )
                };
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

/// `rep ins`/`rep outs` moves more than one element per exit; no device here needs it.
fn string_io(port: u16, len: usize) -> VmExit {
    VmExit::InternalError {
        emulation: false,
        description: format!(
            "string port I/O (rep ins/outs) of {len} bytes at port {port:#x} is not supported"
        ),
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
            VcpuExit::IoOut(port, data) if data.len() <= 4 => VmExit::IoOut {
                port,
                data: Data::new(data),
            },
            VcpuExit::IoIn(port, data) if data.len() <= 4 => VmExit::IoIn {
                port,
                size: data.len() as u8,
            },
            VcpuExit::IoOut(port, data) => string_io(port, data.len()),
            VcpuExit::IoIn(port, data) => string_io(port, data.len()),
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

    fn translate_gva(&self, gva: u64) -> Result<Option<u64>> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(os_err("KVM_TRANSLATE"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
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
}
