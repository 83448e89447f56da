/*
 * CWDMSys: the few system calls the wdmfs client and tool need that Swift
 * cannot call directly (a variadic ioctl, posix_spawn's GNU closefrom action, a signal handler,
 * memfd_create and SCM_RIGHTS for the driver hosts' shared memory).
 * No libfuse here: a client that sends IOCTLs does not link it.
 */
#ifndef CWDMSYS_H
#define CWDMSYS_H

#include <sys/eventfd.h>
#include <sys/types.h>

/* ioctl(2) is variadic: one pointer argument. */
int cwdmsys_ioctl_ptr(int fd, unsigned long request, void *arg);

/* errno is a macro. */
int cwdmsys_errno(void);

/*
 * Starts `path` in the background: a new session (so a terminal's Ctrl-C does
 * not reach it), stdin and stdout on /dev/null, stderr on `stderr_fd`, and no
 * other inherited descriptor (a test harness's pipes would otherwise stay open
 * for the daemon's lifetime). Returns the pid, or -1 with errno set.
 */
pid_t cwdmsys_spawn_daemon(const char *path, char *const argv[], int stderr_fd);

/*
 * A signal handler runs in signal context: only async-signal-safe calls, which
 * Swift cannot promise. After `sigs` have handlers (libfuse's), chains one to
 * each that calls the previous handler, then writes 1 to the eventfd `fd`
 * (how the daemon learns at once that a signal ended its session). 0 or -1.
 */
int cwdmsys_chain_signals_to_eventfd(int fd);
/* pidfd_open(2) has no glibc wrapper before 2.36 and syscall(2) is variadic:
   a descriptor that polls readable when `pid` exits (before it is reaped). */
int cwdmsys_pidfd_open(pid_t pid);

/* memfd_create(2) is not in Swift's Glibc module: anonymous shared memory of
   `size` bytes (sparse: pages exist once touched), close-on-exec, sealed at that
   size (no process it is shared with can shrink or grow it). -1 + errno. */
int cwdmsys_memfd(const char *name, unsigned long size);

/* SCM_RIGHTS needs the CMSG macros: sends `count` descriptors (at most 8) with
   one byte over a Unix socket. 0, or -1 + errno. */
int cwdmsys_send_fds(int socket, const int *fds, int count);

/* Receives up to `count` descriptors (close-on-exec) sent by cwdmsys_send_fds:
   how many came, or -1 (error or end of file). */
int cwdmsys_receive_fds(int socket, int *fds, int count);

/* pidfd_send_signal(2), no glibc wrapper before 2.36: signals the process a
   pidfd names (never another process that reused its pid). 0 or -1. */
int cwdmsys_pidfd_kill(int pidfd, int sig);

/* Puts the previous handlers back; the eventfd is no longer written. */
void cwdmsys_unchain_signals(void);

#endif
