//! vibe-vmm's MMIO instruction emulator (arch::x86_64::emulator) against KVM's, on a real
//! vCPU. The `emulate` guest performs MMIO with many instruction forms, widths, prefixes and
//! addressing modes, first in 32-bit protected mode and then in 64-bit mode; each case is
//! bracketed by `out 0xe0` and `out 0xe1`. For every case the test records the MMIO accesses
//! KVM reports (answering reads from a fixed pattern) and the registers before and after, then
//! runs our emulator on the "before" state with the same answers and asserts it makes the
//! same accesses (address, size, direction, data) and leaves the same registers and flags.

mod common;

use std::io::Cursor;

use arch::x86_64::emulator::{self, CpuState, AF, CF, DF, OF, PF, SF, ZF};
use arch::x86_64::linear::{Linear, PhysBus};
use arch::x86_64::mmu::{PagingRegs, PhysRead};
use arch::x86_64::regs::{self, BootProtocol};
use arch::x86_64::{cpuid, paging};
use hypervisor::exit::Data;
use hypervisor::x86_64::{Regs, SpecialRegs, X86Vcpu, X86Vm};
use hypervisor::{Hypervisor, Vcpu, Vm, VmEntry, VmExit};
use iced_x86::Mnemonic;
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 64 << 20;
const BEFORE: u16 = 0xe0;
const AFTER: u16 = 0xe1;
const END_32BIT: u16 = 0xe2;
const DEBUG_EXIT: u16 = 0xf4;
/// `out imm8, al`: the checkpoint instruction.
const OUT_IMM8: u8 = 0xe6;

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
    for _ in 0..100_000 {
        let exit = vcpu.run(std::mem::take(&mut entry_value)).unwrap();
        match exit {
            VmExit::IoOut { port: BEFORE, .. } => {
                let mut r = vcpu.regs().unwrap();
                // Where the MMIO instruction starts: after the 2-byte OUT, whether or not
                // this KVM has moved RIP past the OUT when it reports the exit.
                let mut at = [0u8; 2];
                mem.read_slice(&mut at, GuestAddress(r.rip)).unwrap();
                let advances = at != [OUT_IMM8, BEFORE as u8];
                out_advances.get_or_insert(advances);
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
        "emulator agreed with KVM on {} MMIO instructions ({} in 32-bit mode, {} in 64-bit mode)",
        checked.len(),
        count("(32-bit"),
        count("(64-bit")
    );
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
