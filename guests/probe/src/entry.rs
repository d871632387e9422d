//! Everything that runs in ring 0, in assembly: the three entry points, the
//! probe's own GDT/TSS/IDT and identity page tables, the interrupt and
//! exception stubs (including one counting stub per virtio MSI-X vector), plus the real-mode AP trampoline (copied below 1 MiB by
//! the `smp` check) and the ring-3 memory routines the compiler expects.
//!
//! Ring-0 code runs through KVM's instruction emulator on PVM hosts (~1 µs
//! per instruction, no SSE, no INT n), so it is kept to a handful of integer
//! instructions per path: tables are built at assembly/link time, not at run
//! time.
//!
//! Entry paths (all end in `long_mode_common`, then `iretq` to ring 3):
//! * 0x100000 `probe_linux32_entry`: Linux 32-bit boot protocol, ESI = boot_params.
//! * `probe_pvh_entry` (named by the Xen ELF note): PVH, EBX = hvm_start_info.
//! * 0x100200 `probe_linux64_entry`: Linux 64-bit boot protocol, RSI = boot_params.

use core::arch::global_asm;

/// `probe_boot_entry` values.
pub const ENTRY_PVH: u32 = 1;
pub const ENTRY_LINUX64: u32 = 2;
pub const ENTRY_LINUX32: u32 = 3;

/// Where the `smp` check copies the AP trampoline (SIPI vector 0x08).
pub const TRAMPOLINE_ADDR: u64 = 0x8000;
/// Slot counter (u16) the APs bump with `lock xadd` to claim a slot.
pub const AP_COUNT_ADDR: u64 = 0x8800;
/// Check-in counter (u16) the APs bump after writing their slot.
pub const AP_DONE_ADDR: u64 = 0x8802;
/// One byte per checked-in AP: its initial APIC ID (CPUID.1:EBX[31:24]).
pub const AP_IDS_ADDR: u64 = 0x8810;
/// Number of AP slots at `AP_IDS_ADDR` (up to the end of the page).
pub const AP_IDS_MAX: usize = 0x9000 - 0x8810;

extern "C" {
    /// Which entry point ran (`ENTRY_*`); written by ring 0 before ring 3 starts.
    pub static probe_boot_entry: u32;
    /// EBX (PVH) or ESI/RSI (Linux) at entry: the start info / boot_params.
    pub static probe_boot_info: u64;
    /// The probe's PML4 (entry 0 is `probe_pdpt`; ring 3 may add more for MMIO above 512 GiB).
    pub static mut probe_pml4: [u64; 512];
    /// The probe's PDPT (ring 3 adds entries for RAM above 4 GiB).
    pub static mut probe_pdpt: [u64; 512];
    /// Page directories for RAM above 4 GiB, filled by ring 3.
    pub static mut probe_pd_pool: [[u64; 512]; PD_POOL_SIZE];
    /// Real-mode AP trampoline (position independent, runs at `TRAMPOLINE_ADDR`).
    pub static probe_ap_trampoline: u8;
    pub static probe_ap_trampoline_end: u8;
    pub static __image_start: u8;
    pub static __image_end: u8;
    /// Port I/O gates (see the assembly): 8 bytes apart, in this order.
    pub static probe_io_gates: u8;
    /// `hlt` in ring 3: #GP, which the exception stub turns into `cli; hlt` forever.
    pub fn probe_svc_halt() -> !;
    /// `hlt` in ring 3: #GP, which the exception stub turns into a triple fault.
    pub fn probe_svc_triple_fault() -> !;
}

/// Page directories in `probe_pd_pool` (each maps 1 GiB with 2 MiB pages).
pub const PD_POOL_SIZE: usize = 28;

/// First of the IDT vectors whose stubs count into `PROBE_VIRTIO_IRQS`
/// (`virtio` gives them to MSI-X table entries).
pub const VIRTIO_VECTOR_BASE: u32 = 0x50;
/// How many there are (0x50..=0x6f).
pub const VIRTIO_VECTORS: usize = 32;

