/*
 * A hostile PCI driver against two virtio-blk functions, 00:01.0 (disk 1, 16 sectors) and
 * 00:02.0 (disk 2, 8 sectors), running the scenarios its command line names by letter:
 *
 *   a  00:02.0's BAR0 programmed over 00:01.0's and back, 1,000 times; 00:01.0 (the lower
 *      device number) must answer while they overlap; then both complete a request
 *   b  00:01.0's BAR0 over the LAPIC, the IOAPIC, ECAM, RAM, the virtio-mmio range, address 0,
 *      0xffff8000, above 4 GiB and the top of the 64-bit space: RAM stays RAM, ECAM and the
 *      LAPIC still answer, nothing decodes at the old address; put back, a request completes
 *   c  MSI-X entries with garbage messages (addresses outside 0xfeeXXXXX, above 4 GiB,
 *      vectors below 16, absent APIC IDs, lowest priority, NMI, level) while requests
 *      complete; then a good message delivers
 *   d  queue_select 0xffff and every common-configuration field written and read at every
 *      width; notify writes of every width at every offset of the notify region (past the
 *      last queue included); reads of every width and writes over the whole BAR; then reset,
 *      a request completes
 *   e  DRIVER_OK with rings outside RAM, 300 times: NEEDS_RESET and the configuration vector
 *      each time, its message changed each time (a routing table rewrite on KVM)
 *   f  MSI-X enable and function mask toggled 20,000 times (CF8 and ECAM) while a masked
 *      vector is pending; then the pending vector delivers on unmask
 *   g  00:01.0's BAR0 programmed over 00:02.0's: 00:01.0 answers there (docs/pci.md), so a
 *      request notified at that address must reach 00:01.0
 *
 * Prints "scenario X ok" for each; exits 0, or the failed check's number.
 */
#include "common.S"
#include "pci.S"

#define RING1   0x40000
#define RING2   0x48000
#define HDR     0x60000
#define STATUS  0x60100
#define RAMPAT  0x300000
#define DEV1    PCI_DEV(1)
#define DEV2    PCI_DEV(2)
#define BASE1   0xc0000000
#define BASE2   0xc0008000
#define OVERLAPS 1000
#define RESETS  300
#define TOGGLES 10000
#define PATTERN 0x1122334455667788

.macro SCEN letter, fn
    mov al, \letter
    call has
    jnc 91f
    call \fn
    test eax, eax
    jnz fail
    lea rsi, [rip + s_scen]
    call puts
    mov al, \letter
    call putc
    lea rsi, [rip + s_ok]
    call puts
91:
.endm

main:
    xor edi, edi
1:  lea rax, [rip + low_vector]
    call idt_set
    inc edi
    cmp edi, 32
    jb 1b
    call irq_init
    mov edi, DEV1
    call pci_read32
    cmp eax, 0x10421af4
    mov al, 200
    jne fail
    mov edi, DEV2
    call pci_read32
    cmp eax, 0x10421af4
    mov al, 201
    jne fail
    lea rbx, [rip + vp1]
    mov dword ptr [rbx + VP_CFG], DEV1
    call virtio_pci_probe
    test eax, eax
    mov al, 202
    jnz fail
    lea rbx, [rip + vp2]
    mov dword ptr [rbx + VP_CFG], DEV2
    call virtio_pci_probe
    test eax, eax
    mov al, 203
    jnz fail

    SCEN 97, scen_a                             /* 'a' */
    SCEN 98, scen_b                             /* 'b' */
    SCEN 99, scen_c                             /* 'c' */
    SCEN 100, scen_d                             /* 'd' */
    SCEN 101, scen_e                             /* 'e' */
    SCEN 102, scen_f                             /* 'f' */
    SCEN 103, scen_g                             /* 'g' */
    lea rsi, [rip + s_done]
    call puts
    xor eax, eax
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

/* AL = a letter -> CF set when the command line has it. */
has:
    push rsi
    push rdx
    mov esi, [r15 + 0x228]
    test esi, esi
    jz 8f
1:  mov dl, [rsi]
    test dl, dl
    jz 8f
    cmp dl, al
    je 7f
    inc rsi
    jmp 1b
7:  stc
    jmp 9f
