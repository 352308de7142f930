/* Streaming gzip inflate for extraction, hashing the compressed bytes in the same pass.
 *
 * The handle reads the compressed stream itself from a descriptor (pread from an offset, so
 * the caller's file position does not matter; or read() for pipes), inflates it member after
 * member (RFC 1952 allows concatenated members, and pigz writes them), checks every member's
 * CRC-32 and ISIZE, and refuses anything after the last member that is not another member.
 * Every byte read is fed to SHA-256, so a blob's checksum and its extraction can be one pass.
 *
 * ISA-L's igzip inflate (ISAL_GZIP: it parses the header and checks the trailer) when built
 * with ISA-L, measured ~2.5x zlib's inflate here; else zlib's inflate with windowBits 31.
 * Errors stay in the handle (bc_inflater_error) with a message naming the member and the byte
 * offset; a failed handle keeps failing with the same error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Compressed bytes read per system call. */
#define BC_INFLATE_IN ((size_t)1 << 18)
/* The last consumed bytes kept in front of the input on refill: the gzip trailer, so that a
 * checksum failure can say whether the CRC or the length is wrong. */
#define BC_KEEP 8

enum { ST_BETWEEN = 0, ST_MEMBER, ST_DONE, ST_FAILED };

struct bc_inflater {
    int fd;
    int64_t offset; /* next pread offset; -1: read() */
    unsigned char *in;
    size_t in_cap, in_pos, in_len;
    int in_eof;
    int state;
    uint64_t members;     /* members finished */
    uint64_t in_total;    /* compressed bytes read from fd */
    uint64_t member_start; /* compressed offset of the current member */
    uint64_t out_total;
    uint64_t member_out;
    int hash;
    bc_sha256 sha;
    int sha_ready;
    char digest[65];
    int rc;
    bc_err err;
#ifdef BC_HAVE_ISAL
    struct inflate_state st;
#else
    z_stream z;
    int z_ready;
#endif
};

static int fail(bc_inflater *h, int rc, int sys_errno, const char *fmt, ...) BC_PRINTF(4, 5);

static int fail(bc_inflater *h, int rc, int sys_errno, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->err.msg, sizeof h->err.msg, fmt, ap);
    va_end(ap);
    h->err.sys_errno = sys_errno;
    h->rc = rc;
    h->state = ST_FAILED;
    return rc;
}

/* Compressed offset of the next unconsumed byte. */
static uint64_t consumed(const bc_inflater *h)
{
    return h->in_total - (h->in_len - h->in_pos);
}

static int refill(bc_inflater *h)
{
    size_t keep = h->in_pos < BC_KEEP ? h->in_pos : BC_KEEP;
    size_t live = h->in_len - h->in_pos;
    memmove(h->in, h->in + h->in_pos - keep, keep + live);
    h->in_pos = keep;
    h->in_len = keep + live;
    size_t room = h->in_cap - h->in_len;
    for (;;) {
        ssize_t n = h->offset >= 0 ? pread(h->fd, h->in + h->in_len, room, (off_t)h->offset)
                                   : read(h->fd, h->in + h->in_len, room);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail(h, BC_EIO, errno, "cannot read the compressed stream: %s",
                        strerror(errno));
        }
        if (n == 0) {
            h->in_eof = 1;
            return BC_OK;
        }
        if (h->hash && bc__sha256_update(&h->sha, h->in + h->in_len, (size_t)n) != BC_OK)
            return fail(h, BC_ENOMEM, ENOMEM, "out of memory (SHA-256)");
        if (h->offset >= 0)
            h->offset += n;
        h->in_len += (size_t)n;
        h->in_total += (uint64_t)n;
        return BC_OK;
    }
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int start_member(bc_inflater *h)
{
    h->member_start = consumed(h);
    h->member_out = 0;
#ifdef BC_HAVE_ISAL
    isal_inflate_reset(&h->st);
    h->st.crc_flag = ISAL_GZIP;
#else
    if (inflateReset(&h->z) != Z_OK)
        return fail(h, BC_EDATA, 0, "zlib inflateReset failed");
#endif
    h->state = ST_MEMBER;
    return BC_OK;
}

static int bad_trailer(bc_inflater *h, uint32_t crc)
{
    unsigned long long m = (unsigned long long)h->members + 1;
    if (h->in_pos >= BC_KEEP) {
        const unsigned char *t = h->in + h->in_pos - BC_KEEP;
        uint32_t stored_crc = le32(t), stored_size = le32(t + 4);
        if (stored_crc != crc)
            return fail(h, BC_EDATA, 0,
                        "bad CRC in gzip member %llu: stored %08x, data gives %08x "
                        "(the compressed data is damaged)",
                        m, (unsigned)stored_crc, (unsigned)crc);
        if (stored_size != (uint32_t)h->member_out)
            return fail(h, BC_EDATA, 0,
                        "wrong length (ISIZE) in gzip member %llu: stored %u, data gives %u "
                        "(the compressed data is damaged)",
                        m, (unsigned)stored_size, (unsigned)(uint32_t)h->member_out);
    }
    return fail(h, BC_EDATA, 0,
                "bad CRC or length in the trailer of gzip member %llu (the compressed data is "
                "corrupt)", m);
}

