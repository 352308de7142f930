/* Parallel deflate into one gzip member (pigz's scheme).
 *
 * The uncompressed stream is cut into fixed BC_CHUNK pieces. Each piece is deflated on its own,
 * with the 32 KiB before it as dictionary, and ends with a sync flush (an empty stored block,
 * so it ends on a byte boundary and is not final); pieces are concatenated in order, then one
 * empty final block and the gzip trailer follow. The calling thread fills pieces, computes the
 * CRC and writes finished pieces; workers compress. Because the cut points do not depend on
 * the number of workers, neither do the output bytes.
 *
 * Levels: 0 = stored (zlib level 0); 1..3 = ISA-L igzip levels 1..3 when built with ISA-L,
 * else zlib 1..3; 4..9 = zlib 4..9.
 *
 * zstd (BC_CODEC_ZSTD): the same pieces, each one independent zstd frame (content size and
 * checksum in it), concatenated: a valid zstd stream (RFC 8878 allows any number of frames;
 * zstd -d, Go's klauspost/compress that containerd and umoci use, and python-zstandard with
 * read_across_frames read it). No dictionary: a frame a decoder could not start on its own
 * would not be one. Parallel and deterministic like the gzip pipe; no CRC, header or trailer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

enum { SLOT_FREE = 0, SLOT_FILL, SLOT_QUEUED, SLOT_BUSY, SLOT_DONE };

/* zstd levels accepted: libzstd's regular ones (20-22 need a window far above a piece). */
#define BC_ZSTD_MIN 1
#define BC_ZSTD_MAX 19

int bc__check_level(int codec, int level, bc_err *e)
{
    if (codec == BC_CODEC_ZSTD) {
#ifdef BC_HAVE_ZSTD
        if (level < BC_ZSTD_MIN || level > BC_ZSTD_MAX)
            return bc__fail(e, BC_EINVAL, 0, "zstd compression level must be %d-%d, not %d",
                            BC_ZSTD_MIN, BC_ZSTD_MAX, level);
        return BC_OK;
#else
        return bc__fail(e, BC_EINVAL, 0,
                        "this build of the C core has no zstd; install libzstd-dev and rebuild "
                        "(pip install -e .)");
#endif
    }
    if (codec != BC_CODEC_GZIP)
        return bc__fail(e, BC_EINVAL, 0, "unknown codec %d", codec);
    if (level < 0 || level > 9)
        return bc__fail(e, BC_EINVAL, 0, "compression level must be 0-9, not %d", level);
    return BC_OK;
}

uint32_t bc__crc32(uint32_t crc, const unsigned char *p, size_t n)
{
#ifdef BC_HAVE_ISAL
    return crc32_gzip_refl(crc, p, (uint64_t)n);
#else
    while (n > 0) {
        uInt k = n > 0x40000000u ? 0x40000000u : (uInt)n;
        crc = (uint32_t)crc32(crc, p, k);
        p += k;
        n -= k;
    }
    return crc;
#endif
}

int bc__comp_init(bc_comp *c, int codec, int level, bc_err *e)
{
    int rc = bc__check_level(codec, level, e);
    if (rc)
        return rc;
    memset(c, 0, sizeof *c);
    c->codec = codec;
    c->level = level;
#ifdef BC_HAVE_ZSTD
    if (codec == BC_CODEC_ZSTD) {
        c->zc = ZSTD_createCCtx();
        if (c->zc == NULL)
            return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
        if (ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_compressionLevel, level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_checksumFlag, 1)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(c->zc, ZSTD_c_contentSizeFlag, 1)))
            return bc__fail(e, BC_EDEFLATE, 0, "zstd: cannot set the parameters");
        return BC_OK;
    }
