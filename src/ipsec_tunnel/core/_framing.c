/* Per-packet framing of ipsec-tunnel's core in C: byte shuffling and Internet checksums only, no
 * cryptography (that stays in the `cryptography` package, called from here where a loop runs here).
 *
 * tcp_rows:     a TCP super-packet (TSO) cut into segment rows, each followed by ESP's trailer, with
 *               every header field and checksum made whole (as core/tso.py, core/gso.py split_tcp).
 * coalesce_run: a batch of IPv4 TCP segments of one connection joined into GRO super-packets
 *               (as core/gro.py _coalesce_run), or None where the general path must decide.
 * esp_in_ipv4_batch: a recvmmsg batch of raw IPv4 datagrams parsed (as linux/raw.py _esp_in_ipv4).
 * ipv4_gather:  a sendmmsg batch's outer IPv4 headers and iovecs, the ESP not copied (as linux/raw.py _gather).
 * whole_inner:  a decrypted ESP payload's inner IP packet when its trailer is exactly what it must be.
 * in_order:     whether a batch of ESP packets carries consecutive sequence numbers (as core/sa.py _in_order).
 * one_spi:      the SPI a batch of ESP datagrams shares, if it shares one (as core/receive.py _one_sa).
 * all_tcp:      whether a list of inner packets holds TCP alone (as daemon/dataplane.py _deliver_ahead).
 * small_ones:   a recvmmsg batch's ESP bytes and its small datagrams (as daemon/readahead.py _take_raw).
 * one_run:      the ESP of a batch of datagrams with one outer header (as daemon/dataplane.py _receive_runs).
 * gso_runs:     the runs of datagrams one UDP GSO send carries each (as linux/udp.py _gso_groups).
 * seal_rows_aead, open_aead16_many, seal_rows_cbc, open_cbc_many: the loops of core/esp.py around each
 *               AES-GCM, HMAC and AES-CBC call, which stays a call into `cryptography` (made from here);
 *               the views of packet memory handed to it are checked not to outlive the call.
 * inner_head:   the outer header fields of a packet read alone from a tunnel device (as core/lone.py _inner_head).
 * seal_aead16_one: one AEAD packet sealed (as core/esp.py seal_aead16), for a packet read alone
 *               (core/sa.py encrypt), the AEAD call still `cryptography`'s.
 * pure_requested: whether IPSEC_TUNNEL_PURE=1 asks for the pure-Python path.
 *
 * The Python code is the reference: tests/core/test_framing.py holds the two together byte for byte.
 * Every length is checked against the buffers; bad arguments raise ValueError, never read out of bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROTO_TCP 6        /* IANA */
#define TCP_FIN 0x01       /* RFC 9293 §3.1 control bits */
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80
#define NO_COALESCE (TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR | TCP_FIN)
#define IP_MAXPACKET 0xFFFF /* RFC 791 total length: 16 bits */
#define MAX_SEGMENTS 64     /* core/gro.py MAX_SEGMENTS */

/* A number congruent modulo 0xFFFF to the sum of `len` bytes' 16-bit big-endian words (a trailing odd
 * byte padded with zero), non-zero when that sum is. The words are added as they lie in memory, 64 bits
 * at a time, and the folded result byte-swapped: RFC 1071 §2(B), the sum is independent of byte order. */
static uint64_t
word_sum(const uint8_t *p, Py_ssize_t len)
{
    uint64_t sum = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        sum += (v & 0xFFFFFFFFu) + (v >> 32);
    }
    for (; i + 2 <= len; i += 2) {
        uint16_t w;
        memcpy(&w, p + i, 2);
        sum += w;
    }
    if (i < len) {
        uint16_t w = 0;
        memcpy(&w, p + i, 1); /* the odd byte first in memory: the high one of a big-endian word */
        sum += w;
    }
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    uint16_t folded = (uint16_t)sum, swapped = 0;
    uint8_t bytes[2];
    memcpy(bytes, &folded, 2); /* the folded sum as it lies in memory, read big-endian */
    swapped = (uint16_t)(bytes[0] << 8 | bytes[1]);
    return swapped;
}

/* The RFC 1071 one's-complement value of a sum (0xFFFF for a non-zero multiple of 0xFFFF). */
static unsigned
fold(uint64_t sum)
{
    uint64_t r = sum % 0xFFFF;
    return (unsigned)(r ? r : (sum ? 0xFFFF : 0));
}

static void
put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t
get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

PyDoc_STRVAR(tcp_rows_doc,
"tcp_rows(packet, l4, hl, end, mss, lo, hi, trailer, /) -> bytes\n\n"
"Segments lo..hi-1 (all of one length) of the TCP super-packet `packet` (transport header at l4, headers\n"
"hl bytes, the IP length ending at end) cut every mss payload bytes, one row each: the segment with its\n"
"IP length, IPv4 identification and checksum, sequence number, flags and TCP checksum made whole,\n"
"then `trailer`. A super-packet of at least two segments; ValueError for arguments that do not fit.");

static PyObject *
tcp_rows(PyObject *self, PyObject *args)
{
    Py_buffer pkt, tail;
    Py_ssize_t l4, hl, end, mss, lo, hi;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "y*nnnnnny*:tcp_rows", &pkt, &l4, &hl, &end, &mss, &lo, &hi, &tail))
        return NULL;
    const uint8_t *p = pkt.buf;
    Py_ssize_t plen = pkt.len;
    int v4 = plen > 0 && p[0] >> 4 == 4;
    if (plen < 20 || (v4 ? l4 < 20 : l4 < 40) || hl < l4 + 20 || hl > end || end > plen || mss <= 0
        || mss > IP_MAXPACKET || end - hl <= mss || lo < 0 || hi <= lo) {
        PyErr_SetString(PyExc_ValueError, "tcp_rows: a layout that does not fit the packet");
        goto done;
    }
    Py_ssize_t payload = end - hl;
    Py_ssize_t count = (payload + mss - 1) / mss;
    Py_ssize_t last_size = payload - (count - 1) * mss;
    if (hi > count || (lo < count - 1 && hi == count && last_size != mss)) {
        PyErr_SetString(PyExc_ValueError, "tcp_rows: rows of different lengths");
        goto done;
    }
    Py_ssize_t size = (lo == count - 1) ? last_size : mss;
    Py_ssize_t inner = hl + size;
    Py_ssize_t width = inner + tail.len;
    if (inner > IP_MAXPACKET + (v4 ? 0 : 40) || width > PY_SSIZE_T_MAX / (hi - lo)) {
        PyErr_SetString(PyExc_ValueError, "tcp_rows: segments too long");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (hi - lo) * width);
    if (out == NULL)
        goto done;
    uint8_t *row = (uint8_t *)PyBytes_AS_STRING(out);
    uint8_t flags = p[l4 + 13];
    unsigned first_id = (unsigned)p[4] << 8 | p[5];
    uint32_t first_seq = get32(p + l4 + 4);
    /* the pseudo-header's addresses and protocol (RFC 9293 §3.1, RFC 8200 §8.1) */
    uint64_t pseudo = (v4 ? word_sum(p + 12, 8) : word_sum(p + 8, 32)) + PROTO_TCP;
    for (Py_ssize_t g = lo; g < hi; g++, row += width) {
        memcpy(row, p, hl);
        memcpy(row + hl, p + hl + g * mss, size);
        memcpy(row + inner, tail.buf, tail.len);
        uint8_t f = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR); /* CWR on the first, FIN and PSH on the last */
        if (g == 0)
            f = flags & ~(TCP_FIN | TCP_PSH);
        else if (g == count - 1)
            f = flags & ~TCP_CWR;
        if (v4) {
            put16(row + 2, (unsigned)inner);
            put16(row + 4, (first_id + (unsigned)g) & 0xFFFF);
            put16(row + 10, 0);
            put16(row + 10, 0xFFFF - fold(word_sum(row, l4)));
        } else {
            put16(row + 4, (unsigned)(inner - 40));
        }
        uint32_t seq = first_seq + (uint32_t)((uint64_t)g * (uint64_t)mss);
        uint8_t *th = row + l4;
        th[4] = (uint8_t)(seq >> 24);
        th[5] = (uint8_t)(seq >> 16);
        th[6] = (uint8_t)(seq >> 8);
        th[7] = (uint8_t)seq;
        th[13] = f;
        put16(th + 16, 0);
        put16(th + 16, 0xFFFF - fold(pseudo + (uint64_t)(inner - l4) + word_sum(th, inner - l4)));
    }
done:
    PyBuffer_Release(&pkt);
    PyBuffer_Release(&tail);
    return out;
}

