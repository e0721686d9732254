//! SR-IOV on the host: list physical functions and their virtual functions, create and
//! destroy VFs, and hand a VF to vfio-pci and back. What `vibe-vmm sriov` runs.
//!
//! All through sysfs under a [`Host`] root, the way an administrator would by hand:
//! - VFs are made by writing N to the PF's `sriov_numvfs` (the kernel wants 0 in between, and
//!   destroys every VF on 0), so a change is refused while any VF is held for VFIO (bound to
//!   vfio-pci or reserved for it by `driver_override`, which is how a VM holds it) or looks
//!   in use to the host ([`Host::in_use`]: an interface up, its `/dev/vfio/N` open).
//! - A VF goes to vfio-pci by its `driver_override`: the old driver lets go (`driver/unbind`),
//!   then `drivers_probe` binds the override. Back: the override is cleared, vfio-pci lets go,
//!   and `drivers_probe` gives it to whichever driver the kernel picks for it, the one it had.

use std::fmt::Write;

use crate::sysfs::{Bdf, Function, Host, HostError, VFIO_DRIVER};

/// Why an SR-IOV command refused.
#[derive(Debug, thiserror::Error)]
pub enum SriovError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{0} is not an SR-IOV physical function (it has no sriov_totalvfs)")]
    NotPhysical(Bdf),
    #[error("{0} is not an SR-IOV virtual function (it has no physfn); bind a whole device to vfio-pci by hand")]
    NotVirtual(Bdf),
    #[error("{pf} can have at most {total} VFs, not {asked}")]
    TooMany { pf: Bdf, total: u32, asked: u32 },
    #[error("{pf} has VFs held for VFIO ({held}): changing sriov_numvfs would destroy them under a VM; `vibe-vmm sriov unbind` each first")]
    InUse { pf: Bdf, held: String },
    #[error("{pf} has VFs in use ({why}): changing sriov_numvfs would destroy them; stop their users first")]
    Busy { pf: Bdf, why: String },
    #[error("{0} is already bound to vfio-pci")]
    AlreadyBound(Bdf),
    #[error("{vf} is not bound to vfio-pci (its driver is {driver}): nothing to unbind")]
    NotBound { vf: Bdf, driver: String },
}

/// One PF and its VFs.
#[derive(Debug, Clone)]
pub struct PhysicalFunction {
    pub pf: Function,
    pub vfs: Vec<Function>,
}

/// Every physical function on the host, with its VFs.
pub fn list(host: &Host) -> Result<Vec<PhysicalFunction>, SriovError> {
    let mut out = Vec::new();
    for f in host.functions()? {
        let Some(s) = &f.sriov else { continue };
        let vfs = s
            .vfs
            .iter()
            .map(|&b| host.function(b))
            .collect::<Result<_, _>>()?;
        out.push(PhysicalFunction { pf: f, vfs });
    }
    Ok(out)
}

/// `list`'s table, as `vibe-vmm sriov list` prints it.
pub fn render(pfs: &[PhysicalFunction]) -> String {
    let mut s = String::new();
    if pfs.is_empty() {
        s.push_str("no SR-IOV physical functions on this host\n");
    }
    let group = |f: &Function| f.iommu_group.map_or("-".into(), |g| g.to_string());
    for p in pfs {
        let sriov = p.pf.sriov.as_ref();
        let _ = writeln!(
            s,
            "{} {:04x}:{:04x} PF  driver {}  group {}  VFs {}/{}",
            p.pf.bdf,
            p.pf.vendor,
            p.pf.device,
            p.pf.driver_name(),
            group(&p.pf),
            sriov.map_or(0, |s| s.num),
            sriov.map_or(0, |s| s.total),
        );
        for (n, vf) in p.vfs.iter().enumerate() {
            let _ = writeln!(
                s,
                "  virtfn{n} {} {:04x}:{:04x}  driver {}  group {}",
                vf.bdf,
                vf.vendor,
                vf.device,
                vf.driver_name(),
                group(vf)
            );
        }
    }
    s
}

fn physical(host: &Host, pf: Bdf) -> Result<(Function, crate::sysfs::Sriov), SriovError> {
    let f = host.function(pf)?;
    let s = f.sriov.clone().ok_or(SriovError::NotPhysical(pf))?;
    Ok((f, s))
}

/// Refuses while a VF of `pf` is held for VFIO, or the host is using one.
fn check_unused(host: &Host, pf: Bdf, vfs: &[Bdf]) -> Result<(), SriovError> {
    let mut held = Vec::new();
    let mut busy = Vec::new();
    for &vf in vfs {
        let f = host.function(vf)?;
        if f.held_for_vfio() {
            held.push(vf.to_string());
        } else if let Some(why) = host.in_use(&f) {
            busy.push(format!("{vf}: {why}"));
        }
    }
    if !held.is_empty() {
        return Err(SriovError::InUse {
            pf,
            held: held.join(", "),
        });
    }
    if !busy.is_empty() {
        return Err(SriovError::Busy {
            pf,
            why: busy.join(", "),
        });
    }
    Ok(())
}