#endif
#ifdef BC_HAVE_ISAL
    if (level >= 1 && level <= 3) {
        static const size_t sizes[4] = {0, ISAL_DEF_LVL1_DEFAULT, ISAL_DEF_LVL2_DEFAULT,
                                        ISAL_DEF_LVL3_DEFAULT};
        c->use_isal = 1;
        c->lvlbuf_size = sizes[level];
        c->lvlbuf = malloc(c->lvlbuf_size);
        if (c->lvlbuf == NULL)
            return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
        return BC_OK;
    }
#endif
    c->z.zalloc = Z_NULL;
    c->z.zfree = Z_NULL;
    c->z.opaque = Z_NULL;
    if (deflateInit2(&c->z, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "cannot start zlib deflate");
    c->z_ready = 1;
    return BC_OK;
}

void bc__comp_free(bc_comp *c)
{
#ifdef BC_HAVE_ZSTD
    ZSTD_freeCCtx(c->zc);
    c->zc = NULL;
#endif
#ifdef BC_HAVE_ISAL
    free(c->lvlbuf);
    c->lvlbuf = NULL;
#endif
    if (c->z_ready)
        deflateEnd(&c->z);
    c->z_ready = 0;
}

static int grow(unsigned char **out, size_t *cap, size_t need, bc_err *e)
{
    if (*cap >= need)
        return BC_OK;
    size_t ncap = *cap ? *cap : 4096;
    while (ncap < need)
        ncap *= 2;
    unsigned char *p = realloc(*out, ncap);
    if (p == NULL)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    *out = p;
    *cap = ncap;
    return BC_OK;
}

int bc__comp_chunk(bc_comp *c, const unsigned char *dict, size_t dict_len,
                   const unsigned char *in, size_t n, unsigned char **out, size_t *out_cap,
                   size_t *out_len, bc_err *e)
{
    /* Enough for stored blocks of incompressible data, so growing is the exception. */
    int rc = grow(out, out_cap, n + n / 8 + 4096, e);
    if (rc)
        return rc;
    *out_len = 0;
#ifdef BC_HAVE_ZSTD
    if (c->codec == BC_CODEC_ZSTD) {
        (void)dict;
        (void)dict_len;
        rc = grow(out, out_cap, ZSTD_compressBound(n), e);
        if (rc)
            return rc;
        size_t k = ZSTD_compress2(c->zc, *out, *out_cap, in, n);
        if (ZSTD_isError(k))
            return bc__fail(e, BC_EDEFLATE, 0, "zstd compression failed: %s",
                            ZSTD_getErrorName(k));
        *out_len = k;
        return BC_OK;
    }
#endif
#ifdef BC_HAVE_ISAL
    if (c->use_isal) {
        struct isal_zstream *zs = &c->zs;
        isal_deflate_init(zs);
        zs->level = (uint32_t)c->level;
        zs->level_buf = c->lvlbuf;
        zs->level_buf_size = (uint32_t)c->lvlbuf_size;
        zs->gzip_flag = IGZIP_DEFLATE;
        zs->flush = SYNC_FLUSH;
        zs->end_of_stream = 0;
        if (dict_len > 0 && isal_deflate_set_dict(zs, (uint8_t *)dict, (uint32_t)dict_len) != COMP_OK)
            return bc__fail(e, BC_EDEFLATE, 0, "isa-l: cannot set the dictionary");
        zs->next_in = (uint8_t *)in;
        zs->avail_in = (uint32_t)n;
        zs->next_out = *out;
        zs->avail_out = (uint32_t)*out_cap;
        for (;;) {
            int zrc = isal_deflate(zs);
            if (zrc != COMP_OK)
                return bc__fail(e, BC_EDEFLATE, 0, "isa-l deflate failed (%d)", zrc);
            if (zs->avail_in == 0 && zs->avail_out > 0)
                break;
            size_t used = (size_t)(zs->next_out - *out);
            rc = grow(out, out_cap, *out_cap * 2, e);
            if (rc)
                return rc;
            zs->next_out = *out + used;
            zs->avail_out = (uint32_t)(*out_cap - used);
        }
        *out_len = (size_t)(zs->next_out - *out);
        return BC_OK;
    }
#endif
    z_stream *z = &c->z;
    if (deflateReset(z) != Z_OK)
        return bc__fail(e, BC_EDEFLATE, 0, "zlib: deflateReset failed");
    if (dict_len > 0 && deflateSetDictionary(z, dict, (uInt)dict_len) != Z_OK)
        return bc__fail(e, BC_EDEFLATE, 0, "zlib: cannot set the dictionary");
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)n;
    z->next_out = *out;
    z->avail_out = (uInt)*out_cap;
    for (;;) {
        int zrc = deflate(z, Z_SYNC_FLUSH);
        if (zrc != Z_OK && zrc != Z_BUF_ERROR)
            return bc__fail(e, BC_EDEFLATE, 0, "zlib deflate failed (%d)", zrc);
        if (z->avail_in == 0 && z->avail_out > 0)
            break;
        size_t used = (size_t)(z->next_out - *out);
        rc = grow(out, out_cap, *out_cap * 2, e);
        if (rc)
            return rc;
        z->next_out = *out + used;
        z->avail_out = (uInt)(*out_cap - used);
    }
    *out_len = (size_t)(z->next_out - *out);
    return BC_OK;
}