/* Whether header column c (of an IPv4 + TCP header) must be equal for segments of one connection. */
static int
connection_column(Py_ssize_t c)
{
    return c == 0 || c == 6 || c == 7 || c == 9 || (c >= 12 && c < 24) || c == 32;
}

/* Whether header column c must be equal for segments of one flow key (all but lengths, identification,
 * checksums, sequence number, flags, urgent pointer). */
static int
same_column(Py_ssize_t c)
{
    switch (c) {
    case 2: case 3: case 4: case 5: case 10: case 11: case 24: case 25: case 26: case 27:
    case 33: case 36: case 37: case 38: case 39:
        return 0;
    default:
        return 1;
    }
}

/* The super-packet of packets[start:stop] (IPv4, 20-byte IP header, hl bytes of headers, size bytes in
 * all), as core/gro.py _super_packet builds it: lengths and IPv4 checksum whole, the TCP checksum field
 * holding the pseudo-header sum (CHECKSUM_PARTIAL), PSH if psh. */
static PyObject *
super_packet(PyObject **items, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t hl, Py_ssize_t size, int psh)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    const uint8_t *head = (const uint8_t *)PyBytes_AS_STRING(items[start]);
    memcpy(o, head, hl);
    Py_ssize_t at = hl;
    for (Py_ssize_t i = start; i < stop; i++) {
        Py_ssize_t n = PyBytes_GET_SIZE(items[i]) - hl;
        memcpy(o + at, PyBytes_AS_STRING(items[i]) + hl, n);
        at += n;
    }
    put16(o + 2, (unsigned)size);
    put16(o + 10, 0);
    put16(o + 10, 0xFFFF - fold(word_sum(o, 20)));
    o[33] = (uint8_t)((head[33] & ~TCP_PSH) | (psh ? TCP_PSH : 0));
    uint64_t pseudo = (uint64_t)get32(head + 12) + get32(head + 16) + PROTO_TCP + (uint64_t)(size - 20);
    put16(o + 36, fold(pseudo));
    return out;
}

PyDoc_STRVAR(coalesce_run_doc,
"coalesce_run(packets, no_offload, make_offload, /) -> list | None\n\n"
"core/gro.py's coalesce for a batch of IPv4 TCP segments with DF, of one connection, in sequence, with\n"
"nothing but ACK and PSH, all of even non-zero length: per item, (no_offload, packet) or\n"
"(make_offload(hl, mss), super-packet). None for any other batch (the general path decides).");

static PyObject *
coalesce_run(PyObject *self, PyObject *args)
{
    PyObject *list, *no_offload, *make_offload;
    if (!PyArg_ParseTuple(args, "O!OO:coalesce_run", &PyList_Type, &list, &no_offload, &make_offload))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list);
    if (count < 2)
        Py_RETURN_NONE;
    PyObject **items = PySequence_Fast_ITEMS(list);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(items[i]))
            Py_RETURN_NONE;
        Py_ssize_t len = PyBytes_GET_SIZE(items[i]);
        if (len == 0 || len & 1)
            Py_RETURN_NONE;
    }
    const uint8_t *head = (const uint8_t *)PyBytes_AS_STRING(items[0]);
    Py_ssize_t head_len = PyBytes_GET_SIZE(items[0]);
    /* IPv4 without options, TCP, DF and not a fragment (the rest must be equal to it) */
    if (head_len < 40 || head[0] != 0x45 || head[9] != PROTO_TCP || (head[6] & 0x7F) != 0x40 || head[7])
        Py_RETURN_NONE;
    Py_ssize_t hl = 20 + (head[32] >> 2 & 0x3C);
    if (hl < 40)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < count; i++)
        if (PyBytes_GET_SIZE(items[i]) <= hl)
            Py_RETURN_NONE;
    /* per segment: its payload size, whether it ends a super-packet (PSH, short, a new flow key next) */
    Py_ssize_t *sizes = PyMem_Malloc(sizeof(Py_ssize_t) * count);
    unsigned char *cut = PyMem_Malloc(count);
    unsigned char *bad = PyMem_Malloc(count);
    PyObject *result = NULL;
    if (sizes == NULL || cut == NULL || bad == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t mss = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *r = (const uint8_t *)PyBytes_AS_STRING(items[i]);
        Py_ssize_t len = PyBytes_GET_SIZE(items[i]);
        for (Py_ssize_t c = 0; c < hl; c++)
            if (connection_column(c) && r[c] != head[c])
                goto none;
        if (((Py_ssize_t)r[2] << 8 | r[3]) != len || r[33] & NO_COALESCE)
            goto none;
        sizes[i] = len - hl;
        if (sizes[i] > mss)
            mss = sizes[i];
    }
    for (Py_ssize_t i = 0; i + 1 < count; i++) {
        const uint8_t *a = (const uint8_t *)PyBytes_AS_STRING(items[i]);
        const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(items[i + 1]);
        if ((uint32_t)(get32(b + 24) - get32(a + 24)) != (uint64_t)sizes[i]) /* in sequence, modulo 2^32 */
            goto none;
        if (sizes[i] < mss && sizes[i + 1] < mss) /* short segments in a row: not here */
            goto none;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *r = (const uint8_t *)PyBytes_AS_STRING(items[i]);
        cut[i] = (r[33] & TCP_PSH) || sizes[i] < mss;
        if (i + 1 < count && !cut[i]) {
            const uint8_t *n = (const uint8_t *)PyBytes_AS_STRING(items[i + 1]);
            for (Py_ssize_t c = 0; c < hl; c++)
                if (same_column(c) && r[c] != n[c]) {
                    cut[i] = 1; /* TOS, TTL, acknowledgment, window or options changed: a new flow key */
                    break;
                }
        }
        /* every segment's checksums, each alone: its words' sum (the IPv4 header's included, which a
         * valid checksum makes zero) and its pseudo-header's */
        Py_ssize_t len = PyBytes_GET_SIZE(items[i]);
        uint64_t sum = word_sum(r, len) + word_sum(head + 12, 8) + PROTO_TCP + (uint64_t)(len - 20);
        bad[i] = sum % 0xFFFF != 0;
    }
    result = PyList_New(0);
    if (result == NULL)
        goto done;
    Py_ssize_t per = (IP_MAXPACKET - hl) / mss;
    if (per > MAX_SEGMENTS)
        per = MAX_SEGMENTS;
    Py_ssize_t start = 0;
    while (start < count) {
        Py_ssize_t end = start;
        while (end < count - 1 && !cut[end])
            end++;
        end++; /* a super-packet ends after each cut, and at the batch's end */
        while (start < end) {
            Py_ssize_t stop = start + per < end ? start + per : end;
            Py_ssize_t n = stop - start;
            if (stop == end - 1 && n < MAX_SEGMENTS && hl + n * mss + sizes[stop] <= IP_MAXPACKET)
                stop = end; /* the short last segment fits where a full one would not */
            n = stop - start;
            int damaged = 0;
            Py_ssize_t size = hl;
            for (Py_ssize_t i = start; i < stop; i++) {
                damaged |= bad[i];
                size += sizes[i];
            }
            if (n == 1 || damaged) {
                for (Py_ssize_t i = start; i < stop; i++) {
                    PyObject *pair = PyTuple_Pack(2, no_offload, items[i]);
                    if (pair == NULL || PyList_Append(result, pair) < 0) {
                        Py_XDECREF(pair);
                        goto fail;
                    }
                    Py_DECREF(pair);
                }
            } else {
                const uint8_t *last = (const uint8_t *)PyBytes_AS_STRING(items[stop - 1]);
                PyObject *packet = super_packet(items, start, stop, hl, size, last[33] & TCP_PSH);
                if (packet == NULL)
                    goto fail;
                PyObject *offload = PyObject_CallFunction(make_offload, "nn", hl, mss);
                if (offload == NULL) {
                    Py_DECREF(packet);
                    goto fail;
                }
                PyObject *pair = PyTuple_Pack(2, offload, packet);
                Py_DECREF(offload);
                Py_DECREF(packet);
                if (pair == NULL || PyList_Append(result, pair) < 0) {
                    Py_XDECREF(pair);
                    goto fail;
                }
                Py_DECREF(pair);
            }
            start = stop;
        }
    }
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
    goto done;
fail:
    Py_CLEAR(result);
done:
    PyMem_Free(sizes);
    PyMem_Free(cut);
    PyMem_Free(bad);
    return result;
}

/* A native unsigned int at `p` (a field of struct mmsghdr). */
static unsigned
get_uint(const uint8_t *p)
{
    unsigned v;
    memcpy(&v, p, sizeof v);
    return v;
}

