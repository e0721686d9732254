//! The host's view of its PCI functions, read from sysfs, and the checks that say why a
//! function cannot be passed through, each with the fix.
//!
//! Every path goes through one root ([`Host::new`]): `/` on a real host, a temporary directory
//! in tests, laid out as the kernel does (`sys/bus/pci/devices/BDF/...`, `sys/kernel/iommu_groups`,
//! `sys/module`, `dev/vfio`). Links are read by their last component only (the driver's name,
//! the group's number, a VF's address), so a fake tree needs no real sysfs link targets.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The driver that hands a function to user space.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// A PCI function's address: domain, bus, device, function (`0000:3b:02.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for Bdf {
    type Err = String;

    /// `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0, hexadecimal as `lspci -D` prints them.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a PCI address like 0000:3b:02.1");
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts[..] {
            [d, b, v] => (d, b, v),
            [b, v] => ("0", b, v),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max: u32| {
            u32::from_str_radix(t, 16)
                .ok()
                .filter(|&v| v <= max && !t.is_empty() && t.len() <= 4)
                .ok_or_else(bad)
        };
        Ok(Bdf {
            domain: hex(domain, 0xffff)? as u16,
            bus: hex(bus, 0xff)? as u8,
            device: hex(device, 0x1f)? as u8,
            function: hex(function, 7)? as u8,
        })
    }
}

/// What went wrong on the host, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("no PCI device {0} on this host (list them with `lspci -D`)")]
    NoDevice(Bdf),
    #[error("{bdf} is not bound to vfio-pci but to {driver}: run `vibe-vmm sriov bind {bdf}` (or write vfio-pci to its driver_override and reprobe)")]
    NotBoundToVfio { bdf: Bdf, driver: String },
    #[error("{bdf} has no IOMMU group: the host runs without an IOMMU; enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt")]
    NoIommu { bdf: Bdf },
    #[error("the vfio modules are not loaded (no {0}): run `modprobe vfio-pci`")]
    NoVfioModules(PathBuf),
    #[error("IOMMU group {group} of {bdf} is not viable: {others} must be bound to vfio-pci too (or unbound) before any of the group can be passed through")]
    GroupNotViable {
        bdf: Bdf,
        group: u32,
        /// The group's other devices and their host drivers, e.g. "0000:3b:00.0 (ixgbe)".
        others: String,
    },
    #[error("no permission on {0}: run as root, or give this user the group's device node (`chown $USER {0}`)")]
    NoPermission(PathBuf),
    #[error("the locked-memory limit ({limit} bytes) is below the {needed} bytes of guest RAM the IOMMU must pin for DMA: raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in a systemd unit) or run with CAP_IPC_LOCK")]
    MemlockTooLow { limit: u64, needed: u64 },
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One PCI function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// The host driver bound to it, if any.
    pub driver: Option<String>,
    /// Its `driver_override` (the only driver the kernel will bind it to), if set.
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    /// SR-IOV: present on a physical function.
    pub sriov: Option<Sriov>,
    /// The physical function of a virtual function.
    pub physfn: Option<Bdf>,
}

/// A physical function's SR-IOV state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sriov {
    /// `sriov_totalvfs`: how many VFs the device can have.
    pub total: u32,
    /// `sriov_numvfs`: how many exist now.
    pub num: u32,
    /// `virtfnN`, in N order.
    pub vfs: Vec<Bdf>,
}

impl Function {
    /// Bound to vfio-pci, or reserved for it (its override says so): a VM may hold it.
    pub fn held_for_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_DRIVER)
            || self.driver_override.as_deref() == Some(VFIO_DRIVER)
    }

    pub fn driver_name(&self) -> &str {
        self.driver.as_deref().unwrap_or("no driver")
    }
}

