/*
 * Delivery status notifications: the multipart/report (RFC 6522) with a
 * message/delivery-status part (RFC 3464) that carries the DSN parameters
 * ENVID and ORCPT (RFC 3461), in an RFC 5322 / MIME (RFC 2045-2046) message.
 */
#include "bounce.h"
#include "utf8.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/*
 * Nothing that comes from a peer or a client reaches the output unchecked;
 * these caps keep every field on one sane line (or a few folded ones) no
 * matter what the input was.  Truncation is always marked with "...".
 */
#define ADDR_MAX 512  /* RFC 5321 paths are at most 256 octets */
#define HOST_MAX 255  /* RFC 1035 */
#define ENVID_MAX 100 /* RFC 3461 section 4.4 */
#define TOKEN_MAX 64  /* queue ids, action and status words */
#define DIAG_MAX 800  /* server replies: enough for a multiline reply */
#define FOLD_AT 78    /* RFC 5322 section 2.1.1 "SHOULD" limit */
#define LINE_MAX_OCTETS 998
#define BOUNDARY_TRIES 100

#ifdef BOUNCE_TEST_RANDOM
/* Supplied by the test program: fills buf and returns 1, or returns 0 to use the real source. */
int bounce_test_random(unsigned char *buf, size_t n);
#endif

struct buf {
    char *p;
    size_t len;
    size_t cap;
    int oom;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->oom)
        return;
    if (n > SIZE_MAX - b->len - 1) {
        b->oom = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char *p;

        while (cap < b->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_putc(struct buf *b, char c)
{
    buf_add(b, &c, 1);
}

__attribute__((format(printf, 2, 3))) static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        buf_add(b, small, (size_t)n);
        return;
    }
    {
        char *big = malloc((size_t)n + 1);

        if (big == NULL) {
            b->oom = 1;
            return;
        }
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        buf_add(b, big, (size_t)n);
        free(big);
    }
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Empty b for reuse; its string reads "" until something is added. */
static void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->p != NULL)
        b->p[0] = '\0';
}

/* The string in b, or "" when it is empty, so callers never see NULL. */
static const char *buf_str(const struct buf *b)
{
    return b->p != NULL ? b->p : "";
}

/* ---- sanitising ---------------------------------------------------------- */

enum clean_mode {
    CLEAN_TEXT, /* free text (diagnostics): line breaks become spaces */
    CLEAN_ADDR, /* addresses: no spaces or angle brackets to break "<addr>" */
    CLEAN_HOST, /* host names and address literals */
    CLEAN_TOKEN /* queue ids, action, status: a single atom */
};

static int is_print(unsigned char c)
{
    return c >= 0x20 && c < 0x7f;
}

/* ':' only inside an address literal ("[IPv6:...]"), where it cannot end a field name. */
static int host_char(unsigned char c, int literal)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_' || (literal && (c == '[' || c == ']' || c == ':'));
}

/*
 * Append src to out, made safe for the place named by mode, at most max
 * octets (then "..." marks the cut).  Bytes that do not belong become '?'
 * (so the reader sees something was there); with utf8 set, well-formed
 * UTF-8 is kept, for the human-readable part only.  In CLEAN_TEXT, runs of
 * CR, LF and TAB become one space, so a multiline reply reads as one line and
 * cannot start a line of its own (a fake header or MIME boundary).
 * Returns 1 if any UTF-8 was kept.
 */
