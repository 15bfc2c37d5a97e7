
/*
 * A tiny TAP producer for the unit tests of the plain C parts.
 *
 *     plan(n);                      optional: "1..n" first
 *     ok(cond, "name %d", i);       returns cond
 *     is_int(got, expected, "name");
 *     is_str(got, expected, "name");
 *     is_mem(got, got_len, expected, expected_len, "name");
 *     diag("fmt", ...);             "# ..." on stderr
 *     return done_testing();        "1..N" unless planned; exit status
 *
 * The exit status is 0 only if every test passed and, with a plan, the
 * number of tests run matched it.
 */


#ifndef _TAP_H_INCLUDED_
#define _TAP_H_INCLUDED_


#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>


#if defined(__GNUC__) || defined(__clang__)
#define TAP_UNUSED           __attribute__((unused))
#define TAP_PRINTF(f, a)     __attribute__((format(printf, f, a)))
#else
#define TAP_UNUSED
#define TAP_PRINTF(f, a)
#endif


static int  tap_planned = -1;
static int  tap_run;
static int  tap_failed;


#define ok(cond, ...)                                                        \
    tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

#define is_int(got, expected, ...)                                           \
    tap_is_int((long long) (got), (long long) (expected), __FILE__,          \
               __LINE__, __VA_ARGS__)

#define is_str(got, expected, ...)                                           \
    tap_is_str((got), (expected), __FILE__, __LINE__, __VA_ARGS__)

#define is_mem(got, got_len, expected, expected_len, ...)                    \
    tap_is_mem((const void *) (got), (got_len), (const void *) (expected),   \
               (expected_len), __FILE__, __LINE__, __VA_ARGS__)


static void tap_vdiag(const char *fmt, va_list args) TAP_UNUSED
    TAP_PRINTF(1, 0);
static void diag(const char *fmt, ...) TAP_UNUSED TAP_PRINTF(1, 2);
static void plan(int n) TAP_UNUSED;
static int tap_vok(int pass, const char *file, int line, const char *fmt,
    va_list args) TAP_UNUSED TAP_PRINTF(4, 0);
static int tap_ok(int pass, const char *file, int line, const char *fmt, ...)
    TAP_UNUSED TAP_PRINTF(4, 5);
static int tap_is_int(long long got, long long expected, const char *file,
    int line, const char *fmt, ...) TAP_UNUSED TAP_PRINTF(5, 6);
static int tap_is_str(const char *got, const char *expected, const char *file,
    int line, const char *fmt, ...) TAP_UNUSED TAP_PRINTF(5, 6);
static int tap_is_mem(const void *got, size_t got_len, const void *expected,
    size_t expected_len, const char *file, int line, const char *fmt, ...)
    TAP_UNUSED TAP_PRINTF(7, 8);
static void tap_print_mem(const char *what, const void *p, size_t len)
    TAP_UNUSED;
static int done_testing(void) TAP_UNUSED;


static void
tap_vdiag(const char *fmt, va_list args)
{
    fflush(stdout);
    fputs("# ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    fflush(stderr);
}


static void
diag(const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    tap_vdiag(fmt, args);
    va_end(args);
}


static void
plan(int n)
{
    tap_planned = n;
    printf("1..%d\n", n);
    fflush(stdout);
}


static int
tap_vok(int pass, const char *file, int line, const char *fmt, va_list args)
{
    tap_run++;

    if (!pass) {
        tap_failed++;
        fputs("not ", stdout);
    }

    printf("ok %d - ", tap_run);
    vprintf(fmt, args);
    putchar('\n');
    fflush(stdout);

    if (!pass) {
        diag("  Failed test at %s line %d.", file, line);
    }

    return pass;
}


static int
tap_ok(int pass, const char *file, int line, const char *fmt, ...)
{
    va_list  args;

    va_start(args, fmt);
    tap_vok(pass, file, line, fmt, args);
    va_end(args);

    return pass;
}


static int
tap_is_int(long long got, long long expected, const char *file, int line,
    const char *fmt, ...)
{
    int      pass;
    va_list  args;

    pass = (got == expected);

    va_start(args, fmt);
    tap_vok(pass, file, line, fmt, args);
    va_end(args);

    if (!pass) {
        diag("         got: %lld", got);
        diag("    expected: %lld", expected);
    }

    return pass;
}


static int
tap_is_str(const char *got, const char *expected, const char *file, int line,
    const char *fmt, ...)
{
    int      pass;
    va_list  args;

    if (got == NULL || expected == NULL) {
        pass = (got == expected);

    } else {
        pass = (strcmp(got, expected) == 0);
    }

    va_start(args, fmt);
    tap_vok(pass, file, line, fmt, args);
    va_end(args);

    if (!pass) {
        diag("         got: %s%s%s", got ? "'" : "", got ? got : "NULL",
             got ? "'" : "");
        diag("    expected: %s%s%s", expected ? "'" : "",
             expected ? expected : "NULL", expected ? "'" : "");
    }

    return pass;
}


static void
tap_print_mem(const char *what, const void *p, size_t len)
{
    size_t               i;
    const unsigned char  *s;

    fflush(stdout);
    fprintf(stderr, "# %12s: '", what);

    s = p;

    for (i = 0; i < len && i < 256; i++) {
        if (s[i] >= ' ' && s[i] < 0x7f && s[i] != '\\') {
            fputc(s[i], stderr);

        } else {
            fprintf(stderr, "\\x%02x", s[i]);
        }
    }

    fprintf(stderr, "'%s (%zu bytes)\n", i < len ? "..." : "", len);
    fflush(stderr);
}


static int
tap_is_mem(const void *got, size_t got_len, const void *expected,
    size_t expected_len, const char *file, int line, const char *fmt, ...)
{
    int      pass;
    va_list  args;

    pass = (got_len == expected_len
            && (got_len == 0 || memcmp(got, expected, got_len) == 0));

    va_start(args, fmt);
    tap_vok(pass, file, line, fmt, args);
    va_end(args);

    if (!pass) {
        tap_print_mem("got", got, got ? got_len : 0);
        tap_print_mem("expected", expected, expected ? expected_len : 0);
    }

    return pass;
}


static int
done_testing(void)
{
    if (tap_planned < 0) {
        printf("1..%d\n", tap_run);

    } else if (tap_planned != tap_run) {
        diag("Looks like you planned %d tests but ran %d.", tap_planned,
             tap_run);
        fflush(stdout);
        return 255;
    }

    fflush(stdout);

    if (tap_failed) {
        diag("Looks like you failed %d test%s of %d.", tap_failed,
             tap_failed == 1 ? "" : "s", tap_run);
        return tap_failed < 254 ? tap_failed : 254;
    }

    return 0;
}


#endif /* _TAP_H_INCLUDED_ */