PyDoc_STRVAR(esp_in_ipv4_batch_doc,
"esp_in_ipv4_batch(view, hdrs, n, slot, msg_size, len_off, flags_off, trunc, /) -> list\n\n"
"Per received message i < n (its length and flags native unsigned ints at i * msg_size + len_off and\n"
"+ flags_off in hdrs, its bytes at i * slot in view), skipping those whose flags have `trunc`: the IPv4\n"
"packet as (source, destination, TOS, ESP), as linux/raw.py _esp_in_ipv4 gives it; packets that are\n"
"not IPv4 or whose header is cut short are left out.");

static PyObject *
esp_in_ipv4_batch(PyObject *self, PyObject *args)
{
    Py_buffer view, hdrs;
    Py_ssize_t n, slot, msg_size, len_off, flags_off;
    unsigned long trunc;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "y*y*nnnnnk:esp_in_ipv4_batch", &view, &hdrs, &n, &slot, &msg_size, &len_off,
                          &flags_off, &trunc))
        return NULL;
    if (n < 0 || slot <= 0 || msg_size <= 0 || len_off < 0 || flags_off < 0
        || len_off + (Py_ssize_t)sizeof(unsigned) > msg_size || flags_off + (Py_ssize_t)sizeof(unsigned) > msg_size
        || n > hdrs.len / msg_size || n > view.len / slot) {
        PyErr_SetString(PyExc_ValueError, "esp_in_ipv4_batch: messages beyond the buffers");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *h = (const uint8_t *)hdrs.buf + i * msg_size;
        if (get_uint(h + flags_off) & trunc)
            continue;
        Py_ssize_t size = get_uint(h + len_off);
        if (size > slot)
            size = slot; /* the kernel never writes beyond the slot's iovec */
        const uint8_t *p = (const uint8_t *)view.buf + i * slot;
        if (size < 20 || p[0] >> 4 != 4)
            continue;
        Py_ssize_t ihl = (p[0] & 0x0F) * 4;
        Py_ssize_t total = (Py_ssize_t)p[2] << 8 | p[3];
        if (ihl < 20 || size < ihl)
            continue;
        Py_ssize_t end = (ihl <= total && total <= size) ? total : size; /* RFC 791: what arrived counts */
        PyObject *item = Py_BuildValue("(y#y#iy#)", (const char *)p + 12, (Py_ssize_t)4, (const char *)p + 16,
                                       (Py_ssize_t)4, (int)p[1], (const char *)p + ihl, end - ihl);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(item);
    }
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&hdrs);
    return out;
}

PyDoc_STRVAR(ipv4_gather_doc,
"ipv4_gather(headers, payloads, start, batch, tos, frag, ttl, src, dst, iov, iov_size, iov_base_off,\n"
"iov_len_off, /) -> int\n\n"
"For payloads[start:], up to `batch` of them: writes message k's outer IPv4 header (RFC 791: no options,\n"
"identification and checksum 0 for the kernel to fill in, protocol ESP, the flags and fragment word\n"
"`frag`) at k * 20 in `headers`, and two struct iovec (native pointer at iov_base_off and size_t at\n"
"iov_len_off, iov_size bytes each) at 2k and 2k + 1 in `iov`: that header, then the payload's own bytes,\n"
"not copied. Stops before a payload that is not a bytes object or does not fit an IPv4 datagram.\n"
"Returns how many it wrote. The iovecs point into `headers` and into the payloads: both must outlive\n"
"their use (the caller keeps them).");

static void
put_iovec(uint8_t *at, Py_ssize_t base_off, Py_ssize_t len_off, const void *base, size_t len)
{
    memcpy(at + base_off, &base, sizeof base);
    memcpy(at + len_off, &len, sizeof len);
}

static PyObject *
ipv4_gather(PyObject *self, PyObject *args)
{
    Py_buffer headers, src, dst, iov;
    PyObject *payloads;
    Py_ssize_t start, batch, iov_size, iov_base_off, iov_len_off;
    int tos, frag, ttl;
    Py_ssize_t k = -1;
    if (!PyArg_ParseTuple(args, "w*Onniiiy*y*w*nnn:ipv4_gather", &headers, &payloads, &start, &batch, &tos,
                          &frag, &ttl, &src, &dst, &iov, &iov_size, &iov_base_off, &iov_len_off))
        return NULL;
    PyObject *seq = PySequence_Fast(payloads, "ipv4_gather: payloads must be a sequence");
    if (seq == NULL)
        goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (src.len != 4 || dst.len != 4 || start < 0 || batch < 0 || iov_size <= 0 || iov_base_off < 0
        || iov_len_off < 0 || iov_base_off + (Py_ssize_t)sizeof(void *) > iov_size
        || iov_len_off + (Py_ssize_t)sizeof(size_t) > iov_size
        || (iov_base_off < iov_len_off + (Py_ssize_t)sizeof(size_t)
            && iov_len_off < iov_base_off + (Py_ssize_t)sizeof(void *))
        || batch > headers.len / 20 || batch > iov.len / (2 * iov_size) || (tos | frag | ttl) < 0
        || tos > 0xFF || ttl > 0xFF || frag > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "ipv4_gather: arguments beyond the buffers");
        goto done;
    }
    for (k = 0; start + k < count && k < batch; k++) {
        PyObject *esp = PySequence_Fast_GET_ITEM(seq, start + k);
        if (!PyBytes_Check(esp) || PyBytes_GET_SIZE(esp) > 0xFFFF - 20)
            break;
        Py_ssize_t size = 20 + PyBytes_GET_SIZE(esp);
        uint8_t *p = (uint8_t *)headers.buf + k * 20;
        p[0] = 0x45;
        p[1] = (uint8_t)tos;
        put16(p + 2, (unsigned)size);
        put16(p + 4, 0);
        put16(p + 6, (unsigned)frag);
        p[8] = (uint8_t)ttl;
        p[9] = 50; /* IANA: ESP */
        put16(p + 10, 0);
        memcpy(p + 12, src.buf, 4);
        memcpy(p + 16, dst.buf, 4);
        uint8_t *v = (uint8_t *)iov.buf + 2 * k * iov_size;
        put_iovec(v, iov_base_off, iov_len_off, p, 20);
        put_iovec(v + iov_size, iov_base_off, iov_len_off, PyBytes_AS_STRING(esp), (size_t)(size - 20));
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&headers);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&iov);
    return k < 0 ? NULL : PyLong_FromSsize_t(k);
}

PyDoc_STRVAR(whole_inner_doc,
"whole_inner(plain, at, /) -> bytes | None\n\n"
"The inner packet of a decrypted tunnel-mode ESP payload starting at `at` in `plain` when it is a whole\n"
"IPv4 packet without options or an IPv6 packet, its IP length exactly what precedes a valid trailer\n"
"(RFC 4303 §2.4-2.6: padding 1, 2, 3, ..., pad length, next header 4 or 41 by the IP version); None for\n"
"anything else (core/esp.py open_aead16_many and open_cbc_many decide then).");

/* The IP length of the whole inner packet at `at` in the decrypted payload p[:len] (as whole_inner
 * takes it), or -1 when it is not one. */
static Py_ssize_t
inner_length(const uint8_t *p, Py_ssize_t len, Py_ssize_t at)
{
    if (at < 0 || len - at < 22) /* at least an IPv4 header and the trailer */
        return -1;
    Py_ssize_t pad = p[len - 2], nh = p[len - 1];
    Py_ssize_t end = len - 2 - pad; /* where the trailer starts */
    Py_ssize_t ip_len;
    if (p[at] == 0x45) { /* RFC 791: version 4, a 20-byte header; the total length at octets 2-3 */
        ip_len = (Py_ssize_t)p[at + 2] << 8 | p[at + 3];
        if (nh != 4 || ip_len < 20)
            return -1;
    } else if (p[at] >> 4 == 6 && len - at >= 42) { /* RFC 8200: the payload length (after 40) at 4-5 */
        ip_len = 40 + ((Py_ssize_t)p[at + 4] << 8 | p[at + 5]);
        if (nh != 41)
            return -1;
    } else {
        return -1;
    }
    if (ip_len != end - at)
        return -1;
    for (Py_ssize_t i = 0; i < pad; i++)
        if (p[end + i] != (uint8_t)(i + 1))
            return -1;
    return ip_len;
}

static PyObject *
whole_inner(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t at;
    if (!PyArg_ParseTuple(args, "y*n:whole_inner", &buf, &at))
        return NULL;
    Py_ssize_t ip_len = inner_length(buf.buf, buf.len, at);
    PyObject *out = ip_len < 0 ? Py_NewRef(Py_None)
                               : PyBytes_FromStringAndSize((const char *)buf.buf + at, ip_len);
    PyBuffer_Release(&buf);
    return out;
}