static int clean_append(struct buf *out, const char *src, enum clean_mode mode, size_t max,
                        int utf8)
{
    const unsigned char *s = (const unsigned char *)(src != NULL ? src : "");
    size_t n = strlen((const char *)s);
    size_t start = out->len;
    int kept8 = 0;

    if (mode == CLEAN_TEXT) {
        while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')) {
            s++;
            n--;
        }
    }
    for (size_t i = 0; i < n && !out->oom;) {
        unsigned char c = s[i];
        size_t seq = 0;

        if (out->len - start >= max) {
            /* Cut back to the limit, never inside a UTF-8 sequence. */
            size_t cut = start + max;

            while (cut > start && ((unsigned char)out->p[cut] & 0xc0) == 0x80)
                cut--;
            out->len = cut;
            out->p[cut] = '\0';
            buf_puts(out, "...");
            return kept8;
        }
        if (c >= 0x80 && utf8)
            seq = utf8_printable(s + i, n - i);
        if (seq > 0) {
            buf_add(out, s + i, seq);
            kept8 = 1;
            i += seq;
            continue;
        }
        i++;
        switch (mode) {
        case CLEAN_TEXT:
            if (c == '\r' || c == '\n' || c == '\t') {
                while (i < n && (s[i] == '\r' || s[i] == '\n' || s[i] == '\t'))
                    i++;
                c = ' ';
            }
            buf_putc(out, is_print(c) ? (char)c : '?');
            break;
        case CLEAN_ADDR:
            buf_putc(out, is_print(c) && c != ' ' && c != '<' && c != '>' ? (char)c : '?');
            break;
        case CLEAN_HOST:
            buf_putc(out, host_char(c, s[0] == '[') ? (char)c : '?');
            break;
        case CLEAN_TOKEN:
            buf_putc(out, is_print(c) && c != ' ' && c != ';' ? (char)c : '?');
            break;
        }
    }
    /* Trailing blanks would make folding produce whitespace-only lines. */
    while (out->len > start && out->p[out->len - 1] == ' ')
        out->p[--out->len] = '\0';
    return kept8;
}