8:  clc
9:  pop rdx
    pop rsi
    ret

/* RBX = vp, RSI = ring memory: zeroes the rings, resets the device and sets queue 0 up
 * (R9D != 0: with MSI-X vectors). EAX = 0, or 1. */
dev_up:
    push rdi
    push rcx
    push rdx
    push rax
    mov rdi, rsi
    mov ecx, 0x3000 / 8
    xor eax, eax
    rep stosq
    pop rax
    mov edx, 1
    call virtio_pci_init
    and eax, 4
    xor eax, 4
    shr eax, 2
    pop rdx
    pop rcx
    pop rdi
    ret

/* RBX = vp, RSI = ring: a FLUSH on queue 0, polled. EAX = 0, 1 (not used), 2 (status). */
flush:
    push r8
    mov dword ptr [HDR], 4
    mov dword ptr [HDR + 4], 0
    mov qword ptr [HDR + 8], 0
    mov qword ptr [rsi], HDR
    mov dword ptr [rsi + 8], 16
    mov word ptr [rsi + 12], F_NEXT
    mov word ptr [rsi + 14], 1
    mov qword ptr [rsi + 16], STATUS
    mov dword ptr [rsi + 24], 1
    mov word ptr [rsi + 28], F_WRITE
    mov word ptr [rsi + 30], 0
    mov byte ptr [STATUS], 0xff
    xor r8d, r8d
    xor eax, eax
    call vq_submit
    test eax, eax
    jnz 9f
    cmp byte ptr [STATUS], 0
    je 9f
    mov eax, 2
9:  pop r8
    ret

/* EDI = function's config address, RAX = a 64-bit BAR0 address, through ECAM. */
set_bar:
    push rax
    push rdi
    push rax
    add edi, PCI_BAR0
    call ecam_write32
    pop rax
    shr rax, 32
    add edi, 4
    call ecam_write32
    pop rdi
    pop rax
    ret

/* RDI = an address -> RAX = the qword there (a helper keeps absolute addresses simple). */
q:  mov rax, [rdi]
    ret

scen_a:
    push rcx
    mov ecx, OVERLAPS
1:  mov edi, DEV2
    mov eax, BASE1
    call set_bar
    mov edi, BASE1 + 0x2000
    call q
    cmp rax, 16
    mov eax, 1
    jne 9f
    mov edi, DEV2
    mov eax, BASE2
    call set_bar
    mov edi, BASE2 + 0x2000
    call q
    cmp rax, 8
    mov eax, 2
    jne 9f
    mov edi, BASE1 + 0x2000
    call q
    cmp rax, 16
    mov eax, 3
    jne 9f
    dec ecx
    jnz 1b
    lea rbx, [rip + vp1]
    mov rsi, RING1
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 4
    jnz 9f
    call flush
    test eax, eax
    mov eax, 5
    jnz 9f
    lea rbx, [rip + vp2]
    mov rsi, RING2
    call dev_up
    test eax, eax
    mov eax, 6
    jnz 9f
    call flush
    test eax, eax
    mov eax, 7
    jnz 9f
    xor eax, eax
9:  pop rcx
    ret

scen_b:
    push rcx
    push r12
    lea r12, [rip + odd_places]
1:  mov rax, [r12]
    test rax, rax
    jz 5f
    cmp rax, 1
    jne 2f
    xor eax, eax                                    /* 1 stands for address 0 */
2:  mov rdi, PATTERN
    mov [RAMPAT], rdi
    mov [RAMPAT + 0x3000], rdi
    mov edi, DEV1
    call set_bar
    /* RAM stays RAM */
    mov rdi, PATTERN
    cmp [RAMPAT], rdi
    mov eax, 10
    jne 9f
    cmp [RAMPAT + 0x3000], rdi
    jne 9f
    not rdi
    mov [RAMPAT + 0x3000], rdi
    cmp [RAMPAT + 0x3000], rdi
    mov eax, 11
    jne 9f
    /* ECAM and the LAPIC still answer */
    xor edi, edi
    call ecam_read32
    cmp eax, 0x0d578086
    mov eax, 12
    jne 9f
    mov edi, LAPIC + 0x30
    mov eax, [rdi]
    cmp eax, -1
    mov eax, 13
    je 9f
    test eax, eax
    je 9f
    /* nothing at the old address */
    mov edi, BASE1 + 0x2000
    call q
    cmp rax, -1
    mov eax, 14
    jne 9f
    add r12, 8
    jmp 1b
