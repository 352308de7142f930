/* Multi-prefix scanner and the in-memory relocation built on it.
 *
 * Semantics (the same as _pure.scan_buffer): scanning left to right, at the first position where
 * any prefix matches take the longest prefix matching there (lowest index among equal ones),
 * record it, and continue after it, so hits never overlap. Candidates are found with memmem on
 * the bytes all prefixes start with (typically a long path such as "/home/ci/spack/opt"), then
 * each prefix is compared, longest first.
 *
 * Streaming: a position is decided only once maxlen bytes from it have been seen (or at the
 * end), so a prefix split between two fed pieces is found; the undecided tail is carried over.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int cmp_order_ctx_len(const size_t *plen, size_t a, size_t b)
{
    if (plen[a] != plen[b])
        return plen[a] > plen[b] ? -1 : 1;
    return a < b ? -1 : (a > b);
}

int bc__scanner_init(bc_scanner *s, const bc_buf *prefixes, size_t n, bc_err *e)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    if (n == 0)
        return BC_OK;
    s->pat = calloc(n, sizeof *s->pat);
    s->plen = calloc(n, sizeof *s->plen);
    s->order = calloc(n, sizeof *s->order);
    if (!s->pat || !s->plen || !s->order)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        s->plen[i] = prefixes[i].len;
        s->pat[i] = malloc(prefixes[i].len ? prefixes[i].len : 1);
        if (s->pat[i] == NULL)
            return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
        if (prefixes[i].len)
            memcpy(s->pat[i], prefixes[i].ptr, prefixes[i].len);
        if (prefixes[i].len == 0)
            continue; /* an empty prefix would match everywhere: it never matches */
        /* insertion sort: lists are short */
        size_t j = s->norder++;
        while (j > 0 && cmp_order_ctx_len(s->plen, i, s->order[j - 1]) < 0) {
            s->order[j] = s->order[j - 1];
            j--;
        }
        s->order[j] = i;
        if (prefixes[i].len > s->maxlen)
            s->maxlen = prefixes[i].len;
        s->first[prefixes[i].ptr[0]] = 1;
    }
    if (s->norder == 0)
        return BC_OK;
    const unsigned char *p0 = s->pat[s->order[0]];
    size_t common = s->plen[s->order[0]];
    for (size_t k = 1; k < s->norder; k++) {
        size_t i = s->order[k], c = 0;
        while (c < common && c < s->plen[i] && s->pat[i][c] == p0[c])
            c++;
        common = c;
    }
    s->common = common;
    s->bucket = calloc(s->norder, sizeof *s->bucket);
    s->shortp = calloc(s->norder, sizeof *s->shortp);
    if (s->bucket == NULL || s->shortp == NULL)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    size_t nb = 0;
    for (int b = 0; b < 256; b++) {
        s->bstart[b] = nb;
        for (size_t k = 0; k < s->norder; k++) {
            size_t i = s->order[k];
            if (s->plen[i] > common && s->pat[i][common] == (unsigned char)b)
                s->bucket[nb++] = i;
        }
    }
    s->bstart[256] = nb;
    for (size_t k = 0; k < s->norder; k++)
        if (s->plen[s->order[k]] == common)
            s->shortp[s->nshort++] = s->order[k];
    s->carry = malloc(2 * s->maxlen);
    if (s->carry == NULL)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    return BC_OK;
}

void bc__scanner_reset(bc_scanner *s)
{
    s->carry_len = 0;
    s->carry_off = 0;
    s->fed = 0;
    s->skip_until = 0;
    s->nhits = 0;
}

void bc__scanner_free(bc_scanner *s)
{
    if (s->pat)
        for (size_t i = 0; i < s->n; i++)
            free(s->pat[i]);
    free(s->pat);
    free(s->plen);
    free(s->order);
    free(s->bucket);
    free(s->shortp);
    free(s->carry);
    free(s->hits);
    memset(s, 0, sizeof *s);
}

static int add_hit(bc_scanner *s, size_t prefix, uint64_t off, bc_err *e)
{
    if (s->nhits == s->hits_cap) {
        size_t ncap = s->hits_cap ? 2 * s->hits_cap : 16;
        bc_hit *h = realloc(s->hits, ncap * sizeof *h);
        if (h == NULL)
            return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
        s->hits = h;
        s->hits_cap = ncap;
    }
    s->hits[s->nhits].prefix = prefix;
    s->hits[s->nhits].offset = off;
    s->nhits++;
    return BC_OK;
}

/* Decide positions [from, to) of buf (buf[0] is stream offset base). Without final, only
 * positions with maxlen bytes after them in buf are decided. Returns (through *undecided) the
 * first position left for later. */
