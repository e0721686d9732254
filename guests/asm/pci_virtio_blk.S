/*
 * virtio-blk over virtio-pci with MSI-X. Finds the first 1af4:1042 function on bus 0, reads
 * its capabilities, programs MSI-X (config -> vector 0, queue 0 -> vector 1), then writes a
 * pattern to sector 5, flushes and reads it back, sleeping in HLT for each completion's
 * interrupt (the handler reads nothing: MSI-X needs no ISR read). Then the masking rules: with
 * queue 0's entry masked, and again with the whole function masked, a request completes with
 * its PBA bit set and no interrupt; unmasking delivers the interrupt and clears the bit.
 * Prints "msi-x interrupts: queue N, config M"; exits 0 or the number of the failed check.
 * With the word at ARMED set, it waits at a gate between the flush and the read (for the
 * snapshot tests).
 */
#include "common.S"
#include "pci.S"

#define RING0   0x40000
#define HDR     0x60000
#define STATUS  0x60100
#define DATA    0x61000
#define READBUF 0x62000
#define SECTOR  5
#define GATE    0x1f0008                            /* the snapshot tests' gate, phase and */
#define PHASE   0x1f0010                            /* arming word */
#define ARMED   0x1f0018
#define QUEUE_IRQS  (msi_count + 4)                 /* queue 0 is MSI-X vector 1 */

main:
    call irq_init
    mov edi, 0x10421af4
    call pci_find_device
    lea rbx, [rip + vp]
    mov [rbx + VP_CFG], eax
    cmp eax, -1
    mov al, 10
    je fail
    call virtio_pci_probe
    test eax, eax
    mov al, 11
    jnz fail
    cmp dword ptr [rbx + VP_MSIX_SIZE], 2           /* one queue + config */
    mov al, 12
    jne fail
    mov rdi, [rbx + VP_MSIX_TABLE]                  /* entries start masked */
    test dword ptr [rdi + 12], 1
    mov al, 13
    jz fail
    test dword ptr [rdi + 16 + 12], 1
    jz fail

    mov edx, 2
    mov ecx, MSI_VECTOR
    call msix_setup
    mov rsi, RING0
    mov edx, 1
    mov r9d, 1
    call virtio_pci_init
    test eax, 4
    mov al, 14
    jz fail

    /* A vector past the table reads back NO_VECTOR; a good one sticks. */
    mov rdi, [rbx + VP_COMMON]
    mov word ptr [rdi + VC_QSELECT], 0
    mov word ptr [rdi + VC_QMSIX], 2
    cmp word ptr [rdi + VC_QMSIX], NO_VECTOR
    mov al, 15
    jne fail
    mov word ptr [rdi + VC_QMSIX], 1
    cmp word ptr [rdi + VC_QMSIX], 1
    mov al, 16
    jne fail
    mov word ptr [rdi + VC_MSIX_CONFIG], 2
    cmp word ptr [rdi + VC_MSIX_CONFIG], NO_VECTOR
    mov al, 17
    jne fail
    mov word ptr [rdi + VC_MSIX_CONFIG], 0
    cmp word ptr [rdi + VC_MSIX_CONFIG], 0
    mov al, 18
    jne fail
    mov rdi, [rbx + VP_DEVCFG]
    cmp qword ptr [rdi], 8                          /* capacity in sectors */
    mov al, 19
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
    call irq_request
    test eax, eax
    mov al, 20
    jnz fail

    /* FLUSH: header, status */
    mov dword ptr [HDR], 4
    DESC RING0, 0, HDR, 16, F_NEXT, 2
    call irq_request
    test eax, eax
    mov al, 21
    jnz fail

    /* For the snapshot test: when armed (ARMED nonzero), say so at PHASE and wait for GATE. */
    mov rdi, ARMED
    cmp qword ptr [rdi], 0
    je 2f
    mov rdi, PHASE
    mov qword ptr [rdi], 1
    mov rdi, GATE
3:  pause
    cmp qword ptr [rdi], 1
    jb 3b
2:
    /* IN: header, buffer (device writes), status */
    mov dword ptr [HDR], 0
    DESC RING0, 0, HDR, 16, F_NEXT, 1
    DESC RING0, 1, READBUF, 512, F_NEXT | F_WRITE, 2
    call irq_request
    test eax, eax
    mov al, 22
    jnz fail
    mov rsi, DATA
    mov rdi, READBUF
    mov ecx, 512
    repe cmpsb
    mov al, 23
    jne fail
    lea rsi, [rip + s_rw]
    call puts

    /* Masked: FLUSH requests, first with the entry masked, then the function. */
    mov dword ptr [HDR], 4
    DESC RING0, 0, HDR, 16, F_NEXT, 2
    xor edx, edx
    call masked_request
    test eax, eax
    jz 2f
    add al, 30
    jmp fail
