/*
 * A hostile virtio-blk driver. The command line is a list of scenario letters, run in order
 * against disk 0 (at least 16 sectors); then disk 1 (the bystander, read-write, at least
 * 8 sectors) must still complete a write and a read, and disk 0, reset, a flush. Prints
 * "scenario <x> ok" after each and "virtqueue abuse survived" at the end; exits 0, or prints
 * "FAIL <n>" and exits n.
 *
 *   a  notifications before set-up, to a queue never marked ready, to queues that do not exist
 *   b  rings outside RAM, straddling its end or above 4 GiB: DRIVER_OK must give NEEDS_RESET
 *      and a configuration interrupt, and nothing is used
 *   c  descriptors pointing outside RAM (header, data, status), data straddling its end or
 *      wrapping the address space
 *   d  zero and huge lengths (header, data, status; 4 GiB - 1, 16 MiB over the guest itself)
 *   e  chains that loop, next indices and heads out of range (the device must ask for a
 *      reset: NEEDS_RESET and a configuration interrupt), hostile indirect tables
 *   f  available indices that run ahead of the ring (by 1000, by exactly the ring size, by one
 *      more): too far ahead, the device must ask for a reset
 *   g  queue registers rewritten while the device runs (must be ignored)
 *   h  a flood of notifications, valid and invalid
 *   x  a head out of range and a valid request in the same pass: the valid one completes, or
 *      the device asks for a reset
 *   k  the virtio-console (window 2, after the two disks): transmit chains outside RAM, empty,
 *      of 4 GiB - 1 bytes, looping, with a head out of range or a hostile indirect table, then
 *      a line that must reach the host; receive buffers outside RAM or read-only, then one
 *      that must get the host's input ("ping")
 *   z  errors a host could be asked to log at exit speed: 1000 notifies of an available
 *      index far ahead, 1000 invalid queue sizes and misaligned descriptor tables
 */
#include "common.S"
#include "virtio.S"

#define DISK0       0xd0000000
#define DISK1       0xd0001000
#define RING0       0x40000
#define RING1       0x50000
#define HDR         0x60000
#define STATUS      0x60100
#define HDR2        0x60200
#define STATUS2     0x60300
#define DATA        0x61000
#define READBUF     0x62000
#define ITABLE      0x64000
#define VCON        0xd0002000
#define RINGC       0x70000                 /* receive queue; transmit at + 0x4000 */
#define CONBUF      0x7c000
#define RAM_END     0x2000000               /* the tests give the guest 32 MiB */
#define STRADDLE    0x1ffff00               /* 256 bytes before the end of RAM */
#define OUTSIDE     0x80000000              /* in the hole below 3 GiB: no RAM, no device */
#define SHORT       40000                   /* polls before "the device did nothing" */
#define LONG        2000000                 /* polls before "the device never answered" */
#define F_INDIRECT  4
#define T_IN        0
#define T_OUT       1
#define T_FLUSH     4
#define S_CON_LEN   37
#define VREG_INT_STATUS 0x060
#define VREG_INT_ACK    0x064
#define S_NEEDS_RESET   0x40

/* Fail with code \code unless the flags say \cc. */
.macro CHECK cc, code
    j\cc 9f
    mov al, \code
    jmp fail
9:
.endm

.macro REQ type, sector
    mov dword ptr [HDR], \type
    mov dword ptr [HDR + 4], 0
    mov rax, \sector
    mov qword ptr [HDR + 8], rax
    mov byte ptr [STATUS], 0xff
.endm

/* Submits head 0 and waits: the chain must come back. */
.macro MUST_USE code
    xor eax, eax
    mov edx, LONG
    call submit_wait
    test eax, eax
    CHECK z, \code
.endm

/* Submits head 0 and waits a little: nothing may come back. */
.macro MUST_NOT_USE code
    xor eax, eax
    mov edx, SHORT
    call submit_wait
    test eax, eax
    CHECK nz, \code
.endm

/* The device at RDI must report NEEDS_RESET with a configuration interrupt. */
.macro MUST_RESET code
    call wait_reset
    test eax, eax
    CHECK z, \code
.endm

main:
    xor r8d, r8d                                    /* every request goes to queue 0 */
    mov r12d, dword ptr [r15 + 0x228]               /* cmd_line_ptr */
