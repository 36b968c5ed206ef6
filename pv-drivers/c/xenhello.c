/*
 * A guest in C on Xen's own public headers (Debian's libxen-dev), built
 * freestanding with the host's C compiler: a PVH kernel as Xen defines one.
 * dom0 starts it at pvh_start (pvh.S: Xen's PHYS32_ENTRY note, 32-bit
 * protected mode, EBX = hvm_start_info), which enters 64-bit mode and
 * calls guest_main. It checks that Mica speaks the Xen interface as Xen's
 * headers define it: the start info (magic, command line, memory map),
 * the version, the 2-level event layout of shared_info_t, the console ring
 * and the store found through HVM parameters (xencons_interface, xs_wire),
 * then waits for a key on its console and powers off.
 */
#include <stdint.h>
/*
 * Without it Xen's headers describe interface version 0, whose names are
 * the retired calls (__HYPERVISOR_sched_op is then sched_op_compat, 6);
 * Mica offers only the current ones, as a guest that asks for the latest
 * interface (Linux does) uses them.
 */
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#include <xen/xen.h>
#include <xen/version.h>
#include <xen/sched.h>
#include <xen/memory.h>
#include <xen/event_channel.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/params.h>
#include <xen/arch-x86/hvm/start_info.h>
#include <xen/io/console.h>
#include <xen/io/xs_wire.h>
#include <xen/grant_table.h>
/* ring.h wants the barriers from its user (interface versions >= 3.2.8). */
#define xen_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#include <xen/io/blkif.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>

/* The freestanding build has no libc: what ring.h and the compiler use. */
void *memset(void *to, int value, unsigned long count)
{
    unsigned char *bytes = to;
    while (count--)
        *bytes++ = (unsigned char)value;
    return to;
}

void *memcpy(void *to, const void *from, unsigned long count)
{
    unsigned char *out = to;
    const unsigned char *in = from;
    while (count--)
        *out++ = *in++;
    return to;
}

/* A Xen hypercall: vmcall with the number in rax, arguments in rdi, rsi
 * (64-bit mode: pvh.S switched to it). */
static long hypercall(unsigned long number, unsigned long a1, unsigned long a2)
{
    long result;
    __asm__ volatile("vmcall" : "=a"(result) : "a"(number), "D"(a1), "S"(a2) : "memory");
    return result;
}

/* console_io's write has three arguments: the count in rsi, the bytes in rdx. */
static void write_text(const char *text, unsigned long length)
{
    long result;
    __asm__ volatile("vmcall"
                     : "=a"(result)
                     : "a"((unsigned long)__HYPERVISOR_console_io), "D"((unsigned long)CONSOLEIO_write),
                       "S"(length), "d"(text)
                     : "memory");
    (void)result;
}

static long send(evtchn_port_t port)
{
    struct evtchn_send request = {.port = port};
    return hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&request);
}

/* Lets dom0 run (it serves the rings this guest waits on). */
static void yield(void)
{
    hypercall(__HYPERVISOR_sched_op, SCHEDOP_yield, 0);
}

/* HVM parameter `index` of this domain; 0 if refused. */
static uint64_t param(uint32_t index)
{
    xen_hvm_param_t request = {.domid = DOMID_SELF, .index = index};
    return hypercall(__HYPERVISOR_hvm_op, HVMOP_get_param, (unsigned long)&request) == 0 ? request.value : 0;
}

/* The console ring and its port (HVM_PARAM_CONSOLE_PFN, _EVTCHN). */
static volatile struct xencons_interface *console;
static evtchn_port_t console_port;

static void console_write(const char *text, unsigned long length)
{
    if (!console)
        return;
    for (unsigned long i = 0; i < length; i++) {
        while (console->out_prod - console->out_cons >= sizeof(console->out)) {
            send(console_port);
            yield();
        }
        console->out[MASK_XENCONS_IDX(console->out_prod, console->out)] = text[i];
        __atomic_thread_fence(__ATOMIC_RELEASE);
        console->out_prod++;
    }
    send(console_port);
}

/* Waits for a byte typed at this guest's console. */
static char console_read(void)
{
    while (console->in_cons == console->in_prod)
        yield();
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    char byte = console->in[MASK_XENCONS_IDX(console->in_cons, console->in)];
    __atomic_thread_fence(__ATOMIC_RELEASE);
    console->in_cons++;
    send(console_port);
    return byte;
}

