/*
 * Powers the machine off the way Linux's ACPI code does on a hardware-reduced platform:
 * RSDP (from the zero page, else found in the BIOS area) -> XSDT -> FADT -> the sleep control
 * register (an I/O port) and the DSDT; the DSDT's `_S5_` package -> SLP_TYP; then writes
 * SLP_TYP << 2 | SLP_EN to that register. Prints what it found. If the machine is still on
 * afterwards it exits 1; a table it cannot follow exits 2 and up.
 */
#include "common.S"

#define SIG_RSD     0x20445352          /* "RSD " */
#define SIG_PTR     0x20525450          /* "PTR " */
#define SIG_FACP    0x50434146          /* "FACP" */
#define SIG_S5      0x5f35535f          /* "_S5_" */
#define FADT_SLEEP_CONTROL  244         /* its Generic Address Structure */
#define FADT_X_DSDT         140
#define FADT_DSDT           40
#define AML_PACKAGE 0x12
#define SLP_EN      0x20

main:
    /* RSDP: boot_params.acpi_rsdp_addr, else scan 0xe0000-0xfffff on 16-byte boundaries. */
    xor eax, eax
    test r15, r15
    jz 1f
    mov rax, [r15 + 0x70]
1:  test rax, rax
    jnz 3f
    mov eax, 0xe0000
2:  cmp dword ptr [rax], SIG_RSD
    jne 4f
    cmp dword ptr [rax + 4], SIG_PTR
    je 3f
4:  add eax, 16
    cmp eax, 0x100000
    jb 2b
    mov al, 2                               /* no RSDP */
    ret
3:  cmp dword ptr [rax], SIG_RSD
    jne 5f
    cmp byte ptr [rax + 15], 2              /* revision 2: has an XSDT */
    jb 5f

    /* XSDT: 8-byte table addresses after the 36-byte header; find the FADT. */
    mov rbx, [rax + 24]
    mov ecx, [rbx + 4]
    lea rdx, [rbx + rcx]                    /* end */
    add rbx, 36
6:  cmp rbx, rdx
    jae 7f
    mov rdi, [rbx]
    cmp dword ptr [rdi], SIG_FACP
    je 8f
    add rbx, 8
    jmp 6b
5:  mov al, 2                               /* not an ACPI 2.0 RSDP */
    ret
7:  mov al, 3                               /* no FADT */
    ret

    /* FADT (in RDI): the sleep control register must be in I/O space (Space ID 1). */
8:  cmp byte ptr [rdi + FADT_SLEEP_CONTROL], 1
    jne 9f
    mov r12, [rdi + FADT_SLEEP_CONTROL + 4] /* its port */
    test r12, r12
    jz 9f
    mov rbx, [rdi + FADT_X_DSDT]
    test rbx, rbx
    jnz 10f
    mov ebx, [rdi + FADT_DSDT]
    jmp 10f
9:  mov al, 4                               /* no sleep control register on a port */
    ret

    /* DSDT (in RBX): find "_S5_" followed by a package, as a name in the AML. */
10: mov ecx, [rbx + 4]
    lea rdx, [rbx + rcx - 5]
    add rbx, 36
11: cmp rbx, rdx
    jae 12f
    cmp dword ptr [rbx], SIG_S5
    jne 13f
    cmp byte ptr [rbx + 4], AML_PACKAGE
    je 14f
13: inc rbx
    jmp 11b
12: mov al, 5                               /* no _S5_ package */
    ret

    /* PkgLength: bits 7-6 of its lead byte count the bytes that follow it. Then
     * NumElements, then the first element: SLP_TYP. */
14: movzx ecx, byte ptr [rbx + 5]
    shr ecx, 6
    lea rbx, [rbx + rcx + 7]                /* past name, PackageOp, PkgLength, NumElements */
    movzx eax, byte ptr [rbx]
    cmp al, 0x0a                            /* BytePrefix */
    jne 15f
    movzx eax, byte ptr [rbx + 1]
    jmp 16f
15: cmp al, 1                               /* ZeroOp or OneOp: the value itself */
    jbe 16f
    mov al, 6                               /* an element this guest does not decode */
    ret

16: mov r13d, eax
    lea rsi, [rip + s_typ]
    call puts
    call putdec
    lea rsi, [rip + s_port]
    call puts
    mov eax, r12d
    call puthex
    lea rsi, [rip + s_nl]
    call puts

    mov eax, r13d
    and eax, 7
    shl eax, 2
    or eax, SLP_EN
    mov edx, r12d
    out dx, al
    mov al, 1                               /* still on */
    ret

    .section .rodata
s_typ:  .asciz "ACPI S5: SLP_TYP "
s_port: .asciz ", sleep control port 0x"
s_nl:   .asciz "\r\n"