next_letter:
    movzx eax, byte ptr [r12]
    test al, al
    jz all_done
    inc r12
    cmp al, ' '
    je next_letter
    mov r13d, eax
    lea rsi, [rip + s_scen]
    call puts
    call putc
    mov rdi, DISK0
    mov rsi, RING0
    lea rbx, [rip + scenarios]
1:  movzx ecx, byte ptr [rbx]
    test ecx, ecx
    mov al, 99                                      /* an unknown letter */
    jz fail
    cmp ecx, r13d
    je 2f
    add rbx, 9
    jmp 1b
2:  call qword ptr [rbx + 1]
    lea rsi, [rip + s_ok]
    call puts
    jmp next_letter

all_done:
    call bystander
    mov rdi, DISK0
    mov rsi, RING0
    call fresh
    call good_flush
    lea rsi, [rip + s_survived]
    call puts
    xor eax, eax
    ret

/* Prints FAIL <AL> and exits with AL. */
fail:
    movzx ebx, al
    lea rsi, [rip + s_fail]
    call puts
    mov eax, ebx
    call putdec
    lea rsi, [rip + nl]
    call puts
    mov eax, ebx
    jmp exit

/* RDI = window, RSI = rings: zero the rings, reset, set up one queue of 8; must reach
 * DRIVER_OK. */
fresh:
    push rdi
    push rcx
    mov rdi, rsi
    mov ecx, 0x3000 / 8
    xor eax, eax
    rep stosq
    pop rcx
    pop rdi
    mov edx, 1
    call virtio_init
    test eax, 4
    CHECK nz, 1
    ret

/* Negotiates features on the device at RDI (reset first), leaving queue set-up to the caller. */
negotiate:
    mov dword ptr [rdi + VREG_STATUS], 0
    mov dword ptr [rdi + VREG_STATUS], 1
    mov dword ptr [rdi + VREG_STATUS], 3
    mov dword ptr [rdi + VREG_DRV_SEL], 1
    mov dword ptr [rdi + VREG_DRV_FEAT], 1
    mov dword ptr [rdi + VREG_DRV_SEL], 0
    mov dword ptr [rdi + VREG_DRV_FEAT], 0
    mov dword ptr [rdi + VREG_STATUS], 11
    mov dword ptr [rdi + VREG_QSEL], 0
    mov dword ptr [rdi + VREG_QNUM], 8
    mov dword ptr [rdi + VREG_QDESC], RING0
    mov dword ptr [rdi + VREG_QDESC + 4], 0
    mov dword ptr [rdi + VREG_QDRIVER], RING0 + 0x1000
    mov dword ptr [rdi + VREG_QDRIVER + 4], 0
    mov dword ptr [rdi + VREG_QDEVICE], RING0 + 0x2000
    mov dword ptr [rdi + VREG_QDEVICE + 4], 0
    ret

/* RDI = window, RSI = rings, EAX = head, EDX = polls: makes the chain available, notifies and
 * polls the used ring. Returns EAX = 0 and EBX = the used length when the device used one
 * more chain, EAX = 1 when it did not. */
submit_wait:
    push rcx
    push rdx
    push r9
    movzx r9d, word ptr [rsi + 0x2002]
    inc r9d
    call virtq_post
1:  cmp r9w, word ptr [rsi + 0x2002]
    je 2f
    pause
    dec edx
    jnz 1b
    mov eax, 1
    jmp 3f
2:  movzx eax, r9w
    dec eax
    and eax, 7
    mov ebx, [rsi + 0x2004 + rax * 8 + 4]
    xor eax, eax
3:  pop r9
    pop rdx
    pop rcx
    ret

/* A well-formed FLUSH (descriptors 6 and 7) on the device at RDI/RSI must complete with OK. */
good_flush:
    mov dword ptr [HDR2], T_FLUSH
    mov dword ptr [HDR2 + 4], 0
    mov qword ptr [HDR2 + 8], 0
    DESC rsi, 6, HDR2, 16, F_NEXT, 7
    DESC rsi, 7, STATUS2, 1, F_WRITE, 0
    mov byte ptr [STATUS2], 0xff
    mov eax, 6
    mov edx, LONG
    call submit_wait
    test eax, eax
    CHECK z, 2
    cmp byte ptr [STATUS2], 0
    CHECK e, 3
    ret

