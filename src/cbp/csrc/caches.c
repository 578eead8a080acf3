/* The CPU's data caches, read at run time (cbp_runtime.h): the schedule
   constants that depend on cache sizes (cache blocks, streaming stores) are
   derived from them, so that a wheel tuned on one machine fits another.
   Linux reads sysfs (then sysconf), macOS sysctl, Windows
   GetLogicalProcessorInformationEx. A level that cannot be read stays 0; the
   Python layer then uses a conservative default and says so. */
#if !defined(_WIN32) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif

#include "cbp_runtime.h"
#include "cbp_kernels.h"

#include <stdio.h>
#include <string.h>

ptrdiff_t cbp_moments_ahead = CBP_MOMENTS_AHEAD_OF(CBP_L1D_DEFAULT_BYTES);

void cbp_set_moments_ahead(long long l1d_bytes)
{
    cbp_moments_ahead = CBP_MOMENTS_AHEAD_OF(l1d_bytes > 0 ? l1d_bytes : CBP_L1D_DEFAULT_BYTES);
}

static void clear(cbp_caches *c)
{
    memset(c, 0, sizeof *c);
    c->source = "none";
}

#if defined(__linux__)
#include <stdlib.h>
#include <unistd.h>

/* The text of a small sysfs file, without the trailing newline; 0 on failure. */
static int read_text(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    size_t k;
    if (!f)
        return 0;
    k = fread(buf, 1, n - 1, f);
    fclose(f);
    buf[k] = '\0';
    while (k > 0 && (buf[k - 1] == '\n' || buf[k - 1] == ' '))
        buf[--k] = '\0';
    return k > 0;
}

/* "48K", "2048K", "32M" -> bytes; 0 when unreadable. */
static long long parse_size(const char *s)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v <= 0)
        return 0;
    if (*end == 'K' || *end == 'k')
        v *= 1024;
    else if (*end == 'M' || *end == 'm')
        v *= 1024 * 1024;
    else if (*end == 'G' || *end == 'g')
        v *= 1024LL * 1024 * 1024;
    return v;
}

/* CPUs in a list such as "0-3,8,10-11"; 0 when unreadable. */
static int count_cpus(const char *s)
{
    int n = 0;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b;
        if (end == s)
            return 0;
        b = a;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            if (end == s + 1 || b < a)
                return 0;
            s = end;
        }
        n += (int)(b - a + 1);
        if (*s == ',')
            s++;
        else if (*s)
            return 0;
    }
    return n;
}

static int from_sysfs(cbp_caches *c)
{
    char path[128], text[256];
    int i, found = 0;
    for (i = 0; i < 16; i++) {
        int level, shared;
        long long size;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        if (!read_text(path, text, sizeof text))
            break;
        level = atoi(text);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/type", i);
        if (!read_text(path, text, sizeof text) || strcmp(text, "Instruction") == 0)
            continue;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        size = read_text(path, text, sizeof text) ? parse_size(text) : 0;
        snprintf(path, sizeof path,
                 "/sys/devices/system/cpu/cpu0/cache/index%d/shared_cpu_list", i);
        shared = read_text(path, text, sizeof text) ? count_cpus(text) : 0;
        if (size <= 0 || level < 1 || level > 3)
            continue;
        c->size[level - 1] = size;
        c->shared[level - 1] = shared;
        found = 1;
    }
    return found;
}

static int from_sysconf(cbp_caches *c)
{
    int found = 0;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && \
    defined(_SC_LEVEL3_CACHE_SIZE)
    long v[3];
    int i;
    v[0] = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    v[1] = sysconf(_SC_LEVEL2_CACHE_SIZE);
    v[2] = sysconf(_SC_LEVEL3_CACHE_SIZE);
    for (i = 0; i < 3; i++)
        if (v[i] > 0) {
            c->size[i] = v[i];
            found = 1;
        }
#else
    (void)c;
#endif
    return found;
}

void cbp_detect_caches(cbp_caches *c)
{
    clear(c);
    if (from_sysfs(c))
        c->source = "sysfs";
    else if (from_sysconf(c))
        c->source = "sysconf";
}

#elif defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>

static long long sysctl_ll(const char *name)
{
    long long v = 0;
    size_t n = sizeof v;
    if (sysctlbyname(name, &v, &n, NULL, 0) != 0)
        return 0;
    if (n == sizeof(int)) {
        int w;
        memcpy(&w, &v, sizeof w);
        return w;
    }
    return v;
}

void cbp_detect_caches(cbp_caches *c)
{
    /* Apple silicon: perflevel0 is the performance cores (their L2 is
       shared by a cluster; there is no L3 the cores can use as one). */
    long long l1 = sysctl_ll("hw.perflevel0.l1dcachesize");
    long long l2 = sysctl_ll("hw.perflevel0.l2cachesize");
    long long per_l2 = sysctl_ll("hw.perflevel0.cpusperl2");
    clear(c);
    if (l1 <= 0)
        l1 = sysctl_ll("hw.l1dcachesize");
    if (l2 <= 0)
        l2 = sysctl_ll("hw.l2cachesize");
    c->size[0] = l1 > 0 ? l1 : 0;
    c->size[1] = l2 > 0 ? l2 : 0;
    c->shared[1] = per_l2 > 0 ? (int)per_l2 : 0;
    c->size[2] = sysctl_ll("hw.l3cachesize");
    if (c->size[2] < 0)
        c->size[2] = 0;
    if (c->size[0] || c->size[1] || c->size[2])
        c->source = "sysctl";
}

#elif defined(_WIN32)
#include <stdlib.h>
#include <windows.h>

static int popcount_mask(KAFFINITY m)
{
    int n = 0;
    while (m) {
        n += (int)(m & 1);
        m >>= 1;
    }
    return n;
}

void cbp_detect_caches(cbp_caches *c)
{
    DWORD len = 0;
    char *buf, *p;
    clear(c);
    GetLogicalProcessorInformationEx(RelationCache, NULL, &len);
    if (len == 0 || (buf = (char *)malloc(len)) == NULL)
        return;
    if (GetLogicalProcessorInformationEx(RelationCache,
                                         (PSYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX)buf, &len)) {
        for (p = buf; p < buf + len;) {
            PSYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX e =
                (PSYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX)p;
            if (e->Size == 0)
                break;
            if (e->Relationship == RelationCache) {
                CACHE_RELATIONSHIP *r = &e->Cache;
                int level = r->Level;
                /* the first cache of each level describes them all */
                if ((r->Type == CacheData || r->Type == CacheUnified) && level >= 1 &&
                    level <= 3 && c->size[level - 1] == 0) {
                    c->size[level - 1] = r->CacheSize;
                    c->shared[level - 1] = popcount_mask(r->GroupMask.Mask);
                }
            }
            p += e->Size;
        }
        if (c->size[0] || c->size[1] || c->size[2])
            c->source = "GetLogicalProcessorInformationEx";
    }
    free(buf);
}

#else
void cbp_detect_caches(cbp_caches *c) { clear(c); }
#endif
