//! arm64 exit logic that every arm64 backend (HVF on Apple Silicon, KVM on arm64) needs, in
//! portable Rust so it is tested on any host: decoding data-abort syndromes into MMIO accesses
//! ([`esr`]) and the PSCI firmware interface ([`psci`]).

pub mod esr;
pub mod psci;
