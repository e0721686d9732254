//! The debug-exit port: a guest writes one byte to port 0xf4 and the VM ends with that byte as
//! the process exit status. How test guests report their result.

use std::sync::Arc;

use crate::{BusDevice, StopReason, VmControl};

pub const DEBUG_EXIT_PORT: u64 = 0xf4;

pub struct DebugExit {
    vm: Arc<dyn VmControl>,
}

impl DebugExit {
    pub fn new(vm: Arc<dyn VmControl>) -> Self {
        DebugExit { vm }
    }
}

impl BusDevice for DebugExit {
    fn name(&self) -> String {
        "debug-exit".into()
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.vm.request_stop(StopReason::DebugExit(code));
        }
    }
}
