/* The in-place binary rewrite of relocation (Spack's rule: left-pad the new prefix with '/'
 * so the file length and the position of the rest of each string stay the same).
 * apply_patches works from offsets recorded at create time: check all, then write all. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Show a prefix in an error message: printable bytes as they are, the rest escaped. */
static void show(const bc_buf *b, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < b->len && o + 5 < cap; i++) {
        unsigned char ch = b->ptr[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\')
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", ch);
    }
    out[o < cap ? o : cap - 1] = '\0';
}

int bc_relocate_buffer(unsigned char *data, size_t len, const bc_buf *olds, const bc_buf *news,
                       size_t npairs, size_t *count, char *err, size_t errlen)
{
    bc_hit *hits = NULL;
    size_t nhits = 0;
    *count = 0;
    int rc = bc_scan_buffer(data, len, olds, npairs, &hits, &nhits, err, errlen);
    if (rc)
        return rc;
    for (size_t i = 0; i < nhits; i++) {
        size_t k = (size_t)hits[i].prefix;
        if (news[k].len > olds[k].len) {
            char a[300], b[300];
            show(&olds[k], a, sizeof a);
            show(&news[k], b, sizeof b);
            if (err && errlen)
                snprintf(err, errlen, "cannot grow a string from %zu to %zu bytes ('%s' -> '%s')",
                         olds[k].len, news[k].len, a, b);
            free(hits);
            return BC_ECANNOTGROW;
        }
    }
    for (size_t i = 0; i < nhits; i++) {
        size_t k = (size_t)hits[i].prefix;
        unsigned char *at = data + hits[i].offset;
        size_t pad = olds[k].len - news[k].len;
        memset(at, '/', pad);
        if (news[k].len)
            memcpy(at + pad, news[k].ptr, news[k].len);
    }
    *count = nhits;
    free(hits);
    return BC_OK;
}

static int pread_all(int fd, unsigned char *buf, size_t n, uint64_t off, size_t *got)
{
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, buf + done, n - done, (off_t)(off + done));
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (k == 0)
            break;
        done += (size_t)k;
    }
    *got = done;
    return 0;
}

static int pwrite_all(int fd, const unsigned char *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t k = pwrite(fd, buf + done, n - done, (off_t)(off + done));
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)k;
    }
    return 0;
}

/* Grow a scratch buffer to hold at least need bytes (it keeps its size otherwise). */
static int grow_buf(unsigned char **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return BC_OK;
    unsigned char *nb = realloc(*buf, need);
    if (nb == NULL)
        return BC_ENOMEM;
    *buf = nb;
    *cap = need;
    return BC_OK;
}

int bc_apply_patches(const char *path, const bc_patch *patches, size_t npatches, char *err,
                     size_t errlen)
{
    int rc = BC_OK;
    unsigned char *buf = NULL;
    size_t cap = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int se = errno;
        if (err && errlen)
            snprintf(err, errlen, "cannot open %s: %s", path, strerror(se));
        return BC_EIO;
    }
    for (size_t i = 0; i < npatches && rc == BC_OK; i++) {
        const bc_patch *p = &patches[i];
        if (p->new_bytes.len > p->old_bytes.len) {
            if (err && errlen)
                snprintf(err, errlen, "%s: cannot grow a string from %zu to %zu bytes", path,
                         p->old_bytes.len, p->new_bytes.len);
            rc = BC_ECANNOTGROW;
            break;
        }
        if (grow_buf(&buf, &cap, p->old_bytes.len) != BC_OK) {
            rc = BC_ENOMEM;
            if (err && errlen)
                snprintf(err, errlen, "out of memory");
            break;
        }
        size_t got = 0;
        if (pread_all(fd, buf, p->old_bytes.len, p->offset, &got) != 0) {
            int se = errno;
            if (err && errlen)
                snprintf(err, errlen, "cannot read %s: %s", path, strerror(se));
            rc = BC_EIO;
            break;
        }
        if (got != p->old_bytes.len || memcmp(buf, p->old_bytes.ptr, got) != 0) {
            char a[300];
            show(&p->old_bytes, a, sizeof a);
            if (err && errlen)
                snprintf(err, errlen, "%s: offset %llu does not hold %s", path,
                         (unsigned long long)p->offset, a);
            rc = BC_EMISMATCH;
            break;
        }
    }
    for (size_t i = 0; i < npatches && rc == BC_OK; i++) {
        const bc_patch *p = &patches[i];
        size_t pad = p->old_bytes.len - p->new_bytes.len;
        if (grow_buf(&buf, &cap, p->old_bytes.len) != BC_OK) {
            rc = BC_ENOMEM;
            if (err && errlen)
                snprintf(err, errlen, "out of memory");
            break;
        }
        memset(buf, '/', pad);
        if (p->new_bytes.len)
            memcpy(buf + pad, p->new_bytes.ptr, p->new_bytes.len);
        if (p->old_bytes.len && pwrite_all(fd, buf, p->old_bytes.len, p->offset) != 0) {
            int se = errno;
            if (err && errlen)
                snprintf(err, errlen, "cannot write %s: %s", path, strerror(se));
            rc = BC_EIO;
        }
    }
    free(buf);
    if (close(fd) != 0 && rc == BC_OK) {
        int se = errno;
        if (err && errlen)
            snprintf(err, errlen, "cannot write %s: %s", path, strerror(se));
        rc = BC_EIO;
    }
    return rc;
}