/* a: notifications nobody set up for. */
scen_a:
    mov rdi, rsi
    mov ecx, 0x3000 / 8
    xor eax, eax
    rep stosq
    mov rdi, DISK0
    mov dword ptr [rdi + VREG_STATUS], 0
    mov dword ptr [rdi + VREG_NOTIFY], 0            /* before any set-up */
    mov dword ptr [rdi + VREG_NOTIFY], 1
    mov dword ptr [rdi + VREG_NOTIFY], 0xffff
    mov dword ptr [rdi + VREG_NOTIFY], 0xffffffff
    call negotiate                                  /* the queue is never marked ready */
    mov dword ptr [rdi + VREG_STATUS], 15
    mov eax, [rdi + VREG_STATUS]
    test eax, S_NEEDS_RESET
    CHECK z, 10
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, STATUS, 1, F_WRITE, 0
    MUST_NOT_USE 11                                 /* the queue is not ready */
    cmp byte ptr [STATUS], 0xff
    CHECK e, 12
    call fresh
    mov dword ptr [rdi + VREG_NOTIFY], 1            /* queues that do not exist */
    mov dword ptr [rdi + VREG_NOTIFY], 0xffff
    mov dword ptr [rdi + VREG_NOTIFY], 0xffffffff
    mov word ptr [rdi + VREG_NOTIFY], 0             /* not a 32-bit access */
    mov byte ptr [rdi + VREG_NOTIFY + 1], 0
    call good_flush
    ret

/* b: rings that are not in RAM. R14 = the case. */
scen_b:
    xor r14d, r14d
1:  call negotiate
    cmp r14d, 0
    jne 2f
    mov dword ptr [rdi + VREG_QDESC], OUTSIDE       /* descriptors in the hole */
2:  cmp r14d, 1
    jne 2f
    mov dword ptr [rdi + VREG_QDEVICE], RAM_END - 8 /* used ring across the end of RAM */
2:  cmp r14d, 2
    jne 2f
    mov dword ptr [rdi + VREG_QDRIVER + 4], 0xffffffff  /* avail ring far above 4 GiB */
2:  cmp r14d, 3
    jne 2f
    mov dword ptr [rdi + VREG_QDESC], RAM_END - 64  /* 8 descriptors need 128 bytes */
2:  mov dword ptr [rdi + VREG_QREADY], 1
    mov dword ptr [rdi + VREG_STATUS], 15
    mov eax, [rdi + VREG_STATUS]
    test eax, S_NEEDS_RESET
    jnz 3f
    lea eax, [r14 + 20]
    jmp fail
3:  mov eax, [rdi + VREG_INT_STATUS]
    test eax, 2                                     /* configuration change */
    jnz 3f
    lea eax, [r14 + 30]
    jmp fail
3:
    mov dword ptr [rdi + VREG_INT_ACK], 3
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, STATUS, 1, F_WRITE, 0
    MUST_NOT_USE 40
    inc r14d
    cmp r14d, 4
    jb 1b
    call fresh
    call good_flush
    ret

/* c: descriptors pointing outside RAM. */
scen_c:
    call fresh
    /* The header outside RAM: returned unanswered, nothing written. */
    REQ T_IN, 0
    DESC rsi, 0, OUTSIDE, 16, F_NEXT, 1
    DESC rsi, 1, READBUF, 512, F_NEXT | F_WRITE, 2
    DESC rsi, 2, STATUS, 1, F_WRITE, 0
    MUST_USE 50
    test ebx, ebx
    CHECK z, 51
    cmp byte ptr [STATUS], 0xff
    CHECK e, 52
    /* Data outside RAM, a write: IOERR. */
    REQ T_OUT, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, OUTSIDE, 512, F_NEXT, 2
    DESC rsi, 2, STATUS, 1, F_WRITE, 0
    MUST_USE 53
    cmp byte ptr [STATUS], 1
    CHECK e, 54
    /* Data whose end wraps the address space, a read: IOERR. */
    REQ T_IN, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, 0xfffffffffffffe00, 1024, F_NEXT | F_WRITE, 2
    DESC rsi, 2, STATUS, 1, F_WRITE, 0
    MUST_USE 55
    cmp byte ptr [STATUS], 1
    CHECK e, 56
    /* A read into a buffer straddling the end of RAM: IOERR. */
    REQ T_IN, 0
    DESC rsi, 1, STRADDLE, 512, F_NEXT | F_WRITE, 2
    MUST_USE 57
    cmp byte ptr [STATUS], 1
    CHECK e, 58
    /* The status byte outside RAM: returned all the same. */
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, OUTSIDE, 1, F_WRITE, 0
    MUST_USE 59
    call good_flush
    ret

