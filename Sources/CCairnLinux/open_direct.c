#define _GNU_SOURCE
#include <fcntl.h>
#include "CCairnLinux.h"

int cairn_open_direct_dsync(const char *path) {
    return open(path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
}

int cairn_create_direct(const char *path, unsigned int mode) {
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_DIRECT | O_CLOEXEC, (mode_t)mode);
}

#include <sys/uio.h>

long cairn_pread_nowait(int fd, void *buf, size_t count, long long offset) {
    struct iovec iov = { .iov_base = buf, .iov_len = count };
    return (long)preadv2(fd, &iov, 1, (off_t)offset, RWF_NOWAIT);
}
