//! Controlling a running VM from another thread (the API socket, a test): its state, pause,
//! resume, graceful shutdown (the ACPI power button) and stop, what it was built with, and its
//! exit statistics.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::acpi_ged::PowerButton;

use crate::config::{KernelImage, NetBackendConfig, VmConfig};
use crate::event_loop::Pauser;
use crate::state::{Outcome, VmState};
use crate::stats::{Stats, StatsRegistry};

/// What a VM was built with, for people and the API's `GET /vm`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmInfo {
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub kernel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    pub cmdline: String,
    /// The guest's devices, one short description each ("virtio-blk /a/disk.img (read-only)").
    pub devices: Vec<String>,
    /// Which boot of the VMM this is (1, then 2 after the first reboot, ...).
    pub boot: u32,
}

impl VmInfo {
    pub(crate) fn new(config: &VmConfig) -> Self {
        let mut devices = vec!["serial (COM1)".to_string()];
        #[cfg(target_arch = "x86_64")]
        if config.acpi {
            devices.push("ACPI power button (GED)".into());
        }
        if config.virtio_console.is_some() {
            devices.push("virtio-console".into());
        }
        if config.mmio_console.is_some() {
            devices.push("mmio-console".into());
        }
        for d in &config.disks {
            let ro = if d.read_only { " (read-only)" } else { "" };
            devices.push(format!("virtio-blk {}{ro}", d.path.display()));
        }
        for n in &config.nets {
            devices.push(match &n.backend {
                NetBackendConfig::Tap(name) => format!("virtio-net tap {name}"),
                NetBackendConfig::Socket { path, .. } => {
                    format!("virtio-net socket {}", path.display())
                }
            });
        }
        VmInfo {
            cpus: config.cpus,
            memory: config.memory,
            kernel: match &config.kernel {
                KernelImage::Path(p) => p.display().to_string(),
                KernelImage::Bytes(b) => format!("built-in image ({} bytes)", b.len()),
            },
            initrd: config.initrd.as_ref().map(|p| p.display().to_string()),
            cmdline: config.cmdline.clone(),
            devices,
            boot: config.boot,
        }
    }
}

/// Whether the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
    /// A stop was requested (or the guest ended); the VM is going away.
    Stopped,
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
        })
    }
}

/// Why a control request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the VM is stopping")]
    Stopped,
    #[error("the guest has no ACPI power button (it runs without ACPI, or is rebooting)")]
    NoPowerButton,
    #[error("cannot raise the power button's interrupt: {0}")]
    PowerButton(String),
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// Pressed the ACPI power button: the guest powers off when it is ready (or ignores it).
    PowerButton,
    /// The guest has no power button: the VM was stopped.
    Stopped,
}

/// A handle on a started VM ([`crate::Vm::controller`]); cheap to clone, usable from any
/// thread, and harmless once the VM is gone.
#[derive(Clone)]
pub struct VmController {
    pub(crate) state: Arc<VmState>,
    pub(crate) devices: Option<Pauser>,
    pub(crate) vcpus: usize,
    pub(crate) info: Arc<VmInfo>,
    pub(crate) power_button: Option<PowerButton>,
    pub(crate) stats: Arc<StatsRegistry>,
    pub(crate) started: Instant,
    /// Pause and resume one at a time, so that "already paused" is always true when said.
    pub(crate) op: Arc<Mutex<()>>,
    /// Writes snapshots of the paused VM.
    pub(crate) snapshotter: Arc<dyn crate::snapshot::Snapshotter>,
}

impl VmController {
    pub fn state(&self) -> RunState {
        if self.state.stopping() {
            RunState::Stopped
        } else if self.state.pause_requested() {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// Time since the vCPUs started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Pauses every vCPU and then the device thread; returns once they are parked.
    pub fn pause(&self) -> Result<(), ControlError> {
        let _op = devices::lock(&self.op);
        match self.state() {
            RunState::Stopped => return Err(ControlError::Stopped),
            RunState::Paused => return Err(ControlError::AlreadyPaused),
            RunState::Running => {}
        }
        self.state.pause(self.vcpus);
        if let Some(d) = &self.devices {
            d.pause();
        }
        Ok(())
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        let _op = devices::lock(&self.op);
        match self.state() {
            RunState::Stopped => return Err(ControlError::Stopped),
            RunState::Running => return Err(ControlError::NotPaused),
            RunState::Paused => {}
        }
        if let Some(d) = &self.devices {
            d.resume();
        }
        self.state.resume();
        Ok(())
    }

    /// Ends the VM with `outcome` (the first stop request wins). A guest that reset is
    /// between boots: the stop is kept for [`VmController::stopped_after_reset`], so that a
    /// rebooting VMM ends instead.
    pub fn stop(&self, outcome: Outcome) -> Result<(), ControlError> {
        if self.state.stopping() {
            return match self.state.stop_after_reset(outcome) {
                true => Ok(()),
                false => Err(ControlError::Stopped),
            };
        }
        self.state.request_stop(outcome);
        Ok(())
    }

    /// The stop asked for after the guest reset, if any: a rebooting VMM ends with it.
    pub fn stopped_after_reset(&self) -> Option<Outcome> {
        self.state.stopped_after_reset()
    }

    /// Presses the ACPI power button. A paused guest sees the press when resumed.
    pub fn press_power_button(&self) -> Result<(), ControlError> {
        if self.state.outcome() == Some(Outcome::Reset) {
            // Between boots there is no guest to ask: a shutdown stops (see `stop`).
            return Err(ControlError::NoPowerButton);
        }
        if self.state.stopping() {
            return Err(ControlError::Stopped);
        }
        let button = self
            .power_button
            .as_ref()
            .ok_or(ControlError::NoPowerButton)?;
        button
            .press()
            .map_err(|e| ControlError::PowerButton(e.to_string()))
    }

    /// Asks the guest to power off: presses the power button where it has one, else stops
    /// the VM with `outcome`.
    pub fn shutdown(&self, outcome: Outcome) -> Result<Shutdown, ControlError> {
        match self.press_power_button() {
            Ok(()) => Ok(Shutdown::PowerButton),
            Err(ControlError::NoPowerButton) => self.stop(outcome).map(|()| Shutdown::Stopped),
            Err(e) => Err(e),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Writes a snapshot of the paused VM into `dir` (created if missing); the VM stays paused.
    pub fn snapshot(&self, dir: &std::path::Path) -> Result<(), crate::snapshot::SnapshotError> {
        // Not while a resume is under way.
        let _op = devices::lock(&self.op);
        self.snapshotter.write(dir)
    }
}
