//! Command-line arguments.

use std::path::PathBuf;

#[cfg(target_arch = "x86_64")]
use arch::x86_64::cpuid::{parse_features, Feature};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vibe-vmm",
    version,
    about = "A small, readable virtual machine monitor",
    after_help = "With no command, boots the built-in demo guest (same as `vibe-vmm run`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Parsed once per process: the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Boot a guest (the built-in demo guest when no --kernel is given).
    Run(RunArgs),
    /// Show the platform, the hypervisor, its API version and capabilities.
    Info,
    /// Control a running VM through its API socket (see `run --api-socket`).
    Ctl(CtlArgs),
    /// Resume a VM from a snapshot directory (see `ctl snapshot` and docs/snapshot.md).
    Restore(RestoreArgs),
    /// SR-IOV virtual functions on the host: list, enable PF N, disable PF, bind VF, unbind VF.
    #[command(subcommand)]
    Sriov(SriovCommand),
}

#[derive(Parser, Clone)]
pub struct CtlArgs {
    /// The VM's API socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum CtlAction {
    /// State, uptime and configuration.
    Info,
    /// Pause every vCPU and the devices.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Ask the guest to shut down: press its ACPI power button (without ACPI: stop the VM).
    Shutdown,
    /// Stop the VM now.
    Stop,
    /// Exit statistics: per reason, per vCPU and per device.
    Stats,
    /// Write a snapshot of the paused VM into DIR (created if missing).
    Snapshot {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `vibe-vmm restore` (src/restore.rs runs it).
#[derive(Parser, Clone)]
pub struct RestoreArgs {
    /// The snapshot directory (`state.json` and `memory`).
    #[arg(long, value_name = "DIR")]
    pub snapshot: PathBuf,
    /// Serve the API on this Unix socket, as `run --api-socket` does.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// How guest RAM comes back: `private` maps the memory file copy-on-write (pages read on
    /// first touch; the file must stay), `copy` reads it whole.
    #[arg(long, value_name = "MODE", default_value = "private", value_parser = parse_memory_mode)]
    pub memory_snapshot: vmm::snapshot::MemoryMode,
    /// Where the serial console's output goes: stdio (default), file:PATH or none.
    #[arg(long, value_name = "DEST", value_parser = parse_serial)]
    pub serial: Option<SerialArg>,
    /// Print exit statistics when the VM stops.
    #[arg(long)]
    pub stats: bool,
    /// A new path for the snapshot's disks, in order (the first replaces disk 0); repeatable.
    /// The others are re-opened where they were. A disk must keep its size.
    #[arg(long = "disk", value_name = "PATH")]
    pub disks: Vec<PathBuf>,
    /// A new backend for the snapshot's network devices, in order; repeatable. The MAC stays
    /// the one the guest was given.
    #[arg(
        long = "net",
        value_name = "tap=NAME|socket=PATH[,local=PATH]",
        value_parser = parse_net
    )]
    pub nets: Vec<vmm::NetConfig>,
}

fn parse_memory_mode(s: &str) -> Result<vmm::snapshot::MemoryMode, String> {
    match s {
        "private" => Ok(vmm::snapshot::MemoryMode::Private),
        "copy" => Ok(vmm::snapshot::MemoryMode::Copy),
        _ => Err(format!("{s:?}: expected private or copy")),
    }
}

/// `vibe-vmm sriov ...` (src/sriov.rs runs it).
#[derive(Subcommand, Clone)]
pub enum SriovCommand {
    /// List physical functions and their virtual functions (driver, IOMMU group).
    List,
    /// Give physical function PF N virtual functions.
    Enable {
        #[arg(value_name = "PF", value_parser = parse_bdf)]
        pf: vfio::sysfs::Bdf,
        #[arg(value_name = "N")]
        n: u32,
    },
    /// Destroy every virtual function of PF (refused while one is held for VFIO).
    Disable {
        #[arg(value_name = "PF", value_parser = parse_bdf)]
        pf: vfio::sysfs::Bdf,
    },
    /// Hand virtual function VF to vfio-pci, for `run --device vfio=VF`.
    Bind {
        #[arg(value_name = "VF", value_parser = parse_bdf)]
        vf: vfio::sysfs::Bdf,
    },
    /// Give virtual function VF back from vfio-pci to its host driver.
    Unbind {
        #[arg(value_name = "VF", value_parser = parse_bdf)]
        vf: vfio::sysfs::Bdf,
    },
}

