//! Snapshot and restore through the binary, as a user does it: `vibe-vmm run --api-socket`,
//! `ctl pause`, `ctl snapshot DIR`, `ctl stop`, then `vibe-vmm restore --snapshot DIR` in a
//! new process; the guest goes on and ends with the result of a run left alone.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vibe-vmm"))
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vibe-vmm-snapshot-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    bin()
        .args(["ctl", "--api-socket", socket.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn result_line(path: &Path) -> Option<String> {
    let out = std::fs::read_to_string(path).unwrap_or_default();
    out.lines()
        .find(|l| l.starts_with("result "))
        .map(|l| l.trim().to_string())
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_guest_snapshotted_by_ctl_resumes_in_a_new_process() {
    if std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: no usable /dev/kvm");
        return;
    }
    let dir = temp_dir();
    let guest = dir.join("snapshot.elf");
    std::fs::write(&guest, test_guests::SNAPSHOT).unwrap();
    let g = guest.to_str().unwrap();

    // The run left alone.
    let whole = dir.join("whole.txt");
    let serial = format!("file:{}", whole.display());
    let out = bin()
        .args(["run", "--kernel", g, "--memory", "32M", "--serial", &serial])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let expected = result_line(&whole).expect("a result");

    // The run snapshotted mid-way.
    let socket = dir.join("api.sock");
    let before = dir.join("before.txt");
    let serial = format!("file:{}", before.display());
    let mut child = bin()
        .args(["run", "--kernel", g, "--memory", "32M", "--serial", &serial])
        .args(["--api-socket", socket.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("API socket", || socket.exists());
    wait_for("start", || {
        std::fs::read_to_string(&before).is_ok_and(|s| s.contains("started"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let snap = dir.join("snap");
    let s = snap.to_str().unwrap();
    // A link planted where the memory file goes is replaced, not written through (and the
    // API thread's seccomp filter lets it be unlinked).
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::create_dir(&snap).unwrap();
    std::os::unix::fs::symlink(&victim, snap.join("memory")).unwrap();
    let out = ctl(&socket, &["snapshot", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("must be paused to take a snapshot (HTTP 409)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&ctl(&socket, &["pause"]).stdout).trim(), "paused");
    // A file where the directory should be is the caller's mistake, named as such.
    let file = dir.join("a-file");
    std::fs::write(&file, b"mine").unwrap();
    for dest in [file.clone(), file.join("below")] {
        let out = ctl(&socket, &["snapshot", dest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("is not a directory (HTTP 400)"), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    let t0 = Instant::now();
    let out = ctl(&socket, &["snapshot", s]);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("snapshot written to"));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(text(&ctl(&socket, &["stop"]).stdout).trim(), "stopped");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(
        result_line(&before).is_none(),
        "the guest finished before the snapshot"
    );
    eprintln!("snapshot of a 32 MiB guest through the API: {took:?}");

    // Resumed in a new process.
    let after = dir.join("after.txt");
    let serial = format!("file:{}", after.display());
    let out = bin()
        .args(["restore", "--snapshot", s, "--serial", &serial])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let resumed = std::fs::read_to_string(&after).unwrap();
    assert!(!resumed.contains("started"), "it booted again: {resumed}");
    assert_eq!(result_line(&after), Some(expected));

    // A replacement disk for a machine that had none: one clear line.
    let out = bin()
        .args(["restore", "--snapshot", s, "--serial", "none", "--disk", g])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("0 disks and 0 network devices; 1 and 0"),
        "{err}"
    );

    // No snapshot there: one clear line.
    let out = bin()
        .args(["restore", "--snapshot", dir.join("none").to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot restore") && err.contains("state.json"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
