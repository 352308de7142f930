/* Writing the compressed output to its descriptor, through the page cache or around it.
 *
 * Why around it: on a VM whose host takes freed guest pages back (a balloon, free page
 * reporting), the first touch of every new page-cache page costs 3-11 us, so write() of a
 * fresh tarball ran at 90-285 MB/s and was a third of create's CPU, where O_DIRECT ran at
 * 1.4 GB/s. The tarball is linked into a local mirror and never read back by the process, so
 * the page cache keeps nothing worth keeping.
 *
 * How: output collects in a page-aligned buffer and goes out in whole blocks; the tail (less
 * than a block) is written after O_DIRECT is cleared again, so the file has exactly the bytes
 * written, with no padding to cut off. A file system that refuses O_DIRECT (when it is set, or
 * at a write: EINVAL) gets buffered writes from that byte on; either way the file holds the
 * same bytes. A direct write returns when the disk has the bytes (0.6-14 ms per MiB measured),
 * so full buffers go to a thread of their own (the flusher) while the next one fills: the
 * thread that compressed them goes back to compressing. Two buffers, reused; the flusher
 * starts with the first full one (small packages never start it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
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
    g->collect = 0;
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
    void *buf = bc__pool_take_dbuf(g->pool);
    if (buf == NULL && posix_memalign(&buf, BC_DIRECT_ALIGN, BC_DIRECT_BUF) != 0) {
        bc__out_close(g);
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    }
    g->dbuf = buf;
    g->dbuf_len = 0;
    g->collect = 1;
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

/* Back to buffered writes for good: O_DIRECT cleared, even when the caller had set it (what is
 * left is not whole blocks). */
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
    return BC_OK;
}

/* Write buf[0..n) (whole blocks) at the file's offset: directly while that lasts, the rest
 * buffered. Only one thread at a time: the flusher, or the pipe's writer when the flusher is
 * idle (its hand-over and the wait for it order the two). */
static int put_blocks(bc_gz *g, const unsigned char *buf, size_t n, bc_err *e)
{
    size_t done = 0;
    while (g->direct && done < n) {
        ssize_t k = write(g->fd, buf + done, n - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno == EINVAL) {
            /* The file system takes the flag but not the write (alignment, or no direct I/O
             * after all). */
            int rc = leave_direct(g, e);
            if (rc)
                return rc;
            break;
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
            int rc = leave_direct(g, e);
            if (rc)
                return rc;
        }
    }
    return write_all(g->fd, buf + done, n - done, e);
}

