//! arm64 `virt`-style platform: the guest memory map, loading a Linux `Image`, and the device
//! tree the kernel boots with.
//!
//! Portable Rust: it compiles and is tested on any host (the HVF arm64 backend that will run
//! it needs a Mac). `dtc` checks the device tree in the tests.

pub mod fdt;
pub mod image;
pub mod layout;
