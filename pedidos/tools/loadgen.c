/* The benchmark's cheap load generator: one process, many connections, epoll.
 *
 * Built by pedidos/tools/cload.py with the machine's C compiler when there is
 * one, because a generator written in Python spends about as much CPU per
 * request as the Python servers it measures, and then it, not the server, is
 * the ceiling. It speaks the same dialogue as the Python generator (load.py):
 *
 *   loadgen HOST PORT CONNS DEPTH LIMIT GREETING CHECK REQUEST_FILE LATENCY_FILE
 *
 * connects CONNS connections (reading one greeting line each if GREETING),
 * prints "ready CONNECTED FAILED REFUSED CONNECT_S", reads "go START WARM
 * SECONDS" on stdin (START a wall-clock time), then keeps DEPTH copies of the
 * request in flight on each connection until START+WARM+SECONDS (or LIMIT
 * requests per connection, when LIMIT > 0). A reply is one '\n'-ended line (a
 * RESP reply ":N\r\n" is one too). Replies in the window are counted and their
 * latencies written to LATENCY_FILE as native doubles, but with CHECK only those
 * that say "ok": true (the others are BAD, wherever they come); the last line printed is
 * "done COUNT BAD LOST UNANSWERED REQUESTS".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GRACE_S 10.0
static const char OK[] = "\"ok\": true";

typedef struct {
    int fd, open, greeted;
    long requests, head, tail; /* send times of requests in flight: ring of depth */
    double *sent;
    char partial[256]; /* the start of a reply line that was cut (for CHECK) */
    size_t partial_len;
} conn_t;

static double now_mono(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double now_wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static char *request, *sendbuf;
static size_t request_len;
static long depth, limit;
static int check;
static double warm_at = 1e300, stop_at = 1e300;
static long count, bad, lost;
static double *lat;
static size_t lat_len, lat_cap;

static void record(double latency) {
    if (lat_len == lat_cap) {
        lat_cap = lat_cap ? 2 * lat_cap : 1 << 16;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat) { perror("realloc"); exit(1); }
    }
    lat[lat_len++] = latency;
}

/* Write n more requests, when the window is still open and LIMIT allows. */
static void send_more(conn_t *c, long n, double now) {
    if (limit > 0 && c->requests + n > limit) n = limit - c->requests;
    if (n <= 0 || now >= stop_at || !c->open) return;
    size_t len = (size_t)n * request_len;
    for (long i = 0; i < n; i++) memcpy(sendbuf + i * request_len, request, request_len);
    size_t off = 0;
    while (off < len) {  /* loopback with depth * request bytes in flight: it fits */
        ssize_t w = write(c->fd, sendbuf + off, len - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct timespec t = {0, 50000}; nanosleep(&t, NULL); continue; }
            c->open = 0;
            return;
        }
        off += (size_t)w;
    }
    for (long i = 0; i < n; i++) c->sent[(c->tail++) % depth] = now;
    c->requests += n;
}

/* Count the replies in a chunk; for CHECK, a line without "ok": true is bad. */
static long replies(conn_t *c, const char *data, size_t len, double now) {
    long n = 0;
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            if (check) {
                size_t k = (size_t)(end - p);
                if (c->partial_len + k > sizeof c->partial) k = sizeof c->partial - c->partial_len;
                memcpy(c->partial + c->partial_len, p, k);
                c->partial_len += k;
            }
            break;
        }
        if (!c->greeted) {
            c->greeted = 1;
        } else {
            int ok = 1;
            if (check) {
                if (c->partial_len) {
                    size_t k = (size_t)(nl - p);
                    if (c->partial_len + k > sizeof c->partial) k = sizeof c->partial - c->partial_len;
                    memcpy(c->partial + c->partial_len, p, k);
                    ok = memmem(c->partial, c->partial_len + k, OK, sizeof OK - 1) != NULL;
                    c->partial_len = 0;
                } else {
                    ok = memmem(p, (size_t)(nl - p), OK, sizeof OK - 1) != NULL;
                }
                if (!ok) bad++;
            }
            double sent = c->sent[(c->head++) % depth];
            /* A refusal is a reply, not an ack: neither counted nor timed. */
            if (ok && now >= warm_at && now < stop_at) {
                count++;
                record(now - sent);
            }
            n++;
        }
        p = nl + 1;
    }
    return n;
}

