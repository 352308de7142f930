/* The streaming tar writer: one pass over each file's bytes does the read (straight into the
 * compressor's input piece), the tar framing, the prefix scan and the classification; the gzip
 * (or zstd) pipe (deflate.c) takes each full piece while it is still in cache for SHA-256 of the
 * uncompressed stream and the CRC, compresses it on the workers, and hashes and writes the
 * output in order.
 *
 * Headers are byte-identical to _pure.tar_header: ustar, mtime 0, uid/gid 0, empty user and
 * group names; a name longer than 100 bytes is split into ustar prefix/name at a '/' when
 * possible, else carried in a PAX "path" record, as are link targets over 100 bytes and sizes
 * of 8 GiB and more.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define BLOCK 512
#define READ_PIECE ((size_t)256 << 10)

static const unsigned char zeros[2 * BLOCK];

static int fail_state(bc_writer *w)
{
    if (w->finished)
        return bc__fail(&w->err, BC_ESTATE, 0, "tar writer already finished");
    return bc__fail(&w->err, BC_ESTATE, 0, "tar writer is unusable after an earlier error: %s",
                    w->first_err);
}

/* ---- header building ---- */

static int hdr_reserve(bc_writer *w, size_t extra)
{
    if (w->hdr_len + extra <= w->hdr_cap)
        return BC_OK;
    size_t ncap = w->hdr_cap ? w->hdr_cap : 2048;
    while (ncap < w->hdr_len + extra)
        ncap *= 2;
    unsigned char *p = realloc(w->hdr, ncap);
    if (p == NULL)
        return bc__fail(&w->err, BC_ENOMEM, ENOMEM, "out of memory");
    w->hdr = p;
    w->hdr_cap = ncap;
    return BC_OK;
}

static void octal(unsigned char *field, size_t width, uint64_t value)
{
    /* width-1 zero-padded octal digits and a NUL, as "%0*o" % (width - 1, value) + b"\0" */
    field[width - 1] = '\0';
    for (size_t i = width - 1; i > 0; i--) {
        field[i - 1] = (unsigned char)('0' + (value & 7));
        value >>= 3;
    }
}

static void raw_header(unsigned char *h, const unsigned char *name, size_t nlen, char type,
                       int mode, uint64_t size, const unsigned char *link, size_t llen,
                       const unsigned char *prefix, size_t plen)
{
    memset(h, 0, BLOCK);
    memcpy(h, name, nlen);
    octal(h + 100, 8, (uint64_t)(mode & 07777));
    octal(h + 108, 8, 0);
    octal(h + 116, 8, 0);
    octal(h + 124, 12, size);
    octal(h + 136, 12, 0);
    memset(h + 148, ' ', 8);
    h[156] = (unsigned char)type;
    if (llen)
        memcpy(h + 157, link, llen);
    memcpy(h + 257, "ustar\0" "00", 8);
    octal(h + 329, 8, 0);
    octal(h + 337, 8, 0);
    if (plen)
        memcpy(h + 345, prefix, plen);
    unsigned int sum = 0;
    for (int i = 0; i < BLOCK; i++)
        sum += h[i];
    char chk[9];
    snprintf(chk, sizeof chk, "%06o", sum & 0777777);
    memcpy(h + 148, chk, 6);
    h[154] = '\0';
    h[155] = ' ';
}

static int pax_record(bc_writer *w, unsigned char **pax, size_t *plen, size_t *pcap,
                      const char *key, const unsigned char *value, size_t vlen)
{
    size_t body = 1 + strlen(key) + 1 + vlen + 1; /* " key=value\n" */
    size_t n = body + 1, digits;
    for (;;) {
        char tmp[32];
        digits = (size_t)snprintf(tmp, sizeof tmp, "%zu", n);
        if (digits + body == n)
            break;
        n = digits + body;
    }
    if (*plen + n > *pcap) {
        size_t ncap = *pcap ? *pcap : 512;
        while (ncap < *plen + n)
            ncap *= 2;
        unsigned char *p = realloc(*pax, ncap);
        if (p == NULL)
            return bc__fail(&w->err, BC_ENOMEM, ENOMEM, "out of memory");
        *pax = p;
        *pcap = ncap;
    }
    unsigned char *o = *pax + *plen;
    o += sprintf((char *)o, "%zu %s=", n, key);
    memcpy(o, value, vlen);
    o[vlen] = '\n';
    *plen += n;
    return BC_OK;
}