/* d: zero and huge lengths. */
scen_d:
    call fresh
    /* A header of length 0: returned unanswered. */
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 0, F_NEXT, 1
    DESC rsi, 1, STATUS, 1, F_WRITE, 0
    MUST_USE 60
    test ebx, ebx
    CHECK z, 61
    cmp byte ptr [STATUS], 0xff
    CHECK e, 62
    /* A status of length 0: the device must not write it. */
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, STATUS, 0, F_WRITE, 0
    MUST_USE 63
    cmp byte ptr [STATUS], 0xff
    CHECK e, 64
    /* A read of length 0: answered. */
    REQ T_IN, 0
    DESC rsi, 1, READBUF, 0, F_NEXT | F_WRITE, 2
    DESC rsi, 2, STATUS, 1, F_WRITE, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    MUST_USE 65
    cmp byte ptr [STATUS], 0xff
    CHECK ne, 66
    /* 4 GiB - 1 and 4 GiB - 512 bytes of data: IOERR. */
    REQ T_IN, 0
    DESC rsi, 1, READBUF, 0xffffffff, F_NEXT | F_WRITE, 2
    MUST_USE 67                                     /* over 4 GiB in all: cut short */
    cmp byte ptr [STATUS], 0
    CHECK ne, 68
    REQ T_OUT, 0
    DESC rsi, 1, DATA, 0xfffffe00, F_NEXT, 2
    MUST_USE 69
    cmp byte ptr [STATUS], 1
    CHECK e, 70
    /* 16 MiB read over the guest's own code and stack (sector 0 of a 16-sector disk, so out
     * of range): IOERR, and the guest lives on. */
    REQ T_IN, 0
    DESC rsi, 1, 0, 0x1000000, F_NEXT | F_WRITE, 2
    MUST_USE 71
    cmp byte ptr [STATUS], 1
    CHECK e, 72
    /* Two 2 GiB buffers: more than 4 GiB in one chain. */
    REQ T_OUT, 0
    DESC rsi, 1, DATA, 0x80000000, F_NEXT, 3
    DESC rsi, 3, DATA, 0x80000000, F_NEXT, 2
    MUST_USE 73
    cmp byte ptr [STATUS], 0
    CHECK ne, 74
    call good_flush
    ret

/* e: loops, indices out of range, indirect tables. */
scen_e:
    call fresh
    /* 0 -> 1 -> 0 -> ... */
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, STATUS, 1, F_WRITE | F_NEXT, 0
    MUST_USE 80
    /* 0 -> 0 */
    DESC rsi, 0, HDR, 16, F_NEXT, 0
    MUST_USE 81
    /* next out of range */
    DESC rsi, 0, HDR, 16, F_NEXT, 200
    MUST_USE 82
    /* every descriptor chained to the next, the last back to the first */
    xor ecx, ecx
1:  mov qword ptr [rsi + rcx * 8], 0
    inc ecx
    cmp ecx, 16
    jb 1b
    xor ecx, ecx
2:  mov rax, rcx
    shl rax, 4
    mov qword ptr [rsi + rax], HDR
    mov dword ptr [rsi + rax + 8], 16
    mov word ptr [rsi + rax + 12], F_NEXT
    lea edx, [rcx + 1]
    and edx, 7
    mov word ptr [rsi + rax + 14], dx
    inc ecx
    cmp ecx, 8
    jb 2b
    MUST_USE 83
    /* a head out of range has no used slot: the ring is broken, the device needs a reset */
    mov eax, 200
    mov edx, SHORT
    call submit_wait
    test eax, eax
    CHECK nz, 84
    MUST_RESET 92
    call fresh
    mov eax, 0xffff
    mov edx, SHORT
    call submit_wait
    test eax, eax
    CHECK nz, 93
    MUST_RESET 94
    call fresh
    call good_flush
    /* indirect tables: outside RAM, empty, misaligned length, nested, too long */
    mov r14d, 0
