//! The Hypervisor.framework backend for Intel Macs, generic over [`api::Api`] so that it runs
//! on Linux against [`fake::FakeHvf`].
//!
//! Hypervisor.framework on Intel is a thin layer over VMX: the VMM programs the VMCS and
//! decodes every exit itself. What this backend does with each:
//! - **EPT violation** (an access to guest-physical memory nothing backs): the framework gives
//!   only the address, so the backend returns [`VmExit::MmioInstruction`] and the VMM core
//!   decodes and emulates the instruction (`arch::x86_64::emulator`), making its accesses on
//!   the device bus and writing back registers and RIP.
//! - **I/O instruction**: the exit qualification gives port, size and direction; an OUT
//!   carries AL/AX/EAX, an IN's value is merged into RAX on the next entry. RIP moves past it.
//! - **CPUID**: answered here from the table the VMM set (`set_cpuid`).
//! - **RDMSR/WRMSR**: EFER goes to the VMCS; the MSRs the VMM set and a few architectural
//!   ones are kept per vCPU; anything else raises #GP in the guest, as hardware without the
//!   MSR would. The syscall and segment-base MSRs are native (no exits).
//! - **HLT** returns [`VmExit::Halt`]; **interrupt window** returns
//!   [`VmExit::InterruptWindow`]; **triple fault** returns [`VmExit::Shutdown`]; a failed
//!   entry returns [`VmExit::FailEntry`].
//!
//! There is no in-kernel interrupt controller: `create_irqchip` and `irq_line` report
//! [`Error::Unsupported`] and the VMM runs its own (`devices::irqchip`), injecting through
//! the VM-entry interruption field ([`X86Vcpu::inject_interrupt`]).
//!
//! Apple's rules: one VM per process, and a vCPU is used only from the thread that created it
//! (the VMM core creates each vCPU on its own thread); only the kicker's
//! `hv_vcpu_interrupt` crosses threads.

pub mod api;
pub mod fake;
#[cfg(target_os = "macos")]
pub mod ffi;
pub mod vmcs;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use api::{Api, Capability, Reg, VcpuHandle};
use vmcs::*;

use crate::exit::Data;
use crate::x86_64::{CpuidEntry, Exception, MsrEntry, Regs, Segment, SpecialRegs, X86Vcpu, X86Vm};
use crate::{Error, Hypervisor, HypervisorInfo, IrqLine, Result, VcpuKicker, VmEntry, VmExit};

