//! Linux boot benchmark: the device tier's tiny kernel (scripts/tiny-linux.sh) under vibe-vmm
//! and under QEMU (`-M microvm`, KVM), from process start to the kernel's "Run /init" line on
//! the serial console, the two taking turns in one run; reported as medians and a ratio (ours
//! / QEMU), so a loaded machine still gives a comparable answer.
//!
//! Both boot the same vmlinux (PVH entry), 128 MiB, one vCPU, the same command line and an
//! initramfs holding only `/init` (nothing can run it on this project's nested KVM: the
//! benchmark stops each VMM when the kernel says it runs it). Each side has its serial port
//! and whatever its platform always has; no disks or network, so the time is the kernel's
//! boot on each VMM's platform and exit handling. Also timed: the kernel's first line.
//!
//! On this project's nested KVM (DESIGN.md) QEMU cannot get there: KVM stops the guest at the
//! kernel's int3 self-test, an instruction it cannot emulate, which vibe-vmm completes itself.
//! The benchmark then says so and compares the two up to the last line QEMU printed. Slow here
//! (the nested KVM emulates guest kernel mode): one to several minutes a boot, so few runs.
//! Run with `scripts/bench.sh --linux` or `cargo bench --bench linux_boot`;
//! `VIBE_BENCH_LINUX_RUNS` sets the runs per VMM (3).

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

/// One boot: each console line with when it arrived (since the VMM's process started), and
/// why it stopped before [`MARK`], if it did.
struct Boot {
    lines: Vec<(Duration, String)>,
    failure: Option<String>,
}

impl Boot {
    /// When the first line containing `text` arrived.
    fn at(&self, text: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(t, _)| *t)
    }

    fn last_line(&self) -> &str {
        self.lines.last().map_or("(nothing)", |(_, l)| l.as_str())
    }
}

enum Event {
    Line(Duration, String),
    /// The console closed: the VMM ended.
    Ended,
    /// The VMM reported that the hypervisor stopped the guest.
    Failed(String),
}

/// What a VMM prints when KVM stops the guest on an instruction it cannot emulate (QEMU keeps
/// running, paused; vibe-vmm completes such instructions itself or exits).
const KVM_FAILURES: [&str; 2] = ["KVM internal error", "emulation failure"];

/// Runs `cmd` until its console (stdout) shows [`MARK`], it ends, or it reports that KVM
/// stopped the guest; then stops it.
fn boot(name: &str, cmd: &mut Command) -> Boot {
    let t0 = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let (tx, rx) = mpsc::channel();
    // Both read to the end, so the VMM never blocks on a full pipe.
    let readers = [
        (
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            false,
        ),
        (Box::new(child.stderr.take().expect("piped")), true),
    ]
    .map(|(mut out, is_stderr)| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    let event = if !is_stderr {
                        Event::Line(t0.elapsed(), line)
                    } else if KVM_FAILURES.iter().any(|f| line.contains(f)) {
                        Event::Failed(line)
                    } else {
                        continue;
                    };
                    let _ = tx.send(event);
                }
            }
            if !is_stderr {
                let _ = tx.send(Event::Ended);
            }
        })
    });
    drop(tx);
    let mut boot = Boot {
        lines: Vec::new(),
        failure: None,
    };
    loop {
        match rx.recv_timeout(LIMIT.saturating_sub(t0.elapsed())) {
            Ok(Event::Line(t, line)) => {
                let done = line.contains(MARK);
                boot.lines.push((t, line));
                if done {
                    break;
                }
            }
            Ok(Event::Failed(why)) => {
                boot.failure = Some(format!("KVM stopped the guest ({why})"));
                break;
            }
            Ok(Event::Ended) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                boot.failure = Some("the VMM exited".into());
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                boot.failure = Some(format!("no {MARK:?} within {LIMIT:?}"));
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    boot
}

/// When one boot and the other got to the same point, if both did.
type Times = dyn Fn(&Boot, &Boot) -> Option<(Duration, Duration)>;

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
            let secs =
                |t: Option<Duration>| t.map_or("-".into(), |t| format!("{:.1} s", t.as_secs_f64()));
            print!(
                "  run {}: {name:<28} first line {:>8}, {MARK:?} {:>8}",
                run + 1,
                secs(b.at("Linux version")),
                secs(b.at(MARK)),
            );
            match (&b.failure, b.at(MARK)) {
                (Some(why), None) => println!("  ({why}; last line {:?})", b.last_line()),
                _ => println!(
                    " (kernel clock {:.1} s)",
                    printk_time(b.last_line()).unwrap_or(f64::NAN)
                ),
            }
            results[i].1.push(b);
        }
    }
    let [(_, ours), (_, theirs)] = &results;
    // The median over the runs of `f`'s ratio, ours/QEMU, where both runs have it.
    let ratio = |f: &Times| {
        let pairs: Vec<(f64, f64, f64)> = ours
            .iter()
            .zip(theirs)
            .filter_map(|(a, b)| f(a, b))
            .map(|(a, b)| {
                (
                    a.as_secs_f64(),
                    b.as_secs_f64(),
                    a.as_secs_f64() / b.as_secs_f64(),
                )
            })
            .collect();
        (pairs.len() == runs).then(|| {
            let m = |k: fn(&(f64, f64, f64)) -> f64| median(pairs.iter().map(k).collect());
            (m(|p| p.0), m(|p| p.1), m(|p| p.2))
        })
    };
    let report = |what: &str, r: Option<(f64, f64, f64)>| match r {
        Some((a, b, x)) => println!("{what:<44} {a:>8.1} s {b:>8.1} s {x:>8.2}x"),
        None => println!(
            "{what:<44} {:>10} {:>10}  (not every run got there)",
            "-", "-"
        ),
    };
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>9}",
        "medians, from process start", "vibe-vmm", "QEMU", "ratio"
    );
    let both = |text: &'static str| move |a: &Boot, b: &Boot| Some((a.at(text)?, b.at(text)?));
    report("to the kernel's first line", ratio(&both("Linux version")));
    report(&format!("to {MARK:?}"), ratio(&both(MARK)));
    if let Some(stopped) = theirs.iter().find(|b| b.at(MARK).is_none()) {
        // QEMU stops where this host's nested KVM cannot emulate an instruction (the kernel's
        // int3 self-test, DESIGN.md); vibe-vmm completes it. Compare up to the last kernel line
        // QEMU printed that vibe-vmm's boot printed too.
        println!(
            "QEMU did not reach {MARK:?}: {}",
            stopped.failure.as_deref().unwrap_or("?")
        );
        report(
            "to the last line QEMU reached",
            ratio(&|a: &Boot, b: &Boot| {
                b.lines.iter().rev().find_map(|(tb, line)| {
                    printk_time(line)?;
                    let text = &line[line.find(']')? + 1..];
                    Some((a.at(text)?, *tb))
                })
            }),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
