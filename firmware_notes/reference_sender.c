/*
 * edge_runtime serial protocol v1: reference sender in portable C99.
 *
 * Spec: firmware_notes/serial_protocol.md (this file follows it byte for byte;
 * tests/test_reference_sender.py compiles it and checks the test vectors V1..V4).
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

/* ---- self-test: the spec's test vectors V1..V4, raw bytes on stdout ------ */
/* cc -std=c99 -Wall -Wextra -Werror -DEDGE_RUNTIME_SENDER_SELFTEST reference_sender.c -o sender
 * ./sender | xxd    (compare with "Test vectors" in serial_protocol.md) */
#ifdef EDGE_RUNTIME_SENDER_SELFTEST
#include <stdio.h>

static int write_failed = 0;

static void write_stdout(const uint8_t *data, size_t len)
{
    if (fwrite(data, 1, len, stdout) != len) {
        write_failed = 1;
    }
}

int main(void)
{
    static uint8_t payload[300];       /* V4: 100 samples x 3 channels of int8 zeros */
    static uint8_t wire[EDGE_WIRE_SIZE(300)];
    edge_header h;
    int ok = 1;

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