static int decide(bc_scanner *s, const unsigned char *buf, size_t len, uint64_t base,
                  size_t from, size_t to, int final, size_t *undecided, bc_err *e)
{
    size_t limit = to;
    if (!final) {
        size_t lim2 = len >= s->maxlen ? len - s->maxlen + 1 : 0;
        if (lim2 < limit)
            limit = lim2;
    }
    if (limit <= from) {
        *undecided = from;
        return BC_OK;
    }
    size_t p = from;
    if (s->skip_until > base + p)
        p = (size_t)(s->skip_until - base);
    const unsigned char *common = s->pat[s->order[0]];
    while (p < limit) {
        size_t c;
        if (s->common > 0) {
            size_t hay_end = limit - 1 + s->common;
            if (hay_end > len)
                hay_end = len;
            if (hay_end < p + s->common)
                break;
            const unsigned char *hit = s->common == 1
                                           ? memchr(buf + p, common[0], hay_end - p)
                                           : memmem(buf + p, hay_end - p, common, s->common);
            if (hit == NULL)
                break;
            c = (size_t)(hit - buf);
            if (c >= limit)
                break;
        } else {
            c = p;
            while (c < limit && !s->first[buf[c]])
                c++;
            if (c >= limit)
                break;
        }
        size_t matched = SIZE_MAX;
        size_t cm = s->common;
        if (c + cm < len) {
            int b = buf[c + cm];
            for (size_t k = s->bstart[b]; k < s->bstart[b + 1]; k++) {
                size_t i = s->bucket[k];
                size_t L = s->plen[i];
                /* pat[i][cm] == buf[c + cm] already */
                if (L <= len - c && memcmp(buf + c + cm + 1, s->pat[i] + cm + 1, L - cm - 1) == 0) {
                    matched = i;
                    break;
                }
            }
        }
        /* A prefix that is just the common part matches here (nshort > 0 implies cm > 0). */
        if (matched == SIZE_MAX && s->nshort > 0)
            matched = s->shortp[0];
        if (matched == SIZE_MAX) {
            p = c + 1;
            continue;
        }
        int rc = add_hit(s, matched, base + c, e);
        if (rc)
            return rc;
        p = c + s->plen[matched];
        s->skip_until = base + p;
    }
    *undecided = limit;
    return BC_OK;
}

int bc__scanner_feed(bc_scanner *s, const unsigned char *data, size_t n, bc_err *e)
{
    if (s->norder == 0 || n == 0) {
        s->fed += n;
        return BC_OK;
    }
    uint64_t base = s->fed;
    size_t u;
    int rc;
    if (s->carry_len > 0) {
        size_t take = n < s->maxlen - 1 ? n : s->maxlen - 1;
        memcpy(s->carry + s->carry_len, data, take);
        size_t seam_len = s->carry_len + take;
        rc = decide(s, s->carry, seam_len, s->carry_off, 0, s->carry_len, 0, &u, e);
        if (rc)
            return rc;
        if (u < s->carry_len) {
            /* Not enough new bytes to decide the old tail: everything stays carried. */
            memmove(s->carry, s->carry + u, seam_len - u);
            s->carry_len = seam_len - u;
            s->carry_off += u;
            s->fed += n;
            return BC_OK;
        }
        s->carry_len = 0;
    }
    rc = decide(s, data, n, base, 0, n, 0, &u, e);
    if (rc)
        return rc;
    memcpy(s->carry, data + u, n - u);
    s->carry_len = n - u;
    s->carry_off = base + u;
    s->fed += n;
    return BC_OK;
}

int bc__scanner_finish(bc_scanner *s, bc_err *e)
{
    size_t u;
    if (s->norder == 0 || s->carry_len == 0)
        return BC_OK;
    int rc = decide(s, s->carry, s->carry_len, s->carry_off, 0, s->carry_len, 1, &u, e);
    s->carry_len = 0;
    return rc;
}

int bc_scan_buffer(const unsigned char *data, size_t len, const bc_buf *prefixes,
                   size_t nprefixes, bc_hit **hits, size_t *nhits, char *err, size_t errlen)
{
    bc_scanner s;
    bc_err e = {{0}, 0};
    size_t u;
    *hits = NULL;
    *nhits = 0;
    int rc = bc__scanner_init(&s, prefixes, nprefixes, &e);
    if (rc == BC_OK && s.norder > 0)
        rc = decide(&s, data, len, 0, 0, len, 1, &u, &e);
    if (rc == BC_OK) {
        *hits = s.hits;
        *nhits = s.nhits;
        s.hits = NULL;
    } else {
        bc__copy_err(&e, err, errlen);
    }
    bc__scanner_free(&s);
    return rc;
}

int bc_scan_pieces(const unsigned char *data, size_t len, const bc_buf *prefixes,
                   size_t nprefixes, const size_t *cuts, size_t ncuts, bc_hit **hits,
                   size_t *nhits, char *err, size_t errlen)
{
    bc_scanner s;
    bc_err e = {{0}, 0};
    *hits = NULL;
    *nhits = 0;
    int rc = bc__scanner_init(&s, prefixes, nprefixes, &e);
    size_t at = 0;
    for (size_t i = 0; rc == BC_OK && i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        if (end > len)
            end = len;
        if (end < at)
            continue;
        rc = bc__scanner_feed(&s, data + at, end - at, &e);
        at = end;
    }
    if (rc == BC_OK)
        rc = bc__scanner_finish(&s, &e);
    if (rc == BC_OK) {
        *hits = s.hits;
        *nhits = s.nhits;
        s.hits = NULL;
    } else {
        bc__copy_err(&e, err, errlen);
    }
    bc__scanner_free(&s);
    return rc;
}
