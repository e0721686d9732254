//! Backend-neutral x86_64 register state (what `arch` computes and a backend loads) and the
//! x86 parts of the VM and vCPU contracts.

mod state;

pub use state::{Blob, VcpuState, VmState};

use crate::Result;

/// The x86 side of a VM.
pub trait X86Vm: crate::Vm<Vcpu: X86Vcpu> {
    /// The CPUID leaves the hypervisor can present to a guest.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;

    /// Reads the interrupt controllers, PIT and clock the hypervisor runs, for a snapshot
    /// (every vCPU stopped). [`crate::Error::Unsupported`] where the backend cannot.
    fn vm_state(&self) -> Result<VmState> {
        Err(crate::Error::Unsupported)
    }

    /// Loads what [`X86Vm::vm_state`] saved into a new VM whose irqchip exists and whose vCPUs
    /// do not run yet.
    fn set_vm_state(&self, _state: &VmState) -> Result<()> {
        Err(crate::Error::Unsupported)
    }

    /// Checks, before any vCPU is created, what can be checked of a saved vCPU state (the
    /// backend's structures have the right sizes), so a bad snapshot fails before the VM
    /// starts.
    fn check_vcpu_state(&self, _state: &VcpuState) -> Result<()> {
        Err(crate::Error::Unsupported)
    }
}

/// The x86 side of a vCPU: register state and the set-up a boot protocol needs.
pub trait X86Vcpu: crate::Vcpu {
    fn set_regs(&self, regs: &Regs) -> Result<()>;
    fn regs(&self) -> Result<Regs>;
    fn set_special_regs(&self, sregs: &SpecialRegs) -> Result<()>;
    fn special_regs(&self) -> Result<SpecialRegs>;
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()>;
    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()>;
    /// Sets the FPU to its power-on state (x87 control word, MXCSR).
    fn reset_fpu(&self) -> Result<()>;
    /// Wires LINT0 as ExtINT and LINT1 as NMI, as firmware does for the boot protocol.
    fn setup_lapic_lints(&self) -> Result<()>;
    /// Delivers exception `e` to the guest on its next entry, as if the instruction about to
    /// run had raised it, with its error code and, for a #PF, CR2 set first (used to finish
    /// or fault instructions the VMM emulates).
    fn inject_exception(&self, e: &Exception) -> Result<()>;

    // For an interrupt controller in the VMM (no in-kernel irqchip):

    /// Whether the guest can take an external interrupt on the next entry (interrupts
    /// enabled, no interrupt shadow, nothing else being injected), as of the last exit.
    fn interrupt_window_open(&mut self) -> bool;
    /// Delivers external interrupt `vector` on the next entry (KVM_INTERRUPT). Only when
    /// [`X86Vcpu::interrupt_window_open`] said so.
    fn inject_interrupt(&mut self, vector: u8) -> Result<()>;
    /// Asks for a [`crate::VmExit::InterruptWindow`] exit as soon as the guest can take an
    /// interrupt (or stops asking).
    fn request_interrupt_window(&mut self, on: bool);

    // For snapshots (the vCPU's own thread, the guest not running):

    /// Reads everything of the vCPU a snapshot keeps. Complete the last exit first
    /// ([`crate::Vcpu::finish_exit`]). [`crate::Error::Unsupported`] where the backend cannot.
    fn state(&self) -> Result<VcpuState> {
        Err(crate::Error::Unsupported)
    }

    /// Loads a saved state into a new vCPU (CPUID first, the events last).
    fn set_state(&self, _state: &VcpuState) -> Result<()> {
        Err(crate::Error::Unsupported)
    }
}

/// An exception as the CPU raises it: what a handler in the guest receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    /// Pushed for #DF, #TS, #NP, #SS, #GP, #PF and #AC.
    pub error_code: Option<u32>,
    /// For a #PF: the faulting linear address, which the CPU leaves in CR2.
    pub cr2: Option<u64>,
}

impl Exception {
    pub const INVALID_OPCODE: u8 = 6;
    pub const STACK_FAULT: u8 = 12;
    pub const GENERAL_PROTECTION: u8 = 13;
    pub const PAGE_FAULT: u8 = 14;

    /// An exception without an error code (#BP, #UD, ...).
    pub fn new(vector: u8) -> Self {
        Exception {
            vector,
            error_code: None,
            cr2: None,
        }
    }

    pub fn with_error_code(vector: u8, code: u32) -> Self {
        Exception {
            error_code: Some(code),
            ..Exception::new(vector)
        }
    }

    /// #PF at `linear` with error `code`.
    pub fn page_fault(linear: u64, code: u32) -> Self {
        Exception {
            cr2: Some(linear),
            ..Exception::with_error_code(Exception::PAGE_FAULT, code)
        }
    }

    /// Whether the CPU pushes an error code for `vector` (in protected and long mode).
    pub fn vector_has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10..=14 | 17)
    }
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden descriptor cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    /// Default operand size (1 = 32-bit).
    pub db: u8,
    /// 1 for code/data, 0 for system segments.
    pub s: u8,
    /// Long mode code segment.
    pub l: u8,
    /// Granularity (limit in 4 KiB units).
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
}

impl Segment {
    /// The attributes in the layout of a descriptor's bits 40..56 (type, S, DPL, P, AVL, L,
    /// D/B, G), which VMX also uses for its access-rights fields; bit 16 marks unusable.
    pub fn access_rights(&self) -> u32 {
        if self.unusable != 0 || self.present == 0 {
            return 1 << 16;
        }
        u32::from(self.type_ & 0xf)
            | u32::from(self.s & 1) << 4
            | u32::from(self.dpl & 3) << 5
            | u32::from(self.present & 1) << 7
            | u32::from(self.avl & 1) << 12
            | u32::from(self.l & 1) << 13
            | u32::from(self.db & 1) << 14
            | u32::from(self.g & 1) << 15
    }

    /// A segment with these access rights and no base, limit or selector yet.
    pub fn from_access_rights(ar: u32) -> Self {
        let bit = |n: u32| ((ar >> n) & 1) as u8;
        Segment {
            type_: (ar & 0xf) as u8,
            s: bit(4),
            dpl: ((ar >> 5) & 3) as u8,
            present: bit(7),
            avl: bit(12),
            l: bit(13),
            db: bit(14),
            g: bit(15),
            unusable: bit(16),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// One CPUID leaf (and sub-leaf) as presented to the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Backend flags, e.g. KVM's "index is significant".
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}
