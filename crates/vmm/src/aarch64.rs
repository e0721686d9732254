//! The arm64 machine (`virt`-shaped, [`arch::aarch64::layout`]): RAM from 1 GiB, a GICv3 in
//! the hypervisor, the 16550 and the virtio-mmio devices in MMIO space on GIC SPIs, an arm64
//! Linux `Image` with its device tree, and vCPUs started by PSCI.
//!
//! Generic over any backend whose VM is an [`Arm64Vm`], so the whole machine runs on Linux
//! against the scripted Hypervisor.framework fake (`crates/vmm/tests/arm64.rs`).

use std::sync::Arc;

use arch::aarch64::{fdt, image, layout};
use hypervisor::arm64::{Arm64Vcpu, Arm64Vm, GicConfig};
use hypervisor::Hypervisor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::KernelImage;
use crate::device_manager::{self, Platform};
use crate::image_file::read_all;
use crate::state::VmState;
use crate::vcpu::VcpuSetup;
use crate::vm::check_cpus;
use crate::{memory, Error, Result, Vm, VmConfig};

/// The most vCPUs the arm64 machine describes (its GIC redistributor space).
pub const MAX_VCPUS: u32 = layout::MAX_CPUS;

/// The smallest arm64 guest: room for a kernel, its device tree and an initrd.
pub const MIN_RAM: u64 = 32 << 20;

/// Creates an arm64 VM: memory, the GIC, the devices, the kernel, initrd and device tree.
/// No vCPU runs until [`Vm::start`].
pub fn create<H, V>(hv: &H, mut config: VmConfig) -> Result<Vm<V>>
where
    H: Hypervisor<Vm = V>,
    V: Arm64Vm + 'static,
{
    check_cpus(config.cpus, hv.max_vcpus(), layout::MAX_CPUS)?;
    crate::seccomp::check(config.seccomp)?;
    let settings = crate::vm::Settings::take(&mut config);
    let mem = memory::allocate_ranges(config.memory, MIN_RAM, |size| {
        vec![(layout::RAM_START, size)]
    })?;
    let vm = Arc::new(hv.create_vm()?);
    memory::register(&*vm, &mem)?;
    vm.create_gic(GicConfig {
        dist_base: layout::GIC_DIST_START,
        redist_base: layout::GIC_REDIST_START,
        cpus: config.cpus,
    })?;
    let state = Arc::new(VmState::new().map_err(|source| Error::Os {
        op: "eventfd",
        source,
    })?);

    let platform = Platform::aarch64();
    let virtio = device_manager::plan_virtio(&mut config, &platform)?;
    let kernel = read_all(&config.kernel, "kernel")?;
    let initrd = match &config.initrd {
        Some(path) => Some(read_all(&KernelImage::Path(path.clone()), "initrd")?),
        None => None,
    };
    let placed = image::load(&mem, &kernel, initrd.as_deref(), config.memory)?;
    let tree = fdt::build(&fdt::FdtConfig {
        cpus: config.cpus,
        ram_size: config.memory,
        cmdline: config.cmdline.clone(),
        initrd: placed.initrd,
        virtio_devices: virtio.slots.len() as u32,
    })
    .map_err(|e| Error::DeviceTree(e.to_string()))?;
    mem.write_slice(&tree, GuestAddress(placed.fdt))
        .map_err(|e| Error::DeviceTree(e.to_string()))?;

    let irq = |gsi| Ok(vm.irq_line(gsi, false)?);
    // No MSI controller (GICv2m / ITS) yet: the virt platform has no PCI bus either.
    let msi = || Err(hypervisor::Error::Unsupported.into());
    let level = |_, _: &_, _: &_| Err(hypervisor::Error::Unsupported.into());
    let devices = device_manager::build(
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
    let setup = Arc::new(Arm64Setup {
        entry: placed.kernel,
        fdt: placed.fdt,
    });
    Ok(Vm::assemble(vm, mem, state, devices, setup, settings))
}

/// Where the boot vCPU starts; the others wait for the guest's PSCI CPU_ON.
struct Arm64Setup {
    entry: u64,
    fdt: u64,
}

impl<V: Arm64Vm> VcpuSetup<V> for Arm64Setup {
    fn create(&self, vm: &V, id: u32) -> Result<V::Vcpu> {
        let vcpu = vm.create_vcpu(id)?;
        if id == 0 {
            vcpu.set_boot_regs(self.entry, self.fdt)?;
        }
        Ok(vcpu)
    }

    fn location(&self, vcpu: &V::Vcpu, _mem: &GuestMemoryMmap) -> String {
        vcpu.pc()
            .map_or(String::new(), |pc| format!(", at PC {pc:#x}"))
    }
}
