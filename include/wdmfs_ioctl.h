/*
 * wdmfs_ioctl.h: the wdmfs ioctl envelope for C callers.
 *
 * Every IOCTL to a wdmfs device file travels in one envelope: a 24-byte
 * little-endian header followed by `capacity` bytes of data. The request
 * number encodes the total size. ioctl() returns 0 whenever the IRP ran; the
 * NTSTATUS and IoStatus.Information come back in the header. A malformed
 * envelope fails with EINVAL before any driver sees it; a request number that
 * is not an envelope fails with ENOTTY.
 *
 * Version 2 (_IOC_NR 1). The output starts at data[0] for METHOD_BUFFERED and
 * METHOD_NEITHER, and at data[WDMFS_IOCTL_OUTPUT_OFFSET(input_length)] for
 * METHOD_IN_DIRECT and METHOD_OUT_DIRECT, whose input and output are separate
 * buffers on Windows (so capacity = that offset + output_length). Version 1
 * (_IOC_NR 0) put every output at data[0] and is no longer accepted.
 *
 *   struct { struct wdmfs_ioctl_header h; unsigned char data[64]; } e = {0};
 *   e.h.code = 0x0007405C;            // IOCTL_DISK_GET_LENGTH_INFO
 *   e.h.output_length = 8;
 *   ioctl(fd, WDMFS_IOCTL(64), &e);   // then look at e.h.status
 */
#ifndef WDMFS_IOCTL_H
#define WDMFS_IOCTL_H

#include <stdint.h>
#include <sys/ioctl.h>

struct wdmfs_ioctl_header {
    uint32_t code;          /* in: the CTL_CODE */
    uint32_t input_length;  /* in: bytes of input at data[0] (<= capacity) */
    uint32_t output_length; /* in: bytes of output wanted (<= capacity) */
    uint32_t status;        /* out: the NTSTATUS */
    uint64_t information;   /* out: IoStatus.Information (bytes of output for success and warnings) */
};

#define WDMFS_IOCTL_HEADER_SIZE 24
#define WDMFS_IOCTL_MAX_CAPACITY (16383 - WDMFS_IOCTL_HEADER_SIZE)

/* The request number for an envelope with `capacity` bytes of data. */
#define WDMFS_IOCTL_VERSION 2
#define WDMFS_IOCTL(capacity) _IOC(_IOC_READ | _IOC_WRITE, 'W', 1, WDMFS_IOCTL_HEADER_SIZE + (capacity))

/* Where a direct method's output starts in data[]. */
#define WDMFS_IOCTL_OUTPUT_OFFSET(input_length) (((input_length) + 7u) & ~7u)

/* NT_SUCCESS(status) */
#define WDMFS_NT_SUCCESS(status) ((int32_t)(status) >= 0)

#endif