/* Whether every one of items[start:count] is exactly bytes (else the Python code decides). */
static int
all_bytes(PyObject *const *items, Py_ssize_t start, Py_ssize_t count)
{
    for (Py_ssize_t i = start; i < count; i++)
        if (!PyBytes_CheckExact(items[i]))
            return 0;
    return 1;
}

PyDoc_STRVAR(in_order_doc,
"in_order(packets, /) -> tuple[int, int] | None\n\n"
"core/sa.py _in_order: (first, last) when the ESP packets carry the sequence numbers first, first + 1,\n"
"..., last (low 32 bits, RFC 4303 §2.2), else (-1, -1), also when one is shorter than the ESP header;\n"
"None when one is not bytes (the Python code decides then).");

static PyObject *
in_order(PyObject *self, PyObject *args)
{
    PyObject *list;
    if (!PyArg_ParseTuple(args, "O!:in_order", &PyList_Type, &list))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (!all_bytes(items, 0, count))
        Py_RETURN_NONE;
    if (count == 0)
        return Py_BuildValue("(nn)", (Py_ssize_t)0, (Py_ssize_t)-1);
    for (Py_ssize_t i = 0; i < count; i++)
        if (PyBytes_GET_SIZE(items[i]) < 8)
            return Py_BuildValue("(nn)", (Py_ssize_t)-1, (Py_ssize_t)-1);
    uint64_t first = get32((const uint8_t *)PyBytes_AS_STRING(items[0]) + 4);
    uint64_t last = first + (uint64_t)count - 1;
    if (last >= ((uint64_t)1 << 32)) /* a run through 2^32 is not one of 32-bit numbers in order */
        return Py_BuildValue("(nn)", (Py_ssize_t)-1, (Py_ssize_t)-1);
    for (Py_ssize_t i = 1; i < count; i++)
        if (get32((const uint8_t *)PyBytes_AS_STRING(items[i]) + 4) != first + (uint64_t)i)
            return Py_BuildValue("(nn)", (Py_ssize_t)-1, (Py_ssize_t)-1);
    return Py_BuildValue("(KK)", (unsigned long long)first, (unsigned long long)last);
}

PyDoc_STRVAR(one_spi_doc,
"one_spi(datagrams, min_len, /) -> bytes | None\n\n"
"core/receive.py _one_sa's test: the first 4 bytes of two or more ESP datagrams (the SPI field, RFC\n"
"4303 §2.1) when all of them start with the same 4 bytes and each is at least min_len (4 or more)\n"
"bytes long, else b\"\"; None when one is not bytes (the Python code decides then).");

static PyObject *
one_spi(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t min_len;
    if (!PyArg_ParseTuple(args, "O!n:one_spi", &PyList_Type, &list, &min_len))
        return NULL;
    if (min_len < 4) {
        PyErr_SetString(PyExc_ValueError, "one_spi: min_len below the SPI field's 4 bytes");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (!all_bytes(items, 0, count))
        Py_RETURN_NONE;
    if (count < 2 || PyBytes_GET_SIZE(items[0]) < min_len)
        return PyBytes_FromStringAndSize(NULL, 0);
    const char *first = PyBytes_AS_STRING(items[0]);
    for (Py_ssize_t i = 1; i < count; i++)
        if (PyBytes_GET_SIZE(items[i]) < min_len || memcmp(PyBytes_AS_STRING(items[i]), first, 4) != 0)
            return PyBytes_FromStringAndSize(NULL, 0);
    return PyBytes_FromStringAndSize(first, 4);
}

/* Whether `p` (len bytes) is a TCP packet by its IP version's protocol field: IPv4's protocol (byte 9),
 * else IPv6's next header (byte 6); at least 10 bytes (daemon/readahead.py _is_tcp). */
static int
is_tcp(const uint8_t *p, Py_ssize_t len)
{
    return len > 9 && p[(p[0] >> 4) == 4 ? 9 : 6] == PROTO_TCP;
}

PyDoc_STRVAR(all_tcp_doc,
"all_tcp(packets, start, /) -> bool | None\n\n"
"daemon/dataplane.py _deliver_ahead's test: whether every packet of packets[start:] is TCP by its IP\n"
"header (IPv4's protocol, else IPv6's next header, RFC 9293; at least 10 bytes); None when one is not\n"
"bytes (the Python code decides then).");

static PyObject *
all_tcp(PyObject *self, PyObject *args)
{
    PyObject *list;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!n:all_tcp", &PyList_Type, &list, &start))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (start < 0)
        start = 0;
    if (!all_bytes(items, start, count))
        Py_RETURN_NONE;
    for (Py_ssize_t i = start; i < count; i++)
        if (!is_tcp((const uint8_t *)PyBytes_AS_STRING(items[i]), PyBytes_GET_SIZE(items[i])))
            Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* Whether two fields of a datagram's outer header are equal: bytes by value, exact ints by == (which
 * runs no Python code); -1 with an exception set. */
static int
same_field(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    if (PyBytes_CheckExact(a) && PyBytes_CheckExact(b))
        return PyBytes_GET_SIZE(a) == PyBytes_GET_SIZE(b)
               && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(a)) == 0;
    return PyObject_RichCompareBool(a, b, Py_EQ);
}

PyDoc_STRVAR(one_run_doc,
"one_run(datagrams, /) -> list[bytes] | None\n\n"
"daemon/dataplane.py _receive_runs' common case: for a batch of (source, destination, TOS, ESP)\n"
"tuples that all share their source, destination and TOS, the ESP of each, in order; None when they\n"
"do not, when there are none, or when one is not such a 4-tuple of bytes, bytes, int and anything\n"
"(the Python code groups them then).");

static PyObject *
one_run(PyObject *self, PyObject *args)
{
    PyObject *list, *out;
    if (!PyArg_ParseTuple(args, "O!:one_run", &PyList_Type, &list))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (count == 0)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < count; i++) /* so that no comparison below runs Python code */
        if (!PyTuple_CheckExact(items[i]) || PyTuple_GET_SIZE(items[i]) != 4
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(items[i], 0))
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(items[i], 1))
            || !PyLong_CheckExact(PyTuple_GET_ITEM(items[i], 2)))
            Py_RETURN_NONE;
    PyObject *first = items[0];
    for (Py_ssize_t i = 1; i < count; i++)
        for (Py_ssize_t f = 0; f < 3; f++) {
            int same = same_field(PyTuple_GET_ITEM(first, f), PyTuple_GET_ITEM(items[i], f));
            if (same < 0)
                return NULL;
            if (!same)
                Py_RETURN_NONE;
        }
    if ((out = PyList_New(count)) == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++)
        PyList_SET_ITEM(out, i, Py_NewRef(PyTuple_GET_ITEM(items[i], 3)));
    return out;
}

PyDoc_STRVAR(gso_runs_doc,
"gso_runs(payloads, max_segments, max_bytes, /) -> list[tuple[int, int, int]] | None\n\n"
"linux/udp.py _gso_groups' runs: (start, end, size) per run of payloads one UDP GSO send carries,\n"
"in order: equal sizes (the first's), the last one may be shorter, at most max_segments of them and\n"
"max_bytes // size (at least 1); None when one is not bytes (the Python code decides then).");

static PyObject *
gso_runs(PyObject *self, PyObject *args)
{
    PyObject *list, *out;
    Py_ssize_t max_segments, max_bytes;
    if (!PyArg_ParseTuple(args, "O!nn:gso_runs", &PyList_Type, &list, &max_segments, &max_bytes))
        return NULL;
    if (max_segments < 1 || max_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "gso_runs: at least one segment and one byte a send");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (!all_bytes(items, 0, count))
        Py_RETURN_NONE;
    if ((out = PyList_New(0)) == NULL)
        return NULL;
    Py_ssize_t i = 0;
    while (i < count) {
        Py_ssize_t size = PyBytes_GET_SIZE(items[i]), j = i + 1;
        Py_ssize_t by_bytes = max_bytes / (size > 1 ? size : 1);
        Py_ssize_t limit = count;
        if (i + max_segments < limit)
            limit = i + max_segments;
        if (i + (by_bytes > 1 ? by_bytes : 1) < limit)
            limit = i + (by_bytes > 1 ? by_bytes : 1);
        while (j < limit && PyBytes_GET_SIZE(items[j]) == size)
            j++;
        if (j < limit && PyBytes_GET_SIZE(items[j]) < size)
            j++; /* a shorter one may end the run */
        PyObject *run = Py_BuildValue("(nnn)", i, j, size);
        if (run == NULL || PyList_Append(out, run) < 0) {
            Py_XDECREF(run);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(run);
        i = j;
    }
    return out;
}

PyDoc_STRVAR(small_ones_doc,
"small_ones(got, small, /) -> tuple[int, list[int]] | None\n\n"
"daemon/readahead.py _take_raw's sizes: for a recvmmsg batch of (source, destination, TOS, ESP)\n"
"tuples, the bytes of ESP in all and the positions of those of at most `small` bytes, in order; None\n"
"when one is not such a tuple with bytes last (the Python code decides then).");

static PyObject *
small_ones(PyObject *self, PyObject *args)
{
    PyObject *list, *smalls;
    Py_ssize_t small, total = 0;
    if (!PyArg_ParseTuple(args, "O!n:small_ones", &PyList_Type, &list, &small))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list);
    PyObject **items = PySequence_Fast_ITEMS(list);
    for (Py_ssize_t i = 0; i < count; i++)
        if (!PyTuple_CheckExact(items[i]) || PyTuple_GET_SIZE(items[i]) != 4
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(items[i], 3)))
            Py_RETURN_NONE;
    if ((smalls = PyList_New(0)) == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t n = PyBytes_GET_SIZE(PyTuple_GET_ITEM(items[i], 3));
        total += n;
        if (n <= small) {
            PyObject *at = PyLong_FromSsize_t(i);
            if (at == NULL || PyList_Append(smalls, at) < 0) {
                Py_XDECREF(at);
                Py_DECREF(smalls);
                return NULL;
            }
            Py_DECREF(at);
        }
    }
    return Py_BuildValue("(nN)", total, smalls);
}

