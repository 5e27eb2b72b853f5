/* nbdsnap plugin: the nbdkit glue of the snapshot catalog.  See
 * registry.h.
 */
#include <config.h>

#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* The NBD listeners: written by registry_find_listeners before the admin
 * thread starts, read-only afterwards (no lock). */
#define LISTENERS_MAX 8
static char *listeners[LISTENERS_MAX];
static size_t nlisteners;
static char start_cwd[PATH_MAX];

void
registry_note_cwd (void)
{
  if (getcwd (start_cwd, sizeof start_cwd) == NULL)
    start_cwd[0] = '\0';
}

static void
add_listener (char *uri)
{
  if (uri != NULL && nlisteners < LISTENERS_MAX)
    listeners[nlisteners++] = uri;
  else
    free (uri);
}

/* A percent-encoded copy of a path for a URI query ("socket=..."). */
static char *
uri_path (const char *dir, const char *path)
{
  static const char hex[] = "0123456789ABCDEF";
  char *full, *out, *o;
  const char *p;

  if (asprintf (&full, "%s%s%s", path[0] == '/' ? "" : dir,
                path[0] == '/' ? "" : "/", path) == -1)
    return NULL;
  out = o = malloc (strlen (full) * 3 + 1);
  if (out != NULL) {
    for (p = full; *p; ++p) {
      unsigned char ch = *p;
      if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')
          || (ch >= '0' && ch <= '9') || strchr ("-._~/", ch))
        *o++ = ch;
      else {
        *o++ = '%';
        *o++ = hex[ch >> 4];
        *o++ = hex[ch & 15];
      }
    }
    *o = '\0';
  }
  free (full);
  return out;
}

/* fd's URI if it is a listening NBD socket, else NULL; *unix set for a
 * unix socket. */
static char *
listener_uri (int fd, const char *admin_path, bool *unix_sock)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int acc = 0;
  socklen_t alen = sizeof acc;
  char addr[INET6_ADDRSTRLEN], *uri = NULL, *path;

  if (getsockopt (fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) == -1
      || !acc || getsockname (fd, (struct sockaddr *) &ss, &len) == -1)
    return NULL;
  *unix_sock = ss.ss_family == AF_UNIX;
  switch (ss.ss_family) {
  case AF_UNIX: {
    const char *sp = ((struct sockaddr_un *) &ss)->sun_path;
    if (len <= offsetof (struct sockaddr_un, sun_path) || sp[0] == '\0'
        || (admin_path && strcmp (sp, admin_path) == 0))
      return NULL;              /* unnamed, abstract, or ours */
    path = uri_path (start_cwd, sp);
    if (path && asprintf (&uri, "nbd+unix:///?socket=%s", path) == -1)
      uri = NULL;
    free (path);
    return uri;
  }
  case AF_INET: {
    struct sockaddr_in *in = (struct sockaddr_in *) &ss;
    if (in->sin_addr.s_addr == htonl (INADDR_ANY))
      strcpy (addr, "127.0.0.1");
    else
      inet_ntop (AF_INET, &in->sin_addr, addr, sizeof addr);
    if (asprintf (&uri, "nbd://%s:%d", addr, ntohs (in->sin_port)) == -1)
      uri = NULL;
    return uri;
  }
  case AF_INET6: {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
    if (IN6_IS_ADDR_UNSPECIFIED (&in6->sin6_addr))
      strcpy (addr, "::1");
    else
      inet_ntop (AF_INET6, &in6->sin6_addr, addr, sizeof addr);
    if (asprintf (&uri, "nbd://[%s]:%d", addr, ntohs (in6->sin6_port)) == -1)
      uri = NULL;
    return uri;
  }
  }
  return NULL;
}

void
registry_find_listeners (const char *admin_path)
{
  DIR *d = opendir ("/proc/self/fd");
  struct dirent *de;
  char *inet[LISTENERS_MAX];
  size_t ninet = 0, i;

  if (d == NULL) {
    nbdkit_debug ("nbdsnap: /proc/self/fd: %m: NBD listeners unknown");
    return;
  }
  while ((de = readdir (d)) != NULL) {
    struct stat st;
    int fd = atoi (de->d_name);
    bool unix_sock = false;
    char *uri;

    if (de->d_name[0] == '.' || fd == dirfd (d) || fstat (fd, &st) == -1
        || !S_ISSOCK (st.st_mode))
      continue;
    uri = listener_uri (fd, admin_path, &unix_sock);
    if (uri == NULL)
      continue;
    nbdkit_debug ("nbdsnap: NBD listener: %s", uri);
    if (unix_sock)
      add_listener (uri);
    else if (ninet < LISTENERS_MAX)
      inet[ninet++] = uri;
    else
      free (uri);
  }
  closedir (d);
  for (i = 0; i < ninet; ++i)   /* unix sockets first */
    add_listener (inet[i]);
}

json_t *
registry_nbd_uris (void)
{
  json_t *a = json_array ();

  for (size_t i = 0; a != NULL && i < nlisteners; ++i)
    json_array_append_new (a, json_string (listeners[i]));
  return a;
}
