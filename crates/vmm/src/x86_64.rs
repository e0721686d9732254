//! The x86_64 machine: memory from the PC memory map, the in-kernel (or hypervisor's)
//! interrupt controllers, PC devices, the kernel and its boot structures ([`boot`]),
//! and each vCPU's CPUID, MSRs and boot registers.

pub(crate) mod boot;

use std::sync::{Arc, Mutex};

use arch::x86_64::emulator::CpuState;
use arch::x86_64::linear::{Fetched, Linear, PhysBus};
use arch::x86_64::mmu::{PagingRegs, PhysRead};
use arch::x86_64::{cpuid, layout, regs};
use devices::irqchip::pic::{self, Pic};
use devices::irqchip::{pit, IoapicDevice, Irqchip, OwnedIrqchip, PitDevice, PortB};
use devices::{Bus, BusDevice};
use hypervisor::x86_64::{CpuidEntry, Exception, X86Vcpu, X86Vm};
use hypervisor::{Event, Hypervisor, IrqLine, MsiLine, Vcpu, VcpuKicker};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::boot::BootPlan;
use crate::config::IrqchipMode;
use crate::device_manager::{self, Platform};
use crate::seccomp::{self, ThreadKind};
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
    pub fn new<H: Hypervisor<Vm = V>>(hv: &H, config: VmConfig) -> Result<Self> {
        Self::create(hv, config, None)
    }

    /// Resumes the VM saved in a snapshot directory (see [`crate::snapshot`]): the machine is
    /// built again as it was, with the saved memory, vCPU, irqchip and device state in place
    /// of a kernel. It runs from where it stopped once [`Vm::start`]ed.
    pub fn restore<H: Hypervisor<Vm = V>>(
        hv: &H,
        mut rc: crate::snapshot::RestoreConfig,
    ) -> Result<Self> {
        let (config, restore) = crate::snapshot::prepare(&mut rc)?;
        Self::create(hv, config, Some(restore))
    }

    fn create<H: Hypervisor<Vm = V>>(
        hv: &H,
        mut config: VmConfig,
        restore: Option<crate::snapshot::Restore>,
    ) -> Result<Self> {
        check_cpus(config.cpus, hv.max_vcpus(), MAX_VCPUS)?;
        seccomp::check(config.seccomp)?;
        let machine = crate::snapshot::Machine::new(&config);
        let settings = crate::vm::Settings::take(&mut config);
        let (mem, restore) = match restore {
            Some(r) => (r.mem, Some(r.snapshot)),
            None => (memory::allocate(config.memory)?, None),
        };
        let vm = Arc::new(hv.create_vm()?);
        memory::register(&*vm, &mem)?;
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
        // Owned from here on: any failure below drops it, which stops its timer thread.
        let chip = if in_kernel {
            None
        } else {
            config
                .cpuid_hide
                .extend(cpuid::hidden_with_userspace_apic());
            let confine = seccomp::on_start(ThreadKind::ApicTimer, config.seccomp);
            Some(
                Irqchip::start_with(config.cpus, confine).map_err(|source| Error::Os {
                    op: "start the APIC timer thread",
                    source,
                })?,
            )
        };
        let state = Arc::new(VmState::new().map_err(|source| Error::Os {
            op: "eventfd",
            source,
        })?);

        let platform = Platform::x86_64();
        let virtio = device_manager::plan_virtio(&mut config, &platform)?;
        let start = match &restore {
            // The hypervisor's irqchip and clock as they were, before any vCPU exists.
            Some(snap) => {
                let crate::snapshot::ArchState::X86_64 {
                    vm: saved, vcpus, ..
                } = &snap.arch;
                vm.set_vm_state(saved)?;
                for v in vcpus {
                    vm.check_vcpu_state(v)?;
                }
                Start::Restore(vcpus.clone())
            }
            None => Start::Boot(boot::load(&mem, &config, &virtio.slots)?),
        };
        let irqfd = config.irqfd;
        let irq = |gsi| -> Result<Box<dyn IrqLine>> {
            match &chip {
                Some(c) => Ok(c.line(gsi)),
                None => Ok(vm.irq_line(gsi, irqfd)?),
            }
        };
        let msi = || -> Result<Box<dyn MsiLine>> {
            match &chip {
                Some(c) => Ok(c.msi_line()),
                None => Ok(vm.msi_line(irqfd)?),
            }
        };
        let level = |gsi, trigger: &Event, resample: &Event| -> Result<Option<Box<dyn IrqLine>>> {
            match &chip {
                Some(c) => {
                    let resample = resample.try_clone().map_err(|source| Error::Os {
                        op: "dup a resample event",
                        source,
                    })?;
                    Ok(Some(c.level_line(gsi, resample)))
                }
                None => {
                    vm.level_irqfd(gsi, trigger, resample)?;
                    Ok(None)
                }
            }
        };
        let mut devices = device_manager::build(
            &vm,
            &irq,
            &msi,
            &level,
            &mem,
            &state,
            &mut config,
            virtio,
            &platform,
        )?;
        if let Some(c) = &chip {
            add_chip_devices(&mut devices, c, config.acpi)?;
        }
        if let Some(snap) = &restore {
            devices.saved.restore(&snap.devices)?;
            let crate::snapshot::ArchState::X86_64 { irqchip, .. } = &snap.arch;
            // `snapshot::check` matched the saved controller to the machine's irqchip mode.
            if let (Some(c), Some(saved)) = (&chip, irqchip) {
                c.set_state(saved)
                    .map_err(|e| crate::snapshot::SnapshotError::Corrupt(e.to_string()))?;
            }
        }
        let setup = Arc::new(X86Setup {
            start,
            machine,
            cpuid: vm.supported_cpuid()?,
            cpuid_hide: config.cpuid_hide,
            num_cpus: config.cpus,
            irqchip: chip,
        });
        Ok(Vm::assemble(vm, mem, state, devices, setup, settings))
    }
}

