/* The data plane's per-packet system calls in C, for its woken hops (issue 13): the ESP-in-UDP socket's
 * and the tunnel device's.
 *
 * recv_udp:  one recvmsg into the socket's buffer, its control messages (IP_PKTINFO / IPV6_PKTINFO,
 *            IP_TOS / IPV6_TCLASS, SCM_TIMESTAMPNS, UDP_GRO) and the sender's address parsed here, as
 *            linux/udp.py UdpSocket._recvmsg, recv_batch and _datagram do in Python.
 * send_udp:  one sendmsg of one datagram with control messages and an address packed beforehand
 *            (`control`, `sockaddr_in`), as UdpSocket.send_one's socket.sendmsg.
 * control:   control messages packed as sendmsg's ancillary buffer (struct cmsghdr, CMSG_SPACE each).
 * tun_read:  one read from a TUN queue into its buffer, the packet copied out once when no virtio-net
 *            header asks for work (linux/tun.py TunQueue.read).
 * tun_write: one packet written into a TUN queue behind an empty virtio-net header (TunQueue.write).
 *
 * The Python code stays the reference (IPSEC_TUNNEL_PURE=1 selects it, linux/pktio.py):
 * tests/linux/test_pktio.py holds the two together result for result. No cryptography here; nothing but
 * the system calls and parsing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_GRO
#define UDP_GRO 104 /* linux/udp.h (Linux 5.0) */
#endif
#ifndef SCM_TIMESTAMPNS
#define SCM_TIMESTAMPNS 35 /* asm-generic/socket.h */
#endif
#define VNET_HDR_LEN 10  /* struct virtio_net_hdr (linux/virtio_net.h), as core/gso.py VNET_HDR */
#define MAX_CONTROL 1024 /* room for control messages at most (the Python path asks for 256) */

/* The arguments every call starts with: `want` of them, the first a descriptor, the third (when `flag`
 * is not NULL) a truth value. 0 when taken, -1 with an exception set. */
static int
fd_and_flag(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name, int *fd, int *flag)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return -1;
    }
    *fd = PyLong_AsLong(args[0]);
    if (*fd == -1 && PyErr_Occurred())
        return -1;
    if (flag != NULL && (*flag = PyObject_IsTrue(args[2])) < 0)
        return -1;
    return 0;
}

PyDoc_STRVAR(recv_udp_doc,
"recv_udp(fd, buffer, v6, ancillary, cls, /) -> tuple[cls, int, int] | bool | None\n\n"
"One datagram from UDP socket `fd` into `buffer` (ancillary: bytes of room for control messages):\n"
"(cls(src, sport, dst, tos, payload, stamp), n, size) where size is the UDP GRO segment size when the\n"
"read is a batch of several (payload then b\"\", the n bytes left in the buffer), else 0 (payload: the\n"
"datagram); None when nothing is queued; False for a datagram cut short (MSG_TRUNC, dropped). Other\n"
"errors raise OSError as socket.recvmsg_into does; EINTR is retried.");

