// See include/cwdmsys.h.
#define _GNU_SOURCE
#include "cwdmsys.h"
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/ioctl.h>

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
