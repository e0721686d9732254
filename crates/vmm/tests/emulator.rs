//! vibe-vmm's MMIO instruction emulator (arch::x86_64::emulator, with the page walks and
//! page splitting of arch::x86_64::linear) against KVM's, on a real vCPU. The `emulate` guest
//! performs MMIO with many instruction forms, widths, prefixes and addressing modes, first in
//! 32-bit protected mode and then in 64-bit mode, where it ends with accesses that straddle a
//! page boundary between MMIO frames that are not adjacent (and between MMIO and RAM), at
//! CPL 0 and then at CPL 3; each case is bracketed by `out 0xe0` and `out 0xe1`. For every
//! case the test records the MMIO accesses KVM reports (answering reads from a fixed pattern)
//! and the registers before and after, then runs our emulator on the "before" state with the
//! same answers and asserts it makes the same accesses (address, size, direction, data) and
//! leaves the same registers and flags. Last, a CPL 3 write to a supervisor-only MMIO page:
//! KVM delivers the #PF through the guest's IDT to a CPL 0 handler, which reports CR2 and the
//! error code; ours must raise the same #PF and make no access. Then the same state again with
//! a #PF injected through `X86Vcpu::inject_exception`, which the handler must see with our CR2
//! and error code.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use std::io::Cursor;

use arch::x86_64::emulator::{self, CpuState, AF, CF, DF, OF, PF, SF, ZF};
use arch::x86_64::linear::{Linear, PhysBus};
use arch::x86_64::mmu::{PagingRegs, PhysRead};
use arch::x86_64::regs::{self, BootProtocol};
use arch::x86_64::{cpuid, gdt, paging};
use hypervisor::exit::Data;
use hypervisor::x86_64::{Exception, Regs, SpecialRegs, X86Vcpu, X86Vm};
use hypervisor::{Hypervisor, Vcpu, Vm, VmEntry, VmExit};
use iced_x86::Mnemonic;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 64 << 20;
const BEFORE: u16 = 0xe0;
const AFTER: u16 = 0xe1;
const END_32BIT: u16 = 0xe2;
const ENTER_USER: u16 = 0xe3;
const PAGE_FAULT: u16 = 0xe5;
const DEBUG_EXIT: u16 = 0xf4;
/// `out imm8, al`: the checkpoint instruction.
const OUT_IMM8: u8 = 0xe6;

/// The guest's window of 4 KiB pages (PML4 slot 1), as `emulate.S` defines it: page 0 and
/// page 1 are MMIO frames that are not adjacent, page 2 RAM, page 3 MMIO, page 4 (USER_CODE)
/// the guest's user code, page 5 (SUPERVISOR) MMIO for the supervisor only. All but the last
/// are user pages.
const WINDOW: u64 = 0x80_0000_0000;
const USER_CODE: u64 = 0x4000;
const SUPERVISOR: u64 = 0x5000;
/// Where the harness keeps the window's tables, the IDT and the kernel stack (guest RAM).
const TABLES: u64 = 0x300_0000;
const WINDOW_PT: u64 = TABLES + 0x2000;
const IDT: u64 = TABLES + 0x3000;
const KERNEL_STACK_TOP: u64 = TABLES + 0x5000;
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;

fn put64(mem: &GuestMemoryMmap, at: u64, v: u64) {
    mem.write_obj(v, GuestAddress(at)).unwrap();
}

/// The window's tables, hung from the PML4 at `pml4`.
fn map_window(mem: &GuestMemoryMmap, pml4: u64) {
    put64(mem, pml4 + 8, TABLES | P | RW | US);
    put64(mem, TABLES, (TABLES + 0x1000) | P | RW | US);
    put64(mem, TABLES + 0x1000, WINDOW_PT | P | RW | US);
    let pages = [
        0xd000_1000 | P | RW | US,
        0xd000_5000 | P | RW | US,
        (TABLES + 0x6000) | P | RW | US,
        0xd000_3000 | P | RW | US,
    ];
    for (i, e) in pages.into_iter().enumerate() {
        put64(mem, WINDOW_PT + 8 * i as u64, e);
    }
    put64(mem, WINDOW_PT + SUPERVISOR / 4096 * 8, 0xd000_7000 | P | RW);
}

