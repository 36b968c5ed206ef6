/*
 * The yardstick of benches/ring.rs: Xen's own io/ring.h macros and its
 * blkif.h / netif.h types (Debian's libxen-dev), on the workloads the Rust
 * ring runs there. Built twice by the bench, once a workload:
 *
 *     cc -O2 -pthread -DWORKLOAD_BLKIF ring_h.c -o ring_h_blkif
 *     cc -O2 -pthread -DWORKLOAD_NETIF_TX ring_h.c -o ring_h_netif_tx
 *     ./ring_h_blkif 2 2000000     # two threads, 2,000,000 round trips
 *
 * and prints one line, the round trips per second. With "2" the ends spin
 * on two threads; with "1" one thread takes turns at both (each end's
 * work alone, without the cache traffic between cores).
 *
 * Both ends copy every entry out whole (RING_COPY_*, the copy kept whole
 * with use()) and write every entry in place, field by field, as Xen's
 * front and back ends do (GCC compiles that better than a whole struct
 * assigned: no partial stores reloaded), the back end checks req_prod
 * once per batch (RING_REQUEST_PROD_OVERFLOW), the front end rsp_prod
 * (RING_RESPONSE_PROD_OVERFLOW), and each end publishes with
 * RING_PUSH_*_AND_CHECK_NOTIFY only when it has something new, as the
 * Rust ring does. Barriers as Xen's own tools define them on x86_64
 * (xenctrl.h): mfence for mb, compiler barriers for rmb and wmb.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#define barrier() __asm__ __volatile__("" ::: "memory")
#define mb() __asm__ __volatile__("mfence" ::: "memory")
#define rmb() barrier()
#define wmb() barrier()
/* Makes the compiler produce `value` whole, as if something read it: GCC
 * otherwise drops the parts of a volatile struct copy that go unused (its
 * bug 58145, which ring.h mentions), and the copy would not be made. */
#define use(value) __asm__ __volatile__("" : : "r"(&(value)) : "memory")

#if defined(WORKLOAD_BLKIF)
/* blkif: 32 slots of 112 bytes, 112-byte requests, 16-byte responses. */
#include <xen/io/blkif.h>
typedef blkif_sring_t sring_t;
typedef blkif_front_ring_t front_ring_t;
typedef blkif_back_ring_t back_ring_t;
typedef blkif_request_t request_t;
typedef blkif_response_t response_t;
#define SLOTS 32
#define ENTRY_SIZE 112

static void make_request(request_t *request, uint64_t number)
{
    request->operation = BLKIF_OP_READ;
    request->nr_segments = 0;
    request->handle = 0;
    request->id = number;
    request->sector_number = 0;
    for (int segment = 0; segment < BLKIF_MAX_SEGMENTS_PER_REQUEST; segment++) {
        request->seg[segment].gref = 0;
        request->seg[segment].first_sect = 0;
        request->seg[segment].last_sect = 0;
    }
}

static void answer(const request_t *request, response_t *response)
{
    response->id = request->id;
    response->operation = request->operation;
    response->status = BLKIF_RSP_OKAY;
}

static int answers(const response_t *response, uint64_t number)
{
    return response->id == number;
}
#elif defined(WORKLOAD_NETIF_TX)
/* netif's transmit ring: 256 slots of 12 bytes, 12-byte requests, 4-byte
 * responses. */
#include <xen/io/netif.h>
typedef netif_tx_sring_t sring_t;
typedef netif_tx_front_ring_t front_ring_t;
typedef netif_tx_back_ring_t back_ring_t;
typedef netif_tx_request_t request_t;
typedef netif_tx_response_t response_t;
#define SLOTS 256
#define ENTRY_SIZE 12

static void make_request(request_t *request, uint64_t number)
{
    request->gref = (grant_ref_t)number;
    request->offset = 0;
    request->flags = 0;
    request->id = (uint16_t)number;
    request->size = 1514;
}

static void answer(const request_t *request, response_t *response)
{
    response->id = request->id;
    response->status = NETIF_RSP_OKAY;
}

static int answers(const response_t *response, uint64_t number)
{
    return response->id == (uint16_t)number;
}
#else
#error "define WORKLOAD_BLKIF or WORKLOAD_NETIF_TX"
#endif

/* Requests in flight at most: the whole ring, as the Rust bench. */
#define DEPTH SLOTS

static sring_t *sring;
static uint64_t round_trips;

