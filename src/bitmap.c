/* nbdsnap: per-snapshot bitmap files.  See bitmap.h for the format and
 * the design. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdsnap/checksum.h"
#include "nbdsnap/err.h"
#include "nbdsnap/io.h"
#include "bitmap.h"

#define BITMAP_MAGIC "NBDSNAPB"
#define BITMAP_VERSION 2
#define BITMAP_HDR BITMAP_PAGE

struct bitmap_header {
  char magic[8];
  uint32_t version;
  uint32_t zero;
  uint64_t nchunks;
  /* Version 2 from here; zeros in version 1. */
  uint64_t id;
  uint32_t state;
  uint32_t zero2;
  uint64_t checksum;            /* FNV-1a over the fields above */
};

/* A page of a shareable array (candidate bits): a reference count in
 * front of the bits; the arrays point at bits. */
struct shared_page {
  uint64_t refs;                /* atomic */
  uint64_t pad;
  uint64_t bits[BITMAP_PAGE_WORDS];
};

static struct shared_page *
shared_of (const uint64_t *bits)
{
  return (struct shared_page *) ((char *) bits
                                 - offsetof (struct shared_page, bits));
}

/* A zeroed page for array a. */
static uint64_t *
page_alloc (const struct bitmap_array *a)
{
  struct shared_page *sp;

  if (!a->shared)
    return calloc (1, BITMAP_PAGE);
  sp = calloc (1, sizeof *sp);
  if (sp == NULL)
    return NULL;
  sp->refs = 1;
  return sp->bits;
}

static void
page_free (const struct bitmap_array *a, uint64_t *p)
{
  if (p == NULL || p == bitmap_ones)
    return;
  if (!a->shared)
    free (p);
  else if (__atomic_sub_fetch (&shared_of (p)->refs, 1, __ATOMIC_ACQ_REL)
           == 0)
    free (shared_of (p));
}

const uint64_t bitmap_ones[BITMAP_PAGE_WORDS] = {
  [0 ... BITMAP_PAGE_WORDS - 1] = UINT64_MAX
};

static uint64_t
header_checksum (const struct bitmap_header *h)
{
  return checksum_fnv1a64 (h, offsetof (struct bitmap_header, checksum));
}

static uint64_t
array_bytes (uint64_t nchunks)
{
  uint64_t bytes = (nchunks + 63) / 64 * 8;
  return (bytes + BITMAP_PAGE - 1) & ~(uint64_t) (BITMAP_PAGE - 1);
}

static uint64_t
file_bytes (uint64_t nchunks)
{
  return BITMAP_HDR + 2 * array_bytes (nchunks);
}

static void
free_array (struct bitmap_array *a)
{
  uint64_t i;

  if (a->pages == NULL)
    return;
  for (i = 0; i < a->npages; ++i)
    page_free (a, a->pages[i]);
  free (a->pages);
  a->pages = NULL;
}

/* Set up the empty arrays and the locks for nchunks chunks. */
static int
init (struct bitmap_file *b, uint64_t nchunks)
{
  uint64_t abytes = array_bytes (nchunks);
  size_t i;

  b->nchunks = nchunks;
  b->nwords = abytes / 8;
  b->candidate.npages = b->copied.npages = abytes / BITMAP_PAGE;
  b->candidate.file_off = BITMAP_HDR;
  b->candidate.shared = true;
  b->copied.file_off = BITMAP_HDR + abytes;
  b->candidate.pages = calloc (b->candidate.npages, sizeof (uint64_t *));
  b->copied.pages = calloc (b->copied.npages, sizeof (uint64_t *));
  if (b->candidate.pages == NULL || b->copied.pages == NULL) {
    nbdsnap_error ("bitmap: calloc: %m");
    return -1;
  }
  for (i = 0; i < BITMAP_LOCKS; ++i)
    pthread_mutex_init (&b->locks[i], NULL);
  return 0;
}

static int
write_header (struct bitmap_file *b, uint32_t state)
{
  struct bitmap_header h = { .magic = BITMAP_MAGIC,
                             .version = BITMAP_VERSION,
                             .nchunks = b->nchunks,
                             .id = b->id,
                             .state = state };

  h.checksum = header_checksum (&h);
  return io_pwrite_full (b->fd, &h, sizeof h, 0);
}

