/* nbdsnapctl changes: being written (issue 10). */
#include <config.h>

#include "nbdsnapctl.h"

int
ctl_changes_each (struct ctl *c, const char *a, const char *b,
                  ctl_extent_fn fn, void *opaque,
                  struct ctl_changes_info *info)
{
  ctl_msg ("changes: not built yet");
  return NBDSNAPCTL_EXIT_ERROR;
}

int
ctl_changes (struct ctl *c, int argc, char **argv)
{
  return ctl_usage ("changes: not built yet");
}
