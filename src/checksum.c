/* nbdsnap: FNV-1a 64.  See include/nbdsnap/checksum.h. */
#include <config.h>

#include "nbdsnap/checksum.h"

uint64_t
checksum_fnv1a64 (const void *data, size_t len)
{
  const unsigned char *p = data;
  uint64_t x = UINT64_C (0xcbf29ce484222325);
  size_t i;

  for (i = 0; i < len; ++i)
    x = (x ^ p[i]) * UINT64_C (0x100000001b3);
  return x;
}
