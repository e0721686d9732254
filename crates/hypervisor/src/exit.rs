//! Why a vCPU stopped ([`VmExit`]) and how the VMM answers it ([`VmEntry`]).

/// Up to 8 bytes of port or MMIO data, stored inline so an exit never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Data {
    bytes: [u8; 8],
    len: u8,
}

impl Data {
    /// Copies at most 8 bytes of `src`.
    pub fn new(src: &[u8]) -> Self {
        let len = src.len().min(8);
        let mut bytes = [0; 8];
        bytes[..len].copy_from_slice(&src[..len]);
        Data {
            bytes,
            len: len as u8,
        }
    }

    /// Little-endian value of `len` bytes.
    pub fn from_u64(value: u64, len: usize) -> Self {
        Data::new(&value.to_le_bytes()[..len.min(8)])
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len as usize]
    }

    /// The little-endian value of the bytes.
    pub fn to_u64(&self) -> u64 {
        u64::from_le_bytes(self.bytes)
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The reason a vCPU returned to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// `in` from a port: answer with [`VmEntry::IoIn`].
    IoIn { port: u16, size: u8 },
    /// `out` to a port.
    IoOut { port: u16, data: Data },
    /// String `ins` (`rep ins`): `count` elements of `size` bytes from `port`, each its own
    /// read. The VMM fills them in place in [`crate::Vcpu::string_io_data`] and answers with
    /// [`VmEntry::None`].
    IoInString { port: u16, size: u8, count: u32 },
    /// String `outs` (`rep outs`): `count` elements of `size` bytes to `port`, each its own
    /// write, in order, found in [`crate::Vcpu::string_io_data`].
    IoOutString { port: u16, size: u8, count: u32 },
    /// A load from an address no memory backs: answer with [`VmEntry::MmioRead`].
    MmioRead { addr: u64, size: u8 },
    /// A store to an address no memory backs.
    MmioWrite { addr: u64, data: Data },
    /// An access to `gpa`, which no memory backs, by an instruction the hypervisor did not
    /// decode (Hypervisor.framework on Intel): the VMM emulates the instruction at RIP,
    /// including its register results and the new RIP.
    MmioInstruction { gpa: u64 },
    /// The guest halted and the hypervisor left it to the VMM to wait.
    Halt,
    /// Triple fault or other CPU shutdown.
    Shutdown,
    /// The guest asked the platform to power off or reset (e.g. PSCI, KVM system events).
    SystemEvent(SystemEvent),
    /// A [`crate::VcpuKicker`] stopped the run (or a signal arrived).
    Interrupted,
    /// The guest can now take the interrupt the VMM is holding for it (asked for with
    /// `X86Vcpu::request_interrupt_window`).
    InterruptWindow,
    /// The hypervisor could not run or emulate guest code.
    InternalError {
        /// The hypervisor's instruction emulator gave up on the instruction at RIP (the VMM
        /// may be able to finish it); otherwise some other internal failure.
        emulation: bool,
        description: String,
    },
    /// The hypervisor refused to enter the guest.
    FailEntry { reason: u64 },
    /// Any other exit, with its backend-specific number.
    Unhandled { reason: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    Shutdown,
    Reset,
    Crash,
}

/// What the VMM hands back when it resumes a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmEntry {
    #[default]
    None,
    /// The value of the port read the last exit asked for.
    IoIn(Data),
    /// The value of the MMIO read the last exit asked for.
    MmioRead(Data),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_little_endian() {
        let d = Data::from_u64(0x1122_3344, 2);
        assert_eq!(d.as_slice(), &[0x44, 0x33]);
        assert_eq!(d.to_u64(), 0x3344);
        assert_eq!(Data::new(&[1; 12]).len(), 8);
    }
}