2:  lea rsi, [rip + s_entry]
    call puts
    mov edx, 1
    call masked_request
    test eax, eax
    jz 3f
    add al, 40
    jmp fail
3:  lea rsi, [rip + s_function]
    call puts

    lea rsi, [rip + s_count]
    call puts
    mov eax, [rip + QUEUE_IRQS]
    call putdec
    lea rsi, [rip + s_config]
    call puts
    mov eax, [rip + msi_count]
    call putdec
    lea rsi, [rip + nl]
    call puts
    xor eax, eax
fail:
    ret

/* Posts chain 0 on queue 0 and sleeps until the queue's interrupt. EAX = 0 when the request
 * was used with status OK, else 1 (no interrupt), 2 (interrupt but not used), 3 (status). */
irq_request:
    push rcx
    push rdi
    push rsi
    push r8
    mov byte ptr [STATUS], 0xff
    lea rdi, [rip + QUEUE_IRQS]
    mov esi, [rdi]
    inc esi
    push rsi
    mov rsi, RING0
    xor r8d, r8d
    xor eax, eax
    call vq_post
    pop rsi
    call wait_irq
    test eax, eax
    jz 1f
    lea rsi, [rip + s_noirq]
    call puts
    mov eax, 1
    jmp 9f
1:  mov eax, 2
    cmp cx, word ptr [RING0 + 0x2002]
    jne 9f
    mov eax, 3
    cmp byte ptr [STATUS], 0
    jne 9f
    xor eax, eax
9:  pop r8
    pop rsi
    pop rdi
    pop rcx
    ret

/* EDX = 0: mask queue 0's entry, 1: mask the function; EAX = 1 masks, 0 unmasks. */
set_mask:
    push rax
    push rdi
    test edx, edx
    jnz 1f
    mov rdi, [rbx + VP_MSIX_TABLE]
    mov [rdi + 16 + 12], eax                        /* entry 1's vector control */
    jmp 9f
1:  mov edi, [rbx + VP_CFG]
    add edi, [rbx + VP_MSIX_CAP]
    add edi, 2                                      /* message control */
    push rax
    call pci_read16
    and eax, ~MSIX_MASKALL
    cmp dword ptr [rsp], 0
    je 2f
    or eax, MSIX_MASKALL
2:  add rsp, 8
    call pci_write16
9:  pop rdi
    pop rax
    ret

/* Queue 0's PBA bit -> CF. */
pba_bit:
    push rax
    push rdi
    mov rdi, [rbx + VP_PBA]
    mov rax, [rdi]
    bt rax, 1
    pop rdi
    pop rax
    ret

/* Submits chain 0 with a mask set (EDX as for set_mask), with interrupts on. EAX = 0, or
 * 1: not used, 2: PBA bit never set, 3: the interrupt fired while masked, 4: no interrupt
 * after unmasking, 5: PBA bit still set after it. */
masked_request:
    push rcx
    push rdi
    push rsi
    push r8
    push r12
    mov eax, 1
    call set_mask
    mov r12d, [rip + QUEUE_IRQS]
    mov byte ptr [STATUS], 0xff
    mov rsi, RING0
    xor r8d, r8d
    xor eax, eax
    sti
    call vq_post
    mov edi, 2000000
1:  cmp cx, word ptr [RING0 + 0x2002]
    je 2f
    pause
    dec edi
    jnz 1b
    mov eax, 1
    jmp 9f
2:  mov edi, 2000000                                /* the device sets the bit after the */
3:  call pba_bit                                    /* used ring: give it time */
    jc 4f
    pause
    dec edi
    jnz 3b
    mov eax, 2
    jmp 9f
4:  mov ecx, 1000                                   /* some exits with interrupts on */
5:  call pba_bit
    loop 5b
    cli
    mov eax, 3
    cmp [rip + QUEUE_IRQS], r12d
    jne 9f
    xor eax, eax
    call set_mask                                   /* unmask: it fires now */
    lea rdi, [rip + QUEUE_IRQS]
    lea esi, [r12 + 1]
    call wait_irq
    test eax, eax
    mov eax, 4
    jnz 9f
    call pba_bit
    mov eax, 5
    jc 9f
    xor eax, eax
9:  cli
    pop r12
    pop r8
    pop rsi
    pop rdi
    pop rcx
    ret

    .section .rodata
s_rw:       .asciz "write, flush, read back: ok\r\n"
s_entry:    .asciz "entry mask: pending bit set, delivered on unmask\r\n"
s_function: .asciz "function mask: pending bit set, delivered on unmask\r\n"
s_noirq:    .asciz "no interrupt for the request\r\n"
s_count:    .asciz "msi-x interrupts: queue "
s_config:   .asciz ", config "
nl:         .asciz "\r\n"

    .section .bss
    .align 8
vp: .skip VP_SIZE