/* Build the header block(s) for one member into w->hdr. */
static int build_header(bc_writer *w, const unsigned char *name, size_t nlen, char type,
                        int mode, uint64_t size, const unsigned char *link, size_t llen)
{
    unsigned char *pax = NULL;
    size_t plen = 0, pcap = 0;
    const unsigned char *field = name, *prefix = NULL;
    size_t flen = nlen, prelen = 0;
    int rc = BC_OK;
    if (memchr(name, 0, nlen) || (llen && memchr(link, 0, llen)))
        return bc__fail(&w->err, BC_EINVAL, 0, "a member name or link target holds a NUL byte");
    if (nlen > 100) {
        size_t split = 0;
        for (size_t i = nlen - 1; i > 0; i--) {
            if (name[i] == '/' && i <= 155 && nlen - i - 1 <= 100 && nlen - i - 1 > 0) {
                split = i;
                break;
            }
        }
        if (split > 0) {
            prefix = name;
            prelen = split;
            field = name + split + 1;
            flen = nlen - split - 1;
        } else {
            rc = pax_record(w, &pax, &plen, &pcap, "path", name, nlen);
            flen = 100;
        }
    }
    if (rc == BC_OK && llen > 100) {
        rc = pax_record(w, &pax, &plen, &pcap, "linkpath", link, llen);
        llen = 100;
    }
    uint64_t size_field = size;
    if (rc == BC_OK && size >= ((uint64_t)1 << 33)) {
        char tmp[32];
        int k = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)size);
        rc = pax_record(w, &pax, &plen, &pcap, "size", (const unsigned char *)tmp, (size_t)k);
        size_field = 0;
    }
    w->hdr_len = 0;
    if (rc == BC_OK && plen > 0) {
        size_t padded = (plen + BLOCK - 1) / BLOCK * BLOCK;
        rc = hdr_reserve(w, BLOCK + padded + BLOCK);
        if (rc == BC_OK) {
            raw_header(w->hdr, (const unsigned char *)"././@PaxHeader", 14, 'x', 0644, plen,
                       NULL, 0, NULL, 0);
            memcpy(w->hdr + BLOCK, pax, plen);
            memset(w->hdr + BLOCK + plen, 0, padded - plen);
            w->hdr_len = BLOCK + padded;
        }
    }
    if (rc == BC_OK)
        rc = hdr_reserve(w, BLOCK);
    if (rc == BC_OK) {
        raw_header(w->hdr + w->hdr_len, field, flen, type, mode, size_field, link, llen, prefix,
                   prelen);
        w->hdr_len += BLOCK;
    }
    free(pax);
    return rc;
}

/* ---- the stream ---- */

static int put(bc_writer *w, const unsigned char *p, size_t n)
{
    while (n > 0) {
        unsigned char *dst;
        size_t avail;
        int rc = bc__gz_space(&w->gz, &dst, &avail, &w->err);
        if (rc)
            return rc;
        size_t k = n < avail ? n : avail;
        memcpy(dst, p, k);
        rc = bc__gz_commit(&w->gz, k, &w->err);
        if (rc)
            return rc;
        w->usize += k;
        p += k;
        n -= k;
    }
    return BC_OK;
}

int bc__writer_ready(bc_writer *w)
{
    if (w->finished || w->broken)
        return fail_state(w);
    return BC_OK;
}

/* Once part of a member is in the stream, an error leaves a stream that cannot be completed. */
static int broke(bc_writer *w, int rc)
{
    if (rc && !w->broken) {
        w->broken = 1;
        memcpy(w->first_err, w->err.msg, sizeof w->first_err);
    }
    return rc;
}

