/*
 * edge_runtime serial protocol v1: reference sender (and command receiver) in portable C99.
 *
 * Spec: firmware_notes/serial_protocol.md (this file follows it byte for byte;
 * tests/test_reference_sender.py compiles it and checks the test vectors V1..V4,
 * and the command vectors C1..C7 -> R1..R7).
 * Copy this file (minus the self-test at the end) into an MCU project.
 *
 *   - no malloc, no struct casts, no unaligned access: every multi-byte field is
 *     packed byte by byte, little-endian, so it works on big- and little-endian MCUs;
 *   - CRC-32 (IEEE 802.3 / zlib): table-free, bit by bit (no 1 KiB table in flash;
 *     about 8 shift/xor steps per byte; see edge_crc32_update for the table variant);
 *   - COBS encoder writing into one caller-provided buffer;
 *   - edge_send_frame(): header + payload + CRC-32 -> COBS -> 0x00, handed to the
 *     user's write_bytes(const uint8_t *, size_t) hook in a single call
 *     (convenient for a blocking UART write or a DMA transfer).
 *
 * Buffer sizes for a maximum payload of P bytes (P <= 65536):
 *   frame (header + payload + CRC)  EDGE_FRAME_SIZE(P) = 24 + P + 4
 *   wire (COBS + 0x00)              EDGE_WIRE_SIZE(P)  = F + F / 254 + 1 + 1,  F = EDGE_FRAME_SIZE(P)
 * e.g. a 6-axis int16 IMU, 50 samples per frame: P = 600, F = 628, wire buffer 632 bytes;
 *      P = 65536 (the protocol maximum): wire buffer 65,824 bytes.
 * The payload itself lives in the caller's buffer (P bytes), already little-endian:
 * fill it with the edge_put_* helpers.
 *
 * Commands from the host (spec: "Commands and replies"): an edge_device holds the
 * streams' state (running, interval_us, next seq) and a receive buffer of 32 bytes;
 * feed it every byte the UART receives with edge_device_rx_byte() and it decodes
 * each command frame (COBS, CRC-32), executes START / STOP / SET_RATE / PING,
 * answers through write_bytes (a 38-byte reply), remembers the last command so a
 * retry gets the same reply without a second execution, and counts (and does not
 * answer) frames it cannot trust. Your sending loop reads the state:
 *   if (dev.streams[i].running) { h.seq = dev.streams[i].seq++; h.interval_us =
 *       dev.streams[i].interval_us; ... edge_send_frame(...); }
 * Call edge_device_rx_byte() from the main loop (drain the RX ring buffer that the
 * UART interrupt fills) between two frames, not from the interrupt: the reply is
 * written at once and must not land inside a data frame being sent. Memory: about
 * 130 bytes per device plus 12 per stream; no malloc.
 */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- protocol constants ------------------------------------------------ */

#define EDGE_VERSION 1u
#define EDGE_HEADER_SIZE 24u
#define EDGE_CRC_SIZE 4u
#define EDGE_MAX_PAYLOAD 65536u
#define EDGE_FLAG_START 0x0001u /* first frame after the sender (re)started */

/* Commands and replies: the first byte tells them from data frames (version 1). */
#define EDGE_FRAME_COMMAND 0x81u
#define EDGE_FRAME_REPLY 0x82u
#define EDGE_COMMAND_SIZE 16u /* body, without the CRC */
#define EDGE_REPLY_SIZE 32u
#define EDGE_RX_CAP 32u /* received bytes kept while waiting for a 0x00 (a command needs 21) */
#define EDGE_REPLY_WIRE_SIZE (EDGE_REPLY_SIZE + EDGE_CRC_SIZE + 2u) /* COBS + 0x00: 38 */
/* SET_RATE intervals this firmware accepts (device-specific; the protocol allows 1..0xFFFFFFFF). */
#define EDGE_MIN_INTERVAL_US 10u
#define EDGE_MAX_INTERVAL_US 60000000u

#define EDGE_FRAME_SIZE(p) (EDGE_HEADER_SIZE + (size_t)(p) + EDGE_CRC_SIZE)
/* COBS adds at most 1 byte per 254, plus 1; then the 0x00 delimiter. */
#define EDGE_WIRE_SIZE(p) (EDGE_FRAME_SIZE(p) + EDGE_FRAME_SIZE(p) / 254u + 1u + 1u)