static int bad_data(bc_inflater *h, int header, const char *why)
{
    unsigned long long m = (unsigned long long)h->members + 1;
    if (header) {
        if (h->members == 0)
            return fail(h, BC_EDATA, 0, "not a gzip stream: bad header (%s)", why);
        return fail(h, BC_EDATA, 0,
                    "unexpected data after gzip member %llu at byte %llu: not another gzip "
                    "member (%s)",
                    (unsigned long long)h->members, (unsigned long long)h->member_start, why);
    }
    return fail(h, BC_EDATA, 0,
                "damaged gzip stream: %s in member %llu (near compressed byte %llu)", why, m,
                (unsigned long long)consumed(h));
}

/* One call of the inflate engine: *produced bytes at out, *done when the member ended. */
static int step(bc_inflater *h, unsigned char *out, size_t cap, size_t *produced, int *done)
{
    *done = 0;
#ifdef BC_HAVE_ISAL
    if (cap > 0x7fffffffu)
        cap = 0x7fffffffu;
    h->st.next_in = h->in + h->in_pos;
    h->st.avail_in = (uint32_t)(h->in_len - h->in_pos);
    h->st.next_out = out;
    h->st.avail_out = (uint32_t)cap;
    int rc = isal_inflate(&h->st);
    h->in_pos = (size_t)(h->st.next_in - h->in);
    *produced = cap - h->st.avail_out;
    h->member_out += *produced;
    switch (rc) {
    case ISAL_DECOMP_OK:
        break;
    case ISAL_INCORRECT_CHECKSUM:
        return bad_trailer(h, h->st.crc);
    case ISAL_INVALID_WRAPPER:
        return bad_data(h, 1, "no gzip magic bytes");
    case ISAL_UNSUPPORTED_METHOD:
        return bad_data(h, 1, "compression method is not deflate");
    case ISAL_INVALID_BLOCK:
        return bad_data(h, 0, "invalid deflate block");
    case ISAL_INVALID_SYMBOL:
        return bad_data(h, 0, "invalid deflate symbol");
    case ISAL_INVALID_LOOKBACK:
        return bad_data(h, 0, "invalid back-reference distance");
    case ISAL_NEED_DICT:
        return bad_data(h, 0, "the stream needs a preset dictionary");
    default:
        return bad_data(h, 0, "inflate error");
    }
    *done = h->st.block_state == ISAL_BLOCK_FINISH;
#else
    size_t in_avail = h->in_len - h->in_pos;
    if (cap > 0x7fffffffu)
        cap = 0x7fffffffu;
    h->z.next_in = h->in + h->in_pos;
    h->z.avail_in = (uInt)in_avail;
    h->z.next_out = out;
    h->z.avail_out = (uInt)cap;
    int rc = inflate(&h->z, Z_NO_FLUSH);
    h->in_pos = (size_t)(h->z.next_in - h->in);
    *produced = cap - h->z.avail_out;
    h->member_out += *produced;
    if (rc == Z_STREAM_END) {
        *done = 1;
    } else if (rc == Z_DATA_ERROR) {
        const char *msg = h->z.msg ? h->z.msg : "invalid deflate data";
        if (strcmp(msg, "incorrect data check") == 0 || strcmp(msg, "incorrect length check") == 0) {
            /* zlib read the trailer: compute the CRC again to name what is wrong. */
            const unsigned char *t = h->in + h->in_pos - BC_KEEP;
            if (h->in_pos >= BC_KEEP && strcmp(msg, "incorrect length check") == 0)
                return fail(h, BC_EDATA, 0,
                            "wrong length (ISIZE) in gzip member %llu: stored %u, data gives %u "
                            "(the compressed data is damaged)",
                            (unsigned long long)h->members + 1, (unsigned)le32(t + 4),
                            (unsigned)(uint32_t)h->member_out);
            if (h->in_pos >= 4 && strcmp(msg, "incorrect data check") == 0) {
                /* zlib stops at the CRC, before ISIZE: the CRC is the last 4 bytes read. */
                const unsigned char *c = h->in + h->in_pos - 4;
                return fail(h, BC_EDATA, 0,
                            "bad CRC in gzip member %llu: stored %08x, data gives %08lx "
                            "(the compressed data is damaged)",
                            (unsigned long long)h->members + 1, (unsigned)le32(c),
                            (unsigned long)h->z.adler);
            }
            return bad_trailer(h, 0);
        }
        if (strcmp(msg, "incorrect header check") == 0)
            return bad_data(h, 1, "no gzip magic bytes");
        int header = strstr(msg, "header") != NULL || strstr(msg, "method") != NULL;
        return bad_data(h, header, msg);
    } else if (rc == Z_MEM_ERROR) {
        return fail(h, BC_ENOMEM, ENOMEM, "out of memory (inflate)");
    } else if (rc == Z_NEED_DICT) {
        return bad_data(h, 0, "the stream needs a preset dictionary");
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return bad_data(h, 0, "inflate error");
    }
#endif
    return BC_OK;
}

