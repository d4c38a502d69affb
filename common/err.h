/* err — how library code (common/, formats/) hands a message up.
 *
 * Functions that can fail take `char **errp` and, on failure, store a
 * malloc'd one-line message there (the caller frees it) and return -1 (or
 * NULL). err_set() does both halves of that in one call, so a failure path
 * reads `return err_set(errp, "'%s': bad shape", name);`. A NULL errp means
 * the caller does not want the message.
 */
#ifndef QPIPE_ERR_H
#define QPIPE_ERR_H

/* Store the formatted message in *errp (if errp) and return -1. */
int err_set(char **errp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