/* A sanitised copy of src as its own string (in *b, freed by the caller). */
static const char *clean(struct buf *b, const char *src, enum clean_mode mode, size_t max)
{
    clean_append(b, src, mode, max, 0);
    return buf_str(b);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* RFC 3461 section 4: "+HH" stands for one octet.  A malformed "+" stays as it is. */
static void xtext_decode(struct buf *out, const char *s)
{
    while (*s != '\0') {
        int hi, lo;

        if (s[0] == '+' && (hi = hexval(s[1])) >= 0 && (lo = hexval(s[2])) >= 0) {
            buf_putc(out, (char)(hi << 4 | lo));
            s += 3;
        } else {
            buf_putc(out, *s++);
        }
    }
}

/* ---- small formatters ---------------------------------------------------- */

/* RFC 5322 date-time in UTC; locale-free, so names are spelled out here. */
static void put_date(struct buf *b, time_t t)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || tm.tm_wday < 0 || tm.tm_wday > 6 || tm.tm_mon < 0 ||
        tm.tm_mon > 11) {
        memset(&tm, 0, sizeof(tm));
        tm.tm_mday = 1;
        tm.tm_year = 70;
        tm.tm_wday = 4;
    }
    buf_printf(b, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
               months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/*
 * "Name: value" CRLF, folded at spaces (RFC 5322 section 2.2.3) so lines
 * stay near FOLD_AT; a run with no space is hard-split before it could pass
 * LINE_MAX_OCTETS.  Unfolding gives the value back unchanged in the usual
 * case, since each fold is put in front of an existing space.
 */
static void put_field(struct buf *b, const char *name, const char *value)
{
    size_t col = strlen(name) + 2;
    const char *v = value;

    buf_puts(b, name);
    buf_puts(b, ": ");
    while (*v != '\0') {
        size_t word = strcspn(v + 1, " ") + 1; /* this space (if any) and the word after it */

        if (*v == ' ' && col + word > FOLD_AT && col > 1) {
            buf_puts(b, "\r\n");
            col = 0;
        }
        while (word > 0) {
            size_t room = LINE_MAX_OCTETS - col;
            size_t take = word < room ? word : room;

            buf_add(b, v, take);
            col += take;
            v += take;
            word -= take;
            if (word > 0) {
                buf_puts(b, "\r\n ");
                col = 1;
            }
        }
    }
    buf_puts(b, "\r\n");
}

/*
 * Human-readable text, word-wrapped at FOLD_AT with indent spaces in front
 * of every line; like put_field, a word too long for any line is split.
 */
static void put_wrapped(struct buf *b, const char *text, size_t indent)
{
    const char *t = text;
    size_t col = 0;

    while (*t != '\0') {
        size_t word;

        while (*t == ' ')
            t++;
        if (*t == '\0')
            break;
        word = strcspn(t, " ");
        if (col > indent && col + 1 + word > FOLD_AT) {
            buf_puts(b, "\r\n");
            col = 0;
        }
        if (col == 0) {
            for (size_t i = 0; i < indent; i++)
                buf_putc(b, ' ');
            col = indent;
        } else {
            buf_putc(b, ' ');
            col++;
        }
        while (word > 0) {
            size_t room = LINE_MAX_OCTETS - col;
            size_t take = word < room ? word : room;

            buf_add(b, t, take);
            col += take;
            t += take;
            word -= take;
            if (word > 0) {
                buf_puts(b, "\r\n");
                for (size_t i = 0; i < indent; i++)
                    buf_putc(b, ' ');
                col = indent;
            }
        }
    }
    if (col > 0)
        buf_puts(b, "\r\n");
}

/* ---- per-recipient facts ------------------------------------------------- */

static const char *const actions[] = {"failed", "delayed", "delivered", "relayed", "expanded"};

static int valid_action(const char *a)
{
    if (a == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        if (strcmp(a, actions[i]) == 0)
            return 1;
    return 0;
}

/* RFC 3464 status-code: class "." 1*3digit "." 1*3digit, class 2, 4 or 5. */
static int valid_status(const char *s)
{
    size_t n;

    if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    s += 2;
    for (int part = 0; part < 2; part++) {
        n = strspn(s, "0123456789");
        if (n < 1 || n > 3)
            return 0;
        s += n;
        if (part == 0 && *s++ != '.')
            return 0;
    }
    return *s == '\0';
}

/*
 * The action and status that go out: each is trusted only when well-formed,
 * and a missing one is inferred from the other, so every recipient block
 * satisfies RFC 3464 whatever the caller filled in.
 */
static void rcpt_outcome(const struct bounce_rcpt *r, const char **action, const char **status)
{
    int va = valid_action(r->action), vs = valid_status(r->status);

    *action = va ? r->action : NULL;
    *status = vs ? r->status : NULL;
    if (!va)
        *action = vs && r->status[0] == '4'   ? "delayed"
                  : vs && r->status[0] == '2' ? "delivered"
                                              : "failed";
    if (!vs)
        *status = strcmp(*action, "delayed") == 0  ? "4.0.0"
                  : strcmp(*action, "failed") == 0 ? "5.0.0"
                                                   : "2.0.0";
}

/* ---- the three parts ----------------------------------------------------- */

static const char *subject_for(const struct bounce_info *bi)
{
    size_t failed = 0, delayed = 0;

    for (size_t i = 0; i < bi->nrcpts; i++) {
        const char *action, *status;

        rcpt_outcome(&bi->rcpts[i], &action, &status);
        failed += strcmp(action, "failed") == 0;
        delayed += strcmp(action, "delayed") == 0;
    }
    if (bi->nrcpts > 0 && failed == bi->nrcpts)
        return "Undelivered Mail Returned to Sender";
    if (bi->nrcpts > 0 && delayed == bi->nrcpts)
        return "Delayed Mail (still being retried)";
    return "Delivery Status Notification";
}

/* Part 1, for people.  Sets *utf8 when an address needed UTF-8 to be shown as given. */
static void build_human(struct buf *b, const struct bounce_info *bi, const char *host,
                        const char *subject, int *utf8)
{
    struct buf line = {0};

    *utf8 = 0;
    buf_printf(b, "This is the mail system at %s.\r\n\r\n", host);
    if (strcmp(subject, "Undelivered Mail Returned to Sender") == 0)
        put_wrapped(b,
                    "Your message could not be delivered to the recipients listed below. "
                    "The mail system gave up; sending it again as it is will not help.",
                    0);
    else if (strcmp(subject, "Delayed Mail (still being retried)") == 0)
        put_wrapped(b,
                    "Your message has not been delivered yet to the recipients listed below. "
                    "The mail system will keep trying; there is no need to send it again.",
                    0);
    else
        put_wrapped(b, "Here is what happened to your message, recipient by recipient.", 0);
    buf_puts(b, "\r\n");

    for (size_t i = 0; i < bi->nrcpts && !b->oom; i++) {
        const struct bounce_rcpt *r = &bi->rcpts[i];
        const char *action, *status;

        rcpt_outcome(r, &action, &status);
        buf_reset(&line);
        buf_putc(&line, '<');
        *utf8 |= clean_append(&line, r->addr, CLEAN_ADDR, ADDR_MAX, 1);
        buf_printf(&line, ">: %s (%s)", action, status);
        put_wrapped(b, buf_str(&line), 0);
        if (r->diagnostic != NULL) {
            buf_reset(&line);
            if (r->remote_mta != NULL) {
                buf_puts(&line, "host ");
                clean_append(&line, r->remote_mta, CLEAN_HOST, HOST_MAX, 0);
                buf_puts(&line, " said: ");
            }
            clean_append(&line, r->diagnostic, CLEAN_TEXT, DIAG_MAX, 0);
            put_wrapped(b, buf_str(&line), 4);
        }
        buf_puts(b, "\r\n");
    }
    if (bi->queue_id != NULL) {
        buf_reset(&line);
        buf_puts(&line, "Queue ID: ");
        clean_append(&line, bi->queue_id, CLEAN_TOKEN, TOKEN_MAX, 0);
        put_wrapped(b, buf_str(&line), 0);
    }
    if (line.oom)
        b->oom = 1;
    buf_free(&line);
}

/* Part 2: RFC 3464 section 2.2 per-message, then 2.3 per-recipient groups. */
static void build_status(struct buf *b, const struct bounce_info *bi, const char *host)
{
    struct buf v = {0}, raw = {0};

    if (bi->envid != NULL) {
        xtext_decode(&raw, bi->envid);
        clean_append(&v, buf_str(&raw), CLEAN_TOKEN, ENVID_MAX, 0);
        if (v.len > 0)
            put_field(b, "Original-Envelope-Id", buf_str(&v));
    }
    buf_reset(&v);
    buf_printf(&v, "dns; %s", host);
    put_field(b, "Reporting-MTA", buf_str(&v));
    if (bi->queue_id != NULL) {
        buf_reset(&v);
        clean_append(&v, bi->queue_id, CLEAN_TOKEN, TOKEN_MAX, 0);
        put_field(b, "X-Mailpool-Queue-ID", buf_str(&v));
    }
    if (bi->arrival != 0) {
        buf_reset(&v);
        put_date(&v, bi->arrival);
        put_field(b, "Arrival-Date", buf_str(&v));
    }

    for (size_t i = 0; i < bi->nrcpts && !b->oom; i++) {
        const struct bounce_rcpt *r = &bi->rcpts[i];
        const char *action, *status, *semi;

        rcpt_outcome(r, &action, &status);
        buf_puts(b, "\r\n");
        /* ORCPT is "addr-type;xtext"; the DSN carries it decoded (RFC 3464 2.3.1). */
        if (r->orcpt != NULL && (semi = strchr(r->orcpt, ';')) != NULL && semi > r->orcpt) {
            struct buf type = {0};
            size_t tlen = (size_t)(semi - r->orcpt);

            buf_add(&type, r->orcpt, tlen < TOKEN_MAX ? tlen : TOKEN_MAX);
            buf_reset(&v);
            clean_append(&v, buf_str(&type), CLEAN_TOKEN, TOKEN_MAX, 0);
            buf_putc(&v, ';');
            buf_reset(&raw);
            xtext_decode(&raw, semi + 1);
            clean_append(&v, buf_str(&raw), CLEAN_ADDR, ADDR_MAX, 0);
            put_field(b, "Original-Recipient", buf_str(&v));
            if (type.oom)
                b->oom = 1;
            buf_free(&type);
        }
        buf_reset(&v);
        buf_puts(&v, "rfc822; ");
        clean_append(&v, r->addr, CLEAN_ADDR, ADDR_MAX, 0);
        put_field(b, "Final-Recipient", buf_str(&v));
        put_field(b, "Action", action);
        put_field(b, "Status", status);
        if (r->remote_mta != NULL) {
            buf_reset(&v);
            buf_puts(&v, "dns; ");
            clean_append(&v, r->remote_mta, CLEAN_HOST, HOST_MAX, 0);
            put_field(b, "Remote-MTA", buf_str(&v));
        }
        if (r->diagnostic != NULL) {
            buf_reset(&v);
            buf_puts(&v, "smtp; ");
            clean_append(&v, r->diagnostic, CLEAN_TEXT, DIAG_MAX, 0);
            put_field(b, "Diagnostic-Code", buf_str(&v));
        }
        if (r->last_attempt != 0) {
            buf_reset(&v);
            put_date(&v, r->last_attempt);
            put_field(b, "Last-Attempt-Date", buf_str(&v));
        }
    }
    if (v.oom || raw.oom)
        b->oom = 1;
    buf_free(&v);
    buf_free(&raw);
}

/*
 * Whether text can go into a 7bit/8bit MIME part as it is: CRLF line ends
 * only, no NUL, no line over 998 octets.  *eight is set if any octet has
 * the high bit set.
 */
static int mime_clean(const char *text, size_t len, int *eight)
{
    size_t col = 0;

    *eight = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];

        if (c == '\r') {
            if (i + 1 >= len || text[i + 1] != '\n')
                return 0;
            i++;
            col = 0;
            continue;
        }
        if (c == '\n' || c == '\0')
            return 0;
        if (c >= 0x80)
            *eight = 1;
        if (++col > LINE_MAX_OCTETS)
            return 0;
    }
    return 1;
}