static int add_header_only(bc_writer *w, const char *name, size_t nlen, char type, int mode,
                           const char *link, size_t llen)
{
    int rc = bc__writer_ready(w);
    if (rc)
        return rc;
    rc = build_header(w, (const unsigned char *)name, nlen, type, mode, 0,
                      (const unsigned char *)link, llen);
    if (rc)
        return rc;
    return broke(w, put(w, w->hdr, w->hdr_len));
}

int bc_writer_add_dir(bc_writer *w, const char *name, size_t name_len, int mode)
{
    if (name_len > 0 && name[name_len - 1] == '/')
        return add_header_only(w, name, name_len, '5', mode, NULL, 0);
    if (w->name_cap < name_len + 1) {
        unsigned char *p = realloc(w->name, name_len + 1);
        if (p == NULL)
            return bc__fail(&w->err, BC_ENOMEM, ENOMEM, "out of memory");
        w->name = p;
        w->name_cap = name_len + 1;
    }
    memcpy(w->name, name, name_len);
    w->name[name_len] = '/';
    return add_header_only(w, (const char *)w->name, name_len + 1, '5', mode, NULL, 0);
}

int bc_writer_add_symlink(bc_writer *w, const char *name, size_t name_len, const char *target,
                          size_t target_len)
{
    return add_header_only(w, name, name_len, '2', 0777, target, target_len);
}

int bc_writer_add_hardlink(bc_writer *w, const char *name, size_t name_len, const char *target,
                           size_t target_len, int mode)
{
    return add_header_only(w, name, name_len, '1', mode, target, target_len);
}

static void scan_result(bc_writer *w, int kind, uint64_t size, bc_filescan *out)
{
    out->kind = kind;
    out->size = size;
    out->nhits = w->scan.nhits;
    out->hits = w->scan.hits;
    out->links = 1;
    out->dev = 0;
    out->ino = 0;
}

int bc_writer_add_bytes(bc_writer *w, const char *name, size_t name_len,
                        const unsigned char *data, size_t len, int mode, bc_filescan *out)
{
    int rc = bc__writer_ready(w);
    if (rc)
        return rc;
    rc = build_header(w, (const unsigned char *)name, name_len, '0', mode, len, NULL, 0);
    if (rc)
        return rc;
    bc__scanner_reset(&w->scan);
    if ((rc = put(w, w->hdr, w->hdr_len)) || (rc = put(w, data, len)) ||
        (rc = put(w, zeros, (BLOCK - len % BLOCK) % BLOCK)))
        return broke(w, rc);
    if ((rc = bc__scanner_feed(&w->scan, data, len, &w->err)) ||
        (rc = bc__scanner_finish(&w->scan, &w->err)))
        return broke(w, rc);
    int kind = BC_KIND_TEXT;
    if (len >= 4 && memcmp(data, "\x7f" "ELF", 4) == 0)
        kind = BC_KIND_ELF;
    else if (memchr(data, 0, len) != NULL)
        kind = BC_KIND_BINARY;
    scan_result(w, kind, len, out);
    return BC_OK;
}

/* The member `name` from the open descriptor fd (closed here, whatever happens). The file is
 * named in messages as dir, sep, base (the walk never builds a path that no error needs). */
