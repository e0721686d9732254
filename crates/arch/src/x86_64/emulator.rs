//! Emulating the instruction behind an MMIO access, for hypervisors that report only the
//! guest-physical address (Hypervisor.framework on Intel; KVM does this in the kernel).
//!
//! The instruction at RIP is decoded with `iced-x86`, its memory operand's linear address
//! computed (segment base, base, index, scale, displacement, address-size wrap), the access
//! made through a [`GuestBus`] the caller provides (it translates and decides RAM or MMIO),
//! and registers, RIP and RFLAGS updated as the CPU would. Pure: it touches nothing but the
//! [`CpuState`] and the bus, so it is unit-tested, fuzzed and compared against KVM's own
//! emulator (`crates/vmm/tests/emulator.rs`) without a VM of its own.
//!
//! Supported — what drivers and firmware use on device memory:
//! - MOV in every form (register, immediate, `moffs`), MOVZX, MOVSX, MOVSXD;
//! - ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST (memory as either operand), INC, DEC, NOT,
//!   NEG and XCHG;
//! - MOVS, STOS and LODS in every width, with or without REP, in either direction.
//!
//! Anything else is refused with its bytes ([`EmuError::Unsupported`]).
//!
//! A failure says what the guest is owed ([`EmuError::exception`]): #UD for what is not
//! emulated, #PF, #GP or #SS for an access the CPU would fault; the VMM delivers it instead
//! of stopping the VM. Page walks and page-crossing accesses are the bus's work
//! ([`super::linear`] for a real vCPU).

use hypervisor::x86_64::{Exception, Regs, SpecialRegs};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::mmu::{self, WalkError};

/// RFLAGS bits the emulated instructions read or write.
pub const CF: u64 = 1;
pub const PF: u64 = 1 << 2;
pub const AF: u64 = 1 << 4;
pub const ZF: u64 = 1 << 6;
pub const SF: u64 = 1 << 7;
pub const DF: u64 = 1 << 10;
pub const OF: u64 = 1 << 11;
const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// REP iterations done per call. A REP string instruction is interruptible: after this many
/// the registers say how far it got and RIP stays on it, so the guest re-executes it, and a
/// huge RCX never holds the vCPU thread.
pub const MAX_REP_ITERATIONS: u64 = 1024;

/// What the emulator reads and changes: the general registers, and how addresses are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    pub regs: Regs,
    /// 16, 32 or 64: the code segment's default size (64 in long mode).
    pub bitness: u32,
    /// Segment bases, ES, CS, SS, DS, FS, GS (only FS and GS count in 64-bit mode).
    pub seg_base: [u64; 6],
    /// The current privilege level, which decides what the instruction's accesses may reach.
    pub cpl: u8,
}

impl CpuState {
    /// The state a vCPU's registers describe: mode from CS, bases from the segment caches.
    pub fn new(regs: Regs, s: &SpecialRegs) -> Self {
        CpuState {
            regs,
            bitness: match (s.cs.l, s.cs.db) {
                (1, _) => 64,
                (_, 1) => 32,
                _ => 16,
            },
            seg_base: [
                s.es.base, s.cs.base, s.ss.base, s.ds.base, s.fs.base, s.gs.base,
            ],
            cpl: mmu::cpl(s, regs.rflags),
        }
    }

    /// The linear address of RIP (CS base counts outside 64-bit mode).
    pub fn rip_linear(&self) -> u64 {
        match self.bitness {
            64 => self.regs.rip,
            _ => self.seg_base[1].wrapping_add(self.regs.rip) & 0xffff_ffff,
        }
    }
}