/* A line under construction. */
static char line[256];
static unsigned long used;

static void put(const char *text)
{
    while (*text && used < sizeof(line) - 1)
        line[used++] = *text++;
}

static void put_number(long value)
{
    char digits[24];
    int count = 0;
    if (value < 0) {
        put("-");
        value = -value;
    }
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && count < (int)sizeof(digits));
    while (count)
        line[used < sizeof(line) - 1 ? used++ : used] = digits[--count];
}

/* Ends the line: to hv's console (console_io, in dom0's dmesg) and to the
 * console ring (dom0's `console` command). */
static void end_line(void)
{
    put("\n");
    write_text(line, used);
    console_write(line, used);
    used = 0;
}

/* The store ring and its port (HVM_PARAM_STORE_PFN, _EVTCHN). */
static volatile struct xenstore_domain_interface *store;
static evtchn_port_t store_port;

static void store_put(const void *bytes, unsigned long length)
{
    const char *from = bytes;
    for (unsigned long i = 0; i < length; i++) {
        while (store->req_prod - store->req_cons >= XENSTORE_RING_SIZE) {
            send(store_port);
            yield();
        }
        store->req[MASK_XENSTORE_IDX(store->req_prod)] = from[i];
        __atomic_thread_fence(__ATOMIC_RELEASE);
        store->req_prod++;
    }
    send(store_port);
}

static void store_get(void *bytes, unsigned long length)
{
    char *to = bytes;
    for (unsigned long i = 0; i < length; i++) {
        while (store->rsp_cons == store->rsp_prod)
            yield();
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        to[i] = store->rsp[MASK_XENSTORE_IDX(store->rsp_cons)];
        __atomic_thread_fence(__ATOMIC_RELEASE);
        store->rsp_cons++;
    }
    send(store_port);
}

/* Sends one store request of `type` with `fields` (each with its NUL,
 * `lengths` bytes) and reads the reply's payload into `value` (NUL-
 * terminated); the reply's type. Watch events in between are skipped. */
static uint32_t store_request(uint32_t type, const char *const *fields, const unsigned long *lengths, int count,
                              char *value, unsigned long size)
{
    uint32_t length = 0;
    for (int i = 0; i < count; i++)
        length += (uint32_t)lengths[i];
    struct xsd_sockmsg request = {.type = type, .req_id = 2, .tx_id = 0, .len = length};
    store_put(&request, sizeof(request));
    for (int i = 0; i < count; i++)
        store_put(fields[i], lengths[i]);
    for (;;) {
        struct xsd_sockmsg reply;
        store_get(&reply, sizeof(reply));
        unsigned long kept = 0;
        for (uint32_t i = 0; i < reply.len; i++) {
            char byte;
            store_get(&byte, 1);
            if (kept < size - 1)
                value[kept++] = byte;
        }
        value[kept] = 0;
        if (reply.type != XS_WATCH_EVENT)
            return reply.type;
    }
}

static unsigned long length_of(const char *text)
{
    unsigned long length = 0;
    while (text[length])
        length++;
    return length;
}

/* XS_WRITE of `text` at `path`; whether the store said OK. */
static int store_write(const char *path, const char *text)
{
    const char *fields[] = {path, text};
    /* The path with its NUL, the value without (xs_wire). */
    unsigned long lengths[] = {length_of(path) + 1, length_of(text)};
    char reply[16];
    return store_request(XS_WRITE, fields, lengths, 2, reply, sizeof(reply)) == XS_WRITE;
}

/* XS_READ of `path` (relative to this domain's home) into `value`
 * (NUL-terminated); the reply's type (XS_READ, or XS_ERROR with the
 * error's name in `value`). Watch events in between are skipped. */
static uint32_t store_read(const char *path, char *value, unsigned long size)
{
    const char *fields[] = {path};
    unsigned long lengths[] = {length_of(path) + 1};
    return store_request(XS_READ, fields, lengths, 1, value, size);
}

/* The page that becomes the shared info, with Xen's own layout. */
static union {
    shared_info_t info;
    unsigned char bytes[4096];
} shared __attribute__((aligned(4096)));

/* The grant table (frame 0, placed with add_to_physmap), the block ring
 * and one data page, granted to dom0. */
static grant_entry_v1_t grant_table[4096 / sizeof(grant_entry_v1_t)] __attribute__((aligned(4096)));
static union {
    blkif_sring_t ring;
    unsigned char bytes[4096];
} block_page __attribute__((aligned(4096)));
static unsigned char data_page[4096] __attribute__((aligned(4096)));

