/*
 * DATA decoding and dot-stuffing (RFC 5321 4.1.1.4 and 4.5.2), written so
 * that SMTP smuggling cannot pass through: only CRLF "." CRLF ends the data,
 * and every line leaves in canonical CRLF form.
 */
#include "body.h"

#include <string.h>

/*
 * Decoder states.  A line "started after CRLF" (or at the very start) is
 * one where a leading dot is transparency stuffing and "." CRLF is the end;
 * after a bare CR or LF it is neither, because an SMTP client that sends
 * bare line ends is not dot-stuffing by them, and honouring them is
 * exactly what smuggling exploits.
 */
enum {
    D_BOL_CRLF = 0, /* start of a line that began after CRLF */
    D_BOL_BARE,     /* start of a line that began after a bare CR or LF */
    D_MID,          /* inside a line */
    D_CR,           /* a CR was read; CRLF or bare CR depends on the next byte */
    D_DOT,          /* "." at the start of a CRLF line */
    D_DOT_CR,       /* "." CR at the start of a CRLF line */
    D_DONE,         /* the terminator was consumed */
};

/* Length of the run of bytes before the first CR or LF. */
static size_t plain_run(const char *p, size_t n)
{
    const char *lf = memchr(p, '\n', n);
    size_t m = lf ? (size_t)(lf - p) : n;
    const char *cr = memchr(p, '\r', m);
    return cr ? (size_t)(cr - p) : m;
}

static int has_8bit(const char *p, size_t n)
{
    unsigned char acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= (unsigned char)p[i];
    return (acc & 0x80) != 0;
}

void body_decoder_init(struct body_decoder *d)
{
    memset(d, 0, sizeof(*d));
    d->state = D_BOL_CRLF;
}

int body_decoder_8bit(const struct body_decoder *d)
{
    return d->eightbit;
}

size_t body_decode(struct body_decoder *d, const char *in, size_t len, char *out, size_t *outlen,
                   int *done)
{
    size_t i = 0;
    size_t o = 0;

    *done = d->state == D_DONE;
    while (i < len && d->state != D_DONE) {
        if (d->state == D_MID || d->state == D_BOL_BARE) {
            /* Fast path: the bulk of a line is copied as it is. */
            size_t run = plain_run(in + i, len - i);
            if (run > 0) {
                memcpy(out + o, in + i, run);
                if (!d->eightbit && has_8bit(in + i, run))
                    d->eightbit = 1;
                i += run;
                o += run;
                d->state = D_MID;
                continue;
            }
        }
        unsigned char c = (unsigned char)in[i];

        switch (d->state) {
        case D_CR:
            out[o++] = '\r';
            out[o++] = '\n';
            if (c == '\n') {
                d->state = D_BOL_CRLF;
                i++;
            } else {
                d->state = D_BOL_BARE; /* bare CR; look at c again */
            }
            continue;
        case D_DOT_CR:
            if (c == '\n') {
                d->state = D_DONE;
                *done = 1;
                i++;
            } else {
                /* "." and a bare CR: the stuffing dot goes, the CR is a line end. */
                out[o++] = '\r';
                out[o++] = '\n';
                d->state = D_BOL_BARE;
            }
            continue;
        case D_DOT:
            /* A stuffing dot: dropped, whatever follows is content. */
            if (c == '\r') {
                d->state = D_DOT_CR;
                i++;
                continue;
            }
            d->state = D_MID;
            break;
        case D_BOL_CRLF:
            if (c == '.') {
                d->state = D_DOT;
                i++;
                continue;
            }
            break;
        default:
            break;
        }

        /* An ordinary byte in the middle or at the start of a line. */
        i++;
        if (c >= 0x80)
            d->eightbit = 1;
        if (c == '\r') {
            d->state = D_CR;
        } else if (c == '\n') {
            out[o++] = '\r';
            out[o++] = '\n';
            d->state = D_BOL_BARE;
        } else {
            out[o++] = (char)c;
            d->state = D_MID;
        }
    }
    *outlen = o;
    return i;
}

void body_encoder_init(struct body_encoder *e)
{
    memset(e, 0, sizeof(*e));
    e->at_line_start = 1;
}

/*
 * The input should be canonical already; a stray bare CR or LF is turned
 * into CRLF all the same, so nothing this writes can end the data early
 * or smuggle a second message to a lenient server.
 */
size_t body_encode(struct body_encoder *e, const char *in, size_t len, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        if (!e->at_line_start) {
            /* Fast path: inside a line nothing needs stuffing. */
            size_t run = plain_run(in + i, len - i);
            if (run > 0) {
                memcpy(out + o, in + i, run);
                o += run;
                i += run - 1;
                e->last_cr = 0;
                continue;
            }
        }
        char c = in[i];

        if (c == '\n') {
            if (!e->last_cr) {
                out[o++] = '\r';
                out[o++] = '\n';
            }
            e->last_cr = 0;
            e->at_line_start = 1;
            continue;
        }
        e->last_cr = 0;
        if (c == '\r') {
            /* CRLF goes out at once; the LF that normally follows is skipped. */
            out[o++] = '\r';
            out[o++] = '\n';
            e->last_cr = 1;
            e->at_line_start = 1;
            continue;
        }
        if (c == '.' && e->at_line_start)
            out[o++] = '.';
        out[o++] = c;
        e->at_line_start = 0;
    }
    e->total += o;
    return o;
}

size_t body_encode_end(struct body_encoder *e, char *out)
{
    size_t o = 0;

    if (!e->at_line_start) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    out[o++] = '.';
    out[o++] = '\r';
    out[o++] = '\n';
    e->total += o;
    e->at_line_start = 1;
    e->last_cr = 0;
    return o;
}