/// KVM's "sub-leaf index is significant" flag, which the CPUID tables here use too.
const CPUID_INDEX_SIGNIFICANT: u32 = 1;
const MSR_EFER: u32 = 0xc000_0080;
const MSR_APIC_BASE: u32 = 0x1b;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_IF: u64 = 1 << 9;
const CR0_PE: u64 = 1;
const CR0_NE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
/// The guest reads and writes these without exits.
const NATIVE_MSRS: [u32; 12] = [
    0x10,        // TSC
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// The Hypervisor.framework x86_64 hypervisor.
pub struct HvfX86<A: Api> {
    api: Arc<A>,
}

impl<A: Api> HvfX86<A> {
    pub fn new(api: A) -> Self {
        HvfX86 { api: Arc::new(api) }
    }

    /// The calls underneath, for tests that inspect a fake.
    pub fn api(&self) -> &Arc<A> {
        &self.api
    }
}

impl<A: Api> Hypervisor for HvfX86<A> {
    type Vm = HvfX86Vm<A>;

    fn info(&self) -> HypervisorInfo {
        HypervisorInfo {
            name: "Hypervisor.framework (x86_64)",
            api_version: 0,
            max_vcpus: self.max_vcpus(),
            capabilities: vec![
                ("in-kernel irqchip", false),
                (
                    "EPT",
                    self.api.read_capability(Capability::ProcBased2).is_ok(),
                ),
            ],
        }
    }

    fn max_vcpus(&self) -> u32 {
        // The framework documents no limit below the host's CPU count; the x86 machine's is
        // 254 (`arch::x86_64::mptable::MAX_CPUS`: 8-bit APIC IDs, 0xff broadcast, one for the
        // IOAPIC), and the core takes the smaller of the two.
        254
    }

    fn create_vm(&self) -> Result<HvfX86Vm<A>> {
        self.api.vm_create()?;
        Ok(HvfX86Vm {
            api: self.api.clone(),
        })
    }
}

pub struct HvfX86Vm<A: Api> {
    api: Arc<A>,
}

impl<A: Api> Drop for HvfX86Vm<A> {
    fn drop(&mut self) {
        self.api.vm_destroy();
    }
}

impl<A: Api> crate::Vm for HvfX86Vm<A> {
    type Vcpu = HvfX86Vcpu<A>;

    unsafe fn map_memory(&self, _slot: u32, gpa: u64, size: u64, hva: u64) -> Result<()> {
        // SAFETY: the caller keeps the host range mapped for the VM's lifetime.
        unsafe { self.api.vm_map(hva, gpa, size) }
    }

    /// None in the framework: the VMM runs its own.
    fn create_irqchip(&self, _legacy_timer: bool) -> Result<()> {
        Err(Error::Unsupported)
    }

    fn irq_line(&self, _gsi: u32, _eventfd: bool) -> Result<Box<dyn IrqLine>> {
        Err(Error::Unsupported)
    }

    fn register_mmio_notify(&self, _: &crate::Event, _: u64, _: u32) -> Result<()> {
        Err(Error::Unsupported)
    }

    /// None in the framework (the VMM's own irqchip delivers MSIs).
    fn msi_line(&self, _eventfd: bool) -> Result<Box<dyn crate::MsiLine>> {
        Err(Error::Unsupported)
    }

    fn register_mmio_notify_any(&self, _: &crate::Event, _: u64) -> Result<()> {
        Err(Error::Unsupported)
    }

    fn unregister_mmio_notify_any(&self, _: &crate::Event, _: u64) -> Result<()> {
        Err(Error::Unsupported)
    }

    /// Creates vCPU `id` on the calling thread, which must be the one that runs it, with the
    /// VMX controls the boot paths need (as far as the CPU allows them).
    fn create_vcpu(&self, id: u32) -> Result<HvfX86Vcpu<A>> {
        let api = &self.api;
        let handle = api.vcpu_create()?;
        let vcpu = HvfX86Vcpu {
            api: api.clone(),
            handle,
            kicked: Arc::new(AtomicBool::new(false)),
            pending_in: None,
            cpuid: RefCell::new(Vec::new()),
            msrs: RefCell::new(default_msrs(id)),
            cpu_based: Cell::new(0),
        };
        let control = |cap, field, want| -> Result<u64> {
            let v = adjust(api.read_capability(cap)?, want);
            api.write_vmcs(handle, field, v)?;
            Ok(v)
        };
        control(
            Capability::PinBased,
            CTRL_PIN_BASED,
            PIN_EXTERNAL_INTERRUPT | PIN_NMI,
        )?;
        let cpu = control(
            Capability::ProcBased,
            CTRL_CPU_BASED,
            CPU_HLT | CPU_UNCONDITIONAL_IO | CPU_SECONDARY,
        )?;
        vcpu.cpu_based.set(cpu);
        control(
            Capability::ProcBased2,
            CTRL_CPU_BASED2,
            CPU2_EPT | CPU2_UNRESTRICTED_GUEST,
        )?;
        control(
            Capability::Exit,
            CTRL_EXIT,
            EXIT_HOST_IA32E | EXIT_SAVE_EFER | EXIT_LOAD_EFER,
        )?;
        control(Capability::Entry, CTRL_ENTRY, ENTRY_LOAD_EFER)?;
        // The guest sees its own CR0.NE and CR4.VMXE choices; VMX needs both set underneath.
        api.write_vmcs(handle, CTRL_CR0_MASK, CR0_NE)?;
        api.write_vmcs(handle, CTRL_CR4_MASK, CR4_VMXE)?;
        for msr in NATIVE_MSRS {
            api.enable_native_msr(handle, msr)?;
        }
        Ok(vcpu)
    }
}

impl<A: Api> X86Vm for HvfX86Vm<A> {
    /// The host's CPUID, less VMX, with the hypervisor bit set: the framework has no list of
    /// its own.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        Ok(host_cpuid())
    }
}

fn default_msrs(id: u32) -> HashMap<u32, u64> {
    let bsp = if id == 0 { 1 << 8 } else { 0 };
    HashMap::from([
        (MSR_APIC_BASE, 0xfee0_0000 | (1 << 11) | bsp),
        (0x1a0, 1),                     // MISC_ENABLE: fast strings
        (0xfe, 0),                      // MTRRcap: no MTRRs
        (0x2ff, 0),                     // MTRRdefType
        (0x277, 0x0007_0406_0007_0406), // PAT, its power-on value
    ])
}

/// Leaves whose sub-leaf (ECX) selects different data.
fn has_subleaves(leaf: u32) -> bool {
    matches!(
        leaf,
        4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12 | 0x14 | 0x17 | 0x18 | 0x1f | 0x8000_001d
    )
}