static void *flusher_main(void *arg)
{
    bc_gz *g = arg;
    bc_flusher *f = &g->fl;
    bc__name_thread("bc-flush");
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && f->buf == NULL)
            pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop)
            break; /* an unfinished pipe: what is pending is dropped */
        unsigned char *buf = f->buf;
        int failed = f->rc != 0;
        pthread_mutex_unlock(&f->mu);
        bc_err e = {{0}, 0};
        int rc = failed ? BC_OK : put_blocks(g, buf, BC_DIRECT_BUF, &e);
        pthread_mutex_lock(&f->mu);
        if (rc) {
            f->rc = rc;
            f->err = e;
        }
        f->buf = NULL;
        pthread_cond_broadcast(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* The flusher and the second buffer, at the first full buffer; 0 when they cannot be had (the
 * full buffers are then written here). */
static int start_flusher(bc_gz *g)
{
    bc_flusher *f = &g->fl;
    void *spare = bc__pool_take_dbuf(g->pool);
    f->tried = 1;
    if (spare == NULL && posix_memalign(&spare, BC_DIRECT_ALIGN, BC_DIRECT_BUF) != 0)
        return 0;
    bc_err ignored = {{0}, 0}; /* no thread: the full buffers are written here instead */
    if (bc__sync_init(&f->mu, &f->cv, &ignored) != BC_OK) {
        free(spare);
        return 0;
    }
    f->sync_ready = 1;
    if (pthread_create(&f->tid, NULL, flusher_main, g) != 0) {
        free(spare);
        return 0;
    }
    f->running = 1;
    g->dbuf_spare = spare;
    return 1;
}

/* Wait until the flusher has written what it was given; its first failure, if any. */
static int flusher_idle(bc_gz *g, bc_err *e)
{
    bc_flusher *f = &g->fl;
    pthread_mutex_lock(&f->mu);
    while (f->buf != NULL)
        pthread_cond_wait(&f->cv, &f->mu);
    int rc = f->rc;
    if (rc)
        *e = f->err;
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static void stop_flusher(bc_gz *g)
{
    bc_flusher *f = &g->fl;
    if (f->running) {
        pthread_mutex_lock(&f->mu);
        f->stop = 1;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->tid, NULL);
        f->running = 0;
    }
    if (f->sync_ready) {
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
        f->sync_ready = 0;
    }
}

/* dbuf is full: to the flusher (once it is done with the other buffer), or written here. */
static int flush_full(bc_gz *g, bc_err *e)
{
    bc_flusher *f = &g->fl;
    if (!f->running && (f->tried || !start_flusher(g))) {
        int rc = put_blocks(g, g->dbuf, BC_DIRECT_BUF, e);
        g->dbuf_len = 0;
        return rc;
    }
    int rc = flusher_idle(g, e);
    if (rc)
        return rc;
    unsigned char *full = g->dbuf;
    pthread_mutex_lock(&f->mu);
    f->buf = full;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    g->dbuf = g->dbuf_spare; /* free: the flusher is done with it */
    g->dbuf_spare = full;
    g->dbuf_len = 0;
    return BC_OK;
}

int bc__out_write(bc_gz *g, const unsigned char *p, size_t n, bc_err *e)
{
    if (!g->collect)
        return write_all(g->fd, p, n, e);
    while (n > 0) {
        size_t k = BC_DIRECT_BUF - g->dbuf_len;
        if (k > n)
            k = n;
        memcpy(g->dbuf + g->dbuf_len, p, k);
        g->dbuf_len += k;
        p += k;
        n -= k;
        if (g->dbuf_len == BC_DIRECT_BUF) {
            int rc = flush_full(g, e);
            if (rc)
                return rc;
        }
    }
    return BC_OK;
}

int bc__out_finish(bc_gz *g, bc_err *e)
{
    if (!g->collect)
        return BC_OK;
    int rc = g->fl.running ? flusher_idle(g, e) : BC_OK;
    stop_flusher(g);
    g->collect = 0;
    if (rc)
        return rc;
    size_t whole = g->dbuf_len & ~(BC_DIRECT_ALIGN - 1);
    rc = put_blocks(g, g->dbuf, whole, e);
    if (rc == BC_OK && g->direct)
        rc = leave_direct(g, e);
    if (rc == BC_OK)
        rc = write_all(g->fd, g->dbuf + whole, g->dbuf_len - whole, e);
    g->dbuf_len = 0;
    return rc;
}

void bc__out_release(bc_gz *g)
{
    bc__pool_keep_dbuf(g->pool, g->dbuf);
    bc__pool_keep_dbuf(g->pool, g->dbuf_spare);
    g->dbuf = NULL;
    g->dbuf_spare = NULL;
}

void bc__out_close(bc_gz *g)
{
    stop_flusher(g);
    if (g->direct_set) {
        /* Unfinished: the descriptor is the caller's, and may still be written. */
        int fl = fcntl(g->fd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(g->fd, F_SETFL, fl & ~O_DIRECT);
        g->direct_set = 0;
    }
    free(g->dbuf);
    free(g->dbuf_spare);
    g->dbuf = NULL;
    g->dbuf_spare = NULL;
    g->dbuf_len = 0;
    g->collect = 0;
    g->direct = 0;
}
