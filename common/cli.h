/* cli — what every qpipe program shares at the process level.
 *
 * Owns: program name and verbosity, one-line diagnostics (`prog: what: why`),
 * exit codes, write-or-die with quiet EPIPE, atomic output files (temp name +
 * rename, removed on error or SIGINT/SIGTERM), option-value parsing, thread
 * count, and the progress line on stderr.
 *
 * Only filters/ (and tests/tools/) use this module: common/ and formats/
 * return errors and never exit.
 */
#ifndef QPIPE_CLI_H
#define QPIPE_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qstream.h"

#define QPIPE_VERSION "0.1.0"

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

extern const char *prog_name;   /* "qcat", "qpack", ... */
extern int verbosity;           /* 0 = -q, 1 = default, 2 = -v */
extern int progress_forced;     /* --progress / --fake-tty */

/* Set the program name; handle --help (prints usage, exits 0), --version,
 * -q/--quiet, -v/--verbose, --progress, --fake-tty, removing them from argv. */
void proginit(int *argc, char **argv, const char *name, const char *usage);

/* Diagnostics: one line, one write, on stderr. die* exit with EXIT_RUNTIME,
 * usage_error with EXIT_USAGE. warn_msg prints unless -q. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void die_errno(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void warn_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void info_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));   /* only with -v */
/* die() with a message the library malloc'd (frees it). */
void die_free(char *msg) __attribute__((noreturn));

/* Write all bytes or die; EPIPE exits quietly (status 141 like SIGPIPE). */
void write_or_die(int fd, const void *buf, size_t n, const char *what);
/* If err is EPIPE, exit quietly as a broken pipe would. */
void exit_if_epipe(int err);
/* A stream write on stdout failed: exit quietly on EPIPE, else die with the
 * writer's message. */
void writer_die(const qs_writer *w) __attribute__((noreturn));
/* Refuse (die) if fd is a terminal: binary streams never go to a tty. */
void refuse_tty(int fd, const char *what);
/* At exit: flush/close stdout and report a write failure. */
void close_stdout_or_die(void);

/* Atomic outputs: out_create makes `<path>.tmp.<pid>` (0644 via umask) and
 * registers it for removal on die()/signals; out_commit fsyncs, closes and
 * renames it over path; out_abort removes it. Directories: out_dir_create
 * makes `<dir>.tmp.<pid>/`, out_dir_commit renames it (replacing an existing
 * output directory only if it looks like ours or is empty). */
typedef struct { char *path; char *tmp; int fd; int is_dir; } out_file;
void out_create(out_file *o, const char *path);          /* dies on error */
void out_commit(out_file *o);                            /* dies on error */
void out_abort(out_file *o);
void out_dir_create(out_file *o, const char *dir);
void out_dir_commit(out_file *o);
/* Write a file inside an out_dir temp dir (plain write: the whole dir is atomic). */
void out_dir_write_file(out_file *o, const char *name, const void *data, size_t len);

/* Option values. Each dies with a usage error naming the option on bad input. */
long     parse_long(const char *opt, const char *s, long lo, long hi);
double   parse_double(const char *opt, const char *s, double lo, double hi);
uint64_t parse_size(const char *opt, const char *s);     /* "5GB", "512MiB", "4096" */
int      default_threads(void);                          /* online CPUs */

/* Progress on stderr: drawn only when stderr is a tty (or forced), redrawn at
 * most 6 times a second, labelled with the program name so stages in a
 * pipeline each own one line (each redraws with \r and its label). */
void progress_start(uint64_t total_tensors, uint64_t total_bytes);
void progress_update(uint64_t tensors_done, uint64_t bytes_done);
void progress_end(void);

/* Append this program's provenance entry to a stream header: its name,
 * QPIPE_VERSION and argv[1..] without `--threads N` (which cannot change a
 * byte of any qpipe output, so streams stay identical across thread counts).
 * Dies on out of memory. */
void add_provenance_or_die(qs_header *h, int argc, char **argv);

/* Read a whole file into memory (dies on error). Adds a NUL after the data. */
void *read_file_or_die(const char *path, size_t *len);

/* Glob list matching: patterns separated by ',' (fnmatch, '*' crosses dots). */
int glob_list_match(const char *patterns, const char *name);

#endif
