/*
 * A hostile LAPIC timer: periodic, divide by 1, initial count 1 (a 1 ns period as written).
 * With -DPIT, the PIT's channel 0 instead: mode 2 with a count of 1 (838 ns), through IOAPIC
 * pin 0 (needs --no-acpi). Counts its interrupts and halts between them forever; prints a
 * line after the first 100.
 */
#include "common.S"

#define VECTOR 0x40
#define IOAPIC 0xfec00000

main:
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set

    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff               /* spurious vector register: enable */
#ifdef PIT
    mov al, 0xff                                    /* mask the 8259s */
    out 0x21, al
    out 0xa1, al
    mov rdi, IOAPIC                                 /* pin 0: VECTOR, edge, to APIC 0 */
    mov dword ptr [rdi], 0x11
    mov dword ptr [rdi + 0x10], 0
    mov dword ptr [rdi], 0x10
    mov dword ptr [rdi + 0x10], VECTOR
    mov al, 0x34                                    /* channel 0, LSB then MSB, mode 2 */
    out 0x43, al
    mov al, 1                                       /* count 1 */
    out 0x40, al
    xor eax, eax
    out 0x40, al
#else
    mov dword ptr [rdi + 0x3e0], 0xb                /* divide by 1 */
    mov dword ptr [rdi + 0x320], VECTOR | (1 << 17) /* periodic */
    mov dword ptr [rdi + 0x380], 1                  /* initial count 1 */
#endif
    sti
1:  hlt
    cmp qword ptr [rip + count], 100
    jb 1b
    cmp byte ptr [rip + said], 0
    jne 1b
    mov byte ptr [rip + said], 1
    lea rsi, [rip + msg]
    call puts
    jmp 1b

handler:
    inc qword ptr [rip + count]
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    iretq

    .section .rodata
msg: .asciz "100 timer interrupts\r\n"
    .section .data
count: .quad 0
said: .byte 0