int bc_inflater_new(bc_inflater **out, int fd, int64_t offset, int hash, char *err,
                    size_t errlen)
{
    bc_err e;
    *out = NULL;
    if (fd < 0) {
        bc__fail(&e, BC_EINVAL, 0, "bad file descriptor %d", fd);
        bc__copy_err(&e, err, errlen);
        return BC_EINVAL;
    }
    bc_inflater *h = calloc(1, sizeof *h);
    if (h != NULL)
        h->in = malloc(BC_INFLATE_IN);
    if (h == NULL || h->in == NULL) {
        free(h);
        bc__fail(&e, BC_ENOMEM, ENOMEM, "out of memory");
        bc__copy_err(&e, err, errlen);
        return BC_ENOMEM;
    }
    h->fd = fd;
    h->offset = offset < 0 ? -1 : offset;
    h->in_cap = BC_INFLATE_IN;
    h->hash = hash != 0;
    if (h->hash) {
        if (bc__sha256_init(&h->sha) != BC_OK) {
            free(h->in);
            free(h);
            bc__fail(&e, BC_ENOMEM, ENOMEM, "out of memory (SHA-256)");
            bc__copy_err(&e, err, errlen);
            return BC_ENOMEM;
        }
        h->sha_ready = 1;
    }
#ifdef BC_HAVE_ISAL
    isal_inflate_init(&h->st);
#else
    if (inflateInit2(&h->z, 31) != Z_OK) {
        bc_inflater_free(h);
        bc__fail(&e, BC_ENOMEM, ENOMEM, "out of memory (inflateInit2)");
        bc__copy_err(&e, err, errlen);
        return BC_ENOMEM;
    }
    h->z_ready = 1;
#endif
    *out = h;
    return BC_OK;
}

int bc_inflater_free(bc_inflater *h)
{
    if (h == NULL)
        return BC_OK;
#ifndef BC_HAVE_ISAL
    if (h->z_ready)
        inflateEnd(&h->z);
#endif
    if (h->sha_ready)
        bc__sha256_free(&h->sha);
    free(h->in);
    free(h);
    return BC_OK;
}

int bc_inflater_error(const bc_inflater *h, const char **message, int *sys_errno)
{
    *message = h->err.msg;
    *sys_errno = h->err.sys_errno;
    return h->rc;
}

int bc_inflate_read(bc_inflater *h, unsigned char *out, size_t out_cap, size_t *n_out)
{
    size_t n = 0;
    *n_out = 0;
    while (n < out_cap) {
        if (h->state == ST_FAILED)
            break;
        if (h->state == ST_DONE)
            return BC_OK;
        if (h->in_pos == h->in_len && !h->in_eof) {
            if (refill(h) != BC_OK)
                break;
        }
        if (h->state == ST_BETWEEN) {
            if (h->in_pos == h->in_len && h->in_eof) {
                if (h->members == 0)
                    return fail(h, BC_ETRUNC, 0, "empty input: not a gzip stream");
                h->state = ST_DONE;
                if (h->hash) {
                    if (bc__sha256_hex(&h->sha, h->digest) != BC_OK)
                        return fail(h, BC_ENOMEM, ENOMEM, "out of memory (SHA-256)");
                }
                break;
            }
            if (start_member(h) != BC_OK)
                break;
        }
        size_t before_in = h->in_pos, produced = 0;
        int done = 0;
        int rc = step(h, out + n, out_cap - n, &produced, &done);
        /* Bytes inflated by a call that then found damage (a bad trailer) still count. */
        n += produced;
        h->out_total += produced;
        if (rc != BC_OK)
            break;
        if (done) {
            h->members++;
            h->state = ST_BETWEEN;
        } else if (produced == 0 && h->in_pos == before_in && h->in_pos == h->in_len &&
                   h->in_eof) {
            fail(h, BC_ETRUNC, 0,
                 "truncated gzip stream: it ends inside member %llu after %llu compressed "
                 "bytes (the file is incomplete)",
                 (unsigned long long)h->members + 1, (unsigned long long)h->in_total);
            break;
        }
    }
    *n_out = n;
    /* Bytes inflated before an error are handed out first; the error comes with the next call
     * (so the caller can name the member the damage is in). */
    if (h->state == ST_FAILED && n == 0)
        return h->rc;
    return BC_OK;
}

int bc_inflater_digest(bc_inflater *h, char *hex65)
{
    /* Only once the whole stream was read (and without one asked for at open: never). */
    if (!h->hash || h->state != ST_DONE)
        return BC_ESTATE;
    memcpy(hex65, h->digest, 65);
    return BC_OK;
}

int bc_inflater_stats(const bc_inflater *h, uint64_t *compressed, uint64_t *uncompressed,
                      uint64_t *members, int *finished)
{
    *compressed = h->in_total;
    *uncompressed = h->out_total;
    *members = h->members;
    *finished = h->state == ST_DONE;
    return BC_OK;
}
