//! `vibe-vmm`: the command line. Parses arguments, picks the hypervisor for this host, builds
//! the VM, wires the console and signals, and turns how the guest ended into an exit status.

mod args;
mod config_file;
mod console;
mod ctl;
mod restore;
mod signals;
mod sriov;

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use devices::console_output::ConsoleOutput;
use hypervisor::Hypervisor;
use vmm::seccomp::{SeccompMode, ThreadKind};
use vmm::{ConsoleKind, KernelImage, Outcome, SerialOutput, Vm, VmConfig};

use args::{Cli, Command, RunArgs, SerialArg};

/// Exit status when the VMM itself fails (bad input, set-up error).
const EXIT_VMM_ERROR: u8 = 1;
/// Exit status when the guest crashed (triple fault, unrunnable instruction).
const EXIT_GUEST_CRASH: u8 = 3;

/// The VMM's own messages (log lines, how the guest ended) go to stderr through a buffer with
/// a writer thread of its own, as the guest's console output does: a vCPU thread that logs,
/// or the exit itself, never waits for a terminal that stopped reading.
static MESSAGES: OnceLock<ConsoleOutput> = OnceLock::new();
/// How long the exit waits for stderr to take the last messages.
const MESSAGES_GRACE: Duration = Duration::from_millis(150);

/// Prints one line of the VMM's own on stderr, without blocking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        say(format!($($arg)*))
    };
}

fn say(mut line: String) {
    line.push('\n');
    match MESSAGES.get() {
        Some(out) => {
            out.try_write(line.as_bytes());
        }
        None => eprint!("{line}"),
    }
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    close_inherited_fds();
    // Signals are taken by one thread; block them before any other thread exists.
    let signals = signals::SignalThread::block();
    let command = Cli::parse().command.unwrap_or_default();
    let seccomp = match &command {
        #[cfg(target_os = "linux")]
        Command::Run(args) => args.seccomp,
        _ => SeccompMode::Off,
    };
    // Confined like the consoles' writers: it only writes to stderr.
    let on_start = vmm::seccomp::on_start(ThreadKind::ConsoleOutput, seccomp);
    if let Ok(out) = ConsoleOutput::spawn_with(Box::new(std::io::stderr()), "messages", on_start) {
        let _ = MESSAGES.set(out);
    }
    // virtio-queue logs what the guest got wrong in its rings; the devices answer that
    // themselves (DEVICE_NEEDS_RESET), and a guest must not be able to flood stderr.
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,virtio_queue=off"),
    );
    if let Some(out) = MESSAGES.get() {
        logger.target(env_logger::Target::Pipe(Box::new(out.clone())));
    }
    logger.init();
    let command = match command {
        Command::Run(args) if args.config.is_some() => match with_config_file(args) {
            Ok(args) => Command::Run(args),
            Err(e) => {
                say!("vibe-vmm: error: {e:#}");
                if let Some(out) = MESSAGES.get() {
                    out.finish(Instant::now() + MESSAGES_GRACE);
                }
                return ExitCode::from(EXIT_VMM_ERROR);
            }
        },
        other => other,
    };
    let result = match command {
        Command::Run(args) => signals
            .context("cannot block signals")
            .and_then(|signals| run(args, signals)),
        Command::Info => info().map(|_| 0),
        Command::Ctl(args) => ctl::run(&args),
        Command::Restore(args) => signals
            .context("cannot block signals")
            .and_then(|signals| restore::run(args, signals)),
        Command::Sriov(c) => sriov::run(c).map(|_| 0),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            say!("vibe-vmm: error: {e:#}");
            EXIT_VMM_ERROR
        }
    };
    if let Some(out) = MESSAGES.get() {
        out.finish(Instant::now() + MESSAGES_GRACE);
    }
    ExitCode::from(code)
}