/// `vfio=BDF` -> the function's sysfs directory.
fn parse_device(s: &str) -> Result<std::path::PathBuf, String> {
    let bdf = s
        .strip_prefix("vfio=")
        .ok_or_else(|| format!("{s:?}: expected vfio=BDF (the only kind of --device so far)"))?;
    let bdf = parse_bdf(bdf)?;
    Ok(std::path::Path::new("/sys/bus/pci/devices").join(bdf.to_string()))
}

pub fn parse_bdf(s: &str) -> Result<vfio::sysfs::Bdf, String> {
    s.parse()
}

impl Default for Command {
    fn default() -> Self {
        Command::Run(RunArgs::parse_from(["run"]))
    }
}

#[derive(Parser, Clone)]
#[command(
    args_override_self = true,
    after_help = "Console: with --serial stdio the terminal is put in raw mode and every key \
                  goes to the guest, Ctrl-C included. Press Ctrl-A then x to stop the VM \
                  (Ctrl-A Ctrl-A sends a literal Ctrl-A).\n\n\
                  Exit status: the guest's debug-exit byte, 0 when it powers off or resets, \
                  1 on a VMM error, 3 when the guest crashes, 128+N when stopped by signal N \
                  (130 for Ctrl-A x)."
)]
pub struct RunArgs {
    /// Read these flags from a file (TOML, or JSON for a .json file): keys are the flags'
    /// names (memory = "256M", disk = ["a.img"], stats = true); flags given here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_name = "PATH", help = KERNEL_HELP)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1" with --kernel].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,
    /// Guest RAM: a number with a K, M, G or T suffix; a plain number is MiB.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u32,
    /// Which console device the terminal (stdin/stdout) is connected to: serial (COM1),
    /// virtio (a virtio-console) or mmio (the MMIO console).
    #[arg(long, value_name = "DEVICE", default_value = "serial", value_parser = parse_console)]
    pub console: vmm::ConsoleKind,
    /// Where the serial port's (COM1) output goes: stdio, file:PATH or none [default: stdio
    /// with --console serial, else none].
    #[arg(long, value_name = "WHERE", value_parser = parse_serial)]
    pub serial: Option<SerialArg>,
    /// A virtio-blk disk backed by a raw image (size a multiple of 512); repeatable. Add
    /// ",readonly" to refuse the guest's writes.
    #[arg(long = "disk", value_name = "PATH[,readonly]", value_parser = parse_disk)]
    pub disks: Vec<vmm::DiskConfig>,
    /// A virtio-net device, repeatable: on an existing host TAP interface (tap=NAME, Linux),
    /// or on a peer's Unix datagram socket, one Ethernet frame a datagram (socket=PATH, as
    /// gvproxy and vfkit speak; local=PATH sets vibe-vmm's own end).
    #[arg(
        long = "net",
        value_name = "tap=NAME|socket=PATH[,local=PATH][,mac=52:54:00:..]",
        value_parser = parse_net
    )]
    pub nets: Vec<vmm::NetConfig>,
    // The x86 machine's own options; an arm64 guest is described by its device tree and has
    // its GIC in the hypervisor.
    /// Do not give the guest ACPI tables (it then finds its CPUs through the MP table only).
    #[cfg(target_arch = "x86_64")]
    #[arg(long)]
    pub no_acpi: bool,
    /// Who emulates the local APICs and IOAPIC: kernel (KVM's in-kernel irqchip) or userspace
    /// (vibe-vmm's own, as on Hypervisor.framework; no PIT or PIC).
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[arg(long, value_name = "WHO", default_value = "kernel", value_parser = parse_irqchip)]
    pub irqchip: vmm::IrqchipMode,
    /// How virtio devices attach: mmio (virtio-mmio windows, the fastest boot) or pci
    /// (virtio-pci functions with MSI-X on PCI bus 0).
    #[cfg(target_arch = "x86_64")]
    #[arg(long, value_name = "BUS", default_value = "mmio", value_parser = parse_transport)]
    pub transport: vmm::Transport,
    /// CPU features to hide from the guest's CPUID, comma-separated (e.g. cx16,xsave).
    #[cfg(target_arch = "x86_64")]
    #[arg(long, value_name = "LIST", default_value = "", value_parser = parse_hide)]
    pub cpuid_hide: FeatureList,
    /// Pass a host PCI function through with VFIO (x86_64 Linux), repeatable: vfio=BDF (e.g.
    /// vfio=0000:3b:02.1), bound to vfio-pci first (`vibe-vmm sriov bind` for a VF).
    #[arg(long = "device", value_name = "vfio=BDF", value_parser = parse_device)]
    pub devices: Vec<std::path::PathBuf>,
    /// Pass a host PCI function through with VFIO by its sysfs directory, repeatable
    /// (/sys/bus/pci/devices/0000:3b:02.1).
    #[arg(long = "vfio", value_name = "PATH")]
    pub vfio: Vec<std::path::PathBuf>,
    /// Confine each vibe-vmm thread with a seccomp filter of the calls it needs: kill (a call
    /// outside it kills vibe-vmm), log (the kernel logs it and lets it run) or off.
    #[cfg(target_os = "linux")]
    #[arg(long, value_name = "MODE", default_value = "kill", value_parser = parse_seccomp)]
    pub seccomp: vmm::SeccompMode,
    /// Serve the HTTP/JSON control API on this Unix socket (must not exist; created
    /// owner-only, removed at exit). `vibe-vmm ctl` and `curl --unix-socket` speak it.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// With --api-socket, a guest reset ends vibe-vmm instead of rebooting the VM (without
    /// --api-socket a reset always ends it).
    #[arg(long)]
    pub no_reboot: bool,
    /// Print exit statistics (per reason, per vCPU, per device) on stderr when the VM ends.
    #[arg(long)]
    pub stats: bool,
    /// Print one line per VM exit: "exits" for all, or "exits=pio,mmio,hlt,..." (exit kinds
    /// or the groups pio and mmio). Lines go to stderr, or to --trace-file.
    #[arg(long, value_name = "exits[=FILTER]", value_parser = vmm::trace::TraceFilter::parse)]
    pub trace: Option<vmm::trace::TraceFilter>,
    /// Write the --trace lines to this file instead of stderr.
    #[arg(long, value_name = "PATH", requires = "trace")]
    pub trace_file: Option<PathBuf>,
}