fn host_cpuid() -> Vec<CpuidEntry> {
    use std::arch::x86_64::__cpuid_count;
    let mut out = Vec::new();
    for base in [0u32, 0x8000_0000] {
        let max = __cpuid_count(base, 0).eax.min(base + 0x40);
        for leaf in base..=max {
            let subs = if has_subleaves(leaf) { 0..8 } else { 0..1 };
            for index in subs {
                let r = __cpuid_count(leaf, index);
                let mut e = CpuidEntry {
                    function: leaf,
                    index,
                    flags: if has_subleaves(leaf) {
                        CPUID_INDEX_SIGNIFICANT
                    } else {
                        0
                    },
                    eax: r.eax,
                    ebx: r.ebx,
                    ecx: r.ecx,
                    edx: r.edx,
                };
                if leaf == 1 {
                    e.ecx &= !(1 << 5); // no VMX inside
                    e.ecx |= 1 << 31; // running under a hypervisor
                }
                out.push(e);
            }
        }
    }
    out
}

pub struct HvfX86Vcpu<A: Api> {
    api: Arc<A>,
    handle: VcpuHandle,
    kicked: Arc<AtomicBool>,
    /// The size of the IN whose value the next `run` merges into RAX.
    pending_in: Option<u8>,
    cpuid: RefCell<Vec<CpuidEntry>>,
    msrs: RefCell<HashMap<u32, u64>>,
    /// The primary processor-based controls as written (the interrupt-window bit changes).
    cpu_based: Cell<u64>,
}

impl<A: Api> Drop for HvfX86Vcpu<A> {
    fn drop(&mut self) {
        self.api.vcpu_destroy(self.handle);
    }
}

struct Kicker<A: Api> {
    api: Arc<A>,
    handle: VcpuHandle,
    kicked: Arc<AtomicBool>,
}

impl<A: Api> VcpuKicker for Kicker<A> {
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.api.vcpu_interrupt(self.handle);
    }
}

/// Segment register order in the VMCS.
const SEGMENTS: usize = 8;

impl<A: Api> HvfX86Vcpu<A> {
    fn vmcs(&self, field: u32) -> Result<u64> {
        self.api.read_vmcs(self.handle, field)
    }

    fn set_vmcs(&self, field: u32, value: u64) -> Result<()> {
        self.api.write_vmcs(self.handle, field, value)
    }

    fn reg(&self, reg: Reg) -> Result<u64> {
        self.api.read_reg(self.handle, reg)
    }

    fn set_reg(&self, reg: Reg, value: u64) -> Result<()> {
        self.api.write_reg(self.handle, reg, value)
    }

    fn skip_instruction(&self) -> Result<()> {
        let len = self.vmcs(RO_EXIT_INSTRUCTION_LENGTH)?;
        self.set_reg(Reg::Rip, self.reg(Reg::Rip)?.wrapping_add(len))
    }

    fn set_efer(&self, efer: u64) -> Result<()> {
        self.set_vmcs(GUEST_IA32_EFER, efer)?;
        let entry = self.vmcs(CTRL_ENTRY)?;
        let entry = if efer & EFER_LMA != 0 {
            entry | ENTRY_IA32E_GUEST
        } else {
            entry & !ENTRY_IA32E_GUEST
        };
        self.set_vmcs(CTRL_ENTRY, entry)
    }

    fn cpuid_exit(&self) -> Result<()> {
        let leaf = self.reg(Reg::Gpr(0))? as u32;
        let index = self.reg(Reg::Gpr(1))? as u32;
        let table = self.cpuid.borrow();
        let e = table
            .iter()
            .find(|e| {
                e.function == leaf && (e.flags & CPUID_INDEX_SIGNIFICANT == 0 || e.index == index)
            })
            .copied()
            .unwrap_or_default();
        for (n, v) in [(0, e.eax), (3, e.ebx), (1, e.ecx), (2, e.edx)] {
            self.set_reg(Reg::Gpr(n), u64::from(v))?;
        }
        self.skip_instruction()
    }

    fn msr_exit(&self, write: bool) -> Result<()> {
        let index = self.reg(Reg::Gpr(1))? as u32;
        if index == MSR_EFER {
            if write {
                let v = (self.reg(Reg::Gpr(2))? << 32) | (self.reg(Reg::Gpr(0))? & 0xffff_ffff);
                self.set_efer(v)?;
            } else {
                let v = self.vmcs(GUEST_IA32_EFER)?;
                self.set_reg(Reg::Gpr(0), v & 0xffff_ffff)?;
                self.set_reg(Reg::Gpr(2), v >> 32)?;
            }
            return self.skip_instruction();
        }
        let mut msrs = self.msrs.borrow_mut();
        let Some(slot) = msrs.get_mut(&index) else {
            // Hardware without the MSR raises #GP; so does this vCPU.
            drop(msrs);
            return self.inject_exception(&Exception::with_error_code(
                Exception::GENERAL_PROTECTION,
                0,
            ));
        };
        if write {
            *slot = (self.reg(Reg::Gpr(2))? << 32) | (self.reg(Reg::Gpr(0))? & 0xffff_ffff);
        } else {
            let v = *slot;
            drop(msrs);
            self.set_reg(Reg::Gpr(0), v & 0xffff_ffff)?;
            self.set_reg(Reg::Gpr(2), v >> 32)?;
        }
        self.skip_instruction()
    }

