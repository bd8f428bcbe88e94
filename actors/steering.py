"""Which process of a node gets a datagram: a classic BPF program for SO_REUSEPORT.

A node with a challenge front (``actors.front``) shares its UDP port with
it. The kernel runs the program below on every datagram that arrives on
the port and hands the datagram to the socket of the returned index in
the port's SO_REUSEPORT group: 0 is the node (bound first), 1 the front.

The program gives the front what it can answer alone, a REGISTER without
credentials, and the node everything else, so neither passes the other's
datagrams on. It looks at the payload only: the datagram must start with
``REGISTER `` and hold no line starting ``Authorization`` within its first
``SCAN`` bytes. A guess the wrong way costs time, never an answer: the node
answers every request itself, and the front passes on whatever it does not
answer. While the front is not running, index 1 does not exist and the
kernel falls back to its hash, that is to the node alone.
"""

import ctypes
import errno
import socket as _socket
import struct

#: Linux's SO_ATTACH_REUSEPORT_CBPF, missing from Python's socket module
SO_ATTACH_REUSEPORT_CBPF = 51
NODE, FRONT = 0, 1
#: how far into a datagram the program looks for ``\r\nAuthorization``
#: (less where the kernel's optmem_max cannot hold that long a program)
SCAN = 1536
MIN_SCAN = 256

# Classic BPF opcodes (linux/filter.h).
_LD_W_ABS = 0x20
_LD_B_ABS = 0x30
_LD_W_LEN = 0x80
_JEQ_K = 0x15
_JGE_K = 0x35
_JA = 0x05
_RET_K = 0x06

#: Whatever its alignment, ``\r\nAuthor`` holds one of these words at an
#: offset that is a multiple of 4: one load per 4 bytes finds it. (The
#: kernel turns each load into about 14 instructions, and the program's
#: size is bounded by optmem_max, 20 kB on older kernels.)
_WORDS = tuple(int.from_bytes(w, "big") for w in (b"\r\nAu", b"\nAut", b"Auth", b"utho"))
#: words per block: a block shares one length check and one ``return NODE``
#: (classic BPF jumps forward only, by at most 255 instructions)
_BLOCK = 16


def _insn(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple:
    return (code, jt, jf, k)


def challenge_program(scan: int = SCAN) -> list[tuple]:
    """The program's instructions, ``(code, jt, jf, k)`` each, looking for
    Authorization in the first ``scan`` bytes."""
    prog = [
        _insn(_LD_W_LEN),
        _insn(_JGE_K, 9, jt=1),  # shorter than "REGISTER ": the node's
        _insn(_RET_K, NODE),
        _insn(_LD_W_ABS, 0),
        _insn(_JEQ_K, int.from_bytes(b"REGI", "big"), jt=1),
        _insn(_RET_K, NODE),
        _insn(_LD_W_ABS, 4),
        _insn(_JEQ_K, int.from_bytes(b"STER", "big"), jt=1),
        _insn(_RET_K, NODE),
        _insn(_LD_B_ABS, 8),
        _insn(_JEQ_K, ord(" "), jt=1),
        _insn(_RET_K, NODE),
    ]
    per_word = 1 + len(_WORDS)
    for first in range(8, scan, 4 * _BLOCK):
        offsets = range(first, min(first + 4 * _BLOCK, scan), 4)
        # A load past the end would end the program with 0 (the node): stop
        # looking where the datagram ends, and leave the rest to the front.
        prog += [_insn(_LD_W_LEN), _insn(_JGE_K, offsets[-1] + 4, jt=1), _insn(_RET_K, FRONT)]
        for i, k in enumerate(offsets):
            prog.append(_insn(_LD_W_ABS, k))
            for j, word in enumerate(_WORDS):
                # from this jeq to the block's ``return NODE``
                prog.append(_insn(_JEQ_K, word, jt=per_word * (len(offsets) - i) - j - 1))
        prog += [_insn(_JA, 1), _insn(_RET_K, NODE)]
    prog.append(_insn(_RET_K, FRONT))
    return prog


def steer_challenges(sock) -> int:
    """Attach ``challenge_program`` to ``sock``'s SO_REUSEPORT group (Linux);
    return how many bytes of each datagram it looks at."""
    scan = SCAN
    while True:
        code = b"".join(struct.pack("HBBI", *insn) for insn in challenge_program(scan))
        program = ctypes.create_string_buffer(code)
        fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(program))
        try:
            sock.setsockopt(_socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
            return scan
        except OSError as e:
            # ENOMEM: the program is larger than net.core.optmem_max allows.
            if e.errno != errno.ENOMEM or scan <= MIN_SCAN:
                raise
            scan //= 2
