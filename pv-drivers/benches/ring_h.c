/*
 * The yardstick of benches/ring.rs: the blkif workload on Xen's own
 * io/ring.h macros and blkif.h types (Debian's libxen-dev), two spinning
 * threads, as the Rust ring runs it. Built and run by the bench; prints
 * one line, the round trips per second.
 *
 *     cc -O2 -pthread ring_h.c -o ring_h && ./ring_h 2000000
 *
 * Both ends copy every entry out whole (RING_COPY_*, the copy kept whole
 * with use()), the back end checks
 * req_prod once per batch (RING_REQUEST_PROD_OVERFLOW), the front end
 * rsp_prod (RING_RESPONSE_PROD_OVERFLOW), and each end publishes with
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

#include <xen/io/blkif.h>

/* Requests in flight at most, as the Rust bench. */
#define DEPTH 32

static blkif_sring_t *sring;
static uint64_t round_trips;

static void *back_end(void *unused)
{
    blkif_back_ring_t back;
    BACK_RING_INIT(&back, sring, 4096);
    RING_IDX published = 0;
    uint64_t answered = 0;
    (void)unused;
    while (answered < round_trips) {
        RING_IDX rc = back.req_cons;
        RING_IDX rp = sring->req_prod;
        rmb(); /* read requests only after the index that published them */
        if (RING_REQUEST_PROD_OVERFLOW(&back, rp)) {
            fprintf(stderr, "ring_h: request producer overflow\n");
            exit(1);
        }
        if (rc == rp) {
            if (back.rsp_prod_pvt != published) {
                int notify;
                RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
                use(notify);
                published = back.rsp_prod_pvt;
            }
            __builtin_ia32_pause();
            continue;
        }
        while (rc != rp && !RING_REQUEST_CONS_OVERFLOW(&back, rc)) {
            blkif_request_t request;
            RING_COPY_REQUEST(&back, rc, &request);
            use(request);
            back.req_cons = ++rc;
            blkif_response_t response = {0};
            response.id = request.id;
            response.operation = request.operation;
            response.status = BLKIF_RSP_OKAY;
            *RING_GET_RESPONSE(&back, back.rsp_prod_pvt) = response;
            back.rsp_prod_pvt++;
            answered++;
        }
    }
    if (back.rsp_prod_pvt != published) {
        int notify;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&back, notify);
        use(notify);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    round_trips = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    sring = aligned_alloc(4096, 4096);
    if (!sring)
        return 1;
    memset(sring, 0, 4096);
    SHARED_RING_INIT(sring);
    blkif_front_ring_t front;
    FRONT_RING_INIT(&front, sring, 4096);
    if (RING_SIZE(&front) != 32 || sizeof(blkif_request_t) != 112) {
        fprintf(stderr, "ring_h: unexpected blkif geometry\n");
        return 1;
    }

    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pthread_t thread;
    if (pthread_create(&thread, NULL, back_end, NULL))
        return 1;
    uint64_t sent = 0, received = 0;
    while (received < round_trips) {
        int queued = 0;
        while (sent < round_trips && sent - received < DEPTH && !RING_FULL(&front)) {
            blkif_request_t request = {0};
            request.id = sent;
            *RING_GET_REQUEST(&front, front.req_prod_pvt) = request;
            front.req_prod_pvt++;
            sent++;
            queued = 1;
        }
        if (queued) {
            int notify;
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&front, notify);
            use(notify);
        }
        RING_IDX rc = front.rsp_cons;
        RING_IDX rp = sring->rsp_prod;
        rmb(); /* read responses only after the index that published them */
        if (RING_RESPONSE_PROD_OVERFLOW(&front, rp)) {
            fprintf(stderr, "ring_h: response producer overflow\n");
            return 1;
        }
        while (rc != rp) {
            blkif_response_t response;
            RING_COPY_RESPONSE(&front, rc, &response);
            use(response);
            if (response.id != received) {
                fprintf(stderr, "ring_h: response %llu out of order\n", (unsigned long long)response.id);
                return 1;
            }
            received++;
            rc++;
        }
        front.rsp_cons = rc;
    }
    pthread_join(thread, NULL);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%.0f\n", (double)round_trips / seconds);
    free(sring);
    return 0;
}