static void grant(grant_ref_t ref, void *page)
{
    grant_table[ref].domid = 0;
    grant_table[ref].frame = (uint32_t)((unsigned long)page >> 12);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    grant_table[ref].flags = GTF_permit_access;
}

static long parse(const char *text)
{
    long value = 0;
    while (*text >= '0' && *text <= '9')
        value = value * 10 + (*text++ - '0');
    return value;
}

/* Reads `key` of directory `dir` into `value`; the reply's type. */
static uint32_t read_key(const char *dir, const char *key, char *value, unsigned long size)
{
    char path[128];
    unsigned long at = 0;
    for (const char *p = dir; *p && at < sizeof(path) - 2; p++)
        path[at++] = *p;
    path[at++] = '/';
    for (const char *p = key; *p && at < sizeof(path) - 1; p++)
        path[at++] = *p;
    path[at] = 0;
    return store_read(path, value, size);
}

/* Waits (yielding) until the back end at `backend` is in `state`. */
static int wait_backend(const char *backend, int state)
{
    char value[16];
    for (int tries = 0; tries < 100000; tries++) {
        if (read_key(backend, "state", value, sizeof(value)) == XS_READ && parse(value) == state)
            return 1;
        yield();
    }
    return 0;
}

/* One request on the ring for sector 0 through the data page, answered. */
static int block_io(blkif_front_ring_t *ring, evtchn_port_t port, uint8_t operation)
{
    blkif_request_t *request = RING_GET_REQUEST(ring, ring->req_prod_pvt);
    request->operation = operation;
    request->nr_segments = 1;
    request->handle = 0;
    request->id = operation;
    request->sector_number = 0;
    request->seg[0].gref = 2;
    request->seg[0].first_sect = 0;
    request->seg[0].last_sect = 0;
    ring->req_prod_pvt++;
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(ring, notify);
    if (notify)
        send(port);
    for (int tries = 0; tries < 1000000; tries++) {
        if (RING_HAS_UNCONSUMED_RESPONSES(ring)) {
            blkif_response_t *response = RING_GET_RESPONSE(ring, ring->rsp_cons);
            ring->rsp_cons++;
            return response->id == operation && response->status == BLKIF_RSP_OKAY;
        }
        yield();
    }
    return 0;
}

/* The first disk (device/vbd/51712) through blkif: connects as Linux's
 * blkfront does, writes a marker to sector 0 and reads it back. */
static void disk(void)
{
    const char *dir = "device/vbd/51712";
    char backend[96], value[32];
    put("xenhello-c: disk: ");
    if (!store || read_key(dir, "backend", backend, sizeof(backend)) != XS_READ) {
        put("none offered");
        end_line();
        return;
    }
    struct xen_add_to_physmap add = {
        .domid = DOMID_SELF,
        .space = XENMAPSPACE_grant_table,
        .idx = 0,
        .gpfn = (unsigned long)grant_table / 4096,
    };
    long placed = hypercall(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, (unsigned long)&add);
    struct evtchn_alloc_unbound alloc = {.dom = DOMID_SELF, .remote_dom = 0};
    long allocated = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, (unsigned long)&alloc);
    if (placed != 0 || allocated != 0 || !wait_backend(backend, XenbusStateInitWait)) {
        put("setting up failed");
        end_line();
        return;
    }
    blkif_front_ring_t ring;
    SHARED_RING_INIT(&block_page.ring);
    FRONT_RING_INIT(&ring, &block_page.ring, sizeof(block_page));
    grant(1, &block_page);
    grant(2, data_page);
    char number[12];
    int digits = 0;
    for (uint32_t port = alloc.port; digits == 0 || port; port /= 10)
        number[digits++] = (char)('0' + port % 10);
    for (int i = 0; i < digits / 2; i++) {
        char swap = number[i];
        number[i] = number[digits - 1 - i];
        number[digits - 1 - i] = swap;
    }
    number[digits] = 0;
    char path[64];
    const char *keys[] = {"ring-ref", "event-channel", "protocol", "state"};
    const char *values[] = {"1", number, XEN_IO_PROTO_ABI_NATIVE, "3"};
    int written = 1;
    for (int k = 0; k < 4; k++) {
        unsigned long at = 0;
        for (const char *p = dir; *p; p++)
            path[at++] = *p;
        path[at++] = '/';
        for (const char *p = keys[k]; *p; p++)
            path[at++] = *p;
        path[at] = 0;
        written &= store_write(path, values[k]);
    }
    if (!written || !wait_backend(backend, XenbusStateConnected)) {
        put("the back end did not connect");
        end_line();
        return;
    }
    long sectors = read_key(backend, "sectors", value, sizeof(value)) == XS_READ ? parse(value) : -1;
    const char marker[] = "xenhello-c was here";
    for (unsigned long i = 0; i < sizeof(marker); i++)
        data_page[i] = (unsigned char)marker[i];
    int wrote = block_io(&ring, alloc.port, BLKIF_OP_WRITE);
    for (unsigned long i = 0; i < sizeof(data_page); i++)
        data_page[i] = 0;
    int read = block_io(&ring, alloc.port, BLKIF_OP_READ);
    int same = 1;
    for (unsigned long i = 0; i < sizeof(marker); i++)
        same &= data_page[i] == (unsigned char)marker[i];
    put_number(sectors);
    put(" sectors; sector 0 written ");
    put(wrote ? "ok" : "FAILED");
    put(", read back ");
    put(read && same ? "the same" : "WRONG");
    end_line();
}

