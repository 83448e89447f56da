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

#endif