static int add_open_file(bc_writer *w, const char *name, size_t name_len, int fd,
                         const char *dir, const char *sep, const char *base, int mode,
                         bc_filescan *out)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int se = errno;
        close(fd);
        return bc__fail(&w->err, BC_EIO, se, "cannot read %s%s%s: %s", dir, sep, base,
                        strerror(se));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return bc__fail(&w->err, BC_EIO, EISDIR, "cannot read %s%s%s: %s", dir, sep, base,
                        strerror(EISDIR));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return bc__fail(&w->err, BC_EIO, 0, "cannot read %s%s%s: not a regular file", dir, sep,
                        base);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (mode < 0)
        mode = bc__spack_mode(st.st_mode);
    int rc = build_header(w, (const unsigned char *)name, name_len, '0', mode, size, NULL, 0);
    if (rc) {
        close(fd);
        return rc;
    }
    if (size > 4 * BC_CHUNK)
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    bc__scanner_reset(&w->scan);
    rc = put(w, w->hdr, w->hdr_len);
    unsigned char head[4];
    size_t head_len = 0;
    int has_nul = 0;
    uint64_t done = 0;
    while (rc == BC_OK && done < size) {
        unsigned char *dst;
        size_t avail;
        if (w->cancelled) {
            rc = bc__fail(&w->err, BC_ECANCELED, 0, "cancelled while reading %s%s%s", dir, sep,
                          base);
            break;
        }
        rc = bc__gz_space(&w->gz, &dst, &avail, &w->err);
        if (rc)
            break;
        size_t want = avail < READ_PIECE ? avail : READ_PIECE;
        if (size - done < want)
            want = (size_t)(size - done);
        ssize_t k = read(fd, dst, want);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            int se = errno;
            rc = bc__fail(&w->err, BC_EIO, se, "cannot read %s%s%s: %s", dir, sep, base,
                          strerror(se));
            break;
        }
        if (k == 0) {
            rc = bc__fail(&w->err, BC_EIO, 0,
                          "cannot read %s%s%s: the file shrank while it was read (%llu of %llu "
                          "bytes)",
                          dir, sep, base, (unsigned long long)done, (unsigned long long)size);
            break;
        }
        size_t n = (size_t)k;
        if ((rc = bc__scanner_feed(&w->scan, dst, n, &w->err)))
            break;
        while (head_len < 4 && head_len < (size_t)(done + n)) {
            head[head_len] = dst[head_len - done];
            head_len++;
        }
        if (!has_nul && memchr(dst, 0, n) != NULL)
            has_nul = 1;
        done += n;
        w->usize += n;
        rc = bc__gz_commit(&w->gz, n, &w->err);
    }
    close(fd);
    if (rc == BC_OK)
        rc = put(w, zeros, (size_t)((BLOCK - size % BLOCK) % BLOCK));
    if (rc == BC_OK)
        rc = bc__scanner_finish(&w->scan, &w->err);
    if (rc)
        return broke(w, rc);
    int kind = BC_KIND_TEXT;
    if (head_len == 4 && memcmp(head, "\x7f" "ELF", 4) == 0)
        kind = BC_KIND_ELF;
    else if (has_nul)
        kind = BC_KIND_BINARY;
    scan_result(w, kind, size, out);
    out->links = (uint64_t)st.st_nlink;
    out->dev = (uint64_t)st.st_dev;
    out->ino = (uint64_t)st.st_ino;
    return BC_OK;
}

/* open/openat of a file to pack. O_NONBLOCK: opening a fifo must not hang; it is refused by
 * add_open_file. O_NOATIME: reading a package must not write every file's inode back (where
 * relatime still would); the kernel allows it to the files' owner only, so on the first EPERM
 * the writer stops asking. */
static int open_member(bc_writer *w, int dirfd, const char *path)
{
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
    if (!w->atime_kept) {
        int fd = openat(dirfd, path, flags | O_NOATIME);
        if (fd >= 0 || errno != EPERM)
            return fd;
        w->atime_kept = 1;
    }
    return openat(dirfd, path, flags);
}

/* The member `name` from the file `path` opened relative to dirfd, named in messages as dir,
 * sep, base (bc_writer_add_file: the path itself; bc_writer_add_file_at: directory/entry). */
static int add_file_from(bc_writer *w, const char *name, size_t name_len, int dirfd,
                         const char *path, const char *dir, const char *sep, const char *base,
                         int mode, bc_filescan *out)
{
    int rc = bc__writer_ready(w);
    if (rc)
        return rc;
    int fd = open_member(w, dirfd, path);
    if (fd < 0) {
        int se = errno;
        return bc__fail(&w->err, BC_EIO, se, "cannot read %s%s%s: %s", dir, sep, base,
                        strerror(se));
    }
    return add_open_file(w, name, name_len, fd, dir, sep, base, mode, out);
}