/* The local x2APIC, through MSRs (abi::xen, Local APIC). */
#define MSR_APIC_BASE 0x1b
#define MSR_TSC_DEADLINE 0x6e0
#define X2APIC_ID 0x802
#define X2APIC_VERSION 0x803
#define X2APIC_EOI 0x80b
#define X2APIC_SVR 0x80f
#define X2APIC_ISR 0x810
#define X2APIC_ICR 0x830
#define X2APIC_LVT_TIMER 0x832
#define X2APIC_INITIAL_COUNT 0x838
#define X2APIC_CURRENT_COUNT 0x839
#define X2APIC_DIVIDE 0x83e
#define X2APIC_SELF_IPI 0x83f
#define TIMER_VECTOR 0x40
#define SELF_VECTOR 0x41
/* The page vCPU 1 starts in (a Start-up IPI's vector is its number). */
#define AP_PAGE 0x8000

static uint64_t rdmsr(uint32_t msr)
{
    uint32_t low, high;
    __asm__ volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(msr));
    return (uint64_t)high << 32 | low;
}

static void wrmsr(uint32_t msr, uint64_t value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)) : "memory");
}

static uint64_t rdtsc(void)
{
    uint32_t low, high;
    __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
    return (uint64_t)high << 32 | low;
}

static void put_hex(uint64_t value)
{
    char digits[17];
    int count = 0;
    do {
        digits[count++] = "0123456789abcdef"[value & 15];
        value >>= 4;
    } while (value);
    put("0x");
    while (count)
        line[used < sizeof(line) - 1 ? used++ : used] = digits[--count];
}

/* The CPU's frame an interrupt handler gets (GCC's interrupt attribute). */
struct interrupt_frame;

/* A 64-bit interrupt gate. */
struct gate {
    uint16_t offset_low, selector;
    uint8_t ist, type;
    uint16_t offset_middle;
    uint32_t offset_high, reserved;
};
static struct gate idt[256] __attribute__((aligned(16)));

static void set_gate(uint8_t vector, void (*handler)(struct interrupt_frame *))
{
    uint64_t at = (uint64_t)handler;
    idt[vector] = (struct gate){.offset_low = (uint16_t)at, .selector = 0x08, .type = 0x8e,
                                .offset_middle = (uint16_t)(at >> 16), .offset_high = (uint32_t)(at >> 32)};
}

static volatile int timer_interrupts, self_interrupts;

__attribute__((interrupt)) static void timer_interrupt(struct interrupt_frame *frame)
{
    (void)frame;
    timer_interrupts++;
    wrmsr(X2APIC_EOI, 0);
}

__attribute__((interrupt)) static void self_interrupt(struct interrupt_frame *frame)
{
    (void)frame;
    self_interrupts++;
    wrmsr(X2APIC_EOI, 0);
}

/* Halts with interrupts on until `count` reaches `wanted`. */
static void wait_for(volatile int *count, int wanted)
{
    while (*count < wanted)
        __asm__ volatile("sti; hlt; cli");
}

extern const unsigned char ap_trampoline[], ap_trampoline_end[];

