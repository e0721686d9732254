/*
 * For the virtio-blk snapshot test: writes pattern A (byte i = i * 3 + 1) to sector 5 of
 * disk 0, sets PHASE = 1 and waits (halting between LAPIC timer ticks) until the test writes
 * GATE >= 1; a snapshot is taken there. Then, through the same queue (so its indices must
 * have survived), reads sector 5 back, writes pattern B (byte i = i * 5 + 2) to sector 6 and
 * reads it back; prints `result <sum of both sectors' bytes>` and exits 0, or the number of
 * the failed check.
 */
#include "common.S"
#include "virtio.S"

#define VECTOR  0x40
#define DISK0   0xd0000000
#define RING0   0x40000
#define HDR     0x60000
#define STATUS  0x60100
#define DATA    0x61000
#define READBUF 0x62000
#define GATE    0x1f0008
#define PHASE   0x1f0010

main:
    mov al, 0xff                                 /* mask the 8259s: the disk's interrupt */
    out 0x21, al                                 /* line must not reach an empty IDT */
    out 0xa1, al
    mov edi, VECTOR
    lea rax, [rip + tick]
    call idt_set
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff
    mov dword ptr [rdi + 0x3e0], 0xb
    mov dword ptr [rdi + 0x320], VECTOR | 0x20000
    mov dword ptr [rdi + 0x380], 10000000        /* 10 ms */
    sti
    lea rsi, [rip + started]
    call puts

    xor r8d, r8d
    mov edx, 1
    mov rdi, DISK0
    mov rsi, RING0
    call virtio_init
    test eax, 4
    mov al, 10
    jz 9f

    mov edx, 3
    mov ebx, 1
    call pattern
    mov ecx, 5
    call write_sector
    mov al, 11
    jnz 9f

    mov qword ptr [PHASE], 1
1:  hlt
    cmp qword ptr [GATE], 1
    jb 1b

    mov ecx, 5
    call read_sector
    mov al, 12
    jnz 9f
    call sum
    mov r12, rax

    mov edx, 5
    mov ebx, 2
    call pattern
    mov ecx, 6
    call write_sector
    mov al, 13
    jnz 9f
    mov ecx, 6
    call read_sector
    mov al, 14
    jnz 9f
    push rsi
    push rdi
    mov rsi, DATA
    mov rdi, READBUF
    mov ecx, 512
    repe cmpsb
    pop rdi
    pop rsi
    mov al, 15
    jne 9f
    call sum
    add rax, r12

    cli
    lea rsi, [rip + result]
    call puts
    call putdec
    lea rsi, [rip + crlf]
    call puts
    xor eax, eax
9:  ret

/* DATA[i] = i * EDX + EBX */
pattern:
    push rdi
    mov rdi, DATA
    xor ecx, ecx
1:  mov eax, ecx
    imul eax, edx
    add eax, ebx
    mov [rdi + rcx], al
    inc ecx
    cmp ecx, 512
    jb 1b
    pop rdi
    ret

/* RAX = the sum of READBUF's 512 bytes */
sum:
    push rcx
    push rdx
    xor eax, eax
    xor ecx, ecx
1:  movzx edx, byte ptr [READBUF + rcx]
    add rax, rdx
    inc ecx
    cmp ecx, 512
    jb 1b
    pop rdx
    pop rcx
    ret

/* OUT: DATA to sector ECX; ZF clear on failure */
write_sector:
    mov dword ptr [HDR], 1
    mov dword ptr [HDR + 4], 0
    mov [HDR + 8], rcx
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, DATA, 512, F_NEXT, 2
    DESC RING0, 2, STATUS, 1, F_WRITE, 0
    jmp submit

/* IN: sector ECX to READBUF; ZF clear on failure */
read_sector:
    mov dword ptr [HDR], 0
    mov dword ptr [HDR + 4], 0
    mov [HDR + 8], rcx
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, READBUF, 512, F_NEXT | F_WRITE, 2
    DESC RING0, 2, STATUS, 1, F_WRITE, 0
submit:
    mov byte ptr [STATUS], 0xff
    mov rdi, DISK0
    mov rsi, RING0
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    ret

tick:
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0                /* EOI */
    pop rdi
    iretq

    .section .rodata
started: .asciz "started\r\n"
result:  .asciz "result "
crlf:    .asciz "\r\n"
