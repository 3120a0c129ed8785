// Per-thread credentials and a few file system calls Swift cannot reach directly.
#define _GNU_SOURCE
#include "CCairnLinux.h"
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

int cairn_thread_set_credentials(uint32_t uid, uint32_t gid, const uint32_t *groups, size_t group_count) {
    // Order matters: groups and gid need CAP_SETGID, which is gone once the euid is not 0.
    if (syscall(SYS_setgroups, group_count, (const gid_t *)groups) != 0) return -1;
    if (syscall(SYS_setresgid, gid, gid, 0) != 0) return -1;
    if (syscall(SYS_setresuid, uid, uid, 0) != 0) return -1;
    return 0;
}

int cairn_thread_become_root(void) {
    if (syscall(SYS_setresuid, 0, 0, 0) != 0) return -1;
    if (syscall(SYS_setresgid, 0, 0, 0) != 0) return -1;
    if (syscall(SYS_setgroups, 0, (const gid_t *)0) != 0) return -1;
    return 0;
}

int cairn_thread_chroot(const char *path, uint32_t mask) {
    if (unshare(CLONE_FS) != 0) return -1;
    if (chroot(path) != 0) return -1;
    if (chdir("/") != 0) return -1;
    umask((mode_t)mask);
    return 0;
}

int cairn_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

int cairn_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    return lsetxattr(path, name, value, size, flags);
}

long cairn_lgetxattr(const char *path, const char *name, void *value, size_t size) {
    return (long)lgetxattr(path, name, value, size);
}

long cairn_llistxattr(const char *path, char *list, size_t size) {
    return (long)llistxattr(path, list, size);
}

int cairn_lremovexattr(const char *path, const char *name) {
    return lremovexattr(path, name);
}

int cairn_setxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    return setxattr(path, name, value, size, flags);
}

long cairn_getxattr(const char *path, const char *name, void *value, size_t size) {
    return (long)getxattr(path, name, value, size);
}

long cairn_listxattr(const char *path, char *list, size_t size) {
    return (long)listxattr(path, list, size);
}

int cairn_removexattr(const char *path, const char *name) {
    return removexattr(path, name);
}

int cairn_mknod(const char *path, uint32_t mode, uint32_t major, uint32_t minor) {
    return mknod(path, (mode_t)mode, makedev(major, minor));
}
