/* Declarations shared between the C files of the core; not part of the public API.
 * These symbols are hidden from the shared object (bc__ prefix, hidden visibility). */
#ifndef BINCACHE_INTERNAL_H
#define BINCACHE_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <stddef.h>
#include <stdint.h>

#include "bincache.h"

#include <openssl/evp.h>
#ifdef BC_HAVE_ISAL
#include <isa-l.h>
#endif
#include <zlib.h>
#ifdef BC_HAVE_ZSTD
#include <zstd.h>
#endif

#if defined(__GNUC__)
#define BC_HIDDEN __attribute__((visibility("hidden")))
#define BC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define BC_HIDDEN
#define BC_PRINTF(f, a)
#endif

/* Uncompressed bytes per independently compressed piece. Fixed, so that the output does not
 * depend on the number of threads. */
#define BC_CHUNK ((size_t)1 << 20)
/* Each piece is compressed with the 32 KiB before it as its dictionary (as pigz does), which
 * wins back most of the ratio lost by cutting the stream. */
#define BC_DICT ((size_t)32768)
/* Direct output (O_DIRECT): output collects in an aligned buffer of BC_DIRECT_BUF bytes and goes
 * out in whole blocks of BC_DIRECT_ALIGN (a page: every block device's logical block divides
 * it). */
#define BC_DIRECT_BUF ((size_t)1 << 20)
#define BC_DIRECT_ALIGN ((size_t)4096)
/* bc__gz_open's direct: never, on a local disk file system only, on any that takes it. */
enum { BC_DIRECT_NEVER = 0, BC_DIRECT_LOCAL = 1, BC_DIRECT_ANY = 2 };

typedef struct bc_err {
    char msg[1024];
    int sys_errno;
} bc_err;

BC_HIDDEN int bc__fail(bc_err *e, int rc, int sys_errno, const char *fmt, ...) BC_PRINTF(4, 5);
BC_HIDDEN void bc__copy_err(const bc_err *e, char *buf, size_t len);

/* SHA-256 is OpenSSL's only (EVP picks SHA-NI/AVX2 code at run time): with the portable C it
 * replaced, the tar writer at level 0 did 3-4x fewer MB per CPU-second. */
typedef struct bc_sha256 {
    EVP_MD_CTX *ctx;
} bc_sha256;

static inline int bc__sha256_init(bc_sha256 *s)
{
    s->ctx = EVP_MD_CTX_new();
    if (s->ctx == NULL)
        return BC_ENOMEM;
    if (EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(s->ctx);
        s->ctx = NULL;
        return BC_ENOMEM;
    }
    return BC_OK;
}

static inline int bc__sha256_update(bc_sha256 *s, const void *data, size_t len)
{
    if (len == 0)
        return BC_OK;
    return EVP_DigestUpdate(s->ctx, data, len) == 1 ? BC_OK : BC_ENOMEM;
}

static inline int bc__sha256_hex(bc_sha256 *s, char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char d[32];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(s->ctx, d, &n) != 1 || n != 32)
        return BC_ENOMEM;
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = '\0';
    return BC_OK;
}

static inline void bc__sha256_free(bc_sha256 *s)
{
    if (s->ctx != NULL)
        EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
}

/* Codec and level -> implementation: gzip 0..9, zstd 1..19 (when built with libzstd). */
BC_HIDDEN int bc__check_level(int codec, int level, bc_err *e);

/* One compression engine (reused for many chunks). */
typedef struct bc_comp {
    int codec;
    int level;
    int use_isal;
#ifdef BC_HAVE_ZSTD
    ZSTD_CCtx *zc;
#endif
#ifdef BC_HAVE_ISAL
    struct isal_zstream zs;
    unsigned char *lvlbuf;
    size_t lvlbuf_size;
#endif
    z_stream z;
    int z_ready;
} bc_comp;

BC_HIDDEN int bc__comp_init(bc_comp *c, int codec, int level, bc_err *e);
/* gzip: raw deflate of in[0..n) with dict as history, ending on a byte boundary (sync flush),
 * not final. zstd: one whole frame of in[0..n) (no dict). *out grows as needed. */
BC_HIDDEN int bc__comp_chunk(bc_comp *c, const unsigned char *dict, size_t dict_len,
                             const unsigned char *in, size_t n, unsigned char **out,
                             size_t *out_cap, size_t *out_len, bc_err *e);
BC_HIDDEN void bc__comp_free(bc_comp *c);
BC_HIDDEN uint32_t bc__crc32(uint32_t crc, const unsigned char *p, size_t n);

/* The parallel pipe: bytes in, one gzip member (or a run of zstd frames) out, in order. */
struct bc_gz;
typedef struct bc_slot {
    unsigned char *in;
    size_t in_len;
    unsigned char *dict;
    size_t dict_len;
    unsigned char *out;
    size_t out_cap;
    size_t out_len;
    int state;
    int rc;
    bc_err err;
    struct bc_slot *next; /* in the pool's queue */
    struct bc_gz *owner;
} bc_slot;

