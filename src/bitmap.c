/* nbdsnap: mmap'd per-snapshot bitmap files.  See bitmap.h for the format. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbdsnap/err.h"
#include "bitmap.h"

#define BITMAP_MAGIC "NBDSNAPB"
#define BITMAP_VERSION 1
#define BITMAP_HDR 4096

struct bitmap_header {
  char magic[8];
  uint32_t version;
  uint32_t zero;
  uint64_t nchunks;
};

static uint64_t
array_bytes (uint64_t nchunks)
{
  uint64_t bytes = (nchunks + 63) / 64 * 8;
  return (bytes + 4095) & ~UINT64_C (4095);
}

static int
map_file (struct bitmap_file *b, const char *name, uint64_t nchunks)
{
  uint64_t abytes = array_bytes (nchunks);

  b->nchunks = nchunks;
  b->nwords = abytes / 8;
  b->map_len = BITMAP_HDR + 2 * abytes;
  b->map = mmap (NULL, b->map_len, PROT_READ | PROT_WRITE, MAP_SHARED,
                 b->fd, 0);
  if (b->map == MAP_FAILED) {
    nbdsnap_error ("mmap: %s: %m", name);
    b->map = NULL;
    return -1;
  }
  b->candidate = (uint64_t *) ((char *) b->map + BITMAP_HDR);
  b->copied = (uint64_t *) ((char *) b->map + BITMAP_HDR + abytes);
  return 0;
}

int
bitmap_create (struct bitmap_file *b, int dirfd, const char *name,
               uint64_t nchunks)
{
  struct bitmap_header h = { .magic = BITMAP_MAGIC,
                             .version = BITMAP_VERSION,
                             .nchunks = nchunks };

  memset (b, 0, sizeof *b);
  b->fd = openat (dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (b->fd == -1) {
    nbdsnap_error ("create bitmap: %s: %m", name);
    return -1;
  }
  if (ftruncate (b->fd, BITMAP_HDR + 2 * array_bytes (nchunks)) == -1) {
    nbdsnap_error ("ftruncate: %s: %m", name);
    goto err;
  }
  if (pwrite (b->fd, &h, sizeof h, 0) != (ssize_t) sizeof h) {
    if (errno == 0)
      errno = ENOSPC;
    nbdsnap_error ("write bitmap header: %s: %m", name);
    goto err;
  }
  if (map_file (b, name, nchunks) == -1)
    goto err;
  return 0;

 err:
  close (b->fd);
  unlinkat (dirfd, name, 0);
  b->fd = -1;
  return -1;
}

int
bitmap_open (struct bitmap_file *b, int dirfd, const char *name,
             uint64_t nchunks)
{
  struct bitmap_header h;
  struct stat st;

  memset (b, 0, sizeof *b);
  b->fd = openat (dirfd, name, O_RDWR | O_CLOEXEC);
  if (b->fd == -1) {
    nbdsnap_error ("open bitmap: %s: %m", name);
    return -1;
  }
  if (pread (b->fd, &h, sizeof h, 0) != (ssize_t) sizeof h
      || memcmp (h.magic, BITMAP_MAGIC, 8) != 0
      || h.version != BITMAP_VERSION) {
    errno = EINVAL;
    nbdsnap_error ("bitmap %s: bad header (not an nbdsnap bitmap, version 1)",
                   name);
    goto err;
  }
  if (h.nchunks != nchunks) {
    errno = EINVAL;
    nbdsnap_error ("bitmap %s: has %" PRIu64 " chunks, the image %" PRIu64,
                   name, h.nchunks, nchunks);
    goto err;
  }
  if (fstat (b->fd, &st) == -1
      || (uint64_t) st.st_size < BITMAP_HDR + 2 * array_bytes (nchunks)) {
    errno = EINVAL;
    nbdsnap_error ("bitmap %s: truncated", name);
    goto err;
  }
  if (map_file (b, name, nchunks) == -1)
    goto err;
  return 0;

 err:
  close (b->fd);
  b->fd = -1;
  return -1;
}

void
bitmap_close (struct bitmap_file *b)
{
  if (b->map)
    munmap (b->map, b->map_len);
  if (b->fd >= 0)
    close (b->fd);
  b->map = NULL;
  b->fd = -1;
}

int
bitmap_sync (struct bitmap_file *b)
{
  return msync (b->map, b->map_len, MS_SYNC);
}

void
bitmap_set_range (uint64_t *bits, uint64_t first, uint64_t n)
{
  uint64_t i = first, end = first + n;

  while (i < end && (i & 63) != 0)
    bitmap_set (bits, i++);
  if (end - i >= 64) {
    uint64_t words = (end - i) / 64;
    memset (&bits[i >> 6], 0xff, words * 8);
    i += words * 64;
  }
  while (i < end)
    bitmap_set (bits, i++);
}

uint64_t
bitmap_count (const uint64_t *bits, const uint64_t *mask, uint64_t nwords)
{
  uint64_t n = 0, w;

  for (w = 0; w < nwords; ++w) {
    uint64_t v = __atomic_load_n (&bits[w], __ATOMIC_RELAXED);
    if (mask)
      v &= __atomic_load_n (&mask[w], __ATOMIC_RELAXED);
    n += __builtin_popcountll (v);
  }
  return n;
}