/// Guest memory as the instruction sees it: linear addresses, which the caller translates
/// (page walk) and routes to RAM or to a device.
pub trait GuestBus {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), EmuError>;
    fn write(&mut self, linear: u64, data: &[u8]) -> Result<(), EmuError>;
    /// Fails as a write to `len` bytes at `linear` would. Called before the read of a
    /// read-modify-write, which the CPU makes with write intent: a read-only or absent page
    /// faults as a write, before anything is read.
    fn check_write(&mut self, _linear: u64, _len: usize) -> Result<(), EmuError> {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmuError {
    #[error("cannot decode the instruction at RIP {rip:#x} (bytes {bytes:02x?})")]
    Decode { rip: u64, bytes: Vec<u8> },
    /// The instruction's bytes, in hex. (Not its mnemonic: iced's name tables would add
    /// thousands of start-up relocations to every vibe-vmm process.)
    #[error("the instruction [{0}] is not one vibe-vmm emulates on MMIO (it emulates MOV, MOVZX, MOVSX, MOVSXD, ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NOT, NEG, XCHG, MOVS, STOS, LODS)")]
    Unsupported(String),
    /// The bytes fetched end inside the instruction (the next page could not be fetched).
    #[error(
        "the instruction at RIP {rip:#x} runs past the bytes that could be fetched ({bytes:02x?})"
    )]
    Truncated { rip: u64, bytes: Vec<u8> },
    #[error("page fault at linear address {linear:#x}, error code {code:#x} ({cause})")]
    PageFault {
        linear: u64,
        code: u32,
        cause: WalkError,
    },
    /// In 64-bit mode; a stack-segment access faults with #SS, any other with #GP.
    #[error("linear address {linear:#x} is not canonical")]
    NonCanonical { linear: u64, stack: bool },
    /// Code in device memory: the VMM runs instructions from RAM only.
    #[error("the instruction at linear address {0:#x} is not in RAM")]
    FetchNotRam(u64),
    /// The guest's paging is beyond the walker (5-level paging); no fault of the guest's.
    #[error("cannot walk the guest's page tables: {0}")]
    Paging(WalkError),
}

impl EmuError {
    /// The exception the guest gets for this failure, as the CPU would raise it; `None` where
    /// the failure is the VMM's limit, not something the guest did.
    pub fn exception(&self) -> Option<Exception> {
        Some(match self {
            // The CPU would run what the emulator refuses; #UD is how KVM answers the same.
            EmuError::Decode { .. }
            | EmuError::Unsupported(_)
            | EmuError::Truncated { .. }
            | EmuError::FetchNotRam(_) => Exception::new(Exception::INVALID_OPCODE),
            EmuError::PageFault { linear, code, .. } => Exception::page_fault(*linear, *code),
            EmuError::NonCanonical { stack: false, .. } => {
                Exception::with_error_code(Exception::GENERAL_PROTECTION, 0)
            }
            EmuError::NonCanonical { stack: true, .. } => {
                Exception::with_error_code(Exception::STACK_FAULT, 0)
            }
            EmuError::Paging(_) => return None,
        })
    }
}

/// Decodes the instruction at `cpu.regs.rip` from `bytes` (up to 15 bytes fetched there).
pub fn decode(bytes: &[u8], cpu: &CpuState) -> Result<Instruction, EmuError> {
    let bitness = match cpu.bitness {
        16 | 32 | 64 => cpu.bitness,
        _ => 64,
    };
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    // Padded, so that an instruction the bytes only begin is told from one that is invalid.
    let mut padded = [0u8; MAX_INSN_LEN];
    padded[..bytes.len()].copy_from_slice(bytes);
    let mut d = Decoder::with_ip(bitness, &padded, cpu.regs.rip, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        return Err(EmuError::Decode {
            rip: cpu.regs.rip,
            bytes: bytes.to_vec(),
        });
    }
    if insn.len() > bytes.len() {
        return Err(EmuError::Truncated {
            rip: cpu.regs.rip,
            bytes: bytes.to_vec(),
        });
    }
    Ok(insn)
}

/// Decodes and executes the instruction at RIP (`bytes` fetched there), making its memory
/// accesses through `bus`. On success `cpu` holds the state after the instruction (or, for a
/// long REP, after [`MAX_REP_ITERATIONS`] of it, with RIP still on it). On error it is
/// unchanged, except that a string instruction keeps the iterations it finished (RIP still on
/// it), as the CPU leaves a REP that faults part-way.
pub fn emulate(bytes: &[u8], cpu: &mut CpuState, bus: &mut impl GuestBus) -> Result<(), EmuError> {
    let insn = decode(bytes, cpu)?;
    let mut next = *cpu;
    let mut exec = Exec {
        insn: &insn,
        bytes: &bytes[..insn.len().min(bytes.len())],
        cpu: &mut next,
        bus,
        done: true,
    };
    if let Err(e) = exec.run() {
        if exec.is_string() {
            *cpu = next;
        }
        return Err(e);
    }
    if !exec.done {
        *cpu = next;
        return Ok(());
    }
    next.regs.rip = match cpu.bitness {
        64 => insn.next_ip(),
        32 => insn.next_ip() & 0xffff_ffff,
        _ => insn.next_ip() & 0xffff,
    };
    *cpu = next;
    Ok(())
}

fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn sign_bit(size: usize) -> u64 {
    1u64 << (size * 8 - 1)
}

fn sign_extend(v: u64, size: usize) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// The 64-bit register behind `reg`, by index RAX=0 .. R15=15, and whether it is AH..BH.
fn gpr(reg: Register) -> Option<(usize, bool)> {
    let high = matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    let full = reg.full_register();
    let idx = (full as usize).checked_sub(Register::RAX as usize)?;
    (idx < 16 && reg.is_gpr()).then_some((idx, high))
}

fn get(regs: &Regs, idx: usize) -> u64 {
    let mut copy = *regs;
    *slot(&mut copy, idx)
}

fn slot(regs: &mut Regs, idx: usize) -> &mut u64 {
    match idx {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => &mut regs.rsp,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    }
}

/// The value of a general-purpose register of any width.
fn read_gpr(regs: &Regs, reg: Register) -> Option<u64> {
    let (idx, high) = gpr(reg)?;
    let v = get(regs, idx);
    Some(if high {
        (v >> 8) & 0xff
    } else {
        v & mask(reg.size())
    })
}

/// Which arithmetic an instruction does, for its result and flags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Alu {
    Add,
    Adc,
    Sub,
    Sbb,
    And,
    Or,
    Xor,
}

/// The result of `a op b` on `size` bytes and the status flags it leaves.
fn alu(op: Alu, a: u64, b: u64, size: usize, flags: u64) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (a & m, b & m);
    let carry_in = u64::from(flags & CF != 0);
    let (r, cf, of, af) = match op {
        Alu::Add | Alu::Adc => {
            let c = if op == Alu::Adc { carry_in } else { 0 };
            let wide = u128::from(a) + u128::from(b) + u128::from(c);
            let r = (wide as u64) & m;
            let cf = wide > u128::from(m);
            let of = (a ^ r) & (b ^ r) & sign_bit(size) != 0;
            (r, cf, of, (a ^ b ^ r) & 0x10 != 0)
        }
        Alu::Sub | Alu::Sbb => {
            let c = if op == Alu::Sbb { carry_in } else { 0 };
            let r = a.wrapping_sub(b).wrapping_sub(c) & m;
            let cf = u128::from(a) < u128::from(b) + u128::from(c);
            let of = (a ^ b) & (a ^ r) & sign_bit(size) != 0;
            (r, cf, of, (a ^ b ^ r) & 0x10 != 0)
        }
        Alu::And => (a & b, false, false, false),
        Alu::Or => (a | b, false, false, false),
        Alu::Xor => (a ^ b, false, false, false),
    };
    let mut f = flags & !STATUS;
    f |= if cf { CF } else { 0 };
    f |= if of { OF } else { 0 };
    f |= if af { AF } else { 0 };
    (r, f | result_flags(r, size))
}

/// ZF, SF and PF of a result.
fn result_flags(r: u64, size: usize) -> u64 {
    let mut f = 0;
    if r & mask(size) == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

struct Exec<'a, B: GuestBus> {
    insn: &'a Instruction,
    /// The instruction's bytes, for error reports.
    bytes: &'a [u8],
    cpu: &'a mut CpuState,
    bus: &'a mut B,
    /// False when a REP instruction stopped part-way (RIP must stay on it).
    done: bool,
}

