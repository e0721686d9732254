//! Linux boot benchmark: the device tier's tiny kernel (scripts/tiny-linux.sh) under vibe-vmm
//! and under QEMU (`-M microvm`, KVM), from process start to the kernel's "Run /init" line on
//! the serial console, the two taking turns in one run; reported as medians and a ratio (ours
//! / QEMU), so a loaded machine still gives a comparable answer.
//!
//! Both boot the same vmlinux (PVH entry), 128 MiB, one vCPU, the same command line and an
//! initramfs holding only `/init` (nothing can run it on this project's nested KVM: the
//! benchmark stops each VMM when the kernel says it runs it). Each side has its serial port
//! and whatever its platform always has; no disks or network, so the time is the kernel's
//! boot on each VMM's platform and exit handling. Slow here (the nested KVM emulates guest
//! kernel mode): about a minute a boot, so few runs. Run with `scripts/bench.sh --linux` or
//! `cargo bench --bench linux_boot`; `VIBE_BENCH_LINUX_RUNS` sets the runs per VMM (3).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MEMORY: &str = "128M";
const LIMIT: Duration = Duration::from_secs(600);
const MARK: &str = "Run /init";
/// Instructions this nested KVM cannot emulate stay off (DESIGN.md); hardware ignores this.
const CPU_QUIRKS: &str =
    "noxsave clearcpuid=cx16,ssse3,sse4_1,sse4_2,avx,avx2,aes,pclmulqdq,popcnt,smap";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tiny kernel, built (or found in its cache) by scripts/tiny-linux.sh.
fn kernel() -> PathBuf {
    let status = Command::new(repo().join("scripts/tiny-linux.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/tiny-linux.sh");
    assert!(status.success(), "scripts/tiny-linux.sh failed");
    repo().join("build/tiny-linux/vmlinux")
}

/// An initramfs (newc cpio) with one executable file, `/init`.
fn initramfs() -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0];
        out.extend(b"070701");
        for f in fields {
            out.extend(format!("{f:08x}").bytes());
        }
        out.extend(format!("{:08x}{:08x}", name.len() + 1, 0).bytes());
        out.extend(name.bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut cpio = Vec::new();
    entry(&mut cpio, 1, "init", 0o100755, b"#!/bin/sh\n");
    entry(&mut cpio, 0, "TRAILER!!!", 0, b"");
    cpio
}

struct Boot {
    /// From spawning the VMM to the line on its console.
    wall: Duration,
    /// The kernel's own timestamp on that line (seconds since it started counting).
    kernel: f64,
}

/// Runs `cmd` until its console (stdout) shows [`MARK`], then stops it.
fn boot(name: &str, cmd: &mut Command) -> Boot {
    let t0 = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        let mut seen = false;
        // Reads to the end either way, so the VMM never blocks on a full pipe.
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return text,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
            if seen {
                continue;
            }
            let s = String::from_utf8_lossy(&text);
            if let Some(line) = s.lines().find(|l| l.contains(MARK)) {
                seen = true;
                let _ = tx.send((t0.elapsed(), line.to_string()));
            }
        }
    });
    let found = rx.recv_timeout(LIMIT);
    let _ = child.kill();
    let _ = child.wait();
    let text = reader.join().unwrap_or_default();
    match found {
        Ok((wall, line)) => Boot {
            wall,
            kernel: printk_time(&line).unwrap_or(f64::NAN),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&text);
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            panic!(
                "{name}: no {MARK:?} within {LIMIT:?}; last console line: {:?}",
                last.unwrap_or("(nothing)")
            );
        }
    }
}

/// The seconds in a "[   12.345678] ..." line.
fn printk_time(line: &str) -> Option<f64> {
    let start = line.find('[')? + 1;
    let end = start + line[start..].find(']')?;
    line[start..end].trim().parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn qemu() -> Option<PathBuf> {
    [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` discovery
    }
    if std::fs::metadata("/dev/kvm").is_err() {
        println!("SKIPPED: no /dev/kvm");
        return;
    }
    let Some(qemu) = qemu() else {
        println!("SKIPPED: QEMU not found (apt-get install qemu-system-x86; scripts/bench.sh installs it)");
        return;
    };
    let runs: usize = std::env::var("VIBE_BENCH_LINUX_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let kernel = kernel();
    let dir = std::env::temp_dir().join(format!("vibe-vmm-linux-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, initramfs()).expect("write the initramfs");
    let cmdline = format!("console=ttyS0 {CPU_QUIRKS} panic=-1 nowatchdog");

    let ours = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vibe-vmm"));
        c.args(["run", "--memory", MEMORY, "--cpus", "1", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--cmdline", &cmdline]);
        c
    };
    let theirs = || {
        let mut c = Command::new(&qemu);
        c.args(["-M", "microvm", "-accel", "kvm"])
            .args(["-cpu", "host,-arch-capabilities", "-m", MEMORY, "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot", "-kernel"])
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &cmdline]);
        c
    };
    println!(
        "Linux boot to {MARK:?}: {} ({:.1} MB), {MEMORY} RAM, 1 vCPU, {runs} runs each, taking turns",
        kernel.display(),
        std::fs::metadata(&kernel).map_or(0.0, |m| m.len() as f64 / 1e6)
    );
    let mut results: [(&str, Vec<Boot>); 2] = [
        ("vibe-vmm", Vec::new()),
        ("qemu-system-x86_64 microvm", Vec::new()),
    ];
    for run in 0..runs {
        for (i, cmd) in [&ours as &dyn Fn() -> Command, &theirs].iter().enumerate() {
            let name = results[i].0;
            let b = boot(name, &mut cmd());
            println!(
                "  run {}: {name:<28} {:>7.1} s (kernel clock {:.1} s)",
                run + 1,
                b.wall.as_secs_f64(),
                b.kernel
            );
            results[i].1.push(b);
        }
    }
    println!();
    println!(
        "{:<28} {:>14} {:>18}",
        "median", "start->line", "kernel clock"
    );
    let mut medians = Vec::new();
    for (name, boots) in &results {
        let wall = median(boots.iter().map(|b| b.wall.as_secs_f64()).collect());
        let kernel = median(boots.iter().map(|b| b.kernel).collect());
        println!("{name:<28} {wall:>12.1} s {kernel:>16.1} s");
        medians.push(wall);
    }
    println!();
    println!(
        "Linux boot time, ours/QEMU: {:.2}x   (lower is better)",
        medians[0] / medians[1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
