/* bincache native core: the public C API.
 *
 * Conventions: every function returns an int (0 = ok, negative BC_E* code on failure; the two
 * exceptions are bc_abi_version, which returns the version, and bc_strerror, which returns a
 * static string). Results come back through pointers. Functions that can fail with a message
 * either keep it in their handle (bc_writer_error) or write it into a caller's buffer
 * (err, errlen). Nothing here keeps global state, so handles can be used from several threads
 * (one thread per handle at a time, but for bc_writer_cancel).
 *
 * This header is also the cffi cdef (bincache/_native/_build.py reads the part between the
 * BC_CDEF_BEGIN and BC_CDEF_END markers), so keep that part free of preprocessor lines.
 */
#ifndef BINCACHE_H
#define BINCACHE_H

#include <stddef.h>
#include <stdint.h>

#define BC_ABI_VERSION 11

/* BC_CDEF_BEGIN */
enum {
    BC_OK = 0,
    BC_ENOMEM = -1,      /* out of memory */
    BC_EIO = -2,         /* a file could not be read or written (sys errno in the message) */
    BC_EINVAL = -3,      /* a bad argument (level out of range, NUL in a name, ...) */
    BC_ESTATE = -4,      /* the writer is finished, or unusable after an earlier error */
    BC_ECANNOTGROW = -5, /* a new prefix is longer than the old one it replaces */
    BC_EMISMATCH = -6,   /* a patch's offset does not hold the expected old bytes */
    BC_EDEFLATE = -7,    /* the deflate library reported an error */
    BC_ETHREAD = -8,     /* a worker thread could not be started */
    BC_EDATA = -9,       /* compressed data is damaged (bad header, CRC, length, deflate data) */
    BC_ETRUNC = -10,     /* compressed data ends too early (or there is none) */
    BC_ECANCELED = -11   /* bc_writer_cancel was called */
};

enum { BC_KIND_TEXT = 0, BC_KIND_BINARY = 1, BC_KIND_ELF = 2 };

/* Output formats of the writer: one gzip member, or zstd frames (one per piece). */
enum { BC_CODEC_GZIP = 0, BC_CODEC_ZSTD = 1 };

/* bc_writer_new flags. BC_WRITER_DIFF_ID: also hash the uncompressed tar stream (an OCI
 * layer's diff_id); without it bc_result.diff_id is "" and a SHA-256 pass over every input
 * byte is saved. BC_WRITER_DIRECT: write the output (fd >= 0, a regular file) with O_DIRECT,
 * bypassing the page cache, when it is on a local disk file system (ext2/3/4, xfs, btrfs);
 * with BC_WRITER_DIRECT_ANY too, on any file system that takes O_DIRECT. Whole 4 KiB blocks
 * go out directly from a reused buffer, the tail (and everything after a write the file
 * system refused) buffered, so the file's bytes are the same either way; O_DIRECT is cleared
 * again by bc_writer_finish. */
enum { BC_WRITER_DIFF_ID = 1, BC_WRITER_DIRECT = 2, BC_WRITER_DIRECT_ANY = 4 };

typedef struct bc_writer bc_writer;
typedef struct bc_pool bc_pool;
typedef struct bc_inflater bc_inflater;

/* A byte string the caller owns. */
typedef struct bc_buf {
    const unsigned char *ptr;
    size_t len;
} bc_buf;

/* One prefix occurrence: index into the prefix list, byte offset in the file/buffer. */
typedef struct bc_hit {
    uint64_t prefix;
    uint64_t offset;
} bc_hit;

/* What the writer learned about one member. hits point into the writer and stay valid until
 * the next call on it. links, dev, ino: the file's (fstat of the descriptor read), so that a
 * walk can find hard links without a stat of its own; 1, 0, 0 for bytes. */
typedef struct bc_filescan {
    int kind;
    uint64_t size;
    size_t nhits;
    const bc_hit *hits;
    uint64_t links;
    uint64_t dev;
    uint64_t ino;
} bc_filescan;

/* One entry of a directory packed by bc_writer_add_entries that its caller has to know of:
 * a subdirectory (not packed: the caller walks it next), a file that is ELF or holds a prefix
 * (kind, size, hits[hit .. hit + nhits) of bc_dirwalk.hits), a symlink whose target holds a
 * prefix, or a hard link (target: the member name of the file first packed). Names are the
 * entries' own, NUL-terminated. */
enum { BC_ENTRY_DIR = 0, BC_ENTRY_FILE = 1, BC_ENTRY_SYMLINK = 2, BC_ENTRY_HARDLINK = 3 };

