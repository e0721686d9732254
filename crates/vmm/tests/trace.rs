//! The exit trace of a tiny guest that makes a known sequence of exits, line by line, and the
//! exit statistics of the same run.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;

use std::time::Duration;

use common::{build, config, kvm, run_with_limit, Capture};
use vmm::stats::ExitKind;
use vmm::trace::{TraceConfig, TraceFilter};
use vmm::Outcome;

/// What guests/asm/trace.S does, as the trace prints it (RIPs and instruction bytes checked
/// apart: they move when the guest's code does).
const EXPECTED: &[&str] = &[
    "vcpu0 pio_out            port 0x0080 size 1 value 0x42 -> unclaimed",
    "vcpu0 pio_out            port 0x0510 size 4 value 0x12345678 -> device",
    "vcpu0 pio_in             port 0x0510 size 4 value 0xedcba987 <- device",
    "vcpu0 mmio_write         addr 0xd1001000 size 4 value 0xcafe -> device",
    "vcpu0 mmio_read          addr 0xd1001004 size 4 value 0xffffffff <- device",
    "vcpu0 pio_out            port 0x00f4 size 1 value 0x0 -> debug-exit",
];

#[test]
fn the_trace_of_a_known_guest_matches_line_by_line() {
    let Some(kvm) = kvm() else { return };
    let serial = Capture::default();
    let trace = Capture::default();
    let mut c = config(test_guests::TRACE, 1, &serial);
    c.trace = Some(TraceConfig {
        filter: TraceFilter::parse("exits").unwrap(),
        out: Box::new(trace.clone()),
    });
    let vm = build(&kvm, c);
    let outcome = run_with_limit(vm, Duration::from_secs(30));
    assert_eq!(outcome, Outcome::DebugExit(0));
    let text = trace.text();
    // Shown with --nocapture: the walk-through in docs/vm-exits.md quotes it.
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), EXPECTED.len(), "{text}");
    for (line, want) in lines.iter().zip(EXPECTED) {
        let (access, at) = line
            .split_once("  rip 0x")
            .unwrap_or_else(|| panic!("{line}"));
        assert_eq!(access, *want, "\n{text}");
        // Reads show their instruction (`in eax, dx`, `mov eax, dword ptr [rbx + 4]`);
        // writes, which KVM reports with RIP past the instruction, show RIP alone.
        let bytes = at.split_once(" [").map(|(_, b)| b);
        let want = match access.split_whitespace().nth(1) {
            Some("pio_in") => Some("ed]"),
            Some("mmio_read") => Some("8b 43 04]"),
            _ => None,
        };
        assert_eq!(bytes, want, "{line}");
    }
}

#[test]
fn a_filter_keeps_only_the_kinds_asked_for() {
    let Some(kvm) = kvm() else { return };
    let serial = Capture::default();
    let trace = Capture::default();
    let mut c = config(test_guests::TRACE, 1, &serial);
    c.trace = Some(TraceConfig {
        filter: TraceFilter::parse("exits=mmio").unwrap(),
        out: Box::new(trace.clone()),
    });
    let vm = build(&kvm, c);
    assert_eq!(
        run_with_limit(vm, Duration::from_secs(30)),
        Outcome::DebugExit(0)
    );
    let text = trace.text();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.starts_with("vcpu0 mmio_")), "{text}");
}

/// The counts match what the guest did: 3 port writes, 1 port read, 1 MMIO write, 1 read.
#[test]
fn statistics_count_each_exit_once() {
    let Some(kvm) = kvm() else { return };
    let serial = Capture::default();
    let mut vm = build(&kvm, config(test_guests::TRACE, 1, &serial));
    vm.start().unwrap();
    let controller = vm.controller().unwrap();
    assert_eq!(vm.wait(), Outcome::DebugExit(0));
    let s = controller.stats();
    assert_eq!(s.count(ExitKind::PioOut), 3, "{}", s.render());
    assert_eq!(s.count(ExitKind::PioIn), 1);
    assert_eq!(s.count(ExitKind::MmioWrite), 1);
    assert_eq!(s.count(ExitKind::MmioRead), 1);
    assert_eq!(s.pio_count("unclaimed"), 1);
    assert_eq!(s.pio_count("debug-exit"), 1);
    assert_eq!(s.pio_count("device"), 2);
    let test_mmio = s.mmio.iter().find(|d| d.base == Some(common::TEST_MMIO));
    assert_eq!(test_mmio.map(|d| d.count), Some(2));
}
