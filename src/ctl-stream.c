/* nbdsnapctl send and receive: being written (issue 10). */
#include <config.h>

#include "nbdsnapctl.h"

int
ctl_send (struct ctl *c, int argc, char **argv)
{
  return ctl_usage ("send: not built yet");
}

int
ctl_receive (struct ctl *c, int argc, char **argv)
{
  return ctl_usage ("receive: not built yet");
}
