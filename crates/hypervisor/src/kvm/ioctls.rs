//! The KVM ioctls issued once a VM runs, by number, so that a seccomp filter can allow
//! exactly these (set-up ioctls such as KVM_CREATE_VCPU happen before threads are confined).
//! kvm-ioctls keeps its numbers private; these are the same `_IO*` encodings (an `unsigned
//! long`, which is `u64` on every 64-bit Linux vibe-vmm runs on).

use kvm_bindings::KVMIO;
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_bindings::kvm_irq_level);

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
    }
}