enum edge_dtype {
    EDGE_INT8 = 0,
    EDGE_UINT8 = 1,
    EDGE_INT16 = 2,
    EDGE_UINT16 = 3,
    EDGE_INT32 = 4,
    EDGE_FLOAT32 = 5
};

/* The header fields (spec: "Header (24 bytes)"). */
typedef struct {
    uint8_t stream_id;
    uint8_t dtype;     /* enum edge_dtype */
    uint8_t channels;  /* 1..255 */
    uint16_t samples;  /* samples per channel in this frame; 0 = heartbeat */
    uint16_t flags;    /* EDGE_FLAG_START on the first frame after boot, else 0 */
    uint32_t seq;      /* +1 per frame and stream, wraps */
    uint32_t interval_us;
    uint64_t timestamp_us; /* sensor clock of the first sample */
} edge_header;

/* The user's output hook: write len bytes to the UART (blocking or queued). */
typedef void (*edge_write_bytes_fn)(const uint8_t *data, size_t len);

/* The user's board clock, microseconds: the clock of the frames' timestamp_us. */
typedef uint64_t (*edge_clock_us_fn)(void);

enum edge_opcode { EDGE_OP_START = 1, EDGE_OP_STOP = 2, EDGE_OP_SET_RATE = 3, EDGE_OP_PING = 4 };
enum edge_status { EDGE_ACK = 0, EDGE_NACK = 1 };
enum edge_reason {
    EDGE_REASON_NONE = 0,
    EDGE_REASON_UNKNOWN_OPCODE = 1,
    EDGE_REASON_BAD_ARGUMENT = 2,
    EDGE_REASON_UNKNOWN_STREAM = 3
};

/* One stream's state, changed by commands, read by your sending loop. */
typedef struct {
    uint8_t stream_id;
    uint8_t running;      /* 1: send frames; STOP clears it, START sets it */
    uint32_t interval_us; /* SET_RATE sets it; put it in every frame */
    uint32_t seq;         /* the next frame's seq: kept across STOP/START */
} edge_stream;

typedef struct {
    edge_stream *streams; /* the caller's array */
    size_t n_streams;
    edge_clock_us_fn clock_us;
    edge_write_bytes_fn write_bytes;
    /* receiving: the encoded bytes of the frame being received */
    uint8_t rx[EDGE_RX_CAP];
    size_t rx_len;
    uint8_t rx_overflow; /* dropping a too-long run up to its 0x00 */
    /* the last command (its body) and the reply it got, for retries */
    uint8_t last_cmd[EDGE_COMMAND_SIZE];
    uint8_t last_reply[EDGE_REPLY_SIZE];
    uint8_t have_last;
    /* counters */
    uint32_t commands;   /* good command frames (retries included) */
    uint32_t executed;   /* new commands carried out (ACK) */
    uint32_t duplicates; /* retries answered from memory */
    uint32_t nacks;      /* new commands refused */
    uint32_t rx_errors;  /* frames dropped unanswered: bad COBS, CRC, not a command, too long */
} edge_device;

/* Public functions (move these prototypes to a header if you split the file). */
void edge_put_u16(uint8_t *p, uint16_t v);
void edge_put_u32(uint8_t *p, uint32_t v);
void edge_put_u64(uint8_t *p, uint64_t v);
void edge_put_i16(uint8_t *p, int16_t v);
void edge_put_i32(uint8_t *p, int32_t v);
void edge_put_f32(uint8_t *p, float v);
uint32_t edge_crc32_update(uint32_t crc, const uint8_t *data, size_t len);
size_t edge_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);
size_t edge_send_frame(const edge_header *h, const uint8_t *payload, size_t payload_len, uint8_t *wire,
                       size_t wire_cap, edge_write_bytes_fn write_bytes);
uint16_t edge_get_u16(const uint8_t *p);
uint32_t edge_get_u32(const uint8_t *p);
uint64_t edge_get_u64(const uint8_t *p);
int edge_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap, size_t *out_len);
void edge_device_init(edge_device *d, edge_stream *streams, size_t n_streams, edge_clock_us_fn clock_us,
                      edge_write_bytes_fn write_bytes);
