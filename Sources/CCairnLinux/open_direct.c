#define _GNU_SOURCE
#include <fcntl.h>
#include "CCairnLinux.h"

int cairn_open_direct_dsync(const char *path) {
    return open(path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
}
