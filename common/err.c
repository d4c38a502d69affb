/* err — the library's message helper (see err.h). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int err_set(char **errp, const char *fmt, ...)
{
    if (!errp) return -1;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(errp, fmt, ap) < 0) *errp = NULL;
    va_end(ap);
    return -1;
}