void edge_device_rx_byte(edge_device *d, uint8_t byte);

/* ---- little-endian packing (byte by byte: endian- and alignment-safe) --- */

void edge_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
}

void edge_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)((v >> 24) & 0xFFu);
}

void edge_put_u64(uint8_t *p, uint64_t v)
{
    edge_put_u32(p, (uint32_t)(v & 0xFFFFFFFFu));
    edge_put_u32(p + 4, (uint32_t)(v >> 32));
}

uint16_t edge_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

uint32_t edge_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

uint64_t edge_get_u64(const uint8_t *p) { return (uint64_t)edge_get_u32(p) | ((uint64_t)edge_get_u32(p + 4) << 32); }

/* Signed values: convert to the unsigned type (two's complement bits, defined in C). */
void edge_put_i16(uint8_t *p, int16_t v) { edge_put_u16(p, (uint16_t)v); }
void edge_put_i32(uint8_t *p, int32_t v) { edge_put_u32(p, (uint32_t)v); }

/* float32: assumes IEEE 754 binary32 floats (true of every common MCU and FPU);
 * memcpy reads the bits without aliasing problems, then they are packed LE. */
void edge_put_f32(uint8_t *p, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    edge_put_u32(p, bits);
}

/* ---- CRC-32 (zlib): reflected poly 0xEDB88320, init and final XOR 0xFFFFFFFF ---- */

/* Start with crc = 0, feed pieces in order, use the result as is:
 *   crc = edge_crc32_update(0, a, na); crc = edge_crc32_update(crc, b, nb);   == zlib.crc32(a + b)
 * Table-free. For speed, replace the inner loop with the usual 256-entry table
 * (1 KiB): crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8). */
uint32_t edge_crc32_update(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    int k;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

/* ---- COBS encoder into a caller-provided buffer --------------------------- */

/* Incremental, so header, payload and CRC are encoded from where they lie,
 * without first copying them into one contiguous frame. A run of 254 non-zero
 * bytes becomes a 0xFF block; when such a block ends the data no closing code
 * follows (the same bytes as edge_runtime's encoder). */
typedef struct {
    uint8_t *dst;
    size_t cap;
    size_t out;      /* bytes written so far (including reserved code bytes) */
    size_t code_pos; /* where the current block's code byte goes */
    uint8_t code;    /* 1 + bytes in the current block */
    int open;        /* a code byte is reserved */
    int overflow;    /* dst was too small */
} cobs_encoder;

static void cobs_reserve(cobs_encoder *e)
{
    if (e->out >= e->cap) {
        e->overflow = 1;
        return;
    }
    e->code_pos = e->out++;
    e->code = 1;
    e->open = 1;
}

static void cobs_begin(cobs_encoder *e, uint8_t *dst, size_t cap)
{
    e->dst = dst;
    e->cap = cap;
    e->out = 0;
    e->overflow = 0;
    e->open = 0;
    cobs_reserve(e);
}

static void cobs_put(cobs_encoder *e, const uint8_t *src, size_t len)
{
    size_t i;
    for (i = 0; i < len && !e->overflow; i++) {
        if (!e->open) {
            cobs_reserve(e);
            if (e->overflow) {
                break;
            }
        }
        if (src[i] == 0) {
            e->dst[e->code_pos] = e->code;
            cobs_reserve(e);
        } else {
            if (e->out >= e->cap) {
                e->overflow = 1;
                break;
            }
            e->dst[e->out++] = src[i];
            e->code++;
            if (e->code == 0xFF) { /* 254 data bytes: close the block */
                e->dst[e->code_pos] = 0xFF;
                e->open = 0;
            }
        }
    }
}

/* Returns the encoded length (no 0x00 in it), or 0 if dst was too small. */
static size_t cobs_end(cobs_encoder *e)
{
    if (e->overflow) {
        return 0;
    }
    if (e->open) {
        e->dst[e->code_pos] = e->code;
    }
    return e->out;
}

/* One-shot form: COBS(src[0..len)) into dst; returns its length, or 0 if cap is
 * too small (cap >= len + len / 254 + 1 is always enough). */
size_t edge_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap)
{
    cobs_encoder e;
    cobs_begin(&e, dst, cap);
    cobs_put(&e, src, len);
    return cobs_end(&e);
}

