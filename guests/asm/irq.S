/* A local APIC timer interrupt reaching the guest's IDT handler (vector 0x40). */
#include "common.S"

#define VECTOR 0x40

main:
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set

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
    .section .data
fired: .byte 0