/// `run --config FILE`: the file's keys become flags placed before the command line's, so
/// the command line wins; each key is checked alone first, so an error names it and its line.
fn with_config_file(args: RunArgs) -> anyhow::Result<RunArgs> {
    let path = args.config.clone().unwrap_or_default();
    let entries = config_file::read(&path).map_err(anyhow::Error::msg)?;
    let argv: Vec<String> = std::env::args().collect();
    let cli: Vec<String> = argv
        .iter()
        .skip_while(|a| *a != "run")
        .skip(1)
        .cloned()
        .collect();
    let given = |flag: &str| {
        cli.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let flags = config_file::to_flags(&entries, given)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for (at, one) in &flags {
        if let Err(e) =
            RunArgs::try_parse_from(std::iter::once("run").chain(one.iter().map(String::as_str)))
        {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default();
            anyhow::bail!(
                "{}: {at}: {}",
                path.display(),
                first.trim_start_matches("error: ")
            );
        }
    }
    let all = std::iter::once("run".to_string())
        .chain(flags.into_iter().flat_map(|(_, f)| f))
        .chain(cli);
    Ok(RunArgs::try_parse_from(all).unwrap_or_else(|e| e.exit()))
}

/// Descriptors inherited beyond stdin, stdout and stderr are nothing vibe-vmm uses, and code
/// a guest subverted could use them: close them before anything of ours is opened.
#[cfg(target_os = "linux")]
fn close_inherited_fds() {
    // SAFETY: closes descriptors 3 and up; nothing in this process owns one yet (std's start-up
    // opens none that it keeps).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    if rc != 0 {
        // Linux before 5.9: nothing closed, nothing else changes.
        eprintln!(
            "vibe-vmm: warning: cannot close inherited descriptors: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn info() -> anyhow::Result<()> {
    let hv = hypervisor::default_hypervisor().context("no usable hypervisor")?;
    let info = hv.info();
    println!(
        "platform:    {}-{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!("hypervisor:  {}", info.name);
    println!("api version: {}", info.api_version);
    println!("max vCPUs:   {}", info.max_vcpus.min(vmm::MAX_VCPUS));
    println!("capabilities:");
    for (name, present) in info.capabilities {
        println!("  {name:<20} {}", if present { "yes" } else { "no" });
    }
    Ok(())
}

/// A reboot follows the previous boot's start by at least this much: a guest that resets as
/// soon as it runs costs one VM build a second, not a core.
const REBOOT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The host files every boot writes to, opened once so that a reboot appends to them.
struct HostFiles {
    trace: Option<std::fs::File>,
}

/// Builds the VM config of boot number `boot` from the arguments; returns it with where the
/// serial port's output goes.
fn vm_config(
    args: &RunArgs,
    files: &HostFiles,
    boot: u32,
) -> anyhow::Result<(VmConfig, SerialArg)> {
    let kernel = match &args.kernel {
        Some(path) => KernelImage::Path(path.clone()),
        None => demo_guest()?,
    };
    let mut config = VmConfig::new(kernel);
    config.boot = boot;
    config.initrd = args.initrd.clone();
    config.cmdline = args.cmdline.clone().unwrap_or_else(|| {
        if args.kernel.is_some() {
            "console=ttyS0 reboot=k panic=1".into()
        } else {
            "demo".into()
        }
    });
    config.memory = args.memory;
    config.cpus = args.cpus;
    config.disks = args.disks.clone();
    config.vfio = (args.devices.iter().chain(&args.vfio))
        .map(|p| vmm::VfioConfig::Host(p.clone()))
        .collect();
    config.nets = args.nets.clone();
    #[cfg(target_arch = "x86_64")]
    {
        config.acpi = !args.no_acpi;
        config.transport = args.transport;
        config.cpuid_hide = args.cpuid_hide.0.clone();
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        config.irqchip = args.irqchip;
    }
    #[cfg(target_os = "linux")]
    {
        config.seccomp = args.seccomp;
    }
    // The terminal belongs to one console device; COM1 goes elsewhere unless it is that one.
    let serial = match (&args.serial, args.console) {
        (Some(SerialArg::Stdio), ConsoleKind::Virtio | ConsoleKind::Mmio) => {
            anyhow::bail!(
                "--serial stdio and --console {:?} both want the terminal; pick one",
                args.console
            )
        }
        (Some(s), _) => s.clone(),
        (None, ConsoleKind::Serial) => SerialArg::Stdio,
        (None, _) => SerialArg::None,
    };
    config.serial = match &serial {
        SerialArg::Stdio => SerialOutput::Stdout,
        // The first boot creates the file; a reboot goes on writing after what it has.
        SerialArg::File(p) if boot == 1 => SerialOutput::File(p.clone()),
        SerialArg::File(p) => SerialOutput::Writer(Box::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .with_context(|| format!("cannot reopen the serial file {}", p.display()))?,
        )),
        SerialArg::None => SerialOutput::None,
    };
    match args.console {
        ConsoleKind::Serial => {}
        ConsoleKind::Virtio => config.virtio_console = Some(SerialOutput::Stdout),
        ConsoleKind::Mmio => config.mmio_console = Some(SerialOutput::Stdout),
    }

    if let Some(filter) = &args.trace {
        let out: Box<dyn std::io::Write + Send> = match &files.trace {
            Some(f) => Box::new(f.try_clone().context("cannot share the trace file")?),
            None => Box::new(std::io::stderr()),
        };
        config.trace = Some(vmm::trace::TraceConfig {
            filter: filter.clone(),
            out,
        });
    }
    Ok((config, serial))
}

/// Runs the VM, and in API mode builds it afresh each time the guest resets (unless
/// `--no-reboot`): same config, same process, same API socket.
fn run(args: RunArgs, signals: signals::SignalThread) -> anyhow::Result<u8> {
    // A reboot needs a long-running VMM that something controls; a one-shot run (a test, a
    // script, the demo) that resets is done, and its caller sees status 0.
    let reboot = args.api_socket.is_some() && !args.no_reboot;
    let files = HostFiles {
        trace: match &args.trace_file {
            Some(p) => Some(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create the trace file {}", p.display()))?,
            ),
            None => None,
        },
    };
    // Bound before the VM is built, so that a path in use fails at once.
    let mut listener = match &args.api_socket {
        Some(p) => Some(
            vmm::api::Listener::bind(p)
                .with_context(|| format!("cannot create the API socket {}", p.display()))?,
        ),
        None => None,
    };

    let hv = hypervisor::default_hypervisor().context("no usable hypervisor")?;
    let mut signals = signals;
    let mut api: Option<vmm::api::ApiServer> = None;
    // The controller of the boot before, whose API clients may have asked for a stop while
    // the next VM was being built.
    let mut previous: Option<vmm::VmController> = None;
    let mut boot = 1;
    loop {
        let started = Instant::now();
        let (config, serial) = vm_config(&args, &files, boot)?;
        let seccomp = config.seccomp;
        let mut vm = create_vm(&hv, config).context("cannot create the VM")?;
        let stop = vm.stop_handle();
        let running_signals = signals.spawn(stop.clone(), seccomp)?;
        let terminal = matches!(serial, SerialArg::Stdio) || args.console != ConsoleKind::Serial;
        let console = match vm.console_input(args.console) {
            Some(input) if terminal => {
                Some(console::Console::attach(input, stop.clone(), seccomp)?)
            }
            _ => None,
        };
        let mut controller = None;
        let outcome = vm.start().and_then(|()| {
            controller = vm.controller();
            // Started before this thread is confined: a thread inherits its parent's filter.
            // After a reboot the same server goes on, serving the new VM.
            match (&api, listener.take(), controller.clone()) {
                (Some(server), _, Some(c)) => {
                    server.serve_vm(c);
                    if let Some(o) = previous.take().and_then(|p| p.stopped_after_reset()) {
                        stop.stop(o);
                    }
                }
                (None, Some(listener), Some(c)) => {
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
                _ => {}
            }
            // Every other thread is confined by now. This one only waits and tears down and
            // handles nothing from the guest, which is why it may be confined a moment after
            // the guest starts (before, the vCPU threads it starts would inherit its filter).
            // A VMM that reboots cannot confine it: it builds the next VM (docs/security.md).
            if !reboot {
                if let Err(e) = vmm::seccomp::confine(ThreadKind::Main, seccomp) {
                    stop.stop(Outcome::Stopped(
                        "the main thread could not be confined".into(),
                    ));
                    drop(vm.wait());
                    return Err(e.into());
                }
            }
            Ok(vm.wait())
        });
        // Restore the terminal before reporting anything.
        drop(console);
        let mut outcome = match outcome.context("cannot start the VM") {
            Ok(o) => o,
            Err(e) => {
                let _ = running_signals.finish();
                return Err(e);
            }
        };
        if let (true, Some(c)) = (args.stats, &controller) {
            say!("{}", c.stats().render().trim_end());
        }
        if reboot && outcome == Outcome::Reset {
            // Between boots, for the rest of the rate limit: an API stop or a signal ends
            // vibe-vmm instead (an API stop during the build is handed to the next VM).
            let deadline = started + REBOOT_MIN_INTERVAL;
            let cancelled = loop {
                if let Some(o) = controller.as_ref().and_then(|c| c.stopped_after_reset()) {
                    break Some(o);
                }
                if running_signals.received().is_some() || Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let (signal, blocked) = running_signals.finish();
            match (cancelled, signal) {
                (None, None) => {
                    boot += 1;
                    say!("vibe-vmm: {outcome}; rebooting (boot {boot})");
                    signals = blocked;
                    previous = controller;
                    continue;
                }
                (Some(o), None) => outcome = o,
                (_, Some(sig)) => outcome = Outcome::Stopped(format!("received signal {sig}")),
            }
            drop(api);
            return Ok(report(&outcome, signal, NO_REBOOT_FLAG));
        }
        let (signal, _) = running_signals.finish();
        drop(api);
        let why = if args.api_socket.is_some() {
            NO_REBOOT_FLAG
        } else {
            "vibe-vmm reboots only with --api-socket"
        };
        return Ok(report(&outcome, signal, why));
    }
}

/// The built-in demo guest, an x86_64 program (empty when the build host had no toolchain
/// for it: see `guests/build.rs`).
#[cfg(target_arch = "x86_64")]
fn demo_guest() -> anyhow::Result<KernelImage> {
    if test_guests::DEMO.is_empty() {
        anyhow::bail!(
            "this build has no demo guest (no x86_64 ELF toolchain: set VIBE_GUEST_CC and rebuild); pass --kernel"
        );
    }
    Ok(KernelImage::Bytes(test_guests::DEMO))
}

#[cfg(not(target_arch = "x86_64"))]
fn demo_guest() -> anyhow::Result<KernelImage> {
    anyhow::bail!(
        "the built-in demo guest is x86_64 code; on this host pass --kernel an arm64 Image"
    )
}

/// Builds the machine of this host's architecture (the hypervisor's VM type matches it).
#[cfg(target_arch = "x86_64")]
fn create_vm<H>(hv: &H, config: VmConfig) -> vmm::Result<Vm<H::Vm>>
where
    H: Hypervisor,
    H::Vm: hypervisor::x86_64::X86Vm + 'static,
{
    Vm::new(hv, config)
}

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
fn create_vm<H>(hv: &H, config: VmConfig) -> vmm::Result<Vm<H::Vm>>
where
    H: Hypervisor,
    H::Vm: hypervisor::arm64::Arm64Vm + 'static,
{
    vmm::aarch64::create(hv, config)
}

/// KVM on arm64 compiles (`vibe-vmm info` works) but has no machine behind it yet.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn create_vm<H: Hypervisor>(_hv: &H, _config: VmConfig) -> vmm::Result<Vm<H::Vm>> {
    Err(vmm::Error::Unsupported(
        "booting guests with KVM on arm64 Linux (vibe-vmm runs arm64 guests on \
         Hypervisor.framework, Apple Silicon, so far)",
    ))
}

/// Why a reset ended vibe-vmm in API mode.
const NO_REBOOT_FLAG: &str = "--no-reboot";

/// Prints how the guest ended when it was not a plain exit, and picks the exit status.
/// `no_reboot`: why a reset ends vibe-vmm rather than rebooting it.
fn report(outcome: &Outcome, signal: Option<i32>, no_reboot: &str) -> u8 {
    match outcome {
        Outcome::DebugExit(code) => *code,
        Outcome::PowerOff => 0,
        Outcome::Reset => {
            say!("vibe-vmm: {outcome}; stopping ({no_reboot})");
            0
        }
        Outcome::Crash { .. } => {
            say!("vibe-vmm: {outcome}");
            EXIT_GUEST_CRASH
        }
        Outcome::Requested(_) => {
            say!("vibe-vmm: {outcome}");
            0
        }
        Outcome::Stopped(_) => {
            say!("vibe-vmm: {outcome}");
            signal.map_or(130, |s| 128 + s as u8)
        }
    }
}