/* ---- the frame ----------------------------------------------------------- */

static size_t edge_dtype_size(uint8_t dtype)
{
    switch (dtype) {
    case EDGE_INT8:
    case EDGE_UINT8:
        return 1;
    case EDGE_INT16:
    case EDGE_UINT16:
        return 2;
    case EDGE_INT32:
    case EDGE_FLOAT32:
        return 4;
    default:
        return 0;
    }
}

/* Build header + payload + CRC-32, COBS-encode it into wire[0..wire_cap) and
 * pass the encoded frame plus its 0x00 to write_bytes in one call.
 *
 * payload: samples * channels values, sample-major, little-endian (edge_put_*),
 *          exactly samples * channels * size(dtype) bytes (NULL if 0).
 * wire:    scratch buffer of at least EDGE_WIRE_SIZE(payload_len) bytes.
 * Returns the number of bytes written, or 0 (nothing written) if the header
 * and payload disagree, the payload exceeds 65536 bytes, or wire is too small. */
size_t edge_send_frame(const edge_header *h, const uint8_t *payload, size_t payload_len, uint8_t *wire,
                       size_t wire_cap, edge_write_bytes_fn write_bytes)
{
    uint8_t head[EDGE_HEADER_SIZE];
    uint8_t crc_le[EDGE_CRC_SIZE];
    uint32_t crc;
    cobs_encoder e;
    size_t n;
    size_t item = edge_dtype_size(h->dtype);

    /* 32-bit arithmetic: samples * channels * size fits, also where int and size_t are 16-bit */
    if (item == 0 || h->channels == 0 || payload_len > EDGE_MAX_PAYLOAD ||
        (uint32_t)payload_len != (uint32_t)h->samples * h->channels * (uint32_t)item ||
        (payload_len > 0 && payload == NULL)) {
        return 0;
    }
    head[0] = (uint8_t)EDGE_VERSION;
    head[1] = h->stream_id;
    head[2] = h->dtype;
    head[3] = h->channels;
    edge_put_u16(head + 4, h->samples);
    edge_put_u16(head + 6, h->flags);
    edge_put_u32(head + 8, h->seq);
    edge_put_u32(head + 12, h->interval_us);
    edge_put_u64(head + 16, h->timestamp_us);

    crc = edge_crc32_update(0, head, sizeof head);
    crc = edge_crc32_update(crc, payload, payload_len);
    edge_put_u32(crc_le, crc);

    cobs_begin(&e, wire, wire_cap);
    cobs_put(&e, head, sizeof head);
    cobs_put(&e, payload, payload_len);
    cobs_put(&e, crc_le, sizeof crc_le);
    n = cobs_end(&e);
    if (n == 0 || n >= wire_cap) { /* no room for the 0x00 */
        return 0;
    }
    wire[n++] = 0x00;
    write_bytes(wire, n);
    return n;
}

/* ---- COBS decoder ---------------------------------------------------------- */

/* Decode COBS src[0..len) (no 0x00 in it) into dst[0..cap). Returns 1 and the
 * decoded length in *out_len, or 0 if invalid: a 0x00 code, a block running past
 * len (the chain of codes must land exactly on len), or output longer than cap.
 * A 0xFF block adds no 0x00 after it; a block that ends the input neither. */
int edge_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap, size_t *out_len)
{
    size_t i = 0;
    size_t o = 0;
    while (i < len) {
        uint8_t code = src[i];
        size_t k;
        if (code == 0 || (size_t)code > len - i) {
            return 0;
        }
        if ((size_t)(code - 1u) > cap - o) {
            return 0;
        }
        for (k = 1; k < code; k++) {
            dst[o++] = src[i + k];
        }
        i += code;
        if (i < len && code != 0xFFu) {
            if (o >= cap) {
                return 0;
            }
            dst[o++] = 0;
        }
    }
    *out_len = o;
    return 1;
}

