//! `vibe-vmm restore --snapshot DIR`: builds the VM a snapshot describes, with its saved
//! memory and state, and runs it from where it stopped (it starts running, as Firecracker's
//! load with `resume_vm` does; pause it through the API if needed). The serial console and
//! the API socket work as with `run`.

use anyhow::Context;
use vmm::seccomp::{SeccompMode, ThreadKind};
use vmm::snapshot::RestoreConfig;
use vmm::{ConsoleKind, Outcome, SerialOutput, Vm};

use crate::args::{RestoreArgs, SerialArg};
use crate::{console, report, say, signals};

pub fn run(args: RestoreArgs, signals: signals::SignalThread) -> anyhow::Result<u8> {
    let seccomp = SeccompMode::default();
    let serial = args.serial.clone().unwrap_or(SerialArg::Stdio);
    let mut rc = RestoreConfig::new(&args.snapshot);
    rc.memory = args.memory_snapshot;
    rc.disks = args.disks.clone();
    rc.nets = args.nets.clone();
    rc.seccomp = seccomp;
    rc.serial = match &serial {
        SerialArg::Stdio => SerialOutput::Stdout,
        SerialArg::File(p) => SerialOutput::File(p.clone()),
        SerialArg::None => SerialOutput::None,
    };
    let listener = match &args.api_socket {
        Some(p) => Some(
            vmm::api::Listener::bind(p)
                .with_context(|| format!("cannot create the API socket {}", p.display()))?,
        ),
        None => None,
    };
    let hv = hypervisor::default_hypervisor().context("no usable hypervisor")?;
    let mut vm = restore_vm(&hv, rc)
        .with_context(|| format!("cannot restore {}", args.snapshot.display()))?;
    let stop = vm.stop_handle();
    let signals = signals.spawn(stop.clone(), seccomp)?;
    let console = match vm.console_input(ConsoleKind::Serial) {
        Some(input) if matches!(serial, SerialArg::Stdio) => {
            Some(console::Console::attach(input, stop.clone(), seccomp)?)
        }
        _ => None,
    };
    let mut api = None;
    let mut controller = None;
    let outcome = vm.start().and_then(|()| {
        controller = vm.controller();
        if let (Some(listener), Some(c)) = (listener, controller.clone()) {
            match vmm::api::ApiServer::start(listener, c, Default::default(), seccomp) {
                Ok(server) => api = Some(server),
                Err(e) => {
                    stop.stop(Outcome::Stopped(
                        "the API socket could not be served".into(),
                    ));
                    drop(vm.wait());
                    return Err(vmm::Error::Os {
                        op: "start the API thread",
                        source: e,
                    });
                }
            }
        }
        if let Err(e) = vmm::seccomp::confine(ThreadKind::Main, seccomp) {
            stop.stop(Outcome::Stopped(
                "the main thread could not be confined".into(),
            ));
            drop(vm.wait());
            return Err(e.into());
        }
        Ok(vm.wait())
    });
    drop(console);
    drop(api);
    let (signal, _) = signals.finish();
    let outcome = outcome.context("cannot start the restored VM")?;
    if let (true, Some(c)) = (args.stats, &controller) {
        say!("{}", c.stats().render().trim_end());
    }
    Ok(report(&outcome, signal, "a restored VM does not reboot"))
}

#[cfg(target_arch = "x86_64")]
fn restore_vm<H>(hv: &H, rc: RestoreConfig) -> vmm::Result<Vm<H::Vm>>
where
    H: hypervisor::Hypervisor,
    H::Vm: hypervisor::x86_64::X86Vm + 'static,
{
    Vm::restore(hv, rc)
}

#[cfg(not(target_arch = "x86_64"))]
fn restore_vm<H: hypervisor::Hypervisor>(_hv: &H, _rc: RestoreConfig) -> vmm::Result<Vm<H::Vm>> {
    Err(vmm::Error::Unsupported(
        "snapshots of arm64 guests (docs/snapshot.md says what is missing)",
    ))
}
