/*
 * Pseudo-random reads and writes (1, 2, 4 and 8 bytes, pseudo-random values) at pseudo-random
 * offsets of every device window: the 16550, the i8042, disk 0's and the virtio-console's
 * virtio-mmio windows and the rest of the virtio range, the MMIO console, every I/O port, the
 * whole MMIO hole below 4 GiB, and, built with -DUSERSPACE_IRQCHIP (vibe-vmm's own IOAPIC and
 * local APIC), those two. Then the guest resets what it needs and proves the devices still
 * work: the 16550 prints, disk 0 (virtio-blk) writes and reads back a sector, the
 * virtio-console and the MMIO console print; it exits through the debug-exit port with 42.
 *
 * Left out, because a real machine would do just what the guest asked: the debug-exit port,
 * the i8042's reset commands (0xfe, and 0xd1 whose data byte can pull the reset line), KVM's
 * private pages at 0xfffbc000, with KVM's irqchip its IOAPIC and local APIC, and INIT,
 * STARTUP, NMI or SMI through the local APIC's ICR (the delivery mode is forced to fixed).
 * Interrupts stay disabled (IF = 0); an NMI would still reach its IDT handler.
 *
 * With a second vCPU, that one hammers at the same time from 32-bit protected mode: random
 * 32-bit writes and reads on the virtio windows' registers, the MMIO console, the 16550 and
 * (-DUSERSPACE_IRQCHIP) the IOAPIC, until the first asks it to stop before its checks.
 *
 * The command line may hold a seed: 16 hex digits; otherwise a fixed one.
 */
#include "common.S"
#include "virtio.S"

#define DISK0       0xd0000000
#define VCON        0xd0001000
#define MCON        0xd1000000
#define RING0       0x40000
#define RINGC       0x50000
#define HDR         0x60000
#define STATUS      0x60100
#define DATA        0x61000
#define READBUF     0x62000
#define DEFAULT_SEED 0x9e3779b97f4a7c15
#define S_VCON_LEN  35
#define TRAMPOLINE  0x10000
#define FLAG        0x11000                     /* vCPU 1: 1 hammering, 2 stopped */
#define STOP        0x11004                     /* vCPU 0 -> 1: stop */
#define COUNT       0x11008                     /* vCPU 1's accesses */
#define STACK1      0x78000                     /* vCPU 1's stack top */

/* Window table entries: base, size, accesses, kind (0 port, 1 MMIO), hot (favour offsets
 * below this half of the time; 0: never). */
.macro WINDOW base, size, count, kind, hot
    .quad \base
    .quad \size
    .long \count
    .long \kind
    .quad \hot
.endm

.macro CHECK cc, code
    j\cc 9f
    mov al, \code
    jmp fail
9:
.endm

main:
    lea rax, [rip + nmi]
    mov edi, 2
    call idt_set
    xor edi, edi
1:  cmp edi, 2
    je 2f
    lea rax, [rip + exception]
    call idt_set
2:  inc edi
    cmp edi, 32
    jb 1b
    call read_seed
    call start_hammer

    lea rbx, [rip + windows]
next_window:
    mov eax, [rbx + 16]
    test eax, eax
    jz chaos_done
    mov ecx, r13d                                   /* half as many with vCPU 1 busy too */
    shr eax, cl
    mov ecx, eax
3:  call one_access
    dec ecx
    jnz 3b
    add rbx, 32
    jmp next_window

chaos_done:
    call stop_hammer
    /* The UART as a driver would set it up again: 8N1, no loopback, no interrupts. */
    mov dx, 0x3fb
    mov al, 0x03
    out dx, al
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    mov dx, 0x3fc
    mov al, 0x03
    out dx, al
    mov dx, 0x3fa
    mov al, 0x07
    out dx, al
    lea rsi, [rip + s_serial]
    call puts
    cmp byte ptr [FLAG], 2
    jne 1f
    lea rsi, [rip + s_hammered]
    call puts
    mov eax, [COUNT]
    call putdec
    lea rsi, [rip + s_accesses]
    call puts
1:

    /* Disk 0: write sector 3, read it back. */
    mov rdi, DISK0
    mov rsi, RING0
    mov edx, 1
    xor r8d, r8d
    call clear_rings
    call virtio_init
    test eax, 4
    CHECK nz, 10
    mov rdi, DATA
    xor ecx, ecx
