/* A local APIC timer interrupt reaching the guest's IDT handler (vector 0x40). */
#include "common.S"

#define VECTOR 0x40

main:
    /* IDT gate for VECTOR: interrupt gate, present, current CS. */
    lea rdi, [rip + idt + VECTOR * 16]
    lea rax, [rip + handler]
    mov [rdi], ax
    mov cx, cs
    mov [rdi + 2], cx
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    lidt [rip + idt_desc]

    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff     /* spurious vector register: enable */
    mov dword ptr [rdi + 0x3e0], 0xb      /* divide by 1 */
    mov dword ptr [rdi + 0x320], VECTOR   /* one-shot timer */
    mov dword ptr [rdi + 0x380], 10000    /* initial count */
    sti
1:  hlt
    cmp byte ptr [rip + fired], 0
    je 1b
    cli
    lea rsi, [rip + ok]
    call puts
    xor eax, eax
    ret

handler:
    mov byte ptr [rip + fired], 1
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0         /* EOI */
    pop rdi
    iretq

    .section .rodata
ok: .asciz "timer interrupt delivered\r\n"
    .align 8
idt_desc:
    .word (VECTOR + 1) * 16 - 1
    .quad idt
    .section .data
fired: .byte 0
    .section .bss
    .align 16
idt: .skip (VECTOR + 1) * 16