int bc_writer_add_file(bc_writer *w, const char *name, size_t name_len, const char *path,
                       int mode, bc_filescan *out)
{
    return add_file_from(w, name, name_len, AT_FDCWD, path, path, "", "", mode, out);
}

int bc_writer_add_file_at(bc_writer *w, const char *name, size_t name_len, int dirfd,
                          const char *dir, const char *base, int mode, bc_filescan *out)
{
    return add_file_from(w, name, name_len, dirfd, base, dir, "/", base, mode, out);
}

int bc_writer_take_output(bc_writer *w, const unsigned char **data, size_t *len)
{
    /* The previous hand-out has been consumed by now. */
    *data = w->gz.mem;
    *len = w->gz.mem_len;
    w->gz.mem_len = 0;
    return BC_OK;
}

int bc_writer_finish(bc_writer *w, bc_result *res)
{
    int rc = bc__writer_ready(w);
    if (rc)
        return rc;
    rc = put(w, zeros, sizeof zeros);
    if (rc == BC_OK)
        rc = bc__gz_finish(&w->gz, &w->err);
    res->diff_id[0] = '\0';
    if (rc == BC_OK && ((w->gz.hash_in && bc__sha256_hex(&w->gz.sha_in, res->diff_id)) ||
                        bc__sha256_hex(&w->gz.sha_out, res->digest)))
        rc = bc__fail(&w->err, BC_ENOMEM, ENOMEM, "sha256 failed");
    if (rc)
        return broke(w, rc);
    res->compressed_size = w->gz.out_total;
    res->uncompressed_size = w->usize;
    res->direct_bytes = w->gz.direct_bytes;
    w->finished = 1;
    return BC_OK;
}

int bc_writer_new(bc_writer **out, int fd, const bc_buf *prefixes, size_t nprefixes, int codec,
                  int level, int threads, bc_pool *pool, int flags, char *err, size_t errlen,
                  int *sys_errno)
{
    *out = NULL;
    *sys_errno = 0;
    bc_writer *w = calloc(1, sizeof *w);
    if (w == NULL) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return BC_ENOMEM;
    }
    if (flags & ~(BC_WRITER_DIFF_ID | BC_WRITER_DIRECT | BC_WRITER_DIRECT_ANY)) {
        if (err && errlen)
            snprintf(err, errlen, "unknown writer flags %#x", (unsigned)flags);
        free(w);
        return BC_EINVAL;
    }
    int direct = !(flags & BC_WRITER_DIRECT)    ? BC_DIRECT_NEVER
                 : (flags & BC_WRITER_DIRECT_ANY) ? BC_DIRECT_ANY
                                                  : BC_DIRECT_LOCAL;
    int rc = bc__gz_open(&w->gz, codec, level, threads, pool, fd, 1,
                         (flags & BC_WRITER_DIFF_ID) != 0, direct, &w->err);
    if (rc == BC_OK)
        rc = bc__scanner_init(&w->scan, prefixes, nprefixes, &w->err);
    if (rc) {
        bc__copy_err(&w->err, err, errlen);
        *sys_errno = w->err.sys_errno;
        bc_writer_free(w);
        return rc;
    }
    *out = w;
    return BC_OK;
}

int bc_writer_free(bc_writer *w)
{
    if (w == NULL)
        return BC_OK;
    bc__gz_close(&w->gz);
    bc__scanner_free(&w->scan);
    bc__walk_free(w->walk);
    free(w->hdr);
    free(w->name);
    free(w);
    return BC_OK;
}

int bc_writer_cancel(bc_writer *w)
{
    w->cancelled = 1;
    return BC_OK;
}

int bc_writer_error(const bc_writer *w, const char **message, int *sys_errno)
{
    *message = w->err.msg;
    *sys_errno = w->err.sys_errno;
    return BC_OK;
}