/// Gives `pf` `n` VFs (through 0 when it has some already). Returns what it did.
pub fn enable(host: &Host, pf: Bdf, n: u32) -> Result<String, SriovError> {
    let (_, s) = physical(host, pf)?;
    if n > s.total {
        return Err(SriovError::TooMany {
            pf,
            total: s.total,
            asked: n,
        });
    }
    if n == s.num {
        return Ok(format!("{pf} already has {n} VFs"));
    }
    let numvfs = host.device_dir(pf).join("sriov_numvfs");
    if s.num != 0 {
        check_unused(host, pf, &s.vfs)?;
        host.write_attr(&numvfs, "0")?;
    }
    if n != 0 {
        host.write_attr(&numvfs, &n.to_string())?;
    }
    Ok(format!("{pf}: {} -> {n} VFs", s.num))
}

/// Destroys every VF of `pf`.
pub fn disable(host: &Host, pf: Bdf) -> Result<String, SriovError> {
    enable(host, pf, 0)
}

/// Hands VF `vf` to vfio-pci. Returns what it did, naming the driver it took it from.
pub fn bind(host: &Host, vf: Bdf) -> Result<String, SriovError> {
    let f = host.function(vf)?;
    if f.physfn.is_none() {
        return Err(SriovError::NotVirtual(vf));
    }
    if f.driver.as_deref() == Some(VFIO_DRIVER) {
        return Err(SriovError::AlreadyBound(vf));
    }
    host.vfio_loaded()?;
    let dir = host.device_dir(vf);
    host.write_attr(&dir.join("driver_override"), VFIO_DRIVER)?;
    if f.driver.is_some() {
        host.write_attr(&dir.join("driver/unbind"), &vf.to_string())?;
    }
    host.write_attr(&host.path("sys/bus/pci/drivers_probe"), &vf.to_string())?;
    let group = f
        .iommu_group
        .map_or(String::from("no IOMMU group"), |g| format!("/dev/vfio/{g}"));
    Ok(format!(
        "{vf}: {} -> {VFIO_DRIVER} ({group})",
        f.driver_name()
    ))
}

