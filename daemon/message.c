/*
 * Messages in flight: envelope, body and per-recipient results.
 * Ids are random 64-bit values in hex, unique enough to tell messages apart
 * in logs (the spool adds its own collision check).
 */
#include "message.h"
#include "utf8.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

static void make_id(char out[MESSAGE_ID_LEN + 1])
{
    static const char hex[] = "0123456789ABCDEF";
    unsigned char raw[MESSAGE_ID_LEN / 2];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        /* getrandom on Linux >= 3.17 does not fail for 8 bytes; stay unique anyway. */
        static unsigned long counter;
        unsigned long v = (unsigned long)random() ^ ++counter;
        memcpy(raw, &v, sizeof(raw) < sizeof(v) ? sizeof(raw) : sizeof(v));
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[MESSAGE_ID_LEN] = '\0';
}

struct message *message_new(void)
{
    struct message *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->body = evbuffer_new();
    if (m->body == NULL) {
        free(m);
        return NULL;
    }
    m->mode = -1;
    m->body_fd = -1;
    make_id(m->id);
    return m;
}

void message_free(struct message *m)
{
    if (m == NULL)
        return;
    free(m->sender);
    for (size_t i = 0; i < m->nrcpts; i++) {
        free(m->rcpts[i]);
        free(m->results[i].text);
    }
    for (size_t i = 0; i < m->nrcpts && m->dsn; i++)
        free(m->dsn[i].orcpt);
    free(m->dsn);
    free(m->envid);
    free(m->rcpts);
    free(m->results);
    free(m->relay);
    if (m->body)
        evbuffer_free(m->body);
    if (m->body_fd >= 0)
        close(m->body_fd);
    free(m);
}

int message_add_rcpt(struct message *m, const char *addr)
{
    return message_add_rcpt_dsn(m, addr, 0, NULL);
}

int message_add_rcpt_dsn(struct message *m, const char *addr, unsigned notify, const char *orcpt)
{
    /* Grow all three arrays first; nrcpts only moves once everything is in place. */
    struct rcpt_dsn *d = realloc(m->dsn, (m->nrcpts + 1) * sizeof(*d));
    if (d == NULL)
        return -1;
    m->dsn = d;
    char **r = realloc(m->rcpts, (m->nrcpts + 1) * sizeof(*r));
    if (r == NULL)
        return -1;
    m->rcpts = r;
    struct rcpt_result *res = realloc(m->results, (m->nrcpts + 1) * sizeof(*res));
    if (res == NULL)
        return -1;
    m->results = res;
    char *copy = strdup(addr);
    char *ocopy = orcpt && orcpt[0] ? strdup(orcpt) : NULL;
    if (copy == NULL || (orcpt && orcpt[0] && ocopy == NULL)) {
        free(copy);
        free(ocopy);
        return -1;
    }
    m->rcpts[m->nrcpts] = copy;
    d[m->nrcpts].notify = notify;
    d[m->nrcpts].orcpt = ocopy;
    memset(&m->results[m->nrcpts], 0, sizeof(*res));
    m->nrcpts++;
    return 0;
}

const char *message_default_ecode(int code)
{
    switch (code / 100) {
    case 2:
        return "2.0.0";
    case 4:
        return "4.0.0";
    default:
        return "5.0.0";
    }
}

void message_set_result(struct message *m, size_t i, int code, const char *ecode, const char *text)
{
    struct rcpt_result *r = &m->results[i];
    r->code = code;
    if (ecode == NULL || ecode[0] == '\0' || ecode[0] - '0' != code / 100)
        ecode = message_default_ecode(code);
    snprintf(r->ecode, sizeof(r->ecode), "%s", ecode);
    free(r->text);
    r->text = strdup(text ? text : "");
    if (r->text) {
        /* One printable line: results go back to clients as reply text. */
        for (char *p = r->text; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = ' ';
        utf8_trim_tail(r->text);
    }
}

void message_set_pending_results(struct message *m, int code, const char *ecode, const char *text)
{
    for (size_t i = 0; i < m->nrcpts; i++)
        if (m->results[i].code == 0)
            message_set_result(m, i, code, ecode, text);
}

void message_clear_results(struct message *m)
{
    for (size_t i = 0; i < m->nrcpts; i++) {
        free(m->results[i].text);
        memset(&m->results[i], 0, sizeof(m->results[i]));
    }
}
