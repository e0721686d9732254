//! `vibe-vmm sriov`: SR-IOV virtual functions on the host, through sysfs
//! (`vfio::sriov`). `VIBE_VMM_SYSFS_ROOT` points every sysfs path at another root (a fake
//! tree in tests).

use vfio::sriov;
use vfio::sysfs::Host;

use crate::args::SriovCommand;

/// Runs one SR-IOV command and prints what it did.
pub fn run(command: SriovCommand) -> anyhow::Result<()> {
    let host = match std::env::var_os("VIBE_VMM_SYSFS_ROOT") {
        Some(root) => Host::new(root),
        None => Host::system(),
    };
    let out = match command {
        SriovCommand::List => sriov::render(&sriov::list(&host)?),
        SriovCommand::Enable { pf, n } => sriov::enable(&host, pf, n)? + "\n",
        SriovCommand::Disable { pf } => sriov::disable(&host, pf)? + "\n",
        SriovCommand::Bind { vf } => sriov::bind(&host, vf)? + "\n",
        SriovCommand::Unbind { vf } => sriov::unbind(&host, vf)? + "\n",
    };
    print!("{out}");
    Ok(())
}
