/* nbdsnap plugin: the nbdkit glue of the snapshot catalog.  See
 * registry.h.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "registry.h"

void
registry_peer_string (char *buf, size_t n)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char addr[INET6_ADDRSTRLEN] = "?";

  snprintf (buf, n, "unknown");
  if (nbdkit_peer_name ((struct sockaddr *) &ss, &len) == -1)
    return;
  switch (ss.ss_family) {
  case AF_UNIX: {
    int64_t pid = nbdkit_peer_pid ();
    int64_t uid = nbdkit_peer_uid ();
    snprintf (buf, n, "unix pid=%" PRIi64 " uid=%" PRIi64, pid, uid);
    break;
  }
  case AF_INET:
    inet_ntop (AF_INET, &((struct sockaddr_in *) &ss)->sin_addr,
               addr, sizeof addr);
    snprintf (buf, n, "%s:%d", addr,
              ntohs (((struct sockaddr_in *) &ss)->sin_port));
    break;
  case AF_INET6:
    inet_ntop (AF_INET6, &((struct sockaddr_in6 *) &ss)->sin6_addr,
               addr, sizeof addr);
    snprintf (buf, n, "[%s]:%d", addr,
              ntohs (((struct sockaddr_in6 *) &ss)->sin6_port));
    break;
  default:
    snprintf (buf, n, "family %d", ss.ss_family);
  }
}

int
registry_list_exports (struct catalog *cat, struct nbdkit_exports *exports,
                       const char *origin_description)
{
  struct catalog_snap *list;
  char desc[CATALOG_DESCRIPTION_MAX];
  ssize_t n, i;
  int r = 0;

  if (nbdkit_add_export (exports, "", origin_description) == -1)
    return -1;
  n = catalog_list (cat, &list);        /* a copy: no lock held below */
  if (n == -1)
    return -1;
  for (i = 0; i < n && r == 0; ++i)
    if (list[i].state == CATALOG_STATE_LIVE
        || list[i].state == CATALOG_STATE_INVALID) {
      catalog_describe (&list[i], desc, sizeof desc);
      r = nbdkit_add_export (exports, list[i].info.name, desc);  /* copies */
    }
  free (list);
  return r;
}
