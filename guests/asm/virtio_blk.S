/*
 * virtio-blk through a minimal polling driver. Disk 0 (read-write, at least 8 sectors):
 * write a pattern to sector 5, flush, read it back, get the id. Disk 1, if present, must be
 * read-only: a write must fail with IOERR. Exits 0, or the number of the failed check.
 */
#include "common.S"
#include "virtio.S"

#define DISK0   0xd0000000
#define DISK1   0xd0001000
#define RING0   0x40000
#define RING1   0x50000
#define HDR     0x60000
#define STATUS  0x60100
#define DATA    0x61000
#define READBUF 0x62000
#define IDBUF   0x63000
#define SECTOR  5

main:
    xor r8d, r8d                                    /* every request goes to queue 0 */
    mov edx, 1
    mov rdi, DISK0
    mov rsi, RING0
    call virtio_init
    test eax, 4
    mov al, 10
    jz fail
    cmp qword ptr [rdi + VREG_CONFIG], 8            /* capacity in sectors */
    mov al, 11
    jb fail

    /* Pattern: byte i = i * 3 + 1 */
    mov rdi, DATA
    xor ecx, ecx
1:  lea eax, [rcx + rcx * 2 + 1]
    mov [rdi + rcx], al
    inc ecx
    cmp ecx, 512
    jb 1b

    /* OUT: header, data (device reads), status (device writes) */
    mov dword ptr [HDR], 1
    mov dword ptr [HDR + 4], 0
    mov qword ptr [HDR + 8], SECTOR
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, DATA, 512, F_NEXT, 2
    DESC RING0, 2, STATUS, 1, F_WRITE, 0
    mov byte ptr [STATUS], 0xff
    mov rdi, DISK0
    mov rsi, RING0
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    mov al, 12
    jnz fail

    /* FLUSH: header, status */
    mov dword ptr [HDR], 4
    DESC RING0, 0, HDR, 16, F_NEXT, 2
    mov byte ptr [STATUS], 0xff
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    mov al, 13
    jnz fail

    /* IN: header, buffer (device writes), status */
    mov dword ptr [HDR], 0
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, READBUF, 512, F_NEXT | F_WRITE, 2
    mov byte ptr [STATUS], 0xff
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    mov al, 14
    jnz fail
    push rsi
    push rdi
    mov rsi, DATA
    mov rdi, READBUF
    mov ecx, 512
    repe cmpsb
    pop rdi
    pop rsi
    mov al, 15
    jne fail

    /* GET_ID: header, 20-byte buffer, status */
    mov dword ptr [HDR], 8
    DESC RING0, 1, IDBUF, 20, F_NEXT | F_WRITE, 2
    mov byte ptr [STATUS], 0xff
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    mov al, 16
    jnz fail
    mov byte ptr [IDBUF + 20], 0
    lea rsi, [rip + s_id]
    call puts
    mov rsi, IDBUF
    call puts
    lea rsi, [rip + nl]
    call puts

    /* Disk 1, when there is one, is read-only: a write must get IOERR (1). */
    mov rdi, DISK1
    cmp dword ptr [rdi + VREG_MAGIC], VIRTIO_MAGIC
    jne 8f
    mov rsi, RING1
    mov edx, 1
    call virtio_init
    test eax, 4
    mov al, 17
    jz fail
    mov dword ptr [HDR], 1
    mov qword ptr [HDR + 8], 0
    DESC RING1, 0, HDR, 16, F_NEXT, 1
    DESC RING1, 1, DATA, 512, F_NEXT, 2
    DESC RING1, 2, STATUS, 1, F_WRITE, 0
    mov byte ptr [STATUS], 0xff
    xor eax, eax
    call virtq_submit
    test al, al
    mov al, 18
    jnz fail
    cmp byte ptr [STATUS], 1
    mov al, 19
    jne fail
    lea rsi, [rip + s_ro]
    call puts
8:  lea rsi, [rip + s_ok]
    call puts
    xor eax, eax
fail:
    ret

    .section .rodata
s_id: .asciz "disk id: "
s_ro: .asciz "read-only disk refused the write\r\n"
s_ok: .asciz "virtio-blk ok\r\n"
nl:   .asciz "\r\n"
