/* Error plumbing and the small informational entry points. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "internal.h"

int bc__fail(bc_err *e, int rc, int sys_errno, const char *fmt, ...)
{
    if (e != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->sys_errno = sys_errno;
    }
    return rc;
}

/* Named threads show as such in `top -H`, py-spy and /proc/PID/task/N/comm, where a user looking
 * at a busy create (and a test counting the pool's threads) can tell them from the interpreter's. */
void bc__name_thread(const char *name)
{
#ifdef __linux__
    (void)prctl(PR_SET_NAME, name, 0, 0, 0);
#else
    (void)name;
#endif
}

int bc__grow(void **p, size_t *cap, size_t need, size_t unit, size_t first)
{
    if (need <= *cap)
        return BC_OK;
    size_t cap2 = *cap ? *cap : first;
    while (cap2 < need)
        cap2 *= 2;
    void *q = realloc(*p, cap2 * unit);
    if (q == NULL)
        return BC_ENOMEM;
    *p = q;
    *cap = cap2;
    return BC_OK;
}

int bc__online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void bc__copy_err(const bc_err *e, char *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return;
    snprintf(buf, len, "%s", e->msg);
}

int bc_abi_version(void)
{
    return BC_ABI_VERSION;
}

const char *bc_strerror(int rc)
{
    switch (rc) {
    case BC_OK: return "ok";
    case BC_ENOMEM: return "out of memory";
    case BC_EIO: return "input/output error";
    case BC_EINVAL: return "invalid argument";
    case BC_ESTATE: return "the writer cannot be used any more";
    case BC_ECANNOTGROW: return "a new prefix is longer than the old one";
    case BC_EMISMATCH: return "the file does not hold the expected bytes";
    case BC_EDEFLATE: return "deflate error";
    case BC_ETHREAD: return "cannot start a worker thread";
    case BC_EDATA: return "damaged compressed data";
    case BC_ETRUNC: return "truncated compressed data";
    case BC_ECANCELED: return "cancelled";
    default: return "unknown error";
    }
}

int bc_free(void *p)
{
    free(p);
    return BC_OK;
}
