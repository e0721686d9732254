//! Hypervisor.framework backends (macOS).
//!
//! Each backend is written against a small Rust trait over the framework's C calls (its `Api`)
//! and is generic over it: on a Mac the `ffi` module implements the trait with `extern "C"`
//! declarations, everywhere else a scripted fake does, so all of the exit handling compiles
//! and is tested on Linux. Only the `ffi` files are macOS-only, and they are kept to one
//! line per call.

pub mod arm64;