/// Maps the user code page at `code` (guest-physical), points #PF at `handler` through a
/// 64-bit interrupt gate with a kernel stack in the TSS, and enters the user page at CPL 3
/// (IOPL 3, so the checkpoints' OUTs still work).
fn enter_user(vcpu: &impl X86Vcpu, mem: &GuestMemoryMmap, code: u64, handler: u64) {
    put64(mem, WINDOW_PT + USER_CODE / 4096 * 8, code | P | US);
    let gate_low = (handler & 0xffff)
        | (u64::from(gdt::CODE64_SELECTOR) << 16)
        | (0x8e << 40)
        | ((handler >> 16) & 0xffff) << 48;
    put64(mem, IDT + 14 * 16, gate_low);
    put64(mem, IDT + 14 * 16 + 8, handler >> 32);
    let mut s = vcpu.special_regs().unwrap();
    // The CPU loads the handler's CS from the GDT itself.
    mem.write_slice(&regs::gdt_bytes(), GuestAddress(s.gdt.base))
        .unwrap();
    put64(mem, s.tr.base + 4, KERNEL_STACK_TOP); // RSP0
    s.idt.base = IDT;
    s.idt.limit = 16 * 32 - 1;
    s.cs.dpl = 3;
    s.cs.selector |= 3;
    s.ss.dpl = 3;
    s.ss.selector |= 3;
    vcpu.set_special_regs(&s).unwrap();
    let mut r = vcpu.regs().unwrap();
    r.rip = WINDOW + USER_CODE;
    r.rflags |= 3 << 12;
    vcpu.set_regs(&r).unwrap();
}

/// What the "device" returns for the byte at `gpa`: a fixed pattern, so any re-read agrees.
fn pattern(gpa: u64) -> u8 {
    (gpa.wrapping_mul(0x9e37_79b9) >> 11) as u8
}

/// One MMIO access: (write, guest-physical address, bytes written or returned).
type Mmio = (bool, u64, Vec<u8>);

/// The emulator's guest-physical memory: the test VM's RAM, and the pattern "device"
/// everywhere else. Page walks and page splitting are `arch::x86_64::linear`'s, as in the VMM.
struct Bus<'a> {
    mem: &'a GuestMemoryMmap,
    log: Vec<Mmio>,
}

impl PhysRead for Bus<'_> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.mem.read_u64(gpa)
    }
}

impl PhysBus for Bus<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        if gpa < MEM {
            self.mem.read_slice(buf, GuestAddress(gpa)).unwrap();
            return;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(gpa + i as u64);
        }
        self.log.push((false, gpa, buf.to_vec()));
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        if gpa < MEM {
            self.mem.write_slice(data, GuestAddress(gpa)).unwrap();
            return;
        }
        self.log.push((true, gpa, data.to_vec()));
    }

    fn fetch(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.mem.read_slice(buf, GuestAddress(gpa)).is_ok()
    }
}

/// Flags each instruction defines (AND, OR, XOR and TEST leave AF undefined).
fn defined_flags(m: Mnemonic) -> u64 {
    let all = CF | PF | AF | ZF | SF | OF | DF;
    match m {
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => all & !AF,
        _ => all,
    }
}

struct Case {
    before: Regs,
    sregs: SpecialRegs,
    kvm: Vec<Mmio>,
}

/// Checks one case; returns its mnemonic.
fn check(mem: &GuestMemoryMmap, case: &Case, after: Regs, out_advances: bool) -> String {
    let mut cpu = CpuState::new(case.before, &case.sregs);
    let paging = PagingRegs::new(&case.sregs, false);
    let mut bus = Bus {
        mem,
        log: Vec::new(),
    };
    let mut view = Linear::new(&mut bus, paging, &cpu);
    let f = view.fetch(&cpu).unwrap();
    let insn = emulator::decode(&f.bytes[..f.len], &cpu).unwrap();
    let what = format!(
        "{:?} at {:#x} ({}-bit, CPL {})",
        insn.mnemonic(),
        cpu.regs.rip,
        cpu.bitness,
        cpu.cpl
    );
    view.emulate(&mut cpu)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(bus.log, case.kvm, "{what}: MMIO accesses (ours, KVM's)");
    let mut ours = cpu.regs;
    if out_advances {
        ours.rip += 2;
    }
    let flags = defined_flags(insn.mnemonic());
    assert_eq!(
        ours.rflags & flags,
        after.rflags & flags,
        "{what}: flags (ours, KVM's)"
    );
    ours.rflags = after.rflags;
    assert_eq!(ours, after, "{what}: registers (ours, KVM's)");
    what
}