/// The userspace irqchip's registers on the buses: the IOAPIC, and on a machine without ACPI
/// the PIT, port B and the PICs that Linux looks for there (the in-kernel irqchip's
/// counterparts are KVM's, created with it).
fn add_chip_devices(
    devices: &mut device_manager::Devices,
    chip: &Arc<Irqchip>,
    acpi: bool,
) -> Result<()> {
    fn insert(bus: &mut Bus, dev: impl BusDevice + 'static, base: u64, len: u64) -> Result<()> {
        bus.insert(Arc::new(Mutex::new(dev)), base, len)
            .map_err(|source| Error::Bus { base, source })
    }
    let ioapic = IoapicDevice(chip.clone());
    insert(
        &mut devices.mmio,
        ioapic,
        layout::IOAPIC_START,
        layout::IOAPIC_SIZE,
    )?;
    if !acpi {
        chip.add_pit();
        let pio = &mut devices.pio;
        insert(
            pio,
            PitDevice(chip.clone()),
            pit::PORT_BASE,
            pit::PORT_COUNT,
        )?;
        insert(pio, PortB(chip.clone()), pit::PORT_B, 1)?;
        insert(pio, Pic::default(), pic::MASTER_PORT, pic::PORT_COUNT)?;
        insert(pio, Pic::default(), pic::SLAVE_PORT, pic::PORT_COUNT)?;
    }
    Ok(())
}

/// How the vCPUs begin: at the loaded kernel's entry, or where a snapshot left them.
enum Start {
    Boot(BootPlan),
    Restore(Vec<hypervisor::x86_64::VcpuState>),
}

/// What every x86 vCPU is set up with.
struct X86Setup {
    start: Start,
    /// What the machine was built with, for snapshots.
    machine: crate::snapshot::Machine,
    cpuid: Vec<CpuidEntry>,
    cpuid_hide: Vec<cpuid::Feature>,
    num_cpus: u32,
    /// The interrupt controller, when the VMM runs it (`--irqchip userspace`); its timer
    /// thread stops when this is dropped.
    irqchip: Option<OwnedIrqchip>,
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

/// The guest's state at RIP: registers, and the instruction bytes there as the CPU
/// would fetch them (through the guest's page tables with its privilege; an empty fetch
/// holds the fault it raised). Found with our own page walker, so it works the same on every
/// hypervisor.
struct AtRip {
    cpu: CpuState,
    fetched: std::result::Result<Fetched, arch::x86_64::emulator::EmuError>,
}

impl X86Setup {
    /// Whether the guest's CPUID offers 1 GiB pages (the walker needs to know).
    fn gb_pages(&self) -> bool {
        self.cpuid
            .iter()
            .any(|e| e.function == 0x8000_0001 && e.edx & (1 << 26) != 0)
    }

