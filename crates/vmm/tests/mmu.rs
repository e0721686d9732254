//! The guest page-table walker (arch::x86_64::mmu) against KVM's own: random page tables for
//! each paging mode are built in guest memory, the control registers loaded into a real KVM
//! vCPU, and thousands of addresses translated both ways (KVM_TRANSLATE walks the tables
//! without running guest code), with 1 GiB pages both allowed and hidden by CPUID.
//!
//! This project's nested KVM pages only in long mode (it drops CR0.PG for 32-bit and PAE
//! paging); there those two modes are reported as skipped and covered by the unit tests.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))] // x86 guests on KVM

mod common;

use arch::x86_64::mmu::{self, Access, Mode, PagingRegs};
use arch::x86_64::regs::{CR0_PE, CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME};
use hypervisor::x86_64::{X86Vcpu, X86Vm};
use hypervisor::{Hypervisor, Vcpu, Vm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: u64 = 64 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn put64(mem: &GuestMemoryMmap, at: u64, v: u64) {
    mem.write_obj(v, GuestAddress(at)).unwrap();
}

fn put32(mem: &GuestMemoryMmap, at: u64, v: u32) {
    mem.write_obj(v, GuestAddress(at)).unwrap();
}

fn frame(rng: &mut Rng, align: u64) -> u64 {
    (rng.next() % MEM) & !(align - 1)
}

/// A page directory at `pd` whose first 8 entries are 2 MiB pages or page tables of 16 random
/// 4 KiB frames (the same 8-byte format in long mode and PAE); `table` hands out table pages.
fn fill_pd(mem: &GuestMemoryMmap, pd: u64, rng: &mut Rng, table: &mut impl FnMut() -> u64) {
    for l2 in 0..8u64 {
        if rng.next().is_multiple_of(2) {
            put64(mem, pd + l2 * 8, frame(rng, 2 << 20) | 0x83);
        } else {
            let pt = table();
            put64(mem, pd + l2 * 8, pt | 3);
            for l1 in 0..16u64 {
                put64(mem, pt + l1 * 8, frame(rng, 4096) | 3);
            }
        }
    }
}

/// Random tables for `mode`, CR3 at 0x10000, tables from 0x11000, frames below MEM.
fn build(mem: &GuestMemoryMmap, mode: &str, rng: &mut Rng) -> PagingRegs {
    let mut next_table = 0x11000u64;
    let mut table = || {
        next_table += 0x1000;
        next_table
    };
    match mode {
        "long" => {
            // PML4[0] and [1] -> PDPTs; each PDPT maps a few 1 GiB pages and PDs; each PD maps
            // 2 MiB pages and PTs with random 4 KiB frames; the rest is not present.
            for l4 in 0..2u64 {
                let pdpt = table();
                put64(mem, 0x10000 + l4 * 8, pdpt | 3);
                for l3 in 0..4u64 {
                    match rng.next() % 3 {
                        0 => put64(mem, pdpt + l3 * 8, ((rng.next() % 4) << 30) | 0x83),
                        1 => {
                            let pd = table();
                            put64(mem, pdpt + l3 * 8, pd | 3);
                            fill_pd(mem, pd, rng, &mut table);
                        }
                        _ => {}
                    }
                }
            }
            PagingRegs {
                cr0: CR0_PE | CR0_PG,
                cr3: 0x10000,
                cr4: CR4_PAE,
                efer: EFER_LME | EFER_LMA,
                gb_pages: false, // set from CPUID by the caller
            }
        }
        "pae" => {
            for l3 in 0..4u64 {
                let pd = table();
                put64(mem, 0x10000 + l3 * 8, pd | 1);
                fill_pd(mem, pd, rng, &mut table);
            }
            PagingRegs {
                cr0: CR0_PE | CR0_PG,
                cr3: 0x10000,
                cr4: CR4_PAE,
                ..Default::default()
            }
        }
        _ => {
            // 32-bit with PSE: 4 MiB pages and page tables.
            for l2 in 0..64u64 {
                match rng.next() % 3 {
                    0 => put32(mem, 0x10000 + l2 * 4, (frame(rng, 4 << 20) | 0x83) as u32),
                    1 => {
                        let pt = table();
                        put32(mem, 0x10000 + l2 * 4, (pt | 3) as u32);
                        for l1 in 0..32u64 {
                            put32(mem, pt + l1 * 4, (frame(rng, 4096) | 3) as u32);
                        }
                    }
                    _ => {}
                }
            }
            PagingRegs {
                cr0: CR0_PE | CR0_PG,
                cr3: 0x10000,
                cr4: CR4_PSE,
                ..Default::default()
            }
        }
    }
}

#[test]
fn walker_agrees_with_kvm_in_every_paging_mode() {
    let Some(kvm) = common::kvm() else { return };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut skipped = Vec::new();
    for mode in ["long", "32-bit", "pae"] {
        for round in 0..4 {
            let mem = vmm::memory::allocate(MEM).unwrap();
            let vm = kvm.create_vm().unwrap();
            vmm::memory::register(&vm, &mem).unwrap();
            vm.create_irqchip(false).unwrap();
            let vcpu = vm.create_vcpu(0).unwrap();
            // Once with KVM's full CPUID (1 GiB pages where the host has them), once with
            // PDPE1GB hidden, so both answers for a large PDPT entry are checked.
            let mut cpuid = vm.supported_cpuid().unwrap();
            let hide_gb = round % 2 == 1;
            let mut gb_pages = false;
            for e in &mut cpuid {
                if e.function == 0x8000_0001 {
                    if hide_gb {
                        e.edx &= !(1 << 26);
                    }
                    gb_pages = e.edx & (1 << 26) != 0;
                }
            }
            vcpu.set_cpuid(&cpuid).unwrap();
            let mut regs = build(&mem, mode, &mut rng);
            regs.gb_pages = gb_pages;
            let mut s = vcpu.special_regs().unwrap();
            s.cr0 = regs.cr0;
            s.cr3 = regs.cr3;
            s.cr4 = regs.cr4;
            s.efer = regs.efer;
            if mode == "long" {
                s.cs.l = 1;
                s.cs.db = 0;
            }
            vcpu.set_special_regs(&s).unwrap();
            // This project's nested KVM (PVM) only pages in long mode: it drops CR0.PG for
            // the 32-bit modes. Compare what the host accepts, and say what it did not.
            if vcpu.special_regs().unwrap().cr0 & CR0_PG == 0 {
                eprintln!(
                    "SKIPPED {mode}: this KVM does not accept {mode} paging (CR0.PG dropped)"
                );
                skipped.push(mode);
                break;
            }
            let mut compared = (0, 0);
            for i in 0..4000u64 {
                let linear = match mode {
                    // Both halves of the canonical space the tables cover, and beyond them.
                    // PML4 slot 0-2, PDPT slot 0-3, often inside the 16 MiB the PDs cover.
                    "long" => {
                        let within = match rng.next() % 2 {
                            0 => rng.next() % (16 << 20),
                            _ => rng.next() % (1 << 30),
                        };
                        ((rng.next() % 3) << 39) | ((rng.next() % 4) << 30) | (within & !0x7)
                    }
                    "pae" => ((rng.next() % 4) << 30) | (rng.next() % (16 << 20)),
                    _ => rng.next() % (256 << 20),
                } + (i % 8);
                let ours = mmu::translate(
                    &mem,
                    &regs,
                    linear,
                    Access::Read,
                    Mode::Supervisor { ac: false },
                )
                .ok();
                let theirs = vcpu.translate_gva(linear).unwrap();
                assert_eq!(ours, theirs, "{mode} round {round}: linear {linear:#x}");
                if theirs.is_some() {
                    compared.0 += 1;
                } else {
                    compared.1 += 1;
                }
            }
            assert!(
                compared.0 > 50 && compared.1 > 50,
                "{mode}: mapped/unmapped {compared:?}"
            );
        }
    }
    assert!(
        !skipped.contains(&"long"),
        "long mode must always be compared"
    );
}