/*
 * Quoted-printable (RFC 2045 section 6.7) for header text that cannot go
 * as it is; CRLF pairs stay hard line breaks, every other control byte,
 * 8-bit octet or stray CR/LF is encoded.
 */
static void put_qp(struct buf *b, const char *text, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t col = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        int at_eol = i + 1 >= len || (text[i + 1] == '\r' && i + 2 < len && text[i + 2] == '\n');
        char enc[3];
        size_t n;

        if (c == '\r' && i + 1 < len && text[i + 1] == '\n') {
            buf_puts(b, "\r\n");
            i++;
            col = 0;
            continue;
        }
        if ((c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol)) {
            enc[0] = (char)c;
            n = 1;
        } else {
            enc[0] = '=';
            enc[1] = hex[c >> 4];
            enc[2] = hex[c & 15];
            n = 3;
        }
        if (col + n > 75) {
            buf_puts(b, "=\r\n");
            col = 0;
        }
        buf_add(b, enc, n);
        col += n;
    }
}

struct original_part {
    const char *type;
    const char *cte;
    const char *text;
    size_t len;
    int qp;
};

/* Length of the header section: up to the first empty line, or -1 when there is none. */
static long header_section(const char *text, size_t len)
{
    size_t s = 0;

    while (s < len) {
        const char *nl = memchr(text + s, '\n', len - s);
        size_t e;

        if (nl == NULL)
            return -1;
        e = (size_t)(nl - text);
        if (e == s || (e == s + 1 && text[s] == '\r'))
            return (long)s;
        s = e + 1;
    }
    return -1;
}

