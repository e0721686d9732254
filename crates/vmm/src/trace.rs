//! The exit trace (`--trace exits[=FILTER]`): one readable line per VM exit, for learning what
//! a guest asks of its VMM. Off, it costs the vCPU loop one branch per exit; on, each line is
//! written as the exit happens, from the vCPU thread (so the guest runs much slower).
//!
//! ```text
//! vcpu0 pio_in             port 0x03fd size 1 value 0x60 <- serial  rip 0x10001a [ec]
//! vcpu0 pio_out            port 0x03f8 size 1 value 0x48 -> serial  rip 0x100025
//! ```

use std::io::Write;
use std::sync::Mutex;

use crate::stats::ExitKind;

/// Which exits to trace: every kind, or the kinds listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// `None`: every exit.
    kinds: Option<Vec<ExitKind>>,
}

impl TraceFilter {
    /// Parses what follows `--trace`: `exits` (every exit) or `exits=LIST`, where the list
    /// names exit kinds (`pio_out`, `mmio_read`, `hlt`, ...; see [`ExitKind::name`]) or the
    /// groups `pio` and `mmio`, separated by commas.
    pub fn parse(s: &str) -> Result<TraceFilter, String> {
        let list = match s.split_once('=') {
            None if s == "exits" => return Ok(TraceFilter::default()),
            Some(("exits", list)) => list,
            _ => return Err(format!("{s:?}: expected exits or exits=KIND,KIND,...")),
        };
        let mut kinds = Vec::new();
        for name in list.split(',') {
            match name {
                "pio" => kinds.extend([ExitKind::PioIn, ExitKind::PioOut, ExitKind::PioString]),
                "mmio" => kinds.extend([
                    ExitKind::MmioRead,
                    ExitKind::MmioWrite,
                    ExitKind::MmioEmulated,
                ]),
                _ => kinds.push(ExitKind::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = ExitKind::ALL.iter().map(|k| k.name()).collect();
                    format!(
                        "{name:?} is not an exit kind (pio, mmio, {})",
                        known.join(", ")
                    )
                })?),
            }
        }
        Ok(TraceFilter { kinds: Some(kinds) })
    }

    pub fn wants(&self, kind: ExitKind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
}

/// Where trace lines go, and which exits they describe.
pub struct TraceConfig {
    pub filter: TraceFilter,
    pub out: Box<dyn Write + Send>,
}

/// A running trace: the filter, the writer, and the bus devices by index (for their names).
pub(crate) struct Trace {
    filter: TraceFilter,
    out: Mutex<Box<dyn Write + Send>>,
    pub pio: Vec<(u64, u64, String)>,
    pub mmio: Vec<(u64, u64, String)>,
}

impl Trace {
    pub(crate) fn new(
        config: TraceConfig,
        pio: Vec<(u64, u64, String)>,
        mmio: Vec<(u64, u64, String)>,
    ) -> Self {
        Trace {
            filter: config.filter,
            out: Mutex::new(config.out),
            pio,
            mmio,
        }
    }

    #[inline]
    pub(crate) fn wants(&self, kind: ExitKind) -> bool {
        self.filter.wants(kind)
    }

    /// Writes one line: vCPU, kind, the access, where the guest was.
    pub(crate) fn line(&self, vcpu: u32, kind: ExitKind, access: &str, at: &str) {
        let mut line = format!("vcpu{vcpu} {:<18}", kind.name());
        if !access.is_empty() {
            line.push(' ');
            line.push_str(access);
        }
        if !at.is_empty() {
            line.push_str("  ");
            line.push_str(at);
        }
        line.push('\n');
        let mut out = devices::lock(&self.out);
        // A trace that cannot be written (a closed pipe) is not worth stopping the guest for.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let all = TraceFilter::parse("exits").unwrap();
        assert!(all.wants(ExitKind::Halt));
        let some = TraceFilter::parse("exits=pio,hlt").unwrap();
        assert!(some.wants(ExitKind::PioOut) && some.wants(ExitKind::Halt));
        assert!(!some.wants(ExitKind::MmioRead));
        assert!(TraceFilter::parse("exits=bogus")
            .unwrap_err()
            .contains("bogus"));
        assert!(TraceFilter::parse("irqs").is_err());
    }
}