struct back_end {
    back_ring_t ring;
    RING_IDX published;
    uint64_t answered;
};

/* One look at req_prod: answers the batch it shows (returns 1), or, with
 * none, publishes the responses written (returns 0). Inlined, so that the
 * ends' state stays in registers, as in a loop written out in place. */
static inline __attribute__((always_inline)) int back_end_poll(struct back_end *back)
{
    RING_IDX rc = back->ring.req_cons;
    RING_IDX rp = sring->req_prod;
    rmb(); /* read requests only after the index that published them */
    if (RING_REQUEST_PROD_OVERFLOW(&back->ring, rp)) {
        fprintf(stderr, "ring_h: request producer overflow\n");
        exit(1);
    }
    if (rc == rp) {
        if (back->ring.rsp_prod_pvt != back->published) {
            int notify;
            RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back->ring, notify);
            use(notify);
            back->published = back->ring.rsp_prod_pvt;
        }
        return 0;
    }
    while (rc != rp && !RING_REQUEST_CONS_OVERFLOW(&back->ring, rc)) {
        request_t request;
        RING_COPY_REQUEST(&back->ring, rc, &request);
        use(request);
        back->ring.req_cons = ++rc;
        /* Written in place, field by field, as Xen's back ends do. */
        answer(&request, RING_GET_RESPONSE(&back->ring, back->ring.rsp_prod_pvt));
        back->ring.rsp_prod_pvt++;
        back->answered++;
    }
    return 1;
}

static void *back_end_thread(void *unused)
{
    struct back_end back = {0};
    (void)unused;
    BACK_RING_INIT(&back.ring, sring, 4096);
    while (back.answered < round_trips)
        if (!back_end_poll(&back))
            __builtin_ia32_pause();
    back_end_poll(&back); /* publishes the last responses */
    return NULL;
}

struct front_end {
    front_ring_t ring;
    uint64_t sent, received;
};

/* Queues requests up to the in-flight limit and publishes them, then
 * takes one batch of responses (one look at rsp_prod). */
static inline __attribute__((always_inline)) void front_end_round(struct front_end *front)
{
    int queued = 0;
    while (front->sent < round_trips && front->sent - front->received < DEPTH && !RING_FULL(&front->ring)) {
        /* Written in place, every field, as Xen's front ends do. */
        make_request(RING_GET_REQUEST(&front->ring, front->ring.req_prod_pvt), front->sent);
        front->ring.req_prod_pvt++;
        front->sent++;
        queued = 1;
    }
    if (queued) {
        int notify;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front->ring, notify);
        use(notify);
    }
    RING_IDX rc = front->ring.rsp_cons;
    RING_IDX rp = sring->rsp_prod;
    rmb(); /* read responses only after the index that published them */
    if (RING_RESPONSE_PROD_OVERFLOW(&front->ring, rp)) {
        fprintf(stderr, "ring_h: response producer overflow\n");
        exit(1);
    }
    while (rc != rp) {
        response_t response;
        RING_COPY_RESPONSE(&front->ring, rc, &response);
        use(response);
        if (!answers(&response, front->received)) {
            fprintf(stderr, "ring_h: response %llu out of order\n", (unsigned long long)front->received);
            exit(1);
        }
        front->received++;
        rc++;
    }
    front->ring.rsp_cons = rc;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    round_trips = argc > 2 ? strtoull(argv[2], NULL, 10) : 2000000;
    sring = aligned_alloc(4096, 4096);
    if (!sring || (threads != 1 && threads != 2))
        return 1;
    memset(sring, 0, 4096);
    SHARED_RING_INIT(sring);
    struct front_end front = {0};
    FRONT_RING_INIT(&front.ring, sring, 4096);
    if (RING_SIZE(&front.ring) != SLOTS || sizeof(sring->ring[0]) != ENTRY_SIZE) {
        fprintf(stderr, "ring_h: unexpected ring geometry\n");
        return 1;
    }

    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (threads == 2) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, back_end_thread, NULL))
            return 1;
        while (front.received < round_trips)
            front_end_round(&front);
        pthread_join(thread, NULL);
    } else {
        struct back_end back = {0};
        BACK_RING_INIT(&back.ring, sring, 4096);
        while (front.received < round_trips) {
            front_end_round(&front);
            while (back_end_poll(&back))
                ;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%.0f\n", (double)round_trips / seconds);
    free(sring);
    return 0;
}