static PyObject *
recv_udp(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, v6;
    if (fd_and_flag(args, nargs, 5, "recv_udp", &fd, &v6) < 0)
        return NULL;
    Py_ssize_t room = PyLong_AsSsize_t(args[3]);
    if (room == -1 && PyErr_Occurred())
        return NULL;
    if (room < 0 || room > MAX_CONTROL)
        room = MAX_CONTROL;
    PyObject *cls = args[4];
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "recv_udp: cls must be a tuple type");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL;

    union {
        struct cmsghdr align;
        char bytes[MAX_CONTROL];
    } control;
    struct sockaddr_storage from;
    struct iovec iov = {view.buf, (size_t)view.len};
    struct msghdr msg;
    ssize_t n;
    for (;;) {
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &from;
        msg.msg_namelen = sizeof from;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = room ? control.bytes : NULL;
        msg.msg_controllen = (size_t)room;
        Py_BEGIN_ALLOW_THREADS
        n = recvmsg(fd, &msg, 0);
        Py_END_ALLOW_THREADS
        if (n >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                PyBuffer_Release(&view);
                return NULL;
            }
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
        PyBuffer_Release(&view);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (msg.msg_flags & MSG_TRUNC) {
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;
    }

    unsigned char dst[16] = {0};
    long tos = 0, size = 0;
    double stamp = 0.0;
    char *end = (char *)msg.msg_control + msg.msg_controllen;
    for (struct cmsghdr *c = msg.msg_control ? CMSG_FIRSTHDR(&msg) : NULL; c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        unsigned char *data = CMSG_DATA(c);
        char *stop = (char *)c + c->cmsg_len;
        if (stop > end)
            stop = end; /* cut short by a full control buffer, as socket.recvmsg reads it */
        Py_ssize_t len = stop > (char *)data ? stop - (char *)data : 0;
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            if (len >= 4) {
                int32_t value;
                memcpy(&value, data, 4);
                size = value;
            } else if (len >= 2) {
                uint16_t value;
                memcpy(&value, data, 2);
                size = value;
            }
            if (len >= 2)
                continue;
        }
        if (c->cmsg_level == SOL_SOCKET) {
            if (c->cmsg_type == SCM_TIMESTAMPNS) {
                if (len >= 16) {
                    int64_t ts[2];
                    memcpy(ts, data, 16);
                    stamp = (double)ts[0] + (double)ts[1] * 1e-9;
                } else if (len >= 8) {
                    int32_t ts[2];
                    memcpy(ts, data, 8);
                    stamp = (double)ts[0] + (double)ts[1] * 1e-9;
                } else {
                    stamp = 0.0;
                }
            }
        } else if (v6 && c->cmsg_level == IPPROTO_IPV6) {
            if (c->cmsg_type == IPV6_PKTINFO && len >= 16) {
                memcpy(dst, data, 16);
            } else if (c->cmsg_type == IPV6_TCLASS) {
                if (len >= 4) {
                    int value;
                    memcpy(&value, data, 4);
                    tos = value;
                } else {
                    tos = len ? data[0] : 0;
                }
            }
        } else if (!v6 && c->cmsg_level == IPPROTO_IP) {
            if (c->cmsg_type == IP_PKTINFO && len >= 12) {
                memcpy(dst, data + 8, 4); /* ipi_addr: the header's destination */
            } else if (c->cmsg_type == IP_TOS && len > 0) {
                tos = data[0];
            }
        }
    }
    unsigned char src[16] = {0};
    long sport = 0;
    if (v6 && msg.msg_namelen >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&from;
        memcpy(src, &a->sin6_addr, 16);
        sport = ntohs(a->sin6_port);
    } else if (!v6 && msg.msg_namelen >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in *a = (struct sockaddr_in *)&from;
        memcpy(src, &a->sin_addr, 4);
        sport = ntohs(a->sin_port);
    }
    if (size <= 0 || size >= n)
        size = 0;
    Py_ssize_t alen = v6 ? 16 : 4;
    PyObject *dgram = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 6);
    PyObject *items[6] = {
        PyBytes_FromStringAndSize((char *)src, alen),
        PyLong_FromLong(sport),
        PyBytes_FromStringAndSize((char *)dst, alen),
        PyLong_FromLong(tos),
        PyBytes_FromStringAndSize(size ? NULL : view.buf, size ? 0 : n),
        PyFloat_FromDouble(stamp),
    };
    PyBuffer_Release(&view);
    int failed = dgram == NULL;
    for (int i = 0; i < 6; i++)
        failed |= items[i] == NULL;
    if (failed) {
        Py_XDECREF(dgram);
        for (int i = 0; i < 6; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < 6; i++)
        PyTuple_SET_ITEM(dgram, i, items[i]);
    PyObject *result = PyTuple_New(3);
    PyObject *count = PyLong_FromSsize_t(n), *seg = PyLong_FromLong(size);
    if (result == NULL || count == NULL || seg == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(count);
        Py_XDECREF(seg);
        Py_DECREF(dgram);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, dgram);
    PyTuple_SET_ITEM(result, 1, count);
    PyTuple_SET_ITEM(result, 2, seg);
    return result;
}

PyDoc_STRVAR(send_udp_doc,
"send_udp(fd, payload, control, address, /) -> int\n\n"
"One sendmsg of `payload` on socket `fd` with the packed control messages `control` (see `control`) to\n"
"the packed socket address `address` (struct sockaddr_in or sockaddr_in6): 0 when sent, else the errno\n"
"(EAGAIN: the socket buffer is full). EINTR is retried, as socket.sendmsg does.");

static PyObject *
send_udp(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    if (fd_and_flag(args, nargs, 4, "send_udp", &fd, NULL) < 0)
        return NULL;
    Py_buffer payload, control, address;
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &control, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    if (PyObject_GetBuffer(args[3], &address, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&payload);
        PyBuffer_Release(&control);
        return NULL;
    }
    struct iovec iov = {payload.buf, (size_t)payload.len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = address.len ? address.buf : NULL;
    msg.msg_namelen = (socklen_t)address.len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.len ? control.buf : NULL;
    msg.msg_controllen = (size_t)control.len;
    int error = 0;
    for (;;) {
        ssize_t sent;
        Py_BEGIN_ALLOW_THREADS
        sent = sendmsg(fd, &msg, 0);
        Py_END_ALLOW_THREADS
        if (sent >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                error = -1;
                break;
            }
            continue;
        }
        error = errno == EWOULDBLOCK ? EAGAIN : errno;
        break;
    }
    PyBuffer_Release(&payload);
    PyBuffer_Release(&control);
    PyBuffer_Release(&address);
    if (error < 0)
        return NULL;
    return PyLong_FromLong(error);
}