static void
put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A memoryview on `len` bytes at `p`, read-only or writable (`flags`: PyBUF_READ, PyBUF_WRITE). It does
 * not own them: the callers below let go of it (and check that nobody kept it) before they may go. */
static PyObject *
view_of(const uint8_t *p, Py_ssize_t len, int flags)
{
    return PyMemoryView_FromMemory((char *)p, len, flags);
}

/* Lets go of `view` (a view_of); 1 when someone else still held it: it is then released, so that it
 * can never be read again (the exception being raised, if any, is kept). */
static int
let_go(PyObject *view)
{
    int kept = Py_REFCNT(view) != 1;
    if (kept) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *r = PyObject_CallMethod(view, "release", NULL);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(view);
    return kept;
}

/* `call(a, b, c, d)`, then each argument let go of; -1 when the call raised or one of the views it was
 * given (b and d) is still held by someone (it must not outlive the memory it shows: it is released). */
static int
call4(PyObject *call, PyObject *a, PyObject *b, PyObject *c, PyObject *d, PyObject **result)
{
    *result = NULL;
    if (a == NULL || b == NULL || c == NULL || d == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        Py_XDECREF(d);
        return -1;
    }
    PyObject *argv[4] = {a, b, c, d};
    *result = PyObject_Vectorcall(call, argv, 4, NULL);
    int kept = let_go(b) | let_go(d); /* the views: the data and the buffer */
    Py_DECREF(a);
    Py_DECREF(c);
    if (kept) {
        Py_CLEAR(*result);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a view of a packet buffer outlived the call");
        return -1;
    }
    return *result == NULL ? -1 : 0;
}

PyDoc_STRVAR(seal_rows_aead_doc,
"seal_rows_aead(encrypt_into, spi, first_seq, split, salt, rows, width, esn=False, /) -> list[bytes]\n\n"
"core/esp.py seal_rows with the AEAD's encrypt_into(nonce, data, aad, buf) (the `cryptography` call does\n"
"all the cryptography): per row of `width` bytes of the buffer `rows`, in order, the ESP packet SPI ||\n"
"the low 32 bits of the sequence number || IV || ciphertext || 16-byte ICV, the IV the 64-bit counter\n"
"(RFC 4106 §3.1) with its top bit set when `split`, the nonce salt || IV, the AAD SPI || sequence number,\n"
"with `esn` SPI || high 32 bits || low 32 bits (RFC 4106 §5, RFC 7634 §2.1). ValueError when the rows\n"
"are not whole or a sequence number would pass 2^32 - 1 (with `esn`, 2^64 - 1; with `split`, 2^63 - 1).");

static PyObject *
seal_rows_aead(PyObject *self, PyObject *args)
{
    PyObject *encrypt_into, *out = NULL;
    unsigned long spi;
    unsigned long long first;
    int split, esn = 0;
    Py_buffer salt, rows;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "OkKpy*y*n|p:seal_rows_aead", &encrypt_into, &spi, &first, &split, &salt, &rows,
                          &width, &esn))
        return NULL;
    /* the last number, first + count - 1, must fit 32 bits (with ESN 64, below the IV's top bit with
     * `split`: RFC 4106 §3.1, no counter twice) */
    unsigned long long top = !esn ? 0xFFFFFFFFull : split ? 0x7FFFFFFFFFFFFFFFull : 0xFFFFFFFFFFFFFFFFull;
    if (salt.len != 4 || width <= 0 || width > IP_MAXPACKET + 40 || rows.len % width || spi > 0xFFFFFFFFul
        || first > top || (rows.len > 0 && (unsigned long long)(rows.len / width) - 1 > top - first)) {
        PyErr_SetString(PyExc_ValueError, "seal_rows_aead: rows, SPI or sequence numbers out of range");
        goto done;
    }
    Py_ssize_t count = rows.len / width, size = 16 + width + 16;
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *packet = PyBytes_FromStringAndSize(NULL, size);
        if (packet == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, packet);
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(packet);
        uint64_t seq = first + (uint64_t)i, iv = seq | (split ? (uint64_t)1 << 63 : 0);
        put32(o, (uint32_t)spi);
        put32(o + 4, (uint32_t)seq);
        put32(o + 8, (uint32_t)(iv >> 32));
        put32(o + 12, (uint32_t)iv);
        PyObject *nonce = PyBytes_FromStringAndSize(NULL, 12);
        if (nonce != NULL) {
            memcpy(PyBytes_AS_STRING(nonce), salt.buf, 4);
            memcpy(PyBytes_AS_STRING(nonce) + 4, o + 8, 8);
        }
        uint8_t aad[12]; /* RFC 4106 §5: SPI || [high 32 bits ||] low 32 bits of the sequence number */
        put32(aad, (uint32_t)spi);
        put32(aad + 4, esn ? (uint32_t)(seq >> 32) : (uint32_t)seq);
        put32(aad + 8, (uint32_t)seq);
        PyObject *result;
        if (call4(encrypt_into, nonce, view_of((const uint8_t *)rows.buf + i * width, width, PyBUF_READ),
                  PyBytes_FromStringAndSize((const char *)aad, esn ? 12 : 8), view_of(o + 16, width + 16, PyBUF_WRITE),
                  &result) < 0)
            goto fail;
        Py_ssize_t wrote = PyLong_AsSsize_t(result);
        Py_DECREF(result);
        if (wrote != width + 16) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "seal_rows_aead: encrypt_into wrote an unexpected length");
            goto fail;
        }
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&salt);
    PyBuffer_Release(&rows);
    return out;
}

PyDoc_STRVAR(open_aead16_many_doc,
"open_aead16_many(decrypt_into, salt, packets, invalid_tag, malformed, auth_failed, unpadded, /)\n"
"-> tuple[list, int] | None\n\n"
"core/esp.py open_aead16_many with the AEAD's decrypt_into(nonce, data, aad, buf) (the `cryptography`\n"
"call does all the cryptography): per packet, in order, `malformed` for a body that is not a whole\n"
"number of 4 bytes (at least 4), `auth_failed` where decrypt_into raises `invalid_tag`, the inner packet\n"
"alone where whole_inner(plain, 0) finds it, else unpadded(plain); and how many are not such bytes.\n"
"None when a packet is not bytes (the Python code decides then).");