global_asm!(
    r#"
    .set KCODE64, 0x08
    .set KDATA,   0x10
    .set KCODE32, 0x18
    .set UDATA,   0x23
    .set UCODE64, 0x2b
    .set TSSSEL,  0x30
    .set CR4_VALUE, 0x620         /* PAE | OSFXSR | OSXMMEXCPT (no SMEP/SMAP: ring 0 runs from user pages) */
    .set CR0_VALUE, 0x80000033    /* PG | NE | ET | MP | PE (caches on, EM/TS clear) */
    .set LAPIC_EOI, 0xfee000b0
    .set COM1, 0x3f8

    .section .entry, "awx"

/* ---- 0x100000: Linux 32-bit entry (offset 0 of the protected-mode part) ---- */
    .code32
    .global probe_linux32_entry
probe_linux32_entry:
    movl $3, probe_boot_entry
    movl %esi, probe_boot_info
    jmp enter_long_mode

/* ---- PVH entry (Xen ELF note): 32-bit protected mode, paging off ---- */
    .global probe_pvh_entry
probe_pvh_entry:
    movl $1, probe_boot_entry
    movl %ebx, probe_boot_info

enter_long_mode:
    lgdt probe_gdt_ptr
    movl $CR4_VALUE, %eax
    movl %eax, %cr4
    movl $probe_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx        /* EFER */
    rdmsr
    orl $0x100, %eax              /* LME */
    wrmsr
    movl $CR0_VALUE, %eax
    movl %eax, %cr0
    ljmp $KCODE64, $long_mode_common

/* ---- 0x100200: Linux 64-bit entry, RSI = boot_params ---- */
    .org 0x200, 0xcc
    .code64
    .global probe_linux64_entry
probe_linux64_entry:
    movl $2, probe_boot_entry(%rip)
    movq %rsi, probe_boot_info(%rip)
    leaq probe_kstack_top(%rip), %rsp
    lgdt probe_gdt_ptr(%rip)
    movl $CR4_VALUE, %eax
    movq %rax, %cr4
    movl $CR0_VALUE, %eax
    movq %rax, %cr0
    leaq probe_pml4(%rip), %rax
    movq %rax, %cr3
    pushq $KCODE64
    leaq long_mode_common(%rip), %rax
    pushq %rax
    lretq

/* ---- common long-mode setup, then iretq to ring 3 ---- */
long_mode_common:
    leaq probe_kstack_top(%rip), %rsp
    movl $KDATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    lidt probe_idt_ptr(%rip)
    movl $TSSSEL, %eax
    ltr %ax
    movb $0xff, %al               /* mask both 8259s */
    outb %al, $0x21
    outb %al, $0xa1
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq
    pushq $UDATA                  /* SS */
    leaq probe_ustack_top-8(%rip), %rax
    pushq %rax                    /* RSP (as if called) */
    pushq $0x3202                 /* RFLAGS: IOPL=3, IF */
    pushq $UCODE64                /* CS */
    leaq probe_main(%rip), %rax
    pushq %rax                    /* RIP */
    iretq

/* ---- interrupt stubs (IDT gates clear IF; they run on TSS.RSP0) ---- */
irq_timer:
    lock incl PROBE_TIMER_TICKS(%rip)
    pushq %rax
    xorl %eax, %eax
    movabsl %eax, LAPIC_EOI
    popq %rax
    iretq

irq_com1:
    pushq %rax
    pushq %rdx
    movl $COM1+2, %edx            /* IIR: reading it acknowledges THRE */
    inb %dx, %al
    movb %al, PROBE_COM1_IIR(%rip)
    decl %edx                     /* IER = 0: no further UART interrupts */
    xorl %eax, %eax
    outb %al, %dx
    lock incl PROBE_COM1_IRQS(%rip)
    movabsl %eax, LAPIC_EOI
    popq %rdx
    popq %rax
    iretq

irq_other:
    lock incl PROBE_OTHER_IRQS(%rip)
    pushq %rax
    xorl %eax, %eax
    movabsl %eax, LAPIC_EOI
    popq %rax
    iretq

irq_spurious:                     /* no EOI for the spurious vector */
    lock incl PROBE_SPURIOUS_IRQS(%rip)
    iretq

/* MSI-X vectors VIRTIO_VECTOR_BASE.. (virtio drivers): one counter each */
    .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
irq_virtio_\i:
    lock incl PROBE_VIRTIO_IRQS+4*\i(%rip)
    jmp irq_eoi
    .endr
irq_eoi:
    pushq %rax
    xorl %eax, %eax
    movabsl %eax, LAPIC_EOI
    popq %rax
    iretq

/* ---- port I/O for ring 3 ----
 * PVM does not honour IOPL for ring 3 (its IRETQ leaves IOPL at 0): IN/OUT
 * there raise #GP. So ring 3 does its port I/O by calling one of these
 * gates with the usual registers (DX port, AL/AX/EAX value, RSI/RCX for
 * OUTSB). Where IOPL=3 works (VT-x/AMD-V) the instruction just runs and
 * the gate returns; on PVM it faults, and the #GP stub repeats it in ring 0
 * and resumes ring 3 at `probe_io_ret`. Layout: 8 bytes per gate, the
 * ring-0 twin at the same offset in `io_ring0`. */
    .balign 64
    .global probe_io_gates, probe_io_ret
probe_io_gates:
    outb %al, %dx
    ret
    .balign 8
    outw %ax, %dx
    ret
    .balign 8
    outl %eax, %dx
    ret
    .balign 8
    inb %dx, %al
    ret
    .balign 8
    inw %dx, %ax
    ret
    .balign 8
    inl %dx, %eax
    ret
    .balign 8
    rep outsb                     /* RSI buffer, RCX count, DX port */
    ret
    .balign 8
probe_io_gates_end:
probe_io_ret:
    ret

    .balign 8
io_ring0:
    popq %rax
    outb %al, %dx
    jmp io_done
    .balign 8
    popq %rax
    outw %ax, %dx
    jmp io_done
    .balign 8
    popq %rax
    outl %eax, %dx
    jmp io_done
    .balign 8
    popq %rax
    inb %dx, %al
    jmp io_done
    .balign 8
    popq %rax
    inw %dx, %ax
    jmp io_done
    .balign 8
    popq %rax
    inl %dx, %eax
    jmp io_done
    .balign 8
    popq %rax
    rep outsb
io_done:
    movq $probe_io_ret, 8(%rsp)   /* resume at a `ret` in ring 3 */
    addq $8, %rsp                 /* drop the error code */
    iretq

/* #GP: a port I/O gate, else a real fault (or a ring-3 service request) */
exc_13:
    pushq %rax
    movq 16(%rsp), %rax           /* faulting RIP */
    subq $probe_io_gates, %rax
    cmpq $probe_io_gates_end - probe_io_gates, %rax
    jae 1f
    addq $io_ring0, %rax
    jmp *%rax
1:  popq %rax
    pushq $13
    jmp exc_common

/* ---- exception stubs: push a dummy error code where the CPU does not ---- */
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
exc_\v:
    .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    jmp exc_common
    .endr

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. Nothing returns. */
exc_common:
    cmpq $13, (%rsp)
    jne 2f
    movq 16(%rsp), %rax
    leaq probe_svc_halt(%rip), %rbx
    cmpq %rbx, %rax
    je halt_forever
    leaq probe_svc_triple_fault(%rip), %rbx
    cmpq %rbx, %rax
    jne 2f
    lidt zero_idt_ptr(%rip)       /* limit 0: the #UD cannot be delivered */
    ud2
2:
    movl $COM1, %edx
    leaq msg_exc(%rip), %rsi
    call puts
    movq (%rsp), %rbx
    shlq $56, %rbx
    movl $2, %ecx
    call puthex
    leaq msg_err(%rip), %rsi
    call puts
    movq 8(%rsp), %rbx
    movl $16, %ecx
    call puthex
    leaq msg_rip(%rip), %rsi
    call puts
    movq 16(%rsp), %rbx
    movl $16, %ecx
    call puthex
    leaq msg_cr2(%rip), %rsi
    call puts
    movq %cr2, %rbx
    movl $16, %ecx
    call puthex
    leaq msg_rflags(%rip), %rsi
    call puts
    movq 32(%rsp), %rbx
    movl $16, %ecx
    call puthex
    movb $10, %al
    outb %al, %dx
    /* fatal exit, as ring 3 configured it (ACPI power-off once known) */
    movl PROBE_FATAL_KIND(%rip), %eax
    movl PROBE_FATAL_VALUE(%rip), %ecx
    movq PROBE_FATAL_ADDR(%rip), %rdx
    cmpl $1, %eax
    je 3f
    cmpl $2, %eax
    je 4f
    cmpl $3, %eax
    jne halt_forever
    movb %cl, (%rdx)              /* 3: 8-bit MMIO write */
    jmp halt_forever
3:  movl %ecx, %eax               /* 1: 8-bit port write */
    outb %al, %dx
    jmp halt_forever
4:  movl %ecx, %eax               /* 2: 16-bit port write */
    outw %ax, %dx
halt_forever:
    cli
1:  hlt
    jmp 1b

/* puts: NUL-terminated string at RSI to port DX */
puts:
    movb (%rsi), %al
    testb %al, %al
    jz 1f
    outb %al, %dx
    incq %rsi
    jmp puts
1:  ret

/* puthex: the top ECX nibbles of RBX, lower-case hex, to port DX */
puthex:
    rolq $4, %rbx
    movl %ebx, %eax
    andl $15, %eax
    addl $48, %eax
    cmpl $57, %eax
    jbe 1f
    addl $39, %eax
1:  outb %al, %dx
    decl %ecx
    jnz puthex
    ret

msg_exc: .asciz "\nPROBE-FATAL exception vector=0x"
msg_err: .asciz " error=0x"
msg_rip: .asciz " rip=0x"
msg_cr2: .asciz " cr2=0x"
msg_rflags: .asciz " rflags=0x"

/* ---- boot variables (in .entry: not zeroed with the BSS) ---- */
    .balign 8
    .global probe_boot_entry, probe_boot_info
probe_boot_entry: .long 0
    .long 0
probe_boot_info: .quad 0

/* ---- GDT ---- */
    .balign 16
probe_gdt:
    .quad 0
    .quad 0x00af9a000000ffff      /* 0x08 ring-0 code, 64-bit */
    .quad 0x00cf92000000ffff      /* 0x10 ring-0 data */
    .quad 0x00cf9a000000ffff      /* 0x18 ring-0 code, 32-bit */
    .quad 0x00cff2000000ffff      /* 0x20 ring-3 data */
    .quad 0x00affa000000ffff      /* 0x28 ring-3 code, 64-bit */
    .word 103                     /* 0x30 TSS: limit */
    .word probe_tss - 0x100000    /*   base 15:0 */
    .byte 0x10                    /*   base 23:16 */
    .byte 0x89                    /*   present, 64-bit TSS (available) */
    .byte 0                       /*   limit 19:16, flags */
    .byte 0                       /*   base 31:24 */
    .long 0                       /*   base 63:32 */
    .long 0
probe_gdt_end:

    /* usable by lgdt in 32-bit mode (reads 6 bytes) and in 64-bit mode */
    .balign 8
    .word 0, 0, 0
probe_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .quad probe_gdt

    .word 0, 0, 0
probe_idt_ptr:
    .word 256 * 16 - 1
    .quad probe_idt

    .word 0, 0, 0
zero_idt_ptr:
    .word 0
    .quad 0

/* ---- TSS ---- */
    .balign 16
probe_tss:
    .long 0
    .quad probe_kstack_top        /* RSP0 */
    .quad 0, 0                    /* RSP1, RSP2 */
    .quad 0
    .quad probe_ist_top           /* IST1: NMI, #DF, #MC */
    .quad 0, 0, 0, 0, 0, 0
    .quad 0
    .word 0
    .word 104                     /* no I/O bitmap: IOPL=3 grants ring 3 the ports */

/* ---- IDT: 64-bit interrupt gates, DPL 0, handlers in 0x10xxxx ---- */
    .macro gate handler, ist
    .word \handler - 0x100000
    .word KCODE64
    .byte \ist, 0x8e
    .word 0x0010
    .long 0, 0
    .endm

    .balign 16
probe_idt:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .if (\v == 2) || (\v == 8) || (\v == 18)
    gate exc_\v, 1
    .else
    gate exc_\v, 0
    .endif
    .endr
    .rept 0x40 - 0x20
    gate irq_other, 0
    .endr
    gate irq_timer, 0             /* 0x40: LAPIC timer */
    gate irq_com1, 0              /* 0x41: COM1 via the IOAPIC */
    .rept 0x50 - 0x42
    gate irq_other, 0
    .endr
    .irp i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    gate irq_virtio_\i, 0         /* 0x50..0x6f: virtio MSI-X */
    .endr
    .rept 0xff - 0x70
    gate irq_other, 0
    .endr
    gate irq_spurious, 0          /* 0xff: LAPIC spurious vector */

    .global probe_ring0_window_end
probe_ring0_window_end:

/* ---- identity map: 4 GiB in 2 MiB pages, all user-accessible;
 *      3-4 GiB (the MMIO hole) uncached. Ring 3 may add RAM above 4 GiB. ---- */
    .section .entry.tables, "aw"
    .balign 4096
    .global probe_pml4, probe_pdpt
probe_pml4:
    .quad probe_pdpt + 0x07
    .fill 511, 8, 0
probe_pdpt:
    .quad probe_pd + 0x0000 + 0x07
    .quad probe_pd + 0x1000 + 0x07
    .quad probe_pd + 0x2000 + 0x07
    .quad probe_pd + 0x3000 + 0x07
    .fill 508, 8, 0
probe_pd:
    .set pa, 0
    .rept 3 * 512
    .quad pa + 0x87               /* P | RW | US | PS */
    .set pa, pa + 0x200000
    .endr
    .rept 512
    .quad pa + 0x9f               /* P | RW | US | PWT | PCD | PS */
    .set pa, pa + 0x200000
    .endr

/* ---- the PVH entry note ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                       /* namesz */
    .long 8                       /* descsz */
    .long 18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad probe_pvh_entry

/* ---- memory that needs no clearing: stacks, page-directory pool ---- */
    .section .uninit, "aw", @nobits
    .balign 4096
    .global probe_pd_pool
probe_pd_pool:
    .skip {pd_pool_size} * 4096
    .skip 16384
probe_kstack_top:
    .skip 4096
probe_ist_top:
    .skip 262144
probe_ustack_top:

/* ---- AP trampoline: copied to 0x8000, entered by SIPI vector 0x08 in real
 *      mode. Checks in (initial APIC ID, counter) and halts for good. ---- */
    .section .rodata.trampoline, "a"
    .global probe_ap_trampoline, probe_ap_trampoline_end
    .code16
probe_ap_trampoline:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movl $1, %eax
    cpuid
    shrl $24, %ebx
    movw $1, %ax
    lock xaddw %ax, {ap_count}    /* claim a slot */
    movw %ax, %si
    movb %bl, {ap_ids}(%si)       /* initial APIC ID */
    lock incw {ap_done}           /* then say it is there */
1:  hlt
    jmp 1b
probe_ap_trampoline_end:
    .code64

/* ---- ring-3 helpers ---- */
    .text
    .global probe_svc_halt, probe_svc_triple_fault
probe_svc_halt:
    hlt
    jmp probe_svc_halt
probe_svc_triple_fault:
    hlt
    jmp probe_svc_triple_fault

/* The memory routines the compiler calls (no libc here). */
    .global memcpy, memmove, memset, memcmp, bcmp, rust_eh_personality
/* Referenced by the precompiled libcore's unwind tables; never called (panic=abort). */
rust_eh_personality:
    ud2
memcpy:
    movq %rdi, %rax
    movq %rdx, %rcx
    rep movsb
    ret
memmove:
    movq %rdi, %rax
    movq %rdx, %rcx
    cmpq %rsi, %rdi
    jbe 1f
    leaq -1(%rsi,%rcx), %rsi
    leaq -1(%rdi,%rcx), %rdi
    std
    rep movsb
    cld
    ret
1:  rep movsb
    ret
memset:
    movq %rdi, %r8
    movl %esi, %eax
    movq %rdx, %rcx
    rep stosb
    movq %r8, %rax
    ret
memcmp:
bcmp:
    xorl %eax, %eax
    testq %rdx, %rdx
    jz 2f
1:  movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    subl %ecx, %eax
    jnz 2f
    incq %rdi
    incq %rsi
    decq %rdx
    jnz 1b
2:  ret
"#,
    pd_pool_size = const PD_POOL_SIZE,
    ap_count = const AP_COUNT_ADDR,
    ap_done = const AP_DONE_ADDR,
    ap_ids = const AP_IDS_ADDR,
    options(att_syntax)
);