/* Part 3: what of the original goes back, and how. */
static void choose_original(const struct bounce_info *bi, struct original_part *op)
{
    const char *text = bi->original != NULL ? bi->original : "";
    size_t len = bi->original != NULL ? bi->original_len : 0;
    int eight;
    long hdr;

    memset(op, 0, sizeof(*op));
    op->text = text;
    if (bi->ret_full && len > 0 && len <= bi->max_original && mime_clean(text, len, &eight)) {
        /* message/rfc822 allows no transfer encoding but 7bit/8bit/binary (RFC 2046 5.2.1). */
        op->type = "message/rfc822";
        op->cte = eight ? "8bit" : "7bit";
        op->len = len;
        return;
    }
    op->type = "text/rfc822-headers";
    hdr = header_section(text, len);
    if (hdr >= 0) {
        op->len = (size_t)hdr;
    } else {
        op->len = len < bi->max_original ? len : bi->max_original;
        if (op->len < len) {
            /* Cut at a line end when there is one, so no header line is left half. */
            size_t cut = op->len;

            while (cut > 0 && text[cut - 1] != '\n')
                cut--;
            if (cut > 0)
                op->len = cut;
        }
    }
    if (mime_clean(text, op->len, &eight) && !eight) {
        op->cte = "7bit";
    } else {
        op->cte = "quoted-printable";
        op->qp = 1;
    }
}

/* ---- assembling ---------------------------------------------------------- */

static void fill_random(unsigned char *buf, size_t n, const struct bounce_info *bi,
                        unsigned attempt)
{
    uint64_t x;

#ifdef BOUNCE_TEST_RANDOM
    if (bounce_test_random(buf, n))
        return;
#endif
    if (getrandom(buf, n, GRND_NONBLOCK) == (ssize_t)n)
        return;
    /* No entropy yet (early boot): uniqueness is what matters, so mix what differs. */
    x = (uint64_t)bi->now ^ (uint64_t)(uintptr_t)bi ^ ((uint64_t)attempt << 48) ^
        (uint64_t)(uintptr_t)&x;
    for (size_t i = 0; i < n; i++) {
        uint64_t z;

        x += 0x9e3779b97f4a7c15ull;
        z = x;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        buf[i] = (unsigned char)(z ^ (z >> 31));
    }
}

