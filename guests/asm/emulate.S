/*
 * MMIO with many instruction forms, for comparing vibe-vmm's instruction emulator with KVM's.
 * Each case is bracketed by `out 0xe0, al` (state before) and `out 0xe1, al` (state after);
 * the host answers MMIO reads from a fixed pattern and checks every case.
 *
 * Two entry points, entered by the test harness: `_start + 16` in 32-bit protected mode
 * (paging off), which ends with `out 0xe2, al`; then `_start` in 64-bit mode (identity paging
 * set up by the harness), which ends with `out 0xf4, al` (status 0). The 64-bit part ends
 * with cases that cross page boundaries, first at CPL 0, then at CPL 3 (`out 0xe3` asks the
 * harness to enter user mode), and a user access to a supervisor page whose #PF the guest's
 * handler reports with `out 0xe5` (RAX = CR2, RDX = error code).
 */
    .intel_syntax noprefix

#define MMIO 0xd0000000
/* The harness's window of 4 KiB pages (PML4 slot 1), and offsets in it. */
#define WINDOW 0x8000000000
#define USER_CODE 0x4000
#define SUPERVISOR 0x5000

.macro case insn:vararg
    out 0xe0, al
    \insn
    out 0xe1, al
.endm

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    jmp main64
    .balign 16
    .code32
entry32:
    mov ebx, MMIO
    mov esi, 8
    mov eax, 0x11223344
    mov ecx, 0x55667788
    mov edx, 0x99aabbcc
    case mov dword ptr [ebx], eax
    case mov word ptr [ebx + 2], cx
    case mov byte ptr [ebx + 0x11], ah
    case mov dword ptr [ebx + esi * 4 + 0x100], 0xdeadbeef
    case mov word ptr [ebx + 0x104], 0x1234
    case mov byte ptr [ebx + 0x106], 0x56
    case mov edx, dword ptr [ebx + 0x21]
    case mov dx, word ptr [ebx + 0x33]
    case mov al, byte ptr ds:[MMIO + 0x40]
    case mov dword ptr ds:[MMIO + 0x44], eax
    case mov ax, word ptr ds:[MMIO + 0x48]
    case movzx ecx, byte ptr [ebx + 5]
    case movzx cx, byte ptr [ebx + 5]
    case movsx edx, word ptr [ebx + 6]
    case movsx edi, byte ptr [ebx + 7]
    case add dword ptr [ebx + 8], 0x7fffffff
    case or word ptr [ebx + 0xa], 0x8001
    case and byte ptr [ebx + 0xc], 0x0f
    case sub eax, dword ptr [ebx + 0x10]
    case cmp dword ptr [ebx + 0x14], ecx
    case test byte ptr [ebx + 0x18], 0x81
    case xor dword ptr [ebx + 0x1c], edx
    case inc word ptr [ebx + 0x20]
    case dec byte ptr [ebx + 0x22]
    case neg dword ptr [ebx + 0x24]
    case not word ptr [ebx + 0x26]
    case xchg dword ptr [ebx + 0x28], ecx
    stc
    case adc dword ptr [ebx + 0x2c], 1
    stc
    case sbb ecx, dword ptr [ebx + 0x2c]
    case mov eax, dword ptr fs:[ebx + 0x30]
    case mov dword ptr es:[ebx + 0x34], eax
    mov esi, MMIO + 0x200
    mov edi, offset buf
    mov ecx, 4
    case rep movsb
    mov esi, offset buf
    mov edi, MMIO + 0x300
    mov ecx, 2
    case rep movsd
    mov edi, MMIO + 0x400
    mov ecx, 3
    mov eax, 0x12345678
    case rep stosw
    mov esi, MMIO + 0x500
    case lodsd
    case movsw
    std
    mov edi, MMIO + 0x600
    mov ecx, 2
    case rep stosb
    cld
    out 0xe2, al
1:  hlt
    jmp 1b

    .code64