/* ---- the device: commands in, replies out ----------------------------------- */

void edge_device_init(edge_device *d, edge_stream *streams, size_t n_streams, edge_clock_us_fn clock_us,
                      edge_write_bytes_fn write_bytes)
{
    memset(d, 0, sizeof *d);
    d->streams = streams;
    d->n_streams = n_streams;
    d->clock_us = clock_us;
    d->write_bytes = write_bytes;
}

static edge_stream *edge_find_stream(edge_device *d, uint8_t stream_id)
{
    size_t i;
    for (i = 0; i < d->n_streams; i++) {
        if (d->streams[i].stream_id == stream_id) {
            return &d->streams[i];
        }
    }
    return NULL;
}

/* CRC-32, COBS and the 0x00 around a reply body; one write_bytes call. */
static void edge_send_reply(edge_device *d, const uint8_t *body)
{
    uint8_t wire[EDGE_REPLY_WIRE_SIZE];
    uint8_t crc_le[EDGE_CRC_SIZE];
    cobs_encoder e;
    size_t n;
    edge_put_u32(crc_le, edge_crc32_update(0, body, EDGE_REPLY_SIZE));
    cobs_begin(&e, wire, sizeof wire);
    cobs_put(&e, body, EDGE_REPLY_SIZE);
    cobs_put(&e, crc_le, sizeof crc_le);
    n = cobs_end(&e);
    if (n == 0 || n >= sizeof wire) {
        return; /* cannot happen: 38 bytes always suffice */
    }
    wire[n++] = 0x00;
    d->write_bytes(wire, n);
}

/* Execute the command in cmd (16 bytes, CRC checked) received at board time t1_us;
 * fill reply (32 bytes). Returns 1 for an ACK, 0 for a NACK. */
static int edge_execute(edge_device *d, const uint8_t *cmd, uint64_t t1_us, uint8_t *reply)
{
    uint8_t opcode = cmd[1];
    uint8_t stream_id = cmd[4];
    uint64_t arg = edge_get_u64(cmd + 8);
    uint8_t reason = EDGE_REASON_NONE;
    edge_stream *s = NULL;

    memset(reply, 0, EDGE_REPLY_SIZE);
    reply[0] = (uint8_t)EDGE_FRAME_REPLY;
    reply[1] = opcode;
    reply[2] = cmd[2]; /* token, echoed */
    reply[3] = cmd[3];
    reply[4] = stream_id;
    edge_put_u64(reply + 8, arg); /* arg, echoed */

    if (opcode < EDGE_OP_START || opcode > EDGE_OP_PING) {
        reason = EDGE_REASON_UNKNOWN_OPCODE;
    } else if (opcode != EDGE_OP_PING && (s = edge_find_stream(d, stream_id)) == NULL) {
        reason = EDGE_REASON_UNKNOWN_STREAM;
    } else if (opcode == EDGE_OP_SET_RATE && (arg < EDGE_MIN_INTERVAL_US || arg > EDGE_MAX_INTERVAL_US)) {
        reason = EDGE_REASON_BAD_ARGUMENT;
    }
    if (reason != EDGE_REASON_NONE) {
        reply[5] = (uint8_t)EDGE_NACK;
        reply[6] = reason;
        return 0;
    }
    switch (opcode) {
    case EDGE_OP_START:
        s->running = 1; /* the next frame carries s->seq: no gap, no restart */
        break;
    case EDGE_OP_STOP:
        s->running = 0;
        break;
    case EDGE_OP_SET_RATE:
        s->interval_us = (uint32_t)arg;
        break;
    default: /* EDGE_OP_PING: t2 as late as possible, just before the reply is sent */
        edge_put_u64(reply + 16, t1_us);
        edge_put_u64(reply + 24, d->clock_us());
        break;
    }
    return 1;
}