/// The host's sysfs and device nodes, under one root.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    /// The real host.
    pub fn system() -> Self {
        Host::new("/")
    }

    /// `rel` (e.g. "sys/bus/pci/devices") under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The function's sysfs directory.
    /// Why the host is using function `f`, if it can tell: a network interface on it that is
    /// up (`net/IF/flags` with IFF_UP), or its IOMMU group's `/dev/vfio/N` open in a process
    /// (a `/proc/PID/fd` link to it; processes this user may not look into are not seen).
    /// Other uses (a block device mounted, an RDMA port) are not detected.
    pub fn in_use(&self, f: &Function) -> Option<String> {
        let net = self.device_dir(f.bdf).join("net");
        for entry in fs::read_dir(&net).into_iter().flatten().flatten() {
            let flags = fs::read_to_string(entry.path().join("flags")).unwrap_or_default();
            let flags = flags.trim().trim_start_matches("0x");
            if u32::from_str_radix(flags, 16).is_ok_and(|v| v & 1 != 0) {
                let name = entry.file_name().to_string_lossy().into_owned();
                return Some(format!("netdev {name} is up"));
            }
        }
        let node = PathBuf::from(format!("/dev/vfio/{}", f.iommu_group?));
        for proc in fs::read_dir(self.path("proc"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let fds = fs::read_dir(proc.path().join("fd")).into_iter().flatten();
            if fds
                .flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l == node))
            {
                let pid = proc.file_name().to_string_lossy().into_owned();
                return Some(format!("{} open by pid {pid}", node.display()));
            }
        }
        None
    }

    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.path("sys/bus/pci/devices").join(bdf.to_string())
    }

    /// A sysfs directory given on the command line (`--vfio PATH`) as the function's address;
    /// any path whose last component is an address will do.
    pub fn bdf_of(path: &Path) -> Result<Bdf, String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        name.parse()
    }

    /// Reads one function.
    pub fn function(&self, bdf: Bdf) -> Result<Function, HostError> {
        let dir = self.device_dir(bdf);
        if !dir.exists() {
            return Err(HostError::NoDevice(bdf));
        }
        let hex = |name: &str| -> Result<u16, HostError> {
            let text = read_attr(&dir.join(name))?;
            u16::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|_| HostError::Io {
                path: dir.join(name),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}")),
            })
        };
        let sriov = match read_attr(&dir.join("sriov_totalvfs")) {
            Ok(total) => {
                let num = read_attr(&dir.join("sriov_numvfs"))?;
                let mut vfs: Vec<(u32, Bdf)> = list_dir(&dir)?
                    .iter()
                    .filter_map(|name| {
                        let n = name.strip_prefix("virtfn")?.parse().ok()?;
                        Some((n, link_name(&dir.join(name))?.parse().ok()?))
                    })
                    .collect();
                vfs.sort();
                Some(Sriov {
                    total: total.parse().unwrap_or(0),
                    num: num.parse().unwrap_or(0),
                    vfs: vfs.into_iter().map(|(_, b)| b).collect(),
                })
            }
            Err(_) => None,
        };
        let driver_override = read_attr(&dir.join("driver_override"))
            .ok()
            .filter(|s| !s.is_empty() && s != "(null)");
        Ok(Function {
            bdf,
            vendor: hex("vendor")?,
            device: hex("device")?,
            driver: link_name(&dir.join("driver")),
            driver_override,
            iommu_group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
            sriov,
            physfn: link_name(&dir.join("physfn")).and_then(|b| b.parse().ok()),
        })
    }

    /// Every function on the host, in address order.
    pub fn functions(&self) -> Result<Vec<Function>, HostError> {
        let dir = self.path("sys/bus/pci/devices");
        let mut bdfs: Vec<Bdf> = list_dir(&dir)?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        bdfs.sort();
        bdfs.into_iter().map(|b| self.function(b)).collect()
    }

    /// Whether the vfio-pci driver is there to bind to.
    pub fn vfio_loaded(&self) -> Result<(), HostError> {
        let driver = self.path("sys/bus/pci/drivers").join(VFIO_DRIVER);
        if driver.exists() {
            Ok(())
        } else {
            Err(HostError::NoVfioModules(driver))
        }
    }

    /// Everything that must hold before `bdf` can be opened through VFIO, checked in the
    /// order that names the first thing to fix. Returns its IOMMU group's device node.
    pub fn check_passthrough(&self, bdf: Bdf) -> Result<PathBuf, HostError> {
        let f = self.function(bdf)?;
        self.vfio_loaded()?;
        let group = f.iommu_group.ok_or(HostError::NoIommu { bdf })?;
        if f.driver.as_deref() != Some(VFIO_DRIVER) {
            return Err(HostError::NotBoundToVfio {
                bdf,
                driver: f.driver.unwrap_or_else(|| "no driver".into()),
            });
        }
        let members = self
            .path("sys/kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let mut others = Vec::new();
        for name in list_dir(&members)? {
            let Ok(other) = name.parse::<Bdf>() else {
                continue;
            };
            if other == bdf {
                continue;
            }
            let driver = link_name(&self.device_dir(other).join("driver"));
            // What the kernel's vfio accepts beside a VFIO device in one group: nothing,
            // vfio-pci, pci-stub, and pcieport on bridges.
            match driver.as_deref() {
                None | Some(VFIO_DRIVER) | Some("pci-stub") | Some("pcieport") => {}
                Some(d) => others.push(format!("{other} ({d})")),
            }
        }
        if !others.is_empty() {
            return Err(HostError::GroupNotViable {
                bdf,
                group,
                others: others.join(", "),
            });
        }
        let node = self.path("dev/vfio").join(group.to_string());
        if !self.path("dev/vfio/vfio").exists() {
            return Err(HostError::NoVfioModules(self.path("dev/vfio/vfio")));
        }
        match fs::metadata(&node) {
            Ok(m) if may_open(&m) => Ok(node),
            Ok(_) => Err(HostError::NoPermission(node)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                Err(HostError::NoPermission(node))
            }
            Err(source) => Err(HostError::Io { path: node, source }),
        }
    }

    /// Writes a sysfs attribute, with permission errors turned into the fix.
    pub fn write_attr(&self, path: &Path, value: &str) -> Result<(), HostError> {
        use std::io::Write;
        let r = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                Err(HostError::NoPermission(path.to_path_buf()))
            }
            Err(source) => Err(HostError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Whether this process may open a device node read-write by its mode bits (root may).
fn may_open(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: these calls only return the caller's IDs.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    mode_allows(m.mode(), m.uid(), m.gid(), uid, gid)
}

/// Read and write for `uid`/`gid` by the owner, group and other bits of `mode`.
pub fn mode_allows(mode: u32, owner: u32, group: u32, uid: u32, gid: u32) -> bool {
    let rw = if uid == 0 {
        return true;
    } else if uid == owner {
        mode >> 6
    } else if gid == group {
        mode >> 3
    } else {
        mode
    };
    rw & 0o6 == 0o6
}

/// Checks that `needed` bytes (all guest RAM: the IOMMU pins it) fit the locked-memory
/// limit `limit` (`None`: unlimited, or the process may exceed it).
pub fn check_memlock(limit: Option<u64>, needed: u64) -> Result<(), HostError> {
    match limit {
        Some(limit) if limit < needed => Err(HostError::MemlockTooLow { limit, needed }),
        _ => Ok(()),
    }
}

/// This process's locked-memory limit; `None` when unlimited or with CAP_IPC_LOCK (root).
pub fn memlock_limit() -> Option<u64> {
    // SAFETY: geteuid only returns the caller's ID.
    if unsafe { libc::geteuid() } == 0 {
        return None;
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0
        || r.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(r.rlim_cur)
}

/// An attribute's text without its trailing newline.
fn read_attr(path: &Path) -> Result<String, HostError> {
    fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(|source| HostError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The last component of a link's target (a driver's name, a group's number, an address).
fn link_name(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

fn list_dir(dir: &Path) -> Result<Vec<String>, HostError> {
    let entries = fs::read_dir(dir).map_err(|source| HostError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect())
}

/// A fake sysfs tree in a temporary directory, laid out as the kernel does, for tests.
pub mod fake {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake host root; removed on drop.
    pub struct FakeTree {
        pub root: PathBuf,
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    impl FakeTree {
        /// An empty host with the vfio modules loaded (`vfio` false: without them).
        pub fn new(tag: &str, vfio: bool) -> Self {
            let root =
                std::env::temp_dir().join(format!("vibe-vfio-sysfs-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for d in ["sys/bus/pci/devices", "sys/kernel/iommu_groups", "dev/vfio"] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::write(root.join("sys/bus/pci/drivers_probe"), "").unwrap();
            let t = FakeTree { root };
            if vfio {
                t.driver(VFIO_DRIVER);
                fs::write(t.root.join("dev/vfio/vfio"), "").unwrap();
            }
            t
        }

        pub fn host(&self) -> Host {
            Host::new(&self.root)
        }

        /// Gives `bdf` network interface `name`, up or down.
        pub fn netdev(&self, bdf: &str, name: &str, up: bool) {
            let dir = self.root.join("sys/bus/pci/devices").join(bdf).join("net");
            fs::create_dir_all(dir.join(name)).unwrap();
            let flags = if up { "0x1003\n" } else { "0x1002\n" };
            fs::write(dir.join(name).join("flags"), flags).unwrap();
        }

        /// Process `pid` opens `/dev/vfio/GROUP` (None: closes what it had).
        pub fn open_group(&self, pid: u32, group: Option<u32>) {
            let fd = self.root.join(format!("proc/{pid}/fd"));
            let _ = fs::remove_dir_all(&fd);
            fs::create_dir_all(&fd).unwrap();
            if let Some(g) = group {
                symlink(format!("/dev/vfio/{g}"), fd.join("7")).unwrap();
            }
        }

        /// Makes driver `name` exist (with its bind and unbind files).
        pub fn driver(&self, name: &str) -> PathBuf {
            let d = self.root.join("sys/bus/pci/drivers").join(name);
            fs::create_dir_all(&d).unwrap();
            for f in ["bind", "unbind", "new_id"] {
                fs::write(d.join(f), "").unwrap();
            }
            d
        }

        /// Adds a function in IOMMU group `group` (None: no IOMMU), bound to `driver`.
        pub fn function(
            &self,
            bdf: &str,
            id: (u16, u16),
            group: Option<u32>,
            driver: Option<&str>,
        ) {
            let dir = self.root.join("sys/bus/pci/devices").join(bdf);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("vendor"), format!("0x{:04x}\n", id.0)).unwrap();
            fs::write(dir.join("device"), format!("0x{:04x}\n", id.1)).unwrap();
            fs::write(dir.join("driver_override"), "(null)\n").unwrap();
            if let Some(g) = group {
                let gdir = self
                    .root
                    .join("sys/kernel/iommu_groups")
                    .join(g.to_string());
                fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, dir.join("iommu_group")).unwrap();
                symlink(&dir, gdir.join("devices").join(bdf)).unwrap();
                let node = self.root.join("dev/vfio").join(g.to_string());
                fs::write(node, "").unwrap();
            }
            self.bind(bdf, driver);
        }

        /// Binds `bdf` to `driver` (None: unbinds it), as the kernel would.
        pub fn bind(&self, bdf: &str, driver: Option<&str>) {
            let link = self
                .root
                .join("sys/bus/pci/devices")
                .join(bdf)
                .join("driver");
            let _ = fs::remove_file(&link);
            if let Some(d) = driver {
                symlink(self.driver(d), link).unwrap();
            }
        }

        /// Makes `bdf` a physical function that can have `total` VFs.
        pub fn physical_function(&self, bdf: &str, total: u32) {
            let dir = self.root.join("sys/bus/pci/devices").join(bdf);
            fs::write(dir.join("sriov_totalvfs"), format!("{total}\n")).unwrap();
            fs::write(dir.join("sriov_numvfs"), "0\n").unwrap();
        }

        /// What the kernel does after `sriov_numvfs` was written: VF `n` of `pf` appears at
        /// `vf`, in its own group, bound to `driver`.
        pub fn add_vf(&self, pf: &str, n: u32, vf: &str, group: u32, driver: Option<&str>) {
            let devices = self.root.join("sys/bus/pci/devices");
            self.function(vf, (0x8086, 0x154c), Some(group), driver);
            symlink(
                devices.join(vf),
                devices.join(pf).join(format!("virtfn{n}")),
            )
            .unwrap();
            symlink(devices.join(pf), devices.join(vf).join("physfn")).unwrap();
        }

        /// An attribute's contents (trailing whitespace trimmed).
        pub fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.root.join(rel))
                .unwrap_or_default()
                .trim_end()
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTree;
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_parse_and_print_as_lspci_does() {
        assert_eq!(bdf("0000:3b:02.1").to_string(), "0000:3b:02.1");
        assert_eq!(bdf("3b:02.1"), bdf("0000:3b:02.1"));
        for bad in [
            "",
            "3b:02",
            "0000:3b:20.0",
            "0000:3b:02.8",
            "x:3b:02.1",
            "1:2:3:4.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad:?}");
        }
        assert_eq!(
            Host::bdf_of(Path::new("/sys/bus/pci/devices/0000:3b:02.1")).unwrap(),
            bdf("0000:3b:02.1")
        );
    }

    #[test]
    fn a_viable_device_passes_and_each_host_problem_names_its_fix() {
        let t = FakeTree::new("checks", true);
        let h = t.host();
        t.function("0000:3b:00.0", (0x8086, 0x1572), Some(7), Some("vfio-pci"));
        let node = h.check_passthrough(bdf("0000:3b:00.0")).unwrap();
        assert_eq!(node, t.root.join("dev/vfio/7"));

        let err = |b: &str| h.check_passthrough(bdf(b)).unwrap_err().to_string();
        assert!(
            err("0000:99:00.0").contains("lspci -D"),
            "{}",
            err("0000:99:00.0")
        );

        t.function("0000:3b:00.1", (0x8086, 0x1572), Some(7), Some("i40e"));
        let e = err("0000:3b:00.1");
        assert!(
            e.contains("not bound to vfio-pci but to i40e") && e.contains("sriov bind"),
            "{e}"
        );
        // The other function of the group is on a host driver: the group is not viable.
        let e = err("0000:3b:00.0");
        assert!(
            e.contains("group 7") && e.contains("0000:3b:00.1 (i40e)"),
            "{e}"
        );
        t.bind("0000:3b:00.1", None);
        h.check_passthrough(bdf("0000:3b:00.0")).unwrap();

        t.function("0000:5e:00.0", (0x15b3, 0x1017), None, Some("mlx5_core"));
        let e = err("0000:5e:00.0");
        assert!(e.contains("intel_iommu=on"), "{e}");

        let bare = FakeTree::new("checks-bare", false);
        bare.function("0000:3b:00.0", (0x8086, 0x1572), Some(7), None);
        let e = bare
            .host()
            .check_passthrough(bdf("0000:3b:00.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("modprobe vfio-pci"), "{e}");

        // Permission on the group's node: by the mode bits, as the kernel checks them.
        assert!(mode_allows(0o600, 0, 0, 0, 0));
        assert!(!mode_allows(0o600, 0, 0, 1000, 1000));
        assert!(mode_allows(0o660, 0, 1000, 1000, 1000));
        assert!(mode_allows(0o600, 1000, 0, 1000, 5));
        assert!(!mode_allows(0o640, 0, 1000, 1000, 1000));
        let e = HostError::NoPermission("/dev/vfio/7".into()).to_string();
        assert!(
            e.contains("/dev/vfio/7") && e.contains("run as root"),
            "{e}"
        );

        let e = check_memlock(Some(64 << 10), 512 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("65536") && e.contains("ulimit -l"), "{e}");
        check_memlock(None, 512 << 20).unwrap();
        check_memlock(Some(1 << 30), 512 << 20).unwrap();
    }
}
