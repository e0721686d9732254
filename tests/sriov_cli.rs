//! `vibe-vmm sriov` end to end against a fake sysfs tree (`VIBE_VMM_SYSFS_ROOT`): list,
//! enable, bind, unbind, disable, and a one-line error naming the problem for each refusal.
#![cfg(target_os = "linux")]

use std::process::Command;

use vfio::sysfs::fake::FakeTree;

const PF: &str = "0000:3b:00.0";
const VF: &str = "0000:3b:02.0";

/// Runs `vibe-vmm sriov ARGS` on the tree: (exit status, stdout, stderr).
fn sriov(t: &FakeTree, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vibe-vmm"))
        .arg("sriov")
        .args(args)
        .env("VIBE_VMM_SYSFS_ROOT", &t.root)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(t: &FakeTree, args: &[&str]) -> String {
    let (code, out, err) = sriov(t, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

fn refused(t: &FakeTree, args: &[&str], needle: &str) {
    let (code, out, err) = sriov(t, args);
    assert_eq!(code, 1, "{args:?} must fail: {out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("vibe-vmm: error: ") && err.contains(needle),
        "{args:?}: {err}"
    );
}

#[test]
fn the_sriov_commands_drive_sysfs_and_refuse_what_is_unsafe() {
    let t = FakeTree::new("cli", true);
    t.function(PF, (0x8086, 0x1572), Some(40), Some("i40e"));
    t.physical_function(PF, 4);
    assert!(ok(&t, &["list"]).contains("0000:3b:00.0 8086:1572 PF  driver i40e  group 40  VFs 0/4"));
    refused(&t, &["enable", PF, "8"], "at most 4 VFs, not 8");
    refused(
        &t,
        &["enable", "0000:99:00.0", "1"],
        "no PCI device 0000:99:00.0",
    );
    assert_eq!(ok(&t, &["enable", PF, "1"]), "0000:3b:00.0: 0 -> 1 VFs\n");
    // The kernel makes the VF.
    t.add_vf(PF, 0, VF, 60, Some("iavf"));
    std::fs::write(
        t.root
            .join(format!("sys/bus/pci/devices/{PF}/sriov_numvfs")),
        "1\n",
    )
    .unwrap();
    assert!(ok(&t, &["list"]).contains("virtfn0 0000:3b:02.0 8086:154c  driver iavf  group 60"));
    refused(&t, &["unbind", VF], "not bound to vfio-pci");
    refused(&t, &["bind", PF], "not an SR-IOV virtual function");
    assert_eq!(
        ok(&t, &["bind", VF]),
        "0000:3b:02.0: iavf -> vfio-pci (/dev/vfio/60)\n"
    );
    t.bind(VF, Some("vfio-pci"));
    refused(&t, &["bind", VF], "already bound to vfio-pci");
    refused(&t, &["disable", PF], "held for VFIO (0000:3b:02.0)");
    assert!(ok(&t, &["unbind", VF]).starts_with("0000:3b:02.0: vfio-pci -> "));
    t.bind(VF, Some("iavf"));
    assert_eq!(ok(&t, &["disable", PF]), "0000:3b:00.0: 1 -> 0 VFs\n");
    let (code, _, err) = sriov(&t, &["bind", "3b:02"]);
    assert_eq!(code, 2, "a bad address is a usage error: {err}");
}
