/*
 * Fuzz harness for the spool header parser: anything it accepts must keep
 * the header's promises (state bytes where the offsets say, limits held),
 * survive a format/parse round trip unchanged, and parse the same from a
 * header-only prefix plus the file size, as recovery reads it.
 */
#include <event2/buffer.h>
#include <string.h>

#include "fuzz.h"
#include "spool.h"

static int same_str(const char *a, const char *b)
{
    return a == NULL ? b == NULL : b != NULL && strcmp(a, b) == 0;
}

static void check_same(const struct spool_entry *a, const struct spool_entry *b)
{
    FUZZ_ASSERT(strcmp(a->id, b->id) == 0 && a->created == b->created);
    FUZZ_ASSERT(same_str(a->sender, b->sender) && same_str(a->relay, b->relay));
    FUZZ_ASSERT(same_str(a->envid, b->envid) && a->uid == b->uid && a->ret == b->ret);
    FUZZ_ASSERT(a->eightbit == b->eightbit && a->smtputf8 == b->smtputf8);
    FUZZ_ASSERT(a->is_bounce == b->is_bounce && a->body_size == b->body_size);
    FUZZ_ASSERT(a->nrcpts == b->nrcpts);
    for (size_t i = 0; i < a->nrcpts; i++) {
        FUZZ_ASSERT(same_str(a->rcpts[i].addr, b->rcpts[i].addr));
        FUZZ_ASSERT(same_str(a->rcpts[i].orcpt, b->rcpts[i].orcpt));
        FUZZ_ASSERT(a->rcpts[i].state == b->rcpts[i].state);
        FUZZ_ASSERT(a->rcpts[i].notify == b->rcpts[i].notify);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct spool_entry e, again, pre;
    const char *why = NULL;
    struct evbuffer *out;

    if (spool_header_parse(buf, size, &e, &why) != 0) {
        FUZZ_ASSERT(why != NULL && e.rcpts == NULL && e.sender == NULL);
        return 0;
    }
    FUZZ_ASSERT(spool_id_valid(e.id));
    FUZZ_ASSERT(e.nrcpts >= 1 && e.nrcpts <= 1000);
    FUZZ_ASSERT(e.body_off > 0 && (size_t)e.body_off + e.body_size == size);
    FUZZ_ASSERT(buf[e.body_off - 1] == '\n' && buf[e.body_off - 2] == '\n');
    for (size_t i = 0; i < e.nrcpts; i++) {
        off_t o = e.rcpts[i].state_off;
        FUZZ_ASSERT(o >= 5 && o < e.body_off && memcmp(buf + o - 5, "rcpt ", 5) == 0);
        FUZZ_ASSERT(buf[o] == e.rcpts[i].state);
        FUZZ_ASSERT(strlen(e.rcpts[i].addr) >= 1 && strlen(e.rcpts[i].addr) <= 256);
    }

    FUZZ_ASSERT(spool_header_parse_sized(buf, (size_t)e.body_off, size, &pre, &why) == 0);
    check_same(&e, &pre);
    spool_entry_clear(&pre);

    /* Whatever was accepted can be written back and reads the same. */
    out = evbuffer_new();
    FUZZ_ASSERT(out != NULL);
    FUZZ_ASSERT(spool_header_format(&e, out) == 0);
    FUZZ_ASSERT(evbuffer_add(out, buf + (size - e.body_size), e.body_size) == 0);
    FUZZ_ASSERT(spool_header_parse((const char *)evbuffer_pullup(out, -1), evbuffer_get_length(out),
                                   &again, &why) == 0);
    check_same(&e, &again);
    FUZZ_ASSERT(again.body_off == e.body_off);
    for (size_t i = 0; i < e.nrcpts; i++)
        FUZZ_ASSERT(again.rcpts[i].state_off == e.rcpts[i].state_off);
    spool_entry_clear(&again);
    evbuffer_free(out);
    spool_entry_clear(&e);
    return 0;
}
