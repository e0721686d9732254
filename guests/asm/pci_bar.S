/*
 * BAR0 of PCI device 00:01.0 (a virtio-blk disk): sizes it, moves it inside the PCI MMIO
 * window and checks the device answers at the new address and not at the old one, turns
 * memory decoding off and on in COMMAND, moves the BAR outside the window (where it must not
 * decode), and puts it back. Reads the common config's num_queues (1 for virtio-blk) to tell
 * whether the device answers; after the move it also completes a FLUSH notified at the new
 * notify address. Exits 0 or the number of the failed check.
 */
#include "common.S"
#include "pci.S"

#define DEV         PCI_DEV(1)
#define MOVED       0xc0100000
#define OUTSIDE     0xf0000000                      /* past ECAM, below the IOAPIC */
#define RING0       0x40000
#define HDR         0x60000
#define STATUS      0x60100

main:
    lea rbx, [rip + vp]
    mov dword ptr [rbx + VP_CFG], DEV
    mov edi, DEV + PCI_BAR0
    call pci_read32
    mov r12d, eax                                   /* as the VMM assigned it */
    and eax, 0xf
    cmp eax, 4                                      /* memory, 64-bit, not prefetchable */
    mov al, 10
    jne fail
    mov edi, DEV + PCI_BAR1
    call pci_read32
    mov r13d, eax
    lea rsi, [rip + s_assigned]
    call puts
    mov eax, r13d
    call puthex
    mov eax, r12d
    call puthex
    lea rsi, [rip + nl]
    call puts

    /* Sizing: all-ones in, the size mask out. */
    mov eax, -1
    mov edi, DEV + PCI_BAR0
    call pci_write32
    mov edi, DEV + PCI_BAR1
    call pci_write32
    mov edi, DEV + PCI_BAR0
    call pci_read32
    mov ecx, eax
    mov edi, DEV + PCI_BAR1
    call pci_read32
    mov edx, eax
    lea rsi, [rip + s_sized]
    call puts
    mov eax, ecx
    call puthex
    mov al, ' '
    call putc
    mov eax, edx
    call puthex
    lea rsi, [rip + nl]
    call puts
    cmp ecx, 0xffff8004
    mov al, 11
    jne fail
    cmp edx, -1
    mov al, 12
    jne fail
    mov eax, r12d                                   /* restore */
    mov edi, DEV + PCI_BAR0
    call pci_write32
    mov eax, r13d
    mov edi, DEV + PCI_BAR1
    call pci_write32
    mov edi, DEV + PCI_BAR0
    call pci_read32
    cmp eax, r12d
    mov al, 13
    jne fail

    call virtio_pci_probe
    test eax, eax
    mov al, 14
    jnz fail
    mov r14, [rbx + VP_COMMON]                      /* the old address */
    cmp word ptr [r14 + VC_NUMQ], 1
    mov al, 15
    jne fail

    /* Move it inside the window. */
    mov eax, MOVED
    mov edi, DEV + PCI_BAR0
    call pci_write32
    xor eax, eax
    mov edi, DEV + PCI_BAR1
    call pci_write32
    call virtio_pci_probe
    test eax, eax
    mov al, 16
    jnz fail
    mov eax, MOVED
    cmp [rbx + VP_BAR], rax
    mov al, 17
    jne fail
    mov r15, [rbx + VP_COMMON]                      /* the new address */
    cmp word ptr [r15 + VC_NUMQ], 1
    mov al, 18
    jne fail
    cmp word ptr [r14 + VC_NUMQ], 0xffff            /* nothing left at the old one */
    mov al, 19
    jne fail
    lea rsi, [rip + s_moved]
    call puts

    /* A request there, notified at the new notify address, completes. */
    mov rsi, RING0
    mov edx, 1
    xor r9d, r9d
    call virtio_pci_init
    test eax, 4
    mov al, 28
    jz fail
    mov dword ptr [HDR], 4                          /* FLUSH */
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, STATUS, 1, F_WRITE, 0
    mov byte ptr [STATUS], 0xff
    xor r8d, r8d
    xor eax, eax
    call vq_submit
    test eax, eax
    mov al, 29
    jnz fail
    cmp byte ptr [STATUS], 0
    mov al, 30
    jne fail
    lea rsi, [rip + s_request]
    call puts

    /* Memory space off in COMMAND: no decoding; back on: decoding again. */
    mov edi, DEV + PCI_COMMAND
    call pci_read16
    mov r8d, eax
    and eax, ~CMD_MEMORY
    call pci_write16
    cmp word ptr [r15 + VC_NUMQ], 0xffff
    mov al, 20
    jne fail
    mov eax, r8d
    call pci_write16
    cmp word ptr [r15 + VC_NUMQ], 1
    mov al, 21
    jne fail
    lea rsi, [rip + s_command]
    call puts

    /* Outside the PCI MMIO window the BAR does not decode. */
    mov eax, OUTSIDE
    mov edi, DEV + PCI_BAR0
    call pci_write32
    call virtio_pci_probe
    test eax, eax
    mov al, 22
    jnz fail
    mov rdi, [rbx + VP_COMMON]
    cmp word ptr [rdi + VC_NUMQ], 0xffff
    mov al, 23
    jne fail
    cmp word ptr [r15 + VC_NUMQ], 0xffff
    mov al, 24
    jne fail
    lea rsi, [rip + s_outside]
    call puts

    /* Back where the VMM put it. */
    mov eax, r12d
    mov edi, DEV + PCI_BAR0
    call pci_write32
    call virtio_pci_probe
    test eax, eax
    mov al, 25
    jnz fail
    cmp [rbx + VP_COMMON], r14
    mov al, 26
    jne fail
    cmp word ptr [r14 + VC_NUMQ], 1
    mov al, 27
    jne fail
    lea rsi, [rip + s_ok]
    call puts
    xor eax, eax
fail:
    ret

    .section .rodata
s_assigned: .asciz "bar0 assigned "
s_sized:    .asciz "bar0/bar1 sized "
s_moved:    .asciz "moved to c0100000: answers there, all-ones at the old address\r\n"
s_request:  .asciz "a request notified at the new address completes\r\n"
s_command:  .asciz "memory space off: all-ones; on: answers again\r\n"
s_outside:  .asciz "outside the window: not decoded\r\n"
s_ok:       .asciz "pci bar ok\r\n"
nl:         .asciz "\r\n"

    .section .bss
    .align 8
vp: .skip VP_SIZE
