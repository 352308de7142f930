/* Writing the compressed output to its descriptor, through the page cache or around it.
 *
 * Why around it: on a VM whose host takes freed guest pages back (a balloon, free page
 * reporting), the first touch of every new page-cache page costs 3-11 us, so write() of a
 * fresh tarball ran at 90-285 MB/s and was a third of create's CPU, where O_DIRECT ran at
 * 1.4 GB/s. The tarball is linked into a local mirror and never read back by the process, so
 * the page cache keeps nothing worth keeping.
 *
 * How: output collects in one page-aligned buffer that is reused, and goes out in whole
 * blocks; the tail (less than a block) is written after O_DIRECT is cleared again, so the file
 * has exactly the bytes written, with no padding to cut off. A file system that refuses O_DIRECT
 * (when it is set, or at a write: EINVAL) gets buffered writes from that byte on; either way
 * the file holds the same bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "internal.h"

/* statfs f_type of the local disk file systems direct output is used on by default: others
 * may be network ones (NFS, Lustre, CIFS: O_DIRECT there makes every write a synchronous round
 * trip), FUSE or overlays (some refuse it) or memory (tmpfs: nothing to skip). */
static int local_disk_fs(long f_type)
{
    switch ((unsigned long)f_type & 0xffffffffUL) {
    case 0xEF53UL:     /* ext2, ext3, ext4 */
    case 0x58465342UL: /* xfs */
    case 0x9123683EUL: /* btrfs */
        return 1;
    default:
        return 0;
    }
}

int bc__out_open(bc_gz *g, int direct, bc_err *e)
{
    g->direct = 0;
    if (direct == BC_DIRECT_NEVER || g->fd < 0)
        return BC_OK;
    struct stat st;
    if (fstat(g->fd, &st) != 0 || !S_ISREG(st.st_mode))
        return BC_OK; /* O_DIRECT means something else on a pipe (packet mode) */
    if (direct == BC_DIRECT_LOCAL) {
        struct statfs fs;
        if (fstatfs(g->fd, &fs) != 0 || !local_disk_fs((long)fs.f_type))
            return BC_OK;
    }
    int fl = fcntl(g->fd, F_GETFL);
    if (fl < 0)
        return BC_OK;
    if (!(fl & O_DIRECT)) {
        if (fcntl(g->fd, F_SETFL, fl | O_DIRECT) != 0)
            return BC_OK; /* refused (EINVAL): buffered */
        g->direct_set = 1;
    }
    void *buf = NULL;
    if (posix_memalign(&buf, BC_DIRECT_ALIGN, BC_DIRECT_BUF) != 0) {
        bc__out_close(g);
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    }
    g->dbuf = buf;
    g->dbuf_len = 0;
    g->direct = 1;
    return BC_OK;
}

static int write_all(int fd, const unsigned char *p, size_t n, bc_err *e)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            return bc__fail(e, BC_EIO, err, "cannot write the compressed output: %s",
                            strerror(err));
        }
        p += k;
        n -= (size_t)k;
    }
    return BC_OK;
}

/* Back to buffered writes for good (O_DIRECT cleared, even when the caller had set it: the
 * bytes left are not whole blocks); what dbuf still holds is written first. */
static int leave_direct(bc_gz *g, bc_err *e)
{
    g->direct = 0;
    g->direct_set = 0;
    int fl = fcntl(g->fd, F_GETFL);
    if (fl < 0 || ((fl & O_DIRECT) && fcntl(g->fd, F_SETFL, fl & ~O_DIRECT) != 0)) {
        int err = errno;
        return bc__fail(e, BC_EIO, err, "cannot clear O_DIRECT on the output: %s",
                        strerror(err));
    }
    size_t n = g->dbuf_len;
    g->dbuf_len = 0;
    return write_all(g->fd, g->dbuf, n, e);
}

/* Write the whole blocks dbuf holds, directly; the rest moves to its start. */
static int flush_blocks(bc_gz *g, bc_err *e)
{
    size_t whole = g->dbuf_len & ~(BC_DIRECT_ALIGN - 1);
    size_t done = 0;
    while (done < whole) {
        ssize_t k = write(g->fd, g->dbuf + done, whole - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno == EINVAL) {
            /* This file system takes the flag but not the write (alignment, or no direct
             * I/O after all). */
            memmove(g->dbuf, g->dbuf + done, g->dbuf_len - done);
            g->dbuf_len -= done;
            return leave_direct(g, e);
        }
        if (k < 0) {
            int err = errno;
            return bc__fail(e, BC_EIO, err, "cannot write the compressed output: %s",
                            strerror(err));
        }
        done += (size_t)k;
        g->direct_bytes += (uint64_t)k;
        if (done % BC_DIRECT_ALIGN != 0) {
            /* A short write off a block boundary: the rest cannot stay aligned. */
            memmove(g->dbuf, g->dbuf + done, g->dbuf_len - done);
            g->dbuf_len -= done;
            return leave_direct(g, e);
        }
    }
    memmove(g->dbuf, g->dbuf + whole, g->dbuf_len - whole);
    g->dbuf_len -= whole;
    return BC_OK;
}

int bc__out_write(bc_gz *g, const unsigned char *p, size_t n, bc_err *e)
{
    while (g->direct && n > 0) {
        size_t k = BC_DIRECT_BUF - g->dbuf_len;
        if (k > n)
            k = n;
        memcpy(g->dbuf + g->dbuf_len, p, k);
        g->dbuf_len += k;
        p += k;
        n -= k;
        if (g->dbuf_len == BC_DIRECT_BUF) {
            int rc = flush_blocks(g, e);
            if (rc)
                return rc;
        }
    }
    return write_all(g->fd, p, n, e);
}

int bc__out_finish(bc_gz *g, bc_err *e)
{
    if (!g->direct)
        return BC_OK;
    int rc = flush_blocks(g, e);
    if (rc)
        return rc;
    return g->direct ? leave_direct(g, e) : BC_OK;
}

void bc__out_close(bc_gz *g)
{
    if (g->direct_set) {
        /* Unfinished: the descriptor is the caller's, and may still be written. */
        int fl = fcntl(g->fd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(g->fd, F_SETFL, fl & ~O_DIRECT);
        g->direct_set = 0;
    }
    free(g->dbuf);
    g->dbuf = NULL;
    g->dbuf_len = 0;
    g->direct = 0;
}
