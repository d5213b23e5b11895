/*
 * Message body codecs, pure and incremental.
 *
 * Inbound (DATA from a local client): the data ends only at CRLF "." CRLF;
 * a leading dot of a CRLF-terminated line is removed (RFC 5321 4.5.2);
 * every bare CR and bare LF becomes CRLF, so "<LF>.<LF>" is ordinary text
 * and SMTP smuggling through the daemon is impossible.  The result is
 * canonical: CRLF lines only, no stuffing, ending with CRLF unless empty.
 *
 * Outbound (to an upstream server): canonical text is dot-stuffed and
 * terminated with "." CRLF.
 */
#ifndef MAILPOOL_BODY_H
#define MAILPOOL_BODY_H

#include <stddef.h>

struct body_decoder {
    /* private */
    int state;
    int eightbit; /* set once any byte >= 0x80 was seen */
};

void body_decoder_init(struct body_decoder *d);

/*
 * Decode `len` bytes of DATA into `out`, which must have room for 2*len+2
 * bytes.  Consumes input up to and including the terminating CRLF.CRLF and
 * returns the number of bytes consumed; *outlen is set to the bytes written;
 * *done is set to 1 when the terminator was consumed (bytes after it are
 * left for the caller: the next command).
 */
size_t body_decode(struct body_decoder *d, const char *in, size_t len, char *out, size_t *outlen,
                   int *done);

/* Whether any 8-bit byte was seen so far. */
int body_decoder_8bit(const struct body_decoder *d);

struct body_encoder {
    /* private */
    int at_line_start;
    int last_cr;
    size_t total;
};

void body_encoder_init(struct body_encoder *e);

/*
 * Dot-stuff `len` bytes of canonical text into `out` (room for 2*len bytes
 * is always enough).  Returns the bytes written.
 */
size_t body_encode(struct body_encoder *e, const char *in, size_t len, char *out);

/*
 * Write the end of data into `out` (room for 5 bytes): "." CRLF after a
 * complete line, CRLF "." CRLF otherwise.  Returns the bytes written.
 */
size_t body_encode_end(struct body_encoder *e, char *out);

#endif
