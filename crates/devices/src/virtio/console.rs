//! virtio-console with one port: queue 0 carries host input to the guest, queue 1 guest output
//! to the host through a [`ConsoleOutput`] (stdout or a file). When the host side does not keep
//! up, the buffer in hand waits in the device and the guest's later buffers stay unused until
//! the output has room again (which re-notifies queue 1): nothing is dropped, nothing blocks.
//!
//! Host input is pushed through a [`ConsoleInputHandle`] from any thread: it buffers the bytes
//! and signals queue 0's notify event, so the event loop fills the guest's receive buffers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use hypervisor::Event;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::state::DeviceSnapshot;
use super::{Pass, VirtioDevice, PASS_CHAINS, TYPE_CONSOLE};
use crate::console_output::ConsoleOutput;
use crate::{lock, ConsoleInput};

pub const QUEUE_SIZE: u16 = 64;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Host input buffered for the guest at most.
const INPUT_CAPACITY: usize = 64 * 1024;
/// The most the device takes from one chain (a descriptor can claim up to 4 GiB); Linux sends
/// at most a page per buffer.
const MAX_CHAIN_BYTES: usize = 64 * 1024;

type InputBuffer = Arc<Mutex<VecDeque<u8>>>;

pub struct Console {
    out: ConsoleOutput,
    input: InputBuffer,
    /// A transmit chain whose bytes the output has not all taken yet: its head, and how many
    /// of `tx_data` went out.
    tx_pending: Option<(u16, usize)>,
    tx_data: Vec<u8>,
}

/// Feeds host input to a [`Console`] from another thread.
pub struct ConsoleInputHandle {
    input: InputBuffer,
    /// Queue 0's notify event, once the device sits behind a transport.
    rx_notify: Option<Event>,
}

impl Console {
    pub fn new(out: ConsoleOutput) -> Self {
        Console {
            out,
            input: Arc::default(),
            tx_pending: None,
            tx_data: Vec::new(),
        }
    }

    /// The output, to be told how to re-notify the transmit queue when it has room.
    pub fn output(&self) -> &ConsoleOutput {
        &self.out
    }

    /// The input side; connect it to the transport's queue 0 notify event before use.
    pub fn input_handle(&self) -> ConsoleInputHandle {
        ConsoleInputHandle {
            input: self.input.clone(),
            rx_notify: None,
        }
    }

    /// Moves guest output from each TX chain to the host output; stops at the first chain the
    /// output cannot take whole, and goes on from there when it is notified again.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        let mut pass = Pass::default();
        for _ in 0..PASS_CHAINS {
            if let Some((head, sent)) = self.tx_pending {
                let sent = sent + self.out.try_write(&self.tx_data[sent..]);
                if sent < self.tx_data.len() {
                    self.tx_pending = Some((head, sent));
                    return pass; // stalled: the output's room callback notifies us again
                }
                self.tx_pending = None;
                if !pass.complete(queue, mem, head, 0) {
                    return pass;
                }
                pass.bytes += sent as u64;
            }
            let Some(chain) = pass.next_chain(queue, mem) else {
                return pass;
            };
            let head = chain.head_index();
            self.tx_data.clear();
            for d in chain.filter(|d| !d.is_write_only()) {
                let start = self.tx_data.len();
                let n = (d.len() as usize).min(MAX_CHAIN_BYTES - start);
                self.tx_data.resize(start + n, 0);
                if mem
                    .read_slice(&mut self.tx_data[start..], d.addr())
                    .is_err()
                {
                    self.tx_data.truncate(start);
                    break;
                }
            }
            self.tx_pending = Some((head, 0));
        }
        pass.more = true;
        pass
    }

    /// Fills the guest's receive buffers with pending input.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        let mut pass = Pass::default();
        let mut input = lock(&self.input);
        for _ in 0..PASS_CHAINS {
            if input.is_empty() {
                return pass;
            }
            let Some(chain) = pass.next_chain(queue, mem) else {
                return pass;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for d in chain.filter(|d| d.is_write_only()) {
                let n = (d.len() as usize).min(input.len());
                if mem
                    .write_slice(&input.make_contiguous()[..n], d.addr())
                    .is_err()
                {
                    break;
                }
                input.drain(..n);
                written += n as u32;
                if input.is_empty() {
                    break;
                }
            }
            if !pass.complete(queue, mem, head, written) {
                return pass;
            }
            pass.bytes += u64::from(written);
        }
        pass.more = true;
        pass
    }
}

impl ConsoleInputHandle {
    /// Input wakes the receive queue through `rx_notify` (the transport's queue 0 event).
    pub fn connect(&mut self, rx_notify: Event) {
        self.rx_notify = Some(rx_notify);
    }
}

impl ConsoleInput for ConsoleInputHandle {
    fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let n = {
            let mut input = lock(&self.input);
            let n = bytes.len().min(INPUT_CAPACITY - input.len());
            input.extend(&bytes[..n]);
            n
        };
        if let (true, Some(evt)) = (n > 0, &self.rx_notify) {
            let _ = evt.signal();
        }
        n
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No size, multiport or emergency-write features: the config space is all zeros.
        data.fill(0);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Pass {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => Pass::default(),
        }
    }

    fn save_state(&self) -> DeviceSnapshot {
        DeviceSnapshot::Console {
            input: lock(&self.input).iter().copied().collect(),
            tx_pending: self
                .tx_pending
                .map(|(head, sent)| (head, self.tx_data.get(sent..).unwrap_or_default().to_vec())),
        }
    }

    fn restore_state(&mut self, saved: &DeviceSnapshot) -> Result<(), String> {
        let DeviceSnapshot::Console { input, tx_pending } = saved else {
            return Err("saved state of another kind of device".into());
        };
        if input.len() > INPUT_CAPACITY {
            return Err(format!(
                "{} bytes of input saved, the device holds at most {INPUT_CAPACITY}",
                input.len()
            ));
        }
        if tx_pending
            .as_ref()
            .is_some_and(|(_, d)| d.len() > MAX_CHAIN_BYTES)
        {
            return Err(format!(
                "a transmit chain of more than {MAX_CHAIN_BYTES} bytes saved"
            ));
        }
        *lock(&self.input) = input.iter().copied().collect();
        self.tx_data = tx_pending
            .as_ref()
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        self.tx_pending = tx_pending.as_ref().map(|(head, _)| (*head, 0));
        Ok(())
    }

    // Host input survives a device reset: it is the user's typing, not device state, and a
    // driver resets the device before it first posts buffers.
    fn reset(&mut self) {
        self.tx_pending = None;
    }
}
