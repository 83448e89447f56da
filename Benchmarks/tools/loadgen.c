/*
 * loadgen: the load the benchmark puts on a device file, timed in-process.
 *
 *   loadgen read  FILE BLOCK TOTAL THREADS   sequential reads; prints bytes/s
 *   loadgen write FILE BLOCK TOTAL THREADS   sequential writes; prints bytes/s
 *   loadgen ioctl FILE COUNT SIZE CODE       wdmfs envelopes of SIZE data bytes
 *                                            round trip; prints round trips/s
 * Each thread opens the file itself. Output: one number.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

struct job { const char *path; int write; size_t block; long long bytes; int failed; };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *transfer(void *arg) {
    struct job *j = arg;
    int fd = open(j->path, j->write ? O_WRONLY : O_RDONLY);
    char *buf = aligned_alloc(4096, (j->block + 4095) / 4096 * 4096);
    if (fd < 0 || !buf) { j->failed = 1; return NULL; }
    memset(buf, 1, j->block);
    for (long long left = j->bytes; left > 0;) {
        ssize_t n = j->write ? write(fd, buf, j->block) : read(fd, buf, j->block);
        if (n <= 0) { j->failed = 1; break; }
        left -= n;
    }
    close(fd);
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc >= 6 && (!strcmp(argv[1], "read") || !strcmp(argv[1], "write"))) {
        int threads = atoi(argv[5]);
        pthread_t tid[64];
        struct job jobs[64];
        if (threads < 1 || threads > 64) return 2;
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            jobs[i] = (struct job){ argv[2], !strcmp(argv[1], "write"), (size_t)atoll(argv[3]), atoll(argv[4]) / threads, 0 };
            pthread_create(&tid[i], NULL, transfer, &jobs[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
        double s = now() - t0;
        for (int i = 0; i < threads; i++) if (jobs[i].failed) { fprintf(stderr, "loadgen: I/O failed\n"); return 1; }
        printf("%.0f\n", atoll(argv[4]) / s);
        return 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "ioctl")) {
        long count = atol(argv[3]);
        size_t size = (size_t)atol(argv[4]);
        uint32_t code = (uint32_t)strtoul(argv[5], NULL, 0);
        int fd = open(argv[2], O_RDWR);
        unsigned char *env = calloc(1, 24 + size);
        if (fd < 0 || !env) { perror("loadgen"); return 1; }
        unsigned long req = _IOC(_IOC_READ | _IOC_WRITE, 'W', 1, 24 + size);
        double t0 = now();
        for (long i = 0; i < count; i++) {
            uint32_t hdr[3] = { code, (uint32_t)size, (uint32_t)size };
            memcpy(env, hdr, sizeof hdr);
            if (ioctl(fd, req, env) != 0) { perror("loadgen: ioctl"); return 1; }
        }
        double s = now() - t0;
        printf("%.0f\n", count / s);
        return 0;
    }
    fprintf(stderr, "usage: loadgen read|write FILE BLOCK TOTAL THREADS | loadgen ioctl FILE COUNT SIZE CODE\n");
    return 2;
}