    fn io_exit(&mut self) -> Result<VmExit> {
        let q = self.vmcs(RO_EXIT_QUALIFICATION)?;
        let size = ((q & 7) + 1) as u8;
        let port = (q >> 16) as u16;
        if q & (1 << 4) != 0 {
            // Each element would need the guest's RSI/RDI walked through its page tables;
            // no device behind this backend needs it yet.
            return Err(crate::Error::StringIoUnsupported {
                port,
                backend: "Hypervisor.framework (Intel)",
            });
        }
        self.skip_instruction()?;
        if q & (1 << 3) != 0 {
            self.pending_in = Some(size);
            return Ok(VmExit::IoIn { port, size });
        }
        let rax = self.reg(Reg::Gpr(0))?;
        Ok(VmExit::IoOut {
            port,
            data: Data::from_u64(rax, usize::from(size)),
        })
    }

    fn complete_in(&self, size: u8, value: u64) -> Result<()> {
        let rax = self.reg(Reg::Gpr(0))?;
        let merged = match size {
            1 => (rax & !0xff) | (value & 0xff),
            2 => (rax & !0xffff) | (value & 0xffff),
            _ => value & 0xffff_ffff, // 32-bit results zero-extend
        };
        self.set_reg(Reg::Gpr(0), merged)
    }
}

impl<A: Api> crate::Vcpu for HvfX86Vcpu<A> {
    fn run(&mut self, entry: VmEntry) -> Result<VmExit> {
        if let (Some(size), VmEntry::IoIn(data)) = (self.pending_in.take(), entry) {
            self.complete_in(size, data.to_u64())?;
        }
        loop {
            if self.kicked.swap(false, Ordering::AcqRel) {
                return Ok(VmExit::Interrupted);
            }
            self.api.vcpu_run(self.handle)?;
            let reason = self.vmcs(RO_EXIT_REASON)? as u32;
            if reason & EXIT_ENTRY_FAILED != 0 {
                return Ok(VmExit::FailEntry {
                    reason: u64::from(reason & 0xffff),
                });
            }
            return Ok(match reason & 0xffff {
                // A host interrupt or our own kick: look at the flag and go back in.
                EXIT_EXTERNAL_INTERRUPT => continue,
                EXIT_TRIPLE_FAULT => VmExit::Shutdown,
                EXIT_INTERRUPT_WINDOW => {
                    self.request_interrupt_window(false);
                    VmExit::InterruptWindow
                }
                EXIT_CPUID => {
                    self.cpuid_exit()?;
                    continue;
                }
                EXIT_RDMSR | EXIT_WRMSR => {
                    self.msr_exit(reason & 0xffff == EXIT_WRMSR)?;
                    continue;
                }
                EXIT_HLT => {
                    self.skip_instruction()?;
                    VmExit::Halt
                }
                EXIT_IO => self.io_exit()?,
                EXIT_EPT_VIOLATION => VmExit::MmioInstruction {
                    gpa: self.vmcs(RO_GUEST_PHYSICAL_ADDRESS)?,
                },
                EXIT_INVALID_GUEST_STATE => VmExit::FailEntry {
                    reason: u64::from(EXIT_INVALID_GUEST_STATE),
                },
                r => VmExit::Unhandled { reason: r },
            });
        }
    }

    fn kicker(&mut self) -> Result<Box<dyn VcpuKicker>> {
        Ok(Box::new(Kicker {
            api: self.api.clone(),
            handle: self.handle,
            kicked: self.kicked.clone(),
        }))
    }

    /// The VMM walks the guest's page tables itself (`arch::x86_64::mmu`); only
    /// `crates/vmm/tests/mmu.rs` calls this, to check that walker against KVM's.
    fn translate_gva(&self, _gva: u64) -> Result<Option<u64>> {
        Err(Error::Unsupported)
    }
}

/// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 of `r`, in encoding order.
fn gprs(r: &Regs) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

impl<A: Api> X86Vcpu for HvfX86Vcpu<A> {
    fn set_regs(&self, r: &Regs) -> Result<()> {
        for (n, v) in gprs(r).into_iter().enumerate() {
            self.set_reg(Reg::Gpr(n as u8), v)?;
        }
        self.set_reg(Reg::Rip, r.rip)?;
        self.set_reg(Reg::Rflags, r.rflags)
    }

