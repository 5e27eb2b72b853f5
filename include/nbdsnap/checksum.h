/* nbdsnap: the checksum of small on-disk records (src/checksum.c).
 *
 * FNV-1a, 64 bits: records are a few hundred bytes and the checksum
 * catches torn and damaged writes, not malice.
 */
#ifndef NBDSNAP_CHECKSUM_H
#define NBDSNAP_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

extern uint64_t checksum_fnv1a64 (const void *data, size_t len);

#endif /* NBDSNAP_CHECKSUM_H */