/* ---- the pipe ---- */

static int sink(bc_gz *g, const unsigned char *p, size_t n, bc_err *e)
{
    static const unsigned char header[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
    if (n == 0)
        return BC_OK;
    if (g->header_pending) {
        /* Written with the first output, so that opening a writer never fails on I/O. */
        g->header_pending = 0;
        int rc = sink(g, header, sizeof header, e);
        if (rc)
            return rc;
    }
    if (g->hash_out && bc__sha256_update(&g->sha_out, p, n))
        return bc__fail(e, BC_ENOMEM, ENOMEM, "sha256 failed");
    g->out_total += n;
    if (g->fd < 0) {
        int rc = grow(&g->mem, &g->mem_cap, g->mem_len + n, e);
        if (rc)
            return rc;
        memcpy(g->mem + g->mem_len, p, n);
        g->mem_len += n;
        return BC_OK;
    }
    return bc__out_write(g, p, n, e);
}

/* ---- the pool ---- */

static void pump(bc_gz *g);

static void *pool_main(void *arg)
{
    bc_pool *p = arg;
    bc_comp comp;
    int ready = 0;
    bc__name_thread("bc-deflate");
    memset(&comp, 0, sizeof comp);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->head == NULL)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stop)
            break;
        bc_slot *s = p->head;
        p->head = s->next;
        if (p->head == NULL)
            p->tail = NULL;
        s->next = NULL;
        pthread_mutex_unlock(&p->mu);
        bc_gz *g = s->owner;
        int rc = BC_OK;
        /* The writers of one pool normally share a codec and level; another one re-creates
         * the engine. */
        if (ready && (comp.codec != g->codec || comp.level != g->level)) {
            bc__comp_free(&comp);
            ready = 0;
        }
        if (!ready) {
            rc = bc__comp_init(&comp, g->codec, g->level, &s->err);
            if (rc)
                bc__comp_free(&comp);
            else
                ready = 1;
        }
        if (rc == BC_OK)
            rc = bc__comp_chunk(&comp, s->dict, s->dict_len, s->in, s->in_len, &s->out,
                                &s->out_cap, &s->out_len, &s->err);
        pthread_mutex_lock(&g->mu);
        s->rc = rc;
        s->state = SLOT_DONE;
        if (g->fd >= 0)
            pump(g); /* in memory, the caller hands the output out between calls: it writes */
        g->inflight--;
        pthread_cond_broadcast(&g->cv_done);
        /* g may be freed as soon as this unlock lets its owner see inflight == 0. */
        pthread_mutex_unlock(&g->mu);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    if (ready)
        bc__comp_free(&comp);
    return NULL;
}