typedef struct bc_entry {
    int what;
    int kind;
    const char *name;
    const char *target;
    uint64_t size;
    size_t hit;
    size_t nhits;
} bc_entry;

/* What bc_writer_add_entries found; points into the writer, valid until its next call on it.
 * files, bytes: the regular files packed with their contents (hard links not counted). */
typedef struct bc_dirwalk {
    const bc_entry *entries;
    size_t nentries;
    const bc_hit *hits;
    uint64_t files;
    uint64_t bytes;
} bc_dirwalk;

typedef struct bc_result {
    char diff_id[65]; /* sha256 hex of the uncompressed tar stream */
    char digest[65];  /* sha256 hex of the gzip stream */
    uint64_t compressed_size;
    uint64_t uncompressed_size;
    uint64_t direct_bytes; /* of compressed_size, written with O_DIRECT */
} bc_result;

/* One in-place patch of apply_patches: at offset, old must be present; new must not be longer. */
typedef struct bc_patch {
    uint64_t offset;
    bc_buf old_bytes;
    bc_buf new_bytes;
} bc_patch;

int bc_abi_version(void);
const char *bc_strerror(int rc);
/* backend: "isal" or "zlib"; default_level: the fast level that keeps output within 1.2x of
 * gzip -6; chunk_size: the fixed size of the independently compressed pieces. */
int bc_info(const char **backend, int *default_level, size_t *chunk_size);
/* Whether this build has the codec, and its levels: default, lowest and highest accepted. */
int bc_codec_info(int codec, int *available, int *default_level, int *min_level,
                  int *max_level);

/* A streaming tar -> gzip (or zstd) writer. fd >= 0: output is written to that descriptor;
 * fd == -1: output is kept and handed out by bc_writer_take_output. threads == 0: one worker
 * per online CPU; threads == 1: compress on the calling thread. Output bytes do not depend on
 * threads. gzip level: 0 = stored; 1..3 = ISA-L igzip 1..3 (zlib 1..3 when built without
 * ISA-L); 4..9 = zlib. zstd level: 1..19 (libzstd's), each piece one frame with its content
 * size and checksum. pool != NULL: compress on that pool's threads (threads is ignored); the
 * pool must outlive every unfinished writer using it. On failure *sys_errno is the errno behind
 * it (ENOSPC...), or 0. */
int bc_writer_new(bc_writer **out, int fd, const bc_buf *prefixes, size_t nprefixes, int codec,
                  int level, int threads, bc_pool *pool, int flags, char *err, size_t errlen,
                  int *sys_errno);
int bc_writer_free(bc_writer *w);
/* Compression threads for several writers at once (threads == 0: one per online CPU); they
 * start when the first piece is queued. Free it after every writer using it is finished or
 * freed. */
int bc_pool_new(bc_pool **out, int threads, char *err, size_t errlen);
int bc_pool_free(bc_pool *p);
int bc_writer_error(const bc_writer *w, const char **message, int *sys_errno);
int bc_writer_add_dir(bc_writer *w, const char *name, size_t name_len, int mode);
int bc_writer_add_symlink(bc_writer *w, const char *name, size_t name_len, const char *target,
                          size_t target_len);
int bc_writer_add_hardlink(bc_writer *w, const char *name, size_t name_len, const char *target,
                           size_t target_len, int mode);
/* mode < 0: Spack's mode from the file's own: 0755 when its owner may execute it, else 0644. */
int bc_writer_add_file(bc_writer *w, const char *name, size_t name_len, const char *path,
                       int mode, bc_filescan *scan);
/* bc_writer_add_file of the entry base of the directory open as dirfd (dir: that directory's
 * path, for messages only). A walk opens each directory once, instead of the kernel looking up
 * every component of every file's whole path again. */
int bc_writer_add_file_at(bc_writer *w, const char *name, size_t name_len, int dirfd,
                          const char *dir, const char *base, int mode, bc_filescan *scan);
int bc_writer_add_bytes(bc_writer *w, const char *name, size_t name_len,
                        const unsigned char *data, size_t len, int mode, bc_filescan *scan);
/* One directory of a prefix, open as dirfd (dir: its path, for messages): its header (member_dir, ending in "/", mode 0755), then its other entries in the
 * byte order of their names: files (mode from the owner's execute bit), symlinks, and hard
 * links to a file with several links packed before by this writer; an entry named skip (NULL:
 * none) is left out, and a fifo, socket or device is an error (BC_EINVAL). Subdirectories are
 * listed in *out for the caller to walk after, as Spack's walk does. */
