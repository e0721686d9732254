//! virtio-console with one port: queue 0 carries host input to the guest, queue 1 guest output
//! to the host (a writer: stdout or a file).
//!
//! Host input is pushed through a [`ConsoleInputHandle`] from any thread: it buffers the bytes
//! and signals queue 0's notify event, so the event loop fills the guest's receive buffers.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use hypervisor::Event;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{VirtioDevice, TYPE_CONSOLE};
use crate::{lock, ConsoleInput};

pub const QUEUE_SIZE: u16 = 64;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Host input buffered for the guest at most.
const INPUT_CAPACITY: usize = 64 * 1024;
/// The most the device copies out of one guest buffer (a descriptor can claim up to 4 GiB).
const MAX_CHUNK: u32 = 64 * 1024;

type InputBuffer = Arc<Mutex<VecDeque<u8>>>;

pub struct Console {
    out: Box<dyn Write + Send>,
    input: InputBuffer,
}

/// Feeds host input to a [`Console`] from another thread.
pub struct ConsoleInputHandle {
    input: InputBuffer,
    /// Queue 0's notify event, once the device sits behind a transport.
    rx_notify: Option<Event>,
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Console {
            out,
            input: Arc::default(),
        }
    }

    /// The input side; connect it to the transport's queue 0 notify event before use.
    pub fn input_handle(&self) -> ConsoleInputHandle {
        ConsoleInputHandle {
            input: self.input.clone(),
            rx_notify: None,
        }
    }

    /// Copies guest output from each TX chain's readable buffers to the host writer.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let mut chunk = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            for d in chain.filter(|d| !d.is_write_only()) {
                chunk.resize(d.len().min(MAX_CHUNK) as usize, 0);
                if mem.read_slice(&mut chunk, d.addr()).is_ok() {
                    let _ = self.out.write_all(&chunk);
                }
            }
            let _ = self.out.flush();
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Fills the guest's receive buffers with pending input.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let mut input = lock(&self.input);
        while !input.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
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
            if queue.add_used(mem, head, written).is_err() {
                break;
            }
            used = true;
        }
        used
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

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => false,
        }
    }

    // Host input survives a device reset: it is the user's typing, not device state, and a
    // driver resets the device before it first posts buffers.
}
