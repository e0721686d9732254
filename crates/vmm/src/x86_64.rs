//! The x86_64 machine: memory from the PC memory map, the in-kernel (or hypervisor's)
//! interrupt controllers, PC devices, the kernel and its boot structures ([`crate::boot`]),
//! and each vCPU's CPUID, MSRs and boot registers.

use std::sync::Arc;

use arch::x86_64::{cpuid, regs};
use hypervisor::x86_64::{CpuidEntry, Regs, X86Vcpu, X86Vm};
use hypervisor::Hypervisor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::{self, BootPlan};
use crate::device_manager::{self, Platform};
use crate::state::VmState;
use crate::vcpu::VcpuSetup;
use crate::vm::check_cpus;
use crate::{memory, Error, Result, Vm, VmConfig};

/// The most vCPUs this VMM can describe to an x86 guest (the MP table's APIC ID space).
pub const MAX_VCPUS: u32 = arch::x86_64::mptable::MAX_CPUS;

impl<V: X86Vm + 'static> Vm<V> {
    /// Creates an x86_64 VM: validates the config, allocates and maps memory, creates the
    /// irqchip and the platform devices, and loads the kernel. No vCPU runs until
    /// [`Vm::start`].
    pub fn new<H: Hypervisor<Vm = V>>(hv: &H, mut config: VmConfig) -> Result<Self> {
        check_cpus(config.cpus, hv.max_vcpus(), MAX_VCPUS)?;
        let mem = memory::allocate(config.memory)?;
        let vm = hv.create_vm()?;
        memory::register(&vm, &mem)?;
        // A hardware-reduced ACPI platform has no PIT (the FADT tells the guest so); a legacy
        // one gets KVM's. Measured here, an idle in-kernel PIT costs ~10% of PIO exit rate.
        vm.create_irqchip(!config.acpi)?;
        let state = Arc::new(VmState::new().map_err(|source| Error::Os {
            op: "eventfd",
            source,
        })?);

        let platform = Platform::x86_64();
        let virtio = device_manager::plan_virtio(&mut config, &platform)?;
        let plan = boot::load(&mem, &config, &virtio.slots)?;
        let devices = device_manager::build(&vm, &mem, &state, &mut config, virtio, &platform)?;
        let setup = Arc::new(X86Setup {
            plan,
            cpuid: vm.supported_cpuid()?,
            cpuid_hide: config.cpuid_hide,
            num_cpus: config.cpus,
        });
        Ok(Vm::assemble(vm, mem, state, devices, setup, config.cpus))
    }
}

/// What every x86 vCPU is set up with.
struct X86Setup {
    plan: BootPlan,
    cpuid: Vec<CpuidEntry>,
    cpuid_hide: Vec<cpuid::Feature>,
    num_cpus: u32,
}

impl X86Setup {
    /// The guest's RIP, where it points in guest memory, and up to 15 bytes of the instruction
    /// there (fewer near the end of RAM; none if RIP is not mapped).
    fn instruction_at_rip<C: X86Vcpu>(
        vcpu: &C,
        mem: &GuestMemoryMmap,
    ) -> Option<(Regs, Option<u64>, [u8; 15], usize)> {
        let regs = vcpu.regs().ok()?;
        let mut bytes = [0u8; 15];
        let gpa = vcpu.translate_gva(regs.rip).ok().flatten();
        let n = gpa.map_or(0, |gpa| {
            mem.read(&mut bytes, GuestAddress(gpa)).unwrap_or(0)
        });
        Some((regs, gpa, bytes, n))
    }
}

impl<V: X86Vm> VcpuSetup<V> for X86Setup {
    fn create(&self, vm: &V, id: u32) -> Result<V::Vcpu> {
        let vcpu = vm.create_vcpu(id)?;
        let table = cpuid::for_vcpu(&self.cpuid, id, self.num_cpus, &self.cpuid_hide);
        vcpu.set_cpuid(&table)?;
        vcpu.set_msrs(&regs::boot_msrs())?;
        vcpu.reset_fpu()?;
        vcpu.setup_lapic_lints()?;
        // Secondary vCPUs wait for INIT/SIPI from the boot vCPU, as on real hardware.
        if id == 0 {
            let p = self.plan;
            vcpu.set_regs(&regs::boot_regs(p.protocol, p.entry))?;
            let sregs = regs::boot_special_regs(p.protocol, vcpu.special_regs()?, p.cr3);
            vcpu.set_special_regs(&sregs)?;
        }
        Ok(vcpu)
    }

    fn finish_instruction(&self, vcpu: &V::Vcpu, mem: &GuestMemoryMmap) -> bool {
        let Some((mut regs, _, bytes, n)) = Self::instruction_at_rip(vcpu, mem) else {
            return false;
        };
        let Some(fix) = arch::x86_64::fixup::for_instruction(&bytes[..n]) else {
            return false;
        };
        (regs.rip, regs.rflags) = fix.apply(regs.rip, regs.rflags);
        if vcpu.set_regs(&regs).is_err() {
            return false;
        }
        if let Some(vector) = fix.exception {
            if vcpu.inject_exception(vector).is_err() {
                return false;
            }
        }
        log::debug!(
            "completed {} the hypervisor could not emulate",
            fix.mnemonic
        );
        true
    }

    fn location(&self, vcpu: &V::Vcpu, mem: &GuestMemoryMmap) -> String {
        let Some((regs, gpa, bytes, n)) = Self::instruction_at_rip(vcpu, mem) else {
            return String::new();
        };
        let mut s = format!(", at RIP {:#x}", regs.rip);
        if let Some(gpa) = gpa {
            let hex: Vec<String> = bytes[..n].iter().map(|b| format!("{b:02x}")).collect();
            s += &format!(" (gpa {gpa:#x}), instruction bytes [{}]", hex.join(" "));
        }
        s
    }
}
