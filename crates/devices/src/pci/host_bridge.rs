//! The host bridge at 00.0: it only identifies itself (class 06:00, a host bridge), as
//! operating systems expect function 0 of device 0 to. Its windows are described in ACPI.

use super::config::{Identity, PciConfig};
use super::{Bar, PciDevice};

/// Intel's vendor ID with a host-bridge device ID, as other VMMs present.
pub const VENDOR: u16 = 0x8086;
pub const DEVICE: u16 = 0x0d57;

pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfig::new(Identity {
                vendor: VENDOR,
                device: DEVICE,
                revision: 0,
                class: 0x06_00_00,
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn decoded_bars(&self) -> Vec<Bar> {
        Vec::new()
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
