/* nbdsnapctl backup: being written (issue 10). */
#include <config.h>

#include "nbdsnapctl.h"

int
ctl_backup (struct ctl *c, int argc, char **argv)
{
  return ctl_usage ("backup: not built yet");
}
