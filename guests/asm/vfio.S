/*
 * A passed-through function: the fake VFIO device of crates/vfio/src/fake.rs (1b36:0100)
 * behind vibe-vmm's VFIO layer. Finds it, checks the capability list the policy shows
 * (PM and MSI-X there, MSI hidden), sizes BAR 0 and BAR 2 and moves BAR 2, turns on memory
 * space and bus mastering, reads and writes registers through BAR 0, fills the first 4 KiB
 * of BAR 2 (the device's memory) with a pattern and writes one word at BAR 2 + 0xa000, has
 * the device DMA the 4 KiB to guest RAM, and sleeps until MSI-X vector 0 reports the
 * completion. The MSI-X table is wherever the capability says (BAR 4, or BAR 2 at 0x8000).
 * Exits 0 or the failed check's number.
 */
#include "common.S"
#include "pci.S"

#define FAKE_ID     0x01001b36
#define MOVED2      0xc8000000
#define DST         0x80000
#define WORDS       1024
#define PCI_BAR2    0x18
#define PCI_BAR3    0x1c
#define FAR_WORD    0xa000
#define FAR_VALUE   0x5aa5c33c
#define PATTERN     0x9e3779b9

main:
    call irq_init
    mov edi, FAKE_ID
    call pci_find_device
    mov r12d, eax
    cmp eax, -1
    mov al, 10
    je 9f
    lea rsi, [rip + s_found]
    call puts
    mov eax, r12d
    shr eax, 11
    mov ecx, 2
    call putnhex
    lea rsi, [rip + nl]
    call puts

    mov edi, r12d                                   /* MSI is hidden, PM and MSI-X kept */
    mov esi, 0x05
    xor edx, edx
    call pci_find_cap
    test eax, eax
    mov al, 11
    jnz 9f
    mov esi, 0x01
    call pci_find_cap
    cmp eax, 0x40
    mov al, 12
    jne 9f
    mov esi, CAP_MSIX
    call pci_find_cap
    mov r13d, eax
    cmp eax, 0x60
    mov al, 13
    jne 9f

    lea edi, [r12 + PCI_BAR0]                       /* BAR 0: 4 KiB */
    call pci_read32
    mov r14d, eax
    and r14d, 0xfffffff0
    mov eax, -1
    call pci_write32
    call pci_read32
    cmp eax, 0xfffff000
    mov al, 14
    jne 9f
    mov eax, r14d
    call pci_write32

    lea edi, [r12 + PCI_BAR2]                       /* BAR 2: 64 KiB, 64-bit prefetchable */
    mov eax, -1
    call pci_write32
    lea edi, [r12 + PCI_BAR3]
    call pci_write32
    lea edi, [r12 + PCI_BAR2]
    call pci_read32
    cmp eax, 0xffff000c
    mov al, 15
    jne 9f
    lea edi, [r12 + PCI_BAR3]
    call pci_read32
    cmp eax, -1
    mov al, 16
    jne 9f
    xor eax, eax
    call pci_write32
    lea edi, [r12 + PCI_BAR2]
    mov eax, MOVED2
    call pci_write32

    lea edi, [r12 + r13 + 4]                        /* MSI-X table: offset | BIR */
    call pci_read32
    mov ecx, eax
    and ecx, 7
    and eax, -8
    push rax
    lea edi, [r12 + rcx * 4 + PCI_BAR0]             /* (below 4 GiB: the upper half is 0) */
    call pci_read32
    and eax, 0xfffffff0
    pop rcx
    add rax, rcx
    lea rbx, [rip + vp]
    mov [rbx + VP_MSIX_TABLE], rax
    mov [rbx + VP_CFG], r12d
    mov [rbx + VP_MSIX_CAP], r13d

    lea edi, [r12 + PCI_COMMAND]                    /* memory space, bus master */
    call pci_read16
    or eax, CMD_MEMORY | CMD_MASTER
    call pci_write16

    cmp dword ptr [r14], 0x7e57f00d                 /* the device's ID register */
    mov al, 20
    jne 9f
    mov dword ptr [r14 + 4], 0x12345678
    cmp dword ptr [r14 + 4], 0x12345678
    mov al, 21
    jne 9f

    mov rdi, MOVED2                                 /* fill the device's memory */
    xor ecx, ecx
1:  imul eax, ecx, PATTERN
    mov [rdi + rcx * 4], eax
    inc ecx
    cmp ecx, WORDS
    jb 1b
    mov eax, WORDS - 1
    imul eax, eax, PATTERN
    cmp [rdi + (WORDS - 1) * 4], eax
    mov al, 22
    jne 9f
    mov dword ptr [rdi + FAR_WORD], FAR_VALUE       /* past the MSI-X table's page */
    cmp dword ptr [rdi + FAR_WORD], FAR_VALUE
    mov al, 23
    jne 9f

    mov edx, 1                                      /* MSI-X vector 0 -> MSI_VECTOR */
    mov ecx, MSI_VECTOR
    call msix_setup

    mov dword ptr [r14 + 0x08], 0                   /* DMA: BAR 2 + 0 -> DST, 4 KiB */
    mov dword ptr [r14 + 0x0c], WORDS * 4
    mov dword ptr [r14 + 0x10], DST
    mov dword ptr [r14 + 0x14], 0
    mov dword ptr [r14 + 0x18], 1
    cmp dword ptr [r14 + 0x20], 0
    mov al, 30
    jne 9f
    lea rdi, [rip + msi_count]
    mov esi, 1
    call wait_irq
    test eax, eax
    mov al, 31
    jnz 9f
    mov rdi, DST
    xor ecx, ecx
2:  imul eax, ecx, PATTERN
    cmp [rdi + rcx * 4], eax
    mov al, 32
    jne 9f
    inc ecx
    cmp ecx, WORDS
    jb 2b
    cmp dword ptr [r14 + 0x1c], 1
    mov al, 33
    jne 9f
    lea rsi, [rip + s_done]
    call puts
    xor eax, eax
9:  ret

    .section .rodata
s_found: .asciz "vfio: 1b36:0100 at device "
s_done:  .asciz "vfio: DMA of 4096 bytes into RAM, MSI-X vector 0 arrived\r\n"
nl:      .asciz "\r\n"

    .section .bss
    .align 8
vp: .skip VP_SIZE