/* The buffers of one piece slot, kept by a pool between the pipes it serves. */
typedef struct bc_spare {
    unsigned char *in;
    unsigned char *dict;
    unsigned char *out;
    size_t out_cap;
} bc_spare;

/* Compression threads serving pieces first come, first served: a writer's own (threads > 1),
 * or one shared by the writers of a push (bc_pool_new), so that packing two packages at once
 * on two cores runs two deflate threads, not four, and starts them once. Threads start with
 * the first piece queued. */
struct bc_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bc_slot *head;
    bc_slot *tail;
    int nthreads;
    int nstarted;
    pthread_t *tids;
    int stop;
    int sync_ready;
    /* The slot buffers of finished pipes, for the next ones (under mu): a push packs package
     * after package, and each fresh buffer cost a page fault per 4 KiB touched (the chain tree
     * of 19 packages: 30,000 faults, two thirds of the process's). */
    bc_spare *spare;
    size_t nspare;
    size_t spare_cap;
    unsigned char *dspare[4]; /* direct-output buffers (output.c), two pipes' worth */
    size_t ndspare;
};

BC_HIDDEN int bc__pool_init(bc_pool *p, int threads, bc_err *e);
/* A mutex and its condition, both or neither. */
BC_HIDDEN int bc__sync_init(pthread_mutex_t *mu, pthread_cond_t *cv, bc_err *e);
/* What "0 threads" means everywhere in the core: one per online CPU (at least 1). */
BC_HIDDEN int bc__online_cpus(void);
/* An array of *cap items of unit bytes made to hold need (doubling from first); BC_ENOMEM
 * leaves it as it was. */
BC_HIDDEN int bc__grow(void **p, size_t *cap, size_t need, size_t unit, size_t first);
/* Best effort (Linux: 15 characters), never fails. */
BC_HIDDEN void bc__name_thread(const char *name);
BC_HIDDEN void bc__pool_destroy(bc_pool *p);
/* A kept direct-output buffer (BC_DIRECT_BUF, aligned), or NULL; and one given back (freed
 * when the pool keeps enough). p may be NULL. */
BC_HIDDEN unsigned char *bc__pool_take_dbuf(bc_pool *p);
BC_HIDDEN void bc__pool_keep_dbuf(bc_pool *p, unsigned char *buf);

/* The thread that writes a pipe's full direct-output buffers, one at a time. */
typedef struct bc_flusher {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int tried; /* started, or could not be: full buffers are then written by the pipe */
    int sync_ready;
    int running;
    int stop;
    unsigned char *buf; /* handed over and not written yet; NULL: idle */
    int rc;             /* its first failure, reported at the next hand-over or at the end */
    bc_err err;
} bc_flusher;

typedef struct bc_gz {
    int codec;
    int level;
    int nworkers; /* threads of the pool; 0: compress on the calling thread */
    size_t nslots;
    bc_slot *slots;
    uint64_t submitted; /* chunks handed to the workers */
    uint64_t written;   /* chunks written out */
    uint64_t inflight;  /* chunks queued in the pool or being compressed there */
    int filling;        /* slots[submitted % nslots] is being filled */
    pthread_mutex_t mu;
    pthread_cond_t cv_done;
    int sync_ready;
    bc_pool *pool;
    int own_pool; /* pool was made by (and is freed with) this pipe */
    int used_pool;
    /* Finished pieces are hashed and written in order by whichever thread holds `writing`:
     * the caller, or (output to a descriptor) the pool thread that finished the next piece,
     * so that one packing thread is not the bottleneck. A failure stays in wrc/werr. */
    int writing;
    int wrc;
    bc_err werr;
    bc_comp inline_comp;
    int inline_ready;
    uint32_t crc;
    uint64_t in_total;
    uint64_t out_total;
    int fd; /* -1: keep output in mem */
    /* Output to fd without the page cache (output.c). collect: output collects in dbuf, and
     * each full one is written by the flusher thread while the next fills (a direct write
     * waits for the disk: on the compressing thread it held up the pieces behind it). direct:
     * O_DIRECT is on; it drops back to buffered writes for good when the file system refuses a
     * write, and for the tail. */
    int collect;
    int direct;
    int direct_set; /* this pipe set O_DIRECT on fd (and clears it) */
    unsigned char *dbuf;
    unsigned char *dbuf_spare;
    size_t dbuf_len;
    uint64_t direct_bytes;
    bc_flusher fl;
    int header_pending;
    unsigned char *mem;
    size_t mem_len;
    size_t mem_cap;
    int hash_out;
    bc_sha256 sha_out;
    int sha_ready;
    /* SHA-256 of the uncompressed stream, when wanted: updated once per piece (one call per
     * MiB instead of one per header or small file; SHA-256 is compute-bound, so hashing a
     * whole piece from L2/L3 costs no more). */
    int hash_in;
    bc_sha256 sha_in;
    int sha_in_ready;
} bc_gz;

