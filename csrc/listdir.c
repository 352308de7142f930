/* The subdirectories of one directory with their change times, in one call.
 *
 * Why in C: an index update of a directory mirror stats every per-name manifest directory to
 * find the ones changed since its last listing; at 50,000 names Python's os.listdir plus one
 * os.stat each cost about 0.2 s, of which the system calls are a third. Here the GIL is
 * released (cffi), the entries a directory's d_type says are no directory are not stat'ed,
 * the stats can be shared by threads, and only the directories changed since the caller's
 * time come back to Python (an update needs the others' count and newest time only).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Fewer entries than this per thread are not worth a thread's start. */
#define MIN_PER_THREAD 4096
#define MAX_THREADS 8

typedef struct names_buf {
    char *text; /* names, each NUL-terminated, one after another */
    size_t len, cap;
    size_t *at; /* where each name starts in text */
    size_t count, at_cap;
} names_buf;

static int names_add(names_buf *b, const char *name)
{
    size_t n = strlen(name) + 1;
    if (bc__grow((void **)&b->text, &b->cap, b->len + n, 1, 4096) != BC_OK
        || bc__grow((void **)&b->at, &b->at_cap, b->count + 1, sizeof *b->at, 256) != BC_OK)
        return BC_ENOMEM;
    memcpy(b->text + b->len, name, n);
    b->at[b->count++] = b->len;
    b->len += n;
    return BC_OK;
}

/* The entries that may be directories: all but ".", "..", skipped names and what d_type
 * says is something else. */
static int read_names(const char *path, const char *skip, names_buf *b, bc_err *e)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return bc__fail(e, BC_EIO, errno, "cannot list %s: %s", path, strerror(errno));
    size_t skip_len = strlen(skip);
    int rc = BC_OK;
    for (;;) {
        errno = 0;
        struct dirent *ent = readdir(d);
        if (ent == NULL) {
            if (errno != 0)
                rc = bc__fail(e, BC_EIO, errno, "cannot list %s: %s", path, strerror(errno));
            break;
        }
        const char *name = ent->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        if (skip_len && strncmp(name, skip, skip_len) == 0)
            continue;
        if (ent->d_type != DT_DIR && ent->d_type != DT_UNKNOWN)
            continue;
        if (names_add(b, name) != BC_OK) {
            rc = bc__fail(e, BC_ENOMEM, ENOMEM, "out of memory listing %s", path);
            break;
        }
    }
    closedir(d);
    return rc;
}

/* One thread's share of the stats: ctimes[i] for i in [from, to), NAN where the entry is no
 * directory (any more). */
typedef struct stat_job {
    const char *path;
    const names_buf *b;
    double *ctimes;
    size_t from, to;
    int rc;
    bc_err err;
} stat_job;

static void *stat_range(void *arg)
{
    stat_job *j = arg;
    /* A descriptor of its own: threads sharing one would contend for its reference count. */
    int fd = open(j->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        j->rc = bc__fail(&j->err, BC_EIO, errno, "cannot list %s: %s", j->path, strerror(errno));
        return NULL;
    }
    for (size_t i = j->from; i < j->to; i++) {
        const char *name = j->b->text + j->b->at[i];
        struct stat st;
        j->ctimes[i] = NAN;
        if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue; /* removed while listing: its absence is what counts */
            j->rc = bc__fail(&j->err, BC_EIO, errno, "cannot stat %s/%s: %s", j->path, name,
                             strerror(errno));
            break;
        }
        if (S_ISDIR(st.st_mode)) /* the same double as Python's os.stat().st_ctime */
            j->ctimes[i] = (double)st.st_ctim.tv_sec + (double)st.st_ctim.tv_nsec * 1e-9;
    }
    close(fd);
    return NULL;
}

static int stat_all(const char *path, const names_buf *b, double *ctimes, int threads,
                    bc_err *e)
{
    stat_job jobs[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    size_t n = b->count;
    if (threads <= 0)
        threads = bc__online_cpus();
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if ((size_t)threads > n / MIN_PER_THREAD)
        threads = n / MIN_PER_THREAD > 0 ? (int)(n / MIN_PER_THREAD) : 1;
    for (int t = 0; t < threads; t++) {
        stat_job *j = &jobs[t];
        j->path = path;
        j->b = b;
        j->ctimes = ctimes;
        j->from = n * (size_t)t / (size_t)threads;
        j->to = n * (size_t)(t + 1) / (size_t)threads;
        j->rc = BC_OK;
        j->err.msg[0] = '\0';
        j->err.sys_errno = 0;
    }
    /* Jobs 1.. on threads of their own (one that cannot start runs here), job 0 here. */
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, stat_range, &jobs[t]) == 0;
    stat_range(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            stat_range(&jobs[t]);
    }
    for (int t = 0; t < threads; t++) {
        if (jobs[t].rc != BC_OK) {
            *e = jobs[t].err;
            return jobs[t].rc;
        }
    }
    return BC_OK;
}

int bc_list_dirs(const char *path, const char *skip_prefix, double since, int threads,
                 size_t *count, double *newest, char **names, size_t *names_len,
                 double **ctimes, size_t *nchanged, int *sys_errno, char *err, size_t errlen)
{
    bc_err e = {{0}, 0};
    names_buf b = {NULL, 0, 0, NULL, 0, 0};
    double *times = NULL;
    char *out_names = NULL;
    double *out_times = NULL;
    *count = *names_len = *nchanged = 0;
    *newest = 0.0;
    *names = NULL;
    *ctimes = NULL;
    *sys_errno = 0;
    if (path == NULL)
        return BC_EINVAL;
    int rc = read_names(path, skip_prefix ? skip_prefix : "", &b, &e);
    if (rc == BC_OK && b.count) {
        times = malloc(b.count * sizeof *times);
        rc = times == NULL ? bc__fail(&e, BC_ENOMEM, ENOMEM, "out of memory listing %s", path)
                           : stat_all(path, &b, times, threads, &e);
    }
    size_t kept = 0, kept_len = 0, dirs = 0;
    double top = 0.0;
    if (rc == BC_OK) {
        for (size_t i = 0; i < b.count; i++) {
            if (isnan(times[i]))
                continue;
            dirs++;
            top = times[i] > top ? times[i] : top;
            if (times[i] >= since) {
                kept++;
                kept_len += strlen(b.text + b.at[i]) + 1;
            }
        }
        out_names = malloc(kept_len ? kept_len : 1);
        out_times = malloc(kept ? kept * sizeof *out_times : 1);
        if (out_names == NULL || out_times == NULL)
            rc = bc__fail(&e, BC_ENOMEM, ENOMEM, "out of memory listing %s", path);
    }
    if (rc == BC_OK) {
        size_t k = 0, pos = 0;
        for (size_t i = 0; i < b.count; i++) {
            if (isnan(times[i]) || !(times[i] >= since))
                continue;
            const char *name = b.text + b.at[i];
            size_t n = strlen(name) + 1;
            memcpy(out_names + pos, name, n);
            pos += n;
            out_times[k++] = times[i];
        }
        *count = dirs;
        *newest = top;
        *names = out_names;
        *names_len = kept_len;
        *ctimes = out_times;
        *nchanged = kept;
    } else {
        free(out_names);
        free(out_times);
        *sys_errno = e.sys_errno;
        bc__copy_err(&e, err, errlen);
    }
    free(times);
    free(b.text);
    free(b.at);
    return rc;
}
