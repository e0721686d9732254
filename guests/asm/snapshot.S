/*
 * For the snapshot tests: prints `started`, runs a hash over 0..ITERATIONS (the loop index
 * at COUNTER shows its progress) while the local APIC timer ticks every 10 ms, then waits
 * for TICKS more ticks (so a timer lost in a restore hangs it), prints `result <hash>` and
 * exits 0. The hash depends on nothing but the loop: a run restored from a snapshot taken
 * anywhere prints the same result as one left alone.
 */
#include "common.S"

#define VECTOR     0x40
#define COUNTER    0x1f0000
#define ITERATIONS 500000
#define TICKS      10

main:
    mov edi, VECTOR
    lea rax, [rip + tick]
    call idt_set

    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff            /* spurious vector register: enable */
    mov dword ptr [rdi + 0x3e0], 0xb             /* divide by 1 */
    mov dword ptr [rdi + 0x320], VECTOR | 0x20000 /* periodic */
    mov dword ptr [rdi + 0x380], 10000000        /* 10 ms at KVM's 1 GHz APIC clock */
    sti
    lea rsi, [rip + started]
    call puts

    mov rdi, COUNTER
    xor eax, eax
    xor ecx, ecx
1:  imul rax, rax, 31
    add rax, rcx
    inc rcx
    mov [rdi], rcx
    cmp rcx, ITERATIONS
    jb 1b

    mov rbx, [rip + ticks]
    add rbx, TICKS
2:  hlt
    cmp [rip + ticks], rbx
    jb 2b
    cli
    mov rbx, rax
    lea rsi, [rip + result]
    call puts
    mov rax, rbx
    call putdec
    lea rsi, [rip + crlf]
    call puts
    xor eax, eax
    ret

tick:
    push rdi
    inc qword ptr [rip + ticks]
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                /* EOI */
    pop rdi
    iretq

    .section .rodata
started: .asciz "started\r\n"
result:  .asciz "result "
crlf:    .asciz "\r\n"
    .section .data
    .balign 8
ticks: .quad 0