1:  lea eax, [rcx + rcx * 2 + 5]
    mov [rdi + rcx], al
    inc ecx
    cmp ecx, 512
    jb 1b
    mov rdi, DISK0
    mov dword ptr [HDR], 1
    mov dword ptr [HDR + 4], 0
    mov qword ptr [HDR + 8], 3
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, DATA, 512, F_NEXT, 2
    DESC RING0, 2, STATUS, 1, F_WRITE, 0
    mov byte ptr [STATUS], 0xff
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    CHECK z, 11
    mov dword ptr [HDR], 0
    DESC RING0, 1, READBUF, 512, F_NEXT | F_WRITE, 2
    mov byte ptr [STATUS], 0xff
    xor eax, eax
    call virtq_submit
    or al, [STATUS]
    CHECK z, 12
    push rsi
    push rdi
    mov rsi, DATA
    mov rdi, READBUF
    mov ecx, 512
    repe cmpsb
    pop rdi
    pop rsi
    CHECK e, 13
    lea rsi, [rip + s_disk]
    call puts

    /* The virtio-console: one line on its transmit queue (1). */
    mov rdi, VCON
    mov rsi, RINGC
    call clear_rings
    add rsi, 0x4000
    call clear_rings
    sub rsi, 0x4000
    mov edx, 2
    call virtio_init
    test eax, 4
    CHECK nz, 14
    lea rax, [rip + s_vcon]
    DESC RINGC + 0x4000, 0, rax, S_VCON_LEN, 0, 0
    mov rsi, RINGC + 0x4000
    mov r8d, 1
    xor eax, eax
    call virtq_submit
    test eax, eax
    CHECK z, 15

    /* The MMIO console. */
    mov rdi, MCON
    cmp dword ptr [rdi + 8], 0x4e4f434d
    CHECK e, 16
    lea rsi, [rip + s_mcon]
1:  lodsb
    test al, al
    jz 2f
    mov [rdi], al
    jmp 1b
2:  lea rsi, [rip + s_done]
    call puts
    mov eax, 42
    ret

/* Starts vCPU 1 (if there is one) at the real-mode trampoline, which enters 32-bit
 * protected mode and hammers. */
start_hammer:
    xor r13d, r13d                                  /* R13 = 1 once vCPU 1 hammers */
    mov dword ptr [FLAG], 0
    mov dword ptr [STOP], 0
    mov dword ptr [COUNT], 0
    mov eax, 1
    cpuid
    shr ebx, 16
    cmp bl, 2
    jb 9f
    lea rsi, [rip + tramp]
    mov rdi, TRAMPOLINE
    mov ecx, tramp_end - tramp
    rep movsb
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xf0], 0x1ff
    mov dword ptr [rdi + 0x310], 1 << 24            /* APIC ID 1 */
    mov dword ptr [rdi + 0x300], 0x4500             /* INIT */
    mov dword ptr [rdi + 0x310], 1 << 24
    mov dword ptr [rdi + 0x300], 0x4600 | (TRAMPOLINE >> 12)   /* STARTUP */
    mov ecx, 2000000
1:  cmp byte ptr [FLAG], 1
    je 2f
    pause
    loop 1b
    mov al, 20
    jmp fail
2:  mov r13d, 1
    lea rsi, [rip + s_hammer]
    call puts
9:  ret

/* Stops vCPU 1's hammering. */
stop_hammer:
    cmp byte ptr [FLAG], 0
    je 9f
    mov byte ptr [STOP], 1
    mov ecx, 2000000
1:  cmp byte ptr [FLAG], 2
    je 2f
    pause
    loop 1b
    mov al, 21
    jmp fail
2:
9:  ret

    .code16
tramp:
    cli
    lgdt cs:[tramp_gdt_desc - tramp]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                                /* ljmp 0x08:hammer32 */
    .long hammer32
    .word 0x08
    .align 8
tramp_gdt_desc:
    .word hammer_gdt_end - hammer_gdt - 1
    .long hammer_gdt
tramp_end:

    .code32
hammer32:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, STACK1
    mov esi, 0x2545f491                             /* xorshift32 state */
    mov byte ptr [FLAG], 1
1:  cmp byte ptr [STOP], 0
    jne 8f
    inc dword ptr [COUNT]
    call xorshift32
    mov ebx, eax
    call xorshift32
    mov ecx, eax                                    /* the value */
    mov eax, ebx
    shr eax, 4
    and eax, 0xffc                                  /* an aligned offset */
    mov edx, ebx
    shr edx, 28
    and edx, 7
    cmp edx, 0
    je 2f
    cmp edx, 1
    je 3f
    cmp edx, 2
    je 4f
    cmp edx, 3
    je 5f
    cmp edx, 4
    je 6f
    cmp edx, 5
    je 7f