impl<B: GuestBus> Exec<'_, B> {
    fn unsupported(&self) -> EmuError {
        let hex: Vec<String> = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        EmuError::Unsupported(hex.join(" "))
    }

    fn reg(&mut self, reg: Register) -> Result<u64, EmuError> {
        read_gpr(&self.cpu.regs, reg).ok_or_else(|| self.unsupported())
    }

    fn set_reg(&mut self, reg: Register, value: u64) -> Result<(), EmuError> {
        let (idx, high) = gpr(reg).ok_or_else(|| self.unsupported())?;
        let size = reg.size();
        let r = slot(&mut self.cpu.regs, idx);
        *r = match (size, high) {
            (1, true) => (*r & !0xff00) | ((value & 0xff) << 8),
            // 32-bit results zero the upper half; 8- and 16-bit ones merge.
            (4, _) => value & 0xffff_ffff,
            (8, _) => value,
            _ => (*r & !mask(size)) | (value & mask(size)),
        };
        Ok(())
    }

    fn seg_base(&self, seg: Register) -> u64 {
        let i = match seg {
            Register::ES => 0,
            Register::CS => 1,
            Register::SS => 2,
            Register::DS => 3,
            Register::FS => 4,
            Register::GS => 5,
            _ => return 0,
        };
        if self.cpu.bitness == 64 && i < 4 {
            return 0;
        }
        self.cpu.seg_base[i]
    }

    /// The linear address of memory operand `op`.
    fn address(&self, op: u32) -> Result<u64, EmuError> {
        let la = self.insn.virtual_address(op, 0, |r, _, _| {
            if r.is_segment_register() {
                Some(self.seg_base(r))
            } else {
                read_gpr(&self.cpu.regs, r)
            }
        });
        la.ok_or_else(|| self.unsupported())
    }

    /// The segment of the memory operand a load (`write` false) or store uses: a string
    /// instruction stores through ES whatever its prefix.
    fn segment(&self, write: bool) -> Register {
        if write && self.is_string() {
            Register::ES
        } else {
            self.insn.memory_segment()
        }
    }

    /// A non-canonical address faults with #SS through SS, with #GP otherwise.
    fn on_segment(&self, e: EmuError, write: bool) -> EmuError {
        match e {
            EmuError::NonCanonical { linear, .. } => EmuError::NonCanonical {
                linear,
                stack: self.segment(write) == Register::SS,
            },
            e => e,
        }
    }

    fn load(&mut self, la: u64, size: usize) -> Result<u64, EmuError> {
        let mut buf = [0u8; 8];
        let size = size.min(8);
        let read = self.bus.read(la, &mut buf[..size]);
        read.map_err(|e| self.on_segment(e, false))?;
        Ok(u64::from_le_bytes(buf))
    }

    /// The load of a read-modify-write: checked as the write it leads to.
    fn load_for_write(&mut self, la: u64, size: usize) -> Result<u64, EmuError> {
        let check = self.bus.check_write(la, size.min(8));
        check.map_err(|e| self.on_segment(e, true))?;
        self.load(la, size)
    }

    fn store(&mut self, la: u64, size: usize, value: u64) -> Result<(), EmuError> {
        let write = self.bus.write(la, &value.to_le_bytes()[..size.min(8)]);
        write.map_err(|e| self.on_segment(e, true))
    }

    /// The value of a non-memory operand: a register or an immediate.
    fn operand(&mut self, op: u32) -> Result<u64, EmuError> {
        match self.insn.op_kind(op) {
            OpKind::Register => self.reg(self.insn.op_register(op)),
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(self.insn.immediate(op)),
            _ => Err(self.unsupported()),
        }
    }

    fn memory_size(&self) -> usize {
        self.insn.memory_size().size()
    }

    fn run(&mut self) -> Result<(), EmuError> {
        use Mnemonic::*;
        match self.insn.mnemonic() {
            Mov => self.mov(),
            Movzx | Movsx | Movsxd => self.extend(),
            Add => self.arith(Alu::Add, true),
            Adc => self.arith(Alu::Adc, true),
            Sub => self.arith(Alu::Sub, true),
            Sbb => self.arith(Alu::Sbb, true),
            And => self.arith(Alu::And, true),
            Or => self.arith(Alu::Or, true),
            Xor => self.arith(Alu::Xor, true),
            Cmp => self.arith(Alu::Sub, false),
            Test => self.arith(Alu::And, false),
            Inc | Dec | Not | Neg => self.unary(),
            Xchg => self.xchg(),
            Movsb | Movsw | Movsd | Movsq | Stosb | Stosw | Stosd | Stosq | Lodsb | Lodsw
            | Lodsd | Lodsq
                if self.is_string() =>
            {
                self.string()
            }
            _ => Err(self.unsupported()),
        }
    }

    fn memory_operand(&self) -> Option<u32> {
        (0..self.insn.op_count()).find(|&i| self.insn.op_kind(i) == OpKind::Memory)
    }

    fn mov(&mut self) -> Result<(), EmuError> {
        match self.memory_operand() {
            Some(0) => {
                let la = self.address(0)?;
                let v = self.operand(1)?;
                self.store(la, self.memory_size(), v)
            }
            Some(1) => {
                let la = self.address(1)?;
                let v = self.load(la, self.memory_size())?;
                self.set_reg(self.insn.op0_register(), v)
            }
            _ => Err(self.unsupported()),
        }
    }

    fn extend(&mut self) -> Result<(), EmuError> {
        if self.memory_operand() != Some(1) {
            return Err(self.unsupported());
        }
        let size = self.memory_size();
        let la = self.address(1)?;
        let mut v = self.load(la, size)?;
        if self.insn.mnemonic() != Mnemonic::Movzx {
            v = sign_extend(v, size);
        }
        self.set_reg(self.insn.op0_register(), v)
    }

    /// Two-operand arithmetic with memory as either operand; `write` is false for CMP/TEST.
    fn arith(&mut self, op: Alu, write: bool) -> Result<(), EmuError> {
        let size = self.memory_size();
        let flags = self.cpu.regs.rflags;
        match self.memory_operand() {
            Some(0) => {
                let la = self.address(0)?;
                let b = self.operand(1)?;
                let a = if write {
                    self.load_for_write(la, size)?
                } else {
                    self.load(la, size)?
                };
                let (r, f) = alu(op, a, b, size, flags);
                if write {
                    self.store(la, size, r)?;
                }
                self.cpu.regs.rflags = f;
            }
            Some(1) => {
                let la = self.address(1)?;
                let dst = self.insn.op0_register();
                let a = self.reg(dst)?;
                let b = self.load(la, size)?;
                let (r, f) = alu(op, a, b, size, flags);
                if write {
                    self.set_reg(dst, r)?;
                }
                self.cpu.regs.rflags = f;
            }
            _ => return Err(self.unsupported()),
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<(), EmuError> {
        if self.memory_operand() != Some(0) {
            return Err(self.unsupported());
        }
        let size = self.memory_size();
        let la = self.address(0)?;
        let a = self.load_for_write(la, size)?;
        let flags = self.cpu.regs.rflags;
        let (r, f) = match self.insn.mnemonic() {
            // INC and DEC leave CF alone.
            Mnemonic::Inc => {
                let (r, f) = alu(Alu::Add, a, 1, size, flags);
                (r, (f & !CF) | (flags & CF))
            }
            Mnemonic::Dec => {
                let (r, f) = alu(Alu::Sub, a, 1, size, flags);
                (r, (f & !CF) | (flags & CF))
            }
            Mnemonic::Neg => alu(Alu::Sub, 0, a, size, flags),
            _ => (!a & mask(size), flags), // NOT changes no flag
        };
        self.store(la, size, r)?;
        self.cpu.regs.rflags = f;
        Ok(())
    }

    fn xchg(&mut self) -> Result<(), EmuError> {
        let (mem, reg) = match self.memory_operand() {
            Some(0) => (0, 1),
            Some(1) => (1, 0),
            _ => return Err(self.unsupported()),
        };
        let size = self.memory_size();
        let la = self.address(mem)?;
        let reg = self.insn.op_register(reg);
        let old = self.load_for_write(la, size)?;
        let v = self.reg(reg)?;
        self.store(la, size, v)?;
        self.set_reg(reg, old)
    }

    /// MOVS/STOS/LODS operands are implicit memory kinds; the SSE MOVSD is not a string op.
    fn is_string(&self) -> bool {
        (0..self.insn.op_count()).any(|i| {
            matches!(
                self.insn.op_kind(i),
                OpKind::MemorySegSI
                    | OpKind::MemorySegESI
                    | OpKind::MemorySegRSI
                    | OpKind::MemoryESDI
                    | OpKind::MemoryESEDI
                    | OpKind::MemoryESRDI
            )
        })
    }

    fn string(&mut self) -> Result<(), EmuError> {
        use Mnemonic::*;
        let m = self.insn.mnemonic();
        let size = self.memory_size();
        let addr_size: usize =
            match self
                .insn
                .op_kind(if m == Stosb || m == Stosw || m == Stosd || m == Stosq {
                    0
                } else {
                    self.insn.op_count() - 1
                }) {
                OpKind::MemorySegSI | OpKind::MemoryESDI => 2,
                OpKind::MemorySegESI | OpKind::MemoryESEDI => 4,
                _ => 8,
            };
        let am = mask(addr_size);
        let rep = self.insn.has_rep_prefix() || self.insn.has_repe_prefix();
        let mut count = if rep { self.cpu.regs.rcx & am } else { 1 };
        let step = if self.cpu.regs.rflags & DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let src_base = self.seg_base(self.insn.memory_segment());
        let dst_base = self.seg_base(Register::ES);
        let mut budget = MAX_REP_ITERATIONS;
        while count > 0 {
            if budget == 0 {
                self.done = false;
                break;
            }
            budget -= 1;
            let (si, di) = (self.cpu.regs.rsi & am, self.cpu.regs.rdi & am);
            match m {
                Movsb | Movsw | Movsd | Movsq => {
                    let v = self.load(src_base.wrapping_add(si), size)?;
                    self.store(dst_base.wrapping_add(di), size, v)?;
                }
                Stosb | Stosw | Stosd | Stosq => {
                    let v = self.cpu.regs.rax;
                    self.store(dst_base.wrapping_add(di), size, v)?;
                }
                _ => {
                    let v = self.load(src_base.wrapping_add(si), size)?;
                    let acc = match size {
                        1 => Register::AL,
                        2 => Register::AX,
                        4 => Register::EAX,
                        _ => Register::RAX,
                    };
                    self.set_reg(acc, v)?;
                }
            }
            let r = &mut self.cpu.regs;
            let advance = |v: u64| (v & !am) | (v.wrapping_add(step) & am);
            if !matches!(m, Stosb | Stosw | Stosd | Stosq) {
                r.rsi = advance(r.rsi);
            }
            if !matches!(m, Lodsb | Lodsw | Lodsd | Lodsq) {
                r.rdi = advance(r.rdi);
            }
            count -= 1;
            if rep {
                r.rcx = (r.rcx & !am) | (count & am);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Sparse memory that logs every access as (write, linear address, bytes).
    #[derive(Default)]
    struct Mem {
        bytes: BTreeMap<u64, u8>,
        log: Vec<(bool, u64, Vec<u8>)>,
    }

    impl GuestBus for Mem {
        fn read(&mut self, la: u64, buf: &mut [u8]) -> Result<(), EmuError> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.bytes.get(&(la + i as u64)).copied().unwrap_or(0);
            }
            self.log.push((false, la, buf.to_vec()));
            Ok(())
        }
        fn write(&mut self, la: u64, data: &[u8]) -> Result<(), EmuError> {
            for (i, b) in data.iter().enumerate() {
                self.bytes.insert(la + i as u64, *b);
            }
            self.log.push((true, la, data.to_vec()));
            Ok(())
        }
    }

    const MMIO: u64 = 0xd000_0000;

    fn cpu64() -> CpuState {
        CpuState {
            regs: Regs {
                rip: 0x1000,
                rbx: MMIO,
                rflags: 2,
                ..Default::default()
            },
            bitness: 64,
            seg_base: [0; 6],
            cpl: 0,
        }
    }

    fn run(bytes: &[u8], cpu: &mut CpuState, mem: &mut Mem) {
        emulate(bytes, cpu, mem).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    }

    #[test]
    fn moves_in_every_width() {
        let (mut cpu, mut mem) = (cpu64(), Mem::default());
        cpu.regs.rax = 0x1122_3344_5566_7788;
        run(&[0x89, 0x03], &mut cpu, &mut mem); // mov [rbx], eax
        run(&[0x88, 0x63, 0x08], &mut cpu, &mut mem); // mov [rbx+8], ah
        run(&[0x66, 0xc7, 0x43, 0x10, 0x34, 0x12], &mut cpu, &mut mem); // mov word [rbx+16], 0x1234
        run(&[0x48, 0x89, 0x43, 0x18], &mut cpu, &mut mem); // mov [rbx+24], rax
        assert_eq!(cpu.regs.rip, 0x1000 + 2 + 3 + 6 + 4);
        assert_eq!(
            mem.log,
            vec![
                (true, MMIO, vec![0x88, 0x77, 0x66, 0x55]),
                (true, MMIO + 8, vec![0x77]),
                (true, MMIO + 16, vec![0x34, 0x12]),
                (
                    true,
                    MMIO + 24,
                    0x1122_3344_5566_7788u64.to_le_bytes().to_vec()
                ),
            ]
        );
        cpu.regs.rcx = u64::MAX;
        run(&[0x66, 0x8b, 0x0b], &mut cpu, &mut mem); // mov cx, [rbx]: merges
        assert_eq!(cpu.regs.rcx, 0xffff_ffff_ffff_7788);
        run(&[0x8b, 0x0b], &mut cpu, &mut mem); // mov ecx, [rbx]: zero-extends
        assert_eq!(cpu.regs.rcx, 0x5566_7788);
        // movabs eax, [0xd0000010]
        let mut movabs = vec![0xa1];
        movabs.extend_from_slice(&(MMIO + 16).to_le_bytes());
        run(&movabs, &mut cpu, &mut mem);
        assert_eq!(cpu.regs.rax, 0x1234);
        // mov [ebx + 0x20], eax with a 32-bit address size wraps the address at 4 GiB.
        cpu.regs.rbx = 0x1_0000_0000 | MMIO;
        run(&[0x67, 0x89, 0x43, 0x20], &mut cpu, &mut mem);
        assert_eq!(mem.log.last().unwrap().1, MMIO + 0x20);
    }

    #[test]
    fn rip_relative_addresses_count_from_the_next_instruction() {
        let (mut cpu, mut mem) = (cpu64(), Mem::default());
        cpu.regs.rip = MMIO - 0x1000;
        cpu.regs.rax = 7;
        // mov [rip + 0x0ffa], eax: 6 bytes, so the target is RIP + 6 + 0xffa = MMIO.
        run(&[0x89, 0x05, 0xfa, 0x0f, 0, 0], &mut cpu, &mut mem);
        assert_eq!(mem.log, vec![(true, MMIO, vec![7, 0, 0, 0])]);
    }

    #[test]
    fn extending_loads() {
        let (mut cpu, mut mem) = (cpu64(), Mem::default());
        mem.write(MMIO, &[0x80, 0xff, 0xff, 0xff]).unwrap();
        run(&[0x0f, 0xb6, 0x03], &mut cpu, &mut mem); // movzx eax, byte [rbx]
        assert_eq!(cpu.regs.rax, 0x80);
        run(&[0x48, 0x0f, 0xbe, 0x03], &mut cpu, &mut mem); // movsx rax, byte [rbx]
        assert_eq!(cpu.regs.rax, 0xffff_ffff_ffff_ff80);
        run(&[0x48, 0x63, 0x03], &mut cpu, &mut mem); // movsxd rax, dword [rbx]
        assert_eq!(cpu.regs.rax, 0xffff_ffff_ffff_ff80);
        run(&[0x0f, 0xbf, 0x03], &mut cpu, &mut mem); // movsx eax, word [rbx]
        assert_eq!(cpu.regs.rax, 0xffff_ff80);
    }

    #[test]
    fn read_modify_write_and_flags() {
        let (mut cpu, mut mem) = (cpu64(), Mem::default());
        mem.write(MMIO, &0x7fff_ffffu32.to_le_bytes()).unwrap();
        run(&[0x83, 0x03, 0x01], &mut cpu, &mut mem); // add dword [rbx], 1
        assert_eq!(mem.bytes[&(MMIO + 3)], 0x80);
        assert_eq!(cpu.regs.rflags & STATUS, OF | SF | AF | PF);
        mem.write(MMIO, &u32::MAX.to_le_bytes()).unwrap();
        run(&[0xff, 0x03], &mut cpu, &mut mem); // inc dword [rbx]: CF kept (clear)
        assert_eq!(cpu.regs.rflags & STATUS, ZF | AF | PF);
        cpu.regs.rax = 1;
        run(&[0x39, 0x03], &mut cpu, &mut mem); // cmp [rbx], eax: 0 - 1
        assert_eq!(cpu.regs.rflags & (CF | ZF | SF), CF | SF);
        run(&[0xf7, 0x1b], &mut cpu, &mut mem); // neg dword [rbx] of 0
        assert_eq!(cpu.regs.rflags & (CF | ZF), ZF);
        run(&[0xf7, 0x13], &mut cpu, &mut mem); // not dword [rbx]
        assert_eq!(mem.bytes[&MMIO], 0xff);
        cpu.regs.rax = 0xf0;
        run(&[0x20, 0x03], &mut cpu, &mut mem); // and [rbx], al
        assert_eq!(mem.bytes[&MMIO], 0xf0);
        run(&[0x87, 0x03], &mut cpu, &mut mem); // xchg [rbx], eax
        assert_eq!(cpu.regs.rax, 0xffff_fff0);
        assert_eq!(mem.bytes[&MMIO], 0xf0);
    }

    #[test]
    fn string_instructions() {
        let (mut cpu, mut mem) = (cpu64(), Mem::default());
        cpu.regs.rsi = MMIO;
        cpu.regs.rdi = 0x5000;
        cpu.regs.rcx = 3;
        mem.write(MMIO, &[1, 2, 3]).unwrap();
        run(&[0xf3, 0xa4], &mut cpu, &mut mem); // rep movsb
        assert_eq!(
            (cpu.regs.rsi, cpu.regs.rdi, cpu.regs.rcx),
            (MMIO + 3, 0x5003, 0)
        );
        assert_eq!(mem.bytes[&0x5002], 3);
        cpu.regs.rflags |= DF;
        cpu.regs.rax = 0xabcd;
        cpu.regs.rcx = 2;
        cpu.regs.rdi = MMIO + 0x100;
        run(&[0xf3, 0x66, 0xab], &mut cpu, &mut mem); // std; rep stosw
        assert_eq!(cpu.regs.rdi, MMIO + 0x100 - 4);
        assert_eq!(mem.log.last().unwrap().1, MMIO + 0xfe);
        cpu.regs.rflags &= !DF;
        cpu.regs.rsi = MMIO;
        run(&[0xac], &mut cpu, &mut mem); // lodsb
        assert_eq!((cpu.regs.rax & 0xff, cpu.regs.rsi), (1, MMIO + 1));
        // A huge count is done in slices: RIP stays on the instruction until RCX reaches 0.
        cpu.regs.rcx = MAX_REP_ITERATIONS + 1;
        cpu.regs.rdi = MMIO;
        let rip = cpu.regs.rip;
        run(&[0xf3, 0xaa], &mut cpu, &mut mem); // rep stosb
        assert_eq!((cpu.regs.rip, cpu.regs.rcx), (rip, 1));
        run(&[0xf3, 0xaa], &mut cpu, &mut mem);
        assert_eq!((cpu.regs.rip, cpu.regs.rcx), (rip + 2, 0));
        let before = mem.log.len();
        run(&[0xf3, 0xa4], &mut cpu, &mut mem); // rep movsb with RCX = 0 does nothing
        assert_eq!(mem.log.len(), before);
    }

    #[test]
    fn segments_and_32_bit_mode() {
        let mut cpu = cpu64();
        cpu.seg_base = [0x100, 0, 0, 0x200, 0x300, 0x400];
        let mut mem = Mem::default();
        run(&[0x64, 0x89, 0x03], &mut cpu, &mut mem); // mov fs:[rbx], eax
        run(&[0x3e, 0x89, 0x03], &mut cpu, &mut mem); // ds: is ignored in 64-bit mode
        cpu.bitness = 32;
        cpu.regs.rip = 0x2000;
        run(&[0x89, 0x03], &mut cpu, &mut mem); // mov [ebx], eax: DS base counts
        run(&[0x66, 0x89, 0x03], &mut cpu, &mut mem); // mov [ebx], ax
        let at: Vec<_> = mem.log.iter().map(|l| (l.1, l.2.len())).collect();
        assert_eq!(
            at,
            vec![
                (MMIO + 0x300, 4),
                (MMIO, 4),
                (MMIO + 0x200, 4),
                (MMIO + 0x200, 2)
            ]
        );
        assert_eq!(cpu.regs.rip, 0x2005);
    }

    #[test]
    fn refuses_what_it_does_not_emulate() {
        let (mut cpu, mut mem) = (cpu64(), Mem::default());
        let before = cpu;
        let e = emulate(&[0x0f, 0x28, 0x03], &mut cpu, &mut mem).unwrap_err(); // movaps
        assert_eq!(e, EmuError::Unsupported("0f 28 03".into()));
        let e = emulate(&[0x06], &mut cpu, &mut mem).unwrap_err(); // no PUSH ES in 64-bit mode
        assert!(matches!(e, EmuError::Decode { .. }), "{e}");
        // An instruction cut short by the end of the bytes: the caller knows why.
        let e = emulate(&[0x0f, 0xff], &mut cpu, &mut mem).unwrap_err();
        assert!(matches!(e, EmuError::Truncated { .. }), "{e}");
        assert!(emulate(&[], &mut cpu, &mut mem).is_err());
        // SSE movsd has the string instruction's mnemonic but is not one.
        let e = emulate(&[0xf2, 0x0f, 0x10, 0x03], &mut cpu, &mut mem).unwrap_err();
        assert_eq!(e, EmuError::Unsupported("f2 0f 10 03".into()));
        assert_eq!(cpu, before);
    }
}
