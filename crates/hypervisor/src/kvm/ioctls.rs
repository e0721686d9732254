//! The KVM ioctls issued once a VM runs, by number, so that a seccomp filter can allow
//! exactly these (set-up ioctls such as KVM_CREATE_VCPU happen before threads are confined).
//! kvm-ioctls keeps its numbers private; these are the same `_IO*` encodings (an `unsigned
//! long`, which is `u64` on every 64-bit Linux vibe-vmm runs on).

use kvm_bindings::KVMIO;
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_bindings::kvm_irq_level);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_bindings::kvm_msi);
ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    KVMIO,
    0x6a,
    kvm_bindings::kvm_irq_routing
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use kvm_bindings::{kvm_interrupt, kvm_regs, kvm_sregs, kvm_vcpu_events, KVMIO};
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
}

/// What a running vCPU thread asks of its vCPU: KVM_RUN, and on x86 the register access and
/// event injection that exits need (error reports, instructions finished in userspace,
/// interrupts from the userspace irqchip).
pub fn vcpu_run() -> Vec<(u64, &'static str)> {
    let run = (KVM_RUN(), "KVM_RUN");
    #[cfg(target_arch = "x86_64")]
    return vec![
        run,
        (x86::KVM_GET_REGS(), "KVM_GET_REGS"),
        (x86::KVM_SET_REGS(), "KVM_SET_REGS"),
        (x86::KVM_GET_SREGS(), "KVM_GET_SREGS"),
        (x86::KVM_SET_SREGS(), "KVM_SET_SREGS"),
        (x86::KVM_INTERRUPT(), "KVM_INTERRUPT"),
        (x86::KVM_GET_VCPU_EVENTS(), "KVM_GET_VCPU_EVENTS"),
        (x86::KVM_SET_VCPU_EVENTS(), "KVM_SET_VCPU_EVENTS"),
    ];
    // arm64 Linux boots no guests yet: only the run loop itself.
    #[cfg(not(target_arch = "x86_64"))]
    vec![run]
}

/// KVM_IRQ_LINE on the VM: how a device raises an interrupt without irqfd, from whichever
/// thread runs it (a vCPU, the device thread, the console input thread).
pub fn irq_line() -> u64 {
    KVM_IRQ_LINE()
}

/// KVM_SIGNAL_MSI on the VM: how an MSI line made without an eventfd raises its vector, from
/// whichever thread triggers it (as [`irq_line`]).
pub fn signal_msi() -> u64 {
    KVM_SIGNAL_MSI()
}

/// What the guest's PCI programming asks of the VM once it runs, on the thread that handles
/// the config-space or MSI-X table write (a vCPU): KVM_SET_GSI_ROUTING (an MSI-X vector gets
/// a new message), KVM_IOEVENTFD (a BAR moved, its notify address with it) and KVM_IRQFD (an
/// MSI line made or dropped after the start).
pub fn msi_routing() -> Vec<(u64, &'static str)> {
    vec![
        (KVM_SET_GSI_ROUTING(), "KVM_SET_GSI_ROUTING"),
        (KVM_IOEVENTFD(), "KVM_IOEVENTFD"),
        (KVM_IRQFD(), "KVM_IRQFD"),
    ]
}

#[cfg(target_arch = "x86_64")]
mod x86_save {
    use kvm_bindings::{
        kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
        kvm_msrs, kvm_pit_state2, kvm_xcrs, kvm_xsave, KVMIO,
    };
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
}

/// What a parked vCPU thread asks of its vCPU when a snapshot wants its state (the reads
/// `kvm::snapshot` makes besides those of [`vcpu_run`]).
pub fn vcpu_save() -> Vec<(u64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    return vec![
        (x86_save::KVM_GET_MP_STATE(), "KVM_GET_MP_STATE"),
        (x86_save::KVM_GET_XSAVE(), "KVM_GET_XSAVE"),
        (x86_save::KVM_GET_XCRS(), "KVM_GET_XCRS"),
        (x86_save::KVM_GET_DEBUGREGS(), "KVM_GET_DEBUGREGS"),
        (x86_save::KVM_GET_LAPIC(), "KVM_GET_LAPIC"),
        (x86_save::KVM_GET_MSRS(), "KVM_GET_MSRS"),
        (x86_save::KVM_GET_TSC_KHZ(), "KVM_GET_TSC_KHZ"),
        (x86_save::KVM_GET_CPUID2(), "KVM_GET_CPUID2"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    vec![]
}

/// What the thread writing a snapshot asks of the VM: the in-kernel irqchip, PIT and clock.
pub fn vm_save() -> Vec<(u64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    return vec![
        (x86_save::KVM_GET_IRQCHIP(), "KVM_GET_IRQCHIP"),
        (x86_save::KVM_GET_PIT2(), "KVM_GET_PIT2"),
        (x86_save::KVM_GET_CLOCK(), "KVM_GET_CLOCK"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    vec![]
}

/// KVM_SET_USER_MEMORY_REGION on the VM: a vCPU that moves a passed-through device's BAR
/// maps (or unmaps) the device memory behind it as a slot of its own.
pub fn set_user_memory_region() -> u64 {
    KVM_SET_USER_MEMORY_REGION()
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The numbers as `<linux/kvm.h>` defines them on x86_64 (the sizes are the structs').
    #[test]
    fn numbers_match_the_kernel_headers() {
        let got: Vec<u64> = vcpu_run().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            got,
            [
                0xae80,
                0x8090_ae81,
                0x4090_ae82,
                0x8138_ae83,
                0x4138_ae84,
                0x4004_ae86,
                0x8040_ae9f,
                0x4040_aea0
            ]
        );
        assert_eq!(irq_line(), 0x4008_ae61);
        assert_eq!(signal_msi(), 0x4020_aea5);
        let got: Vec<u64> = msi_routing().into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, [0x4008_ae6a, 0x4040_ae79, 0x4020_ae76]);
        assert_eq!(set_user_memory_region(), 0x4020_ae46);
        let got: Vec<u64> = vcpu_save().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            got,
            [
                0x8004_ae98,
                0x9000_aea4,
                0x8188_aea6,
                0x8080_aea1,
                0x8400_ae8e,
                0xc008_ae88,
                0xaea3,
                0xc008_ae91
            ]
        );
        let got: Vec<u64> = vm_save().into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, [0xc208_ae62, 0x8070_ae9f, 0x8030_ae7c]);
    }
}
