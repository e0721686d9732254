//! Boot benchmark: the same tiny PVH guest under vibe-vmm and under QEMU (`-M microvm`, KVM),
//! measured in one run and reported as ratios (ours / QEMU), so a noisy machine still gives a
//! stable answer.
//!
//! Prints, for each VMM: median time from process start to guest exit, peak RSS (the whole
//! process: guest pages touched by this tiny guest are a few hundred KiB at most, so this is an
//! upper bound of the VMM's own memory), and port-I/O exits per second (a guest doing 20,000
//! `out`s to port 0x80, minus the tiny guest's time).
//!
//! Run with `scripts/bench.sh` (installs QEMU if needed) or `cargo bench --bench boot`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 21;
const PIO_EXITS: f64 = 20_000.0;
const MEMORY: &str = "128M";

struct Sample {
    wall: Duration,
    max_rss_kib: i64,
    code: i32,
}

/// Spawns `cmd`, waits with wait4 for its exit status and peak RSS.
fn measure(cmd: &mut Command) -> Sample {
    let t0 = Instant::now();
    // Reaped by wait4 below (which also gives the peak RSS), not by Child::wait.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut status = 0;
    // SAFETY: wait4 on our own child with a zeroed rusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4 failed");
    Sample {
        wall: t0.elapsed(),
        max_rss_kib: usage.ru_maxrss,
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Result {
    boot: Duration,
    pio: Duration,
    rss_kib: i64,
}

fn bench(
    name: &str,
    ok_code: i32,
    mut cmd: impl FnMut(&Path) -> Command,
    tiny: &Path,
    pio: &Path,
) -> Result {
    let mut boots = Vec::new();
    let mut pios = Vec::new();
    let mut rss = 0;
    // One warm-up run each, not counted (page cache, first-use costs).
    for guest in [tiny, pio] {
        let s = measure(&mut cmd(guest));
        assert_eq!(s.code, ok_code, "{name} failed on {}", guest.display());
    }
    for _ in 0..RUNS {
        let s = measure(&mut cmd(tiny));
        assert_eq!(s.code, ok_code, "{name}: tiny guest exited with {}", s.code);
        boots.push(s.wall);
        rss = rss.max(s.max_rss_kib);
        let s = measure(&mut cmd(pio));
        assert_eq!(s.code, ok_code, "{name}: pio guest exited with {}", s.code);
        pios.push(s.wall);
    }
    Result {
        boot: median(boots),
        pio: median(pios),
        rss_kib: rss,
    }
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

fn exits_per_sec(r: &Result) -> f64 {
    PIO_EXITS / r.pio.saturating_sub(r.boot).as_secs_f64().max(1e-9)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` discovery
    }
    let dir = std::env::temp_dir().join(format!("vibe-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = dir.join("tiny.elf");
    let pio = dir.join("pio.elf");
    std::fs::write(&tiny, test_guests::BENCH_TINY).unwrap();
    std::fs::write(&pio, test_guests::BENCH_PIO).unwrap();

    let ours = bench(
        "vibe-vmm",
        0,
        |guest| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_vibe-vmm"));
            c.args(["run", "--memory", MEMORY, "--serial", "none", "--kernel"])
                .arg(guest);
            c
        },
        &tiny,
        &pio,
    );
    println!(
        "guest: tiny PVH ELF ({} bytes), {MEMORY} RAM, 1 vCPU, {RUNS} runs, medians",
        test_guests::BENCH_TINY.len()
    );
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>14}",
        "", "boot->exit", "peak RSS", "PIO exits/s"
    );
    let row = |name: &str, r: &Result| {
        println!(
            "{name:<28} {:>9.1} ms {:>8.2} MiB {:>14.0}",
            r.boot.as_secs_f64() * 1e3,
            r.rss_kib as f64 / 1024.0,
            exits_per_sec(r)
        );
    };
    row("vibe-vmm", &ours);

    let Some(qemu) = qemu() else {
        println!();
        println!("QEMU not found (apt-get install qemu-system-x86): no ratios. scripts/bench.sh installs it.");
        return;
    };
    // isa-debug-exit turns the guest's status s into (s << 1) | 1.
    let theirs = bench(
        "qemu",
        1,
        |guest| {
            let mut c = Command::new(&qemu);
            c.args([
                "-M",
                "microvm",
                "-accel",
                "kvm",
                "-cpu",
                "host,-arch-capabilities",
            ])
            .args([
                "-m",
                MEMORY,
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
            ])
            .args([
                "-no-reboot",
                "-serial",
                "null",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
            ])
            .arg("-kernel")
            .arg(guest);
            c
        },
        &tiny,
        &pio,
    );
    row("qemu-system-x86_64 microvm", &theirs);
    println!();
    let ratio = ours.boot.as_secs_f64() / theirs.boot.as_secs_f64();
    println!("boot->exit time, ours/QEMU:   {ratio:.2}x   (target <= 0.50x)");
    let rss = ours.rss_kib as f64 / theirs.rss_kib as f64;
    println!(
        "peak RSS, ours/QEMU:          {rss:.2}x   (ours {:.2} MiB, target <= 3 MiB)",
        ours.rss_kib as f64 / 1024.0
    );
    let exits = exits_per_sec(&ours) / exits_per_sec(&theirs);
    println!("PIO exits per second, ours/QEMU: {exits:.2}x (target >= 1.00x)");
    let _ = std::fs::remove_dir_all(&dir);
}