5:  /* the last slot of the window is fine */
    mov edi, DEV1
    mov eax, 0xcfff8000
    call set_bar
    mov edi, 0xcfff8000 + 0x2000
    call q
    cmp rax, 16
    mov eax, 15
    jne 9f
    mov edi, DEV1
    mov eax, BASE1
    call set_bar
    mov edi, BASE1 + 0x2000
    call q
    cmp rax, 16
    mov eax, 16
    jne 9f
    lea rbx, [rip + vp1]
    mov rsi, RING1
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 17
    jnz 9f
    call flush
    test eax, eax
    mov eax, 18
    jnz 9f
    xor eax, eax
9:  pop r12
    pop rcx
    ret

/* MSI-X table entry 1 (queue 0) <- RAX = address, ECX = data, unmasked. */
set_entry1:
    push rdi
    mov rdi, [rbx + VP_MSIX_TABLE]
    mov [rdi + 16], eax
    shr rax, 32
    mov [rdi + 20], eax
    mov [rdi + 24], ecx
    mov dword ptr [rdi + 28], 0
    pop rdi
    ret

scen_c:
    push rcx
    push r12
    lea rbx, [rip + vp1]
    mov edx, 2
    mov ecx, MSI_VECTOR
    call msix_setup
    mov rsi, RING1
    mov r9d, 1
    call dev_up
    test eax, eax
    mov eax, 20
    jnz 9f
    lea r12, [rip + garbage]
1:  mov rax, [r12]
    test rax, rax
    jz 5f
    cmp rax, 1
    jne 2f
    xor eax, eax
2:  mov ecx, [r12 + 8]
    call set_entry1
    sti
    mov rsi, RING1
    call flush
    mov ecx, 1000                                   /* a moment for a late interrupt */
3:  pause
    loop 3b
    cli
    test eax, eax
    mov eax, 21
    jnz 9f
    add r12, 16
    jmp 1b
5:  mov eax, MSI_ADDRESS
    mov ecx, MSI_VECTOR + 1
    call set_entry1
    mov r12d, [rip + msi_count + 4]
    mov dword ptr [HDR], 4
    mov byte ptr [STATUS], 0xff
    mov rsi, RING1
    push r8
    xor r8d, r8d
    xor eax, eax
    call vq_post
    pop r8
    lea rdi, [rip + msi_count + 4]
    lea esi, [r12 + 1]
    call wait_irq
    test eax, eax
    mov eax, 22
    jnz 9f
    xor eax, eax
9:  cli
    pop r12
    pop rcx
    ret

/* xorshift64 on R14 -> RAX */
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

/* RDI = address, ECX = width (1, 2, 4, 8), RAX = value: a write, then a read. */
poke:
    cmp ecx, 1
    jne 1f
    mov [rdi], al
    mov al, [rdi]
    ret
1:  cmp ecx, 2
    jne 2f
    mov [rdi], ax
    mov ax, [rdi]
    ret
2:  cmp ecx, 4
    jne 3f
    mov [rdi], eax
    mov eax, [rdi]
    ret
3:  mov [rdi], rax
    mov rax, [rdi]
    ret

scen_d:
    push rcx
    push r12
    push r13
    push r14
    mov r14, 0x9e3779b97f4a7c15
    lea rbx, [rip + vp1]
    mov rsi, RING1
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 30
    jnz 9f
    /* every common-configuration field, at every width, with queue_select 0xffff */
    mov r13d, 1
1:  xor r12d, r12d
2:  mov rdi, [rbx + VP_COMMON]
    mov word ptr [rdi + VC_QSELECT], 0xffff
    add rdi, r12
    mov ecx, r13d
    mov rax, -1
    call poke
    mov rdi, [rbx + VP_COMMON]
    add rdi, r12
    call rand
    call poke
    add r12d, r13d
    cmp r12d, 0x40
    jb 2b
    shl r13d, 1
    cmp r13d, 8
    jbe 1b
    /* notify writes of every width at every offset of the notify page */
    mov r13d, 1
