/*
 * A passed-through function's interrupts, each kind it offers in turn: the fake VFIO device
 * of crates/vfio/src/fake.rs (1b36:0100), whose DMA completion raises INTx, or the MSI or
 * MSI-X vector its VECTOR register names, whichever is on.
 *
 * 1. INTx: routes the IOAPIC pin of its interrupt line, level-triggered, to vector 0x41,
 *    and takes it twice: the second comes only if the EOI of the first unmasked the line
 *    at the device (VFIO's unmask, through KVM's resample or the VMM's IOAPIC).
 * 2. MSI, if the function shows it: 2 vectors to MSI_VECTOR (the data's low bit is the
 *    vector); the completion on vector 1 arrives at MSI_VECTOR + 1.
 * 3. MSI-X, if the function shows it: MSI off, MSI-X vector 0 to MSI_VECTOR; the
 *    completion arrives there.
 * Prints a line for each; exits 0 or the failed check's number.
 */
#include "common.S"
#include "pci.S"

#define FAKE_ID     0x01001b36
#define IOAPIC      0xfec00000
#define INTX_VECTOR 0x41
#define LEVEL       0x8000
#define DST         0x80000
#define CAP_MSI     0x05

main:
    call irq_init
    mov edi, INTX_VECTOR
    lea rax, [rip + intx_handler]
    call idt_set
    mov al, 0xff                                    /* 8259s masked */
    out 0x21, al
    out 0xa1, al
    mov edi, FAKE_ID
    call pci_find_device
    mov r12d, eax
    cmp eax, -1
    mov al, 10
    je 9f
    lea edi, [r12 + PCI_BAR0]
    call pci_read32
    and eax, 0xfffffff0
    mov r14d, eax
    lea edi, [r12 + PCI_COMMAND]                    /* memory space, bus master */
    call pci_read16
    or eax, CMD_MEMORY | CMD_MASTER
    call pci_write16

    lea edi, [r12 + PCI_INTERRUPT]                  /* 1. INTx: line | pin << 8 */
    call pci_read32
    movzx r13d, al
    cmp ah, 1
    mov al, 11
    jne 9f
    mov rdi, IOAPIC                                 /* pin line -> INTX_VECTOR, level, */
    lea eax, [r13 * 2 + 0x10 + 1]                   /* APIC 0 */
    mov [rdi], eax
    mov dword ptr [rdi + 0x10], 0
    dec eax
    mov [rdi], eax
    mov dword ptr [rdi + 0x10], INTX_VECTOR | LEVEL
    xor esi, esi
    call dma
    mov al, 12
    jnz 9f
    lea rdi, [rip + intx_count]
    mov esi, 1
    call wait_irq
    test eax, eax
    mov al, 13
    jnz 9f
    xor esi, esi
    call dma
    mov al, 14
    jnz 9f
    lea rdi, [rip + intx_count]
    mov esi, 2
    call wait_irq
    test eax, eax
    mov al, 15
    jnz 9f
    lea rsi, [rip + s_intx]
    call puts

    mov edi, r12d                                   /* 2. MSI */
    mov esi, CAP_MSI
    xor edx, edx
    call pci_find_cap
    mov r13d, eax
    test eax, eax
    jz 3f
    lea edi, [r12 + r13 + 4]                        /* address (64-bit capability) */
    mov eax, MSI_ADDRESS
    call pci_write32
    add edi, 4
    xor eax, eax
    call pci_write32
    add edi, 4                                      /* data */
    mov eax, MSI_VECTOR
    call pci_write16
    lea edi, [r12 + r13 + 2]                        /* enable, 2 vectors */
    mov eax, 0x11
    call pci_write16
    mov esi, 1
    call dma
    mov al, 20
    jnz 9f
    lea rdi, [rip + msi_count + 4]
    mov esi, 1
    call wait_irq
    test eax, eax
    mov al, 21
    jnz 9f
    cmp dword ptr [rip + intx_count], 2             /* and no INTx meanwhile */
    mov al, 22
    jne 9f
    lea rsi, [rip + s_msi]
    call puts

3:  mov edi, r12d                                   /* 3. MSI-X */
    mov esi, CAP_MSIX
    xor edx, edx
    call pci_find_cap
    test eax, eax
    jz 8f
    mov r15d, eax
    test r13d, r13d                                 /* MSI off first, if it was on */
    jz 4f
    lea edi, [r12 + r13 + 2]
    xor eax, eax
    call pci_write16
4:  lea edi, [r12 + r15 + 4]                        /* MSI-X table: offset | BIR */
    call pci_read32
    mov ecx, eax
    and ecx, 7
    and eax, -8
    push rax
    lea edi, [r12 + rcx * 4 + PCI_BAR0]
    call pci_read32
    and eax, 0xfffffff0
    pop rcx
    add rax, rcx
    lea rbx, [rip + vp]
    mov [rbx + VP_MSIX_TABLE], rax
    mov [rbx + VP_CFG], r12d
    mov [rbx + VP_MSIX_CAP], r15d
    mov edx, 1
    mov ecx, MSI_VECTOR
    call msix_setup
    mov eax, [rip + msi_count]
    mov [rip + before], eax
    xor esi, esi
    call dma
    mov al, 30
    jnz 9f
    lea rdi, [rip + msi_count]
    mov esi, [rip + before]
    inc esi
    call wait_irq
    test eax, eax
    mov al, 31
    jnz 9f
    lea rsi, [rip + s_msix]
    call puts
8:  xor eax, eax
9:  ret

/* ESI = the vector the completion raises: a 4-byte DMA from BAR 2 to DST. ZF clear when
 * the device reports an error. */
dma:
    mov [r14 + 0x24], esi
    mov dword ptr [r14 + 0x08], 0
    mov dword ptr [r14 + 0x0c], 4
    mov dword ptr [r14 + 0x10], DST
    mov dword ptr [r14 + 0x14], 0
    mov dword ptr [r14 + 0x18], 1
    cmp dword ptr [r14 + 0x20], 0
    ret

intx_handler:
    lock inc dword ptr [rip + intx_count]
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI: the IOAPIC's too (level) */
    pop rdi
    iretq

    .section .rodata
s_intx: .asciz "vfio-irq: INTx twice\r\n"
s_msi:  .asciz "vfio-irq: MSI vector 1\r\n"
s_msix: .asciz "vfio-irq: MSI-X vector 0\r\n"

    .section .data
    .align 4
intx_count: .long 0
before:     .long 0

    .section .bss
    .align 8
vp: .skip VP_SIZE