/// Gives VF `vf` back from vfio-pci to the host's own driver for it.
pub fn unbind(host: &Host, vf: Bdf) -> Result<String, SriovError> {
    let f = host.function(vf)?;
    if f.physfn.is_none() {
        return Err(SriovError::NotVirtual(vf));
    }
    if !f.held_for_vfio() {
        return Err(SriovError::NotBound {
            vf,
            driver: f.driver_name().to_string(),
        });
    }
    let dir = host.device_dir(vf);
    // An empty line clears the override.
    host.write_attr(&dir.join("driver_override"), "\n")?;
    if f.driver.as_deref() == Some(VFIO_DRIVER) {
        host.write_attr(&dir.join("driver/unbind"), &vf.to_string())?;
    }
    host.write_attr(&host.path("sys/bus/pci/drivers_probe"), &vf.to_string())?;
    let now = host.function(vf)?;
    Ok(format!("{vf}: {VFIO_DRIVER} -> {}", now.driver_name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::fake::FakeTree;

    const PF: &str = "0000:3b:00.0";
    const VF0: &str = "0000:3b:02.0";
    const VF1: &str = "0000:3b:02.1";

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// A host with one X710 PF (up to 4 VFs) on i40e and an ordinary NIC.
    fn host(tag: &str) -> FakeTree {
        let t = FakeTree::new(tag, true);
        t.function(PF, (0x8086, 0x1572), Some(40), Some("i40e"));
        t.physical_function(PF, 4);
        t.function("0000:00:1f.6", (0x8086, 0x15bc), Some(9), Some("e1000e"));
        t
    }

    /// What the kernel does on `sriov_numvfs` = 2: two VFs on iavf.
    fn kernel_makes_vfs(t: &FakeTree) {
        t.add_vf(PF, 0, VF0, 60, Some("iavf"));
        t.add_vf(PF, 1, VF1, 61, Some("iavf"));
        std::fs::write(
            t.root
                .join(format!("sys/bus/pci/devices/{PF}/sriov_numvfs")),
            "2\n",
        )
        .unwrap();
    }

    #[test]
    fn list_enable_bind_unbind_disable() {
        let t = host("cycle");
        let h = t.host();
        let text = render(&list(&h).unwrap());
        assert_eq!(
            text, "0000:3b:00.0 8086:1572 PF  driver i40e  group 40  VFs 0/4\n",
            "only the PF is listed"
        );

        assert_eq!(enable(&h, bdf(PF), 2).unwrap(), "0000:3b:00.0: 0 -> 2 VFs");
        assert_eq!(
            t.read(&format!("sys/bus/pci/devices/{PF}/sriov_numvfs")),
            "2"
        );
        kernel_makes_vfs(&t);
        let pfs = list(&h).unwrap();
        assert_eq!(pfs[0].vfs.len(), 2);
        let text = render(&pfs);
        assert!(
            text.contains("VFs 2/4\n  virtfn0 0000:3b:02.0 8086:154c  driver iavf  group 60\n  virtfn1 0000:3b:02.1"),
            "{text}"
        );

        let did = bind(&h, bdf(VF1)).unwrap();
        assert_eq!(did, "0000:3b:02.1: iavf -> vfio-pci (/dev/vfio/61)");
        assert_eq!(
            t.read(&format!("sys/bus/pci/devices/{VF1}/driver_override")),
            "vfio-pci"
        );
        assert_eq!(t.read("sys/bus/pci/drivers/iavf/unbind"), VF1);
        assert_eq!(t.read("sys/bus/pci/drivers_probe"), VF1);
        // The kernel binds the override.
        t.bind(VF1, Some("vfio-pci"));
        h.check_passthrough(bdf(VF1)).unwrap();

        let did = unbind(&h, bdf(VF1)).unwrap();
        assert!(did.starts_with("0000:3b:02.1: vfio-pci -> "), "{did}");
        assert_eq!(
            t.read(&format!("sys/bus/pci/devices/{VF1}/driver_override")),
            ""
        );
        assert_eq!(t.read("sys/bus/pci/drivers/vfio-pci/unbind"), VF1);
        t.bind(VF1, Some("iavf"));

        assert_eq!(disable(&h, bdf(PF)).unwrap(), "0000:3b:00.0: 2 -> 0 VFs");
        assert_eq!(
            t.read(&format!("sys/bus/pci/devices/{PF}/sriov_numvfs")),
            "0"
        );
    }

    #[test]
    fn unsafe_and_wrong_requests_are_refused() {
        let t = host("refusals");
        let h = t.host();
        let e = enable(&h, bdf(PF), 5).unwrap_err().to_string();
        assert_eq!(e, "0000:3b:00.0 can have at most 4 VFs, not 5");
        let e = enable(&h, bdf("0000:00:1f.6"), 1).unwrap_err().to_string();
        assert!(e.contains("not an SR-IOV physical function"), "{e}");
        let e = enable(&h, bdf("0000:99:00.0"), 1).unwrap_err().to_string();
        assert!(e.contains("no PCI device 0000:99:00.0"), "{e}");
        let e = bind(&h, bdf("0000:00:1f.6")).unwrap_err().to_string();
        assert!(e.contains("not an SR-IOV virtual function"), "{e}");

        enable(&h, bdf(PF), 2).unwrap();
        kernel_makes_vfs(&t);
        assert_eq!(
            enable(&h, bdf(PF), 2).unwrap(),
            "0000:3b:00.0 already has 2 VFs"
        );
        let e = unbind(&h, bdf(VF0)).unwrap_err().to_string();
        assert_eq!(
            e,
            "0000:3b:02.0 is not bound to vfio-pci (its driver is iavf): nothing to unbind"
        );

        bind(&h, bdf(VF0)).unwrap();
        // Reserved by its override already (the kernel has not bound it yet): held.
        for r in [enable(&h, bdf(PF), 3), disable(&h, bdf(PF))] {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("held for VFIO (0000:3b:02.0)") && e.contains("sriov unbind"),
                "{e}"
            );
        }
        t.bind(VF0, Some("vfio-pci"));
        let e = bind(&h, bdf(VF0)).unwrap_err().to_string();
        assert_eq!(e, "0000:3b:02.0 is already bound to vfio-pci");
        let e = disable(&h, bdf(PF)).unwrap_err().to_string();
        assert!(e.contains("held for VFIO"), "{e}");
        assert_eq!(
            t.read(&format!("sys/bus/pci/devices/{PF}/sriov_numvfs")),
            "2",
            "unchanged"
        );
        unbind(&h, bdf(VF0)).unwrap();
        t.bind(VF0, Some("iavf"));
        // Back on its host driver, but in use there: an interface up, or its group open.
        t.netdev(VF0, "eth7", true);
        let e = disable(&h, bdf(PF)).unwrap_err().to_string();
        assert_eq!(
            e,
            "0000:3b:00.0 has VFs in use (0000:3b:02.0: netdev eth7 is up): changing \
             sriov_numvfs would destroy them; stop their users first"
        );
        t.netdev(VF0, "eth7", false);
        let group = h.function(bdf(VF1)).unwrap().iommu_group.unwrap();
        t.open_group(4242, Some(group));
        let e = enable(&h, bdf(PF), 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("0000:3b:02.1: /dev/vfio/{group} open by pid 4242")),
            "{e}"
        );
        t.open_group(4242, None);
        disable(&h, bdf(PF)).unwrap();

        // Without the vfio modules nothing can be bound.
        let bare = FakeTree::new("refusals-bare", false);
        bare.function(PF, (0x8086, 0x1572), Some(40), Some("i40e"));
        bare.physical_function(PF, 4);
        bare.add_vf(PF, 0, VF0, 60, Some("iavf"));
        let e = bind(&bare.host(), bdf(VF0)).unwrap_err().to_string();
        assert!(e.contains("modprobe vfio-pci"), "{e}");
    }
}
