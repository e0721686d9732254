/* The built-in demo guest: greets, then reports what it found. */
#include "common.S"

main:
    lea rsi, [rip + greeting]
    call puts

    /* Hypervisor signature (CPUID 0x40000000) */
    lea rsi, [rip + s_hv]
    call puts
    mov eax, 0x40000000
    cpuid
    mov [rip + sig], ebx
    mov [rip + sig + 4], ecx
    mov [rip + sig + 8], edx
    lea rsi, [rip + sig]
    call puts

    /* vCPUs: CPUID.1:EBX[23:16] */
    lea rsi, [rip + s_cpus]
    call puts
    mov eax, 1
    cpuid
    mov eax, ebx
    shr eax, 16
    and eax, 0xff
    call putdec

    test r15, r15
    jz 9f

    /* Usable memory: sum of e820 RAM entries in the zero page */
    lea rsi, [rip + s_mem]
    call puts
    movzx ecx, byte ptr [r15 + 0x1e8]     /* e820_entries */
    mov rax, rcx
    lea rbx, [r15 + 0x2d0]                /* e820_table */
    xor edx, edx
1:  test ecx, ecx
    jz 2f
    cmp dword ptr [rbx + 16], 1
    jne 3f
    add rdx, [rbx + 8]
3:  add rbx, 20
    dec ecx
    jmp 1b
2:  push rax
    mov rax, rdx
    shr rax, 10
    call putdec
    lea rsi, [rip + s_kib]
    call puts
    pop rax
    call putdec
    lea rsi, [rip + s_e820]
    call puts

    /* Command line */
    lea rsi, [rip + s_cmd]
    call puts
    mov esi, dword ptr [r15 + 0x228]      /* cmd_line_ptr */
    call puts
    mov al, '"'
    call putc
9:
    lea rsi, [rip + bye]
    call puts
    xor eax, eax
    ret

    .section .rodata
greeting: .asciz "\r\nHello from the vibe-vmm demo guest!\r\n"
s_hv:     .asciz "  hypervisor: "
s_cpus:   .asciz "\r\n  vCPUs: "
s_mem:    .asciz "\r\n  memory: "
s_kib:    .asciz " KiB usable in "
s_e820:   .asciz " e820 entries"
s_cmd:    .asciz "\r\n  command line: \""
bye:      .asciz "\r\nDemo guest done, exiting with status 0.\r\n"
    .section .data
sig:      .skip 16
