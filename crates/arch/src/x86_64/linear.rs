//! Guest memory as a vCPU's instruction reaches it: linear addresses, translated through the
//! guest's page tables with the privilege of the code running (CPL, RFLAGS.AC), then routed
//! to RAM or a device by a [`PhysBus`] the VMM provides. Owns the rules that make an emulated
//! access behave as the CPU's own:
//! - every page an access touches is translated and checked before any byte moves, so an
//!   access that straddles a page boundary reaches the two frames its pages map, and one that
//!   faults on either page has no effect;
//! - a failed translation becomes the fault the CPU raises: #PF with its error code, and the
//!   page's first faulting byte for CR2; #GP (or #SS) for a non-canonical address;
//! - the instruction itself is fetched the same way, with the fetch (execute) checks.

use super::emulator::{self, CpuState, EmuError, GuestBus, MAX_INSN_LEN};
use super::mmu::{self, Access, Mode, PagingRegs, PhysRead, WalkError};

const PAGE: u64 = 4096;

/// Guest-physical memory behind the page tables: RAM and devices. Its [`PhysRead`] reads
/// page-table entries, which live in RAM.
pub trait PhysBus: PhysRead {
    /// Reads RAM or a device (a device read may have side effects).
    fn read(&mut self, gpa: u64, buf: &mut [u8]);
    fn write(&mut self, gpa: u64, data: &[u8]);
    /// Reads instruction bytes; false where `gpa` is not RAM (the VMM runs no code from
    /// device memory).
    fn fetch(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
}

/// The bytes at RIP, as far as they could be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: [u8; MAX_INSN_LEN],
    pub len: usize,
    /// Where RIP is in guest-physical memory.
    pub gpa: u64,
    /// Why fewer than [`MAX_INSN_LEN`] bytes: what fetching the next one raises. It matters
    /// only if the instruction needs that byte.
    pub short: Option<EmuError>,
}

/// A vCPU's view of guest memory: its paging registers and privilege over a [`PhysBus`].
pub struct Linear<'a, B: PhysBus> {
    pub bus: &'a mut B,
    pub paging: PagingRegs,
    pub mode: Mode,
    /// Linear addresses are 64 bits wide (64-bit code); otherwise they wrap at 4 GiB, in
    /// compatibility mode as in legacy modes.
    pub wide: bool,
}

/// The pieces of `len` bytes at `linear` that lie in one page each: (linear address, range
/// of the access).
fn pieces(
    linear: u64,
    len: usize,
    wide: bool,
) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let wrap = move |la: u64| if wide { la } else { la & 0xffff_ffff };
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let la = wrap(linear.wrapping_add(done as u64));
        let in_page = (PAGE - (la % PAGE)) as usize;
        let n = in_page.min(len - done);
        let piece = (la, done..done + n);
        done += n;
        Some(piece)
    })
}

impl<'a, B: PhysBus> Linear<'a, B> {
    /// The view of code in the state `cpu`, with paging state `paging`.
    pub fn new(bus: &'a mut B, paging: PagingRegs, cpu: &CpuState) -> Self {
        Linear {
            bus,
            paging,
            mode: Mode::explicit(cpu.cpl, cpu.regs.rflags),
            wide: paging.long_mode() && cpu.bitness == 64,
        }
    }

    /// The guest-physical address of `linear`, or the fault an `access` there raises.
    pub fn translate(&self, linear: u64, access: Access) -> Result<u64, EmuError> {
        let (paging, mode) = (&self.paging, self.mode);
        mmu::translate(&*self.bus, paging, linear, access, mode).map_err(|cause| {
            match (mmu::page_fault_code(&cause, paging, access, mode), cause) {
                (Some(code), _) => EmuError::PageFault {
                    linear,
                    code,
                    cause,
                },
                (None, WalkError::NonCanonical(_)) => EmuError::NonCanonical {
                    linear,
                    stack: false,
                },
                (None, cause) => EmuError::Paging(cause),
            }
        })
    }

    /// Translates every page of the access, then hands each piece's guest-physical address
    /// and range to `f`: a fault on any page leaves every byte unmoved.
    fn each_page(
        &mut self,
        linear: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(&mut B, u64, std::ops::Range<usize>),
    ) -> Result<(), EmuError> {
        for (la, _) in pieces(linear, len, self.wide) {
            self.translate(la, access)?;
        }
        for (la, range) in pieces(linear, len, self.wide) {
            let gpa = self.translate(la, access)?;
            f(self.bus, gpa, range);
        }
        Ok(())
    }