/* A whole frame (its encoded bytes in d->rx) arrived at board time t1_us. */
static void edge_device_frame(edge_device *d, uint64_t t1_us)
{
    uint8_t frame[EDGE_COMMAND_SIZE + EDGE_CRC_SIZE];
    size_t n = 0;
    int same;

    if (!edge_cobs_decode(d->rx, d->rx_len, frame, sizeof frame, &n) || n != sizeof frame ||
        frame[0] != EDGE_FRAME_COMMAND ||
        edge_crc32_update(0, frame, EDGE_COMMAND_SIZE) != edge_get_u32(frame + EDGE_COMMAND_SIZE)) {
        d->rx_errors++; /* no token we can trust: nothing to answer */
        return;
    }
    d->commands++;
    /* A retry: the same opcode, token, stream_id and arg as the last command (bytes 1..4, 8..15). */
    same = d->have_last && memcmp(frame + 1, d->last_cmd + 1, 4) == 0 && memcmp(frame + 8, d->last_cmd + 8, 8) == 0;
    if (same) {
        d->duplicates++;
    } else {
        if (edge_execute(d, frame, t1_us, d->last_reply)) {
            d->executed++;
        } else {
            d->nacks++;
        }
        memcpy(d->last_cmd, frame, EDGE_COMMAND_SIZE);
        d->have_last = 1;
    }
    edge_send_reply(d, d->last_reply);
}

/* Feed one received byte. A 0x00 ends a frame: it is decoded, executed and answered
 * before this returns. Keeps at most EDGE_RX_CAP bytes: a longer run is dropped up
 * to its 0x00 and counted. */
void edge_device_rx_byte(edge_device *d, uint8_t byte)
{
    if (byte != 0x00) {
        if (d->rx_overflow) {
            return;
        }
        if (d->rx_len >= EDGE_RX_CAP) {
            d->rx_overflow = 1;
            d->rx_len = 0;
            d->rx_errors++;
            return;
        }
        d->rx[d->rx_len++] = byte;
        return;
    }
    if (d->rx_overflow) {
        d->rx_overflow = 0;
        return;
    }
    if (d->rx_len > 0) {
        uint64_t t1 = d->clock_us(); /* receipt: better stamped in the RX interrupt, at the 0x00 */
        edge_device_frame(d, t1);
        d->rx_len = 0;
    }
}

/* ---- self-test: the spec's test vectors V1..V4, raw bytes on stdout ------ */
/* cc -std=c99 -Wall -Wextra -Werror -DEDGE_RUNTIME_SENDER_SELFTEST reference_sender.c -o sender
 * ./sender | xxd    (compare with "Test vectors" in serial_protocol.md)
 *
 * ./sender device < commands.bin | xxd
 *   a device with one stream (0, running, interval 10000 us, seq 0) fed stdin byte
 *   by byte: the replies on stdout; at the end of the input, one heartbeat frame
 *   (uint8, 1 channel, 0 samples) per running stream, carrying its seq, interval_us
 *   and flag bit 0 if seq is 0; then one line of state and counters on stderr. Its
 *   test clock reads 2,000,000,000 us at each frame's 0x00 and 250 us more at every
 *   further reading within that frame (the spec's R4). */
#ifdef EDGE_RUNTIME_SENDER_SELFTEST
#include <stdio.h>

static int write_failed = 0;

static void write_stdout(const uint8_t *data, size_t len)
{
    if (fwrite(data, 1, len, stdout) != len) {
        write_failed = 1;
    }
}

#define SELFTEST_T1_US UINT64_C(2000000000)

static uint64_t fake_now_us = SELFTEST_T1_US;

static uint64_t fake_clock_us(void)
{
    uint64_t t = fake_now_us;
    fake_now_us += 250u;
    return t;
}