3:  xor r12d, r12d
4:  mov rdi, [rbx + VP_BAR]
    add rdi, 0x3000
    add rdi, r12
    mov ecx, r13d
    mov rax, r12
    call poke
    add r12d, r13d
    cmp r12d, 0x1000
    jb 4b
    shl r13d, 1
    cmp r13d, 8
    jbe 3b
    /* reads of every width over the whole BAR, random writes at every qword */
    xor r12d, r12d
5:  mov rdi, [rbx + VP_BAR]
    add rdi, r12
    mov al, [rdi]
    mov ax, [rdi]
    mov eax, [rdi]
    mov rax, [rdi]
    call rand
    mov ecx, 4
    test r12d, 8
    jz 6f
    mov ecx, 8
6:  call poke
    add r12d, 8
    cmp r12d, 0x8000
    jb 5b
    /* still there and working after a reset */
    mov edi, BASE1 + 0x2000
    call q
    cmp rax, 16
    mov eax, 31
    jne 9f
    mov rsi, RING1
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 32
    jnz 9f
    call flush
    test eax, eax
    mov eax, 33
    jnz 9f
    xor eax, eax
9:  pop r14
    pop r13
    pop r12
    pop rcx
    ret

scen_e:
    push rcx
    push r12
    lea rbx, [rip + vp1]
    mov edx, 2
    mov ecx, MSI_VECTOR
    call msix_setup
    xor r12d, r12d
1:  mov rdi, [rbx + VP_MSIX_TABLE]                  /* a new message each time */
    mov eax, r12d
    and eax, 1
    shl eax, 14                                     /* the level bit: same vector */
    or eax, MSI_VECTOR
    mov [rdi + 8], eax
    mov rdi, [rbx + VP_COMMON]
    mov byte ptr [rdi + VC_STATUS], 0
    mov byte ptr [rdi + VC_STATUS], 1
    mov byte ptr [rdi + VC_STATUS], 3
    mov dword ptr [rdi + VC_GFSELECT], 1
    mov dword ptr [rdi + VC_GF], 1
    mov byte ptr [rdi + VC_STATUS], 11
    mov word ptr [rdi + VC_MSIX_CONFIG], 0
    mov word ptr [rdi + VC_QSELECT], 0
    mov word ptr [rdi + VC_QSIZE], 8
    mov dword ptr [rdi + VC_QDESC], 0x7fff0000      /* far outside the 32 MiB of RAM */
    mov dword ptr [rdi + VC_QDESC + 4], 0
    mov dword ptr [rdi + VC_QDRIVER], 0x7fff1000
    mov dword ptr [rdi + VC_QDEVICE], 0x7fff2000
    mov word ptr [rdi + VC_QENABLE], 1
    mov esi, [rip + msi_count]
    inc esi
    mov byte ptr [rdi + VC_STATUS], 15
    test byte ptr [rdi + VC_STATUS], 0x40
    mov eax, 40
    jz 9f
    lea rdi, [rip + msi_count]
    call wait_irq
    test eax, eax
    mov eax, 41
    jnz 9f
    inc r12d
    cmp r12d, RESETS
    jb 1b
    mov rsi, RING1
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 42
    jnz 9f
    call flush
    test eax, eax
    mov eax, 43
    jnz 9f
    xor eax, eax
9:  pop r12
    pop rcx
    ret

scen_f:
    push rcx
    push r12
    push r13
    lea rbx, [rip + vp1]
    mov edx, 2
    mov ecx, MSI_VECTOR
    call msix_setup
    mov rsi, RING1
    mov r9d, 1
    call dev_up
    test eax, eax
    mov eax, 50
    jnz 9f
    mov rdi, [rbx + VP_MSIX_TABLE]
    mov dword ptr [rdi + 16 + 12], 1                /* mask queue 0's vector */
    mov rsi, RING1
    call flush
    test eax, eax
    mov eax, 51
    jnz 9f
    mov ecx, 2000000
1:  mov rdi, [rbx + VP_PBA]
    mov rax, [rdi]
    bt rax, 1
    jc 2f
    pause
    loop 1b
    mov eax, 52
    jmp 9f