static PyObject *
open_aead16_many_c(PyObject *self, PyObject *args)
{
    PyObject *decrypt_into, *list, *invalid_tag, *malformed, *auth_failed, *unpadded, *out = NULL;
    Py_buffer salt;
    if (!PyArg_ParseTuple(args, "Oy*O!OOOO:open_aead16_many", &decrypt_into, &salt, &PyList_Type, &list,
                          &invalid_tag, &malformed, &auth_failed, &unpadded))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(list), others = 0;
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (salt.len != 4) {
        PyErr_SetString(PyExc_ValueError, "open_aead16_many: a salt of 4 bytes");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        if (!PyBytes_CheckExact(items[i])) {
            out = Py_NewRef(Py_None);
            goto done;
        }
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = items[i];
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(item);
        Py_ssize_t len = PyBytes_GET_SIZE(item), body = len - 32; /* header 8, IV 8, ICV 16 */
        if (body < 4 || body & 3) {
            PyList_SET_ITEM(out, i, Py_NewRef(malformed));
            others++;
            continue;
        }
        PyObject *plain = PyBytes_FromStringAndSize(NULL, body);
        if (plain == NULL)
            goto fail;
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(plain);
        PyObject *nonce = PyBytes_FromStringAndSize(NULL, 12);
        if (nonce != NULL) {
            memcpy(PyBytes_AS_STRING(nonce), salt.buf, 4);
            memcpy(PyBytes_AS_STRING(nonce) + 4, p + 8, 8);
        }
        PyObject *result;
        /* the item stays alive: the list holds it while this runs */
        if (call4(decrypt_into, nonce, view_of(p + 16, len - 16, PyBUF_READ), PyBytes_FromStringAndSize((const char *)p, 8),
                  view_of(o, body, PyBUF_WRITE), &result) < 0) {
            Py_DECREF(plain);
            if (result == NULL && PyErr_ExceptionMatches(invalid_tag)) {
                PyErr_Clear();
                PyList_SET_ITEM(out, i, Py_NewRef(auth_failed));
                others++;
                continue;
            }
            goto fail;
        }
        Py_DECREF(result);
        Py_ssize_t ip_len = inner_length(o, body, 0);
        if (ip_len < 0) {
            PyObject *other = PyObject_CallOneArg(unpadded, plain);
            Py_DECREF(plain);
            if (other == NULL)
                goto fail;
            PyList_SET_ITEM(out, i, other);
            others++;
            continue;
        }
        if (ip_len < body && _PyBytes_Resize(&plain, ip_len) < 0) /* only this function holds it */
            goto fail;
        PyList_SET_ITEM(out, i, plain);
    }
    PyObject *pair = Py_BuildValue("(Nn)", out, others);
    out = pair;
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&salt);
    return out;
}

/* 0 when the `len` bytes at a and b are equal, in time independent of where they differ. */
static int
differ(const uint8_t *a, const uint8_t *b, Py_ssize_t len)
{
    volatile uint8_t acc = 0;
    for (Py_ssize_t i = 0; i < len; i++)
        acc |= a[i] ^ b[i];
    return acc != 0;
}

/* The HMAC of the `len` bytes at `p`, then `tail` (NULL: none; with ESN the high 32 bits of the
 * sequence number, RFC 4303 §2.2.1): start(), update(a view of them), update(tail), finalize(); a new
 * reference to the digest (bytes of at least `icv_len`), or NULL. */
static PyObject *
hmac_of(PyObject *start, const uint8_t *p, Py_ssize_t len, Py_ssize_t icv_len, PyObject *tail)
{
    static PyObject *update_name, *finalize_name;
    if (update_name == NULL && (update_name = PyUnicode_InternFromString("update")) == NULL)
        return NULL;
    if (finalize_name == NULL && (finalize_name = PyUnicode_InternFromString("finalize")) == NULL)
        return NULL;
    PyObject *h = PyObject_CallNoArgs(start);
    if (h == NULL)
        return NULL;
    PyObject *view = view_of(p, len, PyBUF_READ), *digest = NULL;
    if (view == NULL)
        goto done;
    PyObject *r = PyObject_CallMethodOneArg(h, update_name, view);
    int kept = let_go(view);
    if (r == NULL || kept) {
        Py_XDECREF(r);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a view of a packet buffer outlived the call");
        goto done;
    }
    Py_DECREF(r);
    if (tail != NULL) {
        r = PyObject_CallMethodOneArg(h, update_name, tail);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    digest = PyObject_CallMethodNoArgs(h, finalize_name);
    if (digest != NULL && (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) < icv_len)) {
        Py_CLEAR(digest);
        PyErr_SetString(PyExc_ValueError, "an HMAC shorter than the ICV");
    }
done:
    Py_DECREF(h);
    return digest;
}

PyDoc_STRVAR(seal_rows_cbc_doc,
"seal_rows_cbc(start, icv_len, spi, first_seq, sealed, step, esn=False, /) -> list[bytes]\n\n"
"core/esp.py seal_rows_cbc after its one encryption: per `step` bytes of `sealed` (a row's IV and\n"
"ciphertext), in order, SPI || the low 32 bits of the sequence number || those bytes || the first\n"
"icv_len bytes of the HMAC over all before it, computed by start() (a keyed `cryptography` HMAC),\n"
"update() and finalize() (RFC 4303 §2.8); with `esn` the HMAC also covers each row's own high 32 bits\n"
"of the sequence number, appended and never sent (RFC 4303 §2.2.1, §3.3.2.1). ValueError when the rows\n"
"are not whole or a sequence number would pass 2^32 - 1 (with `esn`, 2^64 - 1).");

static PyObject *
seal_rows_cbc(PyObject *self, PyObject *args)
{
    PyObject *start, *out = NULL, *tail = NULL;
    Py_ssize_t icv_len, step;
    unsigned long spi;
    unsigned long long first;
    int esn = 0;
    Py_buffer sealed;
    if (!PyArg_ParseTuple(args, "OnkKy*n|p:seal_rows_cbc", &start, &icv_len, &spi, &first, &sealed, &step,
                          &esn))
        return NULL;
    /* the last number, first + count - 1, must fit 32 bits (64 with ESN) */
    unsigned long long top = esn ? 0xFFFFFFFFFFFFFFFFull : 0xFFFFFFFFull;
    if (step <= 0 || step > IP_MAXPACKET + 40 || sealed.len % step || icv_len < 0 || icv_len > 64
        || spi > 0xFFFFFFFFul || first > top
        || (sealed.len > 0 && (unsigned long long)(sealed.len / step) - 1 > top - first)) {
        PyErr_SetString(PyExc_ValueError, "seal_rows_cbc: rows, SPI or sequence numbers out of range");
        goto done;
    }
    Py_ssize_t count = sealed.len / step;
    out = PyList_New(count);
    if (out == NULL)
        goto done;
    uint32_t tail_hi = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t seq = first + (uint64_t)i;
        if (esn && (tail == NULL || (uint32_t)(seq >> 32) != tail_hi)) {
            /* RFC 4303 §2.2.1: this row's high 32 bits, in the ICV and never sent (a new object only
             * where a batch crosses a multiple of 2^32) */
            uint8_t hi[4];
            tail_hi = (uint32_t)(seq >> 32);
            put32(hi, tail_hi);
            Py_XDECREF(tail);
            if ((tail = PyBytes_FromStringAndSize((const char *)hi, 4)) == NULL)
                goto fail;
        }
        PyObject *packet = PyBytes_FromStringAndSize(NULL, 8 + step + icv_len);
        if (packet == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, packet);
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(packet);
        put32(o, (uint32_t)spi);
        put32(o + 4, (uint32_t)seq);
        memcpy(o + 8, (const uint8_t *)sealed.buf + i * step, step);
        PyObject *digest = hmac_of(start, o, 8 + step, icv_len, tail);
        if (digest == NULL)
            goto fail;
        memcpy(o + 8 + step, PyBytes_AS_STRING(digest), icv_len);
        Py_DECREF(digest);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    Py_XDECREF(tail);
    PyBuffer_Release(&sealed);
    return out;
}

PyDoc_STRVAR(open_cbc_many_doc,
"open_cbc_many(start, icv_len, decrypt_joined, block, packets, malformed, auth_failed, unpadded,\n"
"              seq_hi=-1, /) -> tuple[list, int] | None\n\n"
"core/esp.py open_cbc_many: per packet, in order, `malformed` for a body that is not a whole number of\n"
"blocks (at least 4 bytes), `auth_failed` when the first icv_len bytes of the HMAC (start(), update(),\n"
"finalize()) over all but the ICV, then with ESN (seq_hi >= 0) the high 32 bits of the sequence number\n"
"(RFC 4303 §2.2.1), differ from it (compared in constant time, every ICV before any decryption),\n"
"else its part of one decrypt_joined call over the IV || ciphertext of all such packets joined (a view\n"
"of the packet when it is the only one), and the inner packet alone where whole_inner(plain, block)\n"
"finds it, or unpadded(plain[block:]); and how many are not such bytes. None when a packet is not bytes.");

/* One decrypted packet's result for open_cbc_many: its whole inner packet alone where whole_inner finds
 * it, else unpadded(plain[block:]) (counted in `others`); `q`, `plen`: what decryption gave for it, one
 * block of no meaning first. A new reference, or NULL. */
static PyObject *
cbc_opened(const uint8_t *q, Py_ssize_t plen, Py_ssize_t block, PyObject *unpadded, Py_ssize_t *others)
{
    Py_ssize_t ip_len = inner_length(q, plen, block);
    if (ip_len >= 0)
        return PyBytes_FromStringAndSize((const char *)q + block, ip_len);
    Py_ssize_t at = plen < block ? plen : block; /* CBC gives at least a block: as Python would */
    PyObject *rest = PyBytes_FromStringAndSize((const char *)q + at, plen - at), *result;
    result = rest == NULL ? NULL : PyObject_CallOneArg(unpadded, rest);
    Py_XDECREF(rest);
    (*others)++;
    return result;
}

