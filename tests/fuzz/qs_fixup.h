/* qs_fixup.h — qstream helpers for the fuzz targets that read streams
 * (fuzz_qstream.c, fuzz_stats.c): recomputing checksums so mutated streams
 * get past XXH3 verification, and recognising the inputs of a known, still
 * unfixed finding so long campaigns can skip them (FUZZ_SKIP_KNOWN=1).
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

/* Known finding #1 (README.md): msgpack_unpack_next allocates
 * count x sizeof(msgpack_object) for an array/map header before looking at
 * the bytes, so a 30-byte frame info claiming 2^31 elements makes qstream.c
 * ask for tens of GB. Until the reader checks counts itself, campaigns run
 * with FUZZ_SKIP_KNOWN=1 skip such inputs (to reach other code); the replay
 * never sets it, so regress/qstream/msgpack-*.qs keep reproducing it. This
 * walk is the check the reader needs: every container's element count must
 * fit in the bytes that remain (each element takes at least one). Returns 0
 * if some count cannot fit, 1 otherwise (other malformations are the
 * parser's business). */
static inline uint64_t be_take(const uint8_t *p, size_t *pos, int k)
{
    uint64_t v = 0;
    for (int i = 0; i < k; i++) v = v << 8 | p[*pos + (size_t)i];
    *pos += (size_t)k;
    return v;
}

static inline int mp_counts_fit(const uint8_t *p, size_t n)
{
    size_t pos = 0;
    uint64_t pending = 1;
    while (pending && pos < n) {
        uint8_t c = p[pos++];
        pending--;
        uint64_t skip = 0, items = 0;
        size_t left = n - pos;
        #define NEED(k) do { if (left < (k)) return 1; } while (0)
        #define BE(k) be_take(p, &pos, (k))
        if (c <= 0x7f || c >= 0xe0) continue;
        else if (c <= 0x8f) items = 2u * (c & 0x0f);
        else if (c <= 0x9f) items = c & 0x0f;
        else if (c <= 0xbf) skip = c & 0x1f;
        else switch (c) {
        case 0xc0: case 0xc2: case 0xc3: continue;
        case 0xc4: case 0xd9: NEED(1); skip = BE(1); break;
        case 0xc5: case 0xda: NEED(2); skip = BE(2); break;
        case 0xc6: case 0xdb: NEED(4); skip = BE(4); break;
        case 0xc7: NEED(2); skip = BE(1) + 1; break;
        case 0xc8: NEED(3); skip = BE(2) + 1; break;
        case 0xc9: NEED(5); skip = BE(4) + 1; break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: NEED(2); items = BE(2); break;
        case 0xdd: NEED(4); items = BE(4); break;
        case 0xde: NEED(2); items = 2 * BE(2); break;
        case 0xdf: NEED(4); items = 2 * BE(4); break;
        default: return 1;              /* 0xc1: never used; the parser refuses it */
        }
        #undef NEED
        #undef BE
        if (skip > n - pos) return 1;
        pos += skip;
        pending += items;
        if (pending > n - pos) return 0;
    }
    return 1;
}

/* Does any frame's info claim more msgpack elements than it has bytes? */
static inline int qs_has_known_finding(const uint8_t *b, size_t n)
{
    size_t pos = 8;
    while (pos + 7 <= n && b[pos] == 0x94 && b[pos + 2] == 0xc6) {
        uint64_t ilen = rd_be32(b + pos + 3);
        size_t ipos = pos + 7;
        if (ilen > n - ipos) ilen = n - ipos;
        if (!mp_counts_fit(b + ipos, ilen)) return 1;
        if (n - ipos - ilen < 5) break;
        uint64_t dlen = rd_be32(b + ipos + ilen + 1);
        size_t dpos = ipos + ilen + 5;
        if (dlen > n - dpos || n - dpos - dlen < 9) break;
        pos = dpos + dlen + 9;
    }
    return 0;
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

/* 1 when FUZZ_SKIP_KNOWN is set and the input hits a known finding. */
static inline int qs_skip_known(const uint8_t *b, size_t n)
{
    static int skip = -1;
    if (skip < 0) skip = getenv("FUZZ_SKIP_KNOWN") != NULL;
    return skip && qs_has_known_finding(b, n);
}

#endif
