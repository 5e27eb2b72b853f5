/* nbdsnapctl: stats --prometheus, the stats answer in Prometheus' text
 * exposition format (version 0.0.4), for node_exporter's textfile
 * collector.
 *
 * Notes on the design:
 *
 * - Generic over the JSON, so that a counter the server adds appears
 *   without a new nbdsnapctl: every number (or boolean, as 0/1) in the
 *   answer is one sample; nested keys are joined with "_" after the
 *   prefix "nbdsnap_" ({"admin":{"connections":2}} is
 *   nbdsnap_admin_connections 2).  Strings, arrays and nulls are skipped.
 *
 * - Under "totals" (cumulative since the server started) samples are
 *   counters: the "totals" level is dropped from the name and "_total"
 *   is appended (totals.origin.bytes_read is
 *   nbdsnap_origin_bytes_read_total).  Everything else is a gauge.
 *
 * - Objects whose keys are values rather than names are label maps,
 *   listed in label_maps below: totals.errors {"EIO":3} is
 *   nbdsnap_errors_total{errno="EIO"} 3.  An empty map prints its HELP
 *   and TYPE lines only.
 *
 * - Each metric family is printed at once: "# HELP", "# TYPE", samples.
 *   Characters outside [A-Za-z0-9_] in a key become "_"; label values
 *   are escaped (\\, \", \n) as the format says.
 */
#include <config.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnapctl.h"

/* Objects keyed by a value, and the label that value goes in. */
static const struct {
  const char *key;
  const char *label;
} label_maps[] = {
  { "errors", "errno" },
};

static const char *
label_of (const char *key)
{
  size_t i;

  for (i = 0; i < sizeof label_maps / sizeof label_maps[0]; ++i)
    if (strcmp (label_maps[i].key, key) == 0)
      return label_maps[i].label;
  return NULL;
}

static bool
is_sample (json_t *v)
{
  return json_is_integer (v) || json_is_real (v) || json_is_boolean (v);
}

static void
print_number (json_t *v)
{
  if (json_is_integer (v))
    printf ("%" JSON_INTEGER_FORMAT "\n", json_integer_value (v));
  else if (json_is_real (v))
    printf ("%.17g\n", json_real_value (v));
  else
    printf ("%d\n", json_is_true (v) ? 1 : 0);
}

/* Append key to name (sanitized), after a "_". */
static void
join (char *out, size_t len, const char *name, const char *key)
{
  size_t n = strlen (name);
  char *p;

  snprintf (out, len, "%s_%s", name, key);
  for (p = out + n + 1; *p; ++p)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
          || (*p >= '0' && *p <= '9') || *p == '_'))
      *p = '_';
}

static void
family (const char *name, const char *path, bool counter)
{
  printf ("# HELP %s%s nbdsnap stats field %s%s\n", name,
          counter ? "_total" : "", path,
          counter ? " (cumulative since the server started)" : "");
  printf ("# TYPE %s%s %s\n", name, counter ? "_total" : "",
          counter ? "counter" : "gauge");
}

static void
label_value (const char *s)
{
  for (; *s; ++s)
    switch (*s) {
    case '\\': fputs ("\\\\", stdout); break;
    case '"':  fputs ("\\\"", stdout); break;
    case '\n': fputs ("\\n", stdout); break;
    default:   putchar (*s);
    }
}

/* obj's samples; name is the metric name so far, path the JSON one. */
static void
walk (json_t *obj, const char *name, const char *path, bool counter)
{
  const char *key, *label, *k;
  json_t *v, *e;
  char sub[512], subpath[512];

  json_object_foreach (obj, key, v) {
    bool top = strcmp (path, "") == 0;

    if (top && strcmp (key, "ok") == 0)
      continue;
    snprintf (subpath, sizeof subpath, "%s%s%s", path, top ? "" : ".",
              key);
    if (top && strcmp (key, "totals") == 0 && json_is_object (v)) {
      walk (v, name, subpath, true);
      continue;
    }
    join (sub, sizeof sub, name, key);
    if (json_is_object (v) && (label = label_of (key)) != NULL) {
      family (sub, subpath, counter);
      json_object_foreach (v, k, e) {
        if (!is_sample (e))
          continue;
        printf ("%s%s{%s=\"", sub, counter ? "_total" : "", label);
        label_value (k);
        printf ("\"} ");
        print_number (e);
      }
    }
    else if (json_is_object (v))
      walk (v, sub, subpath, counter);
    else if (is_sample (v)) {
      family (sub, subpath, counter);
      printf ("%s%s ", sub, counter ? "_total" : "");
      print_number (v);
    }
  }
}

int
ctl_print_prometheus (struct ctl *c, json_t *resp)
{
  walk (resp, "nbdsnap", "", false);
  return 0;
}
