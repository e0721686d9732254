//! The x86 machine on the scripted Hypervisor.framework (Intel) fake: the backend reports EPT
//! violations with only an address, and the VMM core decodes and emulates the instructions
//! (read from guest memory through the guest's own page tables) against a device on the MMIO
//! bus; port I/O ends the run. The interrupt controller is the VMM's own, since the
//! framework has none. What the emulator cannot complete (an unmapped operand, a supervisor
//! page at CPL 3, an instruction it does not do) becomes an exception injected into the guest,
//! not a stopped VM.
#![cfg(target_arch = "x86_64")] // x86 guests

use std::sync::{Arc, Mutex};

use arch::x86_64::gdt;
use arch::x86_64::mmu::{PF_PRESENT, PF_USER, PF_WRITE};
use devices::BusDevice;
use hypervisor::hvf::x86_64::api::Reg;
use hypervisor::hvf::x86_64::fake::{Event, Exit, FakeHvf};
use hypervisor::hvf::x86_64::vmcs::{
    GUEST_CR3, GUEST_ES_AR, INTERRUPTION_ERROR_CODE, INTERRUPTION_HW_EXCEPTION, INTERRUPTION_VALID,
    SEGMENT_STRIDE,
};
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

/// The entries into the guest: (RIP, CR2, interruption info, its error code).
fn entries(hv: &HvfX86<FakeHvf>) -> Vec<(u64, u64, u64, u64)> {
    hv.api()
        .log()
        .into_iter()
        .map(
            |Event::Run {
                 rip,
                 cr2,
                 interruption,
                 error_code,
                 ..
             }| (rip, cr2, interruption, error_code),
        )
        .collect()
}

const UD: u64 = 6 | INTERRUPTION_HW_EXCEPTION | INTERRUPTION_VALID;
const PF: u64 = 14 | INTERRUPTION_HW_EXCEPTION | INTERRUPTION_ERROR_CODE | INTERRUPTION_VALID;

#[test]
fn an_instruction_the_emulator_refuses_is_an_invalid_opcode_for_the_guest() {
    let hv = HvfX86::new(FakeHvf::default());
    // movaps xmm0, [rbx], then the guest's #UD handler ends the run.
    hv.api().script(
        0,
        vec![
            Exit::ept_violation(DEVICE, CODE).with(Reg::Gpr(3), DEVICE),
            Exit::io(0xf4, 1, false, 0),
        ],
    );
    let (vm, log) = vm(&hv);
    vm.memory()
        .write_slice(&[0x0f, 0x28, 0x03], GuestAddress(CODE))
        .unwrap();
    assert_eq!(vm.run().unwrap(), Outcome::DebugExit(0));
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(
        entries(&hv)[1],
        (CODE, 0, UD, 0),
        "#UD, RIP on the instruction"
    );
}

#[test]
fn an_unmapped_operand_is_a_page_fault_for_the_guest() {
    let hv = HvfX86::new(FakeHvf::default());
    // Beyond the 4 GiB the boot page tables map.
    let unmapped = 0x1_2345_6ff0u64;
    hv.api().script(
        0,
        vec![
            // mov [rbx], eax
            Exit::ept_violation(DEVICE, CODE).with(Reg::Gpr(3), unmapped),
            // mov eax, [rbx]: a read this time
            Exit::ept_violation(DEVICE, CODE + 0x10),
            Exit::io(0xf4, 1, false, 0),
        ],
    );
    let (vm, log) = vm(&hv);
    vm.memory()
        .write_slice(&[0x89, 0x03], GuestAddress(CODE))
        .unwrap();
    vm.memory()
        .write_slice(&[0x8b, 0x03], GuestAddress(CODE + 0x10))
        .unwrap();
    assert_eq!(vm.run().unwrap(), Outcome::DebugExit(0));
    assert!(log.lock().unwrap().is_empty());
    let e = entries(&hv);
    // Not present, a supervisor write; then a read: CR2 the operand, RIP on the instruction.
    assert_eq!(e[1], (CODE, unmapped, PF, PF_WRITE.into()));
    assert_eq!(e[2], (CODE + 0x10, unmapped, PF, 0));
}

/// Where `user_tables` puts its page tables.
const TABLES: u64 = 0x50_0000;

/// Long-mode page tables at TABLES that map the code page for user mode and the device page
/// for the supervisor only.
fn user_tables(vm: &FakeVm) {
    let m = vm.memory();
    let put = |at: u64, entry: u64| m.write_obj(entry, GuestAddress(at)).unwrap();
    let (p, rw, us) = (1, 2, 4);
    put(TABLES, (TABLES + 0x1000) | p | rw | us);
    put(TABLES + 0x1000, (TABLES + 0x2000) | p | rw | us);
    put(TABLES + 0x2000, (TABLES + 0x3000) | p | rw | us);
    put(TABLES + 0x3000 + (CODE >> 12) * 8, CODE | p | us);
    put(TABLES + 0x1000 + 3 * 8, (TABLES + 0x4000) | p | rw | us);
    put(
        TABLES + 0x4000 + ((DEVICE >> 21) & 0x1ff) * 8,
        (TABLES + 0x5000) | p | rw | us,
    );
    put(
        TABLES + 0x5000 + ((DEVICE >> 12) & 0x1ff) * 8,
        DEVICE | p | rw,
    );
}

#[test]
fn user_code_cannot_reach_a_supervisor_mmio_page() {
    let hv = HvfX86::new(FakeHvf::default());
    // The guest is at CPL 3 (SS.DPL 3); the boot page tables are supervisor-only.
    let data = gdt::segment(&gdt::BOOT_GDT, gdt::DATA_SELECTOR);
    let user_ss = u64::from(data.access_rights() | (3 << 5));
    hv.api().script(
        0,
        vec![
            // rep stosb into the device
            Exit::ept_violation(DEVICE, CODE)
                .with(Reg::Gpr(7), DEVICE)
                .with(Reg::Gpr(1), 4)
                .with_vmcs(GUEST_ES_AR + 2 * SEGMENT_STRIDE, user_ss)
                .with_vmcs(GUEST_CR3, TABLES),
            Exit::io(0xf4, 1, false, 0),
        ],
    );
    let (vm, log) = vm(&hv);
    user_tables(&vm);
    vm.memory()
        .write_slice(&[0xf3, 0xaa], GuestAddress(CODE))
        .unwrap();
    assert_eq!(vm.run().unwrap(), Outcome::DebugExit(0));
    assert!(log.lock().unwrap().is_empty(), "nothing reached the device");
    let code = PF_PRESENT | PF_WRITE | PF_USER;
    assert_eq!(entries(&hv)[1], (CODE, DEVICE, PF, code.into()));
}
