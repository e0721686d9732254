/*
 * The virtio interrupt path end to end: routes IOAPIC pin 5 (virtio device 0's line) to vector
 * 0x41, submits a virtio-blk FLUSH, and sleeps in HLT until the device's used-buffer interrupt
 * (an irqfd on KVM) reaches the handler, which reads and acknowledges InterruptStatus.
 */
#include "common.S"
#include "virtio.S"

#define DISK0   0xd0000000
#define RING0   0x40000
#define HDR     0x60000
#define STATUS  0x60100
#define IOAPIC  0xfec00000
#define VECTOR  0x41
#define GSI     5

main:
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set

    mov al, 0xff                                    /* mask the 8259s: GSIs below 16 also */
    out 0x21, al                                    /* reach them, and they would deliver */
    out 0xa1, al                                    /* through LINT0 (ExtINT) */
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff               /* enable the local APIC */
    mov rdi, IOAPIC                                 /* pin GSI: VECTOR, fixed, edge, to APIC 0 */
    mov dword ptr [rdi], 0x10 + GSI * 2 + 1
    mov dword ptr [rdi + 0x10], 0
    mov dword ptr [rdi], 0x10 + GSI * 2
    mov dword ptr [rdi + 0x10], VECTOR

    xor r8d, r8d
    mov edx, 1
    mov rdi, DISK0
    mov rsi, RING0
    call virtio_init
    test eax, 4
    mov al, 10
    jz 9f

    mov dword ptr [HDR], 4                          /* FLUSH */
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, STATUS, 1, F_WRITE, 0
    mov byte ptr [STATUS], 0xff
    mov rdi, DISK0
    mov rsi, RING0
    xor eax, eax
    call virtq_post
    sti
1:  hlt
    cmp byte ptr [rip + fired], 0
    je 1b
    cli
    cmp cx, word ptr [RING0 + 0x2002]               /* the request was used */
    mov al, 11
    jne 9f
    cmp byte ptr [STATUS], 0
    mov al, 12
    jne 9f
    lea rsi, [rip + ok]
    call puts
    mov eax, [rip + isr]
    call puthex
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
9:  ret

handler:
    push rax
    push rdi
    mov rdi, DISK0
    mov eax, [rdi + 0x60]                           /* InterruptStatus */
    mov [rip + isr], eax
    mov [rdi + 0x64], eax                           /* InterruptACK */
    mov byte ptr [rip + fired], 1
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    pop rax
    iretq

    .section .rodata
ok: .asciz "virtio interrupt delivered, InterruptStatus "
nl: .asciz "\r\n"
    .section .data
fired: .byte 0
    .align 4
isr:   .long 0
