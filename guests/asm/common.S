/*
 * Shared start-up and helpers for the test guests.
 *
 * Entry: `_start` in 64-bit mode (the Linux 64-bit boot protocol: RSI = zero page), or, when
 * built with -DPVH, `pvh_start` in 32-bit protected mode (EBX = hvm_start_info), which builds
 * page tables for the first 2 MiB, enters long mode and joins `_start` with RSI = 0.
 *
 * A guest defines `main`: it returns its exit status in AL, which goes to the debug-exit port
 * (0xf4). R15 holds the zero page address (0 under PVH).
 *
 * Helpers (all preserve every register but the documented ones):
 *   putc   AL = byte, written through the 16550 after polling LSR for an empty THR
 *   puts   RSI = NUL-terminated string
 *   putdec RAX = unsigned number, printed in decimal
 *   puthex EAX = 32-bit number, printed as 8 hex digits
 *   idt_set EDI = vector, RAX = handler: installs an interrupt gate and loads the IDT
 *   exit   AL = status
 */
    .intel_syntax noprefix

#define COM1        0x3f8
#define COM1_LSR    0x3fd
#define LSR_THRE    0x20
#define LSR_DR      0x01
#define DEBUG_EXIT  0xf4
#define LAPIC       0xfee00000

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov r15, rsi
    lea rsp, [rip + stack_top]
    call main
    jmp exit

putc:
    push rdx
    push rax
1:  mov dx, COM1_LSR
    in al, dx
    test al, LSR_THRE
    jz 1b
    pop rax
    mov dx, COM1
    out dx, al
    pop rdx
    ret

puts:
    push rax
    push rsi
1:  lodsb
    test al, al
    jz 2f
    call putc
    jmp 1b
2:  pop rsi
    pop rax
    ret

putdec:
    push rax
    push rcx
    push rdx
    push rbx
    mov rbx, 10
    xor ecx, ecx
1:  xor edx, edx
    div rbx
    push rdx
    inc ecx
    test rax, rax
    jnz 1b
2:  pop rax
    add al, '0'
    call putc
    loop 2b
    pop rbx
    pop rdx
    pop rcx
    pop rax
    ret

puthex:
    push rax
    push rcx
    push rdx
    mov edx, eax
    mov ecx, 8
1:  rol edx, 4
    mov eax, edx
    and eax, 0xf
    add al, '0'
    cmp al, '9'
    jbe 2f
    add al, 'a' - '0' - 10
2:  call putc
    loop 1b
    pop rdx
    pop rcx
    pop rax
    ret

idt_set:
    push rdi
    push rcx
    shl edi, 4
    lea rcx, [rip + idt]
    add rdi, rcx
    mov [rdi], ax
    mov cx, cs
    mov [rdi + 2], cx
    mov word ptr [rdi + 4], 0x8e00              /* present, interrupt gate */
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    lidt [rip + idt_desc]
    pop rcx
    pop rdi
    ret

exit:
    out DEBUG_EXIT, al
1:  cli
    hlt
    jmp 1b

#ifdef PVH
    .code32
pvh_start:
    /* Identity-map the first 2 MiB with one large page, then enter long mode. */
    mov dword ptr [pvh_pml4], offset pvh_pdpt + 3
    mov dword ptr [pvh_pdpt], offset pvh_pd + 3
    mov dword ptr [pvh_pd], 0x83
    mov eax, offset pvh_pml4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x20                /* PAE */
    mov cr4, eax
    mov ecx, 0xc0000080         /* EFER */
    rdmsr
    or eax, 0x100               /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80000001          /* PG | PE */
    mov cr0, eax
    lgdt [pvh_gdt_desc]
    .byte 0xea                  /* ljmp 0x08:pvh_64 */
    .long pvh_64
    .word 0x08
    .code64
pvh_64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor esi, esi
    jmp _start

    .section .rodata
    .align 8
pvh_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: data */
pvh_gdt_desc:
    .word pvh_gdt_desc - pvh_gdt - 1
    .long pvh_gdt

    .section .note.Xen, "a", @note
    .align 4
    .long 4                     /* name size */
    .long 8                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad pvh_start

    .section .bss
    .align 4096
pvh_pml4: .skip 4096
pvh_pdpt: .skip 4096
pvh_pd:   .skip 4096
#endif

    .section .rodata
    .align 8
idt_desc:
    .word 256 * 16 - 1
    .quad idt

    .section .bss
    .align 16
idt:
    .skip 256 * 16
stack_bottom:
    .skip 8192
stack_top:

    .text
