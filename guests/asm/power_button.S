/*
 * The ACPI power button end to end: routes IOAPIC pin 3 (the GED's GSI) to vector 0x42,
 * edge-triggered, prints "waiting for the power button" and sleeps in HLT. Its handler does
 * what the DSDT's _EVT and Linux do for a press: reads the GED's event status register
 * (which clears it) and, for the power button's bit, powers off with SLP_TYP(S5) | SLP_EN on
 * the sleep control register. An interrupt without the bit is counted and acknowledged. If
 * the machine is still on after the write, it exits 1. The main loop only halts, so the
 * handler may clobber what it likes.
 */
#include "common.S"

#define IOAPIC      0xfec00000
#define VECTOR      0x42
#define GED_GSI     3
#define GED_STATUS  0x603
#define POWER_BUTTON 1
#define SLEEP_CONTROL 0x600
#define S5          5
#define SLP_EN      0x20

main:
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set

    mov al, 0xff                                    /* mask the 8259s: GSIs below 16 also */
    out 0x21, al                                    /* reach them on KVM's irqchip */
    out 0xa1, al
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff               /* enable the local APIC */
    mov rdi, IOAPIC                                 /* pin GED_GSI: VECTOR, fixed, edge, */
    mov dword ptr [rdi], 0x10 + GED_GSI * 2 + 1     /* active high, to APIC 0 */
    mov dword ptr [rdi + 0x10], 0
    mov dword ptr [rdi], 0x10 + GED_GSI * 2
    mov dword ptr [rdi + 0x10], VECTOR

    lea rsi, [rip + waiting]
    call puts
    sti
1:  hlt
    jmp 1b

handler:
    mov dx, GED_STATUS                              /* Local0 = GDAT */
    in al, dx
    test al, POWER_BUTTON
    jz 2f
    lea rsi, [rip + pressed]
    call puts
    mov al, (S5 << 2) | SLP_EN
    mov dx, SLEEP_CONTROL
    out dx, al
    mov al, 1                                       /* still on */
    jmp exit
2:  lea rsi, [rip + spurious]
    call puts
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                   /* EOI */
    iretq

    .section .rodata
waiting:  .asciz "waiting for the power button\r\n"
pressed:  .asciz "power button pressed, powering off\r\n"
spurious: .asciz "GED interrupt without an event\r\n"
