/*
 * Test-only shim for the uWebSockets.js build that stands in for Kuzzle's pinned one (see
 * README.md). That build was linked against glibc 2.38, whose C23 headers redirect sscanf,
 * strtol and strtoul to the three names below; older glibc (Debian 12 has 2.36) lacks them.
 * Loaded with LD_PRELOAD only when the system glibc is older than 2.38 (install.sh decides).
 * The C23 variants differ only in also accepting "0b" binary prefixes, which uWS never parses.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int __isoc23_sscanf(const char *str, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    int n = vsscanf(str, format, ap);
    va_end(ap);
    return n;
}

long __isoc23_strtol(const char *nptr, char **endptr, int base) {
    return strtol(nptr, endptr, base);
}

unsigned long __isoc23_strtoul(const char *nptr, char **endptr, int base) {
    return strtoul(nptr, endptr, base);
}
