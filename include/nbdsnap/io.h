/* nbdsnap: small helpers for whole-buffer I/O (src/io.c). */
#ifndef NBDSNAP_IO_H
#define NBDSNAP_IO_H

#include <stddef.h>
#include <sys/types.h>

/* Read/write exactly count bytes at offset, retrying on EINTR and short
 * transfers.  A read that hits end-of-file fails with EIO: every file
 * read this way (origin, stores, bitmaps) has its full logical size —
 * sparse files read zeros in their holes, never past their end — so a
 * short one was truncated, and zeros would be a lie.
 * Return 0 or -1 with errno set; they report nothing. */
extern int io_pread_full (int fd, void *buf, size_t count, off_t offset);
extern int io_pwrite_full (int fd, const void *buf, size_t count,
                           off_t offset);
/* fsync the directory that holds path (or the directory itself). */
extern int io_fsync_dir (const char *dir);

#endif /* NBDSNAP_IO_H */
