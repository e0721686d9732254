/*
 * SMP bring-up: the boot vCPU copies a real-mode trampoline to 0x10000 and sends INIT and
 * STARTUP IPIs to APIC ID 1; the second vCPU sets a flag at 0x11000 and halts.
 */
#include "common.S"

#define TRAMPOLINE 0x10000
#define FLAG       0x11000

main:
    mov eax, 1
    cpuid
    shr ebx, 16
    cmp bl, 2
    mov al, 2
    jb 9f

    lea rsi, [rip + tramp]
    mov rdi, TRAMPOLINE
    mov ecx, tramp_end - tramp
    rep movsb

    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff
    mov dword ptr [rdi + 0x310], 1 << 24  /* destination: APIC ID 1 */
    mov dword ptr [rdi + 0x300], 0x4500   /* INIT */
    mov dword ptr [rdi + 0x310], 1 << 24
    mov dword ptr [rdi + 0x300], 0x4600 | (TRAMPOLINE >> 12)   /* STARTUP */

    mov ecx, 2000000
1:  cmp byte ptr [FLAG], 1
    je 2f
    pause
    loop 1b
    mov al, 1
    jmp 9f
2:  lea rsi, [rip + ok]
    call puts
    xor eax, eax
9:  ret

    .code16
tramp:
    mov byte ptr cs:[FLAG - TRAMPOLINE], 1
3:  cli
    hlt
    jmp 3b
tramp_end:
    .code64

    .section .rodata
ok: .asciz "vCPU 1 is up\r\n"
