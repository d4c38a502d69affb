/* fixsum — recompute the frame checksums and the END hash of a qstream file
 * (qs_fixup.h), so a hand-made or edited stream passes XXH3 verification and
 * reaches the parsers. Used to make the hostile seeds of corpus/qstream
 * (mkhostile.py); not built by the Makefile:
 *   cc -Itests/fuzz tests/fuzz/fixsum.c -lxxhash -o fixsum && ./fixsum in.qs out.qs
 */
#include <stdio.h>
#include <stdlib.h>

#include "qs_fixup.h"

int main(int argc, char **argv)
{
    static uint8_t b[1 << 24];
    if (argc != 3) { fprintf(stderr, "usage: fixsum IN OUT\n"); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    qs_fix_checksums(b, n);
    f = fopen(argv[2], "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0) { perror(argv[2]); return 1; }
    return 0;
}
