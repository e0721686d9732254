//! What a virtio device has done, for the VMM's statistics: per queue, the chains it
//! completed, the bytes it moved and the chains it refused or failed; per device, the
//! interrupts it raised.
//!
//! The device's [`DeviceState`](super::state::DeviceState) adds each queue pass's totals
//! ([`Pass`]) and each interrupt it raises, under the transport's lock; the statistics read
//! the counters from another thread without taking that lock.

use super::{Pass, TYPE_BLOCK, TYPE_CONSOLE, TYPE_NET};
use crate::counter::Counter;

/// One queue's totals.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Chains returned to the driver.
    pub requests: Counter,
    /// Data bytes the device moved between guest memory and its back end.
    pub bytes: Counter,
    /// Chains answered with an error, or dropped as malformed.
    pub errors: Counter,
}

#[derive(Debug)]
pub struct DeviceCounters {
    device_type: u32,
    queues: Box<[QueueCounters]>,
    /// Used-buffer notifications raised (virtio 1.x 2.3).
    pub used_interrupts: Counter,
    /// Configuration-change notifications raised (NEEDS_RESET among them).
    pub config_interrupts: Counter,
}

impl DeviceCounters {
    pub fn new(device_type: u32, queues: usize) -> Self {
        DeviceCounters {
            device_type,
            queues: (0..queues).map(|_| QueueCounters::default()).collect(),
            used_interrupts: Counter::default(),
            config_interrupts: Counter::default(),
        }
    }

    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    pub fn queues(&self) -> &[QueueCounters] {
        &self.queues
    }

    /// Adds what one pass over queue `index` did.
    pub(crate) fn pass(&self, index: usize, pass: &Pass) {
        if let Some(q) = self.queues.get(index) {
            if pass.requests > 0 {
                q.requests.add(u64::from(pass.requests));
                q.bytes.add(pass.bytes);
                q.errors.add(u64::from(pass.errors));
            }
        }
    }

    /// Counts the interrupt status bits just raised.
    pub(crate) fn raised(&self, bits: u32) {
        if bits & super::state::INT_VRING != 0 {
            self.used_interrupts.add(1);
        }
        if bits & super::state::INT_CONFIG != 0 {
            self.config_interrupts.add(1);
        }
    }
}

/// What queue `index` of a device of `device_type` carries, for people reading statistics.
pub fn queue_name(device_type: u32, index: usize) -> &'static str {
    match (device_type, index) {
        (TYPE_BLOCK, 0) => "requests",
        (TYPE_NET | TYPE_CONSOLE, 0) => "rx",
        (TYPE_NET | TYPE_CONSOLE, 1) => "tx",
        _ => "queue",
    }
}

/// The short name of a device type ("virtio-blk").
pub fn type_name(device_type: u32) -> &'static str {
    match device_type {
        TYPE_NET => "virtio-net",
        TYPE_BLOCK => "virtio-blk",
        TYPE_CONSOLE => "virtio-console",
        _ => "virtio",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_and_interrupts_add_up_per_queue() {
        let c = DeviceCounters::new(TYPE_NET, 2);
        let pass = Pass {
            used: true,
            requests: 3,
            bytes: 100,
            errors: 1,
            ..Default::default()
        };
        c.pass(1, &pass);
        c.pass(1, &pass);
        c.pass(7, &pass); // no such queue: ignored
        c.raised(super::super::state::INT_VRING | super::super::state::INT_CONFIG);
        c.raised(super::super::state::INT_VRING);
        let q = &c.queues()[1];
        assert_eq!(
            (q.requests.get(), q.bytes.get(), q.errors.get()),
            (6, 200, 2)
        );
        assert_eq!(c.queues()[0].requests.get(), 0);
        assert_eq!(c.used_interrupts.get(), 2);
        assert_eq!(c.config_interrupts.get(), 1);
        assert_eq!(queue_name(TYPE_NET, 1), "tx");
        assert_eq!(type_name(TYPE_BLOCK), "virtio-blk");
    }
}
