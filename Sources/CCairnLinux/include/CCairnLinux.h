// Linux-only C kept in one prefixed shim (as swift-nio's CNIOLinux does).
#ifndef CAIRN_CCAIRNLINUX_H
#define CAIRN_CCAIRNLINUX_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc`
/// (pass 0 to start). Uses the SSE4.2 `crc32` instruction where the CPU has it,
/// a slicing-by-8 table otherwise. Standard check value: crc32c("123456789") = 0xE3069283.
uint32_t cairn_crc32c(uint32_t crc, const void *buf, size_t len);

/// The CRC-32C of each `block_bytes` block of `buf` (the last may be shorter) into `out`, which
/// holds ceil(len / block_bytes) values. Same values as cairn_crc32c(0, block, n) per block,
/// about 3x faster on hardware (three blocks at a time).
void cairn_crc32c_blocks(const void *buf, size_t len, size_t block_bytes, uint32_t *out);

/// 1 when cairn_crc32c runs on hardware, 0 on the table fallback.
int cairn_crc32c_is_hardware(void);

/// statvfs(3) of the file system holding `path`, in bytes: total size and what an
/// unprivileged writer can still use (f_bavail). Returns 0, or -1 with errno set.
/// (Swift cannot call glibc's statvfs: the function shares its name with its struct.)
int cairn_statvfs(const char *path, uint64_t *capacity_bytes, uint64_t *available_bytes);

/// Sets the calling thread's real, effective and saved IDs through the raw setgroups,
/// setresgid and setresuid system calls. glibc's wrappers of these calls change every
/// thread of the process (POSIX semantics); the raw calls change only the caller, which
/// lets a test thread act as another user while the rest of the process stays root.
/// The saved uid stays 0 so that `cairn_thread_become_root` can switch back.
/// Returns 0, or -1 with errno set. Linux only; the caller must be root.
int cairn_thread_set_credentials(uint32_t uid, uint32_t gid, const uint32_t *groups, size_t group_count);

/// Makes the calling thread root again (uid 0, gid 0, no supplementary groups) after
/// `cairn_thread_set_credentials`. Returns 0, or -1 with errno set.
int cairn_thread_become_root(void);

/// Gives the calling thread its own root, working directory and umask (unshare(CLONE_FS)),
/// then chroot(2)s it into `path`, changes to "/" and sets `mask` as its umask. Nothing else
/// in the process is affected. Returns 0, or -1 with errno set. The caller must be root.
int cairn_thread_chroot(const char *path, uint32_t mask);

/// renameat2(2) with its flags (RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2), through the
/// raw system call. Returns 0, or -1 with errno set.
int cairn_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);

/// open(2) of an existing file for writing with O_DIRECT | O_DSYNC: each write goes to the device,
/// bypassing the page cache, and is durable when it returns (its buffer, offset and length must be
/// aligned to the device's block size). Returns the descriptor, or -1 with errno set (EINVAL where the
/// file system does not support O_DIRECT, e.g. tmpfs).
int cairn_open_direct_dsync(const char *path);

/// open(2) creating a new file (O_CREAT | O_EXCL | O_TRUNC) for writing with O_DIRECT: writes
/// bypass the page cache (buffer, offset and length aligned to the device's block size) and
/// are made durable by a later fdatasync. Returns the descriptor, or -1 with errno set (EINVAL
/// where the file system does not support O_DIRECT, e.g. tmpfs; the file may then exist).
int cairn_create_direct(const char *path, unsigned int mode);

/// preadv2(2) with RWF_NOWAIT: reads only what the page cache holds, never waiting for the
/// disk. -1 with errno EAGAIN when the first byte is not cached (EOPNOTSUPP where the file
/// system cannot); a short count when only the start of the range is.
long cairn_pread_nowait(int fd, void *buf, size_t count, long long offset);

/// lsetxattr(2), lgetxattr(2), llistxattr(2), lremovexattr(2): the <sys/xattr.h> calls,
/// which Swift's Glibc module does not import. Same results and errno as the calls.
int cairn_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags);
long cairn_lgetxattr(const char *path, const char *name, void *value, size_t size);
long cairn_llistxattr(const char *path, char *list, size_t size);
int cairn_lremovexattr(const char *path, const char *name);

/// setxattr(2), getxattr(2), listxattr(2), removexattr(2): as the l* calls above, but following
/// a final symbolic link (needed on /proc/self/fd/N paths of O_PATH descriptors).
int cairn_setxattr(const char *path, const char *name, const void *value, size_t size, int flags);
long cairn_getxattr(const char *path, const char *name, void *value, size_t size);
long cairn_listxattr(const char *path, char *list, size_t size);
int cairn_removexattr(const char *path, const char *name);

/// mknod(2): Swift imports it, but `makedev` is a macro; this takes major and minor.
int cairn_mknod(const char *path, uint32_t mode, uint32_t major, uint32_t minor);

/// Keeps freed buffers of up to 32 MiB in malloc's heap (mallopt M_MMAP_THRESHOLD 32 MiB,
/// M_TRIM_THRESHOLD 256 MiB) instead of giving each back to the kernel: otherwise every chunk
/// buffer (4 MiB) and network receive buffer (1 MiB) is a fresh mapping whose pages fault in
/// and are zeroed on first touch, about a tenth of a chunk reader's CPU. Call once at start.
/// Returns 0, or -1 if malloc refused a setting.
int cairn_malloc_keep_large_buffers(void);

#endif
