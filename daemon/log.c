/*
 * Logging to stderr with sd-daemon priority prefixes (sd-daemon(3)), one
 * line per event.  Callers escape foreign bytes with log_escape().
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static enum log_level current_level = LOG_LVL_INFO;
/* Written once by log_init() before the loop or any thread starts. */
static int journal_prefixes = 1;

static const struct {
    const char *word;
    const char *prefix; /* syslog priority: err=3 warning=4 info=6 debug=7 */
} levels[] = {
    [LOG_LVL_ERROR] = {"error", "<3>"},
    [LOG_LVL_WARN] = {"warn", "<4>"},
    [LOG_LVL_INFO] = {"info", "<6>"},
    [LOG_LVL_DEBUG] = {"debug", "<7>"},
};

void log_init(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    /* An out-of-range number cannot match st_dev/st_ino, which is all that matters. */
    // NOLINTNEXTLINE(cert-err34-c)
    journal_prefixes = js != NULL && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
                       fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
                       (unsigned long long)st.st_ino == ino;
}

int log_level_parse(const char *word)
{
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcasecmp(word, levels[i].word) == 0)
            return (int)i;
    return -1;
}

void log_set_level(enum log_level level)
{
    current_level = level;
}

enum log_level log_get_level(void)
{
    return current_level;
}

__attribute__((format(printf, 2, 0))) static void log_vmsg(enum log_level level, const char *fmt,
                                                           va_list ap)
{
    /* One fprintf of a fully formatted line, so lines never interleave. */
    char line[4096];
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        memcpy(line + sizeof(line) - 4, "...", 4);
    fprintf(stderr, "%s%s\n", journal_prefixes ? levels[level].prefix : "", line);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > current_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_LVL_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}

char *log_escape(const char *in, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (outlen == 0)
        return out;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        int plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
        size_t need = plain ? 1 : 4;
        if (o + need + 1 > outlen) {
            /* Mark the cut so a reader knows the value is incomplete. */
            size_t keep = outlen > 4 ? outlen - 4 : 0;
            if (o > keep)
                o = keep;
            if (outlen >= 4)
                memcpy(out + o, "...", 3), o += 3;
            break;
        }
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o < outlen ? o : outlen - 1] = '\0';
    return out;
}
