//! PSCI (Arm DEN 0022), the firmware interface an arm64 kernel uses through HVC to start and
//! stop CPUs and to power off or reset: decoding a call, and the VMM's answer.

pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const CPU_OFF: u32 = 0x8400_0002;
pub const CPU_ON_32: u32 = 0x8400_0003;
pub const CPU_ON_64: u32 = 0xc400_0003;
pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const SYSTEM_OFF: u32 = 0x8400_0008;
pub const SYSTEM_RESET: u32 = 0x8400_0009;
pub const PSCI_FEATURES: u32 = 0x8400_000a;

pub const SUCCESS: i64 = 0;
pub const NOT_SUPPORTED: i64 = -1;
pub const INVALID_PARAMETERS: i64 = -2;
pub const ALREADY_ON: i64 = -4;
/// PSCI 1.0.
pub const VERSION_1_0: i64 = 1 << 16;
/// MIGRATE_INFO_TYPE: no trusted OS to migrate.
const TOS_NOT_PRESENT: i64 = 2;
/// AFFINITY_INFO answers.
const AFF_ON: i64 = 0;
const AFF_OFF: i64 = 1;

/// What the VMM must do after a PSCI call, besides returning `x0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Return this value in x0 and resume.
    Return(i64),
    /// Start vCPU `cpu` at `entry` with x0 = `context`; the caller gets SUCCESS.
    StartCpu {
        cpu: u32,
        entry: u64,
        context: u64,
    },
    /// The calling vCPU stops (it never returns from CPU_OFF).
    StopCaller,
    PowerOff,
    Reset,
}

/// Which vCPUs are on, for CPU_ON and AFFINITY_INFO. vCPU n has MPIDR affinity n (the device
/// tree's `reg`).
#[derive(Debug, Clone)]
pub struct Psci {
    on: Vec<bool>,
}

impl Psci {
    /// `cpus` vCPUs, of which only the boot vCPU (0) is on.
    pub fn new(cpus: u32) -> Self {
        let mut on = vec![false; cpus as usize];
        if let Some(boot) = on.first_mut() {
            *boot = true;
        }
        Psci { on }
    }

    fn cpu(&self, mpidr: u64) -> Option<usize> {
        // Only Aff0 is used; anything in the higher affinity fields names no vCPU.
        let idx = usize::try_from(mpidr & 0xff_ffff_ffff).ok()?;
        (idx < self.on.len()).then_some(idx)
    }

    /// Handles a call from vCPU `caller` with registers x0..x3.
    pub fn call(&mut self, caller: u32, x: [u64; 4]) -> Action {
        let function = x[0] as u32;
        match function {
            PSCI_VERSION => Action::Return(VERSION_1_0),
            MIGRATE_INFO_TYPE => Action::Return(TOS_NOT_PRESENT),
            PSCI_FEATURES => Action::Return(match x[1] as u32 {
                PSCI_VERSION | CPU_OFF | CPU_ON_32 | CPU_ON_64 | AFFINITY_INFO_32
                | AFFINITY_INFO_64 | MIGRATE_INFO_TYPE | SYSTEM_OFF | SYSTEM_RESET
                | PSCI_FEATURES => SUCCESS,
                _ => NOT_SUPPORTED,
            }),
            CPU_ON_32 | CPU_ON_64 => {
                let Some(cpu) = self.cpu(x[1]) else {
                    return Action::Return(INVALID_PARAMETERS);
                };
                if self.on[cpu] {
                    return Action::Return(ALREADY_ON);
                }
                self.on[cpu] = true;
                Action::StartCpu {
                    cpu: cpu as u32,
                    entry: x[2],
                    context: x[3],
                }
            }
            CPU_OFF => {
                if let Some(on) = self.on.get_mut(caller as usize) {
                    *on = false;
                }
                Action::StopCaller
            }
            AFFINITY_INFO_32 | AFFINITY_INFO_64 => match (self.cpu(x[1]), x[2]) {
                (Some(cpu), 0) => Action::Return(if self.on[cpu] { AFF_ON } else { AFF_OFF }),
                _ => Action::Return(INVALID_PARAMETERS),
            },
            SYSTEM_OFF => Action::PowerOff,
            SYSTEM_RESET => Action::Reset,
            _ => Action::Return(NOT_SUPPORTED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secondary_bring_up_and_power() {
        let mut p = Psci::new(2);
        assert_eq!(
            p.call(0, [PSCI_VERSION as u64, 0, 0, 0]),
            Action::Return(VERSION_1_0)
        );
        assert_eq!(
            p.call(0, [PSCI_FEATURES as u64, CPU_ON_64 as u64, 0, 0]),
            Action::Return(SUCCESS)
        );
        assert_eq!(
            p.call(0, [PSCI_FEATURES as u64, 0x8400_0001, 0, 0]),
            Action::Return(NOT_SUPPORTED)
        );
        assert_eq!(
            p.call(0, [AFFINITY_INFO_64 as u64, 1, 0, 0]),
            Action::Return(AFF_OFF)
        );
        assert_eq!(
            p.call(0, [CPU_ON_64 as u64, 1, 0x4008_0000, 0xdead]),
            Action::StartCpu {
                cpu: 1,
                entry: 0x4008_0000,
                context: 0xdead
            }
        );
        assert_eq!(
            p.call(0, [CPU_ON_64 as u64, 1, 0, 0]),
            Action::Return(ALREADY_ON)
        );
        assert_eq!(
            p.call(0, [CPU_ON_64 as u64, 7, 0, 0]),
            Action::Return(INVALID_PARAMETERS)
        );
        assert_eq!(
            p.call(0, [AFFINITY_INFO_64 as u64, 1, 0, 0]),
            Action::Return(AFF_ON)
        );
        assert_eq!(p.call(1, [CPU_OFF as u64, 0, 0, 0]), Action::StopCaller);
        assert_eq!(
            p.call(0, [AFFINITY_INFO_64 as u64, 1, 0, 0]),
            Action::Return(AFF_OFF)
        );
        assert_eq!(p.call(0, [SYSTEM_OFF as u64, 0, 0, 0]), Action::PowerOff);
        assert_eq!(p.call(0, [SYSTEM_RESET as u64, 0, 0, 0]), Action::Reset);
        assert_eq!(p.call(0, [0x1234, 0, 0, 0]), Action::Return(NOT_SUPPORTED));
    }
}