static int connect_one(const struct sockaddr *addr, socklen_t addrlen) {
    int fd = socket(addr->sa_family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, addr, addrlen) < 0) { close(fd); return -1; }
    return fd;
}

/* Read the greeting line while still blocking; 1 if it says "ok": true. */
static int read_greeting(int fd) {
    char line[4096];
    size_t len = 0;
    while (len < sizeof line) {
        ssize_t r = read(fd, line + len, sizeof line - len);
        if (r <= 0) return 0;
        len += (size_t)r;
        char *nl = memchr(line, '\n', len);
        if (nl) return memmem(line, (size_t)(nl - line), OK, sizeof OK - 1) != NULL && nl + 1 == line + len;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: loadgen HOST PORT CONNS DEPTH LIMIT GREETING CHECK REQUEST_FILE LATENCY_FILE\n");
        return 2;
    }
    long conns = atol(argv[3]);
    depth = atol(argv[4]);
    limit = atol(argv[5]);
    int greeting = atoi(argv[6]);
    check = atoi(argv[7]);
    FILE *f = fopen(argv[8], "rb");
    if (!f) { perror(argv[8]); return 1; }
    fseek(f, 0, SEEK_END);
    request_len = (size_t)ftell(f);
    rewind(f);
    request = malloc(request_len);
    if (fread(request, 1, request_len, f) != request_len) { perror("fread"); return 1; }
    fclose(f);
    sendbuf = malloc(request_len * (size_t)depth);

    struct addrinfo hints = {0}, *ai;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0) { fprintf(stderr, "cannot resolve %s\n", argv[1]); return 1; }

    conn_t *cs = calloc((size_t)conns, sizeof *cs);
    long connected = 0, failed = 0, refused = 0;
    double began = now_mono();
    for (long i = 0; i < conns; i++) {
        int fd = connect_one(ai->ai_addr, ai->ai_addrlen);
        if (fd < 0) { failed++; continue; }
        if (greeting && !read_greeting(fd)) { refused++; close(fd); continue; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conn_t *c = &cs[connected++];
        c->fd = fd;
        c->open = 1;
        c->greeted = 1;
        c->sent = malloc(sizeof(double) * (size_t)depth);
    }
    freeaddrinfo(ai);
    printf("ready %ld %ld %ld %.3f\n", connected, failed, refused, now_mono() - began);
    fflush(stdout);

    double start_wall, warm, seconds;
    if (scanf(" go %lf %lf %lf", &start_wall, &warm, &seconds) != 3) { fprintf(stderr, "no go\n"); return 1; }
    double start = now_mono() + (start_wall - now_wall());
    warm_at = start + warm;
    stop_at = warm_at + seconds;
    while (now_mono() < start) { struct timespec t = {0, 200000}; nanosleep(&t, NULL); }

    int ep = epoll_create1(0);
    for (long i = 0; i < connected; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    double now = now_mono();
    long open = connected;
    for (long i = 0; i < connected; i++) send_more(&cs[i], depth, now);

    static char buf[1 << 18];
    struct epoll_event events[256];
    double give_up = stop_at + GRACE_S;
    while (open > 0) {
        now = now_mono();
        if (now > give_up) break;
        int n = epoll_wait(ep, events, 256, 100);
        now = now_mono();
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c->open) continue;
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) {
                if (c->tail != c->head || (limit > 0 ? c->requests < limit : now < stop_at)) lost++;
                c->open = 0;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                open--;
                continue;
            }
            long got = replies(c, buf, (size_t)r, now);
            if (got) send_more(c, got, now);
            if (c->head == c->tail) { /* nothing in flight and nothing more to send: done */
                c->open = 0;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                open--;
            }
        }
    }
    long unanswered = 0, requests = 0;
    for (long i = 0; i < connected; i++) {
        unanswered += cs[i].tail - cs[i].head;
        requests += cs[i].requests;
        close(cs[i].fd);
    }
    FILE *out = fopen(argv[9], "wb");
    if (!out || fwrite(lat, sizeof *lat, lat_len, out) != lat_len) { perror(argv[9]); return 1; }
    fclose(out);
    printf("done %ld %ld %ld %ld %ld\n", count, bad, lost, unanswered, requests);
    return 0;
}