    fn at_rip<C: X86Vcpu>(&self, vcpu: &C, mem: &GuestMemoryMmap) -> Option<AtRip> {
        let sregs = vcpu.special_regs().ok()?;
        let cpu = CpuState::new(vcpu.regs().ok()?, &sregs);
        let paging = PagingRegs::new(&sregs, self.gb_pages());
        let mut ram = RamOnly(mem);
        let fetched = Linear::new(&mut ram, paging, &cpu).fetch(&cpu);
        Some(AtRip { cpu, fetched })
    }
}

/// Guest RAM alone, for fetching instructions outside an emulated access: a view that only
/// fetches, so its reads and writes touch nothing.
struct RamOnly<'a>(&'a GuestMemoryMmap);

impl PhysRead for RamOnly<'_> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.0.read_u64(gpa)
    }
}

impl PhysBus for RamOnly<'_> {
    fn read(&mut self, _gpa: u64, buf: &mut [u8]) {
        buf.fill(0xff);
    }
    fn write(&mut self, _gpa: u64, _data: &[u8]) {}
    fn fetch(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.0.read_slice(buf, GuestAddress(gpa)).is_ok()
    }
}

/// Guest-physical memory for the instruction emulator: RAM, then the vCPU's own local APIC,
/// then the MMIO bus. The page walk and page splitting are `arch::x86_64::linear`'s.
struct EmulatorBus<'a, V: X86Vm> {
    setup: &'a X86Setup,
    id: u32,
    mem: &'a GuestMemoryMmap,
    mmio: &'a Bus,
    _vm: std::marker::PhantomData<V>,
}

impl<V: X86Vm> PhysRead for EmulatorBus<'_, V> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.mem.read_u64(gpa)
    }
}

impl<V: X86Vm> PhysBus for EmulatorBus<'_, V> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) {
        if self.mem.read_slice(buf, GuestAddress(gpa)).is_ok() {
            return;
        }
        if !VcpuSetup::<V>::local_read(self.setup, self.id, gpa, buf) {
            buf.fill(0xff);
            self.mmio.read(gpa, buf);
        }
    }

    fn write(&mut self, gpa: u64, data: &[u8]) {
        if self.mem.write_slice(data, GuestAddress(gpa)).is_ok() {
            return;
        }
        if !VcpuSetup::<V>::local_write(self.setup, self.id, gpa, data) {
            self.mmio.write(gpa, data);
        }
    }

    fn fetch(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        self.mem.read_slice(buf, GuestAddress(gpa)).is_ok()
    }
}