#[cfg(target_arch = "x86_64")]
const KERNEL_HELP: &str =
    "Kernel to boot: an x86_64 ELF (vmlinux, PVH entry used when present) or a bzImage";
#[cfg(not(target_arch = "x86_64"))]
const KERNEL_HELP: &str = "Kernel to boot: an arm64 Linux Image";

/// A comma-separated feature list (one argument, not a clap multi-value).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Debug, Default)]
pub struct FeatureList(pub Vec<Feature>);

#[derive(Clone, Debug)]
pub enum SerialArg {
    Stdio,
    File(PathBuf),
    None,
}

fn parse_serial(s: &str) -> Result<SerialArg, String> {
    match s {
        "stdio" => Ok(SerialArg::Stdio),
        "none" => Ok(SerialArg::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialArg::File(p.into())),
            _ => Err(format!("{s:?} is not stdio, file:PATH or none")),
        },
    }
}

fn parse_net(s: &str) -> Result<vmm::NetConfig, String> {
    let mut backend = None;
    let mut local = None;
    let mut mac = None;
    let expected = "expected tap=NAME or socket=PATH, then mac=XX:XX:XX:XX:XX:XX or (for a \
                    socket) local=PATH";
    for part in s.split(',') {
        let set = |b: &mut Option<_>, v| match b {
            None => {
                *b = Some(v);
                Ok(())
            }
            Some(_) => Err("give one of tap=NAME and socket=PATH".to_string()),
        };
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => {
                set(&mut backend, vmm::NetBackendConfig::Tap(name.into()))?
            }
            Some(("socket", path)) if !path.is_empty() => set(
                &mut backend,
                vmm::NetBackendConfig::Socket {
                    path: path.into(),
                    local: None,
                },
            )?,
            Some(("local", path)) if !path.is_empty() => local = Some(PathBuf::from(path)),
            Some(("mac", m)) => {
                mac =
                    Some(devices::virtio::net::parse_mac(m).ok_or_else(|| {
                        format!("{m:?} is not a MAC address like 52:54:00:12:34:56")
                    })?)
            }
            _ => return Err(format!("{part:?}: {expected}")),
        }
    }
    let mut backend = backend.ok_or("missing tap=NAME or socket=PATH")?;
    match (&mut backend, local) {
        (vmm::NetBackendConfig::Socket { local: l, .. }, local) => *l = local,
        (vmm::NetBackendConfig::Tap(_), Some(_)) => {
            return Err("local=PATH applies to socket=PATH only".into())
        }
        (vmm::NetBackendConfig::Tap(_), None) => {}
    }
    Ok(vmm::NetConfig { backend, mac })
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn parse_irqchip(s: &str) -> Result<vmm::IrqchipMode, String> {
    match s {
        "kernel" => Ok(vmm::IrqchipMode::Kernel),
        "userspace" => Ok(vmm::IrqchipMode::Userspace),
        _ => Err(format!("{s:?} is not kernel or userspace")),
    }
}