2:  mov r13d, [rbx + VP_CFG]
    add r13d, [rbx + VP_MSIX_CAP]
    xor r12d, r12d
3:  mov eax, r12d                                   /* enable, mask, both, neither */
    and eax, 3
    shl eax, 14
    lea edi, [r13 + 2]
    call pci_write16
    mov eax, r12d
    not eax
    and eax, 3
    shl eax, 30
    or eax, 0x11
    mov edi, r13d
    call ecam_write32                               /* the whole first dword, via ECAM */
    inc r12d
    cmp r12d, TOGGLES
    jb 3b
    mov rdi, [rbx + VP_PBA]
    mov rax, [rdi]
    bt rax, 1
    mov eax, 53
    jnc 9f
    mov eax, MSIX_ENABLE
    lea edi, [r13 + 2]
    call pci_write16
    mov r12d, [rip + msi_count + 4]
    mov rdi, [rbx + VP_MSIX_TABLE]
    mov dword ptr [rdi + 16 + 12], 0                /* unmask: the pending vector fires */
    lea rdi, [rip + msi_count + 4]
    lea esi, [r12 + 1]
    call wait_irq
    test eax, eax
    mov eax, 54
    jnz 9f
    xor eax, eax
9:  cli
    pop r13
    pop r12
    pop rcx
    ret

scen_g:
    lea rbx, [rip + vp2]                            /* 00:02.0 up at its own address */
    mov rsi, RING2
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 60
    jnz 9f
    mov edi, DEV1
    mov eax, BASE2
    call set_bar
    mov edi, BASE2 + 0x2000
    call q
    cmp rax, 16
    mov eax, 61
    jne 9f
    lea rbx, [rip + vp1]
    call virtio_pci_probe
    test eax, eax
    mov eax, 62
    jnz 9f
    mov rsi, RING1
    xor r9d, r9d
    call dev_up
    test eax, eax
    mov eax, 63
    jnz 9f
    call flush
    test eax, eax
    mov eax, 64
    jnz 9f
    mov edi, DEV1
    mov eax, BASE1
    call set_bar
    call virtio_pci_probe
    test eax, eax
    mov eax, 65
    jnz 9f
    mov rsi, RING1
    call dev_up
    test eax, eax
    mov eax, 66
    jnz 9f
    call flush
    test eax, eax
    mov eax, 67
    jnz 9f
    xor eax, eax
9:  ret

low_vector:
    lock inc dword ptr [rip + low_count]
    push rdi
    mov rdi, LAPIC
    mov dword ptr [rdi + 0xb0], 0
    pop rdi
    iretq

    .section .rodata
    .align 8
odd_places:                                         /* 0 ends, 1 is address 0 */
    .quad 0xfee00000, 0xfec00000, 0xe0000000, RAMPAT, 0xd0000000, 1, 0xffff8000
    .quad 0x100000000, 0xffffffffffff8000, 0xbfff8000, 0xd0000000 - 0x8000, 0
garbage:                                            /* address (1: 0), data */
    .quad 1, MSI_VECTOR + 2
    .quad 0xfed00000, MSI_VECTOR + 2
    .quad 0x1fee00000, MSI_VECTOR + 2
    .quad 0xfee00000, 0x05
    .quad 0xfee00000, 0x0e
    .quad 0xfee55000, MSI_VECTOR + 2
    .quad 0xfee00000, 0x100 | (MSI_VECTOR + 2)
    .quad 0xfee0000c, MSI_VECTOR + 2
    .quad 0xfeeff000, MSI_VECTOR + 2
    .quad 0xfee00000, 0x400 | (MSI_VECTOR + 2)
    .quad 0xfee00000, 0xc000 | (MSI_VECTOR + 2)
    .quad 0xffffffffffffffff, 0xffffffff
    .quad 0, 0
s_scen: .asciz "scenario "
s_ok:   .asciz " ok\r\n"
s_done: .asciz "pci hostile guest done\r\n"
s_fail: .asciz "FAIL "
nl:     .asciz "\r\n"

    .section .data
low_count: .long 0

    .section .bss
    .align 8
vp1: .skip VP_SIZE
vp2: .skip VP_SIZE