    /// Up to [`MAX_INSN_LEN`] bytes at RIP, each page checked for execution. Fails only if
    /// the first byte cannot be fetched.
    pub fn fetch(&mut self, cpu: &CpuState) -> Result<Fetched, EmuError> {
        let rip = cpu.rip_linear();
        let mut f = Fetched {
            bytes: [0; MAX_INSN_LEN],
            len: 0,
            gpa: 0,
            short: None,
        };
        for (la, range) in pieces(rip, MAX_INSN_LEN, self.wide) {
            let first = range.start == 0;
            let stop = match self.translate(la, Access::Execute) {
                Ok(gpa) if self.bus.fetch(gpa, &mut f.bytes[range.clone()]) => {
                    if first {
                        f.gpa = gpa;
                    }
                    f.len = range.end;
                    continue;
                }
                Ok(_) => EmuError::FetchNotRam(la),
                Err(e) => e,
            };
            if first {
                return Err(stop);
            }
            f.short = Some(stop);
            break;
        }
        Ok(f)
    }

    /// Fetches the instruction at RIP and emulates it through this view. On error, the
    /// guest is owed [`EmuError::exception`] and `cpu` is as [`emulator::emulate`] leaves it.
    pub fn emulate(&mut self, cpu: &mut CpuState) -> Result<(), EmuError> {
        let f = self.fetch(cpu)?;
        match (emulator::emulate(&f.bytes[..f.len], cpu, self), f.short) {
            // The instruction needs a byte the next page could not give: that page's fault.
            (Err(EmuError::Truncated { .. }), Some(fault)) => Err(fault),
            (r, _) => r,
        }
    }
}

