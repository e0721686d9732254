//! The x86_64 machine: memory from the PC memory map, the in-kernel (or hypervisor's)
//! interrupt controllers, PC devices, the kernel and its boot structures ([`boot`]),
//! and each vCPU's CPUID, MSRs and boot registers.

pub(crate) mod boot;

use std::sync::Arc;

use arch::x86_64::emulator::{self, CpuState, EmuError, GuestBus, MAX_INSN_LEN};
use arch::x86_64::mmu::{self, Access, PagingRegs};
use arch::x86_64::{cpuid, layout, regs};
use devices::irqchip::{IoapicDevice, Irqchip};
use devices::Bus;
use hypervisor::x86_64::{CpuidEntry, X86Vcpu, X86Vm};
use hypervisor::{Hypervisor, IrqLine, Vcpu, VcpuKicker};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::boot::BootPlan;
use crate::config::IrqchipMode;
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
        // A hypervisor without an in-kernel irqchip (HVF) gets ours.
        let in_kernel = match config.irqchip {
            IrqchipMode::Kernel => match vm.create_irqchip(!config.acpi) {
                Ok(()) => true,
                Err(hypervisor::Error::Unsupported) => false,
                Err(e) => return Err(e.into()),
            },
            IrqchipMode::Userspace => false,
        };
        let chip = if in_kernel {
            None
        } else {
            config
                .cpuid_hide
                .extend(cpuid::hidden_with_userspace_apic());
            Some(Irqchip::new(config.cpus).map_err(|source| Error::Os {
                op: "start the APIC timer thread",
                source,
            })?)
        };
        let state = Arc::new(VmState::new().map_err(|source| Error::Os {
            op: "eventfd",
            source,
        })?);

        let platform = Platform::x86_64();
        let virtio = device_manager::plan_virtio(&mut config, &platform)?;
        let plan = boot::load(&mem, &config, &virtio.slots)?;
        let irqfd = config.irqfd;
        let irq = |gsi| -> Result<Box<dyn IrqLine>> {
            match &chip {
                Some(c) => Ok(c.line(gsi)),
                None => Ok(vm.irq_line(gsi, irqfd)?),
            }
        };
        let mut devices =
            device_manager::build(&vm, &irq, &mem, &state, &mut config, virtio, &platform)?;
        if let Some(c) = &chip {
            let ioapic = Arc::new(std::sync::Mutex::new(IoapicDevice(c.clone())));
            devices
                .mmio
                .insert(ioapic, layout::IOAPIC_START, layout::IOAPIC_SIZE)
                .map_err(|source| Error::Bus {
                    base: layout::IOAPIC_START,
                    source,
                })?;
        }
        let setup = Arc::new(X86Setup {
            plan,
            cpuid: vm.supported_cpuid()?,
            cpuid_hide: config.cpuid_hide,
            num_cpus: config.cpus,
            irqchip: chip,
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
    /// The interrupt controller, when the VMM runs it (`--irqchip userspace`).
    irqchip: Option<Arc<Irqchip>>,
}

impl Drop for X86Setup {
    fn drop(&mut self) {
        if let Some(c) = &self.irqchip {
            c.shutdown();
        }
    }
}

/// Wakes vCPU threads waiting on the userspace interrupt controller.
struct ChipWaker(Arc<Irqchip>);

impl VcpuKicker for ChipWaker {
    fn kick(&self) {
        self.0.wake_all();
    }
}

/// The local APIC's page, as an offset into it.
fn lapic_offset(addr: u64) -> Option<u64> {
    addr.checked_sub(layout::APIC_START)
        .filter(|&o| o < layout::APIC_SIZE)
}

/// The guest's state at RIP: registers, where RIP points in guest memory, and up to 15 bytes
/// of the instruction there (fewer near the end of RAM; none if RIP is not mapped). Found with
/// our own page walker, so it works the same on every hypervisor.
struct AtRip {
    cpu: CpuState,
    gpa: Option<u64>,
    bytes: [u8; MAX_INSN_LEN],
    len: usize,
}

impl X86Setup {
    /// Whether the guest's CPUID offers 1 GiB pages (the walker needs to know).
    fn gb_pages(&self) -> bool {
        self.cpuid
            .iter()
            .any(|e| e.function == 0x8000_0001 && e.edx & (1 << 26) != 0)
    }

    fn at_rip<C: X86Vcpu>(&self, vcpu: &C, mem: &GuestMemoryMmap) -> Option<(AtRip, PagingRegs)> {
        let sregs = vcpu.special_regs().ok()?;
        let cpu = CpuState::new(vcpu.regs().ok()?, &sregs);
        let paging = PagingRegs::new(&sregs, self.gb_pages());
        let mut bytes = [0u8; MAX_INSN_LEN];
        let mut len = 0;
        let linear = cpu.rip_linear();
        let gpa = mmu::translate(mem, &paging, linear, Access::Execute, 0).ok();
        // One walk per page: the instruction may run into the next one.
        while len < MAX_INSN_LEN {
            let la = linear.wrapping_add(len as u64);
            let at = match len {
                0 => gpa,
                _ => mmu::translate(mem, &paging, la, Access::Execute, 0).ok(),
            };
            let Some(at) = at else { break };
            let in_page = (0x1000 - (la & 0xfff)) as usize;
            let n = in_page.min(MAX_INSN_LEN - len);
            match mem.read(&mut bytes[len..len + n], GuestAddress(at)) {
                Ok(read) if read > 0 => len += read,
                _ => break, // not RAM (or past its end)
            }
        }
        let at = AtRip {
            cpu,
            gpa,
            bytes,
            len,
        };
        Some((at, paging))
    }
}

/// Guest memory for the instruction emulator: RAM through the guest's page tables, then the
/// vCPU's own local APIC, then the MMIO bus.
struct EmulatorBus<'a, V: X86Vm> {
    setup: &'a X86Setup,
    id: u32,
    mem: &'a GuestMemoryMmap,
    mmio: &'a Bus,
    paging: PagingRegs,
    _vm: std::marker::PhantomData<V>,
}

