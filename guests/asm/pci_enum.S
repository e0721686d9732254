/*
 * Enumerates PCI bus 0 through ports 0xcf8/0xcfc and through ECAM, and checks that both show
 * the same config space: every dword of the first 256 bytes of each present function, also
 * read as two words and as four bytes each way; absent devices, functions 1-7 and bus 1 read
 * all-ones both ways. For each function found it prints (all numbers hex)
 *   00:NN.0 VVVV:DDDD rev RR class CCCCCC hdr HH cmd CCCC status SSSS subsys VVVV:DDDD
 *     irq pin PP line LL
 *     bar0 XXXXXXXX bar1 XXXXXXXX ... bar5 XXXXXXXX
 *     cap 09 type T bar B offset OOOOOOOO length LLLLLLLL [multiplier MMMMMMMM]
 *     cap 11 msix control CCCC table TTTTTTTT pba PPPPPPPP
 *     cap II                                   (any other capability)
 * and "enumerated N functions" at the end. Exits 0, or the number of the failed check after
 * printing where it failed.
 */
#include "common.S"
#include "pci.S"

main:
    xor ebx, ebx                                    /* device number */
    xor r13d, r13d                                  /* functions found */
1:  mov r12d, ebx
    shl r12d, 11                                    /* its config address */
    mov edi, r12d
    call pci_read32
    cmp ax, 0xffff
    je 2f
    inc r13d
    call compare_function
    test eax, eax
    jnz fail
    call print_function
    jmp 3f
2:  call check_absent                               /* the whole 256 bytes */
    test eax, eax
    jnz fail
3:  mov ecx, 1                                      /* functions 1-7: absent */
4:  mov edi, ecx
    shl edi, 8
    or edi, r12d
    call check_absent_id
    test eax, eax
    jnz fail
    inc ecx
    cmp ecx, 8
    jb 4b
    inc ebx
    cmp ebx, 32
    jb 1b

    xor ebx, ebx                                    /* bus 1: nothing */
5:  mov edi, ebx
    shl edi, 11
    or edi, 1 << 16
    call check_absent_id
    test eax, eax
    jnz fail
    inc ebx
    cmp ebx, 32
    jb 5b

    lea rsi, [rip + s_done]
    call puts
    mov eax, r13d
    call putdec
    lea rsi, [rip + s_functions]
    call puts
    xor eax, eax
fail:
    ret

/* Reports a mismatch at EDI: EAX = what CF8 read, ECX = what the other way read. */
mismatch:
    push rsi
    lea rsi, [rip + s_mismatch]
    call puts
    push rax
    mov eax, edi
    call puthex
    pop rax
    lea rsi, [rip + s_cf8]
    call puts
    call puthex
    lea rsi, [rip + s_other]
    call puts
    mov eax, ecx
    call puthex
    lea rsi, [rip + nl]
    call puts
    pop rsi
    ret

/* Every dword of the function at R12D (0x00-0xfc), read eight ways, must agree.
 * EAX = 0, or 11 (ECAM dword), 12 (CF8 words), 13 (CF8 bytes), 14 (ECAM words),
 * 15 (ECAM bytes). */
compare_function:
    push rcx
    push rdi
    push r14
    xor r14d, r14d                                  /* register */
1:  lea edi, [r12 + r14]
    call pci_read32
    mov r8d, eax                                    /* the reference */
    call ecam_read32
    mov ecx, eax
    mov eax, 11
    cmp ecx, r8d
    jne 8f
    call words_cf8
    mov eax, 12
    cmp ecx, r8d
    jne 8f
    call bytes_cf8
    mov eax, 13
    cmp ecx, r8d
    jne 8f
    call words_ecam
    mov eax, 14
    cmp ecx, r8d
    jne 8f
    call bytes_ecam
    mov eax, 15
    cmp ecx, r8d
    jne 8f
    add r14d, 4
    cmp r14d, 0x100
    jb 1b
    xor eax, eax
    jmp 9f
8:  push rax
    mov eax, r8d
    call mismatch
    pop rax
9:  pop r14
    pop rdi
    pop rcx
    ret

/* ECX = the dword at EDI assembled from two 16-bit reads (or four 8-bit reads). */
.macro ASSEMBLE name, read, size
\name:
    push rax
    push rdi
    push rdx
    xor ecx, ecx
    xor edx, edx                                    /* bit position */
1:  call \read
    xchg ecx, edx
    shl eax, cl
    xchg ecx, edx
    or ecx, eax
    add edi, \size
    add edx, \size * 8
    cmp edx, 32
    jb 1b
    pop rdx
    pop rdi
    pop rax
    ret
.endm
    ASSEMBLE words_cf8, pci_read16, 2
    ASSEMBLE bytes_cf8, pci_read8, 1
    ASSEMBLE words_ecam, ecam_read16, 2
    ASSEMBLE bytes_ecam, ecam_read8, 1

/* The function at R12D is absent: all 64 dwords read all-ones both ways. EAX = 0 or 16. */
check_absent:
    push rcx
    push rdi
    push r14
    xor r14d, r14d
1:  lea edi, [r12 + r14]
    call check_absent_id
    test eax, eax
    jnz 9f
    add r14d, 4
    cmp r14d, 0x100
    jb 1b