impl<B: PhysBus> GuestBus for Linear<'_, B> {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> Result<(), EmuError> {
        self.each_page(linear, buf.len(), Access::Read, |bus, gpa, r| {
            bus.read(gpa, &mut buf[r])
        })
    }

    fn write(&mut self, linear: u64, data: &[u8]) -> Result<(), EmuError> {
        self.each_page(linear, data.len(), Access::Write, |bus, gpa, r| {
            bus.write(gpa, &data[r])
        })
    }

    fn check_write(&mut self, linear: u64, len: usize) -> Result<(), EmuError> {
        for (la, _) in pieces(linear, len, self.wide) {
            self.translate(la, Access::Write)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86_64::mmu::{PF_FETCH, PF_PRESENT, PF_USER, PF_WRITE};
    use crate::x86_64::regs::{CR0_PG, CR0_WP, CR4_PAE, CR4_SMAP, EFER_LMA, EFER_NXE, RFLAGS_AC};
    use hypervisor::x86_64::{Exception, Regs};
    use std::collections::BTreeMap;

    const RAM_END: u64 = 0x100_0000;
    const DEVICE: u64 = 0xd000_0000;
    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const NX: u64 = 1 << 63;
    /// Where code runs: linear page 8, mapped 1:1, supervisor.
    const CODE: u64 = 0x8000;

    /// Sparse RAM below 16 MiB (tables and data) and a logging device above it.
    #[derive(Default)]
    struct Machine {
        ram: BTreeMap<u64, u8>,
        device: Vec<(bool, u64, Vec<u8>)>,
    }

    impl Machine {
        fn put(&mut self, gpa: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.ram.insert(gpa + i as u64, *b);
            }
        }
        fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
            (0..len as u64)
                .map(|i| self.ram.get(&(gpa + i)).copied().unwrap_or(0))
                .collect()
        }
        /// Long-mode tables at 0x1000..0x5000 mapping linear page `n` (below 2 MiB) with
        /// `entry`, and the code page.
        fn map(&mut self, n: u64, entry: u64) {
            self.put(0x1000, &(0x2000 | P | RW | US).to_le_bytes());
            self.put(0x2000, &(0x3000 | P | RW | US).to_le_bytes());
            self.put(0x3000, &(0x4000 | P | RW | US).to_le_bytes());
            if self.read_u64(0x4000 + 8 * 8) == Some(0) {
                self.put(0x4000 + 8 * 8, &(CODE | P).to_le_bytes());
            }
            self.put(0x4000 + n * 8, &entry.to_le_bytes());
        }
    }

    impl PhysRead for Machine {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            let b = self.get(gpa, 8);
            (gpa < RAM_END).then(|| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        }
    }

    impl PhysBus for Machine {
        fn read(&mut self, gpa: u64, buf: &mut [u8]) {
            if gpa < RAM_END {
                buf.copy_from_slice(&self.get(gpa, buf.len()));
            } else {
                buf.fill(0x5a);
                self.device.push((false, gpa, buf.to_vec()));
            }
        }
        fn write(&mut self, gpa: u64, data: &[u8]) {
            if gpa < RAM_END {
                self.put(gpa, data);
            } else {
                self.device.push((true, gpa, data.to_vec()));
            }
        }
        fn fetch(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
            let ram = gpa < RAM_END;
            if ram {
                buf.copy_from_slice(&self.get(gpa, buf.len()));
            }
            ram
        }
    }

    fn paging() -> PagingRegs {
        PagingRegs {
            cr0: CR0_PG | CR0_WP | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_NXE | (1 << 8),
            gb_pages: true,
        }
    }

    fn cpu(cpl: u8) -> CpuState {
        CpuState {
            regs: Regs {
                rip: CODE,
                rflags: 2,
                ..Default::default()
            },
            bitness: 64,
            seg_base: [0; 6],
            cpl,
        }
    }

    /// Runs `code` at RIP (in the code page, mapped 1:1); the exception owed, if any.
    fn run(
        m: &mut Machine,
        regs: PagingRegs,
        cpu: &mut CpuState,
        code: &[u8],
    ) -> Option<Exception> {
        m.put(cpu.regs.rip, code);
        let mut view = Linear::new(m, regs, cpu);
        view.emulate(cpu)
            .err()
            .map(|e| e.exception().expect("a guest fault"))
    }

    #[test]
    fn accesses_across_a_page_boundary_reach_both_frames() {
        let mut m = Machine::default();
        // Linear page 1 is a device frame, page 2 a RAM frame far from it.
        m.map(1, (DEVICE + 0x5000) | P | RW);
        m.map(2, 0x7_0000 | P | RW);
        let mut c = cpu(0);

        c.regs.rbx = 0x1ffd;
        c.regs.rax = 0x1122_3344_5566_7788;
        // mov [rbx], rax: 3 bytes in the device, 5 in RAM.
        assert_eq!(run(&mut m, paging(), &mut c, &[0x48, 0x89, 0x03]), None);
        assert_eq!(
            m.device,
            vec![(true, DEVICE + 0x5ffd, vec![0x88, 0x77, 0x66])]
        );
        assert_eq!(m.get(0x7_0000, 5), vec![0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(c.regs.rip, CODE + 3);
        // mov rcx, [rbx]: read back from the same two frames.
        m.device.clear();
        assert_eq!(run(&mut m, paging(), &mut c, &[0x48, 0x8b, 0x0b]), None);
        assert_eq!(m.device, vec![(false, DEVICE + 0x5ffd, vec![0x5a; 3])]);
        assert_eq!(c.regs.rcx, 0x1122_3344_555a_5a5a);
    }

    #[test]
    fn a_fault_on_the_second_page_leaves_the_first_untouched() {
        let mut m = Machine::default();
        m.map(1, (DEVICE + 0x5000) | P | RW);
        m.map(2, 0x7_0000 | P); // read-only, and CR0.WP is set
        let mut c = cpu(0);
        c.regs.rbx = 0x1ffe;
        let before = c;
        let e = run(&mut m, paging(), &mut c, &[0x89, 0x03]); // mov [rbx], eax
        assert_eq!(
            e,
            Some(Exception::page_fault(0x2000, PF_PRESENT | PF_WRITE))
        );
        assert_eq!(
            (m.device.len(), c),
            (0, before),
            "nothing written, RIP on the MOV"
        );
        // A read-modify-write faults as a write before it reads anything.
        let e = run(&mut m, paging(), &mut c, &[0x01, 0x03]); // add [rbx], eax
        assert_eq!(
            e,
            Some(Exception::page_fault(0x2000, PF_PRESENT | PF_WRITE))
        );
        assert!(m.device.is_empty());
        // An absent second page: not present, CR2 its first byte.
        m.map(2, 0);
        let e = run(&mut m, paging(), &mut c, &[0x8b, 0x03]); // mov eax, [rbx]
        assert_eq!(e, Some(Exception::page_fault(0x2000, 0)));
        assert!(m.device.is_empty());
    }

    #[test]
    fn user_code_cannot_reach_supervisor_pages() {
        let mut m = Machine::default();
        m.map(1, 0x5_0000 | P | RW | US);
        m.map(2, (DEVICE + 0x2000) | P | RW); // supervisor device page
        m.map(8, CODE | P | US); // user code
        let mut c = cpu(3);
        // rep stosb from the user page into the supervisor one: two bytes, then #PF.
        c.regs.rdi = 0x1ffe;
        c.regs.rcx = 4;
        c.regs.rax = 0xab;
        let e = run(&mut m, paging(), &mut c, &[0xf3, 0xaa]);
        let code = PF_PRESENT | PF_WRITE | PF_USER;
        assert_eq!(e, Some(Exception::page_fault(0x2000, code)));
        assert_eq!(m.get(0x5_0ffe, 2), vec![0xab, 0xab]);
        assert!(m.device.is_empty());
        // The REP keeps its progress and stays on the instruction, as on the CPU.
        assert_eq!((c.regs.rcx, c.regs.rdi, c.regs.rip), (2, 0x2000, CODE));
        // A read is refused too; the same access at CPL 0 goes through.
        c.regs.rbx = 0x2000;
        let e = run(&mut m, paging(), &mut c, &[0x8b, 0x03]);
        assert_eq!(e, Some(Exception::page_fault(0x2000, PF_PRESENT | PF_USER)));
        c.cpl = 0;
        assert_eq!(run(&mut m, paging(), &mut c, &[0x8b, 0x03]), None);
        assert_eq!(m.device, vec![(false, DEVICE + 0x2000, vec![0x5a; 4])]);
    }

    #[test]
    fn smap_and_ac_on_supervisor_accesses_to_user_pages() {
        let mut m = Machine::default();
        m.map(1, (DEVICE + 0x1000) | P | RW | US);
        let smap = PagingRegs {
            cr4: paging().cr4 | CR4_SMAP,
            ..paging()
        };
        let mut c = cpu(0);
        c.regs.rbx = 0x1000;
        let e = run(&mut m, smap, &mut c, &[0x89, 0x03]);
        assert_eq!(
            e,
            Some(Exception::page_fault(0x1000, PF_PRESENT | PF_WRITE))
        );
        c.regs.rflags |= RFLAGS_AC;
        assert_eq!(run(&mut m, smap, &mut c, &[0x89, 0x03]), None);
        assert_eq!(m.device.len(), 1);
    }

    #[test]
    fn instruction_fetch_is_checked_page_by_page() {
        let mut m = Machine::default();
        // The code page is the last before an absent one; a 3-byte MOV starts 2 bytes short.
        m.map(9, 0);
        m.map(1, (DEVICE + 0x1000) | P | RW);
        let mut c = cpu(0);
        c.regs.rbx = 0x1000;
        c.regs.rip = CODE + 0xffe;
        m.put(CODE + 0xffe, &[0x48, 0x89]);
        let mut view = Linear::new(&mut m, paging(), &c);
        let e = view.emulate(&mut c).unwrap_err().exception();
        assert_eq!(e, Some(Exception::page_fault(0x9000, PF_FETCH)));
        // A 2-byte MOV that ends on the page does not need the next one.
        m.put(CODE + 0xffe, &[0x89, 0x03]);
        let mut view = Linear::new(&mut m, paging(), &c);
        assert_eq!(view.emulate(&mut c), Ok(()));
        assert_eq!(c.regs.rip, CODE + 0x1000);
        // No execution from an NX page, nor from a supervisor page at CPL 3.
        m.map(8, CODE | P | NX);
        let mut c = cpu(0);
        let e = run(&mut m, paging(), &mut c, &[0x89, 0x03]);
        assert_eq!(e, Some(Exception::page_fault(CODE, PF_PRESENT | PF_FETCH)));
        m.map(8, CODE | P);
        let mut c = cpu(3);
        let e = run(&mut m, paging(), &mut c, &[0x89, 0x03]);
        let code = PF_PRESENT | PF_USER | PF_FETCH;
        assert_eq!(e, Some(Exception::page_fault(CODE, code)));
    }

    #[test]
    fn other_faults_the_guest_is_owed() {
        let mut m = Machine::default();
        m.map(1, (DEVICE + 0x1000) | P | RW);
        let mut c = cpu(0);
        c.regs.rbx = 0x8000_0000_0000;
        let gp = Exception::with_error_code(Exception::GENERAL_PROTECTION, 0);
        assert_eq!(run(&mut m, paging(), &mut c, &[0x89, 0x03]), Some(gp));
        // Through RBP the default segment is SS: #SS.
        c.regs.rbp = 0x8000_0000_0000;
        let ss = Exception::with_error_code(Exception::STACK_FAULT, 0);
        assert_eq!(run(&mut m, paging(), &mut c, &[0x89, 0x45, 0x00]), Some(ss));
        // What the emulator does not do: #UD, not a stopped VM.
        c.regs.rbx = 0x1000;
        let ud = Exception::new(Exception::INVALID_OPCODE);
        assert_eq!(run(&mut m, paging(), &mut c, &[0x0f, 0x28, 0x03]), Some(ud));
        assert_eq!(run(&mut m, paging(), &mut c, &[0x06]), Some(ud)); // no PUSH ES in 64-bit mode
        assert_eq!(c.regs.rip, CODE);
        assert!(m.device.is_empty());
    }

    #[test]
    fn without_paging_addresses_wrap_at_4_gib() {
        let mut m = Machine::default();
        let mut c = cpu(0);
        c.bitness = 32;
        c.regs.rbx = 0xffff_fffe;
        c.regs.rax = 0x1122_3344;
        m.put(CODE, &[0x89, 0x03]); // mov [ebx], eax
        let mut view = Linear::new(&mut m, PagingRegs::default(), &c);
        assert_eq!(view.emulate(&mut c), Ok(()));
        assert_eq!(m.device, vec![(true, 0xffff_fffe, vec![0x44, 0x33])]);
        assert_eq!(m.get(0, 2), vec![0x22, 0x11]);
    }
}