    fn regs(&self) -> Result<Regs> {
        let mut g = [0u64; 16];
        for (n, v) in g.iter_mut().enumerate() {
            *v = self.reg(Reg::Gpr(n as u8))?;
        }
        Ok(Regs {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: g[4],
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: self.reg(Reg::Rip)?,
            rflags: self.reg(Reg::Rflags)?,
        })
    }

    fn set_special_regs(&self, s: &SpecialRegs) -> Result<()> {
        let segs = [s.es, s.cs, s.ss, s.ds, s.fs, s.gs, s.ldt, s.tr];
        for (i, seg) in segs.iter().enumerate() {
            let off = i as u32 * SEGMENT_STRIDE;
            self.set_vmcs(GUEST_ES_SELECTOR + off, u64::from(seg.selector))?;
            self.set_vmcs(GUEST_ES_BASE + off, seg.base)?;
            self.set_vmcs(GUEST_ES_LIMIT + off, u64::from(seg.limit))?;
            self.set_vmcs(GUEST_ES_AR + off, u64::from(seg.access_rights()))?;
        }
        self.set_vmcs(GUEST_GDTR_BASE, s.gdt.base)?;
        self.set_vmcs(GUEST_GDTR_LIMIT, u64::from(s.gdt.limit))?;
        self.set_vmcs(GUEST_IDTR_BASE, s.idt.base)?;
        self.set_vmcs(GUEST_IDTR_LIMIT, u64::from(s.idt.limit))?;
        self.set_vmcs(GUEST_CR0, s.cr0 | CR0_NE)?;
        self.set_vmcs(CTRL_CR0_SHADOW, s.cr0)?;
        self.set_vmcs(GUEST_CR3, s.cr3)?;
        self.set_vmcs(GUEST_CR4, s.cr4 | CR4_VMXE)?;
        self.set_vmcs(CTRL_CR4_SHADOW, s.cr4)?;
        self.set_reg(Reg::Cr2, s.cr2)?;
        self.set_efer(s.efer)?;
        self.msrs.borrow_mut().insert(MSR_APIC_BASE, s.apic_base);
        Ok(())
    }

    fn special_regs(&self) -> Result<SpecialRegs> {
        let mut segs = [Segment::default(); SEGMENTS];
        for (i, seg) in segs.iter_mut().enumerate() {
            let off = i as u32 * SEGMENT_STRIDE;
            *seg = Segment {
                selector: self.vmcs(GUEST_ES_SELECTOR + off)? as u16,
                base: self.vmcs(GUEST_ES_BASE + off)?,
                limit: self.vmcs(GUEST_ES_LIMIT + off)? as u32,
                ..Segment::from_access_rights(self.vmcs(GUEST_ES_AR + off)? as u32)
            };
        }
        // The guest sees its own values of the bits VMX forces.
        let shadowed = |guest: u64, shadow: u64, mask: u64| (guest & !mask) | (shadow & mask);
        Ok(SpecialRegs {
            es: segs[0],
            cs: segs[1],
            ss: segs[2],
            ds: segs[3],
            fs: segs[4],
            gs: segs[5],
            ldt: segs[6],
            tr: segs[7],
            gdt: crate::x86_64::DescriptorTable {
                base: self.vmcs(GUEST_GDTR_BASE)?,
                limit: self.vmcs(GUEST_GDTR_LIMIT)? as u16,
            },
            idt: crate::x86_64::DescriptorTable {
                base: self.vmcs(GUEST_IDTR_BASE)?,
                limit: self.vmcs(GUEST_IDTR_LIMIT)? as u16,
            },
            cr0: shadowed(self.vmcs(GUEST_CR0)?, self.vmcs(CTRL_CR0_SHADOW)?, CR0_NE),
            cr2: self.reg(Reg::Cr2)?,
            cr3: self.vmcs(GUEST_CR3)?,
            cr4: shadowed(self.vmcs(GUEST_CR4)?, self.vmcs(CTRL_CR4_SHADOW)?, CR4_VMXE),
            cr8: 0,
            efer: self.vmcs(GUEST_IA32_EFER)?,
            apic_base: self.msrs.borrow().get(&MSR_APIC_BASE).copied().unwrap_or(0),
        })
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        *self.cpuid.borrow_mut() = entries.to_vec();
        Ok(())
    }

    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()> {
        for m in msrs {
            if m.index == MSR_EFER {
                self.set_efer(m.data)?;
            } else {
                self.msrs.borrow_mut().insert(m.index, m.data);
            }
        }
        Ok(())
    }

    /// A new vCPU's FPU is already in its power-on state.
    fn reset_fpu(&self) -> Result<()> {
        Ok(())
    }

    /// The LINT pins belong to the VMM's own local APIC here.
    fn setup_lapic_lints(&self) -> Result<()> {
        Ok(())
    }