9:  pop r14
    pop rdi
    pop rcx
    ret

/* The dword at EDI reads all-ones through CF8 and ECAM. EAX = 0 or 16. */
check_absent_id:
    push rcx
    call ecam_read32
    mov ecx, eax
    call pci_read32
    and ecx, eax
    cmp ecx, -1
    je 1f
    call ecam_read32
    mov ecx, eax
    call pci_read32
    call mismatch
    mov eax, 16
    jmp 9f
1:  xor eax, eax
9:  pop rcx
    ret

/* Prints " <label>" and the config register at R12D + ESI, of EDX hex digits. */
.macro FIELD label, reg, digits, shift=0
    lea rsi, [rip + \label]
    call puts
    lea edi, [r12 + \reg]
    call pci_read32
    shr eax, \shift
    mov ecx, \digits
    call putnhex
.endm

print_function:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r14
    lea rsi, [rip + s_bus]
    call puts
    mov eax, ebx
    mov ecx, 2
    call putnhex
    lea rsi, [rip + s_fn0]
    call puts
    mov edi, r12d
    call pci_read32
    mov ecx, 4
    call putnhex                                    /* vendor */
    mov al, ':'
    call putc
    mov edi, r12d
    call pci_read32
    shr eax, 16
    mov ecx, 4
    call putnhex                                    /* device */
    FIELD s_rev, PCI_REVISION, 2
    FIELD s_class, PCI_REVISION, 6, 8
    FIELD s_hdr, PCI_HEADER, 2, 16
    FIELD s_cmd, PCI_COMMAND, 4
    FIELD s_status, PCI_COMMAND, 4, 16
    FIELD s_subsys, PCI_SUBSYSTEM, 4
    mov al, ':'
    call putc
    lea edi, [r12 + PCI_SUBSYSTEM]
    call pci_read32
    shr eax, 16
    mov ecx, 4
    call putnhex
    FIELD s_pin, PCI_INTERRUPT, 2, 8
    FIELD s_line, PCI_INTERRUPT, 2
    lea rsi, [rip + nl]
    call puts

    xor r14d, r14d                                  /* BARs */
    lea rsi, [rip + s_indent]
    call puts
1:  lea rsi, [rip + s_bar]
    call puts
    mov eax, r14d
    call putdec
    mov al, ' '
    call putc
    lea edi, [r12 + r14 * 4 + PCI_BAR0]
    call pci_read32
    call puthex
    inc r14d
    cmp r14d, 6
    jb 1b
    lea rsi, [rip + nl]
    call puts

    lea edi, [r12 + PCI_COMMAND]                    /* capabilities */
    call pci_read32
    bt eax, 16 + 4
    jnc 9f
    lea edi, [r12 + PCI_CAP_PTR]
    call pci_read32
    movzx r14d, al
    mov edx, 48
2:  and r14d, 0xfc
    jz 9f
    lea rsi, [rip + s_cap]
    call puts
    lea edi, [r12 + r14]
    call pci_read32
    mov ecx, 2
    call putnhex                                    /* id */
    cmp al, CAP_VENDOR
    je 3f
    cmp al, CAP_MSIX
    je 4f
    jmp 5f
3:  FIELD s_type, r14 + 0, 1, 24
    FIELD s_vbar, r14 + 4, 1
    FIELD s_offset, r14 + 8, 8
    FIELD s_length, r14 + 12, 8
    lea edi, [r12 + r14]
    call pci_read32
    shr eax, 24
    cmp al, VIRTIO_CAP_NOTIFY
    jne 5f
    FIELD s_multiplier, r14 + 16, 8
    jmp 5f
4:  FIELD s_msix, r14 + 0, 4, 16
    FIELD s_table, r14 + 4, 8
    FIELD s_pba, r14 + 8, 8
5:  lea rsi, [rip + nl]
    call puts
    lea edi, [r12 + r14]
    call pci_read32
    shr eax, 8
    movzx r14d, al                                  /* next */
    dec edx
    jnz 2b
9:  pop r14
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret

    .section .rodata
s_bus:        .asciz "00:"
s_fn0:        .asciz ".0 "
s_rev:        .asciz " rev "
s_class:      .asciz " class "
s_hdr:        .asciz " hdr "
s_cmd:        .asciz " cmd "
s_status:     .asciz " status "
s_subsys:     .asciz " subsys "
s_pin:        .asciz " pin "
s_line:       .asciz " line "
s_indent:     .asciz "   "
s_bar:        .asciz " bar"
s_cap:        .asciz "    cap "
s_type:       .asciz " type "
s_vbar:       .asciz " bar "
s_offset:     .asciz " offset "
s_length:     .asciz " length "
s_multiplier: .asciz " multiplier "
s_msix:       .asciz " msix control "
s_table:      .asciz " table "
s_pba:        .asciz " pba "
s_mismatch:   .asciz "config mismatch at "
s_cf8:        .asciz ": cf8 "
s_other:      .asciz ", other "
s_done:       .asciz "enumerated "
s_functions:  .asciz " functions\r\n"
nl:           .asciz "\r\n"