3:  lea eax, [r14 + 85]
    mov r13d, eax
    mov qword ptr [ITABLE], HDR
    mov dword ptr [ITABLE + 8], 16
    mov word ptr [ITABLE + 12], F_INDIRECT
    mov word ptr [ITABLE + 14], 0
    lea rax, [rip + itables]
    mov rcx, [rax + r14 * 8]
    mov [rsi], ecx                                  /* address: low dword */
    shr rcx, 32
    mov dword ptr [rsi + 4], 0
    mov [rsi + 8], ecx                              /* length: high dword */
    mov word ptr [rsi + 12], F_INDIRECT
    mov word ptr [rsi + 14], 0
    xor eax, eax
    mov edx, LONG
    call submit_wait
    test eax, eax
    mov eax, r13d
    jnz fail
    inc r14d
    cmp r14d, 5
    jb 3b
    /* and a well-formed indirect request still works */
    REQ T_FLUSH, 0
    DESC ITABLE, 0, HDR, 16, F_NEXT, 1
    DESC ITABLE, 1, STATUS, 1, F_WRITE, 0
    DESC rsi, 0, ITABLE, 32, F_INDIRECT, 0
    MUST_USE 90
    cmp byte ptr [STATUS], 0
    CHECK e, 91
    call good_flush
    ret

/* f: available indices that run ahead. */
scen_f:
    call fresh
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, STATUS, 1, F_WRITE, 0
    movzx r14d, word ptr [rsi + 0x1002]
    movzx r13d, word ptr [rsi + 0x2002]
    /* 1000 ahead */
    lea eax, [r14 + 1000]
    mov [rsi + 0x1002], ax
    mov dword ptr [rdi + VREG_NOTIFY], 0
    call settle
    cmp r13w, word ptr [rsi + 0x2002]
    CHECK e, 100
    MUST_RESET 104
    /* the driver resets and starts again */
    call fresh
    call good_flush
    /* exactly the ring size ahead: eight copies of one chain, all used */
    REQ T_FLUSH, 0
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, STATUS, 1, F_WRITE, 0
    movzx r14d, word ptr [rsi + 0x1002]
    movzx r13d, word ptr [rsi + 0x2002]
    xor ecx, ecx
1:  mov word ptr [rsi + 0x1004 + rcx * 2], 0
    inc ecx
    cmp ecx, 8
    jb 1b
    lea eax, [r14 + 8]
    mov [rsi + 0x1002], ax
    mov dword ptr [rdi + VREG_NOTIFY], 0
    add r13d, 8
    mov edx, LONG
2:  cmp r13w, word ptr [rsi + 0x2002]
    je 3f
    pause
    dec edx
    jnz 2b
    mov al, 101
    jmp fail
3:  cmp byte ptr [STATUS], 0
    CHECK e, 102
    /* one more than the ring size: nothing */
    movzx r14d, word ptr [rsi + 0x1002]
    lea eax, [r14 + 9]
    mov [rsi + 0x1002], ax
    mov dword ptr [rdi + VREG_NOTIFY], 0
    call settle
    cmp r13w, word ptr [rsi + 0x2002]
    CHECK e, 103
    MUST_RESET 105
    call fresh
    call good_flush
    ret

/* Returns EAX = 0 once the device at RDI reports NEEDS_RESET and a configuration
 * interrupt, 1 if it does not soon. */
wait_reset:
    push rcx
    mov ecx, 20
1:  mov eax, [rdi + VREG_STATUS]
    test eax, S_NEEDS_RESET
    jnz 2f
    call settle
    loop 1b
    mov eax, 1
    jmp 3f
2:  mov eax, [rdi + VREG_INT_STATUS]
    and eax, 2
    xor eax, 2                                      /* 0 when the bit is set */
3:  pop rcx
    ret

/* Gives the device time to act on what was just notified. */
settle:
    push rdx
    mov edx, SHORT
1:  pause
    dec edx
    jnz 1b
    pop rdx
    ret