static PyObject *
open_cbc_many_c(PyObject *self, PyObject *args)
{
    PyObject *start, *decrypt, *list, *malformed, *auth_failed, *unpadded, *out = NULL, *tail = NULL;
    PyObject *plain = NULL;
    Py_ssize_t icv_len, block, *bodies = NULL;
    long long seq_hi = -1;
    if (!PyArg_ParseTuple(args, "OnOnO!OOO|L:open_cbc_many", &start, &icv_len, &decrypt, &block,
                          &PyList_Type, &list, &malformed, &auth_failed, &unpadded, &seq_hi))
        return NULL;
    if (icv_len < 0 || icv_len > 64 || block < 4 || block > 64 || seq_hi < -1 || seq_hi > 0xFFFFFFFFll) {
        PyErr_SetString(PyExc_ValueError, "open_cbc_many: an ICV or block length or seq_hi out of range");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list), others = 0, total = 0, authentic = 0, last = -1;
    PyObject **items = PySequence_Fast_ITEMS(list);
    if (!all_bytes(items, 0, count))
        Py_RETURN_NONE;
    if (seq_hi >= 0) { /* RFC 4303 §2.2.1: the high 32 bits, in the ICV and never sent */
        uint8_t hi[4];
        put32(hi, (uint32_t)seq_hi);
        if ((tail = PyBytes_FromStringAndSize((const char *)hi, 4)) == NULL)
            return NULL;
    }
    out = PyList_New(count);
    bodies = PyMem_New(Py_ssize_t, count > 0 ? count : 1);
    if (out == NULL || bodies == NULL) {
        if (bodies == NULL)
            PyErr_NoMemory();
        goto fail;
    }
    /* First every length and every ICV, before anything is decrypted (RFC 4303 §3.4.4) */
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(items[i]);
        Py_ssize_t len = PyBytes_GET_SIZE(items[i]), body = len - 8 - block - icv_len, icv_at = len - icv_len;
        bodies[i] = -1;
        if (body < 4 || body % block) {
            PyList_SET_ITEM(out, i, Py_NewRef(malformed));
            others++;
            continue;
        }
        PyObject *digest = hmac_of(start, p, icv_at, icv_len, tail);
        if (digest == NULL)
            goto fail;
        int forged = differ((const uint8_t *)PyBytes_AS_STRING(digest), p + icv_at, icv_len);
        Py_DECREF(digest);
        if (forged) {
            PyList_SET_ITEM(out, i, Py_NewRef(auth_failed));
            others++;
            continue;
        }
        bodies[i] = icv_at - 8; /* IV || ciphertext */
        total += bodies[i];
        authentic++;
        last = i;
    }
    if (authentic == 1) { /* decrypted alone, from a view of the packet */
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(items[last]);
        PyObject *view = view_of(p + 8, bodies[last], PyBUF_READ);
        if (view == NULL)
            goto fail;
        plain = PyObject_CallOneArg(decrypt, view);
        int kept = let_go(view);
        if (plain == NULL || kept || !PyBytes_Check(plain)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "open_cbc_many: decrypt_joined gave an unexpected result");
            goto fail;
        }
        const uint8_t *q = (const uint8_t *)PyBytes_AS_STRING(plain);
        PyObject *result = cbc_opened(q, PyBytes_GET_SIZE(plain), block, unpadded, &others);
        if (result == NULL)
            goto fail;
        PyList_SET_ITEM(out, last, result);
    } else if (authentic > 1) {
        /* One call for all of them: IV || ciphertext of each, joined. CBC decryption XORs each block's
         * decryption with the ciphertext block before it, so every packet's blocks after its IV come
         * out under its own IV, and only each IV's block has no meaning (core/algorithms.py _Cbc). */
        PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
        if (joined == NULL)
            goto fail;
        uint8_t *j = (uint8_t *)PyBytes_AS_STRING(joined);
        for (Py_ssize_t i = 0; i < count; i++)
            if (bodies[i] >= 0) {
                memcpy(j, PyBytes_AS_STRING(items[i]) + 8, bodies[i]);
                j += bodies[i];
            }
        plain = PyObject_CallOneArg(decrypt, joined);
        Py_DECREF(joined);
        if (plain == NULL || !PyBytes_Check(plain) || PyBytes_GET_SIZE(plain) != total) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "open_cbc_many: decrypt_joined gave an unexpected result");
            goto fail;
        }
        const uint8_t *q = (const uint8_t *)PyBytes_AS_STRING(plain);
        for (Py_ssize_t i = 0; i < count; i++)
            if (bodies[i] >= 0) {
                PyObject *result = cbc_opened(q, bodies[i], block, unpadded, &others);
                if (result == NULL)
                    goto fail;
                PyList_SET_ITEM(out, i, result);
                q += bodies[i];
            }
    }
    Py_XDECREF(plain);
    Py_XDECREF(tail);
    PyMem_Free(bodies);
    return Py_BuildValue("(Nn)", out, others);
fail:
    Py_XDECREF(plain);
    Py_XDECREF(tail);
    Py_XDECREF(out);
    PyMem_Free(bodies);
    return NULL;
}

PyDoc_STRVAR(split_doc,
"split(buffer, n, size, /) -> list[bytes]\n\n"
"The first n bytes of `buffer` cut every `size` bytes, the last piece possibly shorter (a UDP GRO batch\n"
"back into its datagrams, as linux/udp.py recv_batch cuts it). ValueError when n is beyond the buffer.");

static PyObject *
split(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t n, size;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "y*nn:split", &buf, &n, &size))
        return NULL;
    if (n < 0 || n > buf.len || size <= 0) {
        PyErr_SetString(PyExc_ValueError, "split: a length beyond the buffer");
        goto done;
    }
    out = PyList_New((n + size - 1) / size);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0, at = 0; at < n; i++, at += size) {
        PyObject *piece = PyBytes_FromStringAndSize((const char *)buf.buf + at, n - at < size ? n - at : size);
        if (piece == NULL) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, piece);
    }
done:
    PyBuffer_Release(&buf);
    return out;
}

static PyObject *
pure_requested(PyObject *self, PyObject *unused)
{
    const char *value = getenv("IPSEC_TUNNEL_PURE");
    return PyBool_FromLong(value != NULL && strcmp(value, "1") == 0);
}

PyDoc_STRVAR(inner_head_doc,
"inner_head(packet, /) -> tuple[int, int, int, bool, int] | None\n\n"
"(IP length, TOS or traffic class, TTL or hop limit, DF, ESP next header) of a packet read from a tunnel\n"
"device when it is IPv4 without options (RFC 791) or IPv6 (RFC 8200, DF always) and its IP length is at\n"
"least 20 and at most the bytes read; None for anything else (as core/lone.py _inner_head).");

static PyObject *
inner_head(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "inner_head: bytes expected");
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(arg);
    Py_ssize_t len = PyBytes_GET_SIZE(arg);
    long ip_len, tos, ttl, nh;
    int df;
    if (len >= 20 && p[0] == 0x45) { /* RFC 791: total length 2-3, TOS 1, flags 6 (DF 0x40), TTL 8 */
        ip_len = (long)p[2] << 8 | p[3];
        tos = p[1];
        ttl = p[8];
        df = (p[6] & 0x40) != 0;
        nh = 4; /* RFC 4303 §2.6: IPv4-in-IP */
    } else if (len >= 40 && p[0] >> 4 == 6) { /* RFC 8200: traffic class 0-1, payload length 4-5, hop limit 7 */
        ip_len = 40 + ((long)p[4] << 8 | p[5]);
        tos = (p[0] & 0x0F) << 4 | p[1] >> 4;
        ttl = p[7];
        df = 1;
        nh = 41; /* IPv6 encapsulation */
    } else {
        Py_RETURN_NONE;
    }
    if (ip_len < 20 || ip_len > len)
        Py_RETURN_NONE;
    PyObject *out = PyTuple_New(5);
    if (out == NULL)
        return NULL;
    PyObject *items[5] = {PyLong_FromLong(ip_len), PyLong_FromLong(tos), PyLong_FromLong(ttl),
                          PyBool_FromLong(df), PyLong_FromLong(nh)};
    for (int i = 0; i < 5; i++) {
        if (items[i] == NULL) {
            for (int j = i + 1; j < 5; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, items[i]);
    }
    return out;
}