    /// Through the VM-entry interruption-information field. VMX refuses the entry unless an
    /// error code is delivered exactly for the vectors that have one, and (with unrestricted
    /// guest) never in real mode, so that decides, not `e.error_code` (missing means 0).
    fn inject_exception(&self, e: &Exception) -> Result<()> {
        if let Some(cr2) = e.cr2 {
            self.set_reg(Reg::Cr2, cr2)?;
        }
        let mut info = u64::from(e.vector) | INTERRUPTION_HW_EXCEPTION | INTERRUPTION_VALID;
        let protected = self.vmcs(GUEST_CR0)? & CR0_PE != 0;
        if protected && Exception::vector_has_error_code(e.vector) {
            info |= INTERRUPTION_ERROR_CODE;
            let code = e.error_code.unwrap_or(0);
            self.set_vmcs(CTRL_ENTRY_EXCEPTION_ERROR, u64::from(code))?;
        }
        self.set_vmcs(CTRL_ENTRY_INTERRUPTION_INFO, info)
    }

    fn interrupt_window_open(&mut self) -> bool {
        let open = || -> Result<bool> {
            Ok(self.reg(Reg::Rflags)? & RFLAGS_IF != 0
                && self.vmcs(GUEST_INTERRUPTIBILITY)? & 3 == 0
                && self.vmcs(CTRL_ENTRY_INTERRUPTION_INFO)? & INTERRUPTION_VALID == 0)
        };
        open().unwrap_or(false)
    }

    fn inject_interrupt(&mut self, vector: u8) -> Result<()> {
        let info = u64::from(vector) | INTERRUPTION_EXTERNAL | INTERRUPTION_VALID;
        self.set_vmcs(CTRL_ENTRY_INTERRUPTION_INFO, info)
    }