int bc_writer_add_entries(bc_writer *w, int dirfd, const char *dir, const char *member_dir,
                          size_t member_dir_len, const char *skip, bc_dirwalk *out);
/* Output produced since the last call (fd == -1 only); valid until the next call on w. */
int bc_writer_take_output(bc_writer *w, const unsigned char **data, size_t *len);
int bc_writer_finish(bc_writer *w, bc_result *result);
/* Stop the writer: a bc_writer_add_file running on another thread returns BC_ECANCELED after
 * the block it is reading, and the writer is unusable. The one call that may come from another
 * thread while the handle is in use (Ctrl-C must not wait for the end of a large file). */
int bc_writer_cancel(bc_writer *w);

/* Every non-overlapping occurrence of any prefix, leftmost first, longest at a position.
 * *hits is allocated (free it with bc_free). */
int bc_scan_buffer(const unsigned char *data, size_t len, const bc_buf *prefixes,
                   size_t nprefixes, bc_hit **hits, size_t *nhits, char *err, size_t errlen);
/* The streaming scanner the writer uses, fed data in pieces cut at the given ascending offsets
 * (for tests: a prefix split between two pieces must still be found). */
int bc_scan_pieces(const unsigned char *data, size_t len, const bc_buf *prefixes,
                   size_t nprefixes, const size_t *cuts, size_t ncuts, bc_hit **hits,
                   size_t *nhits, char *err, size_t errlen);
/* Spack's in-place rule: at each occurrence of olds[i] write "/" * (len(old) - len(new)) + new.
 * Nothing is written when any occurrence would need to grow. */
int bc_relocate_buffer(unsigned char *data, size_t len, const bc_buf *olds, const bc_buf *news,
                       size_t npairs, size_t *count, char *err, size_t errlen);
/* Check every patch against the file, then write them all; the file length never changes. */
int bc_apply_patches(const char *path, const bc_patch *patches, size_t npatches, char *err,
                     size_t errlen);
/* One whole gzip member (or zstd stream) of data, compressed by the same chunked engine as the
 * writer. *out is allocated (free it with bc_free). */
int bc_compress_buffer(const unsigned char *data, size_t len, int codec, int level,
                       int threads, unsigned char **out, size_t *out_len, char *err,
                       size_t errlen);
int bc_free(void *p);

/* Streaming gzip inflate (one or more members; CRC-32 and ISIZE of each checked; nothing but
 * another member may follow one) from a descriptor the handle reads itself: pread from offset,
 * or read() when offset is -1 (pipes). The descriptor is never closed. hash != 0: SHA-256 of
 * every compressed byte read, available from bc_inflater_digest once the stream ended. */
int bc_inflater_new(bc_inflater **out, int fd, int64_t offset, int hash, char *err,
                    size_t errlen);
int bc_inflater_free(bc_inflater *h);
/* Up to out_cap inflated bytes; *n_out == 0 with BC_OK only at the end of the stream. Bytes
 * inflated before damaged data are returned first; the error (BC_EDATA, BC_ETRUNC, BC_EIO)
 * comes with the next call, its message from bc_inflater_error. */
int bc_inflate_read(bc_inflater *h, unsigned char *out, size_t out_cap, size_t *n_out);
int bc_inflater_error(const bc_inflater *h, const char **message, int *sys_errno);
/* Hex SHA-256 of the compressed stream (65 bytes with the NUL); BC_ESTATE before the end. */
int bc_inflater_digest(bc_inflater *h, char *hex65);
int bc_inflater_stats(const bc_inflater *h, uint64_t *compressed, uint64_t *uncompressed,
                      uint64_t *members, int *finished);
/* The directories right below path (symlinks to directories are not), by their change times
 * (st_ctime in seconds, as Python's os.stat): *count of them and the newest time, *newest (0
 * without any); of those changed at or after since, the names in *names, each NUL-terminated,
 * one after another (*names_len bytes in all), and their times in *ctimes, *nchanged of each,
 * in the directory's order (both allocated: free each with bc_free). Names starting with
 * skip_prefix (NULL or "": none) are left out, and so is an entry removed while listing.
 * threads: how many share the stats (0: one per online CPU; fewer when there are fewer than
 * 4,096 entries each). */
int bc_list_dirs(const char *path, const char *skip_prefix, double since, int threads,
                 size_t *count, double *newest, char **names, size_t *names_len,
                 double **ctimes, size_t *nchanged, int *sys_errno, char *err, size_t errlen);
/* BC_CDEF_END */

#endif