/* pool: shared threads (threads is then ignored), or NULL: threads of its own. direct: a
 * BC_DIRECT_* policy for fd; where it does not apply (not a regular file, another file system,
 * O_DIRECT refused) the output is written as usual, with the same bytes. */
BC_HIDDEN int bc__gz_open(bc_gz *g, int codec, int level, int threads, bc_pool *pool, int fd,
                          int hash_out, int hash_in, int direct, bc_err *e);
/* A place to put the next uncompressed bytes: *avail >= 1. */
BC_HIDDEN int bc__gz_space(bc_gz *g, unsigned char **p, size_t *avail, bc_err *e);
/* The first n bytes at the place given by bc__gz_space are now part of the stream. */
BC_HIDDEN int bc__gz_commit(bc_gz *g, size_t n, bc_err *e);
BC_HIDDEN int bc__gz_finish(bc_gz *g, bc_err *e);
BC_HIDDEN void bc__gz_close(bc_gz *g);

/* The output of a pipe with fd >= 0 (output.c): open sets up direct output when the policy
 * applies; write may hold bytes back until finish; close frees and, unfinished, clears the
 * O_DIRECT it set. */
BC_HIDDEN int bc__out_open(bc_gz *g, int direct, bc_err *e);
BC_HIDDEN int bc__out_write(bc_gz *g, const unsigned char *p, size_t n, bc_err *e);
BC_HIDDEN int bc__out_finish(bc_gz *g, bc_err *e);
BC_HIDDEN void bc__out_close(bc_gz *g);
/* A finished output's buffers back to the pool (bc__gz_finish, while the pool is alive). */
BC_HIDDEN void bc__out_release(bc_gz *g);

/* Streaming multi-prefix scanner: leftmost, longest at a position, non-overlapping; a match
 * that straddles two fed pieces is found. */
typedef struct bc_scanner {
    size_t n;              /* number of prefixes (including empty ones, which never match) */
    unsigned char **pat;   /* copies */
    size_t *plen;
    size_t *order;         /* non-empty prefixes: longest first, then lowest index */
    size_t norder;
    size_t maxlen;
    size_t common;         /* bytes every non-empty prefix starts with */
    /* Prefixes longer than common, grouped by their byte after the common part (each group in
     * `order` order): bucket[bstart[b] .. bstart[b + 1]); then `shortp`, those that are just
     * the common part. A candidate is compared only with its group. */
    size_t *bucket;
    size_t bstart[257];
    size_t *shortp;
    size_t nshort;
    unsigned char first[256];
    unsigned char *carry;  /* undecided tail of what was fed, capacity 2 * maxlen */
    size_t carry_len;
    uint64_t carry_off;
    uint64_t fed;
    uint64_t skip_until;   /* no match may start before this (non-overlap) */
    bc_hit *hits;
    size_t nhits;
    size_t hits_cap;
} bc_scanner;

BC_HIDDEN int bc__scanner_init(bc_scanner *s, const bc_buf *prefixes, size_t n, bc_err *e);
BC_HIDDEN void bc__scanner_reset(bc_scanner *s);
BC_HIDDEN int bc__scanner_feed(bc_scanner *s, const unsigned char *data, size_t n, bc_err *e);
BC_HIDDEN int bc__scanner_finish(bc_scanner *s, bc_err *e);
BC_HIDDEN void bc__scanner_free(bc_scanner *s);

/* ---- the tar writer (writer.c), shared with the directory walk (walk.c) ---- */

typedef struct bc__walk bc__walk;

struct bc_writer {
    bc_gz gz;
    bc_scanner scan;
    bc_err err;
    int finished;
    int broken;
    volatile sig_atomic_t cancelled; /* set by bc_writer_cancel from another thread */
    char first_err[1024]; /* what broke it */
    uint64_t usize;
    unsigned char *hdr;
    size_t hdr_len;
    size_t hdr_cap;
    unsigned char *name;
    size_t name_cap;
    int atime_kept; /* O_NOATIME was refused (EPERM: not the files' owner): open without it */
    bc__walk *walk; /* bc_writer_add_entries' state (walk.c), made by its first call */
};

BC_HIDDEN void bc__walk_free(bc__walk *walk);
/* BC_OK, or the error of a finished writer or one broken by an earlier error. */
BC_HIDDEN int bc__writer_ready(bc_writer *w);

/* A file's mode in the tarball as Spack writes it: 0755 when its owner may execute it. */
static inline int bc__spack_mode(mode_t st_mode)
{
    return (st_mode & S_IXUSR) ? 0755 : 0644;
}

#endif
