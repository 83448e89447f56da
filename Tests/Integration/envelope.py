"""The wdmfs ioctl envelope from Python (fcntl), as the README shows it.

    request = _IOC(_IOC_READ | _IOC_WRITE, 'W', 1, 24 + capacity)   (nr 1: envelope version 2)
    header  = <code u32, input_length u32, output_length u32, status u32, information u64>
    output  at data[0], or for METHOD_IN_DIRECT / METHOD_OUT_DIRECT at data[align8(input_length)]
"""
import fcntl
import struct

HEADER = struct.Struct("<IIIIQ")
MAX_TOTAL = 16383


def request(total_size, nr=1, typ=ord("W"), direction=3):
    """_IOC(dir, type, nr, size) as Linux defines it on x86_64 and arm64."""
    return (direction << 30) | (total_size << 16) | (typ << 8) | nr


def call(fd, code, data=b"", out_len=0):
    """One DeviceIoControl. Returns (status, information, output bytes)."""
    at = output_offset(code, len(data))
    capacity = (at + out_len if out_len else len(data)) if code & 3 in (1, 2) else max(len(data), out_len)
    buf = bytearray(HEADER.pack(code, len(data), out_len, 0, 0) + data.ljust(capacity, b"\0"))
    fcntl.ioctl(fd, request(len(buf)), buf)  # mutates buf in place
    _, _, _, status, info = HEADER.unpack_from(buf)
    n = 0 if status >> 30 == 3 else min(info, out_len)
    return status, info, bytes(buf[HEADER.size + at:HEADER.size + at + n])


def output_offset(code, input_length):
    """Where the output starts in the data area: after the input (8-byte aligned)
    for the direct methods, whose input and output are separate buffers."""
    return (input_length + 7) & ~7 if code & 3 in (1, 2) else 0


STATUS_SUCCESS = 0x00000000
STATUS_BUFFER_OVERFLOW = 0x80000005
STATUS_INVALID_DEVICE_REQUEST = 0xC0000010
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_BUFFER_TOO_SMALL = 0xC0000023

IOCTL_DISK_GET_DRIVE_GEOMETRY = 0x00070000
IOCTL_DISK_GET_DRIVE_GEOMETRY_EX = 0x000700A0
IOCTL_DISK_GET_LENGTH_INFO = 0x0007405C
IOCTL_DEMO_UPPER = {"buffered": 0x00222000, "in_direct": 0x00222005, "out_direct": 0x0022200A, "neither": 0x0022200F}
IOCTL_DEMO_QUERY_COUNTS = 0x00226040
IOCTL_DEMO_RESET_COUNTS = 0x0022A044
