/*
 * For the 2-vCPU snapshot tests. vCPU 0 ticks its LAPIC timer every 10 ms, hashes
 * 0..ITERATIONS, then stops at gate 1 (PHASE = 1) until the test writes GATE >= 1, so a
 * snapshot there finds vCPU 1 still waiting for its STARTUP IPI. It then starts vCPU 1, which
 * hashes 0..ITERATIONS1 in real mode, sets FLAG and halts for good; vCPU 0 waits for FLAG,
 * stops at gate 2 (PHASE = 2, vCPU 1 halted) until GATE >= 2, waits TICKS ticks and prints
 * `result <hash0> <hash1>`, exit 0. The result depends on nothing but the loops.
 */
#include "common.S"

#define VECTOR      0x40
#define COUNTER     0x1f0000
#define GATE        0x1f0008
#define PHASE       0x1f0010
#define ITERATIONS  200000
#define TICKS       5
#define TRAMPOLINE  0x10000
#define FLAG        0x11000
#define HASH1       0x11008
#define ITERATIONS1 300000

main:
    mov eax, 1
    cpuid
    shr ebx, 16
    cmp bl, 2
    mov al, 2
    jb 9f

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
    mov r12, rax

    mov qword ptr [PHASE], 1
2:  hlt
    cmp qword ptr [GATE], 1
    jb 2b

    lea rsi, [rip + tramp]
    mov rdi, TRAMPOLINE
    mov ecx, tramp_end - tramp
    rep movsb
    mov rdi, LAPIC
    mov dword ptr [rdi + 0x310], 1 << 24  /* destination: APIC ID 1 */
    mov dword ptr [rdi + 0x300], 0x4500   /* INIT */
    mov dword ptr [rdi + 0x310], 1 << 24
    mov dword ptr [rdi + 0x300], 0x4600 | (TRAMPOLINE >> 12)   /* STARTUP */
3:  hlt                                          /* the timer wakes it to look again */
    cmp byte ptr [FLAG], 1
    jne 3b

    mov qword ptr [PHASE], 2
4:  hlt
    cmp qword ptr [GATE], 2
    jb 4b

    mov rbx, [rip + ticks]
    add rbx, TICKS
5:  hlt
    cmp [rip + ticks], rbx
    jb 5b
    cli
    lea rsi, [rip + result]
    call puts
    mov rax, r12
    call putdec
    mov al, ' '
    call putc
    mov eax, [HASH1]
    call putdec
    lea rsi, [rip + crlf]
    call puts
    xor eax, eax
9:  ret

tick:
    push rdi
    inc qword ptr [rip + ticks]
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                /* EOI */
    pop rdi
    iretq

    .code16
tramp:
    xor eax, eax
    xor ecx, ecx
6:  imul eax, eax, 7
    add eax, ecx
    inc ecx
    cmp ecx, ITERATIONS1
    jb 6b
    mov cs:[HASH1 - TRAMPOLINE], eax
    mov byte ptr cs:[FLAG - TRAMPOLINE], 1
7:  cli
    hlt
    jmp 7b
tramp_end:
    .code64

    .section .rodata
started: .asciz "started\r\n"
result:  .asciz "result "
crlf:    .asciz "\r\n"
    .section .data
    .balign 8
ticks: .quad 0
