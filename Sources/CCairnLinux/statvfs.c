// statvfs(3), for FileSystemCalls.volumeStatus.
#include "CCairnLinux.h"
#include <sys/statvfs.h>

int cairn_statvfs(const char *path, uint64_t *capacity_bytes, uint64_t *available_bytes) {
    struct statvfs sv;
    if (statvfs(path, &sv) != 0) return -1;
    *capacity_bytes = (uint64_t)sv.f_blocks * sv.f_frsize;
    *available_bytes = (uint64_t)sv.f_bavail * sv.f_frsize;
    return 0;
}