/* The local APIC as Linux finds it: its base and id, its timer one-shot
 * and TSC-deadline, a self IPI, and INIT and Start-up IPIs that start
 * vCPU 1 in real mode (with a second vCPU). */
static void apic(void)
{
    put("xenhello-c: x2APIC: base ");
    put_hex(rdmsr(MSR_APIC_BASE));
    put(", id ");
    put_number((long)rdmsr(X2APIC_ID));
    put(", version ");
    put_hex(rdmsr(X2APIC_VERSION));
    end_line();

    set_gate(TIMER_VECTOR, timer_interrupt);
    set_gate(SELF_VECTOR, self_interrupt);
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) pointer = {sizeof(idt) - 1, (uint64_t)idt};
    __asm__ volatile("lidt %0" : : "m"(pointer));
    wrmsr(X2APIC_SVR, 0x1ff); /* software-enabled, spurious vector 0xff */
    wrmsr(X2APIC_DIVIDE, 0xb); /* by 1: a count is a TSC tick */
    wrmsr(X2APIC_LVT_TIMER, TIMER_VECTOR);
    uint64_t start = rdtsc();
    wrmsr(X2APIC_INITIAL_COUNT, 100000);
    wait_for(&timer_interrupts, 1);
    uint64_t waited = rdtsc() - start;
    uint64_t left = rdmsr(X2APIC_CURRENT_COUNT);
    wrmsr(X2APIC_LVT_TIMER, TIMER_VECTOR | 2 << 17);
    wrmsr(MSR_TSC_DEADLINE, rdtsc() + 100000);
    wait_for(&timer_interrupts, 2);
    wrmsr(X2APIC_SELF_IPI, SELF_VECTOR);
    wait_for(&self_interrupts, 1);
    put("xenhello-c: APIC timer: one-shot after 100000 ticks: ");
    put(waited >= 100000 && left == 0 ? "yes" : "NO");
    put(", TSC-deadline: ");
    put_number(timer_interrupts - 1);
    put(", self IPI: ");
    put_number(self_interrupts);
    put(", in service after EOI: ");
    put_hex(rdmsr(X2APIC_ISR + TIMER_VECTOR / 32));
    end_line();

    volatile uint16_t *ran = (volatile uint16_t *)(AP_PAGE + 0x100);
    volatile uint32_t *id = (volatile uint32_t *)(AP_PAGE + 0x104);
    memcpy((void *)AP_PAGE, ap_trampoline, (unsigned long)(ap_trampoline_end - ap_trampoline));
    *ran = 0;
    wrmsr(X2APIC_ICR, (uint64_t)1 << 32 | 0xc500); /* INIT, level assert */
    wrmsr(X2APIC_ICR, (uint64_t)1 << 32 | 0x8500); /* INIT de-assert */
    wrmsr(X2APIC_ICR, (uint64_t)1 << 32 | 0x4600 | AP_PAGE >> 12); /* Start-up */
    for (int tries = 0; tries < 1000 && *ran != 0x1234; tries++)
        yield();
    put("xenhello-c: INIT and Start-up IPI: ");
    if (*ran == 0x1234) {
        put("vCPU 1 ran in real mode at ");
        put_hex(AP_PAGE);
        put(", its x2APIC id ");
        put_number((long)*id);
    } else {
        put("no vCPU 1 started");
    }
    end_line();
}

