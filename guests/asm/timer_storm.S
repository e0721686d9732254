/*
 * A hostile LAPIC timer: periodic, divide by 1, initial count 1 (a 1 ns period as written).
 * Counts its interrupts and halts between them forever; prints a line after the first 100.
 */
#include "common.S"

#define VECTOR 0x40

main:
    mov edi, VECTOR
    lea rax, [rip + handler]
    call idt_set

    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff               /* spurious vector register: enable */
    mov dword ptr [rdi + 0x3e0], 0xb                /* divide by 1 */
    mov dword ptr [rdi + 0x320], VECTOR | (1 << 17) /* periodic */
    mov dword ptr [rdi + 0x380], 1                  /* initial count 1 */
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
