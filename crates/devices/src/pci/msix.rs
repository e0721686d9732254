//! MSI-X (PCI Local Bus 3.0, section 6.8.2): the capability, the vector table and the
//! pending bit array a function keeps in its BARs, and per-vector and function masking.
//!
//! Each vector has its own [`MsiLine`] from the hypervisor (on KVM a GSI with an MSI route and
//! an irqfd, so a device thread raises it without a VM exit). The message a line carries is
//! brought up to date when the vector fires, not on every table write: drivers write address
//! and data in pieces, and only the finished message matters.

use hypervisor::{MsiLine, MsiMessage};

/// Bytes per table entry: message address (low, high), data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// The capability's ID and length.
pub const CAPABILITY_ID: u8 = 0x11;
pub const CAPABILITY_SIZE: usize = 12;
/// Message control bits.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const VECTOR_MASKED: u32 = 1;

#[derive(Debug, Clone, Copy)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
    /// Address or data changed since the line last got them.
    stale: bool,
}

impl Entry {
    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

/// One vector's table entry as a snapshot keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixEntryState {
    pub address: u64,
    pub data: u32,
    pub control: u32,
}

/// The table and pending bits as a snapshot keeps them (enable and function mask live in
/// configuration space, saved with it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixState {
    pub entries: Vec<MsixEntryState>,
    pub pending: Vec<u64>,
}

pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    lines: Vec<Box<dyn MsiLine>>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// A table with one vector per line, every vector masked (the reset state).
    pub fn new(lines: Vec<Box<dyn MsiLine>>) -> Self {
        let n = lines.len();
        Msix {
            entries: vec![
                Entry {
                    address: 0,
                    data: 0,
                    control: VECTOR_MASKED,
                    stale: true,
                };
                n
            ],
            pending: vec![0; n.div_ceil(64)],
            lines,
            enabled: false,
            function_masked: false,
        }
    }

    pub fn state(&self) -> MsixState {
        MsixState {
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    address: e.address,
                    data: e.data,
                    control: e.control,
                })
                .collect(),
            pending: self.pending.clone(),
        }
    }

    /// Loads a saved table of the same size. Every message is stale: each line gets its
    /// message again ([`Msix::reprogram`], or when the vector next fires).
    pub fn restore(&mut self, s: &MsixState) -> Result<(), String> {
        if s.entries.len() != self.entries.len() || s.pending.len() != self.pending.len() {
            return Err(format!(
                "{} MSI-X vectors ({} pending words) saved, the function has {} ({})",
                s.entries.len(),
                s.pending.len(),
                self.entries.len(),
                self.pending.len()
            ));
        }
        for (e, saved) in self.entries.iter_mut().zip(&s.entries) {
            *e = Entry {
                address: saved.address,
                data: saved.data,
                control: saved.control & VECTOR_MASKED,
                stale: true,
            };
        }
        let n = self.entries.len();
        for (i, (p, saved)) in self.pending.iter_mut().zip(&s.pending).enumerate() {
            // Only bits of vectors the table has.
            let valid = n.saturating_sub(i * 64).min(64);
            let mask = if valid == 64 {
                u64::MAX
            } else {
                (1u64 << valid) - 1
            };
            *p = saved & mask;
        }
        Ok(())
    }

    /// Gives every vector that would be delivered now its current message.
    pub fn reprogram(&mut self) {
        for v in 0..self.vectors() {
            self.program(v);
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes of the table and of the PBA, for laying out the BAR.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability (ID, next, message control, table and PBA offset/BIR) and its write
    /// mask: only the enable and function-mask bits are the driver's.
    pub fn capability(
        &self,
        table: (u8, u32),
        pba: (u8, u32),
    ) -> ([u8; CAPABILITY_SIZE], [u8; CAPABILITY_SIZE]) {
        let mut c = [0u8; CAPABILITY_SIZE];
        c[0] = CAPABILITY_ID;
        let control = self.vectors().saturating_sub(1) & 0x7ff;
        c[2..4].copy_from_slice(&control.to_le_bytes());
        c[4..8].copy_from_slice(&(table.1 | u32::from(table.0)).to_le_bytes());
        c[8..12].copy_from_slice(&(pba.1 | u32::from(pba.0)).to_le_bytes());
        let mut writable = [0u8; CAPABILITY_SIZE];
        writable[3] = ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8;
        (c, writable)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The driver wrote message control; unmasking delivers what was pending.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        if enabled != self.enabled {
            // Debug only: the guest decides how often this happens.
            log::debug!(
                "MSI-X {} ({} vectors)",
                if enabled { "enabled" } else { "disabled" },
                self.vectors()
            );
        }
        self.enabled = enabled;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for v in 0..self.vectors() {
            self.deliver_pending(v);
        }
    }

    /// Raises `vector`: delivered now, or marked pending while masked. Does nothing with
    /// MSI-X disabled (the function uses INTx then) or for a vector it does not have.
    pub fn trigger(&mut self, vector: u16) {
        if !self.enabled {
            return;
        }
        let v = usize::from(vector);
        let Some(e) = self.entries.get(v) else {
            return;
        };
        if e.masked() || self.function_masked {
            self.pending[v / 64] |= 1 << (v % 64);
            return;
        }
        self.send(v);
    }

    fn send(&mut self, v: usize) {
        let e = &mut self.entries[v];
        if e.stale {
            let message = MsiMessage {
                address: e.address,
                data: e.data,
            };
            if let Err(err) = self.lines[v].set_message(Some(message)) {
                log::warn!("MSI-X vector {v}: cannot program the message: {err}");
                return;
            }
            e.stale = false;
        }
        if let Err(err) = self.lines[v].trigger() {
            log::warn!("MSI-X vector {v}: {err}");
        }
    }

    fn deliver_pending(&mut self, vector: u16) {
        let v = usize::from(vector);
        let bit = 1u64 << (v % 64);
        if self.enabled
            && !self.function_masked
            && !self.entries[v].masked()
            && self.pending[v / 64] & bit != 0
        {
            self.pending[v / 64] &= !bit;
            self.send(v);
        }
    }

    /// Whether `vector` would be delivered now (MSI-X enabled, neither it nor the function
    /// masked). If so, its line gets the current message first, so that something outside
    /// the VMM may raise the line directly ([`MsiLine::irqfd`]: a passed-through device).
    pub fn program(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        let Some(e) = self.entries.get_mut(v) else {
            return false;
        };
        if !self.enabled || self.function_masked || e.masked() {
            return false;
        }
        if e.stale {
            let message = MsiMessage {
                address: e.address,
                data: e.data,
            };
            if let Err(err) = self.lines[v].set_message(Some(message)) {
                log::warn!("MSI-X vector {v}: cannot program the message: {err}");
                return false;
            }
            e.stale = false;
        }
        true
    }

    /// The eventfd behind `vector`'s line, if the hypervisor gave it one.
    pub fn irqfd(&self, vector: u16) -> Option<std::os::fd::RawFd> {
        self.lines.get(usize::from(vector))?.irqfd()
    }

    /// A read in the table: aligned 4- or 8-byte accesses; others read 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((v, field)) = self.table_field(offset, data.len()) else {
            return;
        };
        let e = &self.entries[v];
        let words = [
            e.address as u32,
            (e.address >> 32) as u32,
            e.data,
            e.control,
        ];
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&words[field + i].to_le_bytes());
        }
    }

    /// A write in the table: aligned 4- or 8-byte accesses; others are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((v, field)) = self.table_field(offset, data.len()) else {
            return;
        };
        for (i, chunk) in data.chunks(4).enumerate() {
            let value = u32::from_le_bytes(chunk.try_into().unwrap_or_default());
            let e = &mut self.entries[v];
            match field + i {
                0 => e.address = (e.address & !0xffff_ffff) | u64::from(value),
                1 => e.address = (e.address & 0xffff_ffff) | u64::from(value) << 32,
                2 => e.data = value,
                _ => e.control = value & VECTOR_MASKED,
            }
            if field + i < 3 {
                e.stale = true;
            }
        }
        self.deliver_pending(v as u16);
    }

    /// (vector, first dword 0-3) of an aligned access that stays inside one entry.
    fn table_field(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len as u64) {
            return None;
        }
        let v = usize::try_from(offset / ENTRY_SIZE).ok()?;
        (v < self.entries.len()).then_some((v, (offset % ENTRY_SIZE) as usize / 4))
    }

    /// A read in the pending bit array (read-only): aligned 4- or 8-byte accesses.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(data.len() as u64) {
            return;
        }
        let bytes: Vec<u8> = self.pending.iter().flat_map(|w| w.to_le_bytes()).collect();
        if let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o..o + data.len()))
        {
            data.copy_from_slice(src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what a line was told.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl MsiLine for Log {
        fn set_message(&self, m: Option<MsiMessage>) -> std::io::Result<()> {
            let m = m.unwrap_or_default();
            self.0
                .lock()
                .unwrap()
                .push(format!("set {:#x} {:#x}", m.address, m.data));
            Ok(())
        }
        fn trigger(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push("fire".into());
            Ok(())
        }
    }

    fn msix(n: usize) -> (Msix, Vec<Log>) {
        let logs: Vec<Log> = (0..n).map(|_| Log::default()).collect();
        let lines = logs
            .iter()
            .map(|l| Box::new(l.clone()) as Box<dyn MsiLine>)
            .collect();
        (Msix::new(lines), logs)
    }

    fn w32(m: &mut Msix, off: u64, v: u32) {
        m.write_table(off, &v.to_le_bytes());
    }

    fn pba(m: &Msix) -> u64 {
        let mut b = [0; 8];
        m.read_pba(0, &mut b);
        u64::from_le_bytes(b)
    }

    fn events(l: &Log) -> Vec<String> {
        std::mem::take(&mut *l.0.lock().unwrap())
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let (mut m, logs) = msix(3);
        m.set_control(CONTROL_ENABLE);
        w32(&mut m, 16, 0xfee0_0000);
        w32(&mut m, 16 + 8, 0x41);
        m.trigger(1);
        assert_eq!(pba(&m), 0b10, "entries start masked");
        assert!(events(&logs[1]).is_empty());
        w32(&mut m, 16 + 12, 0);
        assert_eq!(events(&logs[1]), ["set 0xfee00000 0x41", "fire"]);
        assert_eq!(pba(&m), 0);
        m.trigger(1);
        assert_eq!(events(&logs[1]), ["fire"], "message sent once");
        // The function mask holds every vector.
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.trigger(1);
        assert_eq!(pba(&m), 0b10);
        m.set_control(CONTROL_ENABLE);
        assert_eq!(events(&logs[1]), ["fire"]);
        // Disabled: nothing at all (the function uses INTx).
        m.set_control(0);
        m.trigger(1);
        assert_eq!(pba(&m), 0);
        assert!(events(&logs[1]).is_empty());
    }

    #[test]
    fn table_reads_back_and_odd_accesses_are_dropped() {
        let (mut m, _) = msix(2);
        m.write_table(16, &0x1_fee0_1000u64.to_le_bytes());
        let mut b = [0; 8];
        m.read_table(16, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x1_fee0_1000);
        let mut b = [0; 4];
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "masked at reset");
        m.write_table(17, &[1, 2, 3, 4]);
        m.write_table(16, &[9]);
        m.write_table(32, &[1, 2, 3, 4]);
        m.write_table(u64::MAX - 3, &[1, 2, 3, 4]);
        m.read_table(16, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xfee0_1000);
        m.read_table(32, &mut b);
        assert_eq!(b, [0; 4], "past the table");
        let (c, w) = m.capability((0, 0x4000), (0, 0x5000));
        assert_eq!(c[..4], [0x11, 0, 1, 0]);
        assert_eq!(u32::from_le_bytes(c[4..8].try_into().unwrap()), 0x4000);
        assert_eq!(w[3], 0xc0);
    }
}
