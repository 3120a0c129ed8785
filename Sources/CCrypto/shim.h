// OpenSSL libcrypto (EVP digests), wrapped once by CairnCore/SHA256.swift.
#ifndef CAIRN_CCRYPTO_SHIM_H
#define CAIRN_CCRYPTO_SHIM_H
#include <openssl/evp.h>
#include <openssl/err.h>
#endif
