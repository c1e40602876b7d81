/*
 * floor: the cheapest layer-7 multiplexing forwarder this benchmark can measure.
 *
 * Why: at 16 connections x 1 in flight the proxy's CPU per request is mostly kernel time (the
 * loopback TCP stack runs the receiver's input path inside the sender's write), so "how much
 * of a proxy's cost is the proxy" needs a target that makes the same system calls as metamesh
 * and does nothing else. This is that target: no routing, stats, timeouts or error handling.
 *
 * How: one thread, one epoll set, level-triggered. Each loop turn reads every readable socket
 * once (256 KB buffer, as uvloop/libuv read), cuts complete frames (Dubbo: 16-byte header with
 * the body length at offset 12; Thrift: framed transport, strict binary), forwards requests to
 * ONE shared upstream connection with the request id rewritten to a fresh one (Dubbo: the i64
 * at offset 4; Thrift: the seqid after the method name), and maps each reply back to its caller
 * and original id. After all events of the turn are handled it writes every socket that has
 * output once: the same syscall pattern as metamesh's per-turn flush (one read per readable
 * socket, one write per dirty socket, one epoll_wait per turn).
 *
 * Build: cc -O2 -o floor floor.c     Run: floor dubbo|thrift LISTEN_PORT UPSTREAM_PORT
 * Listens and connects on 127.0.0.1 only. Exits on a malformed frame (benchmark input only).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 256000
#define MAX_FDS 4096
#define SLOTS (1u << 20) /* in-flight upstream ids (ring, indexed by id) */

typedef struct {
    uint8_t *data;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd;
    int dirty;
    int want_out; /* EPOLLOUT armed: the last write was short */
    buf_t in, out;
} conn_t;

typedef struct {
    int fd;     /* caller's fd, -1 when free */
    int64_t id; /* caller's own request id */
} slot_t;

static conn_t *conns[MAX_FDS];
static conn_t *dirty[MAX_FDS];
static int ndirty;
static slot_t *slots;
static uint64_t next_id = 1;
static conn_t *upstream;
static int thrift;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void buf_append(buf_t *b, const uint8_t *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) die("realloc");
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void mark(conn_t *c) {
    if (!c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = c;
    }
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static int64_t get64(const uint8_t *p) {
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

static void put64(uint8_t *p, uint64_t v) {
    put32(p, v >> 32);
    put32(p + 4, (uint32_t)v);
}

/* Size of the complete frame at p (0 if incomplete) and the offset of its id. */
static size_t frame_at(const uint8_t *p, size_t avail, size_t *id_off) {
    if (thrift) {
        if (avail < 12) return 0;
        size_t size = 4 + (size_t)be32(p);
        if ((be32(p + 4) & 0xFFFF0000u) != 0x80010000u) {
            fprintf(stderr, "floor: not a strict-binary thrift frame\n");
            exit(1);
        }
        *id_off = 12 + (size_t)be32(p + 8);
        return avail >= size ? size : 0;
    }
    if (avail < 16) return 0;
    if (p[0] != 0xda || p[1] != 0xbb) {
        fprintf(stderr, "floor: bad dubbo magic\n");
        exit(1);
    }
    *id_off = 4;
    size_t size = 16 + (size_t)be32(p + 12);
    return avail >= size ? size : 0;
}

static void on_frames(conn_t *c) {
    size_t pos = 0, id_off = 0, size;
    int from_upstream = c == upstream;
    while ((size = frame_at(c->in.data + pos, c->in.len - pos, &id_off)) != 0) {
        uint8_t *f = c->in.data + pos;
        if (!from_upstream) {
            uint64_t id = next_id++;
            if (thrift) id &= 0x7FFFFFFF;
            slot_t *s = &slots[id & (SLOTS - 1)];
            s->fd = c->fd;
            s->id = thrift ? (int64_t)be32(f + id_off) : get64(f + id_off);
            if (thrift)
                put32(f + id_off, (uint32_t)id);
            else
                put64(f + id_off, id);
            buf_append(&upstream->out, f, size);
            mark(upstream);
        } else {
            uint64_t id = thrift ? be32(f + id_off) : (uint64_t)get64(f + id_off);
            slot_t *s = &slots[id & (SLOTS - 1)];
            conn_t *caller = s->fd >= 0 ? conns[s->fd] : NULL;
            if (caller) {
                if (thrift)
                    put32(f + id_off, (uint32_t)s->id);
                else
                    put64(f + id_off, (uint64_t)s->id);
                buf_append(&caller->out, f, size);
                mark(caller);
            }
            s->fd = -1;
        }
        pos += size;
    }
    if (pos) {
        memmove(c->in.data, c->in.data + pos, c->in.len - pos);
        c->in.len -= pos;
    }
}

static conn_t *add_conn(int ep, int fd) {
    int one = 1;
    if (fd >= MAX_FDS) die("too many fds");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_t *c = calloc(1, sizeof *c);
    c->fd = fd;
    conns[fd] = c;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return c;
}

static void close_conn(int ep, conn_t *c) {
    if (c == upstream) {
        fprintf(stderr, "floor: upstream closed\n");
        exit(1);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    conns[c->fd] = NULL;
    close(c->fd);
    c->fd = -1; /* a pending flush skips it; freed below once it is not listed */
    if (!c->dirty) {
        free(c->in.data);
        free(c->out.data);
        free(c);
    }
}

static void watch_out(int ep, conn_t *c, int on) {
    if (c->want_out == on) return;
    c->want_out = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.fd = c->fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void flush(int ep) {
    for (int i = 0; i < ndirty; i++) {
        conn_t *c = dirty[i];
        c->dirty = 0;
        if (c->fd < 0) { /* closed during this turn */
            free(c->in.data);
            free(c->out.data);
            free(c);
            continue;
        }
        if (c->want_out) continue; /* the socket is full: EPOLLOUT resumes the writes */
        ssize_t n = write(c->fd, c->out.data, c->out.len);
        if (n < 0) {
            if (errno != EAGAIN) {
                close_conn(ep, c);
                continue;
            }
            n = 0;
        }
        memmove(c->out.data, c->out.data + n, c->out.len - (size_t)n);
        c->out.len -= (size_t)n;
        if (c->out.len) watch_out(ep, c, 1);
    }
    ndirty = 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: floor dubbo|thrift LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    thrift = strcmp(argv[1], "thrift") == 0;
    signal(SIGPIPE, SIG_IGN);
    slots = malloc(sizeof(slot_t) * SLOTS);
    for (uint32_t i = 0; i < SLOTS; i++) slots[i].fd = -1;

    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ep = epoll_create1(0);

    int ufd = socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_port = htons((uint16_t)atoi(argv[3]));
    if (connect(ufd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect upstream");
    upstream = add_conn(ep, ufd);

    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 1024) < 0) die("listen");
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);

    static uint8_t rbuf[READ_SIZE];
    struct epoll_event events[1024];
    for (;;) {
        int n = epoll_wait(ep, events, 1024, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int cfd = accept(lfd, NULL, NULL);
                if (cfd >= 0) add_conn(ep, cfd);
                continue;
            }
            conn_t *c = conns[fd];
            if (!c) continue;
            if (events[i].events & EPOLLOUT) { /* room again: write the rest this turn */
                watch_out(ep, c, 0);
                mark(c);
                if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            }
            ssize_t got = read(fd, rbuf, READ_SIZE);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                close_conn(ep, c);
                continue;
            }
            buf_append(&c->in, rbuf, (size_t)got);
            on_frames(c);
        }
        flush(ep);
    }
}
