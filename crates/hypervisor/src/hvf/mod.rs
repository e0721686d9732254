//! Hypervisor.framework backends (macOS): Apple Silicon ([`arm64`]) and Intel (`x86_64`).
//!
//! Each backend is written against a small Rust trait over the framework's C calls (its `Api`)
//! and is generic over it: on a Mac the `ffi` module implements the trait with `extern "C"`
//! declarations, everywhere else a scripted fake does, so all of the exit handling compiles
//! and is tested on Linux. Only the `ffi` files are macOS-only, and they are kept to one
//! line per call.

pub mod arm64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// Turns a framework return code (`hv_return_t`, 0 = success) into a result naming the call.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) fn check(op: &'static str, rc: i32) -> crate::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(crate::Error::Hvf { op, code: rc })
    }
}
