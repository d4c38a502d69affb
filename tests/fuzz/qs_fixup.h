/* qs_fixup.h — qstream helpers for the fuzz targets that read streams
 * (fuzz_qstream.c, fuzz_stats.c, fixsum.c): recomputing checksums so
 * mutated streams get past XXH3 verification and reach the parsers.
 * Frame layout: docs/qstream.md §1.
 */
#ifndef QPIPE_QS_FIXUP_H
#define QPIPE_QS_FIXUP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static inline uint32_t rd_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void wr_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Recompute frame checksums (docs/qstream.md §1) and the END "hash" in place,
 * for as many well-framed frames as the buffer holds. Returns 1 if anything
 * changed. */
static inline int qs_fix_checksums(uint8_t *b, size_t n)
{
    size_t pos = 8;
    int changed = 0;
    if (n < 8 || memcmp(b, "\xa7qstream", 8) != 0) return 0;
    while (pos + 7 <= n && b[pos] == 0x94 && b[pos + 2] == 0xc6) {
        size_t start = pos;
        uint64_t ilen = rd_be32(b + pos + 3);
        size_t ipos = pos + 7;
        if (ilen > n - ipos || n - ipos - ilen < 5 || b[ipos + ilen] != 0xc6) break;
        uint64_t dlen = rd_be32(b + ipos + ilen + 1);
        size_t dpos = ipos + ilen + 5;
        if (dlen > n - dpos || n - dpos - dlen < 9 || b[dpos + dlen] != 0xcf) break;
        size_t hpos = dpos + dlen;
        if (b[pos + 1] == 4) {          /* END: the stream hash covers everything before it */
            for (size_t i = ipos; i + 14 <= ipos + ilen; i++)
                if (memcmp(b + i, "\xa4hash\xcf", 6) == 0) {
                    uint8_t old[8];
                    memcpy(old, b + i + 6, 8);
                    wr_be64(b + i + 6, XXH3_64bits(b, start));
                    changed |= memcmp(old, b + i + 6, 8) != 0;
                    break;
                }
        }
        uint8_t old[8];
        memcpy(old, b + hpos + 1, 8);
        wr_be64(b + hpos + 1, XXH3_64bits(b + start, hpos - start));
        changed |= memcmp(old, b + hpos + 1, 8) != 0;
        pos = hpos + 9;
    }
    return changed;
}

#endif
