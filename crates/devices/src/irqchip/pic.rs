//! The PC's pair of 8259A interrupt controllers (ports 0x20-0x21 and 0xa0-0xa1) as registers
//! only, for the userspace irqchip on a machine without ACPI: Linux looks for a PIC by writing
//! its mask register and reading it back, and without one it gives legacy IRQs 0-15 (the PIT's
//! tick among them) no fixed numbers. The guest finds one, initialises it and masks it, as a
//! PC with an IOAPIC does; every line reaches the guest through the IOAPIC, so these chips
//! never raise an interrupt (IRR and ISR read 0, polling finds nothing).

/// Master at 0x20-0x21, slave at 0xa0-0xa1.
pub const MASTER_PORT: u64 = 0x20;
pub const SLAVE_PORT: u64 = 0xa0;
pub const PORT_COUNT: u64 = 2;

const ICW1: u8 = 1 << 4;
const ICW1_NEEDS_ICW4: u8 = 1 << 0;
const ICW1_SINGLE: u8 = 1 << 1;

/// Where an initialisation sequence stands: the next byte to port 1 is this ICW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Init {
    #[default]
    Done,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone, Default)]
pub struct Pic {
    imr: u8,
    init: Init,
    single: bool,
    needs_icw4: bool,
}

impl Pic {
    /// A read of port `base + offset`.
    pub fn read_register(&self, offset: u64) -> u8 {
        if offset == 1 {
            return self.imr;
        }
        // IRR, ISR (OCW3 picks) or a poll: nothing is ever requested or in service.
        0
    }

    /// A write to port `base + offset`.
    pub fn write_register(&mut self, offset: u64, value: u8) {
        if offset == 0 {
            if value & ICW1 != 0 {
                // ICW1 starts initialisation: the mask clears, ICW2 comes next.
                self.imr = 0;
                self.single = value & ICW1_SINGLE != 0;
                self.needs_icw4 = value & ICW1_NEEDS_ICW4 != 0;
                self.init = Init::Icw2;
            }
            // OCW2 (EOI, rotation) and OCW3 (which register port 0 reads, polling): nothing
            // is requested or in service, so both change nothing.
            return;
        }
        self.init = match self.init {
            Init::Done => {
                self.imr = value;
                Init::Done
            }
            // The vector base: unused, as no vector is ever delivered.
            Init::Icw2 => match (self.single, self.needs_icw4) {
                (false, _) => Init::Icw3,
                (true, true) => Init::Icw4,
                (true, false) => Init::Done,
            },
            Init::Icw3 if self.needs_icw4 => Init::Icw4,
            Init::Icw3 | Init::Icw4 => Init::Done,
        };
    }
}

impl crate::BusDevice for Pic {
    fn name(&self) -> String {
        "pic".into()
    }
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.read_register(offset);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.write_register(offset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_finds_initialises_and_masks_it() {
        let (mut master, mut slave) = (Pic::default(), Pic::default());
        // probe_8259A: mask the slave, write a probe mask to the master, read it back.
        slave.write_register(1, 0xff);
        master.write_register(1, 0xfb);
        assert_eq!(master.read_register(1), 0xfb);
        // init_8259A: ICW1-4 to each, then the masks.
        for (pic, base, cascade) in [(&mut master, 0x30, 0x04), (&mut slave, 0x38, 0x02)] {
            pic.write_register(0, 0x11);
            pic.write_register(1, base);
            pic.write_register(1, cascade);
            pic.write_register(1, 0x01);
            assert_eq!(pic.init, Init::Done);
            pic.write_register(1, 0xff);
            assert_eq!(pic.read_register(1), 0xff, "the mask after initialisation");
        }
        // OCW3: read ISR, then IRR; both empty. EOIs change nothing.
        master.write_register(0, 0x0b);
        assert_eq!(master.read_register(0), 0);
        master.write_register(0, 0x0a);
        master.write_register(0, 0x20);
        assert_eq!(master.read_register(0), 0);
        assert_eq!(master.read_register(1), 0xff);
    }

    #[test]
    fn a_single_pic_without_icw4_takes_only_icw2() {
        let mut p = Pic::default();
        p.write_register(0, 0x12); // ICW1: single, no ICW4
        p.write_register(1, 0x20);
        p.write_register(1, 0x5a); // an OCW1 already
        assert_eq!(p.read_register(1), 0x5a);
    }
}