/* 0 threads: one per online core. */
static int resolve_threads(int *threads, bc_err *e)
{
    if (*threads < 0)
        return bc__fail(e, BC_EINVAL, 0, "threads must be >= 0, not %d", *threads);
    if (*threads == 0)
        *threads = bc__online_cpus();
    return BC_OK;
}

/* A mutex and its condition, both or neither (the caller's teardown destroys them only once
 * both exist, which its sync_ready flag records). */
int bc__sync_init(pthread_mutex_t *mu, pthread_cond_t *cv, bc_err *e)
{
    if (pthread_mutex_init(mu, NULL))
        return bc__fail(e, BC_ENOMEM, ENOMEM, "cannot create thread locks");
    if (pthread_cond_init(cv, NULL)) {
        pthread_mutex_destroy(mu);
        return bc__fail(e, BC_ENOMEM, ENOMEM, "cannot create thread locks");
    }
    return BC_OK;
}

int bc__pool_init(bc_pool *p, int threads, bc_err *e)
{
    memset(p, 0, sizeof *p);
    int rc = resolve_threads(&threads, e);
    if (rc)
        return rc;
    if (threads > 64)
        threads = 64;
    p->nthreads = threads;
    p->tids = calloc((size_t)threads, sizeof *p->tids);
    /* The slots of two pipes at once (a push packs -j packages; more are freed). */
    p->spare_cap = 2 * (2 * (size_t)threads + 2);
    p->spare = calloc(p->spare_cap, sizeof *p->spare);
    if (p->tids == NULL || p->spare == NULL)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    if ((rc = bc__sync_init(&p->mu, &p->cv, e)))
        return rc;
    p->sync_ready = 1;
    return BC_OK;
}

/* Queue one piece (its owner's books already count it); starts the threads the first time. */
static int pool_push(bc_pool *p, bc_slot *s, bc_err *e)
{
    pthread_mutex_lock(&p->mu);
    while (p->nstarted < p->nthreads) {
        int prc = pthread_create(&p->tids[p->nstarted], NULL, pool_main, p);
        if (prc != 0) {
            if (p->nstarted > 0)
                break; /* fewer threads, still correct */
            pthread_mutex_unlock(&p->mu);
            return bc__fail(e, BC_ETHREAD, prc, "cannot start a compression thread: %s",
                            strerror(prc));
        }
        p->nstarted++;
    }
    s->next = NULL;
    if (p->tail)
        p->tail->next = s;
    else
        p->head = s;
    p->tail = s;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return BC_OK;
}

/* Take g's pieces that no thread has started off the queue; returns how many. */
static uint64_t pool_withdraw(bc_pool *p, const bc_gz *g)
{
    uint64_t n = 0;
    pthread_mutex_lock(&p->mu);
    bc_slot **link = &p->head;
    p->tail = NULL;
    while (*link != NULL) {
        bc_slot *s = *link;
        if (s->owner == g) {
            *link = s->next;
            s->next = NULL;
            n++;
        } else {
            p->tail = s;
            link = &s->next;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

void bc__pool_destroy(bc_pool *p)
{
    if (p->sync_ready) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->nstarted; i++)
            pthread_join(p->tids[i], NULL);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    for (size_t i = 0; i < p->nspare; i++) {
        free(p->spare[i].in);
        free(p->spare[i].dict);
        free(p->spare[i].out);
    }
    free(p->spare);
    for (size_t i = 0; i < p->ndspare; i++)
        free(p->dspare[i]);
    free(p->tids);
    memset(p, 0, sizeof *p);
}

int bc_pool_new(bc_pool **out, int threads, char *err, size_t errlen)
{
    bc_err e = {{0}, 0};
    *out = NULL;
    bc_pool *p = malloc(sizeof *p);
    if (p == NULL) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return BC_ENOMEM;
    }
    int rc = bc__pool_init(p, threads, &e);
    if (rc) {
        bc__copy_err(&e, err, errlen);
        bc__pool_destroy(p);
        free(p);
        return rc;
    }
    *out = p;
    return BC_OK;
}

int bc_pool_free(bc_pool *p)
{
    if (p == NULL)
        return BC_OK;
    bc__pool_destroy(p);
    free(p);
    return BC_OK;
}

/* A finished pipe's slot buffers go back to its pool (its threads are done with them). */
static void pool_keep(bc_pool *p, bc_slot *slots, size_t n)
{
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < n; i++) {
        bc_slot *s = &slots[i];
        if (s->in == NULL || p->nspare == p->spare_cap)
            continue; /* freed with the pipe */
        bc_spare *k = &p->spare[p->nspare++];
        k->in = s->in;
        k->dict = s->dict;
        k->out = s->out;
        k->out_cap = s->out_cap;
        s->in = s->dict = s->out = NULL;
        s->out_cap = 0;
    }
    pthread_mutex_unlock(&p->mu);
}