#ifdef USERSPACE_IRQCHIP
    and eax, 0x3c                                   /* IOAPIC: IOREGSEL, IOWIN, EOI */
    mov [eax + 0xfec00000], ecx
    jmp 1b
#else
    mov eax, [eax + VCON]                           /* read anywhere in the console's window */
    jmp 1b
#endif
2:  and eax, 0xfc                                   /* disk 0's registers */
    mov [eax + DISK0], ecx
    jmp 1b
3:  mov eax, [eax + DISK0]                          /* read anywhere in disk 0's window */
    jmp 1b
4:  and eax, 0xfc                                   /* the virtio-console's registers */
    mov [eax + VCON], ecx
    jmp 1b
5:  mov [eax + DISK0], ecx                          /* anywhere in disk 0's window */
    jmp 1b
6:  and eax, 0xc                                    /* the MMIO console */
    mov [eax + MCON], ecx
    jmp 1b
7:  mov edx, ebx                                    /* the 16550 */
    and edx, 7
    add edx, 0x3f8
    mov eax, ecx
    out dx, al
    in al, dx
    jmp 1b
8:  mov byte ptr [FLAG], 2
9:  cli
    hlt
    jmp 9b

/* ESI = state; returns EAX. */
xorshift32:
    mov eax, esi
    shl eax, 13
    xor esi, eax
    mov eax, esi
    shr eax, 17
    xor esi, eax
    mov eax, esi
    shl eax, 5
    xor esi, eax
    mov eax, esi
    ret
    .code64

/* RSI = ring memory of one queue: zeroes its 0x3000 bytes. */
clear_rings:
    push rdi
    push rcx
    push rax
    mov rdi, rsi
    mov ecx, 0x3000 / 8
    xor eax, eax
    rep stosq
    pop rax
    pop rcx
    pop rdi
    ret

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

nmi:
    iretq

exception:
    lea rsi, [rip + s_exception]
    call puts
    mov al, 77
    jmp exit

/* R14 = the seed: 16 hex digits from the command line, or the default. */
read_seed:
    mov r14, DEFAULT_SEED
    mov esi, dword ptr [r15 + 0x228]
    test esi, esi
    jz 3f
    xor edx, edx
    mov ecx, 16
1:  movzx eax, byte ptr [rsi]
    inc rsi
    sub eax, '0'
    cmp eax, 10
    jb 2f
    sub eax, 'a' - '0' - 10
    cmp eax, 16
    jae 3f                                          /* not a seed */
    cmp eax, 10
    jb 3f
2:  shl rdx, 4
    or rdx, rax
    loop 1b
    test rdx, rdx
    jz 3f
    mov r14, rdx
3:  ret

/* xorshift64: R14 = state; returns RAX. */
rand:
    mov rax, r14
    shl rax, 13
    xor r14, rax
    mov rax, r14
    shr rax, 7
    xor r14, rax
    mov rax, r14
    shl rax, 17
    xor r14, rax
    mov rax, r14
    ret

/* One access in the window at RBX. Preserves RBX and RCX. */
one_access:
    push rcx
    push rbx
    call rand
    mov r9, rax                                     /* offset source */
    call rand
    mov r10, rax                                    /* value */
    call rand
    mov r11, rax                                    /* width and direction */
    mov rcx, [rbx + 8]                              /* size */
    mov rsi, [rbx + 24]                             /* hot */
    test rsi, rsi
    jz 1f
    bt r9, 63
    jnc 1f
    mov rcx, rsi
1:  mov rax, r9
    shr rax, 1
    xor edx, edx
    div rcx
    mov rdi, [rbx]
    add rdi, rdx                                    /* the address or port */
    mov ecx, r11d
    and ecx, 3
    mov esi, 1
    shl esi, cl                                     /* width 1, 2, 4, 8 */
    mov rax, r10
    cmp dword ptr [rbx + 20], 0
    jne mmio_access

    /* Port I/O: 8 bytes become 4. */
    cmp esi, 8
    jne 1f
    mov esi, 4
1:  cmp rdi, 0xffff
    ja done_access
    lea rdx, [rdi + rsi]
    cmp rdx, DEBUG_EXIT
    jbe 2f
    cmp rdi, DEBUG_EXIT
    jbe done_access                                 /* would touch the debug-exit port */
2:  cmp rdi, 0x64
    jne 3f
    cmp al, 0xfe                                    /* pulse reset */
    je 4f
    cmp al, 0xd1                                    /* write output port (reset line) */
    jne 3f