main64:
    lea rsp, [rip + stack_top]
    mov rbx, MMIO
    mov r9, 3
    mov rax, 0x1122334455667788
    mov r10, 0x99aabbccddeeff00
    mov r14, 0x0123456789abcdef
    case mov qword ptr [rbx], rax
    case mov dword ptr [rbx + 8], r10d
    case mov word ptr [rbx + r9 * 8 + 0x100], r10w
    case mov byte ptr [rbx + 0x13], r10b
    case mov byte ptr [rbx + 0x14], ah
    case mov qword ptr [rbx + 0x18], -2
    case mov dword ptr [rbx + r9 * 4], 0x80000000
    case mov r11, qword ptr [rbx + 0x23]
    case mov r12d, dword ptr [rbx + 0x31]
    case mov r13w, word ptr [rbx + 0x45]
    case mov sil, byte ptr [rbx + 0x47]
    case mov bh, byte ptr [rbx + 0x48]
    mov rbx, MMIO
    case movabs rax, qword ptr [MMIO + 0x50]
    case movabs qword ptr [MMIO + 0x58], rax
    case movabs eax, dword ptr [MMIO + 0x5c]
    case movzx r8, word ptr [rbx + 0x60]
    case movzx eax, byte ptr [rbx + 0x61]
    case movsx r9, byte ptr [rbx + 0x62]
    case movsx eax, word ptr [rbx + 0x62]
    case movsxd r10, dword ptr [rbx + 0x64]
    case add qword ptr [rbx + 0x68], r10
    case add r14, qword ptr [rbx + 0x68]
    stc
    case adc dword ptr [rbx + 0x70], 1
    stc
    case sbb r11, qword ptr [rbx + 0x78]
    case sub byte ptr [rbx + 0x80], 0x81
    case cmp qword ptr [rbx + 0x88], -1
    case cmp r14w, word ptr [rbx + 0x8a]
    case test qword ptr [rbx + 0x90], r12
    case or qword ptr [rbx + 0x98], 0x7fffffff
    case xor word ptr [rbx + 0xa0], 0x5a5a
    case and r13d, dword ptr [rbx + 0xa4]
    case inc dword ptr [rbx + 0xa6]
    case dec qword ptr [rbx + 0xa8]
    case not byte ptr [rbx + 0xb0]
    case neg word ptr [rbx + 0xb2]
    case neg qword ptr [rbx + 0xb4]
    case xchg qword ptr [rbx + 0xb8], r14
    case xchg byte ptr [rbx + 0xbf], cl
    case mov eax, dword ptr gs:[rbx + 0xc0]
    case mov qword ptr fs:[rbx + 0xc8], r14
    case mov dword ptr [ebx + 0xd0], eax
    case mov rcx, qword ptr [rbx + 0xff8]
    mov rsi, MMIO + 0x200
    lea rdi, [rip + buf]
    mov rcx, 5
    case rep movsb
    lea rsi, [rip + buf]
    mov rdi, MMIO + 0x300
    mov rcx, 2
    case rep movsq
    mov rdi, MMIO + 0x400
    mov rcx, 3
    mov rax, 0xfedcba9876543210
    case rep stosd
    case stosq
    mov rsi, MMIO + 0x500
    case lodsq
    case lodsb
    mov rsi, MMIO + 0x520
    mov rdi, MMIO + 0x540
    case movsd
    std
    mov rdi, MMIO + 0x608
    mov rcx, 2
    case rep stosq
    cld

    /* Accesses that straddle a page boundary, through the harness's window of 4 KiB pages:
     * A and B are MMIO frames that are not adjacent, then a RAM frame, then MMIO again. */
    movabs rbx, WINDOW
    case mov dword ptr [rbx + 0xffe], eax
    case mov r11, qword ptr [rbx + 0xffb]
    case xchg qword ptr [rbx + 0xffc], r10
    case or word ptr [rbx + 0xfff], 0x8001
    case mov qword ptr [rbx + 0x1ffa], r14
    case mov r12, qword ptr [rbx + 0x1ffd]
    case mov dword ptr [rbx + 0x2ffd], r13d
    lea rdi, [rbx + 0xffe]
    mov rcx, 2
    case rep stosd
    lea rsi, [rbx + 0x1ffe]
    lea rdi, [rip + buf]
    mov rcx, 3
    case rep movsd

    /* The same at CPL 3: the harness maps the page of `user` at WINDOW + USER_CODE and enters
     * it in user mode; a #PF comes back to `page_fault` at CPL 0. */
    lea rsi, [rip + user]
    lea rdx, [rip + page_fault]
    out 0xe3, al
1:  hlt
    jmp 1b

    .balign 4096
user:
    case mov dword ptr [rbx], eax
    case mov r11, qword ptr [rbx + 0xffc]
    case add dword ptr [rbx + 0xffe], 0x7f
    lea rdi, [rbx + 0x1ffe]
    mov rcx, 3
    case rep stosw
    /* A supervisor-only MMIO page: KVM raises #PF, which should reach `page_fault`. */
    out 0xe0, al
    mov dword ptr [rbx + SUPERVISOR], eax
    out 0xe1, al
    xor eax, eax
    out 0xf4, al
1:  jmp 1b

page_fault:
    pop rdx
    mov rax, cr2
    out 0xe5, al
    xor eax, eax
    out 0xf4, al
1:  hlt
    jmp 1b
    .balign 4096

    .section .bss
    .balign 16
buf:
    .skip 64
    .skip 4096
stack_top:
