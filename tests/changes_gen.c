/* nbdsnap tests: a changes set of millions of scattered extents, made
 * fast (test-changes-scale.sh).
 *
 *   changes_gen IMG STATEDIR SIZE_GIB DATA_EVERY
 *
 * IMG becomes a sparse image of SIZE_GIB GiB served through the engine
 * (durability=process, 64 KiB chunks): snapshot "a"; then every
 * other chunk (0, 2, 4, ...) is changed: the k-th of them by a 4 KiB
 * trim, or, when k is a multiple of DATA_EVERY, by a 4 KiB write of
 * 0x5a bytes; then snapshot "b".  So `changes a b` has exactly one extent
 * per changed chunk, "zero" except the written ones.  Prints
 * "EXTENTS DATA_EXTENTS CHUNK_SIZE".  Straight engine calls, no NBD: an
 * NBD request per chunk would take minutes for the millions of chunks
 * this is for; the server and nbdsnapctl are what the test measures.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdsnap/engine.h"
#include "nbdsnap/origin.h"

int
main (int argc, char **argv)
{
  struct nbdsnap_engine_config cfg = { 0 };
  struct nbdsnap_origin o;
  struct nbdsnap_engine *e;
  uint64_t size, chunk, c, k, every, data = 0;
  char buf[4096];
  int fd;

  if (argc != 5) {
    fprintf (stderr, "usage: changes_gen IMG STATEDIR SIZE_GIB "
             "DATA_EVERY\n");
    return 2;
  }
  size = strtoull (argv[3], NULL, 10) << 30;
  every = strtoull (argv[4], NULL, 10);
  fd = open (argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || ftruncate (fd, size) == -1 || close (fd) == -1) {
    perror (argv[1]);
    return 1;
  }
  if (nbdsnap_origin_open (&o, argv[1], false) == -1)
    return 1;
  cfg.origin = &o;
  cfg.statedir = argv[2];
  cfg.durability = NBDSNAP_DURABILITY_PROCESS;
  cfg.chunk_size = 65536;
  e = nbdsnap_engine_open (&cfg);
  if (e == NULL || nbdsnap_snap_create (e, "a", false) == NULL)
    return 1;
  chunk = nbdsnap_engine_chunk_size (e);
  memset (buf, 0x5a, sizeof buf);
  for (c = 0, k = 0; c * chunk < size; c += 2, ++k) {
    int r;
    if (every && k % every == 0) {
      r = nbdsnap_engine_pwrite (e, buf, sizeof buf, c * chunk, false);
      data++;
    }
    else
      r = nbdsnap_engine_trim (e, sizeof buf, c * chunk, false);
    if (r == -1) {
      fprintf (stderr, "changes_gen: chunk %" PRIu64 ": %s\n", c,
               strerror (errno));
      return 1;
    }
  }
  if (nbdsnap_snap_create (e, "b", false) == NULL)
    return 1;
  nbdsnap_engine_close (e);
  nbdsnap_origin_close (&o);
  printf ("%" PRIu64 " %" PRIu64 " %" PRIu64 "\n", k, data, chunk);
  return 0;
}