4:  xor al, 1
3:  mov edx, edi
    bt r11, 8
    jc pio_read
    cmp esi, 1
    jne 5f
    out dx, al
    jmp done_access
5:  cmp esi, 2
    jne 6f
    out dx, ax
    jmp done_access
6:  out dx, eax
    jmp done_access
pio_read:
    cmp esi, 1
    jne 5f
    in al, dx
    jmp done_access
5:  cmp esi, 2
    jne 6f
    in ax, dx
    jmp done_access
6:  in eax, dx
    jmp done_access

mmio_access:
    /* Only the 4 GiB the page tables map; not KVM's private pages. */
    lea rdx, [rdi + 8]
    mov rcx, 0x100000000
    cmp rdx, rcx
    ja done_access
    mov rcx, 0xfffbc000
    cmp rdx, rcx
    jbe 1f
    mov rcx, 0xfffc0000
    cmp rdi, rcx
    jb done_access
1:
#ifndef USERSPACE_IRQCHIP
    /* KVM's own IOAPIC and local APIC are not ours to test. */
    mov rcx, 0xfec00000
    cmp rdx, rcx
    jbe 1f
    mov rcx, 0xff000000
    cmp rdi, rcx
    jb done_access
1:
#endif
    /* The local APIC's ICR: fixed delivery only. */
    mov rdx, 0xfee002f0
    cmp rdi, rdx
    jb 1f
    add rdx, 0x20
    cmp rdi, rdx
    jae 1f
    mov rdi, 0xfee00300
    mov esi, 4
    and eax, ~0x700
1:  bt r11, 8
    jc mmio_read
    cmp esi, 1
    jne 5f
    mov [rdi], al
    jmp done_access
5:  cmp esi, 2
    jne 6f
    mov [rdi], ax
    jmp done_access
6:  cmp esi, 4
    jne 7f
    mov [rdi], eax
    jmp done_access
7:  mov [rdi], rax
    jmp done_access
mmio_read:
    cmp esi, 1
    jne 5f
    mov al, [rdi]
    jmp done_access
5:  cmp esi, 2
    jne 6f
    mov ax, [rdi]
    jmp done_access
6:  cmp esi, 4
    jne 7f
    mov eax, [rdi]
    jmp done_access
7:  mov rax, [rdi]
done_access:
    pop rbx
    pop rcx
    ret

    .section .rodata
    .align 8
windows:
    WINDOW 0x3f8, 8, 3000, 0, 0                     /* 16550 */
    WINDOW 0x60, 5, 2000, 0, 0                      /* i8042 */
    WINDOW DISK0, 0x1000, 3000, 1, 0x100            /* virtio-blk: registers, config */
    WINDOW VCON, 0x1000, 3000, 1, 0x100             /* virtio-console */
    WINDOW 0xd0000000, 0x1000000, 1000, 1, 0x20000  /* the whole virtio range */
    WINDOW MCON, 0x1000, 1000, 1, 0x10              /* MMIO console */
#ifdef USERSPACE_IRQCHIP
    WINDOW 0xfec00000, 0x1000, 3000, 1, 0x50        /* IOAPIC: IOREGSEL, IOWIN, EOI */
    WINDOW 0xfee00000, 0x1000, 4000, 1, 0x400       /* local APIC registers */
#endif
    WINDOW 0, 0x10000, 3000, 0, 0x400               /* every I/O port */
    WINDOW 0xc0000000, 0x40000000, 1000, 1, 0       /* the MMIO hole below 4 GiB */
    .quad 0, 0, 0, 0

    .align 8
hammer_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff                        /* 0x08: 32-bit code, flat */
    .quad 0x00cf93000000ffff                        /* 0x10: data, flat */
hammer_gdt_end:
s_hammer:   .asciz "vCPU 1 hammering\r\n"
s_hammered: .asciz "vCPU 1 stopped after "
s_accesses: .asciz " accesses\r\n"
s_serial:   .asciz "serial ok after the chaos\r\n"
s_disk:     .asciz "virtio-blk ok after the chaos\r\n"
s_vcon:     .ascii "virtio-console ok after the chaos\r\n"  /* S_VCON_LEN bytes */
s_mcon:     .asciz "mmio console ok after the chaos\r\n"
s_done:     .asciz "window chaos survived\r\n"
s_fail:     .asciz "FAIL "
s_exception: .asciz "unexpected exception\r\n"
nl:         .asciz "\r\n"