#[cfg(target_arch = "x86_64")]
fn parse_transport(s: &str) -> Result<vmm::Transport, String> {
    match s {
        "mmio" => Ok(vmm::Transport::Mmio),
        "pci" => Ok(vmm::Transport::Pci),
        _ => Err(format!("{s:?} is not mmio or pci")),
    }
}

#[cfg(target_os = "linux")]
fn parse_seccomp(s: &str) -> Result<vmm::SeccompMode, String> {
    match s {
        "off" => Ok(vmm::SeccompMode::Off),
        "log" => Ok(vmm::SeccompMode::Log),
        "kill" => Ok(vmm::SeccompMode::Kill),
        _ => Err(format!("{s:?} is not off, log or kill")),
    }
}

fn parse_console(s: &str) -> Result<vmm::ConsoleKind, String> {
    match s {
        "serial" => Ok(vmm::ConsoleKind::Serial),
        "virtio" => Ok(vmm::ConsoleKind::Virtio),
        "mmio" => Ok(vmm::ConsoleKind::Mmio),
        _ => Err(format!("{s:?} is not serial, virtio or mmio")),
    }
}

fn parse_disk(s: &str) -> Result<vmm::DiskConfig, String> {
    let (path, read_only) = match s.rsplit_once(',') {
        Some((p, "readonly")) | Some((p, "ro")) => (p, true),
        Some((_, opt)) => return Err(format!("unknown disk option {opt:?} (only \"readonly\")")),
        None => (s, false),
    };
    if path.is_empty() {
        return Err("empty disk path".into());
    }
    Ok(vmm::DiskConfig {
        path: path.into(),
        read_only,
    })
}

#[cfg(target_arch = "x86_64")]
fn parse_hide(s: &str) -> Result<FeatureList, String> {
    parse_features(s).map(FeatureList)
}

/// "512M", "2G", "65536K", "1T"; a bare number is MiB (as in QEMU).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "{s:?}: unknown size suffix {c:?} (use K, M, G or T)"
                    ))
                }
            };
            (&s[..i], shift)
        }
        _ => (s, 20),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 512M, 2G)"))?;
    n.checked_mul(1 << shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64"), Ok(64 << 20));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn nets() {
        use vmm::NetBackendConfig::{Socket, Tap};
        let n = parse_net("tap=tap0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(
            (n.backend, n.mac),
            (Tap("tap0".into()), Some([0x52, 0x54, 0, 0, 0, 1]))
        );
        let n = parse_net("socket=/run/gv.sock,local=/tmp/me.sock").unwrap();
        assert_eq!(
            n.backend,
            Socket {
                path: "/run/gv.sock".into(),
                local: Some("/tmp/me.sock".into())
            }
        );
        assert!(parse_net("socket=/a,tap=t").is_err());
        assert!(parse_net("tap=t,local=/a").is_err());
        assert!(parse_net("tap=tap0").unwrap().mac.is_none());
        assert!(parse_net("mac=52:54:00:00:00:01").is_err());
        assert!(parse_net("tap=tap0,mac=nope").is_err());
        assert!(parse_net("tap0").is_err());
    }

    #[test]
    fn disks() {
        let d = parse_disk("/a/b.img,readonly").unwrap();
        assert!(d.read_only && d.path == std::path::Path::new("/a/b.img"));
        assert!(!parse_disk("x.img").unwrap().read_only);
        assert!(parse_disk("x.img,fast").is_err());
        assert!(parse_disk(",readonly").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn seccomp_modes() {
        assert_eq!(parse_seccomp("log"), Ok(vmm::SeccompMode::Log));
        assert_eq!(parse_seccomp("off"), Ok(vmm::SeccompMode::Off));
        assert!(parse_seccomp("on").is_err());
        let args = RunArgs::parse_from(["run"]);
        assert_eq!(args.seccomp, vmm::SeccompMode::Kill, "on by default");
    }

    #[test]
    fn serial() {
        assert!(matches!(
            parse_serial("file:/tmp/x"),
            Ok(SerialArg::File(_))
        ));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp").is_err());
    }
}
