/*
 * The PIT and the 8259s of a machine without ACPI, used as Linux uses them: finds the 8259s by
 * their mask register and masks them, routes ISA IRQ 0 (IOAPIC pin 0) to vector 0x30, runs
 * channel 0 at 100 Hz and counts 10 ticks in HLT, latches and reads channel 0's count, then
 * times channel 2 to its terminal count through port B (gate in bit 0, output in bit 5).
 * Prints "PIT ticks: 10" and exits 0, or exits with the failed check's number.
 */
#include "common.S"

#define IOAPIC  0xfec00000
#define VECTOR  0x30
#define LATCH   11932                               /* 1193182 Hz / 100 */
#define TICKS   10
#define TICKS_AT 0x1f0000                           /* where the tick count is kept (tests) */

main:
    mov al, 0xff                                    /* probe_8259A: mask the slave, write a */
    out 0xa1, al                                    /* mask to the master, read it back */
    mov al, 0xfb
    out 0x21, al
    in al, 0x21
    cmp al, 0xfb
    mov al, 1
    jne 9f
    mov al, 0xff                                    /* then mask both: every line goes */
    out 0x21, al                                    /* through the IOAPIC */

    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff               /* enable the local APIC */
    mov rdi, IOAPIC                                 /* pin 0: VECTOR, fixed, edge, to APIC 0 */
    mov dword ptr [rdi], 0x11
    mov dword ptr [rdi + 0x10], 0
    mov dword ptr [rdi], 0x10
    mov dword ptr [rdi + 0x10], VECTOR

    mov al, 0x34                                    /* channel 0, LSB then MSB, mode 2 */
    out 0x43, al
    mov al, LATCH & 0xff
    out 0x40, al
    mov al, LATCH >> 8
    out 0x40, al
    sti
    mov rdx, TICKS_AT
1:  hlt
    cmp dword ptr [rdx], TICKS
    jb 1b
    cli

    mov al, 0x00                                    /* latch channel 0's count */
    out 0x43, al
    in al, 0x40
    mov cl, al
    in al, 0x40
    mov ch, al
    movzx ecx, cx
    test ecx, ecx                                   /* mode 2 counts LATCH down to 1 */
    mov al, 2
    jz 9f
    cmp ecx, LATCH
    mov al, 3
    ja 9f
    mov al, 0x30                                    /* a new mode stops channel 0 */
    out 0x43, al

    in al, 0x61                                     /* port B: gate channel 2 on, speaker */
    and al, 0xfc                                    /* off */
    or al, 1
    out 0x61, al
    mov al, 0xb0                                    /* channel 2, LSB then MSB, mode 0 */
    out 0x43, al
    mov al, 0xff                                    /* 65535 ticks: 55 ms */
    out 0x42, al
    out 0x42, al
    in al, 0x61
    test al, 0x20                                   /* output low while counting */
    mov al, 4
    jnz 9f
2:  in al, 0x61                                     /* ... and high at terminal count */
    test al, 0x20
    jz 2b

    lea rsi, [rip + msg]
    call puts
    mov rdi, TICKS_AT
    mov eax, [rdi]
    call putdec
    lea rsi, [rip + crlf]
    call puts
    xor eax, eax
9:  ret

handler:
    push rdi
    mov rdi, TICKS_AT
    inc dword ptr [rdi]
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    pop rdi
    iretq

    .section .rodata
msg:  .asciz "PIT ticks: "
crlf: .asciz "\r\n"