PyDoc_STRVAR(control_doc,
"control(cmsgs, /) -> bytes\n\n"
"The (level, type, data) control messages as one ancillary buffer for sendmsg, as socket.sendmsg\n"
"packs them (struct cmsghdr and data, each CMSG_SPACE long).");

static PyObject *
control(PyObject *self, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "control: cmsgs must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3 || !PyBytes_Check(PyTuple_GET_ITEM(item, 2))) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "control: each cmsg is (level, type, bytes)");
            return NULL;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 2));
        if (len > 65536) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "control: cmsg data too long");
            return NULL;
        }
        total += CMSG_SPACE(len);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    char *at = PyBytes_AS_STRING(out);
    memset(at, 0, total);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        int level = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        int type = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            Py_DECREF(out);
            return NULL;
        }
        PyObject *data = PyTuple_GET_ITEM(item, 2);
        Py_ssize_t len = PyBytes_GET_SIZE(data);
        struct cmsghdr head;
        memset(&head, 0, sizeof head);
        head.cmsg_len = CMSG_LEN(len);
        head.cmsg_level = level;
        head.cmsg_type = type;
        memcpy(at, &head, sizeof head);
        memcpy(at + CMSG_LEN(0), PyBytes_AS_STRING(data), len);
        at += CMSG_SPACE(len);
    }
    Py_DECREF(seq);
    return out;
}

PyDoc_STRVAR(tun_read_doc,
"tun_read(fd, buffer, vnet, /) -> bytes | tuple[bytes, bytes] | int | None\n\n"
"One read from TUN queue `fd` into `buffer`: the packet (bytes) when `vnet` is false or its virtio-net\n"
"header is all zero (the header cut off); (header, packet) for another header; the count of bytes read\n"
"when it is shorter than a header; None when nothing is queued. Other errors raise OSError as os.read\n"
"does; EINTR is retried.");

static PyObject *
tun_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, vnet;
    if (fd_and_flag(args, nargs, 3, "tun_read", &fd, &vnet) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    ssize_t n;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        n = read(fd, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
        if (n >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                PyBuffer_Release(&view);
                return NULL;
            }
            continue;
        }
        PyBuffer_Release(&view);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    const char *at = view.buf;
    PyObject *result;
    if (!vnet) {
        result = PyBytes_FromStringAndSize(at, n);
    } else {
        static const char zero[VNET_HDR_LEN];
        if (n < VNET_HDR_LEN)
            result = PyLong_FromSsize_t(n);
        else if (memcmp(at, zero, VNET_HDR_LEN) == 0)
            result = PyBytes_FromStringAndSize(at + VNET_HDR_LEN, n - VNET_HDR_LEN);
        else
            result = Py_BuildValue("(y#y#)", at, (Py_ssize_t)VNET_HDR_LEN, at + VNET_HDR_LEN,
                                   (Py_ssize_t)(n - VNET_HDR_LEN));
    }
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(tun_write_doc,
"tun_write(fd, packet, vnet, /) -> int\n\n"
"Write `packet` into TUN queue `fd`, behind an all-zero virtio-net header when `vnet` (one writev):\n"
"the count of bytes written (the header's included). Errors raise OSError as os.write / os.writev\n"
"do; EINTR is retried.");

static PyObject *
tun_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int fd, vnet;
    if (fd_and_flag(args, nargs, 3, "tun_write", &fd, &vnet) < 0)
        return NULL;
    Py_buffer packet;
    if (PyObject_GetBuffer(args[1], &packet, PyBUF_SIMPLE) < 0)
        return NULL;
    static char zero[VNET_HDR_LEN];
    struct iovec iov[2] = {{zero, VNET_HDR_LEN}, {packet.buf, (size_t)packet.len}};
    ssize_t n;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        n = vnet ? writev(fd, iov, 2) : write(fd, packet.buf, (size_t)packet.len);
        Py_END_ALLOW_THREADS
        if (n >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                PyBuffer_Release(&packet);
                return NULL;
            }
            continue;
        }
        PyBuffer_Release(&packet);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyBuffer_Release(&packet);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"recv_udp", (PyCFunction)(void (*)(void))recv_udp, METH_FASTCALL, recv_udp_doc},
    {"send_udp", (PyCFunction)(void (*)(void))send_udp, METH_FASTCALL, send_udp_doc},
    {"control", control, METH_O, control_doc},
    {"tun_read", (PyCFunction)(void (*)(void))tun_read, METH_FASTCALL, tun_read_doc},
    {"tun_write", (PyCFunction)(void (*)(void))tun_write, METH_FASTCALL, tun_write_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pktio", "The data plane's per-packet system calls in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__pktio(void)
{
    return PyModule_Create(&module);
}
