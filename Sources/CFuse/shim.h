/*
 * CFuse: libfuse3's low-level API as Swift sees it.
 *
 * fuse_lowlevel.h needs FUSE_USE_VERSION before it is included, and some of
 * what wdmfs uses is a macro, a versioned symbol or a bitfield, none of which
 * Swift imports. Each shim below exists for one of those reasons; all carry
 * the cfuse_ prefix.
 */
#ifndef CFUSE_SHIM_H
#define CFUSE_SHIM_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* fuse_session_loop_mt is a macro over a versioned symbol. */
static inline int cfuse_session_loop_mt(struct fuse_session *se, unsigned max_threads) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg) return -1;
    fuse_loop_cfg_set_max_threads(cfg, max_threads);
    int r = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return r;
}

/* struct fuse_file_info's flags are bitfields. */
static inline void cfuse_fi_set_direct_io(struct fuse_file_info *fi) {
    fi->direct_io = 1;
    fi->keep_cache = 0;
    fi->nonseekable = 0;
}

/* FUSE_ARGS_INIT is a macro; the session takes argv as given. */
static inline struct fuse_args cfuse_args(int argc, char **argv) {
    struct fuse_args a = FUSE_ARGS_INIT(argc, argv);
    return a;
}

/* _IOC is a macro: the request number of the wdmfs envelope for a capacity. */
static inline unsigned long cfuse_envelope_request(unsigned int total_size) {
    return _IOC(_IOC_READ | _IOC_WRITE, 'W', 0, total_size);
}

/* ioctl(2) is variadic. */
static inline int cfuse_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

/* errno is a macro. */
static inline int cfuse_errno(void) { return errno; }

/*
 * Starts the daemon in the background: a new session (so a terminal's Ctrl-C
 * does not reach it), stdin and stdout on /dev/null, stderr on `stderr_fd`,
 * and no other inherited descriptor (a test harness's pipes would otherwise
 * stay open for the daemon's lifetime). posix_spawn's closefrom action is a
 * GNU extension Swift does not see. Returns the pid, or -1 with errno set.
 */
#include <fcntl.h>
#include <spawn.h>
extern char **environ;
#ifndef POSIX_SPAWN_SETSID
#define POSIX_SPAWN_SETSID 0x80 /* glibc's value; declared only under _GNU_SOURCE */
#endif
static inline int cfuse_spawn_daemon(const char *path, char *const argv[], int stderr_fd) {
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

#endif
