// Linux-only C kept in one prefixed shim (as swift-nio's CNIOLinux does).
#ifndef CAIRN_CCAIRNLINUX_H
#define CAIRN_CCAIRNLINUX_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc`
/// (pass 0 to start). Uses the SSE4.2 `crc32` instruction where the CPU has it,
/// a slicing-by-8 table otherwise. Standard check value: crc32c("123456789") = 0xE3069283.
uint32_t cairn_crc32c(uint32_t crc, const void *buf, size_t len);

/// 1 when cairn_crc32c runs on hardware, 0 on the table fallback.
int cairn_crc32c_is_hardware(void);

/// statvfs(3) of the file system holding `path`, in bytes: total size and what an
/// unprivileged writer can still use (f_bavail). Returns 0, or -1 with errno set.
/// (Swift cannot call glibc's statvfs: the function shares its name with its struct.)
int cairn_statvfs(const char *path, uint64_t *capacity_bytes, uint64_t *available_bytes);
#endif
