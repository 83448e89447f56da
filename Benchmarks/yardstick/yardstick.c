/*
 * yardstick: the C libfuse daemon wdmfs is measured against. A low-level
 * libfuse3 file system that does no driver work at all:
 *
 *   zero   a read is answered from a static buffer of zeros
 *   sink   a write is accepted and dropped
 *   echo   an ioctl is answered with its own input
 *
 * Every file is opened with direct_io, as wdmfs's device files are, and the
 * session runs libfuse's multi-threaded loop, as wdmfs does.
 *
 *   cc -O2 -o yardstick yardstick.c $(pkg-config --cflags --libs fuse3)
 *   ./yardstick MOUNTPOINT [-f]
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { INO_ROOT = 1, INO_ZERO, INO_SINK, INO_ECHO, INO_COUNT };
static const char *const file_names[INO_COUNT] = { [INO_ZERO] = "zero", [INO_SINK] = "sink", [INO_ECHO] = "echo" };
static char zero_block[4 << 20];

static int attr_of(fuse_ino_t ino, struct stat *st) {
    if (ino < INO_ROOT || ino >= INO_COUNT) return -1;
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_nlink = ino == INO_ROOT ? 2 : 1;
    st->st_mode = ino == INO_ROOT ? (S_IFDIR | 0755) : (S_IFREG | 0666);
    return 0;
}

static void ys_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    for (fuse_ino_t ino = INO_ZERO; parent == INO_ROOT && ino < INO_COUNT; ino++) {
        if (strcmp(name, file_names[ino]) != 0) continue;
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        e.ino = ino;
        e.entry_timeout = e.attr_timeout = 3600;
        attr_of(ino, &e.attr);
        fuse_reply_entry(req, &e);
        return;
    }
    fuse_reply_err(req, ENOENT);
}

static void ys_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct stat st;
    (void)fi;
    if (attr_of(ino, &st) != 0) fuse_reply_err(req, ENOENT);
    else fuse_reply_attr(req, &st, 3600);
}

static void ys_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if (ino == INO_ROOT) { fuse_reply_err(req, EISDIR); return; }
    fi->direct_io = 1;
    fuse_reply_open(req, fi);
}

static void ys_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)off; (void)fi;
    if (ino != INO_ZERO) { fuse_reply_buf(req, NULL, 0); return; }
    fuse_reply_buf(req, zero_block, size < sizeof zero_block ? size : sizeof zero_block);
}

static void ys_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)buf; (void)off; (void)fi;
    if (ino != INO_SINK) fuse_reply_err(req, EBADF);
    else fuse_reply_write(req, size);
}

static void ys_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
                     unsigned flags, const void *in, size_t in_size, size_t out_size) {
    (void)cmd; (void)arg; (void)fi; (void)flags;
    if (ino != INO_ECHO) { fuse_reply_err(req, ENOTTY); return; }
    fuse_reply_ioctl(req, 0, in, in_size < out_size ? in_size : out_size);
}

int main(int argc, char *argv[]) {
    static const struct fuse_lowlevel_ops ops = {
        .lookup = ys_lookup, .getattr = ys_getattr, .open = ys_open,
        .read = ys_read, .write = ys_write, .ioctl = ys_ioctl,
    };
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_cmdline_opts opts;
    if (fuse_parse_cmdline(&args, &opts) != 0 || opts.mountpoint == NULL) {
        fprintf(stderr, "usage: %s MOUNTPOINT [-f]\n", argv[0]);
        return 2;
    }
    struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    int rc = 1;
    if (se && fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, opts.mountpoint) == 0) {
            fuse_daemonize(opts.foreground);
            /* libfuse's default loop configuration, as a hand-written daemon would use. */
            struct fuse_loop_config *cfg = fuse_loop_cfg_create();
            rc = fuse_session_loop_mt(se, cfg) ? 1 : 0;
            fuse_loop_cfg_destroy(cfg);
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    if (se) fuse_session_destroy(se);
    free(opts.mountpoint);
    fuse_opt_free_args(&args);
    return rc;
}