impl<V: X86Vm> EmulatorBus<'_, V> {
    fn gpa(&self, linear: u64, access: Access) -> std::result::Result<u64, EmuError> {
        mmu::translate(self.mem, &self.paging, linear, access, 0)
            .map_err(|_| EmuError::Unmapped(linear))
    }
}

impl<V: X86Vm> GuestBus for EmulatorBus<'_, V> {
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> std::result::Result<(), EmuError> {
        let gpa = self.gpa(linear, Access::Read)?;
        if self.mem.read_slice(buf, GuestAddress(gpa)).is_ok() {
            return Ok(());
        }
        if !VcpuSetup::<V>::local_read(self.setup, self.id, gpa, buf) {
            buf.fill(0xff);
            self.mmio.read(gpa, buf);
        }
        Ok(())
    }

    fn write(&mut self, linear: u64, data: &[u8]) -> std::result::Result<(), EmuError> {
        let gpa = self.gpa(linear, Access::Write)?;
        if self.mem.write_slice(data, GuestAddress(gpa)).is_ok() {
            return Ok(());
        }
        if !VcpuSetup::<V>::local_write(self.setup, self.id, gpa, data) {
            self.mmio.write(gpa, data);
        }
        Ok(())
    }
}

impl<V: X86Vm> VcpuSetup<V> for X86Setup {
    fn create(&self, vm: &V, id: u32) -> Result<V::Vcpu> {
        let mut vcpu = vm.create_vcpu(id)?;
        let table = cpuid::for_vcpu(&self.cpuid, id, self.num_cpus, &self.cpuid_hide);
        vcpu.set_cpuid(&table)?;
        vcpu.set_msrs(&regs::boot_msrs())?;
        vcpu.reset_fpu()?;
        match &self.irqchip {
            None => vcpu.setup_lapic_lints()?,
            Some(c) => c.attach(id, vcpu.kicker()?),
        }
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
        let Some((at, _)) = self.at_rip(vcpu, mem) else {
            return false;
        };
        let mut regs = at.cpu.regs;
        let Some(fix) = arch::x86_64::fixup::for_instruction(&at.bytes[..at.len]) else {
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
        let Some((at, _)) = self.at_rip(vcpu, mem) else {
            return String::new();
        };
        let mut s = format!(", at RIP {:#x}", at.cpu.regs.rip);
        if let Some(gpa) = at.gpa {
            let bytes = &at.bytes[..at.len];
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            s += &format!(" (gpa {gpa:#x}), instruction bytes [{}]", hex.join(" "));
        }
        s
    }

    fn emulate_mmio(
        &self,
        id: u32,
        vcpu: &mut V::Vcpu,
        mem: &GuestMemoryMmap,
        mmio: &Bus,
        gpa: u64,
    ) -> std::result::Result<(), String> {
        let (mut at, paging) = self
            .at_rip(vcpu, mem)
            .ok_or("cannot read the vCPU's registers")?;
        let mut bus = EmulatorBus::<V> {
            setup: self,
            id,
            mem,
            mmio,
            paging,
            _vm: std::marker::PhantomData,
        };
        emulator::emulate(&at.bytes[..at.len], &mut at.cpu, &mut bus)
            .map_err(|e| format!("MMIO at {gpa:#x}: {e}"))?;
        vcpu.set_regs(&at.cpu.regs).map_err(|e| e.to_string())
    }

    fn local_read(&self, id: u32, addr: u64, data: &mut [u8]) -> bool {
        let (Some(c), Some(offset)) = (&self.irqchip, lapic_offset(addr)) else {
            return false;
        };
        c.read_lapic(id, offset, data);
        true
    }

    fn local_write(&self, id: u32, addr: u64, data: &[u8]) -> bool {
        let (Some(c), Some(offset)) = (&self.irqchip, lapic_offset(addr)) else {
            return false;
        };
        c.write_lapic(id, offset, data);
        true
    }

    /// Holds a secondary vCPU until its STARTUP IPI, then injects the highest pending
    /// interrupt if the guest can take it, else asks to hear when it can.
    fn before_entry(&self, id: u32, vcpu: &mut V::Vcpu, state: &VmState) -> Result<bool> {
        let Some(c) = &self.irqchip else {
            return Ok(true);
        };
        if c.is_waiting_for_startup(id) {
            let give_up = || state.stopping() || state.pause_requested();
            let Some(vector) = c.wait_for_startup(id, give_up) else {
                return Ok(false);
            };
            let (r, s) = regs::startup_state(vector, vcpu.special_regs()?);
            vcpu.set_special_regs(&s)?;
            vcpu.set_regs(&r)?;
        }
        let (vector, waiting) = c.take_interrupt(id, || vcpu.interrupt_window_open());
        if let Some(vector) = vector {
            vcpu.inject_interrupt(vector)?;
        }
        vcpu.request_interrupt_window(waiting);
        Ok(true)
    }

    fn halt(&self, id: u32, state: &VmState) {
        match &self.irqchip {
            Some(c) => c.wait_for_interrupt(id, || state.stopping() || state.pause_requested()),
            None => std::thread::yield_now(),
        }
    }

    fn waker(&self) -> Option<Box<dyn VcpuKicker>> {
        let c = self.irqchip.as_ref()?;
        Some(Box::new(ChipWaker(c.clone())))
    }
}