static PyObject *seal_aead16_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs); /* at the end */
PyDoc_STRVAR(seal_aead16_one_doc,
"seal_aead16_one(encrypt, spi, seq, split, salt, inner, next_header, esn=False, /) -> bytes\n\n"
"core/esp.py seal_aead16 (with `esn`, seal_aead16_esn) of one inner packet, the library's encrypt doing\n"
"the AEAD.");

static PyMethodDef methods[] = {
    {"tcp_rows", tcp_rows, METH_VARARGS, tcp_rows_doc},
    {"coalesce_run", coalesce_run, METH_VARARGS, coalesce_run_doc},
    {"esp_in_ipv4_batch", esp_in_ipv4_batch, METH_VARARGS, esp_in_ipv4_batch_doc},
    {"ipv4_gather", ipv4_gather, METH_VARARGS, ipv4_gather_doc},
    {"whole_inner", whole_inner, METH_VARARGS, whole_inner_doc},
    {"in_order", in_order, METH_VARARGS, in_order_doc},
    {"one_spi", one_spi, METH_VARARGS, one_spi_doc},
    {"all_tcp", all_tcp, METH_VARARGS, all_tcp_doc},
    {"small_ones", small_ones, METH_VARARGS, small_ones_doc},
    {"gso_runs", gso_runs, METH_VARARGS, gso_runs_doc},
    {"one_run", one_run, METH_VARARGS, one_run_doc},
    {"seal_rows_aead", seal_rows_aead, METH_VARARGS, seal_rows_aead_doc},
    {"open_aead16_many", open_aead16_many_c, METH_VARARGS, open_aead16_many_doc},
    {"seal_rows_cbc", seal_rows_cbc, METH_VARARGS, seal_rows_cbc_doc},
    {"open_cbc_many", open_cbc_many_c, METH_VARARGS, open_cbc_many_doc},
    {"split", split, METH_VARARGS, split_doc},
    {"inner_head", inner_head, METH_O, inner_head_doc},
    {"seal_aead16_one", (PyCFunction)(void (*)(void))seal_aead16_one, METH_FASTCALL, seal_aead16_one_doc},
    {"pure_requested", pure_requested, METH_NOARGS,
     "pure_requested() -> bool\n\nWhether IPSEC_TUNNEL_PURE=1 is set: the pure-Python path is wanted."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_framing", "Per-packet framing in C: segmenting, joining, checksums.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__framing(void)
{
    return PyModule_Create(&module);
}

/* ---- a lone packet's seal (core/lone.py through core/sa.py) in one call ---- */
/* It takes its arguments as the vector call gives them (METH_FASTCALL): no format string to parse.
 * (An open in one call was tried and left out: on cold caches it cost more than the Python it
 * replaced, a few slices; docs/performance.md.) */

/* `n` as an unsigned number at most `max` into *out: 0, else -1 with ValueError (TypeError: not an int). */
static int
lone_u64(PyObject *n, unsigned long long max, unsigned long long *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(n);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "seal_aead16_one: SPI, sequence number or next header out of range");
        }
        return -1;
    }
    if (v > max) {
        PyErr_SetString(PyExc_ValueError, "seal_aead16_one: SPI, sequence number or next header out of range");
        return -1;
    }
    *out = v;
    return 0;
}

/* `n` as an unsigned number at most `max` (below 2^63), else -1 with ValueError (TypeError: not an int). */
static long long
lone_uint(PyObject *n, unsigned long long max)
{
    unsigned long long v;
    return lone_u64(n, max, &v) < 0 ? -1 : (long long)v;
}

/* seal_aead16_one(encrypt, spi, seq, split, salt, inner, next_header, esn=False, /) -> bytes
 * core/esp.py seal_aead16 of one inner packet with the AEAD's encrypt(nonce, data, aad) -> ciphertext ||
 * 16-byte ICV (the `cryptography` call does all the cryptography; its plain form, not encrypt_into with
 * views, which costs more on cold caches): SPI || sequence number || IV || ciphertext || ICV, the payload
 * the inner packet, padding 1, 2, ... to ESP's 4 bytes, pad length and next header (RFC 4303 §2.4-2.6),
 * the IV the 64-bit counter (RFC 4106 §3.1) with its top bit set when `split`, the nonce salt || IV, the
 * AAD SPI || sequence number (RFC 4106 §5); with `esn` (core/esp.py seal_aead16_esn) the header carries
 * the low 32 bits of the 64-bit sequence number and the AAD is SPI || high 32 bits || low 32 bits (RFC
 * 4106 §5, RFC 7634 §2.1). `salt` and `inner` are bytes. ValueError for a salt that is not 4 bytes, an SPI
 * past 2^32 - 1, a sequence number past 2^32 - 1 (with `esn` 2^64 - 1, and 2^63 - 1 with `split`: the IV's
 * top bit), a next header past 255, or a ciphertext of the wrong length. */
static PyObject *
seal_aead16_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "seal_aead16_one takes 7 or 8 arguments");
        return NULL;
    }
    PyObject *encrypt = args[0], *salt = args[4], *inner = args[5];
    if (!PyBytes_Check(salt) || !PyBytes_Check(inner)) {
        PyErr_SetString(PyExc_TypeError, "seal_aead16_one: salt and inner packet must be bytes");
        return NULL;
    }
    int esn = nargs == 8 ? PyObject_IsTrue(args[7]) : 0;
    int split = esn < 0 ? -1 : PyObject_IsTrue(args[3]);
    if (split < 0)
        return NULL;
    unsigned long long seq, seq_max = !esn ? 0xFFFFFFFFull : split ? 0x7FFFFFFFFFFFFFFFull : 0xFFFFFFFFFFFFFFFFull;
    long long spi = lone_uint(args[1], 0xFFFFFFFFull),
              next_header = spi < 0 || lone_u64(args[2], seq_max, &seq) < 0 ? -1 : lone_uint(args[6], 0xFF);
    if (next_header < 0)
        return NULL;
    Py_ssize_t len = PyBytes_GET_SIZE(inner); /* any length, as esp.seal_aead16 (an IPv6 packet may pass 65,535) */
    if (PyBytes_GET_SIZE(salt) != 4) {
        PyErr_SetString(PyExc_ValueError, "seal_aead16_one: a salt of 4 bytes");
        return NULL;
    }
    Py_ssize_t pad = -(len + 2) & 3, body = len + pad + 2;
    uint8_t head[16];
    uint8_t esn_aad[12]; /* RFC 4106 §5: SPI || high 32 bits || low 32 bits */
    uint64_t iv = (uint64_t)seq | (split ? (uint64_t)1 << 63 : 0);
    put32(head, (uint32_t)spi);
    put32(head + 4, (uint32_t)seq);
    put32(head + 8, (uint32_t)(iv >> 32));
    put32(head + 12, (uint32_t)iv);
    put32(esn_aad, (uint32_t)spi);
    put32(esn_aad + 4, (uint32_t)(seq >> 32));
    put32(esn_aad + 8, (uint32_t)seq);
    PyObject *nonce = PyBytes_FromStringAndSize(NULL, 12), *plain = PyBytes_FromStringAndSize(NULL, body),
             *aad = esn ? PyBytes_FromStringAndSize((const char *)esn_aad, 12)
                        : PyBytes_FromStringAndSize((const char *)head, 8),
             *sealed = NULL, *packet = NULL;
    if (nonce != NULL && plain != NULL && aad != NULL) {
        memcpy(PyBytes_AS_STRING(nonce), PyBytes_AS_STRING(salt), 4);
        memcpy(PyBytes_AS_STRING(nonce) + 4, head + 8, 8);
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(plain);
        memcpy(o, PyBytes_AS_STRING(inner), (size_t)len);
        for (Py_ssize_t i = 0; i < pad; i++)
            o[len + i] = (uint8_t)(i + 1); /* RFC 4303 §2.4: 1, 2, 3, ... */
        o[body - 2] = (uint8_t)pad;
        o[body - 1] = (uint8_t)next_header;
        PyObject *argv[3] = {nonce, plain, aad};
        sealed = PyObject_Vectorcall(encrypt, argv, 3, NULL);
    }
    Py_XDECREF(nonce);
    Py_XDECREF(plain);
    Py_XDECREF(aad);
    if (sealed == NULL)
        return NULL;
    if (!PyBytes_Check(sealed) || PyBytes_GET_SIZE(sealed) != body + 16) {
        PyErr_SetString(PyExc_ValueError, "seal_aead16_one: encrypt gave an unexpected length");
    } else {
        packet = PyBytes_FromStringAndSize(NULL, 16 + body + 16);
        if (packet != NULL) {
            memcpy(PyBytes_AS_STRING(packet), head, 16);
            memcpy(PyBytes_AS_STRING(packet) + 16, PyBytes_AS_STRING(sealed), (size_t)(body + 16));
        }
    }
    Py_DECREF(sealed);
    return packet;
}
