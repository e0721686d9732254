//! The command line: any argument vector through the real clap parser and every value parser
//! behind it (sizes, disks, nets, MACs, serial, console, irqchip, CPUID feature lists). Checks
//! it answers with errors, not panics, and that an accepted size or MAC means what it says.
#![no_main]

// The binary crate's own parser, compiled here as it is there.
#[allow(dead_code)]
#[path = "../../src/args.rs"]
mod args;

use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Arguments are separated by NUL, as in /proc/PID/cmdline.
    let argv = std::iter::once("vibe-vmm").chain(text.split('\0'));
    let _ = args::Cli::try_parse_from(argv);

    for word in text.split('\0') {
        if let Ok(size) = args::parse_size(word) {
            // Every suffix is a whole number of KiB; the same size written in KiB parses back.
            assert_eq!(size % 1024, 0);
            assert_eq!(args::parse_size(&format!("{}K", size >> 10)), Ok(size));
        }
        if let Some(mac) = devices::virtio::net::parse_mac(word) {
            let text = mac.map(|b| format!("{b:02x}")).join(":");
            assert_eq!(devices::virtio::net::parse_mac(&text), Some(mac));
        }
        let _ = arch::x86_64::cpuid::parse_features(word);
    }
});