void guest_main(const struct hvm_start_info *start)
{
    console = (volatile struct xencons_interface *)(param(HVM_PARAM_CONSOLE_PFN) << 12);
    console_port = (evtchn_port_t)param(HVM_PARAM_CONSOLE_EVTCHN);
    store = (volatile struct xenstore_domain_interface *)(param(HVM_PARAM_STORE_PFN) << 12);
    store_port = (evtchn_port_t)param(HVM_PARAM_STORE_EVTCHN);

    /* The start of day dom0 handed over. */
    put("xenhello-c: PVH start info ");
    put(start->magic == XEN_HVM_START_MAGIC_VALUE ? "magic ok" : "BAD MAGIC");
    put(", version ");
    put_number(start->version);
    put(", command line '");
    put(start->cmdline_paddr ? (const char *)start->cmdline_paddr : "");
    put("', memory map:");
    const struct hvm_memmap_table_entry *map = (const void *)start->memmap_paddr;
    for (uint32_t i = 0; i < start->memmap_entries && map; i++) {
        put(" ");
        put_number((long)(map[i].size >> 10));
        put(map[i].type == XEN_HVM_MEMMAP_TYPE_RAM    ? " KiB RAM"
            : map[i].type == XEN_HVM_MEMMAP_TYPE_ACPI ? " KiB ACPI"
                                                      : " KiB reserved");
    }
    const char *rsdp = (const char *)start->rsdp_paddr;
    const char signature[] = "RSD PTR ";
    int rsdp_ok = rsdp != 0;
    for (int i = 0; rsdp_ok && i < 8; i++)
        rsdp_ok = rsdp[i] == signature[i];
    put(rsdp_ok ? ", ACPI RSDP found" : ", no ACPI RSDP");
    end_line();

    /* The same map through memory_op (E820 entries of 20 bytes). */
    static unsigned char e820[8 * 20];
    struct xen_memory_map memory_map = {.nr_entries = 8};
    set_xen_guest_handle(memory_map.buffer, (void *)e820);
    long mapped = hypercall(__HYPERVISOR_memory_op, XENMEM_memory_map, (unsigned long)&memory_map);
    put("xenhello-c: memory_map ");
    put_number(mapped);
    put(": ");
    put_number((long)memory_map.nr_entries);
    put(" entries, the last at ");
    uint64_t last = 0;
    for (int i = 0; i < 8 && mapped == 0 && memory_map.nr_entries > 0; i++)
        last |= (uint64_t)e820[(memory_map.nr_entries - 1) * 20 + i] << (8 * i);
    put_number((long)(last >> 10));
    put(" KiB");
    end_line();

    long version = hypercall(__HYPERVISOR_xen_version, XENVER_version, 0);
    xen_extraversion_t extra = {0};
    long extra_result = hypercall(__HYPERVISOR_xen_version, XENVER_extraversion, (unsigned long)extra);
    put("xenhello-c: Xen ");
    put_number(version >> 16);
    put(".");
    put_number(version & 0xffff);
    put(extra_result == 0 ? extra : "?");
    end_line();

    struct xen_add_to_physmap add = {
        .domid = DOMID_SELF,
        .space = XENMAPSPACE_shared_info,
        .idx = 0,
        .gpfn = (unsigned long)&shared / 4096,
    };
    long placed = hypercall(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, (unsigned long)&add);

    struct evtchn_alloc_unbound alloc = {.dom = DOMID_SELF, .remote_dom = DOMID_SELF};
    long allocated = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_alloc_unbound, (unsigned long)&alloc);
    struct evtchn_bind_interdomain bind = {.remote_dom = DOMID_SELF, .remote_port = alloc.port};
    long bound = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_bind_interdomain, (unsigned long)&bind);
    struct evtchn_send send = {.port = bind.local_port};
    long sent = hypercall(__HYPERVISOR_event_channel_op, EVTCHNOP_send, (unsigned long)&send);

    volatile shared_info_t *info = &shared.info;
    unsigned long word = alloc.port / (8 * sizeof(xen_ulong_t));
    unsigned long bit = alloc.port % (8 * sizeof(xen_ulong_t));
    put("xenhello-c: shared info ");
    put_number(placed);
    put(", channel ");
    put_number(allocated);
    put(" ");
    put_number(bound);
    put(" ");
    put_number(sent);
    put(": pending ");
    put_number((long)((info->evtchn_pending[word] >> bit) & 1));
    put(", upcall ");
    put_number(info->vcpu_info[0].evtchn_upcall_pending);
    put(", selector ");
    put_number((long)info->vcpu_info[0].evtchn_pending_sel);
    end_line();

    /* The store: this guest's name, which dom0 wrote in its home. */
    char name[64];
    uint32_t type = store ? store_read("name", name, sizeof(name)) : XS_ERROR;
    put("xenhello-c: store: name ");
    put(type == XS_READ ? name : "(refused: ");
    if (type != XS_READ) {
        put(store ? name : "no store");
        put(")");
    }
    end_line();

    apic();
    disk();

    put("xenhello-c: console ring: press a key to power off");
    end_line();
    char key[2] = {console ? console_read() : '?', 0};
    put("xenhello-c: got '");
    put(key);
    put("', powering off");
    end_line();

    struct sched_shutdown shutdown = {.reason = SHUTDOWN_poweroff};
    hypercall(__HYPERVISOR_sched_op, SCHEDOP_shutdown, (unsigned long)&shutdown);
    put("xenhello-c: still running after poweroff");
    end_line();
    for (;;)
        __asm__ volatile("pause");
}