impl<V: X86Vm> VcpuSetup<V> for X86Setup {
    fn create(&self, vm: &V, id: u32) -> Result<V::Vcpu> {
        let mut vcpu = vm.create_vcpu(id)?;
        let plan = match &self.start {
            Start::Boot(plan) => *plan,
            Start::Restore(saved) => {
                let state = saved.get(id as usize).ok_or(Error::Unsupported(
                    "a snapshot with fewer vCPUs than the machine",
                ))?;
                vcpu.set_state(state)?;
                if let Some(c) = &self.irqchip {
                    c.attach(id, vcpu.kicker()?);
                }
                return Ok(vcpu);
            }
        };
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
            let p = plan;
            vcpu.set_regs(&regs::boot_regs(p.protocol, p.entry))?;
            let sregs = regs::boot_special_regs(p.protocol, vcpu.special_regs()?, p.cr3);
            vcpu.set_special_regs(&sregs)?;
        }
        Ok(vcpu)
    }

    fn finish_instruction(&self, vcpu: &V::Vcpu, mem: &GuestMemoryMmap) -> bool {
        let Some(AtRip {
            cpu,
            fetched: Ok(f),
            ..
        }) = self.at_rip(vcpu, mem)
        else {
            return false;
        };
        let mut regs = cpu.regs;
        let Some(fix) = arch::x86_64::fixup::for_instruction(&f.bytes[..f.len]) else {
            return false;
        };
        (regs.rip, regs.rflags) = fix.apply(regs.rip, regs.rflags);
        if vcpu.set_regs(&regs).is_err() {
            return false;
        }
        if let Some(vector) = fix.exception {
            if vcpu.inject_exception(&Exception::new(vector)).is_err() {
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
        let Some(at) = self.at_rip(vcpu, mem) else {
            return String::new();
        };
        let mut s = format!(", at RIP {:#x}", at.cpu.regs.rip);
        if let Ok(f) = at.fetched {
            let hex: Vec<String> = f.bytes[..f.len]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            s += &format!(" (gpa {:#x}), instruction bytes [{}]", f.gpa, hex.join(" "));
        }
        s
    }

    fn trace_location(&self, vcpu: &V::Vcpu, mem: &GuestMemoryMmap, bytes: bool) -> String {
        let Some(at) = self.at_rip(vcpu, mem) else {
            return String::new();
        };
        let mut s = format!("rip {:#x}", at.cpu.regs.rip);
        if let (true, Ok(f)) = (bytes, at.fetched) {
            // Only the instruction's own bytes, where it decodes.
            let len = arch::x86_64::emulator::decode(&f.bytes[..f.len], &at.cpu)
                .map_or(f.len, |i| i.len().min(f.len));
            let hex: Vec<String> = f.bytes[..len].iter().map(|b| format!("{b:02x}")).collect();
            s += &format!(" [{}]", hex.join(" "));
        }
        s
    }

    /// A fault the instruction raises (a page fault, an instruction the emulator does not
    /// do) goes to the guest as the CPU would deliver it; only a state the walker cannot
    /// follow stops the VM.
    fn emulate_mmio(
        &self,
        id: u32,
        vcpu: &mut V::Vcpu,
        mem: &GuestMemoryMmap,
        mmio: &Bus,
        gpa: u64,
    ) -> std::result::Result<(), String> {
        let sregs = vcpu.special_regs().map_err(|e| e.to_string())?;
        let mut cpu = CpuState::new(vcpu.regs().map_err(|e| e.to_string())?, &sregs);
        let paging = PagingRegs::new(&sregs, self.gb_pages());
        let mut bus = EmulatorBus::<V> {
            setup: self,
            id,
            mem,
            mmio,
            _vm: std::marker::PhantomData,
        };
        let done = Linear::new(&mut bus, paging, &cpu).emulate(&mut cpu);
        // Even a faulting REP keeps the iterations it finished.
        vcpu.set_regs(&cpu.regs).map_err(|e| e.to_string())?;
        let Err(e) = done else {
            return Ok(());
        };
        let exception = e
            .exception()
            .ok_or_else(|| format!("MMIO at {gpa:#x}: {e}"))?;
        log::debug!(
            "vcpu{id}: MMIO at {gpa:#x}, RIP {:#x}: {e}: exception {} delivered to the guest",
            cpu.regs.rip,
            exception.vector
        );
        vcpu.inject_exception(&exception).map_err(|e| e.to_string())
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
        Some(Box::new(ChipWaker(Arc::clone(c))))
    }

    fn detach(&self, id: u32) {
        if let Some(c) = &self.irqchip {
            c.detach(id);
        }
    }

    fn machine(&self) -> Option<&crate::snapshot::Machine> {
        Some(&self.machine)
    }

    fn save_vcpu(&self, _id: u32, vcpu: &V::Vcpu) -> Result<crate::snapshot::VcpuSnapshot> {
        Ok(crate::snapshot::VcpuSnapshot::X86_64(vcpu.state()?))
    }

    fn save_vm(
        &self,
        vm: &V,
        vcpus: Vec<crate::snapshot::VcpuSnapshot>,
    ) -> Result<crate::snapshot::ArchState> {
        Ok(crate::snapshot::ArchState::X86_64 {
            vm: vm.vm_state()?,
            vcpus: vcpus
                .into_iter()
                .map(|crate::snapshot::VcpuSnapshot::X86_64(s)| s)
                .collect(),
            irqchip: self.irqchip.as_ref().map(|c| c.state()),
        })
    }
}
