//! VMCS field encodings and control bits (Intel SDM vol. 3, appendices A-C) the backend uses.

pub const GUEST_ES_SELECTOR: u32 = 0x0800;
pub const GUEST_ES_LIMIT: u32 = 0x4800;
pub const GUEST_ES_AR: u32 = 0x4814;
pub const GUEST_ES_BASE: u32 = 0x6806;
/// Segment fields come in the order ES, CS, SS, DS, FS, GS, LDTR, TR, 2 apart.
pub const SEGMENT_STRIDE: u32 = 2;
pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
pub const GUEST_GDTR_BASE: u32 = 0x6816;
pub const GUEST_IDTR_BASE: u32 = 0x6818;
pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
pub const GUEST_CR0: u32 = 0x6800;
pub const GUEST_CR3: u32 = 0x6802;
pub const GUEST_CR4: u32 = 0x6804;
pub const GUEST_IA32_EFER: u32 = 0x2806;

pub const CTRL_PIN_BASED: u32 = 0x4000;
pub const CTRL_CPU_BASED: u32 = 0x4002;
pub const CTRL_EXIT: u32 = 0x400c;
pub const CTRL_ENTRY: u32 = 0x4012;
pub const CTRL_ENTRY_INTERRUPTION_INFO: u32 = 0x4016;
pub const CTRL_ENTRY_EXCEPTION_ERROR: u32 = 0x4018;
pub const CTRL_CPU_BASED2: u32 = 0x401e;
pub const CTRL_CR0_MASK: u32 = 0x6000;
pub const CTRL_CR4_MASK: u32 = 0x6002;
pub const CTRL_CR0_SHADOW: u32 = 0x6004;
pub const CTRL_CR4_SHADOW: u32 = 0x6006;

pub const RO_EXIT_REASON: u32 = 0x4402;
pub const RO_EXIT_QUALIFICATION: u32 = 0x6400;
pub const RO_GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
pub const RO_EXIT_INSTRUCTION_LENGTH: u32 = 0x440c;

pub const PIN_EXTERNAL_INTERRUPT: u64 = 1 << 0;
pub const PIN_NMI: u64 = 1 << 3;
pub const CPU_INTERRUPT_WINDOW: u64 = 1 << 2;
pub const CPU_HLT: u64 = 1 << 7;
pub const CPU_UNCONDITIONAL_IO: u64 = 1 << 24;
pub const CPU_SECONDARY: u64 = 1 << 31;
pub const CPU2_EPT: u64 = 1 << 1;
pub const CPU2_UNRESTRICTED_GUEST: u64 = 1 << 7;
pub const ENTRY_IA32E_GUEST: u64 = 1 << 9;
pub const ENTRY_LOAD_EFER: u64 = 1 << 15;
pub const EXIT_HOST_IA32E: u64 = 1 << 9;
pub const EXIT_SAVE_EFER: u64 = 1 << 20;
pub const EXIT_LOAD_EFER: u64 = 1 << 21;

/// VM-entry interruption information: valid, type, deliver error code.
pub const INTERRUPTION_VALID: u64 = 1 << 31;
pub const INTERRUPTION_EXTERNAL: u64 = 0 << 8;
pub const INTERRUPTION_HW_EXCEPTION: u64 = 3 << 8;
pub const INTERRUPTION_ERROR_CODE: u64 = 1 << 11;

/// Basic exit reasons.
pub const EXIT_EXTERNAL_INTERRUPT: u32 = 1;
pub const EXIT_TRIPLE_FAULT: u32 = 2;
pub const EXIT_INTERRUPT_WINDOW: u32 = 7;
pub const EXIT_CPUID: u32 = 10;
pub const EXIT_HLT: u32 = 12;
pub const EXIT_IO: u32 = 30;
pub const EXIT_RDMSR: u32 = 31;
pub const EXIT_WRMSR: u32 = 32;
pub const EXIT_INVALID_GUEST_STATE: u32 = 33;
pub const EXIT_EPT_VIOLATION: u32 = 48;
/// Bit 31 of the exit reason: the VM entry failed.
pub const EXIT_ENTRY_FAILED: u32 = 1 << 31;

/// A control value the CPU accepts: the bits `want` plus those that must be 1 (capability's
/// low half), minus those that must be 0 (not in its high half).
pub fn adjust(capability: u64, want: u64) -> u64 {
    (want | (capability & 0xffff_ffff)) & (capability >> 32)
}