/// Checks a case KVM faulted on: ours must raise the same exception, change nothing, and
/// make no MMIO access.
fn check_fault(mem: &GuestMemoryMmap, case: &Case, theirs: Exception) -> String {
    let mut cpu = CpuState::new(case.before, &case.sregs);
    let paging = PagingRegs::new(&case.sregs, false);
    let mut bus = Bus {
        mem,
        log: Vec::new(),
    };
    let what = format!("fault at {:#x} (CPL {})", cpu.regs.rip, cpu.cpl);
    let e = Linear::new(&mut bus, paging, &cpu)
        .emulate(&mut cpu)
        .expect_err(&what);
    assert_eq!(e.exception(), Some(theirs), "{what}: {e}");
    assert_eq!(cpu.regs, case.before, "{what}");
    assert_eq!((bus.log, &case.kvm), (vec![], &vec![]), "{what}");
    what
}

#[test]
fn emulator_matches_kvm_on_every_mmio_form() {
    let Some(kvm) = common::kvm() else { return };
    let mem = vmm::memory::allocate(MEM).unwrap();
    let vm = kvm.create_vm().unwrap();
    vmm::memory::register(&vm, &mem).unwrap();
    vm.create_irqchip(false).unwrap();
    let entry = Elf::load(&mem, None, &mut Cursor::new(test_guests::EMULATE), None)
        .unwrap()
        .kernel_load
        .0;
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let supported = vm.supported_cpuid().unwrap();
    vcpu.set_cpuid(&cpuid::for_vcpu(&supported, 0, 1, &[]))
        .unwrap();
    vcpu.set_msrs(&regs::boot_msrs()).unwrap();

    // 32-bit protected mode, paging off, with non-zero FS and ES bases to see them counted.
    let mut s = regs::boot_special_regs(BootProtocol::Pvh, vcpu.special_regs().unwrap(), 0);
    s.fs.base = 0x100;
    s.es.base = 0x40;
    vcpu.set_special_regs(&s).unwrap();
    vcpu.set_regs(&regs::boot_regs(BootProtocol::Pvh, entry + 16))
        .unwrap();

    let mut case: Option<Case> = None;
    let mut checked: Vec<String> = Vec::new();
    let mut entry_value = VmEntry::None;
    let mut out_advances = None;
    let mut modes_done = 0;
    let mut injected: Option<Exception> = None;
    for _ in 0..100_000 {
        let exit = vcpu.run(std::mem::take(&mut entry_value)).unwrap();
        match exit {
            VmExit::IoOut { port: BEFORE, .. } => {
                let mut r = vcpu.regs().unwrap();
                // Where the MMIO instruction starts: after the 2-byte OUT, whether or not
                // this KVM has moved RIP past the OUT when it reports the exit (seen on the
                // first case, where RIP is a physical address).
                let advances = *out_advances.get_or_insert_with(|| {
                    let mut at = [0u8; 2];
                    mem.read_slice(&mut at, GuestAddress(r.rip)).unwrap();
                    at != [OUT_IMM8, BEFORE as u8]
                });
                if !advances {
                    r.rip += 2;
                }
                case = Some(Case {
                    before: r,
                    sregs: vcpu.special_regs().unwrap(),
                    kvm: Vec::new(),
                });
            }
            VmExit::IoOut { port: AFTER, .. } => {
                let c = case
                    .take()
                    .expect("an `after` checkpoint without a `before`");
                let after = vcpu.regs().unwrap();
                checked.push(check(&mem, &c, after, out_advances == Some(true)));
            }
            VmExit::MmioRead { addr, size } => {
                let bytes: Vec<u8> = (0..u64::from(size)).map(|i| pattern(addr + i)).collect();
                if let Some(c) = case.as_mut() {
                    c.kvm.push((false, addr, bytes.clone()));
                }
                entry_value = VmEntry::MmioRead(Data::new(&bytes));
            }
            VmExit::MmioWrite { addr, data } => {
                if let Some(c) = case.as_mut() {
                    c.kvm.push((true, addr, data.as_slice().to_vec()));
                }
            }
            VmExit::IoOut {
                port: END_32BIT, ..
            } => {
                // Into long mode: identity page tables, 64-bit code, a GS base to count.
                modes_done += 1;
                let cr3 = paging::write_identity_tables(&mem).unwrap();
                map_window(&mem, cr3);
                let mut s = regs::boot_special_regs(
                    BootProtocol::Linux64,
                    vcpu.special_regs().unwrap(),
                    cr3,
                );
                s.gs.base = 0x180;
                s.fs.base = 0x100;
                vcpu.set_special_regs(&s).unwrap();
                vcpu.set_regs(&regs::boot_regs(BootProtocol::Linux64, entry))
                    .unwrap();
            }
            VmExit::IoOut {
                port: ENTER_USER, ..
            } => {
                let r = vcpu.regs().unwrap();
                enter_user(&vcpu, &mem, r.rsi, r.rdx);
            }
            VmExit::IoOut {
                port: PAGE_FAULT, ..
            } => {
                let r = vcpu.regs().unwrap();
                let seen = Exception::page_fault(r.rax, r.rdx as u32);
                if let Some(ours) = injected.take() {
                    // Ours, injected the way the VMM injects it, reached the handler intact.
                    assert_eq!(seen, ours, "injected #PF as the guest's handler saw it");
                    checked.push("injected #PF".into());
                    continue;
                }
                // The user access to the supervisor page: KVM's #PF reached the handler.
                let c = case.take().expect("a page fault outside a case");
                checked.push(check_fault(&mem, &c, seen));
                // Again from the faulting instruction, now through X86Vcpu::inject_exception,
                // with values of our own so that KVM's cannot pass for them.
                vcpu.set_special_regs(&c.sregs).unwrap();
                vcpu.set_regs(&c.before).unwrap();
                let ours = Exception::page_fault(seen.cr2.unwrap_or(0) ^ 0xff8, 0x15);
                vcpu.inject_exception(&ours).unwrap();
                injected = Some(ours);
            }
            VmExit::IoOut {
                port: DEBUG_EXIT,
                data,
            } => {
                assert_eq!(data.as_slice(), &[0]);
                modes_done += 1;
                break;
            }
            other => panic!("unexpected exit {other:?} after {checked:?}"),
        }
    }
    assert_eq!(modes_done, 2, "both modes ran to the end");
    let count = |what: &str| checked.iter().filter(|c| c.contains(what)).count();
    eprintln!(
        "emulator agreed with KVM on {} MMIO instructions ({} in 32-bit mode, {} in 64-bit mode, {} of them at CPL 3) and on a CPL 3 page fault; the #PF injected reached the guest",
        count("-bit"),
        count("(32-bit"),
        count("(64-bit"),
        count("(64-bit, CPL 3)")
    );
    assert_eq!(
        count("CPL 3"),
        5,
        "four user-mode cases and one user-mode fault"
    );
    assert_eq!(
        count("fault at"),
        1,
        "the #PF that KVM delivered to the guest"
    );
    assert_eq!(count("injected #PF"), 1, "the #PF that we injected");
    // Every case in the guest's source was compared, in each mode.
    let source = include_str!("../../../guests/asm/emulate.S");
    let (code32, code64) = source.split_once("main64:").unwrap();
    let cases = |text: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with("case "))
            .count()
    };
    assert_eq!(count("(32-bit"), cases(code32), "{checked:#?}");
    assert_eq!(count("(64-bit"), cases(code64), "{checked:#?}");
}
