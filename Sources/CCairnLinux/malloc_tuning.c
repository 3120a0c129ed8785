#include "CCairnLinux.h"
#include <malloc.h>

int cairn_malloc_keep_large_buffers(void) {
    int ok = mallopt(M_MMAP_THRESHOLD, 32 << 20);
    ok &= mallopt(M_TRIM_THRESHOLD, 256 << 20);
    return ok == 1 ? 0 : -1;
}
