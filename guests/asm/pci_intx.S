/*
 * Legacy INTx of a virtio-pci device with MSI-X left disabled: finds the first 1af4:1042
 * function, reads its interrupt pin (must be INTA) and line (the GSI), routes that IOAPIC pin
 * to vector 0x41, submits a virtio-blk FLUSH and sleeps in HLT until the handler, which reads
 * (and so acknowledges) the ISR, runs. Prints "intx: GSI <n>, ISR <hex>"; exits 0 or the
 * number of the failed check.
 */
#include "common.S"
#include "pci.S"

#define RING0   0x40000
#define HDR     0x60000
#define STATUS  0x60100
#define IOAPIC  0xfec00000
#define VECTOR  0x41

main:
    call irq_init
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set
    mov al, 0xff                                    /* 8259s masked */
    out 0x21, al
    out 0xa1, al

    mov edi, 0x10421af4
    call pci_find_device
    lea rbx, [rip + vp]
    mov [rbx + VP_CFG], eax
    cmp eax, -1
    mov al, 10
    je 9f
    call virtio_pci_probe
    test eax, eax
    mov al, 11
    jnz 9f
    mov edi, [rbx + VP_CFG]
    add edi, PCI_INTERRUPT
    call pci_read32                                 /* line | pin << 8 */
    movzx r12d, al                                  /* the GSI */
    cmp ah, 1                                       /* INTA */
    mov al, 12
    jne 9f
    cmp r12d, 24
    mov al, 13
    jae 9f

    mov rdi, IOAPIC                                 /* pin GSI: VECTOR, fixed, edge, high, */
    lea eax, [r12 * 2 + 0x10 + 1]                   /* to APIC 0 */
    mov [rdi], eax
    mov dword ptr [rdi + 0x10], 0
    dec eax
    mov [rdi], eax
    mov dword ptr [rdi + 0x10], VECTOR

    mov rsi, RING0
    mov edx, 1
    xor r9d, r9d                                    /* no MSI-X vectors */
    call virtio_pci_init
    test eax, 4
    mov al, 14
    jz 9f

    mov dword ptr [HDR], 4                          /* FLUSH */
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, STATUS, 1, F_WRITE, 0
    mov byte ptr [STATUS], 0xff
    mov rsi, RING0
    xor r8d, r8d
    xor eax, eax
    call vq_post
    lea rdi, [rip + fired]
    mov esi, 1
    call wait_irq
    test eax, eax
    mov al, 15
    jnz 9f
    cmp cx, word ptr [RING0 + 0x2002]               /* the request was used */
    mov al, 16
    jne 9f
    cmp byte ptr [STATUS], 0
    mov al, 17
    jne 9f
    test byte ptr [rip + isr], 1                    /* a queue interrupt */
    mov al, 18
    jz 9f
    mov rdi, [rbx + VP_ISR]                         /* the handler's read cleared it */
    cmp byte ptr [rdi], 0
    mov al, 19
    jne 9f
    mov eax, [rip + msi_count]                      /* and no MSI arrived */
    or eax, [rip + msi_count + 4]
    mov al, 20
    jnz 9f
    lea rsi, [rip + s_gsi]
    call puts
    mov eax, r12d
    call putdec
    lea rsi, [rip + s_isr]
    call puts
    movzx eax, byte ptr [rip + isr]
    mov ecx, 2
    call putnhex
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
9:  ret

handler:
    push rax
    push rdi
    mov rdi, [rip + vp + VP_ISR]
    mov al, [rdi]                                   /* reading acknowledges */
    mov [rip + isr], al
    lock inc dword ptr [rip + fired]
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    pop rax
    iretq

    .section .rodata
s_gsi: .asciz "intx: GSI "
s_isr: .asciz ", ISR "
nl:    .asciz "\r\n"

    .section .data
    .align 4
fired: .long 0
isr:   .byte 0

    .section .bss
    .align 8
vp: .skip VP_SIZE