static void to_hex(char *out, const unsigned char *in, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static int occurs(const char *hay, size_t hlen, const char *needle)
{
    return memmem(hay, hlen, needle, strlen(needle)) != NULL;
}

char *bounce_build(const struct bounce_info *bi, size_t *len)
{
    struct buf host = {0}, to = {0}, human = {0}, status = {0}, part3 = {0}, msg = {0};
    struct original_part op;
    const char *subject = subject_for(bi);
    unsigned char rnd[16];
    char boundary[3 + 2 * sizeof(rnd)], idhex[1 + 2 * 8];
    int utf8 = 0, found = 0;
    char *out = NULL;

    clean(&host, bi->reporting_mta, CLEAN_HOST, HOST_MAX);
    if (host.len == 0)
        buf_puts(&host, "localhost");
    clean(&to, bi->to, CLEAN_ADDR, ADDR_MAX);

    build_human(&human, bi, buf_str(&host), subject, &utf8);
    build_status(&status, bi, buf_str(&host));
    choose_original(bi, &op);
    if (op.qp)
        put_qp(&part3, op.text, op.len);
    else
        buf_add(&part3, op.text, op.len);
    if (host.oom || to.oom || human.oom || status.oom || part3.oom)
        goto out;

    /*
     * "=_" cannot occur in quoted-printable output, and 128 random bits will
     * not occur by chance; checking every part anyway means a crafted
     * original cannot end the report early.
     */
    for (unsigned attempt = 0; attempt < BOUNDARY_TRIES && !found; attempt++) {
        fill_random(rnd, sizeof(rnd), bi, attempt);
        boundary[0] = '=';
        boundary[1] = '_';
        to_hex(boundary + 2, rnd, sizeof(rnd));
        found = !occurs(buf_str(&part3), part3.len, boundary) &&
                !occurs(buf_str(&human), human.len, boundary) &&
                !occurs(buf_str(&status), status.len, boundary);
    }
    if (!found)
        goto out;
    fill_random(rnd, 8, bi, BOUNDARY_TRIES);
    to_hex(idhex, rnd, 8);

    buf_printf(&msg, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", buf_str(&host));
    if (to.len > 0)
        buf_printf(&msg, "To: <%s>\r\n", buf_str(&to));
    else
        buf_puts(&msg, "To: undisclosed-recipients:;\r\n");
    buf_printf(&msg, "Subject: %s\r\n", subject);
    buf_puts(&msg, "Date: ");
    put_date(&msg, bi->now);
    buf_printf(&msg, "\r\nMessage-ID: <%lld.%s@%s>\r\n", (long long)bi->now, idhex, buf_str(&host));
    buf_puts(&msg, "Auto-Submitted: auto-replied\r\n"
                   "MIME-Version: 1.0\r\n");
    buf_printf(&msg,
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               " boundary=\"%s\"\r\n",
               boundary);
    if (utf8 || strcmp(op.cte, "8bit") == 0)
        buf_puts(&msg, "Content-Transfer-Encoding: 8bit\r\n");
    buf_puts(&msg, "\r\nThis is a MIME-encapsulated message.\r\n");

    buf_printf(&msg, "\r\n--%s\r\n", boundary);
    buf_printf(&msg, "Content-Type: text/plain; charset=%s\r\n", utf8 ? "utf-8" : "us-ascii");
    buf_printf(&msg, "Content-Transfer-Encoding: %s\r\n\r\n", utf8 ? "8bit" : "7bit");
    buf_add(&msg, human.p, human.len);

    buf_printf(&msg, "\r\n--%s\r\n", boundary);
    buf_puts(&msg, "Content-Type: message/delivery-status\r\n\r\n");
    buf_add(&msg, status.p, status.len);

    buf_printf(&msg, "\r\n--%s\r\n", boundary);
    buf_printf(&msg, "Content-Type: %s\r\n", op.type);
    buf_printf(&msg, "Content-Transfer-Encoding: %s\r\n\r\n", op.cte);
    /* The CRLF before the delimiter belongs to it, so the original keeps its own last CRLF. */
    buf_add(&msg, part3.p, part3.len);
    buf_printf(&msg, "\r\n--%s--\r\n", boundary);

    if (!msg.oom) {
        out = msg.p;
        *len = msg.len;
        msg.p = NULL;
    }
out:
    buf_free(&host);
    buf_free(&to);
    buf_free(&human);
    buf_free(&status);
    buf_free(&part3);
    buf_free(&msg);
    return out;
}
