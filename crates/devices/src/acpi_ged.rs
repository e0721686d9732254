//! The ACPI Generic Event Device (GED) of a hardware-reduced platform, and the power button
//! that is its one event so far.
//!
//! A hardware-reduced platform has no SCI and no fixed-feature event registers, so an event
//! is an interrupt plus a register: the VMM sets the event's bit in the event status register
//! and pulses the GED's interrupt line (an edge); the guest's ACPI interpreter runs the DSDT's
//! `_EVT` method, which reads the register (the read clears it) and notifies the device behind
//! each bit set (arch's `acpi.rs` writes that AML). A press that arrives while `_EVT` runs
//! sets the bit again and pulses again, so no press is lost; presses before the guest looks
//! coalesce into one, as on a real button.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use hypervisor::IrqLine;

use crate::BusDevice;

/// One byte-wide register: the pending events.
pub const PORT_RANGE: u64 = 1;
/// The power button's bit in the event status register.
pub const EVENT_POWER_BUTTON: u8 = 1 << 0;

/// What the register and the button share.
struct Events {
    pending: AtomicU8,
    irq: Box<dyn IrqLine>,
}

/// The event status register, on the bus.
pub struct Ged {
    events: Arc<Events>,
}

/// Presses the power button from any thread (the API socket, a test).
#[derive(Clone)]
pub struct PowerButton(Arc<Events>);

impl Ged {
    /// A GED raising `irq` (edge) for each event.
    pub fn new(irq: Box<dyn IrqLine>) -> Self {
        Ged {
            events: Arc::new(Events {
                pending: AtomicU8::new(0),
                irq,
            }),
        }
    }

    pub fn power_button(&self) -> PowerButton {
        PowerButton(self.events.clone())
    }
}

impl PowerButton {
    /// Sets the power-button event and raises the GED's interrupt. What follows is the
    /// guest's choice: Linux hands a KEY_POWER press to user space, which powers off.
    pub fn press(&self) -> io::Result<()> {
        self.0
            .pending
            .fetch_or(EVENT_POWER_BUTTON, Ordering::AcqRel);
        self.0.irq.trigger()
    }
}

impl BusDevice for Ged {
    fn name(&self) -> String {
        "acpi-ged".into()
    }

    /// Reading the register takes the pending events; any byte past the first reads 0.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (0, Some(first)) = (offset, data.first_mut()) {
            *first = self.events.pending.swap(0, Ordering::AcqRel);
        }
    }

    /// The register is read-only (the DSDT's field writes zeros, if anything).
    fn write(&mut self, offset: u64, data: &[u8]) {
        log::debug!("acpi-ged: ignored write {data:?} at offset {offset}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct CountingLine(Arc<AtomicUsize>);

    impl IrqLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn a_press_raises_the_line_and_a_read_takes_the_event_once() {
        let count = Arc::new(AtomicUsize::new(0));
        let mut ged = Ged::new(Box::new(CountingLine(count.clone())));
        let button = ged.power_button();
        let mut b = [0xffu8];
        ged.read(0, &mut b);
        assert_eq!(b[0], 0, "nothing pending yet");

        button.press().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Two presses before the guest looks are one event, each with its edge.
        button.press().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        ged.read(0, &mut b);
        assert_eq!(b[0], EVENT_POWER_BUTTON);
        ged.read(0, &mut b);
        assert_eq!(b[0], 0, "the read cleared it");

        // Writes change nothing; wide and out-of-range reads stay in bounds.
        button.press().unwrap();
        ged.write(0, &[0xff]);
        let mut wide = [0xffu8; 4];
        ged.read(0, &mut wide);
        assert_eq!(wide, [EVENT_POWER_BUTTON, 0, 0, 0]);
        ged.read(7, &mut b);
        assert_eq!(b[0], 0);
        ged.read(0, &mut []);
    }
}
