// libfuse3's low-level (inode-based) API, wrapped once by the FuseKernel module.
// System library targets take no cSettings, so the API version is fixed here: 3.12, where
// fuse_session_loop_mt is a function Swift can import (with 3.5 it is a function-like macro).
#ifndef CAIRN_CFUSE_SHIM_H
#define CAIRN_CFUSE_SHIM_H
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/statvfs.h>
// umount2(2): FuseMount unmounts to wake the session loop on shutdown.
#include <sys/mount.h>
#endif
