//! The x86 machine on the scripted Hypervisor.framework (Intel) fake: the backend reports EPT
//! violations with only an address, and the VMM core decodes and emulates the instructions
//! (read from guest memory through the guest's own page tables) against a device on the MMIO
//! bus; port I/O ends the run. The interrupt controller is the VMM's own, since the
//! framework has none.
#![cfg(target_arch = "x86_64")] // x86 guests

use std::sync::{Arc, Mutex};

use devices::BusDevice;
use hypervisor::hvf::x86_64::api::Reg;
use hypervisor::hvf::x86_64::fake::{Event, Exit, FakeHvf};
use hypervisor::hvf::x86_64::HvfX86;
use vm_memory::{Bytes, GuestAddress};
use vmm::{KernelImage, Outcome, SerialOutput, Vm, VmConfig};

const DEVICE: u64 = 0xd100_1000;
const CODE: u64 = 0x8000;

/// (offset, bytes) of every write the device saw.
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;
type FakeVm = Vm<hypervisor::hvf::x86_64::HvfX86Vm<FakeHvf>>;

/// Logs writes; reads return 0x5a in every byte.
#[derive(Default)]
struct Recorder(Writes);

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data.to_vec()));
    }
}

fn vm(hv: &HvfX86<FakeHvf>) -> (FakeVm, Writes) {
    let mut c = VmConfig::new(KernelImage::Bytes(test_guests::DEMO));
    c.memory = 32 << 20;
    c.serial = SerialOutput::None;
    let mut vm = Vm::new(hv, c).expect("create the VM on the fake");
    let log = Arc::new(Mutex::new(Vec::new()));
    let dev = Recorder(log.clone());
    vm.add_mmio_device(Arc::new(Mutex::new(dev)), DEVICE, 0x1000)
        .unwrap();
    (vm, log)
}

#[test]
fn mmio_instructions_are_emulated_by_the_vmm() {
    let hv = HvfX86::new(FakeHvf::default());
    hv.api().script(
        0,
        vec![
            // mov [rbx + 8], eax
            Exit::ept_violation(DEVICE + 8, CODE)
                .with(Reg::Gpr(3), DEVICE)
                .with(Reg::Gpr(0), 0x1122_3344),
            // movzx ecx, word [rbx]
            Exit::ept_violation(DEVICE, CODE + 0x10),
            // lock-free read-modify-write: or dword [rbx + 4], 0x80
            Exit::ept_violation(DEVICE + 4, CODE + 0x20),
            // out 0xf4, al with AL = 0: the guest's exit status
            Exit::io(0xf4, 1, false, 0),
        ],
    );
    let (vm, log) = vm(&hv);
    let code: [(u64, &[u8]); 3] = [
        (CODE, &[0x89, 0x43, 0x08]),
        (CODE + 0x10, &[0x0f, 0xb7, 0x0b]),
        (CODE + 0x20, &[0x81, 0x4b, 0x04, 0x80, 0, 0, 0]),
    ];
    for (at, bytes) in code {
        vm.memory().write_slice(bytes, GuestAddress(at)).unwrap();
    }
    assert_eq!(vm.run().unwrap(), Outcome::DebugExit(0));
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            (8, vec![0x44, 0x33, 0x22, 0x11]),
            (4, vec![0xda, 0x5a, 0x5a, 0x5a]),
        ]
    );
    // After each emulated instruction the guest re-entered past it, with the load's value.
    let runs: Vec<(u64, u64)> = hv
        .api()
        .log()
        .into_iter()
        .map(|Event::Run { rip, rcx, .. }| (rip, rcx))
        .collect();
    assert_eq!(runs[1], (CODE + 3, 0));
    assert_eq!(runs[2], (CODE + 0x13, 0x5a5a));
    assert_eq!(runs[3].0, CODE + 0x27);
}

#[test]
fn an_instruction_the_emulator_refuses_stops_the_vm_with_its_bytes() {
    let hv = HvfX86::new(FakeHvf::default());
    // movaps xmm0, [rbx]
    hv.api().script(
        0,
        vec![Exit::ept_violation(DEVICE, CODE).with(Reg::Gpr(3), DEVICE)],
    );
    let (vm, _) = vm(&hv);
    vm.memory()
        .write_slice(&[0x0f, 0x28, 0x03], GuestAddress(CODE))
        .unwrap();
    match vm.run().unwrap() {
        Outcome::Crash { reason, .. } => assert!(
            reason.contains("the instruction [0f 28 03] is not one vibe-vmm emulates")
                && reason.contains("instruction bytes [0f 28 03"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}