/* g: queue registers rewritten while the device runs. */
scen_g:
    call fresh
    mov dword ptr [rdi + VREG_QSEL], 0
    mov dword ptr [rdi + VREG_QNUM], 2
    mov dword ptr [rdi + VREG_QDESC], OUTSIDE
    mov dword ptr [rdi + VREG_QDESC + 4], 1
    mov dword ptr [rdi + VREG_QDRIVER], OUTSIDE
    mov dword ptr [rdi + VREG_QDEVICE], RAM_END - 4
    mov dword ptr [rdi + VREG_QREADY], 0
    mov eax, [rdi + VREG_QREADY]
    cmp eax, 1
    CHECK e, 110
    call good_flush
    mov dword ptr [rdi + VREG_QSEL], 7              /* a queue that does not exist */
    mov dword ptr [rdi + VREG_QNUM], 8
    mov dword ptr [rdi + VREG_QDESC], OUTSIDE
    mov dword ptr [rdi + VREG_QREADY], 1
    mov eax, [rdi + VREG_QREADY]
    test eax, eax
    CHECK z, 111
    mov dword ptr [rdi + VREG_QSEL], 0
    mov dword ptr [rdi + VREG_DRV_SEL], 0           /* features after DRIVER_OK */
    mov dword ptr [rdi + VREG_DRV_FEAT], 0xffffffff
    mov dword ptr [rdi + VREG_STATUS], 0x8b         /* FAILED on top */
    mov dword ptr [rdi + VREG_CONFIG], 0xffffffff   /* capacity is read-only */
    mov eax, [rdi + VREG_CONFIG]
    cmp eax, 16
    CHECK e, 112
    ret

/* h: a flood of notifications. */
scen_h:
    call fresh
    mov ecx, 3000
1:  mov dword ptr [rdi + VREG_NOTIFY], 0
    mov [rdi + VREG_NOTIFY], ecx
    loop 1b
    call good_flush
    ret

/* x: a head out of range, then a valid chain, made available together. */
scen_x:
    call fresh
    mov dword ptr [HDR2], T_FLUSH
    mov dword ptr [HDR2 + 4], 0
    mov qword ptr [HDR2 + 8], 0
    DESC rsi, 6, HDR2, 16, F_NEXT, 7
    DESC rsi, 7, STATUS2, 1, F_WRITE, 0
    mov byte ptr [STATUS2], 0xff
    movzx eax, word ptr [rsi + 0x1002]
    mov ecx, eax
    and ecx, 7
    mov word ptr [rsi + 0x1004 + rcx * 2], 200
    lea ecx, [rax + 1]
    and ecx, 7
    mov word ptr [rsi + 0x1004 + rcx * 2], 6
    add eax, 2
    mov [rsi + 0x1002], ax
    mov dword ptr [rdi + VREG_NOTIFY], 0
    /* Either answer will do: the valid one completed, or the device asks for a reset
     * (which hands every chain back to the driver). */
    call wait_reset
    test eax, eax
    jz 4f
    mov edx, LONG / 4
1:  cmp byte ptr [STATUS2], 0xff
    jne 2f
    pause
    dec edx
    jnz 1b
    mov al, 120                                     /* the valid request was lost */
    jmp fail
2:  mov edx, LONG / 4
3:  cmp word ptr [rsi + 0x2002], 0
    jne 4f
    pause
    dec edx
    jnz 3b
    mov al, 121                                     /* done but never returned */
    jmp fail
4:  call fresh
    call good_flush
    ret

/* k: the virtio-console's queues. */
scen_k:
    mov rdi, VCON
    cmp dword ptr [rdi + VREG_DEVICE_ID], 3
    CHECK e, 150
    call console_init
    /* Transmit (queue 1): each must come back. */
    mov r8d, 1
    mov rsi, RINGC + 0x4000
    DESC rsi, 0, OUTSIDE, 16, 0, 0
    MUST_USE 152
    DESC rsi, 0, CONBUF, 0, 0, 0
    MUST_USE 153
    DESC rsi, 0, 0, 0xffffffff, 0, 0                /* cut short at the device's limit */
    MUST_USE 154
    DESC rsi, 0, CONBUF, 1, F_NEXT, 0               /* loops */
    MUST_USE 155
    DESC rsi, 0, CONBUF, 1, F_NEXT, 200
    MUST_USE 156
    DESC rsi, 0, OUTSIDE, 64, F_INDIRECT, 0
    MUST_USE 158
    DESC rsi, 0, ITABLE, 0xfffffff0, F_INDIRECT, 0
    MUST_USE 159
    mov eax, 200                                    /* a head out of range: reset */
    mov edx, SHORT
    call submit_wait
    test eax, eax
    CHECK nz, 157
    MUST_RESET 167
    call console_init
    mov r8d, 1
    mov rsi, RINGC + 0x4000
    lea rax, [rip + s_con]
    DESC rsi, 0, rax, S_CON_LEN, 0, 0
    MUST_USE 160
    /* Receive (queue 0): the host's input waits for a buffer the device can fill. */
    xor r8d, r8d
    mov rsi, RINGC
    DESC rsi, 0, OUTSIDE, 64, F_WRITE, 0
    MUST_USE 161
    mov dword ptr [CONBUF], 0
    DESC rsi, 0, CONBUF, 64, 0, 0                   /* read-only */
    MUST_USE 162
    test ebx, ebx
    CHECK z, 163
    DESC rsi, 0, CONBUF, 64, F_WRITE, 0
    MUST_USE 164
    cmp ebx, 4
    CHECK e, 165
    cmp dword ptr [CONBUF], 0x676e6970              /* "ping" */
    CHECK e, 166
    mov rdi, DISK0
    mov rsi, RING0
    ret

