// See include/cwdmsys.h.
#define _GNU_SOURCE
#include "cwdmsys.h"
#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <spawn.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

int cwdmsys_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

int cwdmsys_errno(void) { return errno; }

pid_t cwdmsys_spawn_daemon(const char *path, char *const argv[], int stderr_fd) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    pid_t pid = -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, stderr_fd, 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    int r = posix_spawn(&pid, path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r != 0) { errno = r; return -1; }
    return pid;
}

static const int chained[] = { SIGHUP, SIGINT, SIGTERM };
static struct sigaction previous[3];
static volatile int chained_fd = -1;

static void chained_handler(int sig) {
    int saved = errno;
    for (int i = 0; i < 3; i++) {
        if (chained[i] != sig) continue;
        void (*h)(int) = previous[i].sa_handler;
        if (h != SIG_IGN && h != SIG_DFL) h(sig);
    }
    int fd = chained_fd;
    if (fd >= 0) { uint64_t one = 1; ssize_t r = write(fd, &one, sizeof one); (void)r; }
    errno = saved;
}

int cwdmsys_chain_signals_to_eventfd(int fd) {
    chained_fd = fd;
    for (int i = 0; i < 3; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = chained_handler;
        sigemptyset(&sa.sa_mask);
        if (sigaction(chained[i], &sa, &previous[i]) != 0) return -1;
    }
    return 0;
}

void cwdmsys_unchain_signals(void) {
    for (int i = 0; i < 3; i++) sigaction(chained[i], &previous[i], NULL);
    chained_fd = -1;
}

int cwdmsys_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int cwdmsys_pidfd_kill(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }

int cwdmsys_memfd(const char *name, unsigned long size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    /* Sealed at its size: a process it is shared with cannot shrink it under the
       daemon (whose next touch of a page past the end would be SIGBUS). */
    if (ftruncate(fd, (off_t)size) != 0
        || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        int e = errno; close(fd); errno = e; return -1;
    }
    return fd;
}

int cwdmsys_send_fds(int socket, const int *fds, int count) {
    if (count < 1 || count > 8) { errno = EINVAL; return -1; }
    char byte = 'F';
    struct iovec iov = { &byte, 1 };
    union { char buf[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = CMSG_SPACE(count * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(count * sizeof(int));
    memcpy(CMSG_DATA(c), fds, count * sizeof(int));
    ssize_t n;
    do n = sendmsg(socket, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

int cwdmsys_receive_fds(int socket, int *fds, int count) {
    if (count < 1 || count > 8) { errno = EINVAL; return -1; }
    char byte;
    struct iovec iov = { &byte, 1 };
    union { char buf[CMSG_SPACE(8 * sizeof(int))]; struct cmsghdr align; } u;
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    ssize_t n;
    do n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
    if (n != 1) return -1;
    int got = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (got < count) fds[got++] = fd; else close(fd);
        }
    }
    return got;
}
