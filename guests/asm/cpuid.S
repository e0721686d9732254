/* Prints the feature words a guest sees: CPUID.1:ECX, CPUID.1:EDX, CPUID.7.0:EBX. */
#include "common.S"

main:
    lea rsi, [rip + s1]
    call puts
    mov eax, 1
    xor ecx, ecx
    cpuid
    mov eax, ecx
    call puthex
    lea rsi, [rip + s2]
    call puts
    mov eax, edx
    call puthex
    lea rsi, [rip + s3]
    call puts
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov eax, ebx
    call puthex
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
    ret

    .section .rodata
s1: .asciz "cpuid 1 ecx="
s2: .asciz " edx="
s3: .asciz " 7.0 ebx="
nl: .asciz "\r\n"