unsigned char *bc__pool_take_dbuf(bc_pool *p)
{
    unsigned char *buf = NULL;
    if (p == NULL)
        return NULL;
    pthread_mutex_lock(&p->mu);
    if (p->ndspare > 0)
        buf = p->dspare[--p->ndspare];
    pthread_mutex_unlock(&p->mu);
    return buf;
}

void bc__pool_keep_dbuf(bc_pool *p, unsigned char *buf)
{
    if (buf == NULL)
        return;
    if (p != NULL) {
        pthread_mutex_lock(&p->mu);
        if (p->ndspare < sizeof p->dspare / sizeof p->dspare[0]) {
            p->dspare[p->ndspare++] = buf;
            buf = NULL;
        }
        pthread_mutex_unlock(&p->mu);
    }
    free(buf);
}

/* Buffers for an empty slot from the pool's spares; 0 if it has none. */
static int pool_take(bc_pool *p, bc_slot *s)
{
    int got = 0;
    pthread_mutex_lock(&p->mu);
    if (p->nspare > 0) {
        bc_spare *k = &p->spare[--p->nspare];
        s->in = k->in;
        s->dict = k->dict;
        s->out = k->out;
        s->out_cap = k->out_cap;
        got = 1;
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

/* ---- the pipe ---- */

int bc__gz_open(bc_gz *g, int codec, int level, int threads, bc_pool *pool, int fd,
                int hash_out, int hash_in, int direct, bc_err *e)
{
    memset(g, 0, sizeof *g);
    g->fd = fd;
    int rc = bc__check_level(codec, level, e);
    if (rc)
        return rc;
    g->codec = codec;
    g->level = level;
    if (pool == NULL) {
        if ((rc = resolve_threads(&threads, e)))
            return rc;
        if (threads > 1) {
            pool = malloc(sizeof *pool);
            if (pool == NULL)
                return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
            g->own_pool = 1;
            g->pool = pool;
            if ((rc = bc__pool_init(pool, threads, e)))
                return rc;
        }
    }
    g->pool = pool;
    g->nworkers = pool ? pool->nthreads : 0;
    g->nslots = g->nworkers ? 2 * (size_t)g->nworkers + 2 : 1;
    g->slots = calloc(g->nslots, sizeof *g->slots);
    if (g->slots == NULL)
        return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
    if ((rc = bc__sync_init(&g->mu, &g->cv_done, e)))
        return rc;
    g->sync_ready = 1;
    g->hash_out = hash_out;
    if (hash_out) {
        if (bc__sha256_init(&g->sha_out))
            return bc__fail(e, BC_ENOMEM, ENOMEM, "cannot start sha256");
        g->sha_ready = 1;
    }
    g->hash_in = hash_in;
    if (hash_in) {
        if (bc__sha256_init(&g->sha_in))
            return bc__fail(e, BC_ENOMEM, ENOMEM, "cannot start sha256");
        g->sha_in_ready = 1;
    }
    g->crc = 0;
    g->header_pending = codec == BC_CODEC_GZIP;
    return bc__out_open(g, direct, e);
}

/* Under g->mu: hash and write finished pieces in order, unless another thread is at it. */
static void pump(bc_gz *g)
{
    while (!g->writing && g->wrc == 0 && g->written < g->submitted) {
        bc_slot *s = &g->slots[g->written % g->nslots];
        if (s->state != SLOT_DONE)
            return;
        g->writing = 1;
        pthread_mutex_unlock(&g->mu);
        bc_err e = {{0}, 0};
        int rc = s->rc;
        if (rc)
            e = s->err;
        else
            rc = sink(g, s->out, s->out_len, &e);
        pthread_mutex_lock(&g->mu);
        g->writing = 0;
        if (rc) {
            g->wrc = rc;
            g->werr = e;
        } else {
            s->state = SLOT_FREE;
            g->written++;
        }
        pthread_cond_broadcast(&g->cv_done);
    }
}

/* Write finished pieces in order (here, or wait for the thread writing them) until at least
 * upto are written; then return without waiting. */
static int drain(bc_gz *g, uint64_t upto, bc_err *e)
{
    int rc = BC_OK;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        pump(g);
        if (g->wrc) {
            rc = g->wrc;
            *e = g->werr;
            break;
        }
        if (g->written >= upto || g->written >= g->submitted)
            break;
        pthread_cond_wait(&g->cv_done, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static int submit(bc_gz *g, int last, bc_err *e)
{
    bc_slot *s = &g->slots[g->submitted % g->nslots];
    g->filling = 0;
    if (g->codec == BC_CODEC_GZIP)
        g->crc = bc__crc32(g->crc, s->in, s->in_len);
    if (g->hash_in && bc__sha256_update(&g->sha_in, s->in, s->in_len))
        return bc__fail(e, BC_ENOMEM, ENOMEM, "sha256 failed");
    /* Without workers, or for a single piece at the end, compress right here: small
     * packages never wait for a thread. */
    if (g->pool == NULL || (last && !g->used_pool)) {
        if (!g->inline_ready) {
            int rc = bc__comp_init(&g->inline_comp, g->codec, g->level, e);
            if (rc) {
                bc__comp_free(&g->inline_comp);
                return rc;
            }
            g->inline_ready = 1;
        }
        s->rc = bc__comp_chunk(&g->inline_comp, s->dict, s->dict_len, s->in, s->in_len,
                               &s->out, &s->out_cap, &s->out_len, &s->err);
        pthread_mutex_lock(&g->mu);
        s->state = SLOT_DONE;
        g->submitted++;
        pthread_mutex_unlock(&g->mu);
        return drain(g, g->submitted, e);
    }
    g->used_pool = 1;
    s->owner = g;
    pthread_mutex_lock(&g->mu);
    s->state = SLOT_QUEUED;
    g->submitted++;
    g->inflight++;
    pthread_mutex_unlock(&g->mu);
    int rc = pool_push(g->pool, s, e);
    if (rc) {
        pthread_mutex_lock(&g->mu);
        g->inflight--;
        s->rc = rc;
        s->err = *e;
        s->state = SLOT_DONE;
        pthread_mutex_unlock(&g->mu);
        return rc;
    }
    return drain(g, 0, e);
}

int bc__gz_space(bc_gz *g, unsigned char **p, size_t *avail, bc_err *e)
{
    if (!g->filling) {
        uint64_t seq = g->submitted;
        bc_slot *s = &g->slots[seq % g->nslots];
        if (seq >= g->nslots) {
            int rc = drain(g, seq - g->nslots + 1, e);
            if (rc)
                return rc;
        }
        if (s->in == NULL && (g->pool == NULL || !pool_take(g->pool, s))) {
            s->in = malloc(BC_CHUNK);
            s->dict = malloc(BC_DICT);
            if (s->in == NULL || s->dict == NULL)
                return bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory");
        }
        s->dict_len = 0;
        if (seq > 0 && g->codec == BC_CODEC_GZIP) {
            const bc_slot *prev = &g->slots[(seq - 1) % g->nslots];
            size_t k = prev->in_len < BC_DICT ? prev->in_len : BC_DICT;
            memcpy(s->dict, prev->in + prev->in_len - k, k);
            s->dict_len = k;
        }
        s->in_len = 0;
        s->rc = 0;
        s->state = SLOT_FILL;
        g->filling = 1;
    }
    bc_slot *s = &g->slots[g->submitted % g->nslots];
    *p = s->in + s->in_len;
    *avail = BC_CHUNK - s->in_len;
    return BC_OK;
}

int bc__gz_commit(bc_gz *g, size_t n, bc_err *e)
{
    bc_slot *s = &g->slots[g->submitted % g->nslots];
    s->in_len += n;
    g->in_total += n;
    if (s->in_len == BC_CHUNK)
        return submit(g, 0, e);
    return BC_OK;
}

/* Every piece is written: once no pool thread is left in this pipe's books, its slot
 * buffers serve the pool's next pipe. The pool is alive here; at bc__gz_close it may not be. */
static int finished(bc_gz *g, int rc)
{
    if (rc != BC_OK || g->pool == NULL)
        return rc;
    pthread_mutex_lock(&g->mu);
    while (g->inflight > 0)
        pthread_cond_wait(&g->cv_done, &g->mu);
    pthread_mutex_unlock(&g->mu);
    pool_keep(g->pool, g->slots, g->nslots);
    if (g->fd >= 0)
        bc__out_release(g);
    return rc;
}

int bc__gz_finish(bc_gz *g, bc_err *e)
{
    int rc;
    if (g->filling) {
        rc = submit(g, 1, e);
        if (rc)
            return rc;
    }
    rc = drain(g, g->submitted, e);
    if (rc)
        return rc;
    if (g->codec != BC_CODEC_GZIP) /* each zstd frame is complete */
        return finished(g, g->fd >= 0 ? bc__out_finish(g, e) : BC_OK);
    unsigned char tail[10];
    /* An empty final block with fixed codes: BFINAL=1, BTYPE=01, end-of-block. */
    tail[0] = 0x03;
    tail[1] = 0x00;
    for (int i = 0; i < 4; i++) {
        tail[2 + i] = (unsigned char)(g->crc >> (8 * i));
        tail[6 + i] = (unsigned char)(g->in_total >> (8 * i));
    }
    rc = sink(g, tail, sizeof tail, e);
    if (rc)
        return rc;
    return finished(g, g->fd >= 0 ? bc__out_finish(g, e) : BC_OK);
}

void bc__gz_close(bc_gz *g)
{
    if (g->sync_ready) {
        /* Pieces still queued or being compressed point into our slots. A finished pipe has
         * none, and then the (shared) pool is not touched: it may be gone already. */
        pthread_mutex_lock(&g->mu);
        uint64_t left = g->inflight;
        pthread_mutex_unlock(&g->mu);
        if (left > 0) {
            uint64_t withdrawn = pool_withdraw(g->pool, g);
            pthread_mutex_lock(&g->mu);
            g->inflight -= withdrawn;
            while (g->inflight > 0)
                pthread_cond_wait(&g->cv_done, &g->mu);
            pthread_mutex_unlock(&g->mu);
        }
    }
    if (g->own_pool && g->pool) {
        bc__pool_destroy(g->pool);
        free(g->pool);
    }
    g->pool = NULL;
    if (g->slots) {
        for (size_t i = 0; i < g->nslots; i++) {
            free(g->slots[i].in);
            free(g->slots[i].dict);
            free(g->slots[i].out);
        }
        free(g->slots);
    }
    if (g->inline_ready)
        bc__comp_free(&g->inline_comp);
    if (g->sha_ready)
        bc__sha256_free(&g->sha_out);
    if (g->sha_in_ready)
        bc__sha256_free(&g->sha_in);
    if (g->sync_ready) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv_done);
    }
    bc__out_close(g);
    free(g->mem);
    memset(g, 0, sizeof *g);
    g->fd = -1;
}

int bc_compress_buffer(const unsigned char *data, size_t len, int codec, int level,
                       int threads, unsigned char **out, size_t *out_len, char *err,
                       size_t errlen)
{
    bc_gz g;
    bc_err e = {{0}, 0};
    *out = NULL;
    *out_len = 0;
    int rc = bc__gz_open(&g, codec, level, threads, NULL, -1, 0, 0, BC_DIRECT_NEVER, &e);
    while (rc == BC_OK && len > 0) {
        unsigned char *p;
        size_t avail;
        rc = bc__gz_space(&g, &p, &avail, &e);
        if (rc)
            break;
        size_t k = len < avail ? len : avail;
        memcpy(p, data, k);
        data += k;
        len -= k;
        rc = bc__gz_commit(&g, k, &e);
    }
    if (rc == BC_OK)
        rc = bc__gz_finish(&g, &e);
    if (rc == BC_OK) {
        *out = g.mem;
        *out_len = g.mem_len;
        g.mem = NULL;
    } else {
        bc__copy_err(&e, err, errlen);
    }
    bc__gz_close(&g);
    return rc;
}

/* The default level is the fastest one whose output stays within 1.2x of gzip -6 on binaries
 * and text (benchmarks/bench_native.py, 100 MB of /usr/lib ELF + /usr/share text, one core):
 *   ISA-L 1: 1.153x at 410 MB/s; ISA-L 2: 1.137x at 409 MB/s; ISA-L 3: 1.111x at 254 MB/s;
 *   zlib 1: 1.127x at 101 MB/s; zlib 2: 1.098x at 93 MB/s; zlib 6: 1.000x at 28 MB/s. */
#ifdef BC_HAVE_ISAL
#define BC_BACKEND "isal"
#define BC_DEFAULT_LEVEL 2
#else
#define BC_BACKEND "zlib"
#define BC_DEFAULT_LEVEL 1
#endif

int bc_info(const char **backend, int *default_level, size_t *chunk_size)
{
    *backend = BC_BACKEND;
    *default_level = BC_DEFAULT_LEVEL;
    *chunk_size = BC_CHUNK;
    return BC_OK;
}

/* zstd's default is the fastest level whose output is no larger than gzip -6 (same sample,
 * benchmarks/bench_native.py --zstd-levels, measured on the loaded 2-core machine, so MB per
 * CPU-second): zstd 1: 1.097x at 266; zstd 2: 1.037x at 239; zstd 3: 0.993x at 203;
 * zstd 4: 0.989x at 144; zstd 9: 0.923x at 55; zstd 19: 0.827x at 3; against ISA-L 2 (the gzip
 * default) 1.137x at 333 and zlib 6 1.000x at 27. */
#define BC_ZSTD_DEFAULT_LEVEL 3

int bc_codec_info(int codec, int *available, int *default_level, int *min_level,
                  int *max_level)
{
    *available = 0;
    *default_level = *min_level = *max_level = 0;
    if (codec == BC_CODEC_GZIP) {
        *available = 1;
        *default_level = BC_DEFAULT_LEVEL;
        *max_level = 9;
        return BC_OK;
    }
    if (codec != BC_CODEC_ZSTD)
        return BC_EINVAL;
#ifdef BC_HAVE_ZSTD
    *available = 1;
#endif
    *default_level = BC_ZSTD_DEFAULT_LEVEL;
    *min_level = BC_ZSTD_MIN;
    *max_level = BC_ZSTD_MAX;
    return BC_OK;
}