    fn request_interrupt_window(&mut self, on: bool) {
        let old = self.cpu_based.get();
        let new = if on {
            old | CPU_INTERRUPT_WINDOW
        } else {
            old & !CPU_INTERRUPT_WINDOW
        };
        if new != old && self.set_vmcs(CTRL_CPU_BASED, new).is_ok() {
            self.cpu_based.set(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Event, Exit, FakeHvf};
    use super::*;
    use crate::{Vcpu, Vm};

    fn vcpu(fake: FakeHvf, exits: Vec<Exit>) -> (HvfX86<FakeHvf>, HvfX86Vm<FakeHvf>) {
        fake.script(0, exits);
        let hv = HvfX86::new(fake);
        let vm = hv.create_vm().unwrap();
        (hv, vm)
    }

    fn runs(hv: &HvfX86<FakeHvf>) -> Vec<(u64, u64, u64, u64)> {
        hv.api()
            .log()
            .into_iter()
            .map(
                |Event::Run {
                     rip,
                     rax,
                     rcx,
                     interruption,
                     ..
                 }| (rip, rax, rcx, interruption),
            )
            .collect()
    }

    #[test]
    fn port_io_moves_rip_and_completes_in() {
        let exits = vec![
            Exit::io(0x3f8, 1, false, 0x1234_5641).with(Reg::Rip, 0x1000),
            Exit::io(0x510, 2, true, 0xffff_ffff_ffff_ffff),
            Exit::io(0x510, 4, true, 0xffff_ffff_ffff_ffff),
            Exit::new(EXIT_HLT, 1),
        ];
        let (hv, vm) = vcpu(FakeHvf::default(), exits);
        let mut cpu = vm.create_vcpu(0).unwrap();
        assert_eq!(
            cpu.run(VmEntry::None).unwrap(),
            VmExit::IoOut {
                port: 0x3f8,
                data: Data::new(&[0x41])
            }
        );
        assert_eq!(
            cpu.run(VmEntry::None).unwrap(),
            VmExit::IoIn {
                port: 0x510,
                size: 2
            }
        );
        // The 16-bit IN merges into RAX; the 32-bit one zero-extends.
        let e = cpu.run(VmEntry::IoIn(Data::from_u64(0xbeef, 2))).unwrap();
        assert_eq!(
            e,
            VmExit::IoIn {
                port: 0x510,
                size: 4
            }
        );
        assert_eq!(runs(&hv)[2].1, 0xffff_ffff_ffff_beef);
        let e = cpu
            .run(VmEntry::IoIn(Data::from_u64(0x8000_0001, 4)))
            .unwrap();
        assert_eq!(e, VmExit::Halt);
        assert_eq!(runs(&hv)[3], (0x1003, 0x8000_0001, 0, 0));
        assert_eq!(cpu.regs().unwrap().rip, 0x1004, "HLT skipped too");
    }

    #[test]
    fn cpuid_and_msrs_are_answered_inside() {
        let exits = vec![
            Exit::new(EXIT_CPUID, 2)
                .with(Reg::Gpr(0), 7)
                .with(Reg::Gpr(1), 0),
            Exit::new(EXIT_RDMSR, 2).with(Reg::Gpr(1), 0x1b),
            Exit::new(EXIT_WRMSR, 2)
                .with(Reg::Gpr(1), u64::from(MSR_EFER))
                .with(Reg::Gpr(0), 0x500)
                .with(Reg::Gpr(2), 0),
            Exit::new(EXIT_RDMSR, 2).with(Reg::Gpr(1), 0x3a), // not ours: #GP
            Exit::new(EXIT_HLT, 1),
        ];
        let (hv, vm) = vcpu(FakeHvf::default(), exits);
        let mut cpu = vm.create_vcpu(0).unwrap();
        cpu.set_vmcs(GUEST_CR0, CR0_PE).unwrap(); // protected mode: #GP has an error code
        let leaf7 = CpuidEntry {
            function: 7,
            index: 0,
            flags: CPUID_INDEX_SIGNIFICANT,
            ebx: 0xabcd,
            ..Default::default()
        };
        cpu.set_cpuid(&[leaf7]).unwrap();
        assert_eq!(cpu.run(VmEntry::None).unwrap(), VmExit::Halt);
        let r = runs(&hv);
        assert_eq!(cpu.regs().unwrap().rbx, 0xabcd, "CPUID leaf 7 EBX");
        // RDMSR APIC_BASE of the boot vCPU: enabled, BSP.
        assert_eq!(r[2].1, 0xfee0_0900);
        // WRMSR EFER went to the VMCS and turned on IA-32e mode entry.
        assert_eq!(hv.api().vmcs(0, GUEST_IA32_EFER), Some(0x500));
        assert_ne!(hv.api().vmcs(0, CTRL_ENTRY).unwrap() & ENTRY_IA32E_GUEST, 0);
        // The unknown MSR raised #GP (error code 0) with RIP left on the RDMSR.
        let gp = 13 | INTERRUPTION_HW_EXCEPTION | INTERRUPTION_ERROR_CODE | INTERRUPTION_VALID;
        assert_eq!((r[4].0, r[4].3), (6, gp));
    }

    #[test]
    fn exceptions_carry_their_error_code_and_cr2() {
        let exits = vec![Exit::new(EXIT_HLT, 1), Exit::new(EXIT_HLT, 1)];
        let (hv, vm) = vcpu(FakeHvf::default(), exits);
        let mut cpu = vm.create_vcpu(0).unwrap();
        cpu.set_vmcs(GUEST_CR0, CR0_PE).unwrap();
        cpu.inject_exception(&Exception::page_fault(0xdead_b000, 0x7))
            .unwrap();
        assert_eq!(cpu.run(VmEntry::None).unwrap(), VmExit::Halt);
        let pf = 14 | INTERRUPTION_HW_EXCEPTION | INTERRUPTION_ERROR_CODE | INTERRUPTION_VALID;
        let Event::Run {
            cr2,
            interruption,
            error_code,
            ..
        } = hv.api().log()[0];
        assert_eq!((cr2, interruption, error_code), (0xdead_b000, pf, 7));
        // In real mode VMX delivers no error code (and refuses entry if asked to).
        cpu.set_vmcs(GUEST_CR0, 0).unwrap();
        let gp = Exception::with_error_code(Exception::GENERAL_PROTECTION, 0);
        cpu.inject_exception(&gp).unwrap();
        assert_eq!(cpu.run(VmEntry::None).unwrap(), VmExit::Halt);
        let Event::Run { interruption, .. } = hv.api().log()[1];
        assert_eq!(
            interruption,
            13 | INTERRUPTION_HW_EXCEPTION | INTERRUPTION_VALID
        );
    }

    #[test]
    fn controls_respect_what_the_cpu_allows() {
        // Proc-based: bit 1 must be 1; HLT exiting (bit 7) not allowed.
        let caps = HashMap::from([(Capability::ProcBased, (0xffff_ff7fu64 << 32) | 0x2)]);
        let (hv, vm) = vcpu(FakeHvf::with_capabilities(caps), vec![]);
        let _cpu = vm.create_vcpu(0).unwrap();
        let proc = hv.api().vmcs(0, CTRL_CPU_BASED).unwrap();
        assert_eq!(proc, 0x2 | CPU_UNCONDITIONAL_IO | CPU_SECONDARY);
        assert_eq!(
            hv.api().vmcs(0, CTRL_CPU_BASED2),
            Some(CPU2_EPT | CPU2_UNRESTRICTED_GUEST)
        );
        assert_eq!(hv.api().native_msrs(0).len(), NATIVE_MSRS.len());
    }

    #[test]
    fn special_registers_round_trip_through_the_vmcs() {
        let (hv, vm) = vcpu(FakeHvf::default(), vec![]);
        let cpu = vm.create_vcpu(0).unwrap();
        let code = Segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x10,
            type_: 0xb,
            present: 1,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let s = SpecialRegs {
            cs: code,
            tr: Segment {
                type_: 0xb,
                present: 1,
                limit: 0x67,
                ..Default::default()
            },
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        cpu.set_special_regs(&s).unwrap();
        // VMX needs CR0.NE and CR4.VMXE underneath; the guest still sees its own values.
        assert_eq!(hv.api().vmcs(0, GUEST_CR0), Some(0x8000_0031));
        assert_eq!(hv.api().vmcs(0, GUEST_CR4), Some(0x2020));
        let mut back = cpu.special_regs().unwrap();
        for seg in [
            &mut back.es,
            &mut back.ss,
            &mut back.ds,
            &mut back.fs,
            &mut back.gs,
        ] {
            seg.unusable = 0; // absent segments come back marked unusable
        }
        back.ldt.unusable = 0;
        assert_eq!(back, s);
    }

    #[test]
    fn interrupts_wait_for_their_window() {
        let exits = vec![
            Exit::new(EXIT_INTERRUPT_WINDOW, 0).with(Reg::Rflags, 0x202),
            Exit::new(EXIT_HLT, 1),
        ];
        let (hv, vm) = vcpu(FakeHvf::default(), exits);
        let mut cpu = vm.create_vcpu(0).unwrap();
        cpu.set_reg(Reg::Rflags, 0x2).unwrap();
        assert!(!cpu.interrupt_window_open(), "IF clear");
        cpu.request_interrupt_window(true);
        assert_ne!(
            hv.api().vmcs(0, CTRL_CPU_BASED).unwrap() & CPU_INTERRUPT_WINDOW,
            0
        );
        assert_eq!(cpu.run(VmEntry::None).unwrap(), VmExit::InterruptWindow);
        assert_eq!(
            hv.api().vmcs(0, CTRL_CPU_BASED).unwrap() & CPU_INTERRUPT_WINDOW,
            0
        );
        assert!(cpu.interrupt_window_open());
        cpu.inject_interrupt(0x30).unwrap();
        assert!(!cpu.interrupt_window_open(), "one event at a time");
        assert_eq!(cpu.run(VmEntry::None).unwrap(), VmExit::Halt);
        assert_eq!(runs(&hv)[1].3, 0x30 | INTERRUPTION_VALID);
    }

    #[test]
    fn other_exits() {
        let exits = vec![
            Exit {
                reason: EXIT_EPT_VIOLATION,
                gpa: 0xd000_0010,
                ..Default::default()
            },
            Exit::io(0x60, 1, false, 0).with(Reg::Gpr(0), 0),
            Exit {
                reason: EXIT_IO,
                qualification: (0x3f8 << 16) | (1 << 4),
                ..Default::default()
            },
            Exit::new(EXIT_TRIPLE_FAULT, 0),
            Exit::new(EXIT_ENTRY_FAILED | EXIT_INVALID_GUEST_STATE, 0),
            Exit::new(55, 0),
        ];
        let (_hv, vm) = vcpu(FakeHvf::default(), exits);
        let mut cpu = vm.create_vcpu(0).unwrap();
        let mut run = || cpu.run(VmEntry::None);
        let mut next = || run().unwrap();
        assert_eq!(next(), VmExit::MmioInstruction { gpa: 0xd000_0010 });
        assert!(matches!(next(), VmExit::IoOut { port: 0x60, .. }));
        // String I/O is refused with a typed error (the core stops the VM with it).
        let mut run = || cpu.run(VmEntry::None);
        assert!(matches!(
            run(),
            Err(crate::Error::StringIoUnsupported { port: 0x3f8, .. })
        ));
        let mut next = || cpu.run(VmEntry::None).unwrap();
        assert_eq!(next(), VmExit::Shutdown);
        assert_eq!(next(), VmExit::FailEntry { reason: 33 });
        assert_eq!(next(), VmExit::Unhandled { reason: 55 });
        assert!(vm.create_irqchip(false).is_err() && vm.irq_line(4, true).is_err());
    }

    #[test]
    fn a_kick_stops_a_spinning_guest() {
        let (_hv, vm) = vcpu(FakeHvf::default(), vec![]);
        let vm = Arc::new(vm);
        let (tx, rx) = std::sync::mpsc::channel();
        let v = vm.clone();
        let t = std::thread::spawn(move || {
            let mut cpu = v.create_vcpu(0).unwrap();
            tx.send(cpu.kicker().unwrap()).unwrap();
            cpu.run(VmEntry::None).unwrap()
        });
        rx.recv().unwrap().kick();
        assert_eq!(t.join().unwrap(), VmExit::Interrupted);
    }
}