int
bitmap_create (struct bitmap_file *b, int dirfd, const char *name,
               uint64_t nchunks, uint64_t id)
{
  memset (b, 0, sizeof *b);
  b->id = id;
  b->fd = openat (dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (b->fd == -1) {
    nbdsnap_error ("create bitmap: %s: %m", name);
    return -1;
  }
  if (init (b, nchunks) == -1)
    goto err;
  if (ftruncate (b->fd, file_bytes (nchunks)) == -1) {
    nbdsnap_error ("ftruncate: %s: %m", name);
    goto err;
  }
  if (write_header (b, BITMAP_STATE_CREATING) == -1) {
    nbdsnap_error ("write bitmap header: %s: %m", name);
    goto err;
  }
  b->version = BITMAP_VERSION;
  b->state = BITMAP_STATE_CREATING;
  return 0;

 err:
  bitmap_close (b);
  unlinkat (dirfd, name, 0);
  return -1;
}

/* Check a header read from a file; fills id and state.  Reports nothing:
 * the callers say what the file was. */
static int
parse_header (const struct bitmap_header *h, uint64_t *id, uint32_t *state)
{
  if (memcmp (h->magic, BITMAP_MAGIC, 8) != 0)
    return -1;
  if (h->version == 1) {
    *id = 0;
    *state = BITMAP_STATE_NONE;
    return 0;
  }
  if (h->version != BITMAP_VERSION || h->checksum != header_checksum (h)
      || h->state < BITMAP_STATE_CREATING
      || h->state > BITMAP_STATE_DELETING)
    return -1;
  *id = h->id;
  *state = h->state;
  return 0;
}

int
bitmap_peek (int dirfd, const char *name, uint64_t *id, uint32_t *state)
{
  struct bitmap_header h;
  static const struct bitmap_header blank;
  ssize_t n;
  int fd;

  fd = openat (dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return -1;
  n = pread (fd, &h, sizeof h, 0);
  close (fd);
  if (n == -1)
    return -1;
  if (n < (ssize_t) sizeof h || memcmp (&h, &blank, sizeof h) == 0) {
    errno = EINVAL;
    return -1;
  }
  if (parse_header (&h, id, state) == -1) {
    errno = EBADMSG;
    return -1;
  }
  return 0;
}

int
bitmap_blank (struct bitmap_file *b, uint64_t nchunks)
{
  memset (b, 0, sizeof *b);
  b->fd = -1;
  if (init (b, nchunks) == -1) {
    bitmap_close (b);
    return -1;
  }
  return 0;
}

/* Keep a page read from the file: NULL for zeros, the shared page for
 * ones, else a private copy. */
static int
keep_page (struct bitmap_array *a, uint64_t pg, const uint64_t *buf)
{
  bool zeros = true, ones = true;
  uint64_t *p;
  size_t i;

  for (i = 0; i < BITMAP_PAGE_WORDS; ++i) {
    zeros &= buf[i] == 0;
    ones &= buf[i] == UINT64_MAX;
  }
  if (zeros)
    return 0;
  if (ones) {
    a->pages[pg] = (uint64_t *) bitmap_ones;
    return 0;
  }
  p = page_alloc (a);
  if (p == NULL) {
    nbdsnap_error ("bitmap: calloc: %m");
    return -1;
  }
  memcpy (p, buf, BITMAP_PAGE);
  a->pages[pg] = p;
  return 0;
}

/* Read the pages of one array that the file has data in, up to
 * LOAD_PAGES at a time. */
#define LOAD_PAGES 16
static int
load_array (struct bitmap_file *b, struct bitmap_array *a, const char *name)
{
  uint64_t end = a->file_off + a->npages * BITMAP_PAGE;
  uint64_t pos = a->file_off, pg, last, n, k;
  uint64_t *buf;
  off_t data, hole;
  int r = -1;

  buf = malloc (LOAD_PAGES * BITMAP_PAGE);
  if (buf == NULL) {
    nbdsnap_error ("bitmap: malloc: %m");
    return -1;
  }
  while (pos < end) {
    data = lseek (b->fd, pos, SEEK_DATA);
    if (data == -1 && errno == ENXIO)
      break;                    /* a hole to the end */
    if (data == -1 && (errno == EINVAL || errno == EOPNOTSUPP)) {
      data = pos;               /* no SEEK_DATA here: read everything */
      hole = end;
    }
    else if (data == -1) {
      nbdsnap_error ("bitmap %s: lseek SEEK_DATA: %m", name);
      goto out;
    }
    else if ((uint64_t) data >= end)
      break;
    else if ((hole = lseek (b->fd, data, SEEK_HOLE)) == -1) {
      nbdsnap_error ("bitmap %s: lseek SEEK_HOLE: %m", name);
      goto out;
    }
    if ((uint64_t) hole > end)
      hole = end;
    last = ((uint64_t) hole - a->file_off + BITMAP_PAGE - 1) / BITMAP_PAGE;
    for (pg = ((uint64_t) data - a->file_off) / BITMAP_PAGE; pg < last;
         pg += n) {
      n = last - pg < LOAD_PAGES ? last - pg : LOAD_PAGES;
      if (io_pread_full (b->fd, buf, n * BITMAP_PAGE,
                         a->file_off + pg * BITMAP_PAGE) == -1) {
        nbdsnap_error ("bitmap %s: read: %m", name);
        goto out;
      }
      for (k = 0; k < n; ++k)
        if (keep_page (a, pg + k, buf + k * BITMAP_PAGE_WORDS) == -1)
          goto out;
    }
    pos = a->file_off + last * BITMAP_PAGE;
  }
  r = 0;
 out:
  free (buf);
  return r;
}

int
bitmap_open (struct bitmap_file *b, int dirfd, const char *name,
             uint64_t nchunks)
{
  struct bitmap_header h;
  struct stat st;
  uint32_t state;
  uint64_t id;
  ssize_t n;

  memset (b, 0, sizeof *b);
  b->fd = openat (dirfd, name, O_RDWR | O_CLOEXEC);
  if (b->fd == -1) {
    nbdsnap_error ("open bitmap: %s: %m", name);
    return -1;
  }
  n = pread (b->fd, &h, sizeof h, 0);
  if (n == -1) {
    nbdsnap_error ("bitmap %s: read header: %m", name);
    goto err;
  }
  if (n != (ssize_t) sizeof h || parse_header (&h, &id, &state) == -1) {
    errno = EINVAL;
    nbdsnap_error ("bitmap %s: bad header (not an nbdsnap bitmap of "
                   "version 1 or 2, or its checksum is wrong)", name);
    goto err;
  }
  if (h.nchunks != nchunks) {
    errno = EINVAL;
    nbdsnap_error ("bitmap %s: has %" PRIu64 " chunks, the image %" PRIu64,
                   name, h.nchunks, nchunks);
    goto err;
  }
  if (fstat (b->fd, &st) == -1) {
    nbdsnap_error ("bitmap %s: fstat: %m", name);
    goto err;
  }
  if ((uint64_t) st.st_size != file_bytes (nchunks)) {
    errno = EINVAL;
    nbdsnap_error ("bitmap %s: %" PRIu64 " bytes, not %" PRIu64
                   " (truncated or extended)", name,
                   (uint64_t) st.st_size, file_bytes (nchunks));
    goto err;
  }
  b->id = id;
  b->state = state;
  b->version = h.version;
  if (init (b, nchunks) == -1
      || load_array (b, &b->candidate, name) == -1
      || load_array (b, &b->copied, name) == -1)
    goto err;
  return 0;

 err:
  bitmap_close (b);
  return -1;
}

void
bitmap_close (struct bitmap_file *b)
{
  size_t i;

  if (b->candidate.pages != NULL || b->copied.pages != NULL)
    for (i = 0; i < BITMAP_LOCKS; ++i)
      pthread_mutex_destroy (&b->locks[i]);
  free_array (&b->candidate);
  free_array (&b->copied);
  if (b->fd >= 0)
    close (b->fd);
  b->fd = -1;
}

int
bitmap_sync (struct bitmap_file *b)
{
  return fdatasync (b->fd);
}

int
bitmap_set_state (struct bitmap_file *b, uint32_t state)
{
  if (write_header (b, state) == -1 || fdatasync (b->fd) == -1)
    return -1;
  b->version = BITMAP_VERSION;
  __atomic_store_n (&b->state, state, __ATOMIC_RELEASE);
  return 0;
}

/* The page holding word w, allocated (zeroed) if absent.  NULL with errno
 * ENOMEM. */
static uint64_t *
page_for (struct bitmap_array *a, uint64_t w)
{
  uint64_t pg = w / BITMAP_PAGE_WORDS;
  uint64_t *p = __atomic_load_n (&a->pages[pg], __ATOMIC_ACQUIRE), *expect;

  if (p != NULL)
    return p;
  p = page_alloc (a);
  if (p == NULL)
    return NULL;
  expect = NULL;
  if (!__atomic_compare_exchange_n (&a->pages[pg], &expect, p, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    page_free (a, p);           /* another setter installed one */
    p = expect;
  }
  return p;
}

int
bitmap_or_word (struct bitmap_file *b, struct bitmap_array *a, uint64_t w,
                uint64_t mask)
{
  pthread_mutex_t *lock = &b->locks[w % BITMAP_LOCKS];
  uint64_t *p, v;
  int r;

  /* A bit is visible in memory only once the file has it, so a bit seen
   * set is in the file (the page cache) already. */
  if ((bitmap_word (a, w) & mask) == mask)
    return 0;
  p = page_for (a, w);
  if (p == NULL)
    return -1;
  if (a->shared && __atomic_load_n (&shared_of (p)->refs, __ATOMIC_ACQUIRE)
                   > 1) {
    errno = EPERM;              /* other snapshots' bits: see bitmap_share */
    return -1;
  }
  /* (A page of ones has every bit: the test above returned.)  Every change
   * of word w happens under its lock, so v is its newest value. */
  pthread_mutex_lock (lock);
  v = __atomic_load_n (&p[w % BITMAP_PAGE_WORDS], __ATOMIC_RELAXED) | mask;
  r = io_pwrite_full (b->fd, &v, sizeof v, a->file_off + w * 8);
  if (r == 0)
    __atomic_store_n (&p[w % BITMAP_PAGE_WORDS], v, __ATOMIC_RELEASE);
  pthread_mutex_unlock (lock);
  return r;
}

int
bitmap_set (struct bitmap_file *b, struct bitmap_array *a, uint64_t i)
{
  return bitmap_or_word (b, a, i >> 6, UINT64_C (1) << (i & 63));
}

int
bitmap_set_range (struct bitmap_array *a, uint64_t first, uint64_t n)
{
  uint64_t i = first, end = first + n;

  while (i < end) {
    uint64_t pg = i >> BITMAP_PAGE_SHIFT;
    uint64_t pg_end = (pg + 1) << BITMAP_PAGE_SHIFT;
    uint64_t *p;

    if (i == pg << BITMAP_PAGE_SHIFT && end >= pg_end) {
      /* The whole page. */
      page_free (a, a->pages[pg]);
      a->pages[pg] = (uint64_t *) bitmap_ones;
      i = pg_end;
      continue;
    }
    if (a->pages[pg] == bitmap_ones) {
      i = end < pg_end ? end : pg_end;
      continue;
    }
    p = page_for (a, i >> 6);
    if (p == NULL) {
      nbdsnap_error ("bitmap: calloc: %m");
      return -1;
    }
    for (; i < end && i < pg_end; ++i)
      p[(i >> 6) % BITMAP_PAGE_WORDS] |= UINT64_C (1) << (i & 63);
  }
  return 0;
}

int
bitmap_write_pages (struct bitmap_file *b, struct bitmap_array *a)
{
  uint64_t pg;

  for (pg = 0; pg < a->npages; ++pg) {
    const uint64_t *p = bitmap_page (a, pg);
    if (p != NULL
        && io_pwrite_full (b->fd, p, BITMAP_PAGE,
                           a->file_off + pg * BITMAP_PAGE) == -1)
      return -1;
  }
  return 0;
}

uint64_t
bitmap_count (const struct bitmap_array *bits,
              const struct bitmap_array *mask)
{
  uint64_t n = 0, pg, w;

  for (pg = 0; pg < bits->npages; ++pg) {
    const uint64_t *p = bitmap_page (bits, pg), *m;
    if (p == NULL)
      continue;
    m = mask ? bitmap_page (mask, pg) : bitmap_ones;
    if (m == NULL)
      continue;
    if (p == bitmap_ones && m == bitmap_ones) {
      n += BITMAP_PAGE * 8;
      continue;
    }
    for (w = 0; w < BITMAP_PAGE_WORDS; ++w)
      n += __builtin_popcountll (__atomic_load_n (&p[w], __ATOMIC_RELAXED)
                                 & __atomic_load_n (&m[w], __ATOMIC_RELAXED));
  }
  return n;
}

uint64_t
bitmap_share (struct bitmap_file *b, const struct bitmap_file *prev)
{
  struct bitmap_array *a = &b->candidate;
  const struct bitmap_array *pa = &prev->candidate;
  uint64_t pg, n = 0;

  if (pa->npages != a->npages)
    return 0;
  for (pg = 0; pg < a->npages; ++pg) {
    uint64_t *p = a->pages[pg], *q = pa->pages[pg];
    if (p == NULL || p == bitmap_ones || q == NULL || q == bitmap_ones
        || p == q || memcmp (p, q, BITMAP_PAGE) != 0)
      continue;
    __atomic_add_fetch (&shared_of (q)->refs, 1, __ATOMIC_ACQ_REL);
    page_free (a, p);
    a->pages[pg] = q;
    ++n;
  }
  return n;
}

uint64_t
bitmap_resident (const struct bitmap_file *b)
{
  const struct bitmap_array *arrays[2] = { &b->candidate, &b->copied };
  uint64_t n = 0, pg;
  size_t k;

  for (k = 0; k < 2; ++k)
    for (pg = 0; pg < arrays[k]->npages; ++pg) {
      const uint64_t *p = bitmap_page (arrays[k], pg);
      n += p != NULL && p != bitmap_ones ? BITMAP_PAGE : 0;
    }
  return n;
}