/* Sets the virtio-console at RDI up afresh, both queues. */
console_init:
    push rdi
    mov rdi, RINGC                                  /* both queues' rings */
    mov ecx, 0x7000 / 8
    xor eax, eax
    rep stosq
    pop rdi
    mov rsi, RINGC
    mov edx, 2
    call virtio_init
    test eax, 4
    CHECK nz, 151
    ret

/* z: the same guest error, over and over. */
scen_z:
    call fresh
    movzx r14d, word ptr [rsi + 0x1002]
    lea eax, [r14 + 1000]
    mov [rsi + 0x1002], ax
    mov ecx, 1000
1:  mov dword ptr [rdi + VREG_NOTIFY], 0
    loop 1b
    call settle
    mov [rsi + 0x1002], r14w
    call negotiate
    mov ecx, 1000
2:  mov dword ptr [rdi + VREG_QNUM], 3
    mov dword ptr [rdi + VREG_QDESC], RING0 + 1
    loop 2b
    call fresh
    call good_flush
    ret

/* Disk 1, which nobody abused, writes and reads back sector 1. */
bystander:
    mov rdi, DISK1
    mov rsi, RING1
    cmp dword ptr [rdi + VREG_MAGIC], VIRTIO_MAGIC
    CHECK e, 140
    call fresh
    mov rdi, DATA
    xor ecx, ecx
1:  lea eax, [rcx + rcx * 4 + 7]
    mov [rdi + rcx], al
    inc ecx
    cmp ecx, 512
    jb 1b
    mov rdi, DISK1
    REQ T_OUT, 1
    DESC rsi, 0, HDR, 16, F_NEXT, 1
    DESC rsi, 1, DATA, 512, F_NEXT, 2
    DESC rsi, 2, STATUS, 1, F_WRITE, 0
    MUST_USE 141
    cmp byte ptr [STATUS], 0
    CHECK e, 142
    REQ T_IN, 1
    DESC rsi, 1, READBUF, 512, F_NEXT | F_WRITE, 2
    MUST_USE 143
    cmp byte ptr [STATUS], 0
    CHECK e, 144
    push rsi
    push rdi
    mov rsi, DATA
    mov rdi, READBUF
    mov ecx, 512
    repe cmpsb
    pop rdi
    pop rsi
    CHECK e, 145
    lea rsi, [rip + s_bystander]
    call puts
    ret

    .section .rodata
    .align 8
/* Indirect descriptors as (length << 32 | address). */
itables:
    .quad (64 << 32) | OUTSIDE                      /* table outside RAM */
    .quad (0 << 32) | ITABLE                        /* empty */
    .quad (17 << 32) | ITABLE                       /* not a whole descriptor */
    .quad (16 << 32) | ITABLE                       /* an indirect inside an indirect */
    .quad (0xfffffff0 << 32) | ITABLE               /* more than 65535 descriptors */
/* letter, handler */
scenarios:
    .byte 'a'
    .quad scen_a
    .byte 'b'
    .quad scen_b
    .byte 'c'
    .quad scen_c
    .byte 'd'
    .quad scen_d
    .byte 'e'
    .quad scen_e
    .byte 'f'
    .quad scen_f
    .byte 'g'
    .quad scen_g
    .byte 'h'
    .quad scen_h
    .byte 'x'
    .quad scen_x
    .byte 'z'
    .quad scen_z
    .byte 'k'
    .quad scen_k
    .byte 0
s_con:      .ascii "virtio-console still carries output\r\n"
    /* S_CON_LEN bytes */
s_scen:     .asciz "scenario "
s_ok:       .asciz " ok\r\n"
s_fail:     .asciz "FAIL "
s_bystander: .asciz "bystander disk ok\r\n"
s_survived: .asciz "virtqueue abuse survived\r\n"
nl:         .asciz "\r\n"
