/*
 * Benchmark guest, virtio-mmio interrupts: REQUESTS virtio-blk FLUSH requests to disk 0, one at
 * a time, each waited for in HLT until the used-buffer interrupt arrives through IOAPIC pin 5
 * (an irqfd on KVM). The handler reads and acknowledges InterruptStatus, as a virtio-mmio driver
 * must. One LAPIC timer watchdog (about 34 s) covers the whole run. Exits 0, or the failed
 * check's number. bench_irq_pci.S is the same over virtio-pci with MSI-X.
 */
#include "common.S"
#include "pci.S"                                    /* irq_init, the watchdog; virtio.S */

#define REQUESTS    10000                           /* benches/interrupts.rs counts on it */
#define DISK0       0xd0000000
#define RING0       0x40000
#define HDR         0x60000
#define STATUS      0x60100
#define IOAPIC      0xfec00000
#define VECTOR      0x41
#define GSI         5

main:
    call irq_init
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set
    mov al, 0xff                                    /* 8259s masked */
    out 0x21, al
    out 0xa1, al
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
    mov dword ptr [HDR], 4                          /* FLUSH: header, status */
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, STATUS, 1, F_WRITE, 0

    mov rdi, LAPIC                                  /* the watchdog, one-shot */
    mov dword ptr [rdi + 0x3e0], 0xa                /* divide by 128 */
    mov dword ptr [rdi + 0x320], WATCHDOG_VECTOR
    mov dword ptr [rdi + 0x380], 0x10000000         /* 2^28 * 128 ns */

    mov r12d, REQUESTS
    xor r13d, r13d                                  /* interrupts expected so far */
1:  mov byte ptr [STATUS], 0xff
    mov rdi, DISK0
    mov rsi, RING0
    xor eax, eax
    call virtq_post                                 /* ECX = the used index to expect */
    inc r13d
2:  cli
    cmp [rip + irqs], r13d
    jae 3f
    cmp byte ptr [rip + watchdog_fired], 0
    mov al, 11
    jne 9f
    sti                                             /* hlt in sti's shadow */
    hlt
    jmp 2b
3:  cmp cx, word ptr [RING0 + 0x2002]               /* the request was used */
    mov al, 12
    jne 9f
    cmp byte ptr [STATUS], 0
    mov al, 13
    jne 9f
    dec r12d
    jnz 1b
    xor eax, eax
9:  ret

handler:
    push rax
    push rdi
    mov rdi, DISK0
    mov eax, [rdi + 0x60]                           /* InterruptStatus */
    mov [rdi + 0x64], eax                           /* InterruptACK */
    inc dword ptr [rip + irqs]
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    pop rax
    iretq

    .section .data
    .align 4
irqs: .long 0