static int device_mode(void)
{
    static uint8_t wire[EDGE_WIRE_SIZE(0)];
    edge_stream streams[1];
    edge_device dev;
    edge_header h;
    size_t i;
    int c;
    int ok = 1;

    streams[0].stream_id = 0;
    streams[0].running = 1;
    streams[0].interval_us = 10000u;
    streams[0].seq = 0;
    edge_device_init(&dev, streams, 1, fake_clock_us, write_stdout);
    while ((c = getchar()) != EOF) {
        if (dev.rx_len == 0) {
            fake_now_us = SELFTEST_T1_US; /* a new frame: the clock reads T1 at its 0x00 */
        }
        edge_device_rx_byte(&dev, (uint8_t)c);
    }
    for (i = 0; i < dev.n_streams; i++) {
        edge_stream *s = &dev.streams[i];
        if (!s->running) {
            continue;
        }
        memset(&h, 0, sizeof h);
        h.stream_id = s->stream_id;
        h.dtype = EDGE_UINT8;
        h.channels = 1;
        h.flags = s->seq == 0 ? EDGE_FLAG_START : 0u;
        h.seq = s->seq++;
        h.interval_us = s->interval_us;
        fake_now_us = SELFTEST_T1_US;
        h.timestamp_us = fake_clock_us();
        ok = ok && edge_send_frame(&h, NULL, 0, wire, sizeof wire, write_stdout) != 0;
    }
    fprintf(stderr, "running=%u interval_us=%lu seq=%lu commands=%lu executed=%lu duplicates=%lu nacks=%lu rx_errors=%lu\n",
            (unsigned)streams[0].running, (unsigned long)streams[0].interval_us, (unsigned long)streams[0].seq,
            (unsigned long)dev.commands, (unsigned long)dev.executed, (unsigned long)dev.duplicates,
            (unsigned long)dev.nacks, (unsigned long)dev.rx_errors);
    if (fflush(stdout) != 0) {
        write_failed = 1;
    }
    if (!ok || write_failed) {
        fputs("reference_sender: device self-test failed\n", stderr);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static uint8_t payload[300];       /* V4: 100 samples x 3 channels of int8 zeros */
    static uint8_t wire[EDGE_WIRE_SIZE(300)];
    edge_header h;
    int ok = 1;

    if (argc > 1 && strcmp(argv[1], "device") == 0) {
        return device_mode();
    }

    /* V1: stream 0, seq 0, int16, 1 channel, [1, -1], interval 10000, timestamp 0, flags 1 */
    memset(&h, 0, sizeof h);
    h.dtype = EDGE_INT16;
    h.channels = 1;
    h.samples = 2;
    h.flags = EDGE_FLAG_START;
    h.interval_us = 10000u;
    edge_put_i16(payload, 1);
    edge_put_i16(payload + 2, -1);
    ok = ok && edge_send_frame(&h, payload, 4, wire, sizeof wire, write_stdout) != 0;

    /* V2: stream 3, seq 0x01020304, float32, 2 channels, [1.0, -2.5], 1000 us, t = 1.7e15 us */
    memset(&h, 0, sizeof h);
    h.stream_id = 3;
    h.dtype = EDGE_FLOAT32;
    h.channels = 2;
    h.samples = 1;
    h.seq = 0x01020304u;
    h.interval_us = 1000u;
    h.timestamp_us = UINT64_C(1700000000000000);
    edge_put_f32(payload, 1.0f);
    edge_put_f32(payload + 4, -2.5f);
    ok = ok && edge_send_frame(&h, payload, 8, wire, sizeof wire, write_stdout) != 0;

    /* V3: heartbeat: stream 1, seq 7, uint8, 1 channel, 0 samples, interval 0, t = 42 */
    memset(&h, 0, sizeof h);
    h.stream_id = 1;
    h.dtype = EDGE_UINT8;
    h.channels = 1;
    h.seq = 7u;
    h.timestamp_us = 42u;
    ok = ok && edge_send_frame(&h, NULL, 0, wire, sizeof wire, write_stdout) != 0;

    /* V4: int8, 3 channels, 100 samples of 0, stream 0, seq 1, interval 5000, t = 5,000,000 */
    memset(&h, 0, sizeof h);
    memset(payload, 0, sizeof payload);
    h.dtype = EDGE_INT8;
    h.channels = 3;
    h.samples = 100;
    h.seq = 1u;
    h.interval_us = 5000u;
    h.timestamp_us = UINT64_C(5000000);
    ok = ok && edge_send_frame(&h, payload, sizeof payload, wire, sizeof wire, write_stdout) != 0;

    if (fflush(stdout) != 0) {
        write_failed = 1;
    }
    if (!ok || write_failed) {
        fputs("reference_sender: self-test failed\n", stderr);
        return 1;
    }
    return 0;
}
#endif /* EDGE_RUNTIME_SENDER_SELFTEST */
